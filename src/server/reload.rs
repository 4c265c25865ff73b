//! Trust reloads without a restart: the approver key file (`[trust] approver_keys`) and the
//! issuers' key files (`jwks_file`) are re-read when they change (a stat every
//! [`POLL`]: size, mtime, ctime, inode, so an atomic rename is seen) and on SIGHUP.
//!
//! A reload that fails (unreadable, unparsable or empty file) keeps the previous state and
//! says why in the log and in `provgate_trust_reloads_total{result="error"}`. A good one swaps
//! the policy's approvers (so a key removed from the file approves nothing from then on: its
//! signatures on already-loaded records count for no approver) or the issuer's keys. Owns
//! no decision and no request path; it only stores what the decision reads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::fields::Errors;
use crate::identity::Issuer;
use crate::keys::KeySet;
use crate::kit::dirwatch::{fingerprint, Fingerprint};
use crate::policy::config::{approver_scopes, ApproverFile};
use crate::policy::Policy;
use crate::telemetry::Metrics;

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_millis(500);

/// What is reloaded.
#[derive(Clone)]
pub struct Reload {
    pub policy: Arc<ArcSwap<Policy>>,
    pub approver_keys: PathBuf,
    pub approvers: Vec<ApproverFile>,
    /// Issuers whose keys come from a file, with that file.
    pub issuers: Vec<(Arc<Issuer>, PathBuf)>,
    pub metrics: Arc<Metrics>,
}

impl Reload {
    /// Runs until the shutdown drops it.
    pub async fn run(self) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; trust files reload on change only");
                None
            }
        };
        let mut seen_trust = fingerprint(&self.approver_keys, None);
        let mut seen_issuers: Vec<Fingerprint> = self
            .issuers
            .iter()
            .map(|(_, p)| fingerprint(p, None))
            .collect();
        loop {
            let signalled = tokio::select! {
                _ = tokio::time::sleep(POLL) => false,
                Some(()) = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if signalled {
                tracing::info!("SIGHUP: re-reading trust files");
            }
            let now = fingerprint(&self.approver_keys, None);
            if signalled || now != seen_trust {
                seen_trust = now;
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

    /// Re-reads the approver keys and rebinds them to the configured approvers.
    pub fn reload_approvers(&self) {
        let keys = match KeySet::from_jwks_file(&self.approver_keys) {
            Ok(k) => k,
            Err(e) => {
                self.count("approver_keys", "error");
                tracing::warn!(file = %self.approver_keys.display(), error = %e,
                    "approver keys not reloaded; keeping the previous ones");
                return;
            }
        };
        let mut errors = Errors::new();
        let scopes = approver_scopes(&self.approvers, &keys, false, &mut errors);
        if !errors.is_empty() {
            self.count("approver_keys", "error");
            tracing::warn!(file = %self.approver_keys.display(), errors = ?errors.into_messages(),
                "approver keys not reloaded; keeping the previous ones");
            return;
        }
        let current = self.policy.load();
        let before = current.approvers.len();
        let mut next = Policy::clone(&current);
        next.approvers = scopes;
        tracing::info!(file = %self.approver_keys.display(), keys_before = before,
            keys = next.approvers.len(), "approver keys reloaded");
        self.policy.store(Arc::new(next));
        self.count("approver_keys", "ok");
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
