//! Remote registries (MLflow, HTTP): asked per served digest, by one background task.
//!
//! Each thing asked about (every served digest, and with `layout = "path"` the signed
//! revocation list) has its own schedule, ETag, backoff and freshness clock
//! ([`super::SourceClock`]): one failing digest ages only its own records, never another
//! model's. Fetches run concurrently, at most [`MAX_IN_FLIGHT`] polls at once (a watch,
//! which only waits, does not count).
//!
//! The task waits on events, not a tick: a change of the served artefacts (a digest is
//! asked about at once), a finished fetch, or the next deadline (a poll, a retry, a
//! record's `revalidate_after`), and at least every [`HEARTBEAT`] for the watchdog.
//!
//! The pace, per thing asked about:
//! - after the first answer, the next poll is uniform within the first period, then every
//!   period is moved by up to [`PERIOD_JITTER`] either way, so sidecars started together
//!   spread at once and never fall back into step;
//! - the period is `refresh_interval`, or the registry's `Cache-Control: max-age` clamped to
//!   `[min_refresh, max_refresh]`;
//! - after a failure, full jitter over a window that starts at twice the period (a mean
//!   wait of one period: a failing registry is never asked more often than a healthy one)
//!   and doubles to [`backoff_cap`] (below `max_stale`); a `Retry-After` is honoured (up to
//!   that cap) and spread over a fifth more;
//! - with `watch`, a request carrying an ETag also carries `Prefer: wait`; when the
//!   registry held it (`Preference-Applied`), the next is sent at once (after a held request
//!   that brought a change, within [`RE_WATCH_DELAY`], so a fleet woken together does not
//!   re-watch in one instant), so a change arrives as it happens; a registry without watch
//!   support is polled at the normal pace. The first watch asks for a wait uniform in
//!   `[2 s, watch]`, so sidecars started together return at spread moments from the first
//!   hold on, as the first poll is spread over the first period.
//!
//! Every record is verified once: a record whose text is unchanged since the last answer
//! keeps its verified form, and an HTTP `304 Not Modified` costs no parsing at all. A failed
//! fetch keeps the last good records, whose age the store bounds by `max_stale`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::config::{RegistryConfig, RemoteKind, RemoteRegistry};
use super::http::HttpRegistry;
use super::mlflow::Mlflow;
use super::revocations::{self, RevocationList};
pub use super::source::{
    authorize, body, Ask, Failed, Fetched, FetchedRecord, Hints, Reply, Source, MAX_BODY,
};
use super::{ApprovalStore, Candidate, FetchMetrics, RegistryEntry, Snapshot, SourceClock};
use crate::approval::{self, ApprovalRecord, Verified};
use crate::digest::Digest;
use crate::keys::KeySet;
use crate::kit::backoff::{self, Backoff, Jitter};
use crate::kit::http::{ClientOptions, FetchError, Transport};
use crate::telemetry::Metrics;

/// The longest the task sleeps without beating its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Polls in flight at once, at most.
pub const MAX_IN_FLIGHT: usize = 8;
/// Every period after the first is moved by up to this fraction either way: enough that a
/// fleet which fell into step (a restart together, the end of an outage) drifts apart
/// within a few periods, small enough that a revocation still arrives within 1.1 periods.
pub const PERIOD_JITTER: f64 = 0.1;
/// A watch that returns sooner than this counts as quick; after [`QUICK_WATCHES`] quick
/// returns in a row the next ask waits a period (a registry that claims to hold but does
/// not cannot make a tight loop).
const QUICK_WATCH: Duration = Duration::from_secs(1);
const QUICK_WATCHES: u32 = 3;
/// After a held request that brought a change, the next watch is sent within this (uniform):
/// a fleet woken by one change spreads its re-watches a little, and a second change within
/// it still arrives within a second.
pub const RE_WATCH_DELAY: Duration = Duration::from_millis(500);
/// The shortest wait the first watch asks for.
const FIRST_WATCH_MIN: Duration = Duration::from_secs(2);

/// How the refresher paces itself (from `[registry]`).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub refresh_interval: Duration,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    pub max_stale: Duration,
    /// One fetch's bound (a watch: the wait plus this).
    pub timeout: Duration,
    /// `Prefer: wait` with an ETag; None polls.
    pub watch: Option<Duration>,
}

impl Pace {
    /// The pace for `[registry]`.
    pub fn of(registry: &RegistryConfig, remote: &RemoteRegistry) -> Pace {
        Pace {
            refresh_interval: registry.refresh_interval,
            min_refresh: registry.min_refresh,
            max_refresh: registry.max_refresh,
            max_stale: registry.max_stale,
            timeout: remote.timeout,
            watch: remote.watch,
        }
    }

    /// The period the registry's hints ask for, within the configured bounds.
    fn period(&self, hints: &Hints) -> Duration {
        match hints.max_age {
            Some(age) => age.clamp(self.min_refresh, self.max_refresh.max(self.min_refresh)),
            None => self.refresh_interval,
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.refresh_interval * 2, backoff_cap(self)).with_jitter(Jitter::Full)
    }
}

/// The widest backoff window: a quarter of `max_stale` (several attempts before the last
/// good records go stale), but at most sixteen periods (four doublings: a long `max_stale`
/// must not slow the re-sync after an outage to many minutes); never below the first window
/// (twice `refresh_interval`: a retry is never more frequent than a poll on average), and
/// never above half of `max_stale`.
pub fn backoff_cap(pace: &Pace) -> Duration {
    (pace.max_stale / 4)
        .min(pace.refresh_interval * 16)
        .max(pace.refresh_interval * 2)
        .min(pace.max_stale / 2)
}

/// What the refresher is told about the served artefacts.
pub struct Served {
    /// The digests being served now.
    pub digests: Box<dyn Fn() -> Vec<Digest> + Send + Sync>,
    /// Each wakes when a served artefact's state changes ([`crate::kit::published`]).
    pub changes: Vec<tokio::sync::watch::Receiver<u64>>,
}

/// One thing asked about: its ETag, schedule and clock.
struct Schedule {
    etag: Option<String>,
    due: Instant,
    backoff: Backoff,
    in_flight: bool,
    /// A good answer is held.
    answered: bool,
    /// Quick watch returns in a row.
    quick: u32,
    /// No watch has been held yet: the next asks for a random part of the wait.
    first_watch: bool,
    /// When the last fetch started (Unix milliseconds), for `revalidate_after`.
    asked_ms: u64,
    clock: Arc<SourceClock>,
}

impl Schedule {
    fn new(pace: &Pace) -> Schedule {
        Schedule {
            etag: None,
            due: Instant::now(),
            backoff: pace.backoff(),
            in_flight: false,
            answered: false,
            quick: 0,
            first_watch: true,
            asked_ms: 0,
            clock: Arc::new(SourceClock::default()),
        }
    }

    /// The ask for the next fetch, and whether it is a watch. `hold` bounds the wait (a
    /// record's `revalidate_after`).
    fn ask(&self, pace: &Pace, hold: Option<Duration>) -> (Option<Duration>, bool) {
        match (pace.watch, &self.etag) {
            (Some(wait), Some(_)) => {
                let wait = hold.map_or(wait, |h| wait.min(h));
                let wait = if self.first_watch {
                    first_watch_wait(wait)
                } else {
                    wait
                };
                if wait >= Duration::from_secs(1) {
                    (Some(wait), true)
                } else {
                    (None, false)
                }
            }
            _ => (None, false),
        }
    }

    /// A good answer arrived, `took` after the ask (`changed`: it brought a new answer, not a
    /// 304); schedules the next.
    fn succeeded(
        &mut self,
        pace: &Pace,
        hints: &Hints,
        watched: bool,
        took: Duration,
        changed: bool,
    ) {
        self.clock.confirm();
        self.backoff.reset();
        let period = pace.period(hints);
        let now = Instant::now();
        if watched && hints.watched {
            self.first_watch = false;
            self.quick = if took < QUICK_WATCH {
                self.quick + 1
            } else {
                0
            };
            self.due = if changed && self.quick < QUICK_WATCHES {
                now + backoff::uniform(RE_WATCH_DELAY)
            } else if self.quick < QUICK_WATCHES {
                now
            } else {
                self.quick = 0;
                now + backoff::around(period, PERIOD_JITTER)
            };
        } else if !self.answered {
            // The first poll anywhere within the first period; a watch starts at once (the
            // registry spreads the holds).
            self.due = if pace.watch.is_some() && self.etag.is_some() {
                now
            } else {
                now + backoff::uniform(period)
            };
        } else {
            self.due = now + backoff::around(period, PERIOD_JITTER);
        }
        self.answered = true;
    }

    /// The ask failed; schedules the retry.
    fn failed(&mut self, retry_after: Option<Duration>) {
        let cap = self.backoff.cap();
        let wait = self.backoff.fail();
        let wait = match retry_after {
            Some(ra) => {
                let ra = ra.min(cap);
                ra + backoff::uniform(ra / 5)
            }
            None => wait,
        };
        self.quick = 0;
        self.due = Instant::now() + wait;
    }
}

/// The first watch's wait: uniform in `[FIRST_WATCH_MIN, wait]` (the wait itself when it is
/// shorter), so a fleet started together holds for spread times from the first watch on.
fn first_watch_wait(wait: Duration) -> Duration {
    let low = FIRST_WATCH_MIN.min(wait);
    low + backoff::uniform(wait - low)
}

/// What the refresher remembers of one digest.
struct Tracked {
    schedule: Schedule,
    /// The last answer, to tell a changed one from the same again.
    fetched: Vec<FetchedRecord>,
    /// The last answer was a 410.
    revoked: bool,
    /// Each record of that answer that verified, by its text.
    verified: HashMap<String, Arc<ApprovalRecord>>,
    entry: Option<Arc<RegistryEntry>>,
}

/// What the refresher remembers of the revocation list.
struct ListState {
    schedule: Schedule,
    /// The text of the list in force.
    text: Option<String>,
    held: Option<RevocationList>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Digest(Digest),
    Revocations,
}

/// A finished fetch.
struct Done {
    key: Key,
    took: Duration,
    watched: bool,
    outcome: Result<Reply, Failed>,
}

/// Keeps an [`ApprovalStore`] in step with a remote registry for the digests being served.
pub struct Refresher<S: Source> {
    pub source: S,
    pub approvers: KeySet,
    pub pace: Pace,
    pub store: Arc<ApprovalStore>,
    pub served: Served,
    pub metrics: Arc<Metrics>,
    /// Beaten at least every [`HEARTBEAT`] ([`crate::kit::watchdog`]).
    pub heartbeat: Option<Arc<crate::kit::watchdog::Heartbeat>>,
}

/// The refresher's state between events.
struct State {
    digests: HashMap<Digest, Tracked>,
    list: Option<ListState>,
    /// The published snapshot no longer matches the entries.
    dirty: bool,
}

impl<S: Source> Refresher<S> {
    /// Runs until `stop` is set (looked at on every event).
    pub async fn run(self, stop: Arc<AtomicBool>) {
        let Refresher {
            source,
            approvers,
            pace,
            store,
            served,
            metrics,
            heartbeat,
        } = self;
        let source = Arc::new(source);
        let ctx = Ctx {
            label: source.label(),
            approvers,
            pace,
            store,
            m: FetchMetrics::new(&metrics, source.label()),
        };
        // Each served artefact's changes, forwarded to one wake-up (the forwarders end
        // with this future).
        let wake = Arc::new(tokio::sync::Notify::new());
        let mut forwarders = JoinSet::new();
        for mut rx in served.changes {
            let wake = wake.clone();
            forwarders.spawn(async move {
                while rx.changed().await.is_ok() {
                    wake.notify_one();
                }
            });
        }
        let mut state = State {
            digests: HashMap::new(),
            list: None,
            dirty: false,
        };
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, (Key, bool)> = HashMap::new();
        let mut last_served: Vec<Digest> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Some(h) = &heartbeat {
                h.beat();
            }
            let mut now_served = (served.digests)();
            now_served.sort();
            now_served.dedup();
            if now_served != last_served {
                ctx.follow(&mut state, &now_served, source.has_revocations());
                last_served = now_served;
            }
            ctx.launch(&mut state, &source, &mut tasks, &mut running);
            if state.dirty {
                ctx.publish(&mut state);
            }
            let deadline = ctx.next_deadline(&state);
            tokio::select! {
                _ = wake.notified() => {}
                joined = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    match joined {
                        Some(Ok((id, done))) => {
                            running.remove(&id);
                            ctx.handle(&mut state, done);
                        }
                        Some(Err(e)) => {
                            // A fetch task ended without an answer (it panicked): its
                            // item asks again on the next turn.
                            if let Some((key, _)) = running.remove(&e.id()) {
                                ctx.abandoned(&mut state, key);
                            }
                            tracing::error!(error = %e, "registry fetch task failed");
                        }
                        None => {}
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

/// The refresher's fixed parts, for the steps of its loop.
struct Ctx {
    label: &'static str,
    approvers: KeySet,
    pace: Pace,
    store: Arc<ApprovalStore>,
    m: FetchMetrics,
}

impl Ctx {
    /// Follows the served digests: a new one is asked about at once; one no longer served
    /// is forgotten.
    fn follow(&self, state: &mut State, served: &[Digest], has_list: bool) {
        let before = state.digests.len();
        state.digests.retain(|d, _| served.contains(d));
        state.dirty |= state.digests.len() != before;
        for digest in served {
            state.digests.entry(*digest).or_insert_with(|| Tracked {
                schedule: Schedule::new(&self.pace),
                fetched: Vec::new(),
                revoked: false,
                verified: HashMap::new(),
                entry: None,
            });
        }
        if has_list && state.list.is_none() && !served.is_empty() {
            state.list = Some(ListState {
                schedule: Schedule::new(&self.pace),
                text: None,
                held: None,
            });
        }
    }

    /// Starts the fetches that are due: every due watch, and due polls up to
    /// [`MAX_IN_FLIGHT`].
    fn launch<S: Source>(
        &self,
        state: &mut State,
        source: &Arc<S>,
        tasks: &mut JoinSet<Done>,
        running: &mut HashMap<tokio::task::Id, (Key, bool)>,
    ) {
        let now = Instant::now();
        let now_ms = crate::unix_now_ms();
        let mut polls = running.values().filter(|(_, watch)| !watch).count();
        let mut start = |key: Key,
                         schedule: &mut Schedule,
                         hold: Option<Duration>,
                         revalidate: bool| {
            if schedule.in_flight || (schedule.due > now && !revalidate) {
                return;
            }
            let (wait, watched) = schedule.ask(&self.pace, hold);
            if !watched && polls >= MAX_IN_FLIGHT {
                return;
            }
            if !watched {
                polls += 1;
            }
            schedule.in_flight = true;
            schedule.asked_ms = now_ms;
            let etag = schedule.etag.clone();
            let source = source.clone();
            // The contract's read timeout for a watch is wait + timeout; a tenth of the wait
            // more covers a registry's jitter on the hold (the reference server adds up to
            // 10%), which would otherwise turn a short `timeout` into failed watches.
            let bound = self.pace.timeout + wait.map_or(Duration::ZERO, |w| w + w / 10);
            let handle = tasks.spawn(async move {
                let started = Instant::now();
                let ask = Ask {
                    etag: etag.as_deref(),
                    wait,
                };
                let outcome = match key {
                    Key::Digest(d) => tokio::time::timeout(bound, source.fetch(&d, ask)).await,
                    Key::Revocations => tokio::time::timeout(bound, source.revocations(ask)).await,
                }
                .unwrap_or_else(|_| Err(FetchError::Timeout(bound).into()));
                Done {
                    key,
                    took: started.elapsed(),
                    watched,
                    outcome,
                }
            });
            running.insert(handle.id(), (key, watched));
        };
        if let Some(list) = &mut state.list {
            start(Key::Revocations, &mut list.schedule, None, false);
        }
        for (digest, t) in state.digests.iter_mut() {
            let at_ms = t
                .entry
                .as_ref()
                .and_then(|e| e.revalidate_after)
                .map(|at| at.saturating_mul(1000));
            // A held record's revalidate_after passed since the last ask: ask now.
            let revalidate =
                at_ms.is_some_and(|at_ms| t.schedule.asked_ms < at_ms && at_ms <= now_ms);
            // A watch ends by the time a held record asks to be revalidated.
            let hold = at_ms
                .filter(|&at_ms| at_ms > now_ms)
                .map(|at_ms| Duration::from_millis(at_ms - now_ms));
            start(Key::Digest(*digest), &mut t.schedule, hold, revalidate);
        }
    }

    /// The next moment something falls due (a poll, a retry, a revalidation), at most a
    /// [`HEARTBEAT`] away.
    fn next_deadline(&self, state: &State) -> Instant {
        let now = Instant::now();
        let now_ms = crate::unix_now_ms();
        let mut next = now + HEARTBEAT;
        let schedules = state
            .digests
            .values()
            .map(|t| &t.schedule)
            .chain(state.list.iter().map(|l| &l.schedule));
        // One already due and not in flight waits for a free slot: a finished fetch wakes
        // the loop then (sleeping until a past deadline would spin).
        for s in schedules.filter(|s| !s.in_flight && s.due > now) {
            next = next.min(s.due);
        }
        for t in state.digests.values().filter(|t| !t.schedule.in_flight) {
            if let Some(at) = t.entry.as_ref().and_then(|e| e.revalidate_after) {
                let at_ms = at.saturating_mul(1000);
                if at_ms > now_ms {
                    next = next.min(now + Duration::from_millis(at_ms - now_ms));
                }
            }
        }
        next
    }

    /// A fetch task died: its item is no longer in flight and asks again after a backoff.
    fn abandoned(&self, state: &mut State, key: Key) {
        let schedule = match key {
            Key::Digest(d) => state.digests.get_mut(&d).map(|t| &mut t.schedule),
            Key::Revocations => state.list.as_mut().map(|l| &mut l.schedule),
        };
        if let Some(s) = schedule {
            s.in_flight = false;
            s.failed(None);
        }
    }

    /// A fetch finished: records what it said and schedules the next.
    fn handle(&self, state: &mut State, done: Done) {
        self.m.duration.observe(done.took.as_secs_f64());
        match done.key {
            Key::Digest(digest) => {
                let list_ids = state.list.as_ref().and_then(|l| l.held.as_ref());
                let list_clock = state.list.as_ref().map(|l| l.schedule.clock.clone());
                // A digest no longer served: its answer is dropped.
                let Some(t) = state.digests.get_mut(&digest) else {
                    return;
                };
                t.schedule.in_flight = false;
                if self.digest_answer(&digest, t, done, list_ids, list_clock) {
                    state.dirty = true;
                }
            }
            Key::Revocations => {
                let Some(list) = state.list.as_mut() else {
                    return;
                };
                list.schedule.in_flight = false;
                if self.list_answer(list, done) {
                    // Every entry's revocations follow the new list (no crypto: every
                    // record keeps its verified form).
                    let held = list.held.clone();
                    let clock = list.schedule.clock.clone();
                    for (digest, t) in state.digests.iter_mut() {
                        if t.schedule.answered {
                            self.rebuild(digest, t, held.as_ref(), Some(clock.clone()));
                        }
                    }
                    state.dirty = true;
                }
            }
        }
        if !state.dirty {
            self.mark_synced(state);
        }
    }

    /// One digest's answer; true when its entry changed.
    fn digest_answer(
        &self,
        digest: &Digest,
        t: &mut Tracked,
        done: Done,
        list: Option<&RevocationList>,
        list_clock: Option<Arc<SourceClock>>,
    ) -> bool {
        let reply = match done.outcome {
            Ok(reply) => reply,
            Err(f) => {
                self.m.error.inc();
                t.schedule.failed(f.retry_after);
                tracing::warn!(backend = self.label, %digest, error = %f,
                    "registry fetch failed; keeping the digest's last good records until max_stale");
                return false;
            }
        };
        let (records, etag, revoked) = match reply.fetched {
            Fetched::NotModified if t.schedule.answered => {
                self.m.not_modified.inc();
                t.schedule
                    .succeeded(&self.pace, &reply.hints, done.watched, done.took, false);
                return false;
            }
            Fetched::NotModified => {
                self.m.error.inc();
                t.schedule.failed(None);
                tracing::warn!(backend = self.label, %digest,
                    "registry answered 304 to a request without an ETag");
                return false;
            }
            Fetched::Records { records, etag } => (records, etag, false),
            Fetched::Revoked { records } => (records, None, true),
        };
        if revoked {
            self.m.revoked.inc();
        } else if records.is_empty() {
            self.m.not_found.inc();
        } else {
            self.m.ok.inc();
        }
        t.schedule.etag = etag;
        let same = t.schedule.answered && t.fetched == records && t.revoked == revoked;
        t.schedule
            .succeeded(&self.pace, &reply.hints, done.watched, done.took, !same);
        if same {
            return false;
        }
        t.fetched = records;
        t.revoked = revoked;
        self.rebuild(digest, t, list, list_clock);
        if let Some(entry) = &t.entry {
            tracing::info!(backend = self.label, %digest,
                valid = entry.records.len(), invalid = entry.invalid.len(),
                revoked = entry.records.iter().filter(|c| c.revoked).count(),
                digest_revoked = entry.revoked,
                "registry records changed");
        }
        true
    }

    /// The revocation list's answer; true when the list in force changed.
    fn list_answer(&self, list: &mut ListState, done: Done) -> bool {
        let refuse =
            |list: &mut ListState, why: &dyn std::fmt::Display, retry: Option<Duration>| {
                self.m.error.inc();
                list.schedule.failed(retry);
                tracing::warn!(backend = self.label, error = %why,
                "revocation list not taken; the last good list stays until max_stale");
                false
            };
        let reply = match done.outcome {
            Ok(reply) => reply,
            Err(f) => return refuse(list, &f, f.retry_after),
        };
        let (text, etag) = match reply.fetched {
            Fetched::NotModified if list.schedule.answered => {
                self.m.not_modified.inc();
                list.schedule
                    .succeeded(&self.pace, &reply.hints, done.watched, done.took, false);
                return false;
            }
            Fetched::NotModified => return refuse(list, &"304 to a request without an ETag", None),
            Fetched::Revoked { .. } => {
                return refuse(list, &"410 is not an answer for the list", None)
            }
            Fetched::Records { mut records, etag } => (records.pop().map(|r| r.jws), etag),
        };
        let Some(text) = text else {
            // No list published. One held stays in force: a revocation is undone only by a
            // newer list, never by a file gone missing.
            self.m.not_found.inc();
            if list.held.is_some() && list.schedule.etag.is_some() {
                tracing::warn!(
                    backend = self.label,
                    "the registry no longer serves a revocation list; the last one stays in force"
                );
            }
            list.schedule.etag = etag;
            list.schedule
                .succeeded(&self.pace, &reply.hints, done.watched, done.took, true);
            return false;
        };
        if list.text.as_deref() == Some(text.as_str()) {
            self.m.ok.inc();
            list.schedule.etag = etag;
            list.schedule
                .succeeded(&self.pace, &reply.hints, done.watched, done.took, false);
            return false;
        }
        let verified = match revocations::verify(&text, &self.approvers) {
            Ok(v) => v,
            Err(e) => return refuse(list, &e, None),
        };
        if let Some(held) = &list.held {
            if verified.iat <= held.iat {
                // Older, or as old but different: a rollback (a stale cache, or a replay).
                let why = format!(
                    "rollback refused: the list's iat {} is not newer than the held list's {}",
                    verified.iat, held.iat
                );
                return refuse(list, &why, None);
            }
        }
        self.m.ok.inc();
        tracing::info!(backend = self.label, iss = %verified.iss, kid = %verified.kid,
            iat = verified.iat, revoked = verified.revoked.len(), "revocation list taken");
        list.text = Some(text);
        list.held = Some(verified);
        list.schedule.etag = etag;
        list.schedule
            .succeeded(&self.pace, &reply.hints, done.watched, done.took, true);
        true
    }

    /// Rebuilds a digest's entry from its last answer and the revocation list.
    fn rebuild(
        &self,
        digest: &Digest,
        t: &mut Tracked,
        list: Option<&RevocationList>,
        list_clock: Option<Arc<SourceClock>>,
    ) {
        let known = std::mem::take(&mut t.verified);
        let (mut entry, verified) = self.verify(digest, &t.fetched, known, list);
        entry.revoked = t.revoked;
        entry.clocks = std::iter::once(t.schedule.clock.clone())
            .chain(list_clock)
            .collect();
        t.verified = verified;
        t.entry = Some(Arc::new(entry));
    }

    /// Publishes the entries, then the sync state.
    fn publish(&self, state: &mut State) {
        let mut snapshot = Snapshot::default();
        for (digest, t) in &state.digests {
            let Some(entry) = &t.entry else { continue };
            snapshot.valid_records += entry.records.len();
            snapshot.invalid_records += entry.invalid.len();
            snapshot.revoked_ids += entry.records.iter().filter(|c| c.revoked).count();
            snapshot.by_digest.insert(*digest, entry.clone());
        }
        self.store.replace(snapshot);
        state.dirty = false;
        self.mark_synced(state);
    }

    /// Once every served digest (and the list) has an answer, the store counts as synced,
    /// as old as its oldest answer.
    fn mark_synced(&self, state: &State) {
        let schedules: Vec<&Schedule> = state
            .digests
            .values()
            .map(|t| &t.schedule)
            .chain(state.list.iter().map(|l| &l.schedule))
            .collect();
        if schedules.is_empty() || !schedules.iter().all(|s| s.answered) {
            return;
        }
        let oldest = schedules
            .iter()
            .filter_map(|s| s.clock.age())
            .max()
            .unwrap_or_default();
        self.store.remote_synced(oldest);
    }

    /// Verifies fetched records for `digest`, reusing the verified form of any record the
    /// previous answer already held. Returns the entry and the verified records by text.
    fn verify(
        &self,
        digest: &Digest,
        fetched: &[FetchedRecord],
        known: HashMap<String, Arc<ApprovalRecord>>,
        list: Option<&RevocationList>,
    ) -> (RegistryEntry, HashMap<String, Arc<ApprovalRecord>>) {
        verify_fetched(self.label, &self.approvers, digest, fetched, known, list)
    }
}

/// Verifies a registry's answer for `digest` into its entry (records, exceptions, the
/// failures), reusing the verified form of any record in `known`; `list`: the signed
/// revocation list in force. Returns the entry and the verified records by text.
fn verify_fetched(
    label: &'static str,
    approvers: &KeySet,
    digest: &Digest,
    fetched: &[FetchedRecord],
    mut known: HashMap<String, Arc<ApprovalRecord>>,
    list: Option<&RevocationList>,
) -> (RegistryEntry, HashMap<String, Arc<ApprovalRecord>>) {
    let listed: HashSet<&str> = list
        .map(|l| l.revoked.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let mut verified = HashMap::new();
    let mut records = Vec::new();
    let mut invalid = Vec::new();
    let mut exceptions = Vec::new();
    let mut rejects = super::RejectLog::new(label);
    for f in fetched {
        let record = match known.remove(&f.jws) {
            Some(r) => Ok(r),
            None => match approval::verify_any(&f.jws, approvers) {
                Ok(Verified::Record(r)) => Ok(Arc::new(r)),
                Ok(Verified::Exception(e)) => {
                    // Exceptions ride in the same answer, told apart by `typ`.
                    match super::exception_for(e, digest, f.revoked) {
                        Ok(c) => exceptions.push(c),
                        Err(why) => rejects.reject(&f.origin, &why),
                    }
                    continue;
                }
                Err(e) => Err(e.to_string()),
            },
        };
        match record {
            Ok(r) if r.claims.artefact.digest == *digest => {
                verified.insert(f.jws.clone(), r.clone());
                let revoked = f.revoked || listed.contains(r.claims.jti.as_str());
                records.push(Candidate { record: r, revoked });
            }
            Ok(r) => {
                // A record filed under the wrong digest approves neither.
                let why = format!(
                    "{}: the record is for {}, not the digest it is filed under",
                    f.origin, r.claims.artefact.digest
                );
                rejects.reject(&f.origin, &why);
                invalid.push(why);
            }
            Err(e) => {
                rejects.reject(&f.origin, &e);
                invalid.push(format!("{}: {e}", f.origin));
            }
        }
    }
    if rejects.count() > 0 {
        tracing::debug!(backend = label, %digest, rejected = rejects.count(),
            "records rejected for the digest");
    }
    rejects.finish();
    (
        RegistryEntry::new(records, invalid).with_exceptions(exceptions),
        verified,
    )
}

/// Asks the configured remote registry once about `digest` (and its signed revocation list,
/// when it publishes one) and verifies the answer as a running refresher would: for
/// `provgate check` and `provgate promote`, which need one answer, not a schedule.
pub async fn ask_once(
    config: &RemoteRegistry,
    approvers: &KeySet,
    digest: &Digest,
) -> Result<RegistryEntry, AskError> {
    let client = client(config)?;
    let source = match config.kind {
        RemoteKind::Mlflow => Backend::Mlflow(Mlflow::new(client, config)),
        RemoteKind::Http => Backend::Http(HttpRegistry::new(client, config)),
    };
    let list = if source.has_revocations() {
        match source.revocations(Ask::default()).await?.fetched {
            Fetched::Records { records, .. } => match records.first() {
                Some(text) => Some(revocations::verify(&text.jws, approvers)?),
                None => None,
            },
            _ => return Err(AskError::Answer("the revocation list answered 304 or 410")),
        }
    } else {
        None
    };
    let (fetched, revoked) = match source.fetch(digest, Ask::default()).await?.fetched {
        Fetched::Records { records, .. } => (records, false),
        Fetched::Revoked { records } => (records, true),
        Fetched::NotModified => return Err(AskError::Answer("304 to a request without an ETag")),
    };
    let (mut entry, _) = verify_fetched(
        source.label(),
        approvers,
        digest,
        &fetched,
        HashMap::new(),
        list.as_ref(),
    );
    entry.revoked = revoked;
    Ok(entry)
}

/// Why [`ask_once`] has no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("{0}")]
    Failed(#[from] Failed),
    #[error("revocation list: {0}")]
    Revocations(#[from] revocations::RevocationError),
    #[error("unexpected answer: {0}")]
    Answer(&'static str),
}

/// The HTTP client the remote backends share: rustls, no proxy, bounded connect time.
pub fn client(config: &RemoteRegistry) -> Result<reqwest::Client, FetchError> {
    crate::kit::http::client(&ClientOptions {
        connect_timeout: config.timeout,
        timeout: config.timeout,
        ca_pem: config.ca_pem.as_deref(),
        user_agent: true,
        transport: Transport {
            allow_plaintext: config.allow_plaintext,
            same_origin_redirects: false,
        },
    })
}

/// The configured remote backend.
enum Backend {
    Mlflow(Mlflow),
    Http(HttpRegistry),
}

impl Source for Backend {
    fn label(&self) -> &'static str {
        match self {
            Backend::Mlflow(s) => s.label(),
            Backend::Http(s) => s.label(),
        }
    }

    async fn fetch(&self, digest: &Digest, ask: Ask<'_>) -> Result<Reply, Failed> {
        match self {
            Backend::Mlflow(s) => s.fetch(digest, ask).await,
            Backend::Http(s) => s.fetch(digest, ask).await,
        }
    }

    fn has_revocations(&self) -> bool {
        match self {
            Backend::Mlflow(s) => s.has_revocations(),
            Backend::Http(s) => s.has_revocations(),
        }
    }

    async fn revocations(&self, ask: Ask<'_>) -> Result<Reply, Failed> {
        match self {
            Backend::Mlflow(s) => s.revocations(ask).await,
            Backend::Http(s) => s.revocations(ask).await,
        }
    }
}

/// The refresher for a remote registry, as one future (run as a background service, which
/// drops it at shutdown).
pub fn refresher(
    registry: &RegistryConfig,
    config: &RemoteRegistry,
    approvers: KeySet,
    store: Arc<ApprovalStore>,
    served: Served,
    metrics: Arc<Metrics>,
    heartbeat: Option<Arc<crate::kit::watchdog::Heartbeat>>,
) -> Result<impl Future<Output = ()> + Send, FetchError> {
    let client = client(config)?;
    let source = match config.kind {
        RemoteKind::Mlflow => Backend::Mlflow(Mlflow::new(client, config)),
        RemoteKind::Http => Backend::Http(HttpRegistry::new(client, config)),
    };
    let refresher = Refresher {
        source,
        approvers,
        pace: Pace::of(registry, config),
        store,
        served,
        metrics,
        heartbeat,
    };
    // The shutdown drops the future; nothing else stops it.
    Ok(refresher.run(Arc::new(AtomicBool::new(false))))
}

#[cfg(test)]
mod tests;
