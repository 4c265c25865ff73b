//! Every door of the model server, through the real binary: one canonical target (what is
//! decided is what is forwarded), the route profiles of `[upstream] api` table by table,
//! default deny (`route_not_allowed`), management routes opened by `[[routing.allow]]` to
//! named callers only, adapters approved with their base, and `x_provgate_` spellings.
//!
//! A stand-in model server decodes paths the way Starlette (KServe, vLLM) and Go's
//! ServeMux (Ollama) do, matches routes even more leniently than they do (any case, a
//! trailing slash ignored), and records which model it would have run: no spelling of a
//! route may make it run a model the caller may not use.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use provgate::proxy::routing::profiles::{Api, Class, Field, ModelAt, DELETE, GET, HEAD, POST};

use crate::support::*;

const SHADOW: &str = "shadow-model";
const OPS: &str = "spiffe://example.org/ns/ops/sa/deployer";
const BATCH: &str = "spiffe://example.org/ns/batch/sa/job";

// === A decoding stand-in server ===

#[derive(Clone, Copy, Debug)]
enum Decoding {
    /// uvicorn: `scope["path"] = unquote(raw_path)`, nothing else.
    Starlette,
    /// Go: decoded, then `.`, `..` and `//` cleaned.
    Go,
}

fn percent_decode(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&raw[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn go_clean(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    for s in path.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    format!("/{}", segs.join("/"))
}

/// What the stand-in did with one request: which model it ran, or what it changed.
struct Decoder {
    addr: SocketAddr,
    ran: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Decoder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Decoder {
    async fn start(decoding: Decoding) -> Decoder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ran = Arc::new(Mutex::new(Vec::new()));
        let r = ran.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let r = r.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let r = r.clone();
                        async move { Ok::<_, Infallible>(decode_and_run(req, decoding, r).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
        Decoder { addr, ran, task }
    }

    fn ran(&self) -> Vec<String> {
        self.ran.lock().unwrap().clone()
    }
}

async fn decode_and_run(
    req: hyper::Request<hyper::body::Incoming>,
    decoding: Decoding,
    ran: Arc<Mutex<Vec<String>>>,
) -> hyper::Response<BoxBody<Bytes, Infallible>> {
    let raw = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let decoded = match decoding {
        Decoding::Starlette => percent_decode(&raw),
        Decoding::Go => go_clean(&percent_decode(&raw)),
    };
    // More lenient than any real server: any case, a trailing slash ignored.
    let lower = decoded.to_ascii_lowercase();
    let path = lower.strip_suffix('/').unwrap_or(&lower);
    let body_model = || {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["model"].as_str().map(str::to_string))
            .unwrap_or_else(|| MODEL.to_string())
    };
    let segs: Vec<&str> = decoded.split('/').collect();
    let reply = |v: serde_json::Value| {
        hyper::Response::builder()
            .header("content-type", "application/json")
            .body(BodyExt::boxed(Full::new(Bytes::from(v.to_string()))))
            .unwrap()
    };
    let run = |what: String| {
        ran.lock().unwrap().push(what.clone());
        reply(serde_json::json!({ "ran": what }))
    };
    match path {
        "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings" => run(body_model()),
        "/v1/models" => reply(serde_json::json!({
            "object": "list",
            "data": [{"id": MODEL}, {"id": SHADOW}],
        })),
        "/v2/models" => reply(serde_json::json!({ "models": [MODEL, SHADOW] })),
        p if p.starts_with("/v2/models/") && p.ends_with("/infer") && segs.len() >= 5 => {
            run(segs[3].to_string())
        }
        p if p.starts_with("/v2/repository/") => run(format!("managed {p}")),
        _ => reply(serde_json::json!({"ok": true})),
    }
}

// === Helpers ===

fn artefact(name: &str, dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[[artefacts]]\nmodel = \"{name}\"\npath = \"{}\"\npoll_interval = \"200ms\"\n{extra}\n",
        dir.display()
    )
}

/// A sidecar for MODEL (approved for CALLER) and, with `shadow`, SHADOW (configured, not
/// approved), in front of `up`.
async fn sidecar(fx: &Fixture, up: SocketAddr, shadow: bool, name: &str) -> Provgate {
    let mut sections = artefact(MODEL, &fx.model_dir(), "");
    if shadow {
        let dir = model_dir(fx, "shadow", b"shadow weights");
        sections += &artefact(SHADOW, &dir, "");
    }
    let (listen, admin) = (free_port(), free_port());
    let pg = Provgate::spawn(
        fx.dir.path(),
        name,
        &config_with(fx, (listen, admin), up, &sections),
        listen,
        admin,
        None,
    )
    .await;
    pg.wait_ready().await;
    pg
}

async fn send(
    pg: &Provgate,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<String>,
) -> reqwest::Response {
    let mut req = pg
        .client
        .request(method, pg.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json");
    if let Some(b) = body {
        req = req.body(b);
    }
    req.send().await.unwrap()
}

async fn reason(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    (status, body["error"].as_str().unwrap_or("").to_string())
}

/// A raw HTTP/1.1 request with the target exactly as given (clients normalise targets).
async fn raw_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    token: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

// === Spellings ===

/// No spelling of a route makes a Starlette- or Go-decoding server run a model the caller
/// may not use, nor list one, nor change the server; on single- and multi-model sidecars.
/// (Uses only config keys older sidecars know, so it runs against them too.)
#[tokio::test(flavor = "multi_thread")]
async fn no_spelling_of_a_route_runs_a_model_the_caller_may_not_use() {
    for decoding in [Decoding::Starlette, Decoding::Go] {
        for shadow in [false, true] {
            let fx = Fixture::new();
            fx.approve("rec.jwt", &fx.claims());
            let up = Decoder::start(decoding).await;
            let pg = sidecar(
                &fx,
                up.addr,
                shadow,
                &format!("spell-{decoding:?}-{shadow}"),
            )
            .await;
            let token = fx.token(CALLER);
            let shadow_body = format!(r#"{{"model":"{SHADOW}","input":"x"}}"#);
            let mut answers: Vec<(String, (u16, String))> = Vec::new();
            for target in [
                "/v1/chat%2Fcompletions",
                "/v1/chat%2fcompletions",
                "/v1/embedding%73",
                "/v1/%65mbeddings",
                "/v1//embeddings",
                "//v1/embeddings",
                "/v1/./embeddings",
                "/v1/x/../embeddings",
                "/v1/x/%2E%2E/embeddings",
                "/V1/embeddings",
                "/v1/Embeddings",
                "/v1/embeddings/",
                "/v1/embeddings%2F",
                "/v1/embeddings/.",
                "/v1/embeddings%00",
                "/v1/embeddings%20",
                "/v1/embeddings;x",
                "/v1/embeddings%3B",
                "/v1%5Cembeddings",
            ] {
                answers.push((
                    target.to_string(),
                    raw_request(pg.listen, "POST", target, &token, &shadow_body).await,
                ));
            }
            for target in [
                "/v2%2Fmodels/shadow-model/infer",
                "/v2/models/%73hadow-model/infer",
                "/v2/models/shadow%2Dmodel/infer",
                "/v2//models/shadow-model/infer",
                "/v2/models/shadow-model/infer/",
                "/v2/models/shadow-model/./infer",
                "/v2/models/shadow-model/INFER",
                "/V2/models/shadow-model/infer",
                &format!("/v2/models/{MODEL}/../shadow-model/infer"),
                &format!("/v2/models/{MODEL}/..%2Fshadow-model/infer"),
                &format!("/v2/models/{MODEL}%2F..%2Fshadow-model/infer"),
                "/v2/repository/models/x/load",
                "/v2/repository%2Fmodels/x/unload",
                "/v2/Repository/models/x/unload",
                "/v2/repository/models/x/unload/",
            ] {
                answers.push((
                    target.to_string(),
                    raw_request(pg.listen, "POST", target, &token, "{}").await,
                ));
            }
            for target in [
                "/v1/model%73",
                "/v1/models/",
                "/V1/models",
                "/v1//models",
                "/v2/model%73",
            ] {
                let a = raw_request(pg.listen, "GET", target, &token, "").await;
                assert!(
                    !a.1.contains(SHADOW),
                    "{decoding:?} shadow={shadow}: GET {target} listed the unapproved model:\n{}",
                    a.1
                );
                answers.push((target.to_string(), a));
            }
            let ran = up.ran();
            assert!(
                ran.iter().all(|m| m == MODEL),
                "{decoding:?} shadow={shadow}: the server ran {ran:?}; answers: {:#?}",
                answers.iter().map(|(t, (s, _))| (t, s)).collect::<Vec<_>>()
            );
            // Every refusal of provgate's says why.
            for (target, (status, text)) in &answers {
                if *status >= 400 && text.contains("x-provgate-request-id") {
                    assert!(text.contains("\"error\":\""), "{target}: {text}");
                }
            }
        }
    }
}

/// What is decided is what is forwarded: an equivalent spelling reaches the server as the
/// canonical target, the query byte for byte; an ambiguous one is refused and audited.
#[tokio::test(flavor = "multi_thread")]
async fn the_canonical_target_is_forwarded_and_an_ambiguous_one_refused_with_why() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;
    let token = fx.token(CALLER);
    let body = format!(r#"{{"model":"{MODEL}","input":"x"}}"#);
    let (status, _) = raw_request(
        pg.listen,
        "POST",
        "/v1//%65mbeddings?a=%2F&b",
        &token,
        &body,
    )
    .await;
    assert_eq!(status, 200);
    let seen = up.requests();
    assert_eq!(seen.last().unwrap().path, "/v1/embeddings");
    // An absolute-form target for this host is brought to origin form; for another, refused.
    let absolute = format!("http://{}/v1/./embeddings", pg.listen);
    let (status, _) = raw_request(pg.listen, "POST", &absolute, &token, &body).await;
    assert_eq!(status, 200);
    assert_eq!(up.requests().last().unwrap().path, "/v1/embeddings");
    let (status, text) = raw_request(
        pg.listen,
        "POST",
        "http://model-server.internal/v1/embeddings",
        &token,
        &body,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let (status, text) =
        raw_request(pg.listen, "POST", "/v1/chat%2Fcompletions", &token, &body).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("\"error\":\"request_invalid\""));
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("x-provgate-request-id: "))
        .unwrap()
        .trim()
        .to_string();
    let audit = fx.audit_record(&id).await;
    assert_eq!(audit["reason"], "request_invalid");
    assert_eq!(audit["detail"], "request target has an encoded slash");
    assert_eq!(
        up.requests().len(),
        2,
        "the refused requests never reached the server"
    );
}

// === Profiles, table by table ===

/// A concrete path for a route pattern, naming `model`.
fn concrete(pattern: &str, model: &str) -> String {
    pattern
        .split('/')
        .map(|s| {
            if let Some(rest) = s.strip_prefix("{m}") {
                format!("{model}{rest}")
            } else if s == "{*}" {
                "1".to_string()
            } else {
                s.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A JSON body naming `model` in every field a route lists.
fn body_naming(fields: &[Field], model: &str) -> String {
    let mut v = serde_json::json!({"input": "x"});
    for f in fields {
        match f {
            Field::AdapterId => v["parameters"] = serde_json::json!({"adapter_id": model}),
            other => v[other.key()] = serde_json::json!(model),
        }
    }
    v.to_string()
}

fn method_of(bits: u8) -> reqwest::Method {
    for (bit, m) in [
        (POST, reqwest::Method::POST),
        (GET, reqwest::Method::GET),
        (DELETE, reqwest::Method::DELETE),
        (HEAD, reqwest::Method::HEAD),
    ] {
        if bits & bit != 0 {
            return m;
        }
    }
    reqwest::Method::PUT
}

/// For each profile: every inference route with the approved and an unapproved model,
/// every management route refused, an unknown route refused, model-free routes allowed.
#[tokio::test(flavor = "multi_thread")]
async fn each_profile_opens_its_doors_and_no_other() {
    for api in Api::ALL {
        let mut fx = Fixture::new();
        fx.upstream_extra = format!("api = [\"{}\"]", api.as_str());
        fx.approve("rec.jwt", &fx.claims());
        let up = Upstream::start().await;
        let pg = sidecar(&fx, up.addr, true, &format!("profile-{}", api.as_str())).await;
        let token = fx.token(CALLER);
        let name = api.as_str();
        let mut closed = Vec::new();
        for route in api.routes() {
            let method = method_of(route.methods);
            let ask = |model: &str| {
                let path = concrete(route.path, model);
                let body = match route.model {
                    ModelAt::Body(fields) => Some(body_naming(fields, model)),
                    _ => Some("{}".to_string()),
                };
                let (pg, method, token) = (&pg, method.clone(), token.clone());
                async move { send(pg, method, &path, &token, body).await }
            };
            let what = format!("{name}: {method} {}", route.path);
            match (route.class, route.model) {
                (Class::Manage, _) => {
                    closed.push((method.to_string(), concrete(route.path, MODEL)));
                    assert_eq!(
                        reason(ask(MODEL).await).await,
                        (403, "route_not_allowed".into()),
                        "{what}"
                    );
                }
                (Class::Inference | Class::Free, ModelAt::Path | ModelAt::Body(_)) => {
                    let before = up.requests().len();
                    let r = ask(MODEL).await;
                    assert!(
                        r.headers().get("x-provgate-version-id").is_some(),
                        "{what}: approved model"
                    );
                    assert_eq!(up.requests().len(), before + 1, "{what}: forwarded");
                    let (status, why) = reason(ask(SHADOW).await).await;
                    assert_eq!(
                        (status, why.as_str()),
                        (403, "artefact_unmanaged"),
                        "{what}: unapproved model"
                    );
                }
                (Class::List(_) | Class::Free, _) => {
                    let before = up.requests().len();
                    let r = ask(MODEL).await;
                    assert!(
                        r.headers().get("x-provgate-version-id").is_some(),
                        "{what}: model-free / list"
                    );
                    assert_eq!(up.requests().len(), before + 1, "{what}: forwarded");
                }
                (Class::Inference, ModelAt::Nothing) => {
                    unreachable!("{what}: an inference route names its model")
                }
            }
        }
        for (method, path) in [
            (reqwest::Method::GET, "/definitely/not/a/route"),
            (reqwest::Method::POST, "/admin"),
            (reqwest::Method::PATCH, "/v1/models"),
        ] {
            assert_eq!(
                reason(send(&pg, method.clone(), path, &token, None).await).await,
                (403, "route_not_allowed".into()),
                "{name}: {method} {path}"
            );
        }
        let reached: Vec<(String, String)> = up
            .requests()
            .iter()
            .map(|s| (s.method.clone(), s.path.clone()))
            .collect();
        assert!(
            !reached.iter().any(|p| closed.contains(p)),
            "{name}: a management route reached the server: {reached:?}"
        );
    }
}

// === Management routes opened to named callers ===

#[tokio::test(flavor = "multi_thread")]
async fn a_management_route_opens_only_to_the_callers_named_and_is_always_audited() {
    let mut fx = Fixture::new();
    fx.upstream_extra = "api = [\"kserve_v2\"]".into();
    fx.extra = format!(
        "[[routing.allow]]\nroute = \"/v2/repository/models/{{m}}/load\"\nmethods = [\"POST\"]\ncallers = [\"spiffe://example.org/ns/ops/*\"]\nissuer = \"{ISSUER}\"\n"
    );
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;
    let load = format!("/v2/repository/models/{MODEL}/load");
    let r = send(
        &pg,
        reqwest::Method::POST,
        &load,
        &fx.token(OPS),
        Some("{}".into()),
    )
    .await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let audit = fx.audit_record(&id).await;
    assert_eq!(
        audit["decision"], "allow",
        "audited although log_allowed = false"
    );
    assert_eq!(audit["caller_sub"], OPS);
    assert_eq!(audit["detail"], "route opened by routing.allow");
    assert_eq!(
        reason(
            send(
                &pg,
                reqwest::Method::POST,
                &load,
                &fx.token(CALLER),
                Some("{}".into())
            )
            .await
        )
        .await,
        (403, "route_not_allowed".into()),
        "an ordinary caller"
    );
    let unload = format!("/v2/repository/models/{MODEL}/unload");
    assert_eq!(
        reason(
            send(
                &pg,
                reqwest::Method::POST,
                &unload,
                &fx.token(OPS),
                Some("{}".into())
            )
            .await
        )
        .await,
        (403, "route_not_allowed".into()),
        "only the route named is opened"
    );
    let r = pg.client.post(pg.url(&load)).send().await.unwrap();
    assert_eq!(reason(r).await, (401, "token_missing".into()));
    assert_eq!(up.requests().len(), 1);
}

// === Adapters ===

#[tokio::test(flavor = "multi_thread")]
async fn an_adapter_is_served_only_with_its_own_and_its_bases_approval() {
    let mut fx = Fixture::new();
    fx.upstream_extra = "api = [\"vllm\"]".into();
    let base_dir = fx.model_dir();
    let a_dir = model_dir(&fx, "lora-a", b"adapter a");
    let b_dir = model_dir(&fx, "lora-b", b"adapter b");
    let base_digest = fx.digest();
    fx.approve("base.jwt", &fx.claims());
    let mut a = fx.claims();
    a.sub = "lora-a".into();
    a.jti = "rec-lora-a".into();
    a.version_id = "va".into();
    a.artefact.digest = digest_of(&a_dir);
    a.artefact.base_digest = Some(base_digest);
    // The adapter's record also admits a batch caller the base's record does not.
    a.callers.push(BATCH.into());
    fx.approve("lora-a.jwt", &a);
    let up = Upstream::start().await;
    let sections = artefact(MODEL, &base_dir, "")
        + &artefact(
            "lora-a",
            &a_dir,
            &format!("kind = \"adapter\"\nbase = \"{MODEL}\""),
        )
        + &artefact(
            "lora-b",
            &b_dir,
            &format!("kind = \"adapter\"\nbase = \"{MODEL}\""),
        );
    let (listen, admin) = (free_port(), free_port());
    let pg = Provgate::spawn(
        fx.dir.path(),
        "adapters",
        &config_with(&fx, (listen, admin), up.addr, &sections),
        listen,
        admin,
        None,
    )
    .await;
    pg.wait_ready().await;
    let token = fx.token(CALLER);
    let chat = |model: &str| {
        send(
            &pg,
            reqwest::Method::POST,
            "/v1/chat/completions",
            &token,
            Some(format!(r#"{{"model":"{model}","messages":[]}}"#)),
        )
    };
    let r = chat("lora-a").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-provgate-version-id"], "va");
    assert_eq!(chat(MODEL).await.status(), 200, "the base itself");
    let r = send(
        &pg,
        reqwest::Method::POST,
        "/v1/chat/completions",
        &token,
        Some("{\"messages\":[]}".into()),
    )
    .await;
    assert_eq!(r.status(), 200, "no model: the one base model");
    assert_eq!(
        reason(chat("lora-b").await).await,
        (403, "artefact_unmanaged".into()),
        "an unapproved adapter on an approved base"
    );
    let r = send(
        &pg,
        reqwest::Method::POST,
        "/v1/chat/completions",
        &fx.token(BATCH),
        Some(r#"{"model":"lora-a","messages":[]}"#.into()),
    )
    .await;
    assert_eq!(
        reason(r).await,
        (403, "caller_not_allowed".into()),
        "the adapter's record allows this caller, the base's does not"
    );
    // The base changes and the new base is approved: the adapter's record pins the old one.
    std::fs::write(base_dir.join("model.safetensors"), vec![9u8; 4096]).unwrap();
    let mut new_base = fx.claims();
    new_base.jti = "rec-base-2".into();
    new_base.version_id = "v43".into();
    fx.approve("base-2.jwt", &new_base);
    pg.eventually(std::time::Duration::from_secs(10), || async {
        chat(MODEL)
            .await
            .headers()
            .get("x-provgate-version-id")
            .is_some_and(|v| v == "v43")
    })
    .await;
    let r = chat("lora-a").await;
    let id = r.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        reason(r).await,
        (403, "model_mismatch".into()),
        "adapter on a changed base"
    );
    let audit = fx.audit_record(&id).await;
    assert_eq!(
        audit["detail"],
        "adapter record pins another base digest than the one served"
    );
}

// === Headers ===

#[tokio::test(flavor = "multi_thread")]
async fn provgate_headers_however_spelt_never_reach_the_server() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;
    let r = pg
        .client
        .post(pg.url("/v1/embeddings"))
        .bearer_auth(fx.token(CALLER))
        .header("x_provgate_version_id", "forged")
        .header("X-Provgate_Caller", "forged")
        .header("x_provgate-request-id", "forged")
        .body(format!(r#"{{"model":"{MODEL}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = &up.requests()[0];
    for (name, value) in &seen.headers {
        let folded = name.as_str().replace('_', "-");
        if folded.starts_with("x-provgate-") {
            assert_ne!(value, "forged", "{name} reached the server");
            assert!(!name.as_str().contains('_'), "{name} reached the server");
        }
    }
    assert_eq!(seen.headers["x-provgate-version-id"], "v42");
}
