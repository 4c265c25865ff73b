//! Denials: the one place a [`DenyReason`] becomes an HTTP status and a JSON body
//! (`{"error": "<reason>", "request_id": "<id>"}`), with `WWW-Authenticate` for the caller's
//! credentials.
//!
//! The reasons themselves, and which one applies, are `policy`'s; this only answers them.

use bytes::Bytes;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::policy::DenyReason;
use crate::proxy::headers::{edit_response, HEADER_REQUEST_ID};

impl DenyReason {
    /// The HTTP status of a denial: 401 for the caller's credentials, 400/413 for a request
    /// that does not say (readably) which model it is for, 503 for what the sidecar cannot
    /// yet (or can no longer) vouch for, 403 for a policy refusal.
    #[inline]
    pub const fn status(self) -> u16 {
        match self {
            DenyReason::TokenMissing | DenyReason::TokenInvalid => 401,
            DenyReason::ModelRequired | DenyReason::RequestInvalid => 400,
            DenyReason::RequestTooLarge => 413,
            DenyReason::ArtefactUnverified | DenyReason::TrustDataUnavailable => 503,
            _ => 403,
        }
    }
}

/// Answers the request with the denial for `reason`: status, JSON body, `Cache-Control:
/// no-store`, the request ID, and `WWW-Authenticate` on a 401.
pub async fn write_denial(
    session: &mut Session,
    reason: DenyReason,
    request_id: &HeaderValue,
) -> pingora::Result<()> {
    // The request ID is 32 hex characters: nothing to escape.
    let id = std::str::from_utf8(request_id.as_bytes()).unwrap_or_default();
    let body = Bytes::from(format!(
        "{{\"error\":\"{}\",\"request_id\":\"{id}\"}}",
        reason.as_str()
    ));
    let mut resp = ResponseHeader::build_no_case(reason.status(), Some(5))?;
    edit_response(&mut resp, |h| {
        h.try_insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )?;
        h.try_insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()))?;
        h.try_insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        )?;
        h.try_insert(HEADER_REQUEST_ID, request_id.clone())?;
        if reason.status() == 401 {
            let err = if reason == DenyReason::TokenMissing {
                "Bearer realm=\"provgate\""
            } else {
                "Bearer realm=\"provgate\", error=\"invalid_token\""
            };
            h.try_insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static(err),
            )?;
        }
        Ok(())
    })?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    drain_unread_body(session).await;
    Ok(())
}

/// The most of an unread request body read and dropped after a denial, and for how long.
pub const DRAIN_LIMIT: usize = 1 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and drops what is left of a denied request's body, up to [`DRAIN_LIMIT`] bytes and
/// [`DRAIN_TIME`]: a client still sending a body the denial was written before (a 413, say)
/// then reads the answer instead of a TCP reset, which is what closing a socket with unread
/// data sends (nginx's "lingering close"). A longer or slower body is left, and pingora closes
/// the connection.
async fn drain_unread_body(session: &mut Session) {
    if session.is_body_done() {
        return;
    }
    let drained = tokio::time::timeout(DRAIN_TIME, async {
        let mut read = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            read += chunk.len();
            if read > DRAIN_LIMIT {
                break;
            }
        }
    });
    let _ = drained.await;
}

#[cfg(test)]
mod tests;
