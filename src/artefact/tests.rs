use super::*;
use crate::oms::{compute_manifest, Serialization};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn shards(shard_size: u64) -> Serialization {
    Serialization::Shards { shard_size }
}

fn opts(serialization: Serialization, threads: usize) -> HashOptions {
    HashOptions::new(serialization, threads)
}

/// Past the file system's timestamp tick, so that a change is seen in ctime.
fn next_tick() {
    std::thread::sleep(Duration::from_millis(30));
}

#[test]
fn the_watcher_publishes_and_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w"), b"weights").unwrap();
    let handle = Arc::new(ArtefactHandle::default());
    let stop = Arc::new(AtomicBool::new(false));
    let w = ArtefactWatcher {
        model: "m".into(),
        path: dir.path().to_path_buf(),
        poll_interval: Duration::from_millis(200),
        serialization: Serialization::Files,
        threads: 1,
        progress_log_every: Duration::from_secs(5),
        handle: handle.clone(),
        metrics: Arc::new(Metrics::new()),
        signers: Arc::new(Vec::new()),
        heartbeat: None,
        manifest_cache: None,
    };
    let s = stop.clone();
    let t = std::thread::spawn(move || w.run(s));
    let wait_for = |want: Digest| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if handle.load().digest() == Some(&want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("digest never became {want}; state {:?}", **handle.load());
    };
    wait_for(compute_manifest(dir.path(), 1).unwrap().root);
    assert!(handle.is_settled());
    std::fs::write(dir.path().join("w"), b"swapped").unwrap();
    wait_for(compute_manifest(dir.path(), 1).unwrap().root);
    crate::kit::stop::set(&stop);
    t.join().unwrap();
}

#[test]
fn the_watcher_follows_an_edit_in_place_under_shards() {
    let dir = tempfile::tempdir().unwrap();
    let w_path = dir.path().join("w");
    std::fs::write(&w_path, vec![5u8; 10_000]).unwrap();
    std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
    let handle = Arc::new(ArtefactHandle::default());
    let stop = Arc::new(AtomicBool::new(false));
    let w = ArtefactWatcher {
        model: "m".into(),
        path: dir.path().to_path_buf(),
        poll_interval: Duration::from_millis(100),
        serialization: shards(1024),
        threads: 2,
        progress_log_every: Duration::from_secs(5),
        handle: handle.clone(),
        metrics: Arc::new(Metrics::new()),
        signers: Arc::new(Vec::new()),
        heartbeat: None,
        manifest_cache: None,
    };
    let s = stop.clone();
    let t = std::thread::spawn(move || w.run(s));
    let digest = || {
        hash_dir(dir.path(), &opts(shards(1024), 1), None)
            .unwrap()
            .root
    };
    let wait_for = |want: Digest| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if handle.load().digest() == Some(&want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("digest never became {want}; state {:?}", **handle.load());
    };
    let approved = digest();
    wait_for(approved);
    assert!(matches!(
        &**handle.load(),
        ArtefactState::Ready { files: 2, .. }
    ));
    next_tick();
    let mut byte = [0u8];
    byte[0] = 6;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&w_path)
        .unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &byte, 5000).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let tampered = digest();
    assert_ne!(tampered, approved);
    wait_for(tampered);
    crate::kit::stop::set(&stop);
    t.join().unwrap();
}

/// Moved from telemetry with `set_artefact_state`: the artefact series register and encode.
#[test]
fn every_metric_registers_and_encodes() {
    let m = Metrics::new();
    m.requests
        .with_label_values(&["deny", "token_missing", "m", "none"])
        .inc();
    ArtefactMetrics::new(&m, "m").set(&ArtefactState::Ready {
        digest: crate::digest::Digest([1; 32]),
        files: 1,
        bytes: 1,
        signature: crate::oms::SignatureState::Absent,
    });
    let text = String::from_utf8(m.encode()).unwrap();
    for name in [
        crate::telemetry::names::REQUESTS_TOTAL,
        crate::telemetry::names::ARTEFACT_INFO,
        crate::telemetry::names::ARTEFACT_STATE,
        crate::telemetry::names::BUILD_INFO,
        crate::telemetry::names::TOKEN_CACHE_REQUESTS_TOTAL,
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(text.contains("provgate_artefact_state{model=\"m\",state=\"ready\"} 1"));
    assert!(text.contains("provgate_artefact_state{model=\"m\",state=\"hashing\"} 0"));
}

#[test]
fn a_stop_abandons_a_hash_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    // Sparse: seconds of hashing without the disk space.
    let big = std::fs::File::create(dir.path().join("w")).unwrap();
    big.set_len(8 << 30).unwrap();
    drop(big);
    let handle = Arc::new(ArtefactHandle::default());
    let stop = Arc::new(AtomicBool::new(false));
    let w = ArtefactWatcher {
        model: "m".into(),
        path: dir.path().to_path_buf(),
        poll_interval: Duration::from_secs(3600),
        serialization: Serialization::Files,
        threads: 1,
        progress_log_every: Duration::from_secs(5),
        handle: handle.clone(),
        metrics: Arc::new(Metrics::new()),
        signers: Arc::new(Vec::new()),
        heartbeat: None,
        manifest_cache: None,
    };
    let s = stop.clone();
    let t = std::thread::spawn(move || w.run(s));
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    crate::kit::stop::set(&stop);
    t.join().unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    // Neither a digest nor a failure: the hash was abandoned, not finished.
    assert!(matches!(**handle.load(), ArtefactState::Pending));
    assert!(!handle.is_settled());
}

fn scrubber(dir: &std::path::Path, handle: &Arc<ArtefactHandle>, rate: u64) -> Scrubber {
    Scrubber {
        model: "m".into(),
        path: dir.to_path_buf(),
        serialization: Serialization::Files,
        threads: 1,
        interval: Duration::from_secs(3600),
        rate,
        handle: handle.clone(),
        metrics: Arc::new(Metrics::new()),
        signers: Arc::new(Vec::new()),
        heartbeat: None,
        manifest_cache: None,
    }
}

fn ready(digest: Digest) -> ArtefactState {
    ArtefactState::Ready {
        digest,
        files: 1,
        bytes: 7,
        signature: crate::oms::SignatureState::Absent,
    }
}

#[test]
fn a_scrub_finds_content_changed_behind_the_published_digest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w"), b"weights").unwrap();
    let approved = compute_manifest(dir.path(), 1).unwrap().root;
    let handle = Arc::new(ArtefactHandle::default());
    handle.set(ready(approved));
    let s = scrubber(dir.path(), &handle, 1 << 30);
    let stop = Arc::new(AtomicBool::new(false));
    assert_eq!(s.scrub_once(&stop), ScrubOutcome::Ok);
    assert_eq!(handle.load().digest(), Some(&approved));

    // Same size; the watcher is not running, so only the scrub can see it.
    std::fs::write(dir.path().join("w"), b"WEIGHTS").unwrap();
    assert_eq!(s.scrub_once(&stop), ScrubOutcome::Mismatch);
    let found = compute_manifest(dir.path(), 1).unwrap().root;
    assert_eq!(handle.load().digest(), Some(&found));
    assert_ne!(found, approved);
    assert!(handle.distrust.load(Ordering::Relaxed));
    let scrubs = s
        .metrics
        .artefact_scrubs
        .with_label_values(&["m", "mismatch"])
        .get();
    assert_eq!(scrubs, 1);
    // One digest series for the model: the scrub's finding, not the approved digest too.
    let m = &s.metrics;
    ArtefactMetrics::new(m, "m").set(&ready(approved));
    ArtefactMetrics::new(m, "m").set(&ready(found));
    let text = String::from_utf8(m.encode()).unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("provgate_artefact_info{"))
        .collect();
    assert_eq!(series.len(), 1, "{series:?}");
    assert!(series[0].contains(&found.to_string()), "{series:?}");

    // One signature series for the model too: a valid signature replaces "absent".
    let signed = ArtefactState::Ready {
        digest: found,
        files: 1,
        bytes: 7,
        signature: crate::oms::SignatureState::Valid {
            signer: "release".into(),
            identity: None,
        },
    };
    ArtefactMetrics::new(m, "m").set(&signed);
    let text = String::from_utf8(m.encode()).unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("provgate_artefact_signature{"))
        .collect();
    assert_eq!(series.len(), 1, "{series:?}");
    assert!(
        series[0].contains("signer=\"release\"") && series[0].contains("state=\"valid\""),
        "{series:?}"
    );
}

#[test]
fn a_scrub_never_overwrites_what_the_watcher_published_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w"), b"weights").unwrap();
    let handle = Arc::new(ArtefactHandle::default());
    let current = {
        handle.set(ready(Digest([1; 32])));
        handle.state.load_full()
    };
    handle.set(ArtefactState::Hashing);
    assert!(!handle.state.store_if(&current, ready(Digest([2; 32]))));
    assert!(handle.load().digest().is_none());
    // Nothing published: nothing to compare with.
    let s = scrubber(dir.path(), &handle, 1 << 30);
    assert_eq!(
        s.scrub_once(&Arc::new(AtomicBool::new(false))),
        ScrubOutcome::Skipped
    );
}

#[test]
fn a_scrub_keeps_to_its_rate_and_stops_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w"), vec![0u8; 4 << 20]).unwrap();
    let handle = Arc::new(ArtefactHandle::default());
    handle.set(ready(compute_manifest(dir.path(), 1).unwrap().root));
    // 4 MiB at 8 MiB/s: about half a second.
    let s = scrubber(dir.path(), &handle, 8 << 20);
    let t = Instant::now();
    assert_eq!(
        s.scrub_once(&Arc::new(AtomicBool::new(false))),
        ScrubOutcome::Ok
    );
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    // At 1 MiB/s it would take 4 s; a stop ends it within a slice.
    let slow = scrubber(dir.path(), &handle, 1 << 20);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let t = Instant::now();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        crate::kit::stop::set(&flag);
    });
    assert_eq!(slow.scrub_once(&stop), ScrubOutcome::Stopped);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    stopper.join().unwrap();
}

// === Persisted manifest settings ===

fn section(extra: &str) -> config::ArtefactFile {
    toml::from_str(&format!("model = \"m\"\npath = \"/models/m\"\n{extra}")).unwrap()
}

fn models(files: &[config::ArtefactFile]) -> (Vec<config::ModelConfig>, Vec<String>) {
    let mut errors = crate::fields::Errors::new();
    let m = config::validate_models(None, files, &mut errors);
    (m, errors.into_messages())
}

#[test]
fn the_manifest_cache_defaults_beside_the_audit_log_with_a_managed_key() {
    let (m, errors) = models(&[section("")]);
    assert!(errors.is_empty(), "{errors:?}");
    let c = m[0].manifest_cache(Path::new("/var/log/provgate")).unwrap();
    assert_eq!(c.path, Path::new("/var/log/provgate/manifest-m.json"));
    assert!(matches!(&c.key, config::CacheKeySource::Managed(p)
        if p == Path::new("/var/log/provgate/manifest-cache.key")));

    let (m, errors) = models(&[section("manifest_cache = \"off\"")]);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(m[0].manifest_cache(Path::new("/x")).is_none());
}

#[test]
fn manifest_cache_settings_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let short = tmp.path().join("short.key");
    std::fs::write(&short, b"too short").unwrap();
    let good = tmp.path().join("good.key");
    std::fs::write(&good, [3u8; 32]).unwrap();

    let (m, errors) = models(&[section(&format!(
        "manifest_cache = \"/c/m.json\"\nmanifest_cache_key = \"{}\"",
        good.display()
    ))]);
    assert!(errors.is_empty(), "{errors:?}");
    let c = m[0].manifest_cache(Path::new("/ignored")).unwrap();
    assert_eq!(c.path, Path::new("/c/m.json"));
    assert!(matches!(c.key, config::CacheKeySource::Configured(_)));

    for (extra, field) in [
        (
            format!("manifest_cache_key = \"{}\"", short.display()),
            "manifest_cache_key",
        ),
        (
            "manifest_cache_key = \"/no/such/key\"".to_string(),
            "manifest_cache_key",
        ),
        ("manifest_cache = \"\"".to_string(), "manifest_cache"),
        (
            format!(
                "manifest_cache = \"off\"\nmanifest_cache_key = \"{}\"",
                good.display()
            ),
            "manifest_cache_key",
        ),
    ] {
        let (_, errors) = models(&[section(&extra)]);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&format!("artefacts[0].{field}"))),
            "{extra}: {errors:?}"
        );
    }
    let two = |name: &str| {
        toml::from_str::<config::ArtefactFile>(&format!(
            "model = \"{name}\"\npath = \"/models/{name}\"\nmanifest_cache = \"/c/same.json\""
        ))
        .unwrap()
    };
    let (_, errors) = models(&[two("a"), two("b")]);
    assert!(
        errors.iter().any(|e| e.contains("another model's cache")),
        "{errors:?}"
    );
}

/// What a panicking watcher or scrub leaves behind (`server.rs` gives this to `OnPanic`): no
/// digest to approve, so every request is refused until a hash publishes one again.
#[test]
fn a_panicked_service_fails_the_artefact_closed() {
    let handle = ArtefactHandle::default();
    handle.set(ready(Digest([7; 32])));
    assert!(handle.load().digest().is_some());
    handle.fail_closed("the artefact watcher panicked");
    assert!(handle.is_settled());
    assert!(handle.load().digest().is_none());
    assert!(
        matches!(&**handle.load(), ArtefactState::Failed { error } if error.contains("panicked"))
    );
}
