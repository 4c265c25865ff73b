use super::*;

#[test]
fn a_model_list_keeps_only_allowed_ids() {
    let body =
        br#"{"object":"list","data":[{"id":"a","owned_by":"x"},{"id":"b"},{"object":"model"}]}"#;
    let out: serde_json::Value =
        serde_json::from_slice(&filter_model_list(body, |id| id == "a")).unwrap();
    assert_eq!(
        out,
        serde_json::json!({"object":"list","data":[{"id":"a","owned_by":"x"}]})
    );
    for unusable in [&b"<html>"[..], br#"{"models":[]}"#, b""] {
        assert_eq!(
            &filter_model_list(unusable, |_| true)[..],
            br#"{"object":"list","data":[]}"#
        );
    }
}
