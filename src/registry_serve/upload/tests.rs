use super::*;

fn digest(byte: &str) -> Digest {
    format!("sha256:{}", byte.repeat(32)).parse().unwrap()
}

/// A compact JWS-shaped text whose payload claims `digest` and `jti` (unsigned: the upload
/// does not verify, the sidecars do).
fn record(digest: &Digest, jti: &str) -> String {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.c2ln",
        b64(serde_json::json!({"alg": "ES256"})),
        b64(serde_json::json!({"jti": jti, "artefact": {"digest": digest.to_string()}}))
    )
}

#[test]
fn record_file_names_come_from_a_checked_id() {
    assert_eq!(record_file_name("r-1.a_b"), "r-1.a_b.jws");
    for hostile in ["../x", "a/b", ".hidden", "", "a b", &"x".repeat(129)] {
        let name = record_file_name(hostile);
        assert_eq!(name.len(), 64 + 4, "{hostile:?} -> {name}");
        assert!(name
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b"jws".contains(&b)));
    }
}

#[test]
fn an_upload_must_be_one_record_for_the_urls_digest() {
    let d = digest("ab");
    assert_eq!(check(record(&d, "r1").as_bytes(), &d), Ok("r1.jws".into()));
    assert_eq!(
        check(format!("{}\n", record(&d, "r1")).as_bytes(), &d),
        Ok("r1.jws".into())
    );
    assert!(check(record(&digest("cd"), "r1").as_bytes(), &d).is_err());
    let two = format!("{}\n{}", record(&d, "r1"), record(&d, "r2"));
    assert!(check(two.as_bytes(), &d).is_err());
    assert!(check(b"not a jws", &d).is_err());
    assert!(check(&[0xff, 0xfe], &d).is_err());
}

#[test]
fn only_the_configured_bearer_token_is_authorized() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "s3cret\n").unwrap();
    let up = Upload::new(dir.path().to_path_buf(), &file).unwrap();
    let h = |v: &str| http::HeaderValue::from_str(v).unwrap();
    assert!(up.authorized(Some(&h("Bearer s3cret"))));
    assert!(!up.authorized(Some(&h("Bearer s3cre"))));
    assert!(!up.authorized(Some(&h("Bearer s3cretx"))));
    assert!(!up.authorized(Some(&h("Basic s3cret"))));
    assert!(!up.authorized(None));
    std::fs::write(&file, " \n").unwrap();
    assert!(Upload::new(dir.path().to_path_buf(), &file).is_err());
}

#[test]
fn an_atomic_write_replaces_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!write_atomic(dir.path(), "r1.jws", "one\n").unwrap());
    assert!(write_atomic(dir.path(), "r1.jws", "two\n").unwrap());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("r1.jws")).unwrap(),
        "two\n"
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["r1.jws"]);
}
