//! Checkpoints: the chain's head and count at a moment, as a compact JWS signed with the
//! sidecar's own key (`typ` `provgate-audit-checkpoint+jwt`, the same signing as approval
//! records), and its check against the sidecar's public JWKS.
//!
//! Owns the checkpoint's claims and their signature; it does not decide when checkpoints are
//! written (the writer) or what a mismatch means (the verifier).

use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::keys::{KeySet, SigningKey};

/// The JWS `typ` of a checkpoint.
pub const CHECKPOINT_TYP: &str = "provgate-audit-checkpoint+jwt";

/// What a checkpoint states: after the line numbered `count` (whose hash is `head`), in
/// segment `segment`, at `iat`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckpointClaims {
    pub head: String,
    pub count: u64,
    pub segment: u64,
    pub iat: u64,
}

/// Errors checking a checkpoint's signature.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("the checkpoint is not a readable JWS")]
    Malformed,
    #[error("the checkpoint's typ is not {CHECKPOINT_TYP}")]
    Typ,
    #[error("no key of the given set signed this checkpoint")]
    Signature,
    #[error("the checkpoint is unsigned")]
    Unsigned,
}

/// Signs a checkpoint (once per interval: never on the request path).
pub fn sign(
    claims: &CheckpointClaims,
    key: &SigningKey,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(key.alg);
    header.typ = Some(CHECKPOINT_TYP.to_string());
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.key)
}

/// Checks a checkpoint JWS against the sidecar's keys; returns what it states.
pub fn verify(jws: &str, keys: &KeySet) -> Result<CheckpointClaims, CheckpointError> {
    let header = jsonwebtoken::decode_header(jws).map_err(|_| CheckpointError::Malformed)?;
    if header.typ.as_deref() != Some(CHECKPOINT_TYP) {
        return Err(CheckpointError::Typ);
    }
    if !matches!(
        header.alg,
        Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA
    ) {
        return Err(CheckpointError::Signature);
    }
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    for key in keys.candidates(header.kid.as_deref(), header.alg) {
        if let Ok(data) = jsonwebtoken::decode::<CheckpointClaims>(jws, &key.key, &validation) {
            return Ok(data.claims);
        }
    }
    Err(CheckpointError::Signature)
}
