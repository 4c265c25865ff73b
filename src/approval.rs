//! Approval records: signed statements (JWS compact, `typ: approval+jwt`, ES256/ES384 or
//! EdDSA, by a pinned approver key or by a key whose `x5c` chain names a certificate-bound
//! approver) that bind one artefact digest to a model version, its evidence, an expiry, the
//! workloads allowed to serve it and the callers allowed to call it.
//!
//! This module verifies a record's signature and shape once, when the registry loads it, and
//! signs records for `provgate approve`. It never looks at time: whether a record is in force
//! *now* is the decision's business, so an expired record still loads and is reported as
//! `approval_expired` rather than as malformed.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::keys::{KeySet, SigningKey};

pub mod exception;

pub use exception::{ExceptionRecord, Waiver, EXCEPTION_TYP};

/// The JWS `typ` of an approval record (RFC 8725 section 3.11 explicit typing).
pub const RECORD_TYP: &str = "approval+jwt";

/// Algorithms an approval record may be signed with.
pub const RECORD_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA];

/// The payload of an approval record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApprovalClaims {
    /// The approver identity that issued the record.
    pub iss: String,
    /// The model name.
    pub sub: String,
    /// The record ID (what a revocation names).
    pub jti: String,
    pub iat: u64,
    /// Not valid before; defaults to `iat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub exp: u64,
    /// The approved model version ID that telemetry is tagged with.
    pub version_id: String,
    pub artefact: ArtefactRef,
    /// Where the artefact came from: training data digest, code revision, parent version.
    #[serde(default)]
    pub lineage: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub evidence: Vec<Evidence>,
    /// Who approved, in which role, when.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<Approver>,
    /// Exposure tier, for per-tier evidence rules.
    pub tier: String,
    /// Workload identities allowed to serve the artefact (exact, or a trailing `*`).
    pub workloads: Vec<String>,
    /// Caller identities allowed to call it: a bare pattern (exact, or a trailing `*`), or
    /// an issuer-qualified one `{"iss": ISSUER, "sub": PATTERN}`. See [`CallerPattern`].
    pub callers: Vec<CallerPattern>,
    /// After this time the registry must be asked again before the record is trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revalidate_after: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ArtefactRef {
    pub digest: Digest,
    /// The artefact signer's key identity, when the record pins one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The Ollama manifest digest (hex SHA-256, optionally `sha256:`-prefixed) the model
    /// server must report for this model in `GET /api/tags`, when the record pins one.
    /// Optional and omitted when absent, so records without it read and verify as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ollama_digest: Option<String>,
    /// For a LoRA adapter: the OMS digest of the base model it was approved on. A request
    /// naming the adapter is allowed only while the base is served with this digest.
    /// Optional and omitted when absent (records of models read and verify as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_digest: Option<Digest>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Evidence {
    pub kind: String,
    #[serde(default)]
    pub uri: String,
    #[serde(default)]
    pub digest: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Approver {
    pub who: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub at: u64,
}

/// A record whose signature and shape have been verified.
#[derive(Debug)]
pub struct ApprovalRecord {
    pub claims: ApprovalClaims,
    /// The `kid` of the (first) approver key that signed it.
    pub kid: String,
    /// The `kid`s of every approver key whose signature over this payload verified, without
    /// repeats: one for a compact record, one per known co-signer for a co-signed one. Which
    /// approver each belongs to, and what it may approve, is the policy's.
    pub signers: Vec<String>,
    /// `version_id` shared for cheap cloning into per-request context.
    pub version_id: Arc<str>,
    /// `version_id` as a header value, made once (a clone is a reference count).
    pub version_header: http::HeaderValue,
}

impl ApprovalRecord {
    /// The first second the record is in force.
    pub fn not_before(&self) -> u64 {
        self.claims.nbf.unwrap_or(self.claims.iat)
    }
}

/// Why a record was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApprovalError {
    #[error("not a JWS compact serialization")]
    Malformed,
    #[error("unsupported header: {0}")]
    Header(String),
    #[error("typ must be \"{0}\"")]
    Typ(&'static str),
    #[error("algorithm {0:?} is not allowed for approval records")]
    Algorithm(String),
    #[error("no approver key matches kid {0:?}")]
    UnknownKey(Option<String>),
    #[error("signature does not verify")]
    Signature,
    #[error("payload: {0}")]
    Payload(String),
    #[error("co-signed record: {0}")]
    General(&'static str),
    #[error("signing: {0}")]
    Signing(String),
    #[error("x5c: {0}")]
    Certificate(String),
}

/// The signer ID of a certificate-bound approver (what [`ApprovalRecord::signers`] holds for
/// a record verified by its `x5c` chain, and what `[[trust.approvers]]` binds to a scope).
pub fn certificate_signer_id(identity: &crate::x509::Identity) -> String {
    format!("x509:{identity}")
}

/// A co-signed record: RFC 7515 section 7.2.1 JWS JSON General Serialization, several
/// signatures over one payload, each with its own protected header (`typ`, `alg`, `kid`).
/// Unprotected headers are refused. On one line (any JSON encoder without indentation), so
/// every registry backend carries it like a compact record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GeneralJws {
    payload: String,
    signatures: Vec<GeneralSignature>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GeneralSignature {
    protected: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<serde_json::Value>,
    signature: String,
}

/// The most co-signatures one record may carry.
pub const MAX_SIGNATURES: usize = 16;

/// Verifies an approval record against the approver keys: a compact JWS, or a co-signed
/// record in the JWS JSON General Serialization ([`GeneralJws`]). For a co-signed record,
/// every signature by a known key must verify (one that does not makes the record invalid);
/// signatures by keys not in `approvers` (withdrawn, or another deployment's) count for
/// nothing; at least one must be by a known key.
pub fn verify(text: &str, approvers: &KeySet) -> Result<ApprovalRecord, ApprovalError> {
    let text = text.trim();
    if !text.starts_with('{') {
        let mut record = verify_compact(text, approvers)?;
        record.signers = vec![record.kid.clone()];
        return Ok(record);
    }
    let general: GeneralJws =
        serde_json::from_str(text).map_err(|_| ApprovalError::General("not a JWS JSON object"))?;
    if general.signatures.is_empty() || general.signatures.len() > MAX_SIGNATURES {
        return Err(ApprovalError::General("needs 1 to 16 signatures"));
    }
    let mut first: Option<ApprovalRecord> = None;
    let mut signers: Vec<String> = Vec::new();
    for s in &general.signatures {
        if s.header.is_some() {
            return Err(ApprovalError::General(
                "unprotected headers are not accepted",
            ));
        }
        let compact = format!("{}.{}.{}", s.protected, general.payload, s.signature);
        match verify_compact(&compact, approvers) {
            Ok(r) => {
                if !signers.contains(&r.kid) {
                    signers.push(r.kid.clone());
                }
                first.get_or_insert(r);
            }
            Err(ApprovalError::UnknownKey(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    let mut record = first.ok_or(ApprovalError::UnknownKey(None))?;
    record.signers = signers;
    Ok(record)
}

/// What a registry document turned out to be, verified.
#[derive(Debug)]
pub enum Verified {
    Record(ApprovalRecord),
    Exception(ExceptionRecord),
}

/// Is this document an exception (a compact JWS whose protected header says
/// `typ: exception+jwt`)? Read unverified, only to choose the verifier.
pub fn is_exception(text: &str) -> bool {
    let text = text.trim();
    !text.starts_with('{')
        && read_header(text, true)
            .ok()
            .and_then(|h| h.typ)
            .is_some_and(|t| typ_matches(&t, EXCEPTION_TYP))
}

/// Verifies a registry document of either kind: an exception when its header says so
/// ([`is_exception`]), else an approval record ([`verify`]). Every backend passes what it
/// fetched through here, so they all carry exceptions beside records.
pub fn verify_any(text: &str, approvers: &KeySet) -> Result<Verified, ApprovalError> {
    if is_exception(text) {
        exception::verify(text, approvers).map(Verified::Exception)
    } else {
        verify(text, approvers).map(Verified::Record)
    }
}

/// Adds a signature by `key` to an existing record (compact or co-signed) over the same
/// payload, returning the co-signed record (one line of JSON). The payload is not re-encoded,
/// so every signature covers exactly the same bytes. Refuses a key that already signed.
pub fn cosign(existing: &str, key: &SigningKey) -> Result<String, ApprovalError> {
    let existing = existing.trim();
    let mut general = if existing.starts_with('{') {
        serde_json::from_str::<GeneralJws>(existing)
            .map_err(|_| ApprovalError::General("not a JWS JSON object"))?
    } else {
        let mut parts = existing.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ApprovalError::Malformed);
        };
        GeneralJws {
            payload: p.to_string(),
            signatures: vec![GeneralSignature {
                protected: h.to_string(),
                header: None,
                signature: s.to_string(),
            }],
        }
    };
    for s in &general.signatures {
        let header = read_header(&format!("{}.{}.x", s.protected, general.payload), true)?;
        if header.kid.as_deref() == Some(key.kid.as_str()) {
            return Err(ApprovalError::General(
                "this key has already signed the record",
            ));
        }
    }
    if general.signatures.len() >= MAX_SIGNATURES {
        return Err(ApprovalError::General("needs 1 to 16 signatures"));
    }
    let mut header = Header::new(key.alg);
    header.typ = Some(RECORD_TYP.to_string());
    header.kid = Some(key.kid.clone());
    let protected = URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&header).map_err(|e| ApprovalError::Signing(e.to_string()))?);
    let message = format!("{protected}.{}", general.payload);
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key.key, key.alg)
        .map_err(|e| ApprovalError::Signing(e.to_string()))?;
    general.signatures.push(GeneralSignature {
        protected,
        header: None,
        signature,
    });
    serde_json::to_string(&general).map_err(|e| ApprovalError::Signing(e.to_string()))
}

/// Verifies one compact JWS (`signers` left empty for the caller to fill).
fn verify_compact(jws: &str, approvers: &KeySet) -> Result<ApprovalRecord, ApprovalError> {
    let (claims, kid) = decode_compact::<ApprovalClaims>(jws, approvers, RECORD_TYP)?;
    check_shape(&claims)?;
    let version_header = http::HeaderValue::from_str(&claims.version_id)
        .map_err(|_| ApprovalError::Payload("version_id must be printable ASCII".into()))?;
    Ok(ApprovalRecord {
        version_header,
        version_id: Arc::from(claims.version_id.as_str()),
        claims,
        kid,
        signers: Vec::new(),
    })
}

/// Verifies one compact JWS of type `typ` against the approver keys (or, with `x5c`, the
/// certificate-bound approvers) and reads its claims, returning them with the signer ID that
/// verified (a `kid`, or [`certificate_signer_id`]). Shape checks are the caller's.
fn decode_compact<T: serde::de::DeserializeOwned>(
    jws: &str,
    approvers: &KeySet,
    typ: &'static str,
) -> Result<(T, String), ApprovalError> {
    let header = read_header(jws, !approvers.certificates.is_empty())?;
    match header.typ.as_deref() {
        Some(t) if typ_matches(t, typ) => {}
        _ => return Err(ApprovalError::Typ(typ)),
    }
    if !RECORD_ALGORITHMS.contains(&header.alg) {
        return Err(ApprovalError::Algorithm(format!("{:?}", header.alg)));
    }
    let mut validation = Validation::new(header.alg);
    // Time is judged per request by the decision, never at load.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();

    if let Some(x5c) = &header.x5c {
        // A certificate-bound record: the chain, not a kid, says who signed.
        let (key, signer) = x5c_key(x5c, header.alg, approvers)?;
        return Ok((
            claims_from(check_signature(jws, &key, &validation)?)?,
            signer,
        ));
    }
    let mut last_err = ApprovalError::UnknownKey(header.kid.clone());
    for key in approvers.candidates(header.kid.as_deref(), header.alg) {
        match check_signature(jws, &key.key, &validation) {
            Ok(claims) => return Ok((claims_from(claims)?, key.kid.clone().unwrap_or_default())),
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

/// Checks the signature with `key`; returns the claims as JSON.
fn check_signature(
    jws: &str,
    key: &jsonwebtoken::DecodingKey,
    validation: &Validation,
) -> Result<serde_json::Value, ApprovalError> {
    jsonwebtoken::decode::<serde_json::Value>(jws, key, validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => ApprovalError::Signature,
            jsonwebtoken::errors::ErrorKind::Json(_)
            | jsonwebtoken::errors::ErrorKind::Utf8(_)
            | jsonwebtoken::errors::ErrorKind::Base64(_) => ApprovalError::Malformed,
            other => ApprovalError::Payload(format!("{other:?}")),
        })
}

/// Reads the claims of a document whose signature verified.
fn claims_from<T: serde::de::DeserializeOwned>(
    claims: serde_json::Value,
) -> Result<T, ApprovalError> {
    serde_json::from_value(claims).map_err(|e| ApprovalError::Payload(e.to_string()))
}

/// The verification key of an `x5c` record: the leaf's, once the chain validates (now: the
/// record is verified when it is loaded) to the CA of a certificate-bound approver whose
/// identity the leaf carries. Returns the key and the approver's signer ID.
fn x5c_key(
    x5c: &[String],
    alg: Algorithm,
    approvers: &KeySet,
) -> Result<(jsonwebtoken::DecodingKey, String), ApprovalError> {
    use base64::engine::general_purpose::STANDARD;
    if x5c.is_empty() || x5c.len() > crate::x509::MAX_CHAIN {
        return Err(ApprovalError::Certificate(format!(
            "needs 1 to {} certificates",
            crate::x509::MAX_CHAIN
        )));
    }
    let chain = x5c
        .iter()
        .enumerate()
        .map(|(i, c)| {
            // RFC 7515 4.1.6: base64 (not base64url) DER.
            STANDARD
                .decode(c)
                .map(rustls::pki_types::CertificateDer::from)
                .map_err(|_| ApprovalError::Certificate(format!("certificate {i} is not base64")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let now = crate::x509::now();
    let mut refusals = Vec::new();
    for approver in &approvers.certificates {
        let leaf = match approver.verify_chain(&chain, now) {
            Ok(l) => l,
            Err(e) => {
                refusals.push(format!("{}: {e}", approver.identity));
                continue;
            }
        };
        let key = leaf
            .public_key()
            .map_err(|e| ApprovalError::Certificate(e.to_string()))?;
        let want = match alg {
            Algorithm::ES256 => ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")),
            Algorithm::ES384 => ("1.2.840.10045.2.1", Some("1.3.132.0.34")),
            Algorithm::EdDSA => ("1.3.101.112", None),
            other => return Err(ApprovalError::Algorithm(format!("{other:?}"))),
        };
        if (key.algorithm.as_str(), key.curve.as_deref()) != want {
            return Err(ApprovalError::Certificate(format!(
                "the leaf's key ({} {:?}) does not fit alg {alg:?}",
                key.algorithm, key.curve
            )));
        }
        let decoding = match alg {
            Algorithm::EdDSA => jsonwebtoken::DecodingKey::from_ed_der(&key.key),
            _ => jsonwebtoken::DecodingKey::from_ec_der(&key.key),
        };
        return Ok((decoding, certificate_signer_id(&approver.identity)));
    }
    Err(ApprovalError::Certificate(if refusals.is_empty() {
        "no certificate-bound approver is configured".to_string()
    } else {
        format!(
            "no configured approver's CA and identity: {}",
            refusals.join("; ")
        )
    }))
}

/// Reads the unverified claims of a record, only to report which digest and ID a record that
/// failed verification claimed to be about. Never trusted for a decision.
pub fn peek_claims(jws: &str) -> Option<(Option<Digest>, Option<String>)> {
    let v: serde_json::Value = serde_json::from_slice(&peek_payload(jws)?).ok()?;
    let digest = v
        .pointer("/artefact/digest")
        .and_then(|d| d.as_str())
        .and_then(|d| d.parse().ok());
    let jti = v.get("jti").and_then(|j| j.as_str()).map(str::to_string);
    Some((digest, jti))
}

/// Reads a record's claims unverified, for a report about a record about to be checked
/// (`provgate promote`'s audit record names its model and version). Never trusted for a
/// decision.
pub fn peek_record_claims(jws: &str) -> Option<ApprovalClaims> {
    serde_json::from_slice(&peek_payload(jws)?).ok()
}

/// The decoded payload of a compact or co-signed JWS, unverified.
fn peek_payload(jws: &str) -> Option<Vec<u8>> {
    let jws = jws.trim();
    let general;
    let payload = if jws.starts_with('{') {
        general = serde_json::from_str::<GeneralJws>(jws).ok()?;
        general.payload.as_str()
    } else {
        jws.split('.').nth(1)?
    };
    URL_SAFE_NO_PAD.decode(payload).ok()
}

fn typ_matches(t: &str, want: &str) -> bool {
    // RFC 7515 4.1.9: compare case-insensitively; the "application/" prefix may be present.
    let t = t.strip_prefix("application/").unwrap_or(t);
    t.eq_ignore_ascii_case(want)
}

/// Parses the protected header, refusing what this verifier does not implement. `x5c` is
/// accepted only when certificate-bound approvers are configured (`x5c_ok`).
fn read_header(jws: &str, x5c_ok: bool) -> Result<Header, ApprovalError> {
    let mut parts = jws.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ApprovalError::Malformed);
    };
    let raw = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| ApprovalError::Malformed)?;
    let value: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|_| ApprovalError::Malformed)?;
    if let Some(alg) = value.get("alg").and_then(|a| a.as_str()) {
        if alg.eq_ignore_ascii_case("none") || alg.starts_with("HS") {
            return Err(ApprovalError::Algorithm(alg.to_string()));
        }
    }
    for refused in ["crit", "jku", "jwk", "x5u", "x5c"] {
        if value.get(refused).is_some() && !(x5c_ok && refused == "x5c") {
            return Err(ApprovalError::Header(format!("{refused} is not accepted")));
        }
    }
    serde_json::from_value(value).map_err(|e| ApprovalError::Header(e.to_string()))
}

fn check_shape(c: &ApprovalClaims) -> Result<(), ApprovalError> {
    let empty = |s: &str| s.trim().is_empty();
    if empty(&c.iss) || empty(&c.sub) || empty(&c.jti) || empty(&c.version_id) || empty(&c.tier) {
        return Err(ApprovalError::Payload(
            "iss, sub, jti, version_id and tier must be non-empty".to_string(),
        ));
    }
    for p in &c.callers {
        if let CallerPattern::Qualified { iss, sub } = p {
            if empty(iss) || empty(sub) {
                return Err(ApprovalError::Payload(
                    "a qualified caller needs a non-empty iss and sub".to_string(),
                ));
            }
        }
    }
    if let Some(d) = &c.artefact.ollama_digest {
        let hex = d.strip_prefix("sha256:").unwrap_or(d);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApprovalError::Payload(
                "artefact.ollama_digest must be 64 hex digits (optionally sha256:-prefixed)"
                    .to_string(),
            ));
        }
    }
    if c.exp <= c.nbf.unwrap_or(c.iat) {
        return Err(ApprovalError::Payload("exp must be after nbf".to_string()));
    }
    Ok(())
}

/// Signs a record with an approver key.
pub fn sign(
    claims: &ApprovalClaims,
    key: &SigningKey,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(key.alg);
    header.typ = Some(RECORD_TYP.to_string());
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.key)
}

/// Signs a record with a key and its certificate chain (DER, leaf first): the header carries
/// the chain as `x5c` (and the key's `kid`, which a verifier of an `x5c` record ignores), so
/// a verifier with a certificate-bound approver checks the chain instead of a pinned key.
pub fn sign_with_chain(
    claims: &ApprovalClaims,
    key: &SigningKey,
    chain: &[Vec<u8>],
) -> Result<String, ApprovalError> {
    use base64::engine::general_purpose::STANDARD;
    use jsonwebtoken::jwk::AlgorithmParameters;
    use x509_parser::prelude::FromDer;
    // The leaf must certify this key, or the record could never verify.
    let leaf = chain
        .first()
        .ok_or_else(|| ApprovalError::Signing("the certificate chain is empty".into()))?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf)
        .map_err(|e| ApprovalError::Signing(format!("the leaf certificate: {e}")))?;
    let certified = cert.public_key().subject_public_key.data.to_vec();
    let ours = match &key.public_jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => {
            let mut point = vec![0x04];
            point.extend(URL_SAFE_NO_PAD.decode(&p.x).unwrap_or_default());
            point.extend(URL_SAFE_NO_PAD.decode(&p.y).unwrap_or_default());
            point
        }
        AlgorithmParameters::OctetKeyPair(p) => URL_SAFE_NO_PAD.decode(&p.x).unwrap_or_default(),
        _ => Vec::new(),
    };
    if certified != ours {
        return Err(ApprovalError::Signing(
            "the leaf certificate is not for this key".into(),
        ));
    }
    let mut header = Header::new(key.alg);
    header.typ = Some(RECORD_TYP.to_string());
    header.kid = Some(key.kid.clone());
    header.x5c = Some(chain.iter().map(|c| STANDARD.encode(c)).collect());
    jsonwebtoken::encode(&header, claims, &key.key)
        .map_err(|e| ApprovalError::Signing(e.to_string()))
}

/// Does `identity` match one of `patterns` (exact, or a prefix ending in `*`)?
pub fn identity_matches(patterns: &[String], identity: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p, identity))
}

/// Does `identity` match `pattern` (exact, or a prefix ending in `*`)?
#[inline]
pub fn pattern_matches(pattern: &str, identity: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => identity.starts_with(prefix),
        None => pattern == identity,
    }
}

/// One entry of a record's `callers`.
///
/// In JSON, either a string (a *bare* pattern) or an object `{"iss": ISSUER, "sub": PATTERN}`
/// (an *issuer-qualified* pattern). A qualified pattern matches a caller whose token's `iss`
/// is exactly `ISSUER` (certificate callers have `iss` `x509-svid`) and whose `sub` matches
/// `PATTERN`. A bare pattern matches only callers of an issuer configured without
/// `qualified = true` (`[[callers.issuers]]`), so a token from an issuer whose names could
/// collide with another's never matches a pattern not written for it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged, deny_unknown_fields)]
pub enum CallerPattern {
    Bare(String),
    Qualified { iss: String, sub: String },
}

impl CallerPattern {
    /// Does this pattern admit `sub` vouched for by `iss`? `bare_ok`: whether bare patterns
    /// apply to `iss` (the policy's decision, made once per request).
    #[inline]
    pub fn matches(&self, iss: &str, sub: &str, bare_ok: bool) -> bool {
        match self {
            CallerPattern::Bare(p) => bare_ok && pattern_matches(p, sub),
            CallerPattern::Qualified { iss: want, sub: p } => {
                want == iss && pattern_matches(p, sub)
            }
        }
    }

    /// Parses the CLI form: `ISSUER#PATTERN` is qualified (split at the first `#`; `#`
    /// cannot occur in an OIDC issuer URL), anything else is a bare pattern.
    pub fn parse_cli(s: &str, qualified: bool) -> Option<CallerPattern> {
        if !qualified {
            return Some(CallerPattern::Bare(s.to_string()));
        }
        let (iss, sub) = s.split_once('#')?;
        (!iss.is_empty() && !sub.is_empty()).then(|| CallerPattern::Qualified {
            iss: iss.to_string(),
            sub: sub.to_string(),
        })
    }
}

impl From<&str> for CallerPattern {
    fn from(s: &str) -> Self {
        CallerPattern::Bare(s.to_string())
    }
}

impl From<String> for CallerPattern {
    fn from(s: String) -> Self {
        CallerPattern::Bare(s)
    }
}

#[cfg(test)]
mod tests;
