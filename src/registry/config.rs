//! The `[registry]` section: where approval records come from (a directory, an MLflow
//! registry, an HTTP endpoint), how often they are read and how stale they may grow. File
//! struct, defaults, validation and the validated types ([`RegistryConfig`],
//! [`RegistrySource`], [`RemoteRegistry`], [`RemoteKind`], [`RegistryAuth`]). Data only:
//! fetching and caching are [`crate::registry`]'s, which imports this file; this file must
//! import nothing from it (nor the top-level `config`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::fields::Errors;

// === File struct ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    /// `dir`: a directory of record files (`*.jwt`, `*.jws`) and `revoked.txt`.
    /// `mlflow`: an MLflow model registry (records in model-version tags).
    /// `http`: any server implementing `GET {url}/approvals?digest=...` (see the README).
    pub kind: String,
    /// `dir`: the directory.
    #[serde(default)]
    pub path: Option<String>,
    /// `mlflow`, `http`: the registry's base URL.
    #[serde(default)]
    pub url: Option<String>,
    /// `mlflow`, `http`: a file holding a bearer token, re-read before every fetch.
    #[serde(default)]
    pub token_file: Option<String>,
    /// `mlflow`, `http`: a file holding `user:password` for basic auth, re-read before every
    /// fetch.
    #[serde(default)]
    pub basic_auth_file: Option<String>,
    /// `mlflow`, `http`: extra trusted CA certificates (PEM) for an `https` URL.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// `mlflow`, `http`: allow an `http://` URL. Records are signed, but a plaintext
    /// registry can withhold revocations unseen: for loopback test set-ups only. Redirects
    /// never leave HTTPS either way.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// How often the records are fetched (`dir`: rescanned, besides inotify events).
    #[serde(default = "default_refresh", alias = "rescan_interval")]
    pub refresh_interval: String,
    /// `mlflow`, `http`: how long one fetch may take.
    #[serde(default = "default_fetch_timeout")]
    pub timeout: String,
    /// How long the last good records are used while the registry cannot be read; after
    /// that, requests fail closed with `trust_data_unavailable`.
    #[serde(default = "default_max_stale")]
    pub max_stale: String,
    /// `mlflow`, `http`: the fastest pace a registry's `Cache-Control: max-age` may set
    /// (default 1s).
    #[serde(default)]
    pub min_refresh: Option<String>,
    /// `mlflow`, `http`: the slowest pace a registry's `Cache-Control: max-age` may set
    /// (default: four times `refresh_interval`, at most half of `max_stale`, never below
    /// `refresh_interval`); at most `max_stale`.
    #[serde(default)]
    pub max_refresh: Option<String>,
    /// `http`: `query` asks `GET {url}/approvals?digest=sha256:<hex>`; `path` asks
    /// `GET {url}/approvals/sha256/<hex>` and the signed revocation list
    /// `GET {url}/revocations` (what a static host, an object store or a CDN can serve).
    #[serde(default = "default_layout")]
    pub layout: String,
    /// `http` with `layout = "path"`: hold each request open at the registry for up to this
    /// long (`Prefer: wait=<seconds>`), so a change arrives as it happens; `0s` polls. The
    /// default with `layout = "path"` is [`DEFAULT_WATCH`] (a registry without watch support
    /// answers at once and is polled at the normal pace); otherwise off.
    #[serde(default)]
    pub watch: Option<String>,
}

/// `watch` with `layout = "path"` when not set: the reference server's longest hold, so an
/// idle sidecar asks about each resource about once a minute (under a tenth of 5-second
/// polling) and still hears of a revocation as it happens.
pub const DEFAULT_WATCH: Duration = Duration::from_secs(60);

fn default_layout() -> String {
    "query".into()
}

fn default_refresh() -> String {
    "5s".into()
}
fn default_fetch_timeout() -> String {
    "5s".into()
}
fn default_max_stale() -> String {
    "5m".into()
}

// === Validated config ===

/// The validated `[registry]` section.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub source: RegistrySource,
    /// How often the registry is read again (`dir`: rescanned besides inotify events).
    pub refresh_interval: Duration,
    pub max_stale: Duration,
    /// The bounds within which a remote registry's `Cache-Control: max-age` sets the pace.
    pub min_refresh: Duration,
    pub max_refresh: Duration,
}

/// Which form of the HTTP contract is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `GET {url}/approvals?digest=sha256:<hex>`.
    Query,
    /// `GET {url}/approvals/sha256/<hex>` and `GET {url}/revocations`.
    Path,
}

/// Where approval records come from.
#[derive(Debug, Clone)]
pub enum RegistrySource {
    Dir(PathBuf),
    Remote(RemoteRegistry),
}

/// The remote registry kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteKind {
    Mlflow,
    Http,
}

impl RemoteKind {
    /// The `backend` label value.
    pub fn label(self) -> &'static str {
        match self {
            RemoteKind::Mlflow => "mlflow",
            RemoteKind::Http => "http",
        }
    }
}

/// How provgate authenticates to a remote registry. Credentials live in files that are read
/// before every fetch, so a rotated secret needs no restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    None,
    BearerFile(PathBuf),
    BasicFile(PathBuf),
}

/// A remote registry and how to reach it.
#[derive(Debug, Clone)]
pub struct RemoteRegistry {
    pub kind: RemoteKind,
    /// Base URL, without a trailing slash.
    pub url: String,
    pub auth: RegistryAuth,
    /// Extra trusted CA certificates, PEM.
    pub ca_pem: Option<Vec<u8>>,
    pub timeout: Duration,
    /// `http://` allowed (`allow_plaintext = true`).
    pub allow_plaintext: bool,
    /// `http`: the contract's form (`mlflow`: [`Layout::Query`], unused).
    pub layout: Layout,
    /// `http` with [`Layout::Path`]: how long the registry is asked to hold a request
    /// (`Prefer: wait`); None polls.
    pub watch: Option<Duration>,
}

// === impl RegistryFile ===

impl RegistryFile {
    /// Checks `[registry]`; every problem goes to `errors`.
    pub fn validate(&self, errors: &mut Errors) -> RegistryConfig {
        let refresh_interval = errors.duration("registry.refresh_interval", &self.refresh_interval);
        let timeout = errors.duration("registry.timeout", &self.timeout);
        let max_stale = errors.duration("registry.max_stale", &self.max_stale);
        errors.more_than_zero("registry.refresh_interval", refresh_interval);
        errors.more_than_zero("registry.timeout", timeout);
        if max_stale < refresh_interval {
            errors.push(
                "registry.max_stale",
                "must be at least registry.refresh_interval",
            );
        }
        let min_refresh = match &self.min_refresh {
            Some(text) => errors.duration("registry.min_refresh", text),
            None => Duration::from_secs(1).min(refresh_interval),
        };
        let max_refresh = match &self.max_refresh {
            Some(text) => errors.duration("registry.max_refresh", text),
            None => (refresh_interval * 4)
                .min(max_stale / 2)
                .max(refresh_interval),
        };
        if self.min_refresh.is_some() {
            errors.more_than_zero("registry.min_refresh", min_refresh);
        }
        if min_refresh > refresh_interval {
            errors.push(
                "registry.min_refresh",
                "must be at most registry.refresh_interval",
            );
        }
        if max_refresh < refresh_interval || max_refresh > max_stale {
            errors.push(
                "registry.max_refresh",
                "must be between registry.refresh_interval and registry.max_stale",
            );
        }
        RegistryConfig {
            source: self.source(timeout, errors),
            refresh_interval,
            max_stale,
            min_refresh,
            max_refresh,
        }
    }

    /// Checks the backend-specific keys.
    fn source(&self, timeout: Duration, errors: &mut Errors) -> RegistrySource {
        let fallback = RegistrySource::Dir(PathBuf::new());
        let remote_only = [
            ("url", self.url.is_some()),
            ("token_file", self.token_file.is_some()),
            ("basic_auth_file", self.basic_auth_file.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("min_refresh", self.min_refresh.is_some()),
            ("max_refresh", self.max_refresh.is_some()),
            ("layout", self.layout != default_layout()),
            ("watch", self.watch.is_some()),
        ];
        let kind = match self.kind.as_str() {
            "dir" => {
                for (key, set) in remote_only {
                    if set {
                        errors.push(format_args!("registry.{key}"), "not used by kind \"dir\"");
                    }
                }
                let Some(path) = &self.path else {
                    errors.push("registry.path", "required for kind \"dir\"");
                    return fallback;
                };
                let path = PathBuf::from(path);
                if !path.is_dir() {
                    errors.push(
                        "registry.path",
                        format_args!("{} is not a directory", path.display()),
                    );
                }
                return RegistrySource::Dir(path);
            }
            "mlflow" => RemoteKind::Mlflow,
            "http" => RemoteKind::Http,
            other => {
                errors.push(
                    "registry.kind",
                    format_args!("{other:?} is not one of \"dir\", \"mlflow\", \"http\""),
                );
                return fallback;
            }
        };
        if self.path.is_some() {
            errors.push(
                "registry.path",
                format_args!("not used by kind {:?}; give url", self.kind),
            );
        }
        let url = match self.url.as_deref().map(str::trim) {
            None | Some("") => {
                errors.push(
                    "registry.url",
                    format_args!("required for kind {:?}", self.kind),
                );
                String::new()
            }
            Some(url) => match reqwest::Url::parse(url) {
                Ok(u) if u.scheme() == "http" && !self.allow_plaintext => {
                    errors.push(
                        "registry.url",
                        format_args!(
                            "{url:?} is plaintext HTTP; use https, or set allow_plaintext = true (loopback test set-ups only)"
                        ),
                    );
                    String::new()
                }
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.query().is_none() => {
                    url.trim_end_matches('/').to_string()
                }
                Ok(_) => {
                    errors.push(
                        "registry.url",
                        format_args!("{url:?} must be an http or https URL without a query"),
                    );
                    String::new()
                }
                Err(e) => {
                    errors.push("registry.url", format_args!("{url:?}: {e}"));
                    String::new()
                }
            },
        };
        let auth = match (&self.token_file, &self.basic_auth_file) {
            (None, None) => RegistryAuth::None,
            (Some(f), None) => {
                RegistryAuth::BearerFile(errors.readable_file("registry.token_file", f))
            }
            (None, Some(f)) => {
                RegistryAuth::BasicFile(errors.readable_file("registry.basic_auth_file", f))
            }
            (Some(_), Some(_)) => {
                errors.push(
                    "registry",
                    "give at most one of token_file, basic_auth_file",
                );
                RegistryAuth::None
            }
        };
        let ca_pem = self
            .ca_file
            .as_ref()
            .and_then(|p| errors.read_file("registry.ca_file", p));
        let layout = match self.layout.as_str() {
            "query" => Layout::Query,
            "path" if kind == RemoteKind::Http => Layout::Path,
            "path" => {
                errors.push("registry.layout", "\"path\" is for kind \"http\"");
                Layout::Query
            }
            other => {
                errors.push(
                    "registry.layout",
                    format_args!("{other:?} is not one of \"query\", \"path\""),
                );
                Layout::Query
            }
        };
        let watch = match &self.watch {
            None if layout == Layout::Path => Some(DEFAULT_WATCH),
            None => None,
            Some(text) => {
                let watch = errors.duration("registry.watch", text);
                if watch.is_zero() {
                    None
                } else if layout != Layout::Path {
                    errors.push("registry.watch", "needs layout = \"path\" (kind \"http\")");
                    None
                } else {
                    Some(watch)
                }
            }
        };
        RegistrySource::Remote(RemoteRegistry {
            kind,
            url,
            auth,
            ca_pem,
            timeout,
            allow_plaintext: self.allow_plaintext,
            layout,
            watch,
        })
    }
}
