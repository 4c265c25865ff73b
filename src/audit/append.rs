//! Appends one record to an audit log from a short-lived command (`provgate promote`), on the
//! same chain as the sidecar's writer: the next `seq`, the previous line's hash as `prev`, a
//! segment record first when the segment has none, so `provgate audit verify` checks it.
//!
//! Owns only this one-shot append, under an exclusive lock file `PATH.lock` (two promotions
//! at once do not fork the chain). It must not be pointed at a log a running sidecar writes:
//! the sidecar's writer keeps its chain in memory and does not take the lock. A log whose
//! last line cannot be read is refused, never continued with a break.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use super::record::{encode_line, Body, Marker, GENESIS};
use super::segments::{self, Tail};

/// Why a record could not be appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("audit log {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("audit log {path}: its last line cannot be read ({why}); not continuing its chain")]
    Tail { path: String, why: String },
    #[error(
        "audit log {path}: {lock} exists: another promotion is appending (or one died: remove it)"
    )]
    Locked { path: String, lock: String },
    #[error("audit record not serialisable: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Appends `marker` to the log whose active file is `path` (created, with its directory, when
/// missing), continuing the chain of the active file or, when it is empty, of the last
/// rotated segment. Returns the new line's `seq`.
pub fn append(path: &Path, marker: &Marker) -> Result<u64, AppendError> {
    let io = |source| AppendError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    // Held until the end of this function.
    let _lock = Lock::take(path)?;
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    let active_len = file.metadata().map_err(io)?.len();
    let rotated = segments::rotated(path).map_err(io)?;
    let tail = if active_len > 0 {
        segments::read_tail(path).map_err(io)?
    } else {
        match rotated.last() {
            Some((_, p)) => segments::read_tail(p).map_err(io)?,
            None => Tail::Empty,
        }
    };
    let (mut seq, mut prev) = match tail {
        Tail::Empty => (0, GENESIS.to_string()),
        Tail::Line { seq, hash } => (seq, hash),
        Tail::Unreadable(why) => {
            return Err(AppendError::Tail {
                path: path.display().to_string(),
                why,
            })
        }
    };
    let mut out = String::new();
    let mut push = |body: Body<'_>| -> Result<(), AppendError> {
        seq += 1;
        let line = encode_line(seq, body, &prev)?;
        prev = super::record::line_hash(line.as_bytes());
        out.push_str(&line);
        out.push('\n');
        Ok(())
    };
    if active_len == 0 {
        // A new segment begins with its record, numbered after the rotated ones.
        push(Body::Marker(&Marker::Segment {
            segment: rotated.last().map_or(1, |(i, _)| i + 1),
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            chain_break: None,
        }))?;
    }
    push(Body::Marker(marker))?;
    file.write_all(out.as_bytes()).map_err(io)?;
    file.sync_data().map_err(io)?;
    Ok(seq)
}

/// `PATH.lock`, created exclusively, removed on drop.
struct Lock(std::path::PathBuf);

impl Lock {
    /// Takes the lock, waiting up to five seconds for another holder.
    fn take(path: &Path) -> Result<Lock, AppendError> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        let lock = path.with_file_name(name);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&lock) {
                Ok(_) => return Ok(Lock(lock)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if std::time::Instant::now() >= deadline {
                        return Err(AppendError::Locked {
                            path: path.display().to_string(),
                            lock: lock.display().to_string(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(AppendError::Io {
                        path: lock.display().to_string(),
                        source,
                    })
                }
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
