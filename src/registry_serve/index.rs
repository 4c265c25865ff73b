//! The registry directory as ready answers: for each digest its status, body and strong ETag,
//! the revocation list's, and the one answer for an unknown digest. Built off the request path
//! (at start and on every change) so a request is one map lookup.
//!
//! Records are grouped by the `artefact.digest` their payload claims, without verification
//! (the sidecars verify). A digest's answer is 200 with its records not listed in
//! `revoked.txt`, one per line in file-name order, or 410 with all of them when every one is
//! revoked. A record file that cannot be read or names no digest is skipped with a log line;
//! an unreadable `revoked.txt` or `revocations.jws` fails the load (the last good index stays:
//! serving a revoked record as approved is worse than serving old answers).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::kit::dirwatch::{DirWatch, Fingerprint, Hooks};
use crate::kit::file::{self, Kind, ReadError};

/// Record IDs revoked one by one (the same file as the directory registry's).
pub const REVOKED_FILE: &str = "revoked.txt";
/// The signed revocation list, served as is at `/revocations`.
pub const REVOCATION_LIST_FILE: &str = "revocations.jws";

/// Why a directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading registry directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    File { path: String, source: ReadError },
}

/// One ready answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// 200, 404 or 410.
    pub status: u16,
    pub body: Bytes,
    /// A strong ETag (quoted): the hash of the status and the body.
    pub etag: String,
    /// When this answer took effect (its first load, or this server's start): a watch on a
    /// fresh answer is a re-watch after a change, whose hold is spread.
    pub since: Instant,
}

impl Answer {
    fn new(status: u16, body: Vec<u8>) -> Answer {
        let mut h = Sha256::new();
        h.update(status.to_string().as_bytes());
        h.update(b"\n");
        h.update(&body);
        let etag = format!("\"{}\"", &hex::encode(h.finalize())[..32]);
        Answer {
            status,
            body: Bytes::from(body),
            etag,
            since: Instant::now(),
        }
    }

    fn not_found() -> Answer {
        Answer::new(404, Vec::new())
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Digest(Digest),
    Revocations,
}

/// The directory, answered.
#[derive(Debug)]
pub struct Index {
    by_digest: HashMap<Digest, Answer>,
    revocations: Answer,
    not_found: Answer,
    /// Record files served (skipped ones not counted).
    pub records: usize,
    /// Record files skipped (unreadable, not a JWS, no digest).
    pub skipped: usize,
    /// A hash over every answer's ETag: equal versions answer every request the same.
    pub version: [u8; 32],
}

impl Index {
    /// The answer for `key` now.
    pub fn answer(&self, key: &Key) -> &Answer {
        match key {
            Key::Digest(d) => self.by_digest.get(d).unwrap_or(&self.not_found),
            Key::Revocations => &self.revocations,
        }
    }

    pub fn digests(&self) -> usize {
        self.by_digest.len()
    }

    pub fn has_revocation_list(&self) -> bool {
        self.revocations.status == 200
    }

    /// Keeps `previous`'s `since` for every answer that did not change, so only a changed
    /// answer is fresh.
    pub fn carry_since(&mut self, previous: &Index) {
        let keep = |a: &mut Answer, old: &Answer| {
            if a.etag == old.etag {
                a.since = old.since;
            }
        };
        for (digest, a) in self.by_digest.iter_mut() {
            keep(a, previous.answer(&Key::Digest(*digest)));
        }
        keep(&mut self.revocations, &previous.revocations);
        keep(&mut self.not_found, &previous.not_found);
    }
}

/// Reads `dir` into an index.
pub fn load(dir: &Path) -> Result<Index, LoadError> {
    let revoked = read_revoked(&dir.join(REVOKED_FILE))?;
    let revocations = match file::read(&dir.join(REVOCATION_LIST_FILE), Kind::Revocations) {
        Ok(bytes) => Answer::new(200, bytes),
        Err(e) if e.is_not_found() => Answer::not_found(),
        Err(source) => {
            return Err(LoadError::File {
                path: dir.join(REVOCATION_LIST_FILE).display().to_string(),
                source,
            })
        }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| LoadError::Dir {
            path: dir.display().to_string(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("jwt" | "jws")))
        .filter(|p| p.file_name().is_some_and(|n| n != REVOCATION_LIST_FILE))
        .collect();
    files.sort();

    // digest -> (kept lines, revoked lines)
    let mut grouped: BTreeMap<Digest, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let (mut records, mut skipped) = (0, 0);
    for path in files {
        let text = match file::read_string(&path, Kind::Record) {
            Ok(t) => t,
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "record file skipped");
                skipped += 1;
                continue;
            }
        };
        let line = text.trim();
        let Some((Some(digest), jti)) = crate::approval::peek_claims(line) else {
            tracing::warn!(file = %path.display(),
                "record file skipped: not a JWS naming an artefact digest");
            skipped += 1;
            continue;
        };
        if line.contains('\n') {
            tracing::warn!(file = %path.display(), "record file skipped: more than one line");
            skipped += 1;
            continue;
        }
        records += 1;
        let entry = grouped.entry(digest).or_default();
        if jti.is_some_and(|j| revoked.contains(&j)) {
            entry.1.push(line.to_string());
        } else {
            entry.0.push(line.to_string());
        }
    }
    let by_digest: HashMap<Digest, Answer> = grouped
        .into_iter()
        .map(|(digest, (kept, gone))| {
            let answer = if kept.is_empty() {
                Answer::new(410, lines(&gone))
            } else {
                Answer::new(200, lines(&kept))
            };
            (digest, answer)
        })
        .collect();
    let mut etags: Vec<(&Digest, &str)> = by_digest
        .iter()
        .map(|(d, a)| (d, a.etag.as_str()))
        .collect();
    etags.sort();
    let mut h = Sha256::new();
    for (d, e) in etags {
        h.update(d.0);
        h.update(e.as_bytes());
    }
    h.update(revocations.etag.as_bytes());
    Ok(Index {
        by_digest,
        revocations,
        not_found: Answer::not_found(),
        records,
        skipped,
        version: h.finalize().into(),
    })
}

fn lines(records: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(r.as_bytes());
        out.push(b'\n');
    }
    out
}

/// `revoked.txt`: one record ID per line, `#` comments; missing is empty.
fn read_revoked(path: &Path) -> Result<HashSet<String>, LoadError> {
    match file::read_string(path, Kind::Revocations) {
        Ok(text) => Ok(text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()),
        Err(e) if e.is_not_found() => Ok(HashSet::new()),
        Err(source) => Err(LoadError::File {
            path: path.display().to_string(),
            source,
        }),
    }
}

// === the reload thread ===

struct Reload {
    dir: PathBuf,
    rescan: Duration,
    tx: tokio::sync::watch::Sender<Arc<Index>>,
}

impl Hooks for Reload {
    fn changed(&mut self, _: &Fingerprint) -> bool {
        match load(&self.dir) {
            Ok(mut index) => {
                if self.tx.borrow().version != index.version {
                    index.carry_since(&self.tx.borrow());
                    tracing::info!(
                        records = index.records,
                        digests = index.digests(),
                        skipped = index.skipped,
                        revocation_list = index.has_revocation_list(),
                        "registry reloaded"
                    );
                    // Wakes every held watch; each compares its own answer's ETag.
                    self.tx.send_replace(Arc::new(index));
                }
                true
            }
            Err(error) => {
                tracing::error!(%error, "registry reload failed; the last good answers stay");
                false
            }
        }
    }

    fn wait(&self) -> Duration {
        self.rescan
    }
}

/// The settle after a burst of file events: short, so a watch returns within 100 ms of a
/// change.
const SETTLE: Duration = Duration::from_millis(20);

/// Starts the thread that re-reads `dir` on change (inotify, and every `rescan`) and
/// publishes each new index through `tx`, until `stop` is set.
pub fn spawn_reload(
    dir: PathBuf,
    rescan: Duration,
    tx: tokio::sync::watch::Sender<Arc<Index>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("registry-reload".into())
        .spawn(move || {
            let mut watch = DirWatch::new(dir.clone());
            watch.settle = SETTLE;
            let mut hooks = Reload { dir, rescan, tx };
            watch.run(&mut hooks, &stop);
        })
}
