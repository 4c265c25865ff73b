//! Certificate-bound signers: a configured CA bundle plus the identity a leaf certificate must
//! carry (a SPIFFE ID or other URI SAN, an email SAN, a DNS SAN), and the check that a chain
//! presented with a signature (an OMS `certificate` bundle's `x509CertificateChain`, an
//! approval record's `x5c`) validates to that CA and names that identity.
//!
//! Path building, signatures on certificates, validity of the leaf and intermediates, basic and
//! name constraints are rustls-webpki's; reading SANs, key usage and the CA's own validity is
//! x509-parser's. No cryptography is written here. This module is a leaf: it knows no
//! signature format, record, watcher or configuration section, and must import none of them
//! (callers verify the signed message with [`Leaf::verify`]).

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER contents without tag and length.
const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// The most certificates a presented chain may hold (leaf and intermediates).
pub const MAX_CHAIN: usize = 8;

/// Signature algorithms accepted on certificates of a chain.
static CHAIN_ALGS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// Why a CA bundle, an identity or a presented chain was refused.
#[derive(Debug, thiserror::Error)]
pub enum X509Error {
    #[error(transparent)]
    Read(#[from] crate::kit::file::ReadError),
    #[error("{path}: {detail}")]
    Bundle { path: String, detail: String },
    #[error(
        "identity {0:?}: give spiffe://..., another URI (scheme://...), email:ADDRESS or dns:NAME"
    )]
    Identity(String),
    #[error("certificate {index} of the chain: {detail}")]
    Certificate { index: usize, detail: String },
    #[error("the chain is empty")]
    Empty,
    #[error("the chain holds more than {MAX_CHAIN} certificates")]
    TooLong,
    #[error("the chain does not validate to the CA bundle: {0}")]
    Chain(String),
    #[error("the CA certificate {subject} is not valid now (not before {not_before}, not after {not_after})")]
    CaValidity {
        subject: String,
        not_before: String,
        not_after: String,
    },
    #[error("the leaf certificate's key usage does not allow digitalSignature")]
    KeyUsage,
    #[error("the leaf certificate names {found}, not {want}")]
    WrongIdentity { want: String, found: String },
    #[error("the signature does not verify with the leaf certificate's key")]
    Signature,
}

// === Identity ===

/// The identity a leaf must carry in its subject alternative names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A URI SAN, e.g. a SPIFFE ID `spiffe://org/ns/ci/sa/signer`; compared exactly.
    Uri(String),
    /// An rfc822Name SAN; compared case-insensitively.
    Email(String),
    /// A dNSName SAN; compared case-insensitively, no wildcards.
    Dns(String),
}

impl std::str::FromStr for Identity {
    type Err = X509Error;

    /// `email:ADDRESS`, `dns:NAME`, `uri:URI`, or a URI with a scheme (`spiffe://...`).
    fn from_str(s: &str) -> Result<Identity, X509Error> {
        let bad = || X509Error::Identity(s.to_string());
        let nonempty = |v: &str| {
            (!v.trim().is_empty())
                .then(|| v.to_string())
                .ok_or_else(bad)
        };
        if let Some(v) = s.strip_prefix("email:") {
            return Ok(Identity::Email(nonempty(v)?));
        }
        if let Some(v) = s.strip_prefix("dns:") {
            return Ok(Identity::Dns(nonempty(v)?));
        }
        let uri = s.strip_prefix("uri:").unwrap_or(s);
        match uri.split_once("://") {
            Some((scheme, rest)) if !scheme.is_empty() && !rest.is_empty() => {
                Ok(Identity::Uri(uri.to_string()))
            }
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Uri(u) => f.write_str(u),
            Identity::Email(e) => write!(f, "email:{e}"),
            Identity::Dns(d) => write!(f, "dns:{d}"),
        }
    }
}

impl Identity {
    fn matches(&self, name: &GeneralName<'_>) -> bool {
        match (self, name) {
            (Identity::Uri(want), GeneralName::URI(got)) => want == got,
            (Identity::Email(want), GeneralName::RFC822Name(got)) => want.eq_ignore_ascii_case(got),
            (Identity::Dns(want), GeneralName::DNSName(got)) => want.eq_ignore_ascii_case(got),
            _ => false,
        }
    }
}

// === CA bundle ===

/// Trusted CA certificates from one PEM file. Each anchor's own validity is checked when a
/// chain is built to it (webpki does not check anchors).
#[derive(Debug)]
pub struct CaBundle {
    pub path: String,
    anchors: Vec<CertificateDer<'static>>,
}

impl CaBundle {
    /// Reads PEM `CERTIFICATE` blocks; every one must parse and be a CA (basic constraints
    /// `cA`); other blocks are refused.
    pub fn from_pem_file(path: &Path) -> Result<CaBundle, X509Error> {
        let shown = path.display().to_string();
        let text = crate::kit::file::read(path, crate::kit::file::Kind::Keys)?;
        let bad = |detail: String| X509Error::Bundle {
            path: shown.clone(),
            detail,
        };
        let blocks = pem::parse_many(&text).map_err(|e| bad(e.to_string()))?;
        let mut anchors = Vec::new();
        for (i, b) in blocks.iter().enumerate() {
            if b.tag() != "CERTIFICATE" {
                return Err(bad(format!("block {i} is {:?}, not CERTIFICATE", b.tag())));
            }
            let (_, cert) = X509Certificate::from_der(b.contents())
                .map_err(|e| bad(format!("certificate {i}: {e}")))?;
            if !cert.is_ca() {
                return Err(bad(format!(
                    "certificate {i} ({}) is not a CA (basic constraints cA)",
                    cert.subject()
                )));
            }
            anchors.push(CertificateDer::from(b.contents().to_vec()));
        }
        if anchors.is_empty() {
            return Err(bad("no CERTIFICATE block".into()));
        }
        Ok(CaBundle {
            path: shown,
            anchors,
        })
    }
}

/// A configured certificate identity: who may sign, by CA and SAN.
#[derive(Debug)]
pub struct CertIdentity {
    pub ca: CaBundle,
    pub identity: Identity,
}

// === Verification ===

/// A leaf certificate whose chain validated to a configured CA and which carries the
/// configured identity.
pub struct Leaf<'a> {
    cert: EndEntityCert<'a>,
    /// The identity it was checked for (what audit lines name).
    pub identity: String,
}

impl Leaf<'_> {
    /// Verifies `signature` over `message` with the leaf's key, trying each algorithm (the
    /// key's type must fit; webpki checks it).
    pub fn verify(
        &self,
        algorithms: &[&dyn SignatureVerificationAlgorithm],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), X509Error> {
        algorithms
            .iter()
            .find(|a| self.cert.verify_signature(**a, message, signature).is_ok())
            .map(|_| ())
            .ok_or(X509Error::Signature)
    }

    /// The leaf's public key, for a verifier that needs the raw key (JWS fixed-size ECDSA
    /// signatures, which webpki's algorithms do not take).
    pub fn public_key(&self) -> Result<PublicKey, X509Error> {
        let der = self.cert.subject_public_key_info();
        let (_, spki) =
            x509_parser::x509::SubjectPublicKeyInfo::from_der(der.as_ref()).map_err(|e| {
                X509Error::Certificate {
                    index: 0,
                    detail: format!("public key: {e}"),
                }
            })?;
        Ok(PublicKey {
            algorithm: spki.algorithm.algorithm.to_id_string(),
            curve: spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string()),
            key: spki.subject_public_key.data.to_vec(),
        })
    }
}

/// A leaf's public key as its certificate states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The key algorithm's OID (`1.2.840.10045.2.1` EC, `1.3.101.112` Ed25519).
    pub algorithm: String,
    /// The named curve's OID, for an EC key.
    pub curve: Option<String>,
    /// The key: an uncompressed EC point, or the 32 bytes of an Ed25519 key.
    pub key: Vec<u8>,
}

/// The current time as webpki takes it.
pub fn now() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(crate::unix_now()))
}

impl CertIdentity {
    /// Checks `chain` (leaf first, then intermediates, as DER) at `time`: it validates to one
    /// of the CA bundle's certificates (which must itself be valid at `time`), every
    /// certificate of the path lists codeSigning among its extended key usages where it has
    /// that extension, the leaf's key usage (where present) allows digitalSignature, and a
    /// SAN of the leaf is the configured identity.
    pub fn verify_chain<'c>(
        &self,
        chain: &'c [CertificateDer<'c>],
        time: UnixTime,
    ) -> Result<Leaf<'c>, X509Error> {
        let (leaf_der, intermediates) = chain.split_first().ok_or(X509Error::Empty)?;
        if chain.len() > MAX_CHAIN {
            return Err(X509Error::TooLong);
        }
        let cert = EndEntityCert::try_from(leaf_der).map_err(|e| X509Error::Certificate {
            index: 0,
            detail: e.to_string(),
        })?;
        let anchors = self
            .ca
            .anchors
            .iter()
            .filter_map(|a| webpki::anchor_from_trusted_cert(a).ok())
            .collect::<Vec<_>>();
        let path = cert
            .verify_for_usage(
                CHAIN_ALGS,
                &anchors,
                intermediates,
                time,
                KeyUsage::required_if_present(CODE_SIGNING),
                None,
                None,
            )
            .map_err(|e| X509Error::Chain(chain_reason(&e)))?;

        // The anchor webpki chose: check the CA's own validity window.
        let anchor = path.anchor();
        let at = x509_parser::time::ASN1Time::from_timestamp(time.as_secs() as i64)
            .map_err(|e| X509Error::Chain(e.to_string()))?;
        for der in &self.ca.anchors {
            let same = webpki::anchor_from_trusted_cert(der).is_ok_and(|a| {
                a.subject == anchor.subject
                    && a.subject_public_key_info == anchor.subject_public_key_info
            });
            if !same {
                continue;
            }
            // Parsed at load: the bytes are unchanged, so this parses.
            let Ok((_, ca)) = X509Certificate::from_der(der) else {
                continue;
            };
            if !ca.validity().is_valid_at(at) {
                return Err(X509Error::CaValidity {
                    subject: ca.subject().to_string(),
                    not_before: ca.validity().not_before.to_string(),
                    not_after: ca.validity().not_after.to_string(),
                });
            }
        }

        let (_, leaf) =
            X509Certificate::from_der(leaf_der).map_err(|e| X509Error::Certificate {
                index: 0,
                detail: e.to_string(),
            })?;
        if let Ok(Some(ku)) = leaf.key_usage() {
            if !ku.value.digital_signature() {
                return Err(X509Error::KeyUsage);
            }
        }
        let names: Vec<GeneralName<'_>> = match leaf.subject_alternative_name() {
            Ok(Some(san)) => san.value.general_names.clone(),
            Ok(None) => Vec::new(),
            Err(e) => {
                return Err(X509Error::Certificate {
                    index: 0,
                    detail: format!("subject alternative names: {e}"),
                })
            }
        };
        if !names.iter().any(|n| self.identity.matches(n)) {
            let found = names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    GeneralName::RFC822Name(e) => Some(format!("email:{e}")),
                    GeneralName::DNSName(d) => Some(format!("dns:{d}")),
                    _ => None,
                })
                .collect::<Vec<_>>();
            return Err(X509Error::WrongIdentity {
                want: self.identity.to_string(),
                found: if found.is_empty() {
                    "no URI, email or DNS name".to_string()
                } else {
                    found.join(", ")
                },
            });
        }
        Ok(Leaf {
            cert,
            identity: self.identity.to_string(),
        })
    }
}

/// What a webpki refusal means, in words (the error's own name stays in the text).
fn chain_reason(e: &webpki::Error) -> String {
    let at = |t: &UnixTime| {
        x509_parser::time::ASN1Time::from_timestamp(t.as_secs() as i64)
            .map_or_else(|_| t.as_secs().to_string(), |t| t.to_string())
    };
    match e {
        webpki::Error::CertExpired { time, not_after } => format!(
            "a certificate of the chain expired (not after {}, checked at {}; CertExpired)",
            at(not_after),
            at(time)
        ),
        webpki::Error::CertNotValidYet { time, not_before } => format!(
            "a certificate of the chain is not valid yet (not before {}, checked at {}; CertNotValidYet)",
            at(not_before),
            at(time)
        ),
        webpki::Error::UnknownIssuer => {
            "no path to a CA of the bundle (issued by another CA; UnknownIssuer)".to_string()
        }
        webpki::Error::InvalidSignatureForPublicKey => {
            "a certificate's signature does not verify with its issuer's key (issued by another CA?; InvalidSignatureForPublicKey)".to_string()
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests;
