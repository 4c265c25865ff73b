use super::route;
use crate::proxy::routing::config::Routing;

fn routing() -> Routing {
    Routing {
        openai_paths: vec!["/v1/embeddings".into()],
        max_body_bytes: 1,
        max_held_body_bytes: 1,
        max_held_total_bytes: 1,
        models_path: Some("/v1/models".into()),
    }
}

#[test]
fn routes_are_templates_without_request_data() {
    let r = routing();
    let cases = [
        ("/v1/embeddings", Some("/v1/embeddings")),
        ("/v1/models", Some("/v1/models")),
        ("/v2/health/ready", Some("/v2/health/ready")),
        ("/v2/models/secret-name", Some("/v2/models/{model}")),
        ("/v2/models/m/infer", Some("/v2/models/{model}/infer")),
        ("/v2/models/m/ready", Some("/v2/models/{model}/ready")),
        (
            "/v2/models/m/versions/7/infer",
            Some("/v2/models/{model}/versions/{version}/infer"),
        ),
        (
            "/v2/models/m/versions/7",
            Some("/v2/models/{model}/versions/{version}"),
        ),
        ("/v2/models/m/infer/extra", None),
        ("/v2/models/m/other", None),
        ("/v2/models/", None),
        ("/v2/models/m/versions/", None),
        ("/v1/chat/completions", None),
        ("/anything/token-abc", None),
    ];
    for (path, want) in cases {
        assert_eq!(route(&r, path).as_deref(), want, "{path}");
    }
}
