//! The deadline of one client connection while provgate waits for a request's headers: from
//! the accept until the first request's headers are in (`header_timeout`), and from the end
//! of each response until the next request's headers are in (`idle_timeout`, keep-alive).
//! While a request is being served there is no deadline here (the upstream's timeouts and
//! pingora's per-read timeouts apply).
//!
//! The connection's task holds a [`Phase`] in a task-local; the request path marks a request
//! as started ([`request_started`], once its headers are parsed) and finished
//! ([`request_finished`]); the connection's owner races the connection against
//! [`Phase::expired`]. Outside such a task (an HTTP/2 stream, a unit test) the marks do
//! nothing. Owns no socket and knows nothing of requests beyond those two marks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// No deadline (a request is being served).
const NONE: u64 = u64::MAX;

/// Which wait a connection was cut in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The first request's headers, from the accept.
    Headers,
    /// The next request's headers on a kept-alive connection.
    Idle,
}

impl Wait {
    /// A bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Wait::Headers => "headers",
            Wait::Idle => "idle",
        }
    }
}

/// One connection's deadline.
///
/// The marks are on the request path, so they wake nobody unless they must: a started
/// request clears the deadline and the waiter, whose timer fires later, finds it cleared
/// and waits for the next change; a finished request wakes the waiter only when it waits
/// for a change or sleeps past the new deadline. (Waking it on every mark re-polled the
/// whole connection task and re-armed its timer, about 1.7k instructions per request.)
pub struct Phase {
    base: Instant,
    idle_timeout: Duration,
    /// Milliseconds after `base`, or [`NONE`].
    deadline_ms: AtomicU64,
    /// The deadline the waiter sleeps until (milliseconds after `base`), or [`NONE`] while
    /// it waits for a change. With `deadline_ms`, a store-then-load pair on each side
    /// (sequentially consistent): either the waiter sees the new deadline or the marker
    /// sees what the waiter waits for.
    sleeping_ms: AtomicU64,
    /// Requests started on this connection (0: still the first request's headers).
    requests: AtomicU64,
    changed: Notify,
}

tokio::task_local! {
    static PHASE: Arc<Phase>;
}

impl Phase {
    /// A connection accepted now: its first request's headers are due within
    /// `header_timeout`.
    pub fn new(header_timeout: Duration, idle_timeout: Duration) -> Arc<Phase> {
        Arc::new(Phase {
            base: Instant::now(),
            idle_timeout,
            deadline_ms: AtomicU64::new(millis(header_timeout)),
            sleeping_ms: AtomicU64::new(NONE),
            requests: AtomicU64::new(0),
            changed: Notify::new(),
        })
    }

    /// Runs `fut` (the connection) with this phase reachable by [`request_started`] and
    /// [`request_finished`].
    pub async fn scope<F: std::future::Future>(self: &Arc<Self>, fut: F) -> F::Output {
        PHASE.scope(self.clone(), fut).await
    }

    fn started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.deadline_ms.store(NONE, Ordering::SeqCst);
    }

    fn finished(&self) {
        let due = millis(self.base.elapsed() + self.idle_timeout);
        self.deadline_ms.store(due, Ordering::SeqCst);
        if due < self.sleeping_ms.load(Ordering::SeqCst) {
            self.changed.notify_one();
        }
    }

    /// Resolves when the connection has waited past its deadline, saying for what.
    pub async fn expired(&self) -> Wait {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let deadline = self.deadline_ms.load(Ordering::SeqCst);
            if deadline == NONE {
                self.sleeping_ms.store(NONE, Ordering::SeqCst);
                if self.deadline_ms.load(Ordering::SeqCst) == NONE {
                    changed.await;
                }
                continue;
            }
            let due = self.base + Duration::from_millis(deadline);
            if Instant::now() >= due {
                return if self.requests.load(Ordering::Relaxed) == 0 {
                    Wait::Headers
                } else {
                    Wait::Idle
                };
            }
            self.sleeping_ms.store(deadline, Ordering::SeqCst);
            if self.deadline_ms.load(Ordering::SeqCst) != deadline {
                continue;
            }
            // Biased: no random branch order to draw on every poll.
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(due) => {}
                _ = changed => {}
            }
        }
    }
}

/// Milliseconds, saturating below [`NONE`].
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(NONE - 1)
        .min(NONE - 1)
}

/// A request's headers are in: no deadline while it is served.
pub fn request_started() {
    let _ = PHASE.try_with(|p| p.started());
}

/// A response is done: the next request's headers are due within the idle timeout.
pub fn request_finished() {
    let _ = PHASE.try_with(|p| p.finished());
}

#[cfg(test)]
mod tests;
