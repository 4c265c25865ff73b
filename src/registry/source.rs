//! What a remote registry backend is to the refresher: a [`Source`] asked for one digest's
//! records, what it answers ([`Fetched`]), and the request helpers every backend shares
//! (credentials, bounded bodies). A leaf of the registry: the backends (`http`, `mlflow`)
//! and the refresher (`remote`) import it; it imports neither.

use std::future::Future;
use std::time::Duration;

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

/// How one question is asked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask<'a> {
    /// The last answer's ETag, when it had one (`If-None-Match`).
    pub etag: Option<&'a str>,
    /// Hold the request until the answer changes, for at most this long (`Prefer: wait`);
    /// only with an ETag.
    pub wait: Option<Duration>,
}

/// What the registry said about how to ask again, besides its answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hints {
    /// `Cache-Control: max-age` (`no-cache`, `no-store`: zero).
    pub max_age: Option<Duration>,
    /// The registry held the request (`Preference-Applied: wait=...`): it supports watch.
    pub watched: bool,
}

/// An answer with its hints.
#[derive(Debug)]
pub struct Reply {
    pub fetched: Fetched,
    pub hints: Hints,
}

impl From<Fetched> for Reply {
    fn from(fetched: Fetched) -> Reply {
        Reply {
            fetched,
            hints: Hints::default(),
        }
    }
}

/// A failed question, with the registry's `Retry-After` when it gave one.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Failed {
    pub error: FetchError,
    pub retry_after: Option<Duration>,
}

impl From<FetchError> for Failed {
    fn from(error: FetchError) -> Failed {
        Failed {
            error,
            retry_after: None,
        }
    }
}

/// A registry that can be asked for one digest's records.
pub trait Source: Send + Sync + 'static {
    /// The `backend` label.
    fn label(&self) -> &'static str;

    /// Asks for `digest`'s records.
    fn fetch(
        &self,
        digest: &Digest,
        ask: Ask<'_>,
    ) -> impl Future<Output = Result<Reply, Failed>> + Send;

    /// Does the registry publish a signed revocation list beside the records?
    fn has_revocations(&self) -> bool {
        false
    }

    /// Asks for the signed revocation list: [`Fetched::Records`] with the list's text as
    /// its one record (none: no list published), or [`Fetched::NotModified`].
    fn revocations(&self, ask: Ask<'_>) -> impl Future<Output = Result<Reply, Failed>> + Send {
        let _ = ask;
        async {
            Ok(Reply::from(Fetched::Records {
                records: Vec::new(),
                etag: None,
            }))
        }
    }
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

/// A write's answer (`provgate approve --publish-mlflow`, `provgate promote`): any 2xx is
/// success; otherwise [`FetchError::Refused`] with the status and the start of the body,
/// reported as `what`.
pub async fn accepted(resp: reqwest::Response, what: String) -> Result<(), FetchError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let bytes = body(resp).await.unwrap_or_default();
    Err(FetchError::Refused {
        url: what,
        status,
        body: snippet(&bytes),
    })
}

/// The start of an error answer, for the log.
pub fn snippet(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes.get(..200).unwrap_or(bytes)).into_owned()
}

/// Reads a response body, refusing one larger than [`MAX_BODY`].
pub async fn body(resp: reqwest::Response) -> Result<bytes::Bytes, FetchError> {
    crate::kit::http::body(resp, MAX_BODY, "answer").await
}
