//! Trust reloads without a restart: the approver key file (`[trust] approver_keys`), the
//! configuration file's `[trust]` section (`[[trust.approvers]]`: names, keys, roles,
//! scopes) and the issuers' key files (`jwks_file`) are re-read when they change and on
//! SIGHUP. A change is seen by a watch on each file (inotify; an atomic rename or a
//! Kubernetes volume's symlink swap unlinks the watched inode, which is reported too; the
//! files are read [`SETTLE`] after the event and watched again) and by a look every
//! [`RESCAN`] (a file system without events; every [`UNWATCHED_RESCAN`] while a file cannot
//! be watched: missing, or no inotify instance left); either way the files are compared by size, mtime, ctime and inode. Between them
//! the task sleeps: no tick.
//!
//! A reload that fails (unreadable, unparsable or empty file; a `[trust]` section that does
//! not validate) keeps the previous state and says why in the log and in
//! `provgate_trust_reloads_total{what, result="error"}`. A good one swaps the policy's
//! approvers (so a key removed from the key file, or an approver removed from the
//! configuration, approves nothing from then on: its signatures on already-loaded records
//! count for no approver) or the issuer's keys. Only `[trust]` is taken from a changed
//! configuration file; every other section needs a restart. Owns no decision and no request
//! path; it only stores what the decision reads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::FileConfig;
use crate::fields::Errors;
use crate::identity::Issuer;
use crate::keys::KeySet;
use crate::kit::dirwatch::{fingerprint, Fingerprint};
use crate::policy::config::{approver_scopes, ApproverFile};
use crate::policy::Policy;
use crate::telemetry::Metrics;

/// Without an event, the files are looked at this often anyway.
pub const RESCAN: Duration = Duration::from_secs(10);
/// When a directory cannot be watched (no inotify instance left: the limit is per user and
/// host, 128 by default), the files are looked at this often, as before there were events.
pub const UNWATCHED_RESCAN: Duration = Duration::from_millis(500);
/// After an event, a burst of writes is left this long to settle before the files are read.
pub const SETTLE: Duration = Duration::from_millis(50);

/// What is reloaded.
#[derive(Clone)]
pub struct Reload {
    pub policy: Arc<ArcSwap<Policy>>,
    pub approver_keys: PathBuf,
    /// `[[trust.approvers]]` as last loaded (replaced by a good configuration reload).
    pub approvers: Vec<ApproverFile>,
    /// The configuration file whose `[trust]` section is re-read; `None`: not watched.
    pub config: Option<PathBuf>,
    /// Issuers whose keys come from a file, with that file.
    pub issuers: Vec<(Arc<Issuer>, PathBuf)>,
    pub metrics: Arc<Metrics>,
}

impl Reload {
    /// Runs until the shutdown drops it.
    pub async fn run(mut self) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; trust files reload on change only");
                None
            }
        };
        let mut seen_trust = fingerprint(&self.approver_keys, None);
        let mut seen_config = self.config.as_ref().map(|p| fingerprint(p, None));
        let mut seen_issuers: Vec<Fingerprint> = self
            .issuers
            .iter()
            .map(|(_, p)| fingerprint(p, None))
            .collect();
        let events = Arc::new(tokio::sync::Notify::new());
        let mut watcher = self.watch(&events);
        let mut said_unwatched = false;
        loop {
            let rescan = if watcher.is_some() {
                RESCAN
            } else {
                if !said_unwatched {
                    tracing::info!(
                        "trust files not watched (missing, or no inotify instance left); looking every 500 ms"
                    );
                    said_unwatched = true;
                }
                UNWATCHED_RESCAN
            };
            let signalled = tokio::select! {
                _ = tokio::time::sleep(rescan) => false,
                () = events.notified() => {
                    tokio::time::sleep(SETTLE).await;
                    // A replaced file is a new inode: watch the paths again.
                    watcher = None;
                    false
                }
                Some(()) = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if watcher.is_none() {
                // After an event (a replaced file is a new inode), or a file missing before.
                watcher = self.watch(&events);
            }
            if signalled {
                tracing::info!("SIGHUP: re-reading trust files");
            }
            let now_config = self.config.as_ref().map(|p| fingerprint(p, None));
            let config_changed = signalled || now_config != seen_config;
            seen_config = now_config;
            let now = fingerprint(&self.approver_keys, None);
            let keys_changed = signalled || now != seen_trust;
            seen_trust = now;
            if config_changed && self.config.is_some() {
                // Re-binds the keys too: one reload for both.
                self.reload_config();
            } else if keys_changed {
                self.reload_approvers();
            }
            for ((issuer, path), seen) in self.issuers.iter().zip(seen_issuers.iter_mut()) {
                let now = fingerprint(path, None);
                if signalled || now != *seen {
                    *seen = now;
                    self.reload_issuer(issuer, path);
                }
            }
        }
    }

    /// The watched files.
    fn files(&self) -> Vec<PathBuf> {
        std::iter::once(self.approver_keys.clone())
            .chain(self.config.clone())
            .chain(self.issuers.iter().map(|(_, p)| p.clone()))
            .collect()
    }

    /// Watches every file itself (the inode its path names now, through symlinks): any event
    /// on it but a read wakes `events`. A replace (an atomic rename, a Kubernetes volume's
    /// symlink swap) unlinks the watched inode, which inotify reports; the loop then watches
    /// again, reaching the new one. The files' directories are not watched: inotify would
    /// report every read of a neighbour (a model directory rescanned beside the keys) and
    /// wake the watch for nothing. None when some file could not be watched (missing, or no
    /// inotify instance left): the short rescans cover it, and the next turn tries again.
    fn watch(&self, events: &Arc<tokio::sync::Notify>) -> Option<notify::RecommendedWatcher> {
        use notify::{EventKind, RecursiveMode, Watcher};
        let wake = events.clone();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let relevant = match ev {
                Ok(ev) => !matches!(ev.kind, EventKind::Access(_)),
                Err(_) => true,
            };
            if relevant {
                wake.notify_one();
            }
        })
        .ok()?;
        for file in self.files() {
            if let Err(e) = watcher.watch(&file, RecursiveMode::NonRecursive) {
                tracing::debug!(file = %file.display(), error = %e,
                    "trust file not watched; looked at every 500 ms");
                return None;
            }
        }
        Some(watcher)
    }

    /// Re-reads the approver keys and rebinds them to the configured approvers.
    pub fn reload_approvers(&self) {
        let approvers = self.approvers.clone();
        self.rebind("approver_keys", &approvers);
    }

    /// Re-reads the configuration file's `[trust]` section and, when it validates, rebinds
    /// the approver keys to its `[[trust.approvers]]`.
    pub fn reload_config(&mut self) {
        let Some(path) = self.config.clone() else {
            return;
        };
        let refuse = |this: &Self, why: &dyn std::fmt::Display| {
            this.count("trust_config", "error");
            tracing::warn!(file = %path.display(), error = %why,
                "trust configuration not reloaded; keeping the previous one");
        };
        let file = match FileConfig::load(&path) {
            Ok(f) => f.trust,
            Err(e) => return refuse(self, &e),
        };
        if std::path::Path::new(&file.approver_keys) != self.approver_keys {
            return refuse(
                self,
                &"trust.approver_keys names another file: that needs a restart",
            );
        }
        if file.approvers.is_empty() && !self.approvers.is_empty() {
            // Without [[trust.approvers]] every key approves everything: a widening that
            // must not happen by deleting lines from a running sidecar's configuration.
            return refuse(
                self,
                &"no [[trust.approvers]] left: every key would approve every model and tier; restart to do that",
            );
        }
        if self.rebind("trust_config", &file.approvers) {
            self.approvers = file.approvers;
        }
    }

    /// Loads the key file and binds it to `approvers`; on success stores the policy and says
    /// so. Whether it succeeded.
    fn rebind(&self, what: &'static str, approvers: &[ApproverFile]) -> bool {
        let keys = match KeySet::from_jwks_file(&self.approver_keys) {
            Ok(k) => k,
            Err(e) => {
                self.count(what, "error");
                tracing::warn!(file = %self.approver_keys.display(), error = %e,
                    "approver keys not reloaded; keeping the previous ones");
                return false;
            }
        };
        let mut errors = Errors::new();
        let scopes = approver_scopes(approvers, &keys, false, &mut errors);
        if !errors.is_empty() {
            self.count(what, "error");
            tracing::warn!(file = %self.approver_keys.display(), errors = ?errors.into_messages(),
                "approvers not reloaded; keeping the previous ones");
            return false;
        }
        let current = self.policy.load();
        let before = current.approvers.len();
        let mut next = Policy::clone(&current);
        next.approvers = scopes;
        // A quorum role nobody can fill any more is not a reason to keep a withdrawn
        // approver: the reload stands, and records of that tier are refused until fixed.
        let mut unfillable = Errors::new();
        crate::policy::config::check_tier_roles(&next.tiers, &next.approvers, &mut unfillable);
        if !unfillable.is_empty() {
            tracing::warn!(problems = ?unfillable.into_messages(),
                "after this reload some tiers cannot be approved");
        }
        tracing::info!(
            what,
            keys_before = before,
            keys = next.approvers.len(),
            "approvers reloaded"
        );
        self.policy.store(Arc::new(next));
        self.count(what, "ok");
        true
    }

    fn reload_issuer(&self, issuer: &Issuer, path: &std::path::Path) {
        match KeySet::from_jwks_file(path) {
            Ok(keys) => {
                tracing::info!(issuer = %issuer.issuer, keys = keys.keys.len(), "issuer keys reloaded");
                issuer.keys.store(Arc::new(keys));
                self.count("issuer_keys", "ok");
            }
            Err(e) => {
                self.count("issuer_keys", "error");
                tracing::warn!(issuer = %issuer.issuer, file = %path.display(), error = %e,
                    "issuer keys not reloaded; keeping the previous ones");
            }
        }
    }

    fn count(&self, what: &str, result: &str) {
        self.metrics
            .trust_reloads
            .with_label_values(&[what, result])
            .inc();
    }
}

#[cfg(test)]
mod tests;
