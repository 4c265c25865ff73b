use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::record::{encode_line, synthetic, Body, Marker};
use super::segments::{self, Tail};
use super::verify::{verify, ProblemKind};
use super::*;
use crate::keys::{jwks_document, KeyKind, KeySet, SigningKey};

fn event(i: u32) -> AuditEvent {
    let mut e = synthetic(u64::from(i), false);
    e.reason = Some("token_missing");
    e
}

fn config(path: &Path) -> AuditConfig {
    AuditConfig::at(path)
}

/// Writes events through a real writer and closes it (drain, summaries, checkpoint).
fn write_with(cfg: &AuditConfig, range: std::ops::Range<u32>) -> Arc<crate::telemetry::Metrics> {
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let log = AuditLog::open(cfg, metrics.clone()).unwrap();
    let n = range.len() as u64;
    for i in range {
        log.emit(event(i));
        // A unit test wants records, not summaries: wait when the queue is half full.
        while metrics.audit_written.get() + (cfg.queue as u64) / 2 < u64::from(i) % n {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    assert!(log.close(Duration::from_secs(10)), "writer did not finish");
    metrics
}

fn problems(path: &Path, keys: Option<&KeySet>) -> Vec<(ProblemKind, String)> {
    verify(path, keys)
        .unwrap()
        .into_iter()
        .flat_map(|r| r.problems)
        .map(|p| (p.kind, p.to_string()))
        .collect()
}

fn keypair(dir: &Path) -> (Arc<SigningKey>, KeySet) {
    let (k, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let jwks = jwks_document(std::slice::from_ref(&k.public_jwk));
    let set = KeySet::from_jwks_json(&jwks, "test").unwrap();
    std::fs::write(dir.join("sidecar.jwks.json"), jwks).unwrap();
    (Arc::new(k), set)
}

#[test]
fn the_chain_verifies_and_continues_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_with(&config(&path), 0..5);
    write_with(&config(&path), 5..8);
    assert_eq!(problems(&path, None), vec![]);
    let text = std::fs::read_to_string(&path).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["prev"], GENESIS);
    assert_eq!(first["kind"], "segment");
    assert_eq!(first["segment"], 1);
    let events = text
        .lines()
        .filter(|l| l.contains("\"request_id\""))
        .count();
    assert_eq!(events, 8);
}

#[test]
fn a_deleted_line_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_with(&config(&path), 0..6);
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    let p = problems(&path, None);
    assert_eq!(p[0].0, ProblemKind::Missing, "{p:?}");
    assert!(p[0].1.contains(":3:"), "{p:?}");
}

#[test]
fn an_edited_line_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_with(&config(&path), 0..4);
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replacen("gen-0000000001", "gen-000000000X", 1);
    std::fs::write(&path, edited).unwrap();
    let p = problems(&path, None);
    assert_eq!(p[0].0, ProblemKind::Edited, "{p:?}");
    assert!(p[0].1.contains(":4:"), "{p:?}");
}

#[test]
fn every_request_field_is_cut_to_its_bound_and_marked() {
    let mut e = event(1);
    e.path = "\"".repeat(70_000);
    e.requested_model = Some("\u{7}".repeat(70_000));
    e.caller_sub = Some("é".repeat(1000));
    e.method = "M".repeat(100);
    e.evidence = vec![
        EvidenceRef {
            kind: "k".into(),
            uri: "u".repeat(10_000),
            digest: "d".into(),
            verdict: "pass".into(),
        };
        20
    ];
    e.bound();
    assert_eq!(e.path.len(), record::bounds::PATH);
    assert_eq!(e.cut["path"], 70_000);
    assert_eq!(e.cut["requested_model"], 70_000);
    assert_eq!(e.cut["caller_sub"], 2000);
    assert!(e.caller_sub.as_ref().unwrap().len() <= record::bounds::CALLER_SUB);
    assert_eq!(e.cut["method"], 100);
    assert_eq!(e.cut["evidence"], 20);
    assert_eq!(e.evidence.len(), record::bounds::EVIDENCE_ENTRIES);
    let line = encode_line(1, Body::Event(&e), GENESIS).unwrap();
    assert!(line.len() <= MAX_LINE_BYTES, "{}", line.len());
}

#[test]
fn signer_fields_are_cut_to_their_bounds() {
    use record::bounds::*;
    let mut e = event(1);
    e.model_signer_identity = Some(format!("spiffe://{}", "a".repeat(1000)));
    e.record_signers = vec![format!("x509:{}", "b".repeat(1000)); RECORD_SIGNER_ENTRIES + 3];
    e.bound();
    assert_eq!(
        e.model_signer_identity.as_ref().unwrap().len(),
        MODEL_SIGNER_IDENTITY
    );
    assert_eq!(e.record_signers.len(), RECORD_SIGNER_ENTRIES);
    assert!(e.record_signers.iter().all(|s| s.len() == RECORD_SIGNER));
    assert_eq!(e.cut["model_signer_identity"], 1009);
    assert_eq!(e.cut["record_signers"], RECORD_SIGNER_ENTRIES + 3);
}

/// The worst case the bounds allow (every field at its bound, every byte escaped to six)
/// stays under the line bound.
#[test]
fn the_bounds_hold_the_line_bound_in_the_worst_case() {
    use record::bounds::*;
    let worst = |n: usize| "\u{1}".repeat(n);
    let mut e = event(1);
    e.request_id = worst(REQUEST_ID);
    e.method = worst(METHOD);
    e.path = worst(PATH);
    e.client = Some(worst(CLIENT));
    e.model = worst(MODEL);
    e.requested_model = Some(worst(REQUESTED_MODEL));
    e.caller_iss = Some(worst(CALLER_ISS));
    e.caller_sub = Some(worst(CALLER_SUB));
    e.served_digest = Some(worst(SERVED_DIGEST));
    e.version_id = Some(worst(VERSION_ID));
    e.record_id = Some(worst(RECORD_ID));
    e.evidence = vec![
        EvidenceRef {
            kind: worst(EVIDENCE_KIND),
            uri: worst(EVIDENCE_URI),
            digest: worst(EVIDENCE_DIGEST),
            verdict: worst(EVIDENCE_VERDICT),
        };
        EVIDENCE_ENTRIES
    ];
    e.model_signer = Some(worst(MODEL_SIGNER));
    e.model_signer_identity = Some(worst(MODEL_SIGNER_IDENTITY));
    e.record_signers = vec![worst(RECORD_SIGNER); RECORD_SIGNER_ENTRIES];
    for name in [
        "model_signer",
        "model_signer_identity",
        "record_signers",
        "path",
        "method",
        "request_id",
        "client",
        "model",
        "requested_model",
        "caller_iss",
        "caller_sub",
        "served_digest",
        "version_id",
        "record_id",
        "evidence",
    ] {
        e.cut.insert(name, usize::MAX);
    }
    let line = serde_json::to_string(&e).unwrap();
    assert!(
        line.len() + 200 <= MAX_LINE_BYTES,
        "worst case {} bytes",
        line.len()
    );
}

#[test]
fn an_unreadable_last_line_starts_a_new_segment_that_says_so() {
    for (name, tail) in [
        ("garbage", b"\x00\xffnot json at all\n".to_vec()),
        ("cut", b"{\"seq\":7,\"kind\":\"segm".to_vec()),
        ("long", {
            let mut v = vec![b'x'; 10 * 1024 * 1024];
            v.push(b'\n');
            v
        }),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        write_with(&config(&path), 0..3);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&tail);
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            segments::read_tail(&path).unwrap(),
            Tail::Unreadable(_)
        ));
        write_with(&config(&path), 3..5);
        // The damaged file was set aside as segment 1; the new one starts with the break.
        assert!(segments::rotated_path(&path, 1).exists(), "{name}");
        let first = std::fs::read_to_string(&path).unwrap();
        let first: Marker = serde_json::from_str(first.lines().next().unwrap()).unwrap();
        match first {
            Marker::Segment {
                segment: 2,
                chain_break: Some(why),
                ..
            } => assert!(why.contains("could not be read"), "{name}: {why}"),
            other => panic!("{name}: {other:?}"),
        }
        let p = problems(&path, None);
        assert_eq!(p[0].0, ProblemKind::Unreadable, "{name}: {p:?}");
        assert!(
            p.iter().any(|(k, _)| *k == ProblemKind::ChainBreak),
            "{name}: {p:?}"
        );
    }
}

#[test]
fn rotation_keeps_one_chain_and_records_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let mut cfg = config(&path);
    cfg.max_segment_bytes = 4096;
    cfg.keep_segments = 3;
    write_with(&cfg, 0..400);
    let rotated = segments::rotated(&path).unwrap();
    assert_eq!(rotated.len(), 3, "{rotated:?}");
    assert!(rotated[0].0 > 1);
    assert_eq!(problems(&path, None), vec![]);
    assert_eq!(problems(dir.path(), None), vec![]);
}

#[test]
fn checkpoints_catch_truncation_rewrites_and_removed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let (key, keys) = keypair(dir.path());
    let mut cfg = config(&path);
    cfg.max_segment_bytes = 8192;
    cfg.keep_segments = 0;
    cfg.checkpoint_key = Some(key);
    write_with(&cfg, 0..200);
    assert_eq!(problems(&path, Some(&keys)), vec![]);
    let clean = dir.path().join("clean");
    std::fs::create_dir(&clean).unwrap();
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, clean.join(f.file_name().unwrap())).unwrap();
        }
    }
    let restore = || {
        for f in std::fs::read_dir(&clean).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
    };

    // Truncate the last lines (the shutdown checkpoint among them).
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&path, lines[..lines.len() - 3].join("\n") + "\n").unwrap();
    let p = problems(&path, Some(&keys));
    assert!(
        p.iter().any(|(k, _)| *k == ProblemKind::TruncatedTail),
        "{p:?}"
    );
    restore();

    // Rewrite the chain consistently (every prev recomputed): only the signature sees it.
    let rewritten = rechain(&text.replace("gen-0000000199", "gen-forged0199"));
    std::fs::write(&path, rewritten).unwrap();
    let p = problems(&path, Some(&keys));
    assert!(
        p.iter().any(|(k, _)| *k == ProblemKind::RewrittenChain),
        "{p:?}"
    );
    restore();

    // Remove a middle segment.
    std::fs::remove_file(segments::rotated_path(&path, 2)).unwrap();
    let p = problems(&path, Some(&keys));
    assert_eq!(p[0].0, ProblemKind::RemovedSegment, "{p:?}");
    restore();
    assert_eq!(problems(&path, Some(&keys)), vec![]);
}

/// Recomputes every `prev` of a file whose lines were edited, as a forger would (its first
/// line keeps its `prev`).
fn rechain(text: &str) -> String {
    let mut out = String::new();
    let mut prev: Option<String> = None;
    for l in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        if let Some(p) = &prev {
            v["prev"] = serde_json::json!(p);
        }
        let mut m = v.as_object().unwrap().clone();
        let prev_v = m.remove("prev").unwrap();
        m.insert("prev".into(), prev_v);
        let line = serde_json::to_string(&m).unwrap();
        prev = Some(line_hash(line.as_bytes()));
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[test]
fn a_full_queue_summarises_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let mut cfg = config(&path);
    cfg.queue = 1;
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let log = AuditLog::open(&cfg, metrics.clone()).unwrap();
    for i in 0..10_000 {
        log.emit(event(i));
    }
    assert!(log.close(Duration::from_secs(10)));
    assert!(
        metrics.audit_summarised.get() > 0,
        "a 1-slot queue must overflow under a burst"
    );
    let mut singles = 0;
    let mut summarised = 0;
    super::read::for_each_line(&path, |_, l| {
        let v: serde_json::Value = serde_json::from_slice(l).unwrap();
        match v["kind"].as_str() {
            None => singles += 1,
            Some("summary") => summarised += v["count"].as_u64().unwrap(),
            _ => {}
        }
        true
    })
    .unwrap();
    assert_eq!(singles + summarised, 10_000);
    assert_eq!(problems(&path, None), vec![]);
}

#[test]
fn the_streaming_reader_bounds_each_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x");
    let mut bytes = b"{\"a\":1}\n".to_vec();
    bytes.extend(vec![b'y'; 3 * MAX_LINE_BYTES]);
    bytes.extend_from_slice(b"\n{\"b\":2}\n{\"c\"");
    std::fs::write(&path, bytes).unwrap();
    let mut seen = Vec::new();
    super::read::for_each_raw(&path, |n, l| {
        seen.push(match l {
            super::read::RawLine::Line { bytes, complete } => {
                format!("{n}:{}:{complete}", String::from_utf8_lossy(bytes))
            }
            super::read::RawLine::TooLong(len) => format!("{n}:long {len}"),
        });
        true
    })
    .unwrap();
    assert_eq!(
        seen,
        vec![
            "1:{\"a\":1}:true".to_string(),
            format!("2:long {}", 3 * MAX_LINE_BYTES),
            "3:{\"b\":2}:true".into(),
            "4:{\"c\":false".into(),
        ]
    );
}

#[test]
fn fail_closed_denies_while_the_log_is_unwritable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let mut cfg = config(&path);
    cfg.on_write_failure = WriteFailure::FailClosed;
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let log = AuditLog::open(&cfg, metrics.clone()).unwrap();
    log.emit(event(1));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.failing() {
        assert!(Instant::now() < deadline, "the failure was not noticed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(metrics.audit_writable.get(), 0);
    assert!(metrics.audit_write_failures.get() >= 1);
    // The disk comes back: the log recovers and the lost record is in a summary.
    std::fs::remove_file(&path).unwrap();
    while log.failing() {
        assert!(Instant::now() < deadline, "no recovery");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(log.close(Duration::from_secs(5)));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"cause\":\"write_failed\""), "{text}");
    assert_eq!(metrics.audit_writable.get(), 1);
}

#[test]
fn the_audit_section_reports_every_error_with_its_key() {
    let file: config::AuditFile = toml::from_str(
        r#"
queue = 0
max_segment_bytes = 10
max_segment_age = "soon"
checkpoint_interval = "0s"
checkpoint_key = "/nonexistent/key.pem"
on_write_failure = "panic"
"#,
    )
    .unwrap();
    let mut errors = Vec::new();
    file.validate(&mut errors);
    for key in [
        "audit.queue",
        "audit.max_segment_bytes",
        "audit.max_segment_age",
        "audit.checkpoint_interval",
        "audit.checkpoint_key",
        "audit.on_write_failure",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(key)),
            "{key} not reported: {errors:?}"
        );
    }
    assert!(toml::from_str::<config::AuditFile>("segment_size = 1").is_err());
    let mut errors = Vec::new();
    let c = config::AuditFile::default().validate(&mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(c.on_write_failure, WriteFailure::KeepServing);
    assert_eq!(c.max_segment_age, Duration::from_secs(24 * 3600));
}

#[test]
fn a_log_that_cannot_be_opened_does_not_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    // The log's directory is a regular file: nothing can be created under it.
    std::fs::write(dir.path().join("not-a-dir"), b"x").unwrap();
    let cfg = config(&dir.path().join("not-a-dir/a.jsonl"));
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let log = AuditLog::open(&cfg, metrics.clone()).unwrap();
    assert!(log.failing());
    assert_eq!(metrics.audit_writable.get(), 0);
    assert_eq!(metrics.audit_write_failures.get(), 1);
    log.emit(event(1));
    assert!(log.close(Duration::from_secs(5)));
    assert_eq!(metrics.audit_summarised.get(), 1);
}

/// A log written before segments existed (no segment record) continues, rotates, and
/// verifies as one chain starting at segment 1.
#[test]
fn a_log_from_before_segments_continues_and_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    // The old format: events only, `prev` from GENESIS.
    let mut prev = GENESIS.to_string();
    let mut text = String::new();
    for i in 0..3u64 {
        let line = encode_line(i + 1, Body::Event(&event(i as u32)), &prev).unwrap();
        prev = line_hash(line.as_bytes());
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    let mut cfg = config(&path);
    cfg.max_segment_bytes = 4096;
    write_with(&cfg, 3..40);
    assert!(segments::rotated_path(&path, 1).exists());
    assert_eq!(problems(&path, None), vec![]);
}

/// A panic in the writer thread is caught: counted, the log fails closed meanwhile
/// (`on_write_failure = fail_closed` denies), and a writer reopened from the file after the
/// backoff resumes the chain, which still verifies.
#[test]
fn a_panicking_writer_fails_closed_then_resumes_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let mut cfg = config(&path);
    cfg.on_write_failure = WriteFailure::FailClosed;
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let log = AuditLog::open(&cfg, metrics.clone()).unwrap();
    log.emit(event(1));
    let mut boom = event(2);
    boom.path = "/__audit_writer_panics__".into();
    log.emit(boom);
    let panics = metrics
        .background_panics
        .with_label_values(&["audit writer"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while panics.get() == 0 {
        assert!(Instant::now() < deadline, "the panic was not caught");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(log.failing());
    let allow = Decision::Opened;
    assert_eq!(
        log.gate(allow).reason(),
        Some(DenyReason::TrustDataUnavailable)
    );
    while log.failing() {
        assert!(Instant::now() < deadline, "no writer after the backoff");
        std::thread::sleep(Duration::from_millis(20));
    }
    log.emit(event(3));
    assert!(log.close(Duration::from_secs(10)));
    assert_eq!(panics.get(), 1);
    assert_eq!(metrics.audit_writable.get(), 1);
    assert_eq!(problems(&path, None), vec![]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"seq\":"), "{text}");
}

#[test]
fn ocsf_export_keeps_who_signed_in_unmapped() {
    let mut e = event(1);
    e.model_signer = Some("release".into());
    e.model_signer_identity = Some("spiffe://example.org/ci".into());
    e.record_signers = vec!["x509:spiffe://example.org/approver".into()];
    let v = serde_json::to_value(&e).unwrap();
    let o = super::ocsf::event(&v).unwrap();
    assert_eq!(o["unmapped"]["model_signer"], "release");
    assert_eq!(
        o["unmapped"]["model_signer_identity"],
        "spiffe://example.org/ci"
    );
    assert_eq!(
        o["unmapped"]["record_signers"],
        serde_json::json!(["x509:spiffe://example.org/approver"])
    );
}

/// Numbers at the top of `u64` (a forged or corrupted line) are reported as problems, never
/// a crash of `audit verify`: a segment, `seq` or checkpoint count of `u64::MAX` followed
/// by more lines (found by the `audit_verify` fuzz target).
#[test]
fn verify_reports_numbers_at_the_top_of_u64_without_crashing() {
    let dir = tempfile::tempdir().unwrap();
    let max = u64::MAX;
    let zero = super::record::GENESIS;
    for lines in [
        // A segment numbered u64::MAX, then another segment record.
        format!(
            "{{\"seq\":1,\"kind\":\"segment\",\"segment\":{max},\"time\":\"t\",\"prev\":\"{zero}\"}}\n\
             {{\"seq\":2,\"kind\":\"segment\",\"segment\":{max},\"time\":\"t\",\"prev\":\"{zero}\"}}\n"
        ),
        // A record numbered u64::MAX, then another record.
        format!(
            "{{\"seq\":{max},\"prev\":\"{zero}\"}}\n{{\"seq\":{max},\"prev\":\"{zero}\"}}\n"
        ),
        // A checkpoint for record u64::MAX.
        format!(
            "{{\"seq\":1,\"kind\":\"checkpoint\",\"time\":\"t\",\"segment\":1,\"count\":{max},\"head\":\"{zero}\",\"prev\":\"{zero}\"}}\n"
        ),
        // Segments pruned through u64::MAX, the log starting at segment 2.
        format!(
            "{{\"seq\":1,\"kind\":\"segment\",\"segment\":2,\"time\":\"t\",\"prev\":\"{zero}\"}}\n\
             {{\"seq\":2,\"kind\":\"pruned\",\"segment\":{max},\"time\":\"t\",\"prev\":\"{zero}\"}}\n"
        ),
    ] {
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, &lines).unwrap();
        let found = problems(&path, None);
        assert!(!found.is_empty(), "{lines}: no problem reported");
    }
}

#[test]
fn an_idle_writer_sleeps_until_its_deadlines_and_a_close_wakes_it_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let mut cfg = config(&path);
    cfg.checkpoint_interval = Duration::from_millis(400);
    cfg.max_segment_age = Duration::from_millis(900);
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let log = AuditLog::open(&cfg, metrics.clone()).unwrap();
    log.emit(event(1));
    // No more records: the checkpoint falls due and is written on the writer's own deadline,
    // then the segment ages out and rotates, with no event to wake the writer.
    let checkpoint = segments::checkpoint_path(&path);
    let started = Instant::now();
    while !checkpoint.exists() {
        assert!(started.elapsed() < Duration::from_secs(3), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    while segments::rotated(&path).unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "no rotation by age"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metrics.audit_rotations.get(), 1);
    // Idle again (nothing to checkpoint, an empty segment does not age out): a close is
    // answered at once, not at the next tick.
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    assert!(log.close(Duration::from_secs(5)));
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(problems(dir.path(), None), vec![]);
}

// === append (provgate promote) ===

fn promotion(outcome: &str) -> Marker {
    Marker::Promotion(Box::new(record::Promotion {
        time: "2026-12-01T00:00:00.000Z".into(),
        env: "staging".into(),
        outcome: outcome.into(),
        iss: "alice@example.org".into(),
        kid: "k1".into(),
        digest: format!("sha256:{}", "ab".repeat(32)),
        model: "m".into(),
        version_id: "v1".into(),
        record_id: "r1".into(),
        registry: "dir".into(),
        published_to: None,
        failed: vec!["lifetime (record r1): too long".into()],
    }))
}

#[test]
fn appended_promotions_continue_the_chain_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("promotions.jsonl");
    assert_eq!(append::append(&path, &promotion("refused")).unwrap(), 2);
    assert_eq!(append::append(&path, &promotion("published")).unwrap(), 3);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "a segment record, then the two promotions");
    assert!(matches!(
        serde_json::from_str::<Marker>(lines[0]).unwrap(),
        Marker::Segment { segment: 1, .. }
    ));
    let back: Marker = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(back, promotion("published"));
    let reports = verify(&path, None).unwrap();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].intact(), "{:?}", reports[0].problems);
    assert_eq!(reports[0].records, 3);
}

#[test]
fn appending_after_a_sidecar_log_continues_it_and_an_edit_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let cfg = config(&path);
    write_with(&cfg, 0..5);
    append::append(&path, &promotion("published")).unwrap();
    append::append(&path, &promotion("refused")).unwrap();
    assert!(verify(&path, None).unwrap().iter().all(|r| r.intact()));
    // A promotion line is covered by the chain like any other: the next line's `prev`
    // no longer matches an edited one (the last line is the checkpoints' business).
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replacen("\"env\":\"staging\"", "\"env\":\"prod\"", 1);
    assert_ne!(edited, text);
    std::fs::write(&path, edited).unwrap();
    assert!(!verify(&path, None).unwrap().iter().all(|r| r.intact()));
}

#[test]
fn a_log_with_a_torn_last_line_is_not_continued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("promotions.jsonl");
    append::append(&path, &promotion("published")).unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"seq\":3,");
    std::fs::write(&path, &text).unwrap();
    let err = append::append(&path, &promotion("published")).unwrap_err();
    assert!(matches!(err, append::AppendError::Tail { .. }), "{err}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "nothing written"
    );
}

/// A reader of a live log that rotates under it fails nothing and misses nothing: every
/// record already in the log when a scan begins is read by it. (The reader listed the
/// segments, then opened them: the live file renamed away in between was a "no such file"
/// error, or a new live file read in its place and the renamed one's records missed.)
#[test]
fn a_scan_of_a_log_rotating_under_it_fails_nothing_and_misses_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let active = dir.path().join("audit.jsonl");
    let written = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    // The writer: record i goes into a new live file, which is then rotated away.
    let writer = {
        let (active, written, done) = (active.clone(), written.clone(), done.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !done.load(Ordering::Acquire) {
                i += 1;
                let line =
                    format!("{{\"time\":\"2026-12-02T00:00:00Z\",\"request_id\":\"r{i}\"}}\n");
                std::fs::write(&active, line).unwrap();
                written.store(i, Ordering::Release);
                std::fs::rename(&active, segments::rotated_path(&active, i)).unwrap();
            }
        })
    };
    let (mut failed, mut missed, mut scans) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let before = written.load(Ordering::Acquire);
        let mut seen = std::collections::HashSet::new();
        let scanned = query::scan(&active, &Default::default(), |v, _, _| {
            if let Some(id) = v.request_id.as_deref() {
                seen.insert(id.to_string());
            }
        });
        scans += 1;
        if scanned.is_err() {
            failed += 1;
        } else if (1..=before).any(|i| !seen.contains(&format!("r{i}"))) {
            missed += 1;
        }
    }
    done.store(true, Ordering::Release);
    writer.join().unwrap();
    assert_eq!(
        (failed, missed),
        (0, 0),
        "of {scans} scans, {failed} failed and {missed} missed a record"
    );
}
