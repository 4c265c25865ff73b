//! Stand-ins for the core's `check::Deployment`, `check::entry_for` and
//! `policy::decide_traced` until they land on main; removed at the merge.

use std::path::{Path, PathBuf};

use super::ExplainError;
use crate::config::Config;
use crate::digest::Digest;
use crate::policy::{Decision, Input, Policy};
use crate::registry::config::RegistrySource;
use crate::registry::RegistryEntry;

pub struct Deployment {
    pub path: PathBuf,
    pub config: Config,
    pub policy: Policy,
}

impl Deployment {
    pub fn load(path: &Path) -> Result<Deployment, ExplainError> {
        let config = crate::config::load(path).map_err(|e| ExplainError::Interim(e.to_string()))?;
        let policy = Policy {
            workload_identity: config.workload.identity.clone(),
            tiers: config.tiers.clone(),
            tier: config.tier.clone(),
            tier_rule: config.tier_rule.clone(),
            approvers: config.approver_scopes.clone(),
            bare_issuers: crate::policy::config::bare_issuers(
                &config.callers.issuers,
                config.listen.caller_auth,
            ),
        };
        Ok(Deployment {
            path: path.to_path_buf(),
            config,
            policy,
        })
    }
}

pub fn entry_for(
    d: &Deployment,
    digest: &Digest,
    _extra: &[String],
) -> Result<RegistryEntry, ExplainError> {
    let RegistrySource::Dir(dir) = &d.config.registry.source else {
        return Err(ExplainError::Interim("remote registry".into()));
    };
    let snap = crate::registry::load_dir(dir, &d.config.approvers)
        .map_err(|e| ExplainError::Interim(e.to_string()))?;
    Ok(match snap.by_digest.get(digest) {
        Some(e) => RegistryEntry {
            records: e.records.clone(),
            exceptions: e.exceptions.clone(),
            invalid: e.invalid.clone(),
            revalidate_after: e.revalidate_after,
            revoked: e.revoked,
            clocks: Vec::new(),
        },
        None => RegistryEntry::default(),
    })
}

pub fn decide_traced(policy: &Policy, input: &Input<'_>, _steps: &mut Vec<Step>) -> Decision {
    crate::policy::decide(policy, input)
}

/// The core's `policy::trace::Rule`, reduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rule(pub &'static str);

impl Rule {
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

/// The core's `policy::trace::Step`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    pub rule: Rule,
    pub record: Option<String>,
    pub about: String,
    pub outcome: &'static str,
    pub reason: Option<&'static str>,
    pub why: String,
}

impl Step {
    pub fn failed(&self) -> bool {
        self.outcome == "fail"
    }
}
