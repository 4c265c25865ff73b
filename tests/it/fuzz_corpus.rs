//! The fuzz targets' inputs replayed on the stable toolchain: every committed seed
//! (`fuzz/seeds/<target>/`), corpus entry (`fuzz/corpus/<target>/`) and regression input
//! (`fuzz/regressions/<target>/`, each a crash the fuzzer found) goes through the same
//! `provgate::fuzzing` entry point the fuzz target calls. A panic fails the test and names
//! the file. No libFuzzer here: `scripts/fuzz.sh` does the fuzzing.

use std::path::{Path, PathBuf};

/// An entry point: the fuzzer's bytes in, whether the input was accepted out.
type Entry = fn(&[u8]) -> bool;

const TARGETS: &[(&str, Entry)] = &[
    ("token", provgate::fuzzing::token),
    ("jwks", provgate::fuzzing::jwks),
    ("approval", provgate::fuzzing::approval),
    ("target", provgate::fuzzing::target),
    ("body_model", provgate::fuzzing::body_model),
    ("model_list", provgate::fuzzing::model_list),
    ("oms_bundle", provgate::fuzzing::oms_bundle),
    ("registry", provgate::fuzzing::registry),
    ("config", provgate::fuzzing::config),
    ("audit_verify", provgate::fuzzing::audit_verify),
];

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    out.sort();
    out
}

/// Runs each input of `target` from `kinds` (`seeds`, `corpus`, `regressions`); returns how
/// many ran.
fn replay(target: &str, run: Entry, kinds: &[&str]) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for kind in kinds {
        for file in files(&root.join(kind).join(target)) {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{} panics", file.display());
            n += 1;
        }
    }
    n
}

/// Every target has seeds, and every seed, corpus entry and regression input passes.
#[test]
fn every_committed_fuzz_input_replays() {
    // The config target resolves `config/provgate.toml`'s relative key paths from the
    // working directory: cargo runs tests in the repository root, as `provgate -t` is.
    for (target, run) in TARGETS {
        assert!(
            replay(target, *run, &["seeds"]) > 0,
            "fuzz/seeds/{target} is empty"
        );
        replay(target, *run, &["corpus", "regressions"]);
    }
}

/// Every fuzz target in `fuzz/Cargo.toml` is replayed here (a new target must be added).
#[test]
fn every_fuzz_target_is_replayed() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/Cargo.toml")).unwrap();
    let declared: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "provgate-fuzz")
        .collect();
    let replayed: Vec<&str> = TARGETS.iter().map(|(t, _)| *t).collect();
    assert_eq!(declared, replayed);
}
