//! The watchdog: each background service that must keep moving (the artefact watchers and
//! scrubs, the registry's watcher or refresher) ticks a [`Heartbeat`] as it goes — between
//! looks, and between reads while hashing — and declares how long a silence may last. A
//! heartbeat older than its bound is a *stalled* service: `/readyz` names it and answers
//! 503, `provgate_background_stalled` reports it, and once it is silent for twice its bound
//! `/healthz` fails too, so the orchestrator restarts a sidecar that can no longer make
//! progress instead of leaving it at 503 forever.
//!
//! Owns only the clocks; it knows nothing of what the services do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One service's heartbeat.
#[derive(Debug)]
pub struct Heartbeat {
    name: String,
    bound: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last beat.
    last: AtomicU64,
}

impl Heartbeat {
    /// A heartbeat that beats now.
    pub fn new(name: impl Into<String>, bound: Duration) -> Heartbeat {
        Heartbeat {
            name: name.into(),
            bound,
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// The service made progress now. One relaxed store: cheap enough per read buffer.
    pub fn beat(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn silence(&self) -> Duration {
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }

    /// Silent for longer than its bound.
    pub fn is_stalled(&self) -> bool {
        self.silence() > self.bound
    }

    /// Silent for longer than twice its bound: the sidecar cannot make progress.
    pub fn is_dead(&self) -> bool {
        self.silence() > self.bound * 2
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn bound(&self) -> Duration {
        self.bound
    }
}

/// Every heartbeat of the process.
#[derive(Debug, Default)]
pub struct Watchdog {
    beats: Mutex<Vec<Arc<Heartbeat>>>,
}

impl Watchdog {
    pub fn new() -> Watchdog {
        Watchdog::default()
    }

    /// A new heartbeat named `name` (a bounded label: a service kind and a configured model
    /// name), silent for at most `bound`.
    pub fn register(&self, name: impl Into<String>, bound: Duration) -> Arc<Heartbeat> {
        let beat = Arc::new(Heartbeat::new(name, bound));
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(beat.clone());
        beat
    }

    /// Every heartbeat, in registration order.
    pub fn all(&self) -> Vec<Arc<Heartbeat>> {
        self.beats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The names of the stalled services.
    pub fn stalled(&self) -> Vec<String> {
        self.all()
            .iter()
            .filter(|b| b.is_stalled())
            .map(|b| b.name().to_string())
            .collect()
    }

    /// Some service has been silent for twice its bound.
    pub fn any_dead(&self) -> bool {
        self.all().iter().any(|b| b.is_dead())
    }
}

#[cfg(test)]
mod tests;
