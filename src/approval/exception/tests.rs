use super::*;
use crate::approval::{self, Verified};
use crate::keys::{jwks_document, KeyKind};

fn claims() -> ExceptionClaims {
    ExceptionClaims {
        iss: "security@example.org".into(),
        sub: "m".into(),
        jti: "x-1".into(),
        iat: 1_700_000_000,
        nbf: None,
        exp: 1_700_086_400,
        version_id: "v7".into(),
        artefact: ArtefactRef {
            digest: format!("sha256:{}", "11".repeat(32)).parse().unwrap(),
            signer: None,
            ollama_digest: None,
            base_digest: None,
        },
        waives: Waiver::Evidence("red-team".into()),
        reason: "report due Friday".into(),
        ticket: "https://tickets.example.org/SEC-1".into(),
    }
}

fn keyset(key: &SigningKey) -> KeySet {
    KeySet::from_jwks_json(&jwks_document(std::slice::from_ref(&key.public_jwk)), "t").unwrap()
}

#[test]
fn an_exception_signs_and_verifies_and_is_told_apart_from_a_record() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let jws = sign(&claims(), &key).unwrap();
    let e = verify(&jws, &keyset(&key)).unwrap();
    assert_eq!(e.claims, claims());
    assert_eq!(e.kid, key.kid);
    assert_eq!(e.lifetime(), 86_400);
    assert!(approval::is_exception(&jws));
    assert!(matches!(
        approval::verify_any(&jws, &keyset(&key)),
        Ok(Verified::Exception(_))
    ));
    // The record verifier refuses it (typ), so an exception can never pass as a record.
    assert_eq!(
        approval::verify(&jws, &keyset(&key)).unwrap_err(),
        ApprovalError::Typ(approval::RECORD_TYP)
    );
    // Another key's signature does not verify.
    let (other, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    assert!(verify(&jws, &keyset(&other)).is_err());
}

#[test]
fn the_waiver_reads_as_one_tagged_field() {
    let v = serde_json::to_value(claims()).unwrap();
    assert_eq!(v["waives"], serde_json::json!({"evidence": "red-team"}));
    let role: Waiver = serde_json::from_str(r#"{"role": "security"}"#).unwrap();
    assert_eq!(role, Waiver::Role("security".into()));
    assert_eq!(role.describe(), "role:security");
    // Two things at once, or something else, is not a waiver.
    assert!(serde_json::from_str::<Waiver>(r#"{"role": "a", "evidence": "b"}"#).is_err());
    assert!(serde_json::from_str::<Waiver>(r#"{"tier": "a"}"#).is_err());
}

#[test]
fn shape_errors_are_refused_at_signing_and_at_verification() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let bad: [fn(&mut ExceptionClaims); 5] = [
        |c| c.reason = " ".into(),
        |c| c.ticket = "SEC-1".into(),
        |c| c.ticket = "https://tickets/SEC 1".into(),
        |c| c.waives = Waiver::Role(String::new()),
        |c| c.exp = c.iat,
    ];
    for f in bad {
        let mut c = claims();
        f(&mut c);
        assert!(sign(&c, &key).is_err(), "{c:?}");
        // Signed by hand, it still does not verify.
        let mut header = jsonwebtoken::Header::new(key.alg);
        header.typ = Some(EXCEPTION_TYP.into());
        header.kid = Some(key.kid.clone());
        let jws = jsonwebtoken::encode(&header, &c, &key.key).unwrap();
        assert!(
            matches!(verify(&jws, &keyset(&key)), Err(ApprovalError::Payload(_))),
            "{c:?}"
        );
    }
    assert!(is_uri("urn:ticket:SEC-1"));
    assert!(!is_uri("1http://x"));
}
