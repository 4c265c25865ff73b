//! Configuration: the top of the one-way flow. [`FileConfig`] gathers the TOML sections,
//! each owned by its component beside the code that uses it (file struct with
//! `deny_unknown_fields`, every field documented, safe defaults: enforce mode, fail closed,
//! loopback listeners; its slice of validation; its validated type). [`FileConfig::validate`]
//! calls each section, runs the checks that span sections, and reports every error at once,
//! each with its key path, through [`crate::fields::Errors`].
//!
//! Components must not import this module; it imports them. It still holds, until they
//! move to their owners, the `[routing]` and `[audit]` sections.
//!
//! Relative paths are taken from the working directory provgate runs in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::artefact::config::{validate_models, ArtefactFile, ModelConfig};
use crate::fields::Errors;
use crate::identity::config::{Callers, CallersFile};
use crate::keys::KeySet;
use crate::policy::config::{tier_rules, ModeFile, TierFile, TrustFile, Workload, WorkloadFile};
use crate::policy::TierRule;
use crate::probe::config::Probe;
use crate::registry::config::{RegistryConfig, RegistryFile};
use crate::server::config::{
    AdminFile, Listen, ListenFile, LogFile, LogSettings, ServerFile, ServerSettings,
};
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    /// POST paths whose JSON body names the model in its `model` field (the OpenAI API).
    /// Their bodies are read (up to `max_body_bytes`) before the decision and forwarded
    /// unchanged. An empty list turns body inspection off.
    #[serde(default = "default_openai_paths")]
    pub openai_paths: Vec<String>,
    /// The largest body read to find `model`; a larger one is refused with 413. At most
    /// 65536: pingora 0.9 can replay at most 64 KiB of a body it has already read.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// On a single-model sidecar, a body declared larger than `max_body_bytes` (by its
    /// Content-Length) and at most this large is held back until it is whole, checked, and
    /// only then sent upstream; a larger one is refused with 413. 0: refuse them all.
    #[serde(default = "default_max_held_body")]
    pub max_held_body_bytes: usize,
    /// All bodies held back at once, together: past it, a body that would be held is
    /// refused with 413, so callers cannot make the sidecar hold unbounded memory.
    #[serde(default = "default_max_held_total")]
    pub max_held_total_bytes: usize,
    /// The OpenAI model list (`GET`): its `data` is filtered to the models this caller may
    /// use right now. Empty: no filtering.
    #[serde(default = "default_models_path")]
    pub models_path: String,
}

impl Default for RoutingFile {
    fn default() -> Self {
        RoutingFile {
            openai_paths: default_openai_paths(),
            max_body_bytes: default_max_body(),
            max_held_body_bytes: default_max_held_body(),
            max_held_total_bytes: default_max_held_total(),
            models_path: default_models_path(),
        }
    }
}

/// pingora 0.9 keeps at most this much of a request body for replay (`BODY_BUF_LIMIT`).
pub const MAX_INSPECTED_BODY: usize = 64 * 1024;

/// The largest `routing.max_held_body_bytes`.
pub const MAX_HELD_BODY: usize = 256 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    /// JSON Lines file; created if missing, appended to, hash chain continued.
    #[serde(default = "default_audit_path")]
    pub path: String,
    /// Also record allowed requests (not only blocked ones).
    #[serde(default)]
    pub log_allowed: bool,
    /// Records queued for the writer before new ones are dropped (and counted).
    #[serde(default = "default_audit_queue")]
    pub queue: usize,
}

impl Default for AuditFile {
    fn default() -> Self {
        AuditFile {
            path: default_audit_path(),
            log_allowed: false,
            queue: default_audit_queue(),
        }
    }
}

fn default_openai_paths() -> Vec<String> {
    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
        .map(String::from)
        .to_vec()
}
fn default_max_body() -> usize {
    MAX_INSPECTED_BODY
}
fn default_max_held_body() -> usize {
    8 << 20
}
fn default_max_held_total() -> usize {
    64 << 20
}
fn default_models_path() -> String {
    "/v1/models".into()
}

fn default_audit_path() -> String {
    "provgate-audit.jsonl".into()
}
fn default_audit_queue() -> usize {
    65_536
}

// === Validated config ===

/// How requests name their model.
#[derive(Debug, Clone)]
pub struct Routing {
    pub openai_paths: Vec<String>,
    pub max_body_bytes: usize,
    pub max_held_body_bytes: usize,
    pub max_held_total_bytes: usize,
    pub models_path: Option<String>,
}

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
    pub callers: Callers,
    pub tiers: HashMap<String, TierRule>,
    pub audit_path: PathBuf,
    pub log_allowed: bool,
    pub audit_queue: usize,
    /// `[server]`.
    pub server: ServerSettings,
    pub log: LogSettings,
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
        let routing = validate_routing(self.routing, &mut errors);
        let registry = self.registry.validate(&mut errors);
        let workload = self.workload.validate(&mut errors);
        let approvers = self.trust.validate(&mut errors);
        let callers = self.callers.validate(&mut errors);
        let server = self.server.validate(&mut errors);
        let log = self.log.validate(&mut errors);
        if self.audit.queue == 0 {
            errors.push("audit.queue", "must be at least 1");
        }

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
            approvers,
            callers,
            tiers: tier_rules(self.tiers),
            audit_path: PathBuf::from(self.audit.path),
            log_allowed: self.audit.log_allowed,
            audit_queue: self.audit.queue,
            server,
            log,
        })
    }
}

/// Checks `[routing]`; every problem goes to `errors`.
fn validate_routing(routing: RoutingFile, errors: &mut Errors) -> Routing {
    if routing.max_body_bytes == 0 || routing.max_body_bytes > MAX_INSPECTED_BODY {
        errors.push(
            "routing.max_body_bytes",
            format_args!("must be between 1 and {MAX_INSPECTED_BODY} (pingora replays at most 64 KiB of a body read before the decision)"),
        );
    }
    if routing.max_held_body_bytes > MAX_HELD_BODY {
        errors.push(
            "routing.max_held_body_bytes",
            format_args!(
                "at most {MAX_HELD_BODY} (each request holding a body keeps it in memory)"
            ),
        );
    }
    if routing.max_held_total_bytes < routing.max_held_body_bytes {
        errors.push(
            "routing.max_held_total_bytes",
            "must be at least routing.max_held_body_bytes",
        );
    }
    for (i, p) in routing.openai_paths.iter().enumerate() {
        if !p.starts_with('/') {
            errors.push(
                format_args!("routing.openai_paths[{i}]"),
                format_args!("{p:?} must start with /"),
            );
        }
    }
    if !routing.models_path.is_empty() && !routing.models_path.starts_with('/') {
        errors.push(
            "routing.models_path",
            format_args!("{:?} must start with / (or be empty)", routing.models_path),
        );
    }
    Routing {
        openai_paths: routing.openai_paths,
        max_body_bytes: routing.max_body_bytes,
        max_held_body_bytes: routing.max_held_body_bytes,
        max_held_total_bytes: routing.max_held_total_bytes,
        models_path: Some(routing.models_path).filter(|p| !p.is_empty()),
    }
}

/// Loads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    FileConfig::load(path)?.validate()
}

#[cfg(test)]
mod tests;
