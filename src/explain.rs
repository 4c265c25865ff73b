//! `provgate explain`: replays one request's decision from its audit record, against the
//! deployment's configuration and the registry as far as the record allows, and prints the
//! chain (caller and issuer, route, model, digest, each record considered with its rules)
//! and the rule that refused, saying whether the replay reaches the record's reason.
//!
//! Owns the replay's inputs (what the record says, what it cannot say, what is read now
//! instead) and the report. It decides through the policy's traced decision, never a copy,
//! routes through the configured door table, and must not write the audit log or the
//! registry. Tokens and bodies are never logged: a denial about them is taken from the record
//! and said so.

pub mod find;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::approval::identity_matches;
use crate::check::Deployment;
use crate::config::Config;
use crate::digest::Digest;
use crate::identity::Caller;
use crate::policy::trace::{Step, Steps};
use crate::policy::{
    ApprovalView, ArtefactView, CallerView, Decision, DenyReason, Input, ModelView, Policy,
    ServerView,
};
use crate::proxy::routing::config::Found;
use crate::proxy::routing::profiles::{method_bit, Class, ModelAt};
use crate::registry::config::RegistrySource;
use crate::registry::RegistryEntry;

pub use self::find::{Location, Recorded};

/// Errors explaining a request (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not an audit request record: {0}")]
    Record(String),
    #[error("request ID {request_id} not found in {segments} segment(s) of {log}")]
    NotFound {
        request_id: String,
        log: String,
        segments: usize,
    },
    #[error("the record's time {0:?} is not an RFC 3339 time")]
    Time(String),
    #[error(transparent)]
    Deployment(#[from] crate::check::CheckError),
}

/// What a replay found, as printed (text or `--json`).
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub request_id: String,
    /// Where the record was found (absent for `--record`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<Location>,
    /// The configuration replayed against.
    pub config: PathBuf,
    /// What the audit record says.
    pub recorded: Recorded,
    pub caller: CallerPart,
    pub route: RoutePart,
    pub model: ModelPart,
    pub artefact: ArtefactPart,
    pub registry: RegistryPart,
    /// Every record considered for the digest, newest first.
    pub records: Vec<RecordPart>,
    /// Every rule applied, in order, from the policy's traced decision.
    pub steps: Vec<Step>,
    /// For an adapter whose own records allow: its base, decided for the same caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<BasePart>,
    pub replay: Outcome,
    /// Whether the replay reaches the record's decision, reason and detail.
    pub agrees: bool,
    /// What differs, and the likely cause, when it does not agree.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<String>,
    /// What the record could not say and where the replay took it from instead.
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct CallerPart {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The token's verification as replayed: `verified` (taken from the record's caller),
    /// `missing`, `invalid` or `keys_unavailable` (taken from the record's reason).
    pub token: &'static str,
    /// False when the outcome comes from the record, not from a replay.
    pub replayed: bool,
}

#[derive(Debug, Serialize)]
pub struct RoutePart {
    pub method: String,
    pub path: String,
    /// The door the path goes through (`METHOD-bits PATTERN`), when one is listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub door: Option<String>,
    /// `inference`, `list`, `free`, `manage` or `unlisted`.
    pub class: &'static str,
    /// The `[[routing.allow]]` rule that opens it to this caller, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened_by: Option<String>,
    /// The `[[routing.allow]]` rule for this route that does not open it to this caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_opened_by: Option<String>,
    /// Why the door refuses, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct ModelPart {
    /// The configured model the replay decides against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the request named, as recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested: Option<String>,
    /// For an adapter: its base model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ArtefactPart {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RegistryPart {
    /// `dir PATH`, `mlflow URL` or `http URL`.
    pub source: String,
    /// Records for the digest issued after the request's time, left out of the replay.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<RecordPart>,
    /// Records for the digest that failed verification now.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordPart {
    pub jti: String,
    pub version: String,
    pub signers: Vec<String>,
    pub iat: u64,
    pub exp: u64,
    /// Revoked by the current revocation list.
    pub revoked: bool,
}

/// An adapter's base model, decided as the sidecar decides it after the adapter's records.
#[derive(Debug, Serialize)]
pub struct BasePart {
    pub model: String,
    /// The digest it is decided against: the adapter record's pin.
    pub digest: String,
    pub registry: RegistryPart,
    pub records: Vec<RecordPart>,
    pub steps: Vec<Step>,
    pub replay: Outcome,
}

const BASE_MISMATCH: &str = "adapter record pins another base digest than the one served";
const NO_BASE_PIN: &str = "adapter record pins no base digest";

/// The replay's decision.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// `allow`, `opened` or `deny`.
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'static str>,
    /// The record the decision is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// The rule that refused (or, for an allow, none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
    /// Which rule was refused for which record, when a rule step names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub about: Option<String>,
}

/// Where the record comes from.
pub enum Source<'a> {
    /// Found by request ID in a log (a file with its rotated segments, a segment, or a
    /// directory of logs).
    Log { path: &'a Path, request_id: &'a str },
    /// Given whole.
    Record(Box<Recorded>),
}

/// Finds the record, loads the deployment and replays.
pub fn explain(config: &Path, source: Source<'_>) -> Result<Explanation, ExplainError> {
    let (recorded, found) = match source {
        Source::Record(r) => (*r, None),
        Source::Log { path, request_id } => {
            let (r, at) = find::find(path, request_id)?;
            (r, Some(at))
        }
    };
    let deployment = Deployment::load(config)?;
    replay(&deployment, recorded, found)
}

/// The record's time as Unix seconds (what the sidecar's `now` was).
fn seconds_of(time: &str) -> Result<u64, ExplainError> {
    let t = humantime::parse_rfc3339(time).map_err(|_| ExplainError::Time(time.to_string()))?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| ExplainError::Time(time.to_string()))
}

/// What the route replay resolved.
enum Target {
    /// A configured model (index).
    Model(usize),
    /// A routing refusal decided before any model.
    View(ModelView<'static>),
    /// Opened by `[[routing.allow]]`.
    Opened,
}

/// Replays one record against a loaded deployment.
pub fn replay(
    deployment: &Deployment,
    rec: Recorded,
    found: Option<Location>,
) -> Result<Explanation, ExplainError> {
    let config: &Config = &deployment.config;
    let policy: &Policy = &deployment.policy;
    let now = seconds_of(&rec.time)?;
    let reason = rec.reason.as_deref();
    let detail = rec.detail.as_deref().unwrap_or("");
    let mut notes: Vec<String> = vec![format!("now = the record's time, {} ({now})", rec.time)];
    if !rec.cut.is_empty() {
        let fields: Vec<&str> = rec.cut.keys().map(String::as_str).collect();
        notes.push(format!(
            "fields cut to their bound in the record ({}): the replay uses what was kept",
            fields.join(", ")
        ));
    }

    // === The caller ===
    let verified = match (&rec.caller_iss, &rec.caller_sub) {
        (Some(iss), Some(sub)) => Some(Caller {
            iss: Arc::from(iss.as_str()),
            sub: Arc::from(sub.as_str()),
            exp: u64::MAX,
            headers: None,
        }),
        _ => None,
    };
    let (caller_view, token) = match &verified {
        Some(c) => {
            notes.push(
                "caller: the record's caller_iss and caller_sub; tokens are never logged, so \
                 the token's verification is taken as it was"
                    .into(),
            );
            (CallerView::Verified(c), "verified")
        }
        None => {
            let (view, token) = match reason {
                Some("token_invalid") => (CallerView::Invalid, "invalid"),
                Some("trust_data_unavailable") if detail.contains("issuer keys") => {
                    (CallerView::Unavailable, "keys_unavailable")
                }
                _ => (CallerView::Missing, "missing"),
            };
            notes.push(format!(
                "caller: no verified caller in the record; a token denial cannot be replayed \
                 (tokens are never logged): the token is taken as {token}, from the record's \
                 reason {} ({detail})",
                reason.unwrap_or("-")
            ));
            (view, token)
        }
    };
    let caller = CallerPart {
        iss: rec.caller_iss.clone(),
        sub: rec.caller_sub.clone(),
        token,
        replayed: verified.is_some(),
    };

    // === The route ===
    let routing = &config.routing;
    let bit = http::Method::from_bytes(rec.method.as_bytes())
        .map(|m| method_bit(&m))
        .unwrap_or(0);
    let allow_rule = routing.opened(bit, &rec.path);
    let describe = |r: &crate::proxy::routing::config::AllowRule| {
        format!(
            "[[routing.allow]] route = {:?}, callers = {:?}{}",
            r.route,
            r.callers,
            r.issuer
                .as_deref()
                .map(|i| format!(", issuer = {i:?}"))
                .unwrap_or_default()
        )
    };
    let opened_rule = allow_rule.filter(|rule| {
        verified.as_ref().is_some_and(|c| {
            rule.issuer.as_deref().is_none_or(|i| i == &*c.iss)
                && identity_matches(&rule.callers, &c.sub)
        })
    });
    let opened_by = opened_rule.map(describe);
    let not_opened_by = match (allow_rule, opened_rule) {
        (Some(r), None) => Some(describe(r)),
        _ => None,
    };
    let found_door = routing.find(bit, &rec.path);
    let door = match found_door {
        Found::Door(i, m) => routing.doors.get(i).map(|d| (d, m)),
        Found::Unlisted => None,
    };
    let class = match door.map(|(d, _)| d.class) {
        None => "unlisted",
        Some(Class::Inference) => "inference",
        Some(Class::List(_)) => "list",
        Some(Class::Free) => "free",
        Some(Class::Manage) => "manage",
    };
    let position = |name: &str| config.models.iter().position(|m| m.model == name);
    let default_model =
        || crate::proxy::routing::default_model(config.models.iter().map(|m| m.base.is_none()));
    let mut refused = None;
    let target = match door {
        None
        | Some((
            crate::proxy::routing::config::Door {
                class: Class::Manage,
                ..
            },
            _,
        )) => {
            let why = if door.is_none() {
                "no configured API profile lists this route"
            } else {
                "management route not opened to this caller"
            };
            if opened_rule.is_some() {
                Target::Opened
            } else {
                refused = Some(why);
                Target::View(ModelView::RouteNotAllowed { detail: why })
            }
        }
        Some((d, in_path)) => {
            let every_model = matches!(d.class, Class::List(_))
                || (d.class == Class::Free && d.model == ModelAt::Nothing);
            match reason {
                Some("request_invalid") => {
                    notes.push("body: request bodies are never logged; it is taken as invalid, from the record's reason".into());
                    Target::View(ModelView::BodyInvalid)
                }
                Some("request_too_large") => {
                    notes.push("body: request bodies are never logged; it is taken as over the inspection limit, from the record's reason".into());
                    Target::View(ModelView::BodyTooLarge)
                }
                _ if every_model => {
                    notes.push(format!(
                        "a {class} route is decided against every model; the replay decides \
                         against the one the record names ({})",
                        rec.model
                    ));
                    match position(&rec.model) {
                        Some(i) => Target::Model(i),
                        None => Target::View(ModelView::Unnamed),
                    }
                }
                _ => {
                    let named = in_path
                        .map(str::to_string)
                        .or_else(|| rec.requested_model.clone());
                    match named {
                        // Several names: the record names the one that was refused.
                        Some(names) if names.contains(',') => {
                            notes.push(format!(
                                "the request named several models ({names}); the replay \
                                 decides against the one the record names ({})",
                                rec.model
                            ));
                            position(&rec.model)
                                .map_or(Target::View(ModelView::NotServed), Target::Model)
                        }
                        Some(name) => position(&name)
                            .map_or(Target::View(ModelView::NotServed), Target::Model),
                        None => {
                            default_model().map_or(Target::View(ModelView::Unnamed), Target::Model)
                        }
                    }
                }
            }
        }
    };
    let route = RoutePart {
        method: rec.method.clone(),
        path: rec.path.clone(),
        door: door.map(|(d, _)| d.path.to_string()),
        class,
        opened_by,
        not_opened_by,
        refused,
    };
    let mut differences = Vec::new();

    // === The model, its server and artefact ===
    let model_cfg = match target {
        Target::Model(i) => config.models.get(i),
        _ => None,
    };
    if let Some(m) = model_cfg {
        if rec.model != "none" && rec.model != m.model {
            differences.push(format!(
                "config changed: routing now resolves to model {}, the record names {}",
                m.model, rec.model
            ));
        }
    } else if rec.model != "none" && position(&rec.model).is_none() {
        differences.push(format!(
            "config changed: the record's model {} is not configured",
            rec.model
        ));
    }
    let model = ModelPart {
        name: model_cfg.map(|m| m.model.clone()),
        requested: rec.requested_model.clone(),
        base: model_cfg.and_then(|m| m.base.clone()),
    };
    let server = if config.probe.is_none() {
        ServerView::NotProbed
    } else if reason == Some("model_mismatch")
        && detail == "the model server does not report serving this model"
    {
        notes.push(
            "server: the probe's answer is not logged; taken as not serving, from the record"
                .into(),
        );
        ServerView::NotServing
    } else {
        notes.push("server: the probe's answer is not logged; taken as serving the model (an Ollama digest a record pins cannot be checked)".into());
        ServerView::Serving {
            ollama_digest: None,
        }
    };
    let digest: Option<Digest> = match &rec.served_digest {
        Some(s) => match s.parse() {
            Ok(d) => Some(d),
            Err(_) => {
                notes.push(format!(
                    "the record's served_digest {s:?} does not parse: taken as unknown"
                ));
                None
            }
        },
        None => None,
    };
    if digest.is_none() && model_cfg.is_some() {
        notes.push("artefact: the record names no served digest (still hashing then)".into());
    }
    let artefact = ArtefactPart {
        digest: digest.map(|d| d.to_string()),
        signer: rec.model_signer.clone(),
    };

    // === The registry ===
    let registry_unavailable =
        reason == Some("trust_data_unavailable") && detail.contains("registry");
    let mut registry = RegistryPart {
        source: match &config.registry.source {
            RegistrySource::Dir(p) => format!("dir {}", p.display()),
            RegistrySource::Remote(r) => format!("{} {}", r.kind.label(), r.url),
        },
        left_out: Vec::new(),
        invalid: Vec::new(),
    };
    let mut entry: Option<RegistryEntry> = None;
    if let (Some(d), Target::Model(_)) = (&digest, &target) {
        if registry_unavailable {
            notes.push("registry: unavailable then (the record's reason); not asked".into());
        } else {
            notes.push(match &config.registry.source {
                RegistrySource::Dir(_) => "registry: the directory as it is now, records issued after the request's time left out; revocations: the current list (a record revoked since reads as revoked)".into(),
                RegistrySource::Remote(_) => "registry: the remote registry asked now, records issued after the request's time left out; revocations: its current answer".into(),
            });
            entry = answer_at(deployment, d, now, &mut registry)?;
        }
    }
    let records: Vec<RecordPart> = entry
        .as_ref()
        .map(|e| e.records.iter().map(record_part).collect())
        .unwrap_or_default();

    // === The decision ===
    let mut tracer = Steps::default();
    let decision = match target {
        Target::Opened => Decision::Opened,
        _ => {
            let model_view = match (&target, model_cfg) {
                (Target::View(v), _) => *v,
                (_, Some(m)) => ModelView::Served {
                    name: &m.model,
                    server,
                },
                (_, None) => ModelView::NotServed,
            };
            let artefact_view = match &digest {
                Some(d) => ArtefactView::Ready {
                    digest: d,
                    signer: rec.model_signer.as_deref(),
                },
                None => ArtefactView::Unverified,
            };
            let approval = if registry_unavailable {
                ApprovalView::Unavailable
            } else {
                ApprovalView::Entry(entry.as_ref())
            };
            let input = Input {
                caller: caller_view,
                model: model_view,
                artefact: artefact_view,
                approval,
                now,
            };
            crate::policy::decide_traced(policy, &input, &mut tracer)
        }
    };
    let steps = tracer.into_steps();

    // === An adapter's base ===
    // The sidecar's adapter rule, with the base decided for the same caller. The base's
    // served digest is not in the record: it is taken as the one the adapter's record pins
    // (or, when the record says the pin did not match, as another).
    let mut base: Option<BasePart> = None;
    let mut base_error = None;
    let decision = match model_cfg.and_then(|m| m.base.as_deref()) {
        Some(base_name) => {
            let pinned = decision
                .record()
                .and_then(|r| r.claims.artefact.base_digest);
            let other = detail == BASE_MISMATCH;
            crate::policy::decide_adapter(decision, || {
                let Some(pinned) = pinned else {
                    // decide_adapter asks for the base only of a record that pins one.
                    return (
                        Decision::deny(
                            DenyReason::ApprovalInvalid,
                            "adapter record pins no base digest",
                        ),
                        None,
                    );
                };
                let mut part = BasePart {
                    model: base_name.to_string(),
                    digest: pinned.to_string(),
                    registry: RegistryPart {
                        source: registry.source.clone(),
                        left_out: Vec::new(),
                        invalid: Vec::new(),
                    },
                    records: Vec::new(),
                    steps: Vec::new(),
                    replay: outcome(&Decision::Opened, &[]),
                };
                let entry = match answer_at(deployment, &pinned, now, &mut part.registry) {
                    Ok(e) => e,
                    Err(e) => {
                        base_error = Some(e);
                        return (
                            Decision::deny(
                                DenyReason::TrustDataUnavailable,
                                "registry unavailable past its staleness bound",
                            ),
                            None,
                        );
                    }
                };
                let input = Input {
                    caller: caller_view,
                    model: ModelView::Served {
                        name: base_name,
                        server,
                    },
                    artefact: ArtefactView::Ready {
                        digest: &pinned,
                        signer: None,
                    },
                    approval: ApprovalView::Entry(entry.as_ref()),
                    now,
                };
                let mut t = Steps::default();
                let d = crate::policy::decide_traced(policy, &input, &mut t);
                part.records = entry
                    .as_ref()
                    .map(|e| e.records.iter().map(record_part).collect())
                    .unwrap_or_default();
                part.steps = t.into_steps();
                part.replay = outcome(&d, &part.steps);
                base = Some(part);
                (d, (!other).then_some(pinned))
            })
        }
        None => decision,
    };
    if let Some(e) = base_error {
        return Err(e);
    }
    if let Some(b) = &base {
        notes.push(format!(
            "an adapter: its base {} is decided for the same caller against {} (the digest \
             the adapter's record pins{}; the base's digest and signer are not in the record)",
            b.model,
            b.digest,
            if detail == BASE_MISMATCH {
                ", taken as not the one served, from the record's detail"
            } else {
                ", taken as the one served"
            }
        ));
    }
    let mut replay = outcome(&decision, &steps);
    if replay.rule.is_none() && replay.reason.is_some() {
        if let Some(b) = &base {
            if b.replay.reason == replay.reason && b.replay.detail == replay.detail {
                replay.rule = b.replay.rule;
                replay.about = Some(format!("base {}", b.model));
            }
        }
        if matches!(replay.detail, Some(BASE_MISMATCH | NO_BASE_PIN)) {
            replay.rule = Some(crate::policy::trace::Rule::BaseDigest.as_str());
        }
    }

    // === Agreement ===
    let recorded_word = if rec.decision == "allow" {
        if detail == "route opened by routing.allow" {
            "opened"
        } else {
            "allow"
        }
    } else {
        "deny"
    };
    // The sidecar refines two outcomes after the decision: an invalid token's detail says
    // which clock judged an expired one, and with `on_write_failure = "fail_closed"` an
    // allow becomes a denial while the audit log cannot be written.
    let audit_gate = recorded_word == "deny" && detail.starts_with("audit log cannot be written");
    let agrees = match &decision {
        Decision::Deny {
            reason: r,
            detail: d,
            ..
        } => {
            let token_refined = *r == DenyReason::TokenInvalid && !caller.replayed;
            if token_refined && *d != detail {
                notes.push(format!(
                    "the record's detail ({detail}) refines token_invalid; only the reason is compared"
                ));
            }
            recorded_word == "deny" && Some(r.as_str()) == reason && (*d == detail || token_refined)
        }
        Decision::Allow { .. } | Decision::Opened if audit_gate => {
            notes.push(
                "the decision allowed; the audit log could not be written then, and \
                 on_write_failure = \"fail_closed\" refused it (taken from the record)"
                    .into(),
            );
            true
        }
        Decision::Allow { record, .. } => {
            recorded_word == "allow"
                && rec
                    .record_id
                    .as_deref()
                    .is_none_or(|id| id == record.claims.jti)
        }
        Decision::Opened => recorded_word == "opened",
    };
    if !agrees {
        differences.extend(diagnose(&rec, &decision, &records, &registry));
    }
    Ok(Explanation {
        request_id: rec.request_id.clone(),
        found,
        config: deployment.path.clone(),
        recorded: rec,
        caller,
        route,
        model,
        artefact,
        registry,
        records,
        steps,
        base,
        replay,
        agrees,
        differences,
        notes,
    })
}

/// The registry's answer for `digest` as it would have been at `now`: what it holds now,
/// less the records and exceptions issued after `now` (listed in `registry.left_out`).
/// `None` when nothing is left, as a directory's snapshot has no entry for such a digest.
fn answer_at(
    deployment: &Deployment,
    digest: &Digest,
    now: u64,
    registry: &mut RegistryPart,
) -> Result<Option<RegistryEntry>, ExplainError> {
    let Some(mut e) = deployment.entry_for(digest, &[])? else {
        return Ok(None);
    };
    let (kept, later): (Vec<_>, Vec<_>) = e
        .records
        .drain(..)
        .partition(|c| c.record.claims.iat <= now);
    e.records = kept;
    e.exceptions.retain(|c| c.exception.claims.iat <= now);
    registry.left_out.extend(later.iter().map(record_part));
    registry.invalid.extend(e.invalid.iter().cloned());
    let empty =
        e.records.is_empty() && e.invalid.is_empty() && e.exceptions.is_empty() && !e.revoked;
    Ok((!empty).then_some(e))
}

fn record_part(c: &crate::registry::Candidate) -> RecordPart {
    let claims = &c.record.claims;
    RecordPart {
        jti: claims.jti.clone(),
        version: claims.version_id.clone(),
        signers: c.record.signers.clone(),
        iat: claims.iat,
        exp: claims.exp,
        revoked: c.revoked,
    }
}

/// The replay's outcome, with the rule that refused: the failed step that gave the
/// decision's reason and detail (for the record it names, when it names one).
fn outcome(decision: &Decision, steps: &[Step]) -> Outcome {
    match decision {
        Decision::Allow { record, .. } => Outcome {
            decision: "allow",
            reason: None,
            detail: None,
            record: Some(record.claims.jti.clone()),
            rule: None,
            about: None,
        },
        Decision::Opened => Outcome {
            decision: "opened",
            reason: None,
            detail: Some("route opened by routing.allow"),
            record: None,
            rule: None,
            about: None,
        },
        Decision::Deny {
            reason,
            detail,
            record,
        } => {
            let jti = record.as_ref().map(|r| r.claims.jti.clone());
            let step = steps
                .iter()
                .find(|s| {
                    s.failed()
                        && s.reason == Some(reason.as_str())
                        && s.why == *detail
                        && s.record == jti
                })
                .or_else(|| {
                    steps
                        .iter()
                        .find(|s| s.failed() && s.reason == Some(reason.as_str()))
                });
            Outcome {
                decision: "deny",
                reason: Some(reason.as_str()),
                detail: Some(detail),
                record: jti,
                rule: step.map(|s| s.rule.as_str()),
                about: step
                    .filter(|s| !s.about.is_empty())
                    .map(|s| s.about.clone()),
            }
        }
    }
}

/// Why a replay that disagrees differs: what changed since the request, as far as can be
/// told from here.
fn diagnose(
    rec: &Recorded,
    decision: &Decision,
    records: &[RecordPart],
    registry: &RegistryPart,
) -> Vec<String> {
    let mut out = Vec::new();
    let got = match decision {
        Decision::Deny { reason, detail, .. } => format!("deny {reason} ({detail})"),
        Decision::Allow { record, .. } => format!("allow under record {}", record.claims.jti),
        Decision::Opened => "opened by [[routing.allow]]".into(),
    };
    out.push(format!(
        "recorded {} {} ({}), replayed {got}",
        rec.decision,
        rec.reason.as_deref().unwrap_or("-"),
        rec.detail.as_deref().unwrap_or("-")
    ));
    let replay_reason = decision.reason();
    if replay_reason == Some(DenyReason::ApprovalRevoked)
        && rec.reason.as_deref() != Some("approval_revoked")
    {
        let revoked: Vec<&str> = records
            .iter()
            .filter(|r| r.revoked)
            .map(|r| r.jti.as_str())
            .collect();
        out.push(format!(
            "revoked since: the current revocation list names {}",
            if revoked.is_empty() {
                "the digest".to_string()
            } else {
                revoked.join(", ")
            }
        ));
    }
    if let Some(id) = &rec.record_id {
        match records.iter().find(|r| &r.jti == id) {
            None => out.push(format!(
                "records changed: the record the log names ({id}) is not in the registry now"
            )),
            Some(r) => {
                if rec.version_id.as_deref().is_some_and(|v| v != r.version) {
                    out.push(format!(
                        "records changed: record {id} now carries version {}",
                        r.version
                    ));
                }
                if !rec.record_signers.is_empty() && rec.record_signers != r.signers {
                    out.push(format!(
                        "records changed: record {id} was signed by {}, now by {}",
                        rec.record_signers.join(", "),
                        r.signers.join(", ")
                    ));
                }
            }
        }
    } else if !records.is_empty() && matches!(rec.reason.as_deref(), Some("artefact_unmanaged")) {
        out.push("records changed: the digest had no record then and has one now".into());
    }
    if out.len() == 1 {
        out.push(if registry.left_out.is_empty() {
            "config changed (the deployment's configuration or approvers differ from those in force), or the record's registry answer is no longer what it was".into()
        } else {
            "records changed: records were issued after the request (left out); config may differ too".into()
        });
    }
    out
}

// === Text ===

impl Explanation {
    /// The chain, for a person.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let r = &self.recorded;
        let _ = writeln!(o, "request {} at {}", self.request_id, r.time);
        if let Some(at) = &self.found {
            let _ = writeln!(
                o,
                "  found in {} (segment {} of {}), line {}",
                at.segment.display(),
                at.segment_index,
                at.segments,
                at.line
            );
        }
        let _ = writeln!(
            o,
            "  recorded: {} {} ({})",
            r.decision,
            r.reason.as_deref().unwrap_or("-"),
            r.detail.as_deref().unwrap_or("-")
        );
        let _ = writeln!(o, "  config:   {}", self.config.display());
        let c = &self.caller;
        let _ = writeln!(
            o,
            "caller:   {} (issuer {}), token {}{}",
            c.sub.as_deref().unwrap_or("-"),
            c.iss.as_deref().unwrap_or("-"),
            c.token,
            if c.replayed {
                ""
            } else {
                " (from the record, not replayed)"
            }
        );
        let rt = &self.route;
        let _ = writeln!(
            o,
            "route:    {} {} -> {} {}{}{}",
            rt.method,
            rt.path,
            rt.class,
            rt.door.as_deref().unwrap_or("(no door)"),
            rt.opened_by
                .as_deref()
                .map(|s| format!(", opened by {s}"))
                .unwrap_or_default(),
            rt.refused
                .map(|s| format!(", refused: {s}"))
                .unwrap_or_default()
        );
        if let Some(rule) = &rt.not_opened_by {
            let _ = writeln!(o, "  not opened to this caller by {rule}");
        }
        let m = &self.model;
        let _ = writeln!(
            o,
            "model:    {}{}{}",
            m.name.as_deref().unwrap_or("(none)"),
            m.requested
                .as_deref()
                .map(|s| format!(" (requested {s})"))
                .unwrap_or_default(),
            m.base
                .as_deref()
                .map(|s| format!(", adapter of {s}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            o,
            "digest:   {}{}",
            self.artefact.digest.as_deref().unwrap_or("(unknown)"),
            self.artefact
                .signer
                .as_deref()
                .map(|s| format!(", signed by {s}"))
                .unwrap_or_default()
        );
        let _ = writeln!(o, "registry: {}", self.registry.source);
        for l in &self.registry.left_out {
            let _ = writeln!(
                o,
                "  left out: {} (version {}, issued {}, after the request)",
                l.jti,
                l.version,
                time(l.iat)
            );
        }
        for i in &self.registry.invalid {
            let _ = writeln!(o, "  invalid now: {i}");
        }
        chain(&mut o, "", &self.records, &self.steps);
        if let Some(b) = &self.base {
            let _ = writeln!(
                o,
                "base:     {} at {} (the adapter record's pin), decided for the same caller",
                b.model, b.digest
            );
            for l in &b.registry.left_out {
                let _ = writeln!(
                    o,
                    "  left out: {} (version {}, issued {}, after the request)",
                    l.jti,
                    l.version,
                    time(l.iat)
                );
            }
            chain(&mut o, "  ", &b.records, &b.steps);
            let p = &b.replay;
            let _ = writeln!(
                o,
                "  base decision: {} {} ({})",
                p.decision,
                p.reason.unwrap_or("-"),
                p.detail.unwrap_or("-")
            );
        }
        let p = &self.replay;
        let _ = writeln!(
            o,
            "replay:   {} {} ({}){}{}",
            p.decision,
            p.reason.unwrap_or("-"),
            p.detail.unwrap_or("-"),
            p.rule.map(|r| format!(", rule {r}")).unwrap_or_default(),
            p.record
                .as_deref()
                .map(|r| format!(", record {r}"))
                .unwrap_or_default()
        );
        if self.agrees {
            let _ = writeln!(o, "agrees with the record");
        } else {
            let _ = writeln!(o, "DISAGREES with the record:");
            for d in &self.differences {
                let _ = writeln!(o, "  {d}");
            }
        }
        let _ = writeln!(o, "notes:");
        for n in &self.notes {
            let _ = writeln!(o, "  {n}");
        }
        o
    }
}

/// The rules before any record, then each record with its own rules.
fn chain(o: &mut String, indent: &str, records: &[RecordPart], steps: &[Step]) {
    use std::fmt::Write;
    for s in steps.iter().filter(|s| s.index.is_none()) {
        let _ = writeln!(o, "{indent}  {}", step_line(s));
    }
    if records.is_empty() {
        let _ = writeln!(o, "{indent}records:  none considered");
    }
    for (i, rp) in records.iter().enumerate() {
        let _ = writeln!(
            o,
            "{indent}record {} (version {}, signed by {}, issued {}, expires {}{})",
            rp.jti,
            rp.version,
            if rp.signers.is_empty() {
                "-".to_string()
            } else {
                rp.signers.join(", ")
            },
            time(rp.iat),
            time(rp.exp),
            if rp.revoked { ", revoked now" } else { "" }
        );
        for s in steps.iter().filter(|s| s.index == Some(i)) {
            let _ = writeln!(o, "{indent}  {}", step_line(s));
        }
    }
}

/// Unix seconds as an RFC 3339 UTC time, as the audit log writes times.
fn time(secs: u64) -> String {
    crate::audit::query::record_time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

fn step_line(s: &Step) -> String {
    let mut line = format!("{:<7} {}", s.outcome, s.rule.as_str());
    if !s.about.is_empty() {
        line.push_str(&format!(" [{}]", s.about));
    }
    if let Some(r) = s.reason {
        line.push_str(&format!(": {r}"));
    }
    if !s.why.is_empty() {
        line.push_str(&format!(" ({})", s.why));
    }
    line
}

#[cfg(test)]
mod tests;
