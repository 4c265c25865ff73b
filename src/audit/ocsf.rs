//! `provgate audit export --format ocsf`: each request record (and each summary) as one
//! OCSF 1.5.0 event of class API Activity (6003, category Application Activity), with the
//! Security Control profile for the decision.
//!
//! Why API Activity: a provgate record is the outcome of one call to an API (the model
//! server's) by an identified actor, allowed or blocked by policy. OCSF's IAM classes do not
//! fit: Authentication (3002) is a logon, Authorize Session (3003) the privileges given to a
//! new session. HTTP Activity (4002) is network-level and has no actor. API Activity carries
//! the actor (caller `iss`/`sub`), the API operation, the endpoint, the resource (the model,
//! its served digest and approved version), and, through the Security Control profile, the
//! `action`/`disposition` (allowed or blocked) with the `authorizations` that decided it.
//!
//! Owns the mapping only; reading is `query`'s.

use serde_json::{json, Map, Value};

/// The OCSF schema version the events follow.
pub const OCSF_VERSION: &str = "1.5.0";
pub const CLASS_UID: u64 = 6003;
/// `activity_id` 99 (Other), named `Invoke`: a call to a model, not a create/read/update/
/// delete of the API's own objects.
pub const ACTIVITY_ID: u64 = 99;

fn s<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

fn epoch_ms(rfc3339: Option<&str>) -> u64 {
    rfc3339
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// One record as an OCSF event; `None` for segment, checkpoint and pruning records.
// Indexing writes into the `json!` object built below (`e`, its `metadata`, `unmapped` and its
// one-element `resources`): a `Value` object indexed by key inserts, and `[0]` exists.
#[allow(clippy::indexing_slicing)]
pub fn event(v: &Value) -> Option<Value> {
    let summary = match s(v, "kind") {
        None => false,
        Some("summary") => true,
        Some(_) => return None,
    };
    let decision = s(v, "decision").unwrap_or("deny");
    let allowed = decision == "allow";
    let (severity_id, severity) = match decision {
        "allow" => (1, "Informational"),
        "would_block" => (2, "Low"),
        _ => (3, "Medium"),
    };
    // dry-run lets a request through that it would have blocked.
    let passed = allowed || decision == "would_block";
    let time = if summary {
        epoch_ms(s(v, "last"))
    } else {
        epoch_ms(s(v, "time"))
    };
    let mut policy = Map::new();
    policy.insert("name".into(), json!("provgate model approval"));
    if let Some(r) = s(v, "record_id") {
        policy.insert("uid".into(), json!(r));
    }
    if let Some(ver) = s(v, "version_id") {
        policy.insert("version".into(), json!(ver));
    }
    let mut e = json!({
        "class_uid": CLASS_UID,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": ACTIVITY_ID,
        "activity_name": "Invoke",
        "type_uid": CLASS_UID * 100 + ACTIVITY_ID,
        "type_name": "API Activity: Other",
        "time": time,
        "severity_id": severity_id,
        "severity": severity,
        "status_id": if allowed { 1 } else { 2 },
        "status": if allowed { "Success" } else { "Failure" },
        "action_id": if passed { 1 } else { 2 },
        "action": if passed { "Allowed" } else { "Denied" },
        "disposition_id": if passed { 1 } else { 2 },
        "disposition": if passed { "Allowed" } else { "Blocked" },
        "metadata": {
            "product": {"name": "provgate", "vendor_name": "provgate", "version": env!("CARGO_PKG_VERSION")},
            "version": OCSF_VERSION,
            "profiles": ["security_control"],
            "log_name": "provgate audit",
        },
        "actor": {},
        "api": {
            "operation": if summary {
                "summary".to_string()
            } else {
                format!("{} {}", s(v, "method").unwrap_or("-"), s(v, "path").unwrap_or("-"))
            },
            "service": {"name": s(v, "model").unwrap_or("none")},
        },
        "src_endpoint": {},
        "authorizations": [{"decision": decision, "policy": Value::Object(policy.clone())}],
        "policy": Value::Object(policy),
        "resources": [{"type": "model", "name": s(v, "model").unwrap_or("none")}],
        "unmapped": {},
    });
    let seq = v.get("seq").and_then(Value::as_u64);
    let meta = &mut e["metadata"];
    if let Some(id) = s(v, "request_id") {
        meta["uid"] = json!(id);
    }
    if let Some(seq) = seq {
        meta["sequence"] = json!(seq);
    }
    let mut user = Map::new();
    if let Some(sub) = s(v, "caller_sub") {
        user.insert("uid".into(), json!(sub));
        user.insert("name".into(), json!(sub));
    }
    if user.is_empty() {
        // No verified caller (no token, or one that did not verify): say so rather than
        // leave the actor empty, which OCSF does not allow.
        user.insert("name".into(), json!("unauthenticated"));
    }
    e["actor"]["user"] = Value::Object(user);
    if let Some(iss) = s(v, "caller_iss") {
        e["actor"]["idp"] = json!({"name": iss});
    }
    match s(v, "client").and_then(|c| c.parse::<std::net::SocketAddr>().ok()) {
        Some(addr) => {
            e["src_endpoint"] = json!({"ip": addr.ip().to_string(), "port": addr.port()});
        }
        None => e["src_endpoint"] = json!({"name": "unknown"}),
    }
    if !summary {
        let mut url = json!({"path": s(v, "path").unwrap_or("")});
        if let Some(p) = s(v, "path") {
            url["url_string"] = json!(p);
        }
        e["http_request"] = json!({"http_method": s(v, "method").unwrap_or(""), "url": url});
        if let Some(status) = v.get("status").and_then(Value::as_u64) {
            e["status_code"] = json!(status.to_string());
            e["http_response"] = json!({"code": status});
        }
        if let Some(ms) = v.get("latency_ms").and_then(Value::as_f64) {
            e["duration"] = json!(ms.round() as u64);
        }
    } else {
        e["count"] = v.get("count").cloned().unwrap_or(json!(1));
        e["start_time"] = json!(epoch_ms(s(v, "first")));
        e["end_time"] = json!(time);
    }
    let res = &mut e["resources"][0];
    if let Some(d) = s(v, "served_digest") {
        res["uid"] = json!(d);
    }
    if let Some(ver) = s(v, "version_id") {
        res["version"] = json!(ver);
    }
    if let Some(reason) = s(v, "reason") {
        e["status_detail"] = json!(reason);
    }
    if let Some(detail) = s(v, "detail") {
        e["message"] = json!(detail);
    }
    let unmapped = &mut e["unmapped"];
    for k in [
        "reason",
        "mode",
        "requested_model",
        "cut",
        "evidence",
        "model_signer",
        "model_signer_identity",
        "record_signers",
        "cause",
        "first",
        "last",
    ] {
        if let Some(x) = v.get(k) {
            unmapped[k] = x.clone();
        }
    }
    Some(e)
}
