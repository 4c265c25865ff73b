//! The registry: where approval records live, and the cache the request path reads them
//! through.
//!
//! Backends:
//! - `dir` (embedded): a directory of record files (`*.jwt` or `*.jws`, one compact JWS each;
//!   exceptions, `typ: exception+jwt`, beside them or in `exceptions/`)
//!   plus `revoked.txt` (one record or exception ID per line, `#` comments), reloaded when it changes
//!   (inotify, with a periodic rescan as a fallback);
//! - `mlflow` and `http` ([`remote`]): asked about each served digest on its own schedule
//!   (and, for `http` with `layout = "path"`, about the signed revocation list,
//!   [`revocations`]), with an optional watch.
//!
//! A background service verifies every record once per change and publishes an immutable
//! [`Snapshot`] through `arc-swap`. Lookups by digest read the snapshot published now; each
//! thread remembers its last few lookups in that same snapshot.
//!
//! Staleness, for every backend: the last good records are used for at most `max_stale`
//! after the last successful read (a remote registry: of that digest, and of the revocation
//! list, each on its own [`SourceClock`]), then the answer is `trust_data_unavailable`; a record with
//! `revalidate_after` is not used past that time (plus the fetch timeout) unless the registry
//! was read successfully after it. Expiry is the decision's business, to the second.
//!
//! The request path calls only [`ApprovalStore::view`]: no I/O, no crypto, no lock.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, IntCounter};
// tokio's clock is std's outside a runtime, and can be paused in tests.
use tokio::time::Instant;

use crate::approval::{self, ApprovalRecord, ExceptionRecord, Verified};
use crate::digest::Digest;
use crate::keys::KeySet;
use crate::kit::dirwatch::{DirWatch, Fingerprint, Hooks};
use crate::kit::published::Published;
use crate::telemetry::Metrics;

/// The revocation list's file name inside the registry directory.
pub const REVOCATION_FILE: &str = "revoked.txt";
/// The signed revocation list beside the records (`provgate revoke`; see
/// [`revocations`]): the dir backend reads it as the HTTP backends fetch `/revocations`.
pub const SIGNED_REVOCATION_FILE: &str = "revocations.jws";

/// A subdirectory of the registry directory holding only exceptions (`*.jwt`/`*.jws`).
/// Exceptions may also sit beside records: their `typ` tells them apart.
pub const EXCEPTIONS_DIR: &str = "exceptions";

/// One verified record for a digest, with its registry-side state.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub record: Arc<ApprovalRecord>,
    pub revoked: bool,
}

/// One verified exception for a digest, with its registry-side state.
#[derive(Debug, Clone)]
pub struct ExceptionCandidate {
    pub exception: Arc<ExceptionRecord>,
    /// `revoked.txt` (or the registry) names its ID.
    pub revoked: bool,
}

/// Everything the registry holds for one digest.
#[derive(Debug, Default)]
pub struct RegistryEntry {
    /// Verified records, newest (`iat`) first.
    pub records: Vec<Candidate>,
    /// Verified exceptions claiming this digest, in no particular order. Which (if any)
    /// applies to a record is the decision's business.
    pub exceptions: Vec<ExceptionCandidate>,
    /// Records that claimed this digest but failed verification, with why (for the log).
    pub invalid: Vec<String>,
    /// The earliest `revalidate_after` among `records`.
    pub revalidate_after: Option<u64>,
    /// The registry revoked the digest as a whole (an HTTP registry's 410, whatever its
    /// body): nothing in `records` may allow it.
    pub revoked: bool,
    /// A remote registry's clocks for this entry (the digest's own, and the revocation
    /// list's when there is one): the entry is usable while every one is within
    /// `max_stale`. Empty: the store's one clock (a directory is read whole).
    pub clocks: Vec<Arc<SourceClock>>,
}

/// The freshness of one thing a remote registry is asked about (a digest's records, the
/// revocation list): when it was last read successfully, on the monotonic clock for
/// `max_stale` and as Unix milliseconds for `revalidate_after`. Shared between the
/// refresher, which confirms it, and the entries it published, which the request path
/// reads: two relaxed atomic loads.
#[derive(Debug, Default)]
pub struct SourceClock {
    fresh: crate::kit::published::Freshness,
    confirmed_unix_ms: AtomicU64,
}

impl SourceClock {
    /// A read succeeded now.
    pub fn confirm(&self) {
        self.fresh.mark_success();
        self.confirmed_unix_ms
            .store(crate::unix_now_ms(), Ordering::Relaxed);
    }

    /// Time since the last success, None before the first.
    pub fn age(&self) -> Option<Duration> {
        self.fresh.age()
    }

    /// The last success, as Unix milliseconds (0 before the first).
    pub fn confirmed_unix_ms(&self) -> u64 {
        self.confirmed_unix_ms.load(Ordering::Relaxed)
    }
}

impl RegistryEntry {
    /// An entry from verified records in any order and the failures, sorted newest first.
    pub fn new(mut records: Vec<Candidate>, invalid: Vec<String>) -> RegistryEntry {
        records.sort_by(|a, b| {
            b.record
                .claims
                .iat
                .cmp(&a.record.claims.iat)
                .then_with(|| b.record.claims.exp.cmp(&a.record.claims.exp))
        });
        let revalidate_after = records
            .iter()
            .filter_map(|c| c.record.claims.revalidate_after)
            .min();
        RegistryEntry {
            records,
            exceptions: Vec::new(),
            invalid,
            revalidate_after,
            revoked: false,
            clocks: Vec::new(),
        }
    }

    /// The same entry carrying `exceptions`.
    pub fn with_exceptions(mut self, exceptions: Vec<ExceptionCandidate>) -> RegistryEntry {
        self.exceptions = exceptions;
        self
    }
}

/// An immutable view of the registry.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub by_digest: HashMap<Digest, Arc<RegistryEntry>>,
    /// Whether a digest missing from `by_digest` has no record (a directory lists every
    /// record), or has not been asked about yet (a remote registry is asked per digest).
    pub exhaustive: bool,
    pub valid_records: usize,
    /// Verified exceptions (invalid ones count in `invalid_records`).
    pub valid_exceptions: usize,
    pub invalid_records: usize,
    pub revoked_ids: usize,
}

/// Errors reading the registry directory. A bad record is not an error: it is counted and
/// reported, and the rest of the directory still loads.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("reading the revocation list: {0}")]
    Revocations(#[from] crate::kit::file::ReadError),
    #[error("the signed revocation list (revocations.jws) is refused: {0}")]
    SignedRevocations(#[from] revocations::RevocationError),
    #[error("reading registry directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
}

// === Rejection log ===

/// The log of one round's rejected records: the first is logged in full, the rest are
/// counted and summarised in one line when the round ends ([`RejectLog::finish`]), so a
/// registry full of garbage costs two log lines per round, not one per record.
#[derive(Debug)]
pub struct RejectLog {
    backend: &'static str,
    rejected: usize,
}

impl RejectLog {
    pub fn new(backend: &'static str) -> RejectLog {
        RejectLog {
            backend,
            rejected: 0,
        }
    }

    /// One record rejected: `origin` names it (a file, a model version), `error` says why.
    pub fn reject(&mut self, origin: &dyn std::fmt::Display, error: &dyn std::fmt::Display) {
        self.rejected += 1;
        if self.rejected == 1 {
            tracing::warn!(backend = self.backend, origin = %origin, error = %error,
                "approval record rejected");
        }
    }

    /// Records rejected so far.
    pub fn count(&self) -> usize {
        self.rejected
    }

    /// Ends the round: one line for the records not logged one by one.
    pub fn finish(self) {
        if self.rejected > 1 {
            tracing::warn!(
                backend = self.backend,
                rejected = self.rejected,
                not_logged = self.rejected - 1,
                "approval records rejected in this round (the first is logged above)"
            );
        }
    }
}

/// Loads a registry directory into a snapshot, verifying each record against `approvers`.
pub fn load_dir(dir: &Path, approvers: &KeySet) -> Result<Snapshot, RegistryError> {
    let io_err = |source| RegistryError::Dir {
        path: dir.display().to_string(),
        source,
    };
    let mut revoked = read_revocations(&dir.join(REVOCATION_FILE))?;
    // The signed list a static host serves beside the records (`provgate revoke`) revokes
    // here too. One that does not verify fails the load: the last good records stay and
    // age toward max_stale, as for an unreadable revoked.txt.
    match crate::kit::file::read_string(
        &dir.join(SIGNED_REVOCATION_FILE),
        crate::kit::file::Kind::Revocations,
    ) {
        Ok(text) => revoked.extend(revocations::verify(&text, approvers)?.revoked),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    let documents = |dir: &Path| -> Result<Vec<PathBuf>, std::io::Error> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("jwt") | Some("jws")
                ) && p.file_name().and_then(|n| n.to_str()) != Some(SIGNED_REVOCATION_FILE)
            })
            .collect();
        files.sort();
        Ok(files)
    };
    let mut files = documents(dir).map_err(io_err)?;
    // Exceptions may also live in their own subdirectory; a file there must be one.
    let exceptions_dir = dir.join(EXCEPTIONS_DIR);
    let only_exceptions = match documents(&exceptions_dir) {
        Ok(more) => more,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err(e)),
    };
    let first_exception_only = files.len();
    files.extend(only_exceptions);

    let mut building: HashMap<Digest, (Vec<Candidate>, Vec<String>)> = HashMap::new();
    let mut exceptions: HashMap<Digest, Vec<ExceptionCandidate>> = HashMap::new();
    let mut snapshot = Snapshot {
        exhaustive: true,
        revoked_ids: revoked.len(),
        ..Snapshot::default()
    };
    let mut seen_ids = HashSet::new();
    let mut rejects = RejectLog::new("dir");
    for (i, file) in files.into_iter().enumerate() {
        let text = match crate::kit::file::read_string(&file, crate::kit::file::Kind::Record) {
            Ok(t) => t,
            Err(e) => {
                rejects.reject(&file.display(), &e);
                snapshot.invalid_records += 1;
                continue;
            }
        };
        let verified = if i >= first_exception_only {
            approval::exception::verify(&text, approvers).map(Verified::Exception)
        } else {
            approval::verify_any(&text, approvers)
        };
        match verified {
            Ok(Verified::Exception(e)) => {
                let revoked = revoked.contains(&e.claims.jti);
                exceptions
                    .entry(e.claims.artefact.digest)
                    .or_default()
                    .push(ExceptionCandidate {
                        exception: Arc::new(e),
                        revoked,
                    });
                snapshot.valid_exceptions += 1;
            }
            Ok(Verified::Record(record)) => {
                if !seen_ids.insert(record.claims.jti.clone()) {
                    tracing::warn!(file = %file.display(), record_id = %record.claims.jti,
                        "duplicate record ID; both copies kept");
                }
                let revoked = revoked.contains(&record.claims.jti);
                building
                    .entry(record.claims.artefact.digest)
                    .or_default()
                    .0
                    .push(Candidate {
                        record: Arc::new(record),
                        revoked,
                    });
                snapshot.valid_records += 1;
            }
            Err(e) if i >= first_exception_only || approval::is_exception(&text) => {
                // A bad exception waives nothing; it does not make the records invalid.
                rejects.reject(&file.display(), &e);
                snapshot.invalid_records += 1;
            }
            Err(e) => {
                rejects.reject(&file.display(), &e);
                snapshot.invalid_records += 1;
                // Report the failure against the digest it claims, so a bad signature on the
                // served digest reads as `approval_invalid`, not `artefact_unmanaged`.
                if let Some((Some(digest), _)) = approval::peek_claims(&text) {
                    building
                        .entry(digest)
                        .or_default()
                        .1
                        .push(format!("{}: {e}", file.display()));
                }
            }
        }
    }
    rejects.finish();
    for digest in exceptions.keys() {
        building.entry(*digest).or_default();
    }
    for (digest, (records, invalid)) in building {
        let entry = RegistryEntry::new(records, invalid)
            .with_exceptions(exceptions.remove(&digest).unwrap_or_default());
        snapshot.by_digest.insert(digest, Arc::new(entry));
    }
    Ok(snapshot)
}

/// A verified exception fetched for `digest` from a remote registry: refused when it names
/// another digest (filed under the wrong one, it waives nothing).
pub(crate) fn exception_for(
    exception: ExceptionRecord,
    digest: &Digest,
    revoked: bool,
) -> Result<ExceptionCandidate, String> {
    if exception.claims.artefact.digest != *digest {
        return Err(format!(
            "exception {} is for {}, not the digest it is filed under",
            exception.claims.jti, exception.claims.artefact.digest
        ));
    }
    Ok(ExceptionCandidate {
        exception: Arc::new(exception),
        revoked,
    })
}

/// Reads `revoked.txt` (bounded, non-blocking: a FIFO or an oversized list fails the
/// load, and the last good records age toward `max_stale`); a missing file is an empty list.
fn read_revocations(path: &Path) -> Result<HashSet<String>, crate::kit::file::ReadError> {
    match crate::kit::file::read_string(path, crate::kit::file::Kind::Revocations) {
        Ok(text) => Ok(text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()),
        Err(e) if e.is_not_found() => Ok(HashSet::new()),
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

/// The staleness rules, as pure functions of time (table-tested on a paused clock).
pub mod freshness {
    use std::time::Duration;

    /// May the last good records still be used, `since_sync` after the last successful
    /// read? Never before the first read.
    pub fn within_max_stale(synced: bool, since_sync: Duration, max_stale: Duration) -> bool {
        synced && since_sync <= max_stale
    }

    /// May a record with `revalidate_after` still be used at `now_ms` (Unix milliseconds),
    /// the registry having last been read successfully at `confirmed_ms`? Past
    /// `revalidate_after`, only when a read at or after that time confirmed it; `grace`
    /// covers the fetch that the refresher starts at that very moment.
    pub fn revalidated(
        revalidate_after: Option<u64>,
        confirmed_ms: u64,
        now_ms: u64,
        grace: Duration,
    ) -> bool {
        let Some(at) = revalidate_after else {
            return true;
        };
        let at_ms = at.saturating_mul(1000);
        now_ms < at_ms.saturating_add(grace.as_millis() as u64) || confirmed_ms >= at_ms
    }
}

/// The fast hasher, re-exported from [`crate::base`] where it lives.
pub use crate::base::FastHash;

/// Numbers each [`ApprovalStore`], for [`RECENT`].
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(0);

/// How many lookups each thread remembers (a sidecar serves a few models).
const RECENT_LOOKUPS: usize = 4;

/// One lookup a thread made: in which store and snapshot, for which digest, and what it
/// found.
struct RecentLookup {
    store: u64,
    /// Held weakly, so an old snapshot's records are freed when it is replaced; its
    /// allocation is not, so no later snapshot can have this address while this lives.
    snapshot: std::sync::Weak<Snapshot>,
    digest: Digest,
    entry: Option<Arc<RegistryEntry>>,
}

impl RecentLookup {
    /// Was this lookup made in `store`'s `snapshot` (the one published now) for `digest`?
    fn is(&self, store: u64, snapshot: &Arc<Snapshot>, digest: &Digest) -> bool {
        self.store == store
            && std::ptr::eq(self.snapshot.as_ptr(), Arc::as_ptr(snapshot))
            && self.digest == *digest
    }
}

thread_local! {
    /// Each thread's last lookups, newest last. (A cache shared by every thread, filled by
    /// whoever missed, could be filled from a snapshot read just before a publish and keep
    /// that answer until the next one.)
    static RECENT: std::cell::RefCell<Vec<RecentLookup>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The request path's view of the registry.
pub struct ApprovalStore {
    /// The snapshot, with its freshness clock (synced after the first read; restarted by
    /// every successful read).
    snapshot: Published<Snapshot>,
    /// Tells this store's entries apart in each thread's [`RECENT`] lookups.
    id: u64,
    /// The published snapshot's `exhaustive`.
    exhaustive: AtomicBool,
    /// When the registry was last read successfully, as Unix milliseconds, for
    /// `revalidate_after`.
    last_sync_unix_ms: AtomicU64,
    /// How long the last good records may be used while the registry cannot be read.
    max_stale: Duration,
    /// How long after a record's `revalidate_after` it may be used while the read that time
    /// started is still in flight.
    revalidate_grace: Duration,
    metrics: Arc<Metrics>,
}

impl ApprovalStore {
    pub fn new(
        max_stale: Duration,
        revalidate_grace: Duration,
        metrics: Arc<Metrics>,
    ) -> ApprovalStore {
        ApprovalStore {
            max_stale,
            revalidate_grace,
            snapshot: Published::new(Snapshot::default()),
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            exhaustive: AtomicBool::new(false),
            last_sync_unix_ms: AtomicU64::new(0),
            metrics,
        }
    }

    /// The request path's view at `now_ms` (Unix milliseconds): the entry for a digest, or
    /// `Unavailable` (fail closed) when
    /// - the registry has not been read yet, or not successfully for longer than `max_stale`;
    /// - the digest has not been asked about yet (a remote registry, just after the served
    ///   artefact changed);
    /// - the entry's `revalidate_after` has passed without a successful read since.
    pub fn view(&self, digest: &Digest, now_ms: u64) -> Lookup {
        let global_fresh = || {
            freshness::within_max_stale(self.is_synced(), self.since_last_sync(), self.max_stale)
        };
        let exhaustive = self.exhaustive.load(Ordering::Acquire);
        if exhaustive && !global_fresh() {
            return Lookup::Unavailable;
        }
        let entry = match self.lookup(digest) {
            Some(entry) => entry,
            // Not asked about yet (a remote registry): unknown, fail closed.
            None if !exhaustive => return Lookup::Unavailable,
            None => return Lookup::Entry(None),
        };
        // A remote entry is as fresh as the oldest of its clocks; an entry without clocks
        // goes by the store's.
        let (fresh, confirmed_ms) = if entry.clocks.is_empty() {
            (
                exhaustive || global_fresh(),
                self.last_sync_unix_ms.load(Ordering::Relaxed),
            )
        } else {
            (
                entry.clocks.iter().all(|c| {
                    c.age()
                        .is_some_and(|age| freshness::within_max_stale(true, age, self.max_stale))
                }),
                entry
                    .clocks
                    .iter()
                    .map(|c| c.confirmed_unix_ms())
                    .min()
                    .unwrap_or(0),
            )
        };
        if !fresh
            || !freshness::revalidated(
                entry.revalidate_after,
                confirmed_ms,
                now_ms,
                self.revalidate_grace,
            )
        {
            return Lookup::Unavailable;
        }
        Lookup::Entry(Some(entry))
    }

    /// The entry for a digest, bypassing the cache and its counters (for scrapes).
    pub fn peek(&self, digest: &Digest) -> Option<Arc<RegistryEntry>> {
        self.snapshot.load().by_digest.get(digest).cloned()
    }

    /// The entry for a digest in the snapshot published now (None: the registry has no
    /// record for it). This thread's recent lookups in the same snapshot are answered again
    /// without hashing the digest (a `hit`); a lookup is never answered from another
    /// snapshot, so a publish is seen by the next lookup on every thread.
    pub fn lookup(&self, digest: &Digest) -> Option<Arc<RegistryEntry>> {
        let snapshot = self.snapshot.load();
        let hit = RECENT.with(|r| {
            r.borrow()
                .iter()
                .find(|l| l.is(self.id, &snapshot, digest))
                .map(|l| l.entry.clone())
        });
        if let Some(entry) = hit {
            self.metrics.approval_cache_hits.inc();
            return entry;
        }
        self.metrics.approval_cache_misses.inc();
        let found = snapshot.by_digest.get(digest).cloned();
        RECENT.with(|r| {
            let mut r = r.borrow_mut();
            if r.len() >= RECENT_LOOKUPS {
                r.remove(0);
            }
            r.push(RecentLookup {
                store: self.id,
                snapshot: Arc::downgrade(&snapshot),
                digest: *digest,
                entry: found.clone(),
            });
        });
        found
    }

    /// Has the first load finished?
    pub fn is_synced(&self) -> bool {
        self.snapshot.is_synced()
    }

    /// Time since the last successful load.
    pub fn since_last_sync(&self) -> Duration {
        self.snapshot.clock().since_success()
    }

    /// Records that the registry was read and found unchanged.
    pub fn confirm(&self) {
        self.snapshot.clock().confirm();
        self.last_sync_unix_ms
            .store(crate::unix_now_ms(), Ordering::Relaxed);
    }

    /// Publishes a freshly read snapshot, drops every cached lookup, and records the read.
    pub fn publish(&self, snapshot: Snapshot) {
        self.replace(snapshot);
        self.confirm();
        self.snapshot.clock().mark_synced();
    }

    /// A remote registry's digests have all been answered, the oldest answer `oldest` ago:
    /// the store counts as synced (readiness) and its clock (the sync-age gauge) shows that
    /// age. Each entry's usability goes by its own clocks.
    pub fn remote_synced(&self, oldest: Duration) {
        self.snapshot.clock().confirm_since(oldest);
        self.last_sync_unix_ms.store(
            crate::unix_now_ms().saturating_sub(oldest.as_millis() as u64),
            Ordering::Relaxed,
        );
        self.snapshot.clock().mark_synced();
    }

    /// Publishes a snapshot from a read that was not complete (some digests could not be
    /// fetched): what was fetched takes effect, but the staleness clock does not restart.
    pub fn replace(&self, snapshot: Snapshot) {
        self.metrics
            .registry_records_valid
            .set(snapshot.valid_records as i64);
        self.metrics
            .registry_records_invalid
            .set(snapshot.invalid_records as i64);
        self.metrics
            .registry_revoked_ids
            .set(snapshot.revoked_ids as i64);
        self.exhaustive
            .store(snapshot.exhaustive, Ordering::Release);
        self.snapshot.store(snapshot);
    }

    /// The current snapshot (for the admin endpoints and tests).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}

/// Pre-resolved metric handles for one backend.
pub(crate) struct FetchMetrics {
    pub ok: IntCounter,
    pub not_modified: IntCounter,
    pub not_found: IntCounter,
    pub revoked: IntCounter,
    pub error: IntCounter,
    pub duration: Histogram,
}

impl FetchMetrics {
    pub fn new(metrics: &Metrics, backend: &str) -> FetchMetrics {
        let counter = |result| {
            metrics
                .registry_fetches
                .with_label_values(&[backend, result])
        };
        FetchMetrics {
            ok: counter("ok"),
            not_modified: counter("not_modified"),
            not_found: counter("not_found"),
            revoked: counter("revoked"),
            error: counter("error"),
            duration: metrics
                .registry_fetch_duration
                .with_label_values(&[backend]),
        }
    }
}

// === Directory watcher ===

/// Keeps an [`ApprovalStore`] in step with a registry directory.
#[derive(Clone)]
pub struct DirRegistry {
    pub dir: PathBuf,
    pub approvers: KeySet,
    pub refresh_interval: Duration,
    pub store: Arc<ApprovalStore>,
    pub metrics: Arc<Metrics>,
    /// Beaten between looks ([`crate::kit::watchdog`]).
    pub heartbeat: Option<Arc<crate::kit::watchdog::Heartbeat>>,
}

impl DirRegistry {
    /// Loads once, then reloads on every change until `stop` is set. Blocks: it reads files
    /// and verifies signatures, which must stay off the request path and the async workers.
    pub fn run(self, stop: Arc<AtomicBool>) {
        let mut turn = DirTurn {
            fetches: FetchMetrics::new(&self.metrics, "dir"),
            registry: &self,
        };
        DirWatch::new(self.dir.clone())
            .beating(self.heartbeat.clone())
            .run(&mut turn, &stop);
    }
}

/// The directory registry's hooks into the directory watch.
struct DirTurn<'r> {
    registry: &'r DirRegistry,
    fetches: FetchMetrics,
}

impl Hooks for DirTurn<'_> {
    fn changed(&mut self, _: &Fingerprint) -> bool {
        self.registry.reload(&self.fetches)
    }

    fn unchanged(&mut self) -> bool {
        if self.registry.dir.is_dir() {
            self.fetches.not_modified.inc();
            self.registry.store.confirm();
            true
        } else {
            // Gone (an unmounted volume): fail the next reload, let the records age.
            false
        }
    }

    /// Wake on a change event, at the rescan interval, or when a record asks to be
    /// revalidated.
    fn wait(&self) -> Duration {
        self.registry.next_wait()
    }
}

impl DirRegistry {
    /// Until the next rescan: the refresh interval, or sooner when a record's
    /// `revalidate_after` falls before it.
    fn next_wait(&self) -> Duration {
        let now_ms = crate::unix_now_ms();
        let snapshot = self.store.snapshot();
        let due = snapshot
            .by_digest
            .values()
            .filter_map(|e| e.revalidate_after)
            .map(|at| at.saturating_mul(1000))
            .filter(|&at_ms| at_ms > now_ms)
            .min();
        match due {
            Some(at_ms) => self
                .refresh_interval
                .min(Duration::from_millis(at_ms - now_ms)),
            None => self.refresh_interval,
        }
    }

    /// Loads the directory and publishes it; false when it could not be read.
    fn reload(&self, fetches: &FetchMetrics) -> bool {
        let started = Instant::now();
        let loaded = load_dir(&self.dir, &self.approvers);
        fetches.duration.observe(started.elapsed().as_secs_f64());
        match loaded {
            Ok(snapshot) => {
                fetches.ok.inc();
                tracing::info!(
                    dir = %self.dir.display(),
                    valid = snapshot.valid_records,
                    invalid = snapshot.invalid_records,
                    revoked = snapshot.revoked_ids,
                    "registry loaded"
                );
                self.store.publish(snapshot);
                true
            }
            Err(e) => {
                // Keep the last good snapshot; readiness and the sync-age gauge tell the story.
                fetches.error.inc();
                tracing::error!(error = %e, "registry reload failed; keeping the last good records until max_stale");
                false
            }
        }
    }
}

pub mod config;
pub mod http;
pub mod mlflow;
pub mod remote;
pub mod revocations;
pub mod source;

#[cfg(test)]
mod tests;
