use super::*;

#[test]
fn round_trips_and_normalises_case() {
    let s = format!("sha256:{}", "AB".repeat(32));
    let d: Digest = s.parse().unwrap();
    assert_eq!(d.to_string(), format!("sha256:{}", "ab".repeat(32)));
}

#[test]
fn rejects_bad_spellings() {
    assert_eq!("ab".parse::<Digest>(), Err(DigestParseError::Prefix));
    assert_eq!("sha256:abc".parse::<Digest>(), Err(DigestParseError::Hex));
    let bad = format!("sha256:{}", "zz".repeat(32));
    assert_eq!(bad.parse::<Digest>(), Err(DigestParseError::Hex));
}
