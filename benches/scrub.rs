//! The scrub's cost on a multi-GB model: one file of `PROVGATE_SCRUB_GIB` GiB (default 2)
//! of pseudo-random bytes, hashed by the scrub's code path (`hash_dir` with no previous
//! manifest, one thread) at full speed and at the default budget (`scrub_rate = "256MiB"`).
//! For each: wall time, process CPU time (from /proc/self/stat) and the CPU duty cycle
//! (CPU / wall), i.e. the share of one core the scrub takes while it runs.
//!
//! Run: `cargo bench --bench scrub` (release), or on a shared machine without a release
//! build `cargo bench --profile dev --bench scrub` (dependencies at opt-level 1: sha2 still
//! uses the CPU's SHA extensions). Needs the file's size free in the temp directory.
//!
//! Reference run (2026-12-01 16:15 UTC, dev profile, 2-core AMD EPYC VM with SHA-NI, load
//! average about 15 from other builds): see BENCHMARKS.md "Scrub"; the numbers there are the
//! ones the README's detection bound and CPU estimate use.
// Tests, benchmarks and examples may panic: Cargo.toml's no-panic lints are for the product.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented
)]

use std::io::Write;
use std::time::{Duration, Instant};

use provgate::oms::{hash_dir, HashOptions, Serialization};

/// Process CPU time (user + system) so far.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    // Clock ticks of 1/100 s (the Linux USER_HZ).
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

fn measure(dir: &std::path::Path, rate: Option<u64>) -> (Duration, Duration) {
    let mut opts = HashOptions::new(Serialization::Files, 1);
    if let Some(r) = rate {
        opts = opts.rate_limited(r);
    }
    let (c0, t0) = (cpu(), Instant::now());
    let m = hash_dir(dir, &opts, None).expect("hash");
    std::hint::black_box(m.root);
    (t0.elapsed(), cpu() - c0)
}

fn main() {
    let gib: u64 = std::env::var("PROVGATE_SCRUB_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.safetensors");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunk = vec![0u8; 8 << 20];
        for _ in 0..(gib << 30) / chunk.len() as u64 {
            for b in chunk.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&chunk).expect("write");
        }
    }
    let bytes = (gib << 30) as f64;
    // Once to bring the file into the page cache (the served model is read by the server).
    let _ = measure(dir.path(), None);
    println!("scrub cost on a {gib} GiB model (one thread, files serialization):");
    for (label, rate) in [
        ("full speed", None),
        ("scrub_rate 256MiB", Some(256u64 << 20)),
    ] {
        let (wall, cpu) = measure(dir.path(), rate);
        println!(
            "  {label:>18}: wall {:>6.2} s ({:.2} GiB/s), CPU {:>6.2} s ({:.2} CPU-s per GiB), duty {:.0}% of one core",
            wall.as_secs_f64(),
            bytes / wall.as_secs_f64() / (1u64 << 30) as f64,
            cpu.as_secs_f64(),
            cpu.as_secs_f64() / gib as f64,
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
        );
    }
}
