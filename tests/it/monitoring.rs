//! The monitoring pack in `deploy/monitoring/`, tested against the real tools and the real
//! binary: `promtool check rules` and `promtool test rules` (series that fire each alert and
//! series that must not); every metric name the rules and the Grafana dashboard use is in a
//! running provgate's `/metrics`; and a real Prometheus server (Debian's package, installed by
//! `scripts/setup.sh --ops`, own config and data directory, loopback, ephemeral port) scrapes
//! that provgate, loads the rules, evaluates every dashboard query, and returns provgate's
//! series through its HTTP API.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use provgate::keys::jwks_document;

use crate::support::*;

fn monitoring(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/monitoring")
        .join(name)
}

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is not installed: scripts/setup.sh --ops installs Debian's prometheus package \
         (scripts/test.sh runs it)"
    );
    Command::new(name)
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let check = tool("promtool")
        .args(["check", "rules"])
        .arg(monitoring("provgate-rules.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(text.contains("SUCCESS: 12 rules found"), "{text}");

    let test = tool("promtool")
        .args(["test", "rules", "provgate-rules.test.yaml"])
        .current_dir(monitoring(""))
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    // Every alert has a runbook section in the README.
    let readme = std::fs::read_to_string(monitoring("README.md")).unwrap();
    let rules = std::fs::read_to_string(monitoring("provgate-rules.yaml")).unwrap();
    for line in rules.lines() {
        if let Some(alert) = line.trim().strip_prefix("- alert: ") {
            assert!(
                readme.contains(&format!("### {alert}\n")),
                "no runbook section for {alert}"
            );
            assert!(
                std::fs::read_to_string(monitoring("provgate-rules.test.yaml"))
                    .unwrap()
                    .contains(&format!("alertname: {alert}\n")),
                "no promtool test for {alert}"
            );
        }
    }
}

/// Metric names (`provgate_...`) a file uses.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("provgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // Skip words that merely contain the prefix (e.g. a file name).
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '/') {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// Sample names in a Prometheus text exposition.
fn exposed(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// A plain HTTP JWKS endpoint, so the remote-issuer metrics exist.
async fn jwks_server(body: String) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: max-age=60\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    addr
}

/// A Prometheus server, stopped on drop.
struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    async fn start(dir: &Path, target: std::net::SocketAddr) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: provgate\n    static_configs:\n      - targets: [\"{target}\"]\n",
                monitoring("provgate-rules.yaml").display()
            ),
        )
        .unwrap();
        let client = reqwest::Client::new();
        for attempt in 0..3 {
            let addr = free_port();
            let log = dir.join(format!("prometheus-{attempt}.log"));
            let child = tool("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let mut p = Prometheus { child, addr, log };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = p.child.try_wait() {
                    break;
                }
                let ready = client
                    .get(format!("http://{addr}/-/ready"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ready {
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            eprintln!(
                "prometheus did not start:\n{}",
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
        }
        panic!("prometheus failed to start three times");
    }

    async fn query(&self, expr: &str) -> serde_json::Value {
        let r = reqwest::Client::new()
            .get(format!("http://{}/api/v1/query", self.addr))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_provgate_and_every_name_the_pack_uses_exists() {
    let mut fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    // A remote issuer (for the key-age metric) and a model server probe.
    let jwks = jwks_server(jwks_document(std::slice::from_ref(&fx.issuer.public_jwk))).await;
    fx.extra = format!(
        "[upstream.probe]\nkind = \"kserve_v2\"\ninterval = \"250ms\"\n\n\
         [[callers.issuers]]\nissuer = \"https://remote.issuer.test\"\njwks_url = \"http://{jwks}/keys\"\nallow_plaintext = true\naudiences = [\"provgate\"]\nqualified = true\n"
    );
    let (_upstream, pg) = started(&fx).await;
    pg.wait_ready().await;
    // An allowed request, a refused one and a bad token, so the request series exist.
    let token = fx.token(CALLER);
    assert_eq!(pg.get("/v1/models", Some(&token)).await.status(), 200);
    assert_eq!(pg.get("/v1/models", None).await.status(), 401);
    assert_eq!(
        pg.get("/v1/models", Some("not.a.token")).await.status(),
        401
    );

    let metrics = pg.metrics().await;
    let have = exposed(&metrics);
    let mut used = BTreeSet::new();
    for file in ["provgate-rules.yaml", "provgate-dashboard.json"] {
        let names = names_in(&std::fs::read_to_string(monitoring(file)).unwrap());
        assert!(names.len() >= 5, "{file}: only {names:?}");
        used.extend(names);
    }
    let missing: Vec<&String> = used.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "used by the monitoring pack but not exposed by provgate: {missing:?}\n{metrics}"
    );

    // The real Prometheus.
    let dir = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(dir.path(), pg.admin).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        let v = prom.query("provgate_build_info").await;
        if let Some(first) = v["data"]["result"].as_array().and_then(|r| r.first()) {
            break first.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no provgate series in Prometheus after 30 s: {v}\n{}",
            std::fs::read_to_string(&prom.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(info["metric"]["job"], "provgate");
    assert_eq!(info["metric"]["version"], env!("CARGO_PKG_VERSION"));
    let v = prom
        .query("sum(provgate_requests_total{decision=\"allow\"})")
        .await;
    assert_eq!(v["data"]["result"][0]["value"][1], "1", "{v}");
    let v = prom
        .query("sum by (reason) (provgate_requests_total{decision=\"deny\"})")
        .await;
    let reasons: BTreeSet<String> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["value"][1] != "0")
        .map(|r| r["metric"]["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from(["token_missing".to_string(), "token_invalid".to_string()])
    );

    // The rules loaded into the real server.
    let rules: serde_json::Value = reqwest::get(format!("http://{}/api/v1/rules", prom.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded = rules["data"]["groups"][0]["rules"].as_array().unwrap();
    assert_eq!(loaded.len(), 12, "{rules}");
    assert!(loaded.iter().all(|r| r["health"] != "err"), "{rules}");

    // Every dashboard query is valid PromQL for the real engine.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring("provgate-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 15);
    for expr in exprs {
        let concrete = expr
            .replace("$__rate_interval", "1m")
            .replace("$namespace", ".*")
            .replace("$pod", ".*")
            .replace("$model", ".*");
        let v = prom.query(&concrete).await;
        assert_eq!(v["status"], "success", "{concrete}: {v}");
    }
}
