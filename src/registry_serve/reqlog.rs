//! The request log of the reference registry: one line per request, written by a thread of
//! its own so a request never waits on the disk. Line format (space-separated):
//! `<arrival unix ms> <form> <status> <held ms> <watch 0|1>`, form one of `query`, `path`,
//! `revocations`, `other`. The fleet simulation (`benches/fleet/`) counts requests per 100 ms
//! and per second, 304s and held watches from it.
//!
//! Bounded: a full queue drops the line (counted, and the count logged when the log closes).

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lines queued before new ones are dropped.
const QUEUE: usize = 1 << 16;
/// The longest a written line stays in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Which URL form a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Query,
    Path,
    Revocations,
    Other,
}

impl Form {
    pub const fn name(self) -> &'static str {
        match self {
            Form::Query => "query",
            Form::Path => "path",
            Form::Revocations => "revocations",
            Form::Other => "other",
        }
    }
}

/// One request, as logged.
#[derive(Debug, Clone, Copy)]
pub struct Line {
    pub arrival_ms: u64,
    pub form: Form,
    pub status: u16,
    pub held_ms: u64,
    pub watch: bool,
}

/// The sending half (cheap to clone).
#[derive(Debug, Clone)]
pub struct RequestLog {
    tx: SyncSender<Line>,
    dropped: Arc<AtomicU64>,
}

/// The writer thread's handle: [`Closer::close`] writes what is queued and ends it.
#[derive(Debug)]
pub struct Closer {
    closing: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Closer {
    /// Writes the queued lines, flushes, and waits for the thread (at most one flush period
    /// and the write).
    pub fn close(self) {
        self.closing.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

impl RequestLog {
    /// Creates (truncates) `path` and starts its writer thread.
    pub fn create(path: &Path) -> std::io::Result<(RequestLog, Closer)> {
        let file = std::fs::File::create(path)?;
        let (tx, rx) = sync_channel::<Line>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let seen = dropped.clone();
        let closing = Arc::new(AtomicBool::new(false));
        let stop = closing.clone();
        let thread = std::thread::Builder::new()
            .name("registry-reqlog".into())
            .spawn(move || {
                let mut out = BufWriter::new(file);
                let mut flushed = Instant::now();
                // Closing is looked at on every line, not only when idle: a busy server
                // never idles for a flush period.
                while !stop.load(Ordering::Relaxed) {
                    if flushed.elapsed() >= FLUSH_EVERY {
                        let _ = out.flush();
                        flushed = Instant::now();
                    }
                    let line = match rx.recv_timeout(FLUSH_EVERY) {
                        Ok(line) => line,
                        Err(RecvTimeoutError::Timeout) => {
                            let _ = out.flush();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    emit(&mut out, &line);
                }
                // What is queued now, bounded: writers may still be sending.
                for line in rx.try_iter().take(QUEUE) {
                    emit(&mut out, &line);
                }
                let _ = out.flush();
                let n = seen.load(Ordering::Relaxed);
                if n > 0 {
                    tracing::warn!(dropped = n, "request log lines dropped (queue full)");
                }
            })?;
        Ok((RequestLog { tx, dropped }, Closer { closing, thread }))
    }

    /// Queues a line; never blocks.
    pub fn write(&self, line: Line) {
        match self.tx.try_send(line) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn emit(out: &mut impl Write, line: &Line) {
    let _ = writeln!(
        out,
        "{} {} {} {} {}",
        line.arrival_ms,
        line.form.name(),
        line.status,
        line.held_ms,
        u8::from(line.watch)
    );
}
