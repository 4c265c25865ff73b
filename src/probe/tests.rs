use super::*;

fn serving(d: Option<&str>) -> Served {
    Served::Serving {
        ollama_digest: d.map(String::from),
    }
}

#[test]
fn openai_listing_is_read_from_data_ids() {
    let body =
        serde_json::json!({"object": "list", "data": [{"id": "a"}, {"id": "b", "root": "/m"}]});
    assert_eq!(openai_lists(&body, "b"), serving(None));
    assert_eq!(openai_lists(&body, "c"), Served::NotServing);
    assert_eq!(
        openai_lists(&serde_json::json!({"models": []}), "a"),
        Served::Unreachable,
        "a body of another shape is not an answer"
    );
}

#[test]
fn ollama_tags_give_the_digest_of_the_named_model() {
    let hex = "AB".repeat(32);
    let body = serde_json::json!({"models": [
        {"name": "all-minilm:latest", "model": "all-minilm:latest", "digest": hex},
        {"name": "llama3:8b", "digest": format!("sha256:{}", "cd".repeat(32))},
    ]});
    assert_eq!(
        ollama_lists(&body, "all-minilm"),
        serving(Some(&"ab".repeat(32))),
        "the implicit :latest tag matches, the digest is lowercased"
    );
    assert_eq!(
        ollama_lists(&body, "all-minilm:latest"),
        serving(Some(&"ab".repeat(32)))
    );
    assert_eq!(
        ollama_lists(&body, "llama3:8b"),
        serving(Some(&"cd".repeat(32))),
        "a sha256: prefix is dropped"
    );
    assert_eq!(ollama_lists(&body, "llama3"), Served::NotServing);
    assert_eq!(
        ollama_lists(&serde_json::json!([]), "x"),
        Served::Unreachable
    );
}

#[test]
fn an_unanswered_probe_does_not_clear_a_mismatch() {
    assert_eq!(
        next_state(&Served::NotServing, Served::Unreachable),
        Served::NotServing
    );
    assert_eq!(
        next_state(&Served::NotServing, serving(None)),
        serving(None)
    );
    assert_eq!(
        next_state(&serving(None), Served::Unreachable),
        Served::Unreachable
    );
    assert_eq!(
        next_state(&Served::Pending, Served::NotServing),
        Served::NotServing
    );
}

#[test]
fn an_unprobed_model_reads_as_not_probed() {
    let off = ServedHandle::new(false);
    assert!(off.is_settled());
    assert_eq!(off.view(&off.load()), ServerView::NotProbed);
    let on = ServedHandle::new(true);
    assert!(!on.is_settled());
    assert_eq!(on.view(&on.load()), ServerView::Pending);
    on.set(serving(Some("ab")));
    assert!(on.is_settled());
    assert_eq!(
        on.view(&on.load()),
        ServerView::Serving {
            ollama_digest: Some("ab")
        }
    );
}

#[test]
fn kinds_parse_from_their_labels() {
    for k in [ProbeKind::KserveV2, ProbeKind::OpenAi, ProbeKind::Ollama] {
        assert_eq!(ProbeKind::parse(k.label()), Some(k));
    }
    assert_eq!(ProbeKind::parse("triton"), None);
}
