//! A plain HTTP registry: the smallest contract a team can implement in front of whatever
//! store it already has, in two forms.
//!
//! ```text
//! layout = "query" (default)            GET {url}/approvals?digest=sha256:<64 hex>
//! layout = "path" (static hosts, CDNs)  GET {url}/approvals/sha256/<64 hex>
//!                                       GET {url}/revocations
//! Accept: application/jose
//! If-None-Match: <the last answer's ETag, when it had one>
//! Prefer: wait=<seconds>     (layout "path" with `watch`, and an ETag to compare with)
//! Authorization: Bearer <token_file> | Basic <basic_auth_file>   (when configured)
//!
//! 200  the digest's records: one JWS per line (blank lines ignored); an ETag header lets
//!      the next ask cost a 304
//! 304  unchanged since the ETag sent
//! 404  no record for this digest
//! 410  the digest is revoked, whatever the body says: the body may carry its records as
//!      for 200 (for the audit log); an empty, oversized or non-UTF-8 body is still a
//!      revocation, never an error that would keep the last good records in use
//! any other status, or no answer within `timeout` (plus the wait asked for): an error;
//!      the last good records stay in use until `max_stale`
//! ```
//!
//! `{url}/revocations` answers 200 with the signed revocation list (one compact JWS, see
//! [`super::revocations`]), 304, or 404 (no list). Besides the answer, the reply carries the
//! registry's hints: `Cache-Control: max-age` (the pace, within the configured bounds),
//! `Preference-Applied: wait` (the registry held the request: it supports watch), and on an
//! error `Retry-After` (seconds or an HTTP date).
//!
//! Writing is optional in the contract: a registry that accepts uploads takes `PUT
//! {url}/approvals/sha256/<64 hex>` with one record as the body ([`upload`], for `provgate
//! promote`).

use std::time::Duration;

use super::config::{Layout, RegistryAuth, RemoteRegistry};
use super::source::{
    accepted, authorize, body, Ask, Failed, Fetched, FetchedRecord, Hints, Reply, Source,
};
use crate::digest::Digest;
use crate::kit::http::{send, FetchError};

/// The longest `Retry-After` or `max-age` read (a registry cannot park a sidecar for days;
/// the backoff's cap and `max_refresh` bound both again).
const MAX_HINT: Duration = Duration::from_secs(24 * 3600);

/// An HTTP registry.
pub struct HttpRegistry {
    client: reqwest::Client,
    base: String,
    layout: Layout,
    timeout: Duration,
    auth: RegistryAuth,
}

impl HttpRegistry {
    pub fn new(client: reqwest::Client, config: &RemoteRegistry) -> HttpRegistry {
        HttpRegistry {
            client,
            base: config.url.clone(),
            layout: config.layout,
            timeout: config.timeout,
            auth: config.auth.clone(),
        }
    }

    /// Sends a GET with the contract's headers; the read timeout covers the wait asked for.
    async fn get(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
        ask: Ask<'_>,
    ) -> Result<reqwest::Response, Failed> {
        let mut request = request.header(http::header::ACCEPT, "application/jose");
        if let Some(etag) = ask.etag {
            request = request.header(http::header::IF_NONE_MATCH, etag);
            if let Some(wait) = ask.wait {
                request = request
                    .header("prefer", format!("wait={}", wait.as_secs().max(1)))
                    .timeout(wait + wait / 10 + self.timeout);
            }
        }
        Ok(send(authorize(request, &self.auth)?, url).await?)
    }
}

/// The hints a response carries.
fn hints(resp: &reqwest::Response) -> Hints {
    let headers = resp.headers();
    let max_age = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(max_age);
    let watched = headers
        .get_all("preference-applied")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|p| p.trim().to_ascii_lowercase().starts_with("wait"))
        });
    Hints { max_age, watched }
}

/// `max-age` from one `Cache-Control` value; `no-cache` and `no-store` read as zero.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|d| {
        let lower = d.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        let seconds = lower.strip_prefix("max-age=")?.trim_matches('"');
        seconds
            .parse::<u64>()
            .ok()
            .map(|s| Duration::from_secs(s).min(MAX_HINT))
    })
}

/// `Retry-After`: seconds, or an HTTP date (from `now`); bounded by [`MAX_HINT`].
fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_HINT))
}

/// An error status, with its `Retry-After`.
fn refused(resp: &reqwest::Response, url: &str) -> Failed {
    Failed {
        error: FetchError::Status {
            url: url.to_string(),
            status: resp.status(),
        },
        retry_after: resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, std::time::SystemTime::now())),
    }
}

fn etag_of(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl Source for HttpRegistry {
    fn label(&self) -> &'static str {
        "http"
    }

    async fn fetch(&self, digest: &Digest, ask: Ask<'_>) -> Result<Reply, Failed> {
        let (request, url) = match self.layout {
            Layout::Query => {
                let url = format!("{}/approvals", self.base);
                let digest_text = digest.to_string();
                (
                    self.client
                        .get(&url)
                        .query(&[("digest", digest_text.as_str())]),
                    url,
                )
            }
            Layout::Path => {
                let url = format!("{}/approvals/sha256/{}", self.base, digest.hex());
                (self.client.get(&url), url)
            }
        };
        let resp = self.get(request, &url, ask).await?;
        let status = resp.status();
        let hints = hints(&resp);
        let etag = etag_of(&resp);
        let fetched = match status.as_u16() {
            200 => {
                let bytes = body(resp).await?;
                let text = std::str::from_utf8(&bytes).map_err(|_| FetchError::NotUtf8 {
                    url: url.clone(),
                    what: "the answer",
                })?;
                Fetched::Records {
                    records: parse_records(text, false, &url),
                    etag,
                }
            }
            410 => {
                // Revoked whatever the body: reading it is only for the record IDs.
                let records = match body(resp).await {
                    Ok(bytes) => std::str::from_utf8(&bytes)
                        .map(|text| parse_records(text, true, &url))
                        .unwrap_or_default(),
                    Err(e) => {
                        tracing::warn!(url = %url, error = %e,
                            "registry answered 410 with an unreadable body; the digest is revoked");
                        Vec::new()
                    }
                };
                Fetched::Revoked { records }
            }
            304 => Fetched::NotModified,
            404 => Fetched::Records {
                records: Vec::new(),
                etag,
            },
            _ => return Err(refused(&resp, &url)),
        };
        Ok(Reply { fetched, hints })
    }

    fn has_revocations(&self) -> bool {
        self.layout == Layout::Path
    }

    async fn revocations(&self, ask: Ask<'_>) -> Result<Reply, Failed> {
        let url = format!("{}/revocations", self.base);
        let resp = self.get(self.client.get(&url), &url, ask).await?;
        let hints = hints(&resp);
        let etag = etag_of(&resp);
        let fetched = match resp.status().as_u16() {
            200 => {
                let bytes = body(resp).await?;
                let text = std::str::from_utf8(&bytes).map_err(|_| FetchError::NotUtf8 {
                    url: url.clone(),
                    what: "the revocation list",
                })?;
                Fetched::Records {
                    records: vec![FetchedRecord {
                        jws: text.trim().to_string(),
                        revoked: false,
                        origin: url.clone(),
                    }],
                    etag,
                }
            }
            304 => Fetched::NotModified,
            404 => Fetched::Records {
                records: Vec::new(),
                etag,
            },
            _ => return Err(refused(&resp, &url)),
        };
        Ok(Reply { fetched, hints })
    }
}

/// Records read from one answer at most; the rest of the lines are ignored (a digest has a
/// handful of records; a flood of lines costs neither CPU nor log beyond this).
pub const MAX_RECORDS: usize = 256;

/// One record per non-blank line, at most [`MAX_RECORDS`]. Public for the fuzz targets
/// (`provgate::fuzzing`).
pub fn parse_records(text: &str, revoked: bool, url: &str) -> Vec<FetchedRecord> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(MAX_RECORDS)
        .enumerate()
        .map(|(i, jws)| FetchedRecord {
            jws: jws.to_string(),
            revoked,
            origin: format!("{url} record {}", i + 1),
        })
        .collect()
}

/// Uploads one record (a compact JWS, or a co-signed record on one line) for `digest` in the
/// contract's upload form, `PUT {url}/approvals/sha256/<hex>` with `Content-Type:
/// application/jose`, for `provgate promote`. Any 2xx is success.
pub async fn upload(
    client: &reqwest::Client,
    base: &str,
    auth: &RegistryAuth,
    digest: &Digest,
    record: &str,
) -> Result<(), FetchError> {
    let url = format!(
        "{}/approvals/sha256/{}",
        base.trim_end_matches('/'),
        digest.hex()
    );
    let request = client
        .put(&url)
        .header(http::header::CONTENT_TYPE, "application/jose")
        .body(format!("{}\n", record.trim()));
    let resp = send(authorize(request, auth)?, &url).await?;
    accepted(resp, url).await
}

#[cfg(test)]
mod tests;
