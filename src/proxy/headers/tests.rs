use bytes::BytesMut;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};

use super::*;

fn wire(req: &RequestHeader) -> String {
    let mut buf = BytesMut::new();
    req.header_to_h1_wire(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn request_edits_keep_the_target_and_headers_but_not_provgates() {
    for target in [
        &b"/v2/models/m/infer?x=1"[..],
        b"http://model.internal/v2/models/m/infer",
        b"/v2/models/m\xff/infer",
        b"*",
    ] {
        let mut req = RequestHeader::build("POST", target, None).unwrap();
        req.append_header("Content-Type", "application/json")
            .unwrap();
        req.append_header("X-Custom", "a").unwrap();
        req.append_header("X-Custom", "b").unwrap();
        req.append_header("X-Provgate-Caller", "forged").unwrap();
        req.append_header("x-provgate-version-id", "forged")
            .unwrap();
        edit_request(&mut req, |h| {
            strip_provgate(h);
            h.try_insert(HEADER_CALLER, HeaderValue::from_static("spiffe://c"))?;
            Ok(())
        })
        .unwrap();
        assert_eq!(
            req.raw_path(),
            target,
            "{}",
            String::from_utf8_lossy(target)
        );
        assert!(!req.has_case());
        assert_eq!(req.headers.get_all("x-custom").iter().count(), 2);
        assert_eq!(req.headers.get_all(HEADER_CALLER).iter().count(), 1);
        assert_eq!(req.headers[HEADER_CALLER], "spiffe://c");
        assert!(!req.headers.contains_key(HEADER_VERSION_ID));
        let wire = wire(&req);
        assert!(
            wire.contains("Content-Type: application/json\r\n"),
            "{wire}"
        );
        assert!(wire.contains("x-custom: a\r\nx-custom: b\r\n"), "{wire}");
    }
}

#[test]
fn request_edits_keep_http2_end_stream() {
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    req.set_version(http::Version::HTTP_2);
    req.set_send_end_stream(false);
    edit_request(&mut req, |_| Ok(())).unwrap();
    assert_eq!(req.send_end_stream(), Some(false));
}

#[test]
fn response_edits_keep_a_custom_reason_phrase() {
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.set_reason_phrase(Some("Fine")).unwrap();
    resp.append_header("X-Provgate-Request-Id", "upstream")
        .unwrap();
    edit_response(&mut resp, |h| {
        strip_provgate(h);
        h.try_insert(HEADER_REQUEST_ID, HeaderValue::from_static("ours"))?;
        Ok(())
    })
    .unwrap();
    assert_eq!(resp.get_reason_phrase(), Some("Fine"));
    assert_eq!(resp.headers[HEADER_REQUEST_ID], "ours");
    assert_eq!(resp.headers.len(), 1);
    let mut plain = ResponseHeader::build(404, None).unwrap();
    edit_response(&mut plain, |_| Ok(())).unwrap();
    assert_eq!(plain.get_reason_phrase(), Some("Not Found"));
}

#[test]
fn request_ids_are_unique() {
    let ids = RequestIds::default();
    let a = ids.next();
    let b = ids.next();
    assert_ne!(a, b);
    assert_eq!(a.len(), 32);
    assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
    assert!(b.to_str().unwrap().ends_with("2"));
}

#[test]
fn provgate_names_are_folded_before_they_are_compared() {
    for name in [
        "x-provgate-caller",
        "x_provgate_version_id",
        "x-provgate_caller",
        "x_provgate-request-id",
        "x-provgate-",
    ] {
        assert!(is_provgate(name), "{name}");
    }
    for name in [
        "x-provgate",
        "x-provgatecaller",
        "provgate-caller",
        "x-prov-gate-x",
        "accept",
    ] {
        assert!(!is_provgate(name), "{name}");
    }
    let mut h = http::HeaderMap::new();
    h.insert("x_provgate_version_id", HeaderValue::from_static("forged"));
    h.insert("x-provgate_caller", HeaderValue::from_static("forged"));
    h.insert("x-provgate-request-id", HeaderValue::from_static("forged"));
    h.insert("x-other", HeaderValue::from_static("kept"));
    strip_provgate(&mut h);
    assert_eq!(h.len(), 1);
    assert!(h.contains_key("x-other"));
}
