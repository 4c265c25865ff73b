//! Stop flags that wake whoever waits on them. Every blocking service is given an
//! `Arc<AtomicBool>` that the shutdown sets ([`super::service`]); a loop that waits (a
//! directory watch, the scrub's pause) registers a waker for its flag with [`on_stop`], and
//! [`set`] both sets the flag and runs its wakers, so those loops wait on their events and
//! deadlines instead of waking on a short tick to look at the flag.
//!
//! Owns only the table of wakers, keyed by the flag's address (a registration lives no
//! longer than its [`Registration`], which the waiting loop holds while it holds the flag);
//! knows nothing of what the loops do. A flag set by a plain `store` still stops a loop at
//! its next wake-up, only later.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

type Waker = Box<dyn Fn() + Send>;

/// (flag address, registration id, waker).
static WAKERS: Mutex<Vec<(usize, u64, Waker)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn key(flag: &AtomicBool) -> usize {
    std::ptr::from_ref(flag) as usize
}

/// Sets `flag` and wakes every loop waiting on it.
pub fn set(flag: &AtomicBool) {
    flag.store(true, Ordering::Release);
    let table = WAKERS.lock().unwrap_or_else(|e| e.into_inner());
    for (_, _, wake) in table.iter().filter(|(k, _, _)| *k == key(flag)) {
        wake();
    }
}

/// Runs `wake` whenever [`set`] sets `flag`, until the registration is dropped. Register
/// before looking at the flag, so a stop between the look and the wait is not missed.
#[must_use = "the waker is removed when the registration is dropped"]
pub fn on_stop(flag: &AtomicBool, wake: impl Fn() + Send + 'static) -> Registration {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    WAKERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((key(flag), id, Box::new(wake)));
    Registration(id)
}

/// A waker in the table; removed on drop.
#[derive(Debug)]
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        WAKERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, id, _)| *id != self.0);
    }
}

#[cfg(test)]
mod tests;
