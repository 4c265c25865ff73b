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

#[test]
fn a_list_is_collected_whole_and_filtered_at_its_end() {
    let names = ["a", "b", "c"];
    let mut collected = BytesMut::new();
    let mut allowed = 0b101;
    let mut body = Some(Bytes::from_static(
        br#"{"object":"list","data":[{"id":"a"},"#,
    ));
    collect(
        &mut collected,
        &mut allowed,
        &mut body,
        false,
        names.iter().copied(),
    );
    assert_eq!(body, None, "nothing is sent before the list is whole");
    let mut body = Some(Bytes::from_static(br#"{"id":"b"},{"id":"c"}]}"#));
    collect(
        &mut collected,
        &mut allowed,
        &mut body,
        true,
        names.iter().copied(),
    );
    let out: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
    assert_eq!(
        out,
        serde_json::json!({"object":"list","data":[{"id":"a"},{"id":"c"}]})
    );
}

#[test]
fn a_list_too_large_to_filter_allows_nothing() {
    let mut collected = BytesMut::new();
    let mut allowed = 1;
    let mut body = Some(Bytes::from(vec![b' '; MAX_LISTING_BYTES + 1]));
    collect(
        &mut collected,
        &mut allowed,
        &mut body,
        false,
        ["a"].into_iter(),
    );
    assert_eq!(allowed, 0);
    let mut body = Some(Bytes::from_static(
        br#"{"object":"list","data":[{"id":"a"}]}"#,
    ));
    collect(
        &mut collected,
        &mut allowed,
        &mut body,
        true,
        ["a"].into_iter(),
    );
    let out: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
    assert_eq!(out, serde_json::json!({"object":"list","data":[]}));
}

#[test]
fn every_list_shape_is_filtered_by_name() {
    let allowed = |n: &str| n == "a";
    let f = |body: &[u8], shape| -> serde_json::Value {
        serde_json::from_slice(&filter_list(body, shape, allowed)).unwrap()
    };
    assert_eq!(
        f(br#"{"models":["a","b"]}"#, ListShape::Names),
        serde_json::json!({"models":["a"]})
    );
    assert_eq!(
        f(
            br#"{"models":[{"name":"a:latest","model":"a:latest"},{"name":"b:latest"},{"name":"a:latest","model":"b"}]}"#,
            ListShape::Ollama
        ),
        serde_json::json!({"models":[{"name":"a:latest","model":"a:latest"}]})
    );
    assert_eq!(
        f(
            br#"[{"name":"a","state":"READY"},{"name":"b"}]"#,
            ListShape::Triton
        ),
        serde_json::json!([{"name":"a","state":"READY"}])
    );
    assert_eq!(f(b"nope", ListShape::Triton), serde_json::json!([]));
    assert_eq!(
        f(br#"{"data":[]}"#, ListShape::Names),
        serde_json::json!({"models":[]})
    );
}
