use super::find;
use super::*;

const LINE: &str = r#"{"request_id":"r1","time":"2026-12-01T20:00:00.123Z","decision":"deny","reason":"token_missing","detail":"no bearer token","mode":"enforce","method":"GET","path":"/v1/models","model":"m","status":401,"latency_ms":0.1,"seq":3,"prev":"00"}"#;

#[test]
fn parses_a_record_line() {
    let r = find::parse(LINE).unwrap();
    assert_eq!(r.request_id, "r1");
    assert_eq!(r.reason.as_deref(), Some("token_missing"));
    assert!(r.denied());
    assert_eq!(seconds_of(&r.time).unwrap(), 1_796_155_200);
    assert!(matches!(
        find::parse("{\"kind\":\"segment\"}"),
        Err(ExplainError::Record(_))
    ));
    assert!(matches!(
        seconds_of("yesterday"),
        Err(ExplainError::Time(_))
    ));
}

#[test]
fn finds_a_request_in_an_older_segment_and_says_when_none_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let line = |id: &str| LINE.replace("\"r1\"", &format!("\"{id}\""));
    std::fs::write(
        dir.path().join("audit.jsonl.000001"),
        format!(
            "{{\"kind\":\"segment\",\"segment\":1,\"seq\":0,\"prev\":\"00\"}}\n{}\n{}\n",
            line("old-1"),
            line("old-2")
        ),
    )
    .unwrap();
    std::fs::write(&log, format!("{}\n", line("new-1"))).unwrap();

    let (r, at) = find::find(&log, "old-2").unwrap();
    assert_eq!(r.request_id, "old-2");
    assert_eq!(
        (at.segment_index, at.segments, at.line),
        (1, 2, 3),
        "{at:?}"
    );
    assert!(at.segment.ends_with("audit.jsonl.000001"));
    let (_, at) = find::find(&log, "new-1").unwrap();
    assert_eq!((at.segment_index, at.line), (2, 1));
    // A directory of logs is walked the same way.
    let (_, at) = find::find(dir.path(), "old-1").unwrap();
    assert_eq!(at.line, 2);
    // A prefix of an ID is not the ID.
    match find::find(&log, "old") {
        Err(ExplainError::NotFound { segments, .. }) => assert_eq!(segments, 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_disagreement_names_what_changed() {
    let rec = find::parse(
        &LINE
            .replace("token_missing", "caller_not_allowed")
            .replace(
                "\"no bearer token\"",
                "\"caller is not in the record's callers\"",
            )
            .replace(
                "\"model\":\"m\"",
                "\"model\":\"m\",\"record_id\":\"rec-1\",\"version_id\":\"v1\"",
            ),
    )
    .unwrap();
    let part = |jti: &str, revoked: bool| RecordPart {
        jti: jti.into(),
        version: "v1".into(),
        signers: vec!["k1".into()],
        iat: 1,
        exp: 2,
        revoked,
    };
    let registry = RegistryPart {
        source: "dir x".into(),
        left_out: Vec::new(),
        invalid: Vec::new(),
    };
    let revoked = Decision::deny(DenyReason::ApprovalRevoked, "approval record is revoked");
    let d = diagnose(&rec, &revoked, &[part("rec-1", true)], &registry);
    assert!(
        d.iter()
            .any(|l| l.contains("revoked since") && l.contains("rec-1")),
        "{d:?}"
    );

    let unmanaged = Decision::deny(
        DenyReason::ArtefactUnmanaged,
        "no approval record for the served digest",
    );
    let d = diagnose(&rec, &unmanaged, &[], &registry);
    assert!(
        d.iter()
            .any(|l| l.contains("records changed") && l.contains("rec-1")),
        "{d:?}"
    );

    let other = Decision::deny(DenyReason::DeploymentNotBound, "x");
    let d = diagnose(&rec, &other, &[part("rec-1", false)], &registry);
    assert!(d.iter().any(|l| l.starts_with("config changed")), "{d:?}");
}

#[test]
fn the_refusing_rule_is_the_failed_step_with_the_decision_s_reason_and_detail() {
    use crate::policy::trace::{Rule, Step};
    let step = |rule: Rule, outcome: &'static str, reason: Option<&'static str>, why: &str| Step {
        rule,
        record: None,
        index: None,
        about: String::new(),
        outcome,
        reason,
        why: why.into(),
    };
    let steps = vec![
        step(Rule::Caller, "pass", None, ""),
        step(Rule::Model, "pass", None, ""),
        step(
            Rule::Route,
            "fail",
            Some("route_not_allowed"),
            "no configured API profile lists this route",
        ),
    ];
    let d = Decision::deny(
        DenyReason::RouteNotAllowed,
        "no configured API profile lists this route",
    );
    let o = outcome(&d, &steps);
    assert_eq!(o.rule, Some("route"));
    assert_eq!(o.reason, Some("route_not_allowed"));
    assert_eq!(outcome(&Decision::Opened, &steps).rule, None);
}
