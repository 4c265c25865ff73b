use super::*;

fn version(tags: &[(&str, &str)]) -> ModelVersion {
    ModelVersion {
        name: "m".into(),
        version: "3".into(),
        tags: tags
            .iter()
            .map(|(k, v)| Tag {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
    }
}

#[test]
fn a_version_yields_its_record_and_revocation() {
    let r = records_of(&version(&[(TAG_DIGEST, "d"), (TAG_APPROVAL, " a.b.c\n")]));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].jws, "a.b.c");
    assert!(!r[0].revoked);
    assert_eq!(r[0].origin, "model version m/3");
    let r = records_of(&version(&[(TAG_APPROVAL, "a.b.c"), (TAG_REVOKED, "TRUE")]));
    assert!(r[0].revoked);
    assert!(records_of(&version(&[(TAG_DIGEST, "d")])).is_empty());
}

#[test]
fn a_version_yields_its_exceptions_beside_its_record() {
    let r = records_of(&version(&[
        (TAG_APPROVAL, "a.b.c"),
        ("provgate.exception", "e.x.1"),
        ("provgate.exception.redteam", " e.x.2 "),
        ("provgate.exceptional", "not.an.exception"),
        ("provgate.exception.", "nameless.is.ignored"),
    ]));
    let jws: Vec<&str> = r.iter().map(|f| f.jws.as_str()).collect();
    assert_eq!(jws, ["a.b.c", "e.x.1", "e.x.2"]);
    assert_eq!(
        r[2].origin,
        "model version m/3 tag provgate.exception.redteam"
    );
    // An exception alone (no record on the version) is still carried.
    assert_eq!(
        records_of(&version(&[("provgate.exception", "e.x.1")])).len(),
        1
    );
}

#[test]
fn an_unreadable_revoked_tag_fails_closed() {
    for (value, revoked_) in [("true", true), ("false", false), ("yes", true), ("", true)] {
        assert_eq!(revoked(Some(value)), revoked_, "{value:?}");
    }
    assert!(!revoked(None));
}

#[test]
fn search_answers_parse_with_and_without_results() {
    let empty: SearchPage = serde_json::from_str("{}").unwrap();
    assert!(empty.model_versions.is_empty());
    let page: SearchPage = serde_json::from_str(
        r#"{"model_versions":[{"name":"m","version":"1","creation_timestamp":1,
            "tags":[{"key":"provgate.approval","value":"x.y.z"}]}],"next_page_token":"t"}"#,
    )
    .unwrap();
    assert_eq!(page.model_versions[0].tag(TAG_APPROVAL), Some("x.y.z"));
    assert_eq!(page.next_page_token.as_deref(), Some("t"));
}
