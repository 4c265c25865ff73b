//! The audit log: JSON Lines, one record per blocked request (and per allowed request when
//! `log_allowed` is set), written by a dedicated thread behind a bounded queue so the request
//! path never waits on the disk. A full queue drops the record and counts it
//! (`provgate_audit_records_total{result="dropped"}`), never silently.
//!
//! Each line carries `seq` and `prev`, the SHA-256 of the previous line's bytes, so an edited,
//! deleted or reordered line breaks the chain at a point `provgate audit verify` names. The
//! chain continues across restarts: the writer reads the file's last line on open.
//! Records hold a caller's `iss` and `sub` only: never a token.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::telemetry::Metrics;

/// The `prev` of the first line of a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audited request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    pub request_id: String,
    /// RFC 3339 UTC time the request arrived.
    pub time: String,
    /// `allow`, `deny` or `would_block` (dry-run).
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// A fixed phrase explaining the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'static str>,
    /// `enforce` or `dry-run`.
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_sub: Option<String>,
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub evidence: Vec<EvidenceRef>,
    pub status: u16,
    pub latency_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvidenceRef {
    pub kind: String,
    pub uri: String,
    pub digest: String,
    pub verdict: String,
}

/// A line as written: the event plus its place in the chain.
#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    #[serde(flatten)]
    event: &'a AuditEvent,
    prev: &'a str,
}

/// The request path's handle: a bounded queue to the writer thread.
#[derive(Clone)]
pub struct AuditLog {
    // Boxed: a bounded std channel allocates every slot up front, so slots stay 8 bytes.
    tx: SyncSender<Box<AuditEvent>>,
    metrics: Arc<Metrics>,
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
    /// Opens (or creates) the log and starts its writer thread.
    pub fn open(
        path: &Path,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> Result<AuditLog, AuditError> {
        let io_err = |source| AuditError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        let (seq, prev) = chain_tail(path).map_err(io_err)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err)?;
        let (tx, rx) = sync_channel(capacity.max(1));
        let writer = Writer {
            out: BufWriter::with_capacity(64 * 1024, file),
            path: path.to_path_buf(),
            seq,
            prev,
            metrics: metrics.clone(),
        };
        std::thread::Builder::new()
            .name("provgate-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err)?;
        Ok(AuditLog { tx, metrics })
    }

    /// Queues an event; never blocks. A full queue drops and counts it.
    pub fn emit(&self, event: AuditEvent) {
        match self.tx.try_send(Box::new(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.metrics.audit_dropped.inc(),
            Err(TrySendError::Disconnected(_)) => self.metrics.audit_failed.inc(),
        }
    }
}

struct Writer {
    out: BufWriter<File>,
    path: PathBuf,
    seq: u64,
    prev: String,
    metrics: Arc<Metrics>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Box<AuditEvent>>) {
        while let Ok(first) = rx.recv() {
            self.write(&first);
            // Drain what is already queued, then flush once.
            while let Ok(more) = rx.try_recv() {
                self.write(&more);
            }
            if let Err(e) = self.out.flush() {
                tracing::error!(path = %self.path.display(), error = %e, "audit log flush failed");
            }
        }
        let _ = self.out.flush();
    }

    fn write(&mut self, event: &AuditEvent) {
        let seq = self.seq + 1;
        let line = match serde_json::to_string(&Line {
            seq,
            event,
            prev: &self.prev,
        }) {
            Ok(l) => l,
            Err(e) => {
                self.metrics.audit_failed.inc();
                tracing::error!(error = %e, "audit record not serialisable");
                return;
            }
        };
        match self
            .out
            .write_all(line.as_bytes())
            .and_then(|_| self.out.write_all(b"\n"))
        {
            Ok(()) => {
                self.seq = seq;
                self.prev = line_hash(line.as_bytes());
                self.metrics.audit_written.inc();
            }
            Err(e) => {
                self.metrics.audit_failed.inc();
                tracing::error!(path = %self.path.display(), error = %e, "audit write failed");
            }
        }
    }
}

/// The hex SHA-256 of a line's bytes (without its newline).
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// The `seq` and hash of an existing log's last line, to continue its chain.
fn chain_tail(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, GENESIS.into())),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    // Read back far enough to hold a whole last line.
    let start = len.saturating_sub(256 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let text = tail.strip_suffix(b"\n").unwrap_or(&tail);
    let last = match text.iter().rposition(|&b| b == b'\n') {
        Some(i) => &text[i + 1..],
        None if start == 0 => text,
        None => return Err(std::io::Error::other("last audit line longer than 256 KiB")),
    };
    if last.is_empty() {
        return Ok((0, GENESIS.into()));
    }
    let seq = serde_json::from_slice::<serde_json::Value>(last)
        .ok()
        .and_then(|v| v.get("seq").and_then(|s| s.as_u64()))
        .unwrap_or(0);
    Ok((seq, line_hash(last)))
}

/// The result of checking a log's chain.
#[derive(Debug, PartialEq, Eq)]
pub enum VerifyOutcome {
    Intact { lines: u64 },
    Broken { line: u64, problem: String },
}

/// Checks every line's `prev` and `seq` against the line before it.
pub fn verify_file(path: &Path) -> std::io::Result<VerifyOutcome> {
    let reader = BufReader::new(File::open(path)?);
    let mut prev = GENESIS.to_string();
    let mut expected_seq: Option<u64> = None;
    let mut n = 0u64;
    for line in reader.split(b'\n') {
        let line = line?;
        n += 1;
        let broken = |problem: String| Ok(VerifyOutcome::Broken { line: n, problem });
        let v: serde_json::Value = match serde_json::from_slice(&line) {
            Ok(v) => v,
            Err(e) => return broken(format!("not a JSON record ({e})")),
        };
        let Some(seq) = v.get("seq").and_then(|s| s.as_u64()) else {
            return broken("no seq field".into());
        };
        let Some(claimed_prev) = v.get("prev").and_then(|p| p.as_str()) else {
            return broken("no prev field".into());
        };
        if let Some(want) = expected_seq {
            if seq != want {
                return broken(format!(
                    "seq {seq} where {want} was expected: {} line(s) missing or reordered before it",
                    seq.abs_diff(want)
                ));
            }
        }
        if claimed_prev != prev {
            return broken(
                "prev does not match the hash of the line before it: that line was edited or removed"
                    .into(),
            );
        }
        prev = line_hash(&line);
        expected_seq = Some(seq + 1);
    }
    Ok(VerifyOutcome::Intact { lines: n })
}

#[cfg(test)]
mod tests;
