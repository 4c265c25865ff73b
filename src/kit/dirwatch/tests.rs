use super::*;
use std::sync::{Arc, Mutex};

#[test]
fn a_single_file_counts_the_file_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.gguf");
    let sig = dir.path().join("model.gguf.sig");
    std::fs::write(&file, b"w").unwrap();
    let before = fingerprint(&file, Some(&sig));
    assert_eq!(before.len(), 1);
    std::fs::write(&sig, b"s").unwrap();
    let after = fingerprint(&file, Some(&sig));
    assert_eq!(after.len(), 2);
    assert_ne!(before, after);
    // A directory's own files are walked; `beside` is only for a single file.
    assert_eq!(fingerprint(dir.path(), Some(&sig)).len(), 3);
    assert!(fingerprint(&dir.path().join("missing"), None).is_empty());
}

/// Records what the loop called, in order.
struct Recorder {
    calls: Arc<Mutex<Vec<&'static str>>>,
    /// Whether `changed` reports success.
    accept: bool,
    wait: Duration,
}

impl Hooks for Recorder {
    fn changed(&mut self, _: &Fingerprint) -> bool {
        self.calls.lock().unwrap().push("changed");
        self.accept
    }
    fn unchanged(&mut self) -> bool {
        self.calls.lock().unwrap().push("unchanged");
        true
    }
    fn alarm(&self) -> Option<Alarm> {
        let calls = self.calls.clone();
        Some(Arc::new(move || calls.lock().unwrap().push("event")))
    }
    fn wait(&self) -> Duration {
        self.wait
    }
}

type Calls = Arc<Mutex<Vec<&'static str>>>;

fn start(
    path: PathBuf,
    accept: bool,
    wait: Duration,
) -> (Calls, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut hooks = Recorder {
        calls: calls.clone(),
        accept,
        wait,
    };
    let s = stop.clone();
    let t = std::thread::spawn(move || DirWatch::new(path).run(&mut hooks, &s));
    (calls, stop, t)
}

fn wait_until(calls: &Mutex<Vec<&'static str>>, what: impl Fn(&[&'static str]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if what(&calls.lock().unwrap()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("never happened; calls {:?}", calls.lock().unwrap());
}

#[test]
fn an_event_comes_first_then_the_change_and_a_stop_ends_a_long_wait() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"1").unwrap();
    // A rescan an hour away: only the event can wake the loop, only the flag stop it.
    let (calls, stop, t) = start(dir.path().to_path_buf(), true, Duration::from_secs(3600));
    wait_until(&calls, |c| c == ["changed"]);
    std::fs::write(dir.path().join("a"), b"2").unwrap();
    // One alarm per raw event (a write may make several), then one look after the settle.
    wait_until(&calls, |c| c.len() >= 3 && c.last() == Some(&"changed"));
    let c = calls.lock().unwrap().clone();
    assert_eq!(c[..2], ["changed", "event"], "{c:?}");
    assert!(c[1..c.len() - 1].iter().all(|x| *x == "event"), "{c:?}");
    let asked = Instant::now();
    crate::kit::stop::set(&stop);
    t.join().unwrap();
    // Woken by the stop itself, not by a tick.
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "{:?}",
        asked.elapsed()
    );
}

#[test]
fn an_unhandled_change_is_tried_again_and_a_handled_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (calls, stop, t) = start(dir.path().to_path_buf(), false, Duration::from_millis(20));
    wait_until(&calls, |c| c.len() >= 3);
    assert!(calls.lock().unwrap().iter().all(|c| *c == "changed"));
    crate::kit::stop::set(&stop);
    t.join().unwrap();

    let (calls, stop, t) = start(dir.path().to_path_buf(), true, Duration::from_millis(20));
    wait_until(&calls, |c| c.len() >= 3);
    assert_eq!(
        calls.lock().unwrap()[..3],
        ["changed", "unchanged", "unchanged"]
    );
    crate::kit::stop::set(&stop);
    t.join().unwrap();
}

/// Holds the loop in its first `changed` until the alarm rings (or 5 s pass).
struct Busy {
    rung: Arc<AtomicBool>,
    entered: Arc<AtomicBool>,
    rang_while_busy: Arc<AtomicBool>,
}

impl Hooks for Busy {
    fn changed(&mut self, _: &Fingerprint) -> bool {
        if !self.entered.swap(true, Ordering::SeqCst) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && !self.rung.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.rang_while_busy
                .store(self.rung.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        true
    }
    fn alarm(&self) -> Option<Alarm> {
        let rung = self.rung.clone();
        Some(Arc::new(move || rung.store(true, Ordering::SeqCst)))
    }
    fn wait(&self) -> Duration {
        Duration::from_secs(3600)
    }
}

#[test]
fn the_alarm_rings_while_the_loop_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"1").unwrap();
    let (entered, rang) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut hooks = Busy {
        rung: Arc::new(AtomicBool::new(false)),
        entered: entered.clone(),
        rang_while_busy: rang.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (path, s) = (dir.path().to_path_buf(), stop.clone());
    let t = std::thread::spawn(move || DirWatch::new(path).run(&mut hooks, &s));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !entered.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    // The loop attaches its watch before its first look: this write is seen by it.
    std::fs::write(dir.path().join("a"), b"2").unwrap();
    let deadline = Instant::now() + Duration::from_secs(6);
    while !rang.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    crate::kit::stop::set(&stop);
    t.join().unwrap();
    assert!(rang.load(Ordering::SeqCst), "the alarm waited for the loop");
}
