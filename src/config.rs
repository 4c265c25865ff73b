//! Configuration: the top of the one-way flow. [`FileConfig`] gathers the TOML sections,
//! each owned by its component beside the code that uses it (file struct with
//! `deny_unknown_fields`, every field documented, safe defaults: enforce mode, fail closed,
//! loopback listeners; its slice of validation; its validated type). [`FileConfig::validate`]
//! calls each section, runs the checks that span sections, and reports every error at once,
//! each with its key path, through [`crate::fields::Errors`].
//!
//! Components must not import this module; it imports them.
//!
//! Relative paths are taken from the working directory provgate runs in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::artefact::config::{validate_models, ArtefactFile, ModelConfig};
use crate::audit::config::{AuditConfig, AuditFile};
use crate::fields::Errors;
use crate::identity::config::{Callers, CallersFile};
use crate::keys::KeySet;
use crate::policy::config::{
    validate_tiers, ApproverFile, ModeFile, TierFile, TrustFile, Workload, WorkloadFile,
};
use crate::policy::{ApproverScope, TierRule};
use crate::probe::config::Probe;
use crate::process::{
    AdminFile, Listen, ListenFile, LogFile, LogSettings, ServerFile, ServerSettings,
};
use crate::proxy::routing::config::{Routing, RoutingFile};
use crate::registry::config::{RegistryConfig, RegistryFile};
use crate::trace::config::{Tracing, TracingFile};
use crate::upstream::{Upstream, UpstreamFile};

// === File structs ===

/// The configuration file: one field per section, each section's type owned by its
/// component.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where callers connect, and how they authenticate.
    #[serde(default)]
    pub listen: ListenFile,
    /// The metrics and health listener.
    #[serde(default)]
    pub admin: AdminFile,
    /// The model server.
    pub upstream: UpstreamFile,
    /// Enforce or dry-run.
    #[serde(default)]
    pub mode: ModeFile,
    /// This deployment's identity.
    pub workload: WorkloadFile,
    /// The model this sidecar guards. Give this (one model)...
    #[serde(default)]
    pub artefact: Option<ArtefactFile>,
    /// ...or one `[[artefacts]]` block per model, for a multi-model server: each is hashed,
    /// approved and decided on its own.
    #[serde(default)]
    pub artefacts: Vec<ArtefactFile>,
    /// How requests name their model.
    #[serde(default)]
    pub routing: RoutingFile,
    /// Where approval records come from.
    pub registry: RegistryFile,
    /// The approver keys.
    pub trust: TrustFile,
    /// The trusted token issuers.
    #[serde(default)]
    pub callers: CallersFile,
    /// Evidence rules per exposure tier: `[tiers.customer-facing] required_evidence = [...]`.
    #[serde(default)]
    pub tiers: HashMap<String, TierFile>,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditFile,
    /// Threads and shutdown.
    #[serde(default)]
    pub server: ServerFile,
    /// Process logs.
    #[serde(default)]
    pub log: LogFile,
    /// Request traces (W3C `traceparent`, OTLP spans); off unless `otlp_endpoint` is given.
    #[serde(default)]
    pub tracing: TracingFile,
}

// === Validated config ===

/// The validated configuration: one field per section, each the validated value its
/// component owns.
#[derive(Debug)]
pub struct Config {
    /// `[listen]`: the address, how callers authenticate, TLS.
    pub listen: Listen,
    /// `[admin]`.
    pub admin: SocketAddr,
    pub upstream: Upstream,
    /// `[upstream.probe]`, if configured.
    pub probe: Option<Probe>,
    /// The guarded models, in configuration order (at least one).
    pub models: Vec<ModelConfig>,
    pub routing: Routing,
    pub registry: RegistryConfig,
    /// `[mode] enforce`.
    pub enforce: bool,
    pub workload: Workload,
    /// `[trust] approver_keys`, loaded.
    pub approvers: KeySet,
    /// `[[trust.approvers]]`, by key ID.
    pub approver_scopes: HashMap<String, Arc<ApproverScope>, crate::base::FastHash>,
    /// `[trust]` as written, for reloads: the key file and the approvers.
    pub approver_keys_path: PathBuf,
    pub approver_files: Vec<ApproverFile>,
    /// The file this configuration was loaded from (its `[trust]` section is re-read on
    /// change and SIGHUP); `None` when it was parsed from text.
    pub source: Option<PathBuf>,
    pub callers: Callers,
    pub tiers: HashMap<String, TierRule, crate::base::FastHash>,
    /// The deployment's tier (`[workload] tier`, else `default`) and its rule.
    pub tier: String,
    pub tier_rule: TierRule,
    /// `[audit]`.
    pub audit: AuditConfig,
    /// `[server]`.
    pub server: ServerSettings,
    pub log: LogSettings,
    /// `[tracing]`; `None`: tracing off.
    pub tracing: Option<Tracing>,
}

/// Every problem found in a configuration, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

impl FileConfig {
    /// Parses TOML text; unknown keys and wrong types are errors naming the key.
    pub fn parse(text: &str) -> Result<FileConfig, ConfigErrors> {
        toml::from_str(text).map_err(|e| ConfigErrors(vec![e.to_string().trim_end().to_string()]))
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        Self::parse(&text)
    }

    /// Checks every section and loads the key files, reporting all problems at once.
    pub fn validate(self) -> Result<Config, ConfigErrors> {
        let mut errors = Errors::new();
        let listen = self.listen.validate(&mut errors);
        let admin = self.admin.validate(&mut errors);
        if listen.address == admin && admin.port() != 0 {
            errors.push("admin.address", "must differ from listen.address");
        }
        let upstream = self.upstream.validate(&mut errors);
        let probe = self
            .upstream
            .probe
            .as_ref()
            .map(|p| p.validate(&mut errors));
        let models = validate_models(self.artefact.as_ref(), &self.artefacts, &mut errors);
        let routing = {
            let mut lines = Vec::new();
            let routing = self.routing.validate(&upstream.api, &mut lines);
            errors.extend(lines);
            routing
        };
        let registry = self.registry.validate(&mut errors);
        let workload = self.workload.validate(&mut errors);
        let trust = self.trust.validate(&mut errors);
        let (tiers, tier, tier_rule) = validate_tiers(
            self.tiers,
            workload.tier.as_deref(),
            &trust.approvers,
            &mut errors,
        );
        let callers = self.callers.validate(&mut errors);
        if listen.caller_auth == crate::identity::config::CallerAuth::TokenOrCertificate {
            // A client certificate's SPIFFE ID is a bare-matched caller (`x509-svid`): no
            // bare-matched token issuer may assert SPIFFE IDs too.
            for (i, issuer) in callers.issuers.iter().enumerate() {
                if !issuer.qualified && issuer.profile.asserts_spiffe_ids() {
                    errors.push(
                        format_args!("callers.issuers[{i}].qualified"),
                        format_args!(
                            "issuer {:?} could assert the SPIFFE IDs client certificates \
                             carry (caller_auth = \"token_or_certificate\"): set qualified = true",
                            issuer.issuer
                        ),
                    );
                }
            }
        }
        if !tier_rule.workloads.is_empty()
            && !workload.identity.is_empty()
            && !crate::approval::identity_matches(&tier_rule.workloads, &workload.identity)
        {
            errors.push(
                "workload.tier",
                format_args!(
                    "{tier:?} may not run on this workload ({:?} is not in tiers.{tier}.workloads)",
                    workload.identity
                ),
            );
        }
        let server = self.server.validate(&mut errors);
        let log = self.log.validate(&mut errors);
        let tracing = self.tracing.validate(&mut errors);
        let audit = {
            let mut lines = Vec::new();
            let audit = self.audit.validate(&mut lines);
            errors.extend(lines);
            audit
        };

        if !errors.is_empty() {
            return Err(ConfigErrors(errors.into_messages()));
        }
        Ok(Config {
            listen,
            admin,
            upstream,
            probe,
            models,
            routing,
            registry,
            enforce: self.mode.enforce,
            workload,
            approvers: trust.keys,
            approver_scopes: trust.approvers,
            approver_keys_path: PathBuf::from(&self.trust.approver_keys),
            approver_files: self.trust.approvers.clone(),
            source: None,
            tier,
            tier_rule,
            callers,
            tiers,
            audit,
            server,
            log,
            tracing,
        })
    }
}

/// Loads and validates a configuration file.
impl Config {
    /// The decision's static half, as the sidecar builds it at start (and `provgate check`
    /// and `provgate explain` offline).
    pub fn policy(&self) -> crate::policy::Policy {
        crate::policy::Policy {
            workload_identity: self.workload.identity.clone(),
            tiers: self.tiers.clone(),
            tier: self.tier.clone(),
            tier_rule: self.tier_rule.clone(),
            approvers: self.approver_scopes.clone(),
            bare_issuers: crate::policy::config::bare_issuers(
                &self.callers.issuers,
                self.listen.caller_auth,
            ),
        }
    }
}

pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let mut config = FileConfig::load(path)?.validate()?;
    config.source = Some(path.to_path_buf());
    Ok(config)
}

#[cfg(test)]
mod tests;
