//! Where the log's segments live and how they are named: the active file `PATH`, rotated
//! segments `PATH.000001`, `PATH.000002`, ... (oldest first), and the latest checkpoint
//! `PATH.checkpoint`. Reads a segment's last line back, bounded, to continue the chain.
//!
//! Owns naming, listing and the tail read; it writes nothing and never decides what a
//! broken tail means (the writer does).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::record::{line_hash, Marker, MAX_LINE_BYTES};

/// The rotated segment number `index` of the log whose active file is `active`.
pub fn rotated_path(active: &Path, index: u64) -> PathBuf {
    let mut name = active.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{index:06}"));
    active.with_file_name(name)
}

/// Where the latest checkpoint of the log at `active` is kept.
pub fn checkpoint_path(active: &Path) -> PathBuf {
    let mut name = active.file_name().unwrap_or_default().to_os_string();
    name.push(".checkpoint");
    active.with_file_name(name)
}

/// The rotated segments of the log at `active`, by index, oldest first.
pub fn rotated(active: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let dir = match active.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let base = active.file_name().unwrap_or_default().to_string_lossy();
    let prefix = format!("{base}.");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_prefix(&prefix) {
            if n.len() >= 6 && n.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(i) = n.parse() {
                    out.push((i, dir.join(&*name)));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The logs in a directory: the active files, each named by a rotated segment or a
/// checkpoint beside it, or ending in `.jsonl`.
pub fn logs_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut bases = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(base) = name.strip_suffix(".checkpoint") {
            bases.insert(base.to_string());
        } else if let Some((base, n)) = name.rsplit_once('.') {
            if n.len() >= 6 && n.bytes().all(|b| b.is_ascii_digit()) {
                bases.insert(base.to_string());
            } else if n == "jsonl" {
                bases.insert(name.clone());
            }
        }
    }
    Ok(bases.into_iter().map(|b| dir.join(b)).collect())
}

/// One segment of a log, as [`list`] found it.
#[derive(Debug)]
pub struct Segment {
    pub path: PathBuf,
    /// The live file, opened when the log was listed.
    live: Option<File>,
}

impl Segment {
    /// A segment named on its own (a rotated one, which nothing writes).
    pub fn at(path: PathBuf) -> Segment {
        Segment { path, live: None }
    }

    /// Opens the segment to read it; None when it was pruned since it was listed.
    pub fn open(self) -> std::io::Result<Option<File>> {
        if let Some(file) = self.live {
            return Ok(Some(file));
        }
        match File::open(&self.path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The segments of the log at `active`, oldest first, for a reader of a live log: whatever
/// rotates or is pruned meanwhile loses nothing and fails nothing. The live file is opened
/// first and kept open, so a rotation after that leaves it in hand (it is read in its
/// rotated place, once, known by its inode); the others are opened one at a time as they
/// are read ([`Segment::open`]), and one pruned by then is skipped (its records are gone).
/// (Listing first and opening after could find the live file renamed away and read a new,
/// empty one or none: a live reader failed, or missed records.)
pub fn list(active: &Path) -> std::io::Result<Vec<Segment>> {
    use std::os::unix::fs::MetadataExt;
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let mut live = match File::open(active) {
        Ok(f) => {
            let m = f.metadata()?;
            Some((f, (m.dev(), m.ino())))
        }
        Err(e) if gone(&e) => None,
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for (_, path) in rotated(active)? {
        let id = match std::fs::metadata(&path) {
            Ok(m) => (m.dev(), m.ino()),
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        match live.take() {
            // The live file, rotated since it was opened: read in its place.
            Some((file, live_id)) if live_id == id => out.push(Segment {
                path,
                live: Some(file),
            }),
            other => {
                live = other;
                out.push(Segment { path, live: None });
            }
        }
    }
    out.extend(live.map(|(file, _)| Segment {
        path: active.to_path_buf(),
        live: Some(file),
    }));
    Ok(out)
}

/// What the end of a segment holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Tail {
    /// No such file, or an empty one.
    Empty,
    /// A whole last line: its `seq` and hash.
    Line { seq: u64, hash: String },
    /// The last line cannot be read; why.
    Unreadable(String),
}

/// Reads a segment's last line back, never more than [`MAX_LINE_BYTES`] and a newline.
pub fn read_tail(path: &Path) -> std::io::Result<Tail> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tail::Empty),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(Tail::Empty);
    }
    let window = (MAX_LINE_BYTES as u64 + 2).min(len);
    file.seek(SeekFrom::Start(len - window))?;
    let mut tail = Vec::with_capacity(window as usize);
    file.take(window).read_to_end(&mut tail)?;
    let Some(text) = tail.strip_suffix(b"\n") else {
        return Ok(Tail::Unreadable(
            "the last line is cut short (no newline at its end)".into(),
        ));
    };
    let last = match text.iter().rposition(|&b| b == b'\n') {
        // `i` is a position in `text`: `i + 1` is at most its length.
        Some(i) => text.get(i + 1..).unwrap_or_default(),
        None if window == len => text,
        None => {
            return Ok(Tail::Unreadable(format!(
                "the last line is longer than {MAX_LINE_BYTES} bytes"
            )))
        }
    };
    let seq = serde_json::from_slice::<serde_json::Value>(last)
        .ok()
        .and_then(|v| v.get("seq").and_then(|s| s.as_u64()));
    Ok(match seq {
        Some(seq) => Tail::Line {
            seq,
            hash: line_hash(last),
        },
        None => Tail::Unreadable("the last line is not a JSON record with a seq".into()),
    })
}

/// The segment marker a segment starts with, if its first line (read bounded) is one.
pub fn first_marker(path: &Path) -> Option<(u64, String)> {
    let file = File::open(path).ok()?;
    let mut line = Vec::new();
    BufReader::new(file)
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)
        .ok()?;
    match serde_json::from_slice::<Marker>(line.strip_suffix(b"\n")?).ok()? {
        Marker::Segment { segment, time, .. } => Some((segment, time)),
        _ => None,
    }
}
