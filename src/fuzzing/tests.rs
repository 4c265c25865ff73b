//! The seeds reach the code the fuzz targets are for: for every target some committed seed
//! is accepted all the way (a verified token, record or bundle, an intact audit log, a
//! valid config), and for the signing modes too (the fuzzer's mutations of those seeds
//! start behind the signature check).

use std::path::Path;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.display().to_string(), std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// (accepted, rejected) counts of `target`'s seeds, those with an odd mode byte apart.
fn tally(target: &str, run: fn(&[u8]) -> bool) -> ([usize; 2], [usize; 2]) {
    let mut accepted = [0; 2];
    let mut rejected = [0; 2];
    for (_, data) in seeds(target) {
        let signing = usize::from(data.first().is_some_and(|m| m & 1 == 1));
        if run(&data) {
            accepted[signing] += 1;
        } else {
            rejected[signing] += 1;
        }
    }
    (accepted, rejected)
}

#[test]
fn seeds_reach_past_the_signature_checks() {
    for (target, run) in [
        ("token", super::token as fn(&[u8]) -> bool),
        ("approval", super::approval),
        ("oms_bundle", super::oms_bundle),
    ] {
        let (accepted, rejected) = tally(target, run);
        assert!(accepted[0] > 0, "{target}: no raw seed verifies");
        assert!(accepted[1] > 0, "{target}: no signed seed verifies");
        assert!(
            rejected[0] + rejected[1] > 0,
            "{target}: every seed verifies"
        );
    }
}

#[test]
fn every_target_accepts_some_seed() {
    for (target, run) in [
        ("jwks", super::jwks as fn(&[u8]) -> bool),
        ("target", super::target),
        ("body_model", super::body_model),
        ("model_list", super::model_list),
        ("registry", super::registry),
        ("config", super::config),
        ("audit_verify", super::audit_verify),
    ] {
        let (accepted, _) = tally(target, run);
        assert!(
            accepted[0] + accepted[1] > 0,
            "{target}: no seed is accepted"
        );
    }
}
