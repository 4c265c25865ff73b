use super::find;

#[test]
fn parses_a_record_line() {
    let r = find::parse(r#"{"request_id":"r1","time":"2026-12-01T20:00:00.123Z","decision":"deny","reason":"token_missing","detail":"no bearer token","mode":"enforce","method":"GET","path":"/v1/models","model":"m","status":401,"latency_ms":0.1,"seq":3,"prev":"00"}"#).unwrap();
    assert_eq!(r.request_id, "r1");
    assert_eq!(r.reason.as_deref(), Some("token_missing"));
    assert!(r.denied());
    assert_eq!(super::seconds_of(&r.time).unwrap(), 1_796_155_200);
}
