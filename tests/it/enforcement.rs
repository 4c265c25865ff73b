//! End-to-end enforcement through the real binary: a real upstream, real sockets on
//! 127.0.0.1 ephemeral ports, and each deny reason produced by a real scenario.

use std::time::Duration;

use crate::support::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Checks a denial everywhere it must show: status, JSON body, header, metric, audit line.
async fn assert_denied(
    pg: &Provgate,
    fx: &Fixture,
    resp: reqwest::Response,
    reason: &str,
    status: u16,
) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status for {reason}");
    let header_id = resp
        .headers()
        .get("x-provgate-request-id")
        .expect("denials carry the request ID")
        .to_str()
        .unwrap()
        .to_string();
    assert!(resp.headers().get("x-provgate-version-id").is_none());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], reason);
    assert_eq!(body["request_id"], header_id.as_str());
    let series =
        format!("provgate_requests_total{{decision=\"deny\",model=\"{MODEL}\",reason=\"{reason}\"");
    // Metrics are recorded in the logging phase, after the client has its response.
    pg.eventually(Duration::from_secs(5), || {
        let (c, url, series) = (
            pg.client.clone(),
            format!("http://{}/metrics", pg.admin),
            series.clone(),
        );
        Box::pin(async move {
            let text = c.get(url).send().await.unwrap().text().await.unwrap();
            text.lines().any(|l| l.starts_with(&series))
        })
    })
    .await;
    let audit = fx.audit_record(&header_id).await;
    assert_eq!(audit["decision"], "deny");
    assert_eq!(audit["reason"], reason);
    assert_eq!(audit["mode"], "enforce");
    assert_eq!(audit["status"], status);
    audit
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approved_request_reaches_the_upstream_tagged() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;
    let token = fx.token(CALLER);
    let resp = pg
        .client
        .get(pg.url("/v1/models"))
        .bearer_auth(&token)
        .header("x-provgate-version-id", "forged")
        .header("x-provgate-caller", "spiffe://forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-provgate-version-id"], "v42");
    let request_id = resp.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(resp.text().await.unwrap().contains("all-minilm-l6-v2"));

    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    let h = &seen[0].headers;
    assert_eq!(
        h["x-provgate-version-id"], "v42",
        "the client's forged value is replaced"
    );
    assert_eq!(h.get_all("x-provgate-version-id").iter().count(), 1);
    assert_eq!(h["x-provgate-request-id"], request_id.as_str());
    assert_eq!(h["x-provgate-caller"], CALLER);
    assert!(
        h.get("authorization").is_none(),
        "the caller token is stripped by default"
    );

    let allow = format!(
        "provgate_requests_total{{decision=\"allow\",model=\"{MODEL}\",reason=\"none\",version_id=\"v42\"}}"
    );
    pg.eventually(Duration::from_secs(5), || {
        let (pg_metrics, allow) = (pg.metrics(), allow.clone());
        Box::pin(async move { pg_metrics.await.contains(&format!("{allow} 1")) })
    })
    .await;
    // A second request with the same token is served from the token cache.
    assert_eq!(pg.get("/v1/models", Some(&token)).await.status(), 200);
    assert!(
        pg.metric("provgate_token_cache_requests_total{result=\"hit\"}")
            .await
            >= 1.0
    );
    assert!(
        pg.metric("provgate_approval_cache_requests_total{result=\"hit\"}")
            .await
            >= 1.0
    );
    // Allowed requests are not audited unless log_allowed is set.
    assert!(fx.audit_records().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_that_fail_verification_are_401() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;
    let now = provgate::unix_now();
    let claims =
        serde_json::json!({"iss": ISSUER, "sub": CALLER, "aud": ["provgate"], "exp": now + 600});
    let b64 = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());

    let resp = pg.get("/v1/models", None).await;
    let audit = assert_denied(&pg, &fx, resp, "token_missing", 401).await;
    assert!(audit.get("caller_sub").is_none());

    let alg_none = format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    // HS256 keyed with the issuer's public key: the classic algorithm-confusion forgery.
    let public_key_as_secret = serde_json::to_vec(&fx.issuer.public_jwk).unwrap();
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&public_key_as_secret),
    )
    .unwrap();
    let wrong_aud = provgate::identity::mint_token(
        &fx.issuer,
        ISSUER,
        CALLER,
        &["someone-else".to_string()],
        Duration::from_secs(600),
    )
    .unwrap();
    let mut expired_claims = claims.clone();
    expired_claims["exp"] = serde_json::json!(now - 3600);
    let mut header = jsonwebtoken::Header::new(fx.issuer.alg);
    header.kid = Some(fx.issuer.kid.clone());
    let expired = jsonwebtoken::encode(&header, &expired_claims, &fx.issuer.key).unwrap();
    // A valid token with one signature character in the middle changed.
    let good = fx.token(CALLER);
    let mut tampered: Vec<u8> = good.clone().into_bytes();
    let mid = good.len() - 20;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();

    for (name, value) in [
        ("alg none", format!("Bearer {alg_none}")),
        ("hs256 with the public key", format!("Bearer {hs256}")),
        ("wrong audience", format!("Bearer {wrong_aud}")),
        ("expired", format!("Bearer {expired}")),
        ("tampered signature", format!("Bearer {tampered}")),
        ("garbage", "Bearer not.a.jwt".to_string()),
        ("not bearer", "Basic dXNlcjpwYXNz".to_string()),
    ] {
        let resp = pg
            .client
            .get(pg.url("/v1/models"))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        let www = resp.headers().get("www-authenticate").cloned();
        assert_denied(&pg, &fx, resp, "token_invalid", 401).await;
        assert!(
            www.unwrap().to_str().unwrap().contains("invalid_token"),
            "{name}"
        );
    }
    assert!(
        up.requests().is_empty(),
        "nothing unauthenticated reached the model server"
    );
    // The audit log never holds a token.
    let text = std::fs::read_to_string(fx.audit_path()).unwrap();
    assert!(!text.contains(&good[..40]) && !text.contains("eyJ"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_the_record_does_not_name_is_403() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    let (_up, pg) = started(&fx).await;
    let intruder = "spiffe://example.org/ns/other/sa/intruder";
    let resp = pg.get("/v1/models", Some(&fx.token(intruder))).await;
    let audit = assert_denied(&pg, &fx, resp, "caller_not_allowed", 403).await;
    assert_eq!(audit["caller_sub"], intruder);
    assert_eq!(audit["caller_iss"], ISSUER);
    assert_eq!(audit["record_id"], "rec-1");
    assert_eq!(audit["version_id"], "v42");
    assert_eq!(audit["served_digest"], fx.digest().to_string());
    assert_eq!(audit["evidence"][0]["kind"], "security-test");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unmanaged_copy_is_blocked() {
    let fx = Fixture::new();
    // A record exists, but for other weights.
    let mut c = fx.claims();
    c.artefact.digest = provgate::digest::Digest([5; 32]);
    fx.approve("other.jwt", &c);
    let (up, pg) = started(&fx).await;
    let resp = pg.get("/v1/models", Some(&fx.token(CALLER))).await;
    assert_denied(&pg, &fx, resp, "artefact_unmanaged", 403).await;
    assert!(up.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_directory_that_cannot_be_verified_is_503() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    // A symlink inside the model directory: OMS refuses it, so the digest is never known.
    std::os::unix::fs::symlink("/etc/hostname", fx.model_dir().join("smuggled")).unwrap();
    let (_up, pg) = started(&fx).await;
    let resp = pg.get("/v1/models", Some(&fx.token(CALLER))).await;
    assert_denied(&pg, &fx, resp, "artefact_unverified", 503).await;
    assert_eq!(
        pg.metric(&format!(
            "provgate_artefact_state{{model=\"{MODEL}\",state=\"failed\"}}"
        ))
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_and_not_yet_valid_records_block() {
    let fx = Fixture::new();
    let now = provgate::unix_now();
    let mut c = fx.claims();
    c.iat = now - 7200;
    c.nbf = Some(now - 7200);
    c.exp = now - 1;
    fx.approve("expired.jwt", &c);
    let (_up, pg) = started(&fx).await;
    let resp = pg.get("/v1/models", Some(&fx.token(CALLER))).await;
    let audit = assert_denied(&pg, &fx, resp, "approval_expired", 403).await;
    assert_eq!(
        audit["detail"],
        "approval record expired (judged on the wall clock at the record's time)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_that_expires_while_running_blocks_at_its_exp() {
    let fx = Fixture::new();
    let mut c = fx.claims();
    c.exp = provgate::unix_now() + 2;
    fx.approve("short.jwt", &c);
    let (_up, pg) = started(&fx).await;
    let token = fx.token(CALLER);
    assert_eq!(pg.get("/v1/models", Some(&token)).await.status(), 200);
    while provgate::unix_now() < c.exp {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Whatever the caches hold, the record is out of force from its exp on.
    let resp = pg.get("/v1/models", Some(&token)).await;
    assert_denied(&pg, &fx, resp, "approval_expired", 403).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_blocks_within_the_rescan_bound() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    let (_up, pg) = started(&fx).await;
    let token = fx.token(CALLER);
    assert_eq!(pg.get("/v1/models", Some(&token)).await.status(), 200);
    let t = std::time::Instant::now();
    std::fs::write(fx.registry_dir().join("revoked.txt"), "rec-1\n").unwrap();
    let took = pg
        .until_answer(&token, 403, None, Duration::from_secs(3))
        .await;
    eprintln!(
        "revocation took effect after {took:?} (measured from the write: {:?})",
        t.elapsed()
    );
    let resp = pg.get("/v1/models", Some(&token)).await;
    assert_denied(&pg, &fx, resp, "approval_revoked", 403).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_record_and_missing_tier_evidence_are_approval_invalid() {
    let fx = Fixture::new();
    let (rogue, _) = provgate::keys::SigningKey::generate(provgate::keys::KeyKind::Es256).unwrap();
    let forged = provgate::approval::sign(&fx.claims(), &rogue).unwrap();
    fx.write_record("forged.jwt", &forged);
    let (_up, pg) = started(&fx).await;
    let token = fx.token(CALLER);
    let resp = pg.get("/v1/models", Some(&token)).await;
    assert_denied(&pg, &fx, resp, "approval_invalid", 403).await;

    // Now a genuine record, but customer-facing without the red-team evidence the tier needs.
    std::fs::remove_file(fx.registry_dir().join("forged.jwt")).unwrap();
    let mut c = fx.claims();
    c.tier = "customer-facing".into();
    fx.approve("rec.jwt", &c);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let resp = pg.get("/v1/models", Some(&token)).await;
        let audit = assert_denied(&pg, &fx, resp, "approval_invalid", 403).await;
        if audit["detail"] == "record lacks evidence its tier requires" {
            assert_eq!(audit["record_id"], "rec-1");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new record was never loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_that_does_not_bind_this_workload_is_403() {
    let fx = Fixture::new();
    let mut c = fx.claims();
    c.workloads = vec!["spiffe://example.org/ns/sandbox/*".into()];
    fx.approve("rec.jwt", &c);
    let (_up, pg) = started(&fx).await;
    let resp = pg.get("/v1/models", Some(&fx.token(CALLER))).await;
    assert_denied(&pg, &fx, resp, "deployment_not_bound", 403).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_for_another_model_is_403() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;
    let token = fx.token(CALLER);
    let resp = pg
        .post_to("/v2/models/shadow-model/infer", Some(&token))
        .await;
    let audit = assert_denied(&pg, &fx, resp, "model_mismatch", 403).await;
    assert_eq!(audit["requested_model"], "shadow-model");
    let ok = pg
        .post_to(&format!("/v2/models/{MODEL}/infer"), Some(&token))
        .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_registry_fails_closed_after_max_stale_and_recovers() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    let up = Upstream::start().await;
    let pg = {
        let patched = |s: String| {
            s.replace(
                "rescan_interval = \"500ms\"",
                "rescan_interval = \"200ms\"\nmax_stale = \"1s\"",
            )
        };
        start_with(&fx, up.addr, patched).await
    };
    pg.wait_ready().await;
    let token = fx.token(CALLER);
    assert_eq!(pg.get("/v1/models", Some(&token)).await.status(), 200);
    let moved = fx.path("approvals-unmounted");
    std::fs::rename(fx.registry_dir(), &moved).unwrap();
    // The last good records keep serving for up to max_stale...
    assert_eq!(pg.get("/v1/models", Some(&token)).await.status(), 200);
    // ...then requests fail closed.
    pg.until_answer(&token, 503, None, Duration::from_secs(5))
        .await;
    let resp = pg.get("/v1/models", Some(&token)).await;
    assert_denied(&pg, &fx, resp, "trust_data_unavailable", 503).await;
    std::fs::rename(&moved, fx.registry_dir()).unwrap();
    pg.until_answer(&token, 200, None, Duration::from_secs(5))
        .await;
}

/// Starts provgate with a config transformed by `patch`.
async fn start_with(
    fx: &Fixture,
    upstream: std::net::SocketAddr,
    patch: impl Fn(String) -> String,
) -> Provgate {
    let (listen, admin) = (free_port(), free_port());
    let config = patch(fx.config(listen, admin, upstream));
    Provgate::spawn(fx.dir.path(), "patched", &config, listen, admin, None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hot_swapped_model_file_is_blocked_within_two_seconds() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    let (_up, pg) = started(&fx).await;
    let token = fx.token(CALLER);
    assert_eq!(pg.get("/v1/models", Some(&token)).await.status(), 200);
    let approved = fx.digest();
    let t = std::time::Instant::now();
    std::fs::write(fx.model_dir().join("model.safetensors"), vec![8u8; 4096]).unwrap();
    pg.until_answer(
        &token,
        403,
        Some("artefact_unmanaged"),
        Duration::from_secs(2),
    )
    .await;
    eprintln!("swap detected and blocked after {:?}", t.elapsed());
    let resp = pg.get("/v1/models", Some(&token)).await;
    let audit = assert_denied(&pg, &fx, resp, "artefact_unmanaged", 403).await;
    assert_ne!(audit["served_digest"], approved.to_string());
    assert_eq!(audit["served_digest"], fx.digest().to_string());
    let info = pg.metrics().await;
    assert!(
        info.contains(&fx.digest().to_string()),
        "artefact_info follows the swap"
    );
}

/// With `serialization = "shards"`, a record made by `provgate approve --dir ...
/// --serialization shards` is served; one byte changed in place (same size, mtime put
/// back) blocks.
#[tokio::test(flavor = "multi_thread")]
async fn a_shards_approval_from_the_cli_is_served_and_a_tampered_byte_blocks() {
    let fx = Fixture::new();
    let weights = fx.model_dir().join("model.safetensors");
    let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&weights, &bytes).unwrap();
    let s = |p: std::path::PathBuf| p.to_str().unwrap().to_string();
    let cli = |args: &[&str]| {
        let out = run_cli(args, None);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    // A second approver key, added to the trusted JWKS, whose private half is a file.
    cli(&[
        "keygen",
        "--key",
        &s(fx.path("pipeline.key")),
        "--jwks",
        &s(fx.path("approvers.jwks.json")),
    ]);
    let shards = ["--serialization", "shards", "--shard-size", "1024"];
    let digest = |dir: &str| cli(&[&["digest", dir][..], &shards].concat());
    let approved = digest(&s(fx.model_dir()));
    assert_ne!(approved, fx.digest().to_string(), "10 shards, not one file");
    cli(&[
        &[
            "approve",
            "--key",
            &s(fx.path("pipeline.key")),
            "--iss",
            "pipeline@example.org",
            "--model",
            MODEL,
            "--version-id",
            "shards-v1",
            "--dir",
            &s(fx.model_dir()),
            "--workload",
            WORKLOAD,
            "--caller",
            CALLER,
            "--out",
            &s(fx.registry_dir().join("rec.jwt")),
        ][..],
        &shards,
    ]
    .concat());

    let up = Upstream::start().await;
    let pg = start_with(&fx, up.addr, |c| {
        let patched = c.replace(
            "poll_interval = \"500ms\"\n[registry]",
            "poll_interval = \"500ms\"\nserialization = \"shards\"\nshard_size = 1024\n[registry]",
        );
        assert_ne!(patched, c);
        patched
    })
    .await;
    pg.wait_ready().await;
    let token = fx.token(CALLER);
    let resp = pg.get("/v1/models", Some(&token)).await;
    assert_eq!(resp.status(), 200, "{}", pg.logs());
    assert_eq!(resp.headers()["x-provgate-version-id"], "shards-v1");
    assert!(pg.metrics().await.contains(&approved), "the served digest");

    // One byte in the sixth shard, written in place; size and mtime as before.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(30));
    std::os::unix::fs::FileExt::write_all_at(&f, &[bytes[5500] ^ 1], 5500).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    pg.until_answer(
        &token,
        403,
        Some("artefact_unmanaged"),
        Duration::from_secs(3),
    )
    .await;
    let resp = pg.get("/v1/models", Some(&token)).await;
    let audit = assert_denied(&pg, &fx, resp, "artefact_unmanaged", 403).await;
    let tampered = digest(&s(fx.model_dir()));
    assert_ne!(tampered, approved);
    assert_eq!(audit["served_digest"], tampered.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_lets_through_and_records_would_block() {
    let mut fx = Fixture::new();
    fx.enforce = false;
    let (up, pg) = started(&fx).await;
    let resp = pg.get("/v1/models", None).await;
    assert_eq!(resp.status(), 200, "dry-run never blocks");
    assert!(resp.headers().get("x-provgate-version-id").is_none());
    let id = resp.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let audit = fx.audit_record(&id).await;
    assert_eq!(audit["decision"], "would_block");
    assert_eq!(audit["reason"], "token_missing");
    assert_eq!(audit["mode"], "dry-run");
    assert_eq!(audit["status"], 200);
    assert_eq!(up.requests().len(), 1);
    let series = format!(
        "provgate_requests_total{{decision=\"would_block\",model=\"{MODEL}\",reason=\"token_missing\",version_id=\"none\"}} 1"
    );
    assert!(
        pg.metrics().await.contains(&series),
        "audited before counted? {series}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn log_allowed_audits_every_request() {
    let mut fx = Fixture::new();
    fx.log_allowed = true;
    fx.approve("rec.jwt", &fx.claims());
    let (_up, pg) = started(&fx).await;
    let resp = pg.get("/v1/models", Some(&fx.token(CALLER))).await;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let audit = fx.audit_record(&id).await;
    assert_eq!(audit["decision"], "allow");
    assert_eq!(audit["version_id"], "v42");
    assert_eq!(audit["caller_sub"], CALLER);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_sent_events_stream_chunk_by_chunk() {
    use futures_util::StreamExt;
    let mut fx = Fixture::new();
    // An OpenAI-style route of its own (`openai_paths`), answered as a stream.
    fx.extra = "[routing]\nopenai_paths = [\"/sse\"]\n".into();
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;
    let resp = pg
        .client
        .post(pg.url("/sse"))
        .bearer_auth(fx.token(CALLER))
        .body(format!(r#"{{"model":"{MODEL}","stream":true}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-provgate-version-id"], "v42");
    let mut stream = resp.bytes_stream();
    // The upstream holds its second event until released: the first must arrive alone.
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("first event was buffered instead of streamed")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    up.release();
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
    {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"data: second\n\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_upstreams_are_spoken_to_in_http2() {
    let mut fx = Fixture::new();
    fx.protocol = "h2c";
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;
    for _ in 0..3 {
        assert_eq!(
            pg.get("/v1/models", Some(&fx.token(CALLER))).await.status(),
            200
        );
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.version == hyper::Version::HTTP_2));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_chain_verifies_and_a_deleted_line_is_caught() {
    let fx = Fixture::new();
    let (_up, pg) = started(&fx).await;
    let mut last = String::new();
    for _ in 0..5 {
        let r = pg.get("/v1/models", None).await;
        last = r.headers()["x-provgate-request-id"]
            .to_str()
            .unwrap()
            .to_string();
    }
    fx.audit_record(&last).await;
    let path = fx.audit_path();
    let out = run_cli(&["audit", "verify", path.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Five denials after the segment's first record.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("6 records in 1 segment(s), chain intact")
    );

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let without_third = [&lines[..2], &lines[3..]].concat().join("\n") + "\n";
    std::fs::write(&path, without_third).unwrap();
    let out = run_cli(&["audit", "verify", path.to_str().unwrap()], None);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("chain broken"), "{said}");
    assert!(said.contains(":3: missing lines"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_and_health_are_served_on_the_admin_listener() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    let (_up, pg) = started(&fx).await;
    let r = pg
        .client
        .get(format!("http://{}/readyz", pg.admin))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["ready"], true);
    assert_eq!(body["artefact"], "ready");
    let metrics = pg.metrics().await;
    assert!(metrics.contains("provgate_ready 1"));
    assert!(metrics.contains(&format!(
        "provgate_approval_expiry_timestamp_seconds{{model=\"{MODEL}\",version_id=\"v42\"}}"
    )));
    // The proxy listener does not serve metrics.
    let r = pg.get("/metrics", None).await;
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn provgate_headers_from_the_model_server_never_reach_the_client() {
    let mut fx = Fixture::new();
    fx.enforce = false;
    let (_up, pg) = started(&fx).await;
    // /spoof answers with forged x-provgate-* headers: in dry-run with no approval, none
    // of them may reach the client.
    let resp = pg.get("/spoof", None).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-provgate-version-id").is_none());
    assert_eq!(
        resp.headers()
            .get_all("x-provgate-request-id")
            .iter()
            .count(),
        1
    );
}

/// An allowed request whose model server cannot be reached is answered like a denial, in
/// JSON with the request ID, and without a `Server` header naming provgate's engine.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_model_server_is_answered_in_json() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    // Nothing listens on this port.
    let pg = Provgate::start(&fx, free_port()).await;
    pg.wait_ready().await;
    let resp = pg.get("/v1/models", Some(&fx.token(CALLER))).await;
    assert_eq!(resp.status().as_u16(), 502);
    assert!(
        resp.headers().get("server").is_none(),
        "{:?}",
        resp.headers()
    );
    let id = resp.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unavailable");
    assert_eq!(body["request_id"], id.as_str());
}

/// A model server that accepts the connection and never answers: the client gets 504
/// `upstream_timeout` in JSON after `[upstream] read_timeout`, not a request hanging forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_model_server_that_never_answers_times_out_in_json() {
    let mut fx = Fixture::new();
    fx.upstream_extra = "read_timeout = \"1s\"".into();
    fx.approve("rec.jwt", &fx.claims());
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c); // accepted, read from never, answered never
        }
    });
    let pg = Provgate::start(&fx, addr).await;
    pg.wait_ready().await;
    let started = std::time::Instant::now();
    let resp = pg.get("/v1/models", Some(&fx.token(CALLER))).await;
    assert_eq!(resp.status().as_u16(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout");
    held.abort();
}
