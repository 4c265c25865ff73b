//! `provgate explain` through the real binary: a sidecar guarding several models, each in
//! another approval state, refuses requests for several reasons into an audit log rotated
//! every 4 KiB; `explain` finds each request by its ID (one in an older segment), replays it
//! and names the rule that refused, agreeing with the record; a record revoked since makes
//! the replay disagree and say so.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const BATCH: &str = "spiffe://example.org/ns/batch/sa/job";
const OPS: &str = "spiffe://example.org/ns/ops/sa/operator";

fn artefact(name: &str, dir: &Path) -> String {
    format!(
        "[[artefacts]]\nmodel = \"{name}\"\npath = \"{}\"\npoll_interval = \"200ms\"\n",
        dir.display()
    )
}

/// Sends one request; returns its request ID and the deny reason of its answer.
async fn request(
    pg: &Provgate,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    model: Option<&str>,
) -> (String, String) {
    let mut req = pg
        .client
        .request(method, pg.url(path))
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(m) = model {
        req = req.body(format!(r#"{{"model":"{m}","messages":[]}}"#));
    }
    let r = req.send().await.unwrap();
    let id = r.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = r.json().await.unwrap_or_default();
    (id, body["error"].as_str().unwrap_or("").to_string())
}

/// Waits until every request ID has its record in some segment of the log.
async fn logged(log: &Path, ids: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut seen = std::collections::HashSet::new();
        if log.exists() {
            provgate::audit::query::scan(log, &Default::default(), |v, _, _| {
                if let Some(id) = v.request_id.as_deref() {
                    seen.insert(id.to_string());
                }
            })
            .unwrap();
        }
        if ids.iter().all(|id| seen.contains(*id)) {
            return;
        }
        assert!(Instant::now() < deadline, "not all requests were logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `provgate explain --json`; its exit status and report.
fn explain(config: &Path, log: &Path, id: &str) -> (i32, Value, String) {
    let out = run_cli(
        &[
            "explain",
            "-c",
            config.to_str().unwrap(),
            log.to_str().unwrap(),
            "--request-id",
            id,
            "--json",
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap(), report, stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_replays_denials_from_a_rotated_log_and_names_each_rule() {
    let mut fx = Fixture::new();
    fx.upstream_extra = "api = [\"openai\", \"kserve_v2\"]".into();
    fx.extra = format!(
        "[[routing.allow]]\nroute = \"/v2/repository/models/{{m}}/load\"\nmethods = [\"POST\"]\ncallers = [\"{OPS}\"]\nissuer = \"{ISSUER}\"\n"
    );
    let dirs: Vec<(&str, std::path::PathBuf)> = vec![
        (MODEL, fx.model_dir()),
        ("expired", model_dir(&fx, "expired", b"expired weights")),
        (
            "unmanaged",
            model_dir(&fx, "unmanaged", b"unmanaged weights"),
        ),
        ("revoked", model_dir(&fx, "revoked", b"revoked weights")),
        ("unbound", model_dir(&fx, "unbound", b"unbound weights")),
    ];
    let now = provgate::unix_now();
    let claims_for = |name: &str, dir: &Path| {
        let mut c = fx.claims();
        c.sub = name.into();
        c.jti = format!("rec-{name}");
        c.version_id = format!("v-{name}");
        c.artefact.digest = digest_of(dir);
        c
    };
    fx.approve("good.jwt", &fx.claims());
    let mut expired = claims_for("expired", &dirs[1].1);
    expired.iat = now - 7200;
    expired.nbf = Some(now - 7200);
    expired.exp = now - 3600;
    fx.approve("expired.jwt", &expired);
    fx.approve("revoked.jwt", &claims_for("revoked", &dirs[3].1));
    std::fs::write(fx.registry_dir().join("revoked.txt"), "rec-revoked\n").unwrap();
    let mut unbound = claims_for("unbound", &dirs[4].1);
    unbound.workloads = vec!["spiffe://example.org/ns/staging/*".into()];
    fx.approve("unbound.jwt", &unbound);

    let up = Upstream::start().await;
    let lora_dir = model_dir(&fx, "lora", b"adapter weights");
    let mut lora = claims_for("lora", &lora_dir);
    lora.artefact.base_digest = Some(fx.digest());
    lora.callers.push(BATCH.into());
    fx.approve("lora.jwt", &lora);
    let sections: String = dirs.iter().map(|(n, d)| artefact(n, d)).collect::<String>()
        + &artefact("lora", &lora_dir)
        + &format!("kind = \"adapter\"\nbase = \"{MODEL}\"\n");
    let (listen, admin) = (free_port(), free_port());
    let config = config_with(&fx, (listen, admin), up.addr, &sections).replace(
        "[audit]\n",
        "[audit]\nmax_segment_bytes = 4096\nkeep_segments = 0\n",
    );
    let config_path = fx.dir.path().join("explain.toml");
    let pg = Provgate::spawn(fx.dir.path(), "explain", &config, listen, admin, None).await;
    pg.wait_ready().await;
    let log = fx.audit_path();
    let token = fx.token(CALLER);
    let stranger = fx.token("spiffe://example.org/ns/other/sa/intruder");
    let garbage = "not-a-token".to_string();
    let batch = fx.token(BATCH);
    let chat = "/v1/chat/completions";
    let post = reqwest::Method::POST;

    // Requests in this order; the first lands in the oldest segment.
    let mut cases: Vec<(String, &str, &str)> = Vec::new();
    let (unmanaged_id, r) = request(&pg, post.clone(), chat, Some(&token), Some("unmanaged")).await;
    cases.push((unmanaged_id.clone(), "artefact_unmanaged", "registry"));
    assert_eq!(r, "artefact_unmanaged");
    for (model, tok, want, rule) in [
        (MODEL, Some(&stranger), "caller_not_allowed", "callers"),
        ("expired", Some(&token), "approval_expired", "expiry"),
        (
            "revoked",
            Some(&token),
            "approval_revoked",
            "record_revoked",
        ),
        ("unbound", Some(&token), "deployment_not_bound", "workload"),
        (MODEL, None, "token_missing", "caller"),
        (MODEL, Some(&garbage), "token_invalid", "caller"),
        ("nonexistent", Some(&token), "model_mismatch", "model"),
        // The adapter's record admits this caller, its base's does not.
        ("lora", Some(&batch), "caller_not_allowed", "callers"),
    ] {
        let (id, r) = request(
            &pg,
            post.clone(),
            chat,
            tok.map(String::as_str),
            Some(model),
        )
        .await;
        assert_eq!(r, want, "{model}");
        cases.push((id, want, rule));
    }
    let (id, r) = request(
        &pg,
        reqwest::Method::GET,
        "/admin/reload",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r, "route_not_allowed");
    cases.push((id, "route_not_allowed", "route"));
    // A management route: refused to an ordinary caller, opened to the one a rule names.
    let load = format!("/v2/repository/models/{MODEL}/load");
    let (managed_id, r) = request(&pg, post.clone(), &load, Some(&token), None).await;
    assert_eq!(r, "route_not_allowed");
    cases.push((managed_id.clone(), "route_not_allowed", "route"));
    let (opened_id, r) = request(&pg, post.clone(), &load, Some(&fx.token(OPS)), None).await;
    assert_eq!(r, "", "opened");
    // More refusals, so the log rotates a few times.
    let mut padding = Vec::new();
    for _ in 0..12 {
        padding.push(request(&pg, post.clone(), chat, None, Some(MODEL)).await.0);
    }
    let ids: Vec<&str> = cases
        .iter()
        .map(|c| c.0.as_str())
        .chain(padding.iter().map(String::as_str))
        .collect();
    logged(&log, &ids).await;
    logged(&log, &[opened_id.as_str()]).await;

    // A record for the unmanaged model, issued after its request: left out of the replay.
    while provgate::unix_now() <= now + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut later = claims_for("unmanaged", &dirs[2].1);
    later.iat = provgate::unix_now();
    later.nbf = Some(later.iat);
    fx.approve("unmanaged.jwt", &later);

    for (id, want, rule) in &cases {
        let (code, report, stderr) = explain(&config_path, &log, id);
        assert_eq!(code, 0, "{want}: {report:#}\n{stderr}");
        assert_eq!(report["agrees"], true, "{want}: {report:#}");
        assert_eq!(report["recorded"]["reason"], *want);
        assert_eq!(report["replay"]["reason"], *want, "{report:#}");
        assert_eq!(report["replay"]["rule"], *rule, "{want}: {report:#}");
    }
    let (code, report, _) = explain(&config_path, &log, &managed_id);
    assert_eq!(code, 0);
    assert_eq!(
        report["route"]["refused"],
        "management route not opened to this caller"
    );
    assert!(
        report["route"]["not_opened_by"]
            .as_str()
            .unwrap()
            .contains(OPS),
        "{report:#}"
    );
    let (code, report, _) = explain(&config_path, &log, &opened_id);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["replay"]["decision"], "opened");
    assert!(report["route"]["opened_by"].as_str().unwrap().contains(OPS));

    // The adapter's denial came from its base's record, decided for the same caller.
    let lora_case = cases
        .iter()
        .find(|c| c.1 == "caller_not_allowed" && c.0 != cases[1].0)
        .unwrap();
    let (_, report, _) = explain(&config_path, &log, &lora_case.0);
    assert_eq!(report["model"]["name"], "lora");
    assert_eq!(report["base"]["model"], MODEL, "{report:#}");
    assert_eq!(report["replay"]["record"], "rec-1");
    assert_eq!(report["replay"]["about"], format!("base {MODEL}"));

    // The first request is in an older, rotated segment.
    let (_, first, _) = explain(&config_path, &log, &unmanaged_id);
    let segments = first["found"]["segments"].as_u64().unwrap();
    assert!(segments >= 3, "the log rotated: {first:#}");
    assert_eq!(first["found"]["segment_index"], 1);
    assert_ne!(
        Path::new(first["found"]["segment"].as_str().unwrap()),
        log.as_path(),
        "found in a rotated segment, not the active file"
    );
    assert_eq!(first["registry"]["left_out"][0]["jti"], "rec-unmanaged");

    // Text output names the chain and the rule.
    let caller_case = &cases[1].0;
    let out = run_cli(
        &[
            "explain",
            "-c",
            config_path.to_str().unwrap(),
            log.to_str().unwrap(),
            "--request-id",
            caller_case,
        ],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for want in [
        "spiffe://example.org/ns/other/sa/intruder",
        ISSUER,
        "record rec-1 (version v42",
        "caller_not_allowed",
        "rule callers",
        "agrees with the record",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }

    // Revoked since: the replay disagrees, exits 1 and says why.
    std::fs::write(
        fx.registry_dir().join("revoked.txt"),
        "rec-revoked\nrec-1\n",
    )
    .unwrap();
    let (code, report, _) = explain(&config_path, &log, caller_case);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["agrees"], false);
    assert_eq!(report["replay"]["reason"], "approval_revoked");
    let differences = report["differences"].to_string();
    assert!(differences.contains("revoked since"), "{differences}");

    // The record itself, on standard input.
    let line = {
        let mut found = None;
        provgate::audit::query::scan(&log, &Default::default(), |v, raw, _| {
            if v.request_id.as_deref() == Some(cases[2].0.as_str()) {
                found = Some(String::from_utf8_lossy(raw).into_owned());
            }
        })
        .unwrap();
        found.unwrap()
    };
    let mut child = std::process::Command::new(bin())
        .args([
            "explain",
            "-c",
            config_path.to_str().unwrap(),
            "--record",
            "-",
            "--json",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["replay"]["reason"], "approval_expired");
    assert!(report.get("found").is_none());

    // An unknown request ID is an error, and says where it looked.
    let (code, _, stderr) = explain(&config_path, &log, "no-such-request");
    assert_eq!(code, 2);
    assert!(stderr.contains("not found"), "{stderr}");
    drop(pg);
}
