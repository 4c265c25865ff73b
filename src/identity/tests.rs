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
    // ...nor afterwards, at any time: the failure evicted it from this thread's tokens.
    assert!(RECENT.with(|r| r.borrow().get(v.id, t.as_bytes()).is_none()));
}

#[test]
fn the_per_thread_tokens_belong_to_one_verifier() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let (other_key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let trusting = verifier(&key);
    let stranger = verifier(&other_key);
    let now = crate::unix_now();
    let t = token(&key, claims(now));
    trusting.verify(&t, now).unwrap();
    trusting.verify(&t, now).unwrap();
    assert_eq!(trusting.metrics.token_cache_hits.get(), 1);
    // The same thread, another verifier that does not trust the key: no shortcut.
    assert_eq!(stranger.verify(&t, now), Err(TokenError::UnknownKey));
    // A token one character off is not the cached one.
    let mut near = t.clone().into_bytes();
    let last = near.len() - 1;
    near[last] = if near[last] == b'A' { b'B' } else { b'A' };
    let near = String::from_utf8(near).unwrap();
    assert!(trusting.verify(&near, now).is_err());
}

#[test]
fn the_per_thread_tokens_are_bounded() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let v = verifier(&key);
    let now = crate::unix_now();
    let tokens: Vec<String> = (0..RECENT_PER_THREAD + 2)
        .map(|i| {
            let mut c = claims(now);
            c["jti"] = serde_json::json!(i);
            token(&key, c)
        })
        .collect();
    for t in &tokens {
        v.verify(t, now).unwrap();
    }
    RECENT.with(|r| {
        let r = r.borrow();
        let held = tokens
            .iter()
            .filter(|t| r.get(v.id, t.as_bytes()).is_some())
            .count();
        assert_eq!(held, RECENT_PER_THREAD, "the oldest were replaced");
        assert!(r.get(v.id, tokens[0].as_bytes()).is_none());
    });
    // The replaced ones still hit the shared cache: no second signature check.
    v.verify(&tokens[0], now).unwrap();
    assert_eq!(v.metrics.token_cache_misses.get(), tokens.len() as u64);
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

#[test]
fn the_byte_reading_of_a_bearer_value_agrees_or_finds_nothing() {
    for v in [
        &b"Bearer abc"[..],
        b"bearer  abc ",
        b"BEARER\tabc",
        b" Bearer abc\t",
        b"Basic abc",
        b"Bearer",
        b"Bearer ",
        b"Bearer a b",
        &[0xff, 0xfe],
    ] {
        assert_eq!(bearer_bytes(v), bearer(v).map(str::as_bytes), "{v:?}");
    }
    // Unicode whitespace: `bearer` trims it, the byte reading keeps it in the token (a token
    // no verified token equals), or does not see the scheme at all; `bearer` then decides.
    let nbsp = "Bearer abc\u{a0}".as_bytes();
    assert_eq!(bearer(nbsp), Some("abc"));
    assert_eq!(bearer_bytes(nbsp), Some("abc\u{a0}".as_bytes()));
    assert_eq!(bearer_bytes("\u{a0}Bearer abc".as_bytes()), None);
}

#[test]
fn a_recent_token_is_found_by_its_bytes_and_only_while_it_holds() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let v = verifier(&key);
    let now = crate::unix_now();
    let token = token(&key, claims(now));
    assert!(
        v.recent(token.as_bytes(), now).is_none(),
        "not verified yet"
    );
    let caller = v.verify(&token, now).unwrap();
    let hit = v.recent(token.as_bytes(), now).unwrap().unwrap();
    assert!(Arc::ptr_eq(&hit, &caller));
    // Past its expiry it is verified afresh (and refused), not answered from the cache.
    assert!(v.recent(token.as_bytes(), now + 3600).is_none());
}

fn profiled(key: &SigningKey, profile: Profile) -> TokenVerifier {
    let keys =
        KeySet::from_jwks_json(&jwks_document(std::slice::from_ref(&key.public_jwk)), "t").unwrap();
    TokenVerifier::new(
        vec![Issuer {
            profile,
            ..Issuer::with_keys(ISS, vec!["provgate".into()], vec![Algorithm::ES256], keys)
        }],
        5,
        100,
        Arc::new(Metrics::new()),
    )
}

#[test]
fn spiffe_profile_requires_an_id_in_the_trust_domain() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let v = profiled(
        &key,
        Profile::Spiffe {
            trust_domain: "example.org".into(),
        },
    );
    let now = crate::unix_now();
    let with_sub = |sub: &str| {
        let mut c = claims(now);
        c["sub"] = serde_json::json!(sub);
        token(&key, c)
    };
    assert!(v
        .verify(&with_sub("spiffe://example.org/ns/app/sa/client"), now)
        .is_ok());
    for bad in [
        "spiffe://example.org",
        "spiffe://example.org/",
        "spiffe://example.org.evil/ns/app",
        "spiffe://other.org/ns/app",
        "spiffe://example.org/ns//app",
        "spiffe://example.org/ns/../app",
        "system:serviceaccount:ml:client",
    ] {
        assert!(
            matches!(v.verify(&with_sub(bad), now), Err(TokenError::Claims(_))),
            "{bad}"
        );
    }
}

#[test]
fn kubernetes_profile_checks_sub_against_the_kubernetes_claim() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let v = profiled(&key, Profile::Kubernetes);
    let now = crate::unix_now();
    let sa = |sub: &str, ns: &str, name: &str| {
        let mut c = claims(now);
        c["sub"] = serde_json::json!(sub);
        c["kubernetes.io"] = serde_json::json!({
            "namespace": ns,
            "serviceaccount": {"name": name, "uid": "0b5a1f34"},
            "pod": {"name": "client-7d9f", "uid": "c1"}
        });
        token(&key, c)
    };
    let ok = v
        .verify(&sa("system:serviceaccount:ml:client", "ml", "client"), now)
        .unwrap();
    assert_eq!(&*ok.sub, "system:serviceaccount:ml:client");
    assert!(v
        .verify(
            &sa("system:serviceaccount:ml:client", "prod", "client"),
            now
        )
        .is_err());
    assert!(v
        .verify(&sa("system:serviceaccount:ml:client", "ml", "other"), now)
        .is_err());
    assert!(v
        .verify(&sa("spiffe://example.org/x", "ml", "client"), now)
        .is_err());
    let mut no_claim = claims(now);
    no_claim["sub"] = serde_json::json!("system:serviceaccount:ml:client");
    assert_eq!(
        v.verify(&token(&key, no_claim), now),
        Err(TokenError::Claims("kubernetes.io claim is missing"))
    );
}

fn key_set(keys: &[&SigningKey]) -> KeySet {
    let jwks: Vec<_> = keys.iter().map(|k| k.public_jwk.clone()).collect();
    KeySet::from_jwks_json(&jwks_document(&jwks), "t").unwrap()
}

/// Issue 16: a cached token is re-judged when its issuer's keys change: kept (re-stamped,
/// no new signature check) while its key is still there, refused once it is gone, through
/// the per-thread tokens and the shared cache alike.
#[test]
fn a_cached_token_follows_its_key_out_of_the_key_set() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let (next, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let v = verifier(&key);
    let issuer = v.issuers().next().unwrap().clone();
    let now = crate::unix_now();
    let t = token(&key, claims(now));
    v.verify(&t, now).unwrap();
    let misses = v.metrics.token_cache_misses.get();

    // A new set that keeps the key: still a cache hit, and re-stamped.
    issuer.replace_keys(key_set(&[&key, &next]));
    v.verify(&t, now).unwrap();
    v.verify(&t, now).unwrap();
    assert_eq!(
        v.metrics.token_cache_misses.get(),
        misses,
        "no new verification"
    );

    // The key is gone: refused, from this thread's tokens and from the shared cache.
    issuer.replace_keys(key_set(&[&next]));
    assert_eq!(v.verify(&t, now), Err(TokenError::UnknownKey));
    assert!(RECENT.with(|r| r.borrow().get(v.id, t.as_bytes()).is_none()));
    assert_eq!(v.verify(&t, now), Err(TokenError::UnknownKey));
    // Another thread (no per-thread token) reaches the shared cache: refused too.
    let refused = std::thread::scope(|s| s.spawn(|| v.verify(&t, now)).join().unwrap());
    assert_eq!(refused, Err(TokenError::UnknownKey));

    // The key comes back (a rollback of the rotation): the token verifies again.
    issuer.replace_keys(key_set(&[&key]));
    assert!(v.verify(&t, now).is_ok());
}

/// A trusted issuer's token whose `exp` is at the top of `u64` (plus the leeway, beyond it)
/// verifies as a far-future token and is cached, without an overflow (found by the `token`
/// fuzz target).
#[test]
fn an_exp_at_the_top_of_u64_is_far_future_not_a_crash() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let v = verifier(&key);
    let now = crate::unix_now();
    let mut c = claims(now);
    c["exp"] = serde_json::json!(u64::MAX);
    let t = token(&key, c);
    assert!(v.verify_uncached(&t, now).is_ok());
    assert!(v.verify(&t, now).is_ok());
    assert!(v.verify(&t, now).is_ok(), "cached");
}
