//! The persisted manifest: a model directory's per-file digests with the identity (size,
//! mtime, ctime, inode, device) each file had when it was listed, written after a complete
//! hash and read at the next start, so that a restart over an unchanged model reads no file
//! again. Owns the file format, its seal (HMAC-SHA-256 under a key the sidecar holds), its
//! bounded read and its atomic write; it decides nothing about reuse (that is
//! [`super::plan`]'s rule, the same as for the running incremental hash) and publishes
//! nothing (the artefact watcher does).
//!
//! Why a cache someone else wrote can cost a re-hash but never an approval:
//! - a digest is taken from the cache only for a file whose identity, read from the live file
//!   system at start, equals the recorded one, and whose ctime is older than the recording
//!   hash's listing by [`super::RACY_MARGIN`]: a file changed since has a new ctime (the kernel
//!   sets it; user space cannot) or a new inode;
//! - identities can be read by anyone who can `stat` the model, so they prove nothing about
//!   the digest next to them: a cache that pairs the live identities with the digests of an
//!   approved model would publish that model's root digest for other weights. The cache is
//!   therefore sealed: an HMAC over its whole body under a key (`manifest_cache_key`, or a
//!   0600 key file provgate creates beside the cache). An edited, truncated, oversized,
//!   other-version or other-key cache is ignored and every file is read;
//! - the sealed `root` and serialization must match the configured ones, the recorded root
//!   digest must be the SHA-256 of the recorded digests, and a clock behind the time the
//!   cache was listed voids it (a clock set back is the one way to give a rewritten file an
//!   old ctime).
//!
//! What the seal cannot stop (someone who can read the key, or set the clock and write the
//! model) is bounded by the watcher: a start that reused persisted digests asks the scrub
//! to read every file at once (README "Restart without re-hashing").

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::kit::file::{self, ReadError};

use super::{FileIdentity, HashStats, Manifest, ManifestFile, Serialization};

/// The `format` word of a cache file.
pub const FORMAT: &str = "provgate-manifest-cache";

/// The format version this build writes and reads; any other is ignored.
pub const VERSION: u32 = 1;

/// The largest cache read or written (bytes): about 150,000 files of one resource each.
pub const MAX_CACHE_BYTES: u64 = 48 << 20;

/// Bytes of a key provgate creates; a configured key must have at least as many.
pub const KEY_BYTES: usize = 32;

/// Why a cache was not read or written, or a key not loaded.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not a manifest cache: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(
        "format {format:?} version {version}; this provgate reads {FORMAT:?} version {VERSION}"
    )]
    Version { format: String, version: u32 },
    #[error("the seal does not verify (edited, or written under another key)")]
    Seal,
    #[error("written for {found}, not {expected}")]
    OtherRoot { found: String, expected: String },
    #[error("written for serialization {found}, configured {expected}")]
    OtherSerialization { found: String, expected: String },
    #[error("the clock is behind the time the cache was listed")]
    ClockBehind,
    #[error("inconsistent: {0}")]
    Inconsistent(&'static str),
    #[error("{0} bytes, more than the {MAX_CACHE_BYTES}-byte bound")]
    TooLarge(u64),
    #[error("key file {path}: {why}")]
    Key { path: String, why: &'static str },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}

// === Key ===

/// The key that seals a cache.
pub struct CacheKey(hmac::Key);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(..)")
    }
}

impl CacheKey {
    /// A key from raw bytes (at least [`KEY_BYTES`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<CacheKey, CacheError> {
        if bytes.len() < KEY_BYTES {
            return Err(CacheError::Key {
                path: String::new(),
                why: "shorter than 32 bytes",
            });
        }
        Ok(CacheKey(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// A configured key file (e.g. a Kubernetes Secret): at least [`KEY_BYTES`] bytes, read
    /// as a credential (bounded, regular file only).
    pub fn from_file(path: &Path) -> Result<CacheKey, CacheError> {
        let bytes = file::read(path, file::Kind::Credential)?;
        CacheKey::from_bytes(&bytes).map_err(|_| CacheError::Key {
            path: path.display().to_string(),
            why: "shorter than 32 bytes",
        })
    }

    /// The key provgate manages at `path`: read if present (it must be a regular file, not a
    /// link, owned by this process's user and readable by that user only: a key someone else
    /// put there could seal their own cache), else created with [`KEY_BYTES`] random bytes, mode
    /// 0600, published by a hard link so that two watchers starting together agree on one.
    pub fn load_or_create(path: &Path) -> Result<CacheKey, CacheError> {
        let key_err = |why| CacheError::Key {
            path: path.display().to_string(),
            why,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                if !meta.file_type().is_file() {
                    return Err(key_err("not a regular file"));
                }
                if meta.mode() & 0o077 != 0 {
                    return Err(key_err("readable or writable by others than its owner"));
                }
                if own_uid() != Some(meta.uid()) {
                    return Err(key_err("not owned by the user provgate runs as"));
                }
                CacheKey::from_file(path)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; KEY_BYTES];
                getrandom::fill(&mut bytes).map_err(|_| key_err("no randomness"))?;
                let tmp = write_new(path, "key", &bytes)?;
                let linked = std::fs::hard_link(&tmp, path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {
                        sync_dir(path)?;
                        CacheKey::from_bytes(&bytes)
                    }
                    // Another watcher published its key first: use that one.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        CacheKey::load_or_create(path)
                    }
                    Err(e) => Err(io_err(path)(e)),
                }
            }
            Err(e) => Err(io_err(path)(e)),
        }
    }

    fn tag(&self, body: &[u8]) -> String {
        hex::encode(hmac::sign(&self.0, body).as_ref())
    }

    fn verify(&self, body: &[u8], tag_hex: &str) -> Result<(), CacheError> {
        let tag = hex::decode(tag_hex).map_err(|_| CacheError::Seal)?;
        hmac::verify(&self.0, body, &tag).map_err(|_| CacheError::Seal)
    }
}

/// The effective user ID of this process: the owner of `/proc/self` (no unsafe `geteuid`);
/// None when it cannot be read, which refuses the managed key.
fn own_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

// === Format ===

/// What a cache file says, sealed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CacheBody {
    /// The canonical model path the manifest is of.
    pub root: String,
    /// The resource digest algorithm (`sha256`).
    pub hash: String,
    /// The OMS serialization method (`files` or `shards`).
    pub method: String,
    /// Shard size in bytes under `shards`.
    pub shard_size: Option<u64>,
    /// When the directory was listed, before any file was read: (seconds, nanoseconds).
    pub listed_at: (u64, u32),
    /// The root digest, the SHA-256 of the resource digests in order.
    pub digest: Digest,
    /// In manifest order.
    pub files: Vec<CacheEntry>,
}

/// One file of a cache.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CacheEntry {
    /// POSIX path relative to the root (`.` for a single-file model).
    pub path: String,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub inode: u64,
    pub dev: u64,
    /// Hex SHA-256 of each of its resources, in order.
    pub digests: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    format: String,
    version: u32,
    /// Hex HMAC-SHA-256 of the body as serialized here (fields in declaration order).
    mac: String,
    body: CacheBody,
}

/// Only the format and version, to tell another version from a damaged file.
#[derive(Deserialize)]
struct Head {
    format: String,
    version: u32,
}

fn method_of(s: &Serialization) -> (String, Option<u64>) {
    match *s {
        Serialization::Files => ("files".into(), None),
        Serialization::Shards { shard_size } => ("shards".into(), Some(shard_size)),
    }
}

impl CacheBody {
    /// The body of a complete manifest of the model at canonical path `root`.
    pub fn of(root: &Path, m: &Manifest) -> CacheBody {
        let (method, shard_size) = method_of(&m.serialization);
        let since = m
            .listed_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        CacheBody {
            root: root.display().to_string(),
            hash: "sha256".into(),
            method,
            shard_size,
            listed_at: (since.as_secs(), since.subsec_nanos()),
            digest: m.root,
            files: m
                .files
                .iter()
                .map(|f| CacheEntry {
                    path: super::posix(&f.rel),
                    size: f.identity.size,
                    mtime: f.identity.mtime,
                    ctime: f.identity.ctime,
                    inode: f.identity.inode,
                    dev: f.identity.dev,
                    digests: m
                        .resources
                        .get(f.resources.clone())
                        .unwrap_or_default()
                        .iter()
                        .map(|(_, d)| hex::encode(d))
                        .collect(),
                })
                .collect(),
        }
    }

    /// The manifest this body describes, for `plan` to reuse from, if it is of the model at
    /// `root` under `serialization` and consistent (paths relative and in order, one digest
    /// per resource, the root digest over them), and the clock is not behind its listing.
    pub fn into_manifest(
        self,
        root: &Path,
        serialization: Serialization,
    ) -> Result<Manifest, CacheError> {
        let expected = root.display().to_string();
        if self.root != expected {
            return Err(CacheError::OtherRoot {
                found: self.root,
                expected,
            });
        }
        let (method, shard_size) = method_of(&serialization);
        if self.hash != "sha256" || self.method != method || self.shard_size != shard_size {
            return Err(CacheError::OtherSerialization {
                found: format!("{} {} {:?}", self.hash, self.method, self.shard_size),
                expected: serialization.to_string(),
            });
        }
        let (secs, nanos) = self.listed_at;
        let listed_at = SystemTime::UNIX_EPOCH
            .checked_add(Duration::new(secs, nanos.min(999_999_999)))
            .ok_or(CacheError::Inconsistent("listing time"))?;
        if SystemTime::now() < listed_at {
            return Err(CacheError::ClockBehind);
        }
        let mut files = Vec::with_capacity(self.files.len());
        let mut resources = Vec::new();
        let mut root_hasher = Sha256::new();
        let mut total_bytes = 0u64;
        for e in self.files {
            let rel = PathBuf::from(&e.path);
            let relative = e.path == "."
                || (!e.path.is_empty()
                    && rel.components().all(|c| matches!(c, Component::Normal(_)))
                    && super::posix(&rel) == e.path);
            if !relative {
                return Err(CacheError::Inconsistent("a path that is not relative"));
            }
            if files.last().is_some_and(|p: &ManifestFile| p.rel >= rel) {
                return Err(CacheError::Inconsistent("paths out of order"));
            }
            let ranges = serialization.ranges(e.size);
            if ranges.len() != e.digests.len() {
                return Err(CacheError::Inconsistent("digest count"));
            }
            let first = resources.len();
            for (&(start, end), d) in ranges.iter().zip(&e.digests) {
                let mut raw = [0u8; 32];
                hex::decode_to_slice(d, &mut raw)
                    .map_err(|_| CacheError::Inconsistent("a digest that is not hex"))?;
                root_hasher.update(raw);
                resources.push((serialization.resource_name(&e.path, start, end), raw));
            }
            total_bytes = total_bytes.saturating_add(e.size);
            files.push(ManifestFile {
                rel,
                identity: FileIdentity {
                    size: e.size,
                    mtime: e.mtime,
                    ctime: e.ctime,
                    inode: e.inode,
                    dev: e.dev,
                },
                resources: first..resources.len(),
            });
        }
        if Digest(root_hasher.finalize().into()) != self.digest {
            return Err(CacheError::Inconsistent("root digest"));
        }
        Ok(Manifest {
            root: self.digest,
            serialization,
            resources,
            files,
            total_bytes,
            listed_at,
            stats: HashStats::default(),
        })
    }
}

// === Read and write ===

/// Reads the cache at `path` without checking its seal (for tools and tests): bounded,
/// regular file only.
pub fn read_unsealed(path: &Path) -> Result<CacheBody, CacheError> {
    Ok(parse(path)?.body)
}

fn parse(path: &Path) -> Result<Sealed, CacheError> {
    let bytes = match file::read_limited(path, MAX_CACHE_BYTES, "manifest cache") {
        Err(ReadError::TooLarge { .. }) => {
            let len = std::fs::metadata(path).map_or(MAX_CACHE_BYTES + 1, |m| m.len());
            return Err(CacheError::TooLarge(len));
        }
        r => r?,
    };
    let head: Head = serde_json::from_slice(&bytes)?;
    if head.format != FORMAT || head.version != VERSION {
        return Err(CacheError::Version {
            format: head.format,
            version: head.version,
        });
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// Reads the cache at `path`, checks its seal under `key`, and returns the manifest it
/// holds of the model at canonical path `root` under `serialization`.
pub fn load(
    path: &Path,
    key: &CacheKey,
    root: &Path,
    serialization: Serialization,
) -> Result<Manifest, CacheError> {
    let sealed = parse(path)?;
    let body = serde_json::to_vec(&sealed.body)?;
    key.verify(&body, &sealed.mac)?;
    sealed.body.into_manifest(root, serialization)
}

/// Seals `body` under `key` and writes it to `path` atomically: a new file in the same
/// directory (created exclusively, mode 0600, never through a link), written, synced,
/// renamed over `path` (which replaces a link there rather than following it), and the
/// directory synced. Returns the bytes written.
pub fn write_sealed(path: &Path, key: &CacheKey, body: &CacheBody) -> Result<u64, CacheError> {
    let json = serde_json::to_vec(body)?;
    let sealed = Sealed {
        format: FORMAT.into(),
        version: VERSION,
        mac: key.tag(&json),
        body: body.clone(),
    };
    let bytes = serde_json::to_vec(&sealed)?;
    if bytes.len() as u64 > MAX_CACHE_BYTES {
        return Err(CacheError::TooLarge(bytes.len() as u64));
    }
    let tmp = write_new(path, "tmp", &bytes)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    sync_dir(path)?;
    Ok(bytes.len() as u64)
}

/// Writes the manifest `m` of the model at canonical path `root` to `path`, sealed.
pub fn store(path: &Path, key: &CacheKey, root: &Path, m: &Manifest) -> Result<u64, CacheError> {
    write_sealed(path, key, &CacheBody::of(root, m))
}

/// Writes `bytes` to a new file beside `path` (`.NAME.WHAT-PID-RANDOM`), synced; returns it.
fn write_new(path: &Path, what: &str, bytes: &[u8]) -> Result<PathBuf, CacheError> {
    let mut r = [0u8; 8];
    // Uniqueness only (the file is created exclusively): a failure leaves zeros.
    let _ = getrandom::fill(&mut r);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.{what}-{}-{}",
        std::process::id(),
        hex::encode(r)
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    Ok(tmp)
}

fn sync_dir(path: &Path) -> Result<(), CacheError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The default cache file name of a model: `manifest-<model>.json` when the name is a safe
/// file name (ASCII letters, digits, `.`, `_`, `-`, not starting with `.`, at most 100
/// characters), else `manifest-<first 16 hex of SHA-256 of the name>.json`.
pub fn default_file_name(model: &str) -> String {
    let safe = !model.is_empty()
        && model.len() <= 100
        && !model.starts_with('.')
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if safe {
        format!("manifest-{model}.json")
    } else {
        let h = Sha256::digest(model.as_bytes());
        format!("manifest-{}.json", &hex::encode(h)[..16])
    }
}

/// The default key file name, beside the caches.
pub const DEFAULT_KEY_FILE: &str = "manifest-cache.key";

#[cfg(test)]
mod tests;
