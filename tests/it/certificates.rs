//! Certificate-bound signers, against independent implementations: a PKI made by Python's
//! `cryptography` (`tests/interop/x509_pki.py`: a root CA, an intermediate, SPIFFE-named
//! leaves), model directories signed by the reference `model_signing` tool's `certificate`
//! method, and approval records with an `x5c` chain minted by PyJWT. Everything goes through
//! the real binary (`provgate verify-signature`, the sidecar).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

const SIGNER_ID: &str = "spiffe://example.org/ns/ci/sa/release";
const OTHER_ID: &str = "spiffe://example.org/ns/ci/sa/someone-else";

fn python() -> PathBuf {
    match std::env::var_os("PROVGATE_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            panic!("PROVGATE_PYTHON is not set: run with scripts/test.sh (or . /work/notes/env.sh)")
        }
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A test PKI in `dir`: `ca(name)` makes `NAME.pem` (root) and `NAME-int.pem`
/// (intermediate); `leaf(ca, name, identity, expired)` a leaf under that intermediate.
struct Pki<'a> {
    dir: &'a Path,
}

impl Pki<'_> {
    fn ca(&self, name: &str) -> PathBuf {
        run(Command::new(python())
            .arg(script("x509_pki.py"))
            .args(["ca"])
            .arg(self.dir)
            .arg(name));
        self.dir.join(format!("{name}.pem"))
    }

    fn leaf(&self, ca: &str, name: &str, identity: &str, expired: bool) {
        let mut cmd = Command::new(python());
        cmd.arg(script("x509_pki.py"))
            .arg("leaf")
            .arg(self.dir)
            .args([ca, name, identity]);
        if expired {
            cmd.arg("expired");
        }
        run(&mut cmd);
    }

    /// Signs `model` in place with the reference tool's `certificate` method, as leaf `name`
    /// of CA `ca` (its intermediate passed as the chain, so the bundle carries it).
    fn sign(&self, model: &Path, ca: &str, name: &str) {
        run(Command::new(python())
            .args(["-m", "model_signing", "sign", "certificate"])
            .arg(model)
            .arg("--private_key")
            .arg(self.dir.join(format!("{name}.key")))
            .arg("--signing_certificate")
            .arg(self.dir.join(format!("{name}.pem")))
            .arg("--certificate_chain")
            .arg(self.dir.join(format!("{ca}-int.pem")))
            .arg("--signature")
            .arg(model.join("model.sig")));
    }
}

fn verify(model: &Path, ca: &Path, identity: &str) -> (bool, String) {
    let out = Command::new(bin())
        .arg("verify-signature")
        .arg(model)
        .arg("--ca-bundle")
        .arg(ca)
        .arg("--identity")
        .arg(identity)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    )
}

/// A directory signed by model_signing's `certificate` method verifies against the CA and
/// the SPIFFE ID; a leaf of another CA, an expired leaf, another identity and a changed byte
/// each fail, saying why.
#[test]
fn certificate_signatures_from_the_reference_tool_verify_and_failures_say_why() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki { dir: root.path() };
    let org = pki.ca("org");
    pki.ca("rogue");
    pki.leaf("org", "release", SIGNER_ID, false);
    pki.leaf("rogue", "impostor", SIGNER_ID, false);
    pki.leaf("org", "old", SIGNER_ID, true);
    pki.leaf("org", "someone", OTHER_ID, false);

    let model = root.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("config.json"), b"{\"hidden\": 8}").unwrap();
    let weights: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(model.join("model.safetensors"), &weights).unwrap();

    pki.sign(&model, "org", "release");
    let (ok, said) = verify(&model, &org, SIGNER_ID);
    assert!(
        ok && said.contains(&format!("certificate identity {SIGNER_ID}")),
        "{said}"
    );

    // The verifier asks for another identity than the leaf carries.
    let (ok, said) = verify(&model, &org, OTHER_ID);
    assert!(
        !ok && said.contains(&format!("names {SIGNER_ID}, not {OTHER_ID}")),
        "{said}"
    );

    // A changed byte: the file is named.
    let mut changed = weights.clone();
    changed[150_000] ^= 1;
    std::fs::write(model.join("model.safetensors"), &changed).unwrap();
    let (ok, said) = verify(&model, &org, SIGNER_ID);
    assert!(
        !ok && said.contains("model.safetensors differs from what was signed"),
        "{said}"
    );
    std::fs::write(model.join("model.safetensors"), &weights).unwrap();

    // Same identity, issued by a CA the verifier does not trust.
    pki.sign(&model, "rogue", "impostor");
    let (ok, said) = verify(&model, &org, SIGNER_ID);
    assert!(
        !ok && said.contains("does not validate to the CA bundle"),
        "{said}"
    );

    // The right CA and identity, but the leaf expired yesterday.
    pki.sign(&model, "org", "old");
    let (ok, said) = verify(&model, &org, SIGNER_ID);
    assert!(!ok && said.contains("expired"), "{said}");

    // Another identity of the same CA signed it.
    pki.sign(&model, "org", "someone");
    let (ok, said) = verify(&model, &org, SIGNER_ID);
    assert!(
        !ok && said.contains(&format!("names {OTHER_ID}, not {SIGNER_ID}")),
        "{said}"
    );

    // Signed again by the release identity: valid again.
    pki.sign(&model, "org", "release");
    assert!(verify(&model, &org, SIGNER_ID).0);
}

/// A record pinning a certificate signer admits requests while the model is signed by that
/// identity, and refuses with `approval_invalid` once it is re-signed by another identity of
/// the same CA; the audit line names who signed.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_pinning_a_certificate_signer_refuses_another_identity() {
    let mut fx = Fixture::new();
    let pki = Pki { dir: fx.dir.path() };
    let org = pki.ca("org");
    pki.leaf("org", "release", SIGNER_ID, false);
    pki.leaf("org", "someone", OTHER_ID, false);
    pki.sign(&fx.model_dir(), "org", "release");
    fx.extra = format!(
        "[[artefact.signers]]\nname = \"release\"\nca_bundle = \"{}\"\nidentity = \"{SIGNER_ID}\"\n",
        org.display()
    );
    fx.log_allowed = true;
    let mut claims = fx.claims();
    claims.artefact.signer = Some("release".into());
    fx.approve("rec.jwt", &claims);
    let up = Upstream::start().await;
    let pg = Provgate::start(&fx, up.addr).await;
    pg.wait_ready().await;
    let token = fx.token(CALLER);
    let resp = pg.get("/v1/models", Some(&token)).await;
    assert_eq!(resp.status(), 200, "{}", pg.logs());
    let id = resp.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let audit = fx.audit_record(&id).await;
    assert_eq!(audit["model_signer"], "release", "{audit}");
    assert_eq!(audit["model_signer_identity"], SIGNER_ID, "{audit}");
    // The metric names the configured signer, never the certificate identity.
    let valid = format!(
        "provgate_artefact_signature{{model=\"{MODEL}\",signer=\"release\",state=\"valid\"}}"
    );
    assert_eq!(pg.metric(&valid).await, 1.0, "{}", pg.metrics().await);

    pki.sign(&fx.model_dir(), "org", "someone");
    pg.until_answer(&token, 403, None, std::time::Duration::from_secs(5))
        .await;
    let resp = pg.get("/v1/models", Some(&token)).await;
    let id = resp.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "approval_invalid");
    let audit = fx.audit_record(&id).await;
    assert_eq!(
        audit["detail"],
        "artefact is not signed by the record's signer"
    );
    assert!(
        pg.logs()
            .contains(&format!("names {OTHER_ID}, not {SIGNER_ID}")),
        "{}",
        pg.logs()
    );
}

const APPROVER_ID: &str = "spiffe://example.org/ns/release/sa/approver";

/// Mints a record with PyJWT, signed by leaf `leaf`'s key with its chain as `x5c`.
fn pyjwt_x5c(fx: &Fixture, pki: &Pki<'_>, leaf: &str) -> String {
    let out = fx.path(&format!("{leaf}.jwt"));
    run(Command::new(python())
        .arg(script("pyjwt_x5c.py"))
        .arg(&out)
        .arg(fx.digest().to_string())
        .args([MODEL, WORKLOAD, CALLER])
        .arg(pki.dir.join(format!("{leaf}.key")))
        .arg(pki.dir.join(format!("{leaf}-chain.pem"))));
    std::fs::read_to_string(out).unwrap()
}

/// An approval record minted by PyJWT with an `x5c` chain is accepted from a configured
/// certificate-bound approver, and the audit line names it; records whose chain is another
/// CA's, whose leaf expired or names another identity are refused with the reason logged;
/// `provgate approve --cert-chain` makes a record that is accepted too.
#[tokio::test(flavor = "multi_thread")]
async fn x5c_records_from_a_certificate_bound_approver() {
    let mut fx = Fixture::new();
    let pki = Pki { dir: fx.dir.path() };
    let org = pki.ca("org");
    pki.ca("rogue");
    pki.leaf("org", "approver", APPROVER_ID, false);
    pki.leaf(
        "org",
        "intern",
        "spiffe://example.org/ns/dev/sa/intern",
        false,
    );
    pki.leaf("org", "old", APPROVER_ID, true);
    pki.leaf("rogue", "impostor", APPROVER_ID, false);
    fx.extra = format!(
        "[[trust.approvers]]\nname = \"release\"\nca_bundle = \"{}\"\nidentity = \"{APPROVER_ID}\"\nroles = [\"owner\"]\n",
        org.display()
    );
    fx.log_allowed = true;
    fx.write_record("rec.jwt", &pyjwt_x5c(&fx, &pki, "approver"));
    let up = Upstream::start().await;
    let pg = Provgate::start(&fx, up.addr).await;
    pg.wait_ready().await;
    let token = fx.token(CALLER);
    let resp = pg.get("/v1/models", Some(&token)).await;
    assert_eq!(resp.status(), 200, "{}", pg.logs());
    let id = resp.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let audit = fx.audit_record(&id).await;
    assert_eq!(
        audit["record_signers"],
        serde_json::json!([format!("x509:{APPROVER_ID}")]),
        "{audit}"
    );
    assert_eq!(audit["version_id"], "py-x5c-v1");

    for (leaf, why) in [
        (
            "intern",
            format!("names spiffe://example.org/ns/dev/sa/intern, not {APPROVER_ID}"),
        ),
        ("old", "expired".to_string()),
        ("impostor", "does not validate to the CA bundle".to_string()),
    ] {
        fx.write_record("rec.jwt", &pyjwt_x5c(&fx, &pki, leaf));
        pg.until_answer(&token, 403, None, std::time::Duration::from_secs(5))
            .await;
        assert!(
            pg.logs().contains(&why),
            "{leaf}: {why} not in\n{}",
            pg.logs()
        );
        fx.write_record("rec.jwt", &pyjwt_x5c(&fx, &pki, "approver"));
        pg.until_answer(&token, 200, None, std::time::Duration::from_secs(5))
            .await;
    }

    // The same approver through provgate's own tool.
    std::fs::remove_file(fx.registry_dir().join("rec.jwt")).unwrap();
    pg.until_answer(&token, 403, None, std::time::Duration::from_secs(5))
        .await;
    let out = fx.path("cli.jwt");
    let output = run_cli(
        &[
            "approve",
            "--key",
            pki.dir.join("approver.key").to_str().unwrap(),
            "--cert-chain",
            pki.dir.join("approver-chain.pem").to_str().unwrap(),
            "--iss",
            "release-pipeline@example.org",
            "--model",
            MODEL,
            "--version-id",
            "cli-x5c",
            "--digest",
            &fx.digest().to_string(),
            "--workload",
            WORKLOAD,
            "--caller",
            CALLER,
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(output.status.success(), "{output:?}");
    fx.write_record("rec.jwt", &std::fs::read_to_string(&out).unwrap());
    pg.until_answer(&token, 200, None, std::time::Duration::from_secs(5))
        .await;
}
