use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use super::config::{Tracing, TracingFile};
use super::context::{IdSource, TraceParent};
use super::export::{encode, resource, FinishedSpan, Tracer, TRACEPARENT, TRACESTATE};
use crate::fields::Errors;
use crate::telemetry::Metrics;

/// The recommendation's own example.
const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn parses_the_recommendations_example() {
    let tp = TraceParent::parse(EXAMPLE.as_bytes()).unwrap();
    assert_eq!(hex::encode(tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex::encode(tp.span_id), "00f067aa0ba902b7");
    assert_eq!(tp.flags, 1);
    assert!(tp.sampled());
    assert_eq!(tp.header(), EXAMPLE);
}

#[test]
fn refuses_what_the_recommendation_calls_invalid() {
    let cases = [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
    ];
    for case in cases {
        assert_eq!(TraceParent::parse(case.as_bytes()), None, "{case:?}");
    }
}

#[test]
fn a_later_version_is_read_for_its_first_four_fields_and_sent_as_version_00() {
    let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
    let tp = TraceParent::parse(later.as_bytes()).unwrap();
    assert_eq!(tp.header(), EXAMPLE);
    let exact = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert!(TraceParent::parse(exact.as_bytes()).is_some());
}

#[test]
fn ids_are_distinct_and_never_zero() {
    let ids = IdSource::default();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10_000 {
        let t = ids.trace_id();
        assert_ne!(t, [0; 16]);
        assert!(seen.insert(t));
        assert_ne!(ids.span_id(), [0; 8]);
    }
}

fn config(ratio: f64, queue: usize) -> Tracing {
    Tracing {
        traces_url: "http://127.0.0.1:9/v1/traces".into(),
        service_name: "provgate".into(),
        sample_ratio: ratio,
        queue,
        batch_size: 8,
        flush_interval: Duration::from_millis(10),
        timeout: Duration::from_secs(1),
    }
}

fn validate(toml_text: &str) -> (Option<Tracing>, Vec<String>) {
    let file: TracingFile = toml::from_str(toml_text).unwrap();
    let mut errors = Errors::new();
    let t = file.validate(&mut errors);
    (t, errors.into_messages())
}

#[test]
fn tracing_is_off_without_an_endpoint_and_says_so_for_stray_keys() {
    assert_eq!(validate(""), (None, vec![]));
    let (t, errors) = validate("sample_ratio = 0.5\nqueue = 3");
    assert_eq!(t, None);
    assert_eq!(
        errors,
        [
            "tracing.sample_ratio: has no effect without tracing.otlp_endpoint",
            "tracing.queue: has no effect without tracing.otlp_endpoint",
        ]
    );
}

#[test]
fn the_endpoint_gets_the_otlp_traces_path_once() {
    let (t, errors) = validate(r#"otlp_endpoint = "http://collector:4318/""#);
    assert!(errors.is_empty(), "{errors:?}");
    let t = t.unwrap();
    assert_eq!(t.traces_url, "http://collector:4318/v1/traces");
    assert_eq!((t.sample_ratio, t.queue, t.batch_size), (1.0, 4096, 512));
    assert_eq!(t.service_name, "provgate");
    let (t, _) = validate(r#"otlp_endpoint = "https://c.example/otlp/v1/traces""#);
    assert_eq!(t.unwrap().traces_url, "https://c.example/otlp/v1/traces");
}

#[test]
fn bad_values_are_reported_together() {
    let (_, errors) = validate(
        r#"otlp_endpoint = "ftp://x"
sample_ratio = 1.5
queue = 0
batch_size = 0
flush_interval = "0s"
timeout = "soon""#,
    );
    let keys: Vec<&str> = errors
        .iter()
        .map(|e| e.split(':').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "tracing.otlp_endpoint",
            "tracing.sample_ratio",
            "tracing.queue",
            "tracing.batch_size",
            "tracing.flush_interval",
            "tracing.timeout",
        ],
        "{errors:?}"
    );
}

fn headers(pairs: &[(&http::HeaderName, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn a_valid_client_traceparent_is_the_parent_and_its_state_is_kept() {
    let metrics = Metrics::new();
    let (tracer, _exporter) = Tracer::new(&config(0.0, 4), &metrics).unwrap();
    let client = headers(&[(&TRACEPARENT, EXAMPLE), (&TRACESTATE, "vendor=x")]);
    let span = tracer.start(&client);
    let parent = TraceParent::parse(EXAMPLE.as_bytes()).unwrap();
    assert_eq!(span.context.trace_id, parent.trace_id);
    assert_eq!(span.parent, Some(parent.span_id));
    assert_ne!(span.context.span_id, parent.span_id);
    // The client's sampled flag wins over a ratio of 0.
    assert!(span.sampled());
    let mut upstream = client.clone();
    span.propagate(&mut upstream).unwrap();
    assert_eq!(upstream.get_all(TRACEPARENT).iter().count(), 1);
    assert_eq!(
        upstream[TRACEPARENT],
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            hex::encode(span.context.span_id)
        )
    );
    assert_eq!(upstream[TRACESTATE], "vendor=x");
}

#[test]
fn an_invalid_or_repeated_traceparent_starts_a_new_trace_without_its_state() {
    let metrics = Metrics::new();
    let (tracer, _exporter) = Tracer::new(&config(1.0, 4), &metrics).unwrap();
    let bad = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
    for client in [
        headers(&[(&TRACEPARENT, bad), (&TRACESTATE, "vendor=x")]),
        headers(&[
            (&TRACEPARENT, EXAMPLE),
            (&TRACEPARENT, EXAMPLE),
            (&TRACESTATE, "vendor=x"),
        ]),
    ] {
        let span = tracer.start(&client);
        assert_eq!(span.parent, None);
        assert_ne!(hex::encode(span.context.trace_id), &EXAMPLE[3..35]);
        assert!(span.sampled(), "ratio 1.0 samples every new trace");
        let mut upstream = client.clone();
        span.propagate(&mut upstream).unwrap();
        assert_eq!(upstream.get_all(TRACEPARENT).iter().count(), 1);
        assert_eq!(upstream[TRACEPARENT], span.context.header());
        assert!(upstream.get(TRACESTATE).is_none());
    }
}

#[test]
fn the_sample_ratio_decides_for_new_traces() {
    let metrics = Metrics::new();
    let count = |ratio: f64| {
        let (tracer, _exporter) = Tracer::new(&config(ratio, 4), &metrics).unwrap();
        (0..2000)
            .filter(|_| tracer.start(&HeaderMap::new()).sampled())
            .count()
    };
    assert_eq!(count(0.0), 0);
    assert_eq!(count(1.0), 2000);
    let half = count(0.5);
    assert!((800..1200).contains(&half), "{half}");
}

fn finished(tracer: &Tracer) -> FinishedSpan {
    let client = headers(&[(&TRACEPARENT, EXAMPLE)]);
    FinishedSpan {
        start: tracer.start(&client),
        end_unix_nano: u64::MAX / 2,
        method: http::Method::POST,
        route: Some("/v2/models/{m}/infer".into()),
        status: 200,
        decision: "allow",
        reason: None,
        mode: "enforce",
        model: Some("m".into()),
        version_id: Some("v42".into()),
        record_id: Some("rec-1".into()),
        request_id: HeaderValue::from_static("abc"),
    }
}

#[test]
fn a_full_queue_drops_and_counts_without_waiting() {
    let metrics = Metrics::new();
    let (tracer, _exporter) = Tracer::new(&config(1.0, 2), &metrics).unwrap();
    for _ in 0..5 {
        tracer.finish(finished(&tracer));
    }
    assert_eq!(metrics.trace_dropped.get(), 3);
}

#[test]
fn spans_encode_as_otlp_json() {
    let metrics = Metrics::new();
    let (tracer, _exporter) = Tracer::new(&config(1.0, 2), &metrics).unwrap();
    let mut deny = finished(&tracer);
    deny.decision = "deny";
    deny.reason = Some("caller_not_allowed");
    deny.status = 403;
    deny.version_id = None;
    deny.record_id = None;
    let allow = finished(&tracer);
    let json = serde_json::to_value(encode(&resource("svc"), &[allow.clone(), deny])).unwrap();
    let rs = &json["resourceSpans"][0];
    assert_eq!(
        rs["resource"]["attributes"][0],
        serde_json::json!({"key": "service.name", "value": {"stringValue": "svc"}})
    );
    assert_eq!(rs["scopeSpans"][0]["scope"]["name"], "provgate");
    let spans = &rs["scopeSpans"][0]["spans"];
    let s = &spans[0];
    assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(s["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(s["spanId"], hex::encode(allow.start.context.span_id));
    assert_eq!(s["name"], "provgate.request");
    assert_eq!(s["kind"], 2, "SPAN_KIND_SERVER");
    assert_eq!(s["flags"], 0x301, "sampled, with a remote parent");
    assert_eq!(
        s["startTimeUnixNano"],
        allow.start.start_unix_nano.to_string()
    );
    assert_eq!(s["endTimeUnixNano"], (u64::MAX / 2).to_string());
    let attrs: std::collections::BTreeMap<String, serde_json::Value> = s["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| (kv["key"].as_str().unwrap().to_string(), kv["value"].clone()))
        .collect();
    let str_attr = |k: &str| attrs[k]["stringValue"].as_str().unwrap().to_string();
    assert_eq!(str_attr("http.request.method"), "POST");
    assert_eq!(str_attr("http.route"), "/v2/models/{m}/infer");
    assert_eq!(attrs["http.response.status_code"]["intValue"], "200");
    assert_eq!(str_attr("provgate.decision"), "allow");
    assert_eq!(str_attr("provgate.model"), "m");
    assert_eq!(str_attr("provgate.version_id"), "v42");
    assert_eq!(str_attr("provgate.approval_record_id"), "rec-1");
    assert_eq!(str_attr("provgate.request_id"), "abc");
    assert!(!attrs.contains_key("provgate.reason"));
    assert_eq!(s["status"]["code"].as_i64().unwrap_or(0), 0, "unset");
    let d = &spans[1];
    let keys: Vec<&str> = d["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| kv["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&"provgate.reason"));
    assert!(!keys.contains(&"provgate.version_id"));
}

#[test]
fn a_server_error_or_no_answer_is_an_error_status() {
    let metrics = Metrics::new();
    let (tracer, _exporter) = Tracer::new(&config(1.0, 2), &metrics).unwrap();
    for (status, code) in [(502u16, 2), (0, 2), (403, 0), (200, 0)] {
        let mut s = finished(&tracer);
        s.status = status;
        let span = super::export::span(&s);
        assert_eq!(span.status.unwrap().code, code, "{status}");
    }
}
