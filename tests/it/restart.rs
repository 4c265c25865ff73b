//! Restart without re-hashing (issue 18 item 5), through the real binary: the manifest the
//! sidecar persists beside its audit log lets a restart over an unchanged model become ready
//! without reading a file; a file changed while the sidecar was down is read again; a
//! damaged, oversized, other-version or special cache costs a full hash and nothing else;
//! a cache forged without the key is ignored; one forged with the key is checked against the
//! live file system (a forged identity is read again) and by the scrub that a start from the
//! cache asks for at once (a forged digest is found and blocked).

use std::path::PathBuf;
use std::time::Duration;

use provgate::oms::manifest::cache::{self, CacheKey};
use sha2::{Digest as _, Sha256};

use crate::support::*;

/// Bytes in the fixture's model (config.json and model.safetensors).
const MODEL_BYTES: u64 = 18 + 4096;

fn cache_path(fx: &Fixture) -> PathBuf {
    fx.path("manifest-all-minilm-l6-v2.json")
}

fn key_path(fx: &Fixture) -> PathBuf {
    fx.path("manifest-cache.key")
}

/// Waits out the racily-clean margin (2 s), so that digests recorded from now on are
/// trusted at the next start (ctime cannot be set back from a test).
async fn age() {
    tokio::time::sleep(Duration::from_millis(2200)).await;
}

/// A fixture whose current model is approved, with files older than the racy margin.
async fn approved() -> Fixture {
    let fx = Fixture::new();
    fx.approve("rec.jws", &fx.claims());
    age().await;
    fx
}

/// The `/readyz` hash counters of the model.
async fn hash(pg: &Provgate) -> serde_json::Value {
    let body: serde_json::Value = pg
        .client
        .get(format!("http://{}/readyz", pg.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["models"][MODEL]["hash"].clone()
}

/// Starts provgate, waits until it is ready and has persisted its manifest.
async fn run(fx: &Fixture, up: &Upstream) -> Provgate {
    let pg = Provgate::start(fx, up.addr).await;
    pg.wait_ready().await;
    pg.eventually(Duration::from_secs(10), || async {
        pg.logs().contains("artefact hashed")
    })
    .await;
    pg
}

/// Waits until the cache file holds a manifest of the model's current root digest.
async fn persisted(pg: &Provgate, fx: &Fixture) {
    let want = fx.digest();
    pg.eventually(Duration::from_secs(10), || async {
        cache::read_unsealed(&cache_path(fx)).is_ok_and(|b| b.digest == want)
    })
    .await;
}

fn scrubs(result: &str) -> String {
    format!("provgate_artefact_scrubs_total{{model=\"{MODEL}\",result=\"{result}\"}}")
}

#[tokio::test]
async fn a_restart_over_an_unchanged_model_reads_no_file() {
    let fx = approved().await;
    let up = Upstream::start().await;
    let token = fx.token(CALLER);
    {
        let pg = run(&fx, &up).await;
        assert!(pg.logs().contains("no manifest cache yet"), "{}", pg.logs());
        assert_eq!(hash(&pg).await["bytes_done"], MODEL_BYTES);
        persisted(&pg, &fx).await;
    }
    let mode = std::fs::metadata(cache_path(&fx)).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let pg = run(&fx, &up).await;
    let h = hash(&pg).await;
    assert_eq!(h["bytes_done"], 0, "{h}");
    assert_eq!(h["bytes_total"], 0, "{h}");
    assert!(
        pg.logs()
            .contains("manifest cache: reused 2 files, read 0 bytes"),
        "{}",
        pg.logs()
    );
    pg.until_answer(&token, 200, None, Duration::from_secs(5))
        .await;
    // The reused digests are read again at once, in the background, by the scrub.
    pg.eventually(Duration::from_secs(10), || async {
        pg.metric(&scrubs("ok")).await == 1.0
    })
    .await;
    assert!(pg.logs().contains("artefact scrub now"), "{}", pg.logs());
    pg.until_answer(&token, 200, None, Duration::from_secs(5))
        .await;
}

#[tokio::test]
async fn a_file_changed_while_down_is_read_again_even_with_its_size_and_mtime_kept() {
    let fx = approved().await;
    let up = Upstream::start().await;
    let token = fx.token(CALLER);
    {
        let pg = run(&fx, &up).await;
        persisted(&pg, &fx).await;
    }
    let weights = fx.model_dir().join("model.safetensors");
    let before = std::fs::metadata(&weights).unwrap();
    std::fs::write(&weights, vec![9u8; 4096]).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    let after = std::fs::metadata(&weights).unwrap();
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (before.len(), before.modified().unwrap())
    );

    let pg = run(&fx, &up).await;
    assert!(
        pg.logs()
            .contains("manifest cache: reused 1 files, read 4096 bytes"),
        "{}",
        pg.logs()
    );
    pg.until_answer(
        &token,
        403,
        Some("artefact_unmanaged"),
        Duration::from_secs(5),
    )
    .await;
}

/// Puts a bad cache at a path.
type Damage<'a> = Box<dyn Fn(&std::path::Path) + 'a>;

#[tokio::test]
async fn a_damaged_or_special_cache_costs_a_full_hash_and_nothing_else() {
    let fx = approved().await;
    let up = Upstream::start().await;
    let token = fx.token(CALLER);
    {
        let pg = run(&fx, &up).await;
        persisted(&pg, &fx).await;
    }
    let good = std::fs::read_to_string(cache_path(&fx)).unwrap();
    let variants: Vec<(&str, Damage)> = vec![
        (
            "truncated",
            Box::new(|p| std::fs::write(p, &good[..good.len() / 2]).unwrap()),
        ),
        (
            "garbage",
            Box::new(|p| std::fs::write(p, "\u{0}not json").unwrap()),
        ),
        (
            "other version",
            Box::new(|p| {
                std::fs::write(p, good.replacen("\"version\":1", "\"version\":7", 1)).unwrap()
            }),
        ),
        (
            "oversized",
            Box::new(|p| {
                let f = std::fs::File::create(p).unwrap();
                f.set_len(cache::MAX_CACHE_BYTES + 1).unwrap();
            }),
        ),
        (
            "a link to a device",
            Box::new(|p| {
                std::fs::remove_file(p).unwrap();
                std::os::unix::fs::symlink("/dev/zero", p).unwrap();
            }),
        ),
        (
            "a FIFO",
            Box::new(|p| {
                std::fs::remove_file(p).unwrap();
                let made = std::process::Command::new("mkfifo")
                    .arg(p)
                    .status()
                    .unwrap();
                assert!(made.success());
            }),
        ),
    ];
    for (what, damage) in variants {
        damage(&cache_path(&fx));
        let pg = run(&fx, &up).await;
        assert!(
            pg.logs().contains("manifest cache ignored"),
            "{what}:\n{}",
            pg.logs()
        );
        assert_eq!(hash(&pg).await["bytes_done"], MODEL_BYTES, "{what}");
        pg.until_answer(&token, 200, None, Duration::from_secs(5))
            .await;
        // Written again, as a regular file in place of whatever was there.
        persisted(&pg, &fx).await;
        let meta = std::fs::symlink_metadata(cache_path(&fx)).unwrap();
        assert!(meta.file_type().is_file(), "{what}");
    }
}

/// `body` with `file`'s digest replaced by `digest` and the root digest made consistent.
fn forge(body: &mut cache::CacheBody, file: &str, digest: [u8; 32]) {
    let entry = body.files.iter_mut().find(|f| f.path == file).unwrap();
    entry.digests = vec![hex::encode(digest)];
    let mut h = Sha256::new();
    for f in &body.files {
        for d in &f.digests {
            h.update(hex::decode(d).unwrap());
        }
    }
    body.digest = provgate::digest::Digest(h.finalize().into());
}

#[tokio::test]
async fn a_forged_identity_sealed_with_the_key_is_read_again() {
    let fx = approved().await;
    let up = Upstream::start().await;
    let token = fx.token(CALLER);
    {
        let pg = run(&fx, &up).await;
        persisted(&pg, &fx).await;
    }
    let mut body = cache::read_unsealed(&cache_path(&fx)).unwrap();
    forge(
        &mut body,
        "model.safetensors",
        Sha256::digest(b"other").into(),
    );
    let entry = body
        .files
        .iter_mut()
        .find(|f| f.path == "model.safetensors")
        .unwrap();
    entry.inode += 1;
    entry.ctime.0 -= 60;
    let key = CacheKey::from_file(&key_path(&fx)).unwrap();
    cache::write_sealed(&cache_path(&fx), &key, &body).unwrap();

    let pg = run(&fx, &up).await;
    assert!(
        pg.logs()
            .contains("manifest cache: reused 1 files, read 4096 bytes"),
        "{}",
        pg.logs()
    );
    pg.until_answer(&token, 200, None, Duration::from_secs(5))
        .await;
}

/// The attack the seal is for: the served weights are not approved, and someone who can
/// write the cache (not the model) pairs the live files' identities, which anyone can
/// `stat`, with the approved model's digests.
#[tokio::test]
async fn approved_digests_paired_with_live_identities_without_the_key_are_ignored() {
    let fx = approved().await;
    let approved = fx.digest();
    let approved_weights: [u8; 32] = Sha256::digest(vec![7u8; 4096]).into();
    let up = Upstream::start().await;
    let token = fx.token(CALLER);
    // Unapproved weights of the same size are served.
    std::fs::write(fx.model_dir().join("model.safetensors"), vec![1u8; 4096]).unwrap();
    age().await;
    {
        let pg = run(&fx, &up).await;
        persisted(&pg, &fx).await;
        pg.until_answer(
            &token,
            403,
            Some("artefact_unmanaged"),
            Duration::from_secs(5),
        )
        .await;
    }
    let mut body = cache::read_unsealed(&cache_path(&fx)).unwrap();
    forge(&mut body, "model.safetensors", approved_weights);
    assert_eq!(body.digest, approved);
    // Sealed under a key of the forger's own.
    let forger = CacheKey::from_bytes(&[42u8; 32]).unwrap();
    cache::write_sealed(&cache_path(&fx), &forger, &body).unwrap();

    let pg = run(&fx, &up).await;
    // Every file read: the forged digests were not used.
    assert_eq!(hash(&pg).await["bytes_done"], MODEL_BYTES);
    assert!(
        pg.logs().contains("the seal does not verify"),
        "{}",
        pg.logs()
    );
    pg.until_answer(
        &token,
        403,
        Some("artefact_unmanaged"),
        Duration::from_secs(5),
    )
    .await;
}

/// Someone who can read the key can do what the sidecar does: the forged digest is reused
/// at start, and the scrub the start asks for at once reads the files, finds it, blocks
/// the model and removes the cache.
#[tokio::test]
async fn a_forged_digest_sealed_with_the_key_is_caught_by_the_scrub_at_start() {
    let fx = approved().await;
    let approved = fx.digest();
    let approved_weights: [u8; 32] = Sha256::digest(vec![7u8; 4096]).into();
    let up = Upstream::start().await;
    let token = fx.token(CALLER);
    std::fs::write(fx.model_dir().join("model.safetensors"), vec![1u8; 4096]).unwrap();
    age().await;
    {
        let pg = run(&fx, &up).await;
        persisted(&pg, &fx).await;
    }
    let mut body = cache::read_unsealed(&cache_path(&fx)).unwrap();
    forge(&mut body, "model.safetensors", approved_weights);
    assert_eq!(body.digest, approved);
    let key = CacheKey::from_file(&key_path(&fx)).unwrap();
    cache::write_sealed(&cache_path(&fx), &key, &body).unwrap();

    let pg = run(&fx, &up).await;
    assert!(
        pg.logs()
            .contains("manifest cache: reused 2 files, read 0 bytes"),
        "{}",
        pg.logs()
    );
    pg.eventually(Duration::from_secs(10), || async {
        pg.metric(&scrubs("mismatch")).await == 1.0
    })
    .await;
    pg.until_answer(
        &token,
        403,
        Some("artefact_unmanaged"),
        Duration::from_secs(5),
    )
    .await;
    assert!(!cache_path(&fx).exists());
}
