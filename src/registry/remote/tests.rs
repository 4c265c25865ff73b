//! The refresher on a paused clock, against a scripted registry.

use std::sync::Mutex;

use super::*;
use crate::approval::sign;
use crate::keys::{jwks_document, KeyKind, SigningKey};
use crate::registry::config::RegistryAuth;
use crate::registry::tests::claims;
use crate::registry::Lookup;

const REFRESH: Duration = Duration::from_secs(5);
const MAX_STALE: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(2);

/// What the scripted registry answers next.
#[derive(Clone)]
enum Answer {
    Records(Vec<FetchedRecord>, Option<&'static str>),
    Error,
    Hang,
}

/// (digest, etag sent) per call.
type Calls = Arc<Mutex<Vec<(Digest, Option<String>)>>>;

#[derive(Clone)]
struct Script {
    answer: Arc<Mutex<Answer>>,
    calls: Calls,
}

impl Script {
    fn new() -> Script {
        Script {
            answer: Arc::new(Mutex::new(Answer::Records(Vec::new(), None))),
            calls: Arc::new(Mutex::new(Vec::new())),
        }
    }
    fn answer(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }
    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

impl Source for Script {
    fn label(&self) -> &'static str {
        "script"
    }

    async fn fetch(&self, digest: &Digest, etag: Option<&str>) -> Result<Fetched, FetchError> {
        self.calls
            .lock()
            .unwrap()
            .push((*digest, etag.map(str::to_string)));
        let answer = self.answer.lock().unwrap().clone();
        match answer {
            // An ETag the caller already holds: the registry says "unchanged".
            Answer::Records(_, Some(tag)) if etag == Some(tag) => Ok(Fetched::NotModified),
            Answer::Records(records, etag) => Ok(Fetched::Records {
                records,
                etag: etag.map(str::to_string),
            }),
            Answer::Error => Err(FetchError::answer("script", "registry down")),
            Answer::Hang => std::future::pending().await,
        }
    }
}

struct Rig {
    script: Script,
    store: Arc<ApprovalStore>,
    served: Arc<Mutex<Vec<Digest>>>,
    metrics: Arc<Metrics>,
    key: SigningKey,
    stop: Arc<AtomicBool>,
}

impl Rig {
    fn start() -> Rig {
        let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
        let approvers =
            KeySet::from_jwks_json(&jwks_document(std::slice::from_ref(&key.public_jwk)), "t")
                .unwrap();
        let metrics = Arc::new(Metrics::new());
        let store = Arc::new(ApprovalStore::new(MAX_STALE, TIMEOUT, metrics.clone()));
        let served = Arc::new(Mutex::new(Vec::new()));
        let script = Script::new();
        let stop = Arc::new(AtomicBool::new(false));
        let refresher = Refresher {
            source: script.clone(),
            approvers,
            refresh_interval: REFRESH,
            timeout: TIMEOUT,
            store: store.clone(),
            served: {
                let served = served.clone();
                Box::new(move || served.lock().unwrap().clone())
            },
            metrics: metrics.clone(),
            heartbeat: None,
        };
        tokio::spawn(refresher.run(stop.clone()));
        Rig {
            script,
            store,
            served,
            metrics,
            key,
            stop,
        }
    }

    fn record(&self, jti: &str, digest: Digest, revoked: bool) -> FetchedRecord {
        FetchedRecord {
            jws: sign(&claims(jti, digest, crate::unix_now()), &self.key).unwrap(),
            revoked,
            origin: format!("test {jti}"),
        }
    }

    fn serve(&self, digest: Digest) {
        *self.served.lock().unwrap() = vec![digest];
    }

    fn view(&self, digest: &Digest) -> Lookup {
        self.store.view(digest, crate::unix_now_ms())
    }

    /// The in-force view's record IDs and revocation flags.
    fn records(&self, digest: &Digest) -> Option<Vec<(String, bool)>> {
        match self.view(digest) {
            Lookup::Entry(Some(e)) => Some(
                e.records
                    .iter()
                    .map(|c| (c.record.claims.jti.clone(), c.revoked))
                    .collect(),
            ),
            Lookup::Entry(None) => Some(Vec::new()),
            Lookup::Unavailable => None,
        }
    }

    fn fetches(&self, result: &str) -> u64 {
        self.metrics
            .registry_fetches
            .with_label_values(&["script", result])
            .get()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn advance(d: Duration) {
    tokio::time::sleep(d).await;
}

const D1: Digest = Digest([1; 32]);
const D2: Digest = Digest([2; 32]);

#[tokio::test(start_paused = true)]
async fn nothing_is_asked_before_a_digest_is_served_and_a_new_one_is_asked_at_once() {
    let rig = Rig::start();
    advance(REFRESH * 3).await;
    assert_eq!(rig.script.calls(), 0, "no digest, no question");
    assert!(!rig.store.is_synced(), "not ready before the first answer");
    assert!(rig.records(&D1).is_none());

    rig.script
        .answer(Answer::Records(vec![rig.record("r1", D1, false)], None));
    rig.serve(D1);
    advance(TICK * 2).await;
    assert_eq!(rig.script.calls(), 1);
    assert!(rig.store.is_synced());
    assert_eq!(rig.records(&D1), Some(vec![("r1".into(), false)]));

    // The served artefact changes: its digest has not been asked about, so its answer is
    // unknown (fail closed), until the next tick asks.
    rig.script.answer(Answer::Records(Vec::new(), None));
    rig.serve(D2);
    assert!(rig.records(&D2).is_none(), "unasked digest is unavailable");
    advance(TICK * 2).await;
    assert_eq!(rig.script.calls(), 2);
    assert_eq!(
        rig.records(&D2),
        Some(vec![]),
        "the registry has nothing for it"
    );
    assert_eq!(rig.fetches("not_found"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_revocation_reaches_the_store_within_one_refresh_interval() {
    let rig = Rig::start();
    let record = rig.record("r1", D1, false);
    rig.script
        .answer(Answer::Records(vec![record.clone()], None));
    rig.serve(D1);
    advance(TICK * 2).await;
    let first = match rig.view(&D1) {
        Lookup::Entry(Some(e)) => e,
        other => panic!("expected records, got {other:?}"),
    };

    // The same answer again: the verified entry is reused, not verified again.
    advance(REFRESH).await;
    assert_eq!(rig.script.calls(), 2);
    match rig.view(&D1) {
        Lookup::Entry(Some(e)) => assert!(Arc::ptr_eq(&e, &first), "unchanged answer reused"),
        other => panic!("expected records, got {other:?}"),
    }

    let revoked_at = tokio::time::Instant::now();
    rig.script.answer(Answer::Records(
        vec![FetchedRecord {
            revoked: true,
            ..record
        }],
        None,
    ));
    while rig.records(&D1) != Some(vec![("r1".into(), true)]) {
        advance(TICK).await;
        assert!(
            revoked_at.elapsed() <= REFRESH + TICK,
            "revocation not seen within refresh_interval"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_registry_is_trusted_until_max_stale_then_recovers() {
    let rig = Rig::start();
    rig.script
        .answer(Answer::Records(vec![rig.record("r1", D1, false)], None));
    rig.serve(D1);
    advance(TICK * 2).await;
    let last_good = tokio::time::Instant::now();
    rig.script.answer(Answer::Error);

    // Every check below runs on the paused clock: the bound holds to the tick.
    while last_good.elapsed() < MAX_STALE - REFRESH {
        advance(REFRESH).await;
        assert_eq!(
            rig.records(&D1),
            Some(vec![("r1".into(), false)]),
            "last good records used at {:?}",
            last_good.elapsed()
        );
    }
    advance(REFRESH + TICK * 2).await;
    assert!(last_good.elapsed() > MAX_STALE);
    assert!(rig.records(&D1).is_none(), "past max_stale: unavailable");
    assert!(rig.fetches("error") >= 5, "retried while failing");

    // The registry comes back: the next retry (at most refresh_interval) restores service.
    rig.script
        .answer(Answer::Records(vec![rig.record("r2", D1, false)], None));
    advance(REFRESH + TICK).await;
    assert_eq!(rig.records(&D1), Some(vec![("r2".into(), false)]));
}

#[tokio::test(start_paused = true)]
async fn a_hanging_registry_is_a_failed_fetch_after_the_timeout() {
    let rig = Rig::start();
    rig.script
        .answer(Answer::Records(vec![rig.record("r1", D1, false)], None));
    rig.serve(D1);
    advance(TICK * 2).await;
    rig.script.answer(Answer::Hang);
    advance(REFRESH + TIMEOUT + TICK).await;
    assert_eq!(rig.fetches("error"), 1, "the hung fetch timed out");
    assert!(rig.records(&D1).is_some(), "and the last good records stay");
}

#[tokio::test(start_paused = true)]
async fn an_etag_turns_an_unchanged_answer_into_not_modified() {
    let rig = Rig::start();
    rig.script.answer(Answer::Records(
        vec![rig.record("r1", D1, false)],
        Some("\"v1\""),
    ));
    rig.serve(D1);
    advance(TICK * 2).await;
    advance(REFRESH * 2).await;
    let calls = rig.script.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].1, None, "first ask has no ETag");
    assert_eq!(calls[1].1.as_deref(), Some("\"v1\""));
    assert_eq!(rig.fetches("ok"), 1);
    assert_eq!(rig.fetches("not_modified"), 2);
    assert_eq!(rig.records(&D1), Some(vec![("r1".into(), false)]));
}

#[tokio::test(start_paused = true)]
async fn a_record_filed_under_another_digest_approves_neither() {
    let rig = Rig::start();
    // The registry files D2's record under D1 (a mistake, or an attack).
    rig.script
        .answer(Answer::Records(vec![rig.record("r1", D2, false)], None));
    rig.serve(D1);
    advance(TICK * 2).await;
    match rig.view(&D1) {
        Lookup::Entry(Some(e)) => {
            assert!(e.records.is_empty());
            assert_eq!(e.invalid.len(), 1);
            assert!(e.invalid[0].contains("not the digest it is filed under"));
        }
        other => panic!("expected an entry with the invalid record, got {other:?}"),
    }
}

#[test]
fn revalidation_is_due_once_per_passing_revalidate_after() {
    let mut tracked = HashMap::new();
    tracked.insert(
        D1,
        Tracked {
            etag: None,
            fetched: Vec::new(),
            verified: HashMap::new(),
            entry: Arc::new(RegistryEntry {
                revalidate_after: Some(100),
                ..RegistryEntry::default()
            }),
        },
    );
    // (last round began, now) in Unix milliseconds.
    for (last_round, now, due) in [
        (90_000, 99_999, false),   // not yet
        (90_000, 100_000, true),   // at the second
        (90_000, 250_000, true),   // late, but no round since
        (100_000, 100_500, false), // a round at that moment already asked
        (120_000, 130_000, false), // long done
    ] {
        assert_eq!(
            revalidation_due(&tracked, last_round, now),
            due,
            "last round {last_round}, now {now}"
        );
    }
}

#[test]
fn credentials_are_read_from_their_files_and_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let header = |auth: &RegistryAuth| {
        authorize(client.get("http://127.0.0.1:1/"), auth)
            .map(|r| r.build().unwrap().headers()["authorization"].clone())
    };
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    assert_eq!(
        header(&RegistryAuth::BearerFile(token.clone())).unwrap(),
        "Bearer s3cret"
    );
    let basic = dir.path().join("basic");
    std::fs::write(&basic, "alice:pa:ss").unwrap();
    // base64("alice:pa:ss"): the password may itself hold a colon.
    assert_eq!(
        header(&RegistryAuth::BasicFile(basic.clone())).unwrap(),
        "Basic YWxpY2U6cGE6c3M="
    );
    std::fs::write(&basic, "no-colon-secret").unwrap();
    let err = header(&RegistryAuth::BasicFile(basic))
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected user:password"), "{err}");
    assert!(
        !err.contains("no-colon-secret"),
        "the secret is not echoed: {err}"
    );
    let err = header(&RegistryAuth::BearerFile(dir.path().join("absent")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent"), "{err}");
}
