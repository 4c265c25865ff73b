//! Model-aware routing and served-model cross-checks through the real binary: OpenAI bodies
//! naming their model (read before the decision, forwarded unchanged), several models on one
//! sidecar each with its own approval state, the filtered model list, and upstream probes.

use std::time::{Duration, Instant};

use crate::support::*;

async fn post(
    pg: &Provgate,
    path: &str,
    token: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    pg.client
        .post(pg.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn reason(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    (status, body["error"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_openai_body_names_its_model_and_is_forwarded_unchanged() {
    let mut fx = Fixture::new();
    fx.extra = "[routing]\nmax_body_bytes = 65536\n".into();
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;
    let token = fx.token(CALLER);

    // A 60 KB chat request arrives in several reads; the upstream gets it byte for byte.
    let filler = "x".repeat(60_000);
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{filler}"}}],"model":"{MODEL}","stream":false}}"#
    );
    let r = post(&pg, "/v1/chat/completions", &token, body.clone()).await;
    assert_eq!(r.status(), 200, "{}", pg.logs());
    assert_eq!(r.headers()["x-provgate-version-id"], "v42");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].body,
        body.as_bytes(),
        "the body is forwarded unchanged"
    );
    assert_eq!(seen[0].headers["x-provgate-version-id"], "v42");

    // The same through chunked transfer encoding (no content-length).
    let chunks: Vec<Result<String, std::io::Error>> = vec![
        Ok(body[..30_000].to_string()),
        Ok(body[30_000..].to_string()),
    ];
    let r = post(
        &pg,
        "/v1/chat/completions",
        &token,
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.requests()[1].body, body.as_bytes());

    let small = |model: &str| format!(r#"{{"model":"{model}","input":"hello"}}"#);
    for (what, body, status, why) in [
        (
            "another model",
            small("shadow-model"),
            403,
            "model_mismatch",
        ),
        ("not json", "model=x".to_string(), 400, "request_invalid"),
        (
            "model not a string",
            r#"{"model":1}"#.to_string(),
            400,
            "request_invalid",
        ),
        (
            "two models in one body",
            format!(r#"{{"model":"{MODEL}","model":"shadow-model"}}"#),
            400,
            "request_invalid",
        ),
    ] {
        let r = post(&pg, "/v1/embeddings", &token, body).await;
        assert_eq!(reason(r).await, (status, why.to_string()), "{what}");
    }
    // Over the limit without a content-length: refused while reading.
    let big: Vec<Result<String, std::io::Error>> = (0..8).map(|_| Ok("z".repeat(10_000))).collect();
    let r = post(
        &pg,
        "/v1/embeddings",
        &token,
        reqwest::Body::wrap_stream(futures_util::stream::iter(big)),
    )
    .await;
    assert_eq!(reason(r).await, (413, "request_too_large".to_string()));
    // A body naming no model goes to the one model this sidecar serves.
    let r = post(&pg, "/v1/embeddings", &token, r#"{"input":"hello"}"#).await;
    assert_eq!(r.status(), 200);
    // Without a token the body is never read: 401 first.
    let r = pg
        .client
        .post(pg.url("/v1/embeddings"))
        .body(small("shadow-model"))
        .send()
        .await
        .unwrap();
    assert_eq!(reason(r).await, (401, "token_missing".to_string()));
    // A path no profile lists is refused, its body unread.
    let r = post(&pg, "/v1/other", &token, "not json").await;
    assert_eq!(reason(r).await, (403, "route_not_allowed".to_string()));
    assert_eq!(
        up.requests().len(),
        3,
        "nothing refused reached the model server"
    );
}

/// A body longer than pingora can replay (64 KiB) but declared by its Content-Length, on a
/// single-model sidecar: the headers go upstream, the body is held back until whole, and
/// only a body naming the guarded model follows them.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_body_is_held_until_its_model_is_checked() {
    let mut fx = Fixture::new();
    fx.extra = "[routing]\nmax_held_body_bytes = 400000\n".into();
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;
    let token = fx.token(CALLER);
    let long = |model: &str| {
        format!(
            r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"{model}"}}"#,
            "x".repeat(300_000)
        )
    };

    // The model named last, after 300 KB: forwarded byte for byte.
    let body = long(MODEL);
    let r = post(&pg, "/v1/chat/completions", &token, body.clone()).await;
    assert_eq!(r.status(), 200, "{}", pg.logs());
    assert_eq!(r.headers()["x-provgate-version-id"], "v42");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, body.as_bytes());
    assert_eq!(seen[0].headers["x-provgate-version-id"], "v42");

    for (what, body, status, why) in [
        ("another model", long("shadow-model"), 403, "model_mismatch"),
        (
            "two models",
            format!(r#"{{"model":"shadow-model",{}"#, &long(MODEL)[1..]),
            400,
            "request_invalid",
        ),
        ("not json", "y".repeat(100_000), 400, "request_invalid"),
    ] {
        let started = std::time::Instant::now();
        let r = post(&pg, "/v1/chat/completions", &token, body).await;
        let id = r.headers()["x-provgate-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(reason(r).await, (status, why.to_string()), "{what}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: answered at once"
        );
        let audit = fx.audit_record(&id).await;
        assert_eq!(audit["reason"], why, "{what}");
    }
    // Longer than max_held_body_bytes: refused before anything goes upstream.
    let r = post(&pg, "/v1/chat/completions", &token, "z".repeat(500_000)).await;
    assert_eq!(reason(r).await, (413, "request_too_large".to_string()));
    // The model server never got a refused body: at most the headers of one, with no body.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = up.requests();
    assert!(
        seen.iter().skip(1).all(|s| s.body.is_empty()),
        "refused bodies stayed in provgate: {:?}",
        seen.iter().map(|s| s.body.len()).collect::<Vec<_>>()
    );
    // And the sidecar still serves.
    let r = post(&pg, "/v1/chat/completions", &token, long(MODEL)).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_sidecar_fronts_several_models_each_with_its_own_approval() {
    let fx = Fixture::new();
    let a_dir = model_dir(&fx, "model-a", b"weights of a");
    let b_dir = model_dir(&fx, "model-b", b"weights of b");
    let approve =
        |file: &str, model: &str, dir: &std::path::Path, version: &str, callers: &[&str]| {
            let mut c = fx.claims();
            c.sub = model.into();
            c.jti = format!("rec-{model}");
            c.version_id = version.into();
            c.artefact.digest = digest_of(dir);
            c.callers = callers.iter().map(|s| (*s).into()).collect();
            fx.approve(file, &c);
        };
    let other_caller = "spiffe://example.org/ns/batch/sa/job";
    approve(
        "a.jwt",
        "model-a",
        &a_dir,
        "va",
        &["spiffe://example.org/ns/app/sa/*"],
    );
    approve(
        "b.jwt",
        "model-b",
        &b_dir,
        "vb",
        &["spiffe://example.org/ns/app/sa/*", other_caller],
    );
    let up = Upstream::start().await;
    up.serve(&[("model-a", ""), ("model-b", ""), ("model-c", "")]);
    let (listen, admin) = (free_port(), free_port());
    let sections = format!(
        "[[artefacts]]\nmodel = \"model-a\"\npath = \"{}\"\npoll_interval = \"200ms\"\n\n[[artefacts]]\nmodel = \"model-b\"\npath = \"{}\"\npoll_interval = \"200ms\"\n",
        a_dir.display(),
        b_dir.display()
    );
    let pg = Provgate::spawn(
        fx.dir.path(),
        "multi",
        &config_with(&fx, (listen, admin), up.addr, &sections),
        listen,
        admin,
        None,
    )
    .await;
    pg.wait_ready().await;
    let token = fx.token(CALLER);

    let r = pg.post_to("/v2/models/model-a/infer", Some(&token)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-provgate-version-id"], "va");
    let r = post(
        &pg,
        "/v1/embeddings",
        &token,
        r#"{"model":"model-b","input":"x"}"#,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-provgate-version-id"], "vb");
    assert_eq!(
        reason(pg.post_to("/v2/models/model-c/infer", Some(&token)).await).await,
        (403, "model_mismatch".into())
    );
    assert_eq!(
        reason(post(&pg, "/v1/embeddings", &token, r#"{"input":"x"}"#).await).await,
        (400, "model_required".into()),
        "a multi-model sidecar needs to know which model"
    );
    // Which approval's version ID goes upstream depends on the model, so a body too long
    // to read before the headers go is refused here rather than held.
    let long = format!(r#"{{"model":"model-b","input":"{}"}}"#, "x".repeat(100_000));
    assert_eq!(
        reason(post(&pg, "/v1/embeddings", &token, long).await).await,
        (413, "request_too_large".into())
    );
    assert_eq!(
        reason(pg.get("/healthz-of-upstream", Some(&token)).await).await,
        (403, "route_not_allowed".into())
    );

    // The model list: only what this caller may use right now, of what the server lists.
    let ids = |pg: &Provgate, token: String| {
        let (c, url) = (pg.client.clone(), pg.url("/v1/models"));
        async move {
            let r = c.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let v: serde_json::Value = r.json().await.unwrap();
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids(&pg, token.clone()).await, ["model-a", "model-b"]);
    assert_eq!(ids(&pg, fx.token(other_caller)).await, ["model-b"]);
    assert_eq!(
        reason(
            pg.get(
                "/v1/models",
                Some(&fx.token("spiffe://example.org/ns/x/sa/nobody"))
            )
            .await
        )
        .await,
        (403, "caller_not_allowed".into()),
        "a caller who may use no model gets the first model's reason"
    );

    // Swap model-b's weights: b is blocked, a is not.
    std::fs::write(b_dir.join("model.safetensors"), b"swapped weights").unwrap();
    let blocked = Instant::now();
    pg.eventually(Duration::from_secs(5), || async {
        reason(pg.post_to("/v2/models/model-b/infer", Some(&token)).await).await
            == (403, "artefact_unmanaged".into())
    })
    .await;
    eprintln!("model-b blocked {:?} after its swap", blocked.elapsed());
    assert_eq!(
        pg.post_to("/v2/models/model-a/infer", Some(&token))
            .await
            .status(),
        200
    );
    assert_eq!(ids(&pg, token.clone()).await, ["model-a"]);
    let metrics = pg.metrics().await;
    for series in [
        "provgate_requests_total{decision=\"allow\",model=\"model-a\",reason=\"none\",version_id=\"va\"}",
        "provgate_requests_total{decision=\"deny\",model=\"model-b\",reason=\"artefact_unmanaged\"",
        "provgate_requests_total{decision=\"deny\",model=\"none\",reason=\"model_required\"",
        "provgate_artefact_state{model=\"model-a\",state=\"ready\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_probe_mismatch_blocks_and_a_probe_outage_does_not() {
    let mut fx = Fixture::new();
    fx.extra =
        "[upstream.probe]\nkind = \"openai\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\n".into();
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;
    let token = fx.token(CALLER);
    let infer = format!("/v2/models/{MODEL}/infer");
    assert_eq!(pg.post_to(&infer, Some(&token)).await.status(), 200);

    // The server now serves something else under another name.
    up.serve(&[("shadow-model", "")]);
    let t = Instant::now();
    pg.eventually(Duration::from_secs(5), || async {
        reason(pg.post_to(&infer, Some(&token)).await).await == (403, "model_mismatch".into())
    })
    .await;
    eprintln!(
        "probe mismatch blocked after {:?} (interval 100ms)",
        t.elapsed()
    );
    assert_eq!(
        pg.metric(&format!(
            "provgate_upstream_probe_state{{model=\"{MODEL}\",state=\"not_serving\"}}"
        ))
        .await,
        1.0
    );
    up.serve(&[(MODEL, "")]);
    let t = Instant::now();
    pg.eventually(Duration::from_secs(5), || async {
        pg.post_to(&infer, Some(&token)).await.status() == 200
    })
    .await;
    eprintln!("probe agreement restored access after {:?}", t.elapsed());

    // A probe that cannot reach the server neither blocks nor clears a mismatch.
    drop(up);
    pg.eventually(Duration::from_secs(5), || async {
        pg.metric(&format!(
            "provgate_upstream_probe_state{{model=\"{MODEL}\",state=\"unreachable\"}}"
        ))
        .await
            == 1.0
    })
    .await;
    assert!(
        pg.metric("provgate_upstream_probes_total{kind=\"openai\",result=\"unreachable\"}")
            .await
            >= 1.0
    );
    let r = pg.post_to(&infer, Some(&token)).await;
    assert_eq!(
        r.status(),
        502,
        "not blocked by provgate: the upstream itself is down"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kserve_and_ollama_probes_check_name_and_digest() {
    // KServe v2: GET /v2/models/{name}.
    let mut fx = Fixture::new();
    fx.extra = "[upstream.probe]\nkind = \"kserve_v2\"\ninterval = \"100ms\"\n".into();
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;
    let token = fx.token(CALLER);
    assert_eq!(pg.get("/v1/models", Some(&token)).await.status(), 200);
    up.serve(&[]);
    pg.until_answer(&token, 403, Some("model_mismatch"), Duration::from_secs(5))
        .await;
    drop(pg);

    // Ollama: /api/tags, with the record pinning the manifest digest.
    let served_digest = "ab".repeat(32);
    let mut fx = Fixture::new();
    fx.extra = "[upstream.probe]\nkind = \"ollama\"\ninterval = \"100ms\"\n".into();
    let mut claims = fx.claims();
    claims.artefact.ollama_digest = Some(format!("sha256:{}", served_digest.to_uppercase()));
    fx.approve("rec.jwt", &claims);
    up.serve(&[(MODEL, &served_digest)]);
    let pg = Provgate::start(&fx, up.addr).await;
    pg.wait_ready().await;
    let token = fx.token(CALLER);
    pg.until_answer(&token, 200, None, Duration::from_secs(5))
        .await;
    // Same name, other content: Ollama reports another digest.
    up.serve(&[(MODEL, &"cd".repeat(32))]);
    pg.until_answer(&token, 403, Some("model_mismatch"), Duration::from_secs(5))
        .await;
    // The server goes away: a record pinning a digest cannot be confirmed.
    drop(up);
    pg.until_answer(
        &token,
        503,
        Some("artefact_unverified"),
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_reads_bodies_without_breaking_them_and_leaves_the_list_alone() {
    let mut fx = Fixture::new();
    fx.enforce = false;
    fx.extra = "[routing]\nmax_body_bytes = 1024\nmax_held_body_bytes = 50000\n".into();
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;
    up.serve(&[(MODEL, ""), ("unapproved", "")]);
    let token = fx.token(CALLER);

    // Over the limit, with and without a length: counted, and still delivered whole.
    let body = format!(
        r#"{{"model":"shadow-model","input":"{}"}}"#,
        "y".repeat(80_000)
    );
    let r = post(&pg, "/v1/embeddings", &token, body.clone()).await;
    assert_eq!(r.status(), 200);
    let chunks: Vec<Result<String, std::io::Error>> = vec![
        Ok(body[..40_000].to_string()),
        Ok(body[40_000..].to_string()),
    ];
    let r = post(
        &pg,
        "/v1/embeddings",
        &token,
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
    )
    .await;
    assert_eq!(r.status(), 200);
    // Within the limit and naming another model: would have been blocked, delivered.
    let r = post(&pg, "/v1/embeddings", &token, r#"{"model":"shadow-model"}"#).await;
    assert_eq!(r.status(), 200);
    let seen = up.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].body, body.as_bytes());
    assert_eq!(seen[1].body, body.as_bytes());
    assert_eq!(&seen[2].body[..], br#"{"model":"shadow-model"}"#);
    pg.eventually(Duration::from_secs(5), || async {
        let m = pg.metrics().await;
        m.contains(
            "decision=\"would_block\",model=\"all-minilm-l6-v2\",reason=\"request_too_large\"",
        ) && m.contains(
            "decision=\"would_block\",model=\"all-minilm-l6-v2\",reason=\"model_mismatch\"",
        )
    })
    .await;

    // The list is the server's, unfiltered.
    let v: serde_json::Value = pg
        .get("/v1/models", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
}

/// Held bodies share one budget (`max_held_total_bytes`): a body that would overdraw it is
/// refused at once, and what a request took comes back when it ends, however it ends.
#[tokio::test(flavor = "multi_thread")]
async fn held_bodies_share_a_bounded_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut fx = Fixture::new();
    fx.extra = "[routing]\nmax_held_body_bytes = 400000\nmax_held_total_bytes = 400000\n".into();
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;
    let token = fx.token(CALLER);
    let body = format!(r#"{{"model":"{MODEL}","input":"{}"}}"#, "x".repeat(300_000));
    // A client that sends its headers and half its body, then waits.
    let stalled = || async {
        let mut s = tokio::net::TcpStream::connect(pg.listen).await.unwrap();
        let head = format!(
            "POST /v1/embeddings HTTP/1.1\r\nHost: provgate\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body.as_bytes()[..150_000]).await.unwrap();
        s
    };

    let mut first = stalled().await;
    let share = format!("provgate_held_body_bytes {}", body.len());
    pg.eventually(Duration::from_secs(5), || async {
        pg.metrics().await.contains(&share)
    })
    .await;
    // Until the first is done, a second 300 KB body does not fit the 400 KB budget.
    let r = post(&pg, "/v1/embeddings", &token, body.clone()).await;
    assert_eq!(reason(r).await, (413, "request_too_large".to_string()));
    first.write_all(&body.as_bytes()[150_000..]).await.unwrap();
    let mut answer = vec![0u8; 12];
    first.read_exact(&mut answer).await.unwrap();
    assert_eq!(
        &answer, b"HTTP/1.1 200",
        "the first body went through whole"
    );
    let r = post(&pg, "/v1/embeddings", &token, body.clone()).await;
    assert_eq!(r.status(), 200, "its share came back");
    assert!(pg.metrics().await.contains("provgate_held_body_bytes 0"));

    // A client that goes away mid-body gives its share back too.
    drop(stalled().await);
    pg.eventually(Duration::from_secs(5), || async {
        post(&pg, "/v1/embeddings", &token, body.clone())
            .await
            .status()
            == 200
    })
    .await;
    let full: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|s| s.body.len() == body.len())
        .collect();
    assert!(full.len() >= 3, "three bodies went through whole");
    assert!(full.iter().all(|s| s.body == body.as_bytes()));
}

/// A client still sending a body when provgate refuses it (here a 413 decided from the
/// Content-Length alone) reads the refusal, not a connection reset: provgate reads and drops
/// the rest of a moderate body after answering, instead of closing on unread data.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_body_still_being_sent_gets_its_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut fx = Fixture::new();
    fx.extra = "[routing]\nmax_held_body_bytes = 100000\n".into();
    fx.approve("rec.jwt", &fx.claims());
    let (_up, pg) = started(&fx).await;
    let token = fx.token(CALLER);
    let total = 500_000;
    let mut conn = tokio::net::TcpStream::connect(pg.listen).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {total}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&vec![b' '; 1000]).await.unwrap();
    // provgate answers 413 now; the client, like any that does not wait for 100-continue,
    // goes on sending its body.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..((total - 1000) / 10_000) {
        conn.write_all(&vec![b' '; 10_000]).await.unwrap();
    }
    conn.write_all(&vec![b' '; (total - 1000) % 10_000])
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n")
                        && String::from_utf8_lossy(&answer).contains("request_too_large")
                    {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("answered within 5 s");
    assert!(read.is_ok(), "reading the answer failed: {read:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"error\":\"request_too_large\""), "{text}");
    // The connection is not kept: the client is told so, and sends no next request on it.
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
}
