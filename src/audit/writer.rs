//! The writer thread: takes events off the bounded queue, bounds and chains them, writes them
//! in batches, rotates segments by size and age (rename, then a new file), writes checkpoints
//! at an interval and at shutdown, writes the summaries of what the queue could not hold,
//! and recovers from a log that cannot be written.
//!
//! Owns the file handles and the chain state. The request path only ever touches
//! [`Shared`] (a try-send, and on overflow one short lock on the summary table).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::checkpoint::{self, CheckpointClaims};
use super::config::AuditConfig;
use super::record::{encode_line, AuditEvent, Body, Marker, GENESIS};
use super::segments::{self, Tail};
use crate::telemetry::Metrics;

/// The longest the writer sleeps with nothing queued. It wakes on an event, on a wake-up
/// (`None` on the queue: a shutdown, or summaries to write) and at its next deadline (the
/// segment's age, a checkpoint due, a recovery attempt every second while failing); this
/// bound only catches a wall-clock step that ages the segment.
pub const IDLE_WAKE: Duration = Duration::from_secs(10);
/// While the log cannot be written, a reopen is tried this often.
const RECOVERY_EVERY: Duration = Duration::from_secs(1);
/// Bytes gathered before a write.
const BATCH_BYTES: usize = 64 * 1024;
/// Distinct summary keys held at once; beyond it callers fold into `*`.
pub const MAX_SUMMARY_KEYS: usize = 4096;

/// What a summary counts requests by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SummaryKey {
    decision: &'static str,
    reason: Option<&'static str>,
    model: String,
    caller_iss: Option<String>,
    caller_sub: Option<String>,
    cause: &'static str,
}

#[derive(Debug)]
struct Window {
    count: u64,
    first: String,
    last: String,
}

/// State the request path and the writer share.
#[derive(Default)]
pub struct Shared {
    summaries: Mutex<HashMap<SummaryKey, Window>>,
    pending: AtomicBool,
    /// The log cannot be written right now.
    pub failing: AtomicBool,
    /// Set at shutdown: the writer drains the queue and ends.
    pub stop: AtomicBool,
    stopped: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl Shared {
    /// Counts an event in the summary table instead of writing it.
    pub fn summarise(&self, event: &AuditEvent, cause: &'static str) {
        let mut map = match self.summaries.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let mut key = SummaryKey {
            decision: event.decision,
            reason: event.reason,
            model: event.model.clone(),
            caller_iss: event.caller_iss.clone(),
            caller_sub: event.caller_sub.clone(),
            cause,
        };
        if map.len() >= MAX_SUMMARY_KEYS && !map.contains_key(&key) {
            key.caller_iss = None;
            key.caller_sub = Some("*".into());
        }
        let w = map.entry(key).or_insert_with(|| Window {
            count: 0,
            first: event.time.clone(),
            last: event.time.clone(),
        });
        w.count += 1;
        if event.time < w.first {
            w.first = event.time.clone();
        }
        if event.time > w.last {
            w.last = event.time.clone();
        }
        drop(map);
        self.pending.store(true, Ordering::Release);
    }

    /// Asks the writer to finish (drain, summaries, checkpoint, sync) and waits up to
    /// `within` for it.
    pub fn close(&self, within: Duration) -> bool {
        self.stop.store(true, Ordering::Release);
        let rx = match self.stopped.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        rx.is_some_and(|rx| rx.recv_timeout(within).is_ok())
    }
}

/// The chain state after the last line that reached the file.
#[derive(Clone)]
struct Chain {
    seq: u64,
    prev: String,
    bytes: u64,
}

pub struct Writer {
    cfg: AuditConfig,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    out: Option<File>,
    /// Written lines' chain state, and the state including the unwritten batch.
    durable: Chain,
    chain: Chain,
    segment: u64,
    segment_started: SystemTime,
    /// The segment's first line (its marker) is still to be written.
    needs_marker: bool,
    chain_break: Option<String>,
    pending_pruned: Option<u64>,
    batch: Vec<u8>,
    // The boxes come off the queue as they are: keeping them avoids a copy per event.
    #[allow(clippy::vec_box)]
    batch_events: Vec<Box<AuditEvent>>,
    last_checkpoint_seq: u64,
    last_checkpoint_at: Instant,
    last_recovery: Instant,
    /// A test hook (debug builds only): a pause per event, to slow the writer on purpose.
    delay: Option<Duration>,
    done: Option<std::sync::mpsc::SyncSender<()>>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Writer {
    /// Opens the log: continues the chain from the last readable line, or starts a new
    /// segment that records why it could not.
    pub fn open(
        cfg: AuditConfig,
        metrics: Arc<Metrics>,
        shared: Arc<Shared>,
    ) -> std::io::Result<Writer> {
        let path = cfg.path.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if let Ok(mut g) = shared.stopped.lock() {
            *g = Some(rx);
        }
        let delay = if cfg!(debug_assertions) {
            std::env::var("PROVGATE_AUDIT_TEST_WRITE_DELAY_US")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_micros)
        } else {
            None
        };
        let mut w = Writer {
            cfg,
            shared,
            metrics,
            out: None,
            durable: Chain {
                seq: 0,
                prev: GENESIS.into(),
                bytes: 0,
            },
            chain: Chain {
                seq: 0,
                prev: GENESIS.into(),
                bytes: 0,
            },
            segment: 1,
            segment_started: SystemTime::now(),
            needs_marker: true,
            chain_break: None,
            pending_pruned: None,
            batch: Vec::with_capacity(BATCH_BYTES + 4096),
            batch_events: Vec::new(),
            last_checkpoint_seq: 0,
            last_checkpoint_at: Instant::now(),
            last_recovery: Instant::now(),
            delay,
            done: Some(tx),
        };
        // A log that cannot be opened does not stop the start either: the writer begins in
        // the failed state (counted, `provgate_audit_writable` 0, records summarised,
        // `on_write_failure` applies) and retries every second.
        let opened = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => std::fs::create_dir_all(parent),
            None => Ok(()),
        }
        .and_then(|()| w.attach());
        w.last_checkpoint_seq = w.chain.seq;
        match opened {
            Ok(()) => w.metrics.audit_writable.set(1),
            Err(e) => w.failed(e),
        }
        Ok(w)
    }

    /// Reads the active file's (or the last rotated segment's) end and opens the active
    /// file for appending.
    fn attach(&mut self) -> std::io::Result<()> {
        let path = self.cfg.path.clone();
        let rotated = segments::rotated(&path)?;
        let last_rotated = rotated.last().map(|(i, _)| *i);
        let active_len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let tail = if active_len > 0 {
            segments::read_tail(&path)?
        } else {
            match rotated.last() {
                Some((_, p)) => segments::read_tail(p)?,
                None => Tail::Empty,
            }
        };
        self.segment = last_rotated.map_or(1, |i| i + 1);
        match tail {
            Tail::Empty => {
                self.set_chain(0, GENESIS.into(), 0);
                self.needs_marker = true;
            }
            Tail::Line { seq, hash } => {
                self.set_chain(seq, hash, active_len);
                // A segment already begun continues; a new one (after a rotation that
                // left no active file) starts with its marker.
                self.needs_marker = active_len == 0;
                if active_len > 0 {
                    if let Some((n, time)) = segments::first_marker(&path) {
                        self.segment = n;
                        if let Ok(t) = humantime::parse_rfc3339_weak(&time) {
                            self.segment_started = t;
                        }
                    }
                }
            }
            Tail::Unreadable(why) => {
                tracing::warn!(path = %path.display(), problem = %why,
                    "audit log's last line unreadable: starting a new segment");
                // Set the unreadable file aside as a rotated segment; the new segment's
                // first line says why its chain does not continue.
                if active_len > 0 {
                    std::fs::rename(&path, segments::rotated_path(&path, self.segment))?;
                    self.segment += 1;
                }
                self.set_chain(0, GENESIS.into(), 0);
                self.chain_break = Some(format!(
                    "the previous segment's end could not be read: {why}"
                ));
                self.needs_marker = true;
                self.segment_started = SystemTime::now();
                // seq restarts after the break only if nothing before can be read; take
                // the highest readable seq of the segment set aside when there is one.
                self.chain.seq = last_seq_before(&path, self.segment).unwrap_or(0);
                self.durable.seq = self.chain.seq;
            }
        }
        self.out = Some(OpenOptions::new().create(true).append(true).open(&path)?);
        Ok(())
    }

    fn set_chain(&mut self, seq: u64, prev: String, bytes: u64) {
        self.chain = Chain { seq, prev, bytes };
        self.durable = self.chain.clone();
    }

    /// Writes what the queue brings (`None`: a wake-up) until the queue is closed or the
    /// shutdown asks it to finish.
    pub fn run(mut self, rx: &Receiver<Option<Box<AuditEvent>>>) {
        loop {
            match rx.recv_timeout(self.next_wake()) {
                Ok(first) => {
                    if let Some(first) = first {
                        self.event(first);
                    }
                    while let Ok(more) = rx.try_recv() {
                        if let Some(more) = more {
                            self.event(more);
                        }
                        if self.shared.stop.load(Ordering::Acquire) && self.batch.is_empty() {
                            break;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.finish();
                    return;
                }
            }
            // Caught up with the queue: what it could not hold goes next.
            self.write_summaries();
            self.flush();
            self.tick();
            if self.shared.stop.load(Ordering::Acquire) {
                while let Ok(more) = rx.try_recv() {
                    if let Some(more) = more {
                        self.event(more);
                    }
                }
                self.finish();
                return;
            }
        }
    }

    fn finish(&mut self) {
        self.write_summaries();
        self.flush();
        self.checkpoint();
        if let Some(f) = &self.out {
            let _ = f.sync_all();
        }
        if let Some(done) = self.done.take() {
            let _ = done.try_send(());
        }
    }

    fn event(&mut self, mut event: Box<AuditEvent>) {
        // Unit tests only: a panic in the writer, to show it is caught (`supervise_writer`).
        #[cfg(test)]
        if event.path == "/__audit_writer_panics__" {
            panic!("injected by a test");
        }
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
        if self.out.is_none() {
            self.shared.summarise(&event, "write_failed");
            self.metrics.audit_summarised.inc();
            return;
        }
        event.bound();
        self.rotate_if_due(0);
        self.append(Body::Event(&event));
        self.batch_events.push(event);
        if self.batch.len() >= BATCH_BYTES {
            self.flush();
        }
    }

    /// Writes the segment's first record (and a pruning note) when the segment has none yet.
    fn ensure_marker(&mut self) {
        if !self.needs_marker {
            return;
        }
        self.needs_marker = false;
        let marker = Marker::Segment {
            segment: self.segment,
            time: humantime::format_rfc3339_millis(self.segment_started).to_string(),
            chain_break: self.chain_break.take(),
        };
        self.append(Body::Marker(&marker));
        if let Some(segment) = self.pending_pruned.take() {
            self.append(Body::Marker(&Marker::Pruned {
                time: now_rfc3339(),
                segment,
            }));
        }
    }

    /// Encodes a line into the batch, the segment's marker first.
    fn append(&mut self, body: Body<'_>) {
        self.ensure_marker();
        let seq = self.chain.seq + 1;
        match encode_line(seq, body, &self.chain.prev) {
            Ok(line) => {
                self.chain.prev = super::record::line_hash(line.as_bytes());
                self.chain.seq = seq;
                self.chain.bytes += line.len() as u64 + 1;
                self.batch.extend_from_slice(line.as_bytes());
                self.batch.push(b'\n');
            }
            Err(e) => {
                self.metrics.audit_failed.inc();
                tracing::error!(error = %e, "audit record not serialisable");
            }
        }
    }

    /// Writes the batch. On failure the batch's events are summarised (nothing is lost
    /// silently), the chain goes back to the last written line, and the log is reopened
    /// later by [`Writer::tick`].
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let result = match &mut self.out {
            Some(f) => f.write_all(&self.batch),
            None => Err(std::io::Error::other("audit log not open")),
        };
        match result {
            Ok(()) => {
                self.metrics
                    .audit_written
                    .inc_by(self.batch_events.len() as u64);
                self.durable = self.chain.clone();
                self.batch.clear();
                self.batch_events.clear();
            }
            Err(e) => self.failed(e),
        }
    }

    fn failed(&mut self, e: std::io::Error) {
        tracing::error!(path = %self.cfg.path.display(), error = %e,
            "audit log write failed; records are summarised until it recovers");
        self.metrics.audit_write_failures.inc();
        self.metrics.audit_writable.set(0);
        self.shared.failing.store(true, Ordering::Release);
        for ev in self.batch_events.drain(..) {
            self.shared.summarise(&ev, "write_failed");
            self.metrics.audit_summarised.inc();
        }
        self.batch.clear();
        self.chain = self.durable.clone();
        self.out = None;
        self.last_recovery = Instant::now();
    }

    fn write_summaries(&mut self) {
        if self.out.is_none() || !self.shared.pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let taken = match self.shared.summaries.lock() {
            Ok(mut m) => std::mem::take(&mut *m),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        let mut entries: Vec<_> = taken.into_iter().collect();
        entries.sort_by(|a, b| a.1.first.cmp(&b.1.first));
        for (k, w) in entries {
            let m = Marker::Summary {
                decision: k.decision.to_string(),
                reason: k.reason.map(str::to_string),
                model: k.model,
                caller_iss: k.caller_iss,
                caller_sub: k.caller_sub,
                count: w.count,
                first: w.first,
                last: w.last,
                cause: k.cause.to_string(),
            };
            self.rotate_if_due(0);
            self.append(Body::Marker(&m));
        }
    }

    /// Rotates when the segment is full or old: flush, rename, new file.
    fn rotate_if_due(&mut self, _extra: u64) {
        let full = self.chain.bytes >= self.cfg.max_segment_bytes;
        let old = SystemTime::now()
            .duration_since(self.segment_started)
            .is_ok_and(|age| age >= self.cfg.max_segment_age);
        if (full || old) && self.chain.bytes > 0 {
            self.rotate();
        }
    }

    fn rotate(&mut self) {
        self.flush();
        if self.out.is_none() {
            return;
        }
        let path = self.cfg.path.clone();
        let to = segments::rotated_path(&path, self.segment);
        let result = std::fs::rename(&path, &to)
            .and_then(|()| OpenOptions::new().create(true).append(true).open(&path));
        match result {
            Ok(f) => {
                self.out = Some(f);
                self.segment += 1;
                self.segment_started = SystemTime::now();
                self.needs_marker = true;
                self.chain.bytes = 0;
                self.durable.bytes = 0;
                self.metrics.audit_rotations.inc();
                self.prune();
            }
            Err(e) => self.failed(e),
        }
    }

    /// Removes rotated segments beyond `keep_segments`; the next segment marker is followed
    /// by a note of the highest removed one.
    fn prune(&mut self) {
        if self.cfg.keep_segments == 0 {
            return;
        }
        let Ok(rotated) = segments::rotated(&self.cfg.path) else {
            return;
        };
        let excess = rotated.len().saturating_sub(self.cfg.keep_segments);
        for (i, p) in rotated.into_iter().take(excess) {
            match std::fs::remove_file(&p) {
                Ok(()) => self.pending_pruned = Some(i),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "audit segment not removed")
                }
            }
        }
    }

    /// How long to wait for the queue before [`Writer::tick`] has something to do.
    fn next_wake(&self) -> Duration {
        if self.shared.stop.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        if self.out.is_none() {
            // Summaries wait for the log to be writable again.
            return RECOVERY_EVERY.saturating_sub(self.last_recovery.elapsed());
        }
        if self.shared.pending.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        let mut wake = IDLE_WAKE;
        if self.chain.bytes > 0 {
            let age = SystemTime::now()
                .duration_since(self.segment_started)
                .unwrap_or_default();
            wake = wake.min(self.cfg.max_segment_age.saturating_sub(age));
        }
        if self.chain.seq != self.last_checkpoint_seq {
            wake = wake.min(
                self.cfg
                    .checkpoint_interval
                    .saturating_sub(self.last_checkpoint_at.elapsed()),
            );
        }
        wake
    }

    fn tick(&mut self) {
        if self.out.is_none() {
            if self.last_recovery.elapsed() >= RECOVERY_EVERY {
                self.recover();
            }
            return;
        }
        self.rotate_if_due(0);
        if self.last_checkpoint_at.elapsed() >= self.cfg.checkpoint_interval {
            self.checkpoint();
        }
    }

    /// Reopens the log after a failure, through the same path as a start.
    fn recover(&mut self) {
        self.last_recovery = Instant::now();
        let seq = self.durable.seq;
        match self.attach() {
            Ok(()) => {
                // attach() reads the chain back from the file; if it lost track (an
                // unreadable end), keep counting from what was written.
                if self.chain.seq < seq {
                    self.chain.seq = seq;
                    self.durable.seq = seq;
                    if self.chain_break.is_none() {
                        self.chain_break = Some(
                            "the log was not writable and its previous end could not be read back"
                                .into(),
                        );
                        self.needs_marker = true;
                    }
                }
                tracing::info!(path = %self.cfg.path.display(), "audit log writable again");
                self.metrics.audit_writable.set(1);
                self.shared.failing.store(false, Ordering::Release);
                self.shared.pending.store(true, Ordering::Release);
            }
            Err(e) => {
                tracing::debug!(error = %e, "audit log still not writable");
                self.out = None;
            }
        }
    }

    /// Writes a checkpoint line and the checkpoint file (atomically) once the log is synced,
    /// unless nothing was written since the last one.
    fn checkpoint(&mut self) {
        self.last_checkpoint_at = Instant::now();
        if self.out.is_none() || self.chain.seq == self.last_checkpoint_seq {
            return;
        }
        // The checkpoint covers the line right before it: a new segment's record goes first.
        self.ensure_marker();
        self.flush();
        let Some(f) = &self.out else { return };
        if let Err(e) = f.sync_data() {
            self.failed(e);
            return;
        }
        let claims = CheckpointClaims {
            head: self.chain.prev.clone(),
            count: self.chain.seq,
            segment: self.segment,
            iat: crate::unix_now(),
        };
        let jws =
            self.cfg
                .checkpoint_key
                .as_ref()
                .and_then(|k| match checkpoint::sign(&claims, k) {
                    Ok(j) => Some(j),
                    Err(e) => {
                        tracing::error!(error = %e, "audit checkpoint not signed");
                        None
                    }
                });
        let marker = Marker::Checkpoint {
            time: now_rfc3339(),
            segment: self.segment,
            count: claims.count,
            head: claims.head.clone(),
            jws,
        };
        self.append(Body::Marker(&marker));
        self.flush();
        if self.out.is_none() {
            return;
        }
        self.last_checkpoint_seq = self.chain.seq;
        let file = segments::checkpoint_path(&self.cfg.path);
        if let Err(e) = write_atomically(&file, &marker) {
            tracing::error!(path = %file.display(), error = %e, "audit checkpoint file not written");
            self.metrics.audit_write_failures.inc();
        }
        self.metrics
            .audit_checkpoint_records
            .set(claims.count as i64);
        self.metrics
            .audit_checkpoint_head
            .set(head_gauge(&claims.head));
        self.metrics.audit_checkpoint_time.set(claims.iat as f64);
    }
}

/// The first 48 bits of a hex hash as a number (exact in a float): a gauge that changes with
/// the head, for comparing against a copy of the log kept elsewhere.
pub fn head_gauge(head: &str) -> i64 {
    head.get(..12)
        .and_then(|h| i64::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

fn write_atomically(path: &Path, marker: &Marker) -> std::io::Result<()> {
    let mut tmp: PathBuf = path.to_path_buf();
    tmp.set_extension("checkpoint.tmp");
    let text = serde_json::to_string(marker).map_err(std::io::Error::other)?;
    let mut f = File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The highest `seq` readable in the segment set aside as `before - 1` (bounded: the last
/// few lines' worth is enough, read by the verifier's streaming reader).
fn last_seq_before(active: &Path, before: u64) -> Option<u64> {
    let p = segments::rotated_path(active, before.checked_sub(1)?);
    let mut best = None;
    super::read::for_each_line(&p, |_, line| {
        if let Some(seq) = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("seq").and_then(|s| s.as_u64()))
        {
            best = Some(best.map_or(seq, |b: u64| b.max(seq)));
        }
        true
    })
    .ok()?;
    best
}
