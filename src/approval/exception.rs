//! Exceptions: separately signed, time-boxed waivers of one named requirement of an approval
//! record (a JWS compact, `typ: exception+jwt`, signed by an approver key like a record).
//!
//! An exception names the model, version ID and artefact digest it applies to, what it waives
//! (one evidence kind, or one quorum role), why (`reason`), the ticket that tracks it
//! (`ticket`, a URI), who issued it (`iss`), its ID (`jti`, what `revoked.txt` names) and its
//! validity (`iat`, optional `nbf`, `exp`). This module verifies the signature and shape once,
//! when the registry loads it, and signs exceptions for `provgate except`. Like records, it
//! never looks at time, at tiers or at approvers' scopes: whether an exception applies to a
//! request is the decision's business.

use serde::{Deserialize, Serialize};

use super::{decode_compact, ApprovalError, ArtefactRef, RECORD_ALGORITHMS};
use crate::keys::{KeySet, SigningKey};

/// The JWS `typ` of an exception.
pub const EXCEPTION_TYP: &str = "exception+jwt";

/// What an exception waives: exactly one requirement. In JSON `{"evidence": "KIND"}` or
/// `{"role": "ROLE"}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Waiver {
    /// A required evidence kind the record lacks (or whose verdict is not `pass`).
    Evidence(String),
    /// A quorum role no approver who signed the record holds.
    Role(String),
}

impl Waiver {
    /// `evidence:KIND` or `role:ROLE`, for logs and the CLI.
    pub fn describe(&self) -> String {
        match self {
            Waiver::Evidence(k) => format!("evidence:{k}"),
            Waiver::Role(r) => format!("role:{r}"),
        }
    }
}

/// The payload of an exception.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExceptionClaims {
    /// The approver identity that issued it (informational: it counts through its key).
    pub iss: String,
    /// The model name.
    pub sub: String,
    /// The exception ID (what the audit log shows and a revocation names).
    pub jti: String,
    pub iat: u64,
    /// Not valid before; defaults to `iat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub exp: u64,
    /// The version ID of the record it applies to.
    pub version_id: String,
    /// The artefact digest it applies to (only `digest` is read).
    pub artefact: ArtefactRef,
    pub waives: Waiver,
    /// Why the requirement is waived.
    pub reason: String,
    /// The ticket tracking it: a URI (`https://...`, `urn:...`).
    pub ticket: String,
}

/// An exception whose signature and shape have been verified.
#[derive(Debug)]
pub struct ExceptionRecord {
    pub claims: ExceptionClaims,
    /// The `kid` of the approver key that signed it.
    pub kid: String,
}

impl ExceptionRecord {
    /// The first second the exception is in force.
    pub fn not_before(&self) -> u64 {
        self.claims.nbf.unwrap_or(self.claims.iat)
    }

    /// How long it is valid (`exp - nbf`), in seconds.
    pub fn lifetime(&self) -> u64 {
        self.claims.exp.saturating_sub(self.not_before())
    }
}

/// Verifies an exception (compact JWS only) against the approver keys.
pub fn verify(text: &str, approvers: &KeySet) -> Result<ExceptionRecord, ApprovalError> {
    let (claims, kid) = decode_compact::<ExceptionClaims>(text.trim(), approvers, EXCEPTION_TYP)?;
    check_shape(&claims)?;
    Ok(ExceptionRecord { claims, kid })
}

/// Signs an exception with an approver key.
pub fn sign(claims: &ExceptionClaims, key: &SigningKey) -> Result<String, ApprovalError> {
    check_shape(claims)?;
    if !RECORD_ALGORITHMS.contains(&key.alg) {
        return Err(ApprovalError::Algorithm(format!("{:?}", key.alg)));
    }
    let mut header = jsonwebtoken::Header::new(key.alg);
    header.typ = Some(EXCEPTION_TYP.to_string());
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.key)
        .map_err(|e| ApprovalError::Signing(e.to_string()))
}

fn check_shape(c: &ExceptionClaims) -> Result<(), ApprovalError> {
    let empty = |s: &str| s.trim().is_empty();
    if empty(&c.iss)
        || empty(&c.sub)
        || empty(&c.jti)
        || empty(&c.version_id)
        || empty(&c.reason)
        || empty(&c.ticket)
    {
        return Err(ApprovalError::Payload(
            "iss, sub, jti, version_id, reason and ticket must be non-empty".to_string(),
        ));
    }
    let waived = match &c.waives {
        Waiver::Evidence(k) | Waiver::Role(k) => k,
    };
    if empty(waived) {
        return Err(ApprovalError::Payload(
            "waives must name an evidence kind or a role".to_string(),
        ));
    }
    if !is_uri(&c.ticket) {
        return Err(ApprovalError::Payload(
            "ticket must be a URI (scheme:rest, no spaces)".to_string(),
        ));
    }
    if c.exp <= c.nbf.unwrap_or(c.iat) {
        return Err(ApprovalError::Payload("exp must be after nbf".to_string()));
    }
    Ok(())
}

/// RFC 3986 in outline: `scheme ":" rest`, scheme a letter then letters, digits, `+-.`, the
/// rest non-empty and free of whitespace and controls.
fn is_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests;
