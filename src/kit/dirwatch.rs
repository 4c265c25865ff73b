//! A directory watch: notify events for speed, a fingerprint of the tree (each path with its
//! size, mtime, ctime, inode) for truth, a settle after a burst of events, and a periodic
//! rescan that covers whatever the events miss (a watch not attached yet, a replaced
//! directory, a network file system).
//!
//! [`DirWatch::run`] is the one loop; what a change means is the [`Hooks`]' business: the
//! artefact watcher fails closed the moment an event arrives (its [`Hooks::alarm`], rung on
//! the event thread, so a loop busy hashing or writing does not delay it) and re-hashes;
//! the directory registry reloads and wakes early for a record's `revalidate_after`. The loop blocks (it
//! reads the file system and the hooks hash or verify), so it runs on its own thread and
//! stops as soon as its stop flag is set through [`super::stop::set`] (a flag set by a plain
//! store: within [`BEAT_SLICE`]). Between looks it sleeps on events and its rescan deadline
//! alone, waking at least every [`BEAT_SLICE`] to beat its heartbeat.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};

use crate::kit::file::FileIdentity;

/// How long a burst of events is left to settle before the tree is looked at again.
pub const SETTLE: Duration = Duration::from_millis(50);
/// The longest a wait runs without beating the heartbeat (well inside the watchdog's bound)
/// and looking at the stop flag.
pub const BEAT_SLICE: Duration = Duration::from_secs(10);

/// A cheap summary of a tree, sorted by path.
pub type Fingerprint = Vec<(PathBuf, FileIdentity)>;

/// The fingerprint of `root` (a directory, or a single file) and of `beside`, a file outside
/// it that belongs to it (a single file's signature), when there is one. The ctime is there
/// because it cannot be set from user space: an edit in place that keeps the size and puts
/// the mtime back (`touch -d`) still changes it.
pub fn fingerprint(root: &Path, beside: Option<&Path>) -> Fingerprint {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    if let Ok(m) = std::fs::metadata(root) {
        out.push((root.to_path_buf(), FileIdentity::of(&m)));
        if let Some(extra) = beside.filter(|_| m.is_file()) {
            if let Ok(s) = std::fs::symlink_metadata(extra) {
                out.push((extra.to_path_buf(), FileIdentity::of(&s)));
            }
        }
    }
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Ok(m) = std::fs::symlink_metadata(&path) {
                if m.is_dir() {
                    stack.push(path.clone());
                }
                out.push((path, FileIdentity::of(&m)));
            }
        }
    }
    out.sort();
    out
}

/// What must happen the moment a change event arrives, on the watch's own event thread:
/// it cannot wait for the loop, which may be busy hashing or writing to a slow disk.
pub type Alarm = std::sync::Arc<dyn Fn() + Send + Sync>;

/// Watches a tree, sending a unit on every content change (not on reads or metadata-only
/// changes, which hashing itself would otherwise trigger), after ringing `alarm`.
///
/// The tree itself is watched (recursively, for a directory), and so is the directory that
/// holds it, for its own entry alone: a file or directory replaced by a rename (a new copy
/// moved over the old one, a symlink re-pointed) leaves the first watch on the old inode,
/// which sends nothing for it. So is the directory of its resolved target (a symlinked
/// path), and that of `beside` (a single file's signature). Events there about other
/// entries are ignored.
pub fn watch(
    path: &Path,
    beside: Option<&Path>,
    tx: Sender<()>,
    alarm: Option<Alarm>,
) -> notify::Result<notify::RecommendedWatcher> {
    let entries = entries_of(path, beside);
    let tree = path.to_path_buf();
    let names: Vec<PathBuf> = entries.iter().map(|(dir, name)| dir.join(name)).collect();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let relevant = match ev {
            Ok(ev) => {
                !matches!(
                    ev.kind,
                    EventKind::Access(_)
                        | EventKind::Modify(notify::event::ModifyKind::Metadata(_))
                ) && ev
                    .paths
                    .iter()
                    .any(|p| p.starts_with(&tree) || names.contains(p))
            }
            Err(_) => true,
        };
        if relevant {
            if let Some(alarm) = &alarm {
                alarm();
            }
            let _ = tx.send(());
        }
    })?;
    watcher.watch(path, RecursiveMode::Recursive)?;
    let mut dirs: Vec<&PathBuf> = entries
        .iter()
        .map(|(dir, _)| dir)
        // Inside the tree, the tree's own watch sees them (a second watch would replace it).
        .filter(|dir| !dir.starts_with(path))
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        // The entry watches add to the tree's; the rescan covers one that cannot be set.
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::debug!(dir = %dir.display(), error = %e, "no watch on the directory holding a watched path");
        }
    }
    Ok(watcher)
}

/// The (directory, name) entries whose replacement changes what `path` (and `beside`) are:
/// the path's own, its resolved target's, and `beside`'s.
fn entries_of(path: &Path, beside: Option<&Path>) -> Vec<(PathBuf, std::ffi::OsString)> {
    let split = |p: &Path| {
        let name = p.file_name()?.to_os_string();
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Some((dir, name))
    };
    let resolved = std::fs::canonicalize(path).ok();
    [Some(path), resolved.as_deref(), beside]
        .into_iter()
        .flatten()
        .filter_map(split)
        .collect()
}

/// Which inode `path` names now (following symlinks), to see that it was replaced.
fn inode_of(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// What a watch does on each turn.
pub trait Hooks {
    /// The tree now (the default: [`fingerprint`] of the watched path alone).
    fn fingerprint(&self, path: &Path) -> Fingerprint {
        fingerprint(path, None)
    }

    /// The tree differs from the last one handled: act on it. True when handled (the
    /// fingerprint is remembered); false to try again on the next turn.
    fn changed(&mut self, fingerprint: &Fingerprint) -> bool;

    /// The tree is as last handled. False forgets the fingerprint, so the next turn acts.
    fn unchanged(&mut self) -> bool {
        true
    }

    /// Rung on the watch's event thread the moment a change event arrives, whatever the
    /// loop is doing; the loop looks again after the settle.
    fn alarm(&self) -> Option<Alarm> {
        None
    }

    /// How long to wait for an event before looking again.
    fn wait(&self) -> Duration;
}

/// A watched path.
#[derive(Debug, Clone)]
pub struct DirWatch {
    pub path: PathBuf,
    /// A file outside `path` that belongs to it (a single file's signature): its
    /// replacement is an event too.
    pub beside: Option<PathBuf>,
    pub settle: Duration,
    /// Beaten on every look and every [`BEAT_SLICE`] of waiting ([`super::watchdog`]).
    pub heartbeat: Option<std::sync::Arc<super::watchdog::Heartbeat>>,
}

impl DirWatch {
    pub fn new(path: PathBuf) -> DirWatch {
        DirWatch {
            path,
            beside: None,
            settle: SETTLE,
            heartbeat: None,
        }
    }

    /// The same watch, beating `heartbeat` as it goes.
    pub fn beating(
        self,
        heartbeat: Option<std::sync::Arc<super::watchdog::Heartbeat>>,
    ) -> DirWatch {
        DirWatch { heartbeat, ..self }
    }

    /// The same watch, with `beside` watched too (see [`DirWatch::beside`]).
    pub fn with_beside(self, beside: Option<PathBuf>) -> DirWatch {
        DirWatch { beside, ..self }
    }

    fn beat(&self) {
        if let Some(h) = &self.heartbeat {
            h.beat();
        }
    }

    /// Looks at the tree, then on every event and every [`Hooks::wait`], until `stop` is set.
    pub fn run(&self, hooks: &mut impl Hooks, stop: &AtomicBool) {
        let (tx, rx) = std::sync::mpsc::channel();
        // A stop wakes the wait like an event; the wait tells them apart by the flag.
        let ring = tx.clone();
        let _stop = super::stop::on_stop(stop, move || {
            let _ = ring.send(());
        });
        let alarm = hooks.alarm();
        let mut watcher = None;
        // The inode the watch was attached to: one replaced under the path needs a new one.
        let mut attached = None;
        let mut last: Option<Fingerprint> = None;
        while !stop.load(Ordering::Relaxed) {
            self.beat();
            if watcher.is_none() {
                // The path may not exist yet, or may have been replaced: (re)attach; the
                // rescans cover the gap.
                attached = inode_of(&self.path);
                watcher = watch(
                    &self.path,
                    self.beside.as_deref(),
                    tx.clone(),
                    alarm.clone(),
                )
                .ok();
            }
            let now = hooks.fingerprint(&self.path);
            if last.as_ref() != Some(&now) {
                if hooks.changed(&now) {
                    last = Some(now);
                }
            } else if !hooks.unchanged() {
                last = None;
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match wait(&rx, hooks.wait(), stop, &|| self.beat()) {
                Ok(()) if stop.load(Ordering::Acquire) => break,
                Ok(()) => {
                    // Let a burst of writes settle before looking again.
                    std::thread::sleep(self.settle);
                    while rx.try_recv().is_ok() {}
                    last = None;
                    if attached.is_none() || inode_of(&self.path) != attached {
                        watcher = None;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => watcher = None,
            }
        }
    }
}

/// Waits for an event (or a stop's wake-up) for at most `timeout`, beating and looking at
/// `stop` every [`BEAT_SLICE`]; a stop seen there reads as a timeout.
fn wait(
    rx: &Receiver<()>,
    timeout: Duration,
    stop: &AtomicBool,
    beat: &dyn Fn(),
) -> Result<(), RecvTimeoutError> {
    let deadline = Instant::now() + timeout;
    loop {
        beat();
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(BEAT_SLICE)) {
            Err(RecvTimeoutError::Timeout)
                if !left.is_zero() && left > BEAT_SLICE && !stop.load(Ordering::Relaxed) => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests;
