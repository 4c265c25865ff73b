//! mTLS callers: TLS terminated on the listener, client certificates verified against
//! `listen.client_ca`, the certificate's SPIFFE ID as the caller, alone or with a token.

use std::time::Duration;

use crate::support::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

struct Pki {
    ca_pem: String,
    ca: rcgen::Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            ca: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf certificate and key (PEM) with the given SANs.
    fn leaf(&self, sans: Vec<SanType>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.to_string().try_into().unwrap())
}

struct Tls {
    pg: Provgate,
    pki: Pki,
}

async fn start(fx: &Fixture, upstream: std::net::SocketAddr, caller_auth: &str) -> Tls {
    let pki = Pki::new("provgate test CA");
    let (cert, key) = pki.leaf(vec![SanType::IpAddress("127.0.0.1".parse().unwrap())]);
    std::fs::write(fx.path("server.pem"), cert).unwrap();
    std::fs::write(fx.path("server.key"), key).unwrap();
    std::fs::write(fx.path("client-ca.pem"), &pki.ca_pem).unwrap();
    let (listen, admin) = (free_port(), free_port());
    let config = fx.config(listen, admin, upstream).replace(
        &format!("[listen]\naddress = \"{listen}\""),
        &format!(
            "[listen]\naddress = \"{listen}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\ncaller_auth = \"{caller_auth}\"",
            fx.path("server.pem").display(),
            fx.path("server.key").display(),
            fx.path("client-ca.pem").display()
        ),
    );
    assert!(config.contains("client_ca"));
    // Either a token or a certificate may name a SPIFFE ID: the token issuer (OIDC, which may
    // assert any name) must then be qualified, or it could mint a certificate caller's name.
    let config = if caller_auth == "token_or_certificate" {
        config.replacen(
            "audiences = [\"provgate\"]",
            "audiences = [\"provgate\"]\nqualified = true",
            1,
        )
    } else {
        config
    };
    let pg = Provgate::spawn(fx.dir.path(), "tls", &config, listen, admin, None).await;
    pg.wait_ready().await;
    Tls { pg, pki }
}

/// An HTTPS client trusting the test CA, with an optional client certificate.
fn client(server_ca: &str, identity: Option<(String, String)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(Duration::from_secs(10))
        .add_root_certificate(reqwest::Certificate::from_pem(server_ca.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

async fn call(
    c: &reqwest::Client,
    t: &Tls,
    token: Option<&str>,
) -> Result<(u16, String), reqwest::Error> {
    let mut req = c.get(format!("https://{}/v1/models", t.pg.listen));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    Ok((status, body["error"].as_str().unwrap_or("").to_string()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_with_a_spiffe_id_is_the_caller() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    let up = Upstream::start().await;
    let t = start(&fx, up.addr, "certificate").await;

    let svid = t.pki.leaf(vec![uri(CALLER)]);
    let c = client(&t.pki.ca_pem, Some(svid));
    assert_eq!(call(&c, &t, None).await.unwrap(), (200, String::new()));
    assert_eq!(up.requests()[0].headers["x-provgate-caller"], CALLER);

    // A SPIFFE ID the record does not name is a policy denial, not a TLS failure.
    let other = t.pki.leaf(vec![uri("spiffe://example.org/ns/other/sa/x")]);
    let c = client(&t.pki.ca_pem, Some(other));
    assert_eq!(
        call(&c, &t, None).await.unwrap(),
        (403, "caller_not_allowed".into())
    );

    // A certificate from another CA, and no certificate, are refused at the handshake.
    let foreign = Pki::new("someone else's CA").leaf(vec![uri(CALLER)]);
    assert!(call(&client(&t.pki.ca_pem, Some(foreign)), &t, None)
        .await
        .is_err());
    assert!(call(&client(&t.pki.ca_pem, None), &t, None).await.is_err());
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_and_certificate_must_name_the_same_caller() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    let up = Upstream::start().await;
    let t = start(&fx, up.addr, "token_and_certificate").await;
    let c = client(&t.pki.ca_pem, Some(t.pki.leaf(vec![uri(CALLER)])));
    assert_eq!(call(&c, &t, Some(&fx.token(CALLER))).await.unwrap().0, 200);
    let someone_else = fx.token("spiffe://example.org/ns/app/sa/another");
    assert_eq!(
        call(&c, &t, Some(&someone_else)).await.unwrap(),
        (401, "token_invalid".into())
    );
    assert_eq!(
        call(&c, &t, None).await.unwrap(),
        (401, "token_missing".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn token_or_certificate_accepts_either() {
    let fx = Fixture::new();
    let mut claims = fx.claims();
    // Bare patterns match certificate callers; the (qualified) token issuer's are named.
    claims
        .callers
        .push(provgate::approval::CallerPattern::Qualified {
            iss: ISSUER.into(),
            sub: "spiffe://example.org/ns/app/sa/*".into(),
        });
    fx.approve("rec.jwt", &claims);
    let up = Upstream::start().await;
    let t = start(&fx, up.addr, "token_or_certificate").await;
    let anonymous = client(&t.pki.ca_pem, None);
    assert_eq!(
        call(&anonymous, &t, Some(&fx.token(CALLER)))
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        call(&anonymous, &t, None).await.unwrap(),
        (401, "token_missing".into())
    );
    let svid = client(&t.pki.ca_pem, Some(t.pki.leaf(vec![uri(CALLER)])));
    assert_eq!(call(&svid, &t, None).await.unwrap().0, 200);
    let issuers: Vec<_> = up
        .requests()
        .iter()
        .map(|r| {
            r.headers["x-provgate-caller-issuer"]
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(issuers, [ISSUER, "x509-svid"]);
}
