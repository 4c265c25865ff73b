use super::*;

#[test]
fn records_are_one_per_line() {
    let r = parse_records("a.b.c\r\n\n  d.e.f  \n", false, "u");
    let jws: Vec<&str> = r.iter().map(|r| r.jws.as_str()).collect();
    assert_eq!(jws, ["a.b.c", "d.e.f"]);
    assert_eq!(r[1].origin, "u record 2");
    assert!(parse_records("x.y.z", true, "u")[0].revoked);
    assert!(parse_records("\n \n", false, "u").is_empty());
}
