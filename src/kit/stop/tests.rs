use super::*;
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn set_wakes_the_waiters_of_that_flag_only_and_a_dropped_registration_is_gone() {
    let (a, b) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (tx_a, rx_a) = channel();
    let (tx_b, rx_b) = channel();
    let reg_a = on_stop(&a, move || tx_a.send(()).unwrap_or(()));
    let reg_b = on_stop(&b, move || tx_b.send(()).unwrap_or(()));
    let waiter = std::thread::spawn(move || rx_a.recv_timeout(Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(20));
    set(&a);
    assert!(a.load(Ordering::Acquire));
    assert!(
        waiter.join().unwrap().is_ok(),
        "the waiter on a was not woken"
    );
    // b was not rung, and its flag is untouched.
    assert!(rx_b.try_recv().is_err());
    assert!(!b.load(Ordering::Acquire));
    drop(reg_b);
    set(&b);
    assert!(
        rx_b.try_recv().is_err(),
        "a dropped registration still rang"
    );
    drop(reg_a);
    let table = WAKERS.lock().unwrap();
    assert!(table.iter().all(|(k, _, _)| *k != key(&a) && *k != key(&b)));
}
