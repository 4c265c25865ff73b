//! `provgate check` against the running sidecar: for every case of a decision table, the
//! sidecar decides a real request and `check` evaluates the same registry, configuration
//! file, model directory and caller offline; they must agree on the decision, the reason,
//! the detail and the record. Plus the command's own contract (exit codes, text, several
//! environments, records not yet published).

use provgate::approval::{exception, ApprovalClaims, CallerPattern, Waiver};
use provgate::keys::{jwks_document, KeyKind, SigningKey};

use crate::support::*;

/// The tiers and approvers every case's deployment has.
fn policy_sections(fx: &Fixture, security: &SigningKey) -> String {
    format!(
        "[tiers.critical]\nquorum = [\"owner\", \"security\"]\n\
         [tiers.short]\nmax_lifetime = \"1h\"\n\
         [tiers.sandbox]\nworkloads = [\"spiffe://example.org/ns/sandbox/*\"]\n\
         [tiers.waivable]\nrequired_evidence = [\"red-team\"]\nexceptions = true\n\
         [[trust.approvers]]\nname = \"model-owners\"\nkeys = [\"{}\"]\nroles = [\"owner\"]\n\
         [[trust.approvers]]\nname = \"security-review\"\nkeys = [\"{}\"]\nroles = [\"security\"]\n",
        fx.approver.kid, security.kid
    )
}

/// One case: what the registry holds, the deployment's tier, and who calls.
struct Case {
    name: &'static str,
    /// `[workload] tier`.
    tier: Option<&'static str>,
    /// Record files: (file name, compact JWS), made from the fixture and the security key.
    records: fn(&Fixture, &SigningKey) -> Vec<(&'static str, String)>,
    revoked: &'static str,
    caller: &'static str,
    /// What the sidecar is expected to answer (the comparison is the test; this only
    /// keeps the table honest about what each case exercises).
    want: &'static str,
}

fn signed(fx: &Fixture, c: &ApprovalClaims) -> String {
    provgate::approval::sign(c, &fx.approver).unwrap()
}

fn with(fx: &Fixture, edit: impl FnOnce(&mut ApprovalClaims)) -> String {
    let mut c = fx.claims();
    edit(&mut c);
    signed(fx, &c)
}

fn cases() -> Vec<Case> {
    let other_caller = "spiffe://example.org/ns/other/sa/client";
    vec![
        Case {
            name: "valid record",
            tier: None,
            records: |fx, _| vec![("rec.jwt", with(fx, |_| {}))],
            revoked: "",
            caller: CALLER,
            want: "allow",
        },
        Case {
            name: "caller not in the record",
            tier: None,
            records: |fx, _| vec![("rec.jwt", with(fx, |_| {}))],
            revoked: "",
            caller: other_caller,
            want: "caller_not_allowed",
        },
        Case {
            name: "expired",
            tier: None,
            records: |fx, _| {
                vec![(
                    "rec.jwt",
                    with(fx, |c| {
                        c.iat -= 7200;
                        c.nbf = Some(c.iat);
                        c.exp = c.iat + 60;
                    }),
                )]
            },
            revoked: "",
            caller: CALLER,
            want: "approval_expired",
        },
        Case {
            name: "not yet valid",
            tier: None,
            records: |fx, _| vec![("rec.jwt", with(fx, |c| c.nbf = Some(c.iat + 3000)))],
            revoked: "",
            caller: CALLER,
            want: "approval_expired",
        },
        Case {
            name: "another workload",
            tier: None,
            records: |fx, _| {
                vec![(
                    "rec.jwt",
                    with(fx, |c| {
                        c.workloads = vec!["spiffe://example.org/ns/staging/*".into()]
                    }),
                )]
            },
            revoked: "",
            caller: CALLER,
            want: "deployment_not_bound",
        },
        Case {
            name: "record for another model",
            tier: None,
            records: |fx, _| vec![("rec.jwt", with(fx, |c| c.sub = "other-model".into()))],
            revoked: "",
            caller: CALLER,
            want: "model_mismatch",
        },
        Case {
            name: "no record",
            tier: None,
            records: |_, _| vec![],
            revoked: "",
            caller: CALLER,
            want: "artefact_unmanaged",
        },
        Case {
            name: "revoked record",
            tier: None,
            records: |fx, _| vec![("rec.jwt", with(fx, |_| {}))],
            revoked: "rec-1\n",
            caller: CALLER,
            want: "approval_revoked",
        },
        Case {
            name: "signed by an unknown key",
            tier: None,
            records: |fx, _| {
                let (stranger, _) = SigningKey::generate(KeyKind::Es256).unwrap();
                vec![(
                    "rec.jwt",
                    provgate::approval::sign(&fx.claims(), &stranger).unwrap(),
                )]
            },
            revoked: "",
            caller: CALLER,
            want: "approval_invalid",
        },
        Case {
            name: "record tier not configured",
            tier: None,
            records: |fx, _| vec![("rec.jwt", with(fx, |c| c.tier = "gold".into()))],
            revoked: "",
            caller: CALLER,
            want: "approval_invalid",
        },
        Case {
            name: "longer than the tier allows",
            tier: None,
            records: |fx, _| {
                vec![(
                    "rec.jwt",
                    with(fx, |c| {
                        c.tier = "short".into();
                        c.exp = c.iat + 86_400;
                    }),
                )]
            },
            revoked: "",
            caller: CALLER,
            want: "approval_invalid",
        },
        Case {
            name: "tier confined to other workloads",
            tier: None,
            records: |fx, _| vec![("rec.jwt", with(fx, |c| c.tier = "sandbox".into()))],
            revoked: "",
            caller: CALLER,
            want: "deployment_not_bound",
        },
        Case {
            name: "evidence the tier requires is missing",
            tier: None,
            records: |fx, _| vec![("rec.jwt", with(fx, |c| c.tier = "customer-facing".into()))],
            revoked: "",
            caller: CALLER,
            want: "approval_invalid",
        },
        Case {
            name: "missing evidence waived by an exception",
            tier: None,
            records: |fx, _| {
                let record = with(fx, |c| c.tier = "waivable".into());
                vec![("rec.jwt", record), ("exc.jwt", red_team_exception(fx))]
            },
            revoked: "",
            caller: CALLER,
            want: "allow",
        },
        Case {
            name: "critical deployment, owner only",
            tier: Some("critical"),
            records: |fx, _| vec![("rec.jws", with(fx, |_| {}))],
            revoked: "",
            caller: CALLER,
            want: "approval_invalid",
        },
        Case {
            name: "critical deployment, co-signed",
            tier: Some("critical"),
            records: |fx, security| {
                let owner = with(fx, |_| {});
                vec![(
                    "rec.jws",
                    provgate::approval::cosign(&owner, security).unwrap(),
                )]
            },
            revoked: "",
            caller: CALLER,
            want: "allow",
        },
        Case {
            name: "a newer expired record, an older valid one",
            tier: None,
            records: |fx, _| {
                let newer = with(fx, |c| {
                    c.jti = "rec-2".into();
                    c.version_id = "v43".into();
                    c.iat += 5;
                    c.exp = c.iat + 1;
                    c.nbf = Some(c.iat - 100);
                    c.callers = vec![CallerPattern::Bare(CALLER.into())];
                });
                vec![("rec.jwt", with(fx, |_| {})), ("rec-2.jwt", newer)]
            },
            revoked: "",
            caller: CALLER,
            want: "allow",
        },
    ]
}

fn red_team_exception(fx: &Fixture) -> String {
    let now = provgate::unix_now();
    let claims = exception::ExceptionClaims {
        iss: "security@example.org".into(),
        sub: fx.model.clone(),
        jti: "exc-1".into(),
        iat: now - 10,
        nbf: None,
        exp: now + 3600,
        version_id: "v42".into(),
        artefact: provgate::approval::ArtefactRef {
            digest: fx.digest(),
            signer: None,
            ollama_digest: None,
            base_digest: None,
        },
        waives: Waiver::Evidence("red-team".into()),
        reason: "red-team report due Friday".into(),
        ticket: "https://tickets.example.org/SEC-42".into(),
    };
    exception::sign(&claims, &fx.approver).unwrap()
}

/// A fixture for a case: its registry written, its deployment's configuration in
/// `provgate.toml` (the sidecar and `check` read the same file).
fn case_fixture(case: &Case) -> (Fixture, SigningKey) {
    let mut fx = Fixture::new();
    let (security, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    std::fs::write(
        fx.path("approvers.jwks.json"),
        jwks_document(&[fx.approver.public_jwk.clone(), security.public_jwk.clone()]),
    )
    .unwrap();
    fx.extra = policy_sections(&fx, &security);
    for (file, jws) in (case.records)(&fx, &security) {
        fx.write_record(file, &jws);
    }
    if !case.revoked.is_empty() {
        std::fs::write(fx.registry_dir().join("revoked.txt"), case.revoked).unwrap();
    }
    (fx, security)
}

/// Runs `provgate check --json` for the fixture's deployment, model and `caller`.
fn check_json(fx: &Fixture, config: &std::path::Path, caller: &str) -> serde_json::Value {
    let model = fx.model_dir();
    let caller = format!("{ISSUER}#{caller}");
    let out = run_cli(
        &[
            "check",
            "-c",
            config.to_str().unwrap(),
            "--dir",
            model.to_str().unwrap(),
            "--caller",
            &caller,
            "--json",
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "check --json: {e}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // Exit status: 0 exactly when it would serve.
    assert_eq!(
        out.status.code(),
        Some(if report["serve"] == true { 0 } else { 1 }),
        "{report:#}"
    );
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn check_and_the_sidecar_agree_on_every_case_of_the_decision_table() {
    for case in cases() {
        let (fx, _security) = case_fixture(&case);
        let up = Upstream::start().await;
        let (listen, admin) = (free_port(), free_port());
        let mut config = fx.config(listen, admin, up.addr);
        if let Some(tier) = case.tier {
            config = config.replace(
                &format!("identity = \"{WORKLOAD}\""),
                &format!("identity = \"{WORKLOAD}\"\ntier = \"{tier}\""),
            );
        }
        let pg = Provgate::spawn(fx.dir.path(), "provgate", &config, listen, admin, None).await;
        pg.wait_ready().await;
        let resp = pg.get("/v1/models", Some(&fx.token(case.caller))).await;
        let status = resp.status().as_u16();
        let id = resp.headers()["x-provgate-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let sidecar_reason = body["error"].as_str().map(str::to_string);

        let report = check_json(&fx, &fx.path("provgate.toml"), case.caller);
        let c = &report["deployments"][0]["callers"][0];
        let name = case.name;
        assert_eq!(
            sidecar_reason.as_deref().unwrap_or("allow"),
            case.want,
            "case {name:?}: the sidecar answered {status} {body}"
        );
        assert_eq!(
            c["decision"] == "allow",
            status == 200,
            "case {name:?}: sidecar {status} {body}, check {c:#}"
        );
        assert_eq!(
            c["reason"].as_str(),
            sidecar_reason.as_deref(),
            "case {name:?}: {c:#}"
        );
        if status != 200 {
            let audit = fx.audit_record(&id).await;
            assert_eq!(
                c["detail"], audit["detail"],
                "case {name:?}: {c:#} vs {audit}"
            );
            assert_eq!(
                c["record"].as_str(),
                audit["record_id"].as_str(),
                "case {name:?}"
            );
            // The failed rule is in the report, with the same reason.
            let deployment = &report["deployments"][0];
            let failed = deployment["steps"]
                .as_array()
                .unwrap()
                .iter()
                .chain(
                    deployment["records"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(|r| r["steps"].as_array().unwrap()),
                )
                .any(|s| s["outcome"] == "fail" && s["reason"] == c["reason"]);
            assert!(failed, "case {name:?}: no failed rule says why: {report:#}");
        } else {
            assert_eq!(report["serve"], true, "case {name:?}");
        }
    }
}

#[test]
fn check_reports_every_rule_of_a_record_and_every_environment() {
    let mut fx = Fixture::new();
    let (security, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    std::fs::write(
        fx.path("approvers.jwks.json"),
        jwks_document(&[fx.approver.public_jwk.clone(), security.public_jwk.clone()]),
    )
    .unwrap();
    fx.extra = policy_sections(&fx, &security);
    let staging = fx.path("staging.toml");
    std::fs::write(&staging, fx.config(free_port(), free_port(), free_port())).unwrap();
    let production = fx.path("production.toml");
    std::fs::write(
        &production,
        fx.config(free_port(), free_port(), free_port()).replace(
            &format!("identity = \"{WORKLOAD}\""),
            &format!("identity = \"{WORKLOAD}\"\ntier = \"critical\""),
        ),
    )
    .unwrap();
    // An owner-signed record, valid too long for `short` and missing from the registry:
    // given with --record, as a pipeline checks before it publishes.
    let mut c = fx.claims();
    c.exp = c.iat + 7200;
    let owner = signed(&fx, &c);
    let pending = fx.path("pending.jws");
    std::fs::write(&pending, &owner).unwrap();
    let model = fx.model_dir();
    let args = |extra: &[&str]| {
        let mut a = vec![
            "check".to_string(),
            "-c".into(),
            staging.display().to_string(),
            "-c".into(),
            production.display().to_string(),
            "--dir".into(),
            model.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        run_cli(&a, None)
    };

    // Nothing published: both environments refuse (artefact_unmanaged), exit 1.
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL registry: artefact_unmanaged"), "{text}");

    // With the pending record: staging serves, production lacks its security approver.
    let out = run(&["--record", pending.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["serve"], false);
    let envs = report["deployments"].as_array().unwrap();
    assert_eq!(envs[0]["environment"], "staging");
    assert_eq!(envs[0]["serve"], true, "{:#}", envs[0]);
    assert_eq!(envs[1]["environment"], "production");
    assert_eq!(envs[1]["serve"], false);
    let rules = |env: &serde_json::Value| -> Vec<(String, String)> {
        env["records"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["rule"].as_str().unwrap().to_string(),
                    s["outcome"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let prod = rules(&envs[1]);
    assert!(prod.contains(&("quorum".into(), "fail".into())), "{prod:?}");
    // Every rule of the record is reported, not only up to the first failure.
    for rule in [
        "record_revoked",
        "not_before",
        "expiry",
        "record_model",
        "workload",
        "record_tier",
        "signers",
        "quorum",
        "callers",
    ] {
        assert!(
            prod.iter().any(|(r, _)| r == rule),
            "{rule} missing: {prod:?}"
        );
    }
    // No caller sample: the `callers` rule is shown as skipped.
    assert!(
        prod.contains(&("callers".into(), "skipped".into())),
        "{prod:?}"
    );

    // Co-signed by security: both serve, exit 0; text output names each environment.
    let cosigned = provgate::approval::cosign(&owner, &security).unwrap();
    std::fs::write(&pending, &cosigned).unwrap();
    let out = run(&["--record", pending.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("staging (") && text.contains("production ("),
        "{text}"
    );
    assert_eq!(text.matches("=> would serve").count(), 2, "{text}");

    // Judged a day later, the record has expired.
    let later = (provgate::unix_now() + 86_400).to_string();
    let out = run(&["--record", pending.to_str().unwrap(), "--at", &later]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL expiry: approval_expired"), "{text}");

    // A check that cannot be made exits 2 with a reason.
    let out = run_cli(
        &[
            "check",
            "-c",
            fx.path("missing.toml").to_str().unwrap(),
            "--digest",
            &fx.digest().to_string(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

/// An adapter and its base: the sidecar decides a chat request naming the adapter; `check
/// --model ADAPTER` decides it offline (the base from its configured path).
#[tokio::test(flavor = "multi_thread")]
async fn check_and_the_sidecar_agree_on_adapters() {
    type Pin = fn(&Fixture, provgate::digest::Digest) -> Option<provgate::digest::Digest>;
    let cases: [(&str, Pin, bool, &str); 4] = [
        ("pins the base served", |_, base| Some(base), true, "allow"),
        (
            "pins another base",
            |_, _| Some(provgate::digest::Digest([7; 32])),
            true,
            "model_mismatch",
        ),
        ("pins no base", |_, _| None, true, "approval_invalid"),
        (
            "the base has no record",
            |_, base| Some(base),
            false,
            "artefact_unmanaged",
        ),
    ];
    for (name, pin, base_approved, want) in cases {
        let mut fx = Fixture::new();
        fx.upstream_extra = "api = [\"vllm\"]".into();
        let base_dir = fx.model_dir();
        let adapter_dir = model_dir(&fx, "lora-a", b"adapter a");
        let base_digest = fx.digest();
        if base_approved {
            fx.approve("base.jwt", &fx.claims());
        }
        let mut a = fx.claims();
        a.sub = "lora-a".into();
        a.jti = "rec-lora-a".into();
        a.version_id = "va".into();
        a.artefact.digest = digest_of(&adapter_dir);
        a.artefact.base_digest = pin(&fx, base_digest);
        fx.approve("lora-a.jwt", &a);
        let sections = format!(
            "[[artefacts]]\nmodel = \"{MODEL}\"\npath = \"{}\"\npoll_interval = \"200ms\"\n\
             [[artefacts]]\nmodel = \"lora-a\"\npath = \"{}\"\npoll_interval = \"200ms\"\n\
             kind = \"adapter\"\nbase = \"{MODEL}\"\n",
            base_dir.display(),
            adapter_dir.display()
        );
        let up = Upstream::start().await;
        let (listen, admin) = (free_port(), free_port());
        let config = config_with(&fx, (listen, admin), up.addr, &sections);
        let pg = Provgate::spawn(fx.dir.path(), "adapters", &config, listen, admin, None).await;
        pg.wait_ready().await;
        let resp = pg
            .client
            .post(pg.url("/v1/chat/completions"))
            .bearer_auth(fx.token(CALLER))
            .header("content-type", "application/json")
            .body(r#"{"model":"lora-a","messages":[]}"#)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let id = resp.headers()["x-provgate-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let reason = body["error"].as_str().unwrap_or("allow").to_string();
        assert_eq!(reason, want, "case {name:?}: sidecar {status} {body}");

        let caller = format!("{ISSUER}#{CALLER}");
        let out = run_cli(
            &[
                "check",
                "-c",
                fx.path("adapters.toml").to_str().unwrap(),
                "--model",
                "lora-a",
                "--dir",
                adapter_dir.to_str().unwrap(),
                "--caller",
                &caller,
                "--json",
            ],
            None,
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        let c = &report["deployments"][0]["callers"][0];
        assert_eq!(
            c["reason"].as_str().unwrap_or("allow"),
            reason,
            "case {name:?}: {report:#}"
        );
        assert_eq!(out.status.code(), Some(if want == "allow" { 0 } else { 1 }));
        if status != 200 {
            let audit = fx.audit_record(&id).await;
            assert_eq!(c["detail"], audit["detail"], "case {name:?}");
        }
        // The base's own check is in the report.
        assert_eq!(
            report["deployments"][0]["base"]["model"], MODEL,
            "case {name:?}"
        );
    }
}
