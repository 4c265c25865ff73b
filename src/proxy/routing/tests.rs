use super::*;
use crate::proxy::routing::profiles::Field;

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

#[test]
fn a_door_reads_every_field_it_lists() {
    let f = &[Field::Source, Field::Destination];
    assert_eq!(
        names_in_body(br#"{"source":"a","destination":"b","x":{"source":"c"}}"#, f),
        Named::Models(vec!["a".into(), "b".into()])
    );
    assert_eq!(
        names_in_body(br#"{"model":"a","name":"b"}"#, &[Field::Model, Field::Name]),
        Named::Models(vec!["a".into(), "b".into()]),
        "Ollama's deprecated name is read too"
    );
    let tgi = &[Field::TgiModel, Field::AdapterId];
    assert_eq!(
        names_in_body(br#"{"model":"tgi","inputs":"x"}"#, tgi),
        Named::Nothing
    );
    assert_eq!(
        names_in_body(
            br#"{"inputs":"x","parameters":{"adapter_id":"lora-a","top_k":3}}"#,
            tgi
        ),
        Named::Model("lora-a".into())
    );
    assert_eq!(
        names_in_body(
            br#"{"parameters":{"adapter_id":"a","adapter_id":"b"}}"#,
            tgi
        ),
        Named::BodyInvalid
    );
    assert_eq!(
        names_in_body(br#"{"parameters":null}"#, tgi),
        Named::Nothing
    );
    assert_eq!(
        names_in_body(br#"{"model":"","messages":[]}"#, &[Field::Model]),
        Named::Nothing,
        "an empty name is the server's default"
    );
    assert_eq!(
        names_in_body(br#"{"model":null}"#, &[Field::Model]),
        Named::Nothing
    );
    assert_eq!(
        names_in_body(br#"{"lora_name":"x","name":7}"#, &[Field::LoraName]),
        Named::Model("x".into()),
        "fields a door does not list are not read"
    );
    assert_eq!(
        names_in_body(br#"{"model":"m"} trailing"#, &[Field::Model]),
        Named::BodyInvalid
    );
    assert_eq!(
        names_in_body(br#"{"model":"a","mod\u0065l":"b"}"#, &[Field::Model]),
        Named::BodyInvalid,
        "a key spelt with an escape is the same key"
    );
    assert_eq!(
        names_in_body(br#"{"m\u006fdel":"a"}"#, &[Field::Model]),
        Named::Model("a".into())
    );
}
