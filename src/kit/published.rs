//! A value that a background service publishes and the request path reads, with its
//! freshness clock: whether the first round has finished ([`Freshness::is_synced`]) and how
//! long ago the last successful one was ([`Freshness::since_success`]).
//!
//! Reads are one atomic load of the value (`arc-swap`) and, where freshness matters, one of
//! the clock: no lock, no `Arc` clone. The clock is tokio's `Instant`, which is std's outside
//! a paused test runtime, so staleness is tested on a paused clock.
//!
//! The artefact state, the probe's view of the server, the registry snapshot and each
//! issuer's remote keys are all published this way. A background reader that must act on a
//! change (the remote registry asks about a newly served digest at once) waits on
//! [`Published::subscribe`] instead of looking on a tick.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

/// The freshness clock of a published value.
#[derive(Debug)]
pub struct Freshness {
    synced: AtomicBool,
    /// Milliseconds since `epoch` of the last success.
    last_success: AtomicU64,
    epoch: Instant,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness::new()
    }
}

impl Freshness {
    /// Not synced yet.
    pub fn new() -> Freshness {
        Freshness {
            synced: AtomicBool::new(false),
            last_success: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// A clock that counts as synced from the start (a value nothing needs to wait for).
    pub fn synced() -> Freshness {
        let f = Freshness::new();
        f.mark_synced();
        f
    }

    /// A round succeeded now: the clock restarts and the value counts as synced.
    pub fn mark_success(&self) {
        self.confirm();
        self.mark_synced();
    }

    /// Restarts the clock without changing the synced flag (a round that found the value
    /// unchanged).
    pub fn confirm(&self) {
        self.confirm_since(Duration::ZERO);
    }

    /// Sets the clock as if the last success was `age` ago (a value made of parts, each
    /// with its own clock, is as fresh as its oldest part).
    pub fn confirm_since(&self, age: Duration) {
        let at = self.epoch.elapsed().saturating_sub(age);
        self.last_success
            .store(at.as_millis() as u64, Ordering::Relaxed);
    }

    /// The first round has finished (whatever it found), without restarting the clock.
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Has the first round finished?
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Time since the last success (since the clock was made, before the first).
    pub fn since_success(&self) -> Duration {
        let at = self.last_success.load(Ordering::Relaxed);
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(at))
    }

    /// Time since the last success, None before the first round.
    pub fn age(&self) -> Option<Duration> {
        self.is_synced().then(|| self.since_success())
    }

    /// Synced, and the last success no older than `max_stale`.
    pub fn is_fresh(&self, max_stale: Duration) -> bool {
        self.age().is_some_and(|a| a <= max_stale)
    }
}

/// A value published by one writer and read by many, with its freshness clock.
#[derive(Debug)]
pub struct Published<T> {
    value: ArcSwap<T>,
    clock: Freshness,
    /// Counts stores, for [`Published::subscribe`].
    changes: tokio::sync::watch::Sender<u64>,
}

impl<T> Published<T> {
    /// `initial`, not synced.
    pub fn new(initial: T) -> Published<T> {
        Published::with_clock(initial, Freshness::new())
    }

    /// `initial` with a given clock (e.g. [`Freshness::synced`]).
    pub fn with_clock(initial: T, clock: Freshness) -> Published<T> {
        Published {
            value: ArcSwap::from_pointee(initial),
            clock,
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A receiver that wakes after every later store (`changed().await`); a store between
    /// two waits is not lost.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The current value: one atomic load, no `Arc` clone.
    pub fn load(&self) -> arc_swap::Guard<Arc<T>> {
        self.value.load()
    }

    /// The current value as an owned `Arc` (for callers that keep it).
    pub fn load_full(&self) -> Arc<T> {
        self.value.load_full()
    }

    /// Replaces the value; the clock is untouched.
    pub fn store(&self, value: T) {
        self.value.store(Arc::new(value));
        self.changed();
    }

    /// Replaces the value only if it is still `current` (the same `Arc`); true when it was.
    /// For a second writer (a scrub) that must not overwrite what the first published
    /// meanwhile.
    pub fn store_if(&self, current: &Arc<T>, value: T) -> bool {
        let previous = self.value.compare_and_swap(current, Arc::new(value));
        let stored = Arc::ptr_eq(&previous, current);
        if stored {
            self.changed();
        }
        stored
    }

    /// Replaces the value and records a successful round.
    pub fn publish(&self, value: T) {
        self.store(value);
        self.clock.mark_success();
    }

    /// The value's freshness clock.
    pub fn clock(&self) -> &Freshness {
        &self.clock
    }

    /// Has the first round finished?
    pub fn is_synced(&self) -> bool {
        self.clock.is_synced()
    }
}

#[cfg(test)]
mod tests;
