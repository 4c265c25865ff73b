//! The decision's rules, named, and a way to watch them being applied: `provgate check`
//! and `provgate explain` print every rule with its outcome, from the same code that
//! decides requests.
//!
//! The request path decides through [`Quiet`], whose hooks are empty and which stops at the
//! first failed rule; [`Steps`] records every rule of every record instead. Both drive one
//! generic function, so what `check` reports is what a sidecar decides, not a copy of it.
//! Owns no policy: the rules themselves live in `policy`.

use serde::Serialize;

use super::DenyReason;
use crate::approval::{ApprovalRecord, ExceptionRecord};

/// One rule of the decision, in the order it is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The caller's token is present, verifies, and its issuer's keys are fresh.
    Caller,
    /// The route is a door this sidecar opens.
    Route,
    /// The request names (or defaults to) a model this sidecar serves.
    Model,
    /// The model server reports serving it (when probed).
    Server,
    /// The served artefact's digest is known.
    Artefact,
    /// The registry answered within its staleness bound and holds records for the digest.
    Registry,
    /// The registry has not revoked the digest as a whole.
    DigestRevoked,
    /// At least one record for the digest verified.
    Records,
    /// The record's ID is not revoked.
    RecordRevoked,
    /// The record is already valid (`nbf`, else `iat`).
    NotBefore,
    /// The record has not expired (`exp`).
    Expiry,
    /// The record is for this model (`sub`).
    RecordModel,
    /// The Ollama digest the record pins is the one the server reports.
    OllamaDigest,
    /// The artefact carries a valid signature by the record's signer.
    ModelSigner,
    /// This deployment's workload identity is in the record's `workloads`.
    Workload,
    /// The record's tier is configured.
    RecordTier,
    /// One evidence kind a tier requires is present with verdict `pass` (or waived).
    Evidence,
    /// The record is valid no longer than a tier allows.
    Lifetime,
    /// A tier confines itself to some workloads, and this one is among them.
    TierWorkloads,
    /// At least one signer is a configured approver in scope for this model and tier.
    Signers,
    /// The tiers' quorum roles are held by distinct in-scope signers (or waived).
    Quorum,
    /// The caller is in the record's `callers`.
    Callers,
    /// An adapter's record pins the digest its base model is served with.
    BaseDigest,
    /// An adapter's base model is allowed for the caller too.
    Base,
}

impl Rule {
    pub const fn as_str(self) -> &'static str {
        match self {
            Rule::Caller => "caller",
            Rule::Route => "route",
            Rule::Model => "model",
            Rule::Server => "server",
            Rule::Artefact => "artefact",
            Rule::Registry => "registry",
            Rule::DigestRevoked => "digest_revoked",
            Rule::Records => "records",
            Rule::RecordRevoked => "record_revoked",
            Rule::NotBefore => "not_before",
            Rule::Expiry => "expiry",
            Rule::RecordModel => "record_model",
            Rule::OllamaDigest => "ollama_digest",
            Rule::ModelSigner => "model_signer",
            Rule::Workload => "workload",
            Rule::RecordTier => "record_tier",
            Rule::Evidence => "evidence",
            Rule::Lifetime => "lifetime",
            Rule::TierWorkloads => "tier_workloads",
            Rule::Signers => "signers",
            Rule::Quorum => "quorum",
            Rule::Callers => "callers",
            Rule::BaseDigest => "base_digest",
            Rule::Base => "base",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one rule came out.
#[derive(Clone, Copy, Debug)]
pub enum Outcome<'a> {
    Pass,
    /// Not met, but an exception in force waives it.
    Waived(&'a ExceptionRecord),
    Fail(DenyReason, &'static str),
    /// Not applied: it does not concern this record or deployment (no tier limit, no pinned
    /// signer), or what it needs failed before it.
    Skipped(&'static str),
}

/// What watches the decision. The request path's [`Quiet`] does nothing and stops at the
/// first failure; a recorder goes on and keeps every step.
pub trait Trace {
    /// Go on past a failed rule, to report every rule of every record.
    const EVERY_RULE: bool;

    /// The rules after this concern `record`, the `index`th of the digest's records (newest
    /// first), until the next call.
    fn record(&mut self, index: usize, record: &ApprovalRecord);

    /// One rule's outcome; `about` names what it was applied to when a rule is applied more
    /// than once (an evidence kind, a tier), else "".
    fn step(&mut self, rule: Rule, about: &str, outcome: Outcome<'_>);
}

/// The request path's tracer: no hooks, stop at the first failure.
pub struct Quiet;

impl Trace for Quiet {
    const EVERY_RULE: bool = false;

    #[inline(always)]
    fn record(&mut self, _: usize, _: &ApprovalRecord) {}

    #[inline(always)]
    fn step(&mut self, _: Rule, _: &str, _: Outcome<'_>) {}
}

/// One applied rule, as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    pub rule: Rule,
    /// The record's ID (`jti`) when the rule is about a record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// Which of the digest's records (newest first, from 0): IDs may repeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// What the rule was applied to (an evidence kind, a tier), when applied more than once.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub about: String,
    /// `pass`, `waived`, `fail` or `skipped`.
    pub outcome: &'static str,
    /// The deny reason of a failed rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Why it failed or was skipped; for a waiver, the exception's ID and ticket.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub why: String,
}

impl Step {
    pub fn failed(&self) -> bool {
        self.outcome == "fail"
    }
}

/// A tracer that keeps every step.
#[derive(Debug, Default)]
pub struct Steps {
    pub steps: Vec<Step>,
    current: Option<(usize, String)>,
}

impl Steps {
    pub fn into_steps(self) -> Vec<Step> {
        self.steps
    }
}

impl Trace for Steps {
    const EVERY_RULE: bool = true;

    fn record(&mut self, index: usize, record: &ApprovalRecord) {
        self.current = Some((index, record.claims.jti.clone()));
    }

    fn step(&mut self, rule: Rule, about: &str, outcome: Outcome<'_>) {
        let (outcome, reason, why) = match outcome {
            Outcome::Pass => ("pass", None, String::new()),
            Outcome::Waived(e) => (
                "waived",
                None,
                format!(
                    "waived by exception {} (ticket {}, until {})",
                    e.claims.jti, e.claims.ticket, e.claims.exp
                ),
            ),
            Outcome::Fail(reason, detail) => ("fail", Some(reason.as_str()), detail.to_string()),
            Outcome::Skipped(why) => ("skipped", None, why.to_string()),
        };
        self.steps.push(Step {
            rule,
            record: self.current.as_ref().map(|c| c.1.clone()),
            index: self.current.as_ref().map(|c| c.0),
            about: about.to_string(),
            outcome,
            reason,
            why,
        });
    }
}
