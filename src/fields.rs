//! Configuration field parsers shared by every section, and [`Errors`], the collector that
//! lets each section report every problem at once, each prefixed with its key path
//! (`registry.url: ...`). Almost a leaf: it imports nothing from the crate but the kit's
//! bounded file reader, so each component's `config` file can use it without reaching back
//! into the top-level `config`.
//!
//! It owns no section and no validated type; the messages it writes are the ones a user
//! reads from `provgate run -t`, so they change only together with the tests asserting them.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every problem found so far, each one line starting with its key path.
#[derive(Debug, Default)]
pub struct Errors {
    messages: Vec<String>,
}

impl Errors {
    pub fn new() -> Errors {
        Errors::default()
    }

    /// Records `key: message`.
    pub fn push(&mut self, key: impl Display, message: impl Display) {
        self.messages.push(format!("{key}: {message}"));
    }

    /// Takes lines already written as `key: message` (a section that collects into a
    /// plain list, such as `[routing]`).
    pub fn extend(&mut self, lines: impl IntoIterator<Item = String>) {
        self.messages.extend(lines);
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The lines, in the order they were found.
    pub fn into_messages(self) -> Vec<String> {
        self.messages
    }

    /// An `IP:port` socket address; a placeholder (`127.0.0.1:0`) after an error.
    pub fn socket_addr(&mut self, key: &str, value: &str) -> SocketAddr {
        value.parse().unwrap_or_else(|_| {
            self.push(
                key,
                format_args!("{value:?} is not an IP:port socket address"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    /// A human duration (`5s`, `250ms`); one second after an error.
    pub fn duration(&mut self, key: &str, value: &str) -> Duration {
        parse_duration(value).unwrap_or_else(|e| {
            self.push(
                key,
                format_args!("{value:?} is not a duration ({e}); write e.g. \"5s\" or \"250ms\""),
            );
            Duration::from_secs(1)
        })
    }

    /// A byte size (`1048576`, `64KiB`, `256MiB`, `1GiB`; `K`/`M`/`G` are powers of 1024
    /// too); one MiB after an error.
    pub fn bytes(&mut self, key: &str, value: &str) -> u64 {
        parse_bytes(value).unwrap_or_else(|| {
            self.push(
                key,
                format_args!("{value:?} is not a byte size; write e.g. \"256MiB\" or \"1GiB\""),
            );
            1 << 20
        })
    }

    /// One of a closed set of words: `options` pairs each word with its value. An unknown
    /// word is reported as `"x" is not one of "a", "b"` and gives `None`.
    pub fn choice<T: Copy>(&mut self, key: &str, value: &str, options: &[(&str, T)]) -> Option<T> {
        if let Some((_, v)) = options.iter().find(|(word, _)| *word == value) {
            return Some(*v);
        }
        let words: Vec<String> = options.iter().map(|(w, _)| format!("{w:?}")).collect();
        self.push(
            key,
            format_args!("{value:?} is not one of {}", words.join(", ")),
        );
        None
    }

    /// A value that must not be blank.
    pub fn nonempty(&mut self, key: &str, value: &str) {
        if value.trim().is_empty() {
            self.push(key, "must not be empty");
        }
    }

    /// A duration that must not be zero.
    pub fn more_than_zero(&mut self, key: &str, value: Duration) {
        if value.is_zero() {
            self.push(key, "must be more than zero");
        }
    }

    /// A path that must exist now (its content is read later, by its owner).
    pub fn existing_path(&mut self, key: &str, path: &str) -> PathBuf {
        if let Err(e) = std::fs::metadata(path) {
            self.push(key, format_args!("{path}: {e}"));
        }
        PathBuf::from(path)
    }

    /// A file that must be readable now (a credential re-read later by its owner).
    pub fn readable_file(&mut self, key: &str, path: &str) -> PathBuf {
        if let Err(e) = crate::kit::file::read(Path::new(path), crate::kit::file::Kind::Credential)
        {
            self.push(key, e);
        }
        PathBuf::from(path)
    }

    /// A file read once, at load (e.g. a PEM CA bundle); `None` after an error.
    pub fn read_file(&mut self, key: &str, path: &str) -> Option<Vec<u8>> {
        crate::kit::file::read(Path::new(path), crate::kit::file::Kind::Keys)
            .map_err(|e| self.push(key, e))
            .ok()
    }
}

/// A byte size: digits, then optionally `K`, `KiB`, `M`, `MiB`, `G` or `GiB` (all powers of
/// 1024) or `B`.
pub fn parse_bytes(value: &str) -> Option<u64> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// A human duration (`5s`, `1h`, `250ms`).
pub fn parse_duration(value: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(value)
}

#[cfg(test)]
mod tests;
