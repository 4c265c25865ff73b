use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::oms::manifest::{hash_dir, HashOptions};

fn model(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("config.json"), b"{\"hidden_size\": 8}").unwrap();
    std::fs::write(dir.join("model.safetensors"), vec![7u8; 5000]).unwrap();
    std::fs::write(dir.join("sub/tokenizer.json"), b"tok").unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
}

/// Options that trust digests however recent the file (the files here were just written).
fn trusting(serialization: Serialization) -> HashOptions {
    let mut o = HashOptions::new(serialization, 2);
    o.racy_margin = Duration::ZERO;
    o
}

fn key() -> CacheKey {
    CacheKey::from_bytes(&[5u8; 32]).unwrap()
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    cache: PathBuf,
    full: Manifest,
}

fn setup(serialization: Serialization) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("model");
    model(&root);
    let root = root.canonicalize().unwrap();
    let cache = tmp.path().join("manifest-m.json");
    let full = hash_dir(&root, &trusting(serialization), None).unwrap();
    store(&cache, &key(), &root, &full).unwrap();
    Setup {
        _tmp: tmp,
        root,
        cache,
        full,
    }
}

#[test]
fn a_stored_manifest_loads_and_is_reused_for_the_same_digest_reading_nothing() {
    for serialization in [
        Serialization::Files,
        Serialization::Shards { shard_size: 1000 },
    ] {
        let s = setup(serialization);
        let loaded = load(&s.cache, &key(), &s.root, serialization).unwrap();
        assert_eq!(loaded.root, s.full.root);
        assert_eq!(loaded.resources, s.full.resources);
        let again = hash_dir(&s.root, &trusting(serialization), Some(&loaded)).unwrap();
        assert_eq!(again.root, s.full.root);
        assert_eq!(again.stats.hashed_bytes, 0);
        assert_eq!(again.stats.reused_files, 4);
    }
}

#[test]
fn recent_files_are_read_again_under_the_racy_margin() {
    let s = setup(Serialization::Files);
    let loaded = load(&s.cache, &key(), &s.root, Serialization::Files).unwrap();
    // The files changed well within RACY_MARGIN of the listing: none is trusted.
    let again = hash_dir(
        &s.root,
        &HashOptions::new(Serialization::Files, 1),
        Some(&loaded),
    )
    .unwrap();
    assert_eq!(again.root, s.full.root);
    assert_eq!(again.stats.reused_files, 0);
    assert_eq!(again.stats.hashed_bytes, s.full.total_bytes);
}

#[test]
fn a_changed_file_is_read_again_and_the_result_is_the_full_hash() {
    let s = setup(Serialization::Files);
    std::fs::write(s.root.join("model.safetensors"), vec![8u8; 5000]).unwrap();
    let loaded = load(&s.cache, &key(), &s.root, Serialization::Files).unwrap();
    let again = hash_dir(&s.root, &trusting(Serialization::Files), Some(&loaded)).unwrap();
    let full = hash_dir(&s.root, &trusting(Serialization::Files), None).unwrap();
    assert_eq!(again.root, full.root);
    assert_ne!(again.root, s.full.root);
    assert_eq!(again.stats.hashed_files, 1);
    assert_eq!(again.stats.hashed_bytes, 5000);
}

#[test]
fn any_edit_breaks_the_seal() {
    let s = setup(Serialization::Files);
    let text = std::fs::read_to_string(&s.cache).unwrap();
    // A forged digest for an unchanged file, identity left as it is.
    let d = hex::encode(s.full.resources[1].1);
    let forged = text.replacen(&d, &"0".repeat(64), 1);
    assert_ne!(forged, text);
    std::fs::write(&s.cache, forged).unwrap();
    let e = load(&s.cache, &key(), &s.root, Serialization::Files).unwrap_err();
    assert!(matches!(e, CacheError::Seal), "{e}");
}

#[test]
fn another_key_breaks_the_seal() {
    let s = setup(Serialization::Files);
    let other = CacheKey::from_bytes(&[6u8; 32]).unwrap();
    let e = load(&s.cache, &other, &s.root, Serialization::Files).unwrap_err();
    assert!(matches!(e, CacheError::Seal), "{e}");
}

#[test]
fn damaged_oversized_and_other_version_caches_are_refused() {
    let s = setup(Serialization::Files);
    let text = std::fs::read(&s.cache).unwrap();
    std::fs::write(&s.cache, &text[..text.len() / 2]).unwrap();
    let e = load(&s.cache, &key(), &s.root, Serialization::Files).unwrap_err();
    assert!(matches!(e, CacheError::Malformed(_)), "{e}");

    std::fs::write(&s.cache, b"").unwrap();
    let e = load(&s.cache, &key(), &s.root, Serialization::Files).unwrap_err();
    assert!(matches!(e, CacheError::Malformed(_)), "{e}");

    let other =
        String::from_utf8(text.clone())
            .unwrap()
            .replacen("\"version\":1", "\"version\":2", 1);
    std::fs::write(&s.cache, other).unwrap();
    let e = load(&s.cache, &key(), &s.root, Serialization::Files).unwrap_err();
    assert!(matches!(e, CacheError::Version { version: 2, .. }), "{e}");

    let f = std::fs::File::create(&s.cache).unwrap();
    f.set_len(MAX_CACHE_BYTES + 1).unwrap();
    let e = load(&s.cache, &key(), &s.root, Serialization::Files).unwrap_err();
    assert!(matches!(e, CacheError::TooLarge(_)), "{e}");

    std::fs::remove_file(&s.cache).unwrap();
    let e = load(&s.cache, &key(), &s.root, Serialization::Files).unwrap_err();
    assert!(matches!(&e, CacheError::Read(r) if r.is_not_found()), "{e}");
}

#[test]
fn a_cache_of_another_root_or_serialization_is_refused() {
    let s = setup(Serialization::Files);
    let e = load(
        &s.cache,
        &key(),
        Path::new("/elsewhere"),
        Serialization::Files,
    )
    .unwrap_err();
    assert!(matches!(e, CacheError::OtherRoot { .. }), "{e}");
    let e = load(
        &s.cache,
        &key(),
        &s.root,
        Serialization::Shards { shard_size: 1000 },
    )
    .unwrap_err();
    assert!(matches!(e, CacheError::OtherSerialization { .. }), "{e}");
}

/// What a key holder could write: still checked for consistency and against the live
/// file system.
#[test]
fn sealed_but_inconsistent_or_future_caches_are_refused() {
    let s = setup(Serialization::Files);
    let body = read_unsealed(&s.cache).unwrap();
    let reject = |edit: &dyn Fn(&mut CacheBody)| {
        let mut b = body.clone();
        edit(&mut b);
        write_sealed(&s.cache, &key(), &b).unwrap();
        load(&s.cache, &key(), &s.root, Serialization::Files).unwrap_err()
    };
    let e = reject(&|b| b.files[1].digests[0] = "0".repeat(64));
    assert!(matches!(e, CacheError::Inconsistent("root digest")), "{e}");
    let e = reject(&|b| b.files[0].path = "../config.json".into());
    assert!(matches!(e, CacheError::Inconsistent(_)), "{e}");
    let e = reject(&|b| b.files[0].path = "/etc/passwd".into());
    assert!(matches!(e, CacheError::Inconsistent(_)), "{e}");
    let e = reject(&|b| b.files.swap(0, 1));
    assert!(
        matches!(e, CacheError::Inconsistent("paths out of order")),
        "{e}"
    );
    let e = reject(&|b| b.listed_at.0 += 3600);
    assert!(matches!(e, CacheError::ClockBehind), "{e}");
}

/// A key holder's forged digest with a forged identity: the identity does not match the
/// live file, so the file is read and the result is the full hash.
#[test]
fn a_forged_identity_is_not_reused() {
    let s = setup(Serialization::Files);
    let mut body = read_unsealed(&s.cache).unwrap();
    let i = body
        .files
        .iter()
        .position(|f| f.path == "model.safetensors")
        .unwrap();
    // The digest another content would have, with an identity of the forger's choosing,
    // and the root digest made consistent with it.
    body.files[i].digests = vec![hex::encode(Sha256::digest(b"other weights"))];
    body.files[i].inode += 1;
    body.files[i].ctime.0 -= 100;
    let mut h = Sha256::new();
    for f in &body.files {
        for d in &f.digests {
            h.update(hex::decode(d).unwrap());
        }
    }
    body.digest = Digest(h.finalize().into());
    write_sealed(&s.cache, &key(), &body).unwrap();
    let loaded = load(&s.cache, &key(), &s.root, Serialization::Files).unwrap();
    let again = hash_dir(&s.root, &trusting(Serialization::Files), Some(&loaded)).unwrap();
    assert_eq!(again.root, s.full.root);
    assert_eq!(again.stats.hashed_files, 1);
    assert_eq!(again.stats.reused_files, 3);
}

#[test]
fn the_managed_key_is_created_private_once_and_refused_when_exposed() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(DEFAULT_KEY_FILE);
    let a = CacheKey::load_or_create(&path).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), KEY_BYTES as u64);
    let b = CacheKey::load_or_create(&path).unwrap();
    assert_eq!(a.tag(b"x"), b.tag(b"x"));
    // Nothing left behind but the key.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = CacheKey::load_or_create(&path).unwrap_err();
    assert!(matches!(e, CacheError::Key { .. }), "{e}");

    let link = tmp.path().join("link.key");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let e = CacheKey::load_or_create(&link).unwrap_err();
    assert!(matches!(e, CacheError::Key { .. }), "{e}");

    std::fs::write(tmp.path().join("short.key"), b"short").unwrap();
    assert!(CacheKey::from_file(&tmp.path().join("short.key")).is_err());
}

#[test]
fn writing_replaces_a_link_at_the_cache_path_without_following_it() {
    let s = setup(Serialization::Files);
    let target = s.cache.with_file_name("elsewhere");
    std::fs::write(&target, b"keep me").unwrap();
    std::fs::remove_file(&s.cache).unwrap();
    std::os::unix::fs::symlink(&target, &s.cache).unwrap();
    store(&s.cache, &key(), &s.root, &s.full).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    assert!(std::fs::symlink_metadata(&s.cache)
        .unwrap()
        .file_type()
        .is_file());
    let mode = std::fs::metadata(&s.cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(load(&s.cache, &key(), &s.root, Serialization::Files).is_ok());
}

#[test]
fn default_names_are_safe_file_names() {
    assert_eq!(
        default_file_name("llama-3.1_8b"),
        "manifest-llama-3.1_8b.json"
    );
    for hostile in ["../x", "a/b", ".hidden", "", "ünï"] {
        let n = default_file_name(hostile);
        assert!(n.starts_with("manifest-") && n.ends_with(".json"), "{n}");
        assert_eq!(n.len(), "manifest-.json".len() + 16, "{n}");
        assert!(!n.contains('/'));
    }
}
