//! Served-model cross-checks: what the model server itself says it serves, polled in the
//! background and published per model through `arc-swap`. The request path only loads it.
//!
//! Kinds (`[upstream.probe] kind`):
//! - `kserve_v2`: `GET /v2/models/{model}` per model; 200 with `name` equal to the model is
//!   serving, 404 (or another `name`) is not serving.
//! - `openai`: `GET /v1/models`; serving when `data[].id` lists the model.
//! - `ollama`: `GET /api/tags`; serving when `models[].name` is the model (or the model with
//!   Ollama's implicit `:latest` tag), with that entry's `digest` published so the decision
//!   can compare it with a record's `artefact.ollama_digest`.
//!
//! Any other answer (connection refused, timeout, another status, a body that does not
//! parse) is `Unreachable`. That state does not block by itself: a probe outage is not trust
//! data (the mounted directory's digest is), and the request would go to the same server
//! the probe could not reach. What it cannot do is clear a block: `NotServing` is replaced
//! only by a positive answer, and a record that pins an Ollama digest needs a current
//! `Serving` observation, so an unreachable probe never lets such a record allow.
//!
//! This module does not decide anything; `policy::decide` reads [`ServedHandle::view`].

use std::sync::Arc;
use std::time::Instant;

pub mod config;

pub use self::config::ProbeKind;

use self::config::Probe;
use crate::kit::http::{ClientOptions, FetchError, Transport};
use crate::kit::published::{Freshness, Published};
use crate::policy::ServerView;
use crate::telemetry::Metrics;
use crate::upstream::{Upstream, UpstreamProtocol};

/// What the probe last learnt about one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// No answer yet.
    Pending,
    /// The server reports serving it (Ollama: with this manifest digest, lowercase hex).
    Serving { ollama_digest: Option<String> },
    /// The server answered, and does not serve it under this name.
    NotServing,
    /// The server did not answer usefully.
    Unreachable,
}

/// Probe states, as label values.
pub const SERVED_STATES: [&str; 4] = ["pending", "serving", "not_serving", "unreachable"];

/// Counts one probe answer for one model (`provgate_upstream_probes_total`).
pub fn count_probe(metrics: &Metrics, kind: ProbeKind, result: &Served) {
    metrics
        .upstream_probes
        .with_label_values(&[kind.label(), result.label()])
        .inc();
}

/// Publishes a model's probe state (`provgate_upstream_probe_state`).
pub fn set_probe_state(metrics: &Metrics, model: &str, state: &Served) {
    for s in SERVED_STATES {
        metrics
            .upstream_probe_state
            .with_label_values(&[model, s])
            .set((s == state.label()) as i64);
    }
}

impl Served {
    pub const fn label(&self) -> &'static str {
        match self {
            Served::Pending => "pending",
            Served::Serving { .. } => "serving",
            Served::NotServing => "not_serving",
            Served::Unreachable => "unreachable",
        }
    }
}

/// One model's published probe state; cheap to read from any thread.
pub struct ServedHandle {
    /// Synced after the first probe (from the start when there is no probe).
    state: Published<Served>,
    /// False when no probe is configured: the view is then `NotProbed`.
    probed: bool,
}

impl ServedHandle {
    /// A handle for a model that is probed (`Pending` until the first answer) or not.
    pub fn new(probed: bool) -> ServedHandle {
        ServedHandle {
            state: Published::with_clock(
                Served::Pending,
                if probed {
                    Freshness::new()
                } else {
                    Freshness::synced()
                },
            ),
            probed,
        }
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<Served>> {
        self.state.load()
    }

    /// The decision's view of a loaded state.
    pub fn view<'a>(&self, state: &'a Served) -> ServerView<'a> {
        if !self.probed {
            return ServerView::NotProbed;
        }
        match state {
            Served::Pending => ServerView::Pending,
            Served::Serving { ollama_digest } => ServerView::Serving {
                ollama_digest: ollama_digest.as_deref(),
            },
            Served::NotServing => ServerView::NotServing,
            Served::Unreachable => ServerView::Unreachable,
        }
    }

    /// Has the first probe finished (or is there no probe)?
    pub fn is_settled(&self) -> bool {
        self.state.is_synced()
    }

    /// Publishes a state. The prober does this; public for tests and benchmarks.
    pub fn set(&self, state: Served) {
        self.state.publish(state);
    }
}

// === Prober ===

/// Polls the model server for every configured model.
#[derive(Clone)]
pub struct Prober {
    pub probe: Probe,
    /// `http://IP:port` or `https://SNI:port`.
    pub base: String,
    pub client: reqwest::Client,
    pub models: Vec<(String, Arc<ServedHandle>)>,
    pub metrics: Arc<Metrics>,
}

impl Prober {
    /// A prober for the upstream (same address, protocol and TLS name as the proxy uses).
    pub fn new(
        probe: Probe,
        upstream: &Upstream,
        models: Vec<(String, Arc<ServedHandle>)>,
        metrics: Arc<Metrics>,
    ) -> Result<Prober, FetchError> {
        let mut builder = crate::kit::http::builder(&ClientOptions {
            connect_timeout: probe.timeout.min(upstream.connect_timeout),
            timeout: probe.timeout,
            ca_pem: None,
            user_agent: false,
            // The model server's own scheme (the upstream's protocol); a redirect still never
            // leaves HTTPS nor the server.
            transport: Transport {
                allow_plaintext: upstream.protocol != UpstreamProtocol::Https,
                same_origin_redirects: true,
            },
        })?
        .pool_max_idle_per_host(1);
        let base = match upstream.protocol {
            UpstreamProtocol::Http1 => format!("http://{}", upstream.address),
            UpstreamProtocol::H2c => {
                builder = builder.http2_prior_knowledge();
                format!("http://{}", upstream.address)
            }
            UpstreamProtocol::Https => {
                builder = builder.resolve(&upstream.sni, upstream.address);
                format!("https://{}:{}", upstream.sni, upstream.address.port())
            }
        };
        let client = builder.build().map_err(FetchError::Client)?;
        Ok(Prober {
            probe,
            base,
            client,
            models,
            metrics,
        })
    }

    /// Probes every `interval`, forever (run as a background service, which ends it at
    /// shutdown).
    pub async fn run(self) {
        for (model, handle) in &self.models {
            set_probe_state(&self.metrics, model, &handle.load());
        }
        loop {
            let started = Instant::now();
            let results = self.probe_once().await;
            for ((model, handle), next) in self.models.iter().zip(results) {
                count_probe(&self.metrics, self.probe.kind, &next);
                let previous = handle.load();
                if **previous != next {
                    match &next {
                        Served::Serving { ollama_digest } => tracing::info!(model = %model,
                            kind = self.probe.kind.label(), ollama_digest = ollama_digest.as_deref().unwrap_or("-"),
                            "model server reports serving the model"),
                        Served::NotServing => tracing::warn!(model = %model,
                            kind = self.probe.kind.label(),
                            "model server does not report serving the model; requests for it are blocked (model_mismatch)"),
                        Served::Unreachable => tracing::warn!(model = %model,
                            kind = self.probe.kind.label(), "model server probe unanswered"),
                        Served::Pending => {}
                    }
                }
                let next = next_state(&previous, next);
                set_probe_state(&self.metrics, model, &next);
                handle.set(next);
            }
            tokio::time::sleep(self.probe.interval.saturating_sub(started.elapsed())).await;
        }
    }

    /// One round: a state per model, in `models` order.
    pub async fn probe_once(&self) -> Vec<Served> {
        match self.probe.kind {
            ProbeKind::KserveV2 => {
                let mut out = Vec::with_capacity(self.models.len());
                for (model, _) in &self.models {
                    out.push(self.kserve(model).await);
                }
                out
            }
            ProbeKind::OpenAi => match self.get_json("/v1/models").await {
                Some(body) => self
                    .models
                    .iter()
                    .map(|(m, _)| openai_lists(&body, m))
                    .collect(),
                None => vec![Served::Unreachable; self.models.len()],
            },
            ProbeKind::Ollama => match self.get_json("/api/tags").await {
                Some(body) => self
                    .models
                    .iter()
                    .map(|(m, _)| ollama_lists(&body, m))
                    .collect(),
                None => vec![Served::Unreachable; self.models.len()],
            },
        }
    }

    async fn kserve(&self, model: &str) -> Served {
        let Ok(mut url) = reqwest::Url::parse(&format!("{}/v2/models", self.base)) else {
            return Served::Unreachable;
        };
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push(model);
        }
        match self.client.get(url).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Served::NotServing,
            Ok(r) if r.status().is_success() => match read_json(r).await {
                Ok(v) if v.get("name").and_then(|n| n.as_str()) == Some(model) => Served::Serving {
                    ollama_digest: None,
                },
                Ok(_) => Served::NotServing,
                Err(_) => Served::Unreachable,
            },
            _ => Served::Unreachable,
        }
    }

    async fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        read_json(r).await.ok()
    }
}

/// Largest probe answer read (a model list of a large multi-model server fits easily); a
/// Content-Length over it is refused before reading, a body without one is cut off there.
pub const MAX_PROBE_BODY: usize = 4 << 20;

/// A JSON probe answer, read through the bounded stream of [`crate::kit::http::body`].
async fn read_json(r: reqwest::Response) -> Result<serde_json::Value, FetchError> {
    let url = r.url().to_string();
    let bytes = crate::kit::http::body(r, MAX_PROBE_BODY, "probe answer").await?;
    serde_json::from_slice(&bytes).map_err(|e| FetchError::answer(&url, e))
}

/// `GET /v1/models`: is the model in `data[].id`? (A body without `data` is unreachable.)
pub fn openai_lists(body: &serde_json::Value, model: &str) -> Served {
    match body.get("data").and_then(|d| d.as_array()) {
        Some(list) => {
            if list
                .iter()
                .any(|e| e.get("id").and_then(|i| i.as_str()) == Some(model))
            {
                Served::Serving {
                    ollama_digest: None,
                }
            } else {
                Served::NotServing
            }
        }
        None => Served::Unreachable,
    }
}

/// `GET /api/tags`: the entry named `model` (or `model:latest`), with its digest.
pub fn ollama_lists(body: &serde_json::Value, model: &str) -> Served {
    let Some(list) = body.get("models").and_then(|d| d.as_array()) else {
        return Served::Unreachable;
    };
    let named = |e: &&serde_json::Value| {
        let name = e.get("name").and_then(|n| n.as_str()).unwrap_or_default();
        name == model || name.strip_suffix(":latest") == Some(model)
    };
    match list.iter().find(named) {
        Some(entry) => Served::Serving {
            ollama_digest: entry
                .get("digest")
                .and_then(|d| d.as_str())
                .map(|d| d.strip_prefix("sha256:").unwrap_or(d).to_ascii_lowercase()),
        },
        None => Served::NotServing,
    }
}

/// The state to publish after a probe round: an unanswered probe does not clear a
/// mismatch; only a positive answer does.
pub fn next_state(previous: &Served, observed: Served) -> Served {
    match (previous, observed) {
        (Served::NotServing, Served::Unreachable) => Served::NotServing,
        (_, observed) => observed,
    }
}

#[cfg(test)]
mod tests;
