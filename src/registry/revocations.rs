//! The signed revocation list an HTTP registry with `layout = "path"` publishes beside the
//! records (`GET {url}/revocations`), so that a host that can only serve files (a static web
//! server, an object store behind a CDN) can still revoke: a compact JWS with the header
//! `{"typ":"revocations+jwt","alg":ES256|ES384|EdDSA,"kid":...}`, signed by any key in
//! `[trust] approver_keys` (revocation only takes approval away, so any approver may
//! revoke), and the payload `{"iss": "...", "iat": <unix>, "revoked": ["<record jti>", ...]}`.
//!
//! This file verifies and signs lists; which list is in force (no rollback to an older
//! `iat`) is the refresher's business ([`super::remote`]). It imports nothing from the
//! refresher and touches no store.

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::keys::{KeySet, SigningKey};

/// The `typ` of a revocation list.
pub const TYP: &str = "revocations+jwt";
/// The algorithms a list may be signed with (those of approval records).
pub const ALGORITHMS: [Algorithm; 3] = [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA];
/// Record IDs read from one list at most.
pub const MAX_IDS: usize = 100_000;

/// A list's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationClaims {
    /// Who published it (for the log).
    pub iss: String,
    /// When it was issued (Unix seconds): a list older than the one held is refused.
    pub iat: u64,
    /// The revoked records' `jti`s.
    pub revoked: Vec<String>,
}

/// A verified list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationList {
    pub iss: String,
    pub iat: u64,
    /// The key that signed it.
    pub kid: String,
    pub revoked: HashSet<String>,
}

/// Why a list was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RevocationError {
    #[error("not a compact JWS")]
    Malformed,
    #[error("the header's typ is not {TYP:?}")]
    Typ,
    #[error("algorithm {0} is not accepted for a revocation list")]
    Algorithm(String),
    #[error("no approver key {0:?} to verify the list")]
    UnknownKey(Option<String>),
    #[error("bad signature")]
    Signature,
    #[error("payload: {0}")]
    Payload(String),
    #[error("more than {MAX_IDS} record IDs")]
    TooMany,
}

/// Verifies a list against the approver keys.
pub fn verify(text: &str, approvers: &KeySet) -> Result<RevocationList, RevocationError> {
    let jws = text.trim();
    let header = jsonwebtoken::decode_header(jws).map_err(|_| RevocationError::Malformed)?;
    let typ_ok = header.typ.as_deref().is_some_and(|t| {
        t.strip_prefix("application/")
            .unwrap_or(t)
            .eq_ignore_ascii_case(TYP)
    });
    if !typ_ok {
        return Err(RevocationError::Typ);
    }
    if !ALGORITHMS.contains(&header.alg) {
        return Err(RevocationError::Algorithm(format!("{:?}", header.alg)));
    }
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let mut last = RevocationError::UnknownKey(header.kid.clone());
    for key in approvers.candidates(header.kid.as_deref(), header.alg) {
        match jsonwebtoken::decode::<RevocationClaims>(jws, &key.key, &validation) {
            Ok(data) => {
                let c = data.claims;
                if c.revoked.len() > MAX_IDS {
                    return Err(RevocationError::TooMany);
                }
                return Ok(RevocationList {
                    iss: c.iss,
                    iat: c.iat,
                    kid: key.kid.clone().unwrap_or_default(),
                    revoked: c.revoked.into_iter().collect(),
                });
            }
            Err(e) => {
                last = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => RevocationError::Signature,
                    jsonwebtoken::errors::ErrorKind::Json(e) => {
                        RevocationError::Payload(e.to_string())
                    }
                    jsonwebtoken::errors::ErrorKind::Utf8(_)
                    | jsonwebtoken::errors::ErrorKind::Base64(_) => RevocationError::Malformed,
                    other => RevocationError::Payload(format!("{other:?}")),
                }
            }
        }
    }
    Err(last)
}

impl RevocationClaims {
    /// A list by `iss` revoking `ids` and, when given, everything `previous` revoked; issued
    /// at `now`, or one second after `previous` when that is not earlier, so the new list
    /// always supersedes it. IDs come out sorted, without duplicates.
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

/// Signs a list with an approver key.
pub fn sign(
    claims: &RevocationClaims,
    key: &SigningKey,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(key.alg);
    header.typ = Some(TYP.to_string());
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.key)
}

#[cfg(test)]
mod tests;
