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

#[test]
fn spreads_stay_within_their_bounds_and_move() {
    let d = 10 * S;
    let (mut low, mut high) = (d, Duration::ZERO);
    for _ in 0..200 {
        let a = around(d, 0.1);
        assert!(a >= d.mul_f64(0.9) && a <= d.mul_f64(1.1), "{a:?}");
        let u = uniform(d);
        assert!(u <= d, "{u:?}");
        low = low.min(u);
        high = high.max(u);
    }
    // 200 uniform draws over 10 s: the extremes land near both ends.
    assert!(low < 2 * S && high > 8 * S, "{low:?}..{high:?}");
    assert_eq!(around(d, 0.0), d);
    assert!(around(d, 5.0) <= 2 * d, "the fraction is clamped");
}
