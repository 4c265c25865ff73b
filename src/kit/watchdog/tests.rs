use super::*;

#[test]
fn a_silent_heartbeat_is_stalled_then_dead_and_a_beat_revives_it() {
    let dog = Watchdog::new();
    let quick = dog.register("artefact m", Duration::from_millis(50));
    let slow = dog.register("registry", Duration::from_secs(60));
    assert!(dog.stalled().is_empty());
    std::thread::sleep(Duration::from_millis(70));
    assert_eq!(dog.stalled(), ["artefact m"]);
    assert!(!dog.any_dead());
    std::thread::sleep(Duration::from_millis(50));
    assert!(dog.any_dead());
    quick.beat();
    slow.beat();
    assert!(dog.stalled().is_empty());
    assert!(!dog.any_dead());
    assert_eq!(quick.bound(), Duration::from_millis(50));
}
