//! The audit cost per denied request, on the writer's side and the request path's side.
//!
//! Run: `cargo bench --bench audit -- --warm-up-time 1 --measurement-time 3`.
//!
//! - `audit/encode_chain/typical`: what the writer does per record: cut the fields to their
//!   bounds, encode the line with its `seq` and `prev`, hash it for the next `prev`.
//! - `audit/encode_chain/hostile`: the same for a record whose target is 65,500 `"`
//!   (the issue-14 attack): cut to 2 KB before encoding.
//! - `audit/emit`: the request path's share: bound + a try-send onto the queue (drained by
//!   the writer thread meanwhile).
//!
//! Reference (2026-12-01, 2-core shared machine at load ~20, quick mode, no LTO):
//! typical 5.20 us, hostile 43.6 us, emit 2.44 us (the overflow path: the bench outruns the
//! writer). The base commit's same steps (serialise + hash, no bounds): 4.09 us, 1.24 ms,
//! 1.27 us; not interleaved, see BENCHMARKS.md "Record encode + chain".
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

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use provgate::audit::record::{encode_line, synthetic, Body};
use provgate::audit::{line_hash, AuditConfig, AuditLog, GENESIS};

fn bench(c: &mut Criterion) {
    let typical = synthetic(7, false);
    let mut hostile = synthetic(7, false);
    hostile.path = format!("/v2/models/{}/infer", "\"".repeat(65_500));
    hostile.requested_model = Some("\"".repeat(65_500));
    let mut prev = GENESIS.to_string();
    for (name, event) in [("typical", &typical), ("hostile", &hostile)] {
        c.bench_function(&format!("audit/encode_chain/{name}"), |b| {
            let mut seq = 0u64;
            b.iter(|| {
                let mut e = event.clone();
                e.bound();
                seq += 1;
                let line = encode_line(seq, Body::Event(&e), &prev).unwrap();
                prev = line_hash(line.as_bytes());
                black_box(line.len())
            })
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(provgate::telemetry::Metrics::new());
    let log = AuditLog::open(&AuditConfig::at(dir.path().join("a.jsonl")), metrics).unwrap();
    c.bench_function("audit/emit", |b| b.iter(|| log.emit(typical.clone())));
}

criterion_group!(benches, bench);
criterion_main!(benches);
