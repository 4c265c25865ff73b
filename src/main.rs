//! The provgate command line: run the sidecar, and the tools a pipeline or a newcomer needs
//! around it (digest a model, make keys, sign an approval, mint a demo token, verify an
//! audit log).
//!
//! The commands that hash a model directory (`digest`, `approve --dir`, `verify-signature`)
//! draw a progress bar on standard error when it is a terminal (not with `--quiet`);
//! standard output carries only their result.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use provgate::approval::{self, ApprovalClaims, Approver, ArtefactRef, CallerPattern, Evidence};
use provgate::digest::Digest;
use provgate::keys::{jwks_document, KeyKind, SigningKey};
use provgate::oms::{HashOptions, HashProgress, Serialization};

#[derive(Parser)]
#[command(
    name = "provgate",
    version,
    about = "Per-request model approval enforcement for model servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Run {
        /// Configuration file.
        #[arg(short = 'c', long = "config", default_value = "config/provgate.toml")]
        config: PathBuf,
        /// Validate the configuration (and the key files it names), then exit 0 or 1.
        #[arg(short = 't', long = "test")]
        test: bool,
    },
    /// Print the OpenSSF Model Signing root digest of a model directory.
    Digest {
        dir: PathBuf,
        /// Also list each resource's digest (each file's, or each shard's).
        #[arg(long)]
        verbose: bool,
        #[command(flatten)]
        serialization: SerializationArgs,
        #[command(flatten)]
        progress: ProgressArgs,
    },
    /// Make a signing key pair: a PKCS#8 PEM private key and its public key added to a JWKS.
    Keygen {
        /// Where to write the private key (mode 0600).
        #[arg(long)]
        key: PathBuf,
        /// The JWKS file to add the public key to (created if missing).
        #[arg(long)]
        jwks: PathBuf,
        #[arg(long, value_enum, default_value = "es256")]
        kind: KeyKind,
    },
    /// Sign an approval record.
    Approve(Box<ApproveArgs>),
    /// Promote a model to an environment: sign a record (or co-sign one), check it against
    /// the environment's configuration as its sidecars would, and only if they would serve
    /// it, publish it to the registry the configuration names (a directory, MLflow with the
    /// environment's alias, or an HTTP registry's upload form). Every promotion, published
    /// or refused, is appended to a hash-chained audit log. Exit 0 when published, 1 when
    /// refused or failed.
    Promote(Box<PromoteArgs>),
    /// Sign an exception: a time-boxed waiver of one evidence kind or quorum role for one
    /// model version and digest (`typ: exception+jwt`). Put it in the registry beside the
    /// record (a directory's `*.jwt` or `exceptions/`, an MLflow tag `provgate.exception`,
    /// a line of an HTTP registry's answer).
    Except(Box<ExceptArgs>),
    /// Mint a workload token (for demos and tests; production callers get theirs from SPIFFE,
    /// Kubernetes or an OIDC provider).
    Token {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        iss: String,
        #[arg(long)]
        sub: String,
        #[arg(long, required = true)]
        aud: Vec<String>,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Verify a model directory's OMS signature (model.sig) against pinned signer keys or a
    /// certificate identity; exit 0 when it is valid.
    VerifySignature {
        dir: PathBuf,
        /// A pinned signer, as `NAME=PUBLIC_KEY.pem` (EC P-256 or P-384; repeat).
        #[arg(long = "signer", required_unless_present_any = ["ca_bundle", "sigstore_trusted_root"])]
        signers: Vec<String>,
        /// A certificate signer (`model_signing sign certificate`): the PEM CA bundle its
        /// chain must validate to (now), with `--identity`.
        #[arg(long, requires = "identity")]
        ca_bundle: Option<PathBuf>,
        /// The identity the certificate signer's leaf must carry: `spiffe://...` (any
        /// `scheme://` URI SAN), `email:ADDRESS` or `dns:NAME`.
        #[arg(long, requires = "ca_bundle")]
        identity: Option<String>,
        /// The name the certificate signer is reported under.
        #[arg(long, default_value = "certificate")]
        certificate_signer: String,
        /// A Sigstore (keyless) signer (`model_signing sign sigstore`): the pinned
        /// `trusted_root.json` the bundle must verify against (offline), with `--issuer` and
        /// `--subject` or `--subject-pattern`.
        #[arg(long, requires = "issuer")]
        sigstore_trusted_root: Option<PathBuf>,
        /// The OIDC issuer the Sigstore certificate must name, exact.
        #[arg(long, requires = "sigstore_trusted_root")]
        issuer: Option<String>,
        /// The Sigstore certificate's subject (SAN email or URI), exact.
        #[arg(
            long,
            requires = "sigstore_trusted_root",
            conflicts_with = "subject_pattern"
        )]
        subject: Option<String>,
        /// A regular expression the whole Sigstore certificate subject must match.
        #[arg(long, requires = "sigstore_trusted_root")]
        subject_pattern: Option<String>,
        /// The name the Sigstore signer is reported under.
        #[arg(long, default_value = "sigstore")]
        sigstore_signer: String,
        /// Hashing threads [default: one per core].
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        threads: Option<u64>,
        #[command(flatten)]
        progress: ProgressArgs,
    },
    /// Add the provgate sidecar to Kubernetes YAML (Deployment, StatefulSet, Pod, or a List
    /// of them; several documents), read from a file or standard input, written to standard
    /// output. What was done goes to standard error.
    Inject(Box<InjectArgs>),
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Registry tools: a reference registry server for the HTTP contract.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Sign a revocation list (`revocations.jws`, served beside the records at
    /// `/revocations`): the record IDs given, plus those of `--list` when extending one.
    Revoke(RevokeArgs),
    /// Would these deployments serve this model? Evaluates, offline, the model (its
    /// directory, or its digest), the registry's records, co-signatures and exceptions for
    /// it, against each deployment's configuration (the file its sidecar runs with), through
    /// the sidecar's own decision, and prints every rule with pass or fail and why. Exit 0
    /// when every deployment would serve it, 1 when one would not, 2 when it cannot tell.
    Check(Box<CheckArgs>),
    /// Replay a request's decision from its audit record against a deployment's config and
    /// registry, and print the chain (caller, route, model, digest, records, rules) and the
    /// rule that refused. Exit 0 when the replay agrees with the record, 1 when it
    /// disagrees, 2 on error.
    Explain(ExplainArgs),
}

#[derive(Args)]
struct CheckArgs {
    /// A deployment's configuration; repeat for several environments.
    #[arg(short = 'c', long = "config", required = true)]
    configs: Vec<PathBuf>,
    /// The model directory: hashed with each deployment's serialization, and its
    /// `model.sig` checked against the deployment's signers.
    #[arg(long, required_unless_present = "digest", conflicts_with = "digest")]
    dir: Option<PathBuf>,
    /// The model's digest (`sha256:HEX`), instead of its directory.
    #[arg(long)]
    digest: Option<provgate::digest::Digest>,
    /// With `--digest`: the configured signer whose valid signature the model carries.
    #[arg(long, requires = "digest")]
    signer: Option<String>,
    /// The configured model [default: the deployment's only one].
    #[arg(long)]
    model: Option<String>,
    /// A record, co-signed record or exception not yet in the registry, checked as if it
    /// were (repeat).
    #[arg(long = "record")]
    records: Vec<PathBuf>,
    /// A caller to try: `ISSUER#SUBJECT`, or `SUBJECT` when the deployment trusts one
    /// issuer (repeat). Every one must be allowed. None: every rule but the caller's.
    #[arg(long = "caller")]
    callers: Vec<String>,
    /// The Ollama digest the model server reports, for a record that pins one.
    #[arg(long)]
    ollama_digest: Option<String>,
    /// For an adapter: its base model's directory [default: the base's configured path].
    #[arg(long, conflicts_with = "base_digest")]
    base_dir: Option<PathBuf>,
    /// For an adapter: its base model's digest, instead of its directory.
    #[arg(long)]
    base_digest: Option<provgate::digest::Digest>,
    /// With `--base-digest`: the configured signer whose signature the base carries.
    #[arg(long, requires = "base_digest")]
    base_signer: Option<String>,
    /// Judge at this time (RFC 3339, or Unix seconds) [default: now].
    #[arg(long)]
    at: Option<String>,
    /// Print one JSON object (`serve`, and a report per deployment).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["request_id", "record"])))]
struct ExplainArgs {
    /// The deployment's configuration (the file the sidecar runs with).
    #[arg(short = 'c', long = "config")]
    config: PathBuf,
    /// The audit log: the active file (its rotated segments are read too), one segment, or a
    /// directory of logs.
    #[arg(required_unless_present = "record")]
    log: Option<PathBuf>,
    /// The request ID to find in the log (a denial's `request_id`).
    #[arg(long, requires = "log")]
    request_id: Option<String>,
    /// The audit record itself, one JSON line, from a file or `-` (standard input).
    #[arg(long, conflicts_with = "request_id")]
    record: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Serve a registry directory (the `[registry] kind = "dir"` layout: `*.jwt`/`*.jws`
    /// records, `revoked.txt`, `revocations.jws`) over HTTP: `/approvals?digest=sha256:HEX`,
    /// `/approvals/sha256/HEX` and `/revocations`, with strong ETags, 304s, 410 for a revoked
    /// digest and watches (`Prefer: wait=N`); with `--upload-token-file`, uploads by `PUT`.
    /// Re-reads the directory on change. Records are not verified here: the sidecars verify
    /// them.
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// The registry directory.
    #[arg(long)]
    dir: PathBuf,
    /// Listen address (port 0: any free port; see --print-address).
    #[arg(long, default_value = "127.0.0.1:8480")]
    listen: std::net::SocketAddr,
    /// Print the bound address on standard output once listening.
    #[arg(long)]
    print_address: bool,
    /// Watches (held requests) at once; past it a watch is answered at once.
    #[arg(long, default_value_t = 20_000)]
    max_watchers: usize,
    /// Open connections at once; past it a new connection is closed.
    #[arg(long, default_value_t = 25_000)]
    max_connections: usize,
    /// Rescan the directory this often, beside file events.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    rescan: Duration,
    /// Write one line per request here (arrival ms, form, status, held ms, watch).
    #[arg(long)]
    request_log: Option<PathBuf>,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    threads: u64,
    /// Accept uploads (`PUT /approvals/sha256/<hex>`, one record as the body, written into
    /// the directory) from clients presenting this file's token as `Authorization: Bearer`
    /// (`provgate promote` does, with `[registry] token_file`). Off without it (405). Read
    /// once at start.
    #[arg(long)]
    upload_token_file: Option<PathBuf>,
}

#[derive(Args)]
struct RevokeArgs {
    /// Approver private key (PKCS#8 PEM, from `provgate keygen`); its public key must be in
    /// the sidecars' `[trust] approver_keys`.
    #[arg(long)]
    key: PathBuf,
    /// The key ID (`kid`) to put in the header [default: the key's own, as `keygen` wrote it
    /// to the JWKS].
    #[arg(long)]
    kid: Option<String>,
    /// Who revokes (`iss`).
    #[arg(long)]
    iss: String,
    /// A record ID (`jti`) to revoke (repeat).
    #[arg(long = "jti")]
    jtis: Vec<String>,
    /// An existing list to extend: its IDs are kept and the new list is issued after it.
    #[arg(long)]
    list: Option<PathBuf>,
    /// Where to write the list [default: standard output].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check an audit log (a file with its rotated segments, or a directory of segments):
    /// the hash chain in order, segment numbering, and with `--key` the signed checkpoints
    /// (a truncated tail, a rewritten chain, a removed segment). Exit 1 at any broken place,
    /// the first named first.
    Verify {
        path: PathBuf,
        /// The sidecar's public key set (JWKS, from `provgate keygen --jwks`) that signs its
        /// checkpoints.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Print the records (requests and summaries) that match every filter given.
    Query {
        path: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
        /// `table` or `json` (the records' own JSON lines).
        #[arg(long, value_enum, default_value = "table")]
        format: QueryFormat,
    },
    /// Count records by decision, reason, model, version and caller.
    Summary {
        path: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the matching records as events for a SIEM, one JSON object per line.
    Export {
        path: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, value_enum)]
        format: ExportFormat,
    },
    /// Write N synthetic denials through the real writer (bounds, chain, rotation,
    /// checkpoints) into the log that CONFIG's `[audit]` section names: for benchmarks and
    /// tests of the reading tools. Never run against a production log.
    #[command(hide = true)]
    Generate {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        #[arg(long)]
        count: u64,
        /// Cut every fifth record's path to its bound (a 5 KB target).
        #[arg(long)]
        long_paths: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum QueryFormat {
    Table,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// OCSF 1.5.0 API Activity (6003) events with the Security Control profile.
    Ocsf,
}

/// Which records `audit query|summary|export` select.
#[derive(Args)]
struct FilterArgs {
    /// From this time (RFC 3339, or a duration ago such as `2h`), inclusive.
    #[arg(long)]
    since: Option<String>,
    /// Until this time (RFC 3339, or a duration ago), exclusive.
    #[arg(long)]
    until: Option<String>,
    /// `allow`, `deny` or `would_block`.
    #[arg(long)]
    decision: Option<String>,
    /// A deny reason code, e.g. `token_missing`.
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    model: Option<String>,
    /// The approved version ID.
    #[arg(long)]
    version: Option<String>,
    /// A caller's `sub` (or its issuer).
    #[arg(long)]
    caller: Option<String>,
    #[arg(long)]
    request_id: Option<String>,
}

impl FilterArgs {
    fn filter(self) -> Result<provgate::audit::query::Filter> {
        let time = |flag: &str, t: Option<String>| -> Result<Option<String>> {
            let Some(t) = t else { return Ok(None) };
            let at = match humantime::parse_rfc3339_weak(&t) {
                Ok(at) => at,
                Err(_) => {
                    let ago = humantime::parse_duration(&t).map_err(|_| {
                        anyhow!("--{flag} {t:?}: expected an RFC 3339 time or a duration ago")
                    })?;
                    std::time::SystemTime::now() - ago
                }
            };
            Ok(Some(provgate::audit::query::record_time(at)))
        };
        Ok(provgate::audit::query::Filter {
            since: time("since", self.since)?,
            until: time("until", self.until)?,
            decision: self.decision,
            reason: self.reason,
            model: self.model,
            version: self.version,
            caller: self.caller,
            request_id: self.request_id,
        })
    }
}

#[derive(Args)]
struct InjectArgs {
    /// The manifest file; `-` or none: standard input.
    file: Option<PathBuf>,
    /// The provgate container image.
    #[arg(long)]
    image: String,
    /// The served model's name (`[artefact] model`) [default: from the server's flags].
    #[arg(long)]
    model: Option<String>,
    /// The model directory inside the model server container [default: from its flags].
    #[arg(long)]
    model_path: Option<String>,
    /// The model server's HTTP port [default: from its flags or the server's default].
    #[arg(long)]
    model_port: Option<u16>,
    /// The model server container [default: the only one, or the one recognised].
    #[arg(long)]
    container: Option<String>,
    /// This deployment's workload identity, which approval records must name
    /// [default: spiffe://cluster.local/ns/NAMESPACE/sa/SERVICE_ACCOUNT].
    #[arg(long)]
    workload_identity: Option<String>,
    /// Where approval records come from: `configmap` (the provgate-approvals ConfigMap),
    /// `mlflow=URL` or `http=URL`.
    #[arg(long, default_value = "configmap")]
    registry: provgate::inject::Registry,
    /// provgate's port for callers [default: 8080, or the next port the pod does not use].
    #[arg(long)]
    proxy_port: Option<u16>,
    /// provgate's admin port [default: 9090, or the next free one].
    #[arg(long)]
    admin_port: Option<u16>,
    /// The namespace whose pods may scrape the admin port.
    #[arg(long, default_value = "monitoring")]
    monitoring_namespace: String,
    /// The caller token issuer (`iss`), e.g. the API server's.
    #[arg(long, default_value = "https://kubernetes.default.svc.cluster.local")]
    caller_issuer: String,
}

/// How `digest` and `approve --dir` cut a directory into OMS resources; it must be the
/// sidecar's `[artefact] serialization`, or the digests differ.
#[derive(Args)]
struct SerializationArgs {
    /// OMS serialization: one SHA-256 per file, or per fixed-size shard of each file.
    #[arg(long, value_enum, default_value = "files")]
    serialization: Method,
    /// Shard size in bytes, with `--serialization shards` [default: 1000000000, as
    /// model_signing].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    shard_size: Option<u64>,
    /// Hashing threads [default: one per core].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
}

/// Whether a command that hashes shows its progress.
#[derive(Args)]
struct ProgressArgs {
    /// No progress bar (one is drawn on standard error only when it is a terminal).
    #[arg(short, long)]
    quiet: bool,
}

impl ProgressArgs {
    /// Runs `hash` with `opts`, reporting to a progress bar on standard error when it is a
    /// terminal and `--quiet` was not given; the bar is left showing the final count.
    fn run<T>(&self, opts: HashOptions, hash: impl FnOnce(&HashOptions) -> T) -> T {
        if self.quiet || !std::io::stderr().is_terminal() {
            return hash(&opts);
        }
        let progress = Arc::new(HashProgress::default());
        let opts = opts.reporting_to(progress.clone());
        let (done, finished) = mpsc::channel::<()>();
        let bar = std::thread::spawn(move || draw_progress(&progress, &finished));
        let out = hash(&opts);
        drop(done);
        // The drawing thread only draws; if it panicked the hash's result still stands.
        let _ = bar.join();
        out
    }
}

/// Draws `progress` as a bar on standard error, ten times a second, until `finished`
/// disconnects.
fn draw_progress(progress: &HashProgress, finished: &mpsc::Receiver<()>) {
    let style = indicatif::ProgressStyle::with_template(
        "hashing [{bar:30}] {bytes}/{total_bytes} {msg} {bytes_per_sec} ETA {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
            .with_style(style);
    let update = || {
        let p = progress.snapshot();
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        bar.set_message(format!("files {}/{}", p.files_done, p.files_total));
    };
    while let Err(mpsc::RecvTimeoutError::Timeout) =
        finished.recv_timeout(Duration::from_millis(100))
    {
        update();
    }
    update();
    bar.finish();
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Method {
    Files,
    Shards,
}

impl SerializationArgs {
    fn options(&self) -> Result<HashOptions> {
        let serialization = match (self.serialization, self.shard_size) {
            (Method::Files, None) => Serialization::Files,
            (Method::Files, Some(_)) => bail!("--shard-size needs --serialization shards"),
            (Method::Shards, size) => Serialization::Shards {
                shard_size: size.unwrap_or(provgate::oms::DEFAULT_SHARD_SIZE),
            },
        };
        let threads = match self.threads {
            Some(t) => usize::try_from(t).unwrap_or(usize::MAX),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Ok(HashOptions::new(serialization, threads))
    }
}

#[derive(Args)]
struct ExceptArgs {
    /// Approver private key (PKCS#8 PEM, from `provgate keygen`).
    #[arg(long)]
    key: PathBuf,
    /// Approver identity (`iss`).
    #[arg(long)]
    iss: String,
    /// Model name (`sub`).
    #[arg(long)]
    model: String,
    /// The version ID of the record it applies to.
    #[arg(long)]
    version_id: String,
    /// The artefact digest it applies to (`sha256:<hex>`).
    #[arg(long)]
    digest: String,
    /// The evidence kind it waives...
    #[arg(long, value_name = "KIND", required_unless_present = "waive_role")]
    waive_evidence: Option<String>,
    /// ...or the quorum role it waives.
    #[arg(long, value_name = "ROLE", conflicts_with = "waive_evidence")]
    waive_role: Option<String>,
    /// Why.
    #[arg(long)]
    reason: String,
    /// The ticket tracking it (a URI).
    #[arg(long)]
    ticket: String,
    /// Validity from now; must be within the tier's `max_exception_lifetime`.
    #[arg(long, default_value = "3d", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Exception ID (`jti`); default: random.
    #[arg(long)]
    jti: Option<String>,
    /// Write it here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What a new approval record says and the key that signs it (or the record it co-signs):
/// shared by `approve` and `promote`, which differ only in where the digest comes from and
/// where the record goes.
#[derive(Args)]
struct RecordArgs {
    /// Approver private key (PKCS#8 PEM, from `provgate keygen`).
    #[arg(long)]
    key: PathBuf,
    /// Co-sign this existing record (compact or co-signed) with `--key` instead of making a
    /// new one: the result is the record in the JWS JSON General Serialization with one more
    /// signature over the same payload (the other record flags are not used).
    #[arg(long, value_name = "EXISTING", conflicts_with = "digest")]
    cosign: Option<PathBuf>,
    /// The key's certificate chain (PEM, leaf first, then intermediates): the record's
    /// header carries it as `x5c`, for a `[[trust.approvers]]` entry with `ca_bundle` and
    /// `identity`.
    #[arg(long, value_name = "CHAIN_PEM", conflicts_with = "cosign")]
    cert_chain: Option<PathBuf>,
    /// Approver identity (`iss`).
    #[arg(long, required_unless_present = "cosign")]
    iss: Option<String>,
    /// Model name (`sub`); must equal the sidecar's `[artefact] model`.
    #[arg(long, required_unless_present = "cosign")]
    model: Option<String>,
    /// Model version ID that telemetry is tagged with.
    #[arg(long, required_unless_present = "cosign")]
    version_id: Option<String>,
    /// The Ollama manifest digest (hex SHA-256 from `GET /api/tags`, optionally
    /// `sha256:`-prefixed) the server must report for this model; checked by an
    /// `[upstream.probe] kind = "ollama"`.
    #[arg(long)]
    ollama_digest: Option<String>,
    /// For a LoRA adapter: the OMS digest (`sha256:HEX`) of the base model it was approved
    /// on (`provgate digest BASE_DIR`); the record is then void while another base is served.
    #[arg(long)]
    base_digest: Option<String>,
    /// Workload identities allowed to serve it (repeat; a trailing `*` matches a prefix).
    #[arg(long = "workload", required_unless_present = "cosign")]
    workloads: Vec<String>,
    /// Caller identities allowed to call it (repeat; a trailing `*` matches a prefix). A bare
    /// pattern matches callers of issuers configured without `qualified = true`.
    #[arg(long = "caller", required_unless_present_any = ["qualified_callers", "cosign"])]
    callers: Vec<String>,
    /// Issuer-qualified callers, as `ISSUER#PATTERN` (repeat): callers whose token `iss` is
    /// exactly ISSUER (`x509-svid` for client certificates) and whose `sub` matches PATTERN.
    #[arg(long = "qualified-caller")]
    qualified_callers: Vec<String>,
    #[arg(long, default_value = "default")]
    tier: String,
    /// Validity from now.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Record ID (`jti`); default: random.
    #[arg(long)]
    jti: Option<String>,
    /// Evidence, as `kind=K,verdict=V[,uri=U][,digest=D]` (repeat).
    #[arg(long = "evidence")]
    evidence: Vec<String>,
    /// Lineage entries, as `key=value` (repeat).
    #[arg(long = "lineage")]
    lineage: Vec<String>,
    /// Who approved, as `who[=role]` (repeat).
    #[arg(long = "approved-by")]
    approved_by: Vec<String>,
    /// The artefact signer the record pins (a name from `[[artefact.signers]]`): the served
    /// directory's model.sig must then be by that signer.
    #[arg(long)]
    signer: Option<String>,
    /// After this long from now, the record is not trusted until the registry has been read
    /// again (`revalidate_after`).
    #[arg(long, value_parser = humantime::parse_duration)]
    revalidate_after: Option<Duration>,
}

#[derive(Args)]
struct ApproveArgs {
    #[command(flatten)]
    record: RecordArgs,
    /// The artefact digest (`sha256:<hex>`)...
    #[arg(
        long,
        conflicts_with_all = ["dir", "serialization", "shard_size", "threads"],
        required_unless_present_any = ["dir", "cosign"]
    )]
    digest: Option<String>,
    /// ...or a model directory to hash (with `--serialization`, `--shard-size`).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(flatten)]
    serialization: SerializationArgs,
    #[command(flatten)]
    progress: ProgressArgs,
    /// Write the record here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also publish the record onto an existing MLflow model version: the tags
    /// `provgate.approval` and `provgate.artefact_digest` of model `--model`, version
    /// `--version`, on this MLflow server (base URL). (`provgate promote` checks the record
    /// against the environment's configuration first, and sets the environment's alias.)
    #[arg(long, value_name = "URL", requires = "mlflow_version")]
    publish_mlflow: Option<String>,
    /// The MLflow model version number to publish onto.
    #[arg(long = "version", value_name = "N", requires = "publish_mlflow")]
    mlflow_version: Option<String>,
    /// A file holding a bearer token for the MLflow server.
    #[arg(
        long,
        requires = "publish_mlflow",
        conflicts_with = "mlflow_basic_auth_file"
    )]
    mlflow_token_file: Option<PathBuf>,
    /// A file holding `user:password` for the MLflow server.
    #[arg(long, requires = "publish_mlflow")]
    mlflow_basic_auth_file: Option<PathBuf>,
}

#[derive(Args)]
struct PromoteArgs {
    #[command(flatten)]
    record: RecordArgs,
    /// The target environment's configuration: the file its sidecars run with
    /// (`provgate run -c`). Its `[registry]` is where the record is published.
    #[arg(short = 'c', long = "config")]
    config: PathBuf,
    /// The environment's name, for the audit record and the MLflow alias [default: the
    /// configuration file's stem].
    #[arg(long)]
    env: Option<String>,
    /// The artefact digest (`sha256:<hex>`)...
    #[arg(long, conflicts_with = "dir", required_unless_present_any = ["dir", "cosign"])]
    digest: Option<String>,
    /// ...or the model directory to hash, with the configuration's serialization for the
    /// model (`[artefact] serialization`); its model.sig is checked against the model's
    /// configured signers (with `--digest` the model carries no signer: a record that pins
    /// one needs `--dir`).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// MLflow: the model version to promote (its tags are set, and the alias pointed at it).
    #[arg(long = "version", value_name = "N")]
    mlflow_version: Option<String>,
    /// MLflow: the alias to point at the version [default: the environment's name].
    #[arg(long)]
    alias: Option<String>,
    /// A caller the record must allow: `ISSUER#SUBJECT`, or `SUBJECT` when the deployment
    /// trusts one issuer (repeat).
    #[arg(long = "sample-caller", value_name = "ISSUER#SUBJECT")]
    sample_callers: Vec<String>,
    /// The audit log the promotion's record is appended to (hash-chained; `provgate audit
    /// verify` checks it) [default, for a `dir` registry: `<dir>.promotions.jsonl` beside
    /// the directory; required otherwise]. Not a log a running sidecar writes.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Print the check's report as JSON on standard output (else as text on standard error).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("provgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run { config, test } => run(&config, test),
        Command::Digest {
            dir,
            verbose,
            serialization,
            progress,
        } => {
            let m = progress.run(serialization.options()?, |opts| {
                provgate::oms::hash_dir(&dir, opts, None)
            })?;
            if verbose {
                for (name, d) in &m.resources {
                    println!("{}  {name}", hex::encode(d));
                }
            }
            println!("{}", m.root);
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { key, jwks, kind } => keygen(&key, &jwks, kind),
        Command::Inject(args) => inject(*args),
        Command::VerifySignature {
            dir,
            signers,
            ca_bundle,
            identity,
            certificate_signer,
            sigstore_trusted_root,
            issuer,
            subject,
            subject_pattern,
            sigstore_signer,
            threads,
            progress,
        } => {
            let mut keys = Vec::new();
            if let (Some(root), Some(issuer)) = (&sigstore_trusted_root, &issuer) {
                use provgate::oms::sigstore::SubjectMatch;
                let subject = match (subject, subject_pattern) {
                    (Some(s), None) => SubjectMatch::Exact(s),
                    (None, Some(p)) => {
                        SubjectMatch::pattern(&p).map_err(|e| anyhow!("--subject-pattern: {e}"))?
                    }
                    _ => bail!("--sigstore-trusted-root needs --subject or --subject-pattern"),
                };
                keys.push(
                    provgate::oms::Signer::sigstore(&sigstore_signer, root, issuer, subject)
                        .map_err(|e| anyhow!("--sigstore-trusted-root: {e}"))?,
                );
            }
            if let (Some(ca), Some(id)) = (&ca_bundle, &identity) {
                keys.push(
                    provgate::oms::Signer::certificate(&certificate_signer, ca, id)
                        .map_err(|e| anyhow!("--ca-bundle/--identity: {e}"))?,
                );
            }
            for s in &signers {
                let (name, path) = s
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--signer {s:?}: expected NAME=PUBLIC_KEY.pem"))?;
                keys.push(
                    provgate::oms::Signer::from_pem_file(name, Path::new(path))
                        .map_err(|e| anyhow!("--signer {s:?}: {e}"))?,
                );
            }
            let threads = match threads {
                Some(t) => usize::try_from(t).unwrap_or(usize::MAX),
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            };
            // The signature names its serialization; verification hashes with it.
            let opts = HashOptions::new(Serialization::Files, threads);
            let state = progress.run(opts, |opts| {
                provgate::oms::verify_dir_with(&dir, &keys, None, opts)
            });
            match state {
                provgate::oms::SignatureState::Valid { signer, identity } => {
                    match identity {
                        Some(id) => println!(
                            "{}: valid, signed by {signer} (certificate identity {id})",
                            dir.display()
                        ),
                        None => println!("{}: valid, signed by {signer}", dir.display()),
                    }
                    Ok(ExitCode::SUCCESS)
                }
                provgate::oms::SignatureState::Absent => {
                    println!(
                        "{}: no {}",
                        dir.display(),
                        provgate::oms::signature_path(&dir).display()
                    );
                    Ok(ExitCode::FAILURE)
                }
                provgate::oms::SignatureState::Invalid { reason } => {
                    println!("{}: invalid: {reason}", dir.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Approve(args) => approve(*args),
        Command::Promote(args) => promote(*args),
        Command::Except(args) => except(*args),
        Command::Token {
            key,
            iss,
            sub,
            aud,
            ttl,
        } => {
            let key = SigningKey::from_pem_file(&key)?;
            println!(
                "{}",
                provgate::identity::mint_token(&key, &iss, &sub, &aud, ttl)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command } => audit(command),
        Command::Registry {
            command: RegistryCommand::Serve(args),
        } => registry_serve(args),
        Command::Revoke(args) => revoke(args),
        Command::Check(args) => Ok(check(*args)),
        Command::Explain(args) => Ok(explain(&args)),
    }
}

fn audit(command: AuditCommand) -> Result<ExitCode> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match command {
        AuditCommand::Verify { path, key } => {
            let keys = match &key {
                Some(k) => Some(provgate::keys::KeySet::from_jwks_file(k)?),
                None => None,
            };
            let reports = provgate::audit::verify::verify(&path, keys.as_ref())
                .with_context(|| format!("reading {}", path.display()))?;
            let mut ok = true;
            for r in &reports {
                if r.intact() {
                    let tail = match r.tail_checked_at {
                        Some(n) => format!("; tail checked against the checkpoint at record {n}"),
                        None => String::new(),
                    };
                    let signed = if key.is_some() {
                        format!("; {} signed checkpoint(s) verified", r.checkpoints_verified)
                    } else {
                        String::new()
                    };
                    writeln!(
                        out,
                        "{}: {} records in {} segment(s), chain intact{tail}{signed}",
                        r.log.display(),
                        r.records,
                        r.segments
                    )?;
                } else {
                    ok = false;
                    writeln!(
                        out,
                        "{}: chain broken ({} problem(s)); first: {}",
                        r.log.display(),
                        r.problems.len(),
                        // This branch is taken when `problems` is not empty.
                        r.problems
                            .first()
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    )?;
                    for p in &r.problems {
                        writeln!(out, "  {p}")?;
                    }
                }
            }
            out.flush()?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Query {
            path,
            filter,
            format,
        } => {
            let filter = filter.filter()?;
            if matches!(format, QueryFormat::Table) {
                writeln!(out, "{}", provgate::audit::query::TABLE_HEADER)?;
            }
            let mut err = None;
            provgate::audit::query::scan(&path, &filter, |_, raw, count| {
                if err.is_some() {
                    return;
                }
                let r = match format {
                    QueryFormat::Table => {
                        let v = provgate::audit::query::tree(raw);
                        writeln!(out, "{}", provgate::audit::query::table_row(&v, count))
                    }
                    QueryFormat::Json => out.write_all(raw).and_then(|()| out.write_all(b"\n")),
                };
                err = r.err();
            })
            .with_context(|| format!("reading {}", path.display()))?;
            if let Some(e) = err {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return Err(e.into());
                }
            }
            out.flush().ok();
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Summary { path, filter, json } => {
            let filter = filter.filter()?;
            let mut s = provgate::audit::query::Summary::default();
            provgate::audit::query::scan(&path, &filter, |v, _, count| s.add(v, count))
                .with_context(|| format!("reading {}", path.display()))?;
            if json {
                writeln!(out, "{}", s.to_json())?;
            } else {
                write!(out, "{}", s.render())?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export {
            path,
            filter,
            format: ExportFormat::Ocsf,
        } => {
            let filter = filter.filter()?;
            let mut err = None;
            provgate::audit::query::scan(&path, &filter, |_, raw, _| {
                if err.is_some() {
                    return;
                }
                if let Some(e) = provgate::audit::ocsf::event(&provgate::audit::query::tree(raw)) {
                    err = writeln!(out, "{e}").err();
                }
            })
            .with_context(|| format!("reading {}", path.display()))?;
            if let Some(e) = err {
                return Err(e.into());
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Generate {
            config,
            count,
            long_paths,
        } => {
            let config = provgate::config::load(&config).map_err(|e| anyhow!("{e}"))?;
            let metrics = std::sync::Arc::new(provgate::telemetry::Metrics::new());
            let log = provgate::audit::AuditLog::open(&config.audit, metrics.clone())?;
            for i in 0..count {
                log.emit(provgate::audit::record::synthetic(
                    i,
                    long_paths && i % 5 == 0,
                ));
                // Keep the queue from overflowing: a generator wants records, not summaries.
                while metrics.audit_written.get() + config.audit.queue as u64 / 2 < i {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            if !log.close(Duration::from_secs(60)) {
                bail!("the audit writer did not finish");
            }
            eprintln!(
                "{} records written, {} summarised",
                metrics.audit_written.get(),
                metrics.audit_summarised.get()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `provgate explain`: 0 when the replay agrees, 1 when it does not, 2 on any error.
fn explain(a: &ExplainArgs) -> ExitCode {
    use provgate::explain::{self, find, Source};
    let result = (|| -> Result<explain::Explanation> {
        let source = match (&a.record, &a.log, &a.request_id) {
            (Some(file), _, _) => {
                let text = if file.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin().lock())?
                } else {
                    std::fs::read_to_string(file)
                        .with_context(|| format!("reading {}", file.display()))?
                };
                Source::Record(Box::new(find::parse(&text)?))
            }
            (None, Some(path), Some(request_id)) => Source::Log { path, request_id },
            _ => bail!("give a log and --request-id, or --record"),
        };
        Ok(explain::explain(&a.config, source)?)
    })();
    match result {
        Ok(e) => {
            let printed = if a.json {
                serde_json::to_string_pretty(&e).map(|s| println!("{s}"))
            } else {
                print!("{}", e.render());
                Ok(())
            };
            match printed {
                Ok(()) if e.agrees => ExitCode::SUCCESS,
                Ok(()) => ExitCode::from(1),
                Err(err) => {
                    eprintln!("provgate: {err}");
                    ExitCode::from(2)
                }
            }
        }
        Err(err) => {
            eprintln!("provgate: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(path: &Path, test: bool) -> Result<ExitCode> {
    let config = match provgate::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("provgate: {}: {e}", path.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    if test {
        println!("{}: configuration is valid", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    provgate::telemetry::init_logging(&config.log.level, config.log.json);
    provgate::server::run(config)?;
    Ok(ExitCode::SUCCESS)
}

fn keygen(key_path: &Path, jwks_path: &Path, kind: KeyKind) -> Result<ExitCode> {
    if key_path.exists() {
        bail!("{} exists; refusing to overwrite a key", key_path.display());
    }
    let (key, pem_text) = SigningKey::generate(kind)?;
    let mut keys: Vec<jsonwebtoken::jwk::Jwk> = match std::fs::read_to_string(jwks_path) {
        Ok(text) => {
            serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(&text)
                .with_context(|| format!("{} is not a JWKS document", jwks_path.display()))?
                .keys
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).context(format!("reading {}", jwks_path.display())),
    };
    keys.push(key.public_jwk.clone());
    write_private(key_path, pem_text.as_bytes())?;
    std::fs::write(jwks_path, jwks_document(&keys) + "\n")
        .with_context(|| format!("writing {}", jwks_path.display()))?;
    println!("kid {}", key.kid);
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

fn approve(a: ApproveArgs) -> Result<ExitCode> {
    let key = SigningKey::from_pem_file(&a.record.key)?;
    if let Some(existing) = &a.record.cosign {
        if a.dir.is_some() {
            bail!("--dir is not used with --cosign: the record names its digest");
        }
        return cosign(&a, existing, &key);
    }
    let digest = match (&a.digest, &a.dir) {
        (Some(d), _) => d.parse().map_err(|e| anyhow!("--digest: {e}"))?,
        (None, Some(dir)) => {
            a.progress
                .run(a.serialization.options()?, |opts| {
                    provgate::oms::hash_dir(dir, opts, None)
                })?
                .root
        }
        (None, None) => bail!("give --digest or --dir"),
    };
    let claims = record_claims(&a.record, digest, provgate::unix_now())?;
    let jws = sign_record(&a.record, &claims, &key)?;
    if let (Some(url), Some(version)) = (&a.publish_mlflow, &a.mlflow_version) {
        publish_mlflow(
            url,
            &claims.sub,
            version,
            &claims.artefact.digest,
            &jws,
            a.mlflow_token_file,
            a.mlflow_basic_auth_file,
        )?;
        eprintln!(
            "record {} for {} published to MLflow model version {}/{version}",
            claims.jti, claims.artefact.digest, claims.sub
        );
    }
    match a.out {
        None if a.publish_mlflow.is_some() => {}
        Some(path) => {
            std::fs::write(&path, format!("{jws}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "record {} for {} written to {}",
                claims.jti,
                claims.artefact.digest,
                path.display()
            );
        }
        None => println!("{jws}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The claims of the new record `r` describes, for `digest`, issued `now`.
fn record_claims(r: &RecordArgs, digest: Digest, now: u64) -> Result<ApprovalClaims> {
    let (Some(iss), Some(model), Some(version_id)) = (&r.iss, &r.model, &r.version_id) else {
        bail!("give --iss, --model and --version-id (or --cosign EXISTING)");
    };
    let mut evidence = Vec::new();
    for e in &r.evidence {
        evidence.push(parse_evidence(e)?);
    }
    let mut lineage = serde_json::Map::new();
    for l in &r.lineage {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow!("--lineage {l:?}: expected key=value"))?;
        lineage.insert(k.to_string(), serde_json::Value::String(v.to_string()));
    }
    let approvals = r
        .approved_by
        .iter()
        .map(|s| {
            let (who, role) = s.split_once('=').unwrap_or((s, ""));
            Approver {
                who: who.to_string(),
                role: role.to_string(),
                at: now,
            }
        })
        .collect();
    let jti = match &r.jti {
        Some(j) => j.clone(),
        None => random_id()?,
    };
    let mut callers: Vec<CallerPattern> =
        r.callers.iter().cloned().map(CallerPattern::from).collect();
    for q in &r.qualified_callers {
        callers.push(
            CallerPattern::parse_cli(q, true)
                .ok_or_else(|| anyhow!("--qualified-caller {q:?}: expected ISSUER#PATTERN"))?,
        );
    }
    let claims = ApprovalClaims {
        iss: iss.clone(),
        sub: model.clone(),
        jti,
        iat: now,
        nbf: Some(now),
        exp: now + r.ttl.as_secs(),
        version_id: version_id.clone(),
        artefact: ArtefactRef {
            digest,
            signer: r.signer.clone(),
            ollama_digest: r.ollama_digest.clone(),
            base_digest: match &r.base_digest {
                Some(d) => Some(
                    d.parse()
                        .map_err(|e| anyhow::anyhow!("--base-digest {d:?}: {e}"))?,
                ),
                None => None,
            },
        },
        lineage,
        evidence,
        approvals,
        tier: r.tier.clone(),
        workloads: r.workloads.clone(),
        callers,
        revalidate_after: r.revalidate_after.map(|d| now + d.as_secs()),
    };
    if let Some(d) = &claims.artefact.ollama_digest {
        let hex = d.strip_prefix("sha256:").unwrap_or(d);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("--ollama-digest {d:?}: expected 64 hex digits, optionally sha256:-prefixed");
        }
    }
    Ok(claims)
}

/// Signs `claims` with `key`, carrying `--cert-chain` in the header when given.
fn sign_record(r: &RecordArgs, claims: &ApprovalClaims, key: &SigningKey) -> Result<String> {
    Ok(match &r.cert_chain {
        None => approval::sign(claims, key)?,
        Some(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let chain: Vec<Vec<u8>> = pem::parse_many(&text)
                .map_err(|e| anyhow!("--cert-chain {}: {e}", path.display()))?
                .into_iter()
                .filter(|b| b.tag() == "CERTIFICATE")
                .map(|b| b.into_contents())
                .collect();
            if chain.is_empty() {
                bail!("--cert-chain {}: no CERTIFICATE block", path.display());
            }
            approval::sign_with_chain(claims, key, &chain)?
        }
    })
}

/// `--cosign EXISTING`: the record in `existing` with one more signature by `key`, and the
/// digest and record ID it claims (read unverified: the check or the sidecar verifies).
fn cosign_record(existing: &Path, key: &SigningKey) -> Result<(String, Option<Digest>, String)> {
    let text = std::fs::read_to_string(existing)
        .with_context(|| format!("reading {}", existing.display()))?;
    let record = approval::cosign(&text, key).map_err(|e| anyhow!("--cosign: {e}"))?;
    let (digest, jti) = approval::peek_claims(&record).unwrap_or((None, None));
    Ok((record, digest, jti.unwrap_or_default()))
}

// === promote ===

fn promote(a: PromoteArgs) -> Result<ExitCode> {
    use provgate::check::{inspect, parse_caller, Base, Deployment, Subject};
    use provgate::promote::{Destination, Outcome, Signed};
    let deployment = Deployment::load(&a.config)?;
    let env = a
        .env
        .clone()
        .unwrap_or_else(|| deployment.environment.clone());
    let alias = a.alias.clone().unwrap_or_else(|| env.clone());
    let dest = Destination::of(
        &deployment.config.registry,
        a.mlflow_version.as_deref(),
        &alias,
    )?;
    let audit_log = match (&a.audit_log, dest.default_audit_log()) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p,
        (None, None) => bail!(
            "give --audit-log: the registry is {}, so there is no default beside it",
            dest.label()
        ),
    };
    let callers = a
        .sample_callers
        .iter()
        .map(|c| parse_caller(c, &deployment))
        .collect::<Result<Vec<_>, _>>()?;

    let key = SigningKey::from_pem_file(&a.record.key)?;
    let existing = match &a.record.cosign {
        Some(path) => {
            let (record, digest, _) = cosign_record(path, &key)?;
            let claims = approval::peek_record_claims(&record)
                .ok_or_else(|| anyhow!("--cosign: not an approval record"))?;
            Some((record, digest, claims))
        }
        None => None,
    };
    // The model the record is for: the co-signed record's, or --model.
    let model_name = match (&existing, &a.record.model) {
        (Some((_, _, claims)), _) => claims.sub.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => bail!("give --model"),
    };
    // The directory as the environment's sidecars see it: hashed with the model's
    // serialization, model.sig checked against its signers (with --digest: no signer).
    let (dir_digest, model_signer) = match &a.dir {
        Some(dir) => {
            let (digest, signer) = inspect(deployment.model(Some(&model_name))?, dir)?;
            (Some(digest), signer)
        }
        None => (None, None),
    };
    let (record, claims) = match existing {
        Some((record, claimed, claims)) => {
            if let (Some(d), Some(claimed)) = (&dir_digest, &claimed) {
                if d != claimed {
                    bail!("--dir hashes to {d}, but the co-signed record is for {claimed}");
                }
            }
            (record, claims)
        }
        None => {
            let digest = match (&a.digest, dir_digest) {
                (Some(d), _) => d.parse().map_err(|e| anyhow!("--digest: {e}"))?,
                (None, Some(d)) => d,
                (None, None) => bail!("give --digest or --dir"),
            };
            let claims = record_claims(&a.record, digest, provgate::unix_now())?;
            (sign_record(&a.record, &claims, &key)?, claims)
        }
    };
    let signed = Signed {
        record,
        digest: claims.artefact.digest,
        jti: claims.jti.clone(),
        model: claims.sub.clone(),
        version_id: claims.version_id.clone(),
        iss: a.record.iss.clone().unwrap_or_else(|| claims.iss.clone()),
        kid: key.kid.clone(),
    };
    let subject = Subject {
        model: signed.model.clone(),
        digest: signed.digest,
        signer: model_signer,
        // What the record pins is checked against the server at run time (the probe);
        // offline, the record is judged as if the server reported it.
        ollama_digest: claims.artefact.ollama_digest.clone(),
        callers,
        now: provgate::unix_now(),
    };

    // An adapter is served only with its base: judged with the base the record pins
    // (`--base-digest`), else the base directory the configuration names when it is here.
    // (A model the deployment does not serve has no base here: the check refuses it.)
    let base_model = match deployment
        .model(Some(&signed.model))
        .ok()
        .and_then(|m| m.base.as_ref())
    {
        Some(name) => Some(deployment.model(Some(name))?),
        None => None,
    };
    let base_subject = match base_model {
        None => None,
        Some(m) => {
            let (digest, signer) = match &claims.artefact.base_digest {
                Some(d) => (*d, None),
                None if m.path.exists() => inspect(m, &m.path)?,
                None => bail!(
                    "{} is an adapter of {}, whose path {} is not here: give --base-digest",
                    signed.model,
                    m.model,
                    m.path.display()
                ),
            };
            Some(Subject {
                model: m.model.clone(),
                digest,
                signer,
                ollama_digest: None,
                callers: subject.callers.clone(),
                now: subject.now,
            })
        }
    };
    let base_entry = match &base_subject {
        Some(b) => deployment.entry_for(&b.digest, &[])?,
        None => None,
    };
    let base = base_subject.as_ref().map(|b| Base {
        entry: base_entry.as_ref(),
        subject: b,
    });
    let outcome = match provgate::promote::gate(&deployment, &signed, &subject, base.as_ref()) {
        Ok(verdict) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&verdict.report)?);
            } else {
                eprint!("{}", provgate::check::render(&verdict.report));
            }
            if verdict.failed.is_empty() {
                match provgate::promote::publish(&dest, &signed) {
                    Ok(to) => Outcome::Published(to),
                    Err(e) => Outcome::Failed(e.to_string()),
                }
            } else {
                Outcome::Refused(verdict.failed)
            }
        }
        // The check could not be made (registry unreachable, ...): nothing published.
        Err(e) => Outcome::Failed(format!("checking: {e}")),
    };
    let seq = provgate::audit::append::append(&audit_log, &outcome.audit(&signed, &env, &dest))
        .context("recording the promotion")?;
    let audited = format!("audit record {seq} in {}", audit_log.display());
    match &outcome {
        Outcome::Published(to) => {
            eprintln!(
                "promoted record {} ({} {}, {}) to {env}: published to {to}; {audited}",
                signed.jti, signed.model, signed.version_id, signed.digest
            );
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Refused(failed) => {
            eprintln!(
                "refused: {env} would not serve record {} ({} {}, {}); nothing published; \
                 {audited}",
                signed.jti, signed.model, signed.version_id, signed.digest
            );
            for f in failed {
                eprintln!("  FAIL {f}");
            }
            Ok(ExitCode::FAILURE)
        }
        Outcome::Failed(error) => {
            eprintln!("provgate: promoting to {env} failed: {error}; {audited}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn random_id() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow!("no randomness for an ID: {e}"))?;
    Ok(hex::encode(b))
}

fn except(a: ExceptArgs) -> Result<ExitCode> {
    use provgate::approval::exception::{self, ExceptionClaims};
    let key = SigningKey::from_pem_file(&a.key)?;
    let digest = a
        .digest
        .parse()
        .map_err(|e| anyhow!("--digest {:?}: {e}", a.digest))?;
    let waives = match (a.waive_evidence, a.waive_role) {
        (Some(kind), None) => approval::Waiver::Evidence(kind),
        (None, Some(role)) => approval::Waiver::Role(role),
        _ => bail!("give one of --waive-evidence, --waive-role"),
    };
    let now = provgate::unix_now();
    let claims = ExceptionClaims {
        iss: a.iss,
        sub: a.model,
        jti: match a.jti {
            Some(j) => j,
            None => random_id()?,
        },
        iat: now,
        nbf: Some(now),
        exp: now + a.ttl.as_secs(),
        version_id: a.version_id,
        artefact: ArtefactRef {
            digest,
            signer: None,
            ollama_digest: None,
            base_digest: None,
        },
        waives,
        reason: a.reason,
        ticket: a.ticket,
    };
    let jws = exception::sign(&claims, &key)?;
    match a.out {
        Some(path) => {
            std::fs::write(&path, format!("{jws}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "exception {} ({}) for {} written to {}",
                claims.jti,
                claims.waives.describe(),
                claims.artefact.digest,
                path.display()
            );
        }
        None => println!("{jws}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `approve --cosign EXISTING`: one more signature over an existing record's payload.
fn cosign(a: &ApproveArgs, existing: &Path, key: &SigningKey) -> Result<ExitCode> {
    let (record, digest, jti) = cosign_record(existing, key)?;
    if let (Some(url), Some(version)) = (&a.publish_mlflow, &a.mlflow_version) {
        let (Some(model), Some(digest)) = (&a.record.model, &digest) else {
            bail!("--publish-mlflow with --cosign needs --model (and a record with a digest)");
        };
        publish_mlflow(
            url,
            model,
            version,
            digest,
            &record,
            a.mlflow_token_file.clone(),
            a.mlflow_basic_auth_file.clone(),
        )?;
        eprintln!("record {jti} co-signed by {} published to MLflow", key.kid);
    }
    match &a.out {
        None if a.publish_mlflow.is_some() => {}
        Some(path) => {
            std::fs::write(path, format!("{record}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "record {jti} co-signed by {} written to {}",
                key.kid,
                path.display()
            );
        }
        None => println!("{record}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn publish_mlflow(
    url: &str,
    model: &str,
    version: &str,
    digest: &provgate::digest::Digest,
    jws: &str,
    token_file: Option<PathBuf>,
    basic_auth_file: Option<PathBuf>,
) -> Result<()> {
    use provgate::registry::config::{Layout, RegistryAuth, RemoteKind, RemoteRegistry};
    let auth = match (token_file, basic_auth_file) {
        (Some(f), _) => RegistryAuth::BearerFile(f),
        (None, Some(f)) => RegistryAuth::BasicFile(f),
        (None, None) => RegistryAuth::None,
    };
    let config = RemoteRegistry {
        kind: RemoteKind::Mlflow,
        url: url.trim_end_matches('/').to_string(),
        auth,
        ca_pem: None,
        timeout: Duration::from_secs(30),
        // The operator typed this URL on the command line to write to it; the sidecar's
        // reads need `allow_plaintext = true` for an http:// registry.
        allow_plaintext: true,
        layout: Layout::Query,
        watch: None,
    };
    let client = provgate::registry::remote::client(&config).map_err(|e| anyhow!(e))?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(provgate::registry::mlflow::publish(
            &client,
            &config.url,
            &config.auth,
            model,
            version,
            digest,
            jws,
        ))
        .map_err(|e| anyhow!("publishing to MLflow: {e}"))
}

fn parse_evidence(s: &str) -> Result<Evidence> {
    let mut e = Evidence {
        kind: String::new(),
        uri: String::new(),
        digest: String::new(),
        verdict: String::new(),
    };
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("--evidence {s:?}: expected key=value pairs"))?;
        match k.trim() {
            "kind" => e.kind = v.to_string(),
            "verdict" => e.verdict = v.to_string(),
            "uri" => e.uri = v.to_string(),
            "digest" => e.digest = v.to_string(),
            other => bail!("--evidence {s:?}: unknown field {other:?}"),
        }
    }
    if e.kind.is_empty() || e.verdict.is_empty() {
        bail!("--evidence {s:?}: kind and verdict are required");
    }
    Ok(e)
}

fn inject(args: InjectArgs) -> Result<ExitCode> {
    use std::io::{Read, Write};
    let input = match args.file.as_deref() {
        None => None,
        Some(p) if p == Path::new("-") => None,
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?),
    };
    let input = match input {
        Some(text) => text,
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("standard input")?;
            text
        }
    };
    let opts = provgate::inject::Options {
        model: args.model,
        model_path: args.model_path,
        model_port: args.model_port,
        container: args.container,
        workload_identity: args.workload_identity,
        registry: args.registry,
        proxy_port: args.proxy_port,
        admin_port: args.admin_port,
        monitoring_namespace: args.monitoring_namespace,
        caller_issuer: args.caller_issuer,
        ..provgate::inject::Options::new(&args.image)
    };
    let out = provgate::inject::inject(&input, &opts)?;
    for note in &out.notes {
        eprintln!("provgate inject: {note}");
    }
    std::io::stdout()
        .write_all(out.yaml.as_bytes())
        .context("standard output")?;
    Ok(ExitCode::SUCCESS)
}

// === registry serve, revoke ===

fn registry_serve(a: ServeArgs) -> Result<ExitCode> {
    provgate::telemetry::init_logging("info", false);
    let config = provgate::registry_serve::ServeConfig {
        dir: a.dir,
        listen: a.listen,
        max_watchers: a.max_watchers,
        max_connections: a.max_connections,
        rescan: a.rescan,
        request_log: a.request_log,
        upload_token_file: a.upload_token_file,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::try_from(a.threads).unwrap_or(2))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let print = a.print_address;
    runtime.block_on(async move {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "no SIGTERM handler; stop with SIGINT");
                        let _ = tokio::signal::ctrl_c().await;
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        provgate::registry_serve::serve(
            config,
            |addr| {
                if print {
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{addr}");
                    let _ = out.flush();
                }
            },
            shutdown,
        )
        .await
    })?;
    // Held watches and idle connections are cut, not drained: clients retry.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(ExitCode::SUCCESS)
}

fn revoke(a: RevokeArgs) -> Result<ExitCode> {
    use provgate::registry_serve::revocations::{self, RevocationClaims};
    let mut key = SigningKey::from_pem_file(&a.key)?;
    if let Some(kid) = a.kid {
        key.kid = kid;
    }
    let previous = match &a.list {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(revocations::peek(&text).with_context(|| format!("--list {}", path.display()))?)
        }
        None => None,
    };
    if a.jtis.is_empty() && previous.is_none() {
        bail!("give --jti (one or more) or --list");
    }
    // Lists are ordered by `iat`, in whole seconds. Extending a list issued this second
    // waits for the next one rather than dating the new list in the future, which JOSE
    // verifiers refuse (PyJWT: "not yet valid (iat)"). Only a list at most a second ahead
    // is waited for; one further ahead (a clock skew) is superseded at its iat + 1.
    let mut now = provgate::unix_now();
    if let Some(p) = &previous {
        let until = std::time::Instant::now() + std::time::Duration::from_millis(2100);
        while p.iat >= now && p.iat - now <= 1 && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(50));
            now = provgate::unix_now();
        }
    }
    let claims = RevocationClaims::new(a.iss, a.jtis, previous.as_ref(), now);
    let jws = revocations::sign(&claims, &key)?;
    match a.out {
        Some(path) => {
            // Written beside, then renamed: a server watching the directory never reads half.
            let tmp = path.with_extension("jws.tmp");
            std::fs::write(&tmp, format!("{jws}\n"))
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("renaming to {}", path.display()))?;
            eprintln!(
                "revocation list of {} record(s), iat {}, written to {}",
                claims.revoked.len(),
                claims.iat,
                path.display()
            );
        }
        None => println!("{jws}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `provgate check`: exit 0 when every deployment would serve the model, 1 when one would
/// not, 2 when a check could not be made.
fn check(a: CheckArgs) -> ExitCode {
    match check_reports(&a) {
        Ok(reports) => {
            let serve = reports.iter().all(|r| r.serve);
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({ "serve": serve, "deployments": reports })
                );
            } else {
                for r in &reports {
                    print!("{}", provgate::check::render(r));
                }
            }
            if serve {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("provgate check: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check_reports(a: &CheckArgs) -> Result<Vec<provgate::check::Report>> {
    use provgate::check::{evaluate, inspect, parse_caller, Base, Deployment, Subject};
    let now = match &a.at {
        None => provgate::base::unix_now(),
        Some(t) => parse_time(t).with_context(|| format!("--at {t:?}"))?,
    };
    let mut extra = Vec::new();
    for path in &a.records {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        extra.push((path.display().to_string(), text.trim().to_string()));
    }
    let mut reports = Vec::new();
    for path in &a.configs {
        let d = Deployment::load(path)?;
        let model = d.model(a.model.as_deref())?;
        let (digest, signer) = match (&a.dir, &a.digest) {
            (Some(dir), _) => inspect(model, dir)?,
            (None, Some(digest)) => (*digest, a.signer.clone()),
            (None, None) => bail!("give --dir or --digest"),
        };
        let entry = d.entry_for(&digest, &extra)?;
        if model.base.is_none() {
            for (origin, text) in &extra {
                if approval::peek_claims(text).and_then(|(d, _)| d) != Some(digest) {
                    bail!("--record {origin}: not a record or exception for {digest}");
                }
            }
        }
        let callers = a
            .callers
            .iter()
            .map(|c| parse_caller(c, &d))
            .collect::<Result<Vec<_>, _>>()?;
        let subject = Subject {
            model: model.model.clone(),
            digest,
            signer,
            ollama_digest: a.ollama_digest.clone(),
            callers: callers.clone(),
            now,
        };
        let Some(base_name) = &model.base else {
            reports.push(evaluate(&d, entry.as_ref(), &subject, None));
            continue;
        };
        // An adapter is served only with its base: check both, as the sidecar decides.
        let base_model = d.model(Some(base_name))?;
        let (base_digest, base_signer) = match (&a.base_dir, &a.base_digest) {
            (Some(dir), _) => inspect(base_model, dir)?,
            (None, Some(digest)) => (*digest, a.base_signer.clone()),
            (None, None) if base_model.path.exists() => inspect(base_model, &base_model.path)?,
            (None, None) => bail!(
                "{} is an adapter of {base_name}, whose path {} is not here: give --base-dir or --base-digest",
                model.model,
                base_model.path.display()
            ),
        };
        let base_entry = d.entry_for(&base_digest, &extra)?;
        let base_subject = Subject {
            model: base_name.clone(),
            digest: base_digest,
            signer: base_signer,
            ollama_digest: None,
            callers,
            now,
        };
        let base = Base {
            entry: base_entry.as_ref(),
            subject: &base_subject,
        };
        reports.push(evaluate(&d, entry.as_ref(), &subject, Some(&base)));
    }
    Ok(reports)
}

/// Unix seconds, or an RFC 3339 time.
fn parse_time(t: &str) -> Result<u64> {
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(secs);
    }
    let at = humantime::parse_rfc3339_weak(t)?;
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| anyhow!("before 1970"))?
        .as_secs())
}
