//! Entry points for the coverage-guided fuzz targets (`fuzz/`, README "Fuzzing"): one
//! function per parser of untrusted input, taking the fuzzer's bytes. The same functions
//! replay every committed corpus and crash file under a plain `cargo test`
//! (`tests/it/fuzz_corpus.rs`), so a crash once found stays fixed on the stable toolchain.
//!
//! Each entry point calls the parser exactly as the sidecar or the command line does, with
//! fixed fixtures (the demo keys in `config/keys/`, a tiny model directory), and checks a
//! few properties of what comes out; a panic is the finding. Some inputs are structured: the
//! first byte picks a mode, and in a signing mode the rest is signed with a fixture key
//! first, so the fuzzer reaches the code behind the signature check too. Each returns
//! whether the input was accepted all the way (verified, valid, intact), which the unit
//! tests use to show the seeds reach that far.
//!
//! Used only by the fuzz targets and the replay test: nothing in the sidecar calls it, and it
//! must not be called from the request path (it signs, and writes temporary files).
//!
//! Panics are this module's purpose: its assertions are the properties the fuzzer checks,
//! its `expect`s load committed fixtures that cannot fail to load, and its few slices are
//! cut at positions just found within them (a bad one would be the harness's own bug).
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

use crate::identity::{Issuer, Profile, TokenVerifier};
use crate::keys::{KeySet, SigningKey};
use crate::oms::manifest::{hash_dir, HashOptions, Manifest, Serialization};
use crate::oms::signature::{verify_bundle, Signer};
use crate::proxy::routing::config::{compile_doors, Found, Routing};
use crate::proxy::routing::profiles::{self, Field, ListShape};
use crate::proxy::routing::{names_in_body, Named};
use crate::upstream::Api;

/// The demo approver key (`config/keys/approver.demo.key`): public test material, the key
/// the demo records in `config/approvals/` are signed with.
const APPROVER_KEY: &str = include_str!("../config/keys/approver.demo.key");
const APPROVER_JWKS: &str = include_str!("../config/keys/approvers.jwks.json");
/// The demo token issuer's key and key set.
const ISSUER_KEY: &str = include_str!("../config/keys/issuer.demo.key");
const ISSUER_JWKS: &str = include_str!("../config/keys/issuer.jwks.json");
const ISSUER: &str = "https://issuer.example.org";

/// A fixed clock for the decisions that take one (2026-01-01T00:00:00Z).
const NOW: u64 = 1_767_225_600;

fn signing_key(pem_text: &str) -> SigningKey {
    let der = pem::parse(pem_text).map(|p| p.into_contents());
    // The fixture keys are committed PKCS#8 PEM files: parsing them cannot fail.
    SigningKey::from_pkcs8(&der.expect("fixture key is PEM")).expect("fixture key is PKCS#8")
}

fn key_set(jwks: &str) -> KeySet {
    // The fixture key sets are committed JWKS documents.
    KeySet::from_jwks_json(jwks, "fixture").expect("fixture JWKS parses")
}

struct Fixtures {
    approver: SigningKey,
    approvers: KeySet,
    issuer: SigningKey,
    /// One verifier per token profile: OIDC, SPIFFE (`example.org`), Kubernetes.
    verifiers: [TokenVerifier; 3],
    /// The door table of each API profile, then of all of them at once.
    routings: Vec<Routing>,
    /// Every distinct set of body fields a door reads its model from.
    field_sets: Vec<&'static [Field]>,
    /// A tiny model directory, its manifest, and the pinned signer (the approver key's
    /// public half) with its private half for signing bundles.
    model_dir: PathBuf,
    manifest: Manifest,
    signers: Vec<Signer>,
    oms_key: aws_lc_rs::signature::EcdsaKeyPair,
    /// A scratch directory for the audit log under test.
    scratch: PathBuf,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(build_fixtures)
}

fn build_fixtures() -> Fixtures {
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let verifier = |profile: Profile| {
        let mut issuer = Issuer::with_keys(
            ISSUER,
            vec!["provgate".into()],
            vec![
                jsonwebtoken::Algorithm::ES256,
                jsonwebtoken::Algorithm::ES384,
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::Algorithm::PS256,
                jsonwebtoken::Algorithm::EdDSA,
            ],
            key_set(ISSUER_JWKS),
        );
        issuer.profile = profile;
        TokenVerifier::new(vec![issuer], 30, 16, metrics.clone())
    };
    let mut routings: Vec<Routing> = Api::ALL
        .iter()
        .map(|api| routing(&[*api]))
        .collect::<Vec<_>>();
    routings.push(routing(&Api::ALL));
    let mut field_sets: Vec<&'static [Field]> = vec![&[Field::Model]];
    for r in &routings {
        for d in &r.doors {
            let f = d.body_fields();
            if !f.is_empty() && !field_sets.contains(&f) {
                field_sets.push(f);
            }
        }
    }

    let root = std::env::temp_dir().join(format!("provgate-fuzz-{}", std::process::id()));
    let model_dir = root.join("model");
    let scratch = root.join("audit");
    // The fixtures' own files: a failure here is the machine's, not an input's.
    std::fs::create_dir_all(&model_dir).expect("create the fixture model directory");
    std::fs::create_dir_all(&scratch).expect("create the scratch directory");
    std::fs::write(model_dir.join("config.json"), b"{\"layers\": 2}\n").expect("write fixture");
    std::fs::write(model_dir.join("weights.bin"), [7u8; 100]).expect("write fixture");
    let manifest = hash_dir(&model_dir, &HashOptions::new(Serialization::Files, 1), None)
        .expect("hash the fixture model directory");

    let der = pem::parse(APPROVER_KEY)
        .expect("fixture key is PEM")
        .into_contents();
    let oms_key = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &der,
    )
    .expect("fixture key is a P-256 PKCS#8 key");
    let signer_pem = root.join("signer.pub");
    std::fs::write(&signer_pem, public_pem(&oms_key)).expect("write fixture");
    let signer = Signer::from_pem_file("fuzz", &signer_pem).expect("fixture signer loads");

    Fixtures {
        approver: signing_key(APPROVER_KEY),
        approvers: key_set(APPROVER_JWKS),
        issuer: signing_key(ISSUER_KEY),
        verifiers: [
            verifier(Profile::Oidc),
            verifier(Profile::Spiffe {
                trust_domain: "example.org".into(),
            }),
            verifier(Profile::Kubernetes),
        ],
        routings,
        field_sets,
        model_dir,
        manifest,
        signers: vec![signer],
        oms_key,
        scratch,
    }
}

fn routing(apis: &[Api]) -> Routing {
    Routing {
        openai_paths: Vec::new(),
        max_body_bytes: 64 << 10,
        max_held_body_bytes: 0,
        max_held_total_bytes: 0,
        models_path: None,
        doors: compile_doors(apis, &[], None),
        allow: Vec::new(),
    }
}

/// A P-256 public key as a PEM `PUBLIC KEY` block (SubjectPublicKeyInfo).
fn public_pem(key: &aws_lc_rs::signature::EcdsaKeyPair) -> String {
    use aws_lc_rs::signature::KeyPair;
    // SPKI header for id-ecPublicKey with prime256v1, then the 65-byte uncompressed point.
    let mut der =
        hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("constant hex");
    der.extend_from_slice(key.public_key().as_ref());
    pem::encode(&pem::Pem::new("PUBLIC KEY", der))
}

/// Splits at the first NUL byte: (before, Some(after)) or (all, None).
fn split_nul(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    }
}

/// A compact JWS over exactly these header and payload bytes, signed by `key`.
fn sign_compact(header: &[u8], payload: &[u8], key: &SigningKey) -> Option<String> {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key.key, key.alg).ok()?;
    Some(format!("{message}.{signature}"))
}

// === Caller tokens and JWS headers ===

/// Caller tokens: the `Authorization` value's bearer token, the unverified header and issuer
/// read before any key is chosen, then full verification against the demo issuer (each
/// profile). Mode byte (first): even, the rest is the header value as sent; odd, the rest
/// is `HEADER-JSON NUL CLAIMS-JSON`, signed with the issuer's key first, so the claims and
/// profile checks behind the signature are reached.
pub fn token(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let f = fixtures();
    let verifier = &f.verifiers[usize::from(mode >> 1) % f.verifiers.len()];
    let token = if mode & 1 == 0 {
        match crate::identity::bearer(rest) {
            Some(t) => t.to_string(),
            None => String::from_utf8_lossy(rest).into_owned(),
        }
    } else {
        let (header, claims) = split_nul(rest);
        let header = match header {
            b"" => format!(
                "{{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"{}\"}}",
                f.issuer.kid
            )
            .into_bytes(),
            h => h.to_vec(),
        };
        match sign_compact(&header, claims.unwrap_or(b"{}"), &f.issuer) {
            Some(t) => t,
            None => return false,
        }
    };
    let verified = verifier.verify_uncached(&token, NOW);
    if let Ok(caller) = &verified {
        assert!(!caller.sub.is_empty(), "a verified caller has a subject");
        assert_eq!(&*caller.iss, ISSUER, "a verified caller has the issuer");
    }
    // The cached path (the request path's), with its per-thread and shared caches.
    let _ = verifier.verify(&token, NOW);
    verified.is_ok()
}

// === JWKS documents ===

/// A JWKS document as a key file or a JWKS endpoint serves it, and the endpoint's
/// `Cache-Control` value (the same bytes).
pub fn jwks(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let _ = crate::identity::jwks::parse_max_age(text);
    let Ok(set) = KeySet::from_jwks_json(text, "fuzz") else {
        return false;
    };
    assert!(set.keys.len() <= 64, "a key set is bounded");
    for k in &set.keys {
        assert!(set.contains_thumbprint(&k.thumbprint));
        for alg in &k.algorithms {
            assert!(set.candidates(k.kid.as_deref(), *alg).count() >= 1);
        }
    }
    !set.keys.is_empty()
}

// === Approval records ===

/// Approval records: a compact JWS or a co-signed JSON-serialization record, verified against
/// the demo approver keys, read unverified (`peek_claims`) and co-signed. Mode byte: even,
/// the rest is the record text; odd, the rest is `[HEADER-JSON NUL] CLAIMS-JSON` signed by
/// the approver key first (then co-signed and verified again as a JSON record).
pub fn approval(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let f = fixtures();
    let text = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let (header, payload) = match split_nul(rest) {
            (h, Some(p)) => (h.to_vec(), p),
            (p, None) => (
                format!(
                    "{{\"alg\":\"ES256\",\"typ\":\"{}\",\"kid\":\"{}\"}}",
                    crate::approval::RECORD_TYP,
                    f.approver.kid
                )
                .into_bytes(),
                p,
            ),
        };
        match sign_compact(&header, payload, &f.approver) {
            Some(t) => t,
            None => return false,
        }
    };
    let _ = crate::approval::peek_claims(&text);
    let verified = crate::approval::verify(&text, &f.approvers);
    if let Ok(record) = &verified {
        assert!(!record.signers.is_empty(), "a verified record has a signer");
        let _ = record.not_before();
    }
    // A co-signature by a key outside the approver set changes nothing.
    if mode & 2 != 0 {
        if let Ok(cosigned) = crate::approval::cosign(&text, &f.issuer) {
            let again = crate::approval::verify(&cosigned, &f.approvers);
            assert_eq!(
                again.as_ref().map(|r| &r.claims.jti).ok(),
                verified.as_ref().map(|r| &r.claims.jti).ok(),
                "a co-signature by an unknown key changes the verdict"
            );
        }
    }
    verified.is_ok()
}

// === Request target and model name ===

/// The request target (`TARGET [NUL HOST]`): canonicalised, then matched against every
/// API profile's doors with each method. A canonical target is a fixed point.
pub fn target(data: &[u8]) -> bool {
    let (raw, host) = split_nul(data);
    let Ok(c) = crate::proxy::target::canonical(raw, host) else {
        return false;
    };
    assert!(c.path.starts_with('/'), "a canonical path starts with /");
    let forwarded = c.to_target();
    match crate::proxy::target::canonical(forwarded.as_bytes(), host) {
        Ok(again) => {
            assert_eq!(again.path, c.path, "canonicalising twice changes the path");
            assert!(!again.rewritten, "a canonical target is rewritten again");
        }
        Err(e) => panic!("the canonical target {forwarded:?} is refused: {e}"),
    }
    let f = fixtures();
    for r in &f.routings {
        for method in [
            profiles::GET,
            profiles::HEAD,
            profiles::POST,
            profiles::PUT,
            profiles::DELETE,
            profiles::PATCH,
        ] {
            if let Found::Door(i, Some(model)) = r.find(method, &c.path) {
                assert!(i < r.doors.len());
                assert!(!model.is_empty(), "a path names an empty model");
                assert!(c.path.contains(model));
            }
            let _ = r.opened(method, &c.path);
        }
    }
    true
}

/// A JSON request body, read for the model(s) it names by each door's body fields.
pub fn body_model(data: &[u8]) -> bool {
    let mut named = false;
    for fields in &fixtures().field_sets {
        match names_in_body(data, fields) {
            Named::Model(m) => {
                assert!(!m.is_empty(), "an empty name names a model");
                named = true;
            }
            Named::Models(ms) => {
                assert!(ms.len() >= 2 && ms.iter().all(|m| !m.is_empty()));
                named = true;
            }
            _ => {}
        }
    }
    named
}

/// An upstream's model list (the first byte picks the shape), filtered for a caller allowed
/// the models whose names have an even length; whole and in two chunks alike.
pub fn model_list(data: &[u8]) -> bool {
    let Some((&mode, body)) = data.split_first() else {
        return false;
    };
    let shape = match mode % 4 {
        0 => ListShape::OpenAi,
        1 => ListShape::Names,
        2 => ListShape::Ollama,
        _ => ListShape::Triton,
    };
    let allowed = |n: &str| n.len() % 2 == 0;
    let once = crate::proxy::models::filter_list(body, shape, allowed);
    assert!(
        serde_json::from_slice::<serde_json::Value>(&once).is_ok(),
        "the filtered list is not JSON"
    );
    // As JSON: the fail-closed empty list keeps its own key order.
    let twice = crate::proxy::models::filter_list(&once, shape, allowed);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&once).ok(),
        serde_json::from_slice::<serde_json::Value>(&twice).ok(),
        "filtering a filtered list changes it"
    );

    // Collected in two chunks, for a sidecar guarding two models named "ab" and "abc".
    let cut = usize::from(mode).min(body.len());
    let mut collected = bytes::BytesMut::new();
    let mut allowed_bits = 0b01u64;
    let mut chunk = Some(bytes::Bytes::copy_from_slice(&body[..cut]));
    let names = ["ab", "abc"];
    crate::proxy::models::collect_shaped(
        &mut collected,
        &mut allowed_bits,
        &mut chunk,
        false,
        names.iter().copied(),
        shape,
    );
    let mut chunk = Some(bytes::Bytes::copy_from_slice(&body[cut..]));
    crate::proxy::models::collect_shaped(
        &mut collected,
        &mut allowed_bits,
        &mut chunk,
        true,
        names.iter().copied(),
        shape,
    );
    let whole = crate::proxy::models::filter_list(body, shape, |n| n == "ab");
    assert_eq!(chunk, Some(whole), "a chunked list is filtered differently");
    // Some model was kept.
    once.windows(2).any(|w| w == b"ab")
}

// === OMS signature bundles ===

/// An OMS signature bundle (`model.sig`) for the fixture model directory, verified against
/// the pinned fixture signer. Mode byte: even, the rest is the bundle; odd, the rest is the
/// in-toto statement, put in a DSSE envelope signed by the pinned signer first.
pub fn oms_bundle(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let f = fixtures();
    let owned;
    let bundle = if mode & 1 == 0 {
        rest
    } else {
        let payload_type = "application/vnd.in-toto+json";
        let mut pae = format!(
            "DSSEv1 {} {payload_type} {} ",
            payload_type.len(),
            rest.len()
        )
        .into_bytes();
        pae.extend_from_slice(rest);
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let Ok(sig) = f.oms_key.sign(&rng, &pae) else {
            return false;
        };
        owned = serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {"publicKey": {"hint": "fuzz"}},
            "dsseEnvelope": {
                "payload": STANDARD.encode(rest),
                "payloadType": payload_type,
                "signatures": [{"sig": STANDARD.encode(sig.as_ref()), "keyid": ""}],
            },
        })
        .to_string()
        .into_bytes();
        &owned
    };
    let served = (mode & 2 == 0).then_some(&f.manifest);
    let hashing = HashOptions::new(Serialization::Files, 1);
    let verified = verify_bundle(&f.model_dir, bundle, &f.signers, served, &hashing);
    if let Ok((signer, _identity)) = &verified {
        assert_eq!(signer, "fuzz");
    }
    verified.is_ok()
}

// === Registry answers ===

/// A registry's answer for one digest, read as the backend reads it and its records verified
/// as the refresher verifies them. Mode byte: even, an MLflow `model-versions/search` page;
/// odd, an HTTP registry's body (one record per line; bit 1: a 410 answer).
pub fn registry(data: &[u8]) -> bool {
    let Some((&mode, body)) = data.split_first() else {
        return false;
    };
    let records = if mode & 1 == 0 {
        match crate::registry::mlflow::page_records(body) {
            Ok((records, _next)) => records,
            Err(_) => return false,
        }
    } else {
        let Ok(text) = std::str::from_utf8(body) else {
            return false;
        };
        let records = crate::registry::http::parse_records(text, mode & 2 != 0, "fuzz");
        assert!(records.len() <= crate::registry::http::MAX_RECORDS);
        records
    };
    let f = fixtures();
    let mut verified = false;
    for r in &records {
        assert!(!r.jws.trim().is_empty() || mode & 1 == 0);
        if let Ok(record) = crate::approval::verify(&r.jws, &f.approvers) {
            let _ = record.claims.artefact.digest.to_string();
            verified = true;
        }
    }
    verified
}

// === Configuration ===

/// A configuration file: TOML parsed, then validated (key files named by relative paths are
/// looked up from the working directory, as `provgate -t` does).
pub fn config(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    crate::config::FileConfig::parse(text).is_ok_and(|file| file.validate().is_ok())
}

// === Audit lines ===

/// An audit log as `provgate audit verify` reads it, with the demo approver keys as the
/// sidecar's keys: `LOG [NUL CHECKPOINT-FILE [NUL SEGMENT]...]`, the segments written as
/// the log's rotated segments 1, 2, ... (the active file last).
pub fn audit_verify(data: &[u8]) -> bool {
    let f = fixtures();
    let dir = &f.scratch;
    // A fresh set for each input: what the previous one left would be read too.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let active = dir.join("audit.jsonl");
    let mut parts = data.split(|&b| b == 0);
    let log = parts.next().unwrap_or_default();
    if write(&active, log).is_err() {
        return false;
    }
    if let Some(cp) = parts.next() {
        if write(&crate::audit::segments::checkpoint_path(&active), cp).is_err() {
            return false;
        }
    }
    for (i, seg) in parts.take(8).enumerate() {
        if write(
            &crate::audit::segments::rotated_path(&active, i as u64 + 1),
            seg,
        )
        .is_err()
        {
            return false;
        }
    }
    let _ = crate::audit::verify::verify(&active, None);
    crate::audit::verify::verify(&active, Some(&f.approvers))
        .is_ok_and(|reports| reports.iter().all(|r| r.intact()))
}

fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests;
