//! The reference registry server (`provgate registry serve`): serves a directory of approval
//! records over the registry HTTP contract (README "The registry contract"), so the path form,
//! the signed revocation list and the watch can be used and tested without a real registry.
//!
//! It owns the server only: [`index`] turns the directory into ready answers (grouped by each
//! record's claimed `artefact.digest`, never verified: the sidecars verify), [`service`]
//! answers requests from the current index and holds watches, [`reqlog`] writes one line per
//! request for the fleet simulation, [`revocations`] signs the revocation list approvers
//! publish, [`upload`] takes records `PUT` by a pipeline (`provgate promote`) when a token is
//! configured. It must not touch the sidecar's registry client or its caches: a sidecar talks to
//! this server only over HTTP, like any other registry.
//!
//! Bounds: at most `max_connections` connections and `max_watchers` held requests; request
//! heads over [`MAX_HEAD`] bytes are refused by the HTTP layer; only the exact URL forms of
//! the contract are served, everything else is 404 (no file is ever opened from a URL; an
//! upload's file name comes from the record ID, checked).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

pub mod index;
pub mod reqlog;
pub mod revocations;
pub mod service;
pub mod upload;

/// The largest request head (request line and headers) read, in bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// The longest hold a watch gets, whatever it asks for (before jitter).
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long a connection may take to send a request head (and idle between requests).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(75);

/// What `provgate registry serve` was asked to do.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The registry directory (the `[registry] kind = "dir"` layout).
    pub dir: PathBuf,
    pub listen: SocketAddr,
    /// Requests held open by a watch at once; past it a watch is answered at once (304).
    pub max_watchers: usize,
    /// Open connections at once; past it a new connection is closed at once.
    pub max_connections: usize,
    /// The periodic rescan of the directory, beside inotify.
    pub rescan: Duration,
    /// One line per request (arrival, form, status, hold), for the fleet simulation.
    pub request_log: Option<PathBuf>,
    /// Accept `PUT /approvals/sha256/<hex>` with this bearer token (a file, read at start).
    pub upload_token_file: Option<PathBuf>,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Load(#[from] index::LoadError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the reload thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    Upload(#[from] upload::TokenError),
    #[error("request log {path}: {source}")]
    RequestLog {
        path: String,
        source: std::io::Error,
    },
}

/// Loads the directory, binds, calls `bound` with the listening address, and serves until
/// `shutdown` resolves; the directory is re-read on change by a watch thread that stops with
/// the server.
pub async fn serve(
    config: ServeConfig,
    bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let upload = match &config.upload_token_file {
        Some(file) => Some(upload::Upload::new(config.dir.clone(), file)?),
        None => None,
    };
    let first = index::load(&config.dir)?;
    tracing::info!(dir = %config.dir.display(), records = first.records, digests = first.digests(),
        skipped = first.skipped, revocation_list = first.has_revocation_list(), "registry loaded");
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(first));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let (log, closer) = match &config.request_log {
        Some(path) => {
            let (log, closer) =
                reqlog::RequestLog::create(path).map_err(|source| ServeError::RequestLog {
                    path: path.display().to_string(),
                    source,
                })?;
            (Some(log), Some(closer))
        }
        None => (None, None),
    };
    let stop = Arc::new(AtomicBool::new(false));
    index::spawn_reload(config.dir.clone(), config.rescan, tx, stop.clone())
        .map_err(ServeError::Thread)?;
    tracing::info!(%addr, max_watchers = config.max_watchers,
        max_connections = config.max_connections, "registry serving");
    bound(addr);
    let shared = Arc::new(service::Shared::new(rx, config.max_watchers, log).with_upload(upload));
    service::accept_loop(listener, shared, config.max_connections, shutdown).await;
    // The reload thread wakes and stops; nothing to wait for.
    crate::kit::stop::set(&stop);
    if let Some(closer) = closer {
        let _ = tokio::task::spawn_blocking(move || closer.close()).await;
    }
    tracing::info!("registry server stopped");
    Ok(())
}

#[cfg(test)]
mod tests;
