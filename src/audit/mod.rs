//! The audit log: JSON Lines, one record per blocked request (and per allowed request when
//! `log_allowed` is set), written by a dedicated thread behind a bounded queue so the request
//! path never waits on the disk.
//!
//! Owns the request path's handle ([`AuditLog`]: cut fields to their bounds, queue, and on a
//! full queue count the record into a summary instead of dropping it) and gathers its rooms:
//! `record` (line format and bounds), `writer` (the thread: batches, rotation, checkpoints,
//! summaries, failure), `segments` (naming, tail read), `checkpoint` (signed heads), `read`
//! (bounded streaming), `verify`, `query` (query and summary), `ocsf` (export), `append` (one
//! record from a command, `provgate promote`) and `config`.
//! It must not decide anything about the request: the proxy hands it a finished event.
//! Records hold a caller's `iss` and `sub` only: never a token.

pub mod append;
pub mod checkpoint;
pub mod config;
pub mod ocsf;
pub mod query;
pub mod read;
pub mod record;
pub mod segments;
pub mod verify;
pub mod writer;

use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

pub use self::config::{AuditConfig, WriteFailure};
pub use self::record::{line_hash, AuditEvent, EvidenceRef, ExceptionRef, GENESIS, MAX_LINE_BYTES};
use self::writer::{Shared, Writer};
use crate::policy::{Decision, DenyReason};
use crate::telemetry::Metrics;

/// The request path's handle: a bounded queue to the writer thread.
#[derive(Clone)]
pub struct AuditLog {
    // Boxed: a bounded std channel allocates every slot up front, so slots stay 8 bytes.
    // `None` wakes the writer (a shutdown, or summaries to write) without an event.
    tx: SyncSender<Option<Box<AuditEvent>>>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    fail_closed: bool,
}

/// Errors opening the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl AuditLog {
    /// Opens (or creates) the log and starts its writer thread. An existing log whose last
    /// line cannot be read does not stop this: a new segment starts and records why.
    pub fn open(config: &AuditConfig, metrics: Arc<Metrics>) -> Result<AuditLog, AuditError> {
        let io_err = |source| AuditError::Io {
            path: config.path.display().to_string(),
            source,
        };
        let shared = Arc::new(Shared::default());
        let writer =
            Writer::open(config.clone(), metrics.clone(), shared.clone()).map_err(io_err)?;
        let (tx, rx) = sync_channel(config.queue.max(1));
        let restart = (config.clone(), metrics.clone(), shared.clone());
        std::thread::Builder::new()
            .name("provgate-audit".into())
            .spawn(move || supervise_writer(writer, &rx, restart))
            .map_err(io_err)?;
        Ok(AuditLog {
            tx,
            shared,
            metrics,
            fail_closed: config.on_write_failure == WriteFailure::FailClosed,
        })
    }

    /// Queues an event; never blocks. Fields are cut to their bounds here, so a queued
    /// record's size is bounded too. A full queue counts the event into a summary that the
    /// writer writes as soon as it catches up.
    pub fn emit(&self, mut event: AuditEvent) {
        event.bound();
        match self.tx.try_send(Some(Box::new(event))) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                if let Some(event) = event {
                    self.shared.summarise(&event, "queue_full");
                    self.metrics.audit_summarised.inc();
                }
                // The writer writes the summary once it has caught up: a full queue keeps
                // it awake, and when the queue drained meanwhile this wakes it.
                let _ = self.tx.try_send(None);
            }
            Err(TrySendError::Disconnected(_)) => self.metrics.audit_failed.inc(),
        }
    }

    /// With `on_write_failure = "fail_closed"`, turns an allow into a denial while the log
    /// cannot be written; otherwise returns the decision unchanged.
    pub fn gate(&self, decision: Decision) -> Decision {
        if self.fail_closed
            && decision.reason().is_none()
            && self.shared.failing.load(Ordering::Acquire)
        {
            return Decision::Deny {
                reason: DenyReason::TrustDataUnavailable,
                detail: "audit log cannot be written (on_write_failure = fail_closed)",
                record: None,
            };
        }
        decision
    }

    /// Whether the log cannot be written right now.
    pub fn failing(&self) -> bool {
        self.shared.failing.load(Ordering::Acquire)
    }

    /// Finishes the log at shutdown: drains the queue, writes pending summaries and a
    /// checkpoint, syncs. Waits at most `within`.
    pub fn close(&self, within: Duration) -> bool {
        self.shared.stop.store(true, Ordering::Release);
        // A full queue keeps the writer awake; otherwise this wakes it.
        let _ = self.tx.try_send(None);
        self.shared.close(within)
    }
}

/// Runs the writer; a panic in it is caught, counted (`provgate_background_panics_total
/// {service="audit writer"}`) and logged, the log counts as failing (so `on_write_failure`
/// applies: `fail_closed` denies, `keep_serving` reports `provgate_audit_writable 0`) and,
/// after a backoff, a writer is opened again from the file, resuming its chain as after a
/// crash. Records queued meanwhile wait in the queue (or are summarised when it is full).
fn supervise_writer(
    first: Writer,
    rx: &std::sync::mpsc::Receiver<Option<Box<record::AuditEvent>>>,
    (config, metrics, shared): (AuditConfig, Arc<Metrics>, Arc<Shared>),
) {
    use crate::kit::service::{panic_message, PANIC_BACKOFF_FIRST, PANIC_BACKOFF_MAX};
    let panics = metrics
        .background_panics
        .with_label_values(&["audit writer"]);
    let mut backoff = crate::kit::backoff::Backoff::new(PANIC_BACKOFF_FIRST, PANIC_BACKOFF_MAX);
    let mut writer = Some(first);
    loop {
        let w = match writer.take() {
            Some(w) => w,
            None => match Writer::open(config.clone(), metrics.clone(), shared.clone()) {
                Ok(w) => {
                    // Opened and attached to its file (else it starts failed, and recovers
                    // on its own like any writer).
                    if metrics.audit_writable.get() == 1 {
                        shared.failing.store(false, Ordering::Release);
                    }
                    w
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit writer could not be opened again");
                    std::thread::sleep(backoff.fail());
                    continue;
                }
            },
        };
        // The writer is dropped with the panic; the next one reads its state from the file.
        let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run(rx)))
        else {
            return;
        };
        panics.inc();
        shared.failing.store(true, Ordering::Release);
        metrics.audit_writable.set(0);
        tracing::error!(service = "audit writer", panic = panic_message(&*payload),
            "background service panicked; the audit log counts as failing until a writer is open again");
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(backoff.fail());
    }
}

#[cfg(test)]
mod tests;
