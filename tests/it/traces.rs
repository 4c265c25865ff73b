//! Traces (`[tracing]`): a client's `traceparent` reaches the model server with provgate's
//! span as the parent's child, a malformed one is replaced, and each request's span reaches
//! an OTLP/HTTP receiver (hyper on 127.0.0.1:0) with the decision's attributes. Without
//! `[tracing]`, trace headers pass untouched.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::support::*;

/// The W3C recommendation's example `traceparent`.
const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver: keeps every span posted as JSON to `/v1/traces`.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<serde_json::Value>>>,
    content_types: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        Receiver::answering(200, Duration::ZERO).await
    }

    /// A receiver that answers `status` after `delay` (a failing or stalled collector).
    async fn answering(status: u16, delay: Duration) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let content_types = Arc::new(Mutex::new(Vec::new()));
        let (s, c) = (spans.clone(), content_types.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, c) = (s.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (s, c) = (s.clone(), c.clone());
                            async move {
                                let ok = req.method() == hyper::Method::POST
                                    && req.uri().path() == "/v1/traces";
                                tokio::time::sleep(delay).await;
                                c.lock().unwrap().push(
                                    req.headers()
                                        .get("content-type")
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or_default()
                                        .to_string(),
                                );
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let doc: serde_json::Value =
                                    serde_json::from_slice(&body).unwrap_or_default();
                                for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
                                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                                        for span in ss["spans"].as_array().into_iter().flatten() {
                                            let mut span = span.clone();
                                            span["resource"] = rs["resource"].clone();
                                            s.lock().unwrap().push(span);
                                        }
                                    }
                                }
                                Ok::<_, Infallible>(
                                    hyper::Response::builder()
                                        .status(if ok { status } else { 404 })
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from_static(b"{}")))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            spans,
            content_types,
            task,
        }
    }

    /// Waits for the span whose `provgate.request_id` is `id`.
    async fn span(&self, id: &str) -> serde_json::Value {
        for _ in 0..250 {
            if let Some(s) =
                self.spans.lock().unwrap().iter().find(|s| {
                    attributes(s).get("provgate.request_id").map(String::as_str) == Some(id)
                })
            {
                return s.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "no span for request {id}; received: {:?}",
            self.spans.lock().unwrap()
        );
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A span's attributes as strings (OTLP JSON writes integers as strings too).
fn attributes(span: &serde_json::Value) -> BTreeMap<String, String> {
    span["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            let v = &kv["value"];
            let text = v["stringValue"]
                .as_str()
                .or(v["intValue"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            (kv["key"].as_str().unwrap().to_string(), text)
        })
        .collect()
}

/// The `traceparent` the upstream saw on its last request: (trace ID, span ID, flags).
fn upstream_traceparent(up: &Upstream) -> (String, String, String) {
    let seen = up.requests();
    let last = seen.last().expect("the upstream saw no request");
    let all: Vec<_> = last.headers.get_all("traceparent").iter().collect();
    assert_eq!(all.len(), 1, "{:?}", last.headers);
    let parts: Vec<String> = all[0]
        .to_str()
        .unwrap()
        .split('-')
        .map(str::to_string)
        .collect();
    assert_eq!(parts.len(), 4, "{parts:?}");
    assert_eq!(parts[0], "00");
    (parts[1].clone(), parts[2].clone(), parts[3].clone())
}

async fn traced(receiver: &Receiver) -> (Fixture, Upstream, Provgate) {
    traced_with(receiver, "").await
}

/// provgate exporting to `receiver`, with more `[tracing]` keys.
async fn traced_with(receiver: &Receiver, keys: &str) -> (Fixture, Upstream, Provgate) {
    let mut fx = Fixture::new();
    fx.extra = format!(
        "[tracing]\notlp_endpoint = \"http://{}\"\nservice_name = \"provgate-test\"\nflush_interval = \"50ms\"\n{keys}\n",
        receiver.addr
    );
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;
    (fx, up, pg)
}

fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_client_trace_reaches_the_model_server_and_the_collector() {
    let receiver = Receiver::start().await;
    let (fx, up, pg) = traced(&receiver).await;
    let resp = pg
        .client
        .get(pg.url(&format!("/v2/models/{MODEL}")))
        .bearer_auth(fx.token(CALLER))
        .header("traceparent", CLIENT)
        .header("tracestate", "vendor=opaque")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", pg.logs());
    let id = request_id(&resp);

    // The model server: the client's trace, provgate's span as the parent, state kept.
    let (trace, parent, flags) = upstream_traceparent(&up);
    assert_eq!(trace, CLIENT_TRACE);
    assert_ne!(parent, CLIENT_SPAN);
    assert_eq!(flags, "01");
    let seen = up.requests();
    assert_eq!(seen.last().unwrap().headers["tracestate"], "vendor=opaque");

    // The collector: one server span, the client's span as its parent, the span the
    // model server was told about.
    let span = receiver.span(&id).await;
    assert_eq!(span["traceId"], CLIENT_TRACE);
    assert_eq!(span["parentSpanId"], CLIENT_SPAN);
    assert_eq!(span["spanId"], parent.as_str());
    assert_eq!(span["name"], "provgate.request");
    assert_eq!(span["kind"], 2, "SPAN_KIND_SERVER");
    let start: u64 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u64 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start > 0 && end >= start, "{span}");
    let a = attributes(&span);
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["http.route"], "/v2/models/{m}");
    assert_eq!(a["http.response.status_code"], "200");
    assert_eq!(a["provgate.decision"], "allow");
    assert_eq!(a["provgate.model"], MODEL);
    assert_eq!(a["provgate.version_id"], "v42");
    assert_eq!(a["provgate.approval_record_id"], "rec-1");
    assert_eq!(a["provgate.mode"], "enforce");
    assert!(!a.contains_key("provgate.reason"));
    // Nothing from the request itself: no raw path, no caller.
    let text = span.to_string();
    assert!(!text.contains(CALLER), "{text}");
    let resource = attributes(&span["resource"]);
    assert_eq!(resource["service.name"], "provgate-test");
    assert!(receiver
        .content_types
        .lock()
        .unwrap()
        .iter()
        .all(|c| c == "application/json"));
    pg.eventually(Duration::from_secs(5), || async {
        pg.metric("provgate_trace_spans_total{result=\"exported\"}")
            .await
            >= 1.0
    })
    .await;
    assert_eq!(
        pg.metric("provgate_trace_spans_total{result=\"dropped\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_malformed_traceparent_is_replaced_and_its_state_dropped() {
    let receiver = Receiver::start().await;
    let (fx, up, pg) = traced(&receiver).await;
    // Uppercase hex: invalid by the recommendation.
    let malformed = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
    let resp = pg
        .client
        .get(pg.url(&format!("/v2/models/{MODEL}")))
        .bearer_auth(fx.token(CALLER))
        .header("traceparent", malformed)
        .header("tracestate", "vendor=opaque")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", pg.logs());
    let id = request_id(&resp);
    let (trace, parent, flags) = upstream_traceparent(&up);
    assert_ne!(trace.to_uppercase(), CLIENT_TRACE.to_uppercase());
    assert_eq!(trace.len(), 32);
    assert_eq!(flags, "01", "sample_ratio defaults to 1.0");
    assert!(up
        .requests()
        .last()
        .unwrap()
        .headers
        .get("tracestate")
        .is_none());
    let span = receiver.span(&id).await;
    assert_eq!(span["traceId"], trace.as_str());
    assert_eq!(span["spanId"], parent.as_str());
    assert!(
        span.get("parentSpanId").is_none() || span["parentSpanId"] == "",
        "{span}"
    );
}

#[tokio::test]
async fn a_denied_request_has_its_span_with_the_reason() {
    let receiver = Receiver::start().await;
    let (_fx, up, pg) = traced(&receiver).await;
    let before = up.requests().len();
    let resp = pg
        .client
        .post(pg.url(&format!("/v2/models/{MODEL}/infer")))
        .header("traceparent", CLIENT)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    let id = body["request_id"].as_str().unwrap().to_string();
    assert_eq!(
        up.requests().len(),
        before,
        "a denial never reaches the model server"
    );
    let span = receiver.span(&id).await;
    assert_eq!(span["traceId"], CLIENT_TRACE);
    let a = attributes(&span);
    assert_eq!(a["provgate.decision"], "deny");
    assert_eq!(a["provgate.reason"], "token_missing");
    assert_eq!(a["http.response.status_code"], "401");
    assert_eq!(a["http.route"], "/v2/models/{m}/infer");
    assert!(!a.contains_key("provgate.version_id"));
}

#[tokio::test]
async fn without_tracing_trace_headers_pass_untouched() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;
    let malformed = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
    for tp in [CLIENT, malformed] {
        let resp = pg
            .client
            .get(pg.url(&format!("/v2/models/{MODEL}")))
            .bearer_auth(fx.token(CALLER))
            .header("traceparent", tp)
            .header("tracestate", "vendor=opaque")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen = up.requests();
        let h = &seen.last().unwrap().headers;
        assert_eq!(h["traceparent"], tp);
        assert_eq!(h["tracestate"], "vendor=opaque");
    }
    assert_eq!(
        pg.metric("provgate_trace_spans_total{result=\"exported\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_stalled_collector_costs_dropped_spans_not_requests() {
    // The collector holds each post for 20 s: one span in flight, one queued, the rest
    // dropped and counted, while requests keep being answered at once.
    let receiver = Receiver::answering(200, Duration::from_secs(20)).await;
    let (fx, _up, pg) =
        traced_with(&receiver, "queue = 1\nbatch_size = 1\ntimeout = \"30s\"").await;
    let token = fx.token(CALLER);
    let started = std::time::Instant::now();
    for _ in 0..6 {
        let resp = pg
            .client
            .get(pg.url(&format!("/v2/models/{MODEL}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "requests waited on the collector: {:?}",
        started.elapsed()
    );
    let dropped = pg
        .metric("provgate_trace_spans_total{result=\"dropped\"}")
        .await;
    assert!(dropped >= 3.0, "dropped {dropped}\n{}", pg.metrics().await);
    assert_eq!(
        pg.metric("provgate_trace_spans_total{result=\"exported\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_refusing_collector_is_counted_as_failed() {
    let receiver = Receiver::answering(503, Duration::ZERO).await;
    let (fx, _up, pg) = traced(&receiver).await;
    let resp = pg
        .get(&format!("/v2/models/{MODEL}"), Some(&fx.token(CALLER)))
        .await;
    assert_eq!(resp.status(), 200);
    pg.eventually(Duration::from_secs(5), || async {
        pg.metric("provgate_trace_spans_total{result=\"failed\"}")
            .await
            >= 1.0
    })
    .await;
    assert!(pg.logs().contains("trace export failed"), "{}", pg.logs());
}
