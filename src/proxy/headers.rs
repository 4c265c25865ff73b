//! Header edits on the request path: the `x-provgate-*` names, [`edit_request`] and
//! [`edit_response`] (which work on `http::HeaderMap` directly, without pingora's case map),
//! [`strip_provgate`], and the request IDs those headers carry.
//!
//! Owns no decision: it is told what to add or remove. It must not read the gate, the
//! policy or the body.

use std::sync::atomic::{AtomicU64, Ordering};

use http::header::MaxSizeReached;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{ErrorType::InvalidHTTPHeader, OrErr};

pub const HEADER_VERSION_ID: HeaderName = HeaderName::from_static("x-provgate-version-id");
pub const HEADER_REQUEST_ID: HeaderName = HeaderName::from_static("x-provgate-request-id");
pub const HEADER_CALLER: HeaderName = HeaderName::from_static("x-provgate-caller");
/// Which issuer vouched for `x-provgate-caller`: the token's `iss`, or `x509-svid` for a
/// client certificate. A caller name means something only together with it.
pub const HEADER_CALLER_ISSUER: HeaderName = HeaderName::from_static("x-provgate-caller-issuer");
const HEADER_PREFIX: &str = "x-provgate-";

/// The headers provgate adds to a request or response that passes, at most four.
pub const ADDED_HEADERS: usize = 4;

/// Edits a request's headers through `http::HeaderMap` itself, after dropping pingora's
/// second map of each name's original case. With that map, every insert parses and
/// allocates the name and grows both maps: provgate's five headers cost 1.04 µs per
/// request with it and 0.40 µs without (`cargo bench --bench decision -- headers/`), about
/// 5% of the sidecar's throughput. Without it, pingora writes standard names title-cased
/// (`Content-Type`) and others lowercase, as Envoy does by default and HTTP/2 always does;
/// header names are case-insensitive (RFC 9110, section 5.1). The request target is kept
/// byte for byte.
pub fn edit_request(
    req: &mut RequestHeader,
    edit: impl FnOnce(&mut http::HeaderMap) -> Result<(), MaxSizeReached>,
) -> pingora::Result<()> {
    // A placeholder that allocates nothing (empty header map, static URI).
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let old = std::mem::replace(req, placeholder);
    let from_uri = old.raw_path_is_utf8()
        && old.uri.path_and_query().map(|p| p.as_str().as_bytes()) == Some(old.raw_path());
    let raw = (!from_uri).then(|| old.raw_path().to_vec());
    let end_stream = old.send_end_stream();
    let mut parts = http::request::Parts::from(old);
    let edited = edit(&mut parts.headers);
    *req = RequestHeader::from(parts);
    if let Some(raw) = raw {
        req.set_raw_path(&raw)?;
    }
    if let Some(end_stream) = end_stream {
        req.set_send_end_stream(end_stream);
    }
    edited.or_err(InvalidHTTPHeader, "too many request headers")
}

/// As [`edit_request`], for a response; a reason phrase other than the status's own is kept.
pub fn edit_response(
    resp: &mut ResponseHeader,
    edit: impl FnOnce(&mut http::HeaderMap) -> Result<(), MaxSizeReached>,
) -> pingora::Result<()> {
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let old = std::mem::replace(resp, placeholder);
    let reason = old
        .get_reason_phrase()
        .filter(|r| Some(*r) != old.status.canonical_reason())
        .map(str::to_string);
    let mut parts = http::response::Parts::from(old);
    let edited = edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        resp.set_reason_phrase(reason.as_deref())?;
    }
    edited.or_err(InvalidHTTPHeader, "too many response headers")
}

/// Is this header name provgate's, read as servers in the CGI/WSGI tradition read it:
/// `_` as `-`, case folded (`http` keeps names lowercase already)?
#[inline]
pub fn is_provgate(name: &str) -> bool {
    let b = name.as_bytes();
    // Most names fail on their first byte: no loop for them.
    b.len() >= HEADER_PREFIX.len()
        && b.first().is_some_and(|&c| (c | 0x20) == b'x')
        && b.iter()
            .zip(HEADER_PREFIX.as_bytes())
            .all(|(&c, &p)| c.to_ascii_lowercase() == p || (c == b'_' && p == b'-'))
}

/// Removes every `x-provgate-*` header, however spelt (`X-Provgate_Caller`,
/// `x_provgate_version_id`): a client must not speak for provgate, nor may the model
/// server. Allocates nothing when there are none: the usual case.
#[inline]
pub fn strip_provgate(headers: &mut http::HeaderMap) {
    while let Some(name) = headers.keys().find(|k| is_provgate(k.as_str())).cloned() {
        headers.remove(&name);
    }
}

/// Request IDs: a random per-process prefix and a counter, 32 hex characters.
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut seed = [0u8; 8];
        // Without OS randomness, fall back to the clock: IDs stay unique per process.
        if getrandom::fill(&mut seed).is_err() {
            seed = (crate::base::unix_now() ^ u64::from(std::process::id())).to_le_bytes();
        }
        RequestIds {
            prefix: u64::from_le_bytes(seed),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    /// The next ID as a header value (32 lowercase hex characters), with no formatting
    /// machinery: two integers written as hex into a stack buffer.
    #[inline]
    pub fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        hex::encode_to_slice(self.prefix.to_be_bytes(), &mut buf[..16])
            .and_then(|_| hex::encode_to_slice(n.to_be_bytes(), &mut buf[16..]))
            // Both halves are exactly 16 hex digits for 8 bytes; the sizes are fixed.
            .unwrap_or_default();
        // Hex digits are valid header bytes.
        HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
    }
}

#[cfg(test)]
mod tests;
