use super::*;
use crate::keys::{jwks_document, KeyKind};

fn claims() -> ApprovalClaims {
    ApprovalClaims {
        iss: "approver@example.org".into(),
        sub: "all-minilm-l6-v2".into(),
        jti: "rec-1".into(),
        iat: 1_700_000_000,
        nbf: Some(1_700_000_000),
        exp: 1_700_086_400,
        version_id: "v7".into(),
        artefact: ArtefactRef {
            digest: format!("sha256:{}", "11".repeat(32)).parse().unwrap(),
            signer: None,
            ollama_digest: None,
            base_digest: None,
        },
        lineage: serde_json::json!({"code_revision": "abc"})
            .as_object()
            .unwrap()
            .clone(),
        evidence: vec![Evidence {
            kind: "security-test".into(),
            uri: "s3://e/1".into(),
            digest: "sha256:00".into(),
            verdict: "pass".into(),
        }],
        approvals: vec![],
        tier: "internal".into(),
        workloads: vec!["spiffe://example.org/ns/prod/*".into()],
        callers: vec!["spiffe://example.org/ns/app/sa/client".into()],
        revalidate_after: None,
    }
}

fn keyset(key: &SigningKey) -> KeySet {
    KeySet::from_jwks_json(&jwks_document(std::slice::from_ref(&key.public_jwk)), "t").unwrap()
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

#[test]
fn signed_records_verify_for_every_algorithm() {
    for kind in [KeyKind::Es256, KeyKind::Es384, KeyKind::Ed25519] {
        let (key, _) = SigningKey::generate(kind).unwrap();
        let jws = sign(&claims(), &key).unwrap();
        let rec = verify(&jws, &keyset(&key)).unwrap();
        assert_eq!(rec.claims, claims());
        assert_eq!(&*rec.version_id, "v7");
        assert_eq!(rec.kid, key.kid);
    }
}

#[test]
fn a_record_signed_by_another_key_is_refused() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let (other, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let jws = sign(&claims(), &other).unwrap();
    assert_eq!(
        verify(&jws, &keyset(&key)).unwrap_err(),
        ApprovalError::UnknownKey(Some(other.kid.clone()))
    );
    // Same kid, wrong key: the signature check fails.
    let mut header = Header::new(Algorithm::ES256);
    header.typ = Some(RECORD_TYP.into());
    header.kid = Some(key.kid.clone());
    let forged = jsonwebtoken::encode(&header, &claims(), &other.key).unwrap();
    assert_eq!(
        verify(&forged, &keyset(&key)).unwrap_err(),
        ApprovalError::Signature
    );
}

#[test]
fn a_changed_payload_breaks_the_signature() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let jws = sign(&claims(), &key).unwrap();
    let parts: Vec<&str> = jws.split('.').collect();
    let mut c = claims();
    c.exp += 86_400 * 365;
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_value(&c).unwrap()),
        parts[2]
    );
    assert_eq!(
        verify(&tampered, &keyset(&key)).unwrap_err(),
        ApprovalError::Signature
    );
}

#[test]
fn unsafe_headers_are_refused() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let set = keyset(&key);
    let payload = b64(&serde_json::to_value(claims()).unwrap());
    let cases = [
        (
            serde_json::json!({"alg":"none","typ":"approval+jwt"}),
            "none",
        ),
        (
            serde_json::json!({"alg":"HS256","typ":"approval+jwt","kid":key.kid}),
            "hmac",
        ),
        (
            serde_json::json!({"alg":"ES256","typ":"JWT","kid":key.kid}),
            "typ",
        ),
        (serde_json::json!({"alg":"ES256","kid":key.kid}), "no typ"),
        (
            serde_json::json!({"alg":"ES256","typ":"approval+jwt","kid":key.kid,"crit":["exp"]}),
            "crit",
        ),
        (
            serde_json::json!({"alg":"ES256","typ":"approval+jwt","jku":"https://evil/"}),
            "jku",
        ),
        (
            serde_json::json!({"alg":"RS256","typ":"approval+jwt","kid":key.kid}),
            "rsa",
        ),
    ];
    for (header, name) in cases {
        let jws = format!("{}.{}.c2ln", b64(&header), payload);
        assert!(verify(&jws, &set).is_err(), "{name} must be refused");
    }
    assert_eq!(verify("a.b", &set).unwrap_err(), ApprovalError::Malformed);
    assert_eq!(verify("", &set).unwrap_err(), ApprovalError::Malformed);
    assert_eq!(
        verify("!!.!!.!!", &set).unwrap_err(),
        ApprovalError::Malformed
    );
}

#[test]
fn typ_accepts_the_media_type_spellings() {
    assert!(typ_matches("approval+jwt"));
    assert!(typ_matches("application/Approval+JWT"));
    assert!(!typ_matches("jwt"));
}

#[test]
fn missing_fields_are_a_payload_error() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let mut v = serde_json::to_value(claims()).unwrap();
    v.as_object_mut().unwrap().remove("workloads");
    let mut header = Header::new(Algorithm::ES256);
    header.typ = Some(RECORD_TYP.into());
    header.kid = Some(key.kid.clone());
    let jws = jsonwebtoken::encode(&header, &v, &key.key).unwrap();
    assert!(matches!(
        verify(&jws, &keyset(&key)),
        Err(ApprovalError::Payload(_))
    ));
}

#[test]
fn identity_patterns() {
    let p = vec![
        "spiffe://a/ns/x/sa/y".to_string(),
        "system:serviceaccount:ml:*".to_string(),
    ];
    assert!(identity_matches(&p, "spiffe://a/ns/x/sa/y"));
    assert!(!identity_matches(&p, "spiffe://a/ns/x/sa/yz"));
    assert!(identity_matches(&p, "system:serviceaccount:ml:client"));
    assert!(!identity_matches(&p, "system:serviceaccount:other:client"));
    assert!(identity_matches(&["*".to_string()], "anything"));
    assert!(!identity_matches(&[], "anything"));
}

#[test]
fn peek_reports_the_claimed_digest() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let jws = sign(&claims(), &key).unwrap();
    let (d, jti) = peek_claims(&jws).unwrap();
    assert_eq!(d, Some(claims().artefact.digest));
    assert_eq!(jti.as_deref(), Some("rec-1"));
}

#[test]
fn the_ollama_digest_is_optional_and_checked_for_shape() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    // Records without it carry no such key: older verifiers read them as before.
    let payload = serde_json::to_value(claims()).unwrap();
    assert!(payload["artefact"].get("ollama_digest").is_none());

    let mut with = claims();
    with.artefact.ollama_digest = Some(format!("sha256:{}", "Ab".repeat(32)));
    let rec = verify(&sign(&with, &key).unwrap(), &keyset(&key)).unwrap();
    assert_eq!(
        rec.claims.artefact.ollama_digest,
        with.artefact.ollama_digest
    );

    for bad in ["sha256:abc", "zz".repeat(32).as_str(), ""] {
        let mut c = claims();
        c.artefact.ollama_digest = Some(bad.to_string());
        assert!(
            matches!(
                verify(&sign(&c, &key).unwrap(), &keyset(&key)),
                Err(ApprovalError::Payload(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn callers_are_bare_strings_or_issuer_qualified_objects() {
    let parsed: Vec<CallerPattern> = serde_json::from_str(
        r#"["spiffe://a/*", {"iss": "https://k8s-a", "sub": "system:serviceaccount:app:*"}]"#,
    )
    .unwrap();
    assert_eq!(parsed[0], CallerPattern::Bare("spiffe://a/*".into()));
    let q = &parsed[1];
    assert!(q.matches("https://k8s-a", "system:serviceaccount:app:search", false));
    assert!(!q.matches("https://k8s-b", "system:serviceaccount:app:search", true));
    assert!(!parsed[0].matches("https://x", "spiffe://a/b", false));
    assert!(parsed[0].matches("https://x", "spiffe://a/b", true));
    // An object with anything else is not a pattern.
    assert!(serde_json::from_str::<CallerPattern>(r#"{"iss": "i", "sub": "s", "x": 1}"#).is_err());
    assert!(serde_json::from_str::<CallerPattern>(r#"{"sub": "s"}"#).is_err());
    // Round trip keeps the shapes.
    assert_eq!(
        serde_json::to_string(&parsed).unwrap(),
        r#"["spiffe://a/*",{"iss":"https://k8s-a","sub":"system:serviceaccount:app:*"}]"#
    );
    assert_eq!(
        CallerPattern::parse_cli("https://k8s-a#system:serviceaccount:app:*", true),
        Some(parsed[1].clone())
    );
    assert_eq!(CallerPattern::parse_cli("no-hash", true), None);
}

#[test]
fn a_qualified_caller_with_an_empty_issuer_is_malformed() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let approvers =
        KeySet::from_jwks_json(&jwks_document(std::slice::from_ref(&key.public_jwk)), "t").unwrap();
    let mut c = claims();
    c.callers = vec![CallerPattern::Qualified {
        iss: " ".into(),
        sub: "x".into(),
    }];
    let jws = sign(&c, &key).unwrap();
    assert!(matches!(
        verify(&jws, &approvers),
        Err(ApprovalError::Payload(_))
    ));
}

fn keys_of(keys: &[&SigningKey]) -> KeySet {
    let jwks: Vec<_> = keys.iter().map(|k| k.public_jwk.clone()).collect();
    KeySet::from_jwks_json(&jwks_document(&jwks), "t").unwrap()
}

#[test]
fn a_cosigned_record_verifies_with_every_known_signer() {
    let (a, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let (b, _) = SigningKey::generate(KeyKind::Ed25519).unwrap();
    let (c, _) = SigningKey::generate(KeyKind::Es384).unwrap();
    let compact = sign(&claims(), &a).unwrap();
    let two = cosign(&compact, &b).unwrap();
    assert!(!two.contains('\n'), "one line, so every backend carries it");
    let three = cosign(&two, &c).unwrap();
    // Every signature covers the same payload bytes.
    let g: serde_json::Value = serde_json::from_str(&three).unwrap();
    assert_eq!(g["signatures"].as_array().unwrap().len(), 3);
    assert_eq!(g["payload"], compact.split('.').nth(1).unwrap());

    let r = verify(&three, &keys_of(&[&a, &b, &c])).unwrap();
    assert_eq!(r.claims, claims());
    assert_eq!(r.signers, [a.kid.clone(), b.kid.clone(), c.kid.clone()]);
    // A signer whose key is not (or no longer) trusted counts for nothing.
    let r = verify(&three, &keys_of(&[&a, &c])).unwrap();
    assert_eq!(r.signers, [a.kid.clone(), c.kid.clone()]);
    // No known signer at all: not a record.
    assert!(matches!(
        verify(&two, &keys_of(&[&c])),
        Err(ApprovalError::UnknownKey(_))
    ));
    // The compact form has its one signer.
    assert_eq!(
        verify(&compact, &keys_of(&[&a])).unwrap().signers,
        vec![a.kid.clone()]
    );
    // Digest and ID can be peeked for reporting.
    let (digest, jti) = peek_claims(&three).unwrap();
    assert_eq!(digest, Some(claims().artefact.digest));
    assert_eq!(jti.as_deref(), Some("rec-1"));
    // One key signs once.
    assert!(cosign(&two, &b).is_err());
}

#[test]
fn a_cosigned_record_with_a_bad_or_foreign_signature_is_refused() {
    let (a, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let (b, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let two = cosign(&sign(&claims(), &a).unwrap(), &b).unwrap();
    let keys = keys_of(&[&a, &b]);
    // A known key's signature that does not verify makes the whole record invalid.
    let mut g: serde_json::Value = serde_json::from_str(&two).unwrap();
    let sig0 = g["signatures"][0]["signature"]
        .as_str()
        .unwrap()
        .to_string();
    g["signatures"][1]["signature"] = sig0.into();
    assert!(verify(&g.to_string(), &keys).is_err());
    // A signature over another payload (the second signer approved something else).
    let mut other = claims();
    other.exp += 1;
    let other_b = sign(&other, &b).unwrap();
    let mut g: serde_json::Value = serde_json::from_str(&two).unwrap();
    g["signatures"][1]["signature"] = other_b.split('.').nth(2).unwrap().into();
    assert!(matches!(
        verify(&g.to_string(), &keys),
        Err(ApprovalError::Signature)
    ));
    // Unprotected headers and unknown members are refused.
    let mut g: serde_json::Value = serde_json::from_str(&two).unwrap();
    g["signatures"][1]["header"] = serde_json::json!({"kid": "x"});
    assert!(verify(&g.to_string(), &keys).is_err());
    let mut g: serde_json::Value = serde_json::from_str(&two).unwrap();
    g["extra"] = 1.into();
    assert!(verify(&g.to_string(), &keys).is_err());
    let mut g: serde_json::Value = serde_json::from_str(&two).unwrap();
    g["signatures"] = serde_json::json!([]);
    assert!(verify(&g.to_string(), &keys).is_err());
}

// === x5c: certificate-bound approvers ===

mod x5c {
    use super::*;
    use crate::x509::{CaBundle, CertIdentity};
    use rcgen::{
        date_time_ymd, BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };

    const ID: &str = "spiffe://example.org/ns/release/sa/approver";

    fn ca(cn: &str) -> (Issuer<'static, KeyPair>, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_string());
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let pem = p.self_signed(&key).unwrap().pem();
        (Issuer::new(p, key), pem)
    }

    /// A leaf with SAN `id` (and its key, as a SigningKey) under `ca`.
    fn leaf(ca: &Issuer<'static, KeyPair>, id: &str, expired: bool) -> (SigningKey, Vec<u8>) {
        leaf_of(ca, id, expired, KeyPair::generate().unwrap())
    }

    fn leaf_of(
        ca: &Issuer<'static, KeyPair>,
        id: &str,
        expired: bool,
        key: KeyPair,
    ) -> (SigningKey, Vec<u8>) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if expired {
            p.not_before = date_time_ymd(2020, 1, 1);
            p.not_after = date_time_ymd(2021, 1, 1);
        }
        let der = p.signed_by(&key, ca).unwrap().der().to_vec();
        (SigningKey::from_pkcs8(&key.serialize_der()).unwrap(), der)
    }

    /// The approver set: a JWKS with an unrelated key, plus a certificate approver.
    fn approvers(ca_pem: &str, id: &str) -> (KeySet, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca_pem).unwrap();
        let (unrelated, _) = SigningKey::generate(KeyKind::Es256).unwrap();
        let mut set = keyset(&unrelated);
        set.certificates.push(Arc::new(CertIdentity {
            ca: CaBundle::from_pem_file(&path).unwrap(),
            identity: id.parse().unwrap(),
        }));
        (set, dir)
    }

    #[test]
    fn a_record_with_a_chain_to_a_configured_approver_verifies_as_its_identity() {
        let (ca, pem) = ca("org");
        let (set, _d) = approvers(&pem, ID);
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let (key, der) = leaf_of(&ca, ID, false, KeyPair::generate_for(alg).unwrap());
            let jws = sign_with_chain(&claims(), &key, &[der]).unwrap();
            let rec = verify(&jws, &set).unwrap();
            assert_eq!(rec.kid, format!("x509:{ID}"), "{:?}", key.alg);
            assert_eq!(rec.signers, vec![format!("x509:{ID}")]);
            assert_eq!(rec.claims, claims());
        }
    }

    #[test]
    fn x5c_is_refused_where_no_certificate_approver_is_configured() {
        let (ca, _) = ca("org");
        let (key, der) = leaf(&ca, ID, false);
        let jws = sign_with_chain(&claims(), &key, &[der]).unwrap();
        assert_eq!(
            verify(&jws, &keyset(&key)).unwrap_err(),
            ApprovalError::Header("x5c is not accepted".into())
        );
    }

    #[test]
    fn another_ca_an_expired_leaf_another_identity_or_another_key_refuse_with_reasons() {
        let (org, pem) = ca("org");
        let (set, _d) = approvers(&pem, ID);
        let reason = |jws: &str| match verify(jws, &set) {
            Err(ApprovalError::Certificate(r)) => r,
            other => panic!("{other:?}"),
        };

        let (rogue, _) = ca("rogue");
        let (key, der) = leaf(&rogue, ID, false);
        let r = reason(&sign_with_chain(&claims(), &key, &[der]).unwrap());
        assert!(r.contains("does not validate to the CA bundle"), "{r}");

        let (key, der) = leaf(&org, ID, true);
        let r = reason(&sign_with_chain(&claims(), &key, &[der]).unwrap());
        assert!(r.contains("expired"), "{r}");

        let other = "spiffe://example.org/ns/dev/sa/intern";
        let (key, der) = leaf(&org, other, false);
        let r = reason(&sign_with_chain(&claims(), &key, &[der]).unwrap());
        assert!(r.contains(&format!("names {other}, not {ID}")), "{r}");

        // The chain is the approver's, the signature another key's (made by hand: the
        // signing helper refuses a chain that does not certify its key).
        let (_, der) = leaf(&org, ID, false);
        let (thief, _) = SigningKey::generate(KeyKind::Es256).unwrap();
        assert!(matches!(
            sign_with_chain(&claims(), &thief, std::slice::from_ref(&der)),
            Err(ApprovalError::Signing(_))
        ));
        let mut header = Header::new(thief.alg);
        header.typ = Some(RECORD_TYP.into());
        header.x5c = Some(vec![base64::engine::general_purpose::STANDARD.encode(&der)]);
        let jws = jsonwebtoken::encode(&header, &claims(), &thief.key).unwrap();
        assert_eq!(verify(&jws, &set).unwrap_err(), ApprovalError::Signature);

        // Not base64, or empty.
        let (key, _) = leaf(&org, ID, false);
        let mut header = Header::new(key.alg);
        header.typ = Some(RECORD_TYP.into());
        header.x5c = Some(vec!["***".into()]);
        let jws = jsonwebtoken::encode(&header, &claims(), &key.key).unwrap();
        assert!(reason(&jws).contains("not base64"));
        header.x5c = Some(vec![]);
        let jws = jsonwebtoken::encode(&header, &claims(), &key.key).unwrap();
        assert!(reason(&jws).contains("needs 1 to"));
    }

    #[test]
    fn a_co_signed_record_counts_a_key_and_a_certificate_approver() {
        let (ca, pem) = ca("org");
        let (leaf_key, der) = leaf(&ca, ID, false);
        let (owner, _) = SigningKey::generate(KeyKind::Es256).unwrap();
        let (mut set, _d) = approvers(&pem, ID);
        set.keys.extend(keyset(&owner).keys);
        let first = sign(&claims(), &owner).unwrap();
        // The second signature: the x5c header of a record signed with the chain, over the
        // first record's payload bytes.
        let x5c = sign_with_chain(&claims(), &leaf_key, &[der]).unwrap();
        let h = x5c.split('.').next().unwrap();
        let payload = first.split('.').nth(1).unwrap();
        let message = format!("{h}.{payload}");
        let sig =
            jsonwebtoken::crypto::sign(message.as_bytes(), &leaf_key.key, leaf_key.alg).unwrap();
        let owner_parts: Vec<&str> = first.split('.').collect();
        let record = serde_json::json!({
            "payload": payload,
            "signatures": [
                {"protected": owner_parts[0], "signature": owner_parts[2]},
                {"protected": h, "signature": sig},
            ]
        })
        .to_string();
        let rec = verify(&record, &set).unwrap();
        assert_eq!(rec.signers, vec![owner.kid.clone(), format!("x509:{ID}")]);
    }
}
