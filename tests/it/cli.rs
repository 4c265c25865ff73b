//! The command line, as a newcomer uses it: validate a config, digest a model, make keys,
//! sign an approval, mint a token, run, and get one request through and one blocked.

use std::path::Path;

use crate::support::*;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_shipped_config_validates() {
    let out = run_cli(&["run", "-c", "config/provgate.toml", "-t"], Some(repo()));
    assert!(ok(&out).contains("configuration is valid"));
}

#[test]
fn a_bad_config_exits_1_naming_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(repo().join("config/provgate.toml"))
        .unwrap()
        .replace("127.0.0.1:8000", "not-an-address")
        .replace("poll_interval = \"1s\"", "poll_interval = \"often\"")
        .replace("config/keys/approvers.jwks.json", "/nonexistent/keys.json");
    std::fs::write(&cfg, text).unwrap();
    let out = run_cli(&["run", "-c", cfg.to_str().unwrap(), "-t"], Some(repo()));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "upstream.address",
        "artefact.poll_interval",
        "trust.approver_keys",
    ] {
        assert!(err.contains(key), "{key} not reported:\n{err}");
    }

    std::fs::write(&cfg, "[listen]\naddres = \"127.0.0.1:1\"\n").unwrap();
    let out = run_cli(&["run", "-c", cfg.to_str().unwrap(), "-t"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("addres"));

    let out = run_cli(&["run", "-c", "/nonexistent/provgate.toml", "-t"], None);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn digest_prints_the_oms_root_and_fails_cleanly() {
    let out = run_cli(&["digest", "config/sample-model"], Some(repo()));
    let digest = ok(&out);
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    let out = run_cli(&["digest", "/nonexistent/model"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model"));
}

#[test]
fn keygen_refuses_to_overwrite_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    let jwks = dir.path().join("k.jwks.json");
    let args = [
        "keygen",
        "--key",
        key.to_str().unwrap(),
        "--jwks",
        jwks.to_str().unwrap(),
    ];
    ok(&run_cli(&args, None));
    let first = std::fs::read(&key).unwrap();
    assert!(!run_cli(&args, None).status.success());
    assert_eq!(std::fs::read(&key).unwrap(), first);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A second key joins the same JWKS.
    let key2 = dir.path().join("k2.key");
    ok(&run_cli(
        &[
            "keygen",
            "--key",
            key2.to_str().unwrap(),
            "--jwks",
            jwks.to_str().unwrap(),
            "--kind",
            "ed25519",
        ],
        None,
    ));
    let set: serde_json::Value = serde_json::from_slice(&std::fs::read(&jwks).unwrap()).unwrap();
    assert_eq!(set["keys"].as_array().unwrap().len(), 2);
}

#[test]
fn approve_rejects_malformed_flags() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("a.key");
    let jwks = dir.path().join("a.jwks.json");
    ok(&run_cli(
        &[
            "keygen",
            "--key",
            key.to_str().unwrap(),
            "--jwks",
            jwks.to_str().unwrap(),
        ],
        None,
    ));
    let base = [
        "approve",
        "--key",
        key.to_str().unwrap(),
        "--iss",
        "a",
        "--model",
        "m",
        "--version-id",
        "v",
        "--workload",
        "w",
        "--caller",
        "c",
    ];
    let with = |extra: &[&str]| {
        let mut v: Vec<&str> = base.to_vec();
        v.extend_from_slice(extra);
        run_cli(&v, None)
    };
    let out = with(&["--digest", "sha256:abc"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--digest"));
    let d = format!("sha256:{}", "ab".repeat(32));
    let out = with(&["--digest", &d, "--evidence", "kind=x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("verdict"));
    let jws = ok(&with(&[
        "--digest",
        &d,
        "--evidence",
        "kind=red-team,verdict=pass,uri=s3://r",
    ]));
    assert_eq!(jws.split('.').count(), 3);
    // An adapter's record pins its base's digest.
    let out = with(&["--digest", &d, "--base-digest", "sha256:abc"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--base-digest"));
    let base = format!("sha256:{}", "cd".repeat(32));
    let jws = ok(&with(&["--digest", &d, "--base-digest", &base]));
    let keys = provgate::keys::KeySet::from_jwks_file(&jwks).unwrap();
    let record = provgate::approval::verify(jws.trim(), &keys).unwrap();
    assert_eq!(
        record.claims.artefact.base_digest.map(|b| b.to_string()),
        Some(base)
    );
}

/// `digest` and `approve --dir` compute the served digest of either serialization.
#[test]
fn digest_and_approve_take_the_serialization() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("w"), vec![1u8; 2500]).unwrap();
    std::fs::write(model.join("empty"), b"").unwrap();
    let m = model.to_str().unwrap();
    let files = ok(&run_cli(&["digest", m], None));
    let shards = ok(&run_cli(
        &[
            "digest",
            m,
            "--serialization",
            "shards",
            "--shard-size",
            "1000",
        ],
        None,
    ));
    assert_ne!(files, shards);
    let listed = ok(&run_cli(
        &[
            "digest",
            m,
            "--serialization",
            "shards",
            "--shard-size",
            "1000",
            "--threads",
            "1",
            "--verbose",
        ],
        None,
    ));
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_once("  ").map(|(_, n)| n))
        .collect();
    assert_eq!(names, ["w:0:1000", "w:1000:2000", "w:2000:2500"]);
    assert_eq!(listed.lines().last(), Some(shards.as_str()));
    // The default shard size is model_signing's: this small file is one shard.
    let one = ok(&run_cli(
        &["digest", m, "--serialization", "shards", "--verbose"],
        None,
    ));
    assert!(one.contains("  w:0:2500"), "{one}");
    for bad in [
        &["digest", m, "--shard-size", "1000"][..],
        &[
            "digest",
            m,
            "--serialization",
            "shards",
            "--shard-size",
            "0",
        ],
        &["digest", m, "--serialization", "blocks"],
    ] {
        let out = run_cli(bad, None);
        assert!(!out.status.success(), "{bad:?}");
    }

    let key = dir.path().join("a.key");
    let jwks = dir.path().join("a.jwks.json");
    ok(&run_cli(
        &[
            "keygen",
            "--key",
            key.to_str().unwrap(),
            "--jwks",
            jwks.to_str().unwrap(),
        ],
        None,
    ));
    let approve = |extra: &[&str]| {
        let mut v = vec![
            "approve",
            "--key",
            key.to_str().unwrap(),
            "--iss",
            "a",
            "--model",
            "m",
            "--version-id",
            "v",
            "--workload",
            "w",
            "--caller",
            "c",
        ];
        v.extend_from_slice(extra);
        run_cli(&v, None)
    };
    let jws = ok(&approve(&[
        "--dir",
        m,
        "--serialization",
        "shards",
        "--shard-size",
        "1000",
    ]));
    let payload = jws.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["artefact"]["digest"], shards.as_str());
    // A given digest is not computed, so a serialization beside it is a mistake.
    let out = approve(&["--digest", &files, "--serialization", "shards"]);
    assert!(!out.status.success());
}

/// The README's five-minute walk-through, with the binary alone.
#[tokio::test(flavor = "multi_thread")]
async fn the_walkthrough_works_with_the_binary_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    std::fs::create_dir_all(d.join("model")).unwrap();
    std::fs::create_dir_all(d.join("approvals")).unwrap();
    std::fs::write(d.join("model/weights.bin"), b"approved weights").unwrap();
    ok(&run_cli(
        &[
            "keygen",
            "--key",
            &p("approver.key"),
            "--jwks",
            &p("approvers.jwks.json"),
        ],
        None,
    ));
    ok(&run_cli(
        &[
            "keygen",
            "--key",
            &p("issuer.key"),
            "--jwks",
            &p("issuer.jwks.json"),
        ],
        None,
    ));
    let digest = ok(&run_cli(&["digest", &p("model")], None));
    ok(&run_cli(
        &[
            "approve",
            "--key",
            &p("approver.key"),
            "--iss",
            "me@example.org",
            "--model",
            MODEL,
            "--version-id",
            "walk-1",
            "--digest",
            &digest,
            "--workload",
            WORKLOAD,
            "--caller",
            CALLER,
            "--ttl",
            "1h",
            "--out",
            &p("approvals/walk-1.jwt"),
        ],
        None,
    ));
    let token = ok(&run_cli(
        &[
            "token",
            "--key",
            &p("issuer.key"),
            "--iss",
            ISSUER,
            "--sub",
            CALLER,
            "--aud",
            "provgate",
        ],
        None,
    ));

    let up = Upstream::start().await;
    let (listen, admin) = (free_port(), free_port());
    let config = std::fs::read_to_string(repo().join("config/provgate.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", &listen.to_string())
        .replace("127.0.0.1:9090", &admin.to_string())
        .replace("127.0.0.1:8000", &up.addr.to_string())
        .replace("config/sample-model", &p("model"))
        .replace("config/approvals", &p("approvals"))
        .replace("config/keys/approvers.jwks.json", &p("approvers.jwks.json"))
        .replace("config/keys/issuer.jwks.json", &p("issuer.jwks.json"))
        .replace("https://issuer.example.org", ISSUER)
        .replace("provgate-audit.jsonl", &p("audit.jsonl"));
    let pg = Provgate::spawn(d, "provgate", &config, listen, admin, None).await;
    pg.wait_ready().await;
    let allowed = pg.get("/v1/models", Some(&token)).await;
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["x-provgate-version-id"], "walk-1");
    let blocked = pg.get("/v1/models", None).await;
    assert_eq!(blocked.status(), 401);
}

/// `provgate run -c config/provgate.toml` on a fresh clone: ready, and the sample approval
/// admits the demo caller. Only the listen addresses are changed, to ephemeral ports.
#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_defaults_start_ready() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    let (listen, admin) = (free_port(), free_port());
    let config = std::fs::read_to_string(repo().join("config/provgate.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", &listen.to_string())
        .replace("127.0.0.1:9090", &admin.to_string())
        .replace("127.0.0.1:8000", &up.addr.to_string())
        .replace(
            "provgate-audit.jsonl",
            dir.path().join("audit.jsonl").to_str().unwrap(),
        );
    let pg = Provgate::spawn(dir.path(), "provgate", &config, listen, admin, Some(repo())).await;
    pg.wait_ready().await;
    let token = ok(&run_cli(
        &[
            "token",
            "--key",
            "config/keys/issuer.demo.key",
            "--iss",
            "https://issuer.example.org",
            "--sub",
            "spiffe://example.org/ns/app/sa/client",
            "--aud",
            "provgate",
        ],
        Some(repo()),
    ));
    let resp = pg.get("/v1/models", Some(&token)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-provgate-version-id"], "demo-v1");
}
