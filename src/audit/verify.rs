//! `provgate audit verify`: checks a log (its segments in order) line by line: `seq` and
//! `prev` continuity, segment numbering, recorded chain breaks, and checkpoints. With the
//! sidecar's public keys, each checkpoint's signature, and the latest checkpoint
//! (`PATH.checkpoint`) against the chain, which catches a truncated tail, a rewritten chain
//! and a removed segment. Streams: memory stays flat whatever the size.
//!
//! Owns the judgement of what is broken and the words for it; it never writes.

use std::path::{Path, PathBuf};

use super::checkpoint::{self, CheckpointClaims};
use super::read::{for_each_raw_in, RawLine};
use super::record::{line_hash, Marker, GENESIS, MAX_LINE_BYTES};
use super::segments;
use crate::keys::KeySet;

/// The fields of a line the chain check needs; the rest is skipped unparsed.
#[derive(serde::Deserialize)]
struct Head<'a> {
    seq: Option<u64>,
    #[serde(borrow)]
    prev: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

/// What kind of damage a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A line's `prev` is not the hash of the line before it.
    Edited,
    /// `seq` jumps forward: lines removed.
    Missing,
    /// `seq` goes back, or segments are out of order.
    Reordered,
    /// A line that is not a readable record (garbage, cut short, too long).
    Unreadable,
    /// A segment number is skipped, or the segment a checkpoint names is absent.
    RemovedSegment,
    /// provgate recorded that it could not continue the chain (an unreadable end at start,
    /// or after a write failure).
    ChainBreak,
    /// The log ends before the latest signed checkpoint.
    TruncatedTail,
    /// The chain disagrees with a signed checkpoint.
    RewrittenChain,
    /// A checkpoint whose signature does not verify, or that is unsigned.
    BadCheckpoint,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Edited => "edited line",
            ProblemKind::Missing => "missing lines",
            ProblemKind::Reordered => "reordered",
            ProblemKind::Unreadable => "unreadable line",
            ProblemKind::RemovedSegment => "removed segment",
            ProblemKind::ChainBreak => "chain break",
            ProblemKind::TruncatedTail => "truncated tail",
            ProblemKind::RewrittenChain => "rewritten chain",
            ProblemKind::BadCheckpoint => "bad checkpoint",
        }
    }
}

/// One broken place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based line number in `file` (0: the file as a whole).
    pub line: u64,
    pub kind: ProblemKind,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.kind.as_str(),
            self.detail
        )
    }
}

/// The result of verifying one log.
#[derive(Debug, Default)]
pub struct Report {
    pub log: PathBuf,
    pub segments: usize,
    pub records: u64,
    /// Checkpoints whose signature verified.
    pub checkpoints_verified: u64,
    /// The latest checkpoint's count the tail was checked against.
    pub tail_checked_at: Option<u64>,
    /// In the order found; the first is the first broken place.
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Problems reported per log before the rest are only counted.
const MAX_PROBLEMS: usize = 100;

/// Verifies `path`: a directory (each log in it), an active file (with its rotated
/// segments), or one rotated segment alone.
pub fn verify(path: &Path, keys: Option<&KeySet>) -> std::io::Result<Vec<Report>> {
    if path.is_dir() {
        let logs = segments::logs_in(path)?;
        if logs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no audit log in this directory",
            ));
        }
        return logs.iter().map(|l| verify_log(l, keys)).collect();
    }
    if !path.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file",
        ));
    }
    Ok(vec![verify_log(path, keys)?])
}

struct State<'k> {
    report: Report,
    keys: Option<&'k KeySet>,
    prev: Option<String>,
    expected_seq: Option<u64>,
    last_segment: Option<u64>,
    first_segment: Option<u64>,
    pruned_through: Option<u64>,
    max_seq: u64,
    latest: Option<CheckpointClaims>,
    hash_at_latest: Option<String>,
    saw_checkpoint: bool,
}

impl State<'_> {
    fn problem(&mut self, file: &Path, line: u64, kind: ProblemKind, detail: String) {
        if self.report.problems.len() < MAX_PROBLEMS {
            self.report.problems.push(Problem {
                file: file.to_path_buf(),
                line,
                kind,
                detail,
            });
        }
    }

    fn check_signed(
        &mut self,
        file: &Path,
        line: u64,
        jws: Option<&str>,
        stated: &CheckpointClaims,
    ) {
        let Some(keys) = self.keys else { return };
        match jws.map(|j| checkpoint::verify(j, keys)) {
            None => self.problem(
                file,
                line,
                ProblemKind::BadCheckpoint,
                "the checkpoint is unsigned".into(),
            ),
            Some(Err(e)) => self.problem(file, line, ProblemKind::BadCheckpoint, e.to_string()),
            Some(Ok(c))
                if c.head != stated.head
                    || c.count != stated.count
                    || c.segment != stated.segment =>
            {
                self.problem(
                    file,
                    line,
                    ProblemKind::BadCheckpoint,
                    "the signed claims differ from the checkpoint's fields".into(),
                )
            }
            Some(Ok(_)) => self.report.checkpoints_verified += 1,
        }
    }

    fn line(&mut self, file: &Path, first_in_file: bool, n: u64, bytes: &[u8]) {
        let head: Head<'_> = match serde_json::from_slice(bytes) {
            Ok(h) => h,
            Err(e) => {
                self.problem(
                    file,
                    n,
                    ProblemKind::Unreadable,
                    format!("not a JSON record ({e})"),
                );
                self.prev = None;
                self.expected_seq = None;
                return;
            }
        };
        let (Some(seq), Some(claimed)) = (head.seq, head.prev.as_deref()) else {
            self.problem(
                file,
                n,
                ProblemKind::Unreadable,
                "no seq or prev field".into(),
            );
            self.prev = None;
            self.expected_seq = None;
            return;
        };
        // No writer reaches it, and nothing could follow it.
        if seq == u64::MAX {
            self.problem(
                file,
                n,
                ProblemKind::Unreadable,
                format!("seq {seq} is out of range"),
            );
            self.prev = None;
            self.expected_seq = None;
            return;
        }
        let claimed = claimed.to_string();
        let claimed = claimed.as_str();
        let hash = line_hash(bytes);
        let marker = match head.kind {
            Some(_) => serde_json::from_slice::<Marker>(bytes).ok(),
            None => None,
        };
        let mut recorded_break = false;
        match &marker {
            Some(Marker::Segment {
                segment,
                chain_break,
                ..
            }) => {
                match self.last_segment {
                    None => {
                        self.first_segment = Some(*segment);
                    }
                    Some(last) if last.checked_add(1) == Some(*segment) => {}
                    // Above `last + 1` (so neither sum below overflows).
                    Some(last) if *segment > last => self.problem(
                        file,
                        n,
                        ProblemKind::RemovedSegment,
                        if *segment == last + 2 {
                            format!("segment {} is missing before segment {segment}", last + 1)
                        } else {
                            format!(
                                "segments {} to {} are missing before segment {segment}",
                                last + 1,
                                segment - 1
                            )
                        },
                    ),
                    Some(last) => self.problem(
                        file,
                        n,
                        ProblemKind::Reordered,
                        format!("segment {segment} comes after segment {last}"),
                    ),
                }
                self.last_segment = Some(*segment);
                if let Some(why) = chain_break {
                    self.problem(file, n, ProblemKind::ChainBreak, why.clone());
                    recorded_break = true;
                }
            }
            Some(Marker::Pruned { segment, .. }) => {
                self.pruned_through = Some(self.pruned_through.unwrap_or(0).max(*segment));
            }
            _ => {
                if first_in_file && self.last_segment.is_some() {
                    self.problem(
                        file,
                        n,
                        ProblemKind::Reordered,
                        "a segment that does not begin with its segment record".into(),
                    );
                } else if first_in_file && self.report.records == 0 && claimed == GENESIS {
                    // A log begun before segments existed: its first file is segment 1.
                    self.first_segment = Some(1);
                    self.last_segment = Some(1);
                }
            }
        }
        let first_of_log = self.expected_seq.is_none() && self.prev.is_none() && self.max_seq == 0;
        if !recorded_break {
            if let Some(want) = self.expected_seq {
                if seq > want {
                    self.problem(
                        file,
                        n,
                        ProblemKind::Missing,
                        format!(
                            "seq {seq} where {want} was expected: {} line(s) missing before it",
                            seq - want
                        ),
                    );
                } else if seq < want {
                    self.problem(
                        file,
                        n,
                        ProblemKind::Reordered,
                        format!("seq {seq} where {want} was expected"),
                    );
                }
            }
            match &self.prev {
                Some(p) if p != claimed && self.expected_seq == Some(seq) => self.problem(
                    file,
                    n,
                    ProblemKind::Edited,
                    "prev does not match the hash of the line before it: that line was edited or removed".into(),
                ),
                None if first_of_log && claimed != GENESIS && self.first_segment.is_none_or(|s| s <= 1) => {
                    self.problem(
                        file,
                        n,
                        ProblemKind::Missing,
                        "the first line does not start a chain: lines before it are missing".into(),
                    )
                }
                _ => {}
            }
        }
        if let Some(Marker::Checkpoint {
            segment,
            count,
            head,
            jws,
            ..
        }) = &marker
        {
            self.saw_checkpoint = true;
            let stated = CheckpointClaims {
                head: head.clone(),
                count: *count,
                segment: *segment,
                iat: 0,
            };
            if self.prev.as_deref().is_some_and(|p| p != head)
                || (count.checked_add(1) != Some(seq))
            {
                self.problem(
                    file,
                    n,
                    ProblemKind::RewrittenChain,
                    format!("the checkpoint for record {count} does not match the chain before it"),
                );
            }
            self.check_signed(file, n, jws.as_deref(), &stated);
        }
        if let Some(cp) = &self.latest {
            if seq == cp.count {
                self.hash_at_latest = Some(hash.clone());
            }
        }
        self.max_seq = self.max_seq.max(seq);
        self.report.records += 1;
        self.prev = Some(hash);
        self.expected_seq = Some(seq + 1);
    }
}

fn verify_log(path: &Path, keys: Option<&KeySet>) -> std::io::Result<Report> {
    // A rotated segment named alone is checked alone.
    let is_rotated = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.len() >= 6 && e.bytes().all(|b| b.is_ascii_digit()));
    // Opened before anything is read: a live log that rotates or is pruned meanwhile
    // loses nothing and fails nothing ([`segments::open_all`]).
    let listed = if is_rotated {
        vec![segments::Segment::at(path.to_path_buf())]
    } else {
        segments::list(path)?
    };
    let files: Vec<PathBuf> = listed.iter().map(|s| s.path.clone()).collect();
    let mut st = State {
        report: Report {
            log: path.to_path_buf(),
            segments: files.len(),
            ..Report::default()
        },
        keys,
        prev: None,
        expected_seq: None,
        last_segment: None,
        first_segment: None,
        pruned_through: None,
        max_seq: 0,
        latest: None,
        hash_at_latest: None,
        saw_checkpoint: false,
    };
    let cp_path = segments::checkpoint_path(path);
    let mut latest_line: Option<(Marker, Option<String>)> = None;
    if !is_rotated {
        match std::fs::read(&cp_path) {
            Ok(bytes) => match serde_json::from_slice::<Marker>(&bytes) {
                Ok(m @ Marker::Checkpoint { .. }) => {
                    let jws = match &m {
                        Marker::Checkpoint { jws, .. } => jws.clone(),
                        _ => None,
                    };
                    latest_line = Some((m, jws));
                }
                _ => st.problem(
                    &cp_path,
                    0,
                    ProblemKind::BadCheckpoint,
                    "not a checkpoint record".into(),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if let Some((
        Marker::Checkpoint {
            segment,
            count,
            head,
            ..
        },
        jws,
    )) = &latest_line
    {
        let stated = CheckpointClaims {
            head: head.clone(),
            count: *count,
            segment: *segment,
            iat: 0,
        };
        st.check_signed(&cp_path, 0, jws.as_deref(), &stated);
        st.latest = Some(stated);
    } else if keys.is_some() && !is_rotated {
        st.problem(
            &cp_path,
            0,
            ProblemKind::BadCheckpoint,
            "no checkpoint file: the tail cannot be checked".into(),
        );
    }
    for (file, segment) in files.iter().zip(listed) {
        // Pruned since the log was listed: as if it had been before.
        let Some(handle) = segment.open()? else {
            continue;
        };
        let mut first = true;
        for_each_raw_in(handle, |n, raw| {
            match raw {
                RawLine::Line {
                    bytes,
                    complete: true,
                } => st.line(file, first, n, bytes),
                RawLine::Line {
                    complete: false, ..
                } => {
                    st.problem(
                        file,
                        n,
                        ProblemKind::Unreadable,
                        "the last line is cut short (no newline at its end)".into(),
                    );
                    st.prev = None;
                    st.expected_seq = None;
                }
                RawLine::TooLong(len) => {
                    st.problem(
                        file,
                        n,
                        ProblemKind::Unreadable,
                        format!("a line of {len} bytes, longer than {MAX_LINE_BYTES}"),
                    );
                    st.prev = None;
                    st.expected_seq = None;
                }
            }
            first = false;
            true
        })?;
    }
    if let Some(first) = st.first_segment.filter(|&s| s > 1) {
        if st
            .pruned_through
            .is_none_or(|p| p.saturating_add(1) < first)
        {
            let f = files.first().cloned().unwrap_or_default();
            st.problem(
                &f,
                1,
                ProblemKind::RemovedSegment,
                format!(
                    "segments before {first} are missing and no record says rotation removed them"
                ),
            );
        }
    }
    if let Some(cp) = st.latest.clone() {
        st.report.tail_checked_at = Some(cp.count);
        let last_file = files.last().cloned().unwrap_or_else(|| path.to_path_buf());
        if st.max_seq < cp.count {
            let which = match st.last_segment {
                Some(s) if s < cp.segment => format!(
                    "the checkpoint names segment {} but the set ends at segment {s}: the last segment(s) were removed",
                    cp.segment
                ),
                _ => format!(
                    "the latest checkpoint covers {} records but the log ends at record {}: the tail was truncated",
                    cp.count, st.max_seq
                ),
            };
            let kind = if st.last_segment.is_some_and(|s| s < cp.segment) {
                ProblemKind::RemovedSegment
            } else {
                ProblemKind::TruncatedTail
            };
            st.problem(&last_file, 0, kind, which);
        } else if st.hash_at_latest.as_deref() != Some(cp.head.as_str()) {
            st.problem(
                &last_file,
                0,
                ProblemKind::RewrittenChain,
                format!(
                    "record {} is not the one the latest checkpoint signed: the chain was rewritten",
                    cp.count
                ),
            );
        }
    } else if keys.is_some() && !st.saw_checkpoint && st.report.records > 0 {
        st.problem(
            path,
            0,
            ProblemKind::BadCheckpoint,
            "no checkpoint in the log".into(),
        );
    }
    Ok(st.report)
}
