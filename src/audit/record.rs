//! The records of the audit log and their bounds: the request event, and the records the
//! writer adds to keep the chain whole (segment start, checkpoint, summary, pruned segment).
//!
//! Owns the per-field length bounds and the cut marker, and so the guarantee that no request
//! can make a line longer than [`MAX_LINE_BYTES`]. Every line carries `seq` and `prev` (the
//! SHA-256 of the previous line's bytes). It does no I/O and knows nothing of files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The `prev` of the first line of a log, and of a segment whose predecessor's end could
/// not be read.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// No line the writer produces is longer than this many bytes (without its newline). The
/// field bounds below keep every event under it even when each byte is escaped to six
/// (`\u00XX`); [`encode_line`] enforces it for whatever else.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Per-field bounds, in bytes of UTF-8 before JSON escaping. A longer value is cut on a
/// character boundary and its original length recorded in the event's `cut` map.
pub mod bounds {
    pub const REQUEST_ID: usize = 128;
    pub const METHOD: usize = 32;
    pub const PATH: usize = 2048;
    pub const CLIENT: usize = 64;
    pub const MODEL: usize = 256;
    pub const REQUESTED_MODEL: usize = 256;
    pub const CALLER_ISS: usize = 512;
    pub const CALLER_SUB: usize = 512;
    pub const SERVED_DIGEST: usize = 128;
    pub const VERSION_ID: usize = 256;
    pub const RECORD_ID: usize = 256;
    /// Evidence references kept per record (from the signed approval record).
    pub const EVIDENCE_ENTRIES: usize = 8;
    pub const EVIDENCE_KIND: usize = 64;
    pub const EVIDENCE_URI: usize = 256;
    pub const EVIDENCE_DIGEST: usize = 128;
    pub const EVIDENCE_VERDICT: usize = 64;
    pub const MODEL_SIGNER: usize = 128;
    pub const MODEL_SIGNER_IDENTITY: usize = 256;
    /// Record signers kept (key IDs or `x509:IDENTITY`, all from configuration).
    pub const RECORD_SIGNER_ENTRIES: usize = 4;
    pub const RECORD_SIGNER: usize = 256;
}

/// One audited request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    pub request_id: String,
    /// RFC 3339 UTC time the request arrived, read from the wall clock: every expiry decision
    /// of this request (token `exp`/`nbf`, record `exp`/`nbf`, `revalidate_after`) was judged
    /// at this time. Staleness bounds (`max_stale`) use the monotonic clock instead.
    pub time: String,
    /// `allow`, `deny` or `would_block` (dry-run).
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// A fixed phrase explaining the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'static str>,
    /// `enforce` or `dry-run`.
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_sub: Option<String>,
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub evidence: Vec<EvidenceRef>,
    /// The configured signer (`[[artefact.signers]]` name) whose valid OMS signature the
    /// served model carries.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub model_signer: Option<String>,
    /// That signer's certificate identity (SPIFFE ID, `email:`, `dns:`), when
    /// certificate-bound.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub model_signer_identity: Option<String>,
    /// Who signed the approval record: approver key IDs, or `x509:IDENTITY` for a
    /// certificate-bound approver.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub record_signers: Vec<String>,
    /// The signed exceptions an allowed request needed (absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub exceptions: Vec<ExceptionRef>,
    pub status: u16,
    pub latency_ms: f64,
    /// The fields that were cut to their bound, each with its original length in bytes
    /// (`evidence`: the original number of entries). Absent when nothing was cut.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub cut: BTreeMap<&'static str, usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvidenceRef {
    pub kind: String,
    pub uri: String,
    pub digest: String,
    pub verdict: String,
}

/// An exception a request was allowed under: its ID, what it waived, its ticket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExceptionRef {
    pub id: String,
    /// `evidence:KIND` or `role:ROLE`.
    pub waives: String,
    pub ticket: String,
    /// Its expiry, Unix seconds.
    pub exp: u64,
}

/// Cuts `s` to at most `max` bytes on a character boundary; returns the original length
/// when it cut.
fn cut_to(s: &mut String, max: usize) -> Option<usize> {
    if s.len() <= max {
        return None;
    }
    let original = s.len();
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    Some(original)
}

impl AuditEvent {
    /// Cuts every field to its bound and notes what was cut. Cheap when nothing is long:
    /// a length comparison per field.
    pub fn bound(&mut self) {
        use bounds::*;
        let cut = &mut self.cut;
        let mut field = |name: &'static str, s: &mut String, max: usize| {
            if let Some(n) = cut_to(s, max) {
                cut.insert(name, n);
            }
        };
        field("request_id", &mut self.request_id, REQUEST_ID);
        field("method", &mut self.method, METHOD);
        field("path", &mut self.path, PATH);
        field("model", &mut self.model, MODEL);
        let opts: [(&'static str, &mut Option<String>, usize); 9] = [
            ("model_signer", &mut self.model_signer, MODEL_SIGNER),
            (
                "model_signer_identity",
                &mut self.model_signer_identity,
                MODEL_SIGNER_IDENTITY,
            ),
            ("client", &mut self.client, CLIENT),
            (
                "requested_model",
                &mut self.requested_model,
                REQUESTED_MODEL,
            ),
            ("caller_iss", &mut self.caller_iss, CALLER_ISS),
            ("caller_sub", &mut self.caller_sub, CALLER_SUB),
            ("served_digest", &mut self.served_digest, SERVED_DIGEST),
            ("version_id", &mut self.version_id, VERSION_ID),
            ("record_id", &mut self.record_id, RECORD_ID),
        ];
        for (name, value, max) in opts {
            if let Some(s) = value {
                field(name, s, max);
            }
        }
        if self.record_signers.len() > RECORD_SIGNER_ENTRIES {
            cut.insert("record_signers", self.record_signers.len());
            self.record_signers.truncate(RECORD_SIGNER_ENTRIES);
        }
        for s in &mut self.record_signers {
            if cut_to(s, RECORD_SIGNER).is_some() {
                cut.entry("record_signers").or_insert(0);
            }
        }
        if self.evidence.len() > EVIDENCE_ENTRIES {
            cut.insert("evidence", self.evidence.len());
            self.evidence.truncate(EVIDENCE_ENTRIES);
        }
        if self.exceptions.len() > EVIDENCE_ENTRIES {
            cut.insert("exceptions", self.exceptions.len());
            self.exceptions.truncate(EVIDENCE_ENTRIES);
        }
        for e in &mut self.exceptions {
            let long = [
                cut_to(&mut e.id, RECORD_ID),
                cut_to(&mut e.waives, EVIDENCE_KIND + 16),
                cut_to(&mut e.ticket, EVIDENCE_URI),
            ];
            if long.iter().any(Option::is_some) {
                cut.entry("exceptions").or_insert(0);
            }
        }
        for e in &mut self.evidence {
            let long = [
                cut_to(&mut e.kind, EVIDENCE_KIND),
                cut_to(&mut e.uri, EVIDENCE_URI),
                cut_to(&mut e.digest, EVIDENCE_DIGEST),
                cut_to(&mut e.verdict, EVIDENCE_VERDICT),
            ];
            if long.iter().any(Option::is_some) {
                cut.entry("evidence").or_insert(0);
            }
        }
    }
}

/// What a line is, besides a request event (which has no `kind`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Marker {
    /// The first line of each segment: its number and when it began. `prev` is the last
    /// hash of the segment before, or [`GENESIS`] with `break` saying why it is not.
    Segment {
        segment: u64,
        time: String,
        #[serde(rename = "break", skip_serializing_if = "Option::is_none", default)]
        chain_break: Option<String>,
    },
    /// The chain's head (the hash of the line before) and count (that line's `seq`), signed
    /// with the sidecar's key when one is configured.
    Checkpoint {
        time: String,
        segment: u64,
        count: u64,
        head: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        jws: Option<String>,
    },
    /// Requests the writer could not keep up with (or could not write), counted per
    /// (decision, reason, model, caller) over a time window.
    Summary {
        decision: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        reason: Option<String>,
        model: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        caller_iss: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        caller_sub: Option<String>,
        count: u64,
        first: String,
        last: String,
        /// Why these were summarised: `queue_full` or `write_failed`.
        cause: String,
    },
    /// Segments up to and including `segment` were removed by rotation (`keep_segments`).
    Pruned { time: String, segment: u64 },
    /// One `provgate promote`: who signed (`iss`, key `kid`), for which environment, which
    /// artefact and record, and whether it was published or refused (with the rules that
    /// failed). Written by `provgate promote` through the `append` room, never by the
    /// sidecar.
    Promotion(Box<Promotion>),
}

/// The body of a [`Marker::Promotion`] line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Promotion {
    /// RFC 3339 UTC time of the promotion.
    pub time: String,
    /// The target environment's name (`--env`, default the config file's stem).
    pub env: String,
    /// `published`, `refused` (by the check: nothing published) or `failed` (publishing
    /// failed after the check passed).
    pub outcome: String,
    /// The approver identity: the record's `iss` for a new record, the co-signer's
    /// `--iss` (else the record's) for a co-signature.
    pub iss: String,
    /// The key that signed in this promotion.
    pub kid: String,
    pub digest: String,
    pub model: String,
    pub version_id: String,
    pub record_id: String,
    /// Where it was (or would have been) published: `dir`, `mlflow` or `http`.
    pub registry: String,
    /// Where exactly: the record file, the model version and alias, or the upload URL.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub published_to: Option<String>,
    /// On a refusal, each failing rule as `rule[ record]: why`; on a failure, why.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub failed: Vec<String>,
}

/// A line's body: an event or a marker.
pub enum Body<'a> {
    Event(&'a AuditEvent),
    Marker(&'a Marker),
}

#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    seq: u64,
    #[serde(flatten)]
    body: &'a T,
    prev: &'a str,
}

/// Encodes one line (without its newline). An event that would still exceed
/// [`MAX_LINE_BYTES`] after [`AuditEvent::bound`] (it cannot, by the bounds' arithmetic) is
/// cut to a minimal form rather than written long.
pub fn encode_line(seq: u64, body: Body<'_>, prev: &str) -> Result<String, serde_json::Error> {
    let line = match body {
        Body::Event(e) => serde_json::to_string(&Line { seq, body: e, prev })?,
        Body::Marker(m) => serde_json::to_string(&Line { seq, body: m, prev })?,
    };
    if line.len() <= MAX_LINE_BYTES {
        return Ok(line);
    }
    match body {
        Body::Event(e) => {
            let mut small = e.clone();
            small.evidence.clear();
            small.cut.insert("evidence", e.evidence.len());
            for (name, s) in [
                ("path", &mut small.path),
                ("method", &mut small.method),
                ("request_id", &mut small.request_id),
            ] {
                if let Some(n) = cut_to(s, 64) {
                    small.cut.entry(name).or_insert(n);
                }
            }
            for (name, s) in [
                ("caller_sub", &mut small.caller_sub),
                ("caller_iss", &mut small.caller_iss),
                ("requested_model", &mut small.requested_model),
            ] {
                if let Some(n) = s.as_mut().and_then(|s| cut_to(s, 64)) {
                    small.cut.entry(name).or_insert(n);
                }
            }
            serde_json::to_string(&Line {
                seq,
                body: &small,
                prev,
            })
        }
        Body::Marker(_) => Ok(line),
    }
}

/// The hex SHA-256 of a line's bytes (without its newline).
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// A synthetic denial, deterministic in `i`, for `provgate audit generate` (benchmarks and
/// tests of the reading tools): reason by `i % 4`, model by `i % 3`, version by `i % 2`,
/// caller by `i % 7` (none for `token_missing`), time 2026-11-01T00:00:00Z plus `i` × 100 ms.
/// With `long_path`, a 5,000-byte target that the bounds cut.
// `i % 4` and `i % 3` index arrays of four and three entries.
#[allow(clippy::indexing_slicing)]
pub fn synthetic(i: u64, long_path: bool) -> AuditEvent {
    const REASONS: [(&str, &str, u16); 4] = [
        ("token_missing", "no bearer token", 401),
        (
            "caller_not_allowed",
            "caller not allowed by the record",
            403,
        ),
        ("approval_expired", "approval record expired", 403),
        (
            "artefact_unmanaged",
            "no approval record for the served digest",
            403,
        ),
    ];
    let (reason, detail, status) = REASONS[(i % 4) as usize];
    let at = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(1_793_491_200)
        + std::time::Duration::from_millis(i * 100);
    let caller =
        (reason != "token_missing").then(|| format!("spiffe://example.org/ns/app/sa/c{}", i % 7));
    AuditEvent {
        request_id: format!("gen-{i:010}"),
        time: humantime::format_rfc3339_millis(at).to_string(),
        decision: "deny",
        reason: Some(reason),
        detail: Some(detail),
        mode: "enforce",
        caller_iss: caller
            .as_ref()
            .map(|_| "https://issuer.example.org".to_string()),
        caller_sub: caller,
        method: "POST".into(),
        path: if long_path {
            format!("/v1/{}", "x".repeat(5000))
        } else {
            "/v1/chat/completions".into()
        },
        client: Some(format!("10.0.{}.{}:4{:04}", i % 200, i % 250, i % 10_000)),
        model: format!("model-{}", ["a", "b", "c"][(i % 3) as usize]),
        requested_model: None,
        served_digest: Some(format!("sha256:{}", "ab".repeat(32))),
        version_id: Some(format!("v{}", 1 + i % 2)),
        record_id: Some("rec-1".into()),
        evidence: vec![],
        model_signer: None,
        model_signer_identity: None,
        record_signers: vec![],
        exceptions: vec![],
        status,
        latency_ms: 0.25,
        cut: BTreeMap::new(),
    }
}
