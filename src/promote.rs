//! `provgate promote`: the promotion step of a release pipeline. A signed record (new, or an
//! existing one co-signed) is checked against the target environment's configuration, the
//! very one its sidecars run with; only if that deployment would serve it is it published to
//! the registry the configuration names, and every promotion, published or refused, leaves its
//! own record in a hash-chained audit log.
//!
//! Owns the order of those steps, the three ways of publishing ([`Destination`]: a directory
//! file written atomically, MLflow tags plus the environment's alias, the HTTP contract's
//! upload form) and the promotion's audit record ([`Outcome::audit`]). It decides nothing
//! itself: whether the deployment would serve the record is `check::evaluate`'s, the same
//! decision code as the sidecar's. Nothing on the request path uses this module.

use std::path::{Path, PathBuf};

use crate::audit::record::{Marker, Promotion};
use crate::check::{self, Base, CheckError, Deployment, Report, Subject};
use crate::digest::Digest;
use crate::kit::http::FetchError;
use crate::policy::trace::Step;
use crate::registry::config::{RegistryConfig, RegistrySource, RemoteKind, RemoteRegistry};
use crate::registry_serve::upload::{record_file_name, write_atomic};

/// Why a promotion could not be carried out (a refusal by the check is not an error: see
/// [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("the registry is MLflow: give --version (the model version to promote)")]
    NoMlflowVersion,
    #[error("writing the record into {dir}: {source}")]
    Dir { dir: String, source: std::io::Error },
    #[error("publishing to the registry: {0}")]
    Remote(#[from] FetchError),
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the registry client: {0}")]
    Client(String),
}

/// Where a promoted record goes: the target configuration's `[registry]`.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A record file `<jti>.jws` in the registry directory.
    Dir(PathBuf),
    /// The record and digest tags on model version `version` of the record's model, and the
    /// registered model's `alias` pointed at that version.
    Mlflow {
        remote: RemoteRegistry,
        version: String,
        alias: String,
    },
    /// `PUT {url}/approvals/sha256/<hex>`, with the registry's credentials.
    Http(RemoteRegistry),
}

impl Destination {
    /// The destination `registry` names; MLflow needs the model version and the alias.
    pub fn of(
        registry: &RegistryConfig,
        mlflow_version: Option<&str>,
        alias: &str,
    ) -> Result<Destination, PromoteError> {
        Ok(match &registry.source {
            RegistrySource::Dir(dir) => Destination::Dir(dir.clone()),
            RegistrySource::Remote(r) if r.kind == RemoteKind::Mlflow => Destination::Mlflow {
                remote: r.clone(),
                version: mlflow_version
                    .ok_or(PromoteError::NoMlflowVersion)?
                    .to_string(),
                alias: alias.to_string(),
            },
            RegistrySource::Remote(r) => Destination::Http(r.clone()),
        })
    }

    /// `dir`, `mlflow` or `http`.
    pub fn label(&self) -> &'static str {
        match self {
            Destination::Dir(_) => "dir",
            Destination::Mlflow { .. } => "mlflow",
            Destination::Http(_) => "http",
        }
    }

    /// The audit log's default place: beside a registry directory
    /// (`<dir>.promotions.jsonl`); none for a remote registry.
    pub fn default_audit_log(&self) -> Option<PathBuf> {
        match self {
            Destination::Dir(dir) => {
                let mut name = dir
                    .file_name()
                    .map(|n| n.to_os_string())
                    .unwrap_or_else(|| "registry".into());
                name.push(".promotions.jsonl");
                Some(dir.with_file_name(name))
            }
            _ => None,
        }
    }
}

/// A signed record about to be promoted, with what the audit record names.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The record: a compact JWS, or a co-signed record (JWS JSON, one line).
    pub record: String,
    pub digest: Digest,
    pub jti: String,
    pub model: String,
    pub version_id: String,
    /// Who promotes (the approver identity).
    pub iss: String,
    /// The key that signed in this promotion.
    pub kid: String,
}

/// What became of a promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Published; where.
    Published(String),
    /// The check refused it; the failing rules, each as `rule[ record]: why`.
    Refused(Vec<String>),
    /// The check passed but publishing failed; why. Nothing may have been written, or
    /// part (MLflow: the tags without the alias); the audit record says which it was not.
    Failed(String),
}

impl Outcome {
    /// The audit record of this promotion of `signed` to `env` through `dest`.
    pub fn audit(&self, signed: &Signed, env: &str, dest: &Destination) -> Marker {
        let (outcome, published_to, failed) = match self {
            Outcome::Published(to) => ("published", Some(to.clone()), Vec::new()),
            Outcome::Refused(failed) => ("refused", None, failed.clone()),
            Outcome::Failed(error) => ("failed", None, vec![format!("publish: {error}")]),
        };
        Marker::Promotion(Box::new(Promotion {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            env: env.to_string(),
            outcome: outcome.to_string(),
            iss: signed.iss.clone(),
            kid: signed.kid.clone(),
            digest: signed.digest.to_string(),
            model: signed.model.clone(),
            version_id: signed.version_id.clone(),
            record_id: signed.jti.clone(),
            registry: dest.label().to_string(),
            published_to,
            failed,
        }))
    }
}

/// The check's verdict on a promoted record: the report, and what stands in its way.
#[derive(Debug)]
pub struct Verdict {
    pub report: Report,
    /// Each failing rule as `rule[ [about]] (record ID): reason: why`; empty: it passes.
    pub failed: Vec<String>,
}

/// Would the deployment serve `signed`? The registry's answer for its digest as the
/// deployment's sidecars would verify it (existing records and exceptions), with `signed`
/// added as if published, evaluated by `check::evaluate`: the same decision code as the
/// sidecar's; an adapter with its `base` model, as the sidecar decides it. A record that
/// does not verify with the deployment's approver keys is a failing `records` rule, not an
/// error.
pub fn gate(
    deployment: &Deployment,
    signed: &Signed,
    subject: &Subject,
    base: Option<&Base<'_>>,
) -> Result<Verdict, CheckError> {
    let extra = [("the promoted record".to_string(), signed.record.clone())];
    let entry = match deployment.entry_for(&signed.digest, &extra) {
        Ok(entry) => entry,
        Err(CheckError::Record { path, error }) => {
            let report = check::evaluate(deployment, None, subject, base);
            return Ok(Verdict {
                report,
                failed: vec![format!("records ({path}): {error}")],
            });
        }
        Err(e) => return Err(e),
    };
    let report = check::evaluate(deployment, entry.as_ref(), subject, base);
    let failed = failures(&report, &signed.jti);
    Ok(Verdict { report, failed })
}

/// What keeps the deployment from serving the record `jti` by itself: the rules decided
/// before any record, that record's rules, and sampled callers it does not allow. Another
/// record that the deployment would serve does not make this one pass: the promotion is of
/// this record.
pub fn failures(report: &Report, jti: &str) -> Vec<String> {
    let text = |s: &Step| {
        let about = if s.about.is_empty() {
            String::new()
        } else {
            format!(" [{}]", s.about)
        };
        let record = s
            .record
            .as_ref()
            .map(|r| format!(" (record {r})"))
            .unwrap_or_default();
        let reason = s.reason.map(|r| format!("{r}: ")).unwrap_or_default();
        format!("{}{about}{record}: {reason}{}", s.rule, s.why)
    };
    let mut failed: Vec<String> = report
        .steps
        .iter()
        .filter(|s| s.failed())
        .map(text)
        .collect();
    let ours: Vec<_> = report.records.iter().filter(|r| r.id == jti).collect();
    match ours.first() {
        None => failed.push(format!(
            "records: record {jti} is not among the digest's records"
        )),
        // Every copy failed (a co-signed record may sit beside its earlier form): the
        // newest copy's failures say why.
        Some(newest) if !ours.iter().any(|r| r.usable) => {
            let before = failed.len();
            failed.extend(newest.steps.iter().filter(|s| s.failed()).map(text));
            if failed.len() == before {
                failed.push(format!("records: record {jti} is not usable"));
            }
        }
        Some(_) => {}
    }
    // An adapter is served only with its base.
    if let Some(base) = report.base.as_ref().filter(|b| !b.serve) {
        failed.push(format!(
            "base: the adapter's base model {} ({}) would not be served",
            base.model, base.digest
        ));
    }
    for c in &report.callers {
        if c.decision != "allow" || c.record.as_deref() != Some(jti) {
            failed.push(format!(
                "callers (caller {}#{}): {}",
                c.iss,
                c.sub,
                match (c.reason, c.detail, &c.record) {
                    (Some(reason), detail, _) => format!("{reason}: {}", detail.unwrap_or("")),
                    (None, _, Some(other)) => format!("allowed by record {other}, not {jti}"),
                    (None, _, None) => "not allowed by this record".to_string(),
                }
            ));
        }
    }
    failed
}

/// Publishes `signed` to `dest`; returns where it went.
pub fn publish(dest: &Destination, signed: &Signed) -> Result<String, PromoteError> {
    match dest {
        Destination::Dir(dir) => publish_dir(dir, signed),
        Destination::Mlflow {
            remote,
            version,
            alias,
        } => {
            let client = client(remote)?;
            runtime()?.block_on(async {
                crate::registry::mlflow::publish(
                    &client,
                    &remote.url,
                    &remote.auth,
                    &signed.model,
                    version,
                    &signed.digest,
                    &signed.record,
                )
                .await?;
                crate::registry::mlflow::set_alias(
                    &client,
                    &remote.url,
                    &remote.auth,
                    &signed.model,
                    alias,
                    version,
                )
                .await
            })?;
            Ok(format!(
                "MLflow model version {}/{version} (alias {alias})",
                signed.model
            ))
        }
        Destination::Http(remote) => {
            let client = client(remote)?;
            runtime()?.block_on(crate::registry::http::upload(
                &client,
                &remote.url,
                &remote.auth,
                &signed.digest,
                &signed.record,
            ))?;
            Ok(format!(
                "{}/approvals/sha256/{}",
                remote.url,
                signed.digest.hex()
            ))
        }
    }
}

/// Writes the record as `<jti>.jws` (see [`record_file_name`]) into `dir`, atomically: a
/// co-signed record replaces the file of its earlier form.
fn publish_dir(dir: &Path, signed: &Signed) -> Result<String, PromoteError> {
    let name = record_file_name(&signed.jti);
    write_atomic(dir, &name, &format!("{}\n", signed.record.trim())).map_err(|source| {
        PromoteError::Dir {
            dir: dir.display().to_string(),
            source,
        }
    })?;
    Ok(dir.join(name).display().to_string())
}

/// Writes wait at least this long: the configured `timeout` bounds the sidecars' reads (a
/// few seconds), and an MLflow server takes longer to store a tag of several KB when busy.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn client(remote: &RemoteRegistry) -> Result<reqwest::Client, PromoteError> {
    let writing = RemoteRegistry {
        timeout: remote.timeout.max(WRITE_TIMEOUT),
        ..remote.clone()
    };
    crate::registry::remote::client(&writing).map_err(|e| PromoteError::Client(e.to_string()))
}

fn runtime() -> Result<tokio::runtime::Runtime, PromoteError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PromoteError::Runtime)
}

#[cfg(test)]
mod tests;
