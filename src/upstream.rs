//! The `[upstream]` section: the model server provgate forwards to, its file struct,
//! defaults, validation and the validated [`Upstream`]. Data only: connecting is the proxy's
//! business and probing the probe's; this module must not import either (the probe's own
//! `[upstream.probe]` table is owned by the probe module).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::fields::Errors;

// === File struct ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// The model server, `host:port`.
    pub address: String,
    /// `http1`, `h2c` (HTTP/2 over cleartext) or `https` (TLS with rustls, HTTP/2 or 1.1 by ALPN).
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// TLS server name for `https`; defaults to the address's host.
    #[serde(default)]
    pub sni: Option<String>,
    /// Forward the caller's `Authorization` header to the model server. Default: strip it.
    #[serde(default)]
    pub forward_token: bool,
    /// TCP connect timeout.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// How long provgate waits for the model server on one read: the first byte of an
    /// answer, or the next chunk of a streamed one. Past it the client gets 504
    /// `upstream_timeout`. Long enough for a slow, unstreamed generation. `0s` turns it off
    /// (pingora's per-read timer costs about 2.4k instructions per request, BENCHMARKS.md).
    #[serde(default = "default_read_timeout")]
    pub read_timeout: String,
    /// Idle connections kept per upstream for reuse.
    #[serde(default = "default_pool")]
    pub keepalive_pool: usize,
    /// Optional cross-check of what the model server says it serves, polled in the
    /// background (`[upstream.probe]`).
    #[serde(default)]
    pub probe: Option<ProbeFile>,
    /// The APIs the model server speaks (route profiles): `openai`, `kserve_v1`,
    /// `kserve_v2`, `triton`, `ollama`, `vllm`, `tgi`. Only their listed routes are
    /// forwarded; management routes only when `[[routing.allow]]` opens them. Default
    /// (a config from before profiles): `["openai", "kserve_v2"]`, the two APIs whose
    /// model names provgate read before.
    #[serde(default)]
    pub api: Option<Vec<String>>,
}

fn default_protocol() -> String {
    "http1".into()
}
fn default_connect_timeout() -> String {
    "2s".into()
}
fn default_read_timeout() -> String {
    "300s".into()
}
fn default_pool() -> usize {
    128
}

// === `[upstream.probe]` ===

/// `[upstream.probe]`: a table of `[upstream]`, so parsed here; the probe module validates
/// it (`probe::config`), as it owns what the probe does.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeFile {
    /// `kserve_v2` (`GET /v2/models/{model}` must answer 200 naming the model), `openai`
    /// (`GET /v1/models` must list it in `data[].id`) or `ollama` (`GET /api/tags` must list
    /// it in `models[].name`; its `digest` is compared with a record's
    /// `artefact.ollama_digest`).
    pub kind: String,
    /// Time between probes.
    #[serde(default = "default_probe_interval")]
    pub interval: String,
    /// How long one probe request may take before the server counts as unreachable.
    #[serde(default = "default_probe_timeout")]
    pub timeout: String,
}

fn default_probe_interval() -> String {
    "5s".into()
}
fn default_probe_timeout() -> String {
    "2s".into()
}

// === Validated config ===

/// An API a model server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    Openai,
    KserveV1,
    KserveV2,
    Triton,
    Ollama,
    Vllm,
    Tgi,
}

impl Api {
    pub const ALL: [Api; 7] = [
        Api::Openai,
        Api::KserveV1,
        Api::KserveV2,
        Api::Triton,
        Api::Ollama,
        Api::Vllm,
        Api::Tgi,
    ];

    pub fn parse(s: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Api::Openai => "openai",
            Api::KserveV1 => "kserve_v1",
            Api::KserveV2 => "kserve_v2",
            Api::Triton => "triton",
            Api::Ollama => "ollama",
            Api::Vllm => "vllm",
            Api::Tgi => "tgi",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    H2c,
    Https,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub address: SocketAddr,
    pub protocol: UpstreamProtocol,
    pub sni: String,
    pub forward_token: bool,
    pub connect_timeout: Duration,
    /// `None`: no read timeout (`0s`).
    pub read_timeout: Option<Duration>,
    pub keepalive_pool: usize,
    /// The route profiles of the APIs the server speaks.
    pub api: Vec<Api>,
}

impl UpstreamFile {
    /// Checks `[upstream]` (not its `probe` table); every problem goes to `errors`.
    pub fn validate(&self, errors: &mut Errors) -> Upstream {
        let address = errors.socket_addr("upstream.address", &self.address);
        let connect_timeout = errors.duration("upstream.connect_timeout", &self.connect_timeout);
        let read_timeout = errors.duration("upstream.read_timeout", &self.read_timeout);
        let protocol = errors
            .choice(
                "upstream.protocol",
                &self.protocol,
                &[
                    ("http1", UpstreamProtocol::Http1),
                    ("h2c", UpstreamProtocol::H2c),
                    ("https", UpstreamProtocol::Https),
                ],
            )
            .unwrap_or(UpstreamProtocol::Http1);
        let api = match &self.api {
            None => vec![Api::Openai, Api::KserveV2],
            Some(list) => {
                if list.is_empty() {
                    errors.push("upstream.api", "name at least one API");
                }
                list.iter()
                    .filter_map(|a| {
                        let parsed = Api::parse(a);
                        if parsed.is_none() {
                            errors.push(
                                "upstream.api",
                                format_args!("{a:?} is not one of \"openai\", \"kserve_v1\", \"kserve_v2\", \"triton\", \"ollama\", \"vllm\", \"tgi\""),
                            );
                        }
                        parsed
                    })
                    .collect()
            }
        };
        let sni = self.sni.clone().unwrap_or_else(|| {
            self.address
                .rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                .unwrap_or_default()
        });
        Upstream {
            address,
            protocol,
            sni,
            forward_token: self.forward_token,
            connect_timeout,
            read_timeout: (!read_timeout.is_zero()).then_some(read_timeout),
            keepalive_pool: self.keepalive_pool,
            api,
        }
    }
}
