//! The policy sections: `[mode]` (enforce or dry-run), `[workload]` (who this deployment
//! is), `[trust]` (the approver keys) and `[tiers]` (evidence, quorum, lifetime, workload and
//! exception rules per exposure tier).
//! File structs, defaults, validation and the validated values the decision reads. Data
//! only: deciding is [`crate::policy`]'s; this file reads [`TierRule`] from there and must
//! not be imported by it (nor import the top-level `config`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::approval::{certificate_signer_id, identity_matches};
use crate::fields::Errors;
use crate::identity::config::{CallerAuth, Issuer};
use crate::identity::mtls::CERTIFICATE_ISSUER;
use crate::keys::KeySet;
use crate::policy::{ApproverScope, TierRule, DEFAULT_TIER};
use crate::x509::{CaBundle, CertIdentity, Identity};

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
    /// This deployment's exposure: one of the `[tiers.*]`. Its rules apply to every record,
    /// whatever tier the record claims. Default: `default`.
    #[serde(default)]
    pub tier: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustFile {
    /// JWKS file of the approver keys that sign approval records.
    pub approver_keys: String,
    /// The approvers, one `[[trust.approvers]]` block each. None: every key of
    /// `approver_keys` is an approver of its own, with no role, for every model and tier.
    #[serde(default)]
    pub approvers: Vec<ApproverFile>,
}

/// One approver: an identity that may hold several keys, and/or a certificate identity
/// (records signed with an `x5c` chain to `ca_bundle` whose leaf carries `identity`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproverFile {
    /// A name for the audit log and for counting quorum (two keys of one approver count once).
    pub name: String,
    /// The `kid`s of its keys in `approver_keys`.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Certificate form: PEM file of the CA certificates a record's `x5c` chain must
    /// validate to (when the record is loaded), with `identity`.
    #[serde(default)]
    pub ca_bundle: Option<String>,
    /// Certificate form: the identity the `x5c` leaf must carry in a SAN: `spiffe://...`
    /// (any `scheme://` URI), `email:ADDRESS` or `dns:NAME`. Its records are signed by
    /// `x509:IDENTITY` in the audit log.
    #[serde(default)]
    pub identity: Option<String>,
    /// Its roles, for tier quorums (e.g. `owner`, `security`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Models it may approve (exact, or a prefix ending in `*`).
    #[serde(default = "everything")]
    pub models: Vec<String>,
    /// Tiers it may approve (exact, or a prefix ending in `*`).
    #[serde(default = "everything")]
    pub tiers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierFile {
    /// Evidence kinds that must be present with verdict `pass`.
    #[serde(default)]
    pub required_evidence: Vec<String>,
    /// Roles, each to be held by a distinct approver who signed the record.
    #[serde(default)]
    pub quorum: Vec<String>,
    /// The longest validity (`exp - nbf`) a record may have, e.g. `"30d"`.
    #[serde(default)]
    pub max_lifetime: Option<String>,
    /// Workload identities this tier may run on (exact, or `prefix*`); default any.
    #[serde(default)]
    pub workloads: Vec<String>,
    /// Whether signed exceptions may waive one of this tier's requirements (an evidence
    /// kind or a quorum role). Default `false`: an exception weakens the tier, so a tier
    /// opts in; every tier that imposes the waived requirement (the deployment's, the
    /// record's) must allow it.
    #[serde(default)]
    pub exceptions: bool,
    /// The longest validity (`exp - nbf`) an exception may have; default
    /// [`DEFAULT_MAX_EXCEPTION_LIFETIME`]. Only with `exceptions = true`.
    #[serde(default)]
    pub max_exception_lifetime: Option<String>,
    /// Roles one of which an exception's approver must hold (e.g. `["security"]`);
    /// default any approver in scope. Only with `exceptions = true`.
    #[serde(default)]
    pub exception_roles: Vec<String>,
}

/// An exception's longest validity when a tier allows exceptions and names no maximum.
pub const DEFAULT_MAX_EXCEPTION_LIFETIME: &str = "7d";

fn everything() -> Vec<String> {
    vec!["*".into()]
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
    /// `[workload] tier`, if given (checked against `[tiers]` by [`validate_tiers`]).
    pub tier: Option<String>,
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
            tier: self.tier.clone(),
            token_file,
        }
    }
}

/// The validated `[trust]` section.
#[derive(Debug)]
pub struct Trust {
    pub keys: KeySet,
    /// Approvers by key ID ([`crate::policy::Policy::approvers`]).
    pub approvers: HashMap<String, Arc<ApproverScope>, crate::base::FastHash>,
}

impl TrustFile {
    /// Loads the approver keys and binds them to approvers; every problem goes to `errors`.
    pub fn validate(&self, errors: &mut Errors) -> Trust {
        let mut keys = KeySet::from_jwks_file(Path::new(&self.approver_keys)).unwrap_or_else(|e| {
            errors.push("trust.approver_keys", e);
            KeySet::default()
        });
        for (i, f) in self.approvers.iter().enumerate() {
            if let (Some(ca), Some(id)) = (&f.ca_bundle, &f.identity) {
                let at = format!("trust.approvers[{i}]");
                let identity = id.parse::<Identity>();
                if let Err(e) = &identity {
                    errors.push(format_args!("{at}.identity"), e);
                }
                match (CaBundle::from_pem_file(Path::new(ca)), identity) {
                    (Ok(ca), Ok(identity)) => keys
                        .certificates
                        .push(Arc::new(CertIdentity { ca, identity })),
                    (Err(e), _) => errors.push(format_args!("{at}.ca_bundle"), e),
                    _ => {}
                }
            }
        }
        let approvers = approver_scopes(&self.approvers, &keys, true, errors);
        Trust { keys, approvers }
    }
}

/// Binds key IDs to approvers. Without `[[trust.approvers]]`, each key is its own approver
/// (named `key:KID`), with no role, for every model and tier: records signed as before keep
/// working, and no tier can require a quorum. `strict` (at start): an approver's key ID
/// missing from `keys` is an error; on a reload it is a withdrawn key, left out.
pub fn approver_scopes(
    files: &[ApproverFile],
    keys: &KeySet,
    strict: bool,
    errors: &mut Errors,
) -> HashMap<String, Arc<ApproverScope>, crate::base::FastHash> {
    let mut by_kid = HashMap::default();
    if files.is_empty() {
        for k in &keys.keys {
            let kid = k.kid.clone().unwrap_or_default();
            by_kid.entry(kid.clone()).or_insert_with(|| {
                Arc::new(ApproverScope {
                    name: format!("key:{kid}"),
                    roles: Vec::new(),
                    models: everything(),
                    tiers: everything(),
                })
            });
        }
        return by_kid;
    }
    let mut names = std::collections::HashSet::new();
    for (i, f) in files.iter().enumerate() {
        let at = format!("trust.approvers[{i}]");
        errors.nonempty(&format!("{at}.name"), &f.name);
        if !names.insert(f.name.as_str()) {
            errors.push(
                format_args!("{at}.name"),
                format_args!("{:?} is configured twice", f.name),
            );
        }
        let certificate = match (&f.ca_bundle, &f.identity) {
            (None, None) => None,
            (Some(_), Some(id)) => id.parse::<Identity>().ok(),
            _ => {
                errors.push(
                    format_args!("{at}.ca_bundle"),
                    "ca_bundle and identity go together",
                );
                None
            }
        };
        if f.keys.is_empty() && f.ca_bundle.is_none() && f.identity.is_none() {
            errors.push(
                format_args!("{at}.keys"),
                "at least one key ID, or a ca_bundle and identity, is needed",
            );
        }
        for (field, list) in [("models", &f.models), ("tiers", &f.tiers)] {
            if list.is_empty() {
                errors.push(
                    format_args!("{at}.{field}"),
                    "empty: this approver could approve nothing (\"*\" for everything)",
                );
            }
        }
        let scope = Arc::new(ApproverScope {
            name: f.name.clone(),
            roles: f.roles.clone(),
            models: f.models.clone(),
            tiers: f.tiers.clone(),
        });
        if let Some(identity) = certificate {
            let id = certificate_signer_id(&identity);
            if by_kid.insert(id.clone(), scope.clone()).is_some() {
                errors.push(
                    format_args!("{at}.identity"),
                    format_args!("{id:?} belongs to two approvers"),
                );
            }
        }
        for kid in &f.keys {
            if !keys
                .keys
                .iter()
                .any(|k| k.kid.as_deref() == Some(kid.as_str()))
            {
                if strict {
                    errors.push(
                        format_args!("{at}.keys"),
                        format_args!("{kid:?} is not a key ID in trust.approver_keys"),
                    );
                }
                continue;
            }
            if by_kid.insert(kid.clone(), scope.clone()).is_some() {
                errors.push(
                    format_args!("{at}.keys"),
                    format_args!("{kid:?} belongs to two approvers"),
                );
            }
        }
    }
    by_kid
}

/// The validated `[tiers]` table with the deployment's tier: the rule of each tier by name
/// (with [`DEFAULT_TIER`] always present), and `(name, rule)` of the deployment's. Refuses
/// names that differ only in case (a record's `tier` is compared exactly), a deployment
/// tier that is not configured, and a quorum role no approver in scope holds.
pub fn validate_tiers(
    tiers: HashMap<String, TierFile>,
    workload_tier: Option<&str>,
    approvers: &HashMap<String, Arc<ApproverScope>, crate::base::FastHash>,
    errors: &mut Errors,
) -> (
    HashMap<String, TierRule, crate::base::FastHash>,
    String,
    TierRule,
) {
    let mut rules: HashMap<String, TierRule, crate::base::FastHash> = tiers
        .into_iter()
        .map(|(name, t)| {
            let max_lifetime = t.max_lifetime.as_deref().map(|d| {
                errors
                    .duration(&format!("tiers.{name}.max_lifetime"), d)
                    .as_secs()
            });
            if max_lifetime == Some(0) {
                errors.push(
                    format_args!("tiers.{name}.max_lifetime"),
                    "must be at least 1s",
                );
            }
            if !t.exceptions
                && (t.max_exception_lifetime.is_some() || !t.exception_roles.is_empty())
            {
                errors.push(
                    format_args!("tiers.{name}.exceptions"),
                    "max_exception_lifetime and exception_roles need exceptions = true",
                );
            }
            let max_exception_lifetime = if t.exceptions {
                let d = t
                    .max_exception_lifetime
                    .as_deref()
                    .unwrap_or(DEFAULT_MAX_EXCEPTION_LIFETIME);
                let secs = errors
                    .duration(&format!("tiers.{name}.max_exception_lifetime"), d)
                    .as_secs();
                if secs == 0 {
                    errors.push(
                        format_args!("tiers.{name}.max_exception_lifetime"),
                        "must be at least 1s",
                    );
                }
                secs
            } else {
                0
            };
            let rule = TierRule {
                required_evidence: t.required_evidence,
                quorum: t.quorum,
                max_lifetime,
                workloads: t.workloads,
                exceptions: t.exceptions,
                max_exception_lifetime,
                exception_roles: t.exception_roles,
            };
            (name, rule)
        })
        .collect();
    rules.entry(DEFAULT_TIER.to_string()).or_default();
    let mut names: Vec<&String> = rules.keys().collect();
    names.sort();
    for (i, a) in names.iter().enumerate() {
        for b in names.iter().skip(i + 1) {
            if a.eq_ignore_ascii_case(b) {
                errors.push(
                    format_args!("tiers.{b}"),
                    format_args!("differs from tiers.{a} only in case"),
                );
            }
        }
    }
    check_tier_roles(&rules, approvers, errors);
    for name in &names {
        // `names` are the keys of `rules`.
        let Some(rule) = rules.get(*name) else {
            continue;
        };
        let mut seen = Vec::new();
        for role in &rule.quorum {
            if seen.contains(&role) {
                errors.push(
                    format_args!("tiers.{name}.quorum"),
                    format_args!("{role:?} is listed twice"),
                );
            }
            seen.push(role);
        }
    }
    let tier = workload_tier.unwrap_or(DEFAULT_TIER).to_string();
    let rule = match rules.get(&tier) {
        Some(r) => r.clone(),
        None => {
            errors.push(
                "workload.tier",
                format_args!("{tier:?} is not a configured tier (add [tiers.{tier}])"),
            );
            TierRule::default()
        }
    };
    (rules, tier, rule)
}

/// Every quorum role and exception role of every tier is held by some approver who may
/// approve that tier (at start an error; after a reload that withdrew one, a warning).
pub fn check_tier_roles(
    rules: &HashMap<String, TierRule, crate::base::FastHash>,
    approvers: &HashMap<String, Arc<ApproverScope>, crate::base::FastHash>,
    errors: &mut Errors,
) {
    let mut distinct: Vec<&ApproverScope> = Vec::new();
    for a in approvers.values() {
        if !distinct.iter().any(|d| d.name == a.name) {
            distinct.push(a);
        }
    }
    let mut names: Vec<&String> = rules.keys().collect();
    names.sort();
    for name in names {
        let Some(rule) = rules.get(name) else {
            continue;
        };
        for role in &rule.quorum {
            let holders = distinct
                .iter()
                .filter(|a| a.roles.contains(role) && identity_matches(&a.tiers, name))
                .count();
            if holders == 0 {
                errors.push(
                    format_args!("tiers.{name}.quorum"),
                    format_args!("no approver in [[trust.approvers]] may approve tier {name:?} with role {role:?}"),
                );
            }
        }
        if !rule.exception_roles.is_empty()
            && !distinct.iter().any(|a| {
                identity_matches(&a.tiers, name)
                    && a.roles.iter().any(|r| rule.exception_roles.contains(r))
            })
        {
            errors.push(
                format_args!("tiers.{name}.exception_roles"),
                format_args!("no approver in [[trust.approvers]] may approve tier {name:?} with one of these roles"),
            );
        }
    }
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
