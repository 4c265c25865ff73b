//! `provgate check`: would this deployment serve this model? Evaluated offline, before a
//! promotion, from the same configuration file the sidecar runs with and the registry that
//! file names, through the sidecar's own decision ([`policy::decide_traced`]), so a release
//! pipeline learns what production would refuse before production refuses it.
//!
//! Owns the offline inputs of a decision (the deployment, the registry's answer for one
//! digest, the model's digest and signer, a sample of callers) and the report. It decides
//! nothing itself, and reads no request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::approval::{self, CallerPattern, Verified};
use crate::artefact::config::ModelConfig;
use crate::config::{Config, ConfigErrors};
use crate::digest::Digest;
use crate::identity::Caller;
use crate::oms::{HashOptions, SignatureState};
use crate::policy::trace::{Rule, Step, Steps};
use crate::policy::{
    base_pin, decide, decide_adapter, decide_traced, ApprovalView, ArtefactView, CallerView,
    Decision, Input, ModelView, Policy, ServerView,
};
use crate::registry::config::RegistrySource;
use crate::registry::{Candidate, ExceptionCandidate, RegistryEntry};

/// Why a check could not be made (as opposed to a check that fails).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{path}: {errors}")]
    Config { path: String, errors: ConfigErrors },
    #[error("{0}")]
    Model(String),
    #[error("hashing {path}: {error}")]
    Hash {
        path: String,
        error: crate::oms::HashError,
    },
    #[error("registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    #[error("registry: {0}")]
    Remote(#[from] crate::registry::remote::AskError),
    #[error("{path}: {error}")]
    Record { path: String, error: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One deployment, as `provgate run -c FILE` would build it.
pub struct Deployment {
    pub path: PathBuf,
    /// A short name for reports: the file's stem (`staging.toml` → `staging`).
    pub environment: String,
    pub config: Config,
    pub policy: Policy,
}

impl Deployment {
    /// Loads and validates the configuration (the key files it names included).
    pub fn load(path: &Path) -> Result<Deployment, CheckError> {
        let config = crate::config::load(path).map_err(|errors| CheckError::Config {
            path: path.display().to_string(),
            errors,
        })?;
        let policy = config.policy();
        Ok(Deployment {
            path: path.to_path_buf(),
            environment: path
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
            config,
            policy,
        })
    }

    /// The configured model named `name`, or the only one.
    pub fn model(&self, name: Option<&str>) -> Result<&ModelConfig, CheckError> {
        let models = &self.config.models;
        match name {
            Some(n) => models.iter().find(|m| m.model == n).ok_or_else(|| {
                CheckError::Model(format!(
                    "{}: serves no model {n:?} (it serves {})",
                    self.path.display(),
                    names(models)
                ))
            }),
            None => match models.as_slice() {
                [only] => Ok(only),
                _ => Err(CheckError::Model(format!(
                    "{}: serves several models ({}); name one with --model",
                    self.path.display(),
                    names(models)
                ))),
            },
        }
    }

    /// What the registry this deployment names holds for `digest`, verified with its
    /// approver keys as the sidecar verifies it; `extra`: records or exceptions not yet
    /// published (a promotion's), added as if they were (those for another digest are not
    /// this entry's; one that does not verify is an error).
    pub fn entry_for(
        &self,
        digest: &Digest,
        extra: &[(String, String)],
    ) -> Result<Option<RegistryEntry>, CheckError> {
        let approvers = &self.config.approvers;
        let mut entry = match &self.config.registry.source {
            RegistrySource::Dir(dir) => {
                let snapshot = crate::registry::load_dir(dir, approvers)?;
                match snapshot.by_digest.get(digest) {
                    Some(e) => copy(e),
                    // A directory lists every record: none for the digest is an answer.
                    None if extra.is_empty() => return Ok(None),
                    None => RegistryEntry::default(),
                }
            }
            RegistrySource::Remote(remote) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(crate::registry::remote::ask_once(remote, approvers, digest))?,
        };
        if extra.is_empty() {
            return Ok(Some(entry));
        }
        let mut records: Vec<Candidate> = std::mem::take(&mut entry.records);
        for (origin, text) in extra {
            let refuse = |error: String| CheckError::Record {
                path: origin.clone(),
                error,
            };
            match approval::verify_any(text, approvers).map_err(|e| refuse(e.to_string()))? {
                Verified::Record(r) if r.claims.artefact.digest == *digest => {
                    records.push(Candidate {
                        record: Arc::new(r),
                        revoked: false,
                    })
                }
                // Another digest's (an adapter's base, say): not this entry's.
                Verified::Record(_) => {}
                Verified::Exception(e) if e.claims.artefact.digest != *digest => {}
                Verified::Exception(e) => entry
                    .exceptions
                    .push(crate::registry::exception_for(e, digest, false).map_err(refuse)?),
            }
        }
        let exceptions = std::mem::take(&mut entry.exceptions);
        let mut rebuilt = RegistryEntry::new(records, std::mem::take(&mut entry.invalid))
            .with_exceptions(exceptions);
        rebuilt.revoked = entry.revoked;
        Ok(Some(rebuilt))
    }
}

fn names(models: &[ModelConfig]) -> String {
    models
        .iter()
        .map(|m| m.model.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A registry entry's contents, for an entry the caller owns (entries are shared as `Arc`s
/// and hold their records as `Arc`s: nothing is re-verified).
fn copy(e: &RegistryEntry) -> RegistryEntry {
    let mut c = RegistryEntry::new(e.records.clone(), e.invalid.clone()).with_exceptions(
        e.exceptions
            .iter()
            .map(|x| ExceptionCandidate {
                exception: x.exception.clone(),
                revoked: x.revoked,
            })
            .collect(),
    );
    c.revoked = e.revoked;
    c
}

/// The model's digest and the signer whose signature it carries, as the sidecar's artefact
/// watcher computes them: the model's serialization, then `model.sig` against the model's
/// configured signers.
pub fn inspect(model: &ModelConfig, dir: &Path) -> Result<(Digest, Option<String>), CheckError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let opts = HashOptions::new(model.serialization, threads);
    let manifest = crate::oms::hash_dir(dir, &opts, None).map_err(|error| CheckError::Hash {
        path: dir.display().to_string(),
        error,
    })?;
    let signer = match crate::oms::verify_dir_with(dir, &model.signers, Some(&manifest), &opts) {
        SignatureState::Valid { signer, .. } => Some(signer),
        SignatureState::Absent | SignatureState::Invalid { .. } => None,
    };
    Ok((manifest.root, signer))
}

/// What is checked: one model's artefact, and the callers to try.
pub struct Subject {
    pub model: String,
    pub digest: Digest,
    /// The configured signer whose valid signature the model carries (with `--dir`).
    pub signer: Option<String>,
    /// The Ollama digest the server would report, when a record pins one.
    pub ollama_digest: Option<String>,
    /// Callers to try, `(iss, sub)`; none: every rule but the caller's is checked.
    pub callers: Vec<(String, String)>,
    /// Seconds since the Unix epoch.
    pub now: u64,
}

/// An adapter's base model: what the registry holds for it, and its artefact (the same
/// callers and time as the adapter's).
pub struct Base<'a> {
    pub entry: Option<&'a RegistryEntry>,
    pub subject: &'a Subject,
}

/// One record's rules.
#[derive(Debug, Serialize)]
pub struct RecordReport {
    pub id: String,
    pub version: String,
    pub tier: String,
    pub iat: u64,
    pub exp: u64,
    pub signers: Vec<String>,
    /// The record's caller patterns, as written.
    pub callers: Vec<String>,
    /// Every rule but the caller's passes (or is waived): some caller may use it.
    pub usable: bool,
    pub steps: Vec<Step>,
}

/// One sampled caller's decision.
#[derive(Debug, Serialize)]
pub struct CallerReport {
    pub iss: String,
    pub sub: String,
    /// `allow` or `deny`.
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'static str>,
    /// The record that allowed it, or the one the denial is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// Exceptions the allowing record needed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exceptions: Vec<String>,
}

/// The check of one deployment.
#[derive(Debug, Serialize)]
pub struct Report {
    pub config: String,
    pub environment: String,
    pub model: String,
    pub digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    pub workload: String,
    pub tier: String,
    pub now: u64,
    /// The deployment would serve the model: some record is usable, and every sampled
    /// caller is allowed.
    pub serve: bool,
    /// Rules decided before any record (artefact, registry).
    pub steps: Vec<Step>,
    pub records: Vec<RecordReport>,
    /// Records that claimed the digest but failed verification, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<String>,
    /// Exceptions the registry holds for the digest (IDs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exceptions: Vec<String>,
    pub callers: Vec<CallerReport>,
    /// For an adapter: its base model's check (the adapter is served only with it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<Box<Report>>,
}

/// The decision's input for one caller.
fn input<'a>(
    caller: &'a Caller,
    subject: &'a Subject,
    entry: Option<&'a RegistryEntry>,
) -> Input<'a> {
    Input {
        caller: CallerView::Verified(caller),
        model: ModelView::Served {
            name: &subject.model,
            server: match &subject.ollama_digest {
                Some(o) => ServerView::Serving {
                    ollama_digest: Some(o),
                },
                None => ServerView::NotProbed,
            },
        },
        artefact: ArtefactView::Ready {
            digest: &subject.digest,
            signer: subject.signer.as_deref(),
        },
        approval: ApprovalView::Entry(entry),
        now: subject.now,
    }
}

/// Evaluates `subject` against one deployment and the registry's `entry` for its digest
/// (None: the registry holds nothing for it); an adapter with its `base`.
pub fn evaluate(
    d: &Deployment,
    entry: Option<&RegistryEntry>,
    subject: &Subject,
    base: Option<&Base<'_>>,
) -> Report {
    let base_report = base.map(|b| Box::new(evaluate(d, b.entry, b.subject, None)));
    // Without a sample, one anonymous caller shows every rule; its caller rules are
    // reported as skipped.
    let sampled = !subject.callers.is_empty();
    let callers: Vec<(String, String)> = if sampled {
        subject.callers.clone()
    } else {
        vec![(String::new(), String::new())]
    };
    let mut traces = Vec::with_capacity(callers.len());
    let mut caller_reports = Vec::new();
    for (iss, sub) in &callers {
        let caller = Caller {
            iss: Arc::from(iss.as_str()),
            sub: Arc::from(sub.as_str()),
            exp: u64::MAX,
            headers: None,
        };
        let mut steps = Steps::default();
        let mut decision = decide_traced(&d.policy, &input(&caller, subject, entry), &mut steps);
        if let Some(b) = base {
            // The sidecar's adapter rule, with the base decided for the same caller.
            decision = decide_adapter(decision, || {
                let base_input = input(&caller, b.subject, b.entry);
                (decide(&d.policy, &base_input), Some(b.subject.digest))
            });
        }
        if sampled {
            caller_reports.push(caller_report(iss, sub, &decision));
        }
        traces.push(steps.into_steps());
    }
    // The first caller's trace shows the rules; the records' steps other than `callers`
    // are the same for every caller.
    let mut steps = traces.into_iter().next().unwrap_or_default();
    if !sampled {
        for s in steps
            .iter_mut()
            .filter(|s| matches!(s.rule, Rule::Caller | Rule::Callers))
        {
            s.outcome = "skipped";
            s.reason = None;
            s.why = "no caller given (--caller)".into();
        }
    }
    let (before, about_records): (Vec<Step>, Vec<Step>) =
        steps.into_iter().partition(|s| s.index.is_none());
    let records: Vec<RecordReport> = entry
        .map_or(&[][..], |e| &e.records)
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut steps: Vec<Step> = about_records
                .iter()
                .filter(|s| s.index == Some(i))
                .cloned()
                .collect();
            // A record of the deployment's own tier meets that tier's rules twice (as the
            // deployment's and as the record's): report them once.
            let mut seen = Vec::new();
            steps.retain(|s| {
                !matches!(s.rule, Rule::Lifetime | Rule::TierWorkloads) || {
                    let key = (s.rule, s.about.clone());
                    let first = !seen.contains(&key);
                    seen.push(key);
                    first
                }
            });
            if let Some(b) = base {
                let pinned = base_pin(&c.record, Some(b.subject.digest));
                steps.push(Step {
                    rule: Rule::BaseDigest,
                    record: Some(c.record.claims.jti.clone()),
                    index: Some(i),
                    about: b.subject.model.clone(),
                    outcome: if pinned.is_ok() { "pass" } else { "fail" },
                    reason: pinned.err().map(|(r, _)| r.as_str()),
                    why: pinned.err().map(|(_, w)| w.to_string()).unwrap_or_default(),
                });
            }
            let usable = !steps.is_empty() && steps.iter().all(|s| !s.failed());
            let claims = &c.record.claims;
            RecordReport {
                id: claims.jti.clone(),
                version: claims.version_id.clone(),
                tier: claims.tier.clone(),
                iat: claims.iat,
                exp: claims.exp,
                signers: c.record.signers.clone(),
                callers: claims.callers.iter().map(pattern_text).collect(),
                usable,
                steps,
            }
        })
        .collect();
    let serve = before.iter().all(|s| !s.failed())
        && records.iter().any(|r| r.usable)
        && base_report.as_ref().is_none_or(|b| b.serve)
        && caller_reports.iter().all(|c| c.decision == "allow");
    Report {
        config: d.path.display().to_string(),
        environment: d.environment.clone(),
        model: subject.model.clone(),
        digest: subject.digest.to_string(),
        signer: subject.signer.clone(),
        workload: d.policy.workload_identity.clone(),
        tier: d.policy.tier.clone(),
        now: subject.now,
        serve,
        steps: before,
        records,
        invalid: entry.map(|e| e.invalid.clone()).unwrap_or_default(),
        exceptions: entry
            .map_or(&[][..], |e| &e.exceptions)
            .iter()
            .map(|e| e.exception.claims.jti.clone())
            .collect(),
        callers: caller_reports,
        base: base_report,
    }
}

fn caller_report(iss: &str, sub: &str, decision: &Decision) -> CallerReport {
    let detail = match decision {
        Decision::Deny { detail, .. } => Some(*detail),
        _ => None,
    };
    CallerReport {
        iss: iss.to_string(),
        sub: sub.to_string(),
        decision: if decision.reason().is_none() {
            "allow"
        } else {
            "deny"
        },
        reason: decision.reason().map(|r| r.as_str()),
        detail,
        record: decision.record().map(|r| r.claims.jti.clone()),
        exceptions: decision
            .exceptions()
            .iter()
            .map(|e| e.claims.jti.clone())
            .collect(),
    }
}

/// A caller pattern in the CLI's form: bare, or `ISSUER#PATTERN`.
fn pattern_text(p: &CallerPattern) -> String {
    match p {
        CallerPattern::Bare(p) => p.clone(),
        CallerPattern::Qualified { iss, sub } => format!("{iss}#{sub}"),
    }
}

/// The report as text: a line per rule, failures marked, the verdict last.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({}): model {} digest {}",
        r.environment, r.config, r.model, r.digest
    );
    let _ = writeln!(
        out,
        "  workload {}  tier {}  signer {}  at {}",
        r.workload,
        r.tier,
        r.signer.as_deref().unwrap_or("-"),
        time(r.now)
    );
    for s in &r.steps {
        line(&mut out, "  ", s);
    }
    for inv in &r.invalid {
        let _ = writeln!(out, "  invalid record: {inv}");
    }
    for rec in &r.records {
        let _ = writeln!(
            out,
            "  record {} (version {}, tier {}, issued {}, expires {}, signed by {}){}",
            rec.id,
            rec.version,
            rec.tier,
            time(rec.iat),
            time(rec.exp),
            rec.signers.join(", "),
            if rec.usable { "" } else { ": not usable" }
        );
        for s in &rec.steps {
            line(&mut out, "    ", s);
        }
    }
    for c in &r.callers {
        let _ = writeln!(
            out,
            "  caller {} ({}): {}{}",
            c.sub,
            c.iss,
            c.decision,
            c.reason
                .map(|reason| format!(" {reason}: {}", c.detail.unwrap_or("")))
                .unwrap_or_default()
        );
    }
    if let Some(b) = &r.base {
        let _ = writeln!(out, "  the adapter's base model:");
        for l in render(b).lines() {
            let _ = writeln!(out, "  {l}");
        }
    }
    let _ = writeln!(
        out,
        "  => {}",
        if r.serve {
            "would serve"
        } else {
            "would NOT serve"
        }
    );
    out
}

/// Unix seconds as an RFC 3339 UTC time, as the audit log writes times.
fn time(secs: u64) -> String {
    crate::audit::query::record_time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

fn line(out: &mut String, indent: &str, s: &Step) {
    use std::fmt::Write as _;
    let mark = match s.outcome {
        "pass" => "ok  ",
        "fail" => "FAIL",
        "waived" => "wvd ",
        _ => "--  ",
    };
    let about = if s.about.is_empty() {
        String::new()
    } else {
        format!(" [{}]", s.about)
    };
    let why = match (s.reason, s.why.is_empty()) {
        (Some(reason), _) => format!(": {reason}: {}", s.why),
        (None, false) => format!(": {}", s.why),
        (None, true) => String::new(),
    };
    let _ = writeln!(out, "{indent}{mark} {}{about}{why}", s.rule);
}

/// Parses a `--caller` value: `ISSUER#SUBJECT` (as `approve --caller` writes a qualified
/// pattern; `#` cannot occur in an issuer URL), or `SUBJECT` when the deployment trusts
/// exactly one issuer.
pub fn parse_caller(value: &str, d: &Deployment) -> Result<(String, String), CheckError> {
    if let Some((iss, sub)) = value.split_once('#') {
        return Ok((iss.to_string(), sub.to_string()));
    }
    match d.config.callers.issuers.as_slice() {
        [only] => Ok((only.issuer.clone(), value.to_string())),
        _ => Err(CheckError::Model(format!(
            "--caller {value:?}: {} trusts several issuers; write ISSUER#SUBJECT",
            d.path.display()
        ))),
    }
}
