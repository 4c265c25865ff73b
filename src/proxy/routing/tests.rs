use super::*;

#[test]
fn model_is_read_from_kserve_paths() {
    assert_eq!(requested_model("/v2/models/m1/infer"), Some("m1"));
    assert_eq!(
        requested_model("/v2/models/m1/versions/3/infer"),
        Some("m1")
    );
    assert_eq!(requested_model("/v2/models/m1"), Some("m1"));
    assert_eq!(requested_model("/v2/models/"), None);
    assert_eq!(requested_model("/v1/chat/completions"), None);
}

#[test]
fn the_body_names_the_model_in_a_top_level_string() {
    let m = |s: &str| Named::Model(s.to_string());
    assert_eq!(
        model_in_body(br#"{"messages":[{"role":"user","content":"hi"}],"model":"m1"}"#),
        m("m1")
    );
    assert_eq!(
        model_in_body(b" \n{\"model\":\"m\\u0031\",\"stream\":true}"),
        m("m1"),
        "escapes are decoded"
    );
    assert_eq!(
        model_in_body(br#"{"input":"x","extra":{"model":"nested"}}"#),
        Named::Nothing,
        "only the top-level field counts"
    );
    for bad in [
        &b""[..],
        b"not json",
        br#"["model","m1"]"#,
        br#"{"model":7}"#,
        br#"{"model":"a","model":"b"}"#,
        br#"{"model":"m1""#,
    ] {
        assert_eq!(
            model_in_body(bad),
            Named::BodyInvalid,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}
