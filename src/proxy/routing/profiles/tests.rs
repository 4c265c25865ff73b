use super::*;

#[test]
fn patterns_match_exactly_and_capture_the_model() {
    assert_eq!(match_path("/v1/models", "/v1/models"), Some(None));
    assert_eq!(match_path("/v1/models", "/v1/models/"), None);
    assert_eq!(match_path("/v1/models", "/V1/models"), None);
    assert_eq!(
        match_path("/v2/models/{m}/infer", "/v2/models/m1/infer"),
        Some(Some("m1"))
    );
    assert_eq!(
        match_path("/v2/models/{m}/infer", "/v2/models//infer"),
        None
    );
    assert_eq!(
        match_path("/v2/models/{m}/infer", "/v2/models/m1/infer/"),
        None
    );
    assert_eq!(
        match_path("/v2/models/{m}/infer", "/v2/models/a/b/infer"),
        None
    );
    assert_eq!(
        match_path(
            "/v2/models/{m}/versions/{*}/infer",
            "/v2/models/m1/versions/3/infer"
        ),
        Some(Some("m1"))
    );
    assert_eq!(
        match_path("/v1/models/{m}:predict", "/v1/models/a:b:predict"),
        Some(Some("a:b"))
    );
    assert_eq!(
        match_path("/v1/models/{m}:predict", "/v1/models/:predict"),
        None
    );
    assert_eq!(match_path("/v1/models/{m}:predict", "/v1/models/m1"), None);
    assert_eq!(
        match_path("/api/blobs/{*}", "/api/blobs/sha256:ab"),
        Some(None)
    );
}

#[test]
fn every_profile_table_is_well_formed() {
    for api in Api::ALL {
        assert_eq!(Api::parse(api.as_str()), Some(api));
        let routes = api.routes();
        assert!(!routes.is_empty());
        for (i, r) in routes.iter().enumerate() {
            assert!(r.path.starts_with('/'), "{}: {}", api.as_str(), r.path);
            assert_ne!(r.methods, 0);
            // A route names its model in its path exactly when its pattern has `{m}`.
            assert_eq!(
                r.path.contains("{m}"),
                r.model == ModelAt::Path,
                "{}",
                r.path
            );
            // Model lists and model-free routes with nothing to name are not inference.
            if r.class == Class::Inference {
                assert_ne!(r.model, ModelAt::Nothing, "{} names no model", r.path);
            }
            for other in &routes[..i] {
                assert!(
                    other.path != r.path || other.methods & r.methods == 0,
                    "{}: {} listed twice",
                    api.as_str(),
                    r.path
                );
            }
        }
    }
}

#[test]
fn the_known_management_doors_are_management() {
    let class = |api: Api, m: u8, p: &str| {
        api.routes()
            .iter()
            .find(|r| r.methods & m != 0 && match_path(r.path, p).is_some())
            .map(|r| r.class)
    };
    for (api, m, p) in [
        (Api::KserveV2, POST, "/v2/repository/models/m/load"),
        (Api::KserveV2, POST, "/v2/repository/models/m/unload"),
        (Api::Triton, POST, "/v2/repository/models/m/load"),
        (
            Api::Triton,
            POST,
            "/v2/systemsharedmemory/region/r/register",
        ),
        (Api::Ollama, POST, "/api/pull"),
        (Api::Ollama, POST, "/api/create"),
        (Api::Ollama, POST, "/api/copy"),
        (Api::Ollama, DELETE, "/api/delete"),
        (Api::Vllm, POST, "/v1/load_lora_adapter"),
        (Api::Vllm, POST, "/collective_rpc"),
        (Api::Openai, DELETE, "/v1/models/m"),
    ] {
        assert_eq!(class(api, m, p), Some(Class::Manage), "{p}");
    }
    assert_eq!(
        class(Api::Triton, GET, "/v2/models/stats"),
        Some(Class::Free)
    );
    assert_eq!(class(Api::Openai, POST, "/v1/audio/transcriptions"), None);
    assert_eq!(method_bit(&http::Method::OPTIONS), 0);
}
