use super::*;

fn ok(raw: &str) -> (String, bool) {
    let c = canonical(raw.as_bytes(), Some(b"gate.local")).unwrap();
    (c.to_target(), c.rewritten)
}

fn bad(raw: &[u8]) -> TargetInvalid {
    canonical(raw, Some(b"gate.local")).unwrap_err()
}

#[test]
fn plain_targets_are_kept_and_borrowed() {
    for t in [
        "/v1/chat/completions",
        "/v2/models/m1/infer",
        "/v1/models/m1:predict",
        "/",
        "/v1/models/",
        "/v2/models/m1/infer?x=%2F&y=1",
        "/a.b/c..d/e.",
    ] {
        assert_eq!(ok(t), (t.to_string(), false), "{t}");
        let c = canonical(t.as_bytes(), None).unwrap();
        assert!(matches!(c.path, Cow::Borrowed(_)), "{t} allocated");
    }
}

#[test]
fn equivalent_spellings_become_one() {
    for (raw, want) in [
        ("/v1/embedding%73", "/v1/embeddings"),
        ("/v1/%63hat/completions", "/v1/chat/completions"),
        ("/v2/models/%6D1/infer", "/v2/models/m1/infer"),
        ("/v1//chat///completions", "/v1/chat/completions"),
        ("//v1/models", "/v1/models"),
        ("/v1/./models", "/v1/models"),
        ("/v1/x/../models", "/v1/models"),
        ("/v1/x/%2E%2E/models", "/v1/models"),
        ("/v1/x/.%2e/models", "/v1/models"),
        ("/v1/models/.", "/v1/models/"),
        ("/v1/models/x/..", "/v1/models/"),
        ("/v1/models/m%3Apredict", "/v1/models/m:predict"),
        ("/v1/models/m%3apredict?q=%2f", "/v1/models/m:predict?q=%2f"),
        ("/.well-known/x", "/.well-known/x"),
        ("http://gate.local/v1/models", "/v1/models"),
        ("HTTP://GATE.local", "/"),
    ] {
        assert_eq!(ok(raw).0, want, "{raw}");
    }
    assert!(ok("/v1/embedding%73").1);
    assert!(!ok("/.well-known/x").1, "resolved to itself: not rewritten");
    assert!(ok("http://gate.local/v1/models").1);
}

#[test]
fn ambiguous_targets_are_refused_with_why() {
    use TargetInvalid::*;
    for (raw, why) in [
        (&b"/v1/chat%2Fcompletions"[..], EncodedSlash),
        (b"/v2%2fmodels/other/infer", EncodedSlash),
        (b"/v1/models/a%5Cb", Backslash),
        (b"/v1/models/a\\b", Backslash),
        (b"/v1/models/a%00", Control),
        (b"/v1/models/a%0A", Control),
        (b"/v1/models/a\x01", Control),
        (b"/v1/models/a%252F", EncodedPercent),
        (b"/v1/models/%C3%A9", NonAscii),
        (b"/v1/models/\xc3\xa9", NonAscii),
        (b"/v1/models/\xff", NonAscii),
        (b"/v1/models/a%2", BadEscape),
        (b"/v1/models/a%zz", BadEscape),
        (b"/v1/models/a%20b", Reserved),
        (b"/v1/models/a%3Fb", Reserved),
        (b"/v1/models/a%23b", Reserved),
        (b"/v1/models/a b", Reserved),
        (b"/..", ClimbsOut),
        (b"/v1/../../etc", ClimbsOut),
        (b"/%2e%2e/x", ClimbsOut),
        (b"*", NotOriginForm),
        (b"gate.local:80", NotOriginForm),
        (b"http://other.example/v1/models", OtherAuthority),
        (b"http://gate.local.evil/v1/models", OtherAuthority),
        (b"/v1/models?a=\x01", Control),
    ] {
        assert_eq!(bad(raw), why, "{}", String::from_utf8_lossy(raw));
        assert!(!why.detail().is_empty());
    }
}
