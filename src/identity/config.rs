//! The caller-identity sections: `[callers]` with its `[[callers.issuers]]` (who may vouch
//! for a caller, where their keys come from, which algorithms and token profile), and the
//! caller-authentication and TLS keys of `[listen]` (`caller_auth`, `tls_cert`, `tls_key`,
//! `client_ca`), which mTLS uses. File structs, defaults, validation and the validated
//! types ([`Issuer`], [`KeySource`], [`RemoteKeys`], [`CallerAuth`], [`ListenTls`],
//! [`Profile`]). Data only: verifying tokens and fetching keys are [`crate::identity`]'s,
//! which imports this file; this file must import nothing from it (nor the top-level `config`).

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::fields::{parse_duration, Errors};
use crate::keys::KeySet;

// === File structs ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallersFile {
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: String,
    /// Verified tokens kept in the cache.
    #[serde(default = "default_token_cache")]
    pub token_cache_size: u64,
    /// The trusted token issuers, one `[[callers.issuers]]` block each (at least one).
    #[serde(default)]
    pub issuers: Vec<IssuerFile>,
}

impl Default for CallersFile {
    fn default() -> Self {
        CallersFile {
            leeway: default_leeway(),
            token_cache_size: default_token_cache(),
            issuers: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerFile {
    /// The exact `iss` of tokens from this issuer.
    pub issuer: String,
    /// The issuer's keys, from exactly one of: a JWKS file...
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// ...a JWKS URL (a SPIFFE bundle endpoint, Kubernetes `/openid/v1/jwks`)...
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// ...or an OIDC discovery document (`.../.well-known/openid-configuration`), whose
    /// `jwks_uri` is then fetched.
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// PEM CA bundle trusted for the URLs above, besides the built-in web roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Allow `http://` for the URLs above and a discovery document's `jwks_uri`: keys
    /// fetched in plaintext can be swapped on the way, so for loopback test set-ups only.
    /// Redirects never leave HTTPS nor the origin either way.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Bounds on the refresh period the server's hints ask for (Cache-Control max-age,
    /// SPIFFE `spiffe_refresh_hint`); without a hint, `refresh_max`.
    #[serde(default = "default_refresh_min")]
    pub refresh_min: String,
    /// See `refresh_min`.
    #[serde(default = "default_refresh_max")]
    pub refresh_max: String,
    /// How long the last good keys are used while the issuer cannot be reached; after that
    /// its callers get `trust_data_unavailable`.
    #[serde(default = "default_keys_max_stale")]
    pub max_stale: String,
    /// At most one refetch for unknown `kid`s per this interval (scheduled refreshes do not
    /// count against it).
    #[serde(default = "default_refetch_interval")]
    pub refetch_interval: String,
    /// How long a request with an unknown `kid` waits for that refetch.
    #[serde(default = "default_unknown_kid_wait")]
    pub unknown_kid_wait: String,
    /// Accepted `aud` values; a token must carry at least one.
    pub audiences: Vec<String>,
    /// Accepted JWS algorithms. Default: ES256, ES384, RS256, PS256, EdDSA.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// `oidc` (any non-empty `sub`), `spiffe` (JWT-SVID: `sub` is a SPIFFE ID in
    /// `trust_domain`) or `kubernetes` (service-account token: `sub` is
    /// `system:serviceaccount:NS:NAME` and agrees with the `kubernetes.io` claim).
    #[serde(default = "default_profile")]
    pub profile: String,
    /// The SPIFFE trust domain, for `profile = "spiffe"` (e.g. `example.org`).
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// `true`: this issuer's callers match only record caller patterns qualified with its
    /// `iss` (`{"iss": ISSUER, "sub": PATTERN}`), never bare ones. Needed on all but one of
    /// any issuers that could assert the same caller names (see [`Profile::overlaps`]).
    #[serde(default)]
    pub qualified: bool,
}

fn default_profile() -> String {
    "oidc".into()
}
fn default_refresh_min() -> String {
    "30s".into()
}
fn default_refresh_max() -> String {
    "5m".into()
}
fn default_keys_max_stale() -> String {
    "1h".into()
}
fn default_refetch_interval() -> String {
    "10s".into()
}
fn default_unknown_kid_wait() -> String {
    "1s".into()
}
fn default_leeway() -> String {
    "30s".into()
}
fn default_token_cache() -> u64 {
    100_000
}
fn default_algorithms() -> Vec<String> {
    ["ES256", "ES384", "RS256", "PS256", "EdDSA"]
        .map(String::from)
        .to_vec()
}

// === Validated config ===

/// How callers authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerAuth {
    Token,
    Certificate,
    TokenOrCertificate,
    TokenAndCertificate,
}

/// TLS on the listener.
#[derive(Debug, Clone)]
pub struct ListenTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// What an issuer's tokens must look like beyond the JWT rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    /// Any OIDC workload token: a non-empty `sub`.
    Oidc,
    /// SPIFFE JWT-SVID: `sub` is a SPIFFE ID in this trust domain.
    Spiffe { trust_domain: String },
    /// Kubernetes projected service-account token: `sub` is
    /// `system:serviceaccount:NS:NAME` and agrees with the `kubernetes.io` claim.
    Kubernetes,
}

impl Profile {
    /// Could two issuers of these profiles assert the same caller name? SPIFFE issuers of
    /// distinct trust domains cannot (the profile checks the `sub`'s trust domain), nor can a
    /// SPIFFE and a Kubernetes issuer (`spiffe://` vs `system:serviceaccount:`); two
    /// Kubernetes issuers can (two clusters have the same namespaces), and an OIDC issuer may
    /// assert any name.
    pub fn overlaps(&self, other: &Profile) -> bool {
        match (self, other) {
            (Profile::Oidc, _) | (_, Profile::Oidc) => true,
            (Profile::Kubernetes, Profile::Kubernetes) => true,
            (Profile::Spiffe { trust_domain: a }, Profile::Spiffe { trust_domain: b }) => {
                a.eq_ignore_ascii_case(b)
            }
            (Profile::Kubernetes, Profile::Spiffe { .. })
            | (Profile::Spiffe { .. }, Profile::Kubernetes) => false,
        }
    }

    /// Could this issuer assert a SPIFFE ID that a client certificate also carries?
    pub fn asserts_spiffe_ids(&self) -> bool {
        !matches!(self, Profile::Kubernetes)
    }
}

#[derive(Debug)]
pub struct Issuer {
    pub issuer: String,
    /// Where [`KeySource::File`] keys were read from (re-read on change and SIGHUP).
    pub jwks_file: Option<PathBuf>,
    /// Bare caller patterns never match this issuer's callers.
    pub qualified: bool,
    pub profile: Profile,
    pub keys: KeySource,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
}

/// Where an issuer's keys come from.
#[derive(Debug)]
pub enum KeySource {
    File(KeySet),
    Remote(RemoteKeys),
}

/// A remote key set and how to keep it fresh.
#[derive(Debug, Clone)]
pub struct RemoteKeys {
    pub url: String,
    /// `url` is an OIDC discovery document rather than the JWKS itself.
    pub discovery: bool,
    /// Extra trusted CA certificates, PEM.
    pub ca_pem: Option<Vec<u8>>,
    /// `http://` allowed (`allow_plaintext = true`).
    pub allow_plaintext: bool,
    pub refresh_min: Duration,
    pub refresh_max: Duration,
    pub max_stale: Duration,
    pub refetch_interval: Duration,
    pub unknown_kid_wait: Duration,
}

/// The validated `[callers]` section.
#[derive(Debug)]
pub struct Callers {
    pub leeway: Duration,
    pub token_cache_size: u64,
    pub issuers: Vec<Issuer>,
}

/// The validated caller-authentication keys of `[listen]`.
#[derive(Debug)]
pub struct CallerAuthConfig {
    pub caller_auth: CallerAuth,
    pub listen_tls: Option<ListenTls>,
}

/// Parses a JWS signature algorithm name, refusing `none` and HMAC.
pub fn parse_signature_algorithm(name: &str) -> Option<Algorithm> {
    let alg: Algorithm = name.parse().ok()?;
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => None,
        other => Some(other),
    }
}

// === [listen] caller authentication ===

/// Checks the caller-authentication keys of `[listen]` (`caller_auth`, `tls_cert`,
/// `tls_key`, `client_ca`; the file struct is `process::ListenFile`); every
/// problem goes to `errors`.
pub fn validate_caller_auth(
    caller_auth_word: &str,
    tls_cert: Option<&str>,
    tls_key: Option<&str>,
    client_ca: Option<&str>,
    errors: &mut Errors,
) -> CallerAuthConfig {
    let caller_auth = errors
        .choice(
            "listen.caller_auth",
            caller_auth_word,
            &[
                ("token", CallerAuth::Token),
                ("certificate", CallerAuth::Certificate),
                ("token_or_certificate", CallerAuth::TokenOrCertificate),
                ("token_and_certificate", CallerAuth::TokenAndCertificate),
            ],
        )
        .unwrap_or(CallerAuth::Token);
    let listen_tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(ListenTls {
            cert: errors.existing_path("listen.tls_cert", cert),
            key: errors.existing_path("listen.tls_key", key),
            client_ca: client_ca.map(|ca| errors.existing_path("listen.client_ca", ca)),
        }),
        (None, None) => None,
        _ => {
            errors.push("listen.tls_cert, listen.tls_key", "give both or neither");
            None
        }
    };
    if client_ca.is_some() && listen_tls.is_none() {
        errors.push(
            "listen.client_ca",
            "needs listen.tls_cert and listen.tls_key",
        );
    }
    if caller_auth != CallerAuth::Token && listen_tls.as_ref().is_none_or(|t| t.client_ca.is_none())
    {
        errors.push(
            "listen.caller_auth",
            format_args!("{caller_auth_word:?} needs TLS with a client_ca"),
        );
    }
    CallerAuthConfig {
        caller_auth,
        listen_tls,
    }
}

// === impl CallersFile ===

impl CallersFile {
    /// Checks `[callers]` and loads each issuer's key file; every problem goes to `errors`.
    pub fn validate(self, errors: &mut Errors) -> Callers {
        let leeway = errors.duration("callers.leeway", &self.leeway);
        if self.issuers.is_empty() {
            errors.push(
                "callers.issuers",
                "at least one trusted issuer is needed ([[callers.issuers]])",
            );
        }
        let mut issuers = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, f) in self.issuers.into_iter().enumerate() {
            let key = format!("callers.issuers[{i}]");
            errors.nonempty(&format!("{key}.issuer"), &f.issuer);
            if !seen.insert(f.issuer.clone()) {
                errors.push(
                    format_args!("{key}.issuer"),
                    format_args!("{:?} is configured twice", f.issuer),
                );
            }
            issuers.push(f.validate(&key, errors));
        }
        // Issuer-qualified callers: bare patterns must not be able to match two issuers'
        // tokens for one name.
        let bare: Vec<(usize, &Issuer)> = issuers
            .iter()
            .enumerate()
            .filter(|(_, i)| !i.qualified)
            .collect();
        for (n, (j, b)) in bare.iter().enumerate() {
            if let Some((_, a)) = bare
                .iter()
                .take(n)
                .find(|(_, a)| a.profile.overlaps(&b.profile))
            {
                errors.push(
                    format_args!("callers.issuers[{j}].qualified"),
                    format_args!(
                        "issuers {:?} and {:?} could assert the same caller names: set \
                         qualified = true on one of them (records then name its callers as \
                         {{\"iss\": ISSUER, \"sub\": PATTERN}})",
                        a.issuer, b.issuer
                    ),
                );
            }
        }
        Callers {
            leeway,
            token_cache_size: self.token_cache_size,
            issuers,
        }
    }
}

// === impl IssuerFile ===

impl IssuerFile {
    /// Checks one `[[callers.issuers]]` block found at `key`.
    fn validate(self, key: &str, errors: &mut Errors) -> Issuer {
        if self.audiences.is_empty() {
            errors.push(
                format_args!("{key}.audiences"),
                "at least one audience is needed",
            );
        }
        let mut algorithms = Vec::new();
        for a in &self.algorithms {
            match parse_signature_algorithm(a) {
                Some(alg) => algorithms.push(alg),
                None => errors.push(
                    format_args!("{key}.algorithms"),
                    format_args!(
                        "{a:?} is not an accepted signature algorithm \
                         (ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA; never none or HS*)"
                    ),
                ),
            }
        }
        let keys = self.key_source(key, errors);
        let profile = self.profile(key, errors);
        Issuer {
            profile,
            jwks_file: self.jwks_file.as_ref().map(PathBuf::from),
            qualified: self.qualified,
            issuer: self.issuer,
            keys,
            audiences: self.audiences,
            algorithms,
        }
    }

    fn key_source(&self, key: &str, errors: &mut Errors) -> KeySource {
        match (&self.jwks_file, &self.jwks_url, &self.discovery_url) {
            (Some(file), None, None) => KeySource::File(
                KeySet::from_jwks_file(std::path::Path::new(file)).unwrap_or_else(|e| {
                    errors.push(format_args!("{key}.jwks_file"), e);
                    KeySet::default()
                }),
            ),
            (None, Some(url), None) | (None, None, Some(url)) => {
                let discovery = self.discovery_url.is_some();
                let field = if discovery {
                    "discovery_url"
                } else {
                    "jwks_url"
                };
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    errors.push(
                        format_args!("{key}.{field}"),
                        format_args!("{url:?} is not an http(s) URL"),
                    );
                } else if url.starts_with("http://") && !self.allow_plaintext {
                    errors.push(
                        format_args!("{key}.{field}"),
                        format_args!(
                            "{url:?} is plaintext HTTP; use https, or set allow_plaintext = true (loopback test set-ups only)"
                        ),
                    );
                }
                let ca_pem = self
                    .ca_file
                    .as_ref()
                    .and_then(|p| errors.read_file(&format!("{key}.ca_file"), p));
                let mut d = |field: &str, v: &str| {
                    parse_duration(v).unwrap_or_else(|e| {
                        errors.push(
                            format_args!("{key}.{field}"),
                            format_args!("{v:?} is not a duration ({e})"),
                        );
                        Duration::from_secs(1)
                    })
                };
                let remote = RemoteKeys {
                    url: url.clone(),
                    discovery,
                    ca_pem,
                    allow_plaintext: self.allow_plaintext,
                    refresh_min: d("refresh_min", &self.refresh_min),
                    refresh_max: d("refresh_max", &self.refresh_max),
                    max_stale: d("max_stale", &self.max_stale),
                    refetch_interval: d("refetch_interval", &self.refetch_interval),
                    unknown_kid_wait: d("unknown_kid_wait", &self.unknown_kid_wait),
                };
                if remote.refresh_min > remote.refresh_max {
                    errors.push(
                        format_args!("{key}.refresh_min"),
                        "must not exceed refresh_max",
                    );
                }
                KeySource::Remote(remote)
            }
            _ => {
                errors.push(
                    key,
                    "give exactly one of jwks_file, jwks_url, discovery_url",
                );
                KeySource::File(KeySet::default())
            }
        }
    }

    fn profile(&self, key: &str, errors: &mut Errors) -> Profile {
        match (self.profile.as_str(), &self.trust_domain) {
            ("oidc", None) => Profile::Oidc,
            ("kubernetes", None) => Profile::Kubernetes,
            ("spiffe", Some(td)) if !td.is_empty() && !td.contains('/') => Profile::Spiffe {
                trust_domain: td.clone(),
            },
            ("spiffe", _) => {
                errors.push(
                    format_args!("{key}.trust_domain"),
                    "profile \"spiffe\" needs a trust domain such as \"example.org\"",
                );
                Profile::Oidc
            }
            (_, Some(_)) if self.profile != "spiffe" => {
                errors.push(
                    format_args!("{key}.trust_domain"),
                    "only for profile \"spiffe\"",
                );
                Profile::Oidc
            }
            (other, _) => {
                errors.push(
                    format_args!("{key}.profile"),
                    format_args!("{other:?} is not \"oidc\", \"spiffe\" or \"kubernetes\""),
                );
                Profile::Oidc
            }
        }
    }
}
