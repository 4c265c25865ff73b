use super::*;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};

const SPIFFE: &str = "spiffe://example.org/ci/signer";

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca_valid(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    p.not_before = date_time_ymd(not_before.0, not_before.1, not_before.2);
    p.not_after = date_time_ymd(not_after.0, not_after.1, not_after.2);
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

fn ca() -> Ca {
    ca_valid((2020, 1, 1), (2090, 1, 1))
}

struct Leaf {
    key: KeyPair,
    der: CertificateDer<'static>,
}

fn leaf(ca: &Ca, edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![SanType::URI(SPIFFE.try_into().unwrap())];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    p.not_before = date_time_ymd(2021, 1, 1);
    p.not_after = date_time_ymd(2089, 1, 1);
    edit(&mut p);
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        key,
        der: cert.der().clone(),
    }
}

fn identity(ca: &Ca, id: &str) -> (CertIdentity, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, &ca.pem).unwrap();
    let c = CertIdentity {
        ca: CaBundle::from_pem_file(&path).unwrap(),
        identity: id.parse().unwrap(),
    };
    (c, dir)
}

#[test]
fn identities_parse_in_three_forms_and_refuse_the_rest() {
    assert_eq!(
        SPIFFE.parse::<Identity>().unwrap(),
        Identity::Uri(SPIFFE.into())
    );
    assert_eq!(
        "email:ci@example.org".parse::<Identity>().unwrap(),
        Identity::Email("ci@example.org".into())
    );
    assert_eq!(
        "dns:signer.example.org".parse::<Identity>().unwrap(),
        Identity::Dns("signer.example.org".into())
    );
    for bad in [
        "",
        "ci@example.org",
        "email:",
        "dns: ",
        "spiffe://",
        "just-a-name",
    ] {
        assert!(bad.parse::<Identity>().is_err(), "{bad:?} parsed");
    }
}

#[test]
fn a_leaf_from_the_ca_with_the_identity_verifies_and_its_key_signs() {
    let ca = ca();
    let l = leaf(&ca, |_| {});
    let (c, _d) = identity(&ca, SPIFFE);
    let chain = [l.der];
    let verified = c.verify_chain(&chain, now()).unwrap();
    assert_eq!(verified.identity, SPIFFE);
    // A signature by the leaf key verifies; the same over other bytes does not.
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let signer = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &l.key.serialize_der(),
    )
    .unwrap();
    let sig = signer.sign(&rng, b"message").unwrap();
    let algs = [webpki::ring::ECDSA_P256_SHA256];
    verified.verify(&algs, b"message", sig.as_ref()).unwrap();
    assert!(matches!(
        verified.verify(&algs, b"massage", sig.as_ref()),
        Err(X509Error::Signature)
    ));
}

#[test]
fn an_intermediate_from_the_chain_is_used() {
    let root = ca();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let inter_der = p.signed_by(&key, &root.issuer).unwrap().der().clone();
    let inter = Ca {
        issuer: Issuer::new(p, key),
        pem: String::new(),
    };
    let l = leaf(&inter, |_| {});
    let (c, _d) = identity(&root, SPIFFE);
    c.verify_chain(&[l.der.clone(), inter_der], now()).unwrap();
    let err = c
        .verify_chain(std::slice::from_ref(&l.der), now())
        .err()
        .unwrap();
    assert!(matches!(err, X509Error::Chain(_)), "{err}");
}

#[test]
fn another_ca_an_expired_leaf_and_another_identity_refuse_with_reasons() {
    let ca1 = ca();
    let (c, _d) = identity(&ca1, SPIFFE);

    let other = ca();
    let err = c
        .verify_chain(&[leaf(&other, |_| {}).der], now())
        .err()
        .unwrap();
    // Same subject name as ca1 (rcgen's default): found by name, refused by signature.
    assert!(matches!(err, X509Error::Chain(_)), "{err}");

    let expired = leaf(&ca1, |p| p.not_after = date_time_ymd(2022, 1, 1));
    let err = c.verify_chain(&[expired.der], now()).err().unwrap();
    assert!(err.to_string().contains("CertExpired"), "{err}");

    let someone = leaf(&ca1, |p| {
        p.subject_alt_names = vec![
            SanType::URI("spiffe://example.org/someone".try_into().unwrap()),
            SanType::Rfc822Name("x@example.org".try_into().unwrap()),
        ]
    });
    let err = c.verify_chain(&[someone.der], now()).err().unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "the leaf certificate names spiffe://example.org/someone, email:x@example.org, not {SPIFFE}"
        )
    );
}

#[test]
fn email_and_dns_identities_match_their_san_kinds() {
    let ca = ca();
    let l = leaf(&ca, |p| {
        p.subject_alt_names = vec![
            SanType::Rfc822Name("CI@example.org".try_into().unwrap()),
            SanType::DnsName("signer.example.org".try_into().unwrap()),
        ]
    });
    for id in ["email:ci@example.org", "dns:Signer.example.org"] {
        let (c, _d) = identity(&ca, id);
        c.verify_chain(std::slice::from_ref(&l.der), now()).unwrap();
    }
    // A DNS name is not an email, nor a URI.
    let (c, _d) = identity(&ca, "email:signer.example.org");
    assert!(c.verify_chain(std::slice::from_ref(&l.der), now()).is_err());
}

#[test]
fn key_usage_and_extended_key_usage_are_checked_where_present() {
    let ca = ca();
    let (c, _d) = identity(&ca, SPIFFE);
    let no_ds = leaf(&ca, |p| {
        p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]
    });
    assert!(matches!(
        c.verify_chain(&[no_ds.der], now()),
        Err(X509Error::KeyUsage)
    ));
    let server = leaf(&ca, |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
    });
    let err = c.verify_chain(&[server.der], now()).err().unwrap();
    assert!(err.to_string().contains("RequiredEku"), "{err}");
    // Neither extension: accepted (where present).
    let bare = leaf(&ca, |p| {
        p.key_usages.clear();
        p.extended_key_usages.clear();
    });
    c.verify_chain(&[bare.der], now()).unwrap();
}

#[test]
fn the_ca_itself_must_be_valid_now() {
    let old = ca_valid((2020, 1, 1), (2021, 6, 1));
    let l = leaf(&old, |p| p.not_before = date_time_ymd(2021, 1, 1));
    let (c, _d) = identity(&old, SPIFFE);
    let err = c.verify_chain(&[l.der], now()).err().unwrap();
    assert!(matches!(err, X509Error::CaValidity { .. }), "{err}");
}

#[test]
fn a_ca_bundle_must_hold_ca_certificates_only() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    let l = leaf(&ca, |_| {});
    std::fs::write(
        &path,
        pem::encode(&pem::Pem::new("CERTIFICATE", l.der.to_vec())),
    )
    .unwrap();
    let err = CaBundle::from_pem_file(&path).err().unwrap();
    assert!(err.to_string().contains("is not a CA"), "{err}");
    std::fs::write(&path, "").unwrap();
    assert!(CaBundle::from_pem_file(&path).is_err());
}

#[test]
fn an_empty_or_overlong_chain_is_refused() {
    let ca = ca();
    let (c, _d) = identity(&ca, SPIFFE);
    assert!(matches!(c.verify_chain(&[], now()), Err(X509Error::Empty)));
    let l = leaf(&ca, |_| {});
    let long = vec![l.der.clone(); MAX_CHAIN + 1];
    assert!(matches!(
        c.verify_chain(&long, now()),
        Err(X509Error::TooLong)
    ));
}
