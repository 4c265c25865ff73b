//! The request path's counters: `provgate_requests_total` resolved per model and version ID
//! ahead of time, so a request costs one lock-free map read and an atomic add, never a
//! label-set hash and registry lookup; and the [`Outcome`] a request is counted as.
//!
//! Takes the registered metric family from [`Metrics`] and resolves its series itself; the
//! metric's name, help and registration stay in `telemetry`. Must not register metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntCounterVec};

use crate::base::FastHash;
use crate::policy::DenyReason;
use crate::telemetry::Metrics;

/// What `provgate_requests_total` counts a request as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    /// Allowed only under a signed exception: counted as `allow`, and in
    /// `provgate_exception_requests_total`.
    AllowException,
    /// Denied (enforce) or would have been (dry-run).
    Deny(DenyReason),
    /// Failed before it was decided.
    Error,
}

/// Pre-resolved `provgate_requests_total` handles, per version ID: the request path does
/// one lock-free map read and an atomic add, never a label-set hash and registry lookup.
pub struct RequestCounters {
    vec: IntCounterVec,
    exceptions: IntCounterVec,
    model: String,
    /// `deny` or `would_block`, fixed by the mode.
    deny_word: &'static str,
    /// Keyed by signed records' version IDs: a fast seeded hash.
    by_version: ArcSwap<HashMap<Arc<str>, Arc<VersionCounters>, FastHash>>,
    /// Serialises the rare insertions (a version seen for the first time).
    insert: Mutex<()>,
}

/// The counters of one version: allow, each deny reason, error.
pub struct VersionCounters {
    allow: IntCounter,
    /// Resolved on first use: most versions never need an exception.
    exception: std::sync::OnceLock<IntCounter>,
    deny: [IntCounter; DenyReason::ALL.len()],
    error: IntCounter,
}

impl RequestCounters {
    /// Pre-resolved request counters for one model (`none`: requests that resolved to no
    /// model) in enforce (`true`) or dry-run mode.
    pub fn new(metrics: &Metrics, model: &str, enforce: bool) -> RequestCounters {
        RequestCounters {
            vec: metrics.requests.clone(),
            exceptions: metrics.exception_requests.clone(),
            model: model.to_string(),
            deny_word: if enforce { "deny" } else { "would_block" },
            by_version: ArcSwap::from_pointee(HashMap::default()),
            insert: Mutex::new(()),
        }
    }

    /// The decision word a denial is counted and audited under.
    pub fn deny_word(&self) -> &'static str {
        self.deny_word
    }

    /// Counts one request.
    pub fn inc(&self, outcome: Outcome, version: &str) {
        let counters = match self.by_version.load().get(version) {
            Some(c) => c.clone(),
            None => self.resolve(version),
        };
        match outcome {
            Outcome::Allow => counters.allow.inc(),
            Outcome::AllowException => {
                counters.allow.inc();
                counters
                    .exception
                    .get_or_init(|| {
                        self.exceptions
                            .with_label_values(&[self.model.as_str(), version])
                    })
                    .inc();
            }
            // `deny` holds one counter per `DenyReason::ALL`; `index()` is the discriminant.
            #[allow(clippy::indexing_slicing)]
            Outcome::Deny(r) => counters.deny[r.index()].inc(),
            Outcome::Error => counters.error.inc(),
        }
    }

    #[cold]
    fn resolve(&self, version: &str) -> Arc<VersionCounters> {
        // A poisoned lock only means another thread panicked mid-insert; the map it guards
        // is swapped whole, so it is still consistent.
        let _guard = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = self.by_version.load().get(version) {
            return c.clone();
        }
        let m = self.model.as_str();
        let counters = Arc::new(VersionCounters {
            allow: self.vec.with_label_values(&["allow", "none", m, version]),
            exception: std::sync::OnceLock::new(),
            deny: DenyReason::ALL.map(|r| {
                self.vec
                    .with_label_values(&[self.deny_word, r.as_str(), m, version])
            }),
            error: self.vec.with_label_values(&["error", "none", m, version]),
        });
        let mut next = HashMap::clone(&self.by_version.load());
        next.insert(Arc::from(version), counters.clone());
        self.by_version.store(Arc::new(next));
        counters
    }
}

#[cfg(test)]
mod tests;
