//! Key material: loading a JWKS file into verification keys (a [`KeySet`], which for approvers
//! also carries the certificate-bound approvers an `x5c` record is checked against),
//! generating approver and issuer key pairs, and loading a PKCS#8 PEM private key for signing.
//!
//! Owns the rule that a key's type, curve and declared `alg` decide which JWS algorithms it may
//! verify, so that no token can pick an algorithm its key was not made for. It does not decide
//! which algorithms a caller may use: that is the issuer's configuration, in `identity`.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    ECDSA_P384_SHA384_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

/// Errors loading or making keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Read(#[from] crate::kit::file::ReadError),
    #[error("{path} is not a JWKS document: {reason}")]
    Jwks { path: String, reason: String },
    #[error("{path} holds no usable key")]
    Empty { path: String },
    #[error("{0}")]
    Pem(String),
    #[error("key generation failed")]
    Generate,
}

/// Keys tried for one JWS: those of its `kid`, or without a `kid` the first keys of its
/// algorithm. A token signed by a later key must name its `kid`.
pub const MAX_KEYS_TRIED: usize = 4;
/// Keys kept from one JWKS document (per issuer, per approver set); the rest are skipped.
pub const MAX_KEYS_PER_SET: usize = 64;
/// The largest RSA modulus accepted, in bits: a larger key costs more per check and buys no
/// security a verifier needs.
pub const MAX_RSA_BITS: usize = 4096;

/// One verification key from a JWKS, with the algorithms it may verify.
#[derive(Clone)]
pub struct VerifyingKey {
    pub kid: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
    /// RFC 7638 SHA-256 thumbprint of the public key: which key verified a cached token,
    /// checked against a later key set without any crypto.
    pub thumbprint: String,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .field("thumbprint", &self.thumbprint)
            .finish()
    }
}

/// A set of verification keys.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyingKey>,
    /// Keys in the document that could not be used, with why (logged once at load).
    pub skipped: Vec<String>,
    /// Certificate-bound approvers (`[[trust.approvers]]` with `ca_bundle` and `identity`):
    /// an approval record whose header carries an `x5c` chain is verified against these
    /// only. Always empty for caller token issuers, where `x5c` stays refused.
    pub certificates: Vec<std::sync::Arc<crate::x509::CertIdentity>>,
}

impl KeySet {
    /// Parses a JWKS document. Keys that are private, symmetric, marked for encryption or of
    /// an unsupported type are skipped with a reason; the rest become verification keys.
    pub fn from_jwks_json(text: &str, origin: &str) -> Result<KeySet, KeyError> {
        // Parse loosely first so one exotic key (for example an `x5c`-only entry) does not
        // reject the whole set.
        let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| KeyError::Jwks {
            path: origin.to_string(),
            reason: e.to_string(),
        })?;
        let entries = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| KeyError::Jwks {
                path: origin.to_string(),
                reason: "no \"keys\" array".to_string(),
            })?;
        let mut set = KeySet::default();
        if entries.len() > MAX_KEYS_PER_SET {
            set.skipped.push(format!(
                "keys {MAX_KEYS_PER_SET}..{}: more than {MAX_KEYS_PER_SET} keys in one set",
                entries.len()
            ));
        }
        for (i, entry) in entries.iter().take(MAX_KEYS_PER_SET).enumerate() {
            if entry.get("d").is_some() {
                set.skipped
                    .push(format!("key {i}: private key material in a public key set"));
                continue;
            }
            match serde_json::from_value::<Jwk>(entry.clone()) {
                Ok(jwk) => match verifying_key(&jwk) {
                    Ok(k) => set.keys.push(k),
                    Err(reason) => set.skipped.push(format!("key {i}: {reason}")),
                },
                Err(e) => set.skipped.push(format!("key {i}: {e}")),
            }
        }
        Ok(set)
    }

    /// Reads and parses a JWKS file; an empty result is an error.
    pub fn from_jwks_file(path: &Path) -> Result<KeySet, KeyError> {
        let text = crate::kit::file::read_string(path, crate::kit::file::Kind::Keys)?;
        let set = Self::from_jwks_json(&text, &path.display().to_string())?;
        if set.keys.is_empty() {
            return Err(KeyError::Empty {
                path: path.display().to_string(),
            });
        }
        Ok(set)
    }

    /// The keys that may verify a JWS with this header: the one named by `kid` when given,
    /// otherwise the keys whose algorithms include `alg`; at most [`MAX_KEYS_TRIED`] either
    /// way, so a forged token costs at most that many signature checks.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerifyingKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| {
                k.algorithms.contains(&alg)
                    && match kid {
                        Some(kid) => k.kid.as_deref() == Some(kid),
                        None => true,
                    }
            })
            .take(MAX_KEYS_TRIED)
    }

    /// Is the key with this thumbprint in the set? (A string comparison per key: no crypto.)
    pub fn contains_thumbprint(&self, thumbprint: &str) -> bool {
        self.keys.iter().any(|k| k.thumbprint == thumbprint)
    }
}

/// The JWS algorithms a JWK may verify: fixed by its type and curve, narrowed by its `alg`.
fn verifying_key(jwk: &Jwk) -> Result<VerifyingKey, String> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        // SPIFFE trust bundles mark JWT-SVID keys so.
        Some(PublicKeyUse::Other(u)) if u == "jwt-svid" => {}
        Some(other) => return Err(format!("key use {other:?} is not for JWT signatures")),
    }
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err("unsupported EC curve".to_string()),
        },
        AlgorithmParameters::RSA(p) => {
            let bits = rsa_bits(&p.n).ok_or_else(|| "RSA modulus is not base64url".to_string())?;
            if bits > MAX_RSA_BITS {
                return Err(format!(
                    "RSA key of {bits} bits; at most {MAX_RSA_BITS} are accepted"
                ));
            }
            vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ]
        }
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return Err("unsupported OKP curve".to_string()),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric keys are never accepted".to_string())
        }
        _ => return Err("unsupported key type".to_string()),
    };
    let algorithms = match jwk.common.key_algorithm {
        None => by_type,
        Some(declared) => {
            let declared = key_algorithm_to_jws(declared)
                .ok_or_else(|| "declared alg is not a signature algorithm".to_string())?;
            if !by_type.contains(&declared) {
                return Err(format!(
                    "declared alg {declared:?} does not fit the key type"
                ));
            }
            vec![declared]
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let thumbprint = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| format!("key thumbprint: {e}"))?;
    Ok(VerifyingKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
        thumbprint,
    })
}

/// The size in bits of an RSA modulus given as base64url (JWK `n`).
fn rsa_bits(n: &str) -> Option<usize> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(n.trim_end_matches('='))
        .ok()?;
    let (first, top) = bytes.iter().enumerate().find(|(_, b)| **b != 0)?;
    Some((bytes.len() - first) * 8 - top.leading_zeros() as usize)
}

fn key_algorithm_to_jws(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

// === Signing keys ===

/// A private key for signing approval records or demo tokens, with its key ID.
pub struct SigningKey {
    pub alg: Algorithm,
    pub kid: String,
    pub key: EncodingKey,
    /// The public half, as a JWK, for publishing in a JWKS.
    pub public_jwk: Jwk,
}

/// Key types `provgate keygen` can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyKind {
    /// ECDSA P-256 with SHA-256 (JWS ES256).
    Es256,
    /// ECDSA P-384 with SHA-384 (JWS ES384).
    Es384,
    /// Ed25519 (JWS EdDSA).
    Ed25519,
}

impl SigningKey {
    /// Generates a fresh key pair; returns it with its PKCS#8 PEM text.
    pub fn generate(kind: KeyKind) -> Result<(SigningKey, String), KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = match kind {
            KeyKind::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| KeyError::Generate)?
                .as_ref()
                .to_vec(),
            KeyKind::Es384 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
                .map_err(|_| KeyError::Generate)?
                .as_ref()
                .to_vec(),
            KeyKind::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| KeyError::Generate)?
                .as_ref()
                .to_vec(),
        };
        let pem_text = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.clone()));
        Ok((Self::from_pkcs8(&pkcs8)?, pem_text))
    }

    /// Loads a PKCS#8 PEM private key (EC P-256, P-384 or Ed25519).
    pub fn from_pem_file(path: &Path) -> Result<SigningKey, KeyError> {
        let text = crate::kit::file::read(path, crate::kit::file::Kind::Keys)?;
        let block =
            pem::parse(&text).map_err(|e| KeyError::Pem(format!("{}: {e}", path.display())))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(KeyError::Pem(format!(
                "{}: expected a PKCS#8 \"PRIVATE KEY\" block, found \"{}\"",
                path.display(),
                block.tag()
            )));
        }
        Self::from_pkcs8(block.contents())
    }

    /// Recognises the key type by trying each supported one.
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, KeyError> {
        let (alg, params) =
            if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
                (
                    Algorithm::ES256,
                    ec_params(EllipticCurve::P256, k.public_key().as_ref()),
                )
            } else if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der) {
                (
                    Algorithm::ES384,
                    ec_params(EllipticCurve::P384, k.public_key().as_ref()),
                )
            } else if let Ok(k) = Ed25519KeyPair::from_pkcs8(der) {
                (
                    Algorithm::EdDSA,
                    Some(AlgorithmParameters::OctetKeyPair(
                        jsonwebtoken::jwk::OctetKeyPairParameters {
                            key_type: jsonwebtoken::jwk::OctetKeyPairType::OctetKeyPair,
                            curve: EllipticCurve::Ed25519,
                            x: URL_SAFE_NO_PAD.encode(k.public_key().as_ref()),
                        },
                    )),
                )
            } else {
                return Err(KeyError::Pem(
                    "not a PKCS#8 EC P-256, EC P-384 or Ed25519 private key".to_string(),
                ));
            };
        let params = params.ok_or_else(|| KeyError::Pem("malformed EC public key".into()))?;
        let mut jwk = Jwk {
            common: jsonwebtoken::jwk::CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(match alg {
                    Algorithm::ES256 => KeyAlgorithm::ES256,
                    Algorithm::ES384 => KeyAlgorithm::ES384,
                    _ => KeyAlgorithm::EdDSA,
                }),
                ..Default::default()
            },
            algorithm: params,
        };
        // RFC 7638 thumbprint: stable, derived from the public key alone.
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| KeyError::Pem(format!("key thumbprint: {e}")))?;
        jwk.common.key_id = Some(kid.clone());
        let key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_der(der),
            _ => EncodingKey::from_ec_der(der),
        };
        Ok(SigningKey {
            alg,
            kid,
            key,
            public_jwk: jwk,
        })
    }
}

/// Splits an uncompressed SEC1 point (`04 || x || y`) into JWK coordinates.
fn ec_params(curve: EllipticCurve, point: &[u8]) -> Option<AlgorithmParameters> {
    let (&tag, xy) = point.split_first()?;
    if tag != 0x04 || xy.len() % 2 != 0 {
        return None;
    }
    let (x, y) = xy.split_at(xy.len() / 2);
    Some(AlgorithmParameters::EllipticCurve(
        jsonwebtoken::jwk::EllipticCurveKeyParameters {
            key_type: jsonwebtoken::jwk::EllipticCurveKeyType::EC,
            curve,
            x: URL_SAFE_NO_PAD.encode(x),
            y: URL_SAFE_NO_PAD.encode(y),
        },
    ))
}

/// A JWKS document holding the given public keys.
pub fn jwks_document(keys: &[Jwk]) -> String {
    let set = JwkSet {
        keys: keys.to_vec(),
    };
    // Serialising plain data structures cannot fail.
    serde_json::to_string_pretty(&set).unwrap_or_else(|_| "{\"keys\":[]}".to_string())
}

#[cfg(test)]
mod tests;
