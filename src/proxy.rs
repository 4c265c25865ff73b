//! The request path: one `impl ProxyHttp`, each phase short.
//!
//! 1. `request_filter`: verify the caller's token (cached), read the published artefact state,
//!    look the approval up (cached), `decide()`. Deny: write the JSON denial and stop.
//! 2. `upstream_peer`: the configured model server.
//! 3. `upstream_request_filter`: drop any `x-provgate-*` the client sent, add ours, strip the
//!    caller's token unless configured to forward it.
//! 4. `response_filter`: tag the response with the version and request IDs.
//! 5. `logging`: metrics and the audit record, once per request.
//!
//! Nothing here waits on anything but the upstream: no file, registry or key I/O, and no
//! signature check for a token seen before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};

use crate::approval::ApprovalRecord;
use crate::artefact::ArtefactHandle;
use crate::audit::{AuditEvent, AuditLog, EvidenceRef};
use crate::config::{CallerAuth, Upstream, UpstreamProtocol};
use crate::digest::Digest;
use crate::identity::mtls::CertCaller;
use crate::identity::{bearer, Caller, TokenError, TokenVerifier};
use crate::policy::{
    decide, ApprovalView, ArtefactView, CallerView, Decision, DenyReason, Input, Policy,
};
use crate::registry::{ApprovalStore, Lookup};
use crate::telemetry::{Metrics, Outcome, RequestCounters};

pub const HEADER_VERSION_ID: HeaderName = HeaderName::from_static("x-provgate-version-id");
pub const HEADER_REQUEST_ID: HeaderName = HeaderName::from_static("x-provgate-request-id");
pub const HEADER_CALLER: HeaderName = HeaderName::from_static("x-provgate-caller");
const HEADER_PREFIX: &str = "x-provgate-";

/// The sidecar's shared state: everything the request path reads.
pub struct Gate {
    /// The static policy; swapped whole when this workload's identity token rotates.
    pub policy: Arc<arc_swap::ArcSwap<Policy>>,
    pub enforce: bool,
    pub log_allowed: bool,
    pub artefact: Arc<ArtefactHandle>,
    pub approvals: Arc<ApprovalStore>,
    pub tokens: Arc<TokenVerifier>,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub counters: RequestCounters,
    pub peer: HttpPeer,
    pub forward_token: bool,
    /// How callers authenticate: bearer token, mTLS certificate, or a combination.
    pub caller_auth: CallerAuth,
    pub request_ids: RequestIds,
}

/// Per-request context, filled in phase order.
pub struct RequestCtx {
    pub request_id: HeaderValue,
    pub started: Instant,
    pub arrived: SystemTime,
    pub caller: Option<Arc<Caller>>,
    pub requested_model: Option<String>,
    pub digest: Option<Digest>,
    pub decision: Option<Decision>,
}

impl Gate {
    /// Builds the upstream peer once; each request clones it.
    pub fn upstream_peer_for(upstream: &Upstream) -> HttpPeer {
        let tls = upstream.protocol == UpstreamProtocol::Https;
        let mut peer = HttpPeer::new(upstream.address, tls, upstream.sni.clone());
        peer.options.connection_timeout = Some(upstream.connect_timeout);
        match upstream.protocol {
            UpstreamProtocol::Http1 => peer.options.set_http_version(1, 1),
            UpstreamProtocol::H2c => peer.options.set_http_version(2, 2),
            UpstreamProtocol::Https => peer.options.set_http_version(2, 1),
        }
        peer
    }

    /// Evaluates one request's headers: the whole decision path of `request_filter`
    /// without the response writing, with cached tokens only. Public for benchmarks.
    pub fn evaluate(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Decision {
        let now = crate::unix_now();
        let token_outcome = match req.headers.get(http::header::AUTHORIZATION) {
            None => Err(None),
            Some(v) => match bearer(v.as_bytes()) {
                None => Err(Some(TokenError::Malformed)),
                Some(token) => self.tokens.verify(token, now).map_err(Some),
            },
        };
        self.decide_with(req, token_outcome, ctx)
    }

    /// The caller's token, verified; an unknown `kid` waits for the issuer's refetch.
    async fn token_caller(&self, req: &RequestHeader) -> Result<Arc<Caller>, Option<TokenError>> {
        match req.headers.get(http::header::AUTHORIZATION) {
            None => Err(None),
            Some(v) => match bearer(v.as_bytes()) {
                None => Err(Some(TokenError::Malformed)),
                Some(token) => self.tokens.verify_waiting(token).await.map_err(Some),
            },
        }
    }

    /// Who is calling, by token, client certificate or both, as `caller_auth` says.
    /// `Err(None)`: no credentials at all.
    async fn caller(&self, session: &Session) -> Result<Arc<Caller>, Option<TokenError>> {
        let certificate = || {
            session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .and_then(|s| s.extension.get::<CertCaller>())
                .map(|c| c.0.clone())
        };
        let req = session.req_header();
        match self.caller_auth {
            CallerAuth::Token => self.token_caller(req).await,
            CallerAuth::Certificate => certificate().ok_or(None),
            CallerAuth::TokenOrCertificate => {
                if req.headers.contains_key(http::header::AUTHORIZATION) {
                    self.token_caller(req).await
                } else {
                    certificate().ok_or(None)
                }
            }
            CallerAuth::TokenAndCertificate => {
                let cert = certificate().ok_or(None)?;
                let token = self.token_caller(req).await?;
                if token.sub == cert.sub {
                    Ok(token)
                } else {
                    Err(Some(TokenError::Claims(
                        "token and client certificate name different callers",
                    )))
                }
            }
        }
    }

    /// Everything after the token: artefact state, approval lookup, `decide()`.
    fn decide_with(
        &self,
        req: &RequestHeader,
        token_outcome: Result<Arc<Caller>, Option<TokenError>>,
        ctx: &mut RequestCtx,
    ) -> Decision {
        let now_ms = crate::unix_now_ms();
        let caller_view = match &token_outcome {
            Ok(c) => CallerView::Verified(c),
            Err(None) => CallerView::Missing,
            Err(Some(TokenError::KeysUnavailable)) => CallerView::Unavailable,
            Err(Some(_)) => CallerView::Invalid,
        };
        ctx.requested_model = requested_model(req.uri.path()).map(str::to_string);
        let state = self.artefact.load();
        let (artefact_view, lookup) = match &**state {
            crate::artefact::ArtefactState::Ready {
                digest, signature, ..
            } => {
                ctx.digest = Some(*digest);
                (
                    ArtefactView::Ready {
                        digest,
                        signer: signature.signer(),
                    },
                    self.approvals.view(digest, now_ms),
                )
            }
            _ => (ArtefactView::Unverified, Lookup::Entry(None)),
        };
        let decision = decide(
            &self.policy.load(),
            &Input {
                caller: caller_view,
                artefact: artefact_view,
                approval: match &lookup {
                    Lookup::Entry(e) => ApprovalView::Entry(e.as_deref()),
                    Lookup::Unavailable => ApprovalView::Unavailable,
                },
                requested_model: ctx.requested_model.as_deref(),
                now: now_ms / 1000,
            },
        );
        ctx.caller = token_outcome.ok();
        decision
    }

    async fn write_denial(
        &self,
        session: &mut Session,
        reason: DenyReason,
        request_id: &HeaderValue,
    ) -> pingora::Result<()> {
        // The request ID is 32 hex characters: nothing to escape.
        let id = std::str::from_utf8(request_id.as_bytes()).unwrap_or_default();
        let body = Bytes::from(format!(
            "{{\"error\":\"{}\",\"request_id\":\"{id}\"}}",
            reason.as_str()
        ));
        let mut resp = ResponseHeader::build(reason.status(), Some(5))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        resp.insert_header(HEADER_REQUEST_ID, request_id.clone())?;
        if reason.status() == 401 {
            let err = if reason == DenyReason::TokenMissing {
                "Bearer realm=\"provgate\""
            } else {
                "Bearer realm=\"provgate\", error=\"invalid_token\""
            };
            resp.insert_header(http::header::WWW_AUTHENTICATE, err)?;
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }

    fn audit(&self, session: &Session, ctx: &RequestCtx, status: u16, decision_word: &'static str) {
        let (reason, detail) = match &ctx.decision {
            Some(Decision::Deny { reason, detail, .. }) => (Some(reason.as_str()), Some(*detail)),
            _ => (None, None),
        };
        let record: Option<&Arc<ApprovalRecord>> = ctx.decision.as_ref().and_then(|d| d.record());
        let req = session.req_header();
        self.audit.emit(AuditEvent {
            request_id: String::from_utf8_lossy(ctx.request_id.as_bytes()).into_owned(),
            time: humantime::format_rfc3339_millis(ctx.arrived).to_string(),
            decision: decision_word,
            reason,
            detail,
            mode: if self.enforce { "enforce" } else { "dry-run" },
            caller_iss: ctx.caller.as_ref().map(|c| c.iss.to_string()),
            caller_sub: ctx.caller.as_ref().map(|c| c.sub.to_string()),
            method: req.method.as_str().to_string(),
            path: req.uri.path().to_string(),
            client: session.client_addr().map(|a| a.to_string()),
            model: self.policy.load().model.clone(),
            requested_model: ctx.requested_model.clone(),
            served_digest: ctx.digest.map(|d| d.to_string()),
            version_id: record.map(|r| r.claims.version_id.clone()),
            record_id: record.map(|r| r.claims.jti.clone()),
            evidence: record
                .map(|r| {
                    r.claims
                        .evidence
                        .iter()
                        .map(|e| EvidenceRef {
                            kind: e.kind.clone(),
                            uri: e.uri.clone(),
                            digest: e.digest.clone(),
                            verdict: e.verdict.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            status,
            latency_ms: ctx.started.elapsed().as_secs_f64() * 1e3,
        });
    }
}

#[async_trait]
impl ProxyHttp for Gate {
    type CTX = RequestCtx;

    /// No downstream modules: pingora's default installs a disabled compression module whose
    /// hooks still run per request. provgate never compresses. (Measured: no change within
    /// noise; kept because it is less work, and the pass-through baseline does the same.)
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            request_id: self.request_ids.next(),
            started: Instant::now(),
            arrived: SystemTime::now(),
            caller: None,
            requested_model: None,
            digest: None,
            decision: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let t = Instant::now();
        let caller = self.caller(session).await;
        let decision = self.decide_with(session.req_header(), caller, ctx);
        self.metrics
            .decision_duration
            .observe(t.elapsed().as_secs_f64());
        let deny = decision.reason();
        ctx.decision = Some(decision);
        match deny {
            Some(reason) if self.enforce => {
                self.write_denial(session, reason, &ctx.request_id).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // A client must not be able to speak for provgate.
        for name in provgate_headers(&upstream_request.headers) {
            upstream_request.remove_header(&name);
        }
        if !self.forward_token {
            upstream_request.remove_header(&http::header::AUTHORIZATION);
        }
        upstream_request.insert_header(HEADER_REQUEST_ID, ctx.request_id.clone())?;
        if let Some(record) = ctx.decision.as_ref().and_then(allowed_record) {
            upstream_request.insert_header(HEADER_VERSION_ID, record.version_header.clone())?;
        }
        if let Some(sub) = ctx.caller.as_ref().and_then(|c| c.sub_header.clone()) {
            upstream_request.insert_header(HEADER_CALLER, sub)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // Nor the model server: only provgate speaks for provgate.
        for name in provgate_headers(&upstream_response.headers) {
            upstream_response.remove_header(&name);
        }
        upstream_response.insert_header(HEADER_REQUEST_ID, ctx.request_id.clone())?;
        if let Some(record) = ctx.decision.as_ref().and_then(allowed_record) {
            upstream_response.insert_header(HEADER_VERSION_ID, record.version_header.clone())?;
        }
        Ok(())
    }

    async fn logging(
        &self,
        session: &mut Session,
        _e: Option<&pingora::Error>,
        ctx: &mut RequestCtx,
    ) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let (outcome, version, duration) = match &ctx.decision {
            Some(Decision::Allow { record }) => (
                Outcome::Allow,
                &*record.version_id,
                &self.metrics.duration_allow,
            ),
            Some(Decision::Deny { reason, record, .. }) => (
                Outcome::Deny(*reason),
                record.as_ref().map_or("none", |r| &*r.version_id),
                &self.metrics.duration_deny,
            ),
            // The request failed before it was decided (pingora rejected it).
            None => (Outcome::Error, "none", &self.metrics.duration_error),
        };
        self.counters.inc(outcome, version);
        duration.observe(ctx.started.elapsed().as_secs_f64());
        match outcome {
            Outcome::Allow if self.log_allowed => self.audit(session, ctx, status, "allow"),
            Outcome::Deny(_) => self.audit(session, ctx, status, self.counters.deny_word()),
            _ => {}
        }
    }
}

/// The `x-provgate-*` header names present (an empty Vec, which does not allocate, when
/// there are none: the usual case).
fn provgate_headers(headers: &http::HeaderMap) -> Vec<http::HeaderName> {
    headers
        .keys()
        .filter(|k| k.as_str().starts_with(HEADER_PREFIX))
        .cloned()
        .collect()
}

fn allowed_record(d: &Decision) -> Option<&Arc<ApprovalRecord>> {
    match d {
        Decision::Allow { record } => Some(record),
        Decision::Deny { .. } => None,
    }
}

/// The model a request names in its path (KServe / Open Inference Protocol v2:
/// `/v2/models/{name}[/versions/{v}]/...`).
pub fn requested_model(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/models/")?;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then_some(name)
}

/// Request IDs: a random per-process prefix and a counter, 32 hex characters.
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut seed = [0u8; 8];
        // Without OS randomness, fall back to the clock: IDs stay unique per process.
        if getrandom::fill(&mut seed).is_err() {
            seed = (crate::unix_now() ^ u64::from(std::process::id())).to_le_bytes();
        }
        RequestIds {
            prefix: u64::from_le_bytes(seed),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    /// The next ID as a header value (32 lowercase hex characters), with no formatting
    /// machinery: two integers written as hex into a stack buffer.
    pub fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        hex::encode_to_slice(self.prefix.to_be_bytes(), &mut buf[..16])
            .and_then(|_| hex::encode_to_slice(n.to_be_bytes(), &mut buf[16..]))
            // Both halves are exactly 16 hex digits for 8 bytes; the sizes are fixed.
            .unwrap_or_default();
        // Hex digits are valid header bytes.
        HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_read_from_kserve_paths() {
        assert_eq!(requested_model("/v2/models/m1/infer"), Some("m1"));
        assert_eq!(
            requested_model("/v2/models/m1/versions/3/infer"),
            Some("m1")
        );
        assert_eq!(requested_model("/v2/models/m1"), Some("m1"));
        assert_eq!(requested_model("/v2/models/"), None);
        assert_eq!(requested_model("/v1/chat/completions"), None);
    }

    #[test]
    fn request_ids_are_unique() {
        let ids = RequestIds::default();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert!(b.to_str().unwrap().ends_with("2"));
    }
}
