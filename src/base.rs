//! Small shared items every layer may use: the fast hasher for maps whose keys no request
//! chooses, and the clock in Unix seconds and milliseconds.
//!
//! A leaf: it imports nothing from the crate, so anything may import it.

/// A seeded fast hash for maps whose keys no request chooses.
pub type FastHash = foldhash::fast::RandomState;

/// Seconds since the Unix epoch, as the JOSE `NumericDate` claims count them.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
