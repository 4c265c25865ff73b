//! The process's life: a shutdown signal reaches the background services, so a SIGTERM
//! during a long first hash ends the hash and the process promptly.

use std::time::{Duration, Instant};

use crate::support::*;

/// A sparse file large enough that its first hash is still running when the signal comes
/// (tens of seconds at debug-build speed), without taking the disk space.
const LARGE: u64 = 16 << 30;

async fn signal_during_a_large_hash(signal: &str) -> (Duration, String) {
    let fx = Fixture::new();
    let big = std::fs::File::create(fx.model_dir().join("weights.bin")).unwrap();
    big.set_len(LARGE).unwrap();
    drop(big);
    let up = Upstream::start().await;
    let mut pg = Provgate::start(&fx, up.addr).await;
    // Hashing has begun and has not finished: the state is still pending.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pending = format!("provgate_artefact_state{{model=\"{MODEL}\",state=\"pending\"}}");
    assert_eq!(
        pg.metric(&pending).await,
        1.0,
        "the hash finished before the signal:\n{}",
        pg.logs()
    );
    let sent = Instant::now();
    let status = std::process::Command::new("kill")
        .args([signal, &pg.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = loop {
        if let Some(s) = pg.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "still running 10 s after {signal}:\n{}",
            pg.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = sent.elapsed();
    assert!(exited.success(), "{exited:?}:\n{}", pg.logs());
    (took, pg.logs())
}

#[tokio::test]
async fn sigterm_abandons_a_hash_in_progress_and_exits_promptly() {
    let (took, logs) = signal_during_a_large_hash("-TERM").await;
    // grace_period 0 s; the runtimes get pingora's 1 s: the hash must not hold them.
    assert!(took < Duration::from_secs(3), "exit took {took:?}:\n{logs}");
    assert!(
        logs.contains("artefact hashing abandoned"),
        "the hash was not stopped by the shutdown:\n{logs}"
    );
    assert!(!logs.contains("artefact hashed"), "{logs}");
}

#[tokio::test]
async fn sigint_exits_promptly_during_a_large_hash() {
    let (took, logs) = signal_during_a_large_hash("-INT").await;
    assert!(took < Duration::from_secs(3), "exit took {took:?}:\n{logs}");
}
