//! Remote registries (MLflow, HTTP): asked per served digest, by a background service.
//!
//! A round asks the registry for the records of every digest being served. It runs when
//! provgate starts serving a digest it has not asked about (within [`TICK`] of the artefact
//! watcher publishing it), every `refresh_interval`, and at the moment a held record's
//! `revalidate_after` passes. A registry-side change therefore reaches the request path
//! within `refresh_interval` plus one fetch.
//!
//! Every record is verified once: a record whose text is unchanged since the last round
//! keeps its verified form, and an HTTP `304 Not Modified` costs no parsing at all. A failed
//! fetch keeps the last good records, whose age the store bounds by `max_stale`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::config::{RemoteKind, RemoteRegistry};
use super::http::HttpRegistry;
use super::mlflow::Mlflow;
pub use super::source::{authorize, body, Fetched, FetchedRecord, Source, MAX_BODY};
use super::{ApprovalStore, Candidate, FetchMetrics, RegistryEntry, Snapshot};
use crate::approval::{self, ApprovalRecord, Verified};
use crate::digest::Digest;
use crate::keys::KeySet;
use crate::kit::backoff::{Backoff, Jitter};
use crate::kit::http::{ClientOptions, FetchError, Transport};
use crate::telemetry::Metrics;

/// How often the refresher looks for a newly served digest.
pub const TICK: Duration = Duration::from_millis(50);
/// The first retry after a failed round; doubled up to `refresh_interval`.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// What the refresher remembers of one digest.
struct Tracked {
    etag: Option<String>,
    /// The last answer, to tell a changed one from the same again.
    fetched: Vec<FetchedRecord>,
    /// Each record of that answer that verified, by its text.
    verified: HashMap<String, Arc<ApprovalRecord>>,
    entry: Arc<RegistryEntry>,
}

/// Keeps an [`ApprovalStore`] in step with a remote registry for the digests being served.
pub struct Refresher<S: Source> {
    pub source: S,
    pub approvers: KeySet,
    pub refresh_interval: Duration,
    pub timeout: Duration,
    pub store: Arc<ApprovalStore>,
    /// The digests being served now (read every [`TICK`]).
    pub served: Box<dyn Fn() -> Vec<Digest> + Send + Sync>,
    pub metrics: Arc<Metrics>,
    /// Beaten every [`TICK`] ([`crate::kit::watchdog`]).
    pub heartbeat: Option<Arc<crate::kit::watchdog::Heartbeat>>,
}

impl<S: Source> Refresher<S> {
    /// Runs rounds until `stop` is set.
    pub async fn run(self, stop: Arc<AtomicBool>) {
        let fetch_metrics = FetchMetrics::new(&self.metrics, self.source.label());
        let mut tracked: HashMap<Digest, Tracked> = HashMap::new();
        let mut last_served: Vec<Digest> = Vec::new();
        let mut next_round = Instant::now();
        let mut last_round_ms = 0;
        // Jittered, so a periodic outage cannot keep meeting every retry (and sidecars that
        // fail together do not retry together).
        let mut retry = Backoff::new(FIRST_RETRY, self.refresh_interval).with_jitter(Jitter::Full);
        while !stop.load(Ordering::Relaxed) {
            if let Some(h) = &self.heartbeat {
                h.beat();
            }
            let mut served = (self.served)();
            served.sort();
            served.dedup();
            let now_ms = crate::unix_now_ms();
            let due = Instant::now() >= next_round
                || served != last_served
                || revalidation_due(&tracked, last_round_ms, now_ms);
            if due && !served.is_empty() {
                let complete = self.round(&served, &mut tracked, &fetch_metrics).await;
                last_round_ms = now_ms;
                last_served = served;
                next_round = Instant::now()
                    + if complete {
                        retry.reset();
                        self.refresh_interval
                    } else {
                        retry.fail()
                    };
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// Asks for every served digest's records and publishes what came back. True when every
    /// fetch succeeded (the store's staleness clock restarts only then).
    async fn round(
        &self,
        served: &[Digest],
        tracked: &mut HashMap<Digest, Tracked>,
        m: &FetchMetrics,
    ) -> bool {
        let before = tracked.len();
        tracked.retain(|d, _| served.contains(d));
        let mut changed = tracked.len() != before;
        let mut complete = true;
        for digest in served {
            let started = Instant::now();
            let etag = tracked.get(digest).and_then(|t| t.etag.as_deref());
            let outcome = tokio::time::timeout(self.timeout, self.source.fetch(digest, etag))
                .await
                .unwrap_or_else(|_| Err(FetchError::Timeout(self.timeout)));
            m.duration.observe(started.elapsed().as_secs_f64());
            match outcome {
                Ok(Fetched::NotModified) if tracked.contains_key(digest) => {
                    m.not_modified.inc();
                }
                Ok(Fetched::NotModified) => {
                    m.error.inc();
                    complete = false;
                    tracing::warn!(backend = self.source.label(), %digest,
                        "registry answered 304 to a request without an ETag");
                }
                Ok(fetched @ (Fetched::Records { .. } | Fetched::Revoked { .. })) => {
                    let (records, etag, revoked) = match fetched {
                        Fetched::Records { records, etag } => (records, etag, false),
                        Fetched::Revoked { records } => (records, None, true),
                        Fetched::NotModified => (Vec::new(), None, false),
                    };
                    if revoked {
                        m.revoked.inc();
                    } else if records.is_empty() {
                        m.not_found.inc();
                    } else {
                        m.ok.inc();
                    }
                    let previous = tracked.remove(digest);
                    let (entry, verified, same) = match previous {
                        Some(p) if p.fetched == records && p.entry.revoked == revoked => {
                            (p.entry, p.verified, true)
                        }
                        previous => {
                            let (mut entry, verified) = self.verify(
                                digest,
                                &records,
                                previous.map(|p| p.verified).unwrap_or_default(),
                            );
                            entry.revoked = revoked;
                            (Arc::new(entry), verified, false)
                        }
                    };
                    if !same {
                        changed = true;
                        tracing::info!(backend = self.source.label(), %digest,
                            valid = entry.records.len(), invalid = entry.invalid.len(),
                            revoked = entry.records.iter().filter(|c| c.revoked).count(),
                            digest_revoked = entry.revoked,
                            "registry records changed");
                    }
                    tracked.insert(
                        *digest,
                        Tracked {
                            etag,
                            fetched: records,
                            verified,
                            entry,
                        },
                    );
                }
                Err(e) => {
                    m.error.inc();
                    complete = false;
                    tracing::warn!(backend = self.source.label(), %digest, error = %e,
                        "registry fetch failed; keeping the last good records until max_stale");
                }
            }
        }
        if changed || (complete && !self.store.is_synced()) {
            let snapshot = snapshot_of(tracked);
            if complete {
                self.store.publish(snapshot);
            } else {
                self.store.replace(snapshot);
            }
        } else if complete {
            self.store.confirm();
        }
        complete
    }

    /// Verifies fetched records for `digest`, reusing the verified form of any record the
    /// previous answer already held. Returns the entry and the verified records by text.
    fn verify(
        &self,
        digest: &Digest,
        fetched: &[FetchedRecord],
        mut known: HashMap<String, Arc<ApprovalRecord>>,
    ) -> (RegistryEntry, HashMap<String, Arc<ApprovalRecord>>) {
        let mut verified = HashMap::new();
        let mut records = Vec::new();
        let mut invalid = Vec::new();
        let mut exceptions = Vec::new();
        let mut rejects = super::RejectLog::new(self.source.label());
        for f in fetched {
            let record = match known.remove(&f.jws) {
                Some(r) => Ok(r),
                None => match approval::verify_any(&f.jws, &self.approvers) {
                    Ok(Verified::Record(r)) => Ok(Arc::new(r)),
                    Ok(Verified::Exception(e)) => {
                        // Exceptions ride in the same answer, told apart by `typ`.
                        match super::exception_for(e, digest, f.revoked) {
                            Ok(c) => exceptions.push(c),
                            Err(why) => rejects.reject(&f.origin, &why),
                        }
                        continue;
                    }
                    Err(e) => Err(e.to_string()),
                },
            };
            match record {
                Ok(r) if r.claims.artefact.digest == *digest => {
                    verified.insert(f.jws.clone(), r.clone());
                    records.push(Candidate {
                        record: r,
                        revoked: f.revoked,
                    });
                }
                Ok(r) => {
                    // A record filed under the wrong digest approves neither.
                    let why = format!(
                        "{}: the record is for {}, not the digest it is filed under",
                        f.origin, r.claims.artefact.digest
                    );
                    rejects.reject(&f.origin, &why);
                    invalid.push(why);
                }
                Err(e) => {
                    rejects.reject(&f.origin, &e);
                    invalid.push(format!("{}: {e}", f.origin));
                }
            }
        }
        if rejects.count() > 0 {
            tracing::debug!(backend = self.source.label(), %digest, rejected = rejects.count(),
                "records rejected for the digest");
        }
        rejects.finish();
        (
            RegistryEntry::new(records, invalid).with_exceptions(exceptions),
            verified,
        )
    }
}

/// Whether a held record's `revalidate_after` has passed since the last round began.
fn revalidation_due(tracked: &HashMap<Digest, Tracked>, last_round_ms: u64, now_ms: u64) -> bool {
    tracked.values().any(|t| {
        t.entry.revalidate_after.is_some_and(|at| {
            let at_ms = at.saturating_mul(1000);
            last_round_ms < at_ms && at_ms <= now_ms
        })
    })
}

fn snapshot_of(tracked: &HashMap<Digest, Tracked>) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for (digest, t) in tracked {
        snapshot.valid_records += t.entry.records.len();
        snapshot.invalid_records += t.entry.invalid.len();
        snapshot.revoked_ids += t.entry.records.iter().filter(|c| c.revoked).count();
        snapshot.by_digest.insert(*digest, t.entry.clone());
    }
    snapshot
}

/// The HTTP client the remote backends share: rustls, no proxy, bounded connect time.
pub fn client(config: &RemoteRegistry) -> Result<reqwest::Client, FetchError> {
    crate::kit::http::client(&ClientOptions {
        connect_timeout: config.timeout,
        timeout: config.timeout,
        ca_pem: config.ca_pem.as_deref(),
        user_agent: true,
        transport: Transport {
            allow_plaintext: config.allow_plaintext,
            same_origin_redirects: false,
        },
    })
}

/// The configured remote backend.
enum Backend {
    Mlflow(Mlflow),
    Http(HttpRegistry),
}

impl Source for Backend {
    fn label(&self) -> &'static str {
        match self {
            Backend::Mlflow(s) => s.label(),
            Backend::Http(s) => s.label(),
        }
    }

    async fn fetch(&self, digest: &Digest, etag: Option<&str>) -> Result<Fetched, FetchError> {
        match self {
            Backend::Mlflow(s) => s.fetch(digest, etag).await,
            Backend::Http(s) => s.fetch(digest, etag).await,
        }
    }
}

/// The refresher for a remote registry, as one future (run as a background service, which
/// drops it at shutdown).
pub fn refresher(
    config: &RemoteRegistry,
    approvers: KeySet,
    refresh_interval: Duration,
    store: Arc<ApprovalStore>,
    served: Box<dyn Fn() -> Vec<Digest> + Send + Sync>,
    metrics: Arc<Metrics>,
    heartbeat: Option<Arc<crate::kit::watchdog::Heartbeat>>,
) -> Result<impl Future<Output = ()> + Send, FetchError> {
    let client = client(config)?;
    let source = match config.kind {
        RemoteKind::Mlflow => Backend::Mlflow(Mlflow::new(client, config)),
        RemoteKind::Http => Backend::Http(HttpRegistry::new(client, config)),
    };
    let refresher = Refresher {
        source,
        approvers,
        refresh_interval,
        timeout: config.timeout,
        store,
        served,
        metrics,
        heartbeat,
    };
    // The shutdown drops the future; nothing else stops it.
    Ok(refresher.run(Arc::new(AtomicBool::new(false))))
}

#[cfg(test)]
mod tests;
