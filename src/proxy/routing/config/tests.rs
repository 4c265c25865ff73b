use super::*;
use crate::proxy::routing::profiles::{Api, Class, DELETE, GET, HEAD, PATCH, POST, PUT};

#[test]
fn defaults_validate_and_name_the_openai_paths() {
    let mut errors = Vec::new();
    let r = RoutingFile::default().validate(&[Api::Openai, Api::KserveV2], &mut errors);
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
        allow: vec![AllowFile {
            route: "v2/x".into(),
            methods: vec!["POST".into(), "BREW".into()],
            callers: vec![],
            issuer: None,
        }],
    }
    .validate(&[Api::Openai], &mut errors);
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
            "routing.allow[0].route",
            "routing.allow[0].methods",
            "routing.allow[0].callers",
        ]
    );
    assert_eq!(
        r.models_path, None,
        "an empty models_path turns filtering off"
    );
}

#[test]
fn doors_are_compiled_from_the_profiles_in_order_each_once() {
    let mut errors = Vec::new();
    let file = RoutingFile {
        openai_paths: vec!["/v1/chat/completions".into(), "/custom/infer".into()],
        allow: vec![AllowFile {
            route: "/v2/repository/models/{m}/load".into(),
            methods: vec!["POST".into()],
            callers: vec!["spiffe://example.org/ns/ops/*".into()],
            issuer: None,
        }],
        ..RoutingFile::default()
    };
    let r = file.validate(&[Api::Openai, Api::Vllm, Api::KserveV2], &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let post = |p: &'static str| match r.find(POST, p) {
        Found::Door(i, m) => Some((r.doors[i].class, m)),
        Found::Unlisted => None,
    };
    assert_eq!(post("/v1/chat/completions"), Some((Class::Inference, None)));
    assert_eq!(
        r.doors
            .iter()
            .filter(|d| d.path == "/v1/chat/completions")
            .count(),
        1,
        "a route two profiles list is one door"
    );
    assert_eq!(post("/custom/infer"), Some((Class::Inference, None)));
    assert_eq!(
        post("/v2/models/m1/infer"),
        Some((Class::Inference, Some("m1")))
    );
    assert_eq!(
        post("/v2/repository/models/m1/load").map(|d| d.0),
        Some(Class::Manage)
    );
    assert_eq!(
        post("/v1/load_lora_adapter").map(|d| d.0),
        Some(Class::Manage)
    );
    assert_eq!(post("/v1/chat/completions/"), None);
    assert_eq!(post("/v1/Chat/completions"), None);
    assert_eq!(r.find(GET, "/v1/chat/completions"), Found::Unlisted);
    assert!(r.opened(POST, "/v2/repository/models/m1/load").is_some());
    assert!(r.opened(POST, "/v2/repository/models/m1/unload").is_none());
    assert!(r.opened(GET, "/v2/repository/models/m1/load").is_none());
}

/// The segment-count filter in `find` only skips doors that could not match: on every
/// profile at once, `find` answers as the plain first-match scan over all doors does, for
/// each door's own pattern made concrete and for near misses (a segment more or less).
#[test]
fn find_agrees_with_a_scan_of_every_door() {
    let mut errors = Vec::new();
    let r = RoutingFile::default().validate(&Api::ALL, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    fn scan<'p>(r: &Routing, method: u8, path: &'p str) -> Found<'p> {
        r.doors
            .iter()
            .enumerate()
            .filter(|(_, d)| d.methods & method != 0)
            .find_map(|(i, d)| match_path(&d.path, path).map(|m| Found::Door(i, m)))
            .unwrap_or(Found::Unlisted)
    }
    let mut checked = 0;
    for d in &r.doors {
        let concrete = d.path.replace("{m}", "m1").replace("{*}", "x");
        for path in [
            concrete.clone(),
            format!("{concrete}/more"),
            concrete
                .rsplit_once('/')
                .map_or("/".into(), |(a, _)| a.to_string()),
            format!("/{}", concrete.trim_start_matches('/')),
            "/".repeat(300),
        ] {
            for method in [GET, HEAD, POST, PUT, DELETE, PATCH] {
                assert_eq!(
                    r.find(method, &path),
                    scan(&r, method, &path),
                    "{method} {path}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 500, "only {checked} cases");
    assert!(matches!(
        r.find(POST, "/v2/models/m1/infer"),
        Found::Door(_, Some("m1"))
    ));
}
