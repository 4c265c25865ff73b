//! The request path: one `impl ProxyHttp for Gate`, a screen per phase, each calling into
//! the rooms beside it.
//!
//! 1. `request_filter`: the one canonical target (`target`: ambiguous ones refused, an
//!    equivalent spelling rewritten so the upstream gets what was decided); who is calling
//!    (`caller`); which door and which model (`routing`: the route in the `[upstream] api`
//!    profiles, the model in its path or in the body fields its door lists, read by `body`
//!    up to a small limit before anything goes upstream, or held back whole); `decide`
//!    (closed doors and `[[routing.allow]]`; that model's published artefact and probe
//!    state, the approval (cached), `policy::decide()`; an adapter's base too). Deny: `deny`
//!    writes the JSON denial and the request stops.
//! 2. `upstream_peer`: the configured model server.
//! 3. `upstream_request_filter`: drop any `x-provgate-*` the client sent (however spelt),
//!    add ours, strip the caller's token unless configured to forward it (`headers`).
//! 4. `request_body_filter`: only a held body (`body`), checked when whole.
//! 5. `response_filter`: tag the response with the version and request IDs (`headers`).
//! 6. `response_body_filter`: only for a model list, keep the models this caller may use
//!    (`models`); every other body passes through untouched and unbuffered.
//! 7. `logging`: the request counters (`counters`) and the audit record (`record`), once per
//!    request.
//!
//! With `[tracing]` on, `trace` starts a span in 1, names it in the model server's
//! `traceparent` in 3 and queues it for export in 7.
//!
//! The shared state and the per-request context are in `gate`. Nothing here waits on
//! anything but the upstream: no file, registry or key I/O, and no signature check for a
//! token seen before.

pub mod body;
mod caller;
pub mod counters;
mod decide;
pub mod deny;
pub mod gate;
pub mod headers;
pub mod models;
mod record;
pub mod routing;
pub mod target;
mod trace;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};

use crate::approval::ApprovalRecord;
use crate::policy::{Decision, DenyReason};

use self::body::read_body_model;
pub use self::body::{HeldBody, HeldBudget, HeldPermit};
pub use self::counters::{Outcome, RequestCounters};
use self::deny::{write_denial, write_failure, Failure};
pub use self::gate::{Gate, ModelGate, RequestCtx};
pub use self::headers::RequestIds;
use self::headers::{edit_request, edit_response, strip_provgate, ADDED_HEADERS};
use self::headers::{HEADER_CALLER, HEADER_CALLER_ISSUER, HEADER_REQUEST_ID, HEADER_VERSION_ID};
use self::routing::config::Found;
use self::routing::profiles::method_bit;
use self::routing::{names_in_body, Named};
use self::target::canonical;

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
            listing_shape: routing::profiles::ListShape::OpenAi,
            door: None,
            listing_body: None,
            held_body: None,
            late_denial: None,
            trace: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        // The request's headers are in: its connection's header deadline stops here.
        crate::kit::conn::request_started();
        // pingora makes the context right before this filter: its start times the decision.
        let mut t = ctx.started;
        ctx.arrived_ms = crate::base::unix_now_ms();
        self.trace_start(session.req_header(), ctx);
        // One canonical target, before anything reads it; what is decided is forwarded.
        let req = session.req_header();
        let raw = req.raw_path();
        // The Host header is read only for an absolute-form target.
        let host = match raw.first() {
            Some(b'/') => None,
            _ => req
                .headers
                .get(http::header::HOST)
                .map(HeaderValue::as_bytes),
        };
        let rewrite = match canonical(raw, host) {
            Ok(c) => c.rewritten.then(|| c.to_target()),
            Err(why) => {
                let decision = Decision::deny(DenyReason::RequestInvalid, why.detail());
                ctx.decision = Some(decision);
                if self.enforce {
                    write_denial(session, DenyReason::RequestInvalid, &ctx.request_id).await?;
                    return Ok(true);
                }
                return Ok(false);
            }
        };
        if let Some(target) = rewrite {
            session.req_header_mut().set_raw_path(target.as_bytes())?;
        }
        let caller = self.caller(session, ctx.arrived_ms / 1000).await;
        let req = session.req_header();
        let (door, named) = match self.routing.find(method_bit(&req.method), req.uri.path()) {
            Found::Unlisted => (None, Named::Nothing),
            Found::Door(i, Some(m)) => (Some(i), Named::Model(m.to_string())),
            Found::Door(i, None) => (Some(i), Named::Nothing),
        };
        let fields = door.map_or(&[][..], |i| self.routing.doors[i].body_fields());
        ctx.door = door;
        let named = match named {
            // Only a verified caller's body is read.
            Named::Nothing if caller.is_ok() && !fields.is_empty() => {
                let read = Instant::now();
                let named = read_body_model(
                    session,
                    &self.routing,
                    fields,
                    self.models.len(),
                    self.enforce,
                )
                .await?;
                // Waiting for the body is the client's time, not the decision's.
                t += read.elapsed();
                named
            }
            named => named,
        };
        let named = match named {
            // The whole declared length is reserved up front; the buffer grows as the body
            // comes (a declared length is not yet a body).
            Named::Held(n) => match self.held_bytes.hold(n) {
                Some(held) => {
                    ctx.held_body = Some(held);
                    Named::Held(n)
                }
                None => Named::BodyTooLarge,
            },
            named => named,
        };
        // With `on_write_failure = "fail_closed"`, an unwritable audit log denies.
        let decision =
            self.audit
                .gate(self.decide_with(session.req_header(), caller, door, named, ctx));
        self.metrics
            .decision_duration
            .observe(t.elapsed().as_secs_f64());
        let deny = decision.reason();
        ctx.decision = Some(decision);
        match deny {
            Some(reason) if self.enforce => {
                write_denial(session, reason, &ctx.request_id).await?;
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
        let caller = ctx.caller.as_ref().and_then(|c| c.headers.as_ref());
        let listing = ctx.listing.is_some();
        let trace = ctx.trace.as_deref();
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
            if let Some(c) = caller {
                // The name goes only with the issuer that vouched for it (both or neither).
                h.try_insert(HEADER_CALLER, c.sub.clone())?;
                h.try_insert(HEADER_CALLER_ISSUER, c.iss.clone())?;
            }
            if let Some(span) = trace {
                span.propagate(h)?;
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
        let Some(held) = ctx.held_body.as_mut() else {
            return Ok(());
        };
        if !held.push(body, end_of_stream, self.routing.max_held_body_bytes)? {
            return Ok(());
        }
        let whole = ctx
            .held_body
            .take()
            .map(HeldBody::into_bytes)
            .unwrap_or_default();
        let fields = ctx
            .door
            .map_or(&[][..], |i| self.routing.doors[i].body_fields());
        let named = names_in_body(&whole, fields);
        if matches!(&named, Named::Model(m) if *m == self.models[0].name) {
            ctx.requested_model = Some(self.models[0].name.clone());
            *body = Some(whole);
            return Ok(());
        }
        // It names another model, or none readable: decide again on what it names.
        let caller = ctx.caller.clone().ok_or(None);
        // With `on_write_failure = "fail_closed"`, an unwritable audit log denies.
        let decision =
            self.audit
                .gate(self.decide_with(session.req_header(), caller, ctx.door, named, ctx));
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
            // The upstream exchange was cut off mid-request: the connection is not kept (and
            // the answer says so), so a client never sends its next request on a connection
            // pingora may close. A denial of a held body is rare; a reconnect costs little.
            session.set_keepalive(None);
            if session.response_written().is_none() {
                if let Err(err) = write_denial(session, reason, &ctx.request_id).await {
                    tracing::debug!(error = %err, "writing a held body's denial");
                }
            }
            return pingora::proxy::FailToProxy {
                error_code: reason.status(),
                can_reuse_downstream: false,
            };
        }
        let Some(failure) = Failure::of(e) else {
            // The client is gone: nothing to answer.
            return pingora::proxy::FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if session.response_written().is_none() {
            if let Err(err) = write_failure(session, failure, &ctx.request_id).await {
                tracing::debug!(error = %err, "writing an upstream failure's answer");
            }
        }
        pingora::proxy::FailToProxy {
            error_code: failure.status(),
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
        let (Some(collected), Some(allowed)) = (ctx.listing_body.as_mut(), ctx.listing.as_mut())
        else {
            return Ok(None);
        };
        let names = self.models.iter().map(|m| m.name.as_str());
        let shape = ctx.listing_shape;
        models::collect_shaped(collected, allowed, body, end_of_stream, names, shape);
        Ok(None)
    }

    async fn logging(
        &self,
        session: &mut Session,
        _e: Option<&pingora::Error>,
        ctx: &mut RequestCtx,
    ) {
        // The response is done: the connection's idle deadline starts.
        crate::kit::conn::request_finished();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let (outcome, version, duration) = match &ctx.decision {
            Some(Decision::Allow { record }) => (
                Outcome::Allow,
                &*record.version_id,
                &self.metrics.duration_allow,
            ),
            Some(Decision::Opened) => (Outcome::Allow, "none", &self.metrics.duration_allow),
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
            // A route opened by `[[routing.allow]]` is always audited, with its caller.
            Outcome::Allow
                if self.log_allowed || matches!(ctx.decision, Some(Decision::Opened)) =>
            {
                self.audit(session, ctx, status, "allow")
            }
            Outcome::Deny(_) => self.audit(session, ctx, status, counters.deny_word()),
            _ => {}
        }
        self.trace_end(session.req_header(), ctx, status);
    }
}

#[inline]
fn allowed_record(d: &Decision) -> Option<&Arc<ApprovalRecord>> {
    match d {
        Decision::Allow { record } => Some(record),
        Decision::Opened | Decision::Deny { .. } => None,
    }
}
