//! Authentication: the first stage of the request path.
//!
//! `accept → authenticate(headers) → Principal → resolve route → … → authorize`.
//! [`Authenticator::authenticate`] turns the `Authorization` header and the API-key header
//! into a [`Principal`]: a JWT user, an API-key service account, or the anonymous
//! principal. It never touches the network or the file system; every key, digest and
//! validation rule is prepared once by [`Authenticator::from_config`].
//!
//! Which credential is used:
//! - nothing presented → anonymous principal when `auth.anonymous.enabled`, else
//!   [`AuthnError::MissingCredentials`];
//! - both headers presented → refused (ambiguous identity);
//! - API-key header → API key;
//! - `Authorization: Bearer <value>` → a JWT when the value contains a `.` (or when no API
//!   keys are configured), otherwise an API key.
//!
//! JWT rules (see `jwt.rs` for key selection): the algorithm is pinned per key; `exp` is
//! required, `nbf` checked when present, `iss`/`aud` required and checked when configured,
//! all with `auth.jwt.leeway_seconds`. All cryptography and JWS parsing is jsonwebtoken's.
//! Verified tokens are remembered (bounded, `exp` enforced on every hit; see `cache.rs`)
//! because asymmetric verification dominates the per-request cost.
//!
//! Keys: configured ones (`keys`, `jwks_file`, read at start) and the identity provider's
//! JWKS (`jwks_url` or OIDC discovery), which a background task keeps fresh
//! (`remote.rs`); the request path only ever reads the current set, except for the one
//! bounded, rate-limited refetch after an unknown `kid` ([`Authenticator::refetch_for_unknown_kid`]).

mod api_key;
mod cache;
mod claims;
mod config;
mod credentials;
mod error;
pub(crate) mod fetch;
mod jwt;
mod keys;
mod mint;
mod oidc;
mod remote;
mod session;
mod sources;

use std::path::Path;
use std::sync::Arc;

pub use api_key::api_key_digest;
pub use claims::service_account;
pub use config::{
    AnonymousConfig, ApiKeyConfig, ApiKeysConfig, AuthConfig, ClaimMapping, DEFAULT_API_KEY_HEADER,
    DEFAULT_LEEWAY_SECONDS, JwksRefreshConfig, JwtConfig, JwtKeyConfig, MAX_LEEWAY_SECONDS,
    MIN_HMAC_SECRET_BYTES,
};
pub use credentials::MAX_CREDENTIAL_BYTES;
pub use error::{AuthnError, ConfigError, Malformed};
pub(crate) use fetch::https_connector;
pub use jsonwebtoken::Algorithm;
pub use jwt::MAX_KEYS_TRIED_WITHOUT_KID;
pub use keys::EnvLookup;
pub use mint::{MintRequest, mint_token, mint_token_with_env};
pub use oidc::{BrowserEndpoint, OidcConfig, SessionConfig, SyntheticResponse};
pub use remote::ProviderMetadata;
pub use sources::check_same_origin;
pub use sources::{PresentedCredential, TokenSourceConfig, TokenSources, UpstreamCredentialEdits};

use crate::principal::Principal;
use api_key::ApiKeyTable;
use credentials::{Presented, looks_like_jwt, presented};
use jwt::JwtVerifier;

/// Service-account tokens minted by the admin API start with this, so they are told
/// apart from JWTs and configured API keys without trying each.
pub const SERVICE_ACCOUNT_TOKEN_PREFIX: &str = "dgsa_";

/// The internal scheme under which the session cookie reaches
/// [`Authenticator::authenticate_with_tokens`]. It starts with a NUL byte, which no HTTP
/// header value can hold, so a client can never present it as an `Authorization` header.
const SESSION_SCHEME: &str = "\u{0}session ";

/// Looks a presented service-account token up (in the serving policy snapshot).
pub type ServiceAccountTokens<'a> = &'a dyn Fn(&str) -> Result<Principal, AuthnError>;

/// Built once per config (re)load; immutable and shared across request threads.
pub struct Authenticator {
    /// The anonymous caller, built once and shared by every request without credentials
    /// (the decision layer recognises a shared caller and reuses its enrichment).
    anonymous: Option<Arc<Principal>>,
    jwt: Option<JwtVerifier>,
    api_keys: ApiKeyTable,
    api_key_header: String,
    sources: TokenSources,
    browser: Option<oidc::BrowserLogin>,
    /// `auth.jwt.issuer`, for ID tokens.
    issuer: Option<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material stays out of logs; only the shape is shown.
        formatter
            .debug_struct("Authenticator")
            .field("anonymous", &self.anonymous)
            .field("jwt", &self.jwt.is_some())
            .field("api_key_header", &self.api_key_header)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Validates `config`, reads secrets (`secret_env` from the process environment) and
    /// key files (relative to `base_dir`, the config file's directory).
    pub fn from_config(config: &AuthConfig, base_dir: &Path) -> Result<Self, AuthnError> {
        Self::from_config_with_env(config, base_dir, &|name| std::env::var(name).ok())
    }

    /// [`Authenticator::from_config`] with an explicit environment lookup.
    pub fn from_config_with_env(
        config: &AuthConfig,
        base_dir: &Path,
        env: EnvLookup<'_>,
    ) -> Result<Self, AuthnError> {
        config.validate()?;
        let jwt = match &config.jwt {
            Some(jwt) => Some(JwtVerifier::new(
                jwt,
                keys::load_keys(jwt, base_dir, env)?,
                remote::RemoteKeys::new(jwt, base_dir)?,
            )?),
            None => None,
        };
        let browser = match &config.oidc {
            Some(oidc_config) => {
                let fetch_timeout = config
                    .jwt
                    .as_ref()
                    .map_or(std::time::Duration::from_secs(5), |jwt| {
                        jwt.jwks_refresh.fetch_timeout
                    });
                let ca_file = config
                    .jwt
                    .as_ref()
                    .and_then(|jwt| jwt.ca_file.as_ref())
                    .map(|path| base_dir.join(path));
                Some(oidc::BrowserLogin::new(
                    oidc_config,
                    fetch_timeout,
                    ca_file.as_deref(),
                    base_dir,
                    env,
                )?)
            }
            None => None,
        };
        let mut sources = TokenSources::new(&config.token_sources, config.api_key_header())?;
        if let Some(browser) = &browser {
            sources = sources.with_own_cookies(browser.own_cookies());
        }
        Ok(Authenticator {
            browser,
            issuer: config.jwt.as_ref().and_then(|jwt| jwt.issuer.clone()),
            sources,
            anonymous: config
                .anonymous
                .enabled
                .then(|| Arc::new(Principal::anonymous(config.anonymous.roles.clone()))),
            jwt,
            api_keys: ApiKeyTable::new(config.api_keys.as_ref())?,
            api_key_header: config.api_key_header().to_string(),
        })
    }

    /// `authorization`: the `Authorization` header value, if any; `api_key`: the value of
    /// the header named by [`Authenticator::api_key_header`], if any.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        api_key: Option<&str>,
    ) -> Result<Principal, AuthnError> {
        self.authenticate_with_tokens(authorization, api_key, &|_| Err(AuthnError::UnknownApiKey))
            .map(Arc::unwrap_or_clone)
    }

    /// [`Authenticator::authenticate`], where a credential that starts with
    /// [`SERVICE_ACCOUNT_TOKEN_PREFIX`] (as `Bearer` or in the API-key header) is a
    /// service-account token from the grants store, looked up by `tokens`.
    pub fn authenticate_with_tokens(
        &self,
        authorization: Option<&str>,
        api_key: Option<&str>,
        tokens: ServiceAccountTokens<'_>,
    ) -> Result<Arc<Principal>, AuthnError> {
        if let Some(sealed) = authorization.and_then(|value| value.strip_prefix(SESSION_SCHEME)) {
            return self.session_principal(sealed).map(Arc::new);
        }
        match presented(authorization, api_key)? {
            Presented::ApiKey(token) | Presented::Bearer(token)
                if token.starts_with(SERVICE_ACCOUNT_TOKEN_PREFIX) =>
            {
                tokens(token).map(Arc::new)
            }
            Presented::Nothing => self.anonymous.clone().ok_or(AuthnError::MissingCredentials),
            Presented::ApiKey(key) => self.api_keys.authenticate(key).map(Arc::new),
            Presented::Bearer(value) if !looks_like_jwt(value) && !self.api_keys.is_empty() => {
                self.api_keys.authenticate(value).map(Arc::new)
            }
            Presented::Bearer(token) => match &self.jwt {
                Some(verifier) => verifier.verify(token),
                None => Err(AuthnError::UnknownKey),
            },
        }
    }

    /// Starts the background task that fetches and refreshes the identity provider's
    /// JWKS (`auth.jwt.jwks_url` or discovery), on the current tokio runtime. Without
    /// remote keys this does nothing. Call once, at start.
    pub fn start_key_refresh(&self, metrics: std::sync::Arc<crate::metrics::Metrics>) {
        if let Some(remote) = self.remote_keys() {
            tokio::spawn(remote.clone().run(metrics));
        }
    }

    /// Fetches the identity provider's keys once, for commands without the background
    /// refresh (`check`, `explain`). `Ok(false)` when no remote keys are configured.
    pub async fn fetch_remote_keys_once(&self) -> Result<bool, String> {
        match self.remote_keys() {
            Some(remote) => remote.fetch_once().await.map(|()| true),
            None => Ok(false),
        }
    }

    /// After [`AuthnError::UnknownKey`]: a bounded, rate-limited refetch of the remote
    /// JWKS. True when the key set changed (authenticate again); false at once without
    /// remote keys or when the rate limit says no.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        match self.remote_keys() {
            Some(remote) => remote.refetch_for_unknown_kid().await,
            None => false,
        }
    }

    /// `Err(reason)` while datagate cannot verify the identity provider's tokens (the
    /// JWKS was never fetched, or is older than `max_stale`); `/readyz` reports it.
    pub fn readiness(&self) -> Result<(), String> {
        self.remote_keys()
            .map_or(Ok(()), |remote| remote.readiness())
    }

    /// The identity provider's metadata, once discovery has read it.
    pub fn provider_metadata(&self) -> Option<std::sync::Arc<ProviderMetadata>> {
        self.remote_keys()
            .and_then(|remote| remote.provider_metadata())
    }

    fn remote_keys(&self) -> Option<&std::sync::Arc<remote::RemoteKeys>> {
        self.jwt.as_ref().and_then(|jwt| jwt.remote())
    }

    /// The credential a request presents: the first token source that holds one, else
    /// (with `auth.oidc`) the session cookie. A cookie-borne credential on a
    /// state-changing request must pass the same-origin check.
    pub fn presented(
        &self,
        method: &str,
        headers: &http::HeaderMap,
    ) -> Result<PresentedCredential, AuthnError> {
        let mut presented = self.sources.presented(headers)?;
        if presented.authorization.is_none()
            && let Some(browser) = &self.browser
            && let Some(sealed) = sources::cookie_value(headers, browser.session_cookie_name())?
        {
            presented = PresentedCredential {
                authorization: Some(format!("{SESSION_SCHEME}{sealed}")),
                cookie_borne: true,
            };
        }
        if presented.cookie_borne {
            check_same_origin(
                method,
                headers,
                self.browser.as_ref().map(|browser| browser.public_origin()),
            )?;
        }
        Ok(presented)
    }

    /// Claims as a verified token would carry them → the principal, by `auth.jwt.claims`
    /// (the default mapping without `auth.jwt`). For `datagate test`, which states its
    /// callers instead of presenting tokens; no credential reaches this.
    pub fn principal_from_claims(
        &self,
        claims: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Principal, AuthnError> {
        match &self.jwt {
            Some(jwt) => jwt.principal_from_session(claims),
            None => claims::principal_from_claims(
                serde_json::Value::Object(claims),
                &ClaimMapping::default(),
            ),
        }
    }

    fn session_principal(&self, sealed: &str) -> Result<Principal, AuthnError> {
        let (Some(browser), Some(jwt)) = (&self.browser, &self.jwt) else {
            return Err(AuthnError::SessionInvalid);
        };
        let claims = browser.open_session(sealed, jsonwebtoken::get_current_timestamp())?;
        jwt.principal_from_session(claims)
    }

    /// Whether `path` is one of datagate's own browser endpoints (callback, logout).
    pub fn browser_endpoint(&self, path: &str) -> Option<BrowserEndpoint> {
        self.browser.as_ref()?.endpoint(path)
    }

    /// Answers the callback or the logout. Errors are refusals (rendered as JSON).
    pub async fn answer_browser_endpoint(
        &self,
        endpoint: BrowserEndpoint,
        query: Option<&str>,
        headers: &http::HeaderMap,
    ) -> Result<SyntheticResponse, AuthnError> {
        let Some(browser) = &self.browser else {
            return Err(AuthnError::Login(
                "browser sign-in is not configured".into(),
            ));
        };
        let metadata = self.provider_metadata();
        match endpoint {
            BrowserEndpoint::Logout => Ok(browser.logout(metadata.as_deref())),
            BrowserEndpoint::Callback => {
                let metadata = metadata.ok_or(AuthnError::KeysUnavailable)?;
                let login_cookie = sources::cookie_value(headers, browser.login_cookie_name())?;
                let (Some(jwt), Some(issuer)) = (&self.jwt, &self.issuer) else {
                    return Err(AuthnError::Login(
                        "browser sign-in is not configured".into(),
                    ));
                };
                let verify =
                    |token: &str, client_id: &str| jwt.verify_id_token(token, issuer, client_id);
                browser
                    .callback(
                        &metadata,
                        query,
                        login_cookie.as_deref(),
                        &verify,
                        jsonwebtoken::get_current_timestamp(),
                    )
                    .await
            }
        }
    }

    /// For a request refused for lack of (valid) credentials: the redirect to sign in,
    /// when it comes from a browser (see [`oidc::BrowserLogin::wants_sign_in`]).
    /// `return_to` is the request's path and query.
    pub fn sign_in_redirect(
        &self,
        method: &str,
        path: &str,
        return_to: &str,
        headers: &http::HeaderMap,
    ) -> Option<SyntheticResponse> {
        let browser = self.browser.as_ref()?;
        let accept = headers
            .get(http::header::ACCEPT)
            .and_then(|value| value.to_str().ok());
        if !browser.wants_sign_in(method, path, accept) {
            return None;
        }
        let metadata = self.provider_metadata()?;
        browser
            .start(&metadata, return_to, jsonwebtoken::get_current_timestamp())
            .ok()
    }

    /// Where tokens are read from, and what the upstream must not see of them.
    pub fn token_sources(&self) -> &TokenSources {
        &self.sources
    }

    /// The header API keys are read from (default `X-API-Key`).
    pub fn api_key_header(&self) -> &str {
        &self.api_key_header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn authenticator_is_shareable_across_threads() {
        assert_send_sync::<Authenticator>();
    }

    #[test]
    fn anonymous_is_off_unless_enabled() {
        let authenticator =
            Authenticator::from_config(&AuthConfig::default(), Path::new(".")).unwrap();
        assert_eq!(
            authenticator.authenticate(None, None),
            Err(AuthnError::MissingCredentials)
        );
        assert_eq!(authenticator.api_key_header(), "X-API-Key");
    }

    #[test]
    fn jwt_without_jwt_config_is_an_unknown_key() {
        let authenticator =
            Authenticator::from_config(&AuthConfig::default(), Path::new(".")).unwrap();
        assert_eq!(
            authenticator.authenticate(Some("Bearer a.b.c"), None),
            Err(AuthnError::UnknownKey)
        );
    }
}
