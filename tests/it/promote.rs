//! `provgate promote` through the real binary, into each registry kind: a directory (then a
//! running sidecar serves the promoted record), a real MLflow server (tags and the
//! environment's alias, read back through MLflow's REST API) and `provgate registry serve`'s
//! upload form (bearer token; 401 and nothing written without it). A refused promotion
//! (a lifetime longer than the tier allows, a missing quorum role) leaves each registry as
//! it was; every promotion leaves an audit record that `provgate audit verify` accepts.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::registries::{remote_registry, shared_mlflow};
use crate::support::*;
use provgate::keys::{jwks_document, KeyKind, SigningKey};

/// A fixture whose default tier allows records valid one day at most.
fn fixture() -> Fixture {
    let mut fx = Fixture::new();
    fx.extra = "[tiers.default]\nmax_lifetime = \"1d\"\n".into();
    fx
}

/// Writes the environment's configuration (the sidecar's file) as `NAME.toml`.
fn environment(fx: &Fixture, name: &str) -> PathBuf {
    let path = fx.path(&format!("{name}.toml"));
    std::fs::write(&path, fx.config(free_port(), free_port(), free_port())).unwrap();
    path
}

/// `provgate promote -c CONFIG` of a new record for the fixture's model directory, signed
/// with the fixture's approver key, valid `ttl`; `extra` arguments appended.
fn promote(
    fx: &Fixture,
    config: &Path,
    jti: &str,
    ttl: &str,
    extra: &[&str],
) -> std::process::Output {
    let key = fx.path("approver.key");
    let mut args = vec![
        "promote",
        "-c",
        config.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--iss",
        "approver@example.org",
        "--model",
        &fx.model,
        "--version-id",
        "v7",
        "--jti",
        jti,
        "--ttl",
        ttl,
        "--workload",
        WORKLOAD,
        "--caller",
        "spiffe://example.org/ns/app/sa/*",
    ];
    let dir = fx.model_dir();
    args.extend(["--dir", dir.to_str().unwrap()]);
    args.extend(extra);
    run_cli(&args, None)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(snapshot(&path));
        } else {
            out.insert(path.clone(), std::fs::read(&path).unwrap());
        }
    }
    out
}

/// The promotion records of an audit log, after checking `provgate audit verify` accepts it.
fn promotions(log: &Path) -> Vec<serde_json::Value> {
    let out = run_cli(&["audit", "verify", log.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "audit verify {}: {}{}",
        log.display(),
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "promotion")
        .collect()
}

fn assert_promotion(p: &serde_json::Value, fx: &Fixture, env: &str, outcome: &str, jti: &str) {
    assert_eq!(p["env"], env, "{p}");
    assert_eq!(p["outcome"], outcome, "{p}");
    assert_eq!(p["iss"], "approver@example.org", "{p}");
    assert_eq!(p["kid"], fx.approver.kid.as_str(), "{p}");
    assert_eq!(p["digest"], fx.digest().to_string(), "{p}");
    assert_eq!(p["model"], fx.model.as_str(), "{p}");
    assert_eq!(p["version_id"], "v7", "{p}");
    assert_eq!(p["record_id"], jti, "{p}");
}

// === dir ===

#[tokio::test(flavor = "multi_thread")]
async fn a_passing_promotion_is_published_and_the_sidecar_serves_it() {
    let fx = fixture();
    let staging = environment(&fx, "staging");
    let out = promote(&fx, &staging, "rec-promoted", "12h", &[]);
    assert!(out.status.success(), "promote: {}", stderr(&out));
    let file = fx.registry_dir().join("rec-promoted.jws");
    let record = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        provgate::approval::peek_claims(&record),
        Some((Some(fx.digest()), Some("rec-promoted".to_string())))
    );
    // The default audit log sits beside the registry directory.
    let log = fx.path("approvals.promotions.jsonl");
    let p = promotions(&log);
    assert_eq!(p.len(), 1);
    assert_promotion(&p[0], &fx, "staging", "published", "rec-promoted");
    assert_eq!(p[0]["registry"], "dir");
    assert_eq!(p[0]["published_to"], file.display().to_string());

    // The environment's sidecar, on the same configuration, serves it.
    let (_up, pg) = started(&fx).await;
    let resp = pg.get("/v1/models", Some(&fx.token(CALLER))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-provgate-version-id"], "v7");
}

#[test]
fn a_refused_promotion_leaves_the_directory_byte_identical() {
    let fx = fixture();
    // Something already there, which must stay as it is.
    fx.approve("old.jwt", &fx.claims());
    let before = snapshot(&fx.registry_dir());
    let production = environment(&fx, "production");
    let out = promote(&fx, &production, "rec-long", "30d", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("refused"), "{err}");
    assert!(err.contains("lifetime"), "the failing rule is named: {err}");
    assert_eq!(snapshot(&fx.registry_dir()), before);
    let p = promotions(&fx.path("approvals.promotions.jsonl"));
    assert_eq!(p.len(), 1);
    assert_promotion(&p[0], &fx, "production", "refused", "rec-long");
    let failed = p[0]["failed"].as_array().unwrap();
    assert!(
        failed
            .iter()
            .any(|f| f.as_str().unwrap().starts_with("lifetime")),
        "{failed:?}"
    );
    assert!(p[0].get("published_to").is_none());
}

/// A `critical` environment needs an owner and a security approver: the owner's record alone
/// is refused; promoted with the security approver's co-signature it is published, and the
/// co-signed form replaces nothing else. `--env` names the environment.
#[test]
fn a_quorum_is_met_by_promoting_with_a_second_approvers_co_signature() {
    let mut fx = fixture();
    let (security, pem) = SigningKey::generate(KeyKind::Es256).unwrap();
    std::fs::write(fx.path("security.key"), pem).unwrap();
    std::fs::write(
        fx.path("approvers.jwks.json"),
        jwks_document(&[fx.approver.public_jwk.clone(), security.public_jwk.clone()]),
    )
    .unwrap();
    fx.extra = format!(
        "[tiers.critical]\nquorum = [\"owner\", \"security\"]\n\
         [[trust.approvers]]\nname = \"model-owners\"\nkeys = [\"{}\"]\nroles = [\"owner\"]\n\
         [[trust.approvers]]\nname = \"security-review\"\nkeys = [\"{}\"]\nroles = [\"security\"]\n",
        fx.approver.kid, security.kid
    );
    let config = fx.path("prod-eu.toml");
    let text = fx.config(free_port(), free_port(), free_port()).replace(
        &format!("identity = \"{WORKLOAD}\""),
        &format!("identity = \"{WORKLOAD}\"\ntier = \"critical\""),
    );
    std::fs::write(&config, text).unwrap();
    let before = snapshot(&fx.registry_dir());

    // The owner alone: refused on the quorum, nothing published.
    let out = promote(
        &fx,
        &config,
        "rec-q",
        "12h",
        &["--env", "production", "--tier", "critical"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("quorum"), "{}", stderr(&out));
    assert_eq!(snapshot(&fx.registry_dir()), before);

    // The owner signs (as a pipeline's first approver would), the security approver promotes
    // with a co-signature.
    let signed = fx.path("rec-q.jws");
    let out = run_cli(
        &[
            "approve",
            "--key",
            fx.path("approver.key").to_str().unwrap(),
            "--iss",
            "approver@example.org",
            "--model",
            &fx.model,
            "--version-id",
            "v7",
            "--jti",
            "rec-q",
            "--ttl",
            "12h",
            "--tier",
            "critical",
            "--dir",
            fx.model_dir().to_str().unwrap(),
            "--workload",
            WORKLOAD,
            "--caller",
            "spiffe://example.org/ns/app/sa/*",
            "--out",
            signed.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "approve: {}", stderr(&out));
    let out = run_cli(
        &[
            "promote",
            "-c",
            config.to_str().unwrap(),
            "--env",
            "production",
            "--cosign",
            signed.to_str().unwrap(),
            "--key",
            fx.path("security.key").to_str().unwrap(),
            "--iss",
            "security@example.org",
            "--dir",
            fx.model_dir().to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "promote --cosign: {}", stderr(&out));
    let published = std::fs::read_to_string(fx.registry_dir().join("rec-q.jws")).unwrap();
    assert!(
        published.starts_with('{'),
        "the co-signed form: {published}"
    );
    let keys = provgate::keys::KeySet::from_jwks_file(&fx.path("approvers.jwks.json")).unwrap();
    let record = provgate::approval::verify(&published, &keys).unwrap();
    assert_eq!(
        record.signers,
        [fx.approver.kid.clone(), security.kid.clone()]
    );

    let p = promotions(&fx.path("approvals.promotions.jsonl"));
    assert_eq!(p.len(), 2);
    assert_eq!(p[0]["outcome"], "refused");
    assert_eq!(p[1]["outcome"], "published");
    assert_eq!(p[1]["env"], "production");
    assert_eq!(p[1]["iss"], "security@example.org");
    assert_eq!(p[1]["kid"], security.kid.as_str());
    assert_eq!(p[1]["record_id"], "rec-q");
}

// === http: provgate registry serve --upload-token-file ===

/// `provgate registry serve` with uploads on, killed on drop.
struct UploadRegistry {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl UploadRegistry {
    fn start(dir: &Path, token_file: &Path, work: &Path) -> UploadRegistry {
        let log = work.join("registry-serve.log");
        let mut child = Command::new(bin())
            .args([
                "registry",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--print-address",
            ])
            .arg("--dir")
            .arg(dir)
            .arg("--upload-token-file")
            .arg(token_file)
            .args(["--rescan", "1s"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().parse().unwrap_or_else(|_| {
            panic!(
                "no address printed ({line:?}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        UploadRegistry { child, addr, log }
    }
}

impl Drop for UploadRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn promote_uploads_to_an_http_registry_with_its_token_and_nothing_without() {
    let mut fx = fixture();
    let served = fx.path("served");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::write(fx.path("upload.token"), "up-secret-1\n").unwrap();
    std::fs::write(fx.path("wrong.token"), "up-secret-2\n").unwrap();
    let reg = UploadRegistry::start(&served, &fx.path("upload.token"), fx.dir.path());
    let url = format!("http://{}", reg.addr);
    let log = fx.path("promotions.jsonl");
    let digest = fx.digest();
    let path = format!("{url}/approvals/sha256/{}", digest.hex());

    // A PUT without the token, or with another, is 401 and writes nothing.
    let client = reqwest::Client::new();
    let jws = provgate::approval::sign(&fx.claims(), &fx.approver).unwrap();
    let r = client.put(&path).body(jws.clone()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .put(&path)
        .bearer_auth("up-secret-2")
        .body(jws.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(snapshot(&served).is_empty());

    // promote with the wrong token file: the check passes, the upload is refused (401),
    // the promotion fails and says so in the audit log; nothing written.
    fx.registry = Some(remote_registry(
        "http",
        &url,
        "5m",
        &format!(
            "layout = \"path\"\ntoken_file = \"{}\"",
            fx.path("wrong.token").display()
        ),
    ));
    let wrong = environment(&fx, "staging");
    let audit = ["--audit-log", log.to_str().unwrap()];
    let out = promote(&fx, &wrong, "rec-http", "12h", &audit);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    assert!(snapshot(&served).is_empty());

    // Without --audit-log there is no default beside a remote registry: refused up front.
    let out = promote(&fx, &wrong, "rec-http", "12h", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--audit-log"), "{}", stderr(&out));

    // With the registry's token: uploaded, served at the contract's path.
    fx.registry = Some(remote_registry(
        "http",
        &url,
        "5m",
        &format!(
            "layout = \"path\"\ntoken_file = \"{}\"",
            fx.path("upload.token").display()
        ),
    ));
    let right = environment(&fx, "staging");
    let out = promote(&fx, &right, "rec-http", "12h", &audit);
    assert!(out.status.success(), "promote: {}", stderr(&out));
    assert!(served.join("rec-http.jws").exists());
    let mut body = String::new();
    for _ in 0..100 {
        let r = client.get(&path).send().await.unwrap();
        if r.status() == 200 {
            body = r.text().await.unwrap();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        provgate::approval::peek_claims(body.trim()).and_then(|c| c.1),
        Some("rec-http".to_string()),
        "served: {body:?}\n{}",
        std::fs::read_to_string(&reg.log).unwrap_or_default()
    );

    let p = promotions(&log);
    assert_eq!(p.len(), 2);
    assert_promotion(&p[0], &fx, "staging", "failed", "rec-http");
    assert_promotion(&p[1], &fx, "staging", "published", "rec-http");
    assert_eq!(p[1]["registry"], "http");
    assert_eq!(p[1]["published_to"], path);
}

// === MLflow ===

/// The version an alias of a registered model points at (None: no such alias).
async fn alias(url: &str, model: &str, alias: &str) -> Option<String> {
    let r = reqwest::Client::new()
        .get(format!("{url}/api/2.0/mlflow/registered-models/alias"))
        .query(&[("name", model), ("alias", alias)])
        .send()
        .await
        .unwrap();
    if !r.status().is_success() {
        return None;
    }
    let v: serde_json::Value = r.json().await.unwrap();
    v["model_version"]["version"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn promote_to_mlflow_sets_tags_and_alias_only_when_the_check_passes() {
    let Some(ml) = shared_mlflow().await else {
        return;
    };
    let mut fx = fixture();
    fx.model = "promote-mlflow-model".into();
    // The MLflow server is shared and searched by digest: a digest of this test's own keeps
    // its record (signed by a key the other tests do not trust) out of their answers.
    std::fs::write(fx.model_dir().join("promote.txt"), b"promote-mlflow").unwrap();
    fx.registry = Some(remote_registry("mlflow", &ml.url, "5m", ""));
    let version = ml.create_version(&fx.model).await;
    let env = environment(&fx, "production");
    let log = fx.path("promotions.jsonl");
    let tags_before = ml.tags(&fx.model, &version).await;

    // Refused (lifetime): tags and aliases unchanged.
    let args = ["--version", &version, "--audit-log", log.to_str().unwrap()];
    let out = promote(&fx, &env, "rec-ml-long", "30d", &args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(ml.tags(&fx.model, &version).await, tags_before);
    assert_eq!(alias(&ml.url, &fx.model, "production").await, None);

    // Passing: the record and digest tags as the sidecar reads them, and the alias.
    let out = promote(&fx, &env, "rec-ml", "12h", &args);
    assert!(out.status.success(), "promote: {}", stderr(&out));
    let tags = ml.tags(&fx.model, &version).await;
    let tag = |key: &str| {
        tags.as_array()
            .unwrap()
            .iter()
            .find(|t| t["key"] == key)
            .map(|t| t["value"].as_str().unwrap().to_string())
    };
    assert_eq!(
        tag("provgate.artefact_digest"),
        Some(fx.digest().to_string())
    );
    let record = tag("provgate.approval").unwrap();
    assert_eq!(
        provgate::approval::peek_claims(&record).and_then(|c| c.1),
        Some("rec-ml".to_string())
    );
    assert_eq!(
        alias(&ml.url, &fx.model, "production").await,
        Some(version.clone())
    );

    let p = promotions(&log);
    assert_eq!(p.len(), 2);
    assert_promotion(&p[0], &fx, "production", "refused", "rec-ml-long");
    assert_promotion(&p[1], &fx, "production", "published", "rec-ml");
    assert_eq!(p[1]["registry"], "mlflow");

    // And a sidecar on the same configuration serves it.
    let (_up, pg) = started(&fx).await;
    let resp = pg.get("/v1/models", Some(&fx.token(CALLER))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-provgate-version-id"], "v7");
}
