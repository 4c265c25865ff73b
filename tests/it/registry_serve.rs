//! The reference registry server (`provgate registry serve`) through the real binary: every
//! answer of the contract on both URL forms, strong ETags and 304s, 404 for anything but the
//! exact forms, 410 after `revoked.txt` names every record, the revocation list at
//! `/revocations`; watches (`Prefer: wait`) that return within 100 ms of a change, time out to
//! 304, and wake together; a sidecar on today's `kind = "http"` client allowed, then blocked
//! after `revoked.txt` changes; and `provgate revoke`'s list verified by PyJWT.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::registries::remote_registry;
use crate::support::*;

/// A running `provgate registry serve`, killed on drop.
struct RegistryServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    requests: PathBuf,
}

impl RegistryServer {
    fn start(dir: &Path, work: &Path) -> RegistryServer {
        let log = work.join("registry-serve.log");
        let requests = work.join("registry-requests.log");
        let mut child = Command::new(bin())
            .args([
                "registry",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--print-address",
            ])
            .arg("--dir")
            .arg(dir)
            .arg("--request-log")
            .arg(&requests)
            .args(["--rescan", "1s"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().parse().unwrap_or_else(|_| {
            panic!(
                "no address printed ({line:?}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        RegistryServer {
            child,
            addr,
            log,
            requests,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
}

async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = client().get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

fn etag(r: &reqwest::Response) -> String {
    r.headers()["etag"].to_str().unwrap().to_string()
}

/// Polls `url` until it answers `status`, or fails after 5 s.
async fn until_status(url: &str, status: u16) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(url, &[]).await;
        if r.status().as_u16() == status {
            return r;
        }
        assert!(Instant::now() < deadline, "{url}: still {}", r.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The status of a GET sent byte for byte as `target` (no URL normalisation on the way).
async fn raw_status(addr: SocketAddr, target: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{text}"))
}

/// Writes a file beside, then renames it into place, as a publishing tool would.
fn publish(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_every_form_with_strong_etags_304_404_and_410() {
    let fx = Fixture::new();
    let claims = fx.claims();
    fx.approve("a.jws", &claims);
    let record = std::fs::read_to_string(fx.registry_dir().join("a.jws")).unwrap();
    std::fs::write(fx.registry_dir().join("broken.jws"), "not a record").unwrap();
    let server = RegistryServer::start(&fx.registry_dir(), fx.dir.path());
    let hex = fx.digest().hex();

    let query = server.url(&format!("/approvals?digest=sha256:{hex}"));
    let r = get(&query, &[("accept", "application/jose")]).await;
    assert_eq!(r.status(), 200, "{}", server.logs());
    assert_eq!(r.headers()["content-type"], "application/jose");
    let e = etag(&r);
    assert!(e.starts_with('"') && !e.starts_with("W/"), "strong: {e}");
    let body = r.text().await.unwrap();
    assert_eq!(body.trim(), record.trim());

    let encoded = server.url(&format!("/approvals?digest=sha256%3A{hex}"));
    let path = server.url(&format!("/approvals/sha256/{hex}"));
    for url in [&encoded, &path] {
        let r = get(url, &[]).await;
        assert_eq!((r.status().as_u16(), etag(&r)), (200, e.clone()), "{url}");
        assert_eq!(r.text().await.unwrap(), body);
        let r = get(url, &[("if-none-match", &e)]).await;
        assert_eq!((r.status().as_u16(), etag(&r)), (304, e.clone()), "{url}");
        assert!(r.headers().get("preference-applied").is_none());
        assert_eq!(r.text().await.unwrap(), "");
    }

    // No record: 404 on both forms; no list yet.
    let other = "ab".repeat(32);
    for url in [
        server.url(&format!("/approvals/sha256/{other}")),
        server.url(&format!("/approvals?digest=sha256:{other}")),
        server.url("/revocations"),
    ] {
        assert_eq!(get(&url, &[]).await.status(), 404, "{url}");
    }

    // Only the exact forms: everything else is 404, whatever it names.
    for bad in [
        format!("/approvals/sha256/{}", hex.to_uppercase()),
        format!("/approvals/sha256/{hex}/"),
        format!("/approvals/sha256/{hex}.jws"),
        format!("/approvals/sha256/../sha256/{hex}"),
        format!("/approvals/sha256/%2e%2e/{hex}"),
        format!("/approvals?digest=sha256:{hex}&x=1"),
        format!("/approvals/sha256/{hex}?x=1"),
        "/a.jws".to_string(),
        "/revoked.txt".to_string(),
        "/approvals/../revoked.txt".to_string(),
        "/".to_string(),
    ] {
        // Raw, so no client normalises the target first.
        assert_eq!(raw_status(server.addr, &bad).await, 404, "{bad}");
    }
    let r = client().post(&path).body("x").send().await.unwrap();
    assert_eq!(r.status(), 405);
    // A request head over the bound is refused by the HTTP layer.
    let r = client()
        .get(&path)
        .header("x-pad", "a".repeat(20_000))
        .send()
        .await;
    assert!(
        r.as_ref().map_or(true, |r| r.status() == 431),
        "{:?}",
        r.map(|r| r.status())
    );

    // The malformed file was skipped with a log line, and served nothing.
    let logs = server.logs();
    assert!(
        logs.contains("broken.jws") && logs.contains("skipped"),
        "{logs}"
    );

    // A signed revocation list appears at /revocations, byte for byte.
    let out = run_cli(
        &[
            "revoke",
            "--key",
            fx.path("approver.key").to_str().unwrap(),
            "--iss",
            "security@example.org",
            "--jti",
            "some-other-record",
            "--out",
            fx.registry_dir().join("revocations.jws").to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let r = until_status(&server.url("/revocations"), 200).await;
    assert_eq!(r.headers()["content-type"], "application/jose");
    assert_eq!(
        r.text().await.unwrap(),
        std::fs::read_to_string(fx.registry_dir().join("revocations.jws")).unwrap()
    );
    // Listed in revocations.jws only: the server does not judge the list; still 200.
    assert_eq!(get(&path, &[]).await.status(), 200);

    // Every record of the digest in revoked.txt: 410 with the records, a new ETag.
    publish(
        &fx.registry_dir(),
        "revoked.txt",
        &format!("{}\n", claims.jti),
    );
    let r = until_status(&path, 410).await;
    let gone = etag(&r);
    assert_ne!(gone, e);
    assert_eq!(r.text().await.unwrap(), body);
    let r = get(&query, &[("if-none-match", &gone)]).await;
    assert_eq!(r.status(), 304);
    // An old ETag is not a match: the full answer.
    let r = get(&query, &[("if-none-match", &e)]).await;
    assert_eq!(r.status(), 410);

    // The request log has one line per request, with its form and status.
    let _ = Command::new("kill")
        .args(["-INT", &server.child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&server.requests).unwrap_or_default();
        // The last request (a query answered 410) is logged when the server stops.
        let last = |l: &str| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(1..3) == Some(&["query", "410"][..])
        };
        if text.lines().any(last) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let forms: Vec<(&str, &str)> = lines
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 5, "{l}");
            (f[1], f[2])
        })
        .collect();
    assert!(forms.contains(&("query", "200")), "{lines}");
    assert!(forms.contains(&("path", "304")), "{lines}");
    assert!(forms.contains(&("other", "404")), "{lines}");
    assert!(forms.contains(&("revocations", "200")), "{lines}");
    assert!(forms.contains(&("query", "410")), "{lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_time_out_to_304_and_wake_together_within_100ms_of_a_change() {
    let fx = Fixture::new();
    let claims = fx.claims();
    fx.approve("a.jws", &claims);
    let server = RegistryServer::start(&fx.registry_dir(), fx.dir.path());
    let path = server.url(&format!("/approvals/sha256/{}", fx.digest().hex()));
    let e = etag(&get(&path, &[]).await);

    // Nothing changes: held for the wait (less at most 10%, never more), then 304.
    let t = Instant::now();
    let r = get(&path, &[("if-none-match", &e), ("prefer", "wait=1")]).await;
    let held = t.elapsed();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["preference-applied"], "wait=1");
    assert_eq!(etag(&r), e);
    assert!(
        held >= Duration::from_millis(890) && held < Duration::from_millis(1300),
        "{held:?}"
    );
    // Not the current ETag: answered at once; the server's bound is applied.
    let t = Instant::now();
    let r = get(
        &path,
        &[("if-none-match", "\"old\""), ("prefer", "wait=3600")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["preference-applied"], "wait=60");
    assert!(t.elapsed() < Duration::from_millis(500));

    // Twenty watchers on the record, one on an unknown digest (404's ETag).
    let other = server.url(&format!("/approvals/sha256/{}", "cd".repeat(32)));
    let other_etag = etag(&get(&other, &[]).await);
    let started = Instant::now();
    let mut watchers = Vec::new();
    for _ in 0..20 {
        let (path, e) = (path.clone(), e.clone());
        watchers.push(tokio::spawn(async move {
            let r = get(&path, &[("if-none-match", &e), ("prefer", "wait=30")]).await;
            (r.status().as_u16(), etag(&r), Instant::now())
        }));
    }
    let bystander = tokio::spawn(async move {
        let r = get(
            &other,
            &[("if-none-match", &other_etag), ("prefer", "wait=2")],
        )
        .await;
        (r.status().as_u16(), Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let changed = Instant::now();
    publish(
        &fx.registry_dir(),
        "revoked.txt",
        &format!("{}\n", claims.jti),
    );
    let mut returned = Vec::new();
    for w in watchers {
        let (status, new_etag, at) = w.await.unwrap();
        assert_eq!(status, 410, "{}", server.logs());
        assert_ne!(new_etag, e);
        assert!(at > changed, "a watcher returned before the change");
        returned.push(at - changed);
    }
    returned.sort();
    println!(
        "watch: 20 watchers returned {:?} .. {:?} after the change (held {:?} before it)",
        returned[0],
        returned[19],
        changed - started
    );
    assert!(
        returned[19] < Duration::from_millis(100),
        "the last watcher returned {:?} after the change",
        returned[19]
    );
    // The unrelated digest's watch was not woken by the change: it timed out.
    let (status, at) = bystander.await.unwrap();
    assert_eq!(status, 304);
    assert!(
        at - started >= Duration::from_millis(1790),
        "{:?}",
        at - started
    );

    // The twenty re-watch the changed answer together: the server spreads their holds over
    // the whole wait (from 2 s), so they do not come back together.
    let e = etag(&get(&path, &[]).await);
    let started = Instant::now();
    let mut watchers = Vec::new();
    for _ in 0..20 {
        let (path, e) = (path.clone(), e.clone());
        watchers.push(tokio::spawn(async move {
            let r = get(&path, &[("if-none-match", &e), ("prefer", "wait=6")]).await;
            (r.status().as_u16(), Instant::now())
        }));
    }
    let mut returned = Vec::new();
    for w in watchers {
        let (status, at) = w.await.unwrap();
        assert_eq!(status, 304);
        returned.push(at - started);
    }
    returned.sort();
    println!("re-watch after a change: 20 holds {returned:?}");
    assert!(returned[0] >= Duration::from_millis(1900), "{returned:?}");
    assert!(returned[19] < Duration::from_millis(6500), "{returned:?}");
    // Uniform over 4 s: all twenty within one second of each other has odds below 1e-9.
    assert!(
        returned[19] - returned[0] > Duration::from_secs(1),
        "re-watches bunched: {returned:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_on_the_reference_server_is_blocked_after_revoked_txt_changes() {
    let upstream = Upstream::start().await;
    let mut fx = Fixture::new();
    let claims = fx.claims();
    fx.approve("a.jws", &claims);
    let server = RegistryServer::start(&fx.registry_dir(), fx.dir.path());
    fx.registry = Some(remote_registry(
        "http",
        &format!("http://{}/", server.addr),
        "1h",
        "",
    ));
    let pg = Provgate::start(&fx, upstream.addr).await;
    pg.wait_ready().await;
    let token = fx.token(CALLER);
    let r = pg.get("/v1/models", Some(&token)).await;
    assert_eq!(r.status(), 200, "{}\n{}", pg.logs(), server.logs());
    assert_eq!(r.headers()["x-provgate-version-id"], "v42");
    // Two more rounds: unchanged, so 304s.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let revoked_at = Instant::now();
    publish(
        &fx.registry_dir(),
        "revoked.txt",
        &format!("{}\n", claims.jti),
    );
    pg.until_answer(
        &token,
        403,
        Some("approval_revoked"),
        Duration::from_secs(10),
    )
    .await;
    println!(
        "reference server: revocation to first blocked request {} ms (refresh 1 s, no watch)",
        revoked_at.elapsed().as_millis()
    );
    // Unchanged rounds were 304s, and the revocation a 410 (the log is flushed within
    // 200 ms).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let log = std::fs::read_to_string(&server.requests).unwrap_or_default();
    assert!(log.lines().any(|l| l.contains(" query 304 ")), "{log}");
    assert!(log.lines().any(|l| l.contains(" query 410 ")), "{log}");
}

#[test]
fn revoke_signs_a_list_pyjwt_verifies_and_extends_it() {
    let Some(python) = std::env::var_os("PROVGATE_PYTHON") else {
        panic!("PROVGATE_PYTHON is not set: run with scripts/test.sh (PyJWT's environment)");
    };
    let fx = Fixture::new();
    let list = fx.path("revocations.jws");
    let key = fx.path("approver.key");
    let revoke = |extra: &[&str]| {
        let mut args = vec![
            "revoke",
            "--key",
            key.to_str().unwrap(),
            "--iss",
            "security@example.org",
            "--out",
            list.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = run_cli(&args, None);
        assert!(out.status.success(), "{out:?}");
    };
    let verify = |jwks: &Path| {
        Command::new(&python)
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/interop/pyjwt_verify_revocations.py"),
            )
            .arg(&list)
            .arg(jwks)
            .output()
            .unwrap()
    };
    revoke(&["--jti", "rec-b", "--jti", "rec-a"]);
    let out = verify(&fx.path("approvers.jwks.json"));
    assert!(out.status.success(), "{out:?}");
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(first["header"]["typ"], "revocations+jwt");
    assert_eq!(first["header"]["alg"], "ES256");
    assert_eq!(first["header"]["kid"], fx.approver.kid.as_str());
    assert_eq!(first["payload"]["iss"], "security@example.org");
    assert_eq!(
        first["payload"]["revoked"],
        serde_json::json!(["rec-a", "rec-b"])
    );

    // Extended: the old IDs kept, issued after the old list.
    let list_arg = list.to_str().unwrap().to_string();
    revoke(&["--jti", "rec-c", "--list", &list_arg]);
    let out = verify(&fx.path("approvers.jwks.json"));
    assert!(out.status.success(), "{out:?}");
    let second: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        second["payload"]["revoked"],
        serde_json::json!(["rec-a", "rec-b", "rec-c"])
    );
    assert!(second["payload"]["iat"].as_u64() > first["payload"]["iat"].as_u64());

    // Another key under the same kid: PyJWT refuses the signature.
    let (rogue, _) = provgate::keys::SigningKey::generate(provgate::keys::KeyKind::Es256).unwrap();
    let mut jwk = serde_json::to_value(&rogue.public_jwk).unwrap();
    jwk["kid"] = serde_json::Value::String(fx.approver.kid.clone());
    let wrong = fx.path("wrong.jwks.json");
    std::fs::write(&wrong, serde_json::json!({ "keys": [jwk] }).to_string()).unwrap();
    let out = verify(&wrong);
    assert!(!out.status.success(), "a wrong key verified: {out:?}");
}
