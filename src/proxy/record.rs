//! The audit record of one request: the typed `AuditEvent` built from the request's context
//! (decision, reason, caller, model, digest, record and its evidence, the exceptions it
//! needed, status, latency) and
//! handed to the audit log, once, from `logging`.
//!
//! Builds the event only: writing, chaining and rotating it are `audit`'s.

use std::sync::Arc;

use pingora::proxy::Session;

use crate::approval::ApprovalRecord;
use crate::audit::{AuditEvent, EvidenceRef, ExceptionRef};
use crate::policy::Decision;
use crate::proxy::gate::{Gate, RequestCtx};

impl Gate {
    /// Emits the audit record of one decided request.
    pub(crate) fn audit(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        status: u16,
        decision_word: &'static str,
    ) {
        let (reason, detail) = match &ctx.decision {
            Some(Decision::Deny { reason, detail, .. }) => (Some(reason.as_str()), Some(*detail)),
            Some(Decision::Opened) => (None, Some("route opened by routing.allow")),
            _ => (None, None),
        };
        let record: Option<&Arc<ApprovalRecord>> = ctx.decision.as_ref().and_then(|d| d.record());
        let req = session.req_header();
        // Who signed the served model: read from the published state now, if it still
        // holds the digest this request was decided on.
        let state = ctx
            .model
            .and_then(|i| self.models.get(i))
            .map(|g| g.artefact.load());
        let signature = match state.as_ref().map(|s| &***s) {
            Some(crate::artefact::ArtefactState::Ready {
                digest, signature, ..
            }) if Some(*digest) == ctx.digest => Some(signature),
            _ => None,
        };
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
                .and_then(|i| self.models.get(i))
                .map_or_else(|| "none".to_string(), |g| g.name.clone()),
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
            model_signer: signature.and_then(|s| s.signer()).map(str::to_string),
            model_signer_identity: signature.and_then(|s| s.identity()).map(str::to_string),
            record_signers: record.map(|r| r.signers.clone()).unwrap_or_default(),
            exceptions: ctx
                .decision
                .as_ref()
                .map(|d| {
                    d.exceptions()
                        .iter()
                        .map(|e| ExceptionRef {
                            id: e.claims.jti.clone(),
                            waives: e.claims.waives.describe(),
                            ticket: e.claims.ticket.clone(),
                            exp: e.claims.exp,
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
