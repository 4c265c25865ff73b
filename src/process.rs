//! The process sections: `[listen]` (where callers connect; its caller-authentication and
//! TLS keys are checked by [`crate::identity::config`]), `[admin]` (the metrics and health
//! listener), `[server]` (threads, shutdown) and `[log]`. File structs, defaults, validation
//! and validated values. Data only: starting the process is the `server` module's, which
//! reaches this file through the top-level `config`; this file must not import it.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::fields::Errors;
use crate::identity::config::{validate_caller_auth, CallerAuth, ListenTls};

// === File structs ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// Where callers connect. Default: loopback only.
    #[serde(default = "default_listen")]
    pub address: String,
    /// Terminate TLS on the listener with this certificate chain and key (PEM).
    #[serde(default)]
    pub tls_cert: Option<String>,
    /// See `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<String>,
    /// CA bundle (PEM) for client certificates; a verified client certificate's SPIFFE URI
    /// SAN is a caller identity.
    #[serde(default)]
    pub client_ca: Option<String>,
    /// How callers prove who they are: `token` (bearer JWT), `certificate` (mTLS client
    /// certificate, required at the handshake), `token_or_certificate`, or
    /// `token_and_certificate` (both, naming the same identity).
    #[serde(default = "default_caller_auth")]
    pub caller_auth: String,
}

impl Default for ListenFile {
    fn default() -> Self {
        ListenFile {
            address: default_listen(),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            caller_auth: default_caller_auth(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// `/metrics`, `/healthz`, `/readyz`. Default: loopback only.
    #[serde(default = "default_admin")]
    pub address: String,
}

impl Default for AdminFile {
    fn default() -> Self {
        AdminFile {
            address: default_admin(),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Worker threads for the proxy; 0 = one per core.
    #[serde(default)]
    pub threads: usize,
    /// How long to keep serving in-flight requests after SIGTERM.
    #[serde(default)]
    pub grace_period: Option<String>,
    /// Let idle worker threads steal tasks from busy ones (one shared runtime) rather than
    /// run one independent runtime per thread.
    #[serde(default)]
    pub work_stealing: Option<bool>,
    /// How long a new client connection may take to send its first request's headers,
    /// counted from the accept (a client that trickles header lines is cut off). Default
    /// 10s.
    #[serde(default)]
    pub header_timeout: Option<String>,
    /// How long a kept-alive client connection may take, after a response, to send the next
    /// request's headers. Default 60s. (pingora's own keep-alive read timeout, 60 s without
    /// a byte, still applies.)
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Client connections open at once on the proxy listener; more are answered 503 and
    /// closed. Default 4096 (about 40 KB each while waiting for headers).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Client connections open at once from one source IP address. Default 1024.
    #[serde(default)]
    pub max_connections_per_client: Option<usize>,
    /// pingora's fast timer for connection timeouts of a second or more: a thread that
    /// wakes every 10 ms for the life of the process once the first timeout is armed, worth
    /// it (pingora's guidance) above about 100 timeouts a second. Default false: Tokio's
    /// timer, so an idle sidecar sleeps. (Timeouts under a second, and pingora's write
    /// timeouts under backpressure, always use the fast timer.)
    #[serde(default)]
    pub fast_timer: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// `error`, `warn`, `info`, `debug` or `trace` (`RUST_LOG` overrides).
    #[serde(default = "default_level")]
    pub level: String,
    /// `text` or `json`.
    #[serde(default = "default_format")]
    pub format: String,
}

impl Default for LogFile {
    fn default() -> Self {
        LogFile {
            level: default_level(),
            format: default_format(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_caller_auth() -> String {
    "token".into()
}
fn default_admin() -> String {
    "127.0.0.1:9090".into()
}
fn default_level() -> String {
    "info".into()
}
fn default_format() -> String {
    "text".into()
}

// === Validated config ===

/// The validated `[listen]` section.
#[derive(Debug)]
pub struct Listen {
    pub address: SocketAddr,
    pub caller_auth: CallerAuth,
    pub tls: Option<ListenTls>,
}

/// The validated `[server]` section.
#[derive(Debug)]
pub struct ServerSettings {
    pub threads: usize,
    pub work_stealing: bool,
    pub grace_period: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub fast_timer: bool,
}

/// The validated `[log]` section.
#[derive(Debug)]
pub struct LogSettings {
    pub level: String,
    pub json: bool,
}

impl ListenFile {
    /// Checks `[listen]`; every problem goes to `errors`.
    pub fn validate(&self, errors: &mut Errors) -> Listen {
        let address = errors.socket_addr("listen.address", &self.address);
        let auth = validate_caller_auth(
            &self.caller_auth,
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.client_ca.as_deref(),
            errors,
        );
        Listen {
            address,
            caller_auth: auth.caller_auth,
            tls: auth.listen_tls,
        }
    }
}

impl AdminFile {
    /// Checks `[admin]`; every problem goes to `errors`.
    pub fn validate(&self, errors: &mut Errors) -> SocketAddr {
        errors.socket_addr("admin.address", &self.address)
    }
}

impl ServerFile {
    /// Checks `[server]`; every problem goes to `errors`.
    pub fn validate(&self, errors: &mut Errors) -> ServerSettings {
        let grace_period = self
            .grace_period
            .as_deref()
            .map(|g| errors.duration("server.grace_period", g))
            .unwrap_or(Duration::from_secs(5));
        let mut positive = |name: &str, value: Option<&str>, default: Duration| {
            let d = value.map_or(default, |v| errors.duration(name, v));
            if d.is_zero() {
                errors.push(name, "must be more than zero");
            }
            d
        };
        let header_timeout = positive(
            "server.header_timeout",
            self.header_timeout.as_deref(),
            Duration::from_secs(10),
        );
        let idle_timeout = positive(
            "server.idle_timeout",
            self.idle_timeout.as_deref(),
            Duration::from_secs(60),
        );
        let max_connections = self.max_connections.unwrap_or(4096);
        let max_connections_per_client = self.max_connections_per_client.unwrap_or(1024);
        if max_connections == 0 {
            errors.push("server.max_connections", "must be at least 1");
        }
        if max_connections_per_client == 0 {
            errors.push("server.max_connections_per_client", "must be at least 1");
        }
        ServerSettings {
            header_timeout,
            idle_timeout,
            max_connections,
            max_connections_per_client,
            threads: if self.threads == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                self.threads
            },
            work_stealing: self.work_stealing.unwrap_or(true),
            fast_timer: self.fast_timer,
            grace_period,
        }
    }
}

impl LogFile {
    /// Checks `[log]`; every problem goes to `errors`.
    pub fn validate(self, errors: &mut Errors) -> LogSettings {
        let json = match self.format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                errors.push(
                    "log.format",
                    format_args!("{other:?} is not \"text\" or \"json\""),
                );
                false
            }
        };
        LogSettings {
            level: self.level,
            json,
        }
    }
}
