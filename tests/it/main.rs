//! provgate's integration tests, one crate: every area is a module of this one test binary,
//! so the suite links pingora and the other dependencies once instead of once per file.
//! Each module starts the real `provgate` binary on 127.0.0.1 ephemeral ports against real
//! peers (`support` holds the builders: an upstream, a fixture of keys and records, the proxy).
//!
//! Run one area with `cargo test --test it enforcement::` (the module path filters).
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

mod support;

mod audit;
mod certificates;
mod check;
mod cli;
mod clock;
mod connections;
mod doors;
mod enforcement;
mod explain;
mod faults;
mod first_run;
mod fuzz_corpus;
mod hostile;
mod identity;
mod inject;
mod interop;
mod kserve;
mod layering;
mod lifecycle;
mod monitoring;
mod mtls;
mod policy;
mod progress;
mod promote;
mod registries;
mod registry_serve;
mod restart;
mod routing;
mod sigstore;
mod traces;
