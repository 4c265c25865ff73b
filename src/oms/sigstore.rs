//! Sigstore (keyless) bundles for OMS signatures: what `model_signing sign sigstore` writes, a
//! Sigstore bundle whose DSSE envelope is signed by a short-lived Fulcio certificate naming
//! the OIDC identity that signed (a CI workflow, a service account, a person) and logged in
//! Rekor. This module owns the pinned trusted root (`trusted_root.json`, loaded from a file
//! once, never fetched), the signer identity (OIDC issuer and certificate subject) and the
//! verification of one bundle against them; it returns the signed DSSE payload and who signed
//! it. It does not read the model directory or compare the statement with it (the caller,
//! [`super::signature`], does that exactly as for the `key` method), and it does no network
//! I/O.
//!
//! The cryptography is `sigstore-verify` (sigstore/sigstore-rust): the DSSE signature by the
//! leaf, the leaf's chain to a Fulcio CA of the trusted root at the signing time (with the
//! code-signing usage and the CA's own validity window), the embedded SCT against the
//! root's CT logs, the transparency-log entry (signed entry timestamp and inclusion proof
//! with its signed checkpoint against the root's Rekor keys, or an RFC 3161 timestamp from a
//! trusted TSA for Rekor v2), the signing time inside the certificate's validity, and the
//! log entry's consistency with the envelope. This module adds the identity check and
//! refuses anything but a DSSE envelope over an in-toto statement.

use std::path::Path;
use std::time::{Duration, SystemTime};

use sigstore_verify::trust_root::TrustedRoot as RootDocument;
use sigstore_verify::types::{ArtifactDigest, Bundle, Sha256Hash, SignatureContent};
use sigstore_verify::{IdentityMatcher, VerificationPolicy, Verifier};

/// The only DSSE payload type an OMS signature carries.
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// A pinned Sigstore trusted root (`trusted_root.json`: Fulcio CAs, Rekor and CT log keys,
/// timestamp authorities, each with its validity window), parsed and its keys prepared once.
pub struct TrustedRoot {
    verifier: Verifier,
}

impl std::fmt::Debug for TrustedRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedRoot").finish_non_exhaustive()
    }
}

/// Why a trusted root could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustedRootError {
    #[error(transparent)]
    Read(#[from] crate::kit::file::ReadError),
    #[error("{path}: not UTF-8")]
    NotUtf8 { path: String },
    #[error("{path}: not a usable Sigstore trusted root: {source}")]
    Invalid {
        path: String,
        source: sigstore_verify::Error,
    },
}

impl TrustedRoot {
    /// Loads and checks a `trusted_root.json` (media type
    /// `application/vnd.dev.sigstore.trustedroot+json;version=0.1`): every key and certificate
    /// must parse and every validity window must have a start.
    pub fn from_file(path: &Path) -> Result<TrustedRoot, TrustedRootError> {
        let shown = || path.display().to_string();
        let bytes = crate::kit::file::read(path, crate::kit::file::Kind::Keys)?;
        let text =
            std::str::from_utf8(&bytes).map_err(|_| TrustedRootError::NotUtf8 { path: shown() })?;
        TrustedRoot::from_json(text).map_err(|source| TrustedRootError::Invalid {
            path: shown(),
            source,
        })
    }

    /// Parses a trusted root document.
    pub fn from_json(json: &str) -> Result<TrustedRoot, sigstore_verify::Error> {
        let root = RootDocument::from_json(json)?;
        Ok(TrustedRoot {
            verifier: Verifier::new(&root)?,
        })
    }
}

/// How the certificate's subject (its SAN: an email or a URI such as a workflow reference)
/// must match.
#[derive(Debug, Clone)]
pub enum SubjectMatch {
    /// Equal to this string.
    Exact(String),
    /// Matched in full by this regular expression (implicitly anchored at both ends, unlike
    /// cosign's `--certificate-identity-regexp`: `https://github\.com/org/.*` cannot match
    /// `https://evil.example/?https://github.com/org/`).
    Pattern(regex::Regex),
}

/// Why a subject pattern is refused.
#[derive(Debug, thiserror::Error)]
#[error("subject_pattern {pattern:?} is not a regular expression: {source}")]
pub struct PatternError {
    pattern: String,
    source: regex::Error,
}

impl SubjectMatch {
    /// A full-match pattern (see [`SubjectMatch::Pattern`]).
    pub fn pattern(pattern: &str) -> Result<SubjectMatch, PatternError> {
        regex::Regex::new(&format!("^(?:{pattern})$"))
            .map(SubjectMatch::Pattern)
            .map_err(|source| PatternError {
                pattern: pattern.to_string(),
                source,
            })
    }

    pub fn matches(&self, subject: &str) -> bool {
        match self {
            SubjectMatch::Exact(s) => s == subject,
            SubjectMatch::Pattern(re) => re.is_match(subject),
        }
    }
}

impl std::fmt::Display for SubjectMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubjectMatch::Exact(s) => write!(f, "{s:?}"),
            SubjectMatch::Pattern(re) => write!(f, "pattern {:?}", re.as_str()),
        }
    }
}

/// The identity a Sigstore signer's certificate must carry.
#[derive(Debug, Clone)]
pub struct SigstoreIdentity {
    /// The OIDC issuer (Fulcio extension 1.3.6.1.4.1.57264.1.8, or the legacy .1.1), exact.
    pub issuer: String,
    /// The certificate subject (SAN email or URI).
    pub subject: SubjectMatch,
}

/// A verified DSSE envelope from a Sigstore bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDsse {
    /// Always `application/vnd.in-toto+json`.
    pub payload_type: String,
    /// The signed statement, as signed.
    pub payload: Vec<u8>,
    /// The certificate's subject (SAN email or URI).
    pub subject: String,
    /// The certificate's OIDC issuer.
    pub issuer: String,
    /// The verified signing time: the log's integrated time, else the earliest trusted
    /// timestamp.
    pub signed_at: SystemTime,
}

/// Why a bundle is refused.
#[derive(Debug, thiserror::Error)]
pub enum SigstoreError {
    #[error("not a Sigstore bundle: {0}")]
    Bundle(String),
    #[error("the bundle holds no DSSE envelope (a message signature is not an OMS signature)")]
    NotDsse,
    #[error("payloadType {0:?} is not {PAYLOAD_TYPE:?}")]
    PayloadType(String),
    #[error("the signed payload is not an in-toto statement with a sha256 subject: {0}")]
    Statement(String),
    #[error("sigstore: {0}")]
    Verify(#[from] sigstore_verify::Error),
    #[error("certificate subject {found:?} is not {expected}")]
    Subject {
        found: String,
        expected: SubjectMatch,
    },
    #[error("certificate issuer {found:?} is not {expected:?}")]
    Issuer { found: String, expected: String },
    #[error("sigstore: verification left {0} unchecked")]
    Unchecked(&'static str),
}

/// Verifies a Sigstore bundle holding a DSSE envelope: signature, certificate chain and
/// identity, transparency-log entry and signing time (see the module comment), against the
/// pinned trusted root. The envelope's statement is bound to its subject's sha256 digest
/// only: comparing that statement with the artefact is the caller's.
pub fn verify_bundle(
    bundle_json: &[u8],
    trusted_root: &TrustedRoot,
    identity: &SigstoreIdentity,
) -> Result<VerifiedDsse, SigstoreError> {
    let text = std::str::from_utf8(bundle_json)
        .map_err(|_| SigstoreError::Bundle("not UTF-8".to_string()))?;
    let bundle = Bundle::from_json(text).map_err(|e| SigstoreError::Bundle(e.to_string()))?;
    let SignatureContent::DsseEnvelope(envelope) = &bundle.content else {
        return Err(SigstoreError::NotDsse);
    };
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(SigstoreError::PayloadType(envelope.payload_type.clone()));
    }
    let payload = envelope.payload.as_bytes().to_vec();
    let subject_digest = statement_subject(&payload)?;

    let mut policy = VerificationPolicy::any_identity().require_issuer(identity.issuer.clone());
    if let SubjectMatch::Exact(s) = &identity.subject {
        policy = policy.require_identity(IdentityMatcher::Exact(s.clone()));
    }
    let result = trusted_root
        .verifier
        .verify(subject_digest, &bundle, &policy)?;
    // The policy asks for every check; refuse if the library ever reports one skipped.
    if !result.certificate_verified() {
        return Err(SigstoreError::Unchecked("the certificate chain"));
    }
    if !result.sct_verified() {
        return Err(SigstoreError::Unchecked(
            "the certificate transparency timestamp",
        ));
    }
    if !result.tlog_verified() {
        return Err(SigstoreError::Unchecked("the transparency log entry"));
    }
    let found = result
        .identity()
        .map(|s| s.as_str().to_string())
        .unwrap_or_default();
    if !identity.subject.matches(&found) {
        return Err(SigstoreError::Subject {
            found,
            expected: identity.subject.clone(),
        });
    }
    let issuer = result.issuer().unwrap_or_default().to_string();
    if issuer != identity.issuer {
        return Err(SigstoreError::Issuer {
            found: issuer,
            expected: identity.issuer.clone(),
        });
    }
    let signed_at = result
        .integrated_time()
        .or_else(|| result.verified_timestamps().iter().min().copied())
        .ok_or(SigstoreError::Unchecked("the signing time"))?;
    let secs = u64::try_from(signed_at.as_second())
        .map_err(|_| SigstoreError::Unchecked("the signing time"))?;
    Ok(VerifiedDsse {
        payload_type: envelope.payload_type.clone(),
        payload,
        subject: found,
        issuer,
        signed_at: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
    })
}

/// The statement's one sha256 subject digest (an OMS statement has exactly one subject: the
/// model, whose digest is the root over its resources).
fn statement_subject(payload: &[u8]) -> Result<ArtifactDigest, SigstoreError> {
    let statement: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| SigstoreError::Statement(e.to_string()))?;
    let subjects = statement
        .get("subject")
        .and_then(|s| s.as_array())
        .ok_or_else(|| SigstoreError::Statement("no subject".to_string()))?;
    let [subject] = subjects.as_slice() else {
        return Err(SigstoreError::Statement(format!(
            "{} subjects, expected one",
            subjects.len()
        )));
    };
    let hex = subject
        .pointer("/digest/sha256")
        .and_then(|d| d.as_str())
        .ok_or_else(|| SigstoreError::Statement("subject has no sha256 digest".to_string()))?;
    let digest = Sha256Hash::from_hex(hex).map_err(|e| SigstoreError::Statement(e.to_string()))?;
    Ok(ArtifactDigest::sha256(digest))
}

#[cfg(test)]
mod tests;
