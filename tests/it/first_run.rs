//! The README's first command, as a newcomer runs it: `scripts/run.sh` starts a real KServe
//! model server (all-MiniLM-L6-v2 on onnxruntime) and provgate in front of it on the embedded
//! defaults, and prints three commands. This test runs the script (with its own ports, demo
//! directory and the debug binary, through the environment variables the script documents),
//! runs the three printed commands exactly as printed, and checks 200 (with the version ID),
//! 401 and 403 `artefact_unmanaged`; then Ctrl-C (SIGINT to the script's process group, as a
//! terminal sends it) must stop both servers.
//!
//! Needs `PROVGATE_KSERVE_PYTHON` like the `kserve` module (scripts/test.sh sets it); the script
//! itself calls `scripts/setup.sh --kserve`, which finds that environment cached.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::*;

/// The script's process group, killed on drop whatever happened.
struct Script {
    child: Child,
}

impl Script {
    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }
}

/// Runs one printed command with bash, returning its standard output.
fn run_printed(cmd: &str) -> String {
    let out = Command::new("bash").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "printed command failed: {cmd}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or_default()
}

/// Starts run.sh on fresh ports and waits for its three commands; None if it exits first.
fn start(demo: &Path) -> Option<(Script, Vec<String>, [std::net::SocketAddr; 3])> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ports = [free_port(), free_port(), free_port()];
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/run.sh"))
        .current_dir(root)
        .env("PROVGATE_BIN", bin())
        .env("PROVGATE_DEMO_DIR", demo)
        .env("PROVGATE_PORT", ports[0].port().to_string())
        .env("PROVGATE_ADMIN_PORT", ports[1].port().to_string())
        .env("PROVGATE_MODEL_PORT", ports[2].port().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut script = Script {
        child: cmd.spawn().unwrap(),
    };

    // The printed commands: the line after each "# N." comment.
    let stdout = script.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if line.starts_with("# 1.") || line.starts_with("# 2.") || line.starts_with("# 3.") {
                if let Some(Ok(next)) = lines.next() {
                    let _ = tx.send(next);
                }
            }
        }
    });
    let started = Instant::now();
    let mut commands = Vec::new();
    while commands.len() < 3 {
        let left = Duration::from_secs(300).saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(c) => commands.push(c),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                eprintln!("run.sh exited before printing its commands; retrying");
                return None;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "run.sh printed {} of 3 commands in 300 s; logs in {}:\n{}",
                commands.len(),
                demo.display(),
                std::fs::read_to_string(demo.join("provgate.log")).unwrap_or_default()
            ),
        }
    }
    eprintln!("run.sh ready in {:?}", started.elapsed());
    Some((script, commands, ports))
}

#[test]
fn run_sh_starts_a_real_model_server_behind_provgate_and_its_three_commands_work() {
    if std::env::var_os("PROVGATE_KSERVE_PYTHON").is_none() {
        panic!("PROVGATE_KSERVE_PYTHON is not set: run the suite with scripts/test.sh");
    }
    let demo = tempfile::tempdir().unwrap();
    // A port taken between free_port() and the bind makes a server exit: try fresh ports.
    let (mut script, commands, [port, admin, model]) = (0..3)
        .find_map(|_| start(demo.path()))
        .expect("run.sh failed three times");

    let allowed = run_printed(&commands[0]);
    assert!(status_line(&allowed).contains(" 200"), "allowed: {allowed}");
    let lower = allowed.to_ascii_lowercase();
    assert!(
        lower.contains("x-provgate-version-id: minilm-int8-v1"),
        "{allowed}"
    );
    assert!(
        allowed.contains("\"shape\":[1,384]"),
        "an embedding: {allowed}"
    );

    let anonymous = run_printed(&commands[1]);
    assert!(status_line(&anonymous).contains(" 401"), "{anonymous}");
    assert!(anonymous.contains("\"token_missing\""), "{anonymous}");

    let changed = run_printed(&commands[2]);
    assert!(status_line(&changed).contains(" 403"), "{changed}");
    assert!(changed.contains("\"artefact_unmanaged\""), "{changed}");

    // The model server itself still answers: the block is provgate's.
    let direct = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{model}/v2/models/{MODEL}/ready"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&direct.stdout), "200");

    // Ctrl-C: SIGINT to the foreground process group, as a terminal delivers it.
    script.signal("-INT");
    let stopping = Instant::now();
    let status = loop {
        if let Some(s) = script.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(20),
            "run.sh still running 20 s after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "interrupted: {status:?}");
    for (what, addr) in [
        ("provgate", port),
        ("admin", admin),
        ("model server", model),
    ] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(
                Instant::now() < deadline,
                "{what} still listening on {addr} after Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
