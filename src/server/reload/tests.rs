use super::*;
use crate::keys::{jwks_document, KeyKind, SigningKey};
use std::collections::HashMap;

fn policy() -> Policy {
    Policy {
        workload_identity: "w".into(),
        tiers: HashMap::default(),
        tier: "default".into(),
        tier_rule: Default::default(),
        approvers: HashMap::default(),
        bare_issuers: vec![],
    }
}

#[test]
fn a_good_reload_rebinds_keys_and_a_bad_one_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("approvers.jwks.json");
    let (a, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let (b, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    std::fs::write(
        &path,
        jwks_document(&[a.public_jwk.clone(), b.public_jwk.clone()]),
    )
    .unwrap();
    let metrics = Arc::new(Metrics::with_mode(true));
    let r = Reload {
        policy: Arc::new(ArcSwap::from_pointee(policy())),
        approver_keys: path.clone(),
        approvers: vec![ApproverFile {
            name: "owners".into(),
            keys: vec![a.kid.clone(), b.kid.clone()],
            ca_bundle: None,
            identity: None,
            roles: vec!["owner".into()],
            models: vec!["*".into()],
            tiers: vec!["*".into()],
        }],
        issuers: vec![],
        config: None,
        metrics: metrics.clone(),
    };
    r.reload_approvers();
    let mut kids: Vec<_> = r.policy.load().approvers.keys().cloned().collect();
    kids.sort();
    let mut want = vec![a.kid.clone(), b.kid.clone()];
    want.sort();
    assert_eq!(kids, want);
    assert_eq!(r.policy.load().approvers[&a.kid].name, "owners");

    // A key leaves the file: it is no approver's any more (not a validation failure).
    std::fs::write(&path, jwks_document(std::slice::from_ref(&b.public_jwk))).unwrap();
    r.reload_approvers();
    let kids: Vec<_> = r.policy.load().approvers.keys().cloned().collect();
    assert_eq!(kids, vec![b.kid.clone()]);

    // Garbage, or no key at all: the previous state stays.
    for bad in ["{", "{\"keys\": []}"] {
        std::fs::write(&path, bad).unwrap();
        r.reload_approvers();
        assert_eq!(r.policy.load().approvers.len(), 1);
    }
    let count = |result: &str| {
        metrics
            .trust_reloads
            .with_label_values(&["approver_keys", result])
            .get()
    };
    assert_eq!((count("ok"), count("error")), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_key_file_is_seen_at_once_and_again_after_the_next_replace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("approvers.jwks.json");
    let (a, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let (b, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    std::fs::write(&path, jwks_document(std::slice::from_ref(&a.public_jwk))).unwrap();
    let metrics = Arc::new(Metrics::with_mode(true));
    let r = Reload {
        policy: Arc::new(ArcSwap::from_pointee(policy())),
        approver_keys: path.clone(),
        approvers: vec![ApproverFile {
            name: "owners".into(),
            keys: vec![a.kid.clone(), b.kid.clone()],
            ca_bundle: None,
            identity: None,
            roles: vec!["owner".into()],
            models: vec!["*".into()],
            tiers: vec!["*".into()],
        }],
        issuers: vec![],
        config: None,
        metrics: metrics.clone(),
    };
    let policy = r.policy.clone();
    let task = tokio::spawn(r.run());
    // Writes to another file in the directory (an audit log beside the keys) are not
    // the keys' business.
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(dir.path().join("audit.jsonl"), b"line\n").unwrap();
    // An atomic replace, as a key rotation writes it.
    let tmp = dir.path().join(".approvers.tmp");
    std::fs::write(&tmp, jwks_document(std::slice::from_ref(&b.public_jwk))).unwrap();
    let replaced = std::time::Instant::now();
    std::fs::rename(&tmp, &path).unwrap();
    while !policy.load().approvers.contains_key(&b.kid) {
        assert!(
            replaced.elapsed() < RESCAN / 4,
            "not reloaded within {:?}; reload errors {}",
            replaced.elapsed(),
            metrics
                .trust_reloads
                .with_label_values(&["approver_keys", "error"])
                .get()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("reloaded {:?} after the rename", replaced.elapsed());
    // The watch follows the path to the new file: the next replace is seen too.
    std::fs::write(&tmp, jwks_document(std::slice::from_ref(&a.public_jwk))).unwrap();
    let replaced = std::time::Instant::now();
    std::fs::rename(&tmp, &path).unwrap();
    while policy.load().approvers.contains_key(&b.kid) {
        assert!(
            replaced.elapsed() < RESCAN / 4,
            "second replace not seen within {:?}",
            replaced.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("reloaded {:?} after the second rename", replaced.elapsed());
    assert_eq!(
        metrics
            .trust_reloads
            .with_label_values(&["approver_keys", "ok"])
            .get(),
        2
    );
    task.abort();
}
