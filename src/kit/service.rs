//! provgate's loops as pingora background services ([`BackgroundService`]), so the server's
//! shutdown reaches them: a SIGTERM stops hashing, watching and fetching, not only the
//! listeners.
//!
//! - [`Blocking`]: a loop that blocks (hashing, reading directories, verifying) runs on the
//!   runtime's blocking pool, never on an async worker; it gets a stop flag that the
//!   shutdown sets, and must look at it often (between reads, at least every
//!   `dirwatch::STOP_SLICE`).
//! - [`Async`]: a future (fetchers, the probe) raced against the shutdown and dropped when
//!   it comes.
//!
//! Each service is started once; readiness stays with what it publishes (its first
//! successful round), not with the service having started.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};

/// A blocking loop, given the stop flag the shutdown sets.
type BlockingBody = Box<dyn FnOnce(Arc<AtomicBool>) + Send>;
/// A loop as a future.
type AsyncBody = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A blocking loop as a background service.
pub struct Blocking {
    body: Mutex<Option<BlockingBody>>,
}

impl Blocking {
    /// The pingora service named `name` that runs `body(stop)` once.
    pub fn service(
        name: &str,
        body: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    ) -> GenBackgroundService<Blocking> {
        background_service(
            name,
            Blocking {
                body: Mutex::new(Some(Box::new(body))),
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
        let flag = stop.0.clone();
        let mut task = tokio::task::spawn_blocking(move || body(flag));
        tokio::select! {
            _ = &mut task => return,
            _ = shutdown_of(shutdown) => stop.0.store(true, Ordering::Relaxed),
        }
        let _ = task.await;
    }
}

/// Sets the stop flag when dropped: pingora shuts a service's runtime down right after the
/// grace period, dropping `start` possibly before it saw the shutdown signal; the blocking
/// loop must stop then too (the runtime waits for blocking work only briefly).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// An async loop as a background service.
pub struct Async {
    body: Mutex<Option<AsyncBody>>,
}

impl Async {
    /// The pingora service named `name` that runs `body` until it ends or the shutdown.
    pub fn service(
        name: &str,
        body: impl Future<Output = ()> + Send + 'static,
    ) -> GenBackgroundService<Async> {
        background_service(
            name,
            Async {
                body: Mutex::new(Some(Box::pin(body))),
            },
        )
    }
}

#[async_trait]
impl BackgroundService for Async {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(body) = self.body.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        tokio::select! {
            _ = body => {}
            _ = shutdown_of(shutdown) => {}
        }
    }
}

#[cfg(test)]
mod tests;
