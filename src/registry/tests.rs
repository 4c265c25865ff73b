use super::*;
use crate::approval::{sign, ApprovalClaims, ArtefactRef};
use crate::keys::{jwks_document, KeyKind, SigningKey};

pub(super) fn claims(jti: &str, digest: Digest, iat: u64) -> ApprovalClaims {
    ApprovalClaims {
        iss: "approver".into(),
        sub: "m".into(),
        jti: jti.into(),
        iat,
        nbf: None,
        exp: iat + 1000,
        version_id: format!("v-{jti}"),
        artefact: ArtefactRef {
            digest,
            signer: None,
            ollama_digest: None,
            base_digest: None,
        },
        lineage: Default::default(),
        evidence: vec![],
        approvals: vec![],
        tier: "internal".into(),
        workloads: vec!["*".into()],
        callers: vec!["*".into()],
        revalidate_after: None,
    }
}

#[test]
fn a_directory_loads_with_revocations_and_bad_records_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let (rogue, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let approvers =
        KeySet::from_jwks_json(&jwks_document(std::slice::from_ref(&key.public_jwk)), "t").unwrap();
    let d1 = Digest([1; 32]);
    let d2 = Digest([2; 32]);
    let d3 = Digest([3; 32]);
    let w = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
    w("old.jwt", sign(&claims("old", d1, 100), &key).unwrap());
    w("new.jws", sign(&claims("new", d1, 200), &key).unwrap());
    w("other.jwt", sign(&claims("other", d2, 100), &key).unwrap());
    w(
        "forged.jwt",
        sign(&claims("forged", d3, 100), &rogue).unwrap(),
    );
    w("garbage.jwt", "not a record".into());
    w("notes.txt", "ignored: not a record file".into());
    w(
        REVOCATION_FILE,
        "# revoked after incident 42\nother\n\n".into(),
    );

    let snap = load_dir(dir.path(), &approvers).unwrap();
    assert_eq!(snap.valid_records, 3);
    assert_eq!(snap.invalid_records, 2);
    assert_eq!(snap.revoked_ids, 1);
    let e1 = &snap.by_digest[&d1];
    let order: Vec<&str> = e1
        .records
        .iter()
        .map(|c| c.record.claims.jti.as_str())
        .collect();
    assert_eq!(order, ["new", "old"], "newest first");
    assert!(e1.records.iter().all(|c| !c.revoked));
    assert!(snap.by_digest[&d2].records[0].revoked);
    let e3 = &snap.by_digest[&d3];
    assert!(e3.records.is_empty());
    assert_eq!(
        e3.invalid.len(),
        1,
        "the forged record is reported against its digest"
    );
}

/// `revocations.jws` (what `provgate revoke` writes) revokes in a directory too, is not read
/// as a record, and one signed by a key that is not an approver's fails the load (the last
/// good records stay), never a silent "nothing revoked".
#[test]
fn a_signed_revocation_list_in_the_directory_revokes() {
    use super::revocations::{sign as sign_list, RevocationClaims};
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let (rogue, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let approvers =
        KeySet::from_jwks_json(&jwks_document(std::slice::from_ref(&key.public_jwk)), "t").unwrap();
    let d = Digest([1; 32]);
    let w = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
    w("a.jwt", sign(&claims("a", d, 100), &key).unwrap());
    w("b.jwt", sign(&claims("b", d, 200), &key).unwrap());
    let list = |by: &SigningKey| {
        let c = RevocationClaims {
            iss: "approver".into(),
            iat: 300,
            revoked: vec!["b".into()],
        };
        sign_list(&c, by).unwrap()
    };
    w(SIGNED_REVOCATION_FILE, list(&key));
    let snap = load_dir(dir.path(), &approvers).unwrap();
    assert_eq!(snap.invalid_records, 0, "the list is not a record");
    let revoked: Vec<(&str, bool)> = snap.by_digest[&d]
        .records
        .iter()
        .map(|c| (c.record.claims.jti.as_str(), c.revoked))
        .collect();
    assert_eq!(revoked, [("b", true), ("a", false)]);

    w(SIGNED_REVOCATION_FILE, list(&rogue));
    assert!(matches!(
        load_dir(dir.path(), &approvers),
        Err(RegistryError::SignedRevocations(_))
    ));
}

#[test]
fn a_missing_directory_is_an_error() {
    let approvers = KeySet::default();
    assert!(load_dir(Path::new("/nonexistent/provgate"), &approvers).is_err());
}

#[test]
fn lookups_are_cached_and_a_publish_clears_the_cache() {
    let metrics = Arc::new(Metrics::new());
    let store = ApprovalStore::new(Duration::from_secs(60), Duration::ZERO, metrics.clone());
    assert!(!store.is_synced());
    let d = Digest([9; 32]);
    assert!(store.lookup(&d).is_none());
    assert!(store.lookup(&d).is_none());
    assert_eq!(metrics.approval_cache_misses.get(), 1);
    assert_eq!(metrics.approval_cache_hits.get(), 1);

    let mut snap = Snapshot::default();
    snap.by_digest.insert(d, Arc::new(RegistryEntry::default()));
    store.publish(snap);
    assert!(store.is_synced());
    assert!(store.lookup(&d).is_some(), "a publish is visible at once");
    assert_eq!(metrics.approval_cache_misses.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn records_older_than_max_stale_are_unavailable() {
    let max_stale = Duration::from_secs(60);
    let store = ApprovalStore::new(max_stale, Duration::ZERO, Arc::new(Metrics::new()));
    let d = Digest([9; 32]);
    let view = |store: &ApprovalStore| store.view(&d, crate::unix_now_ms());
    // Before the first load the registry's answer is not known: fail closed.
    assert!(matches!(view(&store), Lookup::Unavailable));
    store.publish(Snapshot {
        exhaustive: true,
        ..Snapshot::default()
    });
    assert!(matches!(view(&store), Lookup::Entry(None)));
    tokio::time::advance(max_stale).await;
    assert!(
        matches!(view(&store), Lookup::Entry(None)),
        "usable at max_stale"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(
        matches!(view(&store), Lookup::Unavailable),
        "not a millisecond past it"
    );
    store.confirm();
    assert!(matches!(view(&store), Lookup::Entry(None)));
}

#[test]
fn a_remote_snapshot_does_not_vouch_for_digests_it_was_not_asked_about() {
    let store = ApprovalStore::new(
        Duration::from_secs(60),
        Duration::ZERO,
        Arc::new(Metrics::new()),
    );
    let asked = Digest([1; 32]);
    let mut snap = Snapshot::default();
    snap.by_digest
        .insert(asked, Arc::new(RegistryEntry::default()));
    store.publish(snap);
    let now = crate::unix_now_ms();
    assert!(matches!(store.view(&asked, now), Lookup::Entry(Some(_))));
    assert!(matches!(
        store.view(&Digest([2; 32]), now),
        Lookup::Unavailable
    ));
}

#[test]
fn staleness_rules() {
    let s = Duration::from_secs;
    // (synced, since last sync, max_stale, usable)
    for (synced, since, max_stale, usable) in [
        (false, s(0), s(60), false),
        (true, s(0), s(60), true),
        (true, s(60), s(60), true),
        (true, s(61), s(60), false),
        (true, s(0), s(0), true),
    ] {
        assert_eq!(
            freshness::within_max_stale(synced, since, max_stale),
            usable,
            "synced {synced}, {since:?} since sync, max_stale {max_stale:?}"
        );
    }
}

#[test]
fn revalidation_rules() {
    let grace = Duration::from_secs(2);
    // (revalidate_after s, last confirmed ms, now ms, usable)
    for (after, confirmed, now, usable) in [
        (None, 0, u64::MAX, true),              // no revalidation asked
        (Some(100), 50_000, 99_999, true),      // before the time
        (Some(100), 50_000, 101_999, true),     // within the grace: the fetch is in flight
        (Some(100), 50_000, 102_000, false),    // past it, never re-read: unusable
        (Some(100), 99_999, 150_000, false),    // a read a millisecond early does not count
        (Some(100), 100_000, 150_000, true),    // read at the time: usable again
        (Some(100), 120_000, 10_000_000, true), // stays usable; max_stale bounds the rest
    ] {
        assert_eq!(
            freshness::revalidated(after, confirmed, now, grace),
            usable,
            "revalidate_after {after:?}, confirmed {confirmed}, now {now}"
        );
    }
}

#[test]
fn an_entry_past_revalidate_after_is_unavailable_until_the_registry_is_read_again() {
    let store = ApprovalStore::new(
        Duration::from_secs(3600),
        Duration::from_secs(1),
        Arc::new(Metrics::new()),
    );
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let approvers =
        KeySet::from_jwks_json(&jwks_document(std::slice::from_ref(&key.public_jwk)), "t").unwrap();
    let d = Digest([4; 32]);
    let now_ms = crate::unix_now_ms();
    let at = now_ms / 1000 + 10;
    let mut c = claims("r", d, now_ms / 1000);
    c.revalidate_after = Some(at);
    let record = approval::verify(&sign(&c, &key).unwrap(), &approvers).unwrap();
    let mut snap = Snapshot {
        exhaustive: true,
        ..Snapshot::default()
    };
    snap.by_digest.insert(
        d,
        Arc::new(RegistryEntry::new(
            vec![Candidate {
                record: Arc::new(record),
                revoked: false,
            }],
            vec![],
        )),
    );
    store.publish(snap);
    let at_ms = at * 1000;
    assert!(matches!(store.view(&d, at_ms - 1), Lookup::Entry(Some(_))));
    assert!(matches!(
        store.view(&d, at_ms + 999),
        Lookup::Entry(Some(_))
    ));
    assert!(matches!(store.view(&d, at_ms + 1000), Lookup::Unavailable));
}

/// A lookup never answers from a snapshot older than the last one published before it
/// began. A lookup that missed the cache, read the old snapshot and stored what it found
/// after a publish had cleared the cache kept the old entry until the next publish: a
/// revocation published meanwhile went unseen.
#[test]
fn a_lookup_racing_a_publish_never_keeps_an_older_snapshot() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let store = Arc::new(ApprovalStore::new(
        Duration::from_secs(60),
        Duration::ZERO,
        Arc::new(Metrics::new()),
    ));
    let d = Digest([7; 32]);
    // The snapshot's number rides in `revalidate_after`.
    let snapshot = |n: u64| {
        let mut s = Snapshot::default();
        let entry = RegistryEntry {
            revalidate_after: Some(n),
            ..RegistryEntry::default()
        };
        s.by_digest.insert(d, Arc::new(entry));
        s
    };
    store.publish(snapshot(0));
    let published = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, published, done) = (store.clone(), published.clone(), done.clone());
            std::thread::spawn(move || {
                let mut stale = 0u64;
                while !done.load(Ordering::Acquire) {
                    let at_least = published.load(Ordering::Acquire);
                    let seen = store.lookup(&d).and_then(|e| e.revalidate_after);
                    if seen < Some(at_least) {
                        stale += 1;
                    }
                }
                stale
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(2) {
        n += 1;
        store.publish(snapshot(n));
        published.store(n, Ordering::Release);
    }
    done.store(true, Ordering::Release);
    let stale: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert_eq!(
        stale, 0,
        "{stale} lookups answered from an older snapshot ({n} publishes)"
    );
}
