//! How far a hash has got: counters that [`super::hash_dir`] fills as it reads, and anyone
//! holding the same [`HashProgress`] reads from another thread (the command line's progress
//! bar, the sidecar's `/readyz`, gauge and progress log line).
//!
//! The cost is one relaxed atomic add per read (a [`super::manifest::DEFAULT_READ_BUFFER`]
//! of bytes) and one per finished job; no lock, no allocation, nothing on the reader's side
//! slows the hashing threads. The counters cover the bytes and files this hash reads: files
//! whose digests are reused from the previous manifest are neither done nor in the total.
//! This module only counts; drawing, logging and exporting belong to its readers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Shared progress counters of one hash at a time (a new hash starts them again).
#[derive(Debug, Default)]
pub struct HashProgress {
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
    files_done: AtomicU64,
    files_total: AtomicU64,
    active: AtomicBool,
}

/// One reading of [`HashProgress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    pub files_total: u64,
    /// A hash is running (its totals are known once it has listed the directory).
    pub active: bool,
}

impl ProgressSnapshot {
    /// Bytes per second over `elapsed` (0 when no time has passed).
    pub fn throughput(&self, elapsed: Duration) -> f64 {
        let secs = elapsed.as_secs_f64();
        if secs > 0.0 {
            self.bytes_done as f64 / secs
        } else {
            0.0
        }
    }

    /// Done as a fraction of the total (1.0 when there is nothing to read).
    pub fn fraction(&self) -> f64 {
        if self.bytes_total == 0 {
            1.0
        } else {
            self.bytes_done as f64 / self.bytes_total as f64
        }
    }
}

impl HashProgress {
    /// A hash is starting: nothing is known yet.
    pub fn begin(&self) {
        self.active.store(true, Ordering::Relaxed);
        self.start(0, 0);
    }

    /// The directory is listed and planned: `files` files of `bytes` bytes in all are to be
    /// read. Done counts are reset first, so a reader never sees done above a new total.
    pub fn start(&self, files: u64, bytes: u64) {
        self.bytes_done.store(0, Ordering::Relaxed);
        self.files_done.store(0, Ordering::Relaxed);
        self.bytes_total.store(bytes, Ordering::Relaxed);
        self.files_total.store(files, Ordering::Relaxed);
    }

    /// `n` more bytes read (called by the hashing threads after each read).
    #[inline]
    pub fn add_bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
    }

    /// One more file fully read.
    #[inline]
    pub fn add_file(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
    }

    /// The hash has finished (done, failed or abandoned); the counts stay readable.
    pub fn end(&self) {
        self.active.store(false, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            files_done: self.files_done.load(Ordering::Relaxed),
            files_total: self.files_total.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
        }
    }
}
