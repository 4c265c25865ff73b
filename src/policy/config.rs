//! The policy sections: `[mode]` (enforce or dry-run), `[workload]` (who this deployment
//! is), `[trust]` (the approver keys) and `[tiers]` (evidence rules per exposure tier).
//! File structs, defaults, validation and the validated values the decision reads. Data
//! only: deciding is [`crate::policy`]'s; this file reads [`TierRule`] from there and must
//! not be imported by it (nor import [`crate::config`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::fields::Errors;
use crate::identity::config::{CallerAuth, Issuer};
use crate::identity::mtls::CERTIFICATE_ISSUER;
use crate::keys::KeySet;
use crate::policy::TierRule;

// === File structs ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeFile {
    /// `true`: block what fails the checks. `false`: dry-run (allow, but log and count
    /// `would_block`).
    #[serde(default = "yes")]
    pub enforce: bool,
}

impl Default for ModeFile {
    fn default() -> Self {
        ModeFile { enforce: true }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFile {
    /// This deployment's identity (e.g. its SPIFFE ID); approval records must list it in
    /// `workloads`. Give this...
    #[serde(default)]
    pub identity: Option<String>,
    /// ...or a projected token file (Kubernetes service-account token, JWT-SVID) whose
    /// `sub` is the identity; re-read every `identity_refresh`, so a rotated token is
    /// followed.
    #[serde(default)]
    pub identity_token_file: Option<String>,
    /// How often `identity_token_file` is read again.
    #[serde(default = "default_identity_refresh")]
    pub identity_refresh: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustFile {
    /// JWKS file of the approver keys that sign approval records.
    pub approver_keys: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierFile {
    /// Evidence kinds that must be present with verdict `pass`.
    #[serde(default)]
    pub required_evidence: Vec<String>,
}

fn yes() -> bool {
    true
}
fn default_identity_refresh() -> String {
    "10s".into()
}

// === Validated config ===

/// The validated `[workload]` section.
#[derive(Debug)]
pub struct Workload {
    pub identity: String,
    /// Where the identity is re-read from, and how often (None: fixed).
    pub token_file: Option<(PathBuf, Duration)>,
}

impl WorkloadFile {
    /// Checks `[workload]`, reading the token file's `sub` once; every problem goes to
    /// `errors`.
    pub fn validate(&self, errors: &mut Errors) -> Workload {
        let refresh = errors.duration("workload.identity_refresh", &self.identity_refresh);
        let (identity, token_file) = match (&self.identity, &self.identity_token_file) {
            (Some(id), None) => {
                errors.nonempty("workload.identity", id);
                (id.clone(), None)
            }
            (None, Some(file)) => match crate::identity::token_subject(Path::new(file)) {
                Ok(sub) => (sub, Some((PathBuf::from(file), refresh))),
                Err(e) => {
                    errors.push("workload.identity_token_file", e);
                    (String::new(), None)
                }
            },
            _ => {
                errors.push(
                    "workload",
                    "give exactly one of identity, identity_token_file",
                );
                (String::new(), None)
            }
        };
        Workload {
            identity,
            token_file,
        }
    }
}

impl TrustFile {
    /// Loads the approver keys; a missing or unreadable file goes to `errors`.
    pub fn validate(&self, errors: &mut Errors) -> KeySet {
        KeySet::from_jwks_file(Path::new(&self.approver_keys)).unwrap_or_else(|e| {
            errors.push("trust.approver_keys", e);
            KeySet::default()
        })
    }
}

/// The validated `[tiers]` table: the rule of each exposure tier, by name.
pub fn tier_rules(tiers: HashMap<String, TierFile>) -> HashMap<String, TierRule> {
    tiers
        .into_iter()
        .map(|(name, t)| {
            (
                name,
                TierRule {
                    required_evidence: t.required_evidence,
                },
            )
        })
        .collect()
}

/// The issuers whose callers bare caller patterns match ([`crate::policy::Policy::bare_issuers`]):
/// every token issuer not configured `qualified = true`, and the certificate issuer
/// (`x509-svid`) when client certificates identify callers. The configuration's validation
/// has made sure no two of them can assert the same name.
pub fn bare_issuers(issuers: &[Issuer], caller_auth: CallerAuth) -> Vec<Arc<str>> {
    let mut bare: Vec<Arc<str>> = issuers
        .iter()
        .filter(|i| !i.qualified)
        .map(|i| Arc::from(i.issuer.as_str()))
        .collect();
    if caller_auth != CallerAuth::Token {
        bare.push(Arc::from(CERTIFICATE_ISSUER));
    }
    bare
}
