//! The one HTTP client of the background services (registries, issuer keys, the probe):
//! rustls, no proxy from the environment, bounded connect and total time, an optional CA
//! bundle, and bodies read with a size bound. Failures are typed ([`FetchError`]) so callers
//! can tell a transport failure from a refusal or a bad answer; their text is what the logs
//! print and never becomes a metric label.
//!
//! Every client is HTTPS only unless its source sets `allow_plaintext` ([`Transport`]), and
//! its redirects never leave HTTPS; bodies are read as streams under a cap ([`body`]).

use std::time::Duration;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("ca_file: {0}")]
    Ca(reqwest::Error),
    #[error("building the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error(transparent)]
    Credential(super::file::ReadError),
    #[error("{0}: expected user:password")]
    CredentialShape(String),
    #[error("{url}: {}", chain(source))]
    Transport { url: String, source: reqwest::Error },
    #[error("{url}: HTTP {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("{url}: HTTP {status}: {body}")]
    Refused {
        url: String,
        status: reqwest::StatusCode,
        /// The start of the answer's body, for the log.
        body: String,
    },
    #[error("{url}: {what} larger than {limit} bytes")]
    TooLarge {
        url: String,
        what: &'static str,
        limit: usize,
    },
    #[error("{url}: {what} is not UTF-8")]
    NotUtf8 { url: String, what: &'static str },
    #[error("{url}: {detail}")]
    Answer { url: String, detail: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{url}: plaintext HTTP refused (HTTPS only; allow_plaintext = true is for loopback test set-ups)")]
    Plaintext { url: String },
}

/// An error with its causes, `: `-separated (reqwest's own text leaves out why a redirect
/// or a connection failed).
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

impl FetchError {
    /// A well-formed answer that says something unusable.
    pub fn answer(url: &str, detail: impl std::fmt::Display) -> FetchError {
        FetchError::Answer {
            url: url.to_string(),
            detail: detail.to_string(),
        }
    }
}

/// How a client is built.
#[derive(Debug, Clone)]
pub struct ClientOptions<'a> {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Extra trusted roots (PEM bundle), beside the built-in ones.
    pub ca_pem: Option<&'a [u8]>,
    /// Send `User-Agent: provgate/VERSION`.
    pub user_agent: bool,
    /// What the client may be sent over, and where redirects may lead.
    pub transport: Transport,
}

/// The transport rules of a client: HTTPS only unless a source explicitly allows
/// plaintext (loopback test set-ups), and redirects that never leave HTTPS (and, for key
/// material, never leave the origin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    /// `http://` URLs are allowed (the source's `allow_plaintext = true`).
    pub allow_plaintext: bool,
    /// A redirect must stay on the scheme, host and port it came from.
    pub same_origin_redirects: bool,
}

impl Transport {
    /// HTTPS only; redirects may change host but never leave HTTPS.
    pub const HTTPS: Transport = Transport {
        allow_plaintext: false,
        same_origin_redirects: false,
    };

    /// Whether `url` may be fetched under these rules.
    pub fn allows(&self, url: &reqwest::Url) -> bool {
        url.scheme() == "https" || (self.allow_plaintext && url.scheme() == "http")
    }

    /// Refuses a URL these rules do not allow, before any connection.
    pub fn check(&self, url: &str) -> Result<(), FetchError> {
        match reqwest::Url::parse(url) {
            Ok(u) if self.allows(&u) => Ok(()),
            Ok(_) => Err(FetchError::Plaintext {
                url: url.to_string(),
            }),
            Err(e) => Err(FetchError::answer(url, e)),
        }
    }

    /// The redirect policy: at most [`MAX_REDIRECTS`], never from HTTPS to anything else,
    /// never to a URL these rules refuse, and (for key material) never to another origin.
    fn redirect_policy(self) -> reqwest::redirect::Policy {
        reqwest::redirect::Policy::custom(move |attempt| {
            let (next, previous) = (attempt.url(), attempt.previous());
            let from = previous.last();
            let downgrade = from.is_some_and(|f| f.scheme() == "https" && next.scheme() != "https");
            let moved =
                self.same_origin_redirects && from.is_some_and(|f| f.origin() != next.origin());
            if downgrade || !self.allows(next) {
                let why = format!("redirect to {next} leaves HTTPS");
                attempt.error(why)
            } else if moved {
                let why = format!("redirect to {next} leaves the origin of key material");
                attempt.error(why)
            } else if previous.len() > MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else {
                attempt.follow()
            }
        })
    }
}

/// Redirects followed at most.
pub const MAX_REDIRECTS: usize = 5;

/// A rustls client that ignores proxy variables, with the given timeouts and roots.
pub fn client(options: &ClientOptions<'_>) -> Result<reqwest::Client, FetchError> {
    builder(options)?.build().map_err(FetchError::Client)
}

/// The builder behind [`client`], for callers that add more (the probe's resolve and h2c).
pub fn builder(options: &ClientOptions<'_>) -> Result<reqwest::ClientBuilder, FetchError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(!options.transport.allow_plaintext)
        .redirect(options.transport.redirect_policy())
        .no_proxy()
        .connect_timeout(options.connect_timeout)
        .timeout(options.timeout);
    if options.user_agent {
        builder = builder.user_agent(concat!("provgate/", env!("CARGO_PKG_VERSION")));
    }
    if let Some(pem) = options.ca_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(FetchError::Ca)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

/// Reads a response body of at most `limit` bytes (`what` names it in the error), as a
/// stream: a Content-Length over the bound is refused before a byte is read, and an answer
/// without one (chunked, or a lying server) is cut off the moment it passes the bound, so an
/// endless body costs at most `limit` bytes of memory.
pub async fn body(
    mut resp: reqwest::Response,
    limit: usize,
    what: &'static str,
) -> Result<bytes::Bytes, FetchError> {
    let url = resp.url().to_string();
    let too_large = || FetchError::TooLarge {
        url: url.clone(),
        what,
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|source| FetchError::Transport {
        url: url.clone(),
        source,
    })? {
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// Sends a request, naming `url` in a transport error.
pub async fn send(
    request: reqwest::RequestBuilder,
    url: &str,
) -> Result<reqwest::Response, FetchError> {
    request
        .send()
        .await
        .map_err(|source| FetchError::Transport {
            url: url.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests;
