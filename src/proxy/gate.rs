//! The request path's state: [`Gate`], what every request reads (shared, built once by
//! `server`), [`ModelGate`], one guarded model, and [`RequestCtx`], one request's context,
//! filled in phase order.
//!
//! Types and their construction only: the phases are in `proxy`'s `mod.rs`, and the work
//! they do in the other rooms. Must not import a room that works on a `Gate`.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use http::HeaderValue;
use pingora::prelude::HttpPeer;

use crate::artefact::ArtefactHandle;
use crate::audit::AuditLog;
use crate::digest::Digest;
use crate::identity::config::CallerAuth;
use crate::identity::{Caller, TokenVerifier};
use crate::policy::{Decision, DenyReason, Policy};
use crate::probe::ServedHandle;
use crate::proxy::body::{HeldBody, HeldBudget};
use crate::proxy::counters::RequestCounters;
use crate::proxy::headers::RequestIds;
use crate::proxy::routing::config::Routing;
use crate::proxy::routing::profiles::ListShape;
use crate::registry::ApprovalStore;
use crate::telemetry::Metrics;
use crate::trace::export::{SpanStart, Tracer};
use crate::upstream::{Upstream, UpstreamProtocol};

/// One guarded model: everything the request path reads for it.
pub struct ModelGate {
    /// The configured model name (records' `sub`; what requests name).
    pub name: String,
    pub artefact: Arc<ArtefactHandle>,
    /// What the model server says about it (upstream probe).
    pub served: Arc<ServedHandle>,
    /// `provgate_requests_total` handles for this model.
    pub counters: RequestCounters,
    /// For an adapter: the index of its base model in `Gate::models`.
    pub base: Option<usize>,
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
    /// `[tracing]`: `None` (the default) and the request path does no trace work.
    pub tracer: Option<Tracer>,
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
    /// How that list answers.
    pub listing_shape: ListShape,
    /// The door (index in `Routing::doors`) the request goes through, when listed.
    pub door: Option<usize>,
    /// The upstream's model list, collected for filtering (`None`: pass bodies through).
    pub listing_body: Option<BytesMut>,
    /// A body too large to read before the decision, held back by `request_body_filter`
    /// until it is whole and the model it names is checked.
    pub held_body: Option<HeldBody>,
    /// The held body's check denied the request after the upstream was contacted (it has
    /// the headers, none of the body): `fail_to_proxy` answers with this.
    pub late_denial: Option<DenyReason>,
    /// This request's span, when tracing is on (boxed: one word in the context when off).
    pub trace: Option<Box<SpanStart>>,
}

impl Gate {
    /// The model a request that names none is for: the only configured model that is not
    /// an adapter (the server's default), if there is exactly one.
    #[inline]
    pub fn default_model(&self) -> Option<usize> {
        crate::proxy::routing::default_model(self.models.iter().map(|m| m.base.is_none()))
    }

    /// Builds the upstream peer once; each request clones it.
    pub fn upstream_peer_for(upstream: &Upstream) -> HttpPeer {
        let tls = upstream.protocol == UpstreamProtocol::Https;
        let mut peer = HttpPeer::new(upstream.address, tls, upstream.sni.clone());
        peer.options.connection_timeout = Some(upstream.connect_timeout);
        peer.options.read_timeout = upstream.read_timeout;
        match upstream.protocol {
            UpstreamProtocol::Http1 => peer.options.set_http_version(1, 1),
            UpstreamProtocol::H2c => peer.options.set_http_version(2, 2),
            UpstreamProtocol::Https => peer.options.set_http_version(2, 1),
        }
        peer
    }
}
