//! Faults the tests inject through the real binary, in debug builds only: release builds
//! compile every hook here to nothing.
//!
//! - `PROVGATE_DEBUG_PANIC=KIND@SECONDS[,...]`: the first run of each background service of
//!   that kind panics after SECONDS ([`super::service`]), so the supervision is watched.
//! - `PROVGATE_DEBUG_STALL=POINT@SECONDS[,...]`: the thread that reaches POINT sleeps
//!   SECONDS there, every time (a slow disk under a cache write, say), so the tests can show
//!   that nothing which must happen at once waits behind it.

use std::time::Duration;

/// The duration `var` gives `kind` (`KIND@SECONDS`, comma-separated), if any.
#[cfg(debug_assertions)]
pub fn injected(var: &str, kind: &str) -> Option<Duration> {
    let spec = std::env::var(var).ok()?;
    spec.split(',').find_map(|item| {
        let (k, secs) = item.split_once('@')?;
        let secs: f64 = secs
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite() && *s >= 0.0)?;
        (k == kind).then(|| Duration::from_secs_f64(secs))
    })
}

#[cfg(not(debug_assertions))]
pub fn injected(_: &str, _: &str) -> Option<Duration> {
    None
}

/// Sleeps here if `PROVGATE_DEBUG_STALL` names `point` (debug builds only).
pub fn stall(point: &str) {
    if let Some(d) = injected("PROVGATE_DEBUG_STALL", point) {
        tracing::warn!(
            point,
            seconds = d.as_secs_f64(),
            "injected stall (PROVGATE_DEBUG_STALL)"
        );
        std::thread::sleep(d);
    }
}
