//! Artefact hashing against the raw SHA-256 primitive, in one run.
//!
//! Run: `cargo bench --bench hashing`. Compare throughputs within the run (criterion
//! prints GiB/s for each): `sha256/raw_buffer` is sha2 over one in-memory buffer on one
//! core, the yardstick; `hash_file/1_thread` is provgate's streaming file hash on a file
//! in the page cache; `manifest/*` hashes a directory of two such files on one and two
//! threads. Reference numbers live in BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sha2::{Digest as _, Sha256};

const FILE_BYTES: usize = 256 << 20;

fn bench(c: &mut Criterion) {
    let data: Vec<u8> = (0..FILE_BYTES).map(|i| (i * 31 % 251) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.safetensors"), &data).unwrap();
    std::fs::write(dir.path().join("b.safetensors"), &data).unwrap();
    // Warm the page cache.
    provgate::artefact::compute_manifest(dir.path(), 2).unwrap();

    let mut g = c.benchmark_group("hashing");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Bytes(FILE_BYTES as u64));
    g.bench_function("sha256/raw_buffer", |b| {
        b.iter(|| Sha256::digest(black_box(&data)))
    });
    let file = dir.path().join("a.safetensors");
    g.bench_function("hash_file/1_thread", |b| {
        b.iter(|| provgate::artefact::compute_manifest(black_box(&file), 1).unwrap())
    });
    g.throughput(Throughput::Bytes(2 * FILE_BYTES as u64));
    for threads in [1, 2] {
        g.bench_function(format!("manifest/2_files_{threads}_threads"), |b| {
            b.iter(|| provgate::artefact::compute_manifest(black_box(dir.path()), threads).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
