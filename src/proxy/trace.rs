//! The request path's share of tracing (`[tracing]`, off by default): the span starts in
//! `request_filter` from the client's `traceparent` ([`Gate::trace_start`]), the model
//! server gets a `traceparent` naming provgate's span (`SpanStart::propagate`, in
//! `upstream_request_filter`), and `logging` hands the finished span, with the decision's
//! attributes, to the tracer's queue ([`Gate::trace_end`]).
//!
//! With tracing off each phase tests one `Option` and does nothing else: no header read,
//! no allocation. Batching and export are `trace::export`'s; this room must not wait.

use pingora::http::RequestHeader;

use crate::policy::Decision;
use crate::proxy::gate::{Gate, RequestCtx};
use crate::trace::export::{unix_nanos_now, FinishedSpan};

impl Gate {
    /// Starts this request's span, when tracing is on.
    #[inline]
    pub(crate) fn trace_start(&self, req: &RequestHeader, ctx: &mut RequestCtx) {
        if let Some(tracer) = &self.tracer {
            ctx.trace = Some(Box::new(tracer.start(&req.headers)));
        }
    }

    /// Queues the request's span (a sampled one) with the decision's attributes. Off, a
    /// test of the empty `ctx.trace` and no call.
    #[inline]
    pub(crate) fn trace_end(&self, req: &RequestHeader, ctx: &mut RequestCtx, status: u16) {
        if ctx.trace.is_some() {
            self.trace_finish(req, ctx, status);
        }
    }

    fn trace_finish(&self, req: &RequestHeader, ctx: &mut RequestCtx, status: u16) {
        let (Some(tracer), Some(start)) = (&self.tracer, ctx.trace.take()) else {
            return;
        };
        if !start.sampled() {
            return;
        }
        let (decision, reason, record) = match &ctx.decision {
            Some(Decision::Allow { record, .. }) => ("allow", None, Some(record)),
            // A route `[[routing.allow]]` opens: allowed with no record, as the audit says.
            Some(Decision::Opened) => ("allow", None, None),
            Some(Decision::Deny { reason, record, .. }) => (
                if self.enforce { "deny" } else { "would_block" },
                Some(reason.as_str()),
                record.as_ref(),
            ),
            None => ("error", None, None),
        };
        tracer.finish(FinishedSpan {
            start: *start,
            end_unix_nano: unix_nanos_now(),
            method: req.method.clone(),
            // The door's path pattern (`/v2/models/{m}/infer`): a template, never the path.
            route: ctx
                .door
                .and_then(|i| self.routing.doors.get(i))
                .map(|d| d.path.to_string()),
            status,
            decision,
            reason,
            mode: if self.enforce { "enforce" } else { "dry-run" },
            model: ctx
                .model
                .and_then(|i| self.models.get(i))
                .map(|g| g.name.clone()),
            version_id: record.map(|r| r.version_id.clone()),
            record_id: record.map(|r| r.claims.jti.clone()),
            request_id: ctx.request_id.clone(),
        });
    }
}
