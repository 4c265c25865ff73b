//! Sigstore (keyless) OMS signatures through the binary, with real bundles: model
//! directories signed by `model_signing sign sigstore` (model-transparency's test data,
//! tests/data/sigstore/README.md), verified offline against the vendored production
//! trusted root. `verify-signature` with the identity options, and a sidecar whose record
//! pins a Sigstore signer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::support::*;

const KEYLESS_ISSUER: &str = "https://sigstore.verify.ibm.com/oauth2";
const KEYLESS_SUBJECT: &str = "stefanb@us.ibm.com";

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sigstore")
}

fn production_root() -> PathBuf {
    data().join("trusted_root.json")
}

/// Copies a vendored signed model directory (`oms-v1.0.0`, `oms-v1.1.0`) into `to`.
fn copy_model(version: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(data().join(format!("oms-{version}"))).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn verify(dir: &Path, root: &Path, identity: &[&str]) -> (bool, String) {
    let mut args = vec![
        "verify-signature",
        dir.to_str().unwrap(),
        "--sigstore-trusted-root",
        root.to_str().unwrap(),
    ];
    args.extend_from_slice(identity);
    let out = run_cli(&args, None);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `model.sig` with one resource digest in its signed statement changed.
fn tampered_signature(dir: &Path) -> Vec<u8> {
    let mut b: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("model.sig")).unwrap()).unwrap();
    let payload = STANDARD
        .decode(b["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    let mut statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    statement["predicate"]["resources"][0]["digest"] = "00".repeat(32).into();
    b["dsseEnvelope"]["payload"] = STANDARD
        .encode(serde_json::to_vec(&statement).unwrap())
        .into();
    serde_json::to_vec(&b).unwrap()
}

#[test]
fn verify_signature_checks_a_keyless_bundle_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_model("v1.1.0", &model);
    let root = production_root();
    let exact = ["--issuer", KEYLESS_ISSUER, "--subject", KEYLESS_SUBJECT];

    let (ok, said) = verify(&model, &root, &exact);
    assert!(ok, "{said}");
    assert!(
        said.contains("signed by sigstore") && said.contains(KEYLESS_SUBJECT),
        "{said}"
    );
    let (ok, said) = verify(
        &model,
        &root,
        &[
            "--issuer",
            KEYLESS_ISSUER,
            "--subject-pattern",
            r"[a-z]+@us\.ibm\.com",
        ],
    );
    assert!(ok, "{said}");

    // Another identity, another issuer, a partial pattern, another trusted root: refused.
    for (identity, why) in [
        (
            [
                "--issuer",
                KEYLESS_ISSUER,
                "--subject",
                "mallory@us.ibm.com",
            ],
            "identity mismatch",
        ),
        (
            [
                "--issuer",
                "https://token.actions.githubusercontent.com",
                "--subject",
                KEYLESS_SUBJECT,
            ],
            "issuer mismatch",
        ),
        (
            ["--issuer", KEYLESS_ISSUER, "--subject-pattern", "stefanb"],
            "certificate subject",
        ),
    ] {
        let (ok, said) = verify(&model, &root, &identity);
        assert!(!ok && said.contains(why), "{identity:?}: {said}");
        assert!(said.contains("none of the pinned signers"), "{said}");
    }
    let (ok, said) = verify(&model, &data().join("trusted_root_staging.json"), &exact);
    assert!(!ok && said.contains("sigstore:"), "{said}");

    // The directory must be exactly what was signed.
    let original = std::fs::read(model.join("signme-1")).unwrap();
    let mut changed = original.clone();
    changed[0] ^= 1;
    std::fs::write(model.join("signme-1"), &changed).unwrap();
    let (ok, said) = verify(&model, &root, &exact);
    assert!(
        !ok && said.contains("signme-1 differs from what was signed"),
        "{said}"
    );
    std::fs::write(model.join("signme-1"), &original).unwrap();
    std::fs::write(model.join("extra.bin"), b"x").unwrap();
    let (ok, said) = verify(&model, &root, &exact);
    assert!(!ok && said.contains("extra.bin is not covered"), "{said}");
    std::fs::remove_file(model.join("extra.bin")).unwrap();
    assert!(verify(&model, &root, &exact).0, "restored");

    // A statement changed inside the envelope: the signature no longer verifies.
    let bad = tampered_signature(&model);
    std::fs::write(model.join("model.sig"), bad).unwrap();
    let (ok, said) = verify(&model, &root, &exact);
    assert!(!ok && said.contains("sigstore:"), "{said}");
}

/// A record pinning a Sigstore signer admits requests while the directory carries a valid
/// keyless signature by that identity, and refuses with `approval_invalid` once the
/// signature no longer verifies; a sidecar pinning another identity refuses from the start.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_pinning_a_sigstore_signer_needs_that_identity() {
    let signer = |subject_line: &str| {
        format!(
            "[[artefact.signers]]\nname = \"ibm-release\"\nsigstore_trusted_root = \"{}\"\n\
             issuer = \"{KEYLESS_ISSUER}\"\n{subject_line}\n",
            production_root().display()
        )
    };
    let signed_fixture = |extra: String| {
        let mut fx = Fixture::new();
        std::fs::remove_dir_all(fx.model_dir()).unwrap();
        copy_model("v1.0.0", &fx.model_dir());
        fx.extra = extra;
        fx.log_allowed = true;
        let mut claims = fx.claims();
        // The served digest is the root the keyless signature's statement names.
        assert_eq!(
            claims.artefact.digest.to_string(),
            "sha256:61d4849d9d90076d6215f4d525f13d6574af8e3f67aef3e6f36fc40a14fdd226"
        );
        claims.artefact.signer = Some("ibm-release".into());
        fx.approve("rec.jwt", &claims);
        fx
    };

    let fx = signed_fixture(signer(&format!("subject = \"{KEYLESS_SUBJECT}\"")));
    let (_up, pg) = started(&fx).await;
    let token = fx.token(CALLER);
    let resp = pg.get("/v1/models", Some(&token)).await;
    assert_eq!(resp.status(), 200, "{}", pg.logs());
    // The audit line names who signed the model: the signer and its certificate subject.
    let id = resp.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let audit = fx.audit_record(&id).await;
    assert_eq!(audit["model_signer"], "ibm-release", "{audit}");
    assert_eq!(audit["model_signer_identity"], KEYLESS_SUBJECT, "{audit}");
    // The log names who signed: the certificate's subject.
    let logs = pg.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("artefact signature checked") && l.contains(KEYLESS_SUBJECT)),
        "{logs}"
    );

    // The signature replaced by one whose statement was changed after signing.
    let bad = tampered_signature(&fx.model_dir());
    let tmp = fx.path("model.sig.tmp");
    std::fs::write(&tmp, bad).unwrap();
    std::fs::rename(&tmp, fx.model_dir().join("model.sig")).unwrap();
    pg.until_answer(&token, 403, None, Duration::from_secs(5))
        .await;
    let body: serde_json::Value = pg
        .get("/v1/models", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["error"], "approval_invalid");

    // Same signed directory, signer pinned to another identity.
    let other = signed_fixture(signer(r#"subject_pattern = '.*@example\.org'"#));
    let (_up2, pg2) = started(&other).await;
    let token = other.token(CALLER);
    let resp = pg2.get("/v1/models", Some(&token)).await;
    assert_eq!(resp.status(), 403, "{}", pg2.logs());
    let id = resp.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "approval_invalid");
    assert_eq!(
        other.audit_record(&id).await["detail"],
        "artefact is not signed by the record's signer"
    );
    assert!(pg2.logs().contains("certificate subject"), "{}", pg2.logs());
}
