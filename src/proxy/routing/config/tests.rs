use super::*;

#[test]
fn defaults_validate_and_name_the_openai_paths() {
    let mut errors = Vec::new();
    let r = RoutingFile::default().validate(&mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(r.max_body_bytes, MAX_INSPECTED_BODY);
    assert_eq!(r.models_path.as_deref(), Some("/v1/models"));
    assert!(r.openai_paths.iter().any(|p| p == "/v1/chat/completions"));
}

#[test]
fn every_error_is_reported_with_its_key_path() {
    let mut errors = vec!["earlier: kept".to_string()];
    let r = RoutingFile {
        openai_paths: vec!["/ok".into(), "v1/chat".into()],
        max_body_bytes: MAX_INSPECTED_BODY + 1,
        max_held_body_bytes: MAX_HELD_BODY + 1,
        max_held_total_bytes: 1,
        models_path: String::new(),
    }
    .validate(&mut errors);
    let keys: Vec<&str> = errors
        .iter()
        .map(|e| e.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        keys,
        [
            "earlier",
            "routing.max_body_bytes",
            "routing.max_held_body_bytes",
            "routing.max_held_total_bytes",
            "routing.openai_paths[1]",
        ]
    );
    assert_eq!(
        r.models_path, None,
        "an empty models_path turns filtering off"
    );
}
