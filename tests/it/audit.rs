//! The audit trail through the real binary: bounded lines against a hostile request target,
//! a start that survives any unreadable last line, rotation under load with one chain,
//! signed checkpoints that catch truncation, summaries instead of silent loss, an unwritable
//! log with `fail_closed`, and the `audit query|summary|export` tools on a generated
//! multi-segment log (the OCSF export validated against the OCSF JSON schema).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// Starts provgate for `fx` with extra `[audit]` keys and environment variables, and waits
/// until it is ready.
async fn start_with(
    fx: &Fixture,
    upstream: std::net::SocketAddr,
    audit_keys: &str,
    env: &[(&str, &str)],
) -> Provgate {
    let (listen, admin) = (free_port(), free_port());
    let config = fx
        .config(listen, admin, upstream)
        .replace("[audit]\n", &format!("[audit]\n{audit_keys}\n"));
    let path = fx.path("provgate.toml");
    std::fs::write(&path, config).unwrap();
    let log = fx.path(&format!("provgate-{}.log", listen.port()));
    let mut cmd = Command::new(bin());
    cmd.args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let pg = Provgate {
        child: cmd.spawn().unwrap(),
        listen,
        admin,
        log,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    };
    pg.wait_ready().await;
    pg
}

/// Stops provgate with SIGINT (pingora's fast shutdown) and waits for it to exit, so the
/// audit writer's shutdown checkpoint is written.
fn interrupt(mut pg: Provgate) {
    let pid = pg.child.id().to_string();
    let st = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = pg.child.try_wait().unwrap() {
            assert!(status.success(), "exit {status}:\n{}", pg.logs());
            return;
        }
        assert!(Instant::now() < deadline, "no exit:\n{}", pg.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one raw HTTP/1.1 request line (no client-side normalisation) and returns the status.
async fn raw_get(pg: &Provgate, target: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(pg.listen).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut resp)).await;
    let text = String::from_utf8_lossy(&resp);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The longest line in the active audit file.
fn longest_line(fx: &Fixture) -> usize {
    std::fs::read(fx.audit_path())
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0)
}

/// Whole lines of every segment, oldest first, parsed.
fn all_records(fx: &Fixture) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fx.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("audit.jsonl.") && n[12..].bytes().all(|b| b.is_ascii_digit())
        })
        .collect();
    files.sort();
    files.push(fx.audit_path());
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for l in text.lines() {
            if let Ok(v) = serde_json::from_str(l) {
                out.push(v);
            }
        }
    }
    out
}

fn cli(args: &[&str]) -> (i32, String) {
    let out = run_cli(args, None);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// Sends `n` unauthenticated requests (each denied `token_missing`) over `conns`
/// keep-alive connections.
async fn deny_many(pg: &Provgate, n: usize, conns: usize) {
    let url = Arc::new(pg.url("/v1/models"));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let url = url.clone();
        let count = n / conns + usize::from(c < n % conns);
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            for _ in 0..count {
                let r = client.get(url.as_str()).send().await.unwrap();
                assert_eq!(r.status(), 401);
                r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The one-request attack of issue 14: a target holding 65,500 `"` made a line over the
/// 256 KiB the next start read back, and that start exited 1 (checked on the base commit:
/// "provgate failed to start three times", "last audit line longer than 256 KiB"). Now the
/// fields are cut to their bounds, the line stays within `MAX_LINE_BYTES`, a restart succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_target_cannot_stop_the_next_start() {
    let fx = Fixture::new();
    let (up, pg) = started(&fx).await;
    // The model name in a KServe v2 path: the quotes land in `path` and `requested_model`,
    // each escaped, about 262 KB together (the `http` crate caps a target at 65,534 bytes).
    let target = format!("/v2/models/{}/infer", "\"".repeat(65_500));
    let status = raw_get(&pg, &target).await;
    assert!(
        status >= 400,
        "the hostile request is refused, got {status}"
    );
    pg.eventually(Duration::from_secs(5), || async {
        fx.audit_records().iter().any(|r| r["decision"] == "deny")
    })
    .await;
    drop(pg);
    // The restart: before the fix, provgate exited 1 here and this panicked.
    let pg = Provgate::start(&fx, up.addr).await;
    pg.wait_ready().await;
    let resp = pg.get("/v1/models", None).await;
    assert_eq!(resp.status(), 401);
    let longest = longest_line(&fx);
    assert!(
        longest <= provgate::audit::MAX_LINE_BYTES,
        "a line of {longest} bytes exceeds the documented bound"
    );
    let hostile = fx
        .audit_records()
        .into_iter()
        .find(|r| r["cut"].is_object())
        .expect("the hostile record is marked as cut");
    assert_eq!(hostile["cut"]["path"], 65_517);
    // The canonical target refuses the raw `"` before the model name is read (issue 11), so
    // the name is cut only where a request got that far.
    if !hostile["cut"]["requested_model"].is_null() {
        assert_eq!(hostile["cut"]["requested_model"], 65_500);
    }
    assert_eq!(
        hostile["path"].as_str().unwrap().len(),
        provgate::audit::record::bounds::PATH
    );
}

/// A log whose last line is garbage, cut in half or 10 MB long still lets provgate start;
/// the new segment records the break and `audit verify` reports it.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_last_line_never_stops_a_start() {
    let cases: [(&str, Vec<u8>); 3] = [
        ("garbage", b"\x00\x01 this is not a record \xff\n".to_vec()),
        (
            "cut in half",
            b"{\"seq\":3,\"request_id\":\"r\",\"ti".to_vec(),
        ),
        ("10 MB long", {
            let mut v = b"{\"seq\":3,\"path\":\"".to_vec();
            v.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
            v.extend_from_slice(b"\"}\n");
            v
        }),
    ];
    for (name, damage) in cases {
        let fx = Fixture::new();
        let (up, pg) = started(&fx).await;
        assert_eq!(pg.get("/v1/models", None).await.status(), 401);
        pg.eventually(Duration::from_secs(5), || async {
            !fx.audit_records().is_empty()
        })
        .await;
        drop(pg);
        let mut bytes = std::fs::read(fx.audit_path()).unwrap();
        bytes.extend_from_slice(&damage);
        std::fs::write(fx.audit_path(), bytes).unwrap();

        let pg = Provgate::start(&fx, up.addr).await;
        pg.wait_ready().await;
        let resp = pg.get("/v1/models", None).await;
        assert_eq!(resp.status(), 401, "{name}");
        let id = resp.headers()["x-provgate-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        fx.audit_record(&id).await;
        let first: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(fx.audit_path())
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(first["kind"], "segment", "{name}");
        assert!(
            first["break"]
                .as_str()
                .unwrap()
                .contains("could not be read"),
            "{name}: {first}"
        );
        let (code, out) = cli(&["audit", "verify", fx.dir.path().to_str().unwrap()]);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(out.contains("unreadable line"), "{name}: {out}");
        assert!(out.contains("chain break"), "{name}: {out}");
        assert!(out.contains("audit.jsonl.000001:"), "{name}: {out}");
    }
}

/// 200,000 denials through the real binary across several segments, with signed
/// checkpoints; `verify --key` passes; then each kind of tampering is named.
#[tokio::test(flavor = "multi_thread")]
async fn rotation_under_load_keeps_one_chain_and_tampering_is_named() {
    let fx = Fixture::new();
    let key = fx.path("sidecar.key");
    let jwks = fx.path("sidecar.jwks.json");
    let (code, out) = cli(&[
        "keygen",
        "--key",
        key.to_str().unwrap(),
        "--jwks",
        jwks.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let up = Upstream::start().await;
    let pg = start_with(
        &fx,
        up.addr,
        &format!(
            "max_segment_bytes = 16000000\nkeep_segments = 0\ncheckpoint_interval = \"1s\"\ncheckpoint_key = \"{}\"",
            key.display()
        ),
        &[],
    )
    .await;
    let n = 200_000;
    let t = Instant::now();
    deny_many(&pg, n, 8).await;
    eprintln!("{n} denials in {:?}", t.elapsed());
    pg.eventually(Duration::from_secs(10), || async {
        pg.metric("provgate_audit_checkpoint_records ").await > n as f64
    })
    .await;
    assert!(pg.metric("provgate_audit_checkpoint_head ").await > 0.0);
    assert!(pg.metric("provgate_audit_rotations_total ").await >= 3.0);
    interrupt(pg);

    let records = all_records(&fx);
    let denials = records
        .iter()
        .filter(|r| r["kind"].is_null() && r["decision"] == "deny")
        .count();
    let summarised: u64 = records
        .iter()
        .filter(|r| r["kind"] == "summary")
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(denials as u64 + summarised, n as u64);
    let dir = fx.dir.path().to_str().unwrap().to_string();
    let active = fx.audit_path();
    let jwks = jwks.to_str().unwrap().to_string();
    let verify = || cli(&["audit", "verify", &dir, "--key", &jwks]);
    let (code, out) = verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("chain intact"), "{out}");

    let seg = |i: u64| {
        let mut s = active.clone().into_os_string();
        s.push(format!(".{i:06}"));
        PathBuf::from(s)
    };
    let backup = fx.path("backup");
    std::fs::create_dir(&backup).unwrap();
    let files: Vec<PathBuf> = std::fs::read_dir(fx.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("audit.jsonl")
        })
        .collect();
    for f in &files {
        std::fs::copy(f, backup.join(f.file_name().unwrap())).unwrap();
    }
    let restore = || {
        for f in &files {
            std::fs::copy(backup.join(f.file_name().unwrap()), f).unwrap();
        }
    };

    // A removed segment.
    std::fs::remove_file(seg(2)).unwrap();
    let (code, out) = verify();
    assert_eq!(code, 1);
    assert!(
        out.contains("removed segment: segment 2 is missing"),
        "{out}"
    );
    restore();

    // Two segments swapped.
    std::fs::rename(seg(2), fx.path("tmp")).unwrap();
    std::fs::rename(seg(3), seg(2)).unwrap();
    std::fs::rename(fx.path("tmp"), seg(3)).unwrap();
    let (code, out) = verify();
    assert_eq!(code, 1);
    assert!(
        out.contains("reordered") || out.contains("missing"),
        "{out}"
    );
    restore();

    // One record edited in a segment.
    let text = std::fs::read_to_string(seg(2)).unwrap();
    std::fs::write(seg(2), text.replacen("token_missing", "token_invalid", 1)).unwrap();
    let (code, out) = verify();
    assert_eq!(code, 1);
    assert!(out.contains("edited line"), "{out}");
    restore();

    // The last lines of the last segment cut off after the checkpoint was taken.
    let text = std::fs::read_to_string(&active).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&active, lines[..lines.len() - 5].join("\n") + "\n").unwrap();
    let (code, out) = verify();
    assert_eq!(code, 1);
    assert!(out.contains("truncated tail"), "{out}");
}

/// A writer slowed on purpose (a debug-build hook): the queue overflows, and the denials in
/// summaries plus the single records equal the denials sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_writer_summarises_and_loses_nothing() {
    let fx = Fixture::new();
    let up = Upstream::start().await;
    let pg = start_with(
        &fx,
        up.addr,
        "queue = 16",
        &[("PROVGATE_AUDIT_TEST_WRITE_DELAY_US", "2000")],
    )
    .await;
    let n = 3000;
    deny_many(&pg, n, 8).await;
    pg.eventually(Duration::from_secs(30), || async {
        let r = all_records(&fx);
        let singles = r
            .iter()
            .filter(|r| r["kind"].is_null() && r["decision"] == "deny")
            .count() as u64;
        let summarised: u64 = r
            .iter()
            .filter(|r| r["kind"] == "summary")
            .map(|r| r["count"].as_u64().unwrap())
            .sum();
        singles + summarised == n as u64
    })
    .await;
    assert!(
        pg.metric("provgate_audit_records_total{result=\"summarised\"}")
            .await
            > 0.0
    );
    let summary = all_records(&fx)
        .into_iter()
        .find(|r| r["kind"] == "summary")
        .unwrap();
    assert_eq!(summary["reason"], "token_missing");
    assert_eq!(summary["cause"], "queue_full");
    assert!(summary["first"].as_str().unwrap() <= summary["last"].as_str().unwrap());
    let (code, out) = cli(&["audit", "verify", fx.audit_path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // Summaries export to OCSF too (with their count and window).
    let out = run_cli(
        &[
            "audit",
            "export",
            fx.audit_path().to_str().unwrap(),
            "--format",
            "ocsf",
        ],
        None,
    );
    assert!(out.status.success());
    let file = fx.path("ocsf.jsonl");
    std::fs::write(&file, &out.stdout).unwrap();
    let report = validate_ocsf(&file);
    assert!(report.contains(" 0 invalid"), "{report}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"count\":"));
}

/// An unwritable log (the active file points at /dev/full: every write fails with ENOSPC)
/// with `on_write_failure = "fail_closed"`: requests are denied `trust_data_unavailable`, the
/// failure is counted and the writable gauge drops; when the disk comes back, it recovers.
#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_log_fails_closed_when_configured() {
    let fx = Fixture::new();
    fx.approve("rec.jws", &fx.claims());
    std::os::unix::fs::symlink("/dev/full", fx.audit_path()).unwrap();
    let up = Upstream::start().await;
    let pg = start_with(&fx, up.addr, "on_write_failure = \"fail_closed\"", &[]).await;
    let token = fx.token(CALLER);
    pg.until_answer(&token, 200, None, Duration::from_secs(10))
        .await;
    // A denial makes the writer write, and fail.
    assert_eq!(pg.get("/v1/models", None).await.status(), 401);
    pg.until_answer(
        &token,
        503,
        Some("trust_data_unavailable"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(pg.metric("provgate_audit_writable ").await, 0.0);
    assert!(pg.metric("provgate_audit_write_failures_total ").await >= 1.0);
    // The disk comes back.
    std::fs::remove_file(fx.audit_path()).unwrap();
    pg.until_answer(&token, 200, None, Duration::from_secs(10))
        .await;
    pg.eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(fx.audit_path())
            .unwrap_or_default()
            .contains("\"cause\":\"write_failed\"")
    })
    .await;
    assert_eq!(pg.metric("provgate_audit_writable ").await, 1.0);
}

/// Validates OCSF events (a JSON-lines file) against the OCSF 1.5.0 JSON schema of API
/// Activity with the Security Control profile; returns the validator's report.
fn validate_ocsf(file: &Path) -> String {
    let python = match std::env::var_os("PROVGATE_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "PROVGATE_PYTHON is not set: run the suite with scripts/test.sh, which installs \
             ocsf-json-schema and jsonschema into a virtual environment and points this at it"
        ),
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/ocsf_validate.py");
    let v = Command::new(python)
        .arg(script)
        .arg(file)
        .args(["api_activity", "1.5.0", "security_control"])
        .output()
        .unwrap();
    let report =
        String::from_utf8_lossy(&v.stdout).into_owned() + &String::from_utf8_lossy(&v.stderr);
    assert!(v.status.success(), "{report}");
    report
}

fn generate(dir: &Path, count: u64) -> PathBuf {
    let fx_config = dir.join("gen.toml");
    let log = dir.join("gen").join("audit.jsonl");
    std::fs::write(
        &fx_config,
        format!(
            r#"
[upstream]
address = "127.0.0.1:1"
[workload]
identity = "spiffe://example.org/w"
[artefact]
model = "m"
path = "{dir}"
[registry]
kind = "dir"
path = "{dir}"
[trust]
approver_keys = "{dir}/approvers.jwks.json"
[[callers.issuers]]
issuer = "https://issuer.test"
jwks_file = "{dir}/issuer.jwks.json"
audiences = ["provgate"]
[audit]
path = "{log}"
max_segment_bytes = 200000
"#,
            dir = dir.display(),
            log = log.display()
        ),
    )
    .unwrap();
    let (code, out) = cli(&[
        "audit",
        "generate",
        "-c",
        fx_config.to_str().unwrap(),
        "--count",
        &count.to_string(),
        "--long-paths",
    ]);
    assert_eq!(code, 0, "{out}");
    log.parent().unwrap().to_path_buf()
}

/// `query`, `summary` and `export` on a generated multi-segment log with records cut for
/// length; the OCSF export validates against the OCSF schema for API Activity.
#[tokio::test(flavor = "multi_thread")]
async fn query_summary_and_export_read_a_segmented_log() {
    let fx = Fixture::new();
    let dir = generate(fx.dir.path(), 4200);
    let d = dir.to_str().unwrap();
    let segments = std::fs::read_dir(&dir).unwrap().count();
    assert!(segments >= 4, "{segments} files");
    let (code, out) = cli(&["audit", "verify", d]);
    assert_eq!(code, 0, "{out}");

    let json_lines = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut a = vec!["audit", "query", d, "--format", "json"];
        a.extend_from_slice(args);
        let (code, out) = cli(&a);
        assert_eq!(code, 0, "{out}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // Reasons cycle with i % 4, models with i % 3, versions with i % 2, callers with i % 7.
    assert_eq!(json_lines(&[]).len(), 4200);
    assert_eq!(json_lines(&["--reason", "token_missing"]).len(), 1050);
    assert_eq!(json_lines(&["--model", "model-b"]).len(), 1400);
    assert_eq!(json_lines(&["--version", "v2"]).len(), 2100);
    let c3 = json_lines(&["--caller", "spiffe://example.org/ns/app/sa/c3"]);
    assert!(c3
        .iter()
        .all(|r| r["caller_sub"] == "spiffe://example.org/ns/app/sa/c3"));
    assert_eq!(c3.len(), 4200 / 7 - 150);
    let one = json_lines(&["--request-id", "gen-0000000042"]);
    assert_eq!(one.len(), 1);
    // i % 5 == 0 carry a 5 KB path, cut to its bound and marked.
    assert!(json_lines(&["--request-id", "gen-0000000040"])[0]["cut"]["path"] == 5004);
    // Time: record i is at 2026-11-01T00:00:00Z + i x 100 ms.
    let window = json_lines(&[
        "--since",
        "2026-11-01T00:00:10Z",
        "--until",
        "2026-11-01T00:00:20Z",
        "--decision",
        "deny",
    ]);
    assert_eq!(window.len(), 100);
    let (code, table) = cli(&["audit", "query", d, "--reason", "approval_expired"]);
    assert_eq!(code, 0);
    assert_eq!(table.lines().count(), 1 + 1050);
    assert!(table.lines().next().unwrap().starts_with("TIME"));

    let (code, out) = cli(&["audit", "summary", d, "--json"]);
    assert_eq!(code, 0, "{out}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["records"], 4200);
    assert_eq!(s["reason"]["caller_not_allowed"], 1050);
    assert_eq!(s["model"]["model-c"], 1400);
    assert_eq!(s["version"]["v1"], 2100);
    let (code, out) = cli(&["audit", "summary", d, "--since", "2026-11-01T00:06:00Z"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("records: 600\n"), "{out}");

    let out = run_cli(&["audit", "export", d, "--format", "ocsf"], None);
    assert!(out.status.success());
    let events = String::from_utf8(out.stdout).unwrap();
    assert_eq!(events.lines().count(), 4200);
    let first: serde_json::Value = serde_json::from_str(events.lines().next().unwrap()).unwrap();
    assert_eq!(first["class_uid"], 6003);
    assert_eq!(first["disposition"], "Blocked");
    let file = fx.path("ocsf.jsonl");
    std::fs::write(&file, &events).unwrap();
    let report = validate_ocsf(&file);
    assert!(report.contains("4200 events, 0 invalid"), "{report}");
}
