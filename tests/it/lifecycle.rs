//! The process's life: a shutdown signal reaches the background services, so a SIGTERM
//! during a long first hash ends the hash and the process promptly; and the thread count
//! does not grow when the process is starved of CPU for a while.

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

/// The process's threads by name (`/proc/PID/task/*/comm`), sorted.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// Issue 16 (the soak's threads, 16 -> 22 under a load average of 87): pingora's fast
/// timers need a clock thread, and a request that finds it has not ticked for about 2 s
/// starts another ("Timer thread"); the starved one goes on too, so every CPU stall could
/// add a thread for good. provgate's timeouts of a second or more now use tokio's timer:
/// no clock thread at all, and a stall (SIGSTOP for 3 s) adds no thread. Before the fix a
/// "Timer thread" ran as soon as a request had been proxied.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn a_cpu_stall_adds_no_thread() {
    let fx = Fixture::new();
    fx.approve("rec.jwt", &fx.claims());
    let up = Upstream::start().await;
    let pg = Provgate::start(&fx, up.addr).await;
    pg.wait_ready().await;
    let token = fx.token(CALLER);
    let proxy = |n: usize| {
        let (pg, token) = (&pg, &token);
        async move {
            for _ in 0..n {
                assert_eq!(pg.get("/v1/models", Some(token)).await.status(), 200);
            }
        }
    };
    proxy(20).await;
    let pid = pg.child.id();
    let before = thread_names(pid);
    assert!(
        !before.iter().any(|n| n == "Timer thread"),
        "pingora's clock thread runs: {before:?}"
    );

    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    for _ in 0..2 {
        signal("-STOP");
        tokio::time::sleep(Duration::from_secs(3)).await;
        signal("-CONT");
        proxy(20).await;
    }
    let after = thread_names(pid);
    assert!(
        after.len() <= before.len(),
        "threads grew after CPU stalls: {before:?} -> {after:?}"
    );
}
