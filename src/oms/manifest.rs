//! OMS manifests of a model directory: which files it holds, how they are cut into resources
//! (whole files, or fixed-size shards), and their SHA-256 digests, computed on a pool of
//! threads and, on a re-hash, only for the files whose identity changed.
//!
//! Resources, as the `model_signing` package (1.1.1) makes them:
//! - `files`: one per regular file (empty files included), named by its POSIX path relative to
//!   the root;
//! - `shards`: one per `shard_size` slice of each non-empty file, named `path:start:end`
//!   (`end` exclusive; the last slice of a file is shorter); an empty file has no shard.
//!
//! Ordering is the reference tool's: by path, compared component by component (Python's
//! `PurePosixPath` order, which is also `std::path::Path`'s), then by start offset as a number.
//! The root digest is SHA-256 over the concatenated raw resource digests in that order.
//!
//! Hashing is a work queue of (file, offset, length) jobs, longest first, taken by up to
//! `threads` threads, each reading with `pread` into its own reusable buffer. Under `files` a
//! file is one job (SHA-256 is sequential); under `shards` one large file spreads over every
//! thread. Each read adds its length to the optional [`HashProgress`] the caller passed
//! (one relaxed atomic add per read). This module reads files and nothing else: publishing and
//! drawing progress are the watcher's and the command line's business.

use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

use super::progress::HashProgress;

/// Paths directly under the root that the OMS tooling leaves out of a manifest by default.
pub const IGNORED_TOP_LEVEL: [&str; 5] = [
    ".git",
    ".gitignore",
    ".github",
    ".gitattributes",
    "model.sig",
];

/// The reference tool's default shard size (bytes).
pub const DEFAULT_SHARD_SIZE: u64 = 1_000_000_000;

/// Bytes read per `pread`, per thread. Measured with `cargo bench --bench hashing` (the
/// summary's read-size rows; a file in the page cache, one thread, ratio to raw SHA-256):
/// 64 KiB 0.86x, 256 KiB 0.88x, 1 MiB 0.91x, 2 MiB 0.90x, 4 MiB 0.90x, 8 MiB 0.88x. Small
/// reads pay the per-call cost of the page-cache copy; reads larger than the core's L2 cache
/// (1 MiB here) make SHA-256 re-read the copy from farther away. See BENCHMARKS.md.
pub const DEFAULT_READ_BUFFER: usize = 1 << 20;

/// How much older than the previous listing a file's change time must be for its recorded
/// digest to be reused. File times have a coarse granularity (the kernel's tick, 2 s on some
/// file systems): a file rewritten in the same tick as it was listed keeps the times that were
/// recorded with the old content, so a digest recorded that close to a change is not trusted
/// (git's "racily clean" rule) and the file is hashed again.
pub const RACY_MARGIN: Duration = Duration::from_secs(2);

/// How a directory is cut into OMS resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serialization {
    /// One resource per file.
    Files,
    /// One resource per `shard_size` bytes of each file.
    Shards { shard_size: u64 },
}

impl Serialization {
    /// The OMS `serialization.method` word.
    pub fn method(&self) -> &'static str {
        match self {
            Serialization::Files => "files",
            Serialization::Shards { .. } => "shards",
        }
    }

    /// The (start, end) byte ranges of a file of `size` bytes, in manifest order.
    pub fn ranges(&self, size: u64) -> Vec<(u64, u64)> {
        match *self {
            Serialization::Files => vec![(0, size)],
            Serialization::Shards { shard_size } => {
                // The reference tool's `_endpoints`: every shard_size, then the size itself;
                // nothing for an empty file. A zero shard size is refused by configuration
                // and the command line; one range per file is the safe reading of it here.
                let step = shard_size.max(1);
                let mut out = Vec::with_capacity(size.div_ceil(step) as usize);
                let mut start = 0;
                while start < size {
                    let end = start.saturating_add(step).min(size);
                    out.push((start, end));
                    start = end;
                }
                out
            }
        }
    }

    /// The OMS resource name of one range of the file at `name` (a POSIX relative path).
    pub fn resource_name(&self, name: &str, start: u64, end: u64) -> String {
        match self {
            Serialization::Files => name.to_string(),
            Serialization::Shards { .. } => format!("{name}:{start}:{end}"),
        }
    }
}

impl std::fmt::Display for Serialization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Serialization::Files => f.write_str("files"),
            Serialization::Shards { shard_size } => write!(f, "shards of {shard_size} bytes"),
        }
    }
}

pub use crate::kit::file::FileIdentity;

/// Whether a digest recorded for a file with identity `recorded`, listed at `listed_at`, may
/// stand for the file now seen with identity `now`: the identity is unchanged and the file
/// had last changed at least `margin` before that listing (see [`RACY_MARGIN`]).
pub fn reusable(
    recorded: &FileIdentity,
    listed_at: SystemTime,
    margin: Duration,
    now: &FileIdentity,
) -> bool {
    recorded == now
        && recorded
            .changed_at()
            .zip(listed_at.checked_sub(margin))
            .is_some_and(|(changed, trusted_before)| changed < trusted_before)
}

/// A file a manifest covers.
#[derive(Debug, Clone)]
pub struct ListedFile {
    /// Relative to the root; manifest order sorts by it.
    pub rel: PathBuf,
    pub abs: PathBuf,
    /// As seen when listed, before any byte was read.
    pub identity: FileIdentity,
}

impl ListedFile {
    /// The POSIX spelling of the relative path (listing checked it is UTF-8).
    pub fn name(&self) -> String {
        posix(&self.rel)
    }
}

/// A file as hashed into a manifest.
#[derive(Debug, Clone)]
pub struct ManifestFile {
    pub rel: PathBuf,
    pub identity: FileIdentity,
    /// Its resources, as a range of [`Manifest::resources`].
    pub resources: Range<usize>,
}

/// A hashed model directory.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub root: Digest,
    pub serialization: Serialization,
    /// (OMS resource name, SHA-256) in manifest order.
    pub resources: Vec<(String, [u8; 32])>,
    /// The files, in manifest order, with the identity each had when listed.
    pub files: Vec<ManifestFile>,
    pub total_bytes: u64,
    /// When the directory was listed (before any file was read).
    pub listed_at: SystemTime,
    /// What this computation hashed and what it reused.
    pub stats: HashStats,
}

/// Work done by one manifest computation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashStats {
    /// Files read and hashed.
    pub hashed_files: usize,
    /// Files whose digests were taken from the previous manifest.
    pub reused_files: usize,
    /// Bytes read.
    pub hashed_bytes: u64,
}

/// How to hash.
#[derive(Debug, Clone)]
pub struct HashOptions {
    pub serialization: Serialization,
    /// Hashing threads (at least one is used; never more than there are jobs).
    pub threads: usize,
    /// Bytes per read, per thread.
    pub read_buffer: usize,
    /// See [`RACY_MARGIN`].
    pub racy_margin: Duration,
    /// Set by the owner to abandon the hash (a shutdown): checked between reads.
    pub cancel: Option<Arc<AtomicBool>>,
    /// At most this many bytes per second over all threads (a scrub's CPU budget); None
    /// reads as fast as the disk and the threads allow.
    pub rate: Option<u64>,
    /// Beaten after every read ([`crate::kit::watchdog`]): a read that hangs shows.
    pub heartbeat: Option<Arc<crate::kit::watchdog::Heartbeat>>,
    /// Counters the hash fills as it reads, for the owner to show (see [`HashProgress`]).
    pub progress: Option<Arc<HashProgress>>,
}

impl HashOptions {
    pub fn new(serialization: Serialization, threads: usize) -> HashOptions {
        HashOptions {
            serialization,
            threads,
            read_buffer: DEFAULT_READ_BUFFER,
            racy_margin: RACY_MARGIN,
            cancel: None,
            rate: None,
            heartbeat: None,
            progress: None,
        }
    }

    /// The same options, beating `heartbeat` after every read.
    pub fn beating(self, heartbeat: Option<Arc<crate::kit::watchdog::Heartbeat>>) -> HashOptions {
        HashOptions { heartbeat, ..self }
    }

    /// The same options, reporting to `progress` as they read.
    pub fn reporting_to(self, progress: Arc<HashProgress>) -> HashOptions {
        HashOptions {
            progress: Some(progress),
            ..self
        }
    }

    /// The same options, reading at most `bytes_per_second` over all threads.
    pub fn rate_limited(self, bytes_per_second: u64) -> HashOptions {
        HashOptions {
            rate: Some(bytes_per_second.max(1)),
            ..self
        }
    }

    /// The same options, abandoned when `cancel` is set.
    pub fn cancelled_by(self, cancel: Arc<AtomicBool>) -> HashOptions {
        HashOptions {
            cancel: Some(cancel),
            ..self
        }
    }
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
    #[error("{0} changed while it was being hashed")]
    Changed(String),
    #[error("a hashing thread panicked")]
    Panicked,
    #[error("hashing abandoned")]
    Cancelled,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HashError + '_ {
    move |source| HashError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Lists the files a manifest covers, in manifest order, with their identities.
pub fn list_files(root: &Path) -> Result<Vec<ListedFile>, HashError> {
    let root = root.canonicalize().map_err(io_err(root))?;
    let meta = std::fs::metadata(&root).map_err(io_err(&root))?;
    if meta.is_file() {
        // A single-file model: its one resource is named "." (shards ".:START:END"), as
        // model_signing names it; names do not enter the digest.
        return Ok(vec![ListedFile {
            rel: PathBuf::from("."),
            abs: root,
            identity: FileIdentity::of(&meta),
        }]);
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
                // lstat, as the file type above: the entry itself, not a link target.
                let meta = entry.metadata().map_err(io_err(&path))?;
                out.push(ListedFile {
                    rel,
                    abs: path,
                    identity: FileIdentity::of(&meta),
                });
            } else {
                return Err(HashError::Special(path.display().to_string()));
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// One unit of hashing work: a byte range of a listed file, hashed into resource `slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub file: usize,
    pub start: u64,
    pub end: u64,
    pub slot: usize,
    /// The file's last range: after it, the file must be at its end (it did not grow).
    pub last: bool,
}

/// The resources of a listing and the jobs that hash them: resource names in manifest
/// order, each file's resource range, the digests known already (from `previous`, for
/// files whose identity is unchanged), and the jobs for the rest, longest first.
#[derive(Debug)]
pub struct Plan {
    pub names: Vec<String>,
    pub ranges: Vec<Range<usize>>,
    pub known: Vec<Option<[u8; 32]>>,
    pub jobs: Vec<Job>,
    pub reused_files: usize,
}

/// Plans the hashing of `files` (as listed at `listed_at`) under `opts`, reusing digests
/// from `previous` where [`reusable`] allows.
pub fn plan(files: &[ListedFile], opts: &HashOptions, previous: Option<&Manifest>) -> Plan {
    let serialization = opts.serialization;
    let previous = previous.filter(|p| p.serialization == serialization);
    let mut p = Plan {
        names: Vec::new(),
        ranges: Vec::with_capacity(files.len()),
        known: Vec::new(),
        jobs: Vec::new(),
        reused_files: 0,
    };
    for (i, f) in files.iter().enumerate() {
        let name = f.name();
        let ranges = serialization.ranges(f.identity.size);
        let first = p.names.len();
        p.names.extend(
            ranges
                .iter()
                .map(|&(s, e)| serialization.resource_name(&name, s, e)),
        );
        p.ranges.push(first..p.names.len());
        let old = previous.and_then(|prev| {
            let j = prev
                .files
                .binary_search_by(|m| m.rel.as_path().cmp(&f.rel))
                .ok()?;
            let m = prev.files.get(j)?;
            reusable(&m.identity, prev.listed_at, opts.racy_margin, &f.identity)
                .then(|| prev.resources.get(m.resources.clone()))
                .flatten()
        });
        match old {
            // Same identity, same serialization: same ranges, so the same count.
            Some(old) if old.len() == ranges.len() => {
                p.known.extend(old.iter().map(|(_, d)| Some(*d)));
                p.reused_files += 1;
            }
            _ => {
                let count = ranges.len();
                for (k, &(start, end)) in ranges.iter().enumerate() {
                    p.jobs.push(Job {
                        file: i,
                        start,
                        end,
                        slot: first + k,
                        last: k + 1 == count,
                    });
                }
                p.known.extend(std::iter::repeat_n(None, count));
            }
        }
    }
    // Longest first, so that the short tail of the queue evens out the threads' loads.
    p.jobs.sort_by_key(|j| std::cmp::Reverse(j.end - j.start));
    p
}

/// Computes the `files` manifest of a model directory on up to `threads` threads.
pub fn compute_manifest(root: &Path, threads: usize) -> Result<Manifest, HashError> {
    hash_dir(root, &HashOptions::new(Serialization::Files, threads), None)
}

/// Computes the manifest of a model directory, hashing only the files that `previous` does
/// not already cover with an unchanged identity. `opts.progress`, if any, is started when
/// the directory is listed and ended when this returns, whatever the outcome.
pub fn hash_dir(
    root: &Path,
    opts: &HashOptions,
    previous: Option<&Manifest>,
) -> Result<Manifest, HashError> {
    let progress = opts.progress.as_deref();
    if let Some(p) = progress {
        p.begin();
    }
    let result = hash_dir_inner(root, opts, previous);
    if let Some(p) = progress {
        p.end();
    }
    result
}

fn hash_dir_inner(
    root: &Path,
    opts: &HashOptions,
    previous: Option<&Manifest>,
) -> Result<Manifest, HashError> {
    // Taken before listing: a change after this instant is never older than the listing.
    let listed_at = SystemTime::now();
    let files = list_files(root)?;
    let plan = plan(&files, opts, previous);
    let mut hashed = vec![false; files.len()];
    for j in &plan.jobs {
        if let Some(h) = hashed.get_mut(j.file) {
            *h = true;
        }
    }
    let stats = HashStats {
        hashed_files: hashed.iter().filter(|h| **h).count(),
        reused_files: plan.reused_files,
        hashed_bytes: plan.jobs.iter().map(|j| j.end - j.start).sum(),
    };
    if let Some(p) = opts.progress.as_deref() {
        p.start(stats.hashed_files as u64, stats.hashed_bytes);
    }
    let mut digests = plan.known;
    for (slot, d) in run_jobs(&files, &plan.jobs, opts)? {
        *digests.get_mut(slot).ok_or(HashError::Panicked)? = Some(d);
    }
    let mut root_hasher = Sha256::new();
    let mut resources = Vec::with_capacity(digests.len());
    for (name, d) in plan.names.into_iter().zip(digests) {
        // Every slot is either known from the plan or filled by exactly one job.
        let d = d.ok_or(HashError::Panicked)?;
        root_hasher.update(d);
        resources.push((name, d));
    }
    Ok(Manifest {
        root: Digest(root_hasher.finalize().into()),
        serialization: opts.serialization,
        total_bytes: files.iter().map(|f| f.identity.size).sum(),
        files: files
            .into_iter()
            .zip(plan.ranges)
            .map(|(f, resources)| ManifestFile {
                rel: f.rel,
                identity: f.identity,
                resources,
            })
            .collect(),
        resources,
        listed_at,
        stats,
    })
}

/// Hashes the jobs on up to `opts.threads` threads; returns (slot, digest) pairs.
pub(crate) fn run_jobs(
    files: &[ListedFile],
    jobs: &[Job],
    opts: &HashOptions,
) -> Result<Vec<(usize, [u8; 32])>, HashError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let progress = opts.progress.as_deref();
    // Jobs left per file, so that a file counts as done when its last range is read (under
    // `shards` its ranges finish on different threads, in any order).
    let mut left: Vec<AtomicU32> = Vec::new();
    if progress.is_some() {
        left = files.iter().map(|_| AtomicU32::new(0)).collect();
        for j in jobs {
            if let Some(n) = left.get_mut(j.file) {
                *n.get_mut() = n.get_mut().saturating_add(1);
            }
        }
    }
    let left = &left;
    let first_error = Mutex::new(None);
    let threads = opts.threads.clamp(1, jobs.len());
    let buffer = opts.read_buffer.max(1);
    let results: Vec<Vec<(usize, [u8; 32])>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut buf = vec![0u8; buffer];
                    let mut open: Option<(usize, std::fs::File)> = None;
                    let mut mine = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        let pace = Pace {
                            cancel: opts.cancel.as_deref(),
                            rate: opts.rate.map(|r| (r / threads as u64).max(1)),
                            heartbeat: opts.heartbeat.as_deref(),
                            progress,
                        };
                        match hash_job(files, job, &mut open, &mut buf, &pace) {
                            Ok(d) => {
                                mine.push((job.slot, d));
                                if let Some(p) = progress {
                                    let was = left
                                        .get(job.file)
                                        .map(|n| n.fetch_sub(1, Ordering::Relaxed));
                                    if was == Some(1) {
                                        p.add_file();
                                    }
                                }
                            }
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                if let Ok(mut slot) = first_error.lock() {
                                    slot.get_or_insert(e);
                                }
                                break;
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    failed.store(true, Ordering::Relaxed);
                    Vec::new()
                })
            })
            .collect()
    });
    if failed.load(Ordering::Relaxed) {
        let e = first_error.into_inner().ok().flatten();
        return Err(e.unwrap_or(HashError::Panicked));
    }
    Ok(results.into_iter().flatten().collect())
}

/// Hashes one job's byte range with `pread` into `buf`, reusing the open file when the
/// previous job of this thread was in the same file. The opened file must still be the one
/// listed (same identity); its last range must end at the end of the file.
fn hash_job(
    files: &[ListedFile],
    job: &Job,
    open: &mut Option<(usize, std::fs::File)>,
    buf: &mut [u8],
    pace: &Pace<'_>,
) -> Result<[u8; 32], HashError> {
    let cancel = pace.cancel;
    let progress = pace.progress;
    let started = std::time::Instant::now();
    let f = files.get(job.file).ok_or(HashError::Panicked)?;
    let file = match open {
        Some((i, file)) if *i == job.file => file,
        _ => {
            // Without blocking, and only a regular file: a FIFO or device swapped in for the
            // listed file since the listing is refused at once, never waited on.
            let (file, meta) = crate::kit::file::open_regular(&f.abs).map_err(|e| match e {
                crate::kit::file::ReadError::Io { source, .. } => io_err(&f.abs)(source),
                _ => HashError::Changed(f.abs.display().to_string()),
            })?;
            if FileIdentity::of(&meta) != f.identity {
                return Err(HashError::Changed(f.abs.display().to_string()));
            }
            &open.insert((job.file, file)).1
        }
    };
    let changed = || HashError::Changed(f.abs.display().to_string());
    let mut hasher = Sha256::new();
    let mut pos = job.start;
    let mut since_check = 0u64;
    while pos < job.end {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(HashError::Cancelled);
        }
        // A pass no longer needed is abandoned: every RECHECK_BYTES, the file must still be
        // the listed one, unchanged, and still at its path (not removed or renamed over).
        if since_check >= RECHECK_BYTES {
            since_check = 0;
            if still_listed(file, f).is_err() {
                return Err(changed());
            }
        }
        let want = usize::try_from(job.end - pos).map_or(buf.len(), |n| n.min(buf.len()));
        // `want` is at most `buf.len()`, and `read_at` reads at most that: neither fails.
        let chunk = buf.get_mut(..want).ok_or(HashError::Panicked)?;
        match file.read_at(chunk, pos) {
            Ok(0) => return Err(changed()),
            Ok(n) => {
                hasher.update(chunk.get(..n).ok_or(HashError::Panicked)?);
                pos += n as u64;
                since_check += n as u64;
                pace.wait(started, pos - job.start)?;
                if let Some(p) = progress {
                    p.add_bytes(n as u64);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(&f.abs)(e)),
        }
    }
    if job.last {
        let mut probe = [0u8; 1];
        if file.read_at(&mut probe, job.end).map_err(io_err(&f.abs))? != 0 {
            return Err(changed());
        }
    }
    // The open file is the listed one, unchanged since it was listed: a file replaced or
    // written while (or before) this range was read would otherwise go into the manifest
    // with a digest that belongs to no version of it.
    let now = FileIdentity::of(&file.metadata().map_err(io_err(&f.abs))?);
    if now != f.identity {
        return Err(changed());
    }
    Ok(hasher.finalize().into())
}

/// How a hashing thread paces itself: the stop flag it looks at, and its share of the rate.
pub(crate) struct Pace<'a> {
    pub cancel: Option<&'a AtomicBool>,
    /// Bytes per second for this thread.
    pub rate: Option<u64>,
    /// Beaten after every read and every pause.
    pub heartbeat: Option<&'a crate::kit::watchdog::Heartbeat>,
    /// Counts every byte read (one relaxed atomic add per read).
    pub progress: Option<&'a HashProgress>,
}

impl Pace<'_> {
    /// Sleeps until `done` bytes read since `started` are within the rate, looking at the
    /// stop flag at least every 100 ms.
    fn wait(&self, started: std::time::Instant, done: u64) -> Result<(), HashError> {
        if let Some(h) = self.heartbeat {
            h.beat();
        }
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let due = Duration::from_secs_f64(done as f64 / rate as f64);
        loop {
            let ahead = due.saturating_sub(started.elapsed());
            if ahead.is_zero() {
                return Ok(());
            }
            if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(HashError::Cancelled);
            }
            std::thread::sleep(ahead.min(Duration::from_millis(100)));
            if let Some(h) = self.heartbeat {
                h.beat();
            }
        }
    }
}

/// How many bytes a hashing thread reads between two checks that its file is still the
/// listed one ([`still_listed`]): two `stat` calls per 64 MiB, so a file removed or
/// replaced while hashed is abandoned within a fraction of a second, not hashed to its end.
pub const RECHECK_BYTES: u64 = 64 << 20;

/// Whether the open `file` is still `f` as listed: same identity, still linked, and still
/// the file at its path.
fn still_listed(file: &std::fs::File, f: &ListedFile) -> Result<(), ()> {
    let meta = file.metadata().map_err(|_| ())?;
    if meta.nlink() == 0 || FileIdentity::of(&meta) != f.identity {
        return Err(());
    }
    let at_path = std::fs::symlink_metadata(&f.abs).map_err(|_| ())?;
    if (at_path.dev(), at_path.ino()) != (f.identity.dev, f.identity.inode) {
        return Err(());
    }
    Ok(())
}

/// A relative path in POSIX spelling.
pub fn posix(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

pub mod cache;

#[cfg(test)]
mod tests;
