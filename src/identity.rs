//! Caller identity: the workload JWT in `Authorization: Bearer`, verified against the keys of
//! each trusted issuer (`iss`, `aud`, `exp`, `nbf`, signature), and cached by the token's
//! SHA-256 until its `exp`, so a repeated token costs a hash and a cache read, not a
//! signature check. In front of that cache, each worker thread keeps the last few tokens it
//! verified ([`Recent`]): a sidecar's callers are a handful of workloads, each reusing one
//! token until it rotates, so most requests cost one constant-time comparison.
//!
//! Owns algorithm policy: per issuer allow-list, never `none` or HMAC, the key's type must
//! fit the header's `alg`, and headers that point at other keys (`jku`, `jwk`, `x5u`, `x5c`)
//! or demand extensions (`crit`) are refused. It does not decide what a caller may call.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

pub use self::config::Profile;
use crate::keys::KeySet;
use crate::telemetry::Metrics;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub iss: Arc<str>,
    pub sub: Arc<str>,
    /// Token expiry, seconds since the epoch.
    pub exp: u64,
    /// `sub` and `iss` as header values for the upstream (`x-provgate-caller` and
    /// `x-provgate-caller-issuer`), made once per token; `None` when either is not a header
    /// value, and then neither is sent: a name means something only with its issuer.
    pub headers: Option<CallerHeaders>,
}

/// A caller's name and issuer, ready to be sent upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerHeaders {
    pub sub: http::HeaderValue,
    pub iss: http::HeaderValue,
}

impl CallerHeaders {
    pub fn new(iss: &str, sub: &str) -> Option<CallerHeaders> {
        Some(CallerHeaders {
            sub: http::HeaderValue::from_str(sub).ok()?,
            iss: http::HeaderValue::from_str(iss).ok()?,
        })
    }
}

/// Why a token was refused. Only the variant reaches logs; never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a compact JWS")]
    Malformed,
    #[error("header refused: {0}")]
    Header(&'static str),
    #[error("algorithm not allowed for this issuer")]
    Algorithm,
    #[error("issuer is not trusted")]
    UnknownIssuer,
    #[error("no key of the issuer matches the token's kid and alg")]
    UnknownKey,
    #[error("signature does not verify")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("audience not accepted")]
    Audience,
    #[error("claims invalid: {0}")]
    Claims(&'static str),
    #[error("issuer keys unavailable")]
    KeysUnavailable,
}

impl TokenError {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Header(_) => "header_refused",
            TokenError::Algorithm => "algorithm",
            TokenError::UnknownIssuer => "unknown_issuer",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Signature => "signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Audience => "audience",
            TokenError::Claims(_) => "claims",
            TokenError::KeysUnavailable => "keys_unavailable",
        }
    }

    /// Will the same token fail the same way a minute from now, whatever the keys do?
    /// Only such failures are remembered; an unknown key may appear after a key refresh,
    /// and a token not yet valid becomes valid.
    fn is_permanent(&self) -> bool {
        !matches!(
            self,
            TokenError::UnknownKey | TokenError::NotYetValid | TokenError::KeysUnavailable
        )
    }
}

/// Checks a SPIFFE ID (`spiffe://TRUST_DOMAIN/PATH`), of `trust_domain` when given, and
/// returns its trust domain. The one validation for token callers (`sub`) and certificate
/// callers (the URI SAN): the path is not empty, and no segment is empty, `.` or `..`; no
/// query, fragment, port or user part.
pub fn spiffe_id<'a>(id: &'a str, trust_domain: Option<&str>) -> Result<&'a str, &'static str> {
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or("sub is not a SPIFFE ID")?;
    let (domain, path) = rest
        .split_once('/')
        .ok_or("sub is not a valid SPIFFE ID path")?;
    if trust_domain.is_some_and(|td| td != domain) {
        return Err("sub is not a SPIFFE ID of the trust domain");
    }
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    if !domain_ok {
        return Err("sub is not a SPIFFE ID of a valid trust domain");
    }
    if path.is_empty()
        || path.contains(['?', '#', '%'])
        || path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err("sub is not a valid SPIFFE ID path");
    }
    Ok(domain)
}

impl Profile {
    fn check(&self, claims: &Claims) -> Result<(), TokenError> {
        match self {
            Profile::Oidc => Ok(()),
            Profile::Spiffe { trust_domain } => spiffe_id(&claims.sub, Some(trust_domain))
                .map(|_| ())
                .map_err(TokenError::Claims),
            Profile::Kubernetes => {
                let mut parts = claims.sub.splitn(4, ':');
                let (Some("system"), Some("serviceaccount"), Some(ns), Some(name)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(TokenError::Claims(
                        "sub is not system:serviceaccount:NS:NAME",
                    ));
                };
                let k = claims
                    .kubernetes
                    .as_ref()
                    .ok_or(TokenError::Claims("kubernetes.io claim is missing"))?;
                let claimed_ns = k.get("namespace").and_then(|v| v.as_str());
                let claimed_sa = k.pointer("/serviceaccount/name").and_then(|v| v.as_str());
                if claimed_ns != Some(ns) || claimed_sa != Some(name) {
                    return Err(TokenError::Claims("kubernetes.io claim disagrees with sub"));
                }
                Ok(())
            }
        }
    }
}

/// One trusted issuer.
pub struct Issuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub profile: Profile,
    pub keys: ArcSwap<KeySet>,
    /// Bumped after each change of `keys`, so a cached token knows when to re-check that
    /// the key that verified it is still there (see [`Verified`]).
    pub generation: AtomicU64,
    /// Set when the keys are fetched over the network (see [`jwks`]).
    pub remote: Option<jwks::RemoteState>,
}

impl Issuer {
    /// An issuer whose keys come from a file, loaded once.
    pub fn with_keys(
        issuer: &str,
        audiences: Vec<String>,
        algorithms: Vec<Algorithm>,
        keys: KeySet,
    ) -> Issuer {
        Issuer {
            issuer: issuer.to_string(),
            audiences,
            algorithms,
            profile: Profile::Oidc,
            keys: ArcSwap::from_pointee(keys),
            generation: AtomicU64::new(0),
            remote: None,
        }
    }

    /// Publishes a new key set. The generation is bumped after the store, so a reader that
    /// sees the new generation also sees the new keys.
    pub fn replace_keys(&self, keys: KeySet) {
        self.keys.store(Arc::new(keys));
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// A verified token as the caches hold it: the caller, the issuer, the key that verified it
/// and the issuer's key generation it was last checked against. When the issuer's keys
/// change, the next hit checks (by thumbprint, no crypto) that the key is still in the set
/// and re-stamps the generation, or drops the token: a token outlives neither its `exp`
/// nor its key.
pub struct Verified {
    caller: Arc<Caller>,
    issuer: Arc<Issuer>,
    thumbprint: String,
    generation: AtomicU64,
}

impl Verified {
    /// Still vouched for by the issuer's current keys? Two atomic loads while the keys are
    /// unchanged.
    fn key_current(&self) -> bool {
        let current = self.issuer.generation.load(Ordering::Acquire);
        if current == self.generation.load(Ordering::Relaxed) {
            return true;
        }
        // `current` was read before the keys: if they change again, the next hit looks again.
        if self
            .issuer
            .keys
            .load()
            .contains_thumbprint(&self.thumbprint)
        {
            self.generation.store(current, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

pub mod config;
pub mod jwks;
pub mod mtls;

/// Tokens each worker thread keeps in front of the shared cache.
const RECENT_PER_THREAD: usize = 4;

/// The last tokens one thread verified (through any path), for [`TokenVerifier::verify`].
/// Entries are tagged with their verifier, so two verifiers in one process never share.
/// A hit is checked exactly as a shared-cache hit is (expiry, issuer key freshness).
#[derive(Default)]
struct Recent {
    entries: [Option<RecentToken>; RECENT_PER_THREAD],
    next: usize,
}

/// (verifier ID, token, verified caller).
type RecentToken = (u64, Box<[u8]>, Arc<Verified>);

impl Recent {
    /// The caller for `token`, compared in constant time (a cached token is a credential:
    /// the comparison must not reveal how much of a guess matched).
    fn get(&self, verifier: u64, token: &[u8]) -> Option<&Arc<Verified>> {
        self.entries.iter().flatten().find_map(|(v, t, caller)| {
            (*v == verifier
                && t.len() == token.len()
                && aws_lc_rs::constant_time::verify_slices_are_equal(t, token).is_ok())
            .then_some(caller)
        })
    }

    fn insert(&mut self, verifier: u64, token: &[u8], caller: Arc<Verified>) {
        // `next` is kept below RECENT_PER_THREAD, the array's length.
        if let Some(slot) = self.entries.get_mut(self.next) {
            *slot = Some((verifier, token.into(), caller));
        }
        self.next = (self.next + 1) % RECENT_PER_THREAD;
    }

    fn remove(&mut self, verifier: u64, token: &[u8]) {
        for e in &mut self.entries {
            if e.as_ref()
                .is_some_and(|(v, t, _)| *v == verifier && **t == *token)
            {
                *e = None;
            }
        }
    }
}

thread_local! {
    static RECENT: RefCell<Recent> = RefCell::new(Recent::default());
}

/// Tells verifiers apart in [`Recent`].
static NEXT_VERIFIER_ID: AtomicU64 = AtomicU64::new(1);

/// Verifies caller tokens for all configured issuers.
pub struct TokenVerifier {
    /// This verifier's tag in the per-thread [`Recent`] tokens.
    id: u64,
    /// The configured issuers: a fixed map, so a fast seeded hash.
    issuers: HashMap<String, Arc<Issuer>, crate::registry::FastHash>,
    leeway: u64,
    cache: moka::sync::Cache<[u8; 32], Arc<Verified>>,
    /// Tokens that failed for good, so a replayed bad token costs no signature check.
    rejected: moka::sync::Cache<[u8; 32], TokenError>,
    /// Any issuer with remote keys (whose freshness cached tokens must respect)?
    has_remote: bool,
    metrics: Arc<Metrics>,
}

/// Entries live until the token's own expiry (plus leeway).
struct UntilExp {
    leeway: u64,
}

impl moka::Expiry<[u8; 32], Arc<Verified>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Verified>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let left = (value.caller.exp.saturating_add(self.leeway)).saturating_sub(crate::unix_now());
        Some(Duration::from_secs(left))
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    exp: u64,
    #[serde(rename = "kubernetes.io", default)]
    kubernetes: Option<serde_json::Value>,
}

impl TokenVerifier {
    pub fn new(
        issuers: Vec<Issuer>,
        leeway: u64,
        cache_capacity: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        TokenVerifier {
            id: NEXT_VERIFIER_ID.fetch_add(1, Ordering::Relaxed),
            has_remote: issuers.iter().any(|i| i.remote.is_some()),
            issuers: issuers
                .into_iter()
                .map(|i| (i.issuer.clone(), Arc::new(i)))
                .collect(),
            leeway,
            cache: moka::sync::Cache::builder()
                .max_capacity(cache_capacity)
                .expire_after(UntilExp { leeway })
                .build(),
            rejected: moka::sync::Cache::builder()
                .max_capacity(cache_capacity)
                .time_to_live(Duration::from_secs(60))
                .build(),
            metrics,
        }
    }

    /// Verifies a bearer token (cached). `now` is seconds since the epoch.
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<Caller>, TokenError> {
        if let Some(outcome) = self.recent(token.as_bytes(), now) {
            return outcome;
        }
        let outcome = self.verify_shared(token, now);
        RECENT.with(|r| {
            let mut r = r.borrow_mut();
            match &outcome {
                Ok(verified) => r.insert(self.id, token.as_bytes(), verified.clone()),
                Err(_) => r.remove(self.id, token.as_bytes()),
            }
        });
        outcome.map(|v| v.caller.clone())
    }

    /// The answer for a token this thread verified recently, found by its bytes, while it
    /// still holds; None: verify it ([`TokenVerifier::verify`]). The request path asks this
    /// first with [`bearer_bytes`], so a known token costs no UTF-8 pass.
    pub fn recent(&self, token: &[u8], now: u64) -> Option<Result<Arc<Caller>, TokenError>> {
        let verified = RECENT.with(|r| r.borrow().get(self.id, token).cloned())?;
        self.cached(&verified, now)
    }

    /// A cached token's answer: Some(outcome) while it still holds, None once it expired or
    /// its key left the issuer's key set (then it is verified afresh).
    fn cached(
        &self,
        verified: &Arc<Verified>,
        now: u64,
    ) -> Option<Result<Arc<Caller>, TokenError>> {
        // Keys past their staleness bound vouch for nothing, cached or not.
        if self.has_remote
            && verified
                .issuer
                .remote
                .as_ref()
                .is_some_and(|r| !r.is_fresh())
        {
            return Some(Err(TokenError::KeysUnavailable));
        }
        // The cache expires entries at `exp`, but eviction is lazy: check again.
        if now < verified.caller.exp.saturating_add(self.leeway) && verified.key_current() {
            self.metrics.token_cache_hits.inc();
            return Some(Ok(verified.caller.clone()));
        }
        None
    }

    /// [`verify`](Self::verify) behind the shared cache only.
    fn verify_shared(&self, token: &str, now: u64) -> Result<Arc<Verified>, TokenError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(verified) = self.cache.get(&key) {
            if let Some(outcome) = self.cached(&verified, now) {
                return outcome.map(|_| verified);
            }
            self.cache.invalidate(&key);
        }
        if let Some(err) = self.rejected.get(&key) {
            self.metrics.token_cache_hits.inc();
            return Err(err);
        }
        self.metrics.token_cache_misses.inc();
        match self.verify_full(token, now) {
            Ok(verified) => {
                self.metrics
                    .token_verifications
                    .with_label_values(&["ok"])
                    .inc();
                let verified = Arc::new(verified);
                self.cache.insert(key, verified.clone());
                Ok(verified)
            }
            Err(e) => {
                self.metrics
                    .token_verifications
                    .with_label_values(&[e.label()])
                    .inc();
                if e.is_permanent() {
                    self.rejected.insert(key, e.clone());
                }
                Err(e)
            }
        }
    }

    /// Like [`verify`](Self::verify), but a token whose `kid` the issuer's current keys
    /// lack asks that issuer for one coalesced, rate-limited refetch and waits for it (up to
    /// the issuer's `unknown_kid_wait`), so a key rotation costs no failed request. The
    /// network I/O is the background fetcher's; this only waits for its answer.
    pub async fn verify_waiting(&self, token: &str, now: u64) -> Result<Arc<Caller>, TokenError> {
        match self.verify(token, now) {
            Err(TokenError::UnknownKey) => {}
            other => return other,
        }
        let Some(remote) = read_unverified(token)
            .ok()
            .and_then(|(_, iss)| self.issuers.get(&iss))
            .and_then(|i| i.remote.as_ref())
        else {
            return Err(TokenError::UnknownKey);
        };
        // A fetch in flight when we asked may bring the key: each one that finishes is
        // tried (no network here; the key set is local), and the first answer other than
        // an unknown key stands.
        let mut early = None;
        remote
            .wait_for_refetch(|| match self.verify(token, crate::unix_now()) {
                Err(TokenError::UnknownKey) => false,
                other => {
                    early = Some(other);
                    true
                }
            })
            .await;
        early.unwrap_or_else(|| self.verify(token, crate::unix_now()))
    }

    /// Have all remote issuers' keys been fetched at least once?
    pub fn all_synced(&self) -> bool {
        self.issuers
            .values()
            .all(|i| i.remote.as_ref().is_none_or(|r| r.is_synced()))
    }

    /// The issuers, for the key fetchers and the admin endpoints.
    pub fn issuers(&self) -> impl Iterator<Item = &Arc<Issuer>> {
        self.issuers.values()
    }

    /// Full verification, no cache.
    pub fn verify_uncached(&self, token: &str, now: u64) -> Result<Caller, TokenError> {
        self.verify_full(token, now)
            .map(|v| Arc::unwrap_or_clone(v.caller))
    }

    /// Full verification, no cache, remembering which key verified the token.
    fn verify_full(&self, token: &str, now: u64) -> Result<Verified, TokenError> {
        let (header, iss) = read_unverified(token)?;
        let issuer = self.issuers.get(&iss).ok_or(TokenError::UnknownIssuer)?;
        if let Some(remote) = &issuer.remote {
            if !remote.is_fresh() {
                return Err(TokenError::KeysUnavailable);
            }
        }
        if !issuer.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm);
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.set_issuer(&[&issuer.issuer]);
        validation.set_audience(&issuer.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;

        // Read before the keys: a change after this makes the next cache hit look again.
        let generation = issuer.generation.load(Ordering::Acquire);
        let keys = issuer.keys.load();
        let mut result = Err(TokenError::UnknownKey);
        let mut thumbprint = "";
        for k in keys.candidates(header.kid.as_deref(), header.alg) {
            result =
                jsonwebtoken::decode::<Claims>(token, &k.key, &validation).map_err(map_jwt_error);
            thumbprint = &k.thumbprint;
            if !matches!(result, Err(TokenError::Signature)) {
                break;
            }
        }
        let claims = result?.claims;
        if claims.sub.is_empty() {
            return Err(TokenError::Claims("sub is empty"));
        }
        issuer.profile.check(&claims)?;
        // jsonwebtoken checks exp against its own clock; check against ours too.
        if now >= claims.exp.saturating_add(self.leeway) {
            return Err(TokenError::Expired);
        }
        Ok(Verified {
            caller: Arc::new(Caller {
                headers: CallerHeaders::new(&claims.iss, &claims.sub),
                iss: Arc::from(claims.iss),
                sub: Arc::from(claims.sub),
                exp: claims.exp,
            }),
            issuer: issuer.clone(),
            thumbprint: thumbprint.to_string(),
            generation: AtomicU64::new(generation),
        })
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidEddsaKey => {
            TokenError::Signature
        }
        K::ExpiredSignature => TokenError::Expired,
        K::ImmatureSignature => TokenError::NotYetValid,
        K::InvalidAudience => TokenError::Audience,
        K::InvalidIssuer => TokenError::UnknownIssuer,
        K::InvalidAlgorithm | K::InvalidAlgorithmName => TokenError::Algorithm,
        K::MissingRequiredClaim(_) => TokenError::Claims("a required claim is missing"),
        K::Base64(_) | K::Json(_) | K::Utf8(_) | K::InvalidToken => TokenError::Malformed,
        _ => TokenError::Claims("rejected"),
    }
}

/// The header (checked for refused parameters) and the claimed issuer, before any
/// verification. The issuer only selects which keys to try.
fn read_unverified(token: &str) -> Result<(jsonwebtoken::Header, String), TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
    if alg.eq_ignore_ascii_case("none") {
        return Err(TokenError::Header("alg none"));
    }
    if alg.starts_with("HS") {
        return Err(TokenError::Header("HMAC algorithms"));
    }
    for (name, why) in [
        ("crit", "crit"),
        ("jku", "jku"),
        ("jwk", "embedded jwk"),
        ("x5u", "x5u"),
        ("x5c", "x5c"),
    ] {
        if header.get(name).is_some() {
            return Err(TokenError::Header(why));
        }
    }
    let header: jsonwebtoken::Header =
        serde_json::from_value(header).map_err(|_| TokenError::Algorithm)?;
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let iss: Iss = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    Ok((header, iss.iss.ok_or(TokenError::Claims("iss is missing"))?))
}

/// The `sub` of a token file (this sidecar's own projected token). The token is not
/// verified: it is the platform's statement of who this pod is, read from a file only the
/// platform writes; provgate uses it to name itself, never to admit a caller.
pub fn token_subject(path: &std::path::Path) -> Result<String, String> {
    let text = crate::kit::file::read_string(path, crate::kit::file::Kind::Credential)
        .map_err(|e| e.to_string())?;
    let payload = text
        .trim()
        .split('.')
        .nth(1)
        .ok_or_else(|| format!("{}: not a JWT", path.display()))?;
    #[derive(Deserialize)]
    struct Sub {
        sub: Option<String>,
    }
    let sub: Sub = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("{}: JWT payload is not JSON", path.display()))?;
    match sub.sub {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(format!("{}: token has no sub", path.display())),
    }
}

/// The bearer token of an `Authorization` header value, if it has one.
pub fn bearer(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// The token of an `Authorization` value, as bytes, to look up among recent tokens
/// ([`TokenVerifier::recent`]) without a UTF-8 pass over it. Only ASCII whitespace is
/// trimmed: a value this reads differently from [`bearer`] (Unicode whitespace around the
/// token) finds no recent token, since each was verified as [`bearer`] read it and none
/// begins or ends with whitespace; [`bearer`] then decides it.
pub fn bearer_bytes(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, token) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Signs a workload token (for demos and tests: `provgate token`).
pub fn mint_token(
    key: &crate::keys::SigningKey,
    iss: &str,
    sub: &str,
    aud: &[String],
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = crate::unix_now();
    let mut header = jsonwebtoken::Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    let claims = serde_json::json!({
        "iss": iss,
        "sub": sub,
        "aud": aud,
        "iat": now,
        "nbf": now,
        "exp": now + ttl.as_secs(),
    });
    jsonwebtoken::encode(&header, &claims, &key.key)
}

#[cfg(test)]
mod tests;
