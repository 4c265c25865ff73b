//! The served artefact: the OpenSSF Model Signing (OMS) root digest of the mounted model
//! directory, computed in the background and published as an atomically swapped state.
//!
//! Digest ("files" serialization, SHA-256), as the `model_signing` package computes it: every
//! regular file below the root is hashed; resources are named by their POSIX path relative to
//! the root and ordered component by component (Python's `PurePosixPath` order, which is also
//! `std::path::Path`'s); the root digest is SHA-256 over the concatenated raw file digests in
//! that order. Top-level `.git`, `.gitignore`, `.github`, `.gitattributes` and the signature
//! file `model.sig` are ignored. A symbolic link or special file below the root is an error.
//!
//! The watcher marks the artefact unverified the moment a change is seen (fail closed) and
//! publishes the new digest when hashing finishes. The request path only loads the state.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::telemetry::Metrics;

/// Paths directly under the root that the OMS tooling leaves out of a manifest by default.
pub const IGNORED_TOP_LEVEL: [&str; 5] = [
    ".git",
    ".gitignore",
    ".github",
    ".gitattributes",
    "model.sig",
];

/// A hashed model directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub root: Digest,
    /// (POSIX relative path, SHA-256) in manifest order.
    pub resources: Vec<(String, [u8; 32])>,
    pub total_bytes: u64,
}

/// Why a directory could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is a symbolic link; links are not allowed inside a model directory")]
    Symlink(String),
    #[error("{0} is neither a regular file nor a directory")]
    Special(String),
    #[error("{0}: path is not valid UTF-8")]
    NotUtf8(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HashError + '_ {
    move |source| HashError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Lists the files a manifest covers, in manifest order, as (relative path, absolute path).
pub fn list_files(root: &Path) -> Result<Vec<(PathBuf, PathBuf)>, HashError> {
    let root = root.canonicalize().map_err(io_err(root))?;
    let meta = std::fs::metadata(&root).map_err(io_err(&root))?;
    if meta.is_file() {
        // A single-file model: OMS names its one resource after the file itself.
        let name = root.file_name().map(PathBuf::from).unwrap_or_default();
        return Ok(vec![(name, root)]);
    }
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let rel = path.strip_prefix(&root).unwrap_or(&path).to_path_buf();
            if dir == root
                && IGNORED_TOP_LEVEL
                    .iter()
                    .any(|i| rel.as_os_str() == std::ffi::OsStr::new(i))
            {
                continue;
            }
            let ft = entry.file_type().map_err(io_err(&path))?;
            if ft.is_symlink() {
                return Err(HashError::Symlink(path.display().to_string()));
            } else if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                if rel.to_str().is_none() {
                    return Err(HashError::NotUtf8(path.display().to_string()));
                }
                out.push((rel, path));
            } else {
                return Err(HashError::Special(path.display().to_string()));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// SHA-256 of one file, streamed.
pub fn hash_file(path: &Path) -> Result<([u8; 32], u64), HashError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finalize().into(), total))
}

/// Computes the OMS manifest of a model directory, hashing files on up to `threads` threads.
pub fn compute_manifest(root: &Path, threads: usize) -> Result<Manifest, HashError> {
    let files = list_files(root)?;
    let next = AtomicUsize::new(0);
    let threads = threads.clamp(1, files.len().max(1));
    type Hashed = Vec<(usize, [u8; 32], u64)>;
    let results: Vec<Result<Hashed, HashError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((_, abs)) = files.get(i) else { break };
                        let (d, n) = hash_file(abs)?;
                        mine.push((i, d, n));
                    }
                    Ok(mine)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(HashError::Special("hashing thread panicked".to_string()))
                })
            })
            .collect()
    });
    let mut digests = vec![[0u8; 32]; files.len()];
    let mut total_bytes = 0;
    for part in results {
        for (i, d, n) in part? {
            digests[i] = d;
            total_bytes += n;
        }
    }
    let mut root_hasher = Sha256::new();
    let mut resources = Vec::with_capacity(files.len());
    for ((rel, _), d) in files.iter().zip(digests) {
        root_hasher.update(d);
        // list_files checked that every name is UTF-8; POSIX separators by construction.
        let name = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        resources.push((name, d));
    }
    Ok(Manifest {
        root: Digest(root_hasher.finalize().into()),
        resources,
        total_bytes,
    })
}

/// A cheap summary of a directory tree (paths, sizes, mtimes, inodes) for change detection.
pub fn dir_fingerprint(root: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    if let Ok(m) = std::fs::metadata(root) {
        out.push((root.to_path_buf(), m.len(), m.modified().ok(), m.ino()));
    }
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Ok(m) = std::fs::symlink_metadata(&path) {
                if m.is_dir() {
                    stack.push(path.clone());
                }
                out.push((path, m.len(), m.modified().ok(), m.ino()));
            }
        }
    }
    out.sort();
    out
}

/// Watches a directory tree, sending a unit on every content change (not on reads or
/// metadata-only changes, which hashing itself would otherwise trigger).
pub fn watch(path: &Path, tx: Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let relevant = match ev {
            Ok(ev) => !matches!(
                ev.kind,
                EventKind::Access(_) | EventKind::Modify(notify::event::ModifyKind::Metadata(_))
            ),
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(path, RecursiveMode::Recursive)?;
    Ok(watcher)
}

// === Artefact state ===

/// What is known about the served artefact.
#[derive(Debug, Clone)]
pub enum ArtefactState {
    /// Not hashed yet.
    Pending,
    /// A change was seen; the new digest is being computed.
    Hashing,
    Ready {
        digest: Digest,
        files: usize,
        bytes: u64,
        /// The OMS signature in the directory, checked against the pinned signers.
        signature: crate::attestation::SignatureState,
    },
    /// The directory cannot be hashed (missing, a symlink inside, unreadable).
    Failed { error: String },
}

impl ArtefactState {
    pub fn digest(&self) -> Option<&Digest> {
        match self {
            ArtefactState::Ready { digest, .. } => Some(digest),
            _ => None,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            ArtefactState::Pending => "pending",
            ArtefactState::Hashing => "hashing",
            ArtefactState::Ready { .. } => "ready",
            ArtefactState::Failed { .. } => "failed",
        }
    }
}

/// The published artefact state; cheap to read from any thread.
pub struct ArtefactHandle {
    state: ArcSwap<ArtefactState>,
    attempted: AtomicBool,
}

impl Default for ArtefactHandle {
    fn default() -> Self {
        ArtefactHandle {
            state: ArcSwap::from_pointee(ArtefactState::Pending),
            attempted: AtomicBool::new(false),
        }
    }
}

impl ArtefactHandle {
    pub fn load(&self) -> arc_swap::Guard<Arc<ArtefactState>> {
        self.state.load()
    }

    /// Has the first hash finished (with a digest or an error)?
    pub fn is_settled(&self) -> bool {
        self.attempted.load(Ordering::Acquire)
    }

    /// Publishes a state. The watcher does this; public so the handle can be driven
    /// directly by benchmarks and embedders.
    pub fn set(&self, state: ArtefactState) {
        self.state.store(Arc::new(state));
    }
}

/// The background hasher for one model directory.
pub struct ArtefactWatcher {
    pub model: String,
    pub path: PathBuf,
    pub poll_interval: Duration,
    pub threads: usize,
    pub handle: Arc<ArtefactHandle>,
    pub metrics: Arc<Metrics>,
    /// Pinned OMS signers for `model.sig`.
    pub signers: Arc<Vec<crate::attestation::Signer>>,
}

impl ArtefactWatcher {
    /// Hashes at start, then on every change, until `stop` is set. Runs on its own thread.
    pub fn run(self, stop: Arc<AtomicBool>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = None;
        let mut last = None;
        while !stop.load(Ordering::Relaxed) {
            if watcher.is_none() {
                // The directory may not exist yet, or may have been replaced: (re)attach.
                watcher = watch(&self.path, tx.clone()).ok();
            }
            let fingerprint = dir_fingerprint(&self.path);
            if last.as_ref() != Some(&fingerprint) {
                self.rehash(&fingerprint);
                last = Some(fingerprint);
            }
            match rx.recv_timeout(self.poll_interval) {
                Ok(()) => {
                    // Fail closed at once, then let a burst of writes settle before hashing.
                    if self.handle.load().digest().is_some() {
                        self.publish(ArtefactState::Hashing);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    while rx.try_recv().is_ok() {}
                    last = None;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => watcher = None,
            }
        }
    }

    fn rehash(&self, before: &[(PathBuf, u64, Option<SystemTime>, u64)]) {
        let started = Instant::now();
        if self.handle.load().digest().is_some() {
            self.publish(ArtefactState::Hashing);
        }
        let result = compute_manifest(&self.path, self.threads);
        // A file that changed while it was being read makes the digest meaningless.
        if dir_fingerprint(&self.path) != before {
            tracing::info!(path = %self.path.display(), "model directory changed while hashing; hashing again");
            return;
        }
        let elapsed = started.elapsed();
        self.metrics
            .artefact_hash_seconds
            .observe(elapsed.as_secs_f64());
        let state = match result {
            Ok(m) => {
                let signature = crate::attestation::verify_dir(&self.path, &self.signers);
                match &signature {
                    crate::attestation::SignatureState::Invalid { reason } => {
                        tracing::warn!(model = %self.model, reason = %reason, "model.sig does not verify")
                    }
                    s => tracing::info!(model = %self.model, signature = s.label(),
                        signer = s.signer().unwrap_or("-"), "artefact signature checked"),
                }
                tracing::info!(model = %self.model, digest = %m.root, files = m.resources.len(),
                    bytes = m.total_bytes, elapsed_ms = elapsed.as_millis() as u64, "artefact hashed");
                ArtefactState::Ready {
                    digest: m.root,
                    files: m.resources.len(),
                    bytes: m.total_bytes,
                    signature,
                }
            }
            Err(e) => {
                tracing::error!(model = %self.model, error = %e, "artefact cannot be hashed; requests are blocked");
                ArtefactState::Failed {
                    error: e.to_string(),
                }
            }
        };
        self.publish(state);
        self.handle.attempted.store(true, Ordering::Release);
    }

    fn publish(&self, state: ArtefactState) {
        self.metrics.set_artefact_state(&self.model, &state);
        self.handle.set(state);
    }
}

#[cfg(test)]
mod tests;
