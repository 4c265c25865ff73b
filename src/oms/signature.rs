//! OMS signatures: `model.sig` in the model directory, as the `model_signing` tool writes it
//! with `sign key` (a Sigstore bundle holding a DSSE envelope over an in-toto statement,
//! predicate type `https://model_signing/signature/v1.0`), verified against pinned signer
//! public keys (EC P-256 or P-384, PEM); `sign certificate` bundles against a CA bundle and
//! a SAN identity (the chain is checked by [`crate::x509`]); `sign sigstore` (keyless)
//! bundles against a pinned Sigstore trusted root and an OIDC identity
//! ([`super::sigstore`] verifies the bundle, this module the statement).
//!
//! A signature is valid only if it is by a pinned signer, its statement's resources equal
//! what is on disk exactly (no extra file, no missing file, every digest equal; `files` or
//! `shards` serialization, SHA-256), and its subject digest is the root over them. The signer
//! it names is what an approval record's `artefact.signer` is checked against.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{
    UnparsedPublicKey, VerificationAlgorithm, ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1,
};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest as _, Sha256};
use x509_parser::prelude::FromDer;

use rustls::pki_types::CertificateDer;

use super::manifest::{hash_dir, HashOptions, Manifest, Serialization};
use super::sigstore::{
    PatternError, SigstoreIdentity, SubjectMatch, TrustedRoot, TrustedRootError,
};
use crate::x509::{CaBundle, CertIdentity, X509Error};

/// The signature file's name inside the model directory.
pub const SIGNATURE_FILE: &str = "model.sig";
const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// A pinned artefact signer: a name (what approval records pin in `artefact.signer`) and how
/// its signatures are trusted.
#[derive(Debug)]
pub struct Signer {
    pub name: String,
    pub trust: SignerTrust,
}

/// How a signer's signatures are trusted; one variant per identity form of
/// `[[artefact.signers]]`. Adding a form is a variant here and an arm in
/// [`SignerTrust::accepts`].
pub enum SignerTrust {
    /// `model_signing sign key`: a pinned EC public key.
    Key {
        algorithm: &'static dyn VerificationAlgorithm,
        point: Vec<u8>,
    },
    /// `model_signing sign certificate`: the bundle's `x509CertificateChain` must validate to
    /// the CA bundle now, name the identity, and its leaf key must have made the signature.
    Certificate(CertIdentity),
    /// `model_signing sign sigstore` (keyless): the bundle must verify against the pinned
    /// trusted root (Fulcio chain at the signing time, Rekor entry, signing time inside the
    /// leaf's validity) and its certificate carry the issuer and subject.
    Sigstore {
        root: TrustedRoot,
        identity: SigstoreIdentity,
    },
}

impl std::fmt::Debug for SignerTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignerTrust::Key { .. } => f.write_str("Key"),
            SignerTrust::Certificate(c) => f
                .debug_struct("Certificate")
                .field("ca", &c.ca.path)
                .field("identity", &c.identity.to_string())
                .finish(),
            SignerTrust::Sigstore { identity, .. } => f
                .debug_struct("Sigstore")
                .field("issuer", &identity.issuer)
                .field("subject", &identity.subject.to_string())
                .finish(),
        }
    }
}

/// Why a signer key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error(transparent)]
    Read(#[from] crate::kit::file::ReadError),
    #[error("{path}: {source}")]
    Pem { path: String, source: pem::PemError },
    #[error("{path}: not a public key: {detail}")]
    NotPublicKey { path: String, detail: String },
    #[error("{path}: only EC P-256 and P-384 signer keys are supported (curve {curve:?})")]
    Curve { path: String, curve: Option<String> },
    #[error(transparent)]
    Certificate(#[from] X509Error),
    #[error(transparent)]
    TrustedRoot(#[from] TrustedRootError),
    #[error(transparent)]
    SubjectPattern(#[from] PatternError),
    #[error("a sigstore signer's issuer must not be empty")]
    EmptyIssuer,
}

impl Signer {
    /// Loads an EC P-256 or P-384 public key from a PEM `PUBLIC KEY` block.
    pub fn from_pem_file(name: &str, path: &Path) -> Result<Signer, SignerError> {
        let shown = || path.display().to_string();
        let text = crate::kit::file::read(path, crate::kit::file::Kind::Keys)?;
        let block = pem::parse(&text).map_err(|source| SignerError::Pem {
            path: shown(),
            source,
        })?;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(block.contents())
            .map_err(|e| SignerError::NotPublicKey {
                path: shown(),
                detail: e.to_string(),
            })?;
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string());
        let algorithm: &'static dyn VerificationAlgorithm = match curve.as_deref() {
            Some("1.2.840.10045.3.1.7") => &ECDSA_P256_SHA256_ASN1,
            Some("1.3.132.0.34") => &ECDSA_P384_SHA384_ASN1,
            other => {
                return Err(SignerError::Curve {
                    path: shown(),
                    curve: other.map(str::to_string),
                })
            }
        };
        Ok(Signer {
            name: name.to_string(),
            trust: SignerTrust::Key {
                algorithm,
                point: spki.subject_public_key.data.to_vec(),
            },
        })
    }

    /// A certificate-bound signer: a PEM CA bundle and the identity its leaf must carry
    /// (`spiffe://...`, `email:...`, `dns:...`).
    pub fn certificate(
        name: &str,
        ca_bundle: &Path,
        identity: &str,
    ) -> Result<Signer, SignerError> {
        Ok(Signer {
            name: name.to_string(),
            trust: SignerTrust::Certificate(CertIdentity {
                ca: CaBundle::from_pem_file(ca_bundle)?,
                identity: identity.parse()?,
            }),
        })
    }
}

impl Signer {
    /// A Sigstore (keyless) signer: a pinned `trusted_root.json`, the OIDC issuer (exact) and
    /// the certificate subject the bundle's leaf must carry.
    pub fn sigstore(
        name: &str,
        trusted_root: &Path,
        issuer: &str,
        subject: SubjectMatch,
    ) -> Result<Signer, SignerError> {
        if issuer.trim().is_empty() {
            return Err(SignerError::EmptyIssuer);
        }
        Ok(Signer {
            name: name.to_string(),
            trust: SignerTrust::Sigstore {
                root: TrustedRoot::from_file(trusted_root)?,
                identity: SigstoreIdentity {
                    issuer: issuer.to_string(),
                    subject,
                },
            },
        })
    }
}

/// ECDSA algorithms `model_signing` signs with (the hash follows the curve); webpki checks
/// that the leaf's key fits.
static LEAF_ALGS: &[&dyn rustls::pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
];

impl SignerTrust {
    /// Did this signer make `sig` over `pae` in this bundle? `Ok(Some(identity))` for a
    /// certificate signer (the leaf identity checked), `Ok(None)` for a key; `Err` says why
    /// not, for the report when no signer accepts.
    fn accepts(
        &self,
        bundle: &serde_json::Value,
        pae: &[u8],
        sig: &[u8],
    ) -> Result<Option<String>, String> {
        match self {
            SignerTrust::Key { algorithm, point } => UnparsedPublicKey::new(*algorithm, point)
                .verify(pae, sig)
                .map(|()| None)
                .map_err(|_| "not signed by this key".to_string()),
            SignerTrust::Certificate(c) => {
                let chain = bundle_chain(bundle)?;
                // The bundle carries no trusted time (no log entry, no timestamp): check the
                // chain now (README "Certificate signers").
                let leaf = c
                    .verify_chain(&chain, crate::x509::now())
                    .map_err(|e| e.to_string())?;
                leaf.verify(LEAF_ALGS, pae, sig)
                    .map_err(|e| e.to_string())?;
                Ok(Some(leaf.identity))
            }
            SignerTrust::Sigstore { root, identity } => {
                // The whole bundle is verified (the envelope's one signature among it); the
                // payload it vouches for must be the one `pae` ends with, which the caller
                // then compares with the directory.
                let json = serde_json::to_vec(bundle).map_err(|e| e.to_string())?;
                let v = super::sigstore::verify_bundle(&json, root, identity)
                    .map_err(|e| e.to_string())?;
                if !pae.ends_with(&v.payload) {
                    return Err("the verified payload is not the envelope's".to_string());
                }
                Ok(Some(v.subject))
            }
        }
    }
}

/// The DER certificates of a bundle's `verificationMaterial.x509CertificateChain` (leaf
/// first), as `model_signing sign certificate` writes it.
fn bundle_chain(bundle: &serde_json::Value) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = bundle
        .pointer("/verificationMaterial/x509CertificateChain/certificates")
        .and_then(|c| c.as_array())
        .ok_or("the bundle has no verificationMaterial.x509CertificateChain")?;
    if certs.len() > crate::x509::MAX_CHAIN {
        return Err(X509Error::TooLong.to_string());
    }
    certs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.get("rawBytes")
                .and_then(|r| r.as_str())
                .and_then(|r| STANDARD.decode(r).ok())
                .map(CertificateDer::from)
                .ok_or_else(|| {
                    format!("x509CertificateChain certificate {i} has no base64 rawBytes")
                })
        })
        .collect()
}

/// What the signature in a model directory says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureState {
    /// No `model.sig`.
    Absent,
    /// Valid, by this pinned signer; `identity` is the certificate identity it was checked
    /// for (certificate signers), for audit lines.
    Valid {
        signer: String,
        identity: Option<String>,
    },
    /// Present but not acceptable, with why.
    Invalid { reason: String },
}

impl SignatureState {
    pub fn signer(&self) -> Option<&str> {
        match self {
            SignatureState::Valid { signer, .. } => Some(signer),
            _ => None,
        }
    }

    /// The certificate identity of a valid signature's signer, if certificate-bound.
    pub fn identity(&self) -> Option<&str> {
        match self {
            SignatureState::Valid { identity, .. } => identity.as_deref(),
            _ => None,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            SignatureState::Absent => "absent",
            SignatureState::Valid { .. } => "valid",
            SignatureState::Invalid { .. } => "invalid",
        }
    }
}

/// Verifies `DIR/model.sig` against the pinned signers and the directory's contents,
/// hashing the directory on one thread per core.
pub fn verify_dir(dir: &Path, signers: &[Signer]) -> SignatureState {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    verify_dir_with(
        dir,
        signers,
        None,
        &HashOptions::new(Serialization::Files, threads),
    )
}

/// Where a model's OMS signature is: `DIR/model.sig` for a directory, `FILE.sig` beside a
/// single-file model (several single-file models may share a directory).
pub fn signature_path(model: &Path) -> PathBuf {
    if model.is_dir() {
        model.join(SIGNATURE_FILE)
    } else {
        let mut name = model.as_os_str().to_owned();
        name.push(".sig");
        PathBuf::from(name)
    }
}

/// Verifies the model's signature ([`signature_path`]), checking its resources against `served` (the manifest of `dir`
/// just computed) when the signature's serialization is the same, else hashing `dir` with
/// the signature's serialization and the rest of `hashing` (threads, cancel, progress).
pub fn verify_dir_with(
    dir: &Path,
    signers: &[Signer],
    served: Option<&Manifest>,
    hashing: &HashOptions,
) -> SignatureState {
    let path = signature_path(dir);
    // Bounded and non-blocking: a FIFO, a device or a sparse giant is an invalid signature.
    let bytes = match crate::kit::file::read(&path, crate::kit::file::Kind::Signature) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return SignatureState::Absent,
        Err(e) => return invalid(e.to_string()),
    };
    match verify_bundle(dir, &bytes, signers, served, hashing) {
        Ok((signer, identity)) => SignatureState::Valid { signer, identity },
        Err(reason) => invalid(reason),
    }
}

fn invalid(reason: String) -> SignatureState {
    SignatureState::Invalid { reason }
}

/// Verifies a signature file's bytes (`bundle`) for the model at `dir`: the envelope, the
/// signer, the statement, then its resources against `served` (or `dir` hashed afresh).
/// The parser [`verify_dir_with`] calls; public for the fuzz targets (`provgate::fuzzing`).
pub fn verify_bundle(
    dir: &Path,
    bundle: &[u8],
    signers: &[Signer],
    served: Option<&Manifest>,
    hashing: &HashOptions,
) -> Result<(String, Option<String>), String> {
    let bundle: serde_json::Value =
        serde_json::from_slice(bundle).map_err(|e| format!("model.sig is not JSON: {e}"))?;
    let envelope = bundle
        .get("dsseEnvelope")
        .ok_or("model.sig has no dsseEnvelope")?;
    let payload_type = envelope
        .get("payloadType")
        .and_then(|t| t.as_str())
        .ok_or("dsseEnvelope has no payloadType")?;
    if payload_type != PAYLOAD_TYPE {
        return Err(format!(
            "payloadType {payload_type:?} is not {PAYLOAD_TYPE:?}"
        ));
    }
    let payload = STANDARD
        .decode(
            envelope
                .get("payload")
                .and_then(|p| p.as_str())
                .ok_or("dsseEnvelope has no payload")?,
        )
        .map_err(|e| format!("payload is not base64: {e}"))?;
    let signatures = envelope
        .get("signatures")
        .and_then(|s| s.as_array())
        .ok_or("dsseEnvelope has no signatures")?;

    // DSSE pre-authentication encoding.
    let mut pae = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    pae.extend_from_slice(&payload);
    let sigs: Vec<Vec<u8>> = signatures
        .iter()
        .filter_map(|s| s.get("sig").and_then(|v| v.as_str()))
        .filter_map(|s| STANDARD.decode(s).ok())
        .collect();
    let mut refusals = Vec::new();
    let mut found = None;
    'signers: for k in signers {
        for sig in &sigs {
            match k.trust.accepts(&bundle, &pae, sig) {
                Ok(identity) => {
                    found = Some((k, identity));
                    break 'signers;
                }
                Err(why) => {
                    // A key either made it or not; identity forms say why not.
                    if !matches!(k.trust, SignerTrust::Key { .. }) {
                        refusals.push(format!("{}: {why}", k.name));
                    }
                }
            }
        }
    }
    let Some((signer, identity)) = found else {
        return Err(if refusals.is_empty() {
            "the signature is by none of the pinned signers".to_string()
        } else {
            format!(
                "the signature is by none of the pinned signers ({})",
                refusals.join("; ")
            )
        });
    };

    let statement: serde_json::Value =
        serde_json::from_slice(&payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let predicate_type = statement.get("predicateType").and_then(|p| p.as_str());
    if predicate_type != Some(PREDICATE_TYPE) {
        return Err(format!(
            "predicateType {predicate_type:?} is not {PREDICATE_TYPE:?}"
        ));
    }
    let subjects = statement
        .get("subject")
        .and_then(|s| s.as_array())
        .ok_or("statement has no subject")?;
    let [subject] = subjects.as_slice() else {
        return Err(format!("expected one subject, found {}", subjects.len()));
    };
    let signed_root = subject
        .pointer("/digest/sha256")
        .and_then(|d| d.as_str())
        .ok_or("subject has no sha256 digest")?;
    let predicate = statement
        .get("predicate")
        .ok_or("statement has no predicate")?;
    let serialization = predicate
        .get("serialization")
        .ok_or("predicate has no serialization")?;
    let hash_type = serialization.get("hash_type").and_then(|h| h.as_str());
    if hash_type != Some("sha256") {
        return Err(format!(
            "hash_type {hash_type:?} is not supported (sha256 only)"
        ));
    }
    let ignore: Vec<PathBuf> = serialization
        .get("ignore_paths")
        .and_then(|i| i.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    let method = serialization.get("method").and_then(|m| m.as_str());
    let serialization = match method {
        Some("files") => Serialization::Files,
        Some("shards") => {
            // model_signing 1.1.1 writes shard_size as a float: read it leniently.
            let shard_size = serialization
                .get("shard_size")
                .and_then(|s| s.as_u64().or_else(|| s.as_f64().map(|f| f as u64)))
                .filter(|s| *s > 0)
                .ok_or("shards serialization without a positive shard_size")?;
            Serialization::Shards { shard_size }
        }
        other => return Err(format!("serialization method {other:?} is not supported")),
    };
    let hashed;
    let manifest = match served {
        Some(m) if m.serialization == serialization => m,
        _ => {
            let opts = HashOptions {
                serialization,
                ..hashing.clone()
            };
            hashed = hash_dir(dir, &opts, None).map_err(|e| e.to_string())?;
            &hashed
        }
    };
    let on_disk = resources(manifest, &ignore);

    let mut signed = BTreeMap::new();
    for r in predicate
        .get("resources")
        .and_then(|r| r.as_array())
        .ok_or("predicate has no resources")?
    {
        let name = r
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or("resource without a name")?;
        let digest = r
            .get("digest")
            .and_then(|d| d.as_str())
            .ok_or("resource without a digest")?;
        signed.insert(name.to_string(), digest.to_ascii_lowercase());
    }
    let disk: BTreeMap<&str, String> = on_disk.iter().map(|(n, d)| (*n, hex::encode(d))).collect();
    for (name, digest) in &signed {
        match disk.get(name.as_str()) {
            None => return Err(format!("signed resource {name} is missing")),
            Some(d) if d != digest => return Err(format!("{name} differs from what was signed")),
            Some(_) => {}
        }
    }
    if let Some(extra) = disk.keys().find(|n| !signed.contains_key(**n)) {
        return Err(format!("{extra} is not covered by the signature"));
    }
    let mut root = Sha256::new();
    for (_, d) in &on_disk {
        root.update(d);
    }
    if hex::encode(root.finalize()) != signed_root.to_ascii_lowercase() {
        return Err("the subject digest is not the root over the signed resources".into());
    }
    Ok((signer.name.clone(), identity))
}

fn ignored(rel: &Path, ignore: &[PathBuf]) -> bool {
    ignore.iter().any(|i| rel.starts_with(i))
}

/// The manifest's resources, in manifest order, less the signature's ignore paths.
fn resources<'m>(manifest: &'m Manifest, ignore: &[PathBuf]) -> Vec<(&'m str, [u8; 32])> {
    manifest
        .files
        .iter()
        .filter(|f| !ignored(&f.rel, ignore))
        // A file's range indexes its own manifest's resources; were it not to, the list
        // would lack entries and fail to match the signature (fail closed).
        .flat_map(|f| {
            manifest
                .resources
                .get(f.resources.clone())
                .unwrap_or_default()
        })
        .map(|(n, d)| (n.as_str(), *d))
        .collect()
}

#[cfg(test)]
mod tests;
