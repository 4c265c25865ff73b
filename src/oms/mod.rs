//! OpenSSF Model Signing (OMS), one spec in one place: the manifest of a model directory
//! ([`manifest`]: which files it holds, how they are cut into resources, their SHA-256
//! digests and the root digest over them) and its signature ([`signature`]: `model.sig`, a
//! Sigstore bundle holding a DSSE envelope over an in-toto statement, verified against pinned
//! signers: keys, or certificate identities checked with `x509`).
//!
//! Both follow the `model_signing` package (1.1.1): a digest or a signature made by it and by
//! provgate agree. This module reads files and verifies; it publishes nothing and knows no
//! watcher, registry or request. The artefact watcher and the command line use it; it must
//! not import either (nor anything above `digest`).

pub mod manifest;
pub mod progress;
pub mod signature;

pub use manifest::{
    compute_manifest, hash_dir, list_files, FileIdentity, HashError, HashOptions, HashStats,
    Manifest, Serialization, DEFAULT_SHARD_SIZE, IGNORED_TOP_LEVEL,
};
pub use progress::{HashProgress, ProgressSnapshot};
pub use signature::{
    signature_path, verify_dir, verify_dir_with, SignatureState, Signer, SignerError, SignerTrust,
    SIGNATURE_FILE,
};
