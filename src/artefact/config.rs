//! The `[artefact]` (one model) or `[[artefacts]]` (several) sections: which model
//! directories this sidecar guards, how each is watched and hashed, and whose OMS signature
//! it may carry. File structs, defaults, validation and the validated [`ModelConfig`].
//! Data only: watching and hashing are [`crate::artefact`]'s; this file reads the hashing
//! choices and the signer type from there and from [`crate::attestation`], and must not be
//! imported by either (nor import the top-level `config`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::artefact::{Serialization, DEFAULT_SHARD_SIZE};
use crate::fields::Errors;
use crate::oms::Signer;

// === File structs ===

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
    /// While a hash runs, how often to log how far it is (bytes and files done of the total,
    /// throughput, time left).
    #[serde(default = "default_progress_log_interval")]
    pub progress_log_interval: String,
    /// `model` (the default) or `adapter`: a LoRA adapter requests name like a model,
    /// served on top of `base`. Its records must pin the base's digest
    /// (`artefact.base_digest`), and a request naming it needs both records to allow it.
    #[serde(default)]
    pub kind: Option<String>,
    /// For an adapter: the configured model it is applied to.
    #[serde(default)]
    pub base: Option<String>,
    /// Pinned signers of the model's OMS signature (`DIR/model.sig`, or `FILE.sig` beside a
    /// single-file model); an approval record naming `artefact.signer` requires a valid
    /// signature by the signer of that name.
    #[serde(default)]
    pub signers: Vec<SignerFile>,
    /// How often every served file is read and hashed again in full (a scrub), whatever
    /// the file system says: a write through a shared memory mapping can change the content
    /// without changing size, times or raising an event. "0s" turns the scrub off. The
    /// detection bound for such writes is `scrub_interval` plus one scrub
    /// (model bytes / `scrub_rate`); README "Scrub".
    #[serde(default = "default_scrub_interval")]
    pub scrub_interval: String,
    /// The scrub's read budget in bytes per second (e.g. "256MiB"): its CPU cost is about
    /// this divided by one core's SHA-256 speed (about 1.35 GiB/s), spread over time.
    #[serde(default = "default_scrub_rate")]
    pub scrub_rate: String,
}

/// One `[[artefact.signers]]` entry: a name and exactly one identity form, chosen in
/// [`SignerFile::load`] (one arm per form):
/// - a key: `public_key`;
/// - a certificate identity: `ca_bundle` and `identity`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerFile {
    /// The name approval records use in `artefact.signer`.
    pub name: String,
    /// Key form: PEM EC P-256 or P-384 public key (`model_signing sign key`).
    #[serde(default)]
    pub public_key: Option<String>,
    /// Certificate form: PEM file of the CA certificates the signing certificate's chain must
    /// validate to (`model_signing sign certificate`).
    #[serde(default)]
    pub ca_bundle: Option<String>,
    /// Certificate form: the identity the leaf certificate must carry in a SAN:
    /// `spiffe://...` (or any `scheme://` URI), `email:ADDRESS` or `dns:NAME`.
    #[serde(default)]
    pub identity: Option<String>,
}

impl SignerFile {
    /// Loads the signer this entry describes, or says which field is wrong.
    pub fn load(&self) -> Result<Signer, (&'static str, String)> {
        match (&self.public_key, &self.ca_bundle, &self.identity) {
            (Some(key), None, None) => Signer::from_pem_file(&self.name, Path::new(key))
                .map_err(|e| ("public_key", e.to_string())),
            (None, Some(ca), Some(id)) => Signer::certificate(&self.name, Path::new(ca), id)
                .map_err(|e| match e {
                    crate::oms::SignerError::Certificate(crate::x509::X509Error::Identity(_)) => {
                        ("identity", e.to_string())
                    }
                    e => ("ca_bundle", e.to_string()),
                }),
            _ => Err((
                "public_key",
                "give public_key, or ca_bundle and identity (one identity form per signer)"
                    .to_string(),
            )),
        }
    }
}

fn default_poll() -> String {
    "1s".into()
}
fn default_scrub_interval() -> String {
    "1h".into()
}
fn default_scrub_rate() -> String {
    "256MiB".into()
}
fn default_progress_log_interval() -> String {
    "5s".into()
}
fn default_serialization() -> String {
    "files".into()
}

// === Validated config ===

/// At most this many models per sidecar (a listing's filter is a 64-bit set).
pub const MAX_MODELS: usize = 64;

/// One guarded model: its name, its directory, how it is watched.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The model name approval records carry in `sub`, and requests name.
    pub model: String,
    pub path: PathBuf,
    pub poll_interval: Duration,
    /// The OMS serialization of the served digest.
    pub serialization: Serialization,
    pub hash_threads: usize,
    pub progress_log_interval: Duration,
    pub signers: Arc<Vec<Signer>>,
    /// Time between two full re-verifications; None: no scrub.
    pub scrub_interval: Option<Duration>,
    /// The scrub's budget, bytes per second.
    pub scrub_rate: u64,
    /// For an adapter: the name of the model it is applied to.
    pub base: Option<String>,
}

/// Checks `[artefact]` or `[[artefacts]]` (exactly one of the two) and loads each model's
/// signer keys; every problem goes to `errors`. The models come back in file order.
pub fn validate_models(
    single: Option<&ArtefactFile>,
    many: &[ArtefactFile],
    errors: &mut Errors,
) -> Vec<ModelConfig> {
    let files: Vec<(String, &ArtefactFile)> = match (single, many.is_empty()) {
        (Some(a), true) => vec![("artefact".to_string(), a)],
        (None, false) => many
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("artefacts[{i}]"), a))
            .collect(),
        _ => {
            errors.push(
                "artefact",
                "give exactly one of [artefact] (one model) and [[artefacts]] (several)",
            );
            Vec::new()
        }
    };
    if files.len() > MAX_MODELS {
        errors.push(
            "artefacts",
            format_args!("at most {MAX_MODELS} models per sidecar"),
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut names = std::collections::HashSet::new();
    let mut models = Vec::new();
    for (key, a) in files {
        if !names.insert(a.model.as_str()) {
            errors.push(
                format_args!("{key}.model"),
                format_args!("{:?} is configured twice", a.model),
            );
        }
        models.push(a.validate(&key, cores, errors));
    }
    for (i, m) in models.iter().enumerate() {
        let Some(base) = &m.base else { continue };
        if !models.iter().any(|b| &b.model == base && b.base.is_none()) {
            errors.push(
                format_args!("artefacts[{i}].base"),
                format_args!("{base:?} is not a configured model (kind = \"model\")"),
            );
        }
    }
    models
}

// === impl ArtefactFile ===

impl ArtefactFile {
    /// Checks one model's section, found at `key`.
    fn validate(&self, key: &str, cores: usize, errors: &mut Errors) -> ModelConfig {
        let poll_interval = errors.duration(&format!("{key}.poll_interval"), &self.poll_interval);
        let scrub_interval =
            errors.duration(&format!("{key}.scrub_interval"), &self.scrub_interval);
        let scrub_rate = errors.bytes(&format!("{key}.scrub_rate"), &self.scrub_rate);
        if scrub_rate == 0 {
            errors.push(format_args!("{key}.scrub_rate"), "must be more than zero");
        }
        errors.more_than_zero(&format!("{key}.poll_interval"), poll_interval);
        let progress_key = format!("{key}.progress_log_interval");
        let progress_log_interval = errors.duration(&progress_key, &self.progress_log_interval);
        errors.more_than_zero(&progress_key, progress_log_interval);
        errors.nonempty(&format!("{key}.model"), &self.model);
        errors.nonempty(&format!("{key}.path"), &self.path);
        let mut signers = Vec::new();
        for (i, s) in self.signers.iter().enumerate() {
            match s.load() {
                Ok(k) => signers.push(k),
                Err((field, e)) => errors.push(format_args!("{key}.signers[{i}].{field}"), e),
            }
            if s.name.trim().is_empty() {
                errors.push(format_args!("{key}.signers[{i}].name"), "must not be empty");
            }
        }
        let serialization = match (self.serialization.as_str(), self.shard_size) {
            ("files", None) => Serialization::Files,
            ("files", Some(_)) => {
                errors.push(
                    format_args!("{key}.shard_size"),
                    "only used with serialization = \"shards\"",
                );
                Serialization::Files
            }
            ("shards", size) => {
                let shard_size = size.unwrap_or(DEFAULT_SHARD_SIZE);
                if shard_size == 0 {
                    errors.push(format_args!("{key}.shard_size"), "must be more than zero");
                }
                Serialization::Shards { shard_size }
            }
            (other, _) => {
                errors.push(
                    format_args!("{key}.serialization"),
                    format_args!("{other:?} is not one of \"files\", \"shards\""),
                );
                Serialization::Files
            }
        };
        ModelConfig {
            model: self.model.clone(),
            path: PathBuf::from(&self.path),
            poll_interval,
            serialization,
            hash_threads: if self.hash_threads == 0 {
                cores
            } else {
                self.hash_threads
            },
            progress_log_interval,
            signers: Arc::new(signers),
            scrub_interval: (!scrub_interval.is_zero()).then_some(scrub_interval),
            scrub_rate,
            base: match (self.kind.as_deref(), &self.base) {
                (None | Some("model"), None) => None,
                (Some("adapter"), Some(b)) => Some(b.clone()),
                (Some("adapter"), None) => {
                    errors.push(
                        format_args!("{key}.base"),
                        "an adapter names its base model",
                    );
                    None
                }
                (None | Some("model"), Some(_)) => {
                    errors.push(
                        format_args!("{key}.base"),
                        "only an adapter (kind = \"adapter\") has a base",
                    );
                    None
                }
                (Some(other), _) => {
                    errors.push(
                        format_args!("{key}.kind"),
                        format_args!("{other:?} is not one of \"model\", \"adapter\""),
                    );
                    None
                }
            },
        }
    }
}
