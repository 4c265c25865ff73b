use super::*;
use std::time::Duration;

#[tokio::test]
async fn a_shutdown_sets_the_blocking_loops_stop_flag_and_waits_for_it() {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let ended = Arc::new(AtomicBool::new(false));
    let e = ended.clone();
    let service = Blocking::service("test", move |stop| {
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
    let service = Async::service("test", async {
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
    let service = Async::service("test", async {});
    let task = service.task();
    task.start(rx.clone()).await;
    task.start(rx).await;
}

#[tokio::test]
async fn a_dropped_start_stops_the_blocking_loop_too() {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let service = Blocking::service("test", move |stop| {
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
