use super::*;

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

#[test]
fn root_digest_follows_the_oms_files_serialization() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("a")).unwrap();
    std::fs::create_dir_all(p.join(".git")).unwrap();
    std::fs::write(p.join("a.txt"), b"one").unwrap();
    std::fs::write(p.join("a/b"), b"two").unwrap();
    std::fs::write(p.join("empty"), b"").unwrap();
    // Ignored at the top level only.
    std::fs::write(p.join(".git/HEAD"), b"ref").unwrap();
    std::fs::write(p.join(".gitattributes"), b"x").unwrap();
    std::fs::write(p.join("model.sig"), b"{}").unwrap();

    let m = compute_manifest(p, 2).unwrap();
    // Component order: "a" < "a.txt" (Python PurePosixPath order), unlike byte order of
    // the joined strings, where "a.txt" < "a/b".
    let names: Vec<&str> = m.resources.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a/b", "a.txt", "empty"]);
    let mut root = Sha256::new();
    for part in [&b"two"[..], b"one", b""] {
        root.update(sha(part));
    }
    assert_eq!(m.root, Digest(root.finalize().into()));
    assert_eq!(m.total_bytes, 6);
    // Threads do not change the answer.
    assert_eq!(compute_manifest(p, 1).unwrap(), m);
}

#[test]
fn nested_git_directories_are_hashed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sub/.git")).unwrap();
    std::fs::write(dir.path().join("sub/.git/x"), b"x").unwrap();
    let m = compute_manifest(dir.path(), 1).unwrap();
    assert_eq!(m.resources[0].0, "sub/.git/x");
}

#[test]
fn symlinks_inside_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("real"), b"x").unwrap();
    std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
    assert!(matches!(
        compute_manifest(dir.path(), 1),
        Err(HashError::Symlink(_))
    ));
}

#[test]
fn a_missing_directory_is_an_error() {
    assert!(matches!(
        compute_manifest(Path::new("/nonexistent/provgate-model"), 1),
        Err(HashError::Io { .. })
    ));
}

#[test]
fn any_change_changes_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w"), b"weights").unwrap();
    let before = compute_manifest(dir.path(), 1).unwrap().root;
    std::fs::write(dir.path().join("w"), b"weightz").unwrap();
    let edited = compute_manifest(dir.path(), 1).unwrap().root;
    std::fs::write(dir.path().join("extra"), b"").unwrap();
    let added = compute_manifest(dir.path(), 1).unwrap().root;
    assert_ne!(before, edited);
    assert_ne!(edited, added);
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
        threads: 1,
        handle: handle.clone(),
        metrics: Arc::new(Metrics::new()),
        signers: Arc::new(Vec::new()),
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
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
}
