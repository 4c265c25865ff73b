//! provgate's loops as pingora background services ([`BackgroundService`]), so the server's
//! shutdown reaches them: a SIGTERM stops hashing, watching and fetching, not only the
//! listeners.
//!
//! - [`Blocking`]: a loop that blocks (hashing, reading directories, verifying) runs on the
//!   runtime's blocking pool, never on an async worker; it gets a stop flag that the
//!   shutdown sets ([`super::stop::set`], which wakes the loops waiting on it), and must
//!   look at it between reads and whenever it wakes.
//! - [`Async`]: a future (fetchers, the probe) raced against the shutdown and dropped when
//!   it comes.
//!
//! Each service is started once; readiness stays with what it publishes (its first
//! successful round), not with the service having started.
//!
//! A panic in a service's body is caught (the body runs as its own tokio task, which holds
//! the unwind), counted in `provgate_background_panics_total{service}` under the service's
//! static kind, logged, and answered by the service's [`OnPanic`] fail-closed action (the
//! state it publishes is marked unavailable, or left to age past its `max_stale`); the body
//! is then started again from its factory after a backoff (1 s doubling to 30 s, back to 1 s
//! after a run of a minute). Knows nothing of what the services publish: the action is given.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::kit::backoff::Backoff;

/// A blocking loop, given the stop flag the shutdown sets; called again after a panic.
type BlockingBody = Arc<dyn Fn(Arc<AtomicBool>) + Send + Sync>;
/// A loop as a future.
type AsyncBody = Pin<Box<dyn Future<Output = ()> + Send>>;
/// Makes the loop's future; called again after a panic.
type AsyncMake = Arc<dyn Fn() -> AsyncBody + Send + Sync>;

/// The first wait before a panicked body starts again; doubled up to [`PANIC_BACKOFF_MAX`].
pub const PANIC_BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const PANIC_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run at least this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// What a service does when its body panics: counted under `kind` (a static name, a bounded
/// label), logged, then `fail_closed` runs before the restart's backoff.
#[derive(Clone)]
pub struct OnPanic {
    kind: &'static str,
    panics: prometheus::IntCounter,
    fail_closed: Arc<dyn Fn() + Send + Sync>,
}

impl OnPanic {
    /// `panics`: the `provgate_background_panics_total` family (label `service`).
    pub fn new(
        kind: &'static str,
        panics: &prometheus::IntCounterVec,
        fail_closed: impl Fn() + Send + Sync + 'static,
    ) -> OnPanic {
        OnPanic {
            kind,
            panics: panics.with_label_values(&[kind]),
            fail_closed: Arc::new(fail_closed),
        }
    }

    /// A service whose published state needs no action of its own: it ages (a freshness
    /// clock no longer restarted, so `max_stale` applies) until the restarted body succeeds.
    pub fn count_only(kind: &'static str, panics: &prometheus::IntCounterVec) -> OnPanic {
        OnPanic::new(kind, panics, || {})
    }

    /// A panic was caught with this payload.
    pub fn caught(&self, payload: &(dyn Any + Send)) {
        self.panics.inc();
        tracing::error!(
            service = self.kind,
            panic = panic_message(payload),
            "background service panicked; failing closed, restarting after a backoff"
        );
        (self.fail_closed)();
    }
}

/// The panic `PROVGATE_DEBUG_PANIC` asks of services of `kind`, after how long (debug builds
/// only, see [`super::fault`]).
fn injected_panic(kind: &str) -> Option<Duration> {
    super::fault::injected("PROVGATE_DEBUG_PANIC", kind)
}

/// The injected fault itself (debug builds only, see [`injected_panic`]).
#[allow(clippy::panic)] // The point of the hook; unreachable in release builds.
fn inject_panic(kind: &str) -> ! {
    panic!("injected fault in {kind} (PROVGATE_DEBUG_PANIC)")
}

/// A panic's message, when it has one (`panic!` with a literal or a format).
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs the task `start` makes until it ends without a panic or the shutdown comes (then
/// `stop` is set and the task awaited, or, without `stop`, the task is aborted); after a
/// panic, `on_panic` and a backoff (cut short by the shutdown) before the next task.
async fn supervise(
    shutdown: ShutdownWatch,
    on_panic: &OnPanic,
    stop: Option<&AtomicBool>,
    start: impl Fn() -> JoinHandle<()>,
) {
    let shutdown = shutdown_of(shutdown);
    tokio::pin!(shutdown);
    let mut backoff = Backoff::new(PANIC_BACKOFF_FIRST, PANIC_BACKOFF_MAX);
    loop {
        let started = Instant::now();
        let mut task = start();
        // The service's own future dropped by a runtime shutdown takes an async body along.
        let _abort = AbortOnDrop(task.abort_handle());
        let payload = tokio::select! {
            r = &mut task => match r {
                Err(e) if e.is_panic() => e.into_panic(),
                _ => return,
            },
            _ = shutdown.as_mut() => {
                match stop {
                    Some(flag) => super::stop::set(flag),
                    None => task.abort(),
                }
                let _ = task.await;
                return;
            }
        };
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        on_panic.caught(&*payload);
        tokio::select! {
            _ = tokio::time::sleep(backoff.fail()) => {}
            _ = shutdown.as_mut() => return,
        }
    }
}

/// Aborts an async task when dropped (a blocking one runs on: it has the stop flag).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A blocking loop as a background service.
pub struct Blocking {
    body: Mutex<Option<BlockingBody>>,
    on_panic: OnPanic,
}

impl Blocking {
    /// The pingora service named `name` that runs `body(stop)`, again after a panic.
    pub fn service(
        name: &str,
        on_panic: OnPanic,
        body: impl Fn(Arc<AtomicBool>) + Send + Sync + 'static,
    ) -> GenBackgroundService<Blocking> {
        background_service(
            name,
            Blocking {
                body: Mutex::new(Some(Arc::new(body))),
                on_panic,
            },
        )
    }
}

/// Waits for the shutdown signal (or for the server to go away).
async fn shutdown_of(mut shutdown: ShutdownWatch) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

#[async_trait]
impl BackgroundService for Blocking {
    async fn start(&self, shutdown: ShutdownWatch) {
        // Started once: pingora starts each service once; a second start finds nothing.
        let Some(body) = self.body.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let kind = self.on_panic.kind;
        let inject = AtomicBool::new(true);
        supervise(shutdown, &self.on_panic, Some(&stop.0), || {
            let flag = stop.0.clone();
            let body = body.clone();
            let Some(after) =
                injected_panic(kind).filter(|_| inject.swap(false, Ordering::Relaxed))
            else {
                return tokio::task::spawn_blocking(move || body(flag));
            };
            // The first run gets its own stop flag, raised after `after` (or by the
            // shutdown); then it panics as a broken body would.
            let run = Arc::new(AtomicBool::new(false));
            let (raise, shutdown) = (run.clone(), flag.clone());
            tokio::spawn(async move {
                let due = Instant::now() + after;
                while Instant::now() < due && !shutdown.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                super::stop::set(&raise);
            });
            tokio::task::spawn_blocking(move || {
                body(run);
                if !flag.load(Ordering::Relaxed) {
                    inject_panic(kind);
                }
            })
        })
        .await;
    }
}

/// Sets the stop flag when dropped: pingora shuts a service's runtime down right after the
/// grace period, dropping `start` possibly before it saw the shutdown signal; the blocking
/// loop must stop then too (the runtime waits for blocking work only briefly).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        super::stop::set(&self.0);
    }
}

/// An async loop as a background service.
pub struct Async {
    make: Mutex<Option<AsyncMake>>,
    on_panic: OnPanic,
}

impl Async {
    /// The pingora service named `name` that runs `make()` until it ends or the shutdown,
    /// and a new `make()` after a panic.
    pub fn service<F>(
        name: &str,
        on_panic: OnPanic,
        make: impl Fn() -> F + Send + Sync + 'static,
    ) -> GenBackgroundService<Async>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let make: AsyncMake = Arc::new(move || Box::pin(make()));
        background_service(
            name,
            Async {
                make: Mutex::new(Some(make)),
                on_panic,
            },
        )
    }
}

#[async_trait]
impl BackgroundService for Async {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(make) = self.make.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        // Its own task, so that a panic unwinds into the join handle, not through here.
        let kind = self.on_panic.kind;
        let inject = AtomicBool::new(true);
        supervise(shutdown, &self.on_panic, None, || {
            let body = make();
            match injected_panic(kind).filter(|_| inject.swap(false, Ordering::Relaxed)) {
                None => tokio::spawn(body),
                Some(after) => tokio::spawn(async move {
                    tokio::select! {
                        _ = body => {}
                        _ = tokio::time::sleep(after) => {}
                    }
                    inject_panic(kind)
                }),
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests;
