//! Remote issuer keys: a JWKS fetched over HTTPS (directly, or through OIDC discovery's
//! `jwks_uri`), refreshed in the background at the server's cache hints within configured
//! bounds, refetched on an unknown `kid` at most once per `refetch_interval` (scheduled
//! refreshes do not count against it), and kept after a failed refresh until `max_stale`,
//! after which the issuer's callers get `trust_data_unavailable` rather than
//! `token_invalid`. A failed fetch is retried with a jittered backoff of seconds (up to 1 s
//! doubling to 30 s), never longer than a quarter of `max_stale`.
//!
//! The fetchers run as one pingora background service (dropped at shutdown); the request
//! path only reads the published key set and its freshness clock and, for an unknown `kid`,
//! waits on a notification.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::config::RemoteKeys;
use super::Issuer;
use crate::keys::KeySet;
use crate::kit::backoff::{Backoff, Jitter};
use crate::kit::http::{send, ClientOptions, FetchError, Transport};
use crate::kit::published::Freshness;
use crate::telemetry::Metrics;

/// Largest JWKS or discovery document accepted.
const MAX_DOCUMENT: usize = 1 << 20;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The live state of a remote key set.
pub struct RemoteState {
    pub config: RemoteKeys,
    /// Synced after the first successful fetch; restarted by each.
    clock: Freshness,
    /// The request path asks for a refetch: `wanted` says a fetch that starts from now on
    /// is owed, `refetch` wakes the fetcher. A fetch clears `wanted` as it starts, so asks
    /// that it covers leave nothing behind (one fetch per unknown-`kid` burst, not two).
    wanted: AtomicBool,
    refetch: Notify,
    /// Fetches started (the attempt count, for tests and metrics).
    pub attempts: AtomicU64,
    /// Fetches finished (either way), by start number: a waiter waits for the first fetch
    /// that started after it asked.
    finished: watch::Sender<u64>,
}

impl RemoteState {
    pub fn new(config: RemoteKeys) -> RemoteState {
        RemoteState {
            config,
            clock: Freshness::new(),
            wanted: AtomicBool::new(false),
            refetch: Notify::new(),
            attempts: AtomicU64::new(0),
            finished: watch::Sender::new(0),
        }
    }

    pub fn is_synced(&self) -> bool {
        self.clock.is_synced()
    }

    /// Time since the last successful fetch (None before the first).
    pub fn age(&self) -> Option<Duration> {
        self.clock.age()
    }

    /// Fetched, and not older than `max_stale`.
    pub fn is_fresh(&self) -> bool {
        self.age().is_some_and(|a| a <= self.config.max_stale)
    }

    fn mark_success(&self) {
        self.clock.mark_success();
    }

    /// Asks for a refetch and waits, at most `unknown_kid_wait`, for the first fetch that
    /// starts after the ask to finish (a fetch already in flight may predate the new key).
    /// After each earlier fetch that finishes meanwhile, `found` is asked whether it brought
    /// what the caller waits for; if so the wait ends there.
    pub async fn wait_for_refetch(&self, mut found: impl FnMut() -> bool) {
        let mut finished = self.finished.subscribe();
        // Read the start count before raising `wanted`: the fetcher clears `wanted` before
        // counting a start, so either that fetch is counted after this read (and covers
        // us) or `wanted` stays raised and a later fetch does.
        let want = self.attempts.load(Ordering::SeqCst) + 1;
        self.wanted.store(true, Ordering::SeqCst);
        self.refetch.notify_one();
        let _ = tokio::time::timeout(self.config.unknown_kid_wait, async {
            while *finished.borrow_and_update() < want {
                if finished.changed().await.is_err() {
                    return;
                }
                // An earlier fetch finished: the one in flight when we asked may have
                // brought the key already.
                if *finished.borrow() < want && found() {
                    return;
                }
            }
        })
        .await;
    }

    /// Called by the fetcher as a fetch starts: every ask so far is covered by it.
    fn start_fetch(&self) -> u64 {
        self.wanted.store(false, Ordering::SeqCst);
        self.attempts.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// One fetcher per remote issuer, as one future (run as a background service, which drops
/// it at shutdown); None when no issuer has remote keys.
pub fn fetchers(
    issuers: Vec<Arc<Issuer>>,
    metrics: Arc<Metrics>,
) -> Option<impl std::future::Future<Output = ()> + Send> {
    let remote: Vec<Arc<Issuer>> = issuers.into_iter().filter(|i| i.remote.is_some()).collect();
    if remote.is_empty() {
        return None;
    }
    Some(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for issuer in remote {
            tasks.spawn(run(issuer, metrics.clone()));
        }
        while let Some(ended) = tasks.join_next().await {
            // One issuer's fetcher panicked: the panic goes on to the service, which counts
            // it and starts every fetcher again (the others are dropped with this set).
            if let Err(e) = ended {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    })
}

fn client(config: &RemoteKeys) -> Result<reqwest::Client, FetchError> {
    crate::kit::http::client(&ClientOptions {
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(10),
        ca_pem: config.ca_pem.as_deref(),
        user_agent: false,
        // Key material: HTTPS only, and a redirect never leaves the origin.
        transport: transport(config),
    })
}

/// The transport rules for an issuer's documents.
fn transport(config: &RemoteKeys) -> Transport {
    Transport {
        allow_plaintext: config.allow_plaintext,
        same_origin_redirects: true,
    }
}

/// Keeps one issuer's keys fresh, forever.
async fn run(issuer: Arc<Issuer>, metrics: Arc<Metrics>) {
    // `fetchers` only starts issuers that have remote state.
    let Some(remote) = issuer.remote.as_ref() else {
        return;
    };
    let client = match client(&remote.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(issuer = %issuer.issuer, error = %e, "cannot build the JWKS client; this issuer's callers get trust_data_unavailable");
            return;
        }
    };
    let ok = metrics
        .jwks_fetches
        .with_label_values(&[&issuer.issuer, "ok"]);
    let failed = metrics
        .jwks_fetches
        .with_label_values(&[&issuer.issuer, "error"]);
    // Jittered, so a periodic outage cannot keep meeting every retry (and sidecars that
    // fail together do not retry together).
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF).with_jitter(Jitter::Full);
    // When the last unknown-`kid` refetch started: `refetch_interval` bounds those only. A
    // scheduled refresh does not count, or a key published just after one would wait out
    // the interval (longer than `unknown_kid_wait`) and its first tokens get 401.
    let mut last_refetch: Option<tokio::time::Instant> = None;
    let mut refetching = false;
    loop {
        if refetching {
            last_refetch = Some(tokio::time::Instant::now());
        }
        let number = remote.start_fetch();
        let next = match fetch(&client, &remote.config, &issuer.issuer).await {
            Ok((keys, hint)) => {
                tracing::info!(issuer = %issuer.issuer, keys = keys.keys.len(), "issuer keys fetched");
                for skipped in &keys.skipped {
                    tracing::warn!(issuer = %issuer.issuer, key = %skipped, "issuer key skipped");
                }
                issuer.replace_keys(keys);
                remote.mark_success();
                ok.inc();
                backoff.reset();
                hint.unwrap_or(remote.config.refresh_max)
                    .clamp(remote.config.refresh_min, remote.config.refresh_max)
            }
            Err(e) => {
                failed.inc();
                // At least four tries within max_stale: an issuer that flaps, or comes back
                // before the last good keys go stale, is caught before they do (a plain
                // doubling backoff could sleep past max_stale while the issuer is up).
                let retry = backoff.fail().min(remote.config.max_stale / 4);
                tracing::warn!(issuer = %issuer.issuer, error = %e, retry_in_ms = retry.as_millis() as u64,
                    "issuer key fetch failed; keeping the last good keys until max_stale");
                retry
            }
        };
        remote.finished.send_replace(number);
        let due = tokio::time::Instant::now() + next;
        refetching = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => break,
                _ = remote.refetch.notified() => {
                    if !remote.wanted.load(Ordering::SeqCst) {
                        // A wake-up left by asks the last fetch already covered.
                        continue;
                    }
                    // An unknown kid asked: at most one refetch per refetch_interval; a
                    // scheduled refresh due sooner covers the ask (and stays scheduled).
                    let allowed = last_refetch.map(|at| at + remote.config.refetch_interval);
                    match allowed {
                        Some(at) if at >= due => {
                            tokio::time::sleep_until(due).await;
                        }
                        Some(at) => {
                            tokio::time::sleep_until(at).await;
                            refetching = true;
                        }
                        None => refetching = true,
                    }
                    break;
                }
            }
        }
    }
}

/// One fetch: discovery (if configured), then the JWKS. Returns the keys and the refresh
/// hint (SPIFFE `spiffe_refresh_hint`, else Cache-Control `max-age`).
async fn fetch(
    client: &reqwest::Client,
    config: &RemoteKeys,
    issuer: &str,
) -> Result<(KeySet, Option<Duration>), FetchError> {
    let jwks_url = if config.discovery {
        let url = &config.url;
        let (doc, _) = get(client, url).await?;
        let doc: serde_json::Value = serde_json::from_slice(&doc)
            .map_err(|e| FetchError::answer(url, format!("discovery document: {e}")))?;
        if let Some(claimed) = doc.get("issuer").and_then(|i| i.as_str()) {
            if claimed != issuer {
                return Err(FetchError::answer(
                    url,
                    format!("discovery document names issuer {claimed:?}, not {issuer:?}"),
                ));
            }
        }
        doc.get("jwks_uri")
            .and_then(|u| u.as_str())
            .ok_or_else(|| FetchError::answer(url, "discovery document has no jwks_uri"))?
            .to_string()
    } else {
        config.url.clone()
    };
    // A discovery document must not send the keys fetch to plaintext.
    transport(config).check(&jwks_url)?;
    let (body, max_age) = get(client, &jwks_url).await?;
    let text = std::str::from_utf8(&body).map_err(|_| FetchError::NotUtf8 {
        url: jwks_url.clone(),
        what: "JWKS",
    })?;
    let keys =
        KeySet::from_jwks_json(text, &jwks_url).map_err(|e| FetchError::answer(&jwks_url, e))?;
    if keys.keys.is_empty() {
        return Err(FetchError::answer(
            &jwks_url,
            format!("holds no usable key ({:?})", keys.skipped),
        ));
    }
    let spiffe_hint = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("spiffe_refresh_hint").and_then(|h| h.as_u64()))
        .map(Duration::from_secs);
    Ok((keys, spiffe_hint.or(max_age)))
}

async fn get(
    client: &reqwest::Client,
    url: &str,
) -> Result<(bytes::Bytes, Option<Duration>), FetchError> {
    let resp = send(
        client
            .get(url)
            .header(http::header::ACCEPT, "application/json"),
        url,
    )
    .await?;
    if !resp.status().is_success() {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: resp.status(),
        });
    }
    let max_age = resp
        .headers()
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_max_age);
    let body = crate::kit::http::body(resp, MAX_DOCUMENT, "document").await?;
    Ok((body, max_age))
}

/// `max-age=N` from a Cache-Control value.
pub fn parse_max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|d| {
        let (k, v) = d.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("max-age").then(|| {
            v.trim()
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs)
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            parse_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_max_age("Max-Age=\"60\""),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_max_age("no-store"), None);
        assert_eq!(parse_max_age("max-age=soon"), None);
    }

    fn state(unknown_kid_wait: Duration) -> RemoteState {
        RemoteState::new(RemoteKeys {
            url: "https://issuer.invalid/keys".into(),
            discovery: false,
            ca_pem: None,
            allow_plaintext: false,
            refresh_min: Duration::from_secs(60),
            refresh_max: Duration::from_secs(60),
            max_stale: Duration::from_secs(600),
            refetch_interval: Duration::from_secs(5),
            unknown_kid_wait,
        })
    }

    /// A fetch in flight when the request asked finishes after 1 s and brings the key: the
    /// wait ends then, not at the end of `unknown_kid_wait` or at the next fetch.
    #[tokio::test(start_paused = true)]
    async fn a_fetch_in_flight_that_brings_the_key_ends_the_wait() {
        let remote = Arc::new(state(Duration::from_secs(5)));
        let in_flight = remote.start_fetch();
        let brought = Arc::new(AtomicBool::new(false));
        let (r, b) = (remote.clone(), brought.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            b.store(true, Ordering::SeqCst);
            r.finished.send_replace(in_flight);
        });
        let started = tokio::time::Instant::now();
        remote
            .wait_for_refetch(|| brought.load(Ordering::SeqCst))
            .await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        // It still asked for a fetch of its own (the next one covers a key not brought).
        assert!(remote.wanted.load(Ordering::SeqCst));
    }

    /// The fetch in flight does not bring the key: the wait goes on for the fetch that
    /// starts after the ask, and ends when that one finishes.
    #[tokio::test(start_paused = true)]
    async fn a_fetch_in_flight_without_the_key_waits_for_the_next() {
        let remote = Arc::new(state(Duration::from_secs(5)));
        let in_flight = remote.start_fetch();
        let r = remote.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            r.finished.send_replace(in_flight);
            let next = r.start_fetch();
            tokio::time::sleep(Duration::from_secs(2)).await;
            r.finished.send_replace(next);
        });
        let started = tokio::time::Instant::now();
        let mut asked = 0;
        remote
            .wait_for_refetch(|| {
                asked += 1;
                false
            })
            .await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(asked, 1, "asked after the in-flight fetch only");
    }
}
