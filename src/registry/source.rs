//! What a remote registry backend is to the refresher: a [`Source`] asked for one digest's
//! records, what it answers ([`Fetched`]), and the request helpers every backend shares
//! (credentials, bounded bodies). A leaf of the registry: the backends (`http`, `mlflow`)
//! and the refresher (`remote`) import it; it imports neither.

use std::future::Future;

use super::config::RegistryAuth;
use crate::digest::Digest;
use crate::kit::http::FetchError;

/// Largest registry answer accepted.
pub const MAX_BODY: usize = 1 << 20;

/// One record as a registry returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedRecord {
    /// The compact JWS.
    pub jws: String,
    /// The registry marks it revoked.
    pub revoked: bool,
    /// Where it came from, for the log (e.g. `model version m/3`).
    pub origin: String,
}

/// What one fetch returned.
#[derive(Debug)]
pub enum Fetched {
    /// Unchanged since the answer carrying this ETag (HTTP 304).
    NotModified,
    /// The records for the digest (none: the registry has no record for it).
    Records {
        records: Vec<FetchedRecord>,
        etag: Option<String>,
    },
    /// The registry revoked the digest as a whole (an HTTP 410), whatever else its answer
    /// said or failed to say; `records` are those its body carried, when it could be read.
    Revoked { records: Vec<FetchedRecord> },
}

/// A registry that can be asked for one digest's records.
pub trait Source: Send + Sync + 'static {
    /// The `backend` label.
    fn label(&self) -> &'static str;

    /// Asks for `digest`'s records; `etag` is the last answer's, when it had one.
    fn fetch(
        &self,
        digest: &Digest,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Fetched, FetchError>> + Send;
}

/// Adds the configured credentials to a request. The files are read on every call, so a
/// rotated secret needs no restart; their contents never reach a log line.
pub fn authorize(
    request: reqwest::RequestBuilder,
    auth: &RegistryAuth,
) -> Result<reqwest::RequestBuilder, FetchError> {
    let read = |path: &std::path::Path| {
        crate::kit::file::read_string(path, crate::kit::file::Kind::Credential)
            .map(|s| s.trim().to_string())
            .map_err(FetchError::Credential)
    };
    Ok(match auth {
        RegistryAuth::None => request,
        RegistryAuth::BearerFile(path) => request.bearer_auth(read(path)?),
        RegistryAuth::BasicFile(path) => {
            let text = read(path)?;
            let (user, password) = text
                .split_once(':')
                .ok_or_else(|| FetchError::CredentialShape(path.display().to_string()))?;
            request.basic_auth(user, Some(password))
        }
    })
}

/// Reads a response body, refusing one larger than [`MAX_BODY`].
pub async fn body(resp: reqwest::Response) -> Result<bytes::Bytes, FetchError> {
    crate::kit::http::body(resp, MAX_BODY, "answer").await
}
