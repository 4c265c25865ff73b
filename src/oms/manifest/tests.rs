use super::*;
use sha2::Sha256;
use std::time::SystemTime;

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
    let one = compute_manifest(p, 1).unwrap();
    assert_eq!((one.root, one.resources), (m.root, m.resources));
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

fn shards(shard_size: u64) -> Serialization {
    Serialization::Shards { shard_size }
}

fn opts(serialization: Serialization, threads: usize) -> HashOptions {
    HashOptions::new(serialization, threads)
}

/// Writes `bytes` to `path` in place (same inode), then puts its mtime back, as an attacker
/// with `touch -d` would.
fn edit_in_place_keeping_mtime(path: &Path, bytes: &[u8]) {
    let before = std::fs::metadata(path).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, bytes, 0).unwrap();
    f.set_modified(before.modified().unwrap()).unwrap();
    drop(f);
    let after = std::fs::metadata(path).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&after),
        std::os::unix::fs::MetadataExt::ino(&before)
    );
}

/// Past the file system's timestamp tick, so that a change is seen in ctime.
fn next_tick() {
    std::thread::sleep(Duration::from_millis(30));
}

#[test]
fn shard_ranges_follow_the_reference_endpoints() {
    let s = shards(4);
    assert_eq!(s.ranges(0), []);
    assert_eq!(s.ranges(3), [(0, 3)]);
    assert_eq!(s.ranges(4), [(0, 4)]);
    assert_eq!(s.ranges(8), [(0, 4), (4, 8)]);
    assert_eq!(s.ranges(9), [(0, 4), (4, 8), (8, 9)]);
    assert_eq!(Serialization::Files.ranges(0), [(0, 0)]);
    assert_eq!(Serialization::Files.ranges(9), [(0, 9)]);
    assert_eq!(s.resource_name("a/b", 4, 8), "a/b:4:8");
    assert_eq!(Serialization::Files.resource_name("a/b", 0, 8), "a/b");
}

#[test]
fn shards_are_ordered_by_path_components_then_offset_as_a_number() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("a")).unwrap();
    std::fs::write(p.join("a.txt"), b"one").unwrap();
    std::fs::write(p.join("a/b"), b"two").unwrap();
    std::fs::write(p.join("empty"), b"").unwrap();
    // 11 shards of 1000: as strings, "w:10000:10500" would sort before "w:2000:3000".
    let w: Vec<u8> = (0..10_500u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(p.join("w"), &w).unwrap();

    let m = hash_dir(p, &opts(shards(1000), 2), None).unwrap();
    let mut want = vec!["a/b:0:3".to_string(), "a.txt:0:3".to_string()];
    want.extend((0..11).map(|k| format!("w:{}:{}", k * 1000, (k * 1000 + 1000).min(10_500))));
    let names: Vec<&str> = m.resources.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, want, "an empty file has no shard");
    let mut root = Sha256::new();
    root.update(sha(b"two"));
    root.update(sha(b"one"));
    for chunk in w.chunks(1000) {
        root.update(sha(chunk));
    }
    assert_eq!(m.root, Digest(root.finalize().into()));
    assert_eq!(m.serialization, shards(1000));
    assert_eq!(m.files.len(), 4);
    assert_eq!(m.files[2].resources, 2..2, "the empty file");
    assert_eq!(m.files[3].resources, 2..13);
    assert_eq!(m.total_bytes, 10_506);

    // Neither threads nor read sizes (down to a buffer smaller than a shard, not dividing
    // it) change the answer.
    for (threads, buffer) in [(1, 1 << 20), (3, 7), (8, 1000), (2, 999)] {
        let mut o = opts(shards(1000), threads);
        o.read_buffer = buffer;
        let again = hash_dir(p, &o, None).unwrap();
        assert_eq!(
            again.root, m.root,
            "{threads} threads, {buffer} byte buffer"
        );
    }
    // Files larger than a shard make the two serializations differ.
    assert_ne!(compute_manifest(p, 2).unwrap().root, m.root);
}

#[test]
fn one_large_file_is_planned_as_one_job_per_shard_longest_first() {
    let file = |size| ListedFile {
        rel: PathBuf::from("w"),
        abs: PathBuf::from("/nonexistent/w"),
        identity: FileIdentity {
            size,
            mtime: (0, 0),
            ctime: (0, 0),
            inode: 1,
            dev: 1,
        },
    };
    let small = ListedFile {
        rel: PathBuf::from("a"),
        ..file(5)
    };
    let p = plan(&[small, file(10)], &opts(shards(4), 2), None);
    assert_eq!(p.names, ["a:0:4", "a:4:5", "w:0:4", "w:4:8", "w:8:10"]);
    assert_eq!(p.ranges, [0..2, 2..5]);
    let jobs: Vec<(usize, u64, u64, usize, bool)> = p
        .jobs
        .iter()
        .map(|j| (j.file, j.start, j.end, j.slot, j.last))
        .collect();
    assert_eq!(
        jobs,
        [
            (0, 0, 4, 0, false),
            (1, 0, 4, 2, false),
            (1, 4, 8, 3, false),
            (1, 8, 10, 4, true),
            (0, 4, 5, 1, true),
        ]
    );
    let p = plan(&[file(10)], &opts(Serialization::Files, 2), None);
    assert_eq!(p.jobs.len(), 1, "under files a file is one sequential hash");
}

#[test]
fn a_recorded_digest_is_reused_only_for_an_unchanged_old_enough_identity() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let at = |secs: i64| (1_800_000_000 + secs, 0);
    let base = FileIdentity {
        size: 100,
        mtime: at(0),
        ctime: at(0),
        inode: 7,
        dev: 1,
    };
    let listed = t0 + Duration::from_secs(10);
    let margin = Duration::from_secs(2);
    let cases = [
        ("unchanged", base, listed, true),
        ("size", FileIdentity { size: 101, ..base }, listed, false),
        (
            "mtime",
            FileIdentity {
                mtime: at(1),
                ..base
            },
            listed,
            false,
        ),
        // Same size, mtime put back: only the kernel-set ctime tells.
        (
            "ctime",
            FileIdentity {
                ctime: at(5),
                ..base
            },
            listed,
            false,
        ),
        ("inode", FileIdentity { inode: 8, ..base }, listed, false),
        ("device", FileIdentity { dev: 2, ..base }, listed, false),
        // Listed within the margin of its last change: racily clean, not trusted.
        ("racy", base, t0 + Duration::from_secs(1), false),
        (
            "changed after listing",
            base,
            t0 - Duration::from_secs(1),
            false,
        ),
    ];
    for (case, now, listed_at, want) in cases {
        assert_eq!(reusable(&base, listed_at, margin, &now), want, "{case}");
    }
}

#[test]
fn a_rehash_reads_only_the_files_whose_identity_changed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    for (name, fill) in [("a", 1u8), ("b", 2), ("c", 3)] {
        std::fs::write(p.join(name), vec![fill; 3000]).unwrap();
    }
    for serialization in [Serialization::Files, shards(1000)] {
        let mut o = opts(serialization, 2);
        // The files were written before these listings; the racy rule has its own test.
        o.racy_margin = Duration::ZERO;
        next_tick();
        let first = hash_dir(p, &o, None).unwrap();
        assert_eq!(first.stats.hashed_files, 3);
        let again = hash_dir(p, &o, Some(&first)).unwrap();
        assert_eq!((again.stats.hashed_files, again.stats.reused_files), (0, 3));
        assert_eq!(again.stats.hashed_bytes, 0);
        assert_eq!(again.root, first.root);

        // Same size, mtime restored: caught by ctime.
        next_tick();
        edit_in_place_keeping_mtime(&p.join("b"), b"tampered");
        let edited = hash_dir(p, &o, Some(&again)).unwrap();
        assert_eq!(
            (edited.stats.hashed_files, edited.stats.reused_files),
            (1, 2)
        );
        assert_ne!(edited.root, first.root);
        assert_eq!(edited.root, hash_dir(p, &o, None).unwrap().root);

        // Replaced by another file with the same size and mtime: caught by the inode.
        let old = std::fs::metadata(p.join("c")).unwrap();
        let tmp = p.join("../c.new");
        std::fs::write(&tmp, vec![9u8; 3000]).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(old.modified().unwrap())
            .unwrap();
        std::fs::rename(&tmp, p.join("c")).unwrap();
        next_tick();
        let replaced = hash_dir(p, &o, Some(&edited)).unwrap();
        assert_eq!(replaced.stats.hashed_files, 1);
        assert_eq!(replaced.root, hash_dir(p, &o, None).unwrap().root);
        assert_ne!(replaced.root, edited.root);

        // A removed and an added file.
        std::fs::remove_file(p.join("a")).unwrap();
        std::fs::write(p.join("d"), vec![4u8; 10]).unwrap();
        next_tick();
        let moved = hash_dir(p, &o, Some(&replaced)).unwrap();
        assert_eq!((moved.stats.hashed_files, moved.stats.reused_files), (1, 2));
        assert_eq!(moved.root, hash_dir(p, &o, None).unwrap().root);
        std::fs::remove_file(p.join("d")).unwrap();
        for (name, fill) in [("a", 1u8), ("b", 2), ("c", 3)] {
            std::fs::write(p.join(name), vec![fill; 3000]).unwrap();
        }
    }
    // A manifest of another serialization is never reused.
    let mut o = opts(shards(1000), 1);
    o.racy_margin = Duration::ZERO;
    next_tick();
    let files = hash_dir(p, &opts(Serialization::Files, 1), None).unwrap();
    assert_eq!(hash_dir(p, &o, Some(&files)).unwrap().stats.reused_files, 0);
    let big = hash_dir(p, &o, None).unwrap();
    o.serialization = shards(2000);
    assert_eq!(hash_dir(p, &o, Some(&big)).unwrap().stats.reused_files, 0);
}

#[test]
fn a_digest_taken_right_after_a_change_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w"), b"weights").unwrap();
    let o = opts(Serialization::Files, 1);
    let first = hash_dir(dir.path(), &o, None).unwrap();
    // Within RACY_MARGIN of the write: hashed again although nothing seems to differ.
    let again = hash_dir(dir.path(), &o, Some(&first)).unwrap();
    assert_eq!((again.stats.hashed_files, again.stats.reused_files), (1, 0));
}

#[test]
fn a_file_that_changes_after_listing_is_an_error_not_a_digest() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w");
    std::fs::write(&w, vec![1u8; 5000]).unwrap();
    for serialization in [Serialization::Files, shards(1000)] {
        let o = opts(serialization, 2);
        // Each change lands between the listing and the read; they apply in order.
        let changes: [(&str, &dyn Fn()); 3] = [
            ("grown", &|| std::fs::write(&w, vec![1u8; 5001]).unwrap()),
            ("shrunk", &|| std::fs::write(&w, vec![1u8; 4000]).unwrap()),
            ("same size, mtime put back", &|| {
                next_tick();
                edit_in_place_keeping_mtime(&w, b"x");
            }),
        ];
        for (what, change) in changes {
            let listed = list_files(dir.path()).unwrap();
            let p = plan(&listed, &o, None);
            change();
            let r = run_jobs(&listed, &p.jobs, &o);
            assert!(
                matches!(r, Err(HashError::Changed(_))),
                "{serialization}, {what}: {r:?}"
            );
        }
        std::fs::write(&w, vec![1u8; 5000]).unwrap();
    }
}

#[test]
fn a_cancelled_hash_stops_with_an_error_not_a_digest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w"), vec![7u8; 4096]).unwrap();
    let cancel = std::sync::Arc::new(AtomicBool::new(true));
    let o = opts(Serialization::Files, 2).cancelled_by(cancel.clone());
    let r = hash_dir(dir.path(), &o, None);
    assert!(matches!(r, Err(HashError::Cancelled)), "{r:?}");
    cancel.store(false, Ordering::Relaxed);
    assert_eq!(
        hash_dir(dir.path(), &o, None).unwrap().root,
        compute_manifest(dir.path(), 1).unwrap().root
    );
}

#[test]
fn a_fifo_swapped_in_after_listing_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w");
    std::fs::write(&w, vec![1u8; 5000]).unwrap();
    let o = opts(Serialization::Files, 1);
    let listed = list_files(dir.path()).unwrap();
    let p = plan(&listed, &o, None);
    std::fs::remove_file(&w).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&w)
        .status()
        .unwrap();
    assert!(status.success());
    let started = std::time::Instant::now();
    let r = run_jobs(&listed, &p.jobs, &o);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(r, Err(HashError::Changed(_))), "{r:?}");
}

#[test]
fn a_file_removed_while_hashed_is_abandoned_not_read_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w");
    // Sparse: 1 GiB that costs no disk.
    std::fs::File::create(&w).unwrap().set_len(1 << 30).unwrap();
    let listed = list_files(dir.path()).unwrap();
    let job = Job {
        file: 0,
        start: 0,
        end: 1 << 30,
        slot: 0,
        last: true,
    };
    // Opened (as by a hashing thread that has started), then removed.
    let (file, _) = crate::kit::file::open_regular(&w).unwrap();
    let mut open = Some((0, file));
    std::fs::remove_file(&w).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let pace = Pace {
        cancel: None,
        rate: None,
        heartbeat: None,
        progress: None,
    };
    let started = std::time::Instant::now();
    let r = hash_job(&listed, &job, &mut open, &mut buf, &pace);
    assert!(matches!(r, Err(HashError::Changed(_))), "{r:?}");
    // Abandoned after about RECHECK_BYTES, not 1 GiB (which takes seconds here).
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn progress_counts_every_byte_and_file_read_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), vec![1u8; 5000]).unwrap();
    std::fs::write(dir.path().join("b"), vec![2u8; 3000]).unwrap();
    // An empty file has no shard: nothing to read, so it is in neither count.
    std::fs::write(dir.path().join("empty"), b"").unwrap();
    let progress = Arc::new(HashProgress::default());
    let mut o = opts(shards(1000), 3).reporting_to(progress.clone());
    o.read_buffer = 256;
    o.racy_margin = Duration::ZERO;
    let first = hash_dir(dir.path(), &o, None).unwrap();
    let want = crate::oms::ProgressSnapshot {
        bytes_done: 8000,
        bytes_total: 8000,
        files_done: 2,
        files_total: 2,
        active: false,
    };
    assert_eq!(progress.snapshot(), want);
    assert_eq!(
        first.root,
        hash_dir(dir.path(), &opts(shards(1000), 1), None)
            .unwrap()
            .root
    );

    // A re-hash counts only the file it reads again; the reused ones are not in the total.
    next_tick();
    std::fs::write(dir.path().join("b"), vec![3u8; 2500]).unwrap();
    let second = hash_dir(dir.path(), &o, Some(&first)).unwrap();
    assert_eq!(second.stats.hashed_files, 1);
    let want = crate::oms::ProgressSnapshot {
        bytes_done: 2500,
        bytes_total: 2500,
        files_done: 1,
        files_total: 1,
        active: false,
    };
    assert_eq!(progress.snapshot(), want);

    // Under `files` the empty file is a resource read (of zero bytes) and counts.
    let o = opts(Serialization::Files, 2).reporting_to(progress.clone());
    hash_dir(dir.path(), &o, None).unwrap();
    let p = progress.snapshot();
    assert_eq!((p.files_done, p.files_total), (3, 3));
    assert_eq!((p.bytes_done, p.bytes_total), (7500, 7500));
}

#[test]
fn progress_ends_inactive_when_the_hash_fails() {
    let progress = Arc::new(HashProgress::default());
    let o = opts(Serialization::Files, 1).reporting_to(progress.clone());
    assert!(hash_dir(Path::new("/nonexistent/provgate-progress"), &o, None).is_err());
    assert!(!progress.snapshot().active);
}
