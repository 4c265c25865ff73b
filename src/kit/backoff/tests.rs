use super::*;

const S: Duration = Duration::from_secs(1);

#[test]
fn doubles_to_the_cap_and_resets() {
    let mut b = Backoff::new(S, 30 * S);
    let waits: Vec<u64> = (0..7).map(|_| b.fail().as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
    b.reset();
    assert_eq!(b.fail(), S);
}

#[test]
fn a_cap_below_the_first_wait_wins() {
    // The registry's schedule: 1 s doubling, never past a 300 ms refresh interval.
    let mut b = Backoff::new(S, Duration::from_millis(300));
    assert_eq!(b.peek(), Duration::from_millis(300));
    assert_eq!(b.fail(), Duration::from_millis(300));
    assert_eq!(b.fail(), Duration::from_millis(300));
}

#[test]
fn full_jitter_stays_within_the_exact_wait() {
    let mut exact = Backoff::new(S, 8 * S);
    let mut spread = Backoff::new(S, 8 * S).with_jitter(Jitter::Full);
    let mut differed = false;
    for _ in 0..50 {
        let (e, s) = (exact.fail(), spread.fail());
        assert!(s <= e, "{s:?} > {e:?}");
        differed |= s != e;
    }
    assert!(differed, "full jitter never moved a wait");
    assert_eq!(Jitter::default(), Jitter::None);
}
