//! The kit for background work: the few shapes every background service of provgate repeats,
//! each small and tested on its own.
//!
//! - [`dirwatch`]: a directory watch (notify events, a fingerprint of the tree, a settle after
//!   a burst, a periodic rescan) driving hooks (the artefact watcher fails closed on an event;
//!   the directory registry wakes early for a record's `revalidate_after`);
//! - [`published`]: a value published through `arc-swap` with its freshness clock (synced
//!   flag, last success), read on the request path with one atomic load;
//! - [`backoff`]: the one retry schedule (doubling to a cap, jitter a parameter);
//! - [`file`]: the one bounded, non-blocking file read (regular files only, a cap per kind);
//! - [`http`]: the one HTTP client builder (rustls, CA file, timeouts) and bounded body
//!   reads, with typed fetch errors;
//! - [`service`]: loops as pingora background services, so a shutdown stops them;
//! - [`stop`]: stop flags that wake the loops waiting on them, so no loop ticks to look;
//! - [`watchdog`]: a heartbeat per background service, so a stuck one is seen.
//! - [`conn`]: one client connection's header and idle deadline;
//! - [`fault`]: the faults debug builds let the tests inject (panics, stalls).
//!
//! The kit owns no domain type: it knows nothing of artefacts, records, keys or requests,
//! and imports nothing from the crate but OMS's file identity (for fingerprints).

pub mod backoff;
pub mod conn;
pub mod dirwatch;
pub mod fault;
pub mod file;
pub mod http;
pub mod published;
pub mod service;
pub mod stop;
pub mod watchdog;
