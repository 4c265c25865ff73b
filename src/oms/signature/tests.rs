use super::*;
use crate::oms::Serialization;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde_json::json;

/// A `model.sig` as model_signing 1.1.1 writes it (shard size as a float), over `m`.
fn bundle(m: &Manifest, key: &EcdsaKeyPair) -> Vec<u8> {
    let mut serialization = json!({
        "method": m.serialization.method(),
        "hash_type": "sha256",
        "allow_symlinks": false,
        "ignore_paths": ["model.sig"],
    });
    if let Serialization::Shards { shard_size } = m.serialization {
        serialization["shard_size"] = json!(shard_size as f64);
    }
    let resources: Vec<_> = m
        .resources
        .iter()
        .map(|(n, d)| json!({"name": n, "algorithm": "sha256", "digest": hex::encode(d)}))
        .collect();
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "model", "digest": {"sha256": m.root.hex()}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"serialization": serialization, "resources": resources},
    });
    let payload = serde_json::to_vec(&statement).unwrap();
    let mut pae = format!(
        "DSSEv1 {} {} {} ",
        PAYLOAD_TYPE.len(),
        PAYLOAD_TYPE,
        payload.len()
    )
    .into_bytes();
    pae.extend_from_slice(&payload);
    let sig = key.sign(&SystemRandom::new(), &pae).unwrap();
    serde_json::to_vec(&json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "dsseEnvelope": {
            "payload": STANDARD.encode(&payload),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": STANDARD.encode(sig.as_ref()), "keyid": ""}],
        },
    }))
    .unwrap()
}

#[test]
fn the_served_manifest_is_reused_only_for_the_same_serialization() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("config.json"), b"{}").unwrap();
    std::fs::write(p.join("weights"), vec![3u8; 5000]).unwrap();
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
    let signers = [Signer {
        name: "release".into(),
        trust: SignerTrust::Key {
            algorithm: &ECDSA_P256_SHA256_ASN1,
            point: key.public_key().as_ref().to_vec(),
        },
    }];
    let shards = |shard_size| HashOptions::new(Serialization::Shards { shard_size }, 2);
    let served = hash_dir(p, &shards(1000), None).unwrap();
    std::fs::write(p.join(SIGNATURE_FILE), bundle(&served, &key)).unwrap();
    let valid = SignatureState::Valid {
        signer: "release".into(),
        identity: None,
    };
    assert_eq!(
        verify_dir_with(p, &signers, Some(&served), &files2()),
        valid
    );
    assert_eq!(verify_dir(p, &signers), valid);

    // A served manifest that disagrees with the signature is what gets checked: the files
    // are not read again.
    let mut doctored = served.clone();
    doctored.resources[3].1[0] ^= 1;
    match verify_dir_with(p, &signers, Some(&doctored), &files2()) {
        SignatureState::Invalid { reason } => {
            assert!(reason.contains("weights:2000:3000 differs"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // Another serialization, or another shard size: the directory is hashed as signed.
    let files = HashOptions::new(Serialization::Files, 1);
    for other in [
        hash_dir(p, &files, None).unwrap(),
        hash_dir(p, &shards(999), None).unwrap(),
    ] {
        let mut doctored = other;
        doctored.resources[0].1[0] ^= 1;
        assert_eq!(
            verify_dir_with(p, &signers, Some(&doctored), &files2()),
            valid
        );
    }
}

fn files2() -> HashOptions {
    HashOptions::new(Serialization::Files, 2)
}
