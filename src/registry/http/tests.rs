use super::*;

#[test]
fn records_are_one_per_line() {
    let r = parse_records("a.b.c\r\n\n  d.e.f  \n", false, "u");
    let jws: Vec<&str> = r.iter().map(|r| r.jws.as_str()).collect();
    assert_eq!(jws, ["a.b.c", "d.e.f"]);
    assert_eq!(r[1].origin, "u record 2");
    assert!(parse_records("x.y.z", true, "u")[0].revoked);
    assert!(parse_records("\n \n", false, "u").is_empty());
    let flood = "garbage\n".repeat(250_000);
    assert_eq!(parse_records(&flood, false, "u").len(), MAX_RECORDS);
}

#[test]
fn cache_control_sets_max_age_and_no_cache_is_zero() {
    let s = Duration::from_secs;
    assert_eq!(max_age("public, max-age=60"), Some(s(60)));
    assert_eq!(max_age("max-age=\"7\", must-revalidate"), Some(s(7)));
    assert_eq!(max_age("no-cache"), Some(s(0)));
    assert_eq!(max_age("No-Store"), Some(s(0)));
    assert_eq!(max_age("public"), None);
    assert_eq!(max_age("max-age=abc"), None);
    assert_eq!(max_age("max-age=99999999999"), Some(MAX_HINT));
}

#[test]
fn retry_after_reads_seconds_and_http_dates_within_a_bound() {
    let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let s = Duration::from_secs;
    assert_eq!(retry_after("120", now), Some(s(120)));
    let later = httpdate::fmt_http_date(now + s(90));
    assert_eq!(retry_after(&later, now), Some(s(90)));
    let earlier = httpdate::fmt_http_date(now - s(90));
    assert_eq!(retry_after(&earlier, now), Some(s(0)), "a past date: now");
    assert_eq!(retry_after("999999999", now), Some(MAX_HINT));
    assert_eq!(retry_after("soon", now), None);
}
