//! The tracer and its exporter: [`Tracer`] starts spans (a client's `traceparent` kept as
//! the parent, or a new sampled-or-not trace) and queues finished ones without waiting;
//! [`Exporter::run`], a background service, takes them off the bounded queue in batches and
//! posts each batch as one OTLP/HTTP JSON request ([`encode`]).
//!
//! Counts spans in `provgate_trace_spans_total{result}`: `exported`, `dropped` (queue
//! full), `failed` (the collector refused or was unreachable; spans are not retried).
//! Must not import the proxy or read requests.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prometheus::IntCounter;
use tokio::sync::mpsc;

use crate::kit::http::{ClientOptions, FetchError};
use crate::telemetry::Metrics;
use crate::trace::config::Tracing;
use crate::trace::context::{IdSource, TraceParent, SAMPLED};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The span's name.
pub const SPAN_NAME: &str = "provgate.request";

/// OTLP span flags: the parent's remoteness is known (bit 8), and it is remote (bit 9).
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// A request's span as it starts: its IDs, its parent (the client's span, if the client
/// sent a valid `traceparent`), and when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanStart {
    /// The trace ID, this span's ID and the trace flags: what goes to the model server.
    pub context: TraceParent,
    /// The client's span, kept as the parent; `None`: provgate started the trace.
    pub parent: Option<[u8; 8]>,
    pub start_unix_nano: u64,
}

impl SpanStart {
    pub fn sampled(&self) -> bool {
        self.context.sampled()
    }

    /// Edits the model server's request headers: `traceparent` names this span; a
    /// `tracestate` is kept only with the client's own `traceparent` (the recommendation:
    /// without a valid parent, the state is dropped too).
    pub fn propagate(&self, h: &mut HeaderMap) -> Result<(), http::header::MaxSizeReached> {
        if self.parent.is_none() {
            h.remove(TRACESTATE);
        }
        h.try_insert(TRACEPARENT, self.context.header())?;
        Ok(())
    }
}

/// One finished request span, as the exporter encodes it. Attribute values are bounded by
/// the configuration and the records (never a path, a token subject or an error string).
#[derive(Debug, Clone)]
pub struct FinishedSpan {
    pub start: SpanStart,
    pub end_unix_nano: u64,
    pub method: Method,
    /// The door's path pattern (`/v2/models/{m}/infer`), never the request's path.
    pub route: Option<String>,
    /// The status sent to the client; 0 if none was.
    pub status: u16,
    /// `allow`, `deny`, `would_block` (dry-run) or `error` (not decided).
    pub decision: &'static str,
    pub reason: Option<&'static str>,
    pub mode: &'static str,
    pub model: Option<String>,
    pub version_id: Option<Arc<str>>,
    pub record_id: Option<String>,
    pub request_id: HeaderValue,
}

/// The nanoseconds since the Unix epoch, now.
pub fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What the request path holds: span IDs, the sampler, the queue's sending end.
pub struct Tracer {
    ids: IdSource,
    /// Traces provgate starts are sampled when their last 8 ID bytes fall below this
    /// (`None`: never; the ratio as a share of `u64`).
    threshold: Option<u64>,
    queue: mpsc::Sender<FinishedSpan>,
    dropped: IntCounter,
}

impl Tracer {
    /// The tracer and the exporter that drains its queue (to run as a background service).
    pub fn new(config: &Tracing, metrics: &Metrics) -> Result<(Tracer, Exporter), FetchError> {
        let (tx, rx) = mpsc::channel(config.queue);
        let client = crate::kit::http::client(&ClientOptions {
            connect_timeout: config.timeout,
            timeout: config.timeout,
            ca_pem: None,
            user_agent: true,
        })?;
        let threshold = match config.sample_ratio {
            r if r >= 1.0 => Some(u64::MAX),
            r if r <= 0.0 => None,
            // In (0, 1): the product is below u64::MAX; `as` saturates anyway.
            r => Some((r * u64::MAX as f64) as u64),
        };
        let tracer = Tracer {
            ids: IdSource::default(),
            threshold,
            queue: tx,
            dropped: metrics.trace_dropped.clone(),
        };
        let exporter = Exporter {
            queue: rx,
            client,
            url: config.traces_url.clone(),
            resource: resource(&config.service_name),
            batch_size: config.batch_size,
            flush_interval: config.flush_interval,
            exported: metrics.trace_exported.clone(),
            failed: metrics.trace_failed.clone(),
        };
        Ok((tracer, exporter))
    }

    /// Starts a request's span: the client's `traceparent`, when there is exactly one and it
    /// is valid, is the parent (same trace, same flags); otherwise a new trace, sampled by
    /// the configured ratio.
    pub fn start(&self, headers: &HeaderMap) -> SpanStart {
        let start_unix_nano = unix_nanos_now();
        let mut values = headers.get_all(TRACEPARENT).iter();
        let client = match (values.next(), values.next()) {
            (Some(v), None) => TraceParent::parse(v.as_bytes()),
            _ => None,
        };
        let span_id = self.ids.span_id();
        match client {
            Some(parent) => SpanStart {
                context: TraceParent { span_id, ..parent },
                parent: Some(parent.span_id),
                start_unix_nano,
            },
            None => {
                let trace_id = self.ids.trace_id();
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id[8..]);
                let sampled = self
                    .threshold
                    .is_some_and(|t| t == u64::MAX || u64::from_be_bytes(low) < t);
                SpanStart {
                    context: TraceParent {
                        trace_id,
                        span_id,
                        flags: if sampled { SAMPLED } else { 0 },
                    },
                    parent: None,
                    start_unix_nano,
                }
            }
        }
    }

    /// Queues a finished span for export, or drops and counts it when the queue is full
    /// (or the exporter is gone). Never waits.
    pub fn finish(&self, span: FinishedSpan) {
        if self.queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

/// The background half: drains the queue in batches and posts them.
pub struct Exporter {
    queue: mpsc::Receiver<FinishedSpan>,
    client: reqwest::Client,
    url: String,
    resource: Resource,
    batch_size: usize,
    flush_interval: Duration,
    exported: IntCounter,
    failed: IntCounter,
}

impl Exporter {
    /// Runs until every tracer is dropped (or the shutdown drops this future): a batch is
    /// sent when it is full or `flush_interval` after its first span.
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut failing = false;
        loop {
            if self.queue.recv_many(&mut batch, self.batch_size).await == 0 {
                return;
            }
            let deadline = tokio::time::Instant::now() + self.flush_interval;
            while batch.len() < self.batch_size {
                let room = self.batch_size - batch.len();
                match tokio::time::timeout_at(deadline, self.queue.recv_many(&mut batch, room))
                    .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let n = batch.len() as u64;
            match self.post(&batch).await {
                Ok(()) => {
                    self.exported.inc_by(n);
                    if failing {
                        tracing::info!(url = %self.url, "trace export recovered");
                    }
                    failing = false;
                }
                Err(e) => {
                    self.failed.inc_by(n);
                    if !failing {
                        tracing::warn!(error = %e, spans = n, "trace export failed; spans dropped");
                    } else {
                        tracing::debug!(error = %e, spans = n, "trace export failed");
                    }
                    failing = true;
                }
            }
            batch.clear();
        }
    }

    async fn post(&self, batch: &[FinishedSpan]) -> Result<(), FetchError> {
        let body = serde_json::to_vec(&encode(&self.resource, batch))
            .map_err(|e| FetchError::answer(&self.url, e))?;
        let request = self
            .client
            .post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body);
        let resp = crate::kit::http::send(request, &self.url).await?;
        if !resp.status().is_success() {
            return Err(FetchError::Status {
                url: self.url.clone(),
                status: resp.status(),
            });
        }
        Ok(())
    }
}

// === OTLP encoding ===

fn string(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// The resource every span is reported under.
pub fn resource(service_name: &str) -> Resource {
    Resource {
        attributes: vec![
            string("service.name", service_name),
            string("service.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Default::default()
    }
}

/// One OTLP span. Attributes follow the OpenTelemetry HTTP server conventions where they
/// fit (`http.request.method`, `http.route`, `http.response.status_code`); provgate's own
/// are under `provgate.`. The status is `Error` for a 5xx answer or none (as the HTTP
/// server conventions say; a denial is the gate working, not failing), unset otherwise.
pub fn span(s: &FinishedSpan) -> Span {
    let mut attributes = Vec::with_capacity(12);
    attributes.push(string("http.request.method", s.method.as_str()));
    if let Some(route) = &s.route {
        attributes.push(string("http.route", route.as_str()));
    }
    if s.status != 0 {
        attributes.push(int("http.response.status_code", i64::from(s.status)));
    }
    attributes.push(string("provgate.decision", s.decision));
    if let Some(reason) = s.reason {
        attributes.push(string("provgate.reason", reason));
    }
    attributes.push(string("provgate.mode", s.mode));
    if let Some(model) = &s.model {
        attributes.push(string("provgate.model", model.as_str()));
    }
    if let Some(version) = &s.version_id {
        attributes.push(string("provgate.version_id", &**version));
    }
    if let Some(record) = &s.record_id {
        attributes.push(string("provgate.approval_record_id", record.as_str()));
    }
    attributes.push(string(
        "provgate.request_id",
        String::from_utf8_lossy(s.request_id.as_bytes()),
    ));
    let error = s.status == 0 || s.status >= 500;
    let remote = if s.start.parent.is_some() {
        IS_REMOTE
    } else {
        0
    };
    Span {
        trace_id: s.start.context.trace_id.to_vec(),
        span_id: s.start.context.span_id.to_vec(),
        parent_span_id: s.start.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: u32::from(s.start.context.flags) | HAS_IS_REMOTE | remote,
        name: SPAN_NAME.to_string(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: s.start.start_unix_nano,
        end_time_unix_nano: s.end_unix_nano.max(s.start.start_unix_nano),
        attributes,
        status: Some(Status {
            code: if error {
                status::StatusCode::Error as i32
            } else {
                status::StatusCode::Unset as i32
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One OTLP export request for a batch.
pub fn encode(resource: &Resource, batch: &[FinishedSpan]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "provgate".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                spans: batch.iter().map(span).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
