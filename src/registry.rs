//! The registry: where approval records live, and the cache the request path reads them
//! through.
//!
//! The embedded backend is a directory of record files (`*.jwt` or `*.jws`, one compact JWS
//! each) plus `revoked.txt` (one record ID per line, `#` comments). A background service
//! reloads the directory when it changes (inotify, with a periodic rescan as a fallback),
//! verifies every record once, and publishes an immutable [`Snapshot`] through `arc-swap`.
//! Lookups by digest go through a moka cache that is cleared on every publication.
//!
//! The request path calls only [`ApprovalStore::view`]: no I/O, no crypto, no lock.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::approval::{self, ApprovalRecord};
use crate::digest::Digest;
use crate::keys::KeySet;
use crate::telemetry::Metrics;

/// The revocation list's file name inside the registry directory.
pub const REVOCATION_FILE: &str = "revoked.txt";

/// One verified record for a digest, with its registry-side state.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub record: Arc<ApprovalRecord>,
    pub revoked: bool,
}

/// Everything the registry holds for one digest.
#[derive(Debug, Default)]
pub struct RegistryEntry {
    /// Verified records, newest (`iat`) first.
    pub records: Vec<Candidate>,
    /// Records that claimed this digest but failed verification, with why (for the log).
    pub invalid: Vec<String>,
}

/// An immutable view of the whole registry.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub by_digest: HashMap<Digest, Arc<RegistryEntry>>,
    pub valid_records: usize,
    pub invalid_records: usize,
    pub revoked_ids: usize,
}

/// Errors reading the registry directory. A bad record is not an error: it is counted and
/// reported, and the rest of the directory still loads.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("reading registry directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
}

/// Loads a registry directory into a snapshot, verifying each record against `approvers`.
pub fn load_dir(dir: &Path, approvers: &KeySet) -> Result<Snapshot, RegistryError> {
    let io_err = |source| RegistryError::Dir {
        path: dir.display().to_string(),
        source,
    };
    let revoked = read_revocations(&dir.join(REVOCATION_FILE)).map_err(io_err)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("jwt") | Some("jws")
            )
        })
        .collect();
    files.sort();

    let mut building: HashMap<Digest, RegistryEntry> = HashMap::new();
    let mut snapshot = Snapshot {
        revoked_ids: revoked.len(),
        ..Snapshot::default()
    };
    let mut seen_ids = HashSet::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "approval record unreadable");
                snapshot.invalid_records += 1;
                continue;
            }
        };
        match approval::verify(&text, approvers) {
            Ok(record) => {
                if !seen_ids.insert(record.claims.jti.clone()) {
                    tracing::warn!(file = %file.display(), record_id = %record.claims.jti,
                        "duplicate record ID; both copies kept");
                }
                let revoked = revoked.contains(&record.claims.jti);
                building
                    .entry(record.claims.artefact.digest)
                    .or_default()
                    .records
                    .push(Candidate {
                        record: Arc::new(record),
                        revoked,
                    });
                snapshot.valid_records += 1;
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "approval record rejected");
                snapshot.invalid_records += 1;
                // Report the failure against the digest it claims, so a bad signature on the
                // served digest reads as `approval_invalid`, not `artefact_unmanaged`.
                if let Some((Some(digest), _)) = approval::peek_claims(&text) {
                    building
                        .entry(digest)
                        .or_default()
                        .invalid
                        .push(format!("{}: {e}", file.display()));
                }
            }
        }
    }
    for (digest, mut entry) in building {
        entry.records.sort_by(|a, b| {
            b.record
                .claims
                .iat
                .cmp(&a.record.claims.iat)
                .then_with(|| b.record.claims.exp.cmp(&a.record.claims.exp))
        });
        snapshot.by_digest.insert(digest, Arc::new(entry));
    }
    Ok(snapshot)
}

/// Reads `revoked.txt`; a missing file is an empty list.
fn read_revocations(path: &Path) -> std::io::Result<HashSet<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(e),
    }
}

// === impl ApprovalStore ===

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Entry(Option<Arc<RegistryEntry>>),
    Unavailable,
}

/// The request path's view of the registry.
pub struct ApprovalStore {
    snapshot: ArcSwap<Snapshot>,
    cache: moka::sync::Cache<Digest, Option<Arc<RegistryEntry>>>,
    synced: AtomicBool,
    /// When the registry was last read successfully, as milliseconds since `epoch`.
    last_sync: AtomicU64,
    /// How long the last good records may be used while the registry cannot be read.
    max_stale: Duration,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

impl ApprovalStore {
    pub fn new(max_stale: Duration, metrics: Arc<Metrics>) -> ApprovalStore {
        ApprovalStore {
            max_stale,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            cache: moka::sync::Cache::builder().max_capacity(10_000).build(),
            synced: AtomicBool::new(false),
            last_sync: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics,
        }
    }

    /// The request path's view: the entry for a digest, or `Unavailable` once the registry
    /// has not been read successfully for longer than `max_stale` (fail closed).
    /// Before the first load the registry's answer is not known: also `Unavailable`.
    pub fn view(&self, digest: &Digest) -> Lookup {
        if !self.is_synced() || self.since_last_sync() > self.max_stale {
            return Lookup::Unavailable;
        }
        Lookup::Entry(self.lookup(digest))
    }

    /// The entry for a digest, bypassing the cache and its counters (for scrapes).
    pub fn peek(&self, digest: &Digest) -> Option<Arc<RegistryEntry>> {
        self.snapshot.load().by_digest.get(digest).cloned()
    }

    /// The entry for a digest (None: the registry has no record for it).
    pub fn lookup(&self, digest: &Digest) -> Option<Arc<RegistryEntry>> {
        if let Some(hit) = self.cache.get(digest) {
            self.metrics.approval_cache_hits.inc();
            return hit;
        }
        self.metrics.approval_cache_misses.inc();
        let found = self.snapshot.load().by_digest.get(digest).cloned();
        self.cache.insert(*digest, found.clone());
        found
    }

    /// Has the first load finished?
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Time since the last successful load.
    pub fn since_last_sync(&self) -> Duration {
        let at = self.last_sync.load(Ordering::Relaxed);
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(at))
    }

    /// Records that the registry was read and found unchanged.
    pub fn confirm(&self) {
        self.last_sync
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Publishes a freshly loaded snapshot and drops every cached lookup.
    pub fn publish(&self, snapshot: Snapshot) {
        self.metrics
            .registry_records_valid
            .set(snapshot.valid_records as i64);
        self.metrics
            .registry_records_invalid
            .set(snapshot.invalid_records as i64);
        self.metrics
            .registry_revoked_ids
            .set(snapshot.revoked_ids as i64);
        self.snapshot.store(Arc::new(snapshot));
        self.cache.invalidate_all();
        self.last_sync
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.synced.store(true, Ordering::Release);
    }

    /// The current snapshot (for the admin endpoints and tests).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}

// === Directory watcher ===

/// Keeps an [`ApprovalStore`] in step with a registry directory.
pub struct DirRegistry {
    pub dir: PathBuf,
    pub approvers: KeySet,
    pub rescan_interval: Duration,
    pub store: Arc<ApprovalStore>,
    pub metrics: Arc<Metrics>,
}

impl DirRegistry {
    /// Loads once, then reloads on every change until `stop` is set. Runs on its own thread:
    /// it reads files and verifies signatures, which must stay off the request path.
    pub fn run(self, stop: Arc<AtomicBool>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = None;
        let mut last_fingerprint = None;
        while !stop.load(Ordering::Relaxed) {
            if watcher.is_none() {
                // Attach (again, after the directory was replaced); rescans cover the gaps.
                watcher = crate::artefact::watch(&self.dir, tx.clone()).ok();
            }
            let fingerprint = crate::artefact::dir_fingerprint(&self.dir);
            if last_fingerprint.as_ref() != Some(&fingerprint) {
                if self.reload() {
                    last_fingerprint = Some(fingerprint);
                }
            } else if self.dir.is_dir() {
                self.store.confirm();
            } else {
                // Gone (an unmounted volume): fail the next reload, let the records age.
                last_fingerprint = None;
            }
            // Wake on a change event or at the rescan interval, then let a burst settle.
            if rx.recv_timeout(self.rescan_interval).is_ok() {
                std::thread::sleep(Duration::from_millis(50));
                while rx.try_recv().is_ok() {}
                last_fingerprint = None;
                if !self.dir.is_dir() {
                    watcher = None;
                }
            }
        }
    }

    /// Loads the directory and publishes it; false when it could not be read.
    fn reload(&self) -> bool {
        match load_dir(&self.dir, &self.approvers) {
            Ok(snapshot) => {
                tracing::info!(
                    dir = %self.dir.display(),
                    valid = snapshot.valid_records,
                    invalid = snapshot.invalid_records,
                    revoked = snapshot.revoked_ids,
                    "registry loaded"
                );
                self.metrics.registry_reloads_ok.inc();
                self.store.publish(snapshot);
                true
            }
            Err(e) => {
                // Keep the last good snapshot; readiness and the sync-age gauge tell the story.
                self.metrics.registry_reloads_failed.inc();
                tracing::error!(error = %e, "registry reload failed; keeping the last good records until max_stale");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
