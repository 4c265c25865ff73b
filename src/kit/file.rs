//! The one way provgate reads a file whose content it does not control (records,
//! `revoked.txt`, signatures, keys, token and credential files): opened without blocking,
//! checked to be a regular file on the opened descriptor, and read through a cap.
//!
//! - The open uses `O_NONBLOCK | O_NOCTTY`: a FIFO opens at once instead of waiting for a
//!   writer; a terminal never becomes the controlling one.
//! - `fstat` on the opened descriptor (not the path, which may be swapped meanwhile) must say
//!   regular file: a FIFO, socket or character device (`/dev/zero`, directly or through a
//!   symbolic link) is refused before a byte is read.
//! - A file whose size is over the cap for its kind ([`Kind::limit`]) is refused before a
//!   byte is read; the read itself goes through `Read::take(limit + 1)`, so a file that grows
//!   while read still costs at most the cap.
//!
//! This module owns only the reading; what a caller does with the bytes is the caller's.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// What a file is, for its size cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One approval record (`*.jws`, `*.jwt` in a registry directory).
    Record,
    /// `revoked.txt`: one record ID per line.
    Revocations,
    /// An OMS signature (`model.sig`, a Sigstore bundle).
    Signature,
    /// A token or credential file (`token_file`, `basic_auth_file`, `identity_token_file`).
    Credential,
    /// A key file: a PEM key, a JWKS file, a CA bundle.
    Keys,
}

impl Kind {
    /// The largest file of this kind that is read (bytes); documented in the README.
    pub const fn limit(self) -> u64 {
        match self {
            Kind::Record => 1 << 20,
            Kind::Revocations => 4 << 20,
            Kind::Signature => 16 << 20,
            Kind::Credential => 64 << 10,
            Kind::Keys => 1 << 20,
        }
    }

    /// The kind's name, for errors.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Record => "record",
            Kind::Revocations => "revocation list",
            Kind::Signature => "signature",
            Kind::Credential => "credential",
            Kind::Keys => "key file",
        }
    }
}

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a regular file ({what})")]
    NotRegular { path: String, what: &'static str },
    #[error("{path}: {kind} larger than {limit} bytes")]
    TooLarge {
        path: String,
        kind: &'static str,
        limit: u64,
    },
    #[error("{path}: not UTF-8")]
    NotUtf8 { path: String },
}

impl ReadError {
    /// The file does not exist (a missing optional file is not an error to some callers).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// What a non-regular file is, for the error.
fn what(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

/// Opens `path` without blocking and returns it with its `fstat`, refusing anything but a
/// regular file. Never blocks on a FIFO or device.
pub fn open_regular(path: &Path) -> Result<(File, Metadata), ReadError> {
    let io = |source| ReadError::Io {
        path: shown(path),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular {
            path: shown(path),
            what: what(&meta),
        });
    }
    Ok((file, meta))
}

/// Reads a regular file of at most `kind`'s cap.
pub fn read(path: &Path, kind: Kind) -> Result<Vec<u8>, ReadError> {
    read_limited(path, kind.limit(), kind.name())
}

/// Reads a regular file of at most `kind`'s cap, as UTF-8.
pub fn read_string(path: &Path, kind: Kind) -> Result<String, ReadError> {
    String::from_utf8(read(path, kind)?).map_err(|_| ReadError::NotUtf8 { path: shown(path) })
}

/// Reads a regular file of at most `limit` bytes (`name` names its kind in the error).
pub fn read_limited(path: &Path, limit: u64, name: &'static str) -> Result<Vec<u8>, ReadError> {
    let too_large = || ReadError::TooLarge {
        path: shown(path),
        kind: name,
        limit,
    };
    let (file, meta) = open_regular(path)?;
    if meta.len() > limit {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|source| ReadError::Io {
            path: shown(path),
            source,
        })?;
    if out.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

// === File identity ===

/// What identifies one version of a file's content without reading it: if any of these
/// differ, the file is hashed again.
///
/// The change time (ctime) is what makes this sound: size and mtime can both be put back by
/// a user (`touch -d`, `utimensat`) after an edit in place, but ctime is set by the kernel on
/// every content or metadata change and cannot be set from user space, so an edit that keeps
/// the size and restores the mtime still changes it. The inode and device catch a file
/// replaced by another (rename over it), whatever its times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileIdentity {
    pub size: u64,
    /// (seconds, nanoseconds) since the epoch.
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub inode: u64,
    pub dev: u64,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
            dev: meta.dev(),
        }
    }

    /// The change time as a `SystemTime` (None if before the epoch or unrepresentable).
    pub fn changed_at(&self) -> Option<SystemTime> {
        let (s, ns) = self.ctime;
        let secs = u64::try_from(s).ok()?;
        let nanos = u32::try_from(ns).ok()?;
        SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
    }
}
