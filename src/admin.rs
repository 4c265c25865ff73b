//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process answers and no
//! background service has been stuck for twice its bound) and `/readyz` (the first
//! artefact hash and registry load have finished, and no background service is stalled; per
//! model, how far the hash in progress, or the last one, has got). Kept apart from the
//! proxy listener so metrics are never exposed to callers.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::artefact::ArtefactHandle;
use crate::identity::TokenVerifier;
use crate::kit::watchdog::Watchdog;
use crate::probe::{Served, ServedHandle};
use crate::registry::ApprovalStore;
use crate::telemetry::Metrics;

pub struct Admin {
    /// Each guarded model: its name, artefact state and probe state.
    pub models: Vec<(String, Arc<ArtefactHandle>, Arc<ServedHandle>)>,
    pub metrics: Arc<Metrics>,
    pub approvals: Arc<ApprovalStore>,
    pub tokens: Arc<TokenVerifier>,
    /// The background services' heartbeats.
    pub watchdog: Arc<Watchdog>,
}

impl Admin {
    /// Every model hashed once and probed once (when probed), the registry loaded (a remote
    /// one asked about every model's digest), every remote issuer's keys fetched.
    pub fn is_ready(&self) -> bool {
        let snapshot = self.approvals.snapshot();
        let answered = |a: &ArtefactHandle| {
            a.load()
                .digest()
                .is_none_or(|d| snapshot.exhaustive || snapshot.by_digest.contains_key(d))
        };
        self.models
            .iter()
            .all(|(_, a, s)| a.is_settled() && s.is_settled() && answered(a))
            && self.approvals.is_synced()
            && self.tokens.all_synced()
            && self.watchdog.stalled().is_empty()
    }

    /// `/healthz`: the process answers, and no background service has been silent for
    /// twice its bound (a sidecar that can no longer make progress is restarted).
    fn health(&self) -> Response<Vec<u8>> {
        if self.watchdog.any_dead() {
            let body = serde_json::json!({"healthy": false, "stalled": self.watchdog.stalled()});
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                body.to_string().into_bytes(),
            );
        }
        respond(StatusCode::OK, "text/plain", b"ok\n".to_vec())
    }

    /// Gauges that are cheapest to compute when scraped.
    fn refresh_gauges(&self) {
        self.metrics.ready.set(self.is_ready() as i64);
        for beat in self.watchdog.all() {
            self.metrics
                .background_stalled
                .with_label_values(&[beat.name()])
                .set(beat.is_stalled() as i64);
        }
        self.metrics
            .registry_sync_age
            .set(self.approvals.since_last_sync().as_secs_f64());
        for issuer in self.tokens.issuers() {
            if let Some(age) = issuer.remote.as_ref().and_then(|r| r.age()) {
                self.metrics
                    .jwks_age
                    .with_label_values(&[issuer.issuer.as_str()])
                    .set(age.as_secs_f64());
            }
        }
        self.metrics.approval_expiry.reset();
        self.metrics.exception_expiry.reset();
        self.metrics.approval_record_age.reset();
        for (model, artefact, _) in &self.models {
            let p = artefact.progress().snapshot();
            let gauge = |kind: &str, v: u64| {
                self.metrics
                    .artefact_hash_bytes
                    .with_label_values(&[model.as_str(), kind])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            };
            gauge("done", p.bytes_done);
            gauge("total", p.bytes_total);
        }
        let now = crate::unix_now();
        for (model, artefact, _) in &self.models {
            let state = artefact.load();
            let Some(entry) = state.digest().and_then(|d| self.approvals.peek(d)) else {
                continue;
            };
            let for_model = |c: &&crate::registry::Candidate| c.record.claims.sub == *model;
            let in_force = entry
                .records
                .iter()
                .filter(for_model)
                .find(|c| !c.revoked && c.record.not_before() <= now && now < c.record.claims.exp)
                .or(entry.records.iter().find(for_model));
            if let Some(c) = in_force {
                let labels = [model.as_str(), &*c.record.version_id];
                self.metrics
                    .approval_expiry
                    .with_label_values(&labels)
                    .set(c.record.claims.exp as f64);
                self.metrics
                    .approval_record_age
                    .with_label_values(&labels)
                    .set(now.saturating_sub(c.record.claims.iat) as f64);
                // Exceptions for this record that are in force now (whether the tier lets
                // them count is the decision's): the one expiring first.
                let soonest = entry
                    .exceptions
                    .iter()
                    .filter(|x| !x.revoked)
                    .map(|x| &x.exception)
                    .filter(|x| {
                        x.claims.sub == *model
                            && x.claims.version_id == c.record.claims.version_id
                            && x.not_before() <= now
                            && now < x.claims.exp
                    })
                    .map(|x| x.claims.exp)
                    .min();
                if let Some(exp) = soonest {
                    self.metrics
                        .exception_expiry
                        .with_label_values(&labels)
                        .set(exp as f64);
                }
            }
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        // Status, two valid static header names and a Vec body always build.
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => {
                self.refresh_gauges();
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.encode(),
                )
            }
            "/healthz" => self.health(),
            "/readyz" => {
                let ready = self.is_ready();
                let models: serde_json::Map<String, serde_json::Value> = self
                    .models
                    .iter()
                    .map(|(name, a, s)| {
                        let probe = if s.is_settled() && **s.load() == Served::Pending {
                            "off"
                        } else {
                            s.load().label()
                        };
                        let p = a.progress().snapshot();
                        let hash = serde_json::json!({
                            "active": p.active,
                            "bytes_done": p.bytes_done,
                            "bytes_total": p.bytes_total,
                            "files_done": p.files_done,
                            "files_total": p.files_total,
                        });
                        (
                            name.clone(),
                            serde_json::json!({
                                "artefact": a.load().label(),
                                "probe": probe,
                                "hash": hash,
                            }),
                        )
                    })
                    .collect();
                let body = serde_json::json!({
                    "ready": ready,
                    // The first model's state, as before multi-model sidecars.
                    "artefact": self.models.first().map_or("pending", |(_, a, _)| a.load().label()),
                    "models": models,
                    "registry_synced": self.approvals.is_synced(),
                    "issuer_keys_synced": self.tokens.all_synced(),
                    "stalled": self.watchdog.stalled(),
                });
                respond(
                    if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    },
                    "application/json",
                    body.to_string().into_bytes(),
                )
            }
            _ => respond(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}
