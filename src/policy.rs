//! The decision: a pure, synchronous function from (served artefact, registry entry, this
//! workload's identity, caller, request) to Allow or Deny with one reason from a closed enum.
//!
//! No I/O, no clock reads, no crypto: every input is already verified and the time is passed
//! in, so the whole rule set is a table of cases (see `tests.rs`). How a reason is answered
//! (HTTP status and JSON body) is the request path's, in one place: `proxy::deny`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::approval::{identity_matches, ApprovalRecord, ExceptionRecord, Waiver};
use crate::digest::Digest;
use crate::identity::Caller;
use crate::registry::{ExceptionCandidate, RegistryEntry};

pub mod config;
pub mod trace;

use trace::{Outcome, Quiet, Rule, Steps, Trace};

/// Why a request was (or in dry-run would have been) blocked. Closed, so it can be a metric
/// label; the strings are part of the public contract (JSON bodies, audit log, metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DenyReason {
    TokenMissing,
    TokenInvalid,
    CallerNotAllowed,
    ArtefactUnverified,
    ArtefactUnmanaged,
    ApprovalExpired,
    ApprovalRevoked,
    ApprovalInvalid,
    DeploymentNotBound,
    ModelMismatch,
    TrustDataUnavailable,
    /// Several models are served and the request names none of them.
    ModelRequired,
    /// The request body that should name the model is not a JSON object with a string `model`.
    RequestInvalid,
    /// The request body that should name the model is larger than the inspection limit.
    RequestTooLarge,
    /// No configured API profile lists this route (method and canonical path), or it is a
    /// management route no `[[routing.allow]]` opens to this caller.
    RouteNotAllowed,
}

impl DenyReason {
    pub const ALL: [DenyReason; 15] = [
        DenyReason::TokenMissing,
        DenyReason::TokenInvalid,
        DenyReason::CallerNotAllowed,
        DenyReason::ArtefactUnverified,
        DenyReason::ArtefactUnmanaged,
        DenyReason::ApprovalExpired,
        DenyReason::ApprovalRevoked,
        DenyReason::ApprovalInvalid,
        DenyReason::DeploymentNotBound,
        DenyReason::ModelMismatch,
        DenyReason::TrustDataUnavailable,
        DenyReason::ModelRequired,
        DenyReason::RequestInvalid,
        DenyReason::RequestTooLarge,
        DenyReason::RouteNotAllowed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            DenyReason::TokenMissing => "token_missing",
            DenyReason::TokenInvalid => "token_invalid",
            DenyReason::CallerNotAllowed => "caller_not_allowed",
            DenyReason::ArtefactUnverified => "artefact_unverified",
            DenyReason::ArtefactUnmanaged => "artefact_unmanaged",
            DenyReason::ApprovalExpired => "approval_expired",
            DenyReason::ApprovalRevoked => "approval_revoked",
            DenyReason::ApprovalInvalid => "approval_invalid",
            DenyReason::DeploymentNotBound => "deployment_not_bound",
            DenyReason::ModelMismatch => "model_mismatch",
            DenyReason::TrustDataUnavailable => "trust_data_unavailable",
            DenyReason::ModelRequired => "model_required",
            DenyReason::RequestInvalid => "request_invalid",
            DenyReason::RequestTooLarge => "request_too_large",
            DenyReason::RouteNotAllowed => "route_not_allowed",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the sidecar knows about the served artefact right now.
#[derive(Clone, Copy, Debug)]
pub enum ArtefactView<'a> {
    /// Still hashing, re-hashing after a change, or the directory cannot be hashed.
    Unverified,
    Ready {
        digest: &'a Digest,
        /// The pinned signer whose valid OMS signature covers the directory, if any.
        signer: Option<&'a str>,
    },
}

/// What the registry knows about that digest.
#[derive(Clone, Copy, Debug)]
pub enum ApprovalView<'a> {
    Entry(Option<&'a RegistryEntry>),
    /// The registry has not answered within its staleness bound.
    Unavailable,
}

/// The outcome of verifying the caller's credentials.
#[derive(Clone, Copy, Debug)]
pub enum CallerView<'a> {
    Missing,
    Invalid,
    /// The issuer's keys are unavailable past their staleness bound.
    Unavailable,
    Verified(&'a Caller),
}

/// Which of this sidecar's models the request is decided against, as routing resolved it.
#[derive(Clone, Copy, Debug)]
pub enum ModelView<'a> {
    /// A configured model: the one the request names, or the only one.
    Served {
        /// The configured model name; records must carry it in `sub`.
        name: &'a str,
        /// What the model server itself reports about it.
        server: ServerView<'a>,
    },
    /// The request names a model this sidecar does not serve.
    NotServed,
    /// Several models are served and the request names none.
    Unnamed,
    /// The body that should name the model is not a JSON object with a string `model`.
    BodyInvalid,
    /// The body that should name the model is over the inspection limit.
    BodyTooLarge,
    /// The route is not a door this sidecar opens (to this caller).
    RouteNotAllowed { detail: &'static str },
}

/// What the upstream probe last learnt from the model server about one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerView<'a> {
    /// No probe is configured.
    NotProbed,
    /// The probe has not answered yet.
    Pending,
    /// The server reports serving the model (with its Ollama manifest digest, when the
    /// server is Ollama).
    Serving { ollama_digest: Option<&'a str> },
    /// The server answered and does not serve the model under this name.
    NotServing,
    /// The server did not answer the probe (down, slow, or an unexpected answer).
    Unreachable,
}

/// Everything one decision looks at.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub caller: CallerView<'a>,
    /// The model the request is for.
    pub model: ModelView<'a>,
    /// That model's artefact.
    pub artefact: ArtefactView<'a>,
    pub approval: ApprovalView<'a>,
    /// Seconds since the Unix epoch.
    pub now: u64,
}

/// What an exposure tier requires of a record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TierRule {
    /// Evidence kinds that must be present with verdict `pass`.
    pub required_evidence: Vec<String>,
    /// Roles, each to be held by a distinct in-scope approver who signed the record (e.g.
    /// `["owner", "security"]`). Empty: one in-scope approver suffices.
    pub quorum: Vec<String>,
    /// The longest a record may be valid (`exp` minus `nbf`), in seconds; a record valid
    /// longer is refused, not shortened.
    pub max_lifetime: Option<u64>,
    /// Workload identities this tier may run on (exact, or a prefix ending in `*`); empty:
    /// any. Confines, say, an experimental tier to sandbox namespaces.
    pub workloads: Vec<String>,
    /// Whether an exception may waive one of this tier's requirements. Off unless the tier
    /// says so: an exception weakens the tier, so it is opted into, never inherited.
    pub exceptions: bool,
    /// The longest an exception may be valid (`exp` minus `nbf`), in seconds; one valid
    /// longer waives nothing. Meaningful only with `exceptions`.
    pub max_exception_lifetime: u64,
    /// Roles one of which the exception's approver must hold; empty: any approver in scope.
    pub exception_roles: Vec<String>,
}

/// The tier every deployment without `[workload] tier` has, always configured.
pub const DEFAULT_TIER: &str = "default";

/// A configured approver, as the policy sees it: who, in which roles, and what it may
/// approve. From configuration only (`[[trust.approvers]]`), never from a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApproverScope {
    pub name: String,
    pub roles: Vec<String>,
    /// Model names it may approve (exact, or a prefix ending in `*`).
    pub models: Vec<String>,
    /// Tiers it may approve (exact, or a prefix ending in `*`): the record's and the
    /// deployment's tier must both match.
    pub tiers: Vec<String>,
}

impl ApproverScope {
    fn covers(&self, model: &str, record_tier: &str, deployment_tier: &str) -> bool {
        identity_matches(&self.models, model)
            && identity_matches(&self.tiers, record_tier)
            && identity_matches(&self.tiers, deployment_tier)
    }
}

/// The static half of the policy, from configuration. (The model a request is for comes
/// with each request, in [`Input::model`]: one sidecar may serve several.)
#[derive(Clone, Debug)]
pub struct Policy {
    /// This deployment's workload identity; must be in a record's `workloads`.
    pub workload_identity: String,
    /// Every configured tier (always including [`DEFAULT_TIER`]), by exact name.
    pub tiers: HashMap<String, TierRule, crate::base::FastHash>,
    /// This deployment's tier (`[workload] tier`, else [`DEFAULT_TIER`]) and its rule: it
    /// applies to every record, whatever tier the record claims.
    pub tier: String,
    pub tier_rule: TierRule,
    /// Approvers by key ID: a record's signer counts only through the approver its key
    /// belongs to. Keys absent here approve nothing.
    pub approvers: HashMap<String, Arc<ApproverScope>, crate::base::FastHash>,
    /// The issuers (token `iss`, or `x509-svid` for certificate callers) whose callers a
    /// bare caller pattern matches: every issuer not configured `qualified = true`.
    /// Configuration guarantees these issuers cannot assert the same names; a caller of
    /// any other issuer matches only patterns qualified with its `iss`.
    pub bare_issuers: Vec<Arc<str>>,
}

impl Policy {
    /// Do bare caller patterns apply to callers vouched for by `iss`?
    #[inline]
    pub fn bare_ok(&self, iss: &str) -> bool {
        self.bare_issuers.iter().any(|i| &**i == iss)
    }
}

/// The decision.
#[derive(Clone, Debug)]
pub enum Decision {
    Allow {
        record: Arc<ApprovalRecord>,
        /// The exceptions the record needed (empty: the record met its tiers alone).
        exceptions: Vec<Arc<ExceptionRecord>>,
    },
    /// A route `[[routing.allow]]` opens to this caller: allowed without a record, and
    /// always audited.
    Opened,
    Deny {
        reason: DenyReason,
        /// A fixed phrase for the audit log (never a label, never caller-controlled).
        detail: &'static str,
        /// The record the denial is about, when there is one.
        record: Option<Arc<ApprovalRecord>>,
    },
}

impl Decision {
    pub fn deny(reason: DenyReason, detail: &'static str) -> Decision {
        Decision::Deny {
            reason,
            detail,
            record: None,
        }
    }

    pub fn record(&self) -> Option<&Arc<ApprovalRecord>> {
        match self {
            Decision::Allow { record, .. } => Some(record),
            Decision::Opened => None,
            Decision::Deny { record, .. } => record.as_ref(),
        }
    }

    /// The exceptions an allowed request needed (empty otherwise).
    pub fn exceptions(&self) -> &[Arc<ExceptionRecord>] {
        match self {
            Decision::Allow { exceptions, .. } => exceptions,
            Decision::Opened | Decision::Deny { .. } => &[],
        }
    }

    pub fn reason(&self) -> Option<DenyReason> {
        match self {
            Decision::Allow { .. } | Decision::Opened => None,
            Decision::Deny { reason, .. } => Some(*reason),
        }
    }
}

/// Decides one request.
pub fn decide(policy: &Policy, input: &Input<'_>) -> Decision {
    decide_with(policy, input, &mut Quiet)
}

/// Decides one request and records every rule of every record in `steps` (for `check` and
/// `explain`). The decision is exactly [`decide`]'s: the same code, watched.
pub fn decide_traced(policy: &Policy, input: &Input<'_>, steps: &mut Steps) -> Decision {
    decide_with(policy, input, steps)
}

/// A rule that ends the decision before any record is looked at.
fn stop<T: Trace>(t: &mut T, rule: Rule, reason: DenyReason, detail: &'static str) -> Decision {
    t.step(rule, "", Outcome::Fail(reason, detail));
    Decision::deny(reason, detail)
}

fn decide_with<T: Trace>(policy: &Policy, input: &Input<'_>, t: &mut T) -> Decision {
    let caller = match input.caller {
        CallerView::Missing => {
            return stop(t, Rule::Caller, DenyReason::TokenMissing, "no bearer token")
        }
        CallerView::Invalid => {
            return stop(
                t,
                Rule::Caller,
                DenyReason::TokenInvalid,
                "token failed verification",
            )
        }
        CallerView::Unavailable => {
            return stop(
                t,
                Rule::Caller,
                DenyReason::TrustDataUnavailable,
                "issuer keys unavailable past their staleness bound",
            )
        }
        CallerView::Verified(c) => c,
    };
    t.step(Rule::Caller, "", Outcome::Pass);
    let (model, server) = match input.model {
        ModelView::Served { name, server } => (name, server),
        ModelView::NotServed => {
            return stop(
                t,
                Rule::Model,
                DenyReason::ModelMismatch,
                "request names a model this sidecar does not serve",
            )
        }
        ModelView::Unnamed => {
            return stop(
                t,
                Rule::Model,
                DenyReason::ModelRequired,
                "several models are served and the request names none",
            )
        }
        ModelView::BodyInvalid => {
            return stop(
                t,
                Rule::Model,
                DenyReason::RequestInvalid,
                "request body is not a JSON object with a string model",
            )
        }
        ModelView::BodyTooLarge => {
            return stop(
                t,
                Rule::Model,
                DenyReason::RequestTooLarge,
                "request body is over the inspection limit",
            )
        }
        ModelView::RouteNotAllowed { detail } => {
            return stop(t, Rule::Route, DenyReason::RouteNotAllowed, detail)
        }
    };
    t.step(Rule::Model, model, Outcome::Pass);
    match server {
        ServerView::NotServing => {
            return stop(
                t,
                Rule::Server,
                DenyReason::ModelMismatch,
                "the model server does not report serving this model",
            )
        }
        ServerView::NotProbed => t.step(
            Rule::Server,
            "",
            Outcome::Skipped("no probe of the model server is configured"),
        ),
        ServerView::Serving { .. } => t.step(Rule::Server, "", Outcome::Pass),
        ServerView::Pending | ServerView::Unreachable => t.step(
            Rule::Server,
            "",
            Outcome::Skipped("the probe has no answer from the model server"),
        ),
    }
    let signer = match input.artefact {
        ArtefactView::Unverified => {
            return stop(
                t,
                Rule::Artefact,
                DenyReason::ArtefactUnverified,
                "served artefact digest not yet known",
            )
        }
        ArtefactView::Ready { signer, .. } => signer,
    };
    t.step(Rule::Artefact, "", Outcome::Pass);
    let entry = match input.approval {
        ApprovalView::Unavailable => {
            return stop(
                t,
                Rule::Registry,
                DenyReason::TrustDataUnavailable,
                "registry unavailable past its staleness bound",
            )
        }
        ApprovalView::Entry(None) => {
            return stop(
                t,
                Rule::Registry,
                DenyReason::ArtefactUnmanaged,
                "no approval record for the served digest",
            )
        }
        ApprovalView::Entry(Some(e)) => e,
    };
    t.step(Rule::Registry, "", Outcome::Pass);
    if entry.revoked {
        let detail = "the registry revoked the served digest";
        t.step(
            Rule::DigestRevoked,
            "",
            Outcome::Fail(DenyReason::ApprovalRevoked, detail),
        );
        return Decision::Deny {
            reason: DenyReason::ApprovalRevoked,
            detail,
            record: entry.records.first().map(|c| c.record.clone()),
        };
    }
    if entry.records.is_empty() {
        return if entry.invalid.is_empty() {
            stop(
                t,
                Rule::Records,
                DenyReason::ArtefactUnmanaged,
                "no approval record for the served digest",
            )
        } else {
            stop(
                t,
                Rule::Records,
                DenyReason::ApprovalInvalid,
                "approval record for the served digest failed verification",
            )
        };
    }
    // Records are newest first. Any record that allows wins; otherwise the newest one's
    // reason is the one reported. A recorder goes through every record.
    let mut allowed = None;
    let mut first_denial = None;
    for (i, candidate) in entry.records.iter().enumerate() {
        t.record(i, &candidate.record);
        let checked = check_record(
            policy,
            model,
            server,
            candidate,
            &entry.exceptions,
            caller,
            signer,
            input.now,
            t,
        );
        match checked {
            Ok(exceptions) => {
                let allow = Decision::Allow {
                    record: candidate.record.clone(),
                    exceptions,
                };
                if !T::EVERY_RULE {
                    return allow;
                }
                allowed.get_or_insert(allow);
            }
            Err((reason, detail)) => {
                first_denial.get_or_insert(Decision::Deny {
                    reason,
                    detail,
                    record: Some(candidate.record.clone()),
                });
            }
        }
    }
    // `records` is non-empty, so at least one record allowed or was denied.
    allowed.or(first_denial).unwrap_or_else(|| {
        Decision::deny(
            DenyReason::ArtefactUnmanaged,
            "no applicable approval record",
        )
    })
}

/// An adapter's decision, from its own (`adapter`) and, when that allows, its base's:
/// `base()` decides the base model for the same caller and says which digest the base is
/// served with. The adapter's record must pin that digest, and the base's records must
/// allow the caller too; exceptions the base's record needed are the request's as well.
pub fn decide_adapter(
    adapter: Decision,
    base: impl FnOnce() -> (Decision, Option<Digest>),
) -> Decision {
    let Decision::Allow { record, .. } = &adapter else {
        return adapter;
    };
    if record.claims.artefact.base_digest.is_none() {
        return adapter_denial(record, NO_BASE_PIN);
    }
    let (base_decision, served) = base();
    if base_decision.reason().is_some() {
        return base_decision;
    }
    if let Err(why) = base_pin(record, served) {
        return adapter_denial(record, why);
    }
    match (adapter, base_decision) {
        (
            Decision::Allow {
                record,
                mut exceptions,
            },
            Decision::Allow {
                exceptions: base, ..
            },
        ) if !base.is_empty() => {
            exceptions.extend(base);
            Decision::Allow { record, exceptions }
        }
        (adapter, _) => adapter,
    }
}

const NO_BASE_PIN: (DenyReason, &str) = (
    DenyReason::ApprovalInvalid,
    "adapter record pins no base digest",
);

/// Does an adapter's record pin the digest its base is served with (`served`)?
pub fn base_pin(
    record: &ApprovalRecord,
    served: Option<Digest>,
) -> Result<(), (DenyReason, &'static str)> {
    match record.claims.artefact.base_digest {
        None => Err(NO_BASE_PIN),
        Some(pinned) if served == Some(pinned) => Ok(()),
        Some(_) => Err((
            DenyReason::ModelMismatch,
            "adapter record pins another base digest than the one served",
        )),
    }
}

fn adapter_denial(
    record: &Arc<ApprovalRecord>,
    (reason, detail): (DenyReason, &'static str),
) -> Decision {
    Decision::Deny {
        reason,
        detail,
        record: Some(record.clone()),
    }
}

/// Checks one record; on success, the exceptions it needed (usually none: no allocation).
/// With a recorder (`T::EVERY_RULE`) every rule is applied and reported, and the first
/// failure is returned at the end; otherwise the first failure returns at once.
#[allow(clippy::too_many_arguments)]
fn check_record<T: Trace>(
    policy: &Policy,
    model: &str,
    server: ServerView<'_>,
    candidate: &crate::registry::Candidate,
    exceptions: &[ExceptionCandidate],
    caller: &Caller,
    signer: Option<&str>,
    now: u64,
    t: &mut T,
) -> Result<Vec<Arc<ExceptionRecord>>, (DenyReason, &'static str)> {
    let record = &candidate.record;
    let claims = &record.claims;
    let mut first: Option<(DenyReason, &'static str)> = None;
    // Applies one rule: reports it, and on a failure either returns at once (the request
    // path) or remembers the first failure and goes on (a recorder).
    macro_rules! rule {
        ($rule:expr, $about:expr, $result:expr) => {
            match $result {
                Ok(()) => t.step($rule, $about, Outcome::Pass),
                Err(e) => {
                    let (reason, detail): (DenyReason, &'static str) = e;
                    t.step($rule, $about, Outcome::Fail(reason, detail));
                    if !T::EVERY_RULE {
                        return Err((reason, detail));
                    }
                    first.get_or_insert((reason, detail));
                }
            }
        };
    }
    rule!(Rule::RecordRevoked, "", {
        if candidate.revoked {
            Err((DenyReason::ApprovalRevoked, "approval record is revoked"))
        } else {
            Ok(())
        }
    });
    rule!(Rule::NotBefore, "", {
        if now < record.not_before() {
            Err((
                DenyReason::ApprovalExpired,
                "approval record not yet valid (judged on the wall clock at the record's time)",
            ))
        } else {
            Ok(())
        }
    });
    rule!(Rule::Expiry, "", {
        if now >= claims.exp {
            Err((
                DenyReason::ApprovalExpired,
                "approval record expired (judged on the wall clock at the record's time)",
            ))
        } else {
            Ok(())
        }
    });
    rule!(Rule::RecordModel, "", {
        if claims.sub != model {
            Err((
                DenyReason::ModelMismatch,
                "approval record is for another model",
            ))
        } else {
            Ok(())
        }
    });
    match &claims.artefact.ollama_digest {
        None => t.step(
            Rule::OllamaDigest,
            "",
            Outcome::Skipped("the record pins no Ollama digest"),
        ),
        Some(want) => rule!(
            Rule::OllamaDigest,
            "",
            match server {
                ServerView::Serving {
                    ollama_digest: Some(got),
                } if same_ollama_digest(got, want) => Ok(()),
                ServerView::Serving {
                    ollama_digest: Some(_),
                } => Err((
                    DenyReason::ModelMismatch,
                    "the model server reports another Ollama digest than the record's",
                )),
                _ => Err((
                    DenyReason::ArtefactUnverified,
                    "the record pins an Ollama digest the server has not reported",
                )),
            }
        ),
    }
    match &claims.artefact.signer {
        None => t.step(
            Rule::ModelSigner,
            "",
            Outcome::Skipped("the record names no model signer"),
        ),
        Some(required) => rule!(Rule::ModelSigner, "", {
            if signer != Some(required.as_str()) {
                Err((
                    DenyReason::ApprovalInvalid,
                    "artefact is not signed by the record's signer",
                ))
            } else {
                Ok(())
            }
        }),
    }
    rule!(Rule::Workload, "", {
        if !identity_matches(&claims.workloads, &policy.workload_identity) {
            Err((
                DenyReason::DeploymentNotBound,
                "this workload is not in the record's workloads",
            ))
        } else {
            Ok(())
        }
    });
    let record_rule = policy.tiers.get(&claims.tier);
    rule!(
        Rule::RecordTier,
        &claims.tier,
        record_rule.map(|_| ()).ok_or((
            DenyReason::ApprovalInvalid,
            "record names a tier that is not configured",
        ))
    );
    let mut used: Vec<Arc<ExceptionRecord>> = Vec::new();
    if let Some(record_rule) = record_rule {
        let passed = |kind: &String| {
            claims
                .evidence
                .iter()
                .any(|e| &e.kind == kind && e.verdict.eq_ignore_ascii_case("pass"))
        };
        let waivers = Waivers {
            policy,
            model,
            record,
            record_rule,
            exceptions,
            now,
        };
        let required = policy
            .tier_rule
            .required_evidence
            .iter()
            .chain(&record_rule.required_evidence);
        for kind in required {
            if passed(kind) {
                t.step(Rule::Evidence, kind, Outcome::Pass);
                continue;
            }
            let imposed = [
                policy.tier_rule.required_evidence.contains(kind),
                record_rule.required_evidence.contains(kind),
            ];
            match waivers.find(imposed, |w| matches!(w, Waiver::Evidence(k) if k == kind)) {
                Ok(e) => {
                    t.step(Rule::Evidence, kind, Outcome::Waived(e));
                    use_exception(&mut used, e);
                }
                Err(why) => rule!(
                    Rule::Evidence,
                    kind,
                    Err(why.unwrap_or((
                        DenyReason::ApprovalInvalid,
                        "record lacks evidence its tier requires",
                    )))
                ),
            }
        }
        // Each tier's own rules, the deployment's first: the longest lifetime, then the
        // workloads it may run on.
        for (name, tier) in [
            (&policy.tier, &policy.tier_rule),
            (&claims.tier, record_rule),
        ] {
            match tier.max_lifetime {
                None => t.step(
                    Rule::Lifetime,
                    name,
                    Outcome::Skipped("the tier sets no maximum lifetime"),
                ),
                Some(max) => rule!(Rule::Lifetime, name, {
                    if claims.exp.saturating_sub(record.not_before()) > max {
                        Err((
                            DenyReason::ApprovalInvalid,
                            "record is valid longer than its tier allows",
                        ))
                    } else {
                        Ok(())
                    }
                }),
            }
            if tier.workloads.is_empty() {
                t.step(
                    Rule::TierWorkloads,
                    name,
                    Outcome::Skipped("the tier runs on any workload"),
                );
            } else {
                rule!(Rule::TierWorkloads, name, {
                    if identity_matches(&tier.workloads, &policy.workload_identity) {
                        Ok(())
                    } else {
                        Err((
                            DenyReason::DeploymentNotBound,
                            "this workload may not run a model of this tier",
                        ))
                    }
                });
            }
        }
        // Reports its own rules (signers, quorum).
        if let Err(e) = check_signers(policy, model, record, record_rule, &waivers, &mut used, t) {
            if !T::EVERY_RULE {
                return Err(e);
            }
            first.get_or_insert(e);
        }
    } else {
        for rule in [
            Rule::Evidence,
            Rule::Lifetime,
            Rule::TierWorkloads,
            Rule::Signers,
            Rule::Quorum,
        ] {
            t.step(
                rule,
                "",
                Outcome::Skipped("the record's tier is not configured"),
            );
        }
    }
    let bare_ok = policy.bare_ok(&caller.iss);
    rule!(Rule::Callers, "", {
        if claims
            .callers
            .iter()
            .any(|p| p.matches(&caller.iss, &caller.sub, bare_ok))
        {
            Ok(())
        } else {
            Err((
                DenyReason::CallerNotAllowed,
                "caller is not in the record's callers",
            ))
        }
    });
    match first {
        Some(e) => Err(e),
        None => Ok(used),
    }
}

fn use_exception(used: &mut Vec<Arc<ExceptionRecord>>, e: &Arc<ExceptionRecord>) {
    if !used.iter().any(|u| Arc::ptr_eq(u, e)) {
        used.push(e.clone());
    }
}

// === Exceptions ===

/// The exceptions the registry holds for the served digest, seen from one record.
struct Waivers<'a> {
    policy: &'a Policy,
    model: &'a str,
    record: &'a ApprovalRecord,
    record_rule: &'a TierRule,
    exceptions: &'a [ExceptionCandidate],
    now: u64,
}

impl<'a> Waivers<'a> {
    /// The first exception in force that waives what `waives` accepts for this record.
    /// `imposed`: whether the deployment's tier and the record's tier (in that order) impose
    /// the requirement; each that does must allow the exception.
    /// `Err(None)`: no exception for this record waives it (one for another model, version
    /// or digest is ignored); `Err(Some(..))`: one does but may not be used, and why.
    fn find(
        &self,
        imposed: [bool; 2],
        waives: impl Fn(&Waiver) -> bool,
    ) -> Result<&'a Arc<ExceptionRecord>, Option<(DenyReason, &'static str)>> {
        let mut why = None;
        for c in self.exceptions {
            let e = &c.exception;
            let claims = &e.claims;
            if !waives(&claims.waives)
                || claims.sub != self.model
                || claims.version_id != self.record.claims.version_id
                || claims.artefact.digest != self.record.claims.artefact.digest
            {
                continue;
            }
            match self.usable(c, imposed) {
                Ok(()) => return Ok(e),
                Err(w) => {
                    why.get_or_insert(w);
                }
            }
        }
        Err(why)
    }

    /// Whether an exception that applies to this record may be used now, under the rules
    /// of the tiers that impose what it waives.
    fn usable(
        &self,
        c: &ExceptionCandidate,
        imposed: [bool; 2],
    ) -> Result<(), (DenyReason, &'static str)> {
        let e = &c.exception;
        let tiers = [&self.policy.tier_rule, self.record_rule];
        let mut rules = tiers
            .iter()
            .zip(imposed)
            .filter_map(|(r, on)| on.then_some(*r));
        if c.revoked {
            return Err((DenyReason::ApprovalRevoked, "the exception is revoked"));
        }
        if !rules.clone().all(|r| r.exceptions) {
            return Err((
                DenyReason::ApprovalInvalid,
                "an exception was offered but the tier allows none",
            ));
        }
        if rules
            .clone()
            .any(|r| e.lifetime() > r.max_exception_lifetime)
        {
            return Err((
                DenyReason::ApprovalInvalid,
                "exception is valid longer than its tier allows",
            ));
        }
        let tier = &self.record.claims.tier;
        let in_scope = self.policy.approvers.get(&e.kid).is_some_and(|a| {
            a.covers(self.model, tier, &self.policy.tier)
                && rules.all(|r| {
                    r.exception_roles.is_empty()
                        || a.roles.iter().any(|x| r.exception_roles.contains(x))
                })
        });
        if !in_scope {
            return Err((
                DenyReason::ApprovalInvalid,
                "exception signed outside its approvers' scope (model, tier or role)",
            ));
        }
        if self.now < e.not_before() {
            return Err((DenyReason::ApprovalExpired, "exception not yet valid"));
        }
        if self.now >= e.claims.exp {
            return Err((DenyReason::ApprovalExpired, "exception expired"));
        }
        Ok(())
    }
}

/// The record's signers, through their configured approvers: at least one in scope for this
/// model at the record's and the deployment's tier, and the quorum of both tiers met by
/// distinct in-scope approvers (two keys of one approver count once).
/// A quorum role no signer can fill may be waived by an exception for that role (recorded
/// in `used`); at least one in-scope approver must still have signed.
fn check_signers<T: Trace>(
    policy: &Policy,
    model: &str,
    record: &ApprovalRecord,
    record_rule: &TierRule,
    waivers: &Waivers<'_>,
    used: &mut Vec<Arc<ExceptionRecord>>,
    t: &mut T,
) -> Result<(), (DenyReason, &'static str)> {
    let tier = &record.claims.tier;
    let scoped = |kid: &String| {
        policy
            .approvers
            .get(kid)
            .filter(|a| a.covers(model, tier, &policy.tier))
    };
    let fail = |t: &mut T, rule: Rule, (reason, detail): (DenyReason, &'static str)| {
        t.step(rule, "", Outcome::Fail(reason, detail));
        Err((reason, detail))
    };
    if policy.tier_rule.quorum.is_empty() && record_rule.quorum.is_empty() {
        // The usual case: no allocation.
        if record.signers.iter().any(|k| scoped(k).is_some()) {
            t.step(Rule::Signers, "", Outcome::Pass);
            t.step(
                Rule::Quorum,
                "",
                Outcome::Skipped("neither tier sets a quorum"),
            );
            return Ok(());
        }
        return fail(t, Rule::Signers, no_scoped_signer(policy, record));
    }
    let mut distinct: Vec<&ApproverScope> = Vec::with_capacity(record.signers.len());
    for a in record.signers.iter().filter_map(scoped) {
        if !distinct.iter().any(|d| d.name == a.name) {
            distinct.push(a);
        }
    }
    if distinct.is_empty() {
        return fail(t, Rule::Signers, no_scoped_signer(policy, record));
    }
    t.step(Rule::Signers, "", Outcome::Pass);
    let mut roles: Vec<&str> = policy.tier_rule.quorum.iter().map(String::as_str).collect();
    for r in &record_rule.quorum {
        if !roles.contains(&r.as_str()) {
            roles.push(r);
        }
    }
    if assign(&roles, &distinct, 0) {
        t.step(Rule::Quorum, "", Outcome::Pass);
        return Ok(());
    }
    // The roles an exception may waive; try the smallest sets of waivers first, so no
    // exception is used (and audited) that the record did not need.
    let mut why = None;
    let mut waivable: Vec<(&str, &Arc<ExceptionRecord>)> = Vec::new();
    for role in &roles {
        let imposed = [
            policy.tier_rule.quorum.iter().any(|r| r == role),
            record_rule.quorum.iter().any(|r| r == role),
        ];
        match waivers.find(imposed, |w| matches!(w, Waiver::Role(r) if r == role)) {
            Ok(e) => waivable.push((role, e)),
            Err(w) => {
                if why.is_none() {
                    why = w;
                }
            }
        }
    }
    waivable.truncate(16);
    let mut masks: Vec<u32> = (1..1u32 << waivable.len()).collect();
    masks.sort_by_key(|m| m.count_ones());
    for mask in masks {
        let chosen = |i: usize| mask & (1 << i) != 0;
        let rest: Vec<&str> = roles
            .iter()
            .copied()
            .filter(|r| {
                !waivable
                    .iter()
                    .enumerate()
                    .any(|(i, (w, _))| chosen(i) && w == r)
            })
            .collect();
        if assign(&rest, &distinct, 0) {
            for (role, e) in waivable
                .iter()
                .enumerate()
                .filter(|(i, _)| chosen(*i))
                .map(|(_, w)| w)
            {
                t.step(Rule::Quorum, role, Outcome::Waived(e));
                use_exception(used, e);
            }
            return Ok(());
        }
    }
    fail(
        t,
        Rule::Quorum,
        why.unwrap_or((
            DenyReason::ApprovalInvalid,
            "quorum not met: the tier's roles need distinct approvers who signed",
        )),
    )
}

fn no_scoped_signer(policy: &Policy, record: &ApprovalRecord) -> (DenyReason, &'static str) {
    if record
        .signers
        .iter()
        .any(|k| policy.approvers.contains_key(k))
    {
        (
            DenyReason::ApprovalInvalid,
            "record signed outside its approvers' scope (model or tier)",
        )
    } else {
        (
            DenyReason::ApprovalInvalid,
            "record signed by a key of no configured approver",
        )
    }
}

/// Can each role get its own approver holding it? (Backtracking over a handful of roles;
/// `used` is a bit set of approvers already given a role.)
fn assign(roles: &[&str], approvers: &[&ApproverScope], used: u64) -> bool {
    let Some((role, rest)) = roles.split_first() else {
        return true;
    };
    approvers.iter().enumerate().take(64).any(|(i, a)| {
        used & (1 << i) == 0
            && a.roles.iter().any(|r| r == role)
            && assign(rest, approvers, used | (1 << i))
    })
}

/// Ollama digests compare as hex, with or without a `sha256:` prefix, in any case.
pub fn same_ollama_digest(a: &str, b: &str) -> bool {
    fn bare(d: &str) -> &str {
        d.strip_prefix("sha256:").unwrap_or(d)
    }
    bare(a).eq_ignore_ascii_case(bare(b))
}

#[cfg(test)]
mod tests;
