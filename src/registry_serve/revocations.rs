//! The signed revocation list approvers publish beside the records (`revocations.jws`,
//! served at `/revocations`): a compact JWS with header `typ` [`TYP`], signed by an approver
//! key, payload `{"iss", "iat", "revoked": [record jti, ...]}`. This module reads an
//! existing list's payload unverified, to extend it (`provgate revoke --list`); verifying a
//! list is the sidecar's business, not the server's.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// The list's format is the sidecar's ([`crate::registry::revocations`]): one definition of
/// its `typ`, payload and signing for the verifier, `provgate revoke` and this server.
pub use crate::registry::revocations::{sign, RevocationClaims, TYP};

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
