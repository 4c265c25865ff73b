use super::*;

#[test]
fn generated_keys_round_trip_through_pem_and_jwks() {
    for kind in [KeyKind::Es256, KeyKind::Es384, KeyKind::Ed25519] {
        let (key, pem_text) = SigningKey::generate(kind).unwrap();
        let block = pem::parse(pem_text.as_bytes()).unwrap();
        let again = SigningKey::from_pkcs8(block.contents()).unwrap();
        assert_eq!(again.kid, key.kid, "thumbprint is stable for {kind:?}");
        let doc = jwks_document(std::slice::from_ref(&key.public_jwk));
        let set = KeySet::from_jwks_json(&doc, "test").unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.keys[0].algorithms, vec![key.alg]);
        assert_eq!(set.keys[0].kid.as_deref(), Some(key.kid.as_str()));
    }
}

#[test]
fn symmetric_private_and_mismatched_keys_are_skipped() {
    let doc = r#"{"keys":[
        {"kty":"oct","k":"c2VjcmV0","kid":"h"},
        {"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI","kid":"p"},
        {"kty":"EC","crv":"P-256","alg":"RS256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"m"},
        {"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"ok"}
    ]}"#;
    let set = KeySet::from_jwks_json(doc, "test").unwrap();
    assert_eq!(set.keys.len(), 1, "skipped: {:?}", set.skipped);
    assert_eq!(set.keys[0].kid.as_deref(), Some("ok"));
    assert_eq!(set.skipped.len(), 3);
    assert_eq!(
        set.candidates(Some("ok"), Algorithm::ES256).count(),
        1,
        "kid and alg select the key"
    );
    assert_eq!(set.candidates(Some("ok"), Algorithm::RS256).count(), 0);
    assert_eq!(set.candidates(Some("other"), Algorithm::ES256).count(), 0);
}

#[test]
fn spiffe_bundle_uses_are_told_apart() {
    let key = |u: &str| {
        format!(
            r#"{{"kty":"EC","crv":"P-256","use":"{u}","kid":"{u}","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}}"#
        )
    };
    let doc = format!(
        r#"{{"spiffe_sequence":1,"spiffe_refresh_hint":300,"keys":[{},{},{}]}}"#,
        key("jwt-svid"),
        key("x509-svid"),
        key("enc")
    );
    let set = KeySet::from_jwks_json(&doc, "bundle").unwrap();
    let kids: Vec<_> = set.keys.iter().map(|k| k.kid.clone().unwrap()).collect();
    assert_eq!(kids, ["jwt-svid"]);
    assert_eq!(set.skipped.len(), 2);
}

#[test]
fn garbage_is_a_clear_error() {
    assert!(KeySet::from_jwks_json("not json", "x").is_err());
    assert!(KeySet::from_jwks_json("{}", "x").is_err());
}

fn ec_key(kid: &str) -> String {
    format!(
        r#"{{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"{kid}"}}"#
    )
}

fn rsa_key(kid: &str, modulus_bytes: usize) -> String {
    use base64::Engine as _;
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(vec![0xc5u8; modulus_bytes]);
    format!(r#"{{"kty":"RSA","n":"{n}","e":"AQAB","kid":"{kid}"}}"#)
}

#[test]
fn rsa_keys_over_the_size_cap_are_skipped() {
    let doc = format!(
        r#"{{"keys":[{},{},{}]}}"#,
        rsa_key("r2048", 256),
        rsa_key("r4096", 512),
        rsa_key("r8192", 1024)
    );
    let set = KeySet::from_jwks_json(&doc, "test").unwrap();
    let kids: Vec<_> = set.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
    assert_eq!(kids, ["r2048", "r4096"]);
    assert_eq!(set.skipped.len(), 1);
    assert!(set.skipped[0].contains("8192 bits"), "{:?}", set.skipped);
    assert_eq!(rsa_bits("AQAB"), Some(17));
}

#[test]
fn a_set_keeps_at_most_its_cap_of_keys_and_a_token_tries_a_few() {
    let keys: Vec<String> = (0..100).map(|i| ec_key(&format!("k{i}"))).collect();
    let doc = format!(r#"{{"keys":[{}]}}"#, keys.join(","));
    let set = KeySet::from_jwks_json(&doc, "test").unwrap();
    assert_eq!(set.keys.len(), MAX_KEYS_PER_SET);
    assert!(
        set.skipped.iter().any(|s| s.contains("more than 64 keys")),
        "{:?}",
        set.skipped
    );
    // Without a kid, a forged token costs at most MAX_KEYS_TRIED checks.
    assert_eq!(
        set.candidates(None, Algorithm::ES256).count(),
        MAX_KEYS_TRIED
    );
    assert_eq!(set.candidates(Some("k63"), Algorithm::ES256).count(), 1);
    // Duplicate kids do not multiply the cost either.
    let dups: Vec<String> = (0..10).map(|_| ec_key("same")).collect();
    let set = KeySet::from_jwks_json(&format!(r#"{{"keys":[{}]}}"#, dups.join(",")), "t").unwrap();
    assert_eq!(
        set.candidates(Some("same"), Algorithm::ES256).count(),
        MAX_KEYS_TRIED
    );
}
