//! Configuration: TOML file structs (`deny_unknown_fields`, every field documented, safe
//! defaults: enforce mode, fail closed, loopback listeners), then [`FileConfig::validate`],
//! which turns them into typed values and reports every error at once, each with its key path.
//!
//! Relative paths are taken from the working directory provgate runs in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::audit::config::{AuditConfig, AuditFile};
use crate::keys::KeySet;
use crate::policy::TierRule;

// === File structs ===

/// The configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub listen: ListenFile,
    #[serde(default)]
    pub admin: AdminFile,
    pub upstream: UpstreamFile,
    #[serde(default)]
    pub mode: ModeFile,
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
    pub registry: RegistryFile,
    pub trust: TrustFile,
    #[serde(default)]
    pub callers: CallersFile,
    /// Evidence rules per exposure tier: `[tiers.customer-facing] required_evidence = [...]`.
    #[serde(default)]
    pub tiers: HashMap<String, TierFile>,
    #[serde(default)]
    pub audit: AuditFile,
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub log: LogFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// Where callers connect. Default: loopback only.
    #[serde(default = "default_listen")]
    pub address: String,
    /// Terminate TLS on the listener with this certificate chain and key (PEM).
    #[serde(default)]
    pub tls_cert: Option<String>,
    #[serde(default)]
    pub tls_key: Option<String>,
    /// CA bundle (PEM) for client certificates; a verified client certificate's SPIFFE URI
    /// SAN is a caller identity.
    #[serde(default)]
    pub client_ca: Option<String>,
    /// How callers prove who they are: `token` (bearer JWT), `certificate` (mTLS client
    /// certificate, required at the handshake), `token_or_certificate`, or
    /// `token_and_certificate` (both, naming the same identity).
    #[serde(default = "default_caller_auth")]
    pub caller_auth: String,
}

impl Default for ListenFile {
    fn default() -> Self {
        ListenFile {
            address: default_listen(),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            caller_auth: default_caller_auth(),
        }
    }
}

fn default_caller_auth() -> String {
    "token".into()
}

/// How callers authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerAuth {
    Token,
    Certificate,
    TokenOrCertificate,
    TokenAndCertificate,
}

/// TLS on the listener.
#[derive(Debug, Clone)]
pub struct ListenTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// `/metrics`, `/healthz`, `/readyz`. Default: loopback only.
    #[serde(default = "default_admin")]
    pub address: String,
}

impl Default for AdminFile {
    fn default() -> Self {
        AdminFile {
            address: default_admin(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// The model server, `host:port`.
    pub address: String,
    /// `http1`, `h2c` (HTTP/2 over cleartext) or `https` (TLS with rustls, HTTP/2 or 1.1 by ALPN).
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// TLS server name for `https`; defaults to the address's host.
    #[serde(default)]
    pub sni: Option<String>,
    /// Forward the caller's `Authorization` header to the model server. Default: strip it.
    #[serde(default)]
    pub forward_token: bool,
    /// TCP connect timeout.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// Idle connections kept per upstream for reuse.
    #[serde(default = "default_pool")]
    pub keepalive_pool: usize,
    /// Optional cross-check of what the model server says it serves, polled in the
    /// background (`[upstream.probe]`).
    #[serde(default)]
    pub probe: Option<ProbeFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeFile {
    /// `kserve_v2` (`GET /v2/models/{model}` must answer 200 naming the model), `openai`
    /// (`GET /v1/models` must list it in `data[].id`) or `ollama` (`GET /api/tags` must list
    /// it in `models[].name`; its `digest` is compared with a record's
    /// `artefact.ollama_digest`).
    pub kind: String,
    /// Time between probes.
    #[serde(default = "default_probe_interval")]
    pub interval: String,
    /// How long one probe request may take before the server counts as unreachable.
    #[serde(default = "default_probe_timeout")]
    pub timeout: String,
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
    #[serde(default = "default_identity_refresh")]
    pub identity_refresh: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtefactFile {
    /// The model name approval records must carry in `sub`.
    pub model: String,
    /// The model directory the server loads (or a single model file).
    pub path: String,
    /// How often to compare the directory's file sizes and times, besides inotify events.
    #[serde(default = "default_poll")]
    pub poll_interval: String,
    /// The OMS serialization of the served digest: "files" (one SHA-256 per file, the
    /// default) or "shards" (one per `shard_size` bytes of each file, so that one large file
    /// is hashed on every thread). Approval records must name the digest computed the same
    /// way (`provgate digest --serialization shards --shard-size N`).
    #[serde(default = "default_serialization")]
    pub serialization: String,
    /// Shard size in bytes for `serialization = "shards"`; default 1000000000, as the
    /// reference `model_signing` tool.
    #[serde(default)]
    pub shard_size: Option<u64>,
    /// Threads used to hash files (or shards); 0 = one per core.
    #[serde(default)]
    pub hash_threads: usize,
    /// Pinned signers of the model's OMS signature (`DIR/model.sig`, or `FILE.sig` beside a
    /// single-file model); an approval record naming `artefact.signer` requires a valid
    /// signature by the signer of that name.
    #[serde(default)]
    pub signers: Vec<SignerFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerFile {
    /// The name approval records use in `artefact.signer`.
    pub name: String,
    /// PEM EC P-256 or P-384 public key.
    pub public_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    /// `dir`: a directory of record files (`*.jwt`, `*.jws`) and `revoked.txt`.
    /// `mlflow`: an MLflow model registry (records in model-version tags).
    /// `http`: any server implementing `GET {url}/approvals?digest=...` (see the README).
    pub kind: String,
    /// `dir`: the directory.
    #[serde(default)]
    pub path: Option<String>,
    /// `mlflow`, `http`: the registry's base URL.
    #[serde(default)]
    pub url: Option<String>,
    /// `mlflow`, `http`: a file holding a bearer token, re-read before every fetch.
    #[serde(default)]
    pub token_file: Option<String>,
    /// `mlflow`, `http`: a file holding `user:password` for basic auth, re-read before every
    /// fetch.
    #[serde(default)]
    pub basic_auth_file: Option<String>,
    /// `mlflow`, `http`: extra trusted CA certificates (PEM) for an `https` URL.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// How often the records are fetched (`dir`: rescanned, besides inotify events).
    #[serde(default = "default_refresh", alias = "rescan_interval")]
    pub refresh_interval: String,
    /// `mlflow`, `http`: how long one fetch may take.
    #[serde(default = "default_fetch_timeout")]
    pub timeout: String,
    /// How long the last good records are used while the registry cannot be read; after
    /// that, requests fail closed with `trust_data_unavailable`.
    #[serde(default = "default_max_stale")]
    pub max_stale: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustFile {
    /// JWKS file of the approver keys that sign approval records.
    pub approver_keys: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallersFile {
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: String,
    /// Verified tokens kept in the cache.
    #[serde(default = "default_token_cache")]
    pub token_cache_size: u64,
    #[serde(default)]
    pub issuers: Vec<IssuerFile>,
}

impl Default for CallersFile {
    fn default() -> Self {
        CallersFile {
            leeway: default_leeway(),
            token_cache_size: default_token_cache(),
            issuers: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerFile {
    /// The exact `iss` of tokens from this issuer.
    pub issuer: String,
    /// The issuer's keys, from exactly one of: a JWKS file...
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// ...a JWKS URL (a SPIFFE bundle endpoint, Kubernetes `/openid/v1/jwks`)...
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// ...or an OIDC discovery document (`.../.well-known/openid-configuration`), whose
    /// `jwks_uri` is then fetched.
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// PEM CA bundle trusted for the URLs above, besides the built-in web roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Bounds on the refresh period the server's hints ask for (Cache-Control max-age,
    /// SPIFFE `spiffe_refresh_hint`); without a hint, `refresh_max`.
    #[serde(default = "default_refresh_min")]
    pub refresh_min: String,
    #[serde(default = "default_refresh_max")]
    pub refresh_max: String,
    /// How long the last good keys are used while the issuer cannot be reached; after that
    /// its callers get `trust_data_unavailable`.
    #[serde(default = "default_keys_max_stale")]
    pub max_stale: String,
    /// At most one refetch for unknown `kid`s per this interval.
    #[serde(default = "default_refetch_interval")]
    pub refetch_interval: String,
    /// How long a request with an unknown `kid` waits for that refetch.
    #[serde(default = "default_unknown_kid_wait")]
    pub unknown_kid_wait: String,
    /// Accepted `aud` values; a token must carry at least one.
    pub audiences: Vec<String>,
    /// Accepted JWS algorithms. Default: ES256, ES384, RS256, PS256, EdDSA.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// `oidc` (any non-empty `sub`), `spiffe` (JWT-SVID: `sub` is a SPIFFE ID in
    /// `trust_domain`) or `kubernetes` (service-account token: `sub` is
    /// `system:serviceaccount:NS:NAME` and agrees with the `kubernetes.io` claim).
    #[serde(default = "default_profile")]
    pub profile: String,
    /// The SPIFFE trust domain, for `profile = "spiffe"` (e.g. `example.org`).
    #[serde(default)]
    pub trust_domain: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierFile {
    /// Evidence kinds that must be present with verdict `pass`.
    #[serde(default)]
    pub required_evidence: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Worker threads for the proxy; 0 = one per core.
    #[serde(default)]
    pub threads: usize,
    /// How long to keep serving in-flight requests after SIGTERM.
    #[serde(default)]
    pub grace_period: Option<String>,
    /// Let idle worker threads steal tasks from busy ones (one shared runtime) rather than
    /// run one independent runtime per thread.
    #[serde(default)]
    pub work_stealing: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// `error`, `warn`, `info`, `debug` or `trace` (`RUST_LOG` overrides).
    #[serde(default = "default_level")]
    pub level: String,
    /// `text` or `json`.
    #[serde(default = "default_format")]
    pub format: String,
}

impl Default for LogFile {
    fn default() -> Self {
        LogFile {
            level: default_level(),
            format: default_format(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_admin() -> String {
    "127.0.0.1:9090".into()
}
fn default_protocol() -> String {
    "http1".into()
}
fn default_connect_timeout() -> String {
    "2s".into()
}
fn default_pool() -> usize {
    128
}
fn yes() -> bool {
    true
}
fn default_probe_interval() -> String {
    "5s".into()
}
fn default_probe_timeout() -> String {
    "2s".into()
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
fn default_poll() -> String {
    "1s".into()
}
fn default_serialization() -> String {
    "files".into()
}
impl RegistryFile {
    /// Checks the backend-specific keys; every problem goes to `errors`.
    fn validate(&self, timeout: Duration, errors: &mut Vec<String>) -> RegistrySource {
        let fallback = RegistrySource::Dir(PathBuf::new());
        let remote_only = [
            ("url", self.url.is_some()),
            ("token_file", self.token_file.is_some()),
            ("basic_auth_file", self.basic_auth_file.is_some()),
            ("ca_file", self.ca_file.is_some()),
        ];
        let kind = match self.kind.as_str() {
            "dir" => {
                for (key, set) in remote_only {
                    if set {
                        errors.push(format!("registry.{key}: not used by kind \"dir\""));
                    }
                }
                let Some(path) = &self.path else {
                    errors.push("registry.path: required for kind \"dir\"".into());
                    return fallback;
                };
                let path = PathBuf::from(path);
                if !path.is_dir() {
                    errors.push(format!(
                        "registry.path: {} is not a directory",
                        path.display()
                    ));
                }
                return RegistrySource::Dir(path);
            }
            "mlflow" => RemoteKind::Mlflow,
            "http" => RemoteKind::Http,
            other => {
                errors.push(format!(
                    "registry.kind: {other:?} is not one of \"dir\", \"mlflow\", \"http\""
                ));
                return fallback;
            }
        };
        if self.path.is_some() {
            errors.push(format!(
                "registry.path: not used by kind {:?}; give url",
                self.kind
            ));
        }
        let url = match self.url.as_deref().map(str::trim) {
            None | Some("") => {
                errors.push(format!("registry.url: required for kind {:?}", self.kind));
                String::new()
            }
            Some(url) => match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.query().is_none() => {
                    url.trim_end_matches('/').to_string()
                }
                Ok(_) => {
                    errors.push(format!(
                        "registry.url: {url:?} must be an http or https URL without a query"
                    ));
                    String::new()
                }
                Err(e) => {
                    errors.push(format!("registry.url: {url:?}: {e}"));
                    String::new()
                }
            },
        };
        let readable = |errors: &mut Vec<String>, key: &str, file: &str| {
            if let Err(e) = std::fs::read(file) {
                errors.push(format!("registry.{key}: {file}: {e}"));
            }
            PathBuf::from(file)
        };
        let auth = match (&self.token_file, &self.basic_auth_file) {
            (None, None) => RegistryAuth::None,
            (Some(f), None) => RegistryAuth::BearerFile(readable(errors, "token_file", f)),
            (None, Some(f)) => RegistryAuth::BasicFile(readable(errors, "basic_auth_file", f)),
            (Some(_), Some(_)) => {
                errors.push("registry: give at most one of token_file, basic_auth_file".into());
                RegistryAuth::None
            }
        };
        let ca_pem = self.ca_file.as_ref().and_then(|p| {
            std::fs::read(p)
                .map_err(|e| errors.push(format!("registry.ca_file: {p}: {e}")))
                .ok()
        });
        RegistrySource::Remote(RemoteRegistry {
            kind,
            url,
            auth,
            ca_pem,
            timeout,
        })
    }
}

fn default_refresh() -> String {
    "5s".into()
}
fn default_fetch_timeout() -> String {
    "5s".into()
}
fn default_max_stale() -> String {
    "5m".into()
}
fn default_identity_refresh() -> String {
    "10s".into()
}
fn default_profile() -> String {
    "oidc".into()
}
fn default_refresh_min() -> String {
    "30s".into()
}
fn default_refresh_max() -> String {
    "5m".into()
}
fn default_keys_max_stale() -> String {
    "1h".into()
}
fn default_refetch_interval() -> String {
    "10s".into()
}
fn default_unknown_kid_wait() -> String {
    "1s".into()
}
fn default_leeway() -> String {
    "30s".into()
}
fn default_token_cache() -> u64 {
    100_000
}
fn default_algorithms() -> Vec<String> {
    ["ES256", "ES384", "RS256", "PS256", "EdDSA"]
        .map(String::from)
        .to_vec()
}
fn default_level() -> String {
    "info".into()
}
fn default_format() -> String {
    "text".into()
}

// === Validated config ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    H2c,
    Https,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub address: SocketAddr,
    pub protocol: UpstreamProtocol,
    pub sni: String,
    pub forward_token: bool,
    pub connect_timeout: Duration,
    pub keepalive_pool: usize,
}

#[derive(Debug)]
pub struct Issuer {
    pub issuer: String,
    pub profile: crate::identity::Profile,
    pub keys: KeySource,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
}

/// Where an issuer's keys come from.
#[derive(Debug)]
pub enum KeySource {
    File(KeySet),
    Remote(RemoteKeys),
}

/// A remote key set and how to keep it fresh.
#[derive(Debug, Clone)]
pub struct RemoteKeys {
    pub url: String,
    /// `url` is an OIDC discovery document rather than the JWKS itself.
    pub discovery: bool,
    /// Extra trusted CA certificates, PEM.
    pub ca_pem: Option<Vec<u8>>,
    pub refresh_min: Duration,
    pub refresh_max: Duration,
    pub max_stale: Duration,
    pub refetch_interval: Duration,
    pub unknown_kid_wait: Duration,
}

/// One guarded model: its name, its directory, how it is watched.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The model name approval records carry in `sub`, and requests name.
    pub model: String,
    pub path: PathBuf,
    pub poll_interval: Duration,
    /// The OMS serialization of the served digest.
    pub serialization: crate::artefact::Serialization,
    pub hash_threads: usize,
    pub signers: std::sync::Arc<Vec<crate::attestation::Signer>>,
}

/// The upstream probe.
#[derive(Debug, Clone)]
pub struct Probe {
    pub kind: crate::probe::ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
}

/// How requests name their model.
#[derive(Debug, Clone)]
pub struct Routing {
    pub openai_paths: Vec<String>,
    pub max_body_bytes: usize,
    pub max_held_body_bytes: usize,
    pub max_held_total_bytes: usize,
    pub models_path: Option<String>,
}

/// At most this many models per sidecar (a listing's filter is a 64-bit set).
pub const MAX_MODELS: usize = 64;

/// Where approval records come from.
#[derive(Debug, Clone)]
pub enum RegistrySource {
    Dir(PathBuf),
    Remote(RemoteRegistry),
}

/// The remote registry kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteKind {
    Mlflow,
    Http,
}

impl RemoteKind {
    /// The `backend` label value.
    pub fn label(self) -> &'static str {
        match self {
            RemoteKind::Mlflow => "mlflow",
            RemoteKind::Http => "http",
        }
    }
}

/// How provgate authenticates to a remote registry. Credentials live in files that are read
/// before every fetch, so a rotated secret needs no restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    None,
    BearerFile(PathBuf),
    BasicFile(PathBuf),
}

/// A remote registry and how to reach it.
#[derive(Debug, Clone)]
pub struct RemoteRegistry {
    pub kind: RemoteKind,
    /// Base URL, without a trailing slash.
    pub url: String,
    pub auth: RegistryAuth,
    /// Extra trusted CA certificates, PEM.
    pub ca_pem: Option<Vec<u8>>,
    pub timeout: Duration,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub listen_tls: Option<ListenTls>,
    pub caller_auth: CallerAuth,
    pub admin: SocketAddr,
    pub upstream: Upstream,
    pub enforce: bool,
    pub workload_identity: String,
    /// Where the identity is re-read from, and how often (None: fixed).
    pub workload_token_file: Option<(PathBuf, Duration)>,
    /// The guarded models, in configuration order (at least one).
    pub models: Vec<ModelConfig>,
    pub probe: Option<Probe>,
    pub routing: Routing,
    pub registry: RegistrySource,
    /// How often the registry is read again (`dir`: rescanned besides inotify events).
    pub refresh_interval: Duration,
    pub max_stale: Duration,
    pub approvers: KeySet,
    pub leeway: Duration,
    pub token_cache_size: u64,
    pub issuers: Vec<Issuer>,
    pub tiers: HashMap<String, TierRule>,
    pub audit: AuditConfig,
    pub threads: usize,
    pub work_stealing: bool,
    pub grace_period: Duration,
    pub log_level: String,
    pub log_json: bool,
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

    /// Checks every value and loads the key files, reporting all problems at once.
    pub fn validate(self) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut addr = |key: &str, value: &str| -> SocketAddr {
            value.parse().unwrap_or_else(|_| {
                errors.push(format!("{key}: {value:?} is not an IP:port socket address"));
                SocketAddr::from(([127, 0, 0, 1], 0))
            })
        };
        let listen = addr("listen.address", &self.listen.address);

        let admin = addr("admin.address", &self.admin.address);
        let upstream_addr = addr("upstream.address", &self.upstream.address);
        if listen == admin && listen.port() != 0 {
            errors.push("admin.address: must differ from listen.address".to_string());
        }
        let caller_auth = match self.listen.caller_auth.as_str() {
            "token" => CallerAuth::Token,
            "certificate" => CallerAuth::Certificate,
            "token_or_certificate" => CallerAuth::TokenOrCertificate,
            "token_and_certificate" => CallerAuth::TokenAndCertificate,
            other => {
                errors.push(format!(
                    "listen.caller_auth: {other:?} is not one of \"token\", \"certificate\", \"token_or_certificate\", \"token_and_certificate\""
                ));
                CallerAuth::Token
            }
        };
        let readable = |errors: &mut Vec<String>, key: &str, p: &str| {
            if let Err(e) = std::fs::metadata(p) {
                errors.push(format!("{key}: {p}: {e}"));
            }
        };
        let listen_tls = match (&self.listen.tls_cert, &self.listen.tls_key) {
            (Some(cert), Some(key)) => {
                readable(&mut errors, "listen.tls_cert", cert);
                readable(&mut errors, "listen.tls_key", key);
                if let Some(ca) = &self.listen.client_ca {
                    readable(&mut errors, "listen.client_ca", ca);
                }
                Some(ListenTls {
                    cert: PathBuf::from(cert),
                    key: PathBuf::from(key),
                    client_ca: self.listen.client_ca.as_ref().map(PathBuf::from),
                })
            }
            (None, None) => None,
            _ => {
                errors.push("listen.tls_cert, listen.tls_key: give both or neither".into());
                None
            }
        };
        if self.listen.client_ca.is_some() && listen_tls.is_none() {
            errors.push("listen.client_ca: needs listen.tls_cert and listen.tls_key".into());
        }
        if caller_auth != CallerAuth::Token
            && listen_tls.as_ref().is_none_or(|t| t.client_ca.is_none())
        {
            errors.push(format!(
                "listen.caller_auth: {:?} needs TLS with a client_ca",
                self.listen.caller_auth
            ));
        }

        let artefact_files: Vec<(String, &ArtefactFile)> = match (
            &self.artefact,
            self.artefacts.is_empty(),
        ) {
            (Some(a), true) => vec![("artefact".to_string(), a)],
            (None, false) => self
                .artefacts
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("artefacts[{i}]"), a))
                .collect(),
            _ => {
                errors.push(
                        "artefact: give exactly one of [artefact] (one model) and [[artefacts]] (several)"
                            .into(),
                    );
                Vec::new()
            }
        };
        let mut duration = |key: &str, value: &str| -> Duration {
            humantime::parse_duration(value).unwrap_or_else(|e| {
                errors.push(format!(
                    "{key}: {value:?} is not a duration ({e}); write e.g. \"5s\" or \"250ms\""
                ));
                Duration::from_secs(1)
            })
        };
        let connect_timeout = duration("upstream.connect_timeout", &self.upstream.connect_timeout);
        let poll_intervals: Vec<Duration> = artefact_files
            .iter()
            .map(|(key, a)| duration(&format!("{key}.poll_interval"), &a.poll_interval))
            .collect();
        let probe = self.upstream.probe.as_ref().map(|p| {
            (
                duration("upstream.probe.interval", &p.interval),
                duration("upstream.probe.timeout", &p.timeout),
            )
        });
        let refresh_interval =
            duration("registry.refresh_interval", &self.registry.refresh_interval);
        let fetch_timeout = duration("registry.timeout", &self.registry.timeout);
        let max_stale = duration("registry.max_stale", &self.registry.max_stale);
        let leeway = duration("callers.leeway", &self.callers.leeway);
        let identity_refresh =
            duration("workload.identity_refresh", &self.workload.identity_refresh);
        let grace_period = self
            .server
            .grace_period
            .as_deref()
            .map(|g| duration("server.grace_period", g))
            .unwrap_or(Duration::from_secs(5));

        let protocol = match self.upstream.protocol.as_str() {
            "http1" => UpstreamProtocol::Http1,
            "h2c" => UpstreamProtocol::H2c,
            "https" => UpstreamProtocol::Https,
            other => {
                errors.push(format!(
                    "upstream.protocol: {other:?} is not one of \"http1\", \"h2c\", \"https\""
                ));
                UpstreamProtocol::Http1
            }
        };
        for ((key, _), poll) in artefact_files.iter().zip(&poll_intervals) {
            if poll.is_zero() {
                errors.push(format!("{key}.poll_interval: must be more than zero"));
            }
        }
        let probe = match (&self.upstream.probe, probe) {
            (Some(p), Some((interval, timeout))) => {
                let kind = crate::probe::ProbeKind::parse(&p.kind).unwrap_or_else(|| {
                    errors.push(format!(
                        "upstream.probe.kind: {:?} is not one of \"kserve_v2\", \"openai\", \"ollama\"",
                        p.kind
                    ));
                    crate::probe::ProbeKind::OpenAi
                });
                if interval.is_zero() || timeout.is_zero() {
                    errors
                        .push("upstream.probe: interval and timeout must be more than zero".into());
                }
                Some(Probe {
                    kind,
                    interval,
                    timeout,
                })
            }
            _ => None,
        };
        if self.routing.max_body_bytes == 0 || self.routing.max_body_bytes > MAX_INSPECTED_BODY {
            errors.push(format!(
                "routing.max_body_bytes: must be between 1 and {MAX_INSPECTED_BODY} (pingora replays at most 64 KiB of a body read before the decision)"
            ));
        }
        if self.routing.max_held_body_bytes > MAX_HELD_BODY {
            errors.push(format!(
                "routing.max_held_body_bytes: at most {MAX_HELD_BODY} (each request holding a body keeps it in memory)"
            ));
        }
        if self.routing.max_held_total_bytes < self.routing.max_held_body_bytes {
            errors.push(
                "routing.max_held_total_bytes: must be at least routing.max_held_body_bytes".into(),
            );
        }
        for (i, p) in self.routing.openai_paths.iter().enumerate() {
            if !p.starts_with('/') {
                errors.push(format!(
                    "routing.openai_paths[{i}]: {p:?} must start with /"
                ));
            }
        }
        if !self.routing.models_path.is_empty() && !self.routing.models_path.starts_with('/') {
            errors.push(format!(
                "routing.models_path: {:?} must start with / (or be empty)",
                self.routing.models_path
            ));
        }
        if refresh_interval.is_zero() {
            errors.push("registry.refresh_interval: must be more than zero".into());
        }
        if fetch_timeout.is_zero() {
            errors.push("registry.timeout: must be more than zero".into());
        }
        if max_stale < refresh_interval {
            errors.push("registry.max_stale: must be at least registry.refresh_interval".into());
        }

        let nonempty = |errors: &mut Vec<String>, key: &str, v: &str| {
            if v.trim().is_empty() {
                errors.push(format!("{key}: must not be empty"));
            }
        };
        let (workload_identity, workload_token_file) =
            match (&self.workload.identity, &self.workload.identity_token_file) {
                (Some(id), None) => {
                    nonempty(&mut errors, "workload.identity", id);
                    (id.clone(), None)
                }
                (None, Some(file)) => match crate::identity::token_subject(Path::new(file)) {
                    Ok(sub) => (sub, Some((PathBuf::from(file), identity_refresh))),
                    Err(e) => {
                        errors.push(format!("workload.identity_token_file: {e}"));
                        (String::new(), None)
                    }
                },
                _ => {
                    errors
                        .push("workload: give exactly one of identity, identity_token_file".into());
                    (String::new(), None)
                }
            };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if artefact_files.len() > MAX_MODELS {
            errors.push(format!(
                "artefacts: at most {MAX_MODELS} models per sidecar"
            ));
        }
        let mut models = Vec::new();
        let mut names = std::collections::HashSet::new();
        for ((key, a), poll_interval) in artefact_files.iter().zip(poll_intervals) {
            nonempty(&mut errors, &format!("{key}.model"), &a.model);
            nonempty(&mut errors, &format!("{key}.path"), &a.path);
            if !names.insert(a.model.as_str()) {
                errors.push(format!("{key}.model: {:?} is configured twice", a.model));
            }
            let mut signers = Vec::new();
            for (i, s) in a.signers.iter().enumerate() {
                match crate::attestation::Signer::from_pem_file(&s.name, Path::new(&s.public_key)) {
                    Ok(k) => signers.push(k),
                    Err(e) => errors.push(format!("{key}.signers[{i}].public_key: {e}")),
                }
                if s.name.trim().is_empty() {
                    errors.push(format!("{key}.signers[{i}].name: must not be empty"));
                }
            }
            let serialization = match (a.serialization.as_str(), a.shard_size) {
                ("files", None) => crate::artefact::Serialization::Files,
                ("files", Some(_)) => {
                    errors.push(format!(
                        "{key}.shard_size: only used with serialization = \"shards\""
                    ));
                    crate::artefact::Serialization::Files
                }
                ("shards", size) => {
                    let shard_size = size.unwrap_or(crate::artefact::DEFAULT_SHARD_SIZE);
                    if shard_size == 0 {
                        errors.push(format!("{key}.shard_size: must be more than zero"));
                    }
                    crate::artefact::Serialization::Shards { shard_size }
                }
                (other, _) => {
                    errors.push(format!(
                        "{key}.serialization: {other:?} is not one of \"files\", \"shards\""
                    ));
                    crate::artefact::Serialization::Files
                }
            };
            models.push(ModelConfig {
                model: a.model.clone(),
                path: PathBuf::from(&a.path),
                poll_interval,
                serialization,
                hash_threads: if a.hash_threads == 0 {
                    cores
                } else {
                    a.hash_threads
                },
                signers: std::sync::Arc::new(signers),
            });
        }
        let registry = self.registry.validate(fetch_timeout, &mut errors);

        let approvers = KeySet::from_jwks_file(Path::new(&self.trust.approver_keys))
            .unwrap_or_else(|e| {
                errors.push(format!("trust.approver_keys: {e}"));
                KeySet::default()
            });

        if self.callers.issuers.is_empty() {
            errors.push(
                "callers.issuers: at least one trusted issuer is needed ([[callers.issuers]])"
                    .into(),
            );
        }
        let mut issuers = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, f) in self.callers.issuers.into_iter().enumerate() {
            let key = format!("callers.issuers[{i}]");
            nonempty(&mut errors, &format!("{key}.issuer"), &f.issuer);
            if !seen.insert(f.issuer.clone()) {
                errors.push(format!("{key}.issuer: {:?} is configured twice", f.issuer));
            }
            if f.audiences.is_empty() {
                errors.push(format!("{key}.audiences: at least one audience is needed"));
            }
            let mut algorithms = Vec::new();
            for a in &f.algorithms {
                match parse_signature_algorithm(a) {
                    Some(alg) => algorithms.push(alg),
                    None => errors.push(format!(
                        "{key}.algorithms: {a:?} is not an accepted signature algorithm \
                         (ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA; never none or HS*)"
                    )),
                }
            }
            let keys = match (&f.jwks_file, &f.jwks_url, &f.discovery_url) {
                (Some(file), None, None) => {
                    KeySource::File(KeySet::from_jwks_file(Path::new(file)).unwrap_or_else(|e| {
                        errors.push(format!("{key}.jwks_file: {e}"));
                        KeySet::default()
                    }))
                }
                (None, Some(url), None) | (None, None, Some(url)) => {
                    let discovery = f.discovery_url.is_some();
                    let field = if discovery {
                        "discovery_url"
                    } else {
                        "jwks_url"
                    };
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        errors.push(format!("{key}.{field}: {url:?} is not an http(s) URL"));
                    }
                    let ca_pem = f.ca_file.as_ref().and_then(|p| {
                        std::fs::read(p)
                            .map_err(|e| errors.push(format!("{key}.ca_file: {p}: {e}")))
                            .ok()
                    });
                    let mut d = |field: &str, v: &str| {
                        humantime::parse_duration(v).unwrap_or_else(|e| {
                            errors.push(format!("{key}.{field}: {v:?} is not a duration ({e})"));
                            Duration::from_secs(1)
                        })
                    };
                    let remote = RemoteKeys {
                        url: url.clone(),
                        discovery,
                        ca_pem,
                        refresh_min: d("refresh_min", &f.refresh_min),
                        refresh_max: d("refresh_max", &f.refresh_max),
                        max_stale: d("max_stale", &f.max_stale),
                        refetch_interval: d("refetch_interval", &f.refetch_interval),
                        unknown_kid_wait: d("unknown_kid_wait", &f.unknown_kid_wait),
                    };
                    if remote.refresh_min > remote.refresh_max {
                        errors.push(format!("{key}.refresh_min: must not exceed refresh_max"));
                    }
                    KeySource::Remote(remote)
                }
                _ => {
                    errors.push(format!(
                        "{key}: give exactly one of jwks_file, jwks_url, discovery_url"
                    ));
                    KeySource::File(KeySet::default())
                }
            };
            let profile = match (f.profile.as_str(), &f.trust_domain) {
                ("oidc", None) => crate::identity::Profile::Oidc,
                ("kubernetes", None) => crate::identity::Profile::Kubernetes,
                ("spiffe", Some(td)) if !td.is_empty() && !td.contains('/') => {
                    crate::identity::Profile::Spiffe {
                        trust_domain: td.clone(),
                    }
                }
                ("spiffe", _) => {
                    errors.push(format!(
                        "{key}.trust_domain: profile \"spiffe\" needs a trust domain such as \"example.org\""
                    ));
                    crate::identity::Profile::Oidc
                }
                (_, Some(_)) if f.profile != "spiffe" => {
                    errors.push(format!("{key}.trust_domain: only for profile \"spiffe\""));
                    crate::identity::Profile::Oidc
                }
                (other, _) => {
                    errors.push(format!(
                        "{key}.profile: {other:?} is not \"oidc\", \"spiffe\" or \"kubernetes\""
                    ));
                    crate::identity::Profile::Oidc
                }
            };
            issuers.push(Issuer {
                profile,
                issuer: f.issuer,
                keys,
                audiences: f.audiences,
                algorithms,
            });
        }

        let log_json = match self.log.format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                errors.push(format!("log.format: {other:?} is not \"text\" or \"json\""));
                false
            }
        };
        let audit = self.audit.validate(&mut errors);

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let sni = self.upstream.sni.unwrap_or_else(|| {
            self.upstream
                .address
                .rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                .unwrap_or_default()
        });
        Ok(Config {
            listen,
            listen_tls,
            caller_auth,
            admin,
            upstream: Upstream {
                address: upstream_addr,
                protocol,
                sni,
                forward_token: self.upstream.forward_token,
                connect_timeout,
                keepalive_pool: self.upstream.keepalive_pool,
            },
            enforce: self.mode.enforce,
            workload_identity,
            workload_token_file,
            models,
            probe,
            routing: Routing {
                openai_paths: self.routing.openai_paths,
                max_body_bytes: self.routing.max_body_bytes,
                max_held_body_bytes: self.routing.max_held_body_bytes,
                max_held_total_bytes: self.routing.max_held_total_bytes,
                models_path: Some(self.routing.models_path).filter(|p| !p.is_empty()),
            },
            registry,
            refresh_interval,
            max_stale,
            approvers,
            leeway,
            token_cache_size: self.callers.token_cache_size,
            issuers,
            tiers: self
                .tiers
                .into_iter()
                .map(|(name, t)| {
                    (
                        name,
                        TierRule {
                            required_evidence: t.required_evidence,
                        },
                    )
                })
                .collect(),
            audit,
            threads: if self.server.threads == 0 {
                cores
            } else {
                self.server.threads
            },
            work_stealing: self.server.work_stealing.unwrap_or(true),
            grace_period,
            log_level: self.log.level,
            log_json,
        })
    }
}

/// Parses a JWS signature algorithm name, refusing `none` and HMAC.
pub fn parse_signature_algorithm(name: &str) -> Option<Algorithm> {
    let alg: Algorithm = name.parse().ok()?;
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => None,
        other => Some(other),
    }
}

/// Loads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    FileConfig::load(path)?.validate()
}

#[cfg(test)]
mod tests;
