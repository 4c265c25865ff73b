//! The refresher on a paused clock, against a scripted registry.

use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use super::*;
use crate::approval::sign;
use crate::keys::{jwks_document, KeyKind, SigningKey};
use crate::registry::config::RegistryAuth;
use crate::registry::revocations::RevocationClaims;
use crate::registry::tests::claims;
use crate::registry::Lookup;

const REFRESH: Duration = Duration::from_secs(5);
const MAX_STALE: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(2);
/// Long enough for the refresher to act on an event (the paused clock moves only when
/// every task waits).
const STEP: Duration = Duration::from_millis(10);

fn pace(watch: Option<Duration>) -> Pace {
    Pace {
        refresh_interval: REFRESH,
        min_refresh: Duration::from_secs(1),
        max_refresh: Duration::from_secs(20),
        max_stale: MAX_STALE,
        timeout: TIMEOUT,
        watch,
    }
}

/// What the scripted registry answers.
#[derive(Clone)]
enum Answer {
    Records(Vec<FetchedRecord>, Option<&'static str>),
    /// An error, with a `Retry-After`.
    Error(Option<Duration>),
    Hang,
}

/// The revocation list's text (None: 404) and ETag.
type ListAnswer = (Option<String>, &'static str);

/// (what was asked, ETag sent, wait asked for) per call.
type Calls = Arc<Mutex<Vec<(Key, Option<String>, Option<Duration>)>>>;

#[derive(Clone)]
struct Script {
    /// Per digest; the default for the others.
    answers: Arc<Mutex<HashMap<Digest, Answer>>>,
    default: Arc<Mutex<Answer>>,
    /// The revocation list's text and ETag (None: 404); None: the registry has no list.
    list: Arc<Mutex<Option<ListAnswer>>>,
    list_error: Arc<AtomicBool>,
    hints: Arc<Mutex<Hints>>,
    /// Hold a watch (a registry that supports it).
    holds: Arc<AtomicBool>,
    changed: Arc<tokio::sync::Notify>,
    calls: Calls,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
}

impl Script {
    fn new() -> Script {
        Script {
            answers: Arc::default(),
            default: Arc::new(Mutex::new(Answer::Records(Vec::new(), None))),
            list: Arc::default(),
            list_error: Arc::default(),
            hints: Arc::default(),
            holds: Arc::default(),
            changed: Arc::default(),
            calls: Arc::default(),
            in_flight: Arc::default(),
            most_in_flight: Arc::default(),
        }
    }
    fn answer(&self, a: Answer) {
        *self.default.lock().unwrap() = a;
        self.changed.notify_waiters();
    }
    fn answer_for(&self, digest: Digest, a: Answer) {
        self.answers.lock().unwrap().insert(digest, a);
        self.changed.notify_waiters();
    }
    fn publish_list(&self, text: Option<String>, etag: &'static str) {
        *self.list.lock().unwrap() = Some((text, etag));
        self.changed.notify_waiters();
    }
    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
    fn calls_for(&self, key: Key) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.0 == key)
            .count()
    }
    fn answer_of(&self, digest: &Digest) -> Answer {
        let answers = self.answers.lock().unwrap();
        answers
            .get(digest)
            .cloned()
            .unwrap_or_else(|| self.default.lock().unwrap().clone())
    }

    /// Holds a watch until the answer changes or the wait ends.
    async fn hold(&self, ask: &Ask<'_>, current_etag: Option<&str>) -> bool {
        let (Some(wait), Some(etag)) = (ask.wait, ask.etag) else {
            return false;
        };
        if !self.holds.load(Ordering::Relaxed) || Some(etag) != current_etag {
            return false;
        }
        let changed = self.changed.notified();
        tokio::select! {
            _ = changed => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    fn record_call(&self, key: Key, ask: &Ask<'_>) {
        self.calls
            .lock()
            .unwrap()
            .push((key, ask.etag.map(str::to_string), ask.wait));
    }
}

/// Counts a fetch in flight while it lives.
struct InFlight<'a>(&'a Script);

impl<'a> InFlight<'a> {
    fn new(s: &'a Script) -> InFlight<'a> {
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.most_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(s)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Source for Script {
    fn label(&self) -> &'static str {
        "script"
    }

    async fn fetch(&self, digest: &Digest, ask: Ask<'_>) -> Result<Reply, Failed> {
        self.record_call(Key::Digest(*digest), &ask);
        let _counted = InFlight::new(self);
        let hints = *self.hints.lock().unwrap();
        let answer = self.answer_of(digest);
        let current = match &answer {
            Answer::Records(_, tag) => *tag,
            _ => None,
        };
        if self.hold(&ask, current).await {
            return Ok(Reply {
                fetched: Fetched::NotModified,
                hints: Hints {
                    watched: true,
                    ..hints
                },
            });
        }
        let answer = self.answer_of(digest);
        let watched = ask.wait.is_some() && self.holds.load(Ordering::Relaxed);
        let hints = Hints { watched, ..hints };
        match answer {
            // An ETag the caller already holds: the registry says "unchanged".
            Answer::Records(_, Some(tag)) if ask.etag == Some(tag) => Ok(Reply {
                fetched: Fetched::NotModified,
                hints,
            }),
            Answer::Records(records, etag) => Ok(Reply {
                fetched: Fetched::Records {
                    records,
                    etag: etag.map(str::to_string),
                },
                hints,
            }),
            Answer::Error(retry_after) => Err(Failed {
                error: FetchError::answer("script", "registry down"),
                retry_after,
            }),
            Answer::Hang => std::future::pending().await,
        }
    }

    fn has_revocations(&self) -> bool {
        self.list.lock().unwrap().is_some()
    }

    async fn revocations(&self, ask: Ask<'_>) -> Result<Reply, Failed> {
        self.record_call(Key::Revocations, &ask);
        if self.list_error.load(Ordering::Relaxed) {
            return Err(FetchError::answer("script", "list down").into());
        }
        let current = self.list.lock().unwrap().clone().map(|(_, e)| e);
        if self.hold(&ask, current).await {
            return Ok(Reply {
                fetched: Fetched::NotModified,
                hints: Hints {
                    watched: true,
                    ..Hints::default()
                },
            });
        }
        let Some((text, etag)) = self.list.lock().unwrap().clone() else {
            return Ok(Reply::from(Fetched::Records {
                records: Vec::new(),
                etag: None,
            }));
        };
        if ask.etag == Some(etag) {
            return Ok(Reply::from(Fetched::NotModified));
        }
        Ok(Reply::from(Fetched::Records {
            records: text
                .into_iter()
                .map(|jws| FetchedRecord {
                    jws,
                    revoked: false,
                    origin: "list".into(),
                })
                .collect(),
            etag: Some(etag.to_string()),
        }))
    }
}

struct Rig {
    script: Script,
    store: Arc<ApprovalStore>,
    served: Arc<Mutex<Vec<Digest>>>,
    changes: tokio::sync::watch::Sender<u64>,
    metrics: Arc<Metrics>,
    key: SigningKey,
    stop: Arc<AtomicBool>,
}

impl Rig {
    fn start() -> Rig {
        Rig::with(Script::new(), pace(None))
    }

    fn with(script: Script, pace: Pace) -> Rig {
        let (key, _) = SigningKey::generate(KeyKind::Es256).unwrap();
        let approvers =
            KeySet::from_jwks_json(&jwks_document(std::slice::from_ref(&key.public_jwk)), "t")
                .unwrap();
        let metrics = Arc::new(Metrics::new());
        let store = Arc::new(ApprovalStore::new(MAX_STALE, TIMEOUT, metrics.clone()));
        let served = Arc::new(Mutex::new(Vec::new()));
        let changes = tokio::sync::watch::Sender::new(0u64);
        let stop = Arc::new(AtomicBool::new(false));
        let refresher = Refresher {
            source: script.clone(),
            approvers,
            pace,
            store: store.clone(),
            served: Served {
                digests: {
                    let served = served.clone();
                    Box::new(move || served.lock().unwrap().clone())
                },
                changes: vec![changes.subscribe()],
            },
            metrics: metrics.clone(),
            heartbeat: None,
        };
        tokio::spawn(refresher.run(stop.clone()));
        Rig {
            script,
            store,
            served,
            changes,
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

    fn list(&self, iat: u64, ids: &[&str]) -> String {
        let claims = RevocationClaims {
            iss: "approver".into(),
            iat,
            revoked: ids.iter().map(|s| s.to_string()).collect(),
        };
        revocations::sign(&claims, &self.key).unwrap()
    }

    fn serve(&self, digests: &[Digest]) {
        *self.served.lock().unwrap() = digests.to_vec();
        self.changes.send_modify(|n| *n += 1);
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
                    .map(|c| (c.record.claims.jti.clone(), c.revoked || e.revoked))
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
    rig.serve(&[D1]);
    advance(STEP).await;
    assert_eq!(rig.script.calls(), 1);
    assert!(rig.store.is_synced());
    assert_eq!(rig.records(&D1), Some(vec![("r1".into(), false)]));

    // The served artefact changes: its digest has not been asked about, so its answer is
    // unknown (fail closed), until the wake-up asks, at once.
    rig.script.answer(Answer::Records(Vec::new(), None));
    rig.serve(&[D2]);
    assert!(rig.records(&D2).is_none(), "unasked digest is unavailable");
    advance(STEP).await;
    assert_eq!(rig.script.calls(), 2);
    assert_eq!(
        rig.records(&D2),
        Some(vec![]),
        "the registry has nothing for it"
    );
    assert_eq!(rig.fetches("not_found"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_revocation_reaches_the_store_within_one_jittered_refresh_interval() {
    let rig = Rig::start();
    let record = rig.record("r1", D1, false);
    rig.script
        .answer(Answer::Records(vec![record.clone()], None));
    rig.serve(&[D1]);
    advance(STEP).await;
    let first = match rig.view(&D1) {
        Lookup::Entry(Some(e)) => e,
        other => panic!("expected records, got {other:?}"),
    };

    // The same answer again: the verified entry is reused, not verified again.
    advance(REFRESH * 2).await;
    assert!(rig.script.calls() >= 2);
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
        advance(STEP).await;
        assert!(
            revoked_at.elapsed() <= REFRESH.mul_f64(1.0 + PERIOD_JITTER) + STEP,
            "revocation not seen within the jittered refresh_interval"
        );
    }
}

#[test]
fn the_first_poll_is_spread_over_the_period_and_later_ones_by_a_tenth() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let pace = pace(None);
        let hints = Hints::default();
        let mut firsts = Vec::new();
        for _ in 0..200 {
            let mut s = Schedule::new(&pace);
            let now = Instant::now();
            s.succeeded(&pace, &hints, false, Duration::ZERO, true);
            firsts.push(s.due - now);
            for _ in 0..5 {
                let now = Instant::now();
                s.succeeded(&pace, &hints, false, Duration::ZERO, false);
                let wait = s.due - now;
                assert!(
                    wait >= REFRESH.mul_f64(0.9) && wait <= REFRESH.mul_f64(1.1),
                    "{wait:?}"
                );
            }
        }
        assert!(firsts.iter().all(|w| *w <= REFRESH));
        // 200 sidecars started together: their first polls cover the whole period.
        let in_each_fifth = (0..5).map(|i| {
            firsts
                .iter()
                .filter(|w| **w >= REFRESH * i / 5 && **w < REFRESH * (i + 1) / 5)
                .count()
        });
        for (i, n) in in_each_fifth.enumerate() {
            assert!(
                (15..=70).contains(&n),
                "fifth {i} of the period: {n} of 200"
            );
        }
    });
}

#[tokio::test(start_paused = true)]
async fn max_age_sets_the_pace_within_the_bounds() {
    let script = Script::new();
    let rig = Rig::with(script.clone(), pace(None));
    rig.script
        .answer(Answer::Records(vec![rig.record("r1", D1, false)], None));
    for (max_age, period) in [(15, 15), (3600, 20), (0, 1)] {
        *script.hints.lock().unwrap() = Hints {
            max_age: Some(Duration::from_secs(max_age)),
            watched: false,
        };
        rig.serve(&[]);
        advance(STEP).await;
        let before = rig.script.calls();
        rig.serve(&[D1]);
        // The first answer, then polls at the hinted period: ~100 s of them.
        advance(Duration::from_secs(100)).await;
        let polls = rig.script.calls() - before;
        let expected = 100 / period;
        assert!(
            polls as f64 >= expected as f64 * 0.85 && polls as f64 <= expected as f64 * 1.15 + 2.0,
            "max-age {max_age}: {polls} polls in 100 s, expected about {expected}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_registry_is_asked_less_than_a_healthy_one_and_trusted_until_max_stale() {
    let rig = Rig::start();
    rig.script
        .answer(Answer::Records(vec![rig.record("r1", D1, false)], None));
    rig.serve(&[D1]);
    advance(STEP).await;
    let last_good = tokio::time::Instant::now();
    let before = rig.script.calls();
    rig.script.answer(Answer::Error(None));

    // Every check below runs on the paused clock: the bound holds to the step.
    while last_good.elapsed() < MAX_STALE - REFRESH {
        advance(REFRESH).await;
        assert_eq!(
            rig.records(&D1),
            Some(vec![("r1".into(), false)]),
            "last good records used at {:?}",
            last_good.elapsed()
        );
    }
    advance(REFRESH + STEP).await;
    assert!(last_good.elapsed() > MAX_STALE);
    assert!(rig.records(&D1).is_none(), "past max_stale: unavailable");
    // A long outage: fewer attempts than polling a healthy registry would make.
    advance(Duration::from_secs(600) - last_good.elapsed()).await;
    let attempts = rig.script.calls() - before;
    let polling = (600 / REFRESH.as_secs()) as usize;
    println!("10 min outage: {attempts} attempts (healthy polling: {polling})");
    assert!(attempts >= 10, "kept trying: {attempts}");
    // The backoff's cap here is 15 s (max_stale / 4); with the default 5 m it is 75 s.
    assert!(attempts < polling, "{attempts} attempts vs {polling} polls");

    // The registry comes back: the next retry (within the backoff cap) restores service.
    rig.script
        .answer(Answer::Records(vec![rig.record("r2", D1, false)], None));
    advance(backoff_cap(&pace(None)) + STEP).await;
    assert_eq!(rig.records(&D1), Some(vec![("r2".into(), false)]));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_within_the_cap() {
    let rig = Rig::start();
    rig.script
        .answer(Answer::Records(vec![rig.record("r1", D1, false)], None));
    rig.serve(&[D1]);
    advance(STEP).await;
    rig.script
        .answer(Answer::Error(Some(Duration::from_secs(12))));
    // Wait for the failing ask.
    let calls = rig.script.calls();
    while rig.script.calls() == calls {
        advance(STEP).await;
    }
    let failed_at = Instant::now();
    let calls = rig.script.calls();
    while rig.script.calls() == calls {
        advance(STEP).await;
    }
    let waited = failed_at.elapsed();
    assert!(
        waited >= Duration::from_secs(12) && waited <= Duration::from_millis(14_500),
        "{waited:?}"
    );
    // A Retry-After of a day is cut to the backoff cap (the records would go stale first).
    rig.script
        .answer(Answer::Error(Some(Duration::from_secs(86_400))));
    let calls = rig.script.calls();
    while rig.script.calls() == calls {
        advance(STEP).await;
    }
    let failed_at = Instant::now();
    let calls = rig.script.calls();
    while rig.script.calls() == calls {
        advance(STEP).await;
    }
    let cap = backoff_cap(&pace(None));
    assert!(
        failed_at.elapsed() <= cap.mul_f64(1.2) + STEP,
        "{:?}",
        failed_at.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn one_failing_digest_ages_alone() {
    let rig = Rig::start();
    rig.script.answer_for(
        D1,
        Answer::Records(vec![rig.record("r1", D1, false)], Some("\"1\"")),
    );
    rig.script
        .answer_for(D2, Answer::Records(vec![rig.record("r2", D2, false)], None));
    rig.serve(&[D1, D2]);
    advance(STEP).await;
    assert!(rig.records(&D1).is_some() && rig.records(&D2).is_some());
    rig.script.answer_for(D1, Answer::Error(None));
    advance(MAX_STALE + REFRESH).await;
    assert!(
        rig.records(&D1).is_none(),
        "the failing digest's records aged out"
    );
    assert_eq!(
        rig.records(&D2),
        Some(vec![("r2".into(), false)]),
        "the healthy digest keeps serving"
    );
}

#[tokio::test(start_paused = true)]
async fn digests_are_fetched_concurrently_with_a_bound() {
    let rig = Rig::start();
    rig.script.answer(Answer::Hang);
    let digests: Vec<Digest> = (10..30).map(|i| Digest([i; 32])).collect();
    rig.serve(&digests);
    advance(STEP).await;
    assert_eq!(
        rig.script.calls(),
        MAX_IN_FLIGHT,
        "the first {MAX_IN_FLIGHT} at once"
    );
    // Each times out after TIMEOUT and frees its slot for the next.
    advance(TIMEOUT).await;
    assert_eq!(rig.script.calls(), 2 * MAX_IN_FLIGHT);
    advance(TIMEOUT * 10).await;
    assert_eq!(
        rig.script.most_in_flight.load(Ordering::SeqCst),
        MAX_IN_FLIGHT,
        "never more at once"
    );
    let asked: HashSet<Key> = rig
        .script
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(asked.len(), digests.len(), "every digest asked");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_registry_is_a_failed_fetch_after_the_timeout() {
    let rig = Rig::start();
    rig.script
        .answer(Answer::Records(vec![rig.record("r1", D1, false)], None));
    rig.serve(&[D1]);
    advance(STEP).await;
    rig.script.answer(Answer::Hang);
    advance(REFRESH.mul_f64(1.1) + TIMEOUT + STEP).await;
    // The first poll falls within the first period; it hangs and times out (a jittered
    // retry may have timed out as well by now).
    assert!(rig.fetches("error") >= 1, "the hung fetch timed out");
    assert!(rig.records(&D1).is_some(), "and the last good records stay");
}

#[tokio::test(start_paused = true)]
async fn an_etag_turns_an_unchanged_answer_into_not_modified() {
    let rig = Rig::start();
    rig.script.answer(Answer::Records(
        vec![rig.record("r1", D1, false)],
        Some("\"v1\""),
    ));
    rig.serve(&[D1]);
    advance(STEP).await;
    advance(REFRESH * 3).await;
    let calls = rig.script.calls.lock().unwrap().clone();
    assert!(calls.len() >= 3, "{}", calls.len());
    assert_eq!(calls[0].1, None, "first ask has no ETag");
    assert_eq!(calls[1].1.as_deref(), Some("\"v1\""));
    assert!(calls.iter().all(|c| c.2.is_none()), "no watch configured");
    assert_eq!(rig.fetches("ok"), 1);
    assert_eq!(rig.fetches("not_modified"), calls.len() as u64 - 1);
    assert_eq!(rig.records(&D1), Some(vec![("r1".into(), false)]));
}

#[tokio::test(start_paused = true)]
async fn a_record_filed_under_another_digest_approves_neither() {
    let rig = Rig::start();
    // The registry files D2's record under D1 (a mistake, or an attack).
    rig.script
        .answer(Answer::Records(vec![rig.record("r1", D2, false)], None));
    rig.serve(&[D1]);
    advance(STEP).await;
    match rig.view(&D1) {
        Lookup::Entry(Some(e)) => {
            assert!(e.records.is_empty());
            assert_eq!(e.invalid.len(), 1);
            assert!(e.invalid[0].contains("not the digest it is filed under"));
        }
        other => panic!("expected an entry with the invalid record, got {other:?}"),
    }
}

// === The revocation list ===

#[tokio::test(start_paused = true)]
async fn a_signed_list_revokes_and_a_rollback_or_forgery_is_refused() {
    let script = Script::new();
    script.publish_list(None, "\"none\"");
    let rig = Rig::with(script, pace(None));
    let now = crate::unix_now();
    rig.script.answer(Answer::Records(
        vec![rig.record("r1", D1, false)],
        Some("\"1\""),
    ));
    rig.serve(&[D1]);
    advance(STEP).await;
    assert_eq!(
        rig.records(&D1),
        Some(vec![("r1".into(), false)]),
        "no list: in force"
    );

    // A list naming r1: revoked, though the digest's answer is unchanged (a 304).
    rig.script
        .publish_list(Some(rig.list(now, &["r1"])), "\"l1\"");
    advance(REFRESH.mul_f64(1.1) + STEP).await;
    assert_eq!(rig.records(&D1), Some(vec![("r1".into(), true)]));

    // An older list (a stale cache, a replay): refused; the newer one stays.
    let cap = backoff_cap(&pace(None));
    rig.script
        .publish_list(Some(rig.list(now - 10, &[])), "\"l0\"");
    let errors = rig.fetches("error");
    advance(cap * 2).await;
    assert!(rig.fetches("error") > errors, "the rollback is an error");
    assert_eq!(rig.records(&D1), Some(vec![("r1".into(), true)]));
    // A refused list does not refresh the list's freshness: a newer good one does.
    rig.script
        .publish_list(Some(rig.list(now + 1, &["r1"])), "\"l2\"");
    advance(cap + STEP).await;
    assert_eq!(rig.records(&D1), Some(vec![("r1".into(), true)]));

    // A forged list: refused too.
    let (rogue, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let forged = revocations::sign(
        &RevocationClaims {
            iss: "x".into(),
            iat: now + 100,
            revoked: vec![],
        },
        &rogue,
    )
    .unwrap();
    let errors = rig.fetches("error");
    rig.script.publish_list(Some(forged), "\"lf\"");
    advance(cap * 2).await;
    assert!(rig.fetches("error") > errors, "the forgery is an error");
    assert_eq!(rig.records(&D1), Some(vec![("r1".into(), true)]));

    // The list gone (404): the held one stays in force, and fresh.
    rig.script.publish_list(None, "\"gone\"");
    advance(MAX_STALE).await;
    assert_eq!(rig.records(&D1), Some(vec![("r1".into(), true)]));

    // A newer list without r1: approval is back.
    rig.script
        .publish_list(Some(rig.list(now + 2, &[])), "\"l3\"");
    advance(cap + STEP).await;
    assert_eq!(rig.records(&D1), Some(vec![("r1".into(), false)]));
}

#[tokio::test(start_paused = true)]
async fn a_list_that_cannot_be_read_ages_every_digest() {
    let script = Script::new();
    script.publish_list(None, "\"none\"");
    let rig = Rig::with(script, pace(None));
    rig.script
        .answer(Answer::Records(vec![rig.record("r1", D1, false)], None));
    rig.serve(&[D1]);
    advance(STEP).await;
    assert!(rig.records(&D1).is_some());
    rig.script.list_error.store(true, Ordering::Relaxed);
    advance(MAX_STALE + REFRESH * 2).await;
    assert!(
        rig.records(&D1).is_none(),
        "a revocation could be hiding behind the unreadable list"
    );
    rig.script.list_error.store(false, Ordering::Relaxed);
    advance(backoff_cap(&pace(None)) + STEP).await;
    assert!(rig.records(&D1).is_some());
}

// === Watch ===

#[tokio::test(start_paused = true)]
async fn a_watch_sees_a_change_at_once_and_costs_one_request_per_hold() {
    let script = Script::new();
    script.holds.store(true, Ordering::Relaxed);
    script.publish_list(None, "\"none\"");
    let watch = Duration::from_secs(30);
    let rig = Rig::with(script, pace(Some(watch)));
    let now = crate::unix_now();
    rig.script.answer(Answer::Records(
        vec![rig.record("r1", D1, false)],
        Some("\"1\""),
    ));
    rig.serve(&[D1]);
    advance(STEP).await;
    // Two minutes idle: about four holds of 30 s each for the digest and for the list
    // (after the first poll, spread within the first period).
    advance(Duration::from_secs(120)).await;
    let digest_asks = rig.script.calls_for(Key::Digest(D1));
    let list_asks = rig.script.calls_for(Key::Revocations);
    assert!((4..=6).contains(&digest_asks), "{digest_asks}");
    assert!((4..=6).contains(&list_asks), "{list_asks}");
    // The first watch of each asks for a random part of the wait, every later one for all
    // of it.
    for key in [Key::Digest(D1), Key::Revocations] {
        let waits: Vec<Duration> = rig
            .script
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.0 == key && c.1.is_some())
            .filter_map(|c| c.2)
            .collect();
        assert!(waits.len() >= 3, "{waits:?}");
        assert!(
            waits[0] >= FIRST_WATCH_MIN && waits[0] <= watch,
            "{waits:?}"
        );
        assert!(waits[1..].iter().all(|w| *w == watch), "{waits:?}");
    }

    // A revocation published in the list arrives as it happens.
    let at = Instant::now();
    rig.script
        .publish_list(Some(rig.list(now, &["r1"])), "\"l1\"");
    while rig.records(&D1) != Some(vec![("r1".into(), true)]) {
        advance(STEP).await;
        assert!(at.elapsed() < Duration::from_secs(1), "not within a second");
    }
}

#[test]
fn first_watches_spread_over_the_wait_and_a_change_is_re_watched_within_half_a_second() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let watch = Duration::from_secs(60);
        let pace = pace(Some(watch));
        let held = Hints {
            watched: true,
            ..Hints::default()
        };
        let mut firsts = Vec::new();
        for _ in 0..200 {
            let mut s = Schedule::new(&pace);
            s.etag = Some("\"1\"".into());
            s.succeeded(&pace, &Hints::default(), false, Duration::ZERO, true);
            // A watch starts at once after the first answer, for a random part of the wait.
            assert_eq!(s.due, Instant::now());
            let (wait, watched) = s.ask(&pace, None);
            assert!(watched);
            let wait = wait.unwrap();
            assert!(wait >= FIRST_WATCH_MIN && wait <= watch, "{wait:?}");
            firsts.push(wait);
            // Held and timed out (304): the next watch at once, for the whole wait.
            s.succeeded(&pace, &held, true, wait, false);
            assert_eq!(s.due, Instant::now());
            assert_eq!(s.ask(&pace, None), (Some(watch), true));
            // Held and woken by a change: re-watched within RE_WATCH_DELAY, whole wait.
            let now = Instant::now();
            s.succeeded(&pace, &held, true, Duration::from_secs(7), true);
            assert!(s.due >= now && s.due <= now + RE_WATCH_DELAY);
            assert_eq!(s.ask(&pace, None), (Some(watch), true));
        }
        // 200 sidecars started together: their first holds cover the whole wait.
        for i in 0..5 {
            let low = FIRST_WATCH_MIN + (watch - FIRST_WATCH_MIN) * i / 5;
            let high = FIRST_WATCH_MIN + (watch - FIRST_WATCH_MIN) * (i + 1) / 5;
            let n = firsts.iter().filter(|w| **w >= low && **w < high).count();
            assert!((15..=70).contains(&n), "fifth {i} of the wait: {n} of 200");
        }
    });
}

#[tokio::test(start_paused = true)]
async fn a_registry_without_watch_support_is_polled_at_the_normal_pace() {
    let script = Script::new();
    // holds = false: answers at once, without Preference-Applied.
    let rig = Rig::with(script, pace(Some(Duration::from_secs(30))));
    rig.script.answer(Answer::Records(
        vec![rig.record("r1", D1, false)],
        Some("\"1\""),
    ));
    rig.serve(&[D1]);
    advance(Duration::from_secs(100)).await;
    let asks = rig.script.calls();
    // 100 s at a 5 s period: about 20, never a tight loop.
    assert!((15..=23).contains(&asks), "{asks}");
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
