//! The `[tracing]` section: its file struct, defaults, validation and validated value
//! ([`Tracing`]). Data only: the tracer and exporter are built from it by `server`.
//!
//! Tracing is off unless `otlp_endpoint` is given: then provgate neither reads nor writes
//! `traceparent`, and the request path does nothing it did not do before.

use std::time::Duration;

use serde::Deserialize;

use crate::fields::Errors;

/// The OTLP/HTTP path of traces, appended to a base endpoint.
pub const TRACES_PATH: &str = "/v1/traces";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    /// The OTLP/HTTP collector (`http://collector:4318`); spans are posted as OTLP JSON to
    /// `{otlp_endpoint}/v1/traces` (a URL already ending in `/v1/traces` is used as is).
    /// Absent (the default): tracing off, no `traceparent` work, no spans.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute.
    #[serde(default)]
    pub service_name: Option<String>,
    /// The share of the traces provgate starts (no valid `traceparent` from the client)
    /// that are sampled: exported, and marked sampled for the model server. A client's
    /// `traceparent` keeps its own sampled flag. 0.0 to 1.0; default 1.0.
    #[serde(default)]
    pub sample_ratio: Option<f64>,
    /// Finished spans waiting for export; when full, new spans are dropped and counted
    /// (`provgate_trace_spans_total{outcome="dropped"}`). Default 4096.
    #[serde(default)]
    pub queue: Option<usize>,
    /// Spans per OTLP request at most. Default 512.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// How long a span may wait for its batch to fill. Default `2s`.
    #[serde(default)]
    pub flush_interval: Option<String>,
    /// Connect and total time for one OTLP request. Default `5s`.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// `[tracing]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The full OTLP/HTTP traces URL.
    pub traces_url: String,
    pub service_name: String,
    pub sample_ratio: f64,
    pub queue: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub timeout: Duration,
}

impl TracingFile {
    /// `None` when tracing is off (no endpoint). Problems are pushed to `errors`.
    pub fn validate(&self, errors: &mut Errors) -> Option<Tracing> {
        let given_without_endpoint = [
            ("service_name", self.service_name.is_some()),
            ("sample_ratio", self.sample_ratio.is_some()),
            ("queue", self.queue.is_some()),
            ("batch_size", self.batch_size.is_some()),
            ("flush_interval", self.flush_interval.is_some()),
            ("timeout", self.timeout.is_some()),
        ];
        let Some(endpoint) = self.otlp_endpoint.as_deref().map(str::trim) else {
            for (key, given) in given_without_endpoint {
                if given {
                    errors.push(
                        format_args!("tracing.{key}"),
                        "has no effect without tracing.otlp_endpoint",
                    );
                }
            }
            return None;
        };
        let traces_url = match reqwest::Url::parse(endpoint) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.query().is_none()
                    && u.host().is_some() =>
            {
                let base = endpoint.trim_end_matches('/');
                if base.ends_with(TRACES_PATH) {
                    base.to_string()
                } else {
                    format!("{base}{TRACES_PATH}")
                }
            }
            Ok(_) => {
                errors.push(
                    "tracing.otlp_endpoint",
                    format_args!("{endpoint:?} must be an http or https URL without a query"),
                );
                String::new()
            }
            Err(e) => {
                errors.push("tracing.otlp_endpoint", format_args!("{endpoint:?}: {e}"));
                String::new()
            }
        };
        let service_name = self
            .service_name
            .clone()
            .unwrap_or_else(|| "provgate".to_string());
        errors.nonempty("tracing.service_name", &service_name);
        let sample_ratio = self.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            errors.push("tracing.sample_ratio", "must be between 0.0 and 1.0");
        }
        let queue = self.queue.unwrap_or(4096);
        if queue == 0 {
            errors.push("tracing.queue", "must be at least 1");
        }
        let batch_size = self.batch_size.unwrap_or(512);
        if batch_size == 0 {
            errors.push("tracing.batch_size", "must be at least 1");
        }
        let flush_interval = errors.duration(
            "tracing.flush_interval",
            self.flush_interval.as_deref().unwrap_or("2s"),
        );
        errors.more_than_zero("tracing.flush_interval", flush_interval);
        let timeout = errors.duration("tracing.timeout", self.timeout.as_deref().unwrap_or("5s"));
        errors.more_than_zero("tracing.timeout", timeout);
        // After an error the whole configuration is refused; this value is then unused.
        Some(Tracing {
            traces_url,
            service_name,
            sample_ratio,
            queue,
            batch_size,
            flush_interval,
            timeout,
        })
    }
}
