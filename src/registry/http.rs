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
//! 410  the digest's records are revoked; the body carries them as for 200 (an empty 410
//!      reads as 404)
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
            410 => true,
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

/// One record per non-blank line.
fn parse_records(text: &str, revoked: bool, url: &str) -> Vec<FetchedRecord> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
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
