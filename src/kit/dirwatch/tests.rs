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
    fn event(&mut self) {
        self.calls.lock().unwrap().push("event");
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
    wait_until(&calls, |c| c.len() >= 3);
    assert_eq!(calls.lock().unwrap()[..3], ["changed", "event", "changed"]);
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
