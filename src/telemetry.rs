//! Metrics: every name is a constant here, every metric is registered in [`Metrics::new`],
//! and labels are bounded (decision, reason enum, model, version ID, fixed outcome words).
//! A token subject, a path or an error string is never a label. The request path's counters
//! take their registered family from here and resolve their series beside the request path
//! (`proxy::counters`).
//!
//! Also sets up structured logging (`tracing`, with pingora's `log` records bridged in).

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub mod logline;

pub mod names {
    pub const REQUESTS_TOTAL: &str = "provgate_requests_total";
    pub const REQUEST_DURATION_SECONDS: &str = "provgate_request_duration_seconds";
    pub const DECISION_DURATION_SECONDS: &str = "provgate_decision_duration_seconds";
    pub const TOKEN_CACHE_REQUESTS_TOTAL: &str = "provgate_token_cache_requests_total";
    pub const APPROVAL_CACHE_REQUESTS_TOTAL: &str = "provgate_approval_cache_requests_total";
    pub const TOKEN_VERIFICATIONS_TOTAL: &str = "provgate_token_verifications_total";
    pub const ARTEFACT_STATE: &str = "provgate_artefact_state";
    pub const ARTEFACT_INFO: &str = "provgate_artefact_info";
    pub const ARTEFACT_SIGNATURE: &str = "provgate_artefact_signature";
    pub const ARTEFACT_HASH_DURATION_SECONDS: &str = "provgate_artefact_hash_duration_seconds";
    pub const ARTEFACT_SCRUBS_TOTAL: &str = "provgate_artefact_scrubs_total";
    pub const BACKGROUND_STALLED: &str = "provgate_background_stalled";
    pub const BACKGROUND_PANICS_TOTAL: &str = "provgate_background_panics_total";
    pub const ARTEFACT_HASH_BYTES: &str = "provgate_artefact_hash_bytes";
    pub const APPROVAL_EXPIRY_TIMESTAMP_SECONDS: &str =
        "provgate_approval_expiry_timestamp_seconds";
    pub const EXCEPTION_EXPIRY_TIMESTAMP_SECONDS: &str =
        "provgate_exception_expiry_timestamp_seconds";
    pub const EXCEPTION_REQUESTS_TOTAL: &str = "provgate_exception_requests_total";
    pub const REGISTRY_RECORDS: &str = "provgate_registry_records";
    pub const REGISTRY_REVOKED_IDS: &str = "provgate_registry_revoked_ids";
    pub const REGISTRY_FETCHES_TOTAL: &str = "provgate_registry_fetches_total";
    pub const REGISTRY_FETCH_DURATION_SECONDS: &str = "provgate_registry_fetch_duration_seconds";
    pub const APPROVAL_RECORD_AGE_SECONDS: &str = "provgate_approval_record_age_seconds";
    pub const REGISTRY_SYNC_AGE_SECONDS: &str = "provgate_registry_sync_age_seconds";
    pub const AUDIT_RECORDS_TOTAL: &str = "provgate_audit_records_total";
    pub const AUDIT_WRITE_FAILURES_TOTAL: &str = "provgate_audit_write_failures_total";
    pub const AUDIT_WRITABLE: &str = "provgate_audit_writable";
    pub const AUDIT_ROTATIONS_TOTAL: &str = "provgate_audit_rotations_total";
    pub const AUDIT_CHECKPOINT_RECORDS: &str = "provgate_audit_checkpoint_records";
    pub const AUDIT_CHECKPOINT_HEAD: &str = "provgate_audit_checkpoint_head";
    pub const AUDIT_CHECKPOINT_TIMESTAMP_SECONDS: &str =
        "provgate_audit_checkpoint_timestamp_seconds";
    pub const READY: &str = "provgate_ready";
    pub const HELD_BODY_BYTES: &str = "provgate_held_body_bytes";
    pub const CONNECTIONS_OPEN: &str = "provgate_connections_open";
    pub const CONNECTIONS_REFUSED_TOTAL: &str = "provgate_connections_refused_total";
    pub const CONNECTIONS_TIMED_OUT_TOTAL: &str = "provgate_connections_timed_out_total";
    pub const JWKS_FETCHES_TOTAL: &str = "provgate_jwks_fetches_total";
    pub const JWKS_AGE_SECONDS: &str = "provgate_jwks_age_seconds";
    pub const BUILD_INFO: &str = "provgate_build_info";
    pub const UPSTREAM_PROBES_TOTAL: &str = "provgate_upstream_probes_total";
    pub const UPSTREAM_PROBE_STATE: &str = "provgate_upstream_probe_state";
    pub const TRACE_SPANS_TOTAL: &str = "provgate_trace_spans_total";
    pub const TRUST_RELOADS_TOTAL: &str = "provgate_trust_reloads_total";
}

/// All of provgate's metrics, registered in one registry.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    /// `request_duration` resolved for allow, deny/would_block and error.
    pub duration_allow: Histogram,
    pub duration_deny: Histogram,
    pub duration_error: Histogram,
    pub decision_duration: Histogram,
    pub token_cache_hits: IntCounter,
    pub token_cache_misses: IntCounter,
    pub approval_cache_hits: IntCounter,
    pub approval_cache_misses: IntCounter,
    pub token_verifications: IntCounterVec,
    pub artefact_state: IntGaugeVec,
    pub artefact_info: IntGaugeVec,
    /// `{model, signer, state}`: 1 for the served artefact's OMS signature; `signer` is a
    /// configured signer name or `none` (bounded by configuration).
    pub artefact_signature: IntGaugeVec,
    pub artefact_hash_seconds: Histogram,
    /// Periodic full re-verifications, by model and result (ok, mismatch, skipped, failed).
    pub artefact_scrubs: IntCounterVec,
    /// 1 for a background service whose heartbeat is older than its bound.
    pub background_stalled: IntGaugeVec,
    /// Panics caught in a background service, by the service's static kind
    /// (`kit::service::OnPanic`); the service failed closed and restarted after a backoff.
    pub background_panics: IntCounterVec,
    /// Per model, `kind` = `done` | `total`: bytes of the hash in progress (or the last one).
    pub artefact_hash_bytes: IntGaugeVec,
    pub approval_expiry: GaugeVec,
    /// The earliest expiry among the exceptions in force for the served record.
    pub exception_expiry: GaugeVec,
    /// Requests allowed only under an exception, by model and version ID.
    pub exception_requests: IntCounterVec,
    pub registry_records_valid: IntGauge,
    pub registry_records_invalid: IntGauge,
    pub registry_revoked_ids: IntGauge,
    pub registry_fetches: IntCounterVec,
    pub registry_fetch_duration: HistogramVec,
    pub registry_sync_age: Gauge,
    pub approval_record_age: GaugeVec,
    pub audit_written: IntCounter,
    pub audit_summarised: IntCounter,
    pub audit_failed: IntCounter,
    pub audit_write_failures: IntCounter,
    pub audit_writable: IntGauge,
    pub audit_rotations: IntCounter,
    pub audit_checkpoint_records: IntGauge,
    pub audit_checkpoint_head: IntGauge,
    pub audit_checkpoint_time: Gauge,
    pub ready: IntGauge,
    pub held_body_bytes: IntGauge,
    /// Client connections open on the proxy listener.
    pub connections_open: IntGauge,
    /// Connections closed at once by a limit (`total`, `client`).
    pub connections_refused: IntCounterVec,
    /// Connections cut waiting for a request's headers (`headers`, `idle`).
    pub connections_timed_out: IntCounterVec,
    pub jwks_fetches: IntCounterVec,
    pub jwks_age: GaugeVec,
    pub upstream_probes: IntCounterVec,
    pub upstream_probe_state: IntGaugeVec,
    /// `provgate_trace_spans_total` by result: exported, dropped (queue full), failed.
    pub trace_exported: IntCounter,
    pub trace_dropped: IntCounter,
    pub trace_failed: IntCounter,
    /// Trust reloads by what (approver_keys, issuer_keys) and result (ok, error).
    pub trust_reloads: IntCounterVec,
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.5, 2.5,
];

impl Metrics {
    pub fn new() -> Metrics {
        Self::with_mode(true)
    }

    /// Metrics for a sidecar in enforce (`true`) or dry-run mode.
    // `reg!` expects: the invariant is named there (clippy does not see into the macro).
    #[allow(clippy::expect_used)]
    pub fn with_mode(enforce: bool) -> Metrics {
        let registry = Registry::new();
        // Registration fails only on a duplicate name or a malformed descriptor, which the
        // constants above rule out; the unit test below registers them all.
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric descriptor is valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        use names::*;
        let requests = reg!(IntCounterVec::new(
            Opts::new(REQUESTS_TOTAL, "Requests by decision (allow, deny, would_block), deny reason, model and approved version ID."),
            &["decision", "reason", "model", "version_id"]
        ));
        let request_duration = reg!(HistogramVec::new(
            HistogramOpts::new(
                REQUEST_DURATION_SECONDS,
                "Time from request start to the end of the response, by decision."
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["decision"]
        ));
        let decision_duration = reg!(Histogram::with_opts(
            HistogramOpts::new(
                DECISION_DURATION_SECONDS,
                "Time spent deciding one request (token, artefact, approval, policy)."
            )
            .buckets(LATENCY_BUCKETS.to_vec())
        ));
        let token_cache = reg!(IntCounterVec::new(
            Opts::new(
                TOKEN_CACHE_REQUESTS_TOTAL,
                "Verified-token cache lookups by result (hit, miss)."
            ),
            &["result"]
        ));
        let approval_cache = reg!(IntCounterVec::new(
            Opts::new(
                APPROVAL_CACHE_REQUESTS_TOTAL,
                "Approval cache lookups by result (hit, miss)."
            ),
            &["result"]
        ));
        let token_verifications = reg!(IntCounterVec::new(
            Opts::new(
                TOKEN_VERIFICATIONS_TOTAL,
                "Uncached token verifications by outcome."
            ),
            &["outcome"]
        ));
        let artefact_state = reg!(IntGaugeVec::new(
            Opts::new(
                ARTEFACT_STATE,
                "1 for the served artefact's current state (pending, hashing, ready, failed)."
            ),
            &["model", "state"]
        ));
        let artefact_info = reg!(IntGaugeVec::new(
            Opts::new(
                ARTEFACT_INFO,
                "1, labelled with the served artefact's current digest."
            ),
            &["model", "digest"]
        ));
        let artefact_signature = reg!(IntGaugeVec::new(
            Opts::new(
                ARTEFACT_SIGNATURE,
                "1 for the served artefact's OMS signature: state (absent, valid, invalid) and the configured signer that made it (none unless valid)."
            ),
            &["model", "signer", "state"]
        ));
        let artefact_hash_seconds = reg!(Histogram::with_opts(
            HistogramOpts::new(
                ARTEFACT_HASH_DURATION_SECONDS,
                "Time to hash the model directory."
            )
            .buckets(vec![0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0])
        ));
        let artefact_scrubs = reg!(IntCounterVec::new(
            Opts::new(
                ARTEFACT_SCRUBS_TOTAL,
                "Full re-verifications of the served files by model and result (ok, mismatch: content changed without a metadata change, skipped: a change raced the scrub, failed)."
            ),
            &["model", "result"]
        ));
        let background_stalled = reg!(IntGaugeVec::new(
            Opts::new(
                BACKGROUND_STALLED,
                "1 for a background service (artefact, registry, keys, probe) that has made no progress within its bound."
            ),
            &["service"]
        ));
        let background_panics = reg!(IntCounterVec::new(
            Opts::new(
                BACKGROUND_PANICS_TOTAL,
                "Panics caught in a background service by kind (artefact, scrub, hasher, registry, issuer keys, probe, trust reload, workload identity, trace exporter, audit writer); the service failed closed and restarted after a backoff."
            ),
            &["service"]
        ));
        let artefact_hash_bytes = reg!(IntGaugeVec::new(
            Opts::new(
                ARTEFACT_HASH_BYTES,
                "Bytes of the model directory's current (or last) hash: read so far (kind=done) and to read (kind=total); files whose digests were reused are in neither."
            ),
            &["model", "kind"]
        ));
        let approval_expiry = reg!(GaugeVec::new(
            Opts::new(
                APPROVAL_EXPIRY_TIMESTAMP_SECONDS,
                "Expiry (Unix seconds) of the approval record in force for the served artefact."
            ),
            &["model", "version_id"]
        ));
        let exception_expiry = reg!(GaugeVec::new(
            Opts::new(
                EXCEPTION_EXPIRY_TIMESTAMP_SECONDS,
                "Earliest expiry (Unix seconds) among the signed exceptions in force for the served artefact's record."
            ),
            &["model", "version_id"]
        ));
        let exception_requests = reg!(IntCounterVec::new(
            Opts::new(
                EXCEPTION_REQUESTS_TOTAL,
                "Requests allowed only under a signed exception (also counted as decision=allow in provgate_requests_total)."
            ),
            &["model", "version_id"]
        ));
        let registry_records = reg!(IntGaugeVec::new(
            Opts::new(
                REGISTRY_RECORDS,
                "Approval records loaded, by state (valid, invalid)."
            ),
            &["state"]
        ));
        let registry_revoked_ids = reg!(IntGauge::new(
            REGISTRY_REVOKED_IDS,
            "Record IDs on the revocation list."
        ));
        let registry_fetches = reg!(IntCounterVec::new(
            Opts::new(
                REGISTRY_FETCHES_TOTAL,
                "Registry reads by backend (dir, mlflow, http) and result (ok, not_modified, not_found, revoked: an HTTP 410, error)."
            ),
            &["backend", "result"]
        ));
        let registry_fetch_duration = reg!(HistogramVec::new(
            HistogramOpts::new(
                REGISTRY_FETCH_DURATION_SECONDS,
                "Time one registry read took, by backend."
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
            ]),
            &["backend"]
        ));
        let registry_sync_age = reg!(Gauge::new(
            REGISTRY_SYNC_AGE_SECONDS,
            "Seconds since the registry was last read successfully."
        ));
        let approval_record_age = reg!(GaugeVec::new(
            Opts::new(
                APPROVAL_RECORD_AGE_SECONDS,
                "Seconds since the approval record in force for the served artefact was issued (iat)."
            ),
            &["model", "version_id"]
        ));
        let audit = reg!(IntCounterVec::new(
            Opts::new(
                AUDIT_RECORDS_TOTAL,
                "Audit records by result (written; summarised: counted into a summary record because the queue was full or the log unwritable; failed: not serialisable or the writer gone)."
            ),
            &["result"]
        ));
        let trace_spans = reg!(IntCounterVec::new(
            Opts::new(
                TRACE_SPANS_TOTAL,
                "Request spans by result (exported; dropped: export queue full; failed: the OTLP collector refused or was unreachable)."
            ),
            &["result"]
        ));
        let audit_write_failures = reg!(IntCounter::new(
            AUDIT_WRITE_FAILURES_TOTAL,
            "Audit log writes that failed (disk full, unwritable)."
        ));
        let audit_writable = reg!(IntGauge::new(
            AUDIT_WRITABLE,
            "1 while the audit log can be written, 0 while writes fail (alert on 0)."
        ));
        let audit_rotations = reg!(IntCounter::new(
            AUDIT_ROTATIONS_TOTAL,
            "Audit log segments rotated (by size or age)."
        ));
        let audit_checkpoint_records = reg!(IntGauge::new(
            AUDIT_CHECKPOINT_RECORDS,
            "The audit chain's count (seq of its last record) at the latest checkpoint."
        ));
        let audit_checkpoint_head = reg!(IntGauge::new(
            AUDIT_CHECKPOINT_HEAD,
            "The first 48 bits of the audit chain's head hash at the latest checkpoint, as a number."
        ));
        let audit_checkpoint_time = reg!(Gauge::new(
            AUDIT_CHECKPOINT_TIMESTAMP_SECONDS,
            "Unix time of the latest audit checkpoint."
        ));
        let ready = reg!(IntGauge::new(
            READY,
            "1 when the sidecar has finished its first sync."
        ));
        let held_body_bytes = reg!(IntGauge::new(
            HELD_BODY_BYTES,
            "Request body bytes reserved right now by bodies held back until their model is checked."
        ));
        let connections_open = reg!(IntGauge::new(
            CONNECTIONS_OPEN,
            "Client connections open on the proxy listener."
        ));
        let connections_refused = reg!(IntCounterVec::new(
            Opts::new(
                CONNECTIONS_REFUSED_TOTAL,
                "Client connections refused by a limit (total, client)."
            ),
            &["limit"]
        ));
        let connections_timed_out = reg!(IntCounterVec::new(
            Opts::new(
                CONNECTIONS_TIMED_OUT_TOTAL,
                "Client connections closed waiting for request headers (headers: the first request's, idle: the next one's)."
            ),
            &["wait"]
        ));
        let jwks_fetches = reg!(IntCounterVec::new(
            Opts::new(
                JWKS_FETCHES_TOTAL,
                "Remote issuer key fetches by issuer and result (ok, error)."
            ),
            &["issuer", "result"]
        ));
        let jwks_age = reg!(GaugeVec::new(
            Opts::new(
                JWKS_AGE_SECONDS,
                "Seconds since each remote issuer's keys were last fetched successfully."
            ),
            &["issuer"]
        ));
        let upstream_probes = reg!(IntCounterVec::new(
            Opts::new(
                UPSTREAM_PROBES_TOTAL,
                "Model-server probe answers per model, by probe kind and result (serving, not_serving, unreachable)."
            ),
            &["kind", "result"]
        ));
        let upstream_probe_state = reg!(IntGaugeVec::new(
            Opts::new(
                UPSTREAM_PROBE_STATE,
                "1 for each configured model's current probe state (pending, serving, not_serving, unreachable)."
            ),
            &["model", "state"]
        ));
        let trust_reloads = reg!(IntCounterVec::new(
            Opts::new(
                TRUST_RELOADS_TOTAL,
                "Re-reads of trust files (on change or SIGHUP) by what (approver_keys, issuer_keys) and result (ok, error: the previous state is kept)."
            ),
            &["what", "result"]
        ));
        let build_info = reg!(IntGaugeVec::new(
            Opts::new(BUILD_INFO, "1, labelled with the provgate version."),
            &["version"]
        ));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        Metrics {
            duration_allow: request_duration.with_label_values(&["allow"]),
            duration_deny: request_duration.with_label_values(&[if enforce {
                "deny"
            } else {
                "would_block"
            }]),
            duration_error: request_duration.with_label_values(&["error"]),
            token_cache_hits: token_cache.with_label_values(&["hit"]),
            token_cache_misses: token_cache.with_label_values(&["miss"]),
            approval_cache_hits: approval_cache.with_label_values(&["hit"]),
            approval_cache_misses: approval_cache.with_label_values(&["miss"]),
            registry_records_valid: registry_records.with_label_values(&["valid"]),
            registry_records_invalid: registry_records.with_label_values(&["invalid"]),
            audit_written: audit.with_label_values(&["written"]),
            audit_summarised: audit.with_label_values(&["summarised"]),
            audit_failed: audit.with_label_values(&["failed"]),
            trace_exported: trace_spans.with_label_values(&["exported"]),
            trace_dropped: trace_spans.with_label_values(&["dropped"]),
            trace_failed: trace_spans.with_label_values(&["failed"]),
            audit_write_failures,
            audit_writable,
            audit_rotations,
            audit_checkpoint_records,
            audit_checkpoint_head,
            audit_checkpoint_time,
            registry,
            requests,
            request_duration,
            decision_duration,
            token_verifications,
            artefact_state,
            artefact_info,
            artefact_signature,
            artefact_hash_seconds,
            artefact_scrubs,
            background_stalled,
            background_panics,
            artefact_hash_bytes,
            approval_expiry,
            exception_expiry,
            exception_requests,
            registry_revoked_ids,
            registry_fetches,
            registry_fetch_duration,
            registry_sync_age,
            approval_record_age,
            ready,
            held_body_bytes,
            connections_open,
            connections_refused,
            connections_timed_out,
            jwks_fetches,
            jwks_age,
            upstream_probes,
            upstream_probe_state,
            trust_reloads,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Installs the global `tracing` subscriber (JSON or text lines on stderr) and bridges the
/// `log` records pingora emits. `RUST_LOG` overrides `level`.
pub fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        // Field values escaped: nothing from outside can start a new line.
        builder.fmt_fields(logline::EscapedFields).try_init()
    };
}
