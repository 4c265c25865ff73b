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
//! Metadata can lie: a write through a shared memory mapping changes content with no change
//! of size, times or an event. The [`Scrubber`] therefore reads every served file again every
//! `scrub_interval`, at most `scrub_rate` bytes per second, without taking the artefact out
//! of service; a digest that differs from the published one is published in its place (so
//! requests are blocked like after any change), and the watcher stops trusting the digests
//! it remembered.

//!
//! While it hashes (the first hash after start, a re-hash after a change, and a signature
//! check that must hash again under the signature's serialization), the hashing threads count
//! bytes and files into the handle's [`HashProgress`], which `/readyz` and the
//! `provgate_artefact_hash_bytes` gauge read; while the directory is hashed, a log line every
//! `progress_log_interval` says how far it is and at what throughput.

use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::digest::Digest;
use crate::kit::dirwatch::{self, Alarm, DirWatch, Fingerprint, Hooks};
use crate::kit::published::Published;
use crate::kit::watchdog::Heartbeat;
use crate::telemetry::Metrics;

pub mod config;

// The watcher's settings name the OMS serialization; the rest of OMS is `crate::oms`'s.
use crate::oms::manifest::cache::{self, CacheError, CacheKey};
use crate::oms::{hash_dir, HashError, HashOptions, HashProgress, Manifest};
pub use crate::oms::{Serialization, DEFAULT_SHARD_SIZE};
use config::{CacheKeySource, ManifestCache};

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
    /// Set by a scrub that found content the remembered digests do not describe: the
    /// watcher's next hash reads every file again.
    distrust: AtomicBool,
    /// How far the hash in progress (or the last one) has got.
    progress: Arc<HashProgress>,
    /// Set by the watcher when the digest it published reused digests persisted by an
    /// earlier process: the scrub reads every file at once instead of after its interval.
    /// The scrub sleeps on the condition variable until then, its interval or its stop.
    scrub_now: std::sync::Mutex<bool>,
    scrub_wake: std::sync::Condvar,
    /// Change events the watch has seen ([`ArtefactHandle::alarm`]): a hash whose count
    /// moved while it ran does not stand.
    events: AtomicU64,
}

impl Default for ArtefactHandle {
    fn default() -> Self {
        ArtefactHandle {
            state: Published::new(ArtefactState::Pending),
            distrust: AtomicBool::new(false),
            progress: Arc::default(),
            scrub_now: std::sync::Mutex::new(false),
            scrub_wake: std::sync::Condvar::new(),
            events: AtomicU64::new(0),
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

    /// Wakes after every published state (the remote registry asks about a new digest at
    /// once, without looking on a tick).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.state.subscribe()
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

    /// Asks the scrub to read every file now (the published digest rests on digests
    /// persisted by an earlier process).
    pub fn request_scrub(&self) {
        *self.scrub_now.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.scrub_wake.notify_all();
    }

    /// Waits up to `timeout` for a [`ArtefactHandle::request_scrub`] (taken: true) or for
    /// `stop` (rung by [`crate::kit::stop::set`] through [`ArtefactHandle::wake_scrub`]).
    fn wait_scrub_request(&self, timeout: Duration, stop: &AtomicBool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut now = self.scrub_now.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if std::mem::take(&mut *now) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // The flag is looked at under the lock the waker takes: no stop is missed.
            if left.is_zero() || stop.load(Ordering::Acquire) {
                return false;
            }
            now = self
                .scrub_wake
                .wait_timeout(now, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Wakes a scrub waiting in [`ArtefactHandle::wait_scrub_request`] (to see its stop).
    fn wake_scrub(&self) {
        let _held = self.scrub_now.lock().unwrap_or_else(|e| e.into_inner());
        self.scrub_wake.notify_all();
    }

    /// A background service that publishes this state panicked: nothing it published can be
    /// vouched for, so requests are refused (as for an unreadable directory) until its next
    /// hash publishes a digest again.
    pub fn fail_closed(&self, why: &str) {
        self.set(ArtefactState::Failed {
            error: why.to_string(),
        });
        self.mark_settled();
    }

    fn mark_settled(&self) {
        self.state.clock().mark_synced();
    }

    /// A change event arrived (rung on the watch's event thread, whatever the watcher's
    /// loop is busy with): counted, and a published digest withdrawn at once. True if one
    /// was.
    fn alarm(&self) -> bool {
        self.events.fetch_add(1, Ordering::SeqCst);
        // With the fence in `events`: either this load sees a digest the watcher has just
        // published and withdraws it, or the watcher's next `events` sees this count and
        // withdraws the digest itself.
        fence(Ordering::SeqCst);
        if self.load().digest().is_none() {
            return false;
        }
        self.set(ArtefactState::Hashing);
        true
    }

    /// The change events seen so far (after whatever this thread published before).
    fn events(&self) -> u64 {
        fence(Ordering::SeqCst);
        self.events.load(Ordering::SeqCst)
    }
}

// === Artefact metrics ===

/// Artefact states, as label values.
pub const ARTEFACT_STATES: [&str; 4] = ["pending", "hashing", "ready", "failed"];

/// Publishes a model's artefact state and digest to the metric families `Metrics` registers
/// (`provgate_artefact_state`, `provgate_artefact_info`); the model's other digest series are
/// removed, whoever set them (the watcher or the scrub).
#[derive(Clone)]
pub struct ArtefactMetrics {
    model: String,
    state: prometheus::IntGaugeVec,
    info: prometheus::IntGaugeVec,
    signature: prometheus::IntGaugeVec,
}

impl ArtefactMetrics {
    pub fn new(metrics: &Metrics, model: &str) -> ArtefactMetrics {
        ArtefactMetrics {
            model: model.to_string(),
            state: metrics.artefact_state.clone(),
            info: metrics.artefact_info.clone(),
            signature: metrics.artefact_signature.clone(),
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
            // One `artefact_info` series per model, whoever set it (the watcher or the scrub).
            one_series(&self.info, model, &["digest"], &[&digest.to_string()]);
        }
        if let ArtefactState::Ready { signature, .. } = state {
            // One series per model: the signer label is a configured name, or "none".
            one_series(
                &self.signature,
                model,
                &["signer", "state"],
                &[signature.signer().unwrap_or("none"), signature.label()],
            );
        }
    }
}

/// Makes `keep` (the values of the labels `names`, which follow `model` in the gauge's
/// label order) the one series of `model` in `gauge`, set to 1: every other series of the
/// model is removed.
fn one_series(gauge: &prometheus::IntGaugeVec, model: &str, names: &[&str], keep: &[&str]) {
    let stale: Vec<Vec<String>> = prometheus::core::Collector::collect(gauge)
        .iter()
        .flat_map(|family| family.get_metric())
        .filter_map(|m| {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
            };
            (label("model").as_deref() == Some(model))
                .then(|| names.iter().map(|n| label(n)).collect::<Option<Vec<_>>>())
                .flatten()
                .filter(|values| values.iter().map(String::as_str).ne(keep.iter().copied()))
        })
        .collect();
    for old in &stale {
        let values: Vec<&str> = std::iter::once(model)
            .chain(old.iter().map(String::as_str))
            .collect();
        let _ = gauge.remove_label_values(&values);
    }
    let values: Vec<&str> = std::iter::once(model).chain(keep.iter().copied()).collect();
    gauge.with_label_values(&values).set(1);
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
#[derive(Clone)]
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
    /// Beaten between looks and between reads ([`crate::kit::watchdog`]).
    pub heartbeat: Option<Arc<Heartbeat>>,
    /// Where the manifest is persisted between runs; None: every start reads every file.
    pub manifest_cache: Option<ManifestCache>,
}

impl ArtefactWatcher {
    /// Hashes at start, then on every change, until `stop` is set (which also abandons a
    /// hash in progress). Blocks: runs on its own thread (the blocking pool of its service).
    pub fn run(self, stop: Arc<AtomicBool>) {
        let (cache, previous) = self.open_cache();
        let mut turn = Turn {
            series: ArtefactMetrics::new(&self.metrics, &self.model),
            from_cache: previous.is_some(),
            previous,
            cache,
            stop: stop.clone(),
            watcher: &self,
        };
        DirWatch::new(self.path.clone())
            .with_beside(Some(crate::oms::signature_path(&self.path)))
            .beating(self.heartbeat.clone())
            .run(&mut turn, &stop);
    }
}

impl ArtefactWatcher {
    /// The persisted manifest's key and what the cache holds, if it is sealed by that key
    /// and of this model directory under this serialization; any problem is logged and
    /// costs a full hash, never a start.
    fn open_cache(&self) -> (Option<(PathBuf, Arc<CacheKey>)>, Option<Manifest>) {
        let Some(c) = &self.manifest_cache else {
            return (None, None);
        };
        let key = match &c.key {
            CacheKeySource::Configured(k) => Ok(k.clone()),
            CacheKeySource::Managed(p) => CacheKey::load_or_create(p).map(Arc::new),
        };
        let key = match key {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(model = %self.model, error = %e,
                    "manifest cache off: no key to seal it; every start reads every file");
                return (None, None);
            }
        };
        let cache = Some((c.path.clone(), key.clone()));
        let Ok(root) = self.path.canonicalize() else {
            return (cache, None);
        };
        match cache::load(&c.path, &key, &root, self.serialization) {
            Ok(m) => {
                tracing::info!(model = %self.model, path = %c.path.display(), files = m.files.len(),
                    digest = %m.root, "manifest cache loaded; files whose identity is unchanged are not read again");
                (cache, Some(m))
            }
            Err(CacheError::Read(e)) if e.is_not_found() => {
                tracing::info!(model = %self.model, path = %c.path.display(),
                    "no manifest cache yet; hashing every file");
                (cache, None)
            }
            Err(e) => {
                tracing::warn!(model = %self.model, path = %c.path.display(), error = %e,
                    "manifest cache ignored; hashing every file");
                (cache, None)
            }
        }
    }
}

/// The watcher's hooks into the directory watch, with what it remembers between hashes.
struct Turn<'w> {
    watcher: &'w ArtefactWatcher,
    series: ArtefactMetrics,
    /// The last manifest computed: its digests stand for files whose identity is unchanged.
    previous: Option<Manifest>,
    /// `previous` was read from the persisted manifest and nothing has been published since.
    from_cache: bool,
    /// Where to persist each complete manifest, and the key that seals it.
    cache: Option<(PathBuf, Arc<CacheKey>)>,
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

    fn alarm(&self) -> Option<Alarm> {
        // Fail closed at once, on the event thread; the watch lets a burst of writes settle
        // before hashing.
        let (handle, series) = (self.watcher.handle.clone(), self.series.clone());
        Some(Arc::new(move || {
            if handle.alarm() {
                series.set(&ArtefactState::Hashing);
            }
        }))
    }

    fn wait(&self) -> Duration {
        self.watcher.poll_interval
    }
}

impl Turn<'_> {
    fn rehash(&mut self, before: &Fingerprint) {
        let started = Instant::now();
        let w = self.watcher;
        // Before anything is read: a change from here on moves the count.
        let events = w.handle.events();
        if w.handle.load().digest().is_some() {
            self.publish(ArtefactState::Hashing);
        }
        if w.handle.distrust.swap(false, Ordering::Relaxed) {
            // A scrub found content that the remembered digests do not describe.
            self.previous = None;
        }
        let progress = w.handle.progress();
        let opts = HashOptions::new(w.serialization, w.threads)
            .cancelled_by(self.stop.clone())
            .beating(w.heartbeat.clone())
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
        let changed = dir_fingerprint(&w.path) != *before || w.handle.events() != events;
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
                        signer = s.signer().unwrap_or("-"),
                        signer_identity = s.identity().unwrap_or("-"), "artefact signature checked"),
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
                if matches!(e, HashError::Panicked) {
                    // A hasher thread panicked (caught at its join): counted, and the state
                    // fails closed below like any hash error.
                    w.metrics
                        .background_panics
                        .with_label_values(&["hasher"])
                        .inc();
                }
                tracing::error!(model = %w.model, error = %e, "artefact cannot be hashed; requests are blocked");
                ArtefactState::Failed {
                    error: e.to_string(),
                }
            }
        };
        // One atomic swap: readers see the old state (Hashing) or the new one, never a mix.
        let ready = state.digest().is_some();
        self.publish(state);
        if ready && w.handle.events() != events {
            // A change event raced the publication (its alarm may have looked before it):
            // withdrawn; the loop hashes again on that event.
            self.publish(ArtefactState::Hashing);
            tracing::info!(path = %w.path.display(), "model directory changed as its digest was published; hashing again");
            return;
        }
        w.handle.mark_settled();
        if let (true, Some(m)) = (ready, &self.previous) {
            self.persist(m);
        }
        self.from_cache = false;
    }

    /// After a complete hash was published: says what the persisted manifest saved on the
    /// first one, asks for a scrub if it reused anything, and persists this manifest.
    fn persist(&self, m: &Manifest) {
        let w = self.watcher;
        if self.from_cache {
            tracing::info!(model = %w.model, reused_files = m.stats.reused_files,
                hashed_files = m.stats.hashed_files, hashed_bytes = m.stats.hashed_bytes,
                "manifest cache: reused {} files, read {} bytes",
                m.stats.reused_files, m.stats.hashed_bytes);
        }
        self.store_cache(m);
        if self.from_cache && m.stats.reused_files > 0 {
            // The reused digests are checked by reading every file in the background, at the
            // scrub's rate, without taking the artefact out of service. Asked for after the
            // cache is written: a scrub that finds a mismatch removes it, and the scrub wakes
            // at once.
            w.handle.request_scrub();
        }
    }

    /// Persists this manifest, when a cache is configured.
    fn store_cache(&self, m: &Manifest) {
        let w = self.watcher;
        let Some((path, key)) = &self.cache else {
            return;
        };
        // A slow disk under the synced write, in the tests (debug builds only).
        crate::kit::fault::stall("manifest-cache");
        let stored = w
            .path
            .canonicalize()
            .map_err(|e| CacheError::Io {
                path: w.path.display().to_string(),
                source: e,
            })
            .and_then(|root| cache::store(path, key, &root, m));
        match stored {
            Ok(bytes) => {
                tracing::debug!(model = %w.model, path = %path.display(), bytes, "manifest cache written")
            }
            Err(e) => {
                tracing::warn!(model = %w.model, path = %path.display(), error = %e,
                    "manifest cache not written; the next start reads every file")
            }
        }
    }

    fn publish(&self, state: ArtefactState) {
        self.series.set(&state);
        self.watcher.handle.set(state);
    }
}

// === Scrub ===

/// What one scrub found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrubOutcome {
    /// The content's digest is the published one.
    Ok,
    /// The content changed without a metadata change; the real digest is now published.
    Mismatch,
    /// Nothing to compare (not hashed yet, or a change raced the scrub: the watcher has it).
    Skipped,
    /// The files could not be read; the watcher's next look decides.
    Failed,
    /// Shutting down.
    Stopped,
}

impl ScrubOutcome {
    /// The `result` label of `provgate_artefact_scrubs_total`.
    pub fn label(self) -> &'static str {
        match self {
            ScrubOutcome::Ok => "ok",
            ScrubOutcome::Mismatch => "mismatch",
            ScrubOutcome::Skipped | ScrubOutcome::Stopped => "skipped",
            ScrubOutcome::Failed => "failed",
        }
    }
}

/// The periodic full re-verification of one model directory.
#[derive(Clone)]
pub struct Scrubber {
    pub model: String,
    pub path: PathBuf,
    pub serialization: Serialization,
    pub threads: usize,
    pub interval: Duration,
    /// Bytes per second over all threads.
    pub rate: u64,
    pub handle: Arc<ArtefactHandle>,
    pub metrics: Arc<Metrics>,
    pub signers: Arc<Vec<crate::oms::Signer>>,
    /// Beaten while waiting and between reads.
    pub heartbeat: Option<Arc<Heartbeat>>,
    /// The model's persisted manifest, removed when a scrub finds content it does not
    /// describe.
    pub manifest_cache: Option<PathBuf>,
}

impl Scrubber {
    /// Scrubs every `interval` until `stop` is set. Blocks: runs on the blocking pool.
    pub fn run(self, stop: Arc<AtomicBool>) {
        let handle = self.handle.clone();
        let _stop = crate::kit::stop::on_stop(&stop, move || handle.wake_scrub());
        loop {
            // Asleep until the interval ends, a scrub is asked for, or the stop; awake only
            // to beat the heartbeat.
            let until = Instant::now() + self.interval;
            loop {
                if let Some(h) = &self.heartbeat {
                    h.beat();
                }
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                if self
                    .handle
                    .wait_scrub_request(left.min(dirwatch::BEAT_SLICE), &stop)
                {
                    tracing::info!(model = %self.model,
                        "artefact scrub now: the published digest reused digests persisted by an earlier run");
                    break;
                }
            }
            if stop.load(Ordering::Acquire) {
                return;
            }
            if self.scrub_once(&stop) == ScrubOutcome::Stopped {
                return;
            }
        }
    }

    /// Reads and hashes every served file now (at the configured rate) and compares the
    /// digest with the published one.
    pub fn scrub_once(&self, stop: &Arc<AtomicBool>) -> ScrubOutcome {
        let outcome = self.compare(stop);
        if outcome != ScrubOutcome::Stopped {
            self.metrics
                .artefact_scrubs
                .with_label_values(&[self.model.as_str(), outcome.label()])
                .inc();
        }
        outcome
    }

    fn compare(&self, stop: &Arc<AtomicBool>) -> ScrubOutcome {
        let current = self.handle.state.load_full();
        let Some(published) = current.digest().copied() else {
            return ScrubOutcome::Skipped;
        };
        let started = Instant::now();
        let before = dir_fingerprint(&self.path);
        let opts = HashOptions::new(self.serialization, self.threads)
            .cancelled_by(stop.clone())
            .rate_limited(self.rate)
            .beating(self.heartbeat.clone());
        let result = hash_dir(&self.path, &opts, None);
        let manifest = match result {
            Err(HashError::Cancelled) => return ScrubOutcome::Stopped,
            Err(HashError::Changed(_)) => return ScrubOutcome::Skipped,
            _ if dir_fingerprint(&self.path) != before => return ScrubOutcome::Skipped,
            Err(e) => {
                if matches!(e, HashError::Panicked) {
                    self.metrics
                        .background_panics
                        .with_label_values(&["hasher"])
                        .inc();
                }
                tracing::warn!(model = %self.model, error = %e, "artefact scrub could not read the files");
                return ScrubOutcome::Failed;
            }
            Ok(m) => m,
        };
        if manifest.root == published {
            tracing::debug!(model = %self.model, bytes = manifest.total_bytes,
                elapsed_ms = started.elapsed().as_millis() as u64, "artefact scrub: content unchanged");
            return ScrubOutcome::Ok;
        }
        let signature = crate::oms::verify_dir_with(
            &self.path,
            &self.signers,
            Some(&manifest),
            &HashOptions::new(self.serialization, self.threads).cancelled_by(stop.clone()),
        );
        let state = ArtefactState::Ready {
            digest: manifest.root,
            files: manifest.files.len(),
            bytes: manifest.total_bytes,
            signature,
        };
        // Published only over the state the scrub compared with: a change the watcher
        // published meanwhile wins.
        if !self.handle.state.store_if(&current, state.clone()) {
            return ScrubOutcome::Skipped;
        }
        self.handle.distrust.store(true, Ordering::Relaxed);
        if let Some(path) = &self.manifest_cache {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(model = %self.model, path = %path.display(), error = %e,
                        "manifest cache not removed after a scrub mismatch")
                }
                _ => {}
            }
        }
        let _ = self
            .metrics
            .artefact_info
            .remove_label_values(&[self.model.as_str(), &published.to_string()]);
        ArtefactMetrics::new(&self.metrics, &self.model).set(&state);
        tracing::error!(model = %self.model, published = %published, found = %manifest.root,
            "artefact content changed without a metadata change (found by the scrub); requests are checked against the new digest");
        ScrubOutcome::Mismatch
    }
}

#[cfg(test)]
mod tests;
