//! A plain HTTP registry: the smallest contract a team can implement in front of whatever
//! store it already has.
//!
//! ```text
//! GET {url}/approvals?digest=sha256:<64 hex>
//! Accept: application/jose
//! If-None-Match: <the last answer's ETag, when it had one>
//! Authorization: Bearer <token_file> | Basic <basic_auth_file>   (when configured)
//!
//! 200  the digest's records: one compact JWS per line (blank lines ignored); an ETag
//!      header lets the next ask cost a 304
//! 304  unchanged since the ETag sent
//! 404  no record for this digest
//! 410  the digest is revoked, whatever the body says: the body may carry its records as
//!      for 200 (for the audit log); an empty, oversized or non-UTF-8 body is still a
//!      revocation, never an error that would keep the last good records in use
//! any other status, or no answer within `timeout`: an error; the last good records stay in
//!      use until `max_stale`
//! ```

use super::config::{RegistryAuth, RemoteRegistry};
use super::source::{authorize, body, Fetched, FetchedRecord, Source};
use crate::digest::Digest;
use crate::kit::http::{send, FetchError};

/// An HTTP registry.
pub struct HttpRegistry {
    client: reqwest::Client,
    url: String,
    auth: RegistryAuth,
}

impl HttpRegistry {
    pub fn new(client: reqwest::Client, config: &RemoteRegistry) -> HttpRegistry {
        HttpRegistry {
            client,
            url: format!("{}/approvals", config.url),
            auth: config.auth.clone(),
        }
    }
}

impl Source for HttpRegistry {
    fn label(&self) -> &'static str {
        "http"
    }

    async fn fetch(&self, digest: &Digest, etag: Option<&str>) -> Result<Fetched, FetchError> {
        let digest_text = digest.to_string();
        let mut request = self
            .client
            .get(&self.url)
            .query(&[("digest", digest_text.as_str())])
            .header(http::header::ACCEPT, "application/jose");
        if let Some(etag) = etag {
            request = request.header(http::header::IF_NONE_MATCH, etag);
        }
        let resp = send(authorize(request, &self.auth)?, &self.url).await?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let revoked = match status.as_u16() {
            200 => false,
            410 => {
                // Revoked whatever the body: reading it is only for the record IDs.
                let records = match body(resp).await {
                    Ok(bytes) => std::str::from_utf8(&bytes)
                        .map(|text| parse_records(text, true, &self.url))
                        .unwrap_or_default(),
                    Err(e) => {
                        tracing::warn!(url = %self.url, error = %e,
                            "registry answered 410 with an unreadable body; the digest is revoked");
                        Vec::new()
                    }
                };
                return Ok(Fetched::Revoked { records });
            }
            304 => return Ok(Fetched::NotModified),
            404 => {
                return Ok(Fetched::Records {
                    records: Vec::new(),
                    etag: None,
                })
            }
            _ => {
                return Err(FetchError::Status {
                    url: self.url.clone(),
                    status,
                })
            }
        };
        let bytes = body(resp).await?;
        let text = std::str::from_utf8(&bytes).map_err(|_| FetchError::NotUtf8 {
            url: self.url.clone(),
            what: "the answer",
        })?;
        Ok(Fetched::Records {
            records: parse_records(text, revoked, &self.url),
            etag,
        })
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

#[cfg(test)]
mod tests;
