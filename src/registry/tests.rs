use super::*;
use crate::approval::{sign, ApprovalClaims, ArtefactRef};
use crate::keys::{jwks_document, KeyKind, SigningKey};

fn claims(jti: &str, digest: Digest, iat: u64) -> ApprovalClaims {
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

#[test]
fn a_missing_directory_is_an_error() {
    let approvers = KeySet::default();
    assert!(load_dir(Path::new("/nonexistent/provgate"), &approvers).is_err());
}

#[test]
fn lookups_are_cached_and_a_publish_clears_the_cache() {
    let metrics = Arc::new(Metrics::new());
    let store = ApprovalStore::new(Duration::from_secs(60), metrics.clone());
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

#[test]
fn records_older_than_max_stale_are_unavailable() {
    let store = ApprovalStore::new(Duration::from_millis(50), Arc::new(Metrics::new()));
    let d = Digest([9; 32]);
    // Before the first load the registry's answer is unknown: fail closed.
    assert!(matches!(store.view(&d), Lookup::Unavailable));
    store.publish(Snapshot::default());
    assert!(matches!(store.view(&d), Lookup::Entry(None)));
    std::thread::sleep(Duration::from_millis(80));
    assert!(matches!(store.view(&d), Lookup::Unavailable));
    store.confirm();
    assert!(matches!(store.view(&d), Lookup::Entry(None)));
}
