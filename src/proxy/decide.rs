//! The decision for one request against the gate: whether its door is open (a route no
//! profile lists, or a management route, only through `[[routing.allow]]`), which configured
//! model it is for, that model's published artefact and probe state, the approval lookup,
//! and `policy::decide()`; an adapter needs its base's approval and pinned digest too; a
//! model list or a model-free route is decided against each model in turn.
//!
//! Reads published snapshots and caches only (no I/O, no crypto for a token seen before),
//! and fills the request's context; it must not write a response.

use std::sync::Arc;

use pingora::http::RequestHeader;

use crate::approval::identity_matches;
use crate::identity::{bearer, Caller, TokenError};
use crate::policy::{
    decide, ApprovalView, ArtefactView, CallerView, Decision, DenyReason, Input, ModelView,
};
use crate::proxy::gate::{Gate, RequestCtx};
use crate::proxy::routing::config::Found;
use crate::proxy::routing::profiles::{method_bit, Class, ModelAt};
use crate::proxy::routing::Named;
use crate::registry::Lookup;

impl Gate {
    /// Evaluates one request's headers (its target already canonical): the whole decision
    /// path of `request_filter` without body reading or response writing, with cached
    /// tokens only. A request whose body would name the model is decided as naming
    /// `body_model`. Public for benchmarks.
    pub fn evaluate(
        &self,
        req: &RequestHeader,
        body_model: Option<&str>,
        ctx: &mut RequestCtx,
    ) -> Decision {
        ctx.arrived_ms = crate::base::unix_now_ms();
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
        let (door, named) = match self.routing.find(method_bit(&req.method), req.uri.path()) {
            Found::Door(i, Some(m)) => (Some(i), Named::Model(m.to_string())),
            Found::Door(i, None) => (
                Some(i),
                body_model.map_or(Named::Nothing, |m| Named::Model(m.to_string())),
            ),
            Found::Unlisted => (None, Named::Nothing),
        };
        self.decide_with(req, token_outcome, door, named, ctx)
    }

    /// Everything after the token: which door, which model, its artefact and probe state,
    /// the approval lookup, `decide()`. A route no profile lists, or a management route, is
    /// refused unless `[[routing.allow]]` opens it to this caller. A model list and a
    /// model-free route are decided against each model in turn: allowed when any model is
    /// (a list remembers which ones for the response filter).
    pub(crate) fn decide_with(
        &self,
        req: &RequestHeader,
        token_outcome: Result<Arc<Caller>, Option<TokenError>>,
        door: Option<usize>,
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
        let class = door
            .and_then(|i| self.routing.doors.get(i))
            .map(|d| d.class);
        let decision = match class {
            None => self.decide_closed(
                req,
                caller_view,
                "no configured API profile lists this route",
            ),
            Some(Class::Manage) => self.decide_closed(
                req,
                caller_view,
                "management route not opened to this caller",
            ),
            Some(Class::List(shape)) => {
                let (d, allowed) = self.decide_any(caller_view, now_ms, ctx);
                // Filtering the list is enforcement: dry-run leaves the answer alone.
                ctx.listing = self.enforce.then_some(allowed);
                ctx.listing_shape = shape;
                d
            }
            Some(Class::Free)
                if door
                    .and_then(|i| self.routing.doors.get(i))
                    .is_some_and(|d| d.model == ModelAt::Nothing) =>
            {
                self.decide_any(caller_view, now_ms, ctx).0
            }
            Some(Class::Free | Class::Inference) => {
                self.decide_named(caller_view, &named, now_ms, ctx)
            }
        };
        match named {
            Named::Model(name) => ctx.requested_model = Some(name),
            Named::Models(names) => ctx.requested_model = Some(names.join(",")),
            _ => {}
        }
        // An expiry denial says which clock judged it: the wall clock, at the audit record's
        // `time` (staleness bounds use the monotonic clock, and never deny as expiry).
        let decision = match (decision, &token_outcome) {
            (
                Decision::Deny {
                    reason: DenyReason::TokenInvalid,
                    record,
                    ..
                },
                Err(Some(e @ (TokenError::Expired | TokenError::NotYetValid))),
            ) => Decision::Deny {
                reason: DenyReason::TokenInvalid,
                detail: if *e == TokenError::Expired {
                    "token expired (judged on the wall clock at the record's time, with callers.leeway)"
                } else {
                    "token not yet valid (judged on the wall clock at the record's time, with callers.leeway)"
                },
                record,
            },
            (d, _) => d,
        };
        ctx.caller = token_outcome.ok();
        decision
    }

    /// A closed door: open only when a `[[routing.allow]]` rule names this route and caller.
    fn decide_closed(
        &self,
        req: &RequestHeader,
        caller: CallerView<'_>,
        detail: &'static str,
    ) -> Decision {
        if let CallerView::Verified(c) = caller {
            let opened = self
                .routing
                .opened(method_bit(&req.method), req.uri.path())
                .is_some_and(|rule| {
                    rule.issuer.as_deref().is_none_or(|i| i == &*c.iss)
                        && identity_matches(&rule.callers, &c.sub)
                });
            if opened {
                return Decision::Opened;
            }
        }
        let policy = self.policy.load();
        decide(
            &policy,
            &Input {
                caller,
                model: ModelView::RouteNotAllowed { detail },
                artefact: ArtefactView::Unverified,
                approval: ApprovalView::Entry(None),
                now: 0,
            },
        )
    }

    /// Decided against every model: allowed when any is (that model's decision), else the
    /// first model's denial; with the set of models that allow.
    fn decide_any(
        &self,
        caller_view: CallerView<'_>,
        now_ms: u64,
        ctx: &mut RequestCtx,
    ) -> (Decision, u64) {
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
        let d = match chosen {
            Some((i, d)) => {
                ctx.model = Some(i);
                ctx.digest = self
                    .models
                    .get(i)
                    .and_then(|g| g.artefact.load().digest().copied());
                d
            }
            // Config validation guarantees at least one model.
            None => self.decide_model(caller_view, Err(ModelView::Unnamed), now_ms, ctx),
        };
        (d, allowed)
    }

    /// A route that names its model (or may, in its body): every name is checked; none
    /// names the server's default model, when there is exactly one.
    fn decide_named(
        &self,
        caller_view: CallerView<'_>,
        named: &Named,
        now_ms: u64,
        ctx: &mut RequestCtx,
    ) -> Decision {
        let position = |name: &str| {
            self.models
                .iter()
                .position(|m| m.name == name)
                .ok_or(ModelView::NotServed)
        };
        let target = match named {
            Named::Model(name) => position(name),
            Named::Models(names) => {
                let mut last = None;
                for name in names {
                    let target = position(name);
                    ctx.model = target.ok().or(ctx.model);
                    let d = self.decide_model(caller_view, target, now_ms, ctx);
                    if d.reason().is_some() {
                        return d;
                    }
                    last = Some(d);
                }
                // `Models` holds at least two names.
                return last.unwrap_or_else(|| {
                    self.decide_model(caller_view, Err(ModelView::Unnamed), now_ms, ctx)
                });
            }
            Named::Nothing | Named::Held(_) => self.default_model().ok_or(ModelView::Unnamed),
            Named::BodyInvalid => Err(ModelView::BodyInvalid),
            Named::BodyTooLarge => Err(ModelView::BodyTooLarge),
        };
        // A single-model sidecar counts every request under its one model.
        ctx.model = target.ok().or((self.models.len() == 1).then_some(0));
        self.decide_model(caller_view, target, now_ms, ctx)
    }

    /// An adapter's decision ([`crate::policy::decide_adapter`]): its base is decided
    /// for the same caller only when the adapter's own record allows.
    fn decide_adapter(
        &self,
        caller: CallerView<'_>,
        base: usize,
        adapter: Decision,
        now_ms: u64,
        ctx: &mut RequestCtx,
    ) -> Decision {
        crate::policy::decide_adapter(adapter, || {
            let own = ctx.digest;
            let base_decision = self.decide_model(caller, Ok(base), now_ms, ctx);
            let served = ctx.digest;
            ctx.digest = own;
            (base_decision, served)
        })
    }

    /// One decision against one configured model (or a routing failure).
    fn decide_model(
        &self,
        caller: CallerView<'_>,
        target: Result<usize, ModelView<'static>>,
        now_ms: u64,
        ctx: &mut RequestCtx,
    ) -> Decision {
        let Some((i, gate)) = target
            .as_ref()
            .ok()
            .and_then(|&i| self.models.get(i).map(|g| (i, g)))
        else {
            let policy = self.policy.load();
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
        if let Some(base) = gate.base {
            let own = self.decide_one(caller, i, now_ms, ctx);
            return self.decide_adapter(caller, base, own, now_ms, ctx);
        }
        self.decide_one(caller, i, now_ms, ctx)
    }

    /// One model's own decision (an adapter's without its base).
    fn decide_one(
        &self,
        caller: CallerView<'_>,
        i: usize,
        now_ms: u64,
        ctx: &mut RequestCtx,
    ) -> Decision {
        let policy = self.policy.load();
        // `i` was checked against `self.models` by `decide_model`, the only caller.
        #[allow(clippy::indexing_slicing)]
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
}
