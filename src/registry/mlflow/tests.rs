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
    let r = record_of(&version(&[(TAG_DIGEST, "d"), (TAG_APPROVAL, " a.b.c\n")])).unwrap();
    assert_eq!(r.jws, "a.b.c");
    assert!(!r.revoked);
    assert_eq!(r.origin, "model version m/3");
    let r = record_of(&version(&[(TAG_APPROVAL, "a.b.c"), (TAG_REVOKED, "TRUE")])).unwrap();
    assert!(r.revoked);
    assert!(record_of(&version(&[(TAG_DIGEST, "d")])).is_none());
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
