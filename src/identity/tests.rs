use super::*;
use crate::keys::{jwks_document, KeyKind, SigningKey};

const ISS: &str = "https://issuer.example.org";

fn verifier(key: &SigningKey) -> TokenVerifier {
    let keys =
        KeySet::from_jwks_json(&jwks_document(std::slice::from_ref(&key.public_jwk)), "t").unwrap();
    TokenVerifier::new(
        vec![Issuer::with_keys(
            ISS,
            vec!["provgate".into()],
            vec![Algorithm::ES256, Algorithm::EdDSA],
            keys,
        )],
        5,
        1000,
        Arc::new(Metrics::new()),
    )
}

fn token(key: &SigningKey, claims: serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &claims, &key.key).unwrap()
}

fn claims(now: u64) -> serde_json::Value {
    serde_json::json!({"iss": ISS, "sub": "spiffe://example.org/c", "aud": ["provgate"], "exp": now + 60, "nbf": now - 1})
}

fn b64(v: serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap())
}

#[test]
fn a_good_token_verifies_and_is_cached() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let v = verifier(&key);
    let now = crate::unix_now();
    let t = token(&key, claims(now));
    let c = v.verify(&t, now).unwrap();
    assert_eq!(&*c.sub, "spiffe://example.org/c");
    assert_eq!(&*c.iss, ISS);
    assert_eq!(v.metrics.token_cache_misses.get(), 1);
    v.verify(&t, now).unwrap();
    assert_eq!(v.metrics.token_cache_hits.get(), 1);
    // Past exp + leeway, the cached entry no longer counts.
    assert_eq!(v.verify(&t, now + 66), Err(TokenError::Expired));
}

#[test]
fn eddsa_tokens_verify() {
    let (key, _) = SigningKey::generate(KeyKind::Ed25519).unwrap();
    let now = crate::unix_now();
    verifier(&key)
        .verify(&token(&key, claims(now)), now)
        .unwrap();
}

#[test]
fn bad_tokens_are_refused_for_the_right_reason() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let (other, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let v = verifier(&key);
    let now = crate::unix_now();
    let mut c = claims(now);
    c["aud"] = serde_json::json!(["someone-else"]);
    assert_eq!(v.verify(&token(&key, c), now), Err(TokenError::Audience));
    let mut c = claims(now);
    c["exp"] = serde_json::json!(now - 60);
    assert_eq!(v.verify(&token(&key, c), now), Err(TokenError::Expired));
    let mut c = claims(now);
    c["nbf"] = serde_json::json!(now + 600);
    assert_eq!(v.verify(&token(&key, c), now), Err(TokenError::NotYetValid));
    let mut c = claims(now);
    c["iss"] = serde_json::json!("https://evil.example.org");
    assert_eq!(
        v.verify(&token(&key, c), now),
        Err(TokenError::UnknownIssuer)
    );
    let mut c = claims(now);
    c.as_object_mut().unwrap().remove("exp");
    assert!(v.verify(&token(&key, c), now).is_err(), "exp is required");
    assert_eq!(
        v.verify(&token(&other, claims(now)), now),
        Err(TokenError::UnknownKey)
    );
    // Same kid as the trusted key, signed by another: signature failure.
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    let forged = jsonwebtoken::encode(&header, &claims(now), &other.key).unwrap();
    assert_eq!(v.verify(&forged, now), Err(TokenError::Signature));
    assert_eq!(v.verify("garbage", now), Err(TokenError::Malformed));
    // A replayed forgery is answered from the rejection cache, without crypto.
    let misses = v.metrics.token_cache_misses.get();
    assert_eq!(v.verify(&forged, now), Err(TokenError::Signature));
    assert_eq!(v.metrics.token_cache_misses.get(), misses);
    assert_eq!(v.verify("a.b.c", now), Err(TokenError::Malformed));
}

#[test]
fn algorithm_attacks_are_refused() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let v = verifier(&key);
    let now = crate::unix_now();
    let payload = b64(claims(now));
    let none = format!("{}.{}.", b64(serde_json::json!({"alg":"none"})), payload);
    assert_eq!(v.verify(&none, now), Err(TokenError::Header("alg none")));
    // HS256 "signed" with the public key's JSON as the secret.
    let secret = serde_json::to_vec(&key.public_jwk).unwrap();
    let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
    h.kid = Some(key.kid.clone());
    let hs = jsonwebtoken::encode(
        &h,
        &claims(now),
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .unwrap();
    assert_eq!(
        v.verify(&hs, now),
        Err(TokenError::Header("HMAC algorithms"))
    );
    for (name, header) in [
        (
            "jku",
            serde_json::json!({"alg":"ES256","kid":key.kid,"jku":"https://evil/jwks"}),
        ),
        (
            "crit",
            serde_json::json!({"alg":"ES256","kid":key.kid,"crit":["b64"],"b64":false}),
        ),
        (
            "x5u",
            serde_json::json!({"alg":"ES256","kid":key.kid,"x5u":"https://evil/cert"}),
        ),
    ] {
        let t = format!("{}.{}.AAAA", b64(header), payload);
        assert!(
            matches!(v.verify(&t, now), Err(TokenError::Header(_))),
            "{name}"
        );
    }
    // An algorithm the issuer does not allow.
    let t = format!(
        "{}.{}.AAAA",
        b64(serde_json::json!({"alg":"RS256","kid":key.kid})),
        payload
    );
    assert_eq!(v.verify(&t, now), Err(TokenError::Algorithm));
}

#[test]
fn bearer_header_parsing() {
    assert_eq!(bearer(b"Bearer abc"), Some("abc"));
    assert_eq!(bearer(b"bearer  abc "), Some("abc"));
    assert_eq!(bearer(b"Basic abc"), None);
    assert_eq!(bearer(b"Bearer"), None);
    assert_eq!(bearer(b"Bearer "), None);
    assert_eq!(bearer(&[0xff, 0xfe]), None);
}
