use super::*;

fn budget(limit: usize) -> Arc<HeldBudget> {
    Arc::new(HeldBudget::new(
        limit,
        prometheus::IntGauge::new("held", "held").unwrap(),
    ))
}

#[test]
fn the_budget_is_taken_whole_and_given_back_on_drop() {
    let b = budget(100);
    let first = b.hold(60).expect("60 of 100 fits");
    assert!(b.hold(41).is_none(), "60 + 41 is over the limit");
    let second = b.take(40).expect("60 + 40 fits exactly");
    assert_eq!(b.gauge.get(), 100);
    drop(first);
    assert_eq!(b.gauge.get(), 40);
    drop(second);
    assert_eq!(b.used.load(Ordering::Relaxed), 0);
    assert_eq!(b.gauge.get(), 0);
}

#[test]
fn a_held_body_keeps_chunks_back_until_whole() {
    let b = budget(100);
    let mut held = b.hold(10).unwrap();
    let mut chunk = Some(Bytes::from_static(b"hello"));
    assert!(!held.push(&mut chunk, false, 10).unwrap());
    assert_eq!(chunk, Some(Bytes::new()), "nothing goes upstream yet");
    let mut last = Some(Bytes::from_static(b"world"));
    assert!(held.push(&mut last, true, 10).unwrap());
    assert_eq!(last, None, "the caller puts the whole body back");
    assert_eq!(&held.into_bytes()[..], b"helloworld");
    assert_eq!(b.gauge.get(), 0, "the permit went back with the body");

    let mut over = b.hold(4).unwrap();
    let mut chunk = Some(Bytes::from_static(b"hello"));
    assert!(over.push(&mut chunk, false, 4).is_err());
}
