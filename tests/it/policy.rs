//! Approval policy through the real binary: issuer-qualified callers (a token from one
//! issuer never matches a caller pattern meant for another), and configurations whose
//! issuers could assert the same caller names refused at `-t`.

use std::time::Duration;

use provgate::approval::CallerPattern;
use provgate::keys::{jwks_document, KeyKind, SigningKey};

use crate::support::*;

const ISSUER_B: &str = "https://issuer-b.test";

/// A second issuer, "issuer B" (another cluster), its key file written into the fixture;
/// returns its signing key and the `[[callers.issuers]]` block (with `extra` lines).
fn issuer_b(fx: &Fixture, extra: &str) -> (SigningKey, String) {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let file = fx.path("issuer-b.jwks.json");
    std::fs::write(&file, jwks_document(std::slice::from_ref(&key.public_jwk))).unwrap();
    let block = format!(
        "[[callers.issuers]]\nissuer = \"{ISSUER_B}\"\njwks_file = \"{}\"\naudiences = [\"provgate\"]\n{extra}\n",
        file.display()
    );
    (key, block)
}

fn token_b(key: &SigningKey, sub: &str) -> String {
    provgate::identity::mint_token(
        key,
        ISSUER_B,
        sub,
        &["provgate".to_string()],
        Duration::from_secs(600),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn issuer_b_cannot_use_issuer_a_caller_names() {
    let mut fx = Fixture::new();
    let (key_b, block) = issuer_b(&fx, "qualified = true");
    fx.extra = block;
    // The record names CALLER bare: meant for issuer A's callers.
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;

    let a = pg.get("/v1/models", Some(&fx.token(CALLER))).await;
    assert_eq!(a.status(), 200);
    let seen = &up.requests()[0];
    assert_eq!(seen.headers["x-provgate-caller"], CALLER);
    assert_eq!(seen.headers["x-provgate-caller-issuer"], ISSUER);

    // Issuer B vouches for the same name: not the caller the record means.
    let b = pg.get("/v1/models", Some(&token_b(&key_b, CALLER))).await;
    assert_eq!(b.status(), 403);
    let body: serde_json::Value = b.json().await.unwrap();
    assert_eq!(body["error"], "caller_not_allowed");
    assert_eq!(up.requests().len(), 1);

    // A newer record that names issuer B's caller explicitly lets it in, and only it.
    let mut c = fx.claims();
    c.jti = "rec-2".into();
    c.version_id = "v43".into();
    c.iat += 1;
    c.callers = vec![CallerPattern::Qualified {
        iss: ISSUER_B.into(),
        sub: CALLER.into(),
    }];
    fx.approve("rec-2.jwt", &c);
    let token = token_b(&key_b, CALLER);
    pg.eventually(Duration::from_secs(10), || async {
        pg.get("/v1/models", Some(&token)).await.status() == 200
    })
    .await;
    let last = up.requests().pop().unwrap();
    assert_eq!(last.headers["x-provgate-caller"], CALLER);
    assert_eq!(last.headers["x-provgate-caller-issuer"], ISSUER_B);
    assert_eq!(last.headers["x-provgate-version-id"], "v43");
    // A client cannot claim an issuer for itself.
    let spoof = pg
        .client
        .get(pg.url("/v1/models"))
        .bearer_auth(fx.token(CALLER))
        .header("x-provgate-caller-issuer", ISSUER_B)
        .send()
        .await
        .unwrap();
    assert_eq!(spoof.status(), 200);
    let last = up.requests().pop().unwrap();
    assert_eq!(
        last.headers
            .get_all("x-provgate-caller-issuer")
            .iter()
            .count(),
        1
    );
    assert_eq!(last.headers["x-provgate-caller-issuer"], ISSUER);
}

#[test]
fn two_issuers_that_could_assert_the_same_names_are_refused_at_check() {
    let mut fx = Fixture::new();
    let (_, block) = issuer_b(&fx, "");
    fx.extra = block;
    let listen = free_port();
    let cfg = fx.path("two-issuers.toml");
    std::fs::write(&cfg, fx.config(listen, free_port(), free_port())).unwrap();
    let out = run_cli(&["run", "-c", cfg.to_str().unwrap(), "-t"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted:\n{stderr}");
    assert!(
        stderr.contains("callers.issuers[1].qualified"),
        "no reason given:\n{stderr}"
    );

    // Qualifying issuer B makes the same configuration acceptable.
    let (_, block) = issuer_b(&fx, "qualified = true");
    fx.extra = block;
    std::fs::write(&cfg, fx.config(listen, free_port(), free_port())).unwrap();
    let out = run_cli(&["run", "-c", cfg.to_str().unwrap(), "-t"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fixture whose deployment is `critical`: records need an `owner` (the fixture's approver
/// key) and a `security` approver (a second key, written to `security.key`), distinct.
struct Quorum {
    fx: Fixture,
    security: SigningKey,
}

fn quorum(registry: Option<String>) -> Quorum {
    let mut fx = Fixture::new();
    let (security, pem) = SigningKey::generate(KeyKind::Es256).unwrap();
    std::fs::write(fx.path("security.key"), pem).unwrap();
    std::fs::write(
        fx.path("approvers.jwks.json"),
        jwks_document(&[fx.approver.public_jwk.clone(), security.public_jwk.clone()]),
    )
    .unwrap();
    fx.registry = registry;
    fx.extra = format!(
        "[tiers.critical]\nquorum = [\"owner\", \"security\"]\n\
         [[trust.approvers]]\nname = \"model-owners\"\nkeys = [\"{}\"]\nroles = [\"owner\"]\n\
         [[trust.approvers]]\nname = \"security-review\"\nkeys = [\"{}\"]\nroles = [\"security\"]\n",
        fx.approver.kid, security.kid
    );
    Quorum { fx, security }
}

/// Starts provgate for `q` with `[workload] tier = "critical"`.
async fn start_critical(q: &Quorum, up: &Upstream) -> Provgate {
    let (listen, admin) = (free_port(), free_port());
    let config = q.fx.config(listen, admin, up.addr).replace(
        &format!("identity = \"{WORKLOAD}\""),
        &format!("identity = \"{WORKLOAD}\"\ntier = \"critical\""),
    );
    assert!(config.contains("tier = \"critical\""));
    let pg = Provgate::spawn(q.fx.dir.path(), "critical", &config, listen, admin, None).await;
    pg.wait_ready().await;
    pg
}

/// `provgate approve --cosign` through the binary: the security approver co-signs `record`.
fn cosign_cli(q: &Quorum, record: &str, extra: &[&str]) -> String {
    let existing = q.fx.path("existing.jws");
    std::fs::write(&existing, record).unwrap();
    let key = q.fx.path("security.key");
    let mut args = vec![
        "approve",
        "--cosign",
        existing.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = run_cli(&args, None);
    assert!(
        out.status.success(),
        "approve --cosign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn status(pg: &Provgate, token: &str) -> (u16, String) {
    let r = pg.get("/v1/models", Some(token)).await;
    let s = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    (s, body["error"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cosigned_record_from_a_directory_meets_the_quorum() {
    let q = quorum(None);
    let fx = &q.fx;
    let owner_only = provgate::approval::sign(&fx.claims(), &fx.approver).unwrap();
    fx.write_record("rec.jws", &owner_only);
    let up = Upstream::start().await;
    let pg = start_critical(&q, &up).await;
    let token = fx.token(CALLER);
    // The record claims the lowest tier; the deployment's quorum applies all the same, and
    // the audit record says why.
    let resp = pg.get("/v1/models", Some(&token)).await;
    assert_eq!(resp.status(), 403);
    let id = resp.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let audit = fx.audit_record(&id).await;
    assert_eq!(audit["reason"], "approval_invalid");
    assert_eq!(
        audit["detail"],
        "quorum not met: the tier's roles need distinct approvers who signed"
    );

    // Two signatures by keys of one approver would count once; a security co-signature
    // (through `provgate approve --cosign`, stdout) completes the quorum.
    let cosigned = cosign_cli(&q, &owner_only, &[]);
    assert!(cosigned.starts_with('{') && !cosigned.contains('\n'));
    fx.write_record("rec.jws", &cosigned);
    pg.eventually(Duration::from_secs(10), || async {
        status(&pg, &token).await.0 == 200
    })
    .await;
    assert_eq!(
        up.requests().last().unwrap().headers["x-provgate-version-id"],
        "v42"
    );

    // The security approver alone is not enough either.
    let mut c = fx.claims();
    c.jti = "rec-2".into();
    c.version_id = "v43".into();
    let security_only = provgate::approval::sign(&c, &q.security).unwrap();
    std::fs::remove_file(fx.registry_dir().join("rec.jws")).unwrap();
    fx.write_record("rec-2.jws", &security_only);
    pg.eventually(Duration::from_secs(10), || async {
        status(&pg, &token).await == (403, "approval_invalid".into())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cosigned_record_from_the_http_registry_meets_the_quorum() {
    let registry = crate::registries::HttpRegistry::start("t").await;
    let q = quorum(None);
    std::fs::write(q.fx.path("registry.token"), "t\n").unwrap();
    let q = Quorum {
        fx: {
            let mut fx = q.fx;
            fx.registry = Some(crate::registries::remote_registry(
                "http",
                &format!("http://{}/", registry.addr),
                "1h",
                &format!("token_file = \"{}\"", fx.path("registry.token").display()),
            ));
            fx
        },
        security: q.security,
    };
    let owner_only = provgate::approval::sign(&q.fx.claims(), &q.fx.approver).unwrap();
    let cosigned = cosign_cli(&q, &owner_only, &[]);
    // One record per line: the co-signed one next to an owner-only one.
    registry.answer(200, format!("{owner_only}\n{cosigned}\n"), None);
    let up = Upstream::start().await;
    let pg = start_critical(&q, &up).await;
    assert_eq!(status(&pg, &q.fx.token(CALLER)).await, (200, String::new()));
    registry.answer(200, format!("{owner_only}\n"), Some("\"2\""));
    pg.eventually(Duration::from_secs(10), || async {
        status(&pg, &q.fx.token(CALLER)).await == (403, "approval_invalid".into())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cosigned_record_from_mlflow_meets_the_quorum() {
    let Some(ml) = crate::registries::shared_mlflow().await else {
        return;
    };
    let mut q = quorum(Some(crate::registries::remote_registry(
        "mlflow", &ml.url, "1h", "",
    )));
    q.fx.model = "cosigned-quorum".into();
    // A digest of its own: the shared MLflow server finds versions by digest, and other
    // tests' fixtures hash to the same one.
    std::fs::write(q.fx.model_dir().join("cosigned.txt"), b"quorum").unwrap();
    let version = ml.create_version(&q.fx.model).await;
    let owner_only = provgate::approval::sign(&q.fx.claims(), &q.fx.approver).unwrap();
    // Co-sign and publish onto the MLflow model version in one step.
    let model = q.fx.model.clone();
    cosign_cli(
        &q,
        &owner_only,
        &[
            "--model",
            &model,
            "--publish-mlflow",
            &ml.url,
            "--version",
            &version,
        ],
    );
    let tags = ml.tags(&q.fx.model, &version).await.to_string();
    assert!(tags.contains("signatures"), "co-signed record tag: {tags}");
    let up = Upstream::start().await;
    let pg = start_critical(&q, &up).await;
    assert_eq!(status(&pg, &q.fx.token(CALLER)).await, (200, String::new()));
}

/// Writes a JWKS of `keys` as the approver key file, atomically (rename).
fn write_approver_keys(fx: &Fixture, text: &str) {
    let tmp = fx.path(".approvers.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, fx.path("approvers.jwks.json")).unwrap();
}

async fn reloads(pg: &Provgate, result: &str) -> f64 {
    pg.metric(&format!(
        "provgate_trust_reloads_total{{result=\"{result}\",what=\"approver_keys\"}}"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approver_key_removed_while_running_ends_its_approvals() {
    let fx = Fixture::new();
    let (spare, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let both = jwks_document(&[fx.approver.public_jwk.clone(), spare.public_jwk.clone()]);
    write_approver_keys(&fx, &both);
    fx.approve("rec.jwt", &fx.claims());
    let (_up, pg) = started(&fx).await;
    let token = fx.token(CALLER);
    assert_eq!(status(&pg, &token).await, (200, String::new()));

    // A reload that fails keeps the previous keys, and says so.
    write_approver_keys(&fx, "{not json");
    pg.eventually(Duration::from_secs(10), || async {
        reloads(&pg, "error").await >= 1.0
    })
    .await;
    assert_eq!(status(&pg, &token).await, (200, String::new()));
    assert!(
        pg.logs().contains("approver keys not reloaded"),
        "{}",
        pg.logs()
    );

    // The approver's key leaves the trust file: its record approves nothing, no restart.
    write_approver_keys(&fx, &jwks_document(std::slice::from_ref(&spare.public_jwk)));
    let took = pg
        .eventually(Duration::from_secs(10), || async {
            status(&pg, &token).await == (403, "approval_invalid".into())
        })
        .await;
    eprintln!("approver key withdrawn within {took:?}");
    assert!(reloads(&pg, "ok").await >= 1.0);

    // Back in the file and a SIGHUP: its approvals count again.
    write_approver_keys(&fx, &both);
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pg.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    pg.eventually(Duration::from_secs(10), || async {
        status(&pg, &token).await == (200, String::new())
    })
    .await;
    pg.eventually(Duration::from_secs(5), || async {
        pg.logs().contains("SIGHUP: re-reading trust files")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_issuer_key_added_to_its_file_while_running_is_trusted() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    let (_up, pg) = started(&fx).await;
    let (rotated, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let token = provgate::identity::mint_token(
        &rotated,
        ISSUER,
        CALLER,
        &["provgate".to_string()],
        Duration::from_secs(600),
    )
    .unwrap();
    assert_eq!(status(&pg, &token).await, (401, "token_invalid".into()));
    let tmp = fx.path(".issuer.tmp");
    std::fs::write(
        &tmp,
        jwks_document(&[fx.issuer.public_jwk.clone(), rotated.public_jwk.clone()]),
    )
    .unwrap();
    std::fs::rename(&tmp, fx.path("issuer.jwks.json")).unwrap();
    pg.eventually(Duration::from_secs(10), || async {
        status(&pg, &token).await == (200, String::new())
    })
    .await;
    assert!(
        pg.metric("provgate_trust_reloads_total{result=\"ok\",what=\"issuer_keys\"}")
            .await
            >= 1.0
    );
}

/// `provgate except` through the binary: an exception by the fixture's approver for its
/// record `v42`, waiving `waives` (`--waive-evidence red-team`, say), valid for `ttl`.
fn except_cli(fx: &Fixture, jti: &str, waives: &[&str], ttl: &str) -> String {
    let key = fx.path("approver.key");
    let digest = fx.digest().to_string();
    let mut args = vec![
        "except",
        "--key",
        key.to_str().unwrap(),
        "--iss",
        "security@example.org",
        "--model",
        &fx.model,
        "--version-id",
        "v42",
        "--digest",
        &digest,
        "--reason",
        "red-team report due Friday",
        "--ticket",
        "https://tickets.example.org/SEC-42",
        "--ttl",
        ttl,
        "--jti",
        jti,
    ];
    args.extend_from_slice(waives);
    let out = run_cli(&args, None);
    assert!(
        out.status.success(),
        "except: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exception_from_a_directory_waives_missing_evidence_until_revoked() {
    let mut fx = Fixture::new();
    fx.extra = "[tiers.exempt]\nrequired_evidence = [\"security-test\", \"red-team\"]\n\
                exceptions = true\nmax_exception_lifetime = \"2d\"\n"
        .into();
    let mut c = fx.claims();
    c.tier = "exempt".into();
    // The record has a passing security test and no red-team result.
    fx.approve("rec.jwt", &c);
    let up = Upstream::start().await;
    let (listen, admin) = (free_port(), free_port());
    let config = fx.config(listen, admin, up.addr).replace(
        &format!("identity = \"{WORKLOAD}\""),
        &format!("identity = \"{WORKLOAD}\"\ntier = \"exempt\""),
    );
    let pg = Provgate::spawn(fx.dir.path(), "exempt", &config, listen, admin, None).await;
    pg.wait_ready().await;
    let token = fx.token(CALLER);
    assert_eq!(status(&pg, &token).await, (403, "approval_invalid".into()));

    // An exception longer than the tier allows (3d > 2d) waives nothing.
    let too_long = except_cli(&fx, "x-long", &["--waive-evidence", "red-team"], "3d");
    let dir = fx.registry_dir().join("exceptions");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(fx.path(".x-long.tmp"), &too_long).unwrap();
    std::fs::rename(fx.path(".x-long.tmp"), dir.join("x-long.jwt")).unwrap();
    pg.eventually(Duration::from_secs(10), || async {
        let resp = pg.get("/v1/models", Some(&token)).await;
        assert_eq!(resp.status(), 403);
        let id = resp.headers()["x-provgate-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        fx.audit_record(&id).await["detail"] == "exception is valid longer than its tier allows"
    })
    .await;

    // One within the tier's maximum, beside the record (told apart by its typ): allowed,
    // audited with the exception's ID although allowed requests are not otherwise audited.
    let x1 = except_cli(&fx, "x1", &["--waive-evidence", "red-team"], "1d");
    fx.write_record("x1.jwt", &x1);
    pg.eventually(Duration::from_secs(10), || async {
        status(&pg, &token).await.0 == 200
    })
    .await;
    let resp = pg.get("/v1/models", Some(&token)).await;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let audit = fx.audit_record(&id).await;
    assert_eq!(audit["decision"], "allow", "{audit}");
    assert_eq!(audit["exceptions"][0]["id"], "x1", "{audit}");
    assert_eq!(audit["exceptions"][0]["waives"], "evidence:red-team");
    assert_eq!(
        audit["exceptions"][0]["ticket"],
        "https://tickets.example.org/SEC-42"
    );
    let model = &fx.model;
    let allowed = pg
        .metric(&format!(
            "provgate_exception_requests_total{{model=\"{model}\",version_id=\"v42\"}}"
        ))
        .await;
    assert!(allowed >= 2.0, "exception requests counted: {allowed}");
    let exp = audit["exceptions"][0]["exp"].as_f64().unwrap();
    let gauge = pg
        .metric(&format!(
            "provgate_exception_expiry_timestamp_seconds{{model=\"{model}\",version_id=\"v42\"}}"
        ))
        .await;
    assert_eq!(gauge, exp);

    // revoked.txt names the exception: refused again, no restart.
    fx.write_record("revoked.txt", "x1\n");
    pg.eventually(Duration::from_secs(10), || async {
        status(&pg, &token).await == (403, "approval_revoked".into())
    })
    .await;
}

/// Rewrites the running `critical` config atomically (rename), as an operator's tooling would.
fn write_config(q: &Quorum, text: &str) {
    let tmp = q.fx.path(".critical.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, q.fx.path("critical.toml")).unwrap();
}

async fn config_reloads(pg: &Provgate, result: &str) -> f64 {
    pg.metric(&format!(
        "provgate_trust_reloads_total{{result=\"{result}\",what=\"trust_config\"}}"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approver_removed_from_the_config_while_running_ends_its_approvals() {
    let q = quorum(None);
    let fx = &q.fx;
    let owner_only = provgate::approval::sign(&fx.claims(), &fx.approver).unwrap();
    fx.write_record("rec.jws", &cosign_cli(&q, &owner_only, &[]));
    let up = Upstream::start().await;
    let pg = start_critical(&q, &up).await;
    let token = fx.token(CALLER);
    assert_eq!(status(&pg, &token).await, (200, String::new()));
    let original = std::fs::read_to_string(fx.path("critical.toml")).unwrap();

    // A [trust] section that does not validate (one key, two approvers) keeps the previous
    // approvers, and says so in the log and the metric.
    let security_block = format!(
        "[[trust.approvers]]\nname = \"security-review\"\nkeys = [\"{}\"]\nroles = [\"security\"]\n",
        q.security.kid
    );
    assert!(original.contains(&security_block));
    let clash = original.replace(
        &security_block,
        &format!(
            "[[trust.approvers]]\nname = \"security-review\"\nkeys = [\"{}\", \"{}\"]\nroles = [\"security\"]\n",
            q.security.kid, fx.approver.kid
        ),
    );
    write_config(&q, &clash);
    pg.eventually(Duration::from_secs(10), || async {
        config_reloads(&pg, "error").await >= 1.0
    })
    .await;
    assert_eq!(status(&pg, &token).await, (200, String::new()));
    assert!(
        pg.logs().contains("approvers not reloaded"),
        "{}",
        pg.logs()
    );

    // The security approver's role is taken away in the config: the co-signed record no
    // longer meets the quorum, without a restart.
    let demoted = original.replace(
        &security_block,
        &security_block.replace("roles = [\"security\"]", "roles = [\"auditor\"]"),
    );
    write_config(&q, &demoted);
    let took = pg
        .eventually(Duration::from_secs(10), || async {
            status(&pg, &token).await == (403, "approval_invalid".into())
        })
        .await;
    eprintln!("approver role withdrawn within {took:?}");
    assert!(config_reloads(&pg, "ok").await >= 1.0);

    // Removed altogether: still refused; restored, and a SIGHUP: allowed again.
    write_config(&q, &original.replace(&security_block, ""));
    pg.eventually(Duration::from_secs(10), || async {
        config_reloads(&pg, "ok").await >= 2.0
    })
    .await;
    assert_eq!(status(&pg, &token).await, (403, "approval_invalid".into()));
    write_config(&q, &original);
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pg.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    pg.eventually(Duration::from_secs(10), || async {
        status(&pg, &token).await == (200, String::new())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exception_from_mlflow_waives_missing_evidence() {
    let Some(ml) = crate::registries::shared_mlflow().await else {
        return;
    };
    let mut fx = Fixture::new();
    fx.registry = Some(crate::registries::remote_registry(
        "mlflow", &ml.url, "1h", "",
    ));
    fx.model = "excepted-mlflow".into();
    // A digest of its own (the shared server finds versions by digest).
    std::fs::write(fx.model_dir().join("excepted.txt"), b"exception").unwrap();
    fx.extra = "[tiers.exempt]\nrequired_evidence = [\"security-test\", \"red-team\"]\n\
                exceptions = true\nmax_exception_lifetime = \"2d\"\n"
        .into();
    let version = ml.create_version(&fx.model).await;
    let mut c = fx.claims();
    c.tier = "exempt".into();
    let record = provgate::approval::sign(&c, &fx.approver).unwrap();
    let digest = fx.digest().to_string();
    ml.set_tag(&fx.model, &version, "provgate.artefact_digest", &digest)
        .await;
    ml.set_tag(&fx.model, &version, "provgate.approval", &record)
        .await;
    let up = Upstream::start().await;
    let (listen, admin) = (free_port(), free_port());
    let config = fx.config(listen, admin, up.addr).replace(
        &format!("identity = \"{WORKLOAD}\""),
        &format!("identity = \"{WORKLOAD}\"\ntier = \"exempt\""),
    );
    let pg = Provgate::spawn(fx.dir.path(), "exempt", &config, listen, admin, None).await;
    pg.wait_ready().await;
    let token = fx.token(CALLER);
    assert_eq!(status(&pg, &token).await, (403, "approval_invalid".into()));
    let x = except_cli(&fx, "x-mlflow", &["--waive-evidence", "red-team"], "1d");
    ml.set_tag(&fx.model, &version, "provgate.exception.redteam", &x)
        .await;
    pg.eventually(Duration::from_secs(15), || async {
        status(&pg, &token).await.0 == 200
    })
    .await;
    // Counted when the request is logged, just after its response is sent.
    let counter = format!(
        "provgate_exception_requests_total{{model=\"{}\",version_id=\"v42\"}}",
        fx.model
    );
    pg.eventually(Duration::from_secs(5), || async {
        pg.metric(&counter).await >= 1.0
    })
    .await;
    // The tag removed: refused again.
    ml.delete_tag(&fx.model, &version, "provgate.exception.redteam")
        .await;
    pg.eventually(Duration::from_secs(15), || async {
        status(&pg, &token).await == (403, "approval_invalid".into())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exception_from_the_http_registry_waives_a_quorum_role() {
    let registry = crate::registries::HttpRegistry::start("t").await;
    let mut q = quorum(None);
    std::fs::write(q.fx.path("registry.token"), "t\n").unwrap();
    q.fx.registry = Some(crate::registries::remote_registry(
        "http",
        &format!("http://{}/", registry.addr),
        "1h",
        &format!("token_file = \"{}\"", q.fx.path("registry.token").display()),
    ));
    // The critical tier lets the security approver waive its own review for a day.
    q.fx.extra = q.fx.extra.replace(
        "quorum = [\"owner\", \"security\"]\n",
        "quorum = [\"owner\", \"security\"]\nexceptions = true\n\
         max_exception_lifetime = \"1d\"\nexception_roles = [\"security\"]\n",
    );
    assert!(q.fx.extra.contains("exception_roles"));
    let owner_only = provgate::approval::sign(&q.fx.claims(), &q.fx.approver).unwrap();
    registry.answer(200, format!("{owner_only}\n"), None);
    let up = Upstream::start().await;
    let pg = start_critical(&q, &up).await;
    let token = q.fx.token(CALLER);
    assert_eq!(status(&pg, &token).await, (403, "approval_invalid".into()));

    // The same answer with an exception line (told apart by its typ), signed by the
    // security approver's key through `provgate except`.
    let key = q.fx.path("security.key");
    let digest = q.fx.digest().to_string();
    let out = run_cli(
        &[
            "except",
            "--key",
            key.to_str().unwrap(),
            "--iss",
            "security@example.org",
            "--model",
            &q.fx.model,
            "--version-id",
            "v42",
            "--digest",
            &digest,
            "--waive-role",
            "security",
            "--reason",
            "pen test booked",
            "--ticket",
            "urn:ticket:SEC-9",
            "--ttl",
            "12h",
            "--jti",
            "x-http",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exception = String::from_utf8(out.stdout).unwrap();
    registry.answer(
        200,
        format!("{owner_only}\n{}\n", exception.trim()),
        Some("\"2\""),
    );
    pg.eventually(Duration::from_secs(10), || async {
        status(&pg, &token).await == (200, String::new())
    })
    .await;
    let resp = pg.get("/v1/models", Some(&token)).await;
    let id = resp.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let audit = q.fx.audit_record(&id).await;
    assert_eq!(audit["exceptions"][0]["id"], "x-http", "{audit}");
    assert_eq!(audit["exceptions"][0]["waives"], "role:security");
}
