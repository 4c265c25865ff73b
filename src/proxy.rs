//! The request path: one `impl ProxyHttp`, each phase short.
//!
//! 1. `request_filter`: verify the caller's token (cached); find the model the request is
//!    for (KServe v2 path, or the `model` field of an OpenAI JSON body, read up to a small
//!    limit before anything goes upstream); read that model's published artefact and probe
//!    state, look the approval up (cached), `decide()`. Deny: write the JSON denial and stop.
//! 2. `upstream_peer`: the configured model server.
//! 3. `upstream_request_filter`: drop any `x-provgate-*` the client sent, add ours, strip the
//!    caller's token unless configured to forward it.
//! 4. `response_filter`: tag the response with the version and request IDs.
//! 5. `response_body_filter`: only for the OpenAI model list, keep the models this caller may
//!    use; every other body passes through untouched and unbuffered.
//! 6. `logging`: metrics and the audit record, once per request.
//!
//! Nothing here waits on anything but the upstream: no file, registry or key I/O, and no
//! signature check for a token seen before.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::MaxSizeReached;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{ErrorType::InvalidHTTPHeader, OrErr};

use crate::approval::ApprovalRecord;
use crate::artefact::ArtefactHandle;
use crate::audit::{AuditEvent, AuditLog, EvidenceRef};
use crate::config::MAX_INSPECTED_BODY;
use crate::config::{CallerAuth, Routing, Upstream, UpstreamProtocol};
use crate::digest::Digest;
use crate::identity::mtls::CertCaller;
use crate::identity::{bearer, Caller, TokenError, TokenVerifier};
use crate::policy::{
    decide, ApprovalView, ArtefactView, CallerView, Decision, DenyReason, Input, ModelView, Policy,
};
use crate::probe::ServedHandle;
use crate::registry::{ApprovalStore, Lookup};
use crate::telemetry::{Metrics, Outcome, RequestCounters};

pub const HEADER_VERSION_ID: HeaderName = HeaderName::from_static("x-provgate-version-id");
pub const HEADER_REQUEST_ID: HeaderName = HeaderName::from_static("x-provgate-request-id");
pub const HEADER_CALLER: HeaderName = HeaderName::from_static("x-provgate-caller");
const HEADER_PREFIX: &str = "x-provgate-";

/// The headers provgate adds to a request or response that passes, at most three.
const ADDED_HEADERS: usize = 3;

/// Edits a request's headers through `http::HeaderMap` itself, after dropping pingora's
/// second map of each name's original case. With that map, every insert parses and
/// allocates the name and grows both maps: provgate's five headers cost 1.04 µs per
/// request with it and 0.40 µs without (`cargo bench --bench decision -- headers/`), about
/// 5% of the sidecar's throughput. Without it, pingora writes standard names title-cased
/// (`Content-Type`) and others lowercase, as Envoy does by default and HTTP/2 always does;
/// header names are case-insensitive (RFC 9110, section 5.1). The request target is kept
/// byte for byte.
pub fn edit_request(
    req: &mut RequestHeader,
    edit: impl FnOnce(&mut http::HeaderMap) -> Result<(), MaxSizeReached>,
) -> pingora::Result<()> {
    // A placeholder that allocates nothing (empty header map, static URI).
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let old = std::mem::replace(req, placeholder);
    let from_uri = old.raw_path_is_utf8()
        && old.uri.path_and_query().map(|p| p.as_str().as_bytes()) == Some(old.raw_path());
    let raw = (!from_uri).then(|| old.raw_path().to_vec());
    let end_stream = old.send_end_stream();
    let mut parts = http::request::Parts::from(old);
    let edited = edit(&mut parts.headers);
    *req = RequestHeader::from(parts);
    if let Some(raw) = raw {
        req.set_raw_path(&raw)?;
    }
    if let Some(end_stream) = end_stream {
        req.set_send_end_stream(end_stream);
    }
    edited.or_err(InvalidHTTPHeader, "too many request headers")
}

/// As [`edit_request`], for a response; a reason phrase other than the status's own is kept.
pub fn edit_response(
    resp: &mut ResponseHeader,
    edit: impl FnOnce(&mut http::HeaderMap) -> Result<(), MaxSizeReached>,
) -> pingora::Result<()> {
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let old = std::mem::replace(resp, placeholder);
    let reason = old
        .get_reason_phrase()
        .filter(|r| Some(*r) != old.status.canonical_reason())
        .map(str::to_string);
    let mut parts = http::response::Parts::from(old);
    let edited = edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        resp.set_reason_phrase(reason.as_deref())?;
    }
    edited.or_err(InvalidHTTPHeader, "too many response headers")
}

/// Removes every `x-provgate-*` header (a client must not speak for provgate, nor may the
/// model server), without allocating when there are none: the usual case.
pub fn strip_provgate(headers: &mut http::HeaderMap) {
    while let Some(name) = headers
        .keys()
        .find(|k| k.as_str().starts_with(HEADER_PREFIX))
        .cloned()
    {
        headers.remove(&name);
    }
}

/// The largest model list read back from the upstream for filtering; a larger one is
/// replaced by an empty list (fail closed).
pub const MAX_LISTING_BYTES: usize = 1 << 20;

/// One guarded model: everything the request path reads for it.
pub struct ModelGate {
    /// The configured model name (records' `sub`; what requests name).
    pub name: String,
    pub artefact: Arc<ArtefactHandle>,
    /// What the model server says about it (upstream probe).
    pub served: Arc<ServedHandle>,
    /// `provgate_requests_total` handles for this model.
    pub counters: RequestCounters,
}

/// The sidecar's shared state: everything the request path reads.
pub struct Gate {
    /// The static policy; swapped whole when this workload's identity token rotates.
    pub policy: Arc<arc_swap::ArcSwap<Policy>>,
    pub enforce: bool,
    pub log_allowed: bool,
    /// The guarded models, in configuration order (at least one).
    pub models: Vec<ModelGate>,
    /// Counters for requests that resolved to no model on a multi-model sidecar.
    pub unrouted: RequestCounters,
    /// How requests name their model.
    pub routing: Routing,
    pub approvals: Arc<ApprovalStore>,
    pub tokens: Arc<TokenVerifier>,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub peer: HttpPeer,
    pub forward_token: bool,
    /// How callers authenticate: bearer token, mTLS certificate, or a combination.
    pub caller_auth: CallerAuth,
    pub request_ids: RequestIds,
    /// Request bytes held back right now across all requests (`max_held_total_bytes`).
    pub held_bytes: Arc<HeldBudget>,
}

/// A budget of bytes shared by every held body: taken whole when a body is to be held,
/// given back when the permit drops (the body went upstream, was refused, or the request
/// ended in any other way).
#[derive(Debug)]
pub struct HeldBudget {
    used: AtomicUsize,
    limit: usize,
    /// `provgate_held_body_bytes`, kept equal to `used`.
    gauge: prometheus::IntGauge,
}

impl HeldBudget {
    pub fn new(limit: usize, gauge: prometheus::IntGauge) -> HeldBudget {
        HeldBudget {
            used: AtomicUsize::new(0),
            limit,
            gauge,
        }
    }

    /// `n` more bytes, if they fit.
    pub fn take(self: &Arc<Self>, n: usize) -> Option<HeldPermit> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next = used.checked_add(n).filter(|&v| v <= self.limit)?;
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.gauge.add(n as i64);
                    return Some(HeldPermit {
                        budget: self.clone(),
                        n,
                    });
                }
                Err(now) => used = now,
            }
        }
    }
}

/// Bytes taken from a [`HeldBudget`], given back on drop.
#[derive(Debug)]
pub struct HeldPermit {
    budget: Arc<HeldBudget>,
    n: usize,
}

impl Drop for HeldPermit {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
        self.budget.gauge.sub(self.n as i64);
    }
}

/// A body being held back, with its share of the budget.
pub struct HeldBody {
    pub buf: BytesMut,
    _permit: HeldPermit,
}

/// Per-request context, filled in phase order.
pub struct RequestCtx {
    pub request_id: HeaderValue,
    pub started: Instant,
    /// When `request_filter` began (Unix milliseconds): the time every check of the
    /// request is made at, and the audit record's time.
    pub arrived_ms: u64,
    pub caller: Option<Arc<Caller>>,
    pub requested_model: Option<String>,
    /// The index in `Gate::models` of the model the request was decided against.
    pub model: Option<usize>,
    pub digest: Option<Digest>,
    pub decision: Option<Decision>,
    /// A model list request: the models this caller may use (bit `i` = `Gate::models[i]`).
    pub listing: Option<u64>,
    /// The upstream's model list, collected for filtering (`None`: pass bodies through).
    pub listing_body: Option<BytesMut>,
    /// A body too large to read before the decision, held back by `request_body_filter`
    /// until it is whole and the model it names is checked.
    pub held_body: Option<HeldBody>,
    /// The held body's check denied the request after the upstream was contacted (it has
    /// the headers, none of the body): `fail_to_proxy` answers with this.
    pub late_denial: Option<DenyReason>,
}

/// The model a request names, as far as routing could read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    Nothing,
    Model(String),
    BodyInvalid,
    BodyTooLarge,
    /// A body larger than can be read before the decision (its declared length), on a
    /// single-model sidecar: the request is decided as naming that model, and the body is
    /// checked when whole.
    Held(usize),
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
    /// without body reading or response writing, with cached tokens only. A request whose
    /// body would name the model is decided as naming `body_model`. Public for benchmarks.
    pub fn evaluate(
        &self,
        req: &RequestHeader,
        body_model: Option<&str>,
        ctx: &mut RequestCtx,
    ) -> Decision {
        ctx.arrived_ms = crate::unix_now_ms();
        let token_outcome = match req.headers.get(http::header::AUTHORIZATION) {
            None => Err(None),
            Some(v) => match bearer(v.as_bytes()) {
                None => Err(Some(TokenError::Malformed)),
                Some(token) => self
                    .tokens
                    .verify(token, ctx.arrived_ms / 1000)
                    .map_err(Some),
            },
        };
        let named = match (requested_model(req.uri.path()), body_model) {
            (Some(m), _) | (None, Some(m)) => Named::Model(m.to_string()),
            (None, None) => Named::Nothing,
        };
        self.decide_with(req, token_outcome, named, ctx)
    }

    /// Is this request's body where it names its model (POST to a configured OpenAI path)?
    /// Comparisons only: nothing is allocated for requests that are not.
    fn body_names_model(&self, req: &RequestHeader) -> bool {
        req.method == http::Method::POST
            && self
                .routing
                .openai_paths
                .iter()
                .any(|p| p == req.uri.path())
    }

    /// Is this the OpenAI model list, whose answer is filtered per caller?
    fn is_listing(&self, req: &RequestHeader) -> bool {
        req.method == http::Method::GET
            && self
                .routing
                .models_path
                .as_deref()
                .is_some_and(|p| p == req.uri.path())
    }

    /// The caller's token, verified; an unknown `kid` waits for the issuer's refetch.
    async fn token_caller(
        &self,
        req: &RequestHeader,
        now: u64,
    ) -> Result<Arc<Caller>, Option<TokenError>> {
        match req.headers.get(http::header::AUTHORIZATION) {
            None => Err(None),
            Some(v) => match bearer(v.as_bytes()) {
                None => Err(Some(TokenError::Malformed)),
                Some(token) => self.tokens.verify_waiting(token, now).await.map_err(Some),
            },
        }
    }

    /// Who is calling, by token, client certificate or both, as `caller_auth` says.
    /// `Err(None)`: no credentials at all.
    async fn caller(&self, session: &Session, now: u64) -> Result<Arc<Caller>, Option<TokenError>> {
        let certificate = || {
            session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .and_then(|s| s.extension.get::<CertCaller>())
                .map(|c| c.0.clone())
        };
        let req = session.req_header();
        match self.caller_auth {
            CallerAuth::Token => self.token_caller(req, now).await,
            CallerAuth::Certificate => certificate().ok_or(None),
            CallerAuth::TokenOrCertificate => {
                if req.headers.contains_key(http::header::AUTHORIZATION) {
                    self.token_caller(req, now).await
                } else {
                    certificate().ok_or(None)
                }
            }
            CallerAuth::TokenAndCertificate => {
                let cert = certificate().ok_or(None)?;
                let token = self.token_caller(req, now).await?;
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

    /// Everything after the token: which model, its artefact and probe state, the approval
    /// lookup, `decide()`. A model list is decided against each model in turn: it is allowed
    /// when any model is, and remembers which ones for the response filter.
    fn decide_with(
        &self,
        req: &RequestHeader,
        token_outcome: Result<Arc<Caller>, Option<TokenError>>,
        named: Named,
        ctx: &mut RequestCtx,
    ) -> Decision {
        let now_ms = ctx.arrived_ms;
        let caller_view = match &token_outcome {
            Ok(c) => CallerView::Verified(c),
            Err(None) => CallerView::Missing,
            Err(Some(TokenError::KeysUnavailable)) => CallerView::Unavailable,
            Err(Some(_)) => CallerView::Invalid,
        };
        let decision = if named == Named::Nothing && self.is_listing(req) {
            let mut allowed = 0u64;
            let mut chosen: Option<(usize, Decision)> = None;
            for i in 0..self.models.len() {
                let d = self.decide_model(caller_view, Ok(i), now_ms, ctx);
                let allow = d.reason().is_none();
                if allow {
                    allowed |= 1 << i;
                }
                if chosen
                    .as_ref()
                    .is_none_or(|(_, c)| allow && c.reason().is_some())
                {
                    chosen = Some((i, d));
                }
            }
            // Filtering the list is enforcement: dry-run leaves the answer alone.
            ctx.listing = self.enforce.then_some(allowed);
            match chosen {
                Some((i, d)) => {
                    ctx.model = Some(i);
                    ctx.digest = self.models[i].artefact.load().digest().copied();
                    d
                }
                // Config validation guarantees at least one model.
                None => self.decide_model(caller_view, Err(ModelView::Unnamed), now_ms, ctx),
            }
        } else {
            let target = match &named {
                Named::Model(name) => self
                    .models
                    .iter()
                    .position(|m| &m.name == name)
                    .ok_or(ModelView::NotServed),
                Named::Nothing | Named::Held(_) if self.models.len() == 1 => Ok(0),
                Named::Nothing | Named::Held(_) => Err(ModelView::Unnamed),
                Named::BodyInvalid => Err(ModelView::BodyInvalid),
                Named::BodyTooLarge => Err(ModelView::BodyTooLarge),
            };
            // A single-model sidecar counts every request under its one model.
            ctx.model = target.ok().or((self.models.len() == 1).then_some(0));
            self.decide_model(caller_view, target, now_ms, ctx)
        };
        if let Named::Model(name) = named {
            ctx.requested_model = Some(name);
        }
        ctx.caller = token_outcome.ok();
        decision
    }

    /// One decision against one configured model (or a routing failure).
    fn decide_model(
        &self,
        caller: CallerView<'_>,
        target: Result<usize, ModelView<'static>>,
        now_ms: u64,
        ctx: &mut RequestCtx,
    ) -> Decision {
        let policy = self.policy.load();
        let Ok(i) = target else {
            let model = target.err().unwrap_or(ModelView::NotServed);
            return decide(
                &policy,
                &Input {
                    caller,
                    model,
                    artefact: ArtefactView::Unverified,
                    approval: ApprovalView::Entry(None),
                    now: now_ms / 1000,
                },
            );
        };
        let gate = &self.models[i];
        let state = gate.artefact.load();
        let served = gate.served.load();
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
        decide(
            &policy,
            &Input {
                caller,
                model: ModelView::Served {
                    name: &gate.name,
                    server: gate.served.view(&served),
                },
                artefact: artefact_view,
                approval: match &lookup {
                    Lookup::Entry(e) => ApprovalView::Entry(e.as_deref()),
                    Lookup::Unavailable => ApprovalView::Unavailable,
                },
                now: now_ms / 1000,
            },
        )
    }

    /// Reads the JSON body of an OpenAI request, up to the routing limit, and returns the
    /// model it names. pingora keeps what was read (at most 64 KiB, which the limit cannot
    /// exceed) in its retry buffer and sends exactly those bytes upstream after the
    /// decision: the body is forwarded unchanged, and nothing reaches the upstream before.
    async fn read_body_model(&self, session: &mut Session) -> pingora::Result<Named> {
        let limit = self.routing.max_body_bytes;
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(n) = declared.filter(|&n| n > limit) {
            // One model: the body can follow the headers upstream, held back until whole.
            if self.models.len() == 1 && n <= self.routing.max_held_body_bytes {
                return Ok(Named::Held(n));
            }
            return Ok(Named::BodyTooLarge);
        }
        // A body without a length may turn out larger than pingora can replay; in dry-run it
        // must still reach the server, so it is not read at all.
        if declared.is_none() && !self.enforce {
            return Ok(Named::Nothing);
        }
        session.enable_retry_buffering();
        let mut first: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        let mut total = 0usize;
        while let Some(chunk) = session.read_request_body().await? {
            total += chunk.len();
            if total > limit {
                return Ok(Named::BodyTooLarge);
            }
            match (&first, &mut joined) {
                (None, _) => first = Some(chunk),
                (Some(f), None) => {
                    let mut b = BytesMut::with_capacity(declared.unwrap_or(limit).min(limit));
                    b.extend_from_slice(f);
                    b.extend_from_slice(&chunk);
                    joined = Some(b);
                }
                (Some(_), Some(b)) => b.extend_from_slice(&chunk),
            }
        }
        let body: &[u8] = match (&joined, &first) {
            (Some(b), _) => b,
            (None, Some(f)) => f,
            (None, None) => &[],
        };
        Ok(model_in_body(body))
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
        let mut resp = ResponseHeader::build_no_case(reason.status(), Some(5))?;
        edit_response(&mut resp, |h| {
            h.try_insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )?;
            h.try_insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()))?;
            h.try_insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            )?;
            h.try_insert(HEADER_REQUEST_ID, request_id.clone())?;
            if reason.status() == 401 {
                let err = if reason == DenyReason::TokenMissing {
                    "Bearer realm=\"provgate\""
                } else {
                    "Bearer realm=\"provgate\", error=\"invalid_token\""
                };
                h.try_insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(err),
                )?;
            }
            Ok(())
        })?;
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
            time: humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ctx.arrived_ms),
            )
            .to_string(),
            decision: decision_word,
            reason,
            detail,
            mode: if self.enforce { "enforce" } else { "dry-run" },
            caller_iss: ctx.caller.as_ref().map(|c| c.iss.to_string()),
            caller_sub: ctx.caller.as_ref().map(|c| c.sub.to_string()),
            method: req.method.as_str().to_string(),
            path: req.uri.path().to_string(),
            client: session.client_addr().map(|a| a.to_string()),
            model: ctx
                .model
                .map_or_else(|| "none".to_string(), |i| self.models[i].name.clone()),
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
            cut: Default::default(),
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
            arrived_ms: 0,
            caller: None,
            requested_model: None,
            model: None,
            digest: None,
            decision: None,
            listing: None,
            listing_body: None,
            held_body: None,
            late_denial: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        // pingora makes the context right before this filter: its start times the decision.
        let mut t = ctx.started;
        ctx.arrived_ms = crate::unix_now_ms();
        let caller = self.caller(session, ctx.arrived_ms / 1000).await;
        let named = match requested_model(session.req_header().uri.path()) {
            Some(m) => Named::Model(m.to_string()),
            // Only a verified caller's body is read.
            None if caller.is_ok() && self.body_names_model(session.req_header()) => {
                let read = Instant::now();
                let named = self.read_body_model(session).await?;
                // Waiting for the body is the client's time, not the decision's.
                t += read.elapsed();
                named
            }
            None => Named::Nothing,
        };
        let named = match named {
            // The whole declared length is reserved up front; the buffer grows as the body
            // comes (a declared length is not yet a body).
            Named::Held(n) => match self.held_bytes.take(n) {
                Some(permit) => {
                    ctx.held_body = Some(HeldBody {
                        buf: BytesMut::with_capacity(n.min(MAX_INSPECTED_BODY * 2)),
                        _permit: permit,
                    });
                    Named::Held(n)
                }
                None => Named::BodyTooLarge,
            },
            named => named,
        };
        // With `on_write_failure = "fail_closed"`, an unwritable audit log denies.
        let decision = self
            .audit
            .gate(self.decide_with(session.req_header(), caller, named, ctx));
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
            _ => {
                // pingora clones this header for the upstream next: without its case map,
                // the clone is cheaper and the upstream edits need no second map.
                edit_request(session.req_header_mut(), |_| Ok(()))?;
                Ok(false)
            }
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
        let forward_token = self.forward_token;
        let version = ctx.decision.as_ref().and_then(allowed_record);
        let caller = ctx.caller.as_ref().and_then(|c| c.sub_header.as_ref());
        let listing = ctx.listing.is_some();
        edit_request(upstream_request, |h| {
            strip_provgate(h);
            if !forward_token {
                h.remove(http::header::AUTHORIZATION);
            }
            if listing {
                // The list is filtered as JSON: ask for it uncompressed.
                h.remove(http::header::ACCEPT_ENCODING);
            }
            h.try_reserve(ADDED_HEADERS)?;
            h.try_insert(HEADER_REQUEST_ID, ctx.request_id.clone())?;
            if let Some(record) = version {
                h.try_insert(HEADER_VERSION_ID, record.version_header.clone())?;
            }
            if let Some(sub) = caller {
                h.try_insert(HEADER_CALLER, sub.clone())?;
            }
            Ok(())
        })
    }

    /// Only a held body is touched: kept back (nothing goes upstream) until it is whole,
    /// then checked like a body read before the decision. The upstream gets the whole body
    /// or none of it.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let Some(HeldBody { buf: held, .. }) = ctx.held_body.as_mut() else {
            return Ok(());
        };
        if let Some(chunk) = body.take() {
            // pingora frames the body by its Content-Length, which was checked against the
            // limit; this only guards that promise.
            if held.len() + chunk.len() > self.routing.max_held_body_bytes {
                return Err(pingora::Error::explain(
                    pingora::ErrorType::InvalidHTTPHeader,
                    "held request body over routing.max_held_body_bytes",
                ));
            }
            held.extend_from_slice(&chunk);
        }
        if !end_of_stream {
            // An empty chunk sends nothing and does not end the upstream body.
            *body = Some(Bytes::new());
            return Ok(());
        }
        let whole = ctx
            .held_body
            .take()
            .map(|h| h.buf.freeze())
            .unwrap_or_default();
        let named = model_in_body(&whole);
        if matches!(&named, Named::Model(m) if *m == self.models[0].name) {
            ctx.requested_model = Some(self.models[0].name.clone());
            *body = Some(whole);
            return Ok(());
        }
        // It names another model, or none readable: decide again on what it names.
        let caller = ctx.caller.clone().ok_or(None);
        // With `on_write_failure = "fail_closed"`, an unwritable audit log denies.
        let decision = self
            .audit
            .gate(self.decide_with(session.req_header(), caller, named, ctx));
        let deny = decision.reason();
        ctx.decision = Some(decision);
        match deny {
            Some(reason) if self.enforce => {
                ctx.late_denial = Some(reason);
                Err(pingora::Error::explain(
                    pingora::ErrorType::HTTPStatus(reason.status()),
                    "held request body refused",
                ))
            }
            _ => {
                *body = Some(whole);
                Ok(())
            }
        }
    }

    /// A held body's denial is answered like any other; every other failure as pingora
    /// answers it (its default, restated: a trait default cannot be called once overridden).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut RequestCtx,
    ) -> pingora::proxy::FailToProxy {
        if let Some(reason) = ctx.late_denial {
            // The body was read to its end before the denial, so the connection can carry
            // the client's next request, unless the upstream already began an answer.
            let mut written = false;
            if session.response_written().is_none() {
                match self.write_denial(session, reason, &ctx.request_id).await {
                    Ok(()) => written = true,
                    Err(err) => tracing::debug!(error = %err, "writing a held body's denial"),
                }
            }
            return pingora::proxy::FailToProxy {
                error_code: reason.status(),
                can_reuse_downstream: written,
            };
        }
        use pingora::{ErrorSource, ErrorType};
        let code = match (e.etype(), e.esource()) {
            (ErrorType::HTTPStatus(code), _) => *code,
            (_, ErrorSource::Upstream) => 502,
            (
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => 0,
            (_, ErrorSource::Downstream) => 400,
            (_, ErrorSource::Internal | ErrorSource::Unset) => 500,
        };
        if code > 0 {
            if let Err(err) = session.respond_error(code).await {
                tracing::error!("failed to send error response to downstream: {err}");
            }
        }
        pingora::proxy::FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// A held body's denial is in the audit log and the metrics, not an error.
    fn suppress_error_log(&self, _s: &Session, ctx: &RequestCtx, _e: &pingora::Error) -> bool {
        ctx.late_denial.is_some()
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let version = ctx.decision.as_ref().and_then(allowed_record);
        // The filtered list has another length; it is sent once the whole list is in.
        let filter = ctx.listing.is_some() && upstream_response.status == http::StatusCode::OK;
        let chunked = filter && !session.is_http2();
        edit_response(upstream_response, |h| {
            strip_provgate(h);
            if filter {
                h.remove(http::header::CONTENT_LENGTH);
                h.remove(http::header::CONTENT_ENCODING);
                h.remove(http::header::ETAG);
            }
            h.try_reserve(ADDED_HEADERS)?;
            h.try_insert(HEADER_REQUEST_ID, ctx.request_id.clone())?;
            if let Some(record) = version {
                h.try_insert(HEADER_VERSION_ID, record.version_header.clone())?;
            }
            if chunked {
                h.try_insert(
                    http::header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                )?;
            }
            Ok(())
        })?;
        if filter {
            ctx.listing_body = Some(BytesMut::new());
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<std::time::Duration>> {
        // Every body but a model list passes through untouched.
        let (Some(collected), Some(allowed)) = (ctx.listing_body.as_mut(), ctx.listing) else {
            return Ok(None);
        };
        if let Some(chunk) = body.take() {
            if collected.len() + chunk.len() <= MAX_LISTING_BYTES {
                collected.extend_from_slice(&chunk);
            } else {
                // Too large to filter: keep nothing, answer an empty list (fail closed).
                collected.clear();
                ctx.listing = Some(0);
            }
        }
        if end_of_stream {
            let allowed = ctx.listing.unwrap_or(allowed);
            *body = Some(filter_model_list(collected, |id| {
                self.models
                    .iter()
                    .enumerate()
                    .any(|(i, m)| allowed & (1 << i) != 0 && m.name == id)
            }));
        }
        Ok(None)
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
        let counters = match (ctx.model, self.models.len()) {
            (Some(i), _) => &self.models[i].counters,
            (None, 1) => &self.models[0].counters,
            (None, _) => &self.unrouted,
        };
        counters.inc(outcome, version);
        duration.observe(ctx.started.elapsed().as_secs_f64());
        match outcome {
            Outcome::Allow if self.log_allowed => self.audit(session, ctx, status, "allow"),
            Outcome::Deny(_) => self.audit(session, ctx, status, counters.deny_word()),
            _ => {}
        }
    }
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

/// The model a JSON request body names in its top-level `model` field. The body must be a
/// JSON object; `model`, when present, a string (a duplicated `model` is refused, so
/// provgate and the model server cannot read different names from one body).
pub fn model_in_body(body: &[u8]) -> Named {
    #[derive(serde::Deserialize)]
    struct ModelField<'a> {
        #[serde(borrow, default)]
        model: Option<std::borrow::Cow<'a, str>>,
    }
    // serde would also read a struct from a JSON array: insist on an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Named::BodyInvalid;
    }
    match serde_json::from_slice::<ModelField<'_>>(body) {
        Ok(ModelField { model: Some(m) }) => Named::Model(m.into_owned()),
        Ok(ModelField { model: None }) => Named::Nothing,
        Err(_) => Named::BodyInvalid,
    }
}

/// An OpenAI model list (`{"object": "list", "data": [{"id": ...}, ...]}`) with only the
/// entries whose `id` is `allowed`. Anything else becomes an empty list (fail closed).
pub fn filter_model_list(body: &[u8], allowed: impl Fn(&str) -> bool) -> Bytes {
    const EMPTY: &[u8] = b"{\"object\":\"list\",\"data\":[]}";
    let Ok(mut list) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Bytes::from_static(EMPTY);
    };
    let Some(data) = list.get_mut("data").and_then(|d| d.as_array_mut()) else {
        return Bytes::from_static(EMPTY);
    };
    data.retain(|e| e.get("id").and_then(|i| i.as_str()).is_some_and(&allowed));
    serde_json::to_vec(&list).map_or(Bytes::from_static(EMPTY), Bytes::from)
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

    fn wire(req: &RequestHeader) -> String {
        let mut buf = BytesMut::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[test]
    fn request_edits_keep_the_target_and_headers_but_not_provgates() {
        for target in [
            &b"/v2/models/m/infer?x=1"[..],
            b"http://model.internal/v2/models/m/infer",
            b"/v2/models/m\xff/infer",
            b"*",
        ] {
            let mut req = RequestHeader::build("POST", target, None).unwrap();
            req.append_header("Content-Type", "application/json")
                .unwrap();
            req.append_header("X-Custom", "a").unwrap();
            req.append_header("X-Custom", "b").unwrap();
            req.append_header("X-Provgate-Caller", "forged").unwrap();
            req.append_header("x-provgate-version-id", "forged")
                .unwrap();
            edit_request(&mut req, |h| {
                strip_provgate(h);
                h.try_insert(HEADER_CALLER, HeaderValue::from_static("spiffe://c"))?;
                Ok(())
            })
            .unwrap();
            assert_eq!(
                req.raw_path(),
                target,
                "{}",
                String::from_utf8_lossy(target)
            );
            assert!(!req.has_case());
            assert_eq!(req.headers.get_all("x-custom").iter().count(), 2);
            assert_eq!(req.headers.get_all(HEADER_CALLER).iter().count(), 1);
            assert_eq!(req.headers[HEADER_CALLER], "spiffe://c");
            assert!(!req.headers.contains_key(HEADER_VERSION_ID));
            let wire = wire(&req);
            assert!(
                wire.contains("Content-Type: application/json\r\n"),
                "{wire}"
            );
            assert!(wire.contains("x-custom: a\r\nx-custom: b\r\n"), "{wire}");
        }
    }

    #[test]
    fn request_edits_keep_http2_end_stream() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.set_version(http::Version::HTTP_2);
        req.set_send_end_stream(false);
        edit_request(&mut req, |_| Ok(())).unwrap();
        assert_eq!(req.send_end_stream(), Some(false));
    }

    #[test]
    fn response_edits_keep_a_custom_reason_phrase() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.set_reason_phrase(Some("Fine")).unwrap();
        resp.append_header("X-Provgate-Request-Id", "upstream")
            .unwrap();
        edit_response(&mut resp, |h| {
            strip_provgate(h);
            h.try_insert(HEADER_REQUEST_ID, HeaderValue::from_static("ours"))?;
            Ok(())
        })
        .unwrap();
        assert_eq!(resp.get_reason_phrase(), Some("Fine"));
        assert_eq!(resp.headers[HEADER_REQUEST_ID], "ours");
        assert_eq!(resp.headers.len(), 1);
        let mut plain = ResponseHeader::build(404, None).unwrap();
        edit_response(&mut plain, |_| Ok(())).unwrap();
        assert_eq!(plain.get_reason_phrase(), Some("Not Found"));
    }

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
    fn the_body_names_the_model_in_a_top_level_string() {
        let m = |s: &str| Named::Model(s.to_string());
        assert_eq!(
            model_in_body(br#"{"messages":[{"role":"user","content":"hi"}],"model":"m1"}"#),
            m("m1")
        );
        assert_eq!(
            model_in_body(b" \n{\"model\":\"m\\u0031\",\"stream\":true}"),
            m("m1"),
            "escapes are decoded"
        );
        assert_eq!(
            model_in_body(br#"{"input":"x","extra":{"model":"nested"}}"#),
            Named::Nothing,
            "only the top-level field counts"
        );
        for bad in [
            &b""[..],
            b"not json",
            br#"["model","m1"]"#,
            br#"{"model":7}"#,
            br#"{"model":"a","model":"b"}"#,
            br#"{"model":"m1""#,
        ] {
            assert_eq!(
                model_in_body(bad),
                Named::BodyInvalid,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_model_list_keeps_only_allowed_ids() {
        let body = br#"{"object":"list","data":[{"id":"a","owned_by":"x"},{"id":"b"},{"object":"model"}]}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&filter_model_list(body, |id| id == "a")).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"object":"list","data":[{"id":"a","owned_by":"x"}]})
        );
        for unusable in [&b"<html>"[..], br#"{"models":[]}"#, b""] {
            assert_eq!(
                &filter_model_list(unusable, |_| true)[..],
                br#"{"object":"list","data":[]}"#
            );
        }
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
