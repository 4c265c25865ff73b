//! Long hashes show their progress (issue 20): `provgate digest` draws a bar on standard error
//! when it is a terminal (a pseudo-terminal made by Python's `pty` module) and nothing
//! otherwise, with the same digest on standard output; the sidecar's `/readyz` and
//! `provgate_artefact_hash_bytes` rise to the total while a large (sparse) model file is
//! hashed on one thread, a log line reports it, and a re-hash after a change reports again.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// Runs `argv` with standard error on a pseudo-terminal and standard output on a pipe;
/// prints the terminal's bytes, a NUL, then standard output, and exits with the child's code.
const UNDER_PTY: &str = r#"
import os, pty, subprocess, sys
master, slave = pty.openpty()
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
os.close(slave)
term = b""
while True:
    try:
        chunk = os.read(master, 65536)
    except OSError:
        break
    if not chunk:
        break
    term += chunk
out = child.stdout.read()
code = child.wait()
sys.stdout.buffer.write(term + b"\0" + out)
sys.exit(code)
"#;

fn python() -> String {
    std::env::var("PROVGATE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// (what the terminal showed, standard output) of `provgate ARGS` with stderr on a pty.
fn digest_under_pty(args: &[&str]) -> (String, String) {
    let out = Command::new(python())
        .args(["-c", UNDER_PTY, bin()])
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    let (term, stdout) = all.split_once('\0').expect("the NUL separator");
    (term.to_string(), stdout.to_string())
}

/// A directory of a few hundred MB: one sparse file and two small ones.
fn large_model(dir: &Path, bytes: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let f = std::fs::File::create(dir.join("model.safetensors")).unwrap();
    f.set_len(bytes).unwrap();
    std::fs::write(dir.join("config.json"), b"{\"hidden_size\": 8}").unwrap();
    std::fs::write(dir.join("tokenizer.json"), vec![b'x'; 1000]).unwrap();
}

#[test]
fn digest_draws_a_bar_on_a_terminal_and_prints_only_the_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    large_model(&model, 300 << 20);
    let dir = model.to_str().unwrap();

    // Not a terminal: the digest alone, nothing on standard error.
    let plain = run_cli(&["digest", dir], None);
    assert!(plain.status.success());
    let digest = String::from_utf8(plain.stdout).unwrap();
    assert!(
        digest.starts_with("sha256:") && digest.ends_with('\n'),
        "{digest}"
    );
    assert_eq!(digest.lines().count(), 1);
    assert!(
        plain.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&plain.stderr)
    );

    // A terminal: the bar, with the byte total and the files, and the same digest on stdout.
    let (term, stdout) = digest_under_pty(&["digest", "--threads", "1", dir]);
    assert_eq!(stdout, digest);
    assert!(term.contains("hashing ["), "{term:?}");
    assert!(term.contains("/300.00 MiB"), "{term:?}");
    assert!(term.contains("files 3/3"), "{term:?}");
    assert!(term.contains("300.00 MiB/300.00 MiB"), "{term:?}");

    // --quiet: nothing on the terminal.
    let (term, stdout) = digest_under_pty(&["digest", "--quiet", dir]);
    assert_eq!(stdout, digest);
    assert_eq!(term, "");
}

/// (bytes done, bytes total) from `/readyz` for the fixture's model, and its status.
async fn readyz(pg: &Provgate, model: &str) -> (u16, u64, u64) {
    let r = pg
        .client
        .get(format!("http://{}/readyz", pg.admin))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap();
    let hash = &body["models"][model]["hash"];
    let n = |k: &str| hash[k].as_u64().unwrap_or_else(|| panic!("{k} in {body}"));
    (status, n("bytes_done"), n("bytes_total"))
}

/// (done, total) from the gauge for `model`.
async fn gauge(pg: &Provgate, model: &str) -> (u64, u64) {
    let text = pg.metrics().await;
    let value = |kind: &str| {
        text.lines()
            .filter(|l| l.starts_with("provgate_artefact_hash_bytes{"))
            .filter(|l| l.contains(&format!("kind=\"{kind}\"")))
            .filter(|l| l.contains(&format!("model=\"{model}\"")))
            .find_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (value("done"), value("total"))
}

#[tokio::test]
async fn the_sidecar_reports_hash_progress_on_readyz_the_gauge_and_the_log() {
    const BIG: u64 = 1 << 30;
    let fx = Fixture::new();
    large_model(&fx.model_dir(), BIG);
    // The sparse model.safetensors (replacing the fixture's), config.json, tokenizer.json.
    let total = BIG + 18 + 1000;
    // Older than the racy margin when first listed, so a re-hash reuses the small files.
    tokio::time::sleep(provgate::oms::manifest::RACY_MARGIN + Duration::from_millis(200)).await;
    let up = Upstream::start().await;
    let (listen, admin) = (free_port(), free_port());
    let config = fx.config(listen, admin, up.addr).replace(
        "poll_interval = \"500ms\"\n",
        "poll_interval = \"500ms\"\nhash_threads = 1\nprogress_log_interval = \"100ms\"\n",
    );
    let pg = Provgate::spawn(fx.dir.path(), "progress", &config, listen, admin, None).await;
    let model = fx.model.clone();

    // Poll both while the first hash runs, until ready.
    let mut seen_readyz = Vec::new();
    let mut seen_gauge = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, done, all) = readyz(&pg, &model).await;
        seen_readyz.push((done, all));
        seen_gauge.push(gauge(&pg, &model).await);
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready:\n{}", pg.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let between = |s: &[(u64, u64)]| s.iter().any(|&(d, t)| t == total && 0 < d && d < t);
    assert!(
        between(&seen_readyz),
        "no partial progress on /readyz: {seen_readyz:?}"
    );
    assert!(
        between(&seen_gauge),
        "no partial progress on the gauge: {seen_gauge:?}"
    );
    for s in [&seen_readyz, &seen_gauge] {
        let done: Vec<u64> = s
            .iter()
            .filter(|(_, t)| *t == total)
            .map(|(d, _)| *d)
            .collect();
        assert!(
            done.windows(2).all(|w| w[0] <= w[1]),
            "progress went back: {s:?}"
        );
    }
    let (_, done, all) = readyz(&pg, &model).await;
    assert_eq!((done, all), (total, total));
    assert_eq!(gauge(&pg, &model).await, (total, total));
    let logs = pg.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("artefact hashing in progress")
                && l.contains("bytes_total")
                && l.contains("mib_per_s")),
        "no progress log line:\n{logs}"
    );

    // A change: the re-hash reads the grown file alone, and reports it up to its new size.
    let grown = BIG + (64 << 20);
    std::fs::OpenOptions::new()
        .write(true)
        .open(fx.model_dir().join("model.safetensors"))
        .unwrap()
        .set_len(grown)
        .unwrap();
    pg.eventually(Duration::from_secs(120), || async {
        let (status, done, all) = readyz(&pg, &model).await;
        status == 200 && (done, all) == (grown, grown)
    })
    .await;
    assert_eq!(gauge(&pg, &model).await, (grown, grown));
}
