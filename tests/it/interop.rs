//! Interoperability with independent implementations, installed by `scripts/setup.sh` into
//! a virtual environment named by `PROVGATE_PYTHON`:
//! - the reference OpenSSF Model Signing tool (`model_signing`) computes the same root
//!   digest as provgate for the same directory, under the `files` and `shards` serializations;
//! - approval records and caller tokens minted by PyJWT with keys provgate never made are
//!   accepted through the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

fn python() -> PathBuf {
    match std::env::var_os("PROVGATE_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "PROVGATE_PYTHON is not set: run the suite with scripts/test.sh, which installs \
             model-signing and PyJWT into a virtual environment and points this at it"
        ),
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

fn reference_digest(model: &Path, sig: &Path) -> String {
    run(Command::new(python())
        .arg(script("oms_sign.py"))
        .arg(model)
        .arg(sig))
}

fn provgate_digest(model: &Path) -> String {
    run(Command::new(bin()).arg("digest").arg(model))
}

#[test]
fn digests_match_the_reference_model_signing_tool() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    let w = |rel: &str, bytes: &[u8]| {
        let p = model.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    // Names chosen so that component order and byte order of joined paths disagree.
    w("a.txt", b"one");
    w("a/b", b"two");
    w("a-b/c", b"three");
    w("empty", b"");
    w("tokenizer/vocab.txt", b"hello\nworld\n");
    w(
        "deep/er/still/weights.bin",
        &(0..3_000_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    );
    w(".gitattributes", b"*.bin filter=lfs");
    w(".git/HEAD", b"ref: refs/heads/main");
    w("sub/.gitignore", b"nested ignore files are hashed");

    let sig = root.path().join("model.sig");
    assert_eq!(provgate_digest(&model), reference_digest(&model, &sig));

    // Signed in place, the conventional way: both leave `model.sig` out of the manifest.
    let before = provgate_digest(&model);
    let in_place = reference_digest(&model, &model.join("model.sig"));
    assert!(model.join("model.sig").exists());
    assert_eq!(in_place, before);
    assert_eq!(provgate_digest(&model), before);

    // And a one-byte change moves both the same way.
    w("a/b", b"twO");
    let changed = provgate_digest(&model);
    assert_ne!(changed, before);
    assert_eq!(changed, reference_digest(&model, &model.join("model.sig")));
}

fn reference_shards_digest(model: &Path, sig: &Path, shard_size: &str) -> String {
    run(Command::new(python())
        .arg(script("oms_sign.py"))
        .arg(model)
        .arg(sig)
        .args(["shards", shard_size]))
}

fn provgate_shards_digest(model: &Path, shard_size: &str, threads: &str) -> String {
    run(Command::new(bin()).arg("digest").arg(model).args([
        "--serialization",
        "shards",
        "--shard-size",
        shard_size,
        "--threads",
        threads,
    ]))
}

/// The signed resource names in a model_signing signature.
fn signed_names(sig: &Path) -> Vec<String> {
    use base64::Engine;
    let bundle: serde_json::Value = serde_json::from_slice(&std::fs::read(sig).unwrap()).unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(bundle["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    statement["predicate"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn shards_digests_match_the_reference_model_signing_tool() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    let w = |rel: &str, bytes: &[u8]| {
        let p = model.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    let bytes = |n: u32| (0..n).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>();
    w("a.txt", b"one");
    w("a/b", b"two");
    w("a-b/c", &bytes(150_000));
    w("empty", b"");
    // Exactly two shards; and 13, whose offsets sort differently as strings
    // ("1000000" < "200000") than as numbers.
    w("exact.bin", &bytes(200_000));
    w("deep/er/weights.bin", &bytes(1_234_567));
    w(".gitattributes", b"*.bin filter=lfs");
    w(".git/HEAD", b"ref: refs/heads/main");

    let sig = root.path().join("model.sig");
    let reference = reference_shards_digest(&model, &sig, "100000");
    let names = signed_names(&sig);
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("deep/er/weights.bin:"))
            .count(),
        13
    );
    assert!(names.contains(&"deep/er/weights.bin:1200000:1234567".to_string()));
    assert!(!names.iter().any(|n| n.starts_with("empty")), "{names:?}");
    for threads in ["1", "2", "3"] {
        assert_eq!(
            provgate_shards_digest(&model, "100000", threads),
            reference,
            "{threads} threads"
        );
    }
    assert_ne!(reference, provgate_digest(&model), "shards are not files");

    // Signed in place, then one byte changed in the tenth shard of the large file.
    let in_place = reference_shards_digest(&model, &model.join("model.sig"), "100000");
    assert_eq!(in_place, reference);
    let mut changed = bytes(1_234_567);
    changed[950_000] ^= 1;
    w("deep/er/weights.bin", &changed);
    let after = provgate_shards_digest(&model, "100000", "2");
    assert_ne!(after, reference);
    assert_eq!(
        after,
        reference_shards_digest(&model, &model.join("model.sig"), "100000")
    );
    // The default shard size agrees too (every file is then one shard).
    assert_eq!(
        run(Command::new(bin())
            .arg("digest")
            .arg(&model)
            .args(["--serialization", "shards"])),
        reference_shards_digest(&model, &model.join("model.sig"), "1000000000")
    );
}

#[test]
fn the_real_sample_model_matches_too() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sample-model");
    let sig = tempfile::tempdir().unwrap();
    assert_eq!(
        provgate_digest(&model),
        reference_digest(&model, &sig.path().join("s.sig"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn records_and_tokens_minted_by_pyjwt_are_accepted() {
    let fx = Fixture::new();
    let out = fx.dir.path();
    run(Command::new(python())
        .arg(script("pyjwt_mint.py"))
        .arg(out)
        .arg(fx.digest().to_string())
        .args([MODEL, WORKLOAD, CALLER, ISSUER]));
    // The fixture's own keys are replaced by the Python-made JWKS files.
    let es_record = std::fs::read_to_string(out.join("record-es256.jwt")).unwrap();
    fx.write_record("py.jwt", &es_record);

    let up = Upstream::start().await;
    let pg = Provgate::start(&fx, up.addr).await;
    pg.wait_ready().await;
    for alg in ["rs256", "ps256", "es256"] {
        let token = std::fs::read_to_string(out.join(format!("token-{alg}.txt"))).unwrap();
        let resp = pg.get("/v1/models", Some(&token)).await;
        assert_eq!(resp.status(), 200, "{alg} token: {}", pg.logs());
        assert_eq!(resp.headers()["x-provgate-version-id"], "py-es256");
    }
    // The EdDSA record replaces the ES256 one.
    let ed_record = std::fs::read_to_string(out.join("record-eddsa.jwt")).unwrap();
    fx.write_record("py.jwt", &ed_record);
    let token = std::fs::read_to_string(out.join("token-es256.txt")).unwrap();
    pg.eventually(std::time::Duration::from_secs(3), || {
        let (c, url, token) = (pg.client.clone(), pg.url("/v1/models"), token.clone());
        async move {
            let r = c.get(url).bearer_auth(token).send().await.unwrap();
            r.headers()
                .get("x-provgate-version-id")
                .is_some_and(|v| v == "py-eddsa")
        }
    })
    .await;
    // A PyJWT record with one payload character changed is refused.
    let mut parts: Vec<String> = ed_record.split('.').map(str::to_string).collect();
    let mid = parts[1].len() / 2;
    let c = parts[1].as_bytes()[mid];
    parts[1].replace_range(mid..mid + 1, if c == b'A' { "B" } else { "A" });
    fx.write_record("py.jwt", &parts.join("."));
    pg.until_answer(&token, 403, None, std::time::Duration::from_secs(3))
        .await;
}

/// SPIFFE JWT-SVIDs (from a trust bundle with `use: jwt-svid`) and Kubernetes projected
/// service-account tokens, minted by PyJWT, through issuers with the matching profiles; the
/// approval's caller patterns name both forms.
#[tokio::test(flavor = "multi_thread")]
async fn spiffe_and_kubernetes_tokens_minted_by_pyjwt() {
    let mut fx = Fixture::new();
    let out = fx.dir.path().to_path_buf();
    let spiffe_iss = "https://oidc-discovery.example.org";
    let k8s_iss = "https://kubernetes.default.svc.cluster.local";
    run(Command::new(python())
        .arg(script("pyjwt_profiles.py"))
        .arg(&out)
        .args([spiffe_iss, k8s_iss]));
    fx.extra = format!(
        r#"
[[callers.issuers]]
issuer = "{spiffe_iss}"
jwks_file = "{}"
audiences = ["provgate"]
profile = "spiffe"
trust_domain = "example.org"

[[callers.issuers]]
issuer = "{k8s_iss}"
jwks_file = "{}"
audiences = ["provgate"]
algorithms = ["RS256"]
profile = "kubernetes"
"#,
        out.join("spiffe-bundle.json").display(),
        out.join("k8s.jwks.json").display()
    );
    // The fixture's OIDC issuer could assert either form: its callers must be named.
    fx.issuer_extra = "qualified = true".into();
    let mut claims = fx.claims();
    claims.callers = vec![
        "spiffe://example.org/ns/app/*".into(),
        "system:serviceaccount:ml:*".into(),
    ];
    fx.approve("rec.jwt", &claims);
    let up = Upstream::start().await;
    let pg = Provgate::start(&fx, up.addr).await;
    pg.wait_ready().await;
    let tok = |name: &str| std::fs::read_to_string(out.join(format!("{name}.txt"))).unwrap();
    for ok in ["svid-es256", "svid-rs256", "k8s-rs256"] {
        let resp = pg.get("/v1/models", Some(&tok(ok))).await;
        assert_eq!(resp.status(), 200, "{ok}: {}", pg.logs());
    }
    let seen = up.requests();
    assert_eq!(
        seen[2].headers["x-provgate-caller"],
        "system:serviceaccount:ml:batch"
    );
    for bad in ["svid-other-domain", "k8s-mismatch"] {
        let resp = pg.get("/v1/models", Some(&tok(bad))).await;
        assert_eq!(resp.status(), 401, "{bad}");
    }
}

fn verify_signature(model: &Path, signer: &Path) -> (bool, String) {
    let out = Command::new(bin())
        .arg("verify-signature")
        .arg(model)
        .arg("--signer")
        .arg(format!("release={}", signer.display()))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// Signatures made by the reference model_signing library (key method, no network) verify,
/// for both serializations and both curves, and each kind of tampering is caught.
#[test]
fn oms_signatures_from_the_reference_tool_verify_and_tampering_fails() {
    for (curve, method) in [("p256", "files"), ("p384", "files"), ("p256", "shards")] {
        let root = tempfile::tempdir().unwrap();
        let model = root.path().join("model");
        std::fs::create_dir_all(model.join("tok")).unwrap();
        std::fs::write(model.join("config.json"), b"{\"hidden\": 8}").unwrap();
        std::fs::write(model.join("tok/vocab.txt"), b"a\nb\n").unwrap();
        std::fs::write(model.join("empty"), b"").unwrap();
        let weights: Vec<u8> = (0..2_500_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(model.join("model.safetensors"), &weights).unwrap();
        let public = root.path().join("signer.pub");
        run(Command::new(python())
            .arg(script("oms_sign_key.py"))
            .arg(&model)
            .arg(&public)
            .args([curve, method, "1000000"]));
        let case = format!("{curve}/{method}");
        let (ok, said) = verify_signature(&model, &public);
        assert!(ok, "{case}: {said}");
        assert!(said.contains("signed by release"), "{case}: {said}");

        // Another signer's key does not verify it.
        let other = root.path().join("other.pub");
        let other_dir = root.path().join("other-model");
        std::fs::create_dir_all(&other_dir).unwrap();
        std::fs::write(other_dir.join("x"), b"x").unwrap();
        run(Command::new(python())
            .arg(script("oms_sign_key.py"))
            .arg(&other_dir)
            .arg(&other)
            .args([curve, "files"]));
        let (ok, said) = verify_signature(&model, &other);
        assert!(
            !ok && said.contains("none of the pinned signers"),
            "{case}: {said}"
        );

        // One byte changed (in the middle of a shard), a file added, a file removed.
        let mut changed = weights.clone();
        changed[1_500_000] ^= 1;
        std::fs::write(model.join("model.safetensors"), &changed).unwrap();
        let (ok, said) = verify_signature(&model, &public);
        assert!(
            !ok && said.contains("differs from what was signed"),
            "{case}: {said}"
        );
        std::fs::write(model.join("model.safetensors"), &weights).unwrap();
        assert!(verify_signature(&model, &public).0, "{case}: restored");

        std::fs::write(model.join("tok/extra.txt"), b"smuggled").unwrap();
        let (ok, said) = verify_signature(&model, &public);
        assert!(
            !ok && said.contains("not covered by the signature"),
            "{case}: {said}"
        );
        std::fs::remove_file(model.join("tok/extra.txt")).unwrap();

        std::fs::remove_file(model.join("tok/vocab.txt")).unwrap();
        let (ok, said) = verify_signature(&model, &public);
        assert!(!ok && said.contains("missing"), "{case}: {said}");
    }
}

/// A single-file model signed by the reference library (its resource named ".", shards
/// ".:START:END"), with the signature beside it as FILE.sig: it verifies, provgate's digest
/// is the signed one, and a changed byte or a missing signature is caught.
#[test]
fn a_single_file_model_signed_by_the_reference_tool_verifies() {
    for method in ["files", "shards"] {
        let root = tempfile::tempdir().unwrap();
        let model = root.path().join("model.onnx");
        let weights: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&model, &weights).unwrap();
        let public = root.path().join("signer.pub");
        run(Command::new(python())
            .arg(script("oms_sign_key.py"))
            .arg(&model)
            .arg(&public)
            .args(["p256", method, "30000"]));
        let sig = root.path().join("model.onnx.sig");
        assert!(sig.exists(), "{method}: the reference tool wrote FILE.sig");
        let (ok, said) = verify_signature(&model, &public);
        assert!(ok && said.contains("signed by release"), "{method}: {said}");

        let mut changed = weights.clone();
        changed[50_000] ^= 1;
        std::fs::write(&model, &changed).unwrap();
        let (ok, said) = verify_signature(&model, &public);
        assert!(
            !ok && said.contains("differs from what was signed"),
            "{method}: {said}"
        );
        std::fs::write(&model, &weights).unwrap();
        assert!(verify_signature(&model, &public).0, "{method}: restored");

        std::fs::remove_file(&sig).unwrap();
        let (ok, said) = verify_signature(&model, &public);
        assert!(!ok && said.contains("model.onnx.sig"), "{method}: {said}");
    }
}

/// An approval record that pins `artefact.signer` admits requests only while the model
/// directory carries a valid OMS signature by that signer.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_pinning_a_signer_needs_that_signature() {
    let mut fx = Fixture::new();
    let public = fx.path("release.pub");
    run(Command::new(python())
        .arg(script("oms_sign_key.py"))
        .arg(fx.model_dir())
        .arg(&public)
        .args(["p256", "files"]));
    assert!(fx.model_dir().join("model.sig").exists());
    fx.extra = format!(
        "[[artefact.signers]]\nname = \"release\"\npublic_key = \"{}\"\n",
        public.display()
    );
    let mut claims = fx.claims();
    claims.artefact.signer = Some("release".into());
    fx.approve("rec.jwt", &claims);
    let up = Upstream::start().await;
    let pg = Provgate::start(&fx, up.addr).await;
    pg.wait_ready().await;
    let token = fx.token(CALLER);
    let resp = pg.get("/v1/models", Some(&token)).await;
    assert_eq!(resp.status(), 200, "{}", pg.logs());

    // The signature is removed: same weights, same digest, but no longer attested.
    std::fs::remove_file(fx.model_dir().join("model.sig")).unwrap();
    pg.until_answer(&token, 403, None, std::time::Duration::from_secs(3))
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
}

/// The sidecar serves a single-file model whose signature is beside it (FILE.sig, as the
/// reference library signs a file): a record pinning that signer admits requests, and
/// removing the signature blocks them.
#[tokio::test(flavor = "multi_thread")]
async fn a_single_file_model_is_served_with_its_signature_beside_it() {
    let mut fx = Fixture::new();
    let file = fx.path("model.onnx");
    std::fs::write(&file, vec![9u8; 50_000]).unwrap();
    let public = fx.path("release.pub");
    run(Command::new(python())
        .arg(script("oms_sign_key.py"))
        .arg(&file)
        .arg(&public)
        .args(["p256", "files"]));
    fx.extra = format!(
        "[[artefact.signers]]\nname = \"release\"\npublic_key = \"{}\"\n",
        public.display()
    );
    let mut claims = fx.claims();
    claims.artefact.digest = provgate::oms::compute_manifest(&file, 1).unwrap().root;
    claims.artefact.signer = Some("release".into());
    fx.approve("rec.jwt", &claims);
    let up = Upstream::start().await;
    let (listen, admin) = (free_port(), free_port());
    let dir_line = format!("path = \"{}\"", fx.model_dir().display());
    let config = fx.config(listen, admin, up.addr);
    assert!(config.contains(&dir_line));
    let config = config.replace(&dir_line, &format!("path = \"{}\"", file.display()));
    let pg = Provgate::spawn(fx.dir.path(), "single", &config, listen, admin, None).await;
    pg.wait_ready().await;
    let token = fx.token(CALLER);
    let resp = pg.get("/v1/models", Some(&token)).await;
    assert_eq!(resp.status(), 200, "{}", pg.logs());

    std::fs::remove_file(fx.path("model.onnx.sig")).unwrap();
    pg.until_answer(&token, 403, None, std::time::Duration::from_secs(5))
        .await;
    let body: serde_json::Value = pg
        .get("/v1/models", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["error"], "approval_invalid");
}

/// A co-signed record made by PyJWT (two signatures, JWS JSON General Serialization) meets
/// a two-role quorum through the real binary; the owner's signature alone does not.
#[tokio::test(flavor = "multi_thread")]
async fn a_cosigned_record_minted_by_pyjwt_meets_the_quorum() {
    let mut fx = Fixture::new();
    let out = fx.dir.path().to_path_buf();
    run(Command::new(python())
        .arg(script("pyjwt_cosign.py"))
        .arg(&out)
        .arg(fx.digest().to_string())
        .args([MODEL, WORKLOAD, CALLER]));
    fx.extra = "[tiers.critical]\nquorum = [\"owner\", \"security\"]\n\
        [[trust.approvers]]\nname = \"owners\"\nkeys = [\"py-owner\"]\nroles = [\"owner\"]\n\
        [[trust.approvers]]\nname = \"security\"\nkeys = [\"py-security\"]\nroles = [\"security\"]\n"
        .into();
    let owner_only = std::fs::read_to_string(out.join("record-owner.jwt")).unwrap();
    fx.write_record("py.jws", &owner_only);
    let up = Upstream::start().await;
    let (listen, admin) = (free_port(), free_port());
    let config = fx.config(listen, admin, up.addr).replace(
        &format!("identity = \"{WORKLOAD}\""),
        &format!("identity = \"{WORKLOAD}\"\ntier = \"critical\""),
    );
    let pg = Provgate::spawn(&out, "cosigned", &config, listen, admin, None).await;
    pg.wait_ready().await;
    let token = fx.token(CALLER);
    let resp = pg.get("/v1/models", Some(&token)).await;
    assert_eq!(resp.status(), 403, "{}", pg.logs());

    let cosigned = std::fs::read_to_string(out.join("record-cosigned.jws")).unwrap();
    fx.write_record("py.jws", &cosigned);
    pg.until_answer(&token, 200, None, std::time::Duration::from_secs(5))
        .await;
}

/// An exception minted by PyJWT (the security approver waives its own quorum role for one
/// version, for an hour) lets the owner's record through a two-role quorum, audited with
/// the exception's ID; without it the record is refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_exception_minted_by_pyjwt_waives_a_quorum_role() {
    let mut fx = Fixture::new();
    let out = fx.dir.path().to_path_buf();
    run(Command::new(python())
        .arg(script("pyjwt_exception.py"))
        .arg(&out)
        .arg(fx.digest().to_string())
        .args([MODEL, WORKLOAD, CALLER]));
    fx.extra = "[tiers.critical]\nquorum = [\"owner\", \"security\"]\n\
        exceptions = true\nmax_exception_lifetime = \"1d\"\nexception_roles = [\"security\"]\n\
        [[trust.approvers]]\nname = \"owners\"\nkeys = [\"py-owner\"]\nroles = [\"owner\"]\n\
        [[trust.approvers]]\nname = \"security\"\nkeys = [\"py-security\"]\nroles = [\"security\"]\n"
        .into();
    fx.log_allowed = false;
    let record = std::fs::read_to_string(out.join("record-owner.jwt")).unwrap();
    fx.write_record("py.jwt", &record);
    let up = Upstream::start().await;
    let (listen, admin) = (free_port(), free_port());
    let config = fx.config(listen, admin, up.addr).replace(
        &format!("identity = \"{WORKLOAD}\""),
        &format!("identity = \"{WORKLOAD}\"\ntier = \"critical\""),
    );
    let pg = Provgate::spawn(&out, "excepted", &config, listen, admin, None).await;
    pg.wait_ready().await;
    let token = fx.token(CALLER);
    let resp = pg.get("/v1/models", Some(&token)).await;
    assert_eq!(resp.status(), 403, "{}", pg.logs());

    let exception = std::fs::read_to_string(out.join("exception-security.jwt")).unwrap();
    fx.write_record("py-exception.jwt", &exception);
    pg.until_answer(&token, 200, None, std::time::Duration::from_secs(5))
        .await;
    let resp = pg.get("/v1/models", Some(&token)).await;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-provgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let audit = fx.audit_record(&id).await;
    assert_eq!(audit["exceptions"][0]["id"], "py-exception-1", "{audit}");
    assert_eq!(audit["exceptions"][0]["waives"], "role:security");
}
