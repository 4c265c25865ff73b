//! The reference registry's HTTP side: the accept loop (bounded connections), the route of a
//! request target to an [`index::Key`] (only the contract's exact forms), conditional answers
//! (strong ETags, `If-None-Match`, 304) and the watch: a `Prefer: wait=<n>` request whose
//! `If-None-Match` is the current ETag is held until its answer changes or the wait ends
//! (capped at [`MAX_WAIT`], never longer than asked). The hold is random so watchers do not
//! return together: uniform in the last tenth of the wait in steady state (a mean of 0.95 of
//! it, so the fleet's load stays low), and uniform over the whole wait (from
//! [`MIN_SPREAD_HOLD`]) for a watch on an answer that took effect less than [`FRESH`] ago: the
//! re-watches that follow a change (or a restart of this server) arrive together, and are
//! spread over one whole wait at once instead of returning together every wait.
//!
//! No file is read here and nothing blocks: every answer comes from the current index. An
//! upload (`PUT`, when on) is handed to [`super::upload`], which writes off the runtime.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Semaphore};

use super::index::{Answer, Index, Key};
use super::reqlog::{Form, Line, RequestLog};
use super::upload::Upload;
use super::{HEADER_TIMEOUT, MAX_HEAD, MAX_WAIT};
use crate::digest::Digest;

/// The media type of records and of the revocation list.
const JOSE: &str = "application/jose";

/// What every connection shares.
pub struct Shared {
    index: watch::Receiver<Arc<Index>>,
    watchers: Arc<Semaphore>,
    log: Option<RequestLog>,
    /// The upload form, when `--upload-token-file` turned it on.
    upload: Option<Upload>,
}

impl Shared {
    pub fn new(
        index: watch::Receiver<Arc<Index>>,
        max_watchers: usize,
        log: Option<RequestLog>,
    ) -> Shared {
        Shared {
            index,
            watchers: Arc::new(Semaphore::new(max_watchers)),
            log,
            upload: None,
        }
    }

    /// The same, accepting uploads (`PUT /approvals/sha256/<hex>`).
    pub fn with_upload(mut self, upload: Option<Upload>) -> Shared {
        self.upload = upload;
        self
    }
}

/// Accepts connections until `shutdown` resolves, at most `max_connections` at once.
pub async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    max_connections: usize,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(max_connections));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (stream, _peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of descriptors, most likely: let some close.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!("connection refused: max_connections reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD);
            if let Err(error) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

// === routing ===

/// The request target's key, when it is one of the contract's exact forms:
/// `/approvals?digest=sha256:<hex>` (the colon possibly `%3A`), `/approvals/sha256/<hex>`,
/// `/revocations`; hex is 64 lowercase digits. Anything else is `None` (404).
pub fn route(path: &str, query: Option<&str>) -> Option<(Key, Form)> {
    match (path, query) {
        ("/revocations", None) => Some((Key::Revocations, Form::Revocations)),
        ("/approvals", Some(q)) => {
            let v = q.strip_prefix("digest=")?;
            let hex = v
                .strip_prefix("sha256:")
                .or_else(|| v.strip_prefix("sha256%3A"))
                .or_else(|| v.strip_prefix("sha256%3a"))?;
            Some((Key::Digest(lower_hex(hex)?), Form::Query))
        }
        (p, None) => {
            let hex = p.strip_prefix("/approvals/sha256/")?;
            Some((Key::Digest(lower_hex(hex)?), Form::Path))
        }
        _ => None,
    }
}

fn lower_hex(hex: &str) -> Option<Digest> {
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    format!("sha256:{hex}").parse().ok()
}

/// The wait a request prefers (RFC 7240 `Prefer: wait=<seconds>`, in any `Prefer` header,
/// among other preferences), when it names one.
pub fn preferred_wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pref| {
            let first = pref.split(';').next()?.trim();
            let (name, value) = first.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            value.trim().trim_matches('"').parse::<u64>().ok()
        })
        .next()
}

/// Does `If-None-Match` name `etag` (weak comparison, as RFC 9110 says for this header)?
/// `*` matches any answer that exists.
pub fn none_match(if_none_match: &str, answer: &Answer) -> bool {
    if_none_match.split(',').any(|tag| {
        let tag = tag.trim();
        if tag == "*" {
            return answer.status != 404;
        }
        tag.strip_prefix("W/").unwrap_or(tag) == answer.etag
    })
}

/// A watch on an answer younger than this is a re-watch after a change (or after this
/// server started): its hold is spread over the whole wait.
pub const FRESH: Duration = Duration::from_secs(5);
/// The shortest spread hold: a client may count a watch that returns within a second as a
/// server that does not hold.
pub const MIN_SPREAD_HOLD: Duration = Duration::from_secs(2);
/// The steady hold is uniform in the last this fraction of the wait.
pub const STEADY_JITTER: f64 = 0.1;

/// The hold for a watch that asked for `wait` seconds, `jitter` a uniform draw in 0..1:
/// capped at [`MAX_WAIT`] and never above the wait asked; for a `fresh` answer uniform in
/// `[MIN_SPREAD_HOLD, wait]`, otherwise in `[(1 - STEADY_JITTER) * wait, wait]`.
pub fn hold_for(wait: u64, jitter: f64, fresh: bool) -> Duration {
    let base = Duration::from_secs(wait).min(MAX_WAIT);
    let jitter = jitter.clamp(0.0, 1.0);
    if fresh {
        let low = MIN_SPREAD_HOLD.min(base);
        low + (base - low).mul_f64(jitter)
    } else {
        base - base.mul_f64(STEADY_JITTER * jitter)
    }
}

fn random_fraction() -> f64 {
    // No randomness available is no jitter, not an error.
    f64::from(getrandom::u32().unwrap_or(0)) / f64::from(u32::MAX)
}

// === answering ===

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let arrival = std::time::SystemTime::now();
    let started = tokio::time::Instant::now();
    let routed = route(req.uri().path(), req.uri().query());
    let form = routed.map_or(Form::Other, |(_, f)| f);
    let (response, watched) = match routed {
        Some((Key::Digest(digest), Form::Path)) if req.method() == Method::PUT => {
            match &shared.upload {
                Some(upload) => (put(upload, &digest, req).await, false),
                None => (not_allowed(false), false),
            }
        }
        _ if req.method() != Method::GET && req.method() != Method::HEAD => {
            (not_allowed(shared.upload.is_some()), false)
        }
        None => (empty(StatusCode::NOT_FOUND), false),
        Some((key, _)) => answer(shared, &key, req.headers()).await,
    };
    if let Some(log) = &shared.log {
        log.write(Line {
            arrival_ms: arrival
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            form,
            status: response.status().as_u16(),
            held_ms: started.elapsed().as_millis() as u64,
            watch: watched,
        });
    }
    tracing::debug!(
        form = form.name(),
        status = response.status().as_u16(),
        held_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// The answer for `key`, held when the request is a watch on the current ETag. Returns the
/// response and whether it was held.
async fn answer(shared: &Shared, key: &Key, headers: &HeaderMap) -> (Response<Full<Bytes>>, bool) {
    let inm = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    let wait = preferred_wait(headers).filter(|w| *w > 0);
    let mut rx = shared.index.clone();
    let current = rx.borrow_and_update().clone();
    let now = current.answer(key);
    let unchanged = inm.is_some_and(|t| none_match(t, now));
    let applied = wait.map(|w| w.min(MAX_WAIT.as_secs()));
    let (Some(n), true) = (applied, unchanged) else {
        return (respond(now, unchanged, applied), false);
    };
    let Ok(_permit) = shared.watchers.clone().try_acquire_owned() else {
        // Full: answer like a server without watch support.
        tracing::debug!("watch refused: max_watchers reached");
        return (respond(now, true, None), false);
    };
    let held = now.etag.clone();
    let fresh = now.since.elapsed() < FRESH;
    let deadline = tokio::time::Instant::now() + hold_for(n, random_fraction(), fresh);
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let index = rx.borrow_and_update().clone();
                let a = index.answer(key);
                if a.etag != held {
                    return (respond(a, false, Some(n)), true);
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    let index = rx.borrow().clone();
    let a = index.answer(key);
    let unchanged = a.etag == held;
    (respond(a, unchanged, Some(n)), true)
}

fn respond(answer: &Answer, not_modified: bool, applied: Option<u64>) -> Response<Full<Bytes>> {
    let (status, body) = if not_modified {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else {
        (
            StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            answer.body.clone(),
        )
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&answer.etag) {
        h.insert(header::ETAG, v);
    }
    if answer.status != 404 && !not_modified {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(JOSE));
    }
    if let Some(n) = applied {
        if let Ok(v) = HeaderValue::from_str(&format!("wait={n}")) {
            h.insert("preference-applied", v);
        }
    }
    r
}

/// 405, naming the methods this server takes (`PUT` only where uploads are on).
fn not_allowed(upload: bool) -> Response<Full<Bytes>> {
    let mut r = empty(StatusCode::METHOD_NOT_ALLOWED);
    let allow = if upload {
        "GET, HEAD, PUT"
    } else {
        "GET, HEAD"
    };
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// An upload: 401 without the bearer token (nothing read or written), else the record
/// stored (201 new, 204 replaced) or refused (413, 422).
async fn put(upload: &Upload, digest: &Digest, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if !upload.authorized(req.headers().get(header::AUTHORIZATION)) {
        tracing::warn!(%digest, "upload refused: missing or wrong bearer token");
        let mut r = empty(StatusCode::UNAUTHORIZED);
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let (status, why) = upload.store(digest, req.into_body()).await;
    tracing::info!(%digest, status = status.as_u16(), outcome = why, "upload");
    let mut r = Response::new(Full::new(Bytes::from_static(why.as_bytes())));
    *r.status_mut() = status;
    r
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}
