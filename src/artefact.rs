//! The served artefact: the OpenSSF Model Signing (OMS) root digest of the mounted model
//! directory, computed in the background and published as an atomically swapped state.
//!
//! Digest (SHA-256, the configured OMS serialization: `files` by default, or `shards`), as the
//! `model_signing` package computes it; [`manifest`] owns the rules and the hashing. Top-level
//! `.git`, `.gitignore`, `.github`, `.gitattributes` and the signature file `model.sig` are
//! ignored. A symbolic link or special file below the root is an error.
//!
//! The watcher marks the artefact unverified the moment a change is seen (fail closed),
//! re-hashes only the files whose identity (size, mtime, ctime, inode) changed, and publishes
//! the new digest when hashing finishes. The request path only loads the state.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};

use crate::digest::Digest;
use crate::telemetry::Metrics;

pub mod config;
pub mod manifest;

pub use manifest::{
    compute_manifest, hash_dir, list_files, FileIdentity, HashError, HashOptions, HashStats,
    Manifest, Serialization, DEFAULT_SHARD_SIZE, IGNORED_TOP_LEVEL,
};

/// A cheap summary of a directory tree (each path with its size, mtime, ctime, inode) for
/// change detection. The ctime is there because it cannot be set from user space: an edit in
/// place that keeps the size and puts the mtime back (`touch -d`) still changes it.
pub fn dir_fingerprint(root: &Path) -> Vec<(PathBuf, FileIdentity)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    if let Ok(m) = std::fs::metadata(root) {
        out.push((root.to_path_buf(), FileIdentity::of(&m)));
        if m.is_file() {
            // A single file's signature is beside it, outside the watched path.
            let sig = crate::attestation::signature_path(root);
            if let Ok(s) = std::fs::symlink_metadata(&sig) {
                out.push((sig, FileIdentity::of(&s)));
            }
        }
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
                out.push((path, FileIdentity::of(&m)));
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
    /// The OMS serialization of the served digest.
    pub serialization: Serialization,
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
        // The last manifest computed: its digests stand for files whose identity is unchanged.
        let mut previous = None;
        while !stop.load(Ordering::Relaxed) {
            if watcher.is_none() {
                // The directory may not exist yet, or may have been replaced: (re)attach.
                watcher = watch(&self.path, tx.clone()).ok();
            }
            let fingerprint = dir_fingerprint(&self.path);
            if last.as_ref() != Some(&fingerprint) {
                self.rehash(&fingerprint, &mut previous);
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

    fn rehash(&self, before: &[(PathBuf, FileIdentity)], previous: &mut Option<Manifest>) {
        let started = Instant::now();
        if self.handle.load().digest().is_some() {
            self.publish(ArtefactState::Hashing);
        }
        let opts = HashOptions::new(self.serialization, self.threads);
        let result = hash_dir(&self.path, &opts, previous.as_ref());
        // A file that changed while it was being read makes the digest meaningless. The
        // manifest is still kept for reuse: each file's identity was taken before it was
        // read, so a file changed since then no longer matches it and is hashed again.
        let changed = dir_fingerprint(&self.path) != before;
        if let Ok(m) = &result {
            *previous = Some(m.clone());
        }
        if changed || matches!(result, Err(HashError::Changed(_))) {
            tracing::info!(path = %self.path.display(), "model directory changed while hashing; hashing again");
            return;
        }
        let elapsed = started.elapsed();
        self.metrics
            .artefact_hash_seconds
            .observe(elapsed.as_secs_f64());
        let state = match result {
            Ok(m) => {
                // The signature is checked against this manifest when it uses the same
                // serialization, so the files are not read a second time.
                let signature = crate::attestation::verify_dir_with(
                    &self.path,
                    &self.signers,
                    Some(&m),
                    self.threads,
                );
                match &signature {
                    crate::attestation::SignatureState::Invalid { reason } => {
                        tracing::warn!(model = %self.model, reason = %reason, "model.sig does not verify")
                    }
                    s => tracing::info!(model = %self.model, signature = s.label(),
                        signer = s.signer().unwrap_or("-"), "artefact signature checked"),
                }
                tracing::info!(model = %self.model, digest = %m.root,
                    serialization = %m.serialization, files = m.files.len(),
                    bytes = m.total_bytes, hashed_files = m.stats.hashed_files,
                    reused_files = m.stats.reused_files, hashed_bytes = m.stats.hashed_bytes,
                    elapsed_ms = elapsed.as_millis() as u64, "artefact hashed");
                ArtefactState::Ready {
                    digest: m.root,
                    files: m.files.len(),
                    bytes: m.total_bytes,
                    signature,
                }
            }
            Err(e) => {
                *previous = None;
                tracing::error!(model = %self.model, error = %e, "artefact cannot be hashed; requests are blocked");
                ArtefactState::Failed {
                    error: e.to_string(),
                }
            }
        };
        // One atomic swap: readers see the old state (Hashing) or the new one, never a mix.
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
