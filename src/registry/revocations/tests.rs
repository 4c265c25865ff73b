use super::*;
use crate::keys::{jwks_document, KeyKind};

fn claims(iat: u64, ids: &[&str]) -> RevocationClaims {
    RevocationClaims {
        iss: "approver@example.org".into(),
        iat,
        revoked: ids.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn a_list_signed_by_an_approver_verifies_and_others_do_not() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let (rogue, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let approvers =
        KeySet::from_jwks_json(&jwks_document(std::slice::from_ref(&key.public_jwk)), "t").unwrap();
    let good = sign(&claims(100, &["r1", "r2"]), &key).unwrap();
    let list = verify(&format!("{good}\n"), &approvers).unwrap();
    assert_eq!(list.iat, 100);
    assert_eq!(list.kid, key.kid);
    assert!(list.revoked.contains("r1") && list.revoked.contains("r2"));

    let forged = sign(&claims(100, &[]), &rogue).unwrap();
    assert!(matches!(
        verify(&forged, &approvers),
        Err(RevocationError::UnknownKey(_))
    ));
    // A character in the middle of the signature changed (the last may be padding bits).
    let mut tampered = good.clone().into_bytes();
    let at = good.rfind('.').unwrap() + 20;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        verify(std::str::from_utf8(&tampered).unwrap(), &approvers),
        Err(RevocationError::Signature)
    );
    // An approval record is not a revocation list, though the same key signed it.
    let record = crate::approval::sign(
        &crate::registry::tests::claims("r1", crate::digest::Digest([1; 32]), 100),
        &key,
    )
    .unwrap();
    assert_eq!(verify(&record, &approvers), Err(RevocationError::Typ));
    assert_eq!(
        verify("garbage", &approvers),
        Err(RevocationError::Malformed)
    );
}
