//! The per-request decision path with warm caches.
//!
//! Run: `cargo bench --bench decision` (release profile). Reference numbers live in
//! BENCHMARKS.md with the machine they were taken on; compare ratios within one run, not
//! absolute numbers across runs (the machines are shared and noisy).
//!
//! - `token/verify_cold/*`: a full signature verification (cache miss), per algorithm
//!   (ES256, ES384, EdDSA, RS256 and PS256 with a 2048-bit key).
//! - `token/verify_cached`: the same token again: SHA-256 of the token + a cache read.
//! - `approval/lookup`: a moka hit for the served digest.
//! - `policy/decide`: the pure decision over verified inputs.
//! - `request/evaluate`: all of the above as `request_filter` runs it, from a fresh
//!   per-request context (request ID included) and the request header (Authorization
//!   parse, token cache, artefact state, approval lookup, decide).
//! - `request/body_model_1k`, `request/body_model_60k`: reading `model` from an OpenAI JSON
//!   body (what `request_filter` adds on `[routing] openai_paths` only): the load
//!   benchmark's 1.4 KB chat request, and the same grown to 60 KB of messages.
//!
//! - `headers/{request,response}/*`: provgate's header edits against pingora's
//!   `insert_header` and against the pass-through (clone and wire write only).
//!
//! Model routing (2026-11-27, 2-core machine, interleaved runs of two builds): with the
//! per-model state and probe view, `request/evaluate` 364-394 ns against main's 362-421 ns
//! (no difference beyond drift); `body_model_1k` 0.74 us, `body_model_60k` 11.4-11.9 us.
// Tests, benchmarks and examples may panic: Cargo.toml's no-panic lints are for the product.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use pingora::http::RequestHeader;
use pingora::proxy::ProxyHttp;
use provgate::approval::{sign, ApprovalClaims, ArtefactRef};
use provgate::artefact::{ArtefactHandle, ArtefactState};
use provgate::audit::AuditLog;
use provgate::digest::Digest;
use provgate::identity::{mint_token, Issuer, TokenVerifier};
use provgate::keys::{jwks_document, KeyKind, KeySet, SigningKey};
use provgate::policy::{
    decide, ApprovalView, ApproverScope, ArtefactView, CallerView, Input, ModelView, Policy,
    ServerView, TierRule,
};
use provgate::probe::ServedHandle;
use provgate::proxy::routing::config::RoutingFile;
use provgate::proxy::routing::{model_in_body, Named};
use provgate::proxy::{Gate, HeldBudget, ModelGate, RequestCounters, RequestIds};
use provgate::registry::{ApprovalStore, Snapshot};
use provgate::telemetry::Metrics;

const ISS: &str = "https://issuer.bench";
const CALLER: &str = "spiffe://example.org/ns/app/sa/client";
const WORKLOAD: &str = "spiffe://example.org/ns/prod/sa/model-serving";

fn verifier(keys: &[&SigningKey], metrics: Arc<Metrics>) -> TokenVerifier {
    let jwks: Vec<_> = keys.iter().map(|k| k.public_jwk.clone()).collect();
    TokenVerifier::new(
        vec![Issuer::with_keys(
            ISS,
            vec!["provgate".into()],
            vec![
                jsonwebtoken::Algorithm::ES256,
                jsonwebtoken::Algorithm::ES384,
                jsonwebtoken::Algorithm::EdDSA,
            ],
            KeySet::from_jwks_json(&jwks_document(&jwks), "b").unwrap(),
        )],
        30,
        100_000,
        metrics,
    )
}

fn token(key: &SigningKey) -> String {
    mint_token(
        key,
        ISS,
        CALLER,
        &["provgate".into()],
        Duration::from_secs(3600),
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let metrics = Arc::new(Metrics::new());
    let es256 = SigningKey::generate(KeyKind::Es256).unwrap().0;
    let es384 = SigningKey::generate(KeyKind::Es384).unwrap().0;
    let ed = SigningKey::generate(KeyKind::Ed25519).unwrap().0;
    let tokens = verifier(&[&es256, &es384, &ed], metrics.clone());
    let now = provgate::unix_now();

    for (name, key) in [("es256", &es256), ("es384", &es384), ("eddsa", &ed)] {
        let t = token(key);
        c.bench_function(&format!("token/verify_cold/{name}"), |b| {
            b.iter(|| tokens.verify_uncached(black_box(&t), now).unwrap())
        });
    }
    // RSA 2048: RS256 and PS256 with one key.
    {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair as _;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8 = pair.as_der().unwrap();
        let pem_text = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
        let signing = jsonwebtoken::EncodingKey::from_rsa_pem(pem_text.as_bytes()).unwrap();
        let verifying = provgate::keys::VerifyingKey {
            kid: Some("rsa".into()),
            algorithms: vec![
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::Algorithm::PS256,
            ],
            key: jsonwebtoken::DecodingKey::from_rsa_der(pair.public_key().as_ref()),
            thumbprint: "rsa".into(),
        };
        let rsa = TokenVerifier::new(
            vec![Issuer::with_keys(
                ISS,
                vec!["provgate".into()],
                vec![
                    jsonwebtoken::Algorithm::RS256,
                    jsonwebtoken::Algorithm::PS256,
                ],
                KeySet {
                    keys: vec![verifying],
                    skipped: vec![],
                    certificates: vec![],
                },
            )],
            30,
            100,
            metrics.clone(),
        );
        for (name, alg) in [
            ("rs256", jsonwebtoken::Algorithm::RS256),
            ("ps256", jsonwebtoken::Algorithm::PS256),
        ] {
            let mut header = jsonwebtoken::Header::new(alg);
            header.kid = Some("rsa".into());
            let claims = serde_json::json!({"iss": ISS, "sub": CALLER, "aud": ["provgate"], "exp": now + 3600});
            let t = jsonwebtoken::encode(&header, &claims, &signing).unwrap();
            c.bench_function(&format!("token/verify_cold/{name}"), |b| {
                b.iter(|| rsa.verify_uncached(black_box(&t), now).unwrap())
            });
        }
    }
    let t = token(&es256);
    tokens.verify(&t, now).unwrap();
    c.bench_function("token/verify_cached", |b| {
        b.iter(|| tokens.verify(black_box(&t), now).unwrap())
    });

    // A registry with the served digest and 1,000 other records.
    let approver = SigningKey::generate(KeyKind::Es256).unwrap().0;
    let approvers = KeySet::from_jwks_json(
        &jwks_document(std::slice::from_ref(&approver.public_jwk)),
        "a",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let served = Digest([42; 32]);
    for i in 0..1000u32 {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&i.to_le_bytes());
        let digest = if i == 0 { served } else { Digest(d) };
        let claims = ApprovalClaims {
            iss: "approver".into(),
            sub: "m".into(),
            jti: format!("r{i}"),
            iat: now - 10,
            nbf: None,
            exp: now + 86_400,
            version_id: format!("v{i}"),
            artefact: ArtefactRef {
                digest,
                signer: None,
                ollama_digest: None,
                base_digest: None,
            },
            lineage: Default::default(),
            evidence: vec![],
            approvals: vec![],
            tier: "internal".into(),
            workloads: vec![WORKLOAD.into()],
            callers: vec!["spiffe://example.org/ns/app/*".into()],
            revalidate_after: None,
        };
        std::fs::write(
            dir.path().join(format!("r{i}.jwt")),
            sign(&claims, &approver).unwrap(),
        )
        .unwrap();
    }
    let store = Arc::new(ApprovalStore::new(
        Duration::from_secs(300),
        Duration::from_secs(1),
        metrics.clone(),
    ));
    let snapshot: Snapshot = provgate::registry::load_dir(dir.path(), &approvers).unwrap();
    store.publish(snapshot);
    store.lookup(&served);
    // What the request path calls: the staleness checks and the cached lookup.
    let now_ms = provgate::unix_now_ms();
    c.bench_function("approval/lookup", |b| {
        b.iter(|| store.view(black_box(&served), now_ms))
    });

    let policy = Policy {
        workload_identity: WORKLOAD.into(),
        tiers: [
            (
                provgate::policy::DEFAULT_TIER.to_string(),
                TierRule::default(),
            ),
            ("internal".to_string(), TierRule::default()),
        ]
        .into_iter()
        .collect(),
        tier: provgate::policy::DEFAULT_TIER.into(),
        tier_rule: TierRule::default(),
        approvers: [(
            approver.kid.clone(),
            Arc::new(ApproverScope {
                name: "approver".into(),
                roles: vec![],
                models: vec!["*".into()],
                tiers: vec!["*".into()],
            }),
        )]
        .into_iter()
        .collect(),
        bare_issuers: vec![Arc::from(ISS)],
    };
    let caller = tokens.verify(&t, now).unwrap();
    let entry = store.lookup(&served).unwrap();
    c.bench_function("policy/decide", |b| {
        b.iter(|| {
            decide(
                &policy,
                black_box(&Input {
                    caller: CallerView::Verified(&caller),
                    artefact: ArtefactView::Ready {
                        digest: &served,
                        signer: None,
                    },
                    approval: ApprovalView::Entry(Some(&entry)),
                    model: ModelView::Served {
                        name: "m",
                        server: ServerView::NotProbed,
                    },
                    now,
                }),
            )
        })
    });

    let artefact = Arc::new(ArtefactHandle::default());
    artefact.set(ArtefactState::Ready {
        digest: served,
        files: 1,
        bytes: 1,
        signature: provgate::oms::SignatureState::Absent,
    });
    let audit_dir = tempfile::tempdir().unwrap();
    let gate = Gate {
        policy: Arc::new(ArcSwap::from_pointee(policy)),
        enforce: true,
        log_allowed: false,
        models: vec![ModelGate {
            name: "m".into(),
            artefact,
            served: Arc::new(ServedHandle::new(false)),
            counters: RequestCounters::new(&metrics, "m", true),
            base: None,
        }],
        unrouted: RequestCounters::new(&metrics, "none", true),
        routing: RoutingFile::default().validate(
            &[provgate::proxy::routing::profiles::Api::Openai],
            &mut Vec::new(),
        ),
        approvals: store,
        tokens: Arc::new(tokens),
        audit: AuditLog::open(
            &provgate::audit::AuditConfig::at(audit_dir.path().join("a.jsonl")),
            metrics.clone(),
        )
        .unwrap(),
        metrics,
        peer: pingora::prelude::HttpPeer::new("127.0.0.1:1", false, String::new()),
        forward_token: false,
        caller_auth: provgate::identity::config::CallerAuth::Token,
        request_ids: RequestIds::default(),
        tracer: None,
        held_bytes: Arc::new(HeldBudget::new(
            64 << 20,
            prometheus::IntGauge::new("held", "held").unwrap(),
        )),
    };
    let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
    req.insert_header("authorization", format!("Bearer {t}"))
        .unwrap();
    req.insert_header("content-type", "application/json")
        .unwrap();
    c.bench_function("request/evaluate", |b| {
        b.iter(|| {
            // The context as pingora makes it, request ID included.
            let mut ctx = gate.new_ctx();
            let d = gate.evaluate(black_box(&req), Some("m"), &mut ctx);
            assert!(d.reason().is_none());
            d
        })
    });
}

/// The request-path cost of reading `model` from an OpenAI body (the load benchmark's chat
/// request, 1.4 KB, and the same padded to 60 KB of messages).
fn body(c: &mut Criterion) {
    let small = include_bytes!("load/chat-request.json");
    assert_eq!(
        model_in_body(small),
        Named::Model("all-minilm-l6-v2".into())
    );
    c.bench_function("request/body_model_1k", |b| {
        b.iter(|| model_in_body(black_box(small)))
    });
    let mut v: serde_json::Value = serde_json::from_slice(small).unwrap();
    let msg = v["messages"][1].clone();
    let msgs = v["messages"].as_array_mut().unwrap();
    while serde_json::to_vec(msgs).unwrap().len() < 60_000 {
        msgs.push(msg.clone());
    }
    let large = serde_json::to_vec(&v).unwrap();
    c.bench_function("request/body_model_60k", |b| {
        b.iter(|| model_in_body(black_box(&large)))
    });
}

/// provgate's headers as pingora's HTTP/1 path carries them: the client's request cloned
/// for the upstream, the token removed and three headers added; the upstream's response with
/// two added; both written to the wire. `none` is the pass-through (clone and write only);
/// `case_map` inserts through pingora's `insert_header`, which keeps a second map of the
/// names' case; `parts` is provgate's `edit_request`/`edit_response`, on a request that
/// still has its case map (`request/parts`) or had it dropped in `request_filter`
/// (`request/parts_no_case`).
fn headers(c: &mut Criterion) {
    use bytes::{Bytes, BytesMut};
    use pingora::http::ResponseHeader;
    use provgate::proxy::headers::{edit_request, edit_response, strip_provgate};
    use provgate::proxy::headers::{HEADER_CALLER, HEADER_REQUEST_ID, HEADER_VERSION_ID};
    // The load benchmark's request (wrk) and response (nginx).
    let mut req = RequestHeader::build("GET", b"/v2/models/all-minilm-l6-v2", Some(4)).unwrap();
    for (k, v) in [
        ("Host", "127.0.0.1:8080".to_string()),
        ("User-Agent", "wrk".to_string()),
        ("Authorization", format!("Bearer {}", "e".repeat(600))),
        ("Accept", "*/*".to_string()),
    ] {
        req.append_header(k.to_string(), v).unwrap();
    }
    let mut no_case = req.clone();
    edit_request(&mut no_case, |_| Ok(())).unwrap();
    let mut resp = ResponseHeader::build(200, Some(5)).unwrap();
    for (k, v) in [
        ("Server", "nginx/1.26.3"),
        ("Date", "Fri, 27 Nov 2026 03:00:00 GMT"),
        ("Content-Type", "application/json"),
        ("Content-Length", "187"),
        ("Connection", "keep-alive"),
    ] {
        resp.append_header(k.to_string(), v).unwrap();
    }
    let id = http::HeaderValue::from_static("0123456789abcdef0123456789abcdef");
    let ver = http::HeaderValue::from_static("bench-v1");
    let sub = http::HeaderValue::from_static("spiffe://example.org/ns/app/sa/client");
    let mut buf = BytesMut::with_capacity(4096);
    let mut g = c.benchmark_group("headers");
    g.bench_function("request/none", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&req).clone().header_to_h1_wire(&mut buf);
            buf.len()
        })
    });
    g.bench_function("request/case_map", |b| {
        b.iter(|| {
            buf.clear();
            let mut r = black_box(&req).clone();
            r.remove_header(&http::header::AUTHORIZATION);
            let name = |n: &'static [u8]| Bytes::from_static(n);
            r.insert_header(name(b"X-Provgate-Request-Id"), id.clone())
                .unwrap();
            r.insert_header(name(b"X-Provgate-Version-Id"), ver.clone())
                .unwrap();
            r.insert_header(name(b"X-Provgate-Caller"), sub.clone())
                .unwrap();
            r.header_to_h1_wire(&mut buf);
            buf.len()
        })
    });
    for (name, from) in [("request/parts", &req), ("request/parts_no_case", &no_case)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                let mut r = black_box(from).clone();
                edit_request(&mut r, |h| {
                    strip_provgate(h);
                    h.remove(http::header::AUTHORIZATION);
                    h.try_reserve(3)?;
                    h.try_insert(HEADER_REQUEST_ID, id.clone())?;
                    h.try_insert(HEADER_VERSION_ID, ver.clone())?;
                    h.try_insert(HEADER_CALLER, sub.clone())?;
                    Ok(())
                })
                .unwrap();
                r.header_to_h1_wire(&mut buf);
                buf.len()
            })
        });
    }
    g.bench_function("response/none", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&resp).clone().header_to_h1_wire(&mut buf);
            buf.len()
        })
    });
    g.bench_function("response/case_map", |b| {
        b.iter(|| {
            buf.clear();
            let mut s = black_box(&resp).clone();
            let name = |n: &'static [u8]| Bytes::from_static(n);
            s.insert_header(name(b"X-Provgate-Request-Id"), id.clone())
                .unwrap();
            s.insert_header(name(b"X-Provgate-Version-Id"), ver.clone())
                .unwrap();
            s.header_to_h1_wire(&mut buf);
            buf.len()
        })
    });
    g.bench_function("response/parts", |b| {
        b.iter(|| {
            buf.clear();
            let mut s = black_box(&resp).clone();
            edit_response(&mut s, |h| {
                strip_provgate(h);
                h.try_reserve(3)?;
                h.try_insert(HEADER_REQUEST_ID, id.clone())?;
                h.try_insert(HEADER_VERSION_ID, ver.clone())?;
                Ok(())
            })
            .unwrap();
            s.header_to_h1_wire(&mut buf);
            buf.len()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench, body, headers
}
criterion_main!(benches);
