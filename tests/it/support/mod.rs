//! Test support: a real upstream on 127.0.0.1:0, a fixture directory (model, keys, registry,
//! config), and the real `provgate` binary started on ephemeral ports.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use provgate::approval::{sign, ApprovalClaims, ArtefactRef, Evidence};
use provgate::keys::{jwks_document, KeyKind, SigningKey};

pub const ISSUER: &str = "https://issuer.test";
pub const WORKLOAD: &str = "spiffe://example.org/ns/prod/sa/model-serving";
pub const CALLER: &str = "spiffe://example.org/ns/app/sa/client";
pub const MODEL: &str = "all-minilm-l6-v2";

pub mod mlflow;

// === Upstream ===

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: hyper::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// When the request's headers reached the upstream.
    pub at: Instant,
}

/// A model server stand-in: `/sse` streams two events, the second only after
/// [`Upstream::release`]; `/v1/models`, `/v2/models/{name}` and `/api/tags` report the
/// models in [`Upstream::serve`] (OpenAI, KServe v2 and Ollama shapes); every other path
/// answers a small JSON body.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// The models this server says it serves: (name, Ollama digest).
    pub models: Arc<Mutex<Vec<(String, String)>>>,
    release: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
    /// Open connections, closed on drop (the server goes away entirely).
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(tokio::sync::Notify::new());
        let models = Arc::new(Mutex::new(vec![(MODEL.to_string(), "ab".repeat(32))]));
        let (s, r, m) = (seen.clone(), release.clone(), models.clone());
        let conns = Arc::new(Mutex::new(Vec::new()));
        let conns_ = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let (s, r, m) = (s.clone(), r.clone(), m.clone());
                let conn = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (s, r, m) = (s.clone(), r.clone(), m.clone());
                        async move { Ok::<_, Infallible>(respond(req, s, r, m).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
                conns_.lock().unwrap().push(conn.abort_handle());
            }
        });
        Upstream {
            addr,
            seen,
            models,
            release,
            task,
            conns,
        }
    }

    /// Sets the models this server reports: (name, Ollama digest hex).
    pub fn serve(&self, models: &[(&str, &str)]) {
        *self.models.lock().unwrap() = models
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_string()))
            .collect();
    }

    /// Lets the `/sse` handler send its second event.
    pub fn release(&self) {
        self.release.notify_one();
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

fn json(status: u16, v: serde_json::Value) -> hyper::Response<BoxBody<Bytes, Infallible>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(v.to_string()))))
        .unwrap()
}

async fn respond(
    req: hyper::Request<hyper::body::Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<tokio::sync::Notify>,
    models: Arc<Mutex<Vec<(String, String)>>>,
) -> hyper::Response<BoxBody<Bytes, Infallible>> {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let req = hyper::Request::from_parts(parts, ());
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
        body,
        at,
    });
    let served = models.lock().unwrap().clone();
    match req.uri().path() {
        "/v1/models" => {
            let data: Vec<_> = served
                .iter()
                .map(|(n, _)| serde_json::json!({"id": n, "object": "model", "owned_by": "test"}))
                .collect();
            return json(200, serde_json::json!({"object": "list", "data": data}));
        }
        "/api/tags" => {
            let list: Vec<_> = served
                .iter()
                .map(|(n, d)| serde_json::json!({"name": format!("{n}:latest"), "digest": d}))
                .collect();
            return json(200, serde_json::json!({ "models": list }));
        }
        p => {
            if let Some(name) = p.strip_prefix("/v2/models/").filter(|n| !n.contains('/')) {
                return if served.iter().any(|(n, _)| n == name) {
                    json(
                        200,
                        serde_json::json!({"name": name, "versions": ["1"], "platform": "test"}),
                    )
                } else {
                    json(404, serde_json::json!({"error": "model not found"}))
                };
            }
        }
    }
    if req.uri().path() == "/sse" {
        let stream = futures_util::stream::unfold(0u8, move |step| {
            let release = release.clone();
            async move {
                match step {
                    0 => Some((Ok(Frame::data(Bytes::from_static(b"data: first\n\n"))), 1)),
                    1 => {
                        release.notified().await;
                        Some((Ok(Frame::data(Bytes::from_static(b"data: second\n\n"))), 2))
                    }
                    _ => None,
                }
            }
        });
        return hyper::Response::builder()
            .header("content-type", "text/event-stream")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap();
    }
    if req.uri().path() == "/spoof" {
        return hyper::Response::builder()
            .header("x-provgate-version-id", "forged-by-upstream")
            .header("x-provgate-request-id", "forged")
            .body(BodyExt::boxed(Full::new(Bytes::from_static(b"{}"))))
            .unwrap();
    }
    hyper::Response::builder()
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from_static(
            b"{\"object\":\"list\",\"data\":[{\"id\":\"all-minilm-l6-v2\"}]}",
        ))))
        .unwrap()
}

// === Fixture ===

/// A working directory with a model, approver and issuer keys, a registry and a config.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub approver: SigningKey,
    pub issuer: SigningKey,
    /// Extra TOML appended to the generated config.
    pub extra: String,
    /// Lines added to the `[upstream]` table.
    pub upstream_extra: String,
    pub enforce: bool,
    pub log_allowed: bool,
    pub protocol: &'static str,
    /// The model name (`[artefact] model` and the records' `sub`).
    pub model: String,
    /// The `[registry]` section's body; default: the fixture's directory.
    pub registry: Option<String>,
    /// Lines added to the fixture issuer's `[[callers.issuers]]` block (e.g. `qualified = true`).
    pub issuer_extra: String,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (approver, approver_pem) = SigningKey::generate(KeyKind::Es256).unwrap();
        let (issuer, _) = SigningKey::generate(KeyKind::Es256).unwrap();
        std::fs::write(dir.path().join("approver.key"), approver_pem).unwrap();
        let f = Fixture {
            dir,
            approver,
            issuer,
            extra: String::new(),
            upstream_extra: String::new(),
            enforce: true,
            log_allowed: false,
            protocol: "http1",
            model: MODEL.into(),
            registry: None,
            issuer_extra: String::new(),
        };
        std::fs::create_dir_all(f.model_dir()).unwrap();
        std::fs::create_dir_all(f.registry_dir()).unwrap();
        std::fs::write(f.model_dir().join("config.json"), b"{\"hidden_size\": 8}").unwrap();
        std::fs::write(f.model_dir().join("model.safetensors"), vec![7u8; 4096]).unwrap();
        f.write_jwks();
        f
    }

    fn write_jwks(&self) {
        let f = self;
        std::fs::write(
            f.path("approvers.jwks.json"),
            jwks_document(std::slice::from_ref(&f.approver.public_jwk)),
        )
        .unwrap();
        std::fs::write(
            f.path("issuer.jwks.json"),
            jwks_document(std::slice::from_ref(&f.issuer.public_jwk)),
        )
        .unwrap();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn model_dir(&self) -> PathBuf {
        self.path("model")
    }

    pub fn registry_dir(&self) -> PathBuf {
        self.path("approvals")
    }

    pub fn audit_path(&self) -> PathBuf {
        self.path("audit.jsonl")
    }

    pub fn digest(&self) -> provgate::digest::Digest {
        provgate::oms::compute_manifest(&self.model_dir(), 1)
            .unwrap()
            .root
    }

    /// Claims of a record that allows [`CALLER`] to call the current model.
    pub fn claims(&self) -> ApprovalClaims {
        let now = provgate::unix_now();
        ApprovalClaims {
            iss: "approver@example.org".into(),
            sub: self.model.clone(),
            jti: "rec-1".into(),
            iat: now - 10,
            nbf: Some(now - 10),
            exp: now + 3600,
            version_id: "v42".into(),
            artefact: ArtefactRef {
                digest: self.digest(),
                signer: None,
                ollama_digest: None,
                base_digest: None,
            },
            lineage: serde_json::json!({"code_revision": "abc123"})
                .as_object()
                .unwrap()
                .clone(),
            evidence: vec![Evidence {
                kind: "security-test".into(),
                uri: "https://ci.example.org/run/1".into(),
                digest: format!("sha256:{}", "ab".repeat(32)),
                verdict: "pass".into(),
            }],
            approvals: vec![],
            tier: "internal".into(),
            workloads: vec![WORKLOAD.into()],
            callers: vec!["spiffe://example.org/ns/app/sa/*".into()],
            revalidate_after: None,
        }
    }

    /// Signs and stores a record in the registry directory.
    pub fn approve(&self, file: &str, claims: &ApprovalClaims) {
        let jws = sign(claims, &self.approver).unwrap();
        self.write_record(file, &jws);
    }

    /// Writes a record file atomically (rename), as a deployment tool would.
    pub fn write_record(&self, file: &str, jws: &str) {
        let tmp = self.path(&format!(".{file}.tmp"));
        std::fs::write(&tmp, jws).unwrap();
        std::fs::rename(&tmp, self.registry_dir().join(file)).unwrap();
    }

    pub fn token(&self, sub: &str) -> String {
        provgate::identity::mint_token(
            &self.issuer,
            ISSUER,
            sub,
            &["provgate".to_string()],
            Duration::from_secs(600),
        )
        .unwrap()
    }

    pub fn config(&self, listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr) -> String {
        format!(
            r#"
[listen]
address = "{listen}"
[admin]
address = "{admin}"
[upstream]
address = "{upstream}"
protocol = "{protocol}"
{upstream_extra}
[mode]
enforce = {enforce}
[workload]
identity = "{WORKLOAD}"
[artefact]
model = "{model_name}"
path = "{model}"
poll_interval = "500ms"
[registry]
{registry}
[trust]
approver_keys = "{approvers}"
[[callers.issuers]]
issuer = "{ISSUER}"
jwks_file = "{issuer}"
audiences = ["provgate"]
{issuer_extra}
[tiers.internal]
[tiers.customer-facing]
required_evidence = ["security-test", "red-team"]
[audit]
path = "{audit}"
log_allowed = {log_allowed}
[server]
threads = 1
grace_period = "0s"
{extra}
"#,
            protocol = self.protocol,
            upstream_extra = self.upstream_extra,
            enforce = self.enforce,
            model = self.model_dir().display(),
            model_name = self.model,
            registry = self.registry.clone().unwrap_or_else(|| format!(
                "kind = \"dir\"\npath = \"{}\"\nrescan_interval = \"500ms\"",
                self.registry_dir().display()
            )),
            approvers = self.path("approvers.jwks.json").display(),
            issuer = self.path("issuer.jwks.json").display(),
            audit = self.audit_path().display(),
            log_allowed = self.log_allowed,
            extra = self.extra,
            issuer_extra = self.issuer_extra,
        )
    }

    /// Audit records written so far.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until an audit record with this request ID is written.
    pub async fn audit_record(&self, request_id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(r) = self
                .audit_records()
                .into_iter()
                .find(|r| r["request_id"] == request_id)
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no audit record for {request_id}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// === The provgate process ===

/// A port that was free a moment ago.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_provgate")
}

/// A running provgate, killed on drop.
pub struct Provgate {
    pub child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
    pub client: reqwest::Client,
}

impl Provgate {
    /// Starts provgate for a fixture and waits until `/healthz` answers (not `/readyz`:
    /// some tests need to see it unready). Retries on a port taken in between.
    pub async fn start(fixture: &Fixture, upstream: SocketAddr) -> Provgate {
        Provgate::start_env(fixture, upstream, &[]).await
    }

    /// [`Provgate::start`] with these environment variables set (the debug build's fault
    /// hooks, say).
    pub async fn start_env(
        fixture: &Fixture,
        upstream: SocketAddr,
        env: &[(&str, &str)],
    ) -> Provgate {
        for attempt in 0..3 {
            let (listen, admin) = (free_port(), free_port());
            let config = fixture.path("provgate.toml");
            std::fs::write(&config, fixture.config(listen, admin, upstream)).unwrap();
            let log = fixture.path(&format!("provgate-{attempt}.log"));
            let child = Command::new(bin())
                .args(["run", "-c"])
                .arg(&config)
                .env("RUST_LOG", "info")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let mut pg = Provgate {
                child,
                listen,
                admin,
                log,
                client: Provgate::client(),
            };
            if pg.wait_healthy().await {
                return pg;
            }
            eprintln!("provgate did not start (attempt {attempt}):\n{}", pg.logs());
        }
        panic!("provgate failed to start three times");
    }

    /// Starts provgate on a config text whose listen and admin addresses are `listen` and
    /// `admin`, logging to `DIR/NAME.log`, and waits until both listeners accept.
    pub async fn spawn(
        dir: &Path,
        name: &str,
        config: &str,
        listen: SocketAddr,
        admin: SocketAddr,
        cwd: Option<&Path>,
    ) -> Provgate {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(bin());
        cmd.args(["run", "-c"])
            .arg(&path)
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let pg = Provgate {
            child: cmd.spawn().unwrap(),
            listen,
            admin,
            log,
            client: Provgate::client(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(admin).await.is_err()
            || tokio::net::TcpStream::connect(listen).await.is_err()
        {
            assert!(
                Instant::now() < deadline,
                "provgate did not listen:\n{}",
                pg.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        pg
    }

    /// The HTTP client a test talks to provgate with.
    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    async fn wait_healthy(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let ok = self
                .client
                .get(format!("http://{}/healthz", self.admin))
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false);
            // The proxy listener starts with the admin one; check it accepts too.
            if ok && tokio::net::TcpStream::connect(self.listen).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    /// Waits for `/readyz` to answer 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self
                .client
                .get(format!("http://{}/readyz", self.admin))
                .send()
                .await;
            if matches!(&r, Ok(r) if r.status() == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "never ready:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listen, path)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    /// POSTs an empty JSON object (an inference route that names its model in the path).
    pub async fn post_to(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body("{}");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one metric series, by exact name-and-labels prefix.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `GET /v1/models` with `token` until it answers `status` (and, when given, the
    /// deny reason `error` in its JSON body); fails after `within`. Returns the time taken.
    pub async fn until_answer(
        &self,
        token: &str,
        status: u16,
        error: Option<&str>,
        within: Duration,
    ) -> Duration {
        self.eventually(within, || async {
            let r = self
                .client
                .get(self.url("/v1/models"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            if r.status().as_u16() != status {
                return false;
            }
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            error.is_none_or(|e| body["error"] == e)
        })
        .await
    }

    /// Polls until `check` passes on a request, or fails after `within`.
    pub async fn eventually<F, Fut>(&self, within: Duration, mut check: F) -> Duration
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            if check().await {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "condition not met within {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Provgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the provgate binary to completion.
pub fn run_cli(args: &[&str], cwd: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    cmd.output().unwrap()
}

/// An upstream and provgate for this fixture, ready (first hash, registry read, keys).
pub async fn started(fx: &Fixture) -> (Upstream, Provgate) {
    let up = Upstream::start().await;
    let pg = Provgate::start(fx, up.addr).await;
    pg.wait_ready().await;
    (up, pg)
}

// === Several models (routing and doors) ===

/// The fixture's config with its one `[artefact]` replaced by `sections`.
pub fn config_with(
    fx: &Fixture,
    pg: (std::net::SocketAddr, std::net::SocketAddr),
    up: std::net::SocketAddr,
    sections: &str,
) -> String {
    let one = fx.config(pg.0, pg.1, up);
    let start = one.find("[artefact]").unwrap();
    let end = start + one[start..].find("[registry]").unwrap();
    format!("{}{sections}\n{}", &one[..start], &one[end..])
}

/// A second model directory under the fixture, with its own content.
pub fn model_dir(fx: &Fixture, name: &str, content: &[u8]) -> std::path::PathBuf {
    let dir = fx.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), content).unwrap();
    dir
}

pub fn digest_of(dir: &std::path::Path) -> provgate::digest::Digest {
    provgate::oms::compute_manifest(dir, 1).unwrap().root
}
