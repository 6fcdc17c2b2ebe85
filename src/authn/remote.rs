//! Remote signing keys: the identity provider's JWKS (`auth.jwt.jwks_url`, or the
//! `jwks_uri` that OpenID Connect discovery names), kept fresh off the request path.
//!
//! Where it sits: the JWT verifier (`jwt.rs`) reads [`RemoteKeys::usable`] per request —
//! one `ArcSwap` load, no lock, no I/O. A background task on the admin runtime
//! ([`RemoteKeys::run`]) fetches at start (datagate is not ready until it has), then on a
//! schedule that honours `Cache-Control: max-age` within `jwks_refresh.min_interval ..
//! max_interval`; after a failure it retries every `retry_interval`. The only fetch a
//! request can cause is the kid-miss refetch ([`RemoteKeys::refetch_for_unknown_kid`]):
//! at most one per `kid_miss_min_interval` for the whole process, performed by the same
//! background task, and waited for at most `fetch_timeout`.
//!
//! Failure handling, fail closed: a fetch that fails (unreachable, non-200, not a JWKS,
//! no usable key) leaves the last good set serving; once that set is older than
//! `max_stale`, tokens it would verify are refused ([`AuthnError::KeysUnavailable`]) and
//! [`RemoteKeys::readiness`] says why. A set that no longer holds a key takes it out of
//! service at the refresh that fetched it (cached verifications included: they carry the
//! set's generation).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::config::{JwksRefreshConfig, JwtConfig, check_fetch_url};
use super::error::AuthnError;
use super::fetch::{FetchError, IdpClient};
use super::jwt::KeySet;
use super::keys::parse_remote_jwks;
use crate::metrics::Metrics;

/// The age gauge is brought up to date at least this often.
const AGE_GAUGE_PERIOD: Duration = Duration::from_secs(5);
const NEVER: u64 = u64::MAX;

/// Where the JWKS URL comes from.
#[derive(Debug, Clone)]
enum KeySource {
    Url(url::Url),
    /// `{issuer}/.well-known/openid-configuration` names it.
    Discovery {
        issuer: String,
    },
}

/// The parts of an OpenID Provider's metadata datagate uses (OIDC Discovery 1.0 §3).
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

/// One fetched key set and when it was last confirmed current.
pub(crate) struct FetchedKeys {
    pub(crate) set: Arc<KeySet>,
    /// Increases whenever the fetched content changes.
    pub(crate) generation: u64,
    fetched_at: Instant,
    digest: [u8; 32],
}

pub(crate) struct RemoteKeys {
    source: KeySource,
    /// The JWT settings the key validations are built from.
    jwt: JwtConfig,
    refresh: JwksRefreshConfig,
    client: IdpClient,
    current: ArcSwapOption<FetchedKeys>,
    discovered: ArcSwapOption<ProviderMetadata>,
    /// The last fetch failure, for `/readyz` (no URLs: they can be internal addresses).
    last_error: Mutex<Option<String>>,
    started: Instant,
    /// Milliseconds since `started` of the last kid-miss refetch ([`NEVER`] if none).
    last_kid_miss_ms: AtomicU64,
    kid_miss_in_flight: AtomicBool,
    /// Set once the background task runs; without it nobody would answer a kid miss.
    running: AtomicBool,
    wake: tokio::sync::Notify,
    /// Counts finished fetch attempts; kid-miss waiters watch it.
    attempts: tokio::sync::watch::Sender<u64>,
    metrics: OnceLock<Arc<Metrics>>,
}

impl RemoteKeys {
    /// Validates the sources and builds the HTTP client; no I/O happens here.
    pub(crate) fn new(
        jwt: &JwtConfig,
        base_dir: &std::path::Path,
    ) -> Result<Option<Arc<RemoteKeys>>, AuthnError> {
        let source = match (&jwt.jwks_url, jwt.discovery, &jwt.issuer) {
            (Some(url), _, _) => KeySource::Url(
                check_fetch_url(url)
                    .map_err(|problem| AuthnError::config("auth.jwt.jwks_url", problem))?,
            ),
            (None, true, Some(issuer)) => KeySource::Discovery {
                issuer: issuer.clone(),
            },
            _ => return Ok(None),
        };
        let ca_file = jwt.ca_file.as_ref().map(|path| base_dir.join(path));
        let client = IdpClient::new(jwt.jwks_refresh.fetch_timeout, true, ca_file.as_deref())
            .map_err(|problem| AuthnError::config("auth.jwt.ca_file", problem))?;
        Ok(Some(Arc::new(RemoteKeys {
            source,
            jwt: jwt.clone(),
            refresh: jwt.jwks_refresh.clone(),
            client,
            current: ArcSwapOption::empty(),
            discovered: ArcSwapOption::empty(),
            last_error: Mutex::new(None),
            started: Instant::now(),
            last_kid_miss_ms: AtomicU64::new(NEVER),
            kid_miss_in_flight: AtomicBool::new(false),
            running: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            attempts: tokio::sync::watch::channel(0).0,
            metrics: OnceLock::new(),
        })))
    }

    /// The serving key set, or why there is none: never fetched, or older than
    /// `max_stale` (the IdP has been unreachable that long).
    pub(crate) fn usable(&self) -> Result<Arc<FetchedKeys>, AuthnError> {
        self.usable_at(Instant::now())
    }

    fn usable_at(&self, now: Instant) -> Result<Arc<FetchedKeys>, AuthnError> {
        let keys = self
            .current
            .load_full()
            .ok_or(AuthnError::KeysUnavailable)?;
        if now.saturating_duration_since(keys.fetched_at) > self.refresh.max_stale {
            return Err(AuthnError::KeysUnavailable);
        }
        Ok(keys)
    }

    /// `Err(reason)` while tokens from the IdP cannot be verified.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        let last_error = self.last_error.lock().clone();
        let why = |prefix: &str| match &last_error {
            Some(error) => format!("{prefix}: {error}"),
            None => prefix.to_string(),
        };
        match self.current.load_full() {
            None => Err(why("the identity provider's JWKS has not been fetched yet")),
            Some(keys) if keys.fetched_at.elapsed() > self.refresh.max_stale => Err(why(&format!(
                "the identity provider's JWKS was last fetched {} s ago, beyond max_stale; tokens are refused",
                keys.fetched_at.elapsed().as_secs()
            ))),
            Some(_) => Ok(()),
        }
    }

    /// The provider metadata read by discovery, once it has been.
    pub(crate) fn provider_metadata(&self) -> Option<Arc<ProviderMetadata>> {
        self.discovered.load_full()
    }

    /// Called on the request path after a token named a `kid` no key set holds. Asks the
    /// background task for a refetch — at most one per `kid_miss_min_interval` across
    /// the process; a request arriving while one runs waits for it too — and waits for
    /// it at most `fetch_timeout`. True when the key set changed, so verifying again
    /// may succeed.
    pub(crate) async fn refetch_for_unknown_kid(&self) -> bool {
        if !self.running.load(Ordering::SeqCst) {
            return false;
        }
        let generation_before = self.generation();
        let mut attempts = self.attempts.subscribe();
        let seen = *attempts.borrow_and_update();
        if self.kid_miss_in_flight.load(Ordering::SeqCst) {
            self.count_kid_miss("waited");
        } else {
            let now_ms = self.started.elapsed().as_millis() as u64;
            let last = self.last_kid_miss_ms.load(Ordering::SeqCst);
            let interval_ms = self.refresh.kid_miss_min_interval.as_millis() as u64;
            let allowed = last == NEVER || now_ms.saturating_sub(last) >= interval_ms;
            if !allowed
                || self
                    .last_kid_miss_ms
                    .compare_exchange(last, now_ms, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
            {
                self.count_kid_miss("rate_limited");
                return false;
            }
            self.kid_miss_in_flight.store(true, Ordering::SeqCst);
            self.count_kid_miss("refetched");
            self.wake.notify_one();
        }
        let wait = async {
            while *attempts.borrow_and_update() == seen {
                if attempts.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(self.refresh.fetch_timeout, wait).await;
        self.generation() != generation_before
    }

    fn generation(&self) -> u64 {
        self.current
            .load()
            .as_ref()
            .map_or(0, |keys| keys.generation)
    }

    fn count_kid_miss(&self, result: &str) {
        if let Some(metrics) = self.metrics.get() {
            metrics.jwks_kid_misses.with_label_values(&[result]).inc();
        }
    }

    /// The background task: fetch now, then on schedule or on a kid miss, forever.
    pub(crate) async fn run(self: Arc<Self>, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
        self.running.store(true, Ordering::SeqCst);
        let mut trigger = "startup";
        loop {
            let delay = self.fetch_and_install(trigger).await;
            self.kid_miss_in_flight.store(false, Ordering::SeqCst);
            self.attempts.send_modify(|count| *count += 1);
            let due = Instant::now() + delay;
            trigger = loop {
                self.update_age_gauge();
                let now = Instant::now();
                if now >= due {
                    break "scheduled";
                }
                let step = due.saturating_duration_since(now).min(AGE_GAUGE_PERIOD);
                tokio::select! {
                    _ = tokio::time::sleep(step) => {}
                    _ = self.wake.notified() => break "kid_miss",
                }
            };
        }
    }

    /// One fetch, for commands that run no background refresh (`check`, `explain`):
    /// `Ok` when a usable key set is installed afterwards, else why not.
    pub(crate) async fn fetch_once(&self) -> Result<(), String> {
        self.fetch_and_install("startup").await;
        self.readiness()
    }

    fn update_age_gauge(&self) {
        if let (Some(metrics), Some(keys)) = (self.metrics.get(), self.current.load_full()) {
            metrics
                .jwks_key_set_age_seconds
                .set(keys.fetched_at.elapsed().as_secs_f64());
        }
    }

    /// One fetch; installs the set when it is good. Returns when to fetch next.
    async fn fetch_and_install(&self, trigger: &str) -> Duration {
        let result = self.fetch().await;
        let metrics = self.metrics.get();
        match result {
            Ok((body, max_age)) => match self.install(&body, Instant::now()) {
                Ok(changed) => {
                    *self.last_error.lock() = None;
                    if let Some(metrics) = metrics {
                        let result = if changed { "updated" } else { "unchanged" };
                        metrics
                            .jwks_fetches
                            .with_label_values(&[trigger, result])
                            .inc();
                        if let Some(keys) = self.current.load_full() {
                            metrics.jwks_keys.set(keys.set.len() as i64);
                        }
                    }
                    return next_refresh(max_age, &self.refresh);
                }
                Err(error) => self.record_failure(trigger, &error),
            },
            Err(error) => self.record_failure(trigger, &error),
        }
        self.refresh.retry_interval
    }

    fn record_failure(&self, trigger: &str, error: &FetchError) {
        tracing::warn!(trigger, %error, "fetching the identity provider's JWKS failed; the last good key set keeps serving until max_stale");
        *self.last_error.lock() = Some(error.to_string());
        // A discovery document may have moved the JWKS; read it again next time.
        self.discovered.store(None);
        if let Some(metrics) = self.metrics.get() {
            metrics
                .jwks_fetches
                .with_label_values(&[trigger, "failed"])
                .inc();
            metrics
                .jwks_fetch_failures
                .with_label_values(&[error.reason()])
                .inc();
        }
    }

    /// Parses and swaps in a fetched JWKS. `Ok(true)` when its content changed.
    pub(crate) fn install(&self, body: &[u8], now: Instant) -> Result<bool, FetchError> {
        let digest: [u8; 32] = Sha256::digest(body).into();
        let current = self.current.load_full();
        if let Some(current) = &current
            && current.digest == digest
        {
            self.current.store(Some(Arc::new(FetchedKeys {
                set: current.set.clone(),
                generation: current.generation,
                fetched_at: now,
                digest,
            })));
            return Ok(false);
        }
        let (loaded, skipped) = parse_remote_jwks(body, self.jwt.jwks_default_algorithm)
            .map_err(FetchError::Invalid)?;
        for problem in &skipped {
            tracing::warn!(%problem, "a key in the identity provider's JWKS is skipped");
        }
        let set = KeySet::new(&self.jwt, loaded, "auth.jwt.jwks_url")
            .map_err(|error| FetchError::Invalid(error.to_string()))?;
        if set.is_empty() {
            return Err(FetchError::Invalid("it holds no usable signing key".into()));
        }
        let generation = current.as_ref().map_or(1, |keys| keys.generation + 1);
        self.current.store(Some(Arc::new(FetchedKeys {
            set: Arc::new(set),
            generation,
            fetched_at: now,
            digest,
        })));
        Ok(true)
    }

    /// GETs the JWKS (after discovery when configured): its body and `max-age`.
    async fn fetch(&self) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        let url = match &self.source {
            KeySource::Url(url) => url.clone(),
            KeySource::Discovery { issuer } => {
                let metadata = match self.discovered.load_full() {
                    Some(metadata) => metadata,
                    None => {
                        let metadata = Arc::new(self.discover(issuer).await?);
                        self.discovered.store(Some(metadata.clone()));
                        metadata
                    }
                };
                check_fetch_url(&metadata.jwks_uri)
                    .map_err(|problem| FetchError::Discovery(format!("jwks_uri {problem}")))?
            }
        };
        self.get(url).await
    }

    async fn discover(&self, issuer: &str) -> Result<ProviderMetadata, FetchError> {
        let url = discovery_url(issuer).map_err(FetchError::Discovery)?;
        let (body, _) = self.get(url).await.map_err(|error| match error {
            FetchError::Invalid(problem) => FetchError::Discovery(problem),
            other => other,
        })?;
        parse_provider_metadata(&body, issuer).map_err(FetchError::Discovery)
    }

    async fn get(&self, url: url::Url) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        let response = self.client.get(&url).await?;
        if response.status != 200 {
            return Err(FetchError::Status(response.status));
        }
        let max_age = response
            .headers
            .get(http::header::CACHE_CONTROL)
            .and_then(|value| value.to_str().ok())
            .and_then(cache_max_age);
        Ok((response.body, max_age))
    }
}

/// OIDC Discovery 1.0 §4: the metadata lives under the issuer's path.
pub(crate) fn discovery_url(issuer: &str) -> Result<url::Url, String> {
    let base = issuer.trim_end_matches('/');
    check_fetch_url(&format!("{base}/.well-known/openid-configuration"))
}

/// The metadata, whose `issuer` must be exactly the configured one (OIDC Discovery §4.3:
/// otherwise another provider's metadata could be served in its place).
pub(crate) fn parse_provider_metadata(
    body: &[u8],
    issuer: &str,
) -> Result<ProviderMetadata, String> {
    let metadata: ProviderMetadata = serde_json::from_slice(body)
        .map_err(|error| format!("the provider metadata is not valid: {error}"))?;
    if metadata.issuer != issuer {
        return Err(format!(
            "the provider metadata names issuer `{}`, not the configured `{issuer}`",
            metadata.issuer
        ));
    }
    Ok(metadata)
}

/// `max-age` from a `Cache-Control` value; `no-cache`/`no-store` count as zero (the
/// lower bound then applies).
pub(crate) fn cache_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',') {
        let directive = directive.trim();
        let (name, argument) = directive.split_once('=').unwrap_or((directive, ""));
        let name = name.trim();
        if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
            return Some(Duration::ZERO);
        }
        if name.eq_ignore_ascii_case("max-age")
            && let Ok(seconds) = argument.trim().trim_matches('"').parse::<u64>()
        {
            max_age = Some(Duration::from_secs(seconds));
        }
    }
    max_age
}

/// When to refresh after a good fetch: the response's `max-age` (or the configured
/// interval without one), clamped into `min_interval ..= max_interval`.
pub(crate) fn next_refresh(max_age: Option<Duration>, refresh: &JwksRefreshConfig) -> Duration {
    max_age
        .unwrap_or(refresh.interval)
        .clamp(refresh.min_interval, refresh.max_interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt_config(yaml: &str) -> JwtConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    // An RSA public JWK (RFC 7517 appendix A.1 key), pinned to RS256.
    const RSA_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    fn jwks(kids: &[&str]) -> Vec<u8> {
        let keys: Vec<_> = kids
            .iter()
            .map(|kid| serde_json::json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": RSA_N, "e": "AQAB"}))
            .collect();
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
    }

    fn remote(extra: &str) -> Arc<RemoteKeys> {
        RemoteKeys::new(
            &jwt_config(&format!("jwks_url: https://idp.example/jwks\n{extra}")),
            std::path::Path::new("."),
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn nothing_is_usable_before_the_first_fetch() {
        let keys = remote("");
        assert!(matches!(keys.usable(), Err(AuthnError::KeysUnavailable)));
        let reason = keys.readiness().unwrap_err();
        assert!(reason.contains("not been fetched"), "{reason}");
    }

    #[test]
    fn the_last_good_set_serves_until_max_stale_then_is_refused() {
        let keys = remote("jwks_refresh: {max_stale: 2h}\n");
        let fetched = Instant::now();
        assert_eq!(keys.install(&jwks(&["a"]), fetched), Ok(true));
        assert!(keys.usable_at(fetched + Duration::from_secs(3600)).is_ok());
        assert!(matches!(
            keys.usable_at(fetched + Duration::from_secs(7201)),
            Err(AuthnError::KeysUnavailable)
        ));
    }

    #[test]
    fn a_changed_set_gets_a_new_generation_and_an_unchanged_one_keeps_it() {
        let keys = remote("");
        let now = Instant::now();
        keys.install(&jwks(&["a"]), now).unwrap();
        assert_eq!(keys.generation(), 1);
        assert_eq!(keys.install(&jwks(&["a"]), now), Ok(false));
        assert_eq!(keys.generation(), 1);
        keys.install(&jwks(&["b"]), now).unwrap();
        assert_eq!(keys.generation(), 2);
        let current = keys.usable().unwrap();
        assert!(current.set.contains_kid("b"));
        assert!(!current.set.contains_kid("a"));
    }

    #[test]
    fn a_bad_set_leaves_the_good_one_serving() {
        let keys = remote("");
        let now = Instant::now();
        keys.install(&jwks(&["a"]), now).unwrap();
        for bad in [
            &b"not json"[..],
            br#"{"keys": []}"#,
            br#"{"keys": [{"kty": "oct", "alg": "HS256", "k": "c2VjcmV0"}]}"#,
            br#"{"keys": [], "keys": []}"#,
        ] {
            assert!(
                matches!(keys.install(bad, now), Err(FetchError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(keys.install(&jwks(&["a", "a"]), now).is_err());
        assert!(keys.usable().unwrap().set.contains_kid("a"));
    }

    #[test]
    fn keys_without_alg_use_the_default_algorithm_or_are_skipped() {
        let body = serde_json::to_vec(&serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "entra", "n": RSA_N, "e": "AQAB"}
        ]}))
        .unwrap();
        assert!(remote("").install(&body, Instant::now()).is_err());
        let keys = remote("jwks_default_algorithm: RS256\n");
        keys.install(&body, Instant::now()).unwrap();
        assert!(keys.usable().unwrap().set.contains_kid("entra"));
    }

    #[test]
    fn max_age_is_honoured_within_bounds() {
        let refresh = JwksRefreshConfig::default();
        assert_eq!(
            cache_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(cache_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(cache_max_age("public"), None);
        assert_eq!(
            next_refresh(Some(Duration::from_secs(300)), &refresh),
            Duration::from_secs(300)
        );
        assert_eq!(
            next_refresh(Some(Duration::from_secs(1)), &refresh),
            refresh.min_interval
        );
        assert_eq!(
            next_refresh(Some(Duration::from_secs(86_400)), &refresh),
            refresh.max_interval
        );
        assert_eq!(next_refresh(None, &refresh), refresh.interval);
    }

    #[test]
    fn discovery_metadata_must_name_the_configured_issuer() {
        let body = br#"{"issuer": "https://idp.example", "jwks_uri": "https://idp.example/jwks"}"#;
        assert!(parse_provider_metadata(body, "https://idp.example").is_ok());
        let error = parse_provider_metadata(body, "https://other.example").unwrap_err();
        assert!(error.contains("not the configured"), "{error}");
        assert_eq!(
            discovery_url("https://idp.example/realms/x/")
                .unwrap()
                .as_str(),
            "https://idp.example/realms/x/.well-known/openid-configuration"
        );
        assert!(discovery_url("http://idp.example").is_err());
    }

    #[test]
    fn urls_must_be_https_or_loopback_http() {
        for good in [
            "https://idp.example/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://[::1]/jwks",
            "http://localhost/jwks",
        ] {
            assert!(check_fetch_url(good).is_ok(), "{good}");
        }
        for bad in [
            "http://idp.example/jwks",
            "http://10.0.0.1/jwks",
            "ftp://127.0.0.1/jwks",
            "https://user:pw@idp.example/jwks",
            "not a url",
        ] {
            assert!(check_fetch_url(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn without_the_background_task_a_kid_miss_does_not_wait() {
        let keys = remote("");
        assert!(!keys.refetch_for_unknown_kid().await);
    }
}
