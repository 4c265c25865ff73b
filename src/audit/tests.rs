use super::*;

fn event(i: u32) -> AuditEvent {
    AuditEvent {
        request_id: format!("req-{i}"),
        time: "2026-11-26T00:00:00.000Z".into(),
        decision: "deny",
        reason: Some("token_missing"),
        detail: Some("no bearer token"),
        mode: "enforce",
        caller_iss: None,
        caller_sub: None,
        method: "GET".into(),
        path: "/v1/models".into(),
        client: None,
        model: "m".into(),
        requested_model: None,
        served_digest: None,
        version_id: None,
        record_id: None,
        evidence: vec![],
        status: 401,
        latency_ms: 0.1,
    }
}

fn write_events(path: &Path, range: std::ops::Range<u32>) {
    let metrics = Arc::new(Metrics::new());
    let log = AuditLog::open(path, 1024, metrics.clone()).unwrap();
    let n = range.len() as u64;
    for i in range {
        log.emit(event(i));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while metrics.audit_written.get() < n {
        assert!(std::time::Instant::now() < deadline, "writer stalled");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn the_chain_verifies_and_continues_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_events(&path, 0..5);
    write_events(&path, 5..8);
    assert_eq!(
        verify_file(&path).unwrap(),
        VerifyOutcome::Intact { lines: 8 }
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["prev"], GENESIS);
    assert_eq!(first["reason"], "token_missing");
}

#[test]
fn a_deleted_line_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_events(&path, 0..6);
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    match verify_file(&path).unwrap() {
        VerifyOutcome::Broken { line, problem } => {
            assert_eq!(line, 3);
            assert!(problem.contains("missing"), "{problem}");
        }
        other => panic!("deletion not detected: {other:?}"),
    }
}

#[test]
fn an_edited_line_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_events(&path, 0..4);
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replacen("\"req-1\"", "\"req-X\"", 1);
    std::fs::write(&path, edited).unwrap();
    assert_eq!(
        verify_file(&path).unwrap(),
        VerifyOutcome::Broken {
            line: 3,
            problem: "prev does not match the hash of the line before it: that line was edited or removed".into()
        }
    );
}

#[test]
fn a_full_queue_drops_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let log = AuditLog::open(&dir.path().join("a.jsonl"), 1, metrics.clone()).unwrap();
    for i in 0..10_000 {
        log.emit(event(i));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while metrics.audit_written.get() + metrics.audit_dropped.get() < 10_000 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        metrics.audit_dropped.get() > 0,
        "a 1-slot queue must drop under a burst"
    );
}
