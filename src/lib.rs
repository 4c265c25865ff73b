//! provgate: a sidecar reverse proxy that enforces, on every request, that the model artefact
//! being served is approved for this deployment and that the caller may call it.
//!
//! The crate is one module per concern. The request path lives in [`proxy`] and reads only
//! published snapshots (artefact state, registry entries, verified tokens); everything that
//! hashes, parses, verifies signatures or touches the file system runs in the background.

#![forbid(unsafe_code)]

pub mod admin;
pub mod approval;
pub mod artefact;
pub mod audit;
pub mod base;
pub mod check;
pub mod config;
pub mod digest;
pub mod explain;
pub mod fields;
/// Entry points for the fuzz targets in `fuzz/` and their corpus replay (README "Fuzzing").
pub mod fuzzing;
pub mod identity;
pub mod inject;
pub mod keys;
pub mod kit;
pub mod oms;
pub mod policy;
pub mod probe;
pub mod process;
pub mod promote;
pub mod proxy;
pub mod registry;
pub mod registry_serve;
pub mod server;
pub mod telemetry;
pub mod trace;
pub mod upstream;
pub mod x509;

/// The global allocator. A work-stealing runtime frees memory on other threads than the one
/// that allocated it; glibc malloc serialises that on arena locks. jemalloc (the default)
/// and mimalloc do not; jemalloc keeps glibc's memory footprint (BENCHMARKS.md).
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The clock, re-exported from [`base`] where it lives.
pub use base::{unix_now, unix_now_ms};
