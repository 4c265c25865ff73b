//! The wall clock stepped forward and back under a running provgate (issue 16 item 4), with
//! libfaketime (Debian `faketime`, installed by `scripts/setup.sh`; the test says SKIP without
//! it): staleness bounds keep to the monotonic clock, expiry decisions move with the wall
//! clock, and an expiry denial's audit record says which clock judged it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::registries::{remote_registry, HttpRegistry};
use crate::support::*;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A token for [`CALLER`] valid for `ttl` from the real now.
fn token_for(fx: &Fixture, ttl: Duration) -> String {
    provgate::identity::mint_token(&fx.issuer, ISSUER, CALLER, &["provgate".to_string()], ttl)
        .unwrap()
}

/// Steps provgate's wall clock to the real time plus `offset` (libfaketime's `+2h` form).
async fn step(file: &Path, offset: &str) {
    std::fs::write(file, offset).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// The first denial's audit record after the first `before` records (the writer is
/// asynchronous; checkpoints and segment records carry no reason).
async fn record_after(fx: &Fixture, before: usize) -> serde_json::Value {
    for _ in 0..200 {
        let found = fx
            .audit_records()
            .into_iter()
            .skip(before)
            .find(|r| r["reason"].is_string());
        if let Some(r) = found {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no audit record after the first {before}");
}

#[tokio::test]
async fn a_stepped_wall_clock_moves_expiry_but_not_staleness() {
    if !Path::new(LIBFAKETIME).exists() {
        eprintln!("SKIP: libfaketime not installed (scripts/setup.sh installs faketime)");
        return;
    }
    let upstream = Upstream::start().await;
    let registry = HttpRegistry::start("t").await;
    let mut fx = Fixture::new();
    std::fs::write(fx.path("registry.token"), "t").unwrap();
    fx.registry = Some(remote_registry(
        "http",
        &format!("http://{}", registry.addr),
        "8s",
        &format!("token_file = \"{}\"", fx.path("registry.token").display()),
    ));
    let mut claims = fx.claims();
    claims.exp = provgate::unix_now() + 86_400;
    registry.answer(
        200,
        provgate::approval::sign(&claims, &fx.approver).unwrap(),
        None,
    );

    let clock = fx.path("faketime");
    std::fs::write(&clock, "+0").unwrap();
    let (listen, admin) = (free_port(), free_port());
    let config = fx.path("provgate.toml");
    std::fs::write(&config, fx.config(listen, admin, upstream.addr)).unwrap();
    let log = fx.path("provgate.log");
    let child = Command::new(bin())
        .args(["run", "-c"])
        .arg(&config)
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME_TIMESTAMP_FILE", &clock)
        // Read the file at every call: a cache's expiry would be judged on the faked clock.
        .env("FAKETIME_NO_CACHE", "1")
        // A step of the wall clock never moves CLOCK_MONOTONIC: nor does this one.
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pg = Provgate {
        child,
        listen,
        admin,
        log,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    };
    pg.wait_ready().await;
    let long = token_for(&fx, Duration::from_secs(4 * 3600));
    let short = token_for(&fx, Duration::from_secs(600));
    assert_eq!(pg.get("/v1/models", Some(&long)).await.status(), 200);

    // The registry goes down and the wall clock jumps two hours ahead: the records were read
    // seconds ago by the monotonic clock, so they stay in use (max_stale is 8 s); the short
    // token's exp is judged on the wall clock, so it has expired.
    registry.answer(500, "", None);
    step(&clock, "+2h").await;
    let r = pg.get("/v1/models", Some(&long)).await;
    assert_eq!(
        r.status(),
        200,
        "staleness followed the wall clock:\n{}",
        pg.logs()
    );
    let before = fx.audit_records().len();
    let r = pg.get("/v1/models", Some(&short)).await;
    assert_eq!(r.status(), 401);
    let denial = record_after(&fx, before).await;
    assert_eq!(denial["reason"], "token_invalid");
    assert_eq!(
        denial["detail"],
        "token expired (judged on the wall clock at the record's time, with callers.leeway)"
    );
    let judged = humantime::parse_rfc3339_weak(denial["time"].as_str().unwrap()).unwrap();
    let ahead = judged
        .duration_since(std::time::SystemTime::now())
        .expect("the record's time is not the stepped wall clock");
    assert!(ahead > Duration::from_secs(7000), "{ahead:?}");

    // Two hours back: a token minted now is not valid yet by the wall clock (a new one: a
    // token verified before stays cached until its exp).
    step(&clock, "-2h").await;
    let fresh = token_for(&fx, Duration::from_secs(4 * 3600));
    let before = fx.audit_records().len();
    let r = pg.get("/v1/models", Some(&fresh)).await;
    assert_eq!(r.status(), 401);
    let denial = record_after(&fx, before).await;
    assert_eq!(
        denial["detail"],
        "token not yet valid (judged on the wall clock at the record's time, with callers.leeway)"
    );

    // Back to the real time: the registry has now been down longer than max_stale by the
    // monotonic clock, whatever the wall clock did meanwhile.
    step(&clock, "+0").await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    let r = pg.get("/v1/models", Some(&long)).await;
    assert_eq!(r.status(), 503, "max_stale did not apply:\n{}", pg.logs());
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "trust_data_unavailable");
}
