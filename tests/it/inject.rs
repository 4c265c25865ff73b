//! `provgate inject` through the real binary on real-world shaped manifests (`tests/inject/`):
//! vLLM (Deployment and Service), TGI, Triton (StatefulSet), KServe (a bare Pod in a `List`)
//! and Ollama. Each output must equal its golden file (`tests/inject/NAME.out.yaml`; regenerate
//! with `PROVGATE_BLESS=1` and read the diff), pass `kubernetes-validate --strict` (PyPI; the
//! environment `scripts/setup.sh --ops` makes, named by `PROVGATE_OPS_PYTHON`), and come back
//! unchanged from a second run; the `provgate.toml` it generates passes `provgate run -t` (key
//! and record paths pointed at real files). Input it cannot inject safely is refused with the
//! reason.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::*;

const IMAGE: &str = "registry.example.org/security/provgate:0.1.0";

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/inject")
        .join(name)
}

/// `provgate inject --image IMAGE ARGS...` with `input` on standard input.
fn inject(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(bin())
        .args(["inject", "--image", IMAGE])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn kubernetes_validate(file: &Path) -> Output {
    let python = match std::env::var_os("PROVGATE_OPS_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "PROVGATE_OPS_PYTHON is not set: run the suite with scripts/test.sh, which installs \
             kubernetes-validate (scripts/setup.sh --ops) and points this at it"
        ),
    };
    Command::new(python.with_file_name("kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", "1.32.0"])
        .arg(file)
        .output()
        .unwrap()
}

/// Golden output, schema validation and idempotence for one manifest.
fn golden(name: &str, args: &[&str], notes: &[&str]) {
    let input = std::fs::read_to_string(data(&format!("{name}.yaml"))).unwrap();
    let out = inject(args, &input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}: {stderr}");
    let yaml = String::from_utf8(out.stdout).unwrap();
    let expected_path = data(&format!("{name}.out.yaml"));
    if std::env::var_os("PROVGATE_BLESS").is_some() {
        std::fs::write(&expected_path, &yaml).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    assert!(
        yaml == expected,
        "{name}: output differs from {} (PROVGATE_BLESS=1 rewrites it):\n{yaml}",
        expected_path.display()
    );
    for note in notes {
        assert!(
            stderr.contains(note),
            "{name}: no note {note:?} in:\n{stderr}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.out.yaml"));
    std::fs::write(&file, &yaml).unwrap();
    let v = kubernetes_validate(&file);
    assert!(
        v.status.success(),
        "{name}: kubernetes-validate:\n{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );

    // The generated provgate.toml passes `provgate run -t` (key paths pointed at real files).
    let fx = Fixture::new();
    let mut configs = 0;
    for doc in serde_norway::Deserializer::from_str(&yaml) {
        let v = <serde_norway::Value as serde::Deserialize>::deserialize(doc).unwrap();
        let items = match v["kind"].as_str() {
            Some("List") => v["items"].as_sequence().unwrap().clone(),
            _ => vec![v],
        };
        for item in items {
            let Some(toml) = item["data"]["provgate.toml"].as_str() else {
                continue;
            };
            configs += 1;
            let local = toml
                .replace("/etc/provgate/keys", fx.dir.path().to_str().unwrap())
                .replace(
                    "/etc/provgate/approvals",
                    fx.registry_dir().to_str().unwrap(),
                );
            let path = dir.path().join(format!("{name}-{configs}.toml"));
            std::fs::write(&path, local).unwrap();
            let t = Command::new(bin())
                .args(["run", "-t", "-c"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                t.status.success(),
                "{name}: generated config rejected: {}{}",
                String::from_utf8_lossy(&t.stdout),
                String::from_utf8_lossy(&t.stderr)
            );
        }
    }
    assert_eq!(configs, 1, "{name}: one generated config");

    let again = inject(args, &yaml);
    assert!(again.status.success());
    assert_eq!(
        String::from_utf8(again.stdout).unwrap(),
        yaml,
        "{name}: a second run changed something"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already injected"));
}

#[test]
fn vllm_deployment_gets_the_sidecar_and_listens_on_loopback() {
    golden(
        "vllm",
        &[],
        &[
            "vLLM in container vllm now listens on 127.0.0.1:8000 (--host=127.0.0.1)",
            "Service/vllm-llama: port 80 now targets provgate",
            "model llama-3.2-1b-instruct at /models/llama-3.2-1b-instruct",
        ],
    );
}

#[test]
fn triton_statefulset_is_rebound_with_http_address() {
    golden(
        "triton",
        &["--model", "densenet_onnx"],
        &[
            "Triton in container triton now listens on 127.0.0.1:8000 (--http-address=127.0.0.1)",
            "Service/triton: port 8000 now targets provgate",
            // gRPC is not guarded: said, and closed by the NetworkPolicy.
            "Service/triton: port 8001 does not target the model server's HTTP port",
        ],
    );
}

#[test]
fn tgi_gets_a_loopback_hostname_and_provgate_takes_the_next_free_port() {
    golden(
        "tgi",
        &["--model", "mistral-7b-instruct"],
        &[
            "TGI in container tgi now listens on 127.0.0.1:8080 (--hostname=127.0.0.1)",
            "proxy port 8081",
            "Service/tgi-mistral: port 80 now targets provgate",
        ],
    );
}

#[test]
fn kserve_pod_in_a_list_is_injected_and_the_missing_bind_flag_is_reported() {
    golden(
        "kserve",
        &["--registry", "mlflow=https://mlflow.mlops.svc:5000"],
        &[
            "NOT rebound to loopback (KServe's model server has no bind-address flag)",
            // KServe's port is 8080, so provgate takes the next one.
            "proxy port 8081",
            "Service/iris: port 80 now targets provgate",
        ],
    );
}

#[test]
fn ollama_gets_ollama_host_on_loopback() {
    golden(
        "ollama",
        &["--model", "llama3.2", "--workload-identity", "spiffe://example.org/ns/llm/sa/ollama"],
        &["Ollama in container ollama now listens on 127.0.0.1:11434 (OLLAMA_HOST=127.0.0.1:11434)"],
    );
}

#[test]
fn unsafe_input_is_refused_with_the_reason() {
    for (file, args, reason) in [
        (
            "refuse-hostnetwork.yaml",
            &["--model", "m"][..],
            "hostNetwork: true",
        ),
        (
            "refuse-no-volume.yaml",
            &["--model", "m"][..],
            "model volume not found",
        ),
        ("refuse-no-container.yaml", &[][..], "no container to guard"),
    ] {
        let out = inject(args, &std::fs::read_to_string(data(file)).unwrap());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} was injected");
        assert!(out.stdout.is_empty(), "{file}: wrote output");
        assert!(stderr.contains(reason), "{file}: {stderr}");
    }
    // A file argument works like standard input; no workload at all is refused too.
    let out = Command::new(bin())
        .args(["inject", "--image", IMAGE])
        .arg(data("vllm.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = inject(
        &[],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Deployment, StatefulSet or Pod"));
}

/// The example manifest in deploy/ stays schema-valid.
#[test]
fn the_deploy_example_is_schema_valid() {
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/provgate-sidecar.yaml");
    let v = kubernetes_validate(&example);
    assert!(
        v.status.success(),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}
