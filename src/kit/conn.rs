//! The deadline of one client connection while provgate waits for a request's headers: from
//! the accept until the first request's headers are in (`header_timeout`), and from the end
//! of each response until the next request's headers are in (`idle_timeout`, keep-alive).
//! While a request is being served there is no deadline here (the upstream's timeouts and
//! pingora's per-read timeouts apply).
//!
//! [`Phase::run`] runs the connection with its [`Phase`] in a task-local; the request path
//! marks a request as started ([`request_started`], once its headers are parsed) and
//! finished ([`request_finished`]), and the connection is cut when it waits past its
//! deadline. Outside such a task (an HTTP/2 stream, a unit test) the marks do nothing. Owns
//! no socket and knows nothing of requests beyond those two marks.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// No deadline (a request is being served), or no timer armed yet.
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
/// Everything happens on the connection's own task: the marks are made while it is polled,
/// and [`Phase::run`] looks at the deadline after each poll that leaves it waiting. So the
/// marks are two relaxed stores that wake nobody, and the look costs a load and a glance at
/// the timer unless the deadline moved earlier or the timer fired. A deadline pushed back
/// (every keep-alive request) leaves the armed timer alone: it fires early, at most once
/// per idle timeout, and is re-armed then. (A waiter beside the connection, woken by the
/// marks and polling its timer on every wake of the task, cost about 1.2k instructions per
/// request.)
pub struct Phase {
    base: Instant,
    idle_timeout: Duration,
    /// Milliseconds after `base`, or [`NONE`].
    deadline_ms: AtomicU64,
    /// Requests started on this connection (0: still the first request's headers).
    requests: AtomicU64,
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
            requests: AtomicU64::new(0),
        })
    }

    /// Runs `conn` (the connection) with this phase reachable by [`request_started`] and
    /// [`request_finished`], until it ends (its output) or has waited past its deadline:
    /// then `cut` is told what it was waiting for, before `conn` is dropped (so before the
    /// client sees the connection closed), and the output is None.
    pub async fn run<F: Future>(
        self: &Arc<Self>,
        conn: F,
        cut: impl FnOnce(Wait),
    ) -> Option<F::Output> {
        let conn = PHASE.scope(self.clone(), conn);
        tokio::pin!(conn);
        // Armed at the first look (`armed` = NONE): a timer is registered when polled.
        let timer = tokio::time::sleep_until(self.base);
        tokio::pin!(timer);
        let mut armed = NONE;
        let ended = std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = conn.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            self.look(timer.as_mut(), &mut armed, cx).map(Err)
        })
        .await;
        match ended {
            Ok(out) => Some(out),
            Err(wait) => {
                cut(wait);
                None
            }
        }
    }

    /// After a poll that left the connection waiting: ready when it has waited past its
    /// deadline; otherwise the timer is armed for the deadline, or earlier.
    fn look(
        &self,
        mut timer: Pin<&mut Sleep>,
        armed: &mut u64,
        cx: &mut Context<'_>,
    ) -> Poll<Wait> {
        let deadline = self.deadline_ms.load(Ordering::Relaxed);
        // Serving a request; or the timer, not fired yet, is due no later than the deadline.
        if deadline == NONE || (*armed <= deadline && !timer.is_elapsed()) {
            return Poll::Pending;
        }
        let due = self.base + Duration::from_millis(deadline);
        if Instant::now() < due {
            timer.as_mut().reset(due);
            *armed = deadline;
            // Registers this task with the timer, which is not polled again until it fires.
            // Unconstrained: a poll the task's coop budget refused (the connection may have
            // spent it) would register nothing, and leave the deadline unenforced.
            let register = std::pin::pin!(tokio::task::unconstrained(timer.as_mut()));
            if register.poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        Poll::Ready(if self.requests.load(Ordering::Relaxed) == 0 {
            Wait::Headers
        } else {
            Wait::Idle
        })
    }

    fn started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.deadline_ms.store(NONE, Ordering::Relaxed);
    }

    fn finished(&self) {
        let due = millis(self.base.elapsed() + self.idle_timeout);
        self.deadline_ms.store(due, Ordering::Relaxed);
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
