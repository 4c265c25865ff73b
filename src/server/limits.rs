//! Client connection limits and deadlines around pingora's HTTP application: a total and a
//! per-client (source IP) connection limit, checked as a connection is handed over after
//! the accept (and the TLS handshake), and the header and idle deadlines of
//! [`crate::kit::conn`], enforced by racing the connection against them. pingora 0.9 has
//! only per-read timeouts (a client sending one header line every few seconds is never cut
//! off) and no connection limits, so provgate wraps its [`ServerApp`].
//!
//! Not covered here: the TCP accept queue and the TLS handshake (before the hand-over; the
//! kernel's backlog bounds the former), HTTP/2 connections (deadlines only: pingora's HTTP/2
//! streams run on their own tasks, so the marks cannot reach them; provgate's listener does
//! not offer HTTP/2), and a slow request body (pingora's per-read timeout, the body size
//! limits). Owns no request logic: it must not look at requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

use crate::kit::conn::{Phase, Wait};
use crate::telemetry::Metrics;

/// The answer to a connection over a limit, written before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
cache-control: no-store\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 34\r\n\r\n\
{\"error\":\"too_many_connections\"}\r\n";

/// How long writing [`REFUSED`] may take.
const REFUSE_WRITE: Duration = Duration::from_secs(1);

/// The validated limits (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
}

/// Open connections, in total and per source IP.
pub struct Counts {
    limits: Limits,
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    Client,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Total => "total",
            Refused::Client => "client",
        }
    }
}

/// One admitted connection; dropping it gives its place back.
pub struct Permit<'a> {
    counts: &'a Counts,
    client: Option<IpAddr>,
}

impl Counts {
    pub fn new(limits: Limits) -> Counts {
        Counts {
            limits,
            total: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a connection from `client` (unknown: counted in the total only).
    pub fn admit(&self, client: Option<IpAddr>) -> Result<Permit<'_>, Refused> {
        let before = self.total.fetch_add(1, Ordering::AcqRel);
        // From here the permit gives the total back, whatever happens below.
        let mut permit = Permit {
            counts: self,
            client: None,
        };
        if before >= self.limits.max_connections {
            return Err(Refused::Total);
        }
        if let Some(ip) = client {
            // A poisoned lock only means another connection's task panicked mid-update;
            // the map is still a valid count.
            let mut map = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= self.limits.max_connections_per_client {
                if *n == 0 {
                    map.remove(&ip);
                }
                return Err(Refused::Client);
            }
            *n += 1;
            permit.client = Some(ip);
        }
        Ok(permit)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.client {
            let mut map = self
                .counts
                .per_client
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// pingora's HTTP application `A` behind the limits and deadlines.
pub struct Guarded<A> {
    pub inner: Arc<A>,
    pub counts: Counts,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let _permit = match self.counts.admit(client) {
            Ok(p) => p,
            Err(limit) => {
                self.metrics
                    .connections_refused
                    .with_label_values(&[limit.label()])
                    .inc();
                let _ = tokio::time::timeout(REFUSE_WRITE, async {
                    stream.write_all(REFUSED).await?;
                    stream.flush().await
                })
                .await;
                return None;
            }
        };
        self.metrics.connections_open.inc();
        let _open = OpenGauge(&self.metrics.connections_open);
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.inner.process_new(stream, shutdown).await;
        }
        let limits = &self.counts.limits;
        let phase = Phase::new(limits.header_timeout, limits.idle_timeout);
        let cut = |wait: Wait| {
            tracing::debug!(
                wait = wait.label(),
                "client connection closed waiting for request headers"
            );
            self.metrics
                .connections_timed_out
                .with_label_values(&[wait.label()])
                .inc();
        };
        // Counted before the connection is closed. `flatten`: a cut connection is not reused.
        phase
            .run(self.inner.process_new(stream, shutdown), cut)
            .await
            .flatten()
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Decrements the open-connections gauge when dropped.
struct OpenGauge<'a>(&'a prometheus::IntGauge);

impl Drop for OpenGauge<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests;
