//! Callers identified by an mTLS client certificate: TLS termination on the listener
//! (rustls through pingora), client certificates verified against `listen.client_ca`, and
//! the certificate's SPIFFE ID (its one `spiffe://` URI SAN, as an X.509-SVID carries) made
//! a caller identity at the end of the handshake, once per connection.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;

use super::config::{CallerAuth, ListenTls};
use super::Caller;

/// The `iss` recorded for certificate callers (in the audit log and metrics context).
pub const CERTIFICATE_ISSUER: &str = "x509-svid";

/// A connection's verified certificate identity, stored in pingora's TLS digest.
pub struct CertCaller(pub Arc<Caller>);

/// The SPIFFE ID of a DER certificate: its only URI SAN, which must be a valid SPIFFE ID
/// ([`super::spiffe_id`], as for token callers). None when there is no SAN, several URI
/// SANs, a non-SPIFFE URI or an invalid one (`..` segments, an empty segment, a query).
pub fn spiffe_id(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let uri = uris.next()?;
    if uris.next().is_some() {
        return None;
    }
    // The same validation as a token caller's SPIFFE `sub` (no `..` segments and the like).
    super::spiffe_id(uri, None).ok()?;
    Some(uri.to_string())
}

struct PeerIdentity;

#[async_trait]
impl TlsAccept for PeerIdentity {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let der = tls.peer_certificate_der()?;
        let sub = spiffe_id(der)?;
        let exp = x509_parser::parse_x509_certificate(der)
            .ok()
            .map(|(_, c)| c.validity().not_after.timestamp().max(0) as u64)
            .unwrap_or(0);
        Some(Arc::new(CertCaller(Arc::new(Caller {
            iss: Arc::from(CERTIFICATE_ISSUER),
            headers: super::CallerHeaders::new(CERTIFICATE_ISSUER, &sub),
            sub: Arc::from(sub),
            exp,
        }))))
    }
}

/// The listener's TLS settings: certificate, key, and (with a client CA) client
/// certificate verification, required at the handshake when `caller_auth` needs a
/// certificate on every request.
pub fn tls_settings(tls: &ListenTls, auth: CallerAuth) -> Result<TlsSettings, String> {
    let mut settings =
        TlsSettings::with_callbacks(Box::new(PeerIdentity)).map_err(|e| e.to_string())?;
    let path = |p: &std::path::Path| p.to_str().map(str::to_string).ok_or("path is not UTF-8");
    settings
        .set_certificate_chain_file(&path(&tls.cert)?)
        .map_err(|e| format!("listen.tls_cert: {e}"))?;
    settings
        .set_private_key_file(&path(&tls.key)?)
        .map_err(|e| format!("listen.tls_key: {e}"))?;
    if let Some(ca) = &tls.client_ca {
        let mut roots = pingora::tls::RootCertStore::empty();
        pingora::tls::load_ca_file_into_store(ca, &mut roots)
            .map_err(|e| format!("listen.client_ca: {e}"))?;
        let builder = pingora::tls::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        );
        let builder = match auth {
            CallerAuth::Certificate | CallerAuth::TokenAndCertificate => builder,
            CallerAuth::Token | CallerAuth::TokenOrCertificate => builder.allow_unauthenticated(),
        };
        settings.set_client_cert_verifier(
            builder
                .build()
                .map_err(|e| format!("listen.client_ca: {e}"))?,
        );
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert(sans: Vec<SanType>) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.to_string().try_into().unwrap())
    }

    #[test]
    fn exactly_one_spiffe_uri_san_is_an_identity() {
        let id = "spiffe://example.org/ns/app/sa/client";
        assert_eq!(spiffe_id(&cert(vec![uri(id)])).as_deref(), Some(id));
        assert_eq!(
            spiffe_id(&cert(vec![
                uri(id),
                SanType::DnsName("x.example.org".try_into().unwrap())
            ]))
            .as_deref(),
            Some(id),
            "DNS SANs beside it are fine"
        );
        assert_eq!(
            spiffe_id(&cert(vec![uri(id), uri("spiffe://example.org/b")])),
            None
        );
        assert_eq!(spiffe_id(&cert(vec![uri("https://example.org/x")])), None);
        // Validated like a token caller's sub.
        for bad in [
            "spiffe://example.org/ns/../admin",
            "spiffe://example.org/ns//x",
            "spiffe://example.org/./x",
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://Example.org/x",
            "spiffe://example.org/x?y",
        ] {
            assert_eq!(spiffe_id(&cert(vec![uri(bad)])), None, "{bad}");
        }
        assert_eq!(spiffe_id(&cert(vec![])), None);
        assert_eq!(spiffe_id(b"not a certificate"), None);
    }
}
