use super::*;

#[tokio::test(start_paused = true)]
async fn the_clock_counts_from_the_last_success() {
    let p = Published::new(1u32);
    assert!(!p.is_synced());
    assert_eq!(p.clock().age(), None);
    assert!(!p.clock().is_fresh(Duration::from_secs(60)));

    p.publish(2);
    assert_eq!(**p.load(), 2);
    assert!(p.is_synced());
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(p.clock().age(), Some(Duration::from_secs(10)));
    assert!(p.clock().is_fresh(Duration::from_secs(10)));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(!p.clock().is_fresh(Duration::from_secs(10)));

    // A store alone does not restart the clock; a confirm does.
    p.store(3);
    assert_eq!(*p.load_full(), 3);
    assert!(!p.clock().is_fresh(Duration::from_secs(10)));
    p.clock().confirm();
    assert_eq!(p.clock().age(), Some(Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn synced_without_success_keeps_the_clock_at_its_start() {
    let f = Freshness::new();
    tokio::time::advance(Duration::from_secs(5)).await;
    f.mark_synced();
    assert!(f.is_synced());
    assert_eq!(f.since_success(), Duration::from_secs(5));
    assert!(Freshness::synced().is_synced());
}

/// Issue 16: staleness bounds (registry, issuer keys, artefact, probe) run on the monotonic
/// clock, so a wall clock stepped forward or back moves none of them. The wall clock cannot
/// be stepped in a test (no faketime here); instead, tokio's paused monotonic clock is moved
/// by ten seconds while the wall clock is not, and the freshness follows the former.
#[tokio::test(start_paused = true)]
async fn staleness_follows_the_monotonic_clock_not_the_wall_clock() {
    let f = Freshness::new();
    f.mark_success();
    let wall = std::time::SystemTime::now();
    tokio::time::advance(Duration::from_secs(10)).await;
    let wall_moved = wall.elapsed().unwrap_or_default();
    assert!(wall_moved < Duration::from_secs(1), "{wall_moved:?}");
    assert_eq!(f.since_success(), Duration::from_secs(10));
}

#[tokio::test]
async fn a_subscriber_wakes_on_a_store_made_before_it_waits() {
    let p = Published::new(1);
    let mut rx = p.subscribe();
    p.store(2);
    // Stored before the wait began: not lost.
    tokio::time::timeout(Duration::from_secs(1), rx.changed())
        .await
        .expect("woken")
        .unwrap();
    let current = p.load_full();
    assert!(!p.store_if(&Arc::new(9), 3), "a lost race is no change");
    assert!(!rx.has_changed().unwrap());
    assert!(p.store_if(&current, 3));
    assert!(rx.has_changed().unwrap());
}

#[tokio::test(start_paused = true)]
async fn confirm_since_sets_the_age() {
    let f = Freshness::synced();
    tokio::time::advance(Duration::from_secs(10)).await;
    f.confirm_since(Duration::from_secs(4));
    assert_eq!(f.since_success(), Duration::from_secs(4));
}
