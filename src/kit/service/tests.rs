use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn panics() -> prometheus::IntCounterVec {
    prometheus::IntCounterVec::new(prometheus::Opts::new("panics", "test"), &["service"]).unwrap()
}

fn quiet() -> OnPanic {
    OnPanic::count_only("test", &panics())
}

/// The first run panics, the next one runs until the stop flag: the panic is counted under
/// the service's kind, the fail-closed action runs once, and the body runs again after the
/// first backoff.
#[tokio::test]
async fn a_panicking_blocking_loop_is_counted_fails_closed_and_restarts() {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let counter = panics();
    let failed = Arc::new(AtomicUsize::new(0));
    let f = failed.clone();
    let on_panic = OnPanic::new("artefact", &counter, move || {
        f.fetch_add(1, Ordering::SeqCst);
    });
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let service = Blocking::service("test", on_panic, move |stop: Arc<AtomicBool>| {
        if r.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("injected by the test");
        }
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let task = service.task();
    let running = tokio::spawn(async move { task.start(rx).await });
    // (The panic hook may take a while to print a backtrace.)
    let caught = counter.with_label_values(&["artefact"]);
    let until = |what: &'static str, done: Box<dyn Fn() -> bool>| async move {
        tokio::time::timeout(Duration::from_secs(20), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect(what);
    };
    let c = caught.clone();
    until("the panic was not counted", Box::new(move || c.get() == 1)).await;
    assert_eq!(failed.load(Ordering::SeqCst), 1);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "restarted before the backoff"
    );
    let at = std::time::Instant::now();
    let r = runs.clone();
    until(
        "not restarted",
        Box::new(move || r.load(Ordering::SeqCst) == 2),
    )
    .await;
    assert!(at.elapsed() >= PANIC_BACKOFF_FIRST - Duration::from_millis(50));
    assert!(!running.is_finished());
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the restarted service did not stop")
        .unwrap();
    assert_eq!(counter.with_label_values(&["artefact"]).get(), 1);
    assert_eq!(failed.load(Ordering::SeqCst), 1);
}

/// An async loop that panics every time: each panic is counted and the waits double.
#[tokio::test(start_paused = true)]
async fn a_panicking_async_loop_restarts_with_a_doubling_backoff_until_the_shutdown() {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let counter = panics();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let service = Async::service(
        "test",
        OnPanic::count_only("registry", &counter),
        move || {
            r.fetch_add(1, Ordering::SeqCst);
            async { panic!("injected by the test") }
        },
    );
    let task = service.task();
    let running = tokio::spawn(async move { task.start(rx).await });
    // Runs at 0, 1, 3, 7 and 15 s (waits of 1, 2, 4, 8 s).
    tokio::time::sleep(Duration::from_millis(15_500)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 5);
    assert_eq!(counter.with_label_values(&["registry"]).get(), 5);
    tx.send(true).unwrap();
    running.await.unwrap();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        5,
        "ran again after the shutdown"
    );
}

#[test]
fn a_panic_message_is_read_from_either_payload() {
    assert_eq!(panic_message(&"literal"), "literal");
    assert_eq!(panic_message(&String::from("formatted")), "formatted");
    assert_eq!(panic_message(&7u8), "(no message)");
}

#[tokio::test]
async fn a_shutdown_sets_the_blocking_loops_stop_flag_and_waits_for_it() {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let ended = Arc::new(AtomicBool::new(false));
    let e = ended.clone();
    let service = Blocking::service("test", quiet(), move |stop: Arc<AtomicBool>| {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        e.store(true, Ordering::Relaxed);
    });
    let task = service.task();
    let running = tokio::spawn(async move { task.start(rx).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!running.is_finished());
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the service did not stop")
        .unwrap();
    assert!(
        ended.load(Ordering::Relaxed),
        "start returned before the loop ended"
    );
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_drops_an_async_loop() {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let service = Async::service("test", quiet(), || async {
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    });
    let task = service.task();
    let running = tokio::spawn(async move { task.start(rx).await });
    tokio::time::sleep(Duration::from_secs(7200)).await;
    assert!(!running.is_finished());
    tx.send(true).unwrap();
    running.await.unwrap();
}

#[tokio::test]
async fn a_finished_loop_ends_its_service_and_a_second_start_is_a_no_op() {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let service = Async::service("test", quiet(), || async {});
    let task = service.task();
    task.start(rx.clone()).await;
    task.start(rx).await;
}

#[tokio::test]
async fn a_dropped_start_stops_the_blocking_loop_too() {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let service = Blocking::service("test", quiet(), move |stop: Arc<AtomicBool>| {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = done_tx.send(());
    });
    let task = service.task();
    let running = tokio::spawn(async move { task.start(rx).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // What a runtime shutdown does to the service's future.
    running.abort();
    let _ = running.await;
    done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the loop kept running after its service was dropped");
}
