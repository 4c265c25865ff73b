//! The signed revocation list approvers publish beside the records (`revocations.jws`,
//! served at `/revocations`): a compact JWS with header `typ` [`TYP`], signed by an approver
//! key, payload `{"iss", "iat", "revoked": [record jti, ...]}`. This module signs one (for
//! `provgate revoke`) and reads an existing one's payload unverified, to extend it; verifying
//! a list is the sidecar's business, not the server's.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::keys::SigningKey;

/// The JWS `typ` of a revocation list.
pub const TYP: &str = "revocations+jwt";

/// A revocation list's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationClaims {
    pub iss: String,
    /// When it was issued (unix seconds); a list older than the one a sidecar holds is
    /// ignored there (no rollback).
    pub iat: u64,
    /// Revoked record IDs (`jti`), sorted, without duplicates.
    pub revoked: Vec<String>,
}

impl RevocationClaims {
    /// A list by `iss` revoking `ids` and, when given, everything `previous` revoked; issued
    /// at `now`, or one second after `previous` when that is not earlier, so the new list
    /// always supersedes it.
    pub fn new(
        iss: String,
        ids: impl IntoIterator<Item = String>,
        previous: Option<&RevocationClaims>,
        now: u64,
    ) -> RevocationClaims {
        let mut revoked: Vec<String> = ids
            .into_iter()
            .chain(previous.into_iter().flat_map(|p| p.revoked.iter().cloned()))
            .collect();
        revoked.sort();
        revoked.dedup();
        let iat = match previous {
            Some(p) if p.iat >= now => p.iat + 1,
            _ => now,
        };
        RevocationClaims { iss, iat, revoked }
    }
}

/// Signs `claims` with `key` (header `typ`, `alg` and `kid` set).
pub fn sign(
    claims: &RevocationClaims,
    key: &SigningKey,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = jsonwebtoken::Header::new(key.alg);
    header.typ = Some(TYP.to_string());
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.key)
}

/// Why an existing list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    #[error("not a compact JWS")]
    Shape,
    #[error("payload is not base64url: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("payload is not a revocation list: {0}")]
    Json(#[from] serde_json::Error),
}

/// The payload of a compact JWS revocation list, not verified (to extend one's own list).
pub fn peek(jws: &str) -> Result<RevocationClaims, PeekError> {
    let mut parts = jws.trim().split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PeekError::Shape);
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}
