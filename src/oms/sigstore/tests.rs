//! Real Sigstore bundles (tests/data/sigstore, sources in its README): model_signing's own
//! keyless-signed test models and sigstore-conformance's DSSE cases.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::*;

const IBM_ISSUER: &str = "https://sigstore.verify.ibm.com/oauth2";
const IBM_SUBJECT: &str = "stefanb@us.ibm.com";
const CONFORMANCE_ISSUER: &str = "https://token.actions.githubusercontent.com";
const CONFORMANCE_SUBJECT: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sigstore")
}

fn production() -> TrustedRoot {
    TrustedRoot::from_file(&data().join("trusted_root.json")).expect("production root")
}

fn exact(issuer: &str, subject: &str) -> SigstoreIdentity {
    SigstoreIdentity {
        issuer: issuer.to_string(),
        subject: SubjectMatch::Exact(subject.to_string()),
    }
}

fn oms_bundle(version: &str) -> Vec<u8> {
    std::fs::read(data().join(format!("oms-{version}/model.sig"))).expect("bundle")
}

#[test]
fn model_signing_keyless_bundles_verify_with_their_identity_and_time() {
    let root = production();
    for (version, integrated) in [("v1.0.0", 1_746_236_086), ("v1.1.0", 1_760_062_340)] {
        let v = verify_bundle(&oms_bundle(version), &root, &exact(IBM_ISSUER, IBM_SUBJECT))
            .unwrap_or_else(|e| panic!("{version}: {e}"));
        assert_eq!(v.payload_type, "application/vnd.in-toto+json");
        assert_eq!(v.subject, IBM_SUBJECT);
        assert_eq!(v.issuer, IBM_ISSUER);
        assert_eq!(
            v.signed_at,
            SystemTime::UNIX_EPOCH + Duration::from_secs(integrated)
        );
        let statement: serde_json::Value = serde_json::from_slice(&v.payload).unwrap();
        assert_eq!(
            statement["predicateType"],
            "https://model_signing/signature/v1.0"
        );
    }
}

#[test]
fn subject_patterns_match_the_whole_subject() {
    let root = production();
    let bundle = oms_bundle("v1.1.0");
    let with = |p: &str| SigstoreIdentity {
        issuer: IBM_ISSUER.to_string(),
        subject: SubjectMatch::pattern(p).unwrap(),
    };
    verify_bundle(&bundle, &root, &with(r"[a-z]+@us\.ibm\.com")).expect("full match");
    for partial in ["stefanb", r"us\.ibm\.com", "[a-z]+@us"] {
        let err = verify_bundle(&bundle, &root, &with(partial)).unwrap_err();
        assert!(
            matches!(err, SigstoreError::Subject { .. }),
            "{partial}: {err}"
        );
    }
    assert!(SubjectMatch::pattern("(").is_err());
}

#[test]
fn another_subject_or_issuer_is_refused() {
    let root = production();
    let bundle = oms_bundle("v1.1.0");
    let err = verify_bundle(
        &bundle,
        &root,
        &exact(IBM_ISSUER, "someone-else@us.ibm.com"),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SigstoreError::Verify(sigstore_verify::Error::IdentityMismatch { .. })
        ),
        "{err}"
    );
    let err = verify_bundle(
        &bundle,
        &root,
        &exact("https://accounts.google.com", IBM_SUBJECT),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SigstoreError::Verify(sigstore_verify::Error::IssuerMismatch { .. })
        ),
        "{err}"
    );
}

#[test]
fn another_trusted_root_is_refused() {
    let staging = TrustedRoot::from_file(&data().join("trusted_root_staging.json")).unwrap();
    let err = verify_bundle(
        &oms_bundle("v1.1.0"),
        &staging,
        &exact(IBM_ISSUER, IBM_SUBJECT),
    )
    .unwrap_err();
    assert!(matches!(err, SigstoreError::Verify(_)), "{err}");
}

/// The bundle with one byte of its signed statement changed (a resource digest), the
/// envelope otherwise intact.
fn tampered(bundle: &[u8]) -> Vec<u8> {
    let mut b: serde_json::Value = serde_json::from_slice(bundle).unwrap();
    let payload = STANDARD
        .decode(b["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    let text = String::from_utf8(payload).unwrap();
    let changed = text.replacen(
        "f6310066c7320497ea554260c32c43660bff648cb2a61194832cc086077085e1",
        "f6310066c7320497ea554260c32c43660bff648cb2a61194832cc086077085e2",
        1,
    );
    assert_ne!(
        text, changed,
        "the test changes a digest the statement holds"
    );
    b["dsseEnvelope"]["payload"] = STANDARD.encode(changed).into();
    serde_json::to_vec(&b).unwrap()
}

#[test]
fn a_tampered_statement_is_refused() {
    let err = verify_bundle(
        &tampered(&oms_bundle("v1.1.0")),
        &production(),
        &exact(IBM_ISSUER, IBM_SUBJECT),
    )
    .unwrap_err();
    assert!(matches!(err, SigstoreError::Verify(_)), "{err}");
}

#[test]
fn a_message_signature_is_not_an_oms_signature() {
    // A Rekor-logged hashedrekord bundle made from the DSSE case's statement is not at hand;
    // an otherwise valid JSON bundle without an envelope shows the refusal.
    let mut b: serde_json::Value = serde_json::from_slice(&oms_bundle("v1.1.0")).unwrap();
    let envelope = b.as_object_mut().unwrap().remove("dsseEnvelope").unwrap();
    let sig = envelope["signatures"][0]["sig"].clone();
    b["messageSignature"] = serde_json::json!({
        "messageDigest": {"algorithm": "SHA2_256", "digest": STANDARD.encode([0u8; 32])},
        "signature": sig,
    });
    let err = verify_bundle(
        &serde_json::to_vec(&b).unwrap(),
        &production(),
        &exact(IBM_ISSUER, IBM_SUBJECT),
    )
    .unwrap_err();
    assert!(matches!(err, SigstoreError::NotDsse), "{err}");
}

/// sigstore-conformance's DSSE cases: a case whose name ends in `_fail` must be refused by
/// [`verify_bundle`] itself; every other must verify and its statement name the artifact.
#[test]
fn conformance_dsse_cases() {
    let dir = data().join("conformance");
    let default_artifact = std::fs::read(dir.join("a.txt")).unwrap();
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 14, "the vendored DSSE cases");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let root_path = case.join("trusted_root.json");
        let root = if root_path.exists() {
            TrustedRoot::from_file(&root_path).unwrap()
        } else {
            production()
        };
        let artifact =
            std::fs::read(case.join("artifact")).unwrap_or_else(|_| default_artifact.clone());
        let bundle = std::fs::read(case.join("bundle.sigstore.json")).unwrap();
        let outcome = verify_bundle(
            &bundle,
            &root,
            &exact(CONFORMANCE_ISSUER, CONFORMANCE_SUBJECT),
        );
        eprintln!("{name}: {:?}", outcome.as_ref().map(|v| v.signed_at));
        match (outcome, name.ends_with("_fail")) {
            (Ok(v), false) => {
                if let Err(e) = bound_to(&v.payload, &artifact) {
                    failures.push(format!("{name}: {e}"));
                }
            }
            (Err(_), true) => {}
            (outcome, _) => failures.push(format!("{name}: {outcome:?}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The caller's half for a non-OMS statement: its subject digest is the artifact's.
fn bound_to(payload: &[u8], artifact: &[u8]) -> Result<(), String> {
    let statement: serde_json::Value = serde_json::from_slice(payload).unwrap();
    let want = hex::encode(Sha256::digest(artifact));
    match statement["subject"][0]["digest"]["sha256"].as_str() {
        Some(d) if d == want => Ok(()),
        other => Err(format!("subject {other:?} is not the artifact {want}")),
    }
}

#[test]
fn the_expired_and_out_of_window_cases_fail_for_their_reason() {
    let dir = data().join("conformance");
    let reason = |case: &str| {
        let root = TrustedRoot::from_file(&dir.join(case).join("trusted_root.json")).unwrap();
        let bundle = std::fs::read(dir.join(case).join("bundle.sigstore.json")).unwrap();
        verify_bundle(
            &bundle,
            &root,
            &exact(CONFORMANCE_ISSUER, CONFORMANCE_SUBJECT),
        )
        .unwrap_err()
        .to_string()
    };
    // The log's integrated time is after the leaf expired: a certificate expired at signing
    // time.
    let r = reason("intoto-set-outside-signing-cert-validity_fail");
    assert!(r.contains("CertExpired"), "{r}");
    // The leaf was issued outside the CA's validity window in the trusted root.
    let r = reason("intoto-expired-certificate_fail");
    assert!(r.contains("chain validation failed"), "{r}");
}
