//! The `[audit]` section: its file struct (every field documented, safe defaults), its
//! validation slice and the validated [`AuditConfig`] the writer is built from.
//!
//! Owns the audit section only; the top-level configuration gathers it and must not reach
//! into it. Loads the checkpoint key here so `provgate run -t` checks it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::keys::SigningKey;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    /// The active JSON Lines file; created if missing, appended to, hash chain continued.
    /// Rotated segments sit beside it as `PATH.000001`, `PATH.000002`, ...; the latest
    /// checkpoint as `PATH.checkpoint`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Also record allowed requests (not only blocked ones).
    #[serde(default)]
    pub log_allowed: bool,
    /// Records queued for the writer; beyond this they are summarised (one record per
    /// decision, reason, model and caller, with a count and a time window), never dropped.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Rotate when the active segment reaches this many bytes.
    #[serde(default = "default_max_segment_bytes")]
    pub max_segment_bytes: u64,
    /// Rotate when the active segment is this old (humantime, e.g. `"24h"`).
    #[serde(default = "default_max_segment_age")]
    pub max_segment_age: String,
    /// Rotated segments kept; older ones are removed and the removal is recorded in the
    /// chain. 0 keeps every segment.
    #[serde(default = "default_keep_segments")]
    pub keep_segments: usize,
    /// How often a checkpoint (chain head and count) is written, besides at shutdown.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: String,
    /// The sidecar's own PKCS#8 PEM private key (`provgate keygen`) that signs checkpoints.
    /// Without it checkpoints are written unsigned and `audit verify --key` fails them.
    #[serde(default)]
    pub checkpoint_key: Option<String>,
    /// When the log cannot be written (disk full, unwritable): `"keep_serving"` (default:
    /// denials are summarised in memory, the failure is counted and
    /// `provgate_audit_writable` drops to 0) or `"fail_closed"` (every request is denied
    /// with `trust_data_unavailable` until the log is writable again).
    #[serde(default = "default_on_write_failure")]
    pub on_write_failure: String,
}

impl Default for AuditFile {
    fn default() -> Self {
        AuditFile {
            path: default_path(),
            log_allowed: false,
            queue: default_queue(),
            max_segment_bytes: default_max_segment_bytes(),
            max_segment_age: default_max_segment_age(),
            keep_segments: default_keep_segments(),
            checkpoint_interval: default_checkpoint_interval(),
            checkpoint_key: None,
            on_write_failure: default_on_write_failure(),
        }
    }
}

fn default_path() -> String {
    "provgate-audit.jsonl".into()
}
fn default_queue() -> usize {
    65_536
}
fn default_max_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_segment_age() -> String {
    "24h".into()
}
fn default_keep_segments() -> usize {
    30
}
fn default_checkpoint_interval() -> String {
    "60s".into()
}
fn default_on_write_failure() -> String {
    "keep_serving".into()
}

/// What the sidecar does while the log cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailure {
    KeepServing,
    FailClosed,
}

/// The validated `[audit]` section.
#[derive(Clone)]
pub struct AuditConfig {
    pub path: PathBuf,
    pub log_allowed: bool,
    pub queue: usize,
    pub max_segment_bytes: u64,
    pub max_segment_age: Duration,
    pub keep_segments: usize,
    pub checkpoint_interval: Duration,
    pub checkpoint_key: Option<Arc<SigningKey>>,
    pub on_write_failure: WriteFailure,
}

impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditConfig")
            .field("path", &self.path)
            .field("log_allowed", &self.log_allowed)
            .field("queue", &self.queue)
            .field("max_segment_bytes", &self.max_segment_bytes)
            .field("max_segment_age", &self.max_segment_age)
            .field("keep_segments", &self.keep_segments)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field(
                "checkpoint_key",
                &self.checkpoint_key.as_ref().map(|k| &k.kid),
            )
            .field("on_write_failure", &self.on_write_failure)
            .finish()
    }
}

impl AuditConfig {
    /// Defaults for a log at `path` (tests and tools).
    pub fn at(path: impl Into<PathBuf>) -> AuditConfig {
        let mut errors = Vec::new();
        let mut c = AuditFile::default().validate(&mut errors);
        c.path = path.into();
        c
    }
}

impl AuditFile {
    /// Turns the section into its validated type, pushing every problem (with its key path)
    /// onto `errors`; the returned value is only used when `errors` stays empty.
    pub fn validate(self, errors: &mut Vec<String>) -> AuditConfig {
        let duration =
            |key: &str, text: &str, errors: &mut Vec<String>| match humantime::parse_duration(text)
            {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    errors.push(format!("audit.{key}: must be more than zero"));
                    Duration::from_secs(1)
                }
                Err(e) => {
                    errors.push(format!("audit.{key}: {text:?}: {e}"));
                    Duration::from_secs(1)
                }
            };
        if self.queue == 0 {
            errors.push("audit.queue: must be at least 1".into());
        }
        if self.max_segment_bytes < 4096 {
            errors.push("audit.max_segment_bytes: must be at least 4096".into());
        }
        if self.path.is_empty() {
            errors.push("audit.path: must not be empty".into());
        }
        let max_segment_age = duration("max_segment_age", &self.max_segment_age, errors);
        let checkpoint_interval =
            duration("checkpoint_interval", &self.checkpoint_interval, errors);
        let checkpoint_key = match &self.checkpoint_key {
            None => None,
            Some(p) => match SigningKey::from_pem_file(std::path::Path::new(p)) {
                Ok(k) => Some(Arc::new(k)),
                Err(e) => {
                    errors.push(format!("audit.checkpoint_key: {e}"));
                    None
                }
            },
        };
        let on_write_failure = match self.on_write_failure.as_str() {
            "keep_serving" => WriteFailure::KeepServing,
            "fail_closed" => WriteFailure::FailClosed,
            other => {
                errors.push(format!(
                    "audit.on_write_failure: {other:?} is not \"keep_serving\" or \"fail_closed\""
                ));
                WriteFailure::KeepServing
            }
        };
        AuditConfig {
            path: PathBuf::from(self.path),
            log_allowed: self.log_allowed,
            queue: self.queue,
            max_segment_bytes: self.max_segment_bytes,
            max_segment_age,
            keep_segments: self.keep_segments,
            checkpoint_interval,
            checkpoint_key,
            on_write_failure,
        }
    }
}
