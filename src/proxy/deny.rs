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
    let challenge = match reason {
        DenyReason::TokenMissing => Some("Bearer realm=\"provgate\""),
        DenyReason::TokenInvalid => Some("Bearer realm=\"provgate\", error=\"invalid_token\""),
        _ => None,
    };
    // A body still unread (a denial decided from the headers alone) may not drain in time:
    // say `Connection: close` up front, so the client never sends its next request on a
    // connection provgate is about to close.
    let unread = !session.is_body_done();
    if unread {
        session.set_keepalive(None);
    }
    write_json(
        session,
        reason.status(),
        reason.as_str(),
        request_id,
        challenge,
    )
    .await?;
    if unread {
        drain_unread_body(session).await;
    }
    Ok(())
}

/// Why a request that was not denied still got no answer from the model server: the other
/// closed set of error words a client can see, answered in the same JSON shape as a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The model server could not be reached or broke the exchange (502).
    UpstreamUnavailable,
    /// The model server did not connect, answer or read in time (504).
    UpstreamTimeout,
    /// The request could not be proxied as sent (400).
    RequestInvalid,
    /// provgate itself failed (500).
    Internal,
}

impl Failure {
    /// The failure for a pingora error, or `None` when the client is gone (nothing to answer).
    pub fn of(e: &pingora::Error) -> Option<Failure> {
        use pingora::{ErrorSource, ErrorType};
        Some(match (e.etype(), e.esource()) {
            (
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => return None,
            (
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
                ErrorSource::Upstream,
            ) => Failure::UpstreamTimeout,
            (ErrorType::HTTPStatus(code), _) if (400..500).contains(code) => {
                Failure::RequestInvalid
            }
            (ErrorType::HTTPStatus(_), _) => Failure::Internal,
            (_, ErrorSource::Upstream) => Failure::UpstreamUnavailable,
            (_, ErrorSource::Downstream) => Failure::RequestInvalid,
            (_, ErrorSource::Internal | ErrorSource::Unset) => Failure::Internal,
        })
    }

    pub const fn status(self) -> u16 {
        match self {
            Failure::UpstreamUnavailable => 502,
            Failure::UpstreamTimeout => 504,
            Failure::RequestInvalid => 400,
            Failure::Internal => 500,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Failure::UpstreamUnavailable => "upstream_unavailable",
            Failure::UpstreamTimeout => "upstream_timeout",
            Failure::RequestInvalid => "request_invalid",
            Failure::Internal => "internal_error",
        }
    }
}

/// Answers a request that failed after it was allowed, in the denials' JSON shape. The
/// connection is not kept: what state it is in after a failed exchange is not known.
pub async fn write_failure(
    session: &mut Session,
    failure: Failure,
    request_id: &HeaderValue,
) -> pingora::Result<()> {
    session.set_keepalive(None);
    write_json(
        session,
        failure.status(),
        failure.as_str(),
        request_id,
        None,
    )
    .await
}

/// Status, `{"error": WORD, "request_id": ID}`, `Cache-Control: no-store`, the request ID,
/// and a `WWW-Authenticate` challenge when given. No `Server` header.
async fn write_json(
    session: &mut Session,
    status: u16,
    word: &'static str,
    request_id: &HeaderValue,
    challenge: Option<&'static str>,
) -> pingora::Result<()> {
    // The request ID is 32 hex characters: nothing to escape.
    let id = std::str::from_utf8(request_id.as_bytes()).unwrap_or_default();
    let body = Bytes::from(format!("{{\"error\":\"{word}\",\"request_id\":\"{id}\"}}"));
    let mut resp = ResponseHeader::build_no_case(status, Some(5))?;
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
        if let Some(challenge) = challenge {
            h.try_insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            )?;
        }
        Ok(())
    })?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
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
