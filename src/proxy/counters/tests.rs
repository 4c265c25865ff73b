use super::*;

#[test]
fn request_counters_resolve_once_per_version() {
    let m = Metrics::new();
    let c = RequestCounters::new(&m, "m", false);
    c.inc(Outcome::Allow, "v1");
    c.inc(Outcome::Allow, "v1");
    c.inc(Outcome::Deny(DenyReason::TokenMissing), "none");
    c.inc(Outcome::Error, "none");
    assert_eq!(
        m.requests
            .with_label_values(&["allow", "none", "m", "v1"])
            .get(),
        2
    );
    assert_eq!(
        m.requests
            .with_label_values(&["would_block", "token_missing", "m", "none"])
            .get(),
        1
    );
    assert_eq!(
        m.requests
            .with_label_values(&["error", "none", "m", "none"])
            .get(),
        1
    );
    assert_eq!(c.by_version.load().len(), 2);
}
