//! Approval policy through the real binary: issuer-qualified callers (a token from one
//! issuer never matches a caller pattern meant for another), and configurations whose
//! issuers could assert the same caller names refused at `-t`.

use std::time::Duration;

use provgate::approval::CallerPattern;
use provgate::keys::{jwks_document, KeyKind, SigningKey};

use crate::support::*;

const ISSUER_B: &str = "https://issuer-b.test";

/// A second issuer, "issuer B" (another cluster), its key file written into the fixture;
/// returns its signing key and the `[[callers.issuers]]` block (with `extra` lines).
fn issuer_b(fx: &Fixture, extra: &str) -> (SigningKey, String) {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let file = fx.path("issuer-b.jwks.json");
    std::fs::write(&file, jwks_document(std::slice::from_ref(&key.public_jwk))).unwrap();
    let block = format!(
        "[[callers.issuers]]\nissuer = \"{ISSUER_B}\"\njwks_file = \"{}\"\naudiences = [\"provgate\"]\n{extra}\n",
        file.display()
    );
    (key, block)
}

fn token_b(key: &SigningKey, sub: &str) -> String {
    provgate::identity::mint_token(
        key,
        ISSUER_B,
        sub,
        &["provgate".to_string()],
        Duration::from_secs(600),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn issuer_b_cannot_use_issuer_a_caller_names() {
    let mut fx = Fixture::new();
    let (key_b, block) = issuer_b(&fx, "qualified = true");
    fx.extra = block;
    // The record names CALLER bare: meant for issuer A's callers.
    fx.approve("rec.jwt", &fx.claims());
    let (up, pg) = started(&fx).await;

    let a = pg.get("/v1/models", Some(&fx.token(CALLER))).await;
    assert_eq!(a.status(), 200);
    let seen = &up.requests()[0];
    assert_eq!(seen.headers["x-provgate-caller"], CALLER);
    assert_eq!(seen.headers["x-provgate-caller-issuer"], ISSUER);

    // Issuer B vouches for the same name: not the caller the record means.
    let b = pg.get("/v1/models", Some(&token_b(&key_b, CALLER))).await;
    assert_eq!(b.status(), 403);
    let body: serde_json::Value = b.json().await.unwrap();
    assert_eq!(body["error"], "caller_not_allowed");
    assert_eq!(up.requests().len(), 1);

    // A newer record that names issuer B's caller explicitly lets it in, and only it.
    let mut c = fx.claims();
    c.jti = "rec-2".into();
    c.version_id = "v43".into();
    c.iat += 1;
    c.callers = vec![CallerPattern::Qualified {
        iss: ISSUER_B.into(),
        sub: CALLER.into(),
    }];
    fx.approve("rec-2.jwt", &c);
    let token = token_b(&key_b, CALLER);
    pg.eventually(Duration::from_secs(10), || async {
        pg.get("/v1/models", Some(&token)).await.status() == 200
    })
    .await;
    let last = up.requests().pop().unwrap();
    assert_eq!(last.headers["x-provgate-caller"], CALLER);
    assert_eq!(last.headers["x-provgate-caller-issuer"], ISSUER_B);
    assert_eq!(last.headers["x-provgate-version-id"], "v43");
    // A client cannot claim an issuer for itself.
    let spoof = pg
        .client
        .get(pg.url("/v1/models"))
        .bearer_auth(fx.token(CALLER))
        .header("x-provgate-caller-issuer", ISSUER_B)
        .send()
        .await
        .unwrap();
    assert_eq!(spoof.status(), 200);
    let last = up.requests().pop().unwrap();
    assert_eq!(
        last.headers
            .get_all("x-provgate-caller-issuer")
            .iter()
            .count(),
        1
    );
    assert_eq!(last.headers["x-provgate-caller-issuer"], ISSUER);
}

#[test]
fn two_issuers_that_could_assert_the_same_names_are_refused_at_check() {
    let mut fx = Fixture::new();
    let (_, block) = issuer_b(&fx, "");
    fx.extra = block;
    let listen = free_port();
    let cfg = fx.path("two-issuers.toml");
    std::fs::write(&cfg, fx.config(listen, free_port(), free_port())).unwrap();
    let out = run_cli(&["run", "-c", cfg.to_str().unwrap(), "-t"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted:\n{stderr}");
    assert!(
        stderr.contains("callers.issuers[1].qualified"),
        "no reason given:\n{stderr}"
    );

    // Qualifying issuer B makes the same configuration acceptable.
    let (_, block) = issuer_b(&fx, "qualified = true");
    fx.extra = block;
    std::fs::write(&cfg, fx.config(listen, free_port(), free_port())).unwrap();
    let out = run_cli(&["run", "-c", cfg.to_str().unwrap(), "-t"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
