use std::time::Duration;

use http::HeaderMap;

use super::index::{self, Key};
use super::reqlog::Form;
use super::revocations::{self, RevocationClaims};
use super::service::{hold_for, none_match, preferred_wait, route};
use crate::approval;
use crate::digest::Digest;
use crate::keys::{KeyKind, SigningKey};

const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn digest() -> Digest {
    format!("sha256:{HEX}").parse().unwrap()
}

#[test]
fn only_the_exact_forms_route() {
    let d = Key::Digest(digest());
    assert_eq!(
        route("/approvals", Some(&format!("digest=sha256:{HEX}"))),
        Some((d, Form::Query))
    );
    assert_eq!(
        route("/approvals", Some(&format!("digest=sha256%3A{HEX}"))),
        Some((d, Form::Query))
    );
    assert_eq!(
        route(&format!("/approvals/sha256/{HEX}"), None),
        Some((d, Form::Path))
    );
    assert_eq!(
        route("/revocations", None),
        Some((Key::Revocations, Form::Revocations))
    );
    let upper = HEX.to_uppercase();
    for (path, query) in [
        (format!("/approvals/sha256/{upper}"), None),
        (format!("/approvals/sha256/{}", &HEX[1..]), None),
        (format!("/approvals/sha256/{HEX}/"), None),
        (format!("/approvals/sha256/../{HEX}"), None),
        (format!("/approvals/sha256/{HEX}"), Some("x=1")),
        ("/approvals/sha256/../../etc/passwd".to_string(), None),
        ("/approvals".to_string(), Some("digest=sha512:00")),
        ("/approvals".to_string(), None),
        ("/revocations".to_string(), Some("a")),
        ("/revocations.jws".to_string(), None),
        ("/".to_string(), None),
    ] {
        assert_eq!(route(&path, query), None, "{path} {query:?}");
    }
}

#[test]
fn prefer_wait_is_read_among_other_preferences() {
    let mut h = HeaderMap::new();
    assert_eq!(preferred_wait(&h), None);
    h.insert("prefer", "respond-async, wait=30".parse().unwrap());
    assert_eq!(preferred_wait(&h), Some(30));
    h.insert("prefer", "WAIT = \"5\"; x=y".parse().unwrap());
    assert_eq!(preferred_wait(&h), Some(5));
    h.insert("prefer", "wait=soon".parse().unwrap());
    assert_eq!(preferred_wait(&h), None);
}

#[test]
fn steady_holds_are_capped_never_longer_than_asked_and_jittered_by_a_tenth() {
    assert_eq!(hold_for(30, 0.0, false), Duration::from_secs(30));
    assert_eq!(hold_for(30, 1.0, false), Duration::from_secs(27));
    assert_eq!(hold_for(30, 0.5, false), Duration::from_millis(28_500));
    assert_eq!(hold_for(3600, 0.0, false), super::MAX_WAIT);
    assert_eq!(hold_for(3600, 1.0, false), Duration::from_secs(54));
    assert_eq!(hold_for(10, 7.0, false), Duration::from_secs(9));
}

#[test]
fn holds_on_a_fresh_answer_spread_over_the_whole_wait() {
    use super::service::MIN_SPREAD_HOLD;
    assert_eq!(hold_for(30, 0.0, true), MIN_SPREAD_HOLD);
    assert_eq!(hold_for(30, 1.0, true), Duration::from_secs(30));
    assert_eq!(hold_for(62, 0.5, true), Duration::from_secs(31));
    assert_eq!(hold_for(3600, 1.0, true), super::MAX_WAIT);
    // A wait shorter than the floor is held for the wait.
    assert_eq!(hold_for(1, 0.0, true), Duration::from_secs(1));
    // Uniform draws spread the holds evenly: each tenth of the range gets its share.
    let mut tenths = [0u32; 10];
    for i in 0..1000 {
        let hold = hold_for(60, (f64::from(i) + 0.5) / 1000.0, true);
        let x = (hold - MIN_SPREAD_HOLD).as_secs_f64() / 58.0;
        tenths[((x * 10.0) as usize).min(9)] += 1;
    }
    assert!(tenths.iter().all(|&n| n == 100), "{tenths:?}");
}

fn write_record(dir: &std::path::Path, name: &str, jti: &str, key: &SigningKey) -> String {
    let claims = serde_json::json!({
        "iss": "ci", "sub": "m", "jti": jti, "iat": 1, "exp": 2, "version_id": "v",
        "artefact": {"digest": format!("sha256:{HEX}")},
    });
    let mut header = jsonwebtoken::Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    let jws = jsonwebtoken::encode(&header, &claims, &key.key).unwrap();
    std::fs::write(dir.join(name), format!("{jws}\n")).unwrap();
    jws
}

#[test]
fn index_groups_by_digest_revokes_and_skips_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let a = write_record(dir.path(), "a.jws", "r-a", &key);
    let b = write_record(dir.path(), "b.jwt", "r-b", &key);
    std::fs::write(dir.path().join("bad.jws"), "not a jws").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();

    let idx = index::load(dir.path()).unwrap();
    assert_eq!((idx.records, idx.skipped, idx.digests()), (2, 1, 1));
    let ok = idx.answer(&Key::Digest(digest())).clone();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, format!("{a}\n{b}\n").as_bytes());
    assert!(ok.etag.starts_with('"') && ok.etag.ends_with('"'));
    let none = idx.answer(&Key::Digest(Digest([7; 32])));
    assert_eq!(none.status, 404);
    assert_eq!(idx.answer(&Key::Revocations).status, 404);

    // One record revoked: served without it.
    std::fs::write(dir.path().join("revoked.txt"), "r-a # gone\n").unwrap();
    let idx = index::load(dir.path()).unwrap();
    let one = idx.answer(&Key::Digest(digest())).clone();
    assert_eq!(
        (one.status, one.body.as_ref()),
        (200, format!("{b}\n").as_bytes())
    );
    assert_ne!(one.etag, ok.etag);
    // Both: 410 with both.
    std::fs::write(dir.path().join("revoked.txt"), "r-a\nr-b\n").unwrap();
    let idx = index::load(dir.path()).unwrap();
    let gone = idx.answer(&Key::Digest(digest())).clone();
    assert_eq!(gone.status, 410);
    assert_eq!(gone.body, ok.body, "the 410 body carries the records");
    assert_ne!(gone.etag, ok.etag, "the status is part of the ETag");

    // An unreadable revoked.txt fails the load rather than un-revoking.
    std::fs::remove_file(dir.path().join("revoked.txt")).unwrap();
    std::fs::create_dir(dir.path().join("revoked.txt")).unwrap();
    assert!(index::load(dir.path()).is_err());
}

#[test]
fn if_none_match_compares_weakly_and_star_needs_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    write_record(dir.path(), "a.jws", "r-a", &key);
    let idx = index::load(dir.path()).unwrap();
    let a = idx.answer(&Key::Digest(digest()));
    assert!(none_match(&a.etag, a));
    assert!(none_match(&format!("\"x\", W/{}", a.etag), a));
    assert!(!none_match("\"x\"", a));
    assert!(none_match("*", a));
    assert!(!none_match("*", idx.answer(&Key::Revocations)));
}

#[test]
fn revocation_lists_supersede_the_one_they_extend() {
    let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let first = RevocationClaims::new("sec".into(), ["b".into(), "a".into()], None, 100);
    assert_eq!(first.revoked, ["a", "b"]);
    let jws = revocations::sign(&first, &key).unwrap();
    let header = jsonwebtoken::decode_header(&jws).unwrap();
    assert_eq!(header.typ.as_deref(), Some(revocations::TYP));
    assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
    let read = revocations::peek(&jws).unwrap();
    assert_eq!(read, first);
    // Same second: the new list is still newer.
    let second = RevocationClaims::new("sec".into(), ["c".into(), "a".into()], Some(&read), 100);
    assert_eq!(
        (second.iat, second.revoked.clone()),
        (101, vec!["a".into(), "b".into(), "c".into()])
    );
    let later = RevocationClaims::new("sec".into(), [], Some(&second), 500);
    assert_eq!(later.iat, 500);
    assert!(revocations::peek("a.b").is_err());
    // Not a record: the server's index does not serve it as one.
    assert_eq!(approval::peek_claims(&jws).map(|c| c.0), Some(None));
}

#[test]
fn the_request_log_closes_while_requests_keep_coming() {
    use super::reqlog::{Line, RequestLog};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.log");
    let (log, closer) = RequestLog::create(&path).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                log.write(Line {
                    arrival_ms: 1,
                    form: Form::Path,
                    status: 304,
                    held_ms: 0,
                    watch: false,
                });
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let t = std::time::Instant::now();
    closer.close();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    busy.join().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.lines().count() > 10, "{text}");
    assert!(text.lines().all(|l| l == "1 path 304 0 0"), "{text}");
}
