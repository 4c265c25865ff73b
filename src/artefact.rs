//! The served artefact: the OpenSSF Model Signing (OMS) root digest of the mounted model
//! directory, computed in the background and published as an atomically swapped state.
//!
//! Digest (SHA-256, the configured OMS serialization: `files` by default, or `shards`), as the
//! `model_signing` package computes it; [`crate::oms`] owns the rules, the hashing and the
//! signature check, and this module only decides when to run them and publishes the result. Top-level
//! `.git`, `.gitignore`, `.github`, `.gitattributes` and the signature file `model.sig` are
//! ignored. A symbolic link or special file below the root is an error.
//!
//! The watcher marks the artefact unverified the moment a change is seen (fail closed),
//! re-hashes only the files whose identity (size, mtime, ctime, inode) changed, and publishes
//! the new digest when hashing finishes. The request path only loads the state.
//!
//! While it hashes (the first hash after start, a re-hash after a change, and a signature
//! check that must hash again under the signature's serialization), the hashing threads count
//! bytes and files into the handle's [`HashProgress`], which `/readyz` and the
//! `provgate_artefact_hash_bytes` gauge read; while the directory is hashed, a log line every
//! `progress_log_interval` says how far it is and at what throughput.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::digest::Digest;
use crate::kit::dirwatch::{self, DirWatch, Fingerprint, Hooks};
use crate::kit::published::Published;
use crate::telemetry::Metrics;

pub mod config;

// The watcher's settings name the OMS serialization; the rest of OMS is `crate::oms`'s.
use crate::oms::{hash_dir, HashError, HashOptions, HashProgress, Manifest};
pub use crate::oms::{Serialization, DEFAULT_SHARD_SIZE};

/// The fingerprint the watcher compares: the tree, and a single file's signature beside it.
pub fn dir_fingerprint(root: &Path) -> Fingerprint {
    dirwatch::fingerprint(root, Some(&crate::oms::signature_path(root)))
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
        signature: crate::oms::SignatureState,
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

/// The published artefact state; cheap to read from any thread. Synced once the first hash
/// has finished (with a digest or an error).
pub struct ArtefactHandle {
    state: Published<ArtefactState>,
    /// How far the hash in progress (or the last one) has got.
    progress: Arc<HashProgress>,
}

impl Default for ArtefactHandle {
    fn default() -> Self {
        ArtefactHandle {
            state: Published::new(ArtefactState::Pending),
            progress: Arc::default(),
        }
    }
}

impl ArtefactHandle {
    /// One atomic load.
    pub fn load(&self) -> arc_swap::Guard<Arc<ArtefactState>> {
        self.state.load()
    }

    /// The counters the watcher's hashes fill: bytes and files read of the total, and
    /// whether a hash is running. Relaxed atomic loads; cheap to read at any time.
    pub fn progress(&self) -> &Arc<HashProgress> {
        &self.progress
    }

    /// Has the first hash finished (with a digest or an error)?
    pub fn is_settled(&self) -> bool {
        self.state.is_synced()
    }

    /// Publishes a state. The watcher does this; public so the handle can be driven
    /// directly by benchmarks and embedders.
    pub fn set(&self, state: ArtefactState) {
        self.state.store(state);
    }

    fn mark_settled(&self) {
        self.state.clock().mark_synced();
    }
}

// === Artefact metrics ===

/// Artefact states, as label values.
pub const ARTEFACT_STATES: [&str; 4] = ["pending", "hashing", "ready", "failed"];

/// Publishes a model's artefact state and digest to the metric families `Metrics` registers
/// (`provgate_artefact_state`, `provgate_artefact_info`); the model's previous digest series
/// is removed.
pub struct ArtefactMetrics {
    model: String,
    state: prometheus::IntGaugeVec,
    info: prometheus::IntGaugeVec,
    /// The digest label this model's `artefact_info` series carries now.
    digest: std::sync::Mutex<Option<String>>,
}

impl ArtefactMetrics {
    pub fn new(metrics: &Metrics, model: &str) -> ArtefactMetrics {
        ArtefactMetrics {
            model: model.to_string(),
            state: metrics.artefact_state.clone(),
            info: metrics.artefact_info.clone(),
            digest: std::sync::Mutex::new(None),
        }
    }

    /// Publishes `state` (the old digest series is removed).
    pub fn set(&self, state: &ArtefactState) {
        let model = self.model.as_str();
        for s in ARTEFACT_STATES {
            self.state
                .with_label_values(&[model, s])
                .set((s == state.label()) as i64);
        }
        if let Some(digest) = state.digest() {
            let digest = digest.to_string();
            // Only this model's watcher sets it: a poisoned lock still holds a consistent
            // value (each update is one replace).
            let mut current = self.digest.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = current.replace(digest.clone()) {
                let _ = self.info.remove_label_values(&[model, &old]);
            }
            self.info.with_label_values(&[model, &digest]).set(1);
        }
    }
}

/// Logs `progress` every `every` until `done` is dropped or sent to (the hash finished).
fn log_progress(model: &str, progress: &HashProgress, every: Duration, done: mpsc::Receiver<()>) {
    let started = Instant::now();
    while let Err(RecvTimeoutError::Timeout) = done.recv_timeout(every) {
        let p = progress.snapshot();
        let elapsed = started.elapsed();
        let rate = p.throughput(elapsed);
        let left = p.bytes_total.saturating_sub(p.bytes_done) as f64;
        tracing::info!(
            model = %model,
            bytes_done = p.bytes_done,
            bytes_total = p.bytes_total,
            files_done = p.files_done,
            files_total = p.files_total,
            percent = (p.fraction() * 1000.0).round() / 10.0,
            mib_per_s = (rate / f64::from(1 << 20) * 10.0).round() / 10.0,
            eta_s = if rate > 0.0 { (left / rate).ceil() as u64 } else { 0 },
            elapsed_s = elapsed.as_secs(),
            "artefact hashing in progress"
        );
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
    /// While hashing, how often to log how far it is.
    pub progress_log_every: Duration,
    pub handle: Arc<ArtefactHandle>,
    pub metrics: Arc<Metrics>,
    /// Pinned OMS signers for `model.sig`.
    pub signers: Arc<Vec<crate::oms::Signer>>,
}

impl ArtefactWatcher {
    /// Hashes at start, then on every change, until `stop` is set (which also abandons a
    /// hash in progress). Blocks: runs on its own thread (the blocking pool of its service).
    pub fn run(self, stop: Arc<AtomicBool>) {
        let mut turn = Turn {
            series: ArtefactMetrics::new(&self.metrics, &self.model),
            previous: None,
            stop: stop.clone(),
            watcher: &self,
        };
        DirWatch::new(self.path.clone()).run(&mut turn, &stop);
    }
}

/// The watcher's hooks into the directory watch, with what it remembers between hashes.
struct Turn<'w> {
    watcher: &'w ArtefactWatcher,
    series: ArtefactMetrics,
    /// The last manifest computed: its digests stand for files whose identity is unchanged.
    previous: Option<Manifest>,
    stop: Arc<AtomicBool>,
}

impl Hooks for Turn<'_> {
    fn fingerprint(&self, path: &Path) -> Fingerprint {
        dir_fingerprint(path)
    }

    fn changed(&mut self, fingerprint: &Fingerprint) -> bool {
        self.rehash(fingerprint);
        true
    }

    fn event(&mut self) {
        // Fail closed at once; the watch lets a burst of writes settle before hashing.
        if self.watcher.handle.load().digest().is_some() {
            self.publish(ArtefactState::Hashing);
        }
    }

    fn wait(&self) -> Duration {
        self.watcher.poll_interval
    }
}

impl Turn<'_> {
    fn rehash(&mut self, before: &Fingerprint) {
        let started = Instant::now();
        let w = self.watcher;
        if w.handle.load().digest().is_some() {
            self.publish(ArtefactState::Hashing);
        }
        let progress = w.handle.progress();
        let opts = HashOptions::new(w.serialization, w.threads)
            .cancelled_by(self.stop.clone())
            .reporting_to(progress.clone());
        let previous = self.previous.as_ref();
        let result = std::thread::scope(|s| {
            let (done, finished) = mpsc::channel();
            let model = w.model.as_str();
            s.spawn(move || log_progress(model, progress, w.progress_log_every, finished));
            let result = hash_dir(&w.path, &opts, previous);
            // Wakes the logger at once (it may be waiting out its interval).
            let _ = done.send(());
            result
        });
        if matches!(result, Err(HashError::Cancelled)) {
            tracing::info!(model = %w.model, "artefact hashing abandoned: shutting down");
            return;
        }
        // A file that changed while it was being read makes the digest meaningless. The
        // manifest is still kept for reuse: each file's identity was taken before it was
        // read, so a file changed since then no longer matches it and is hashed again.
        let changed = dir_fingerprint(&w.path) != *before;
        if let Ok(m) = &result {
            self.previous = Some(m.clone());
        }
        if changed || matches!(result, Err(HashError::Changed(_))) {
            tracing::info!(path = %w.path.display(), "model directory changed while hashing; hashing again");
            return;
        }
        let elapsed = started.elapsed();
        w.metrics
            .artefact_hash_seconds
            .observe(elapsed.as_secs_f64());
        let state = match result {
            Ok(m) => {
                // The signature is checked against this manifest when it uses the same
                // serialization, so the files are not read a second time.
                let signature = crate::oms::verify_dir_with(&w.path, &w.signers, Some(&m), &opts);
                match &signature {
                    crate::oms::SignatureState::Invalid { reason } => {
                        tracing::warn!(model = %w.model, reason = %reason, "model.sig does not verify")
                    }
                    s => tracing::info!(model = %w.model, signature = s.label(),
                        signer = s.signer().unwrap_or("-"), "artefact signature checked"),
                }
                tracing::info!(model = %w.model, digest = %m.root,
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
                self.previous = None;
                tracing::error!(model = %w.model, error = %e, "artefact cannot be hashed; requests are blocked");
                ArtefactState::Failed {
                    error: e.to_string(),
                }
            }
        };
        // One atomic swap: readers see the old state (Hashing) or the new one, never a mix.
        self.publish(state);
        w.handle.mark_settled();
    }

    fn publish(&self, state: ArtefactState) {
        self.series.set(&state);
        self.watcher.handle.set(state);
    }
}

#[cfg(test)]
mod tests;
