//! The decision for one request against the gate: which configured model it is for, that
//! model's published artefact and probe state, the approval lookup, and `policy::decide()`;
//! a model list is decided against each model in turn.
//!
//! Reads published snapshots and caches only (no I/O, no crypto for a token seen before),
//! and fills the request's context; it must not write a response.

use std::sync::Arc;

use pingora::http::RequestHeader;

use crate::identity::{bearer, Caller, TokenError};
use crate::policy::{decide, ApprovalView, ArtefactView, CallerView, Decision, Input, ModelView};
use crate::proxy::gate::{Gate, RequestCtx};
use crate::proxy::routing::{is_listing, requested_model, Named};
use crate::registry::Lookup;

impl Gate {
    /// Evaluates one request's headers: the whole decision path of `request_filter`
    /// without body reading or response writing, with cached tokens only. A request whose
    /// body would name the model is decided as naming `body_model`. Public for benchmarks.
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
        let named = match (requested_model(req.uri.path()), body_model) {
            (Some(m), _) | (None, Some(m)) => Named::Model(m.to_string()),
            (None, None) => Named::Nothing,
        };
        self.decide_with(req, token_outcome, named, ctx)
    }

    /// Everything after the token: which model, its artefact and probe state, the approval
    /// lookup, `decide()`. A model list is decided against each model in turn: it is allowed
    /// when any model is, and remembers which ones for the response filter.
    pub(crate) fn decide_with(
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
        let decision = if named == Named::Nothing && is_listing(&self.routing, req) {
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
}
