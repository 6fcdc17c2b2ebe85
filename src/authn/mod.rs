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

mod api_key;
mod cache;
mod claims;
mod config;
mod credentials;
mod error;
mod jwt;
mod keys;
mod mint;

use std::path::Path;

pub use api_key::api_key_digest;
pub use claims::service_account;
pub use config::{
    AnonymousConfig, ApiKeyConfig, ApiKeysConfig, AuthConfig, ClaimMapping, DEFAULT_API_KEY_HEADER,
    DEFAULT_LEEWAY_SECONDS, JwtConfig, JwtKeyConfig, MAX_LEEWAY_SECONDS, MIN_HMAC_SECRET_BYTES,
};
pub use credentials::MAX_CREDENTIAL_BYTES;
pub use error::{AuthnError, ConfigError, Malformed};
pub use jsonwebtoken::Algorithm;
pub use jwt::MAX_KEYS_TRIED_WITHOUT_KID;
pub use keys::EnvLookup;
pub use mint::{MintRequest, mint_token, mint_token_with_env};

use crate::principal::Principal;
use api_key::ApiKeyTable;
use credentials::{Presented, looks_like_jwt, presented};
use jwt::JwtVerifier;

/// Service-account tokens minted by the admin API start with this, so they are told
/// apart from JWTs and configured API keys without trying each.
pub const SERVICE_ACCOUNT_TOKEN_PREFIX: &str = "dgsa_";

/// Looks a presented service-account token up (in the serving policy snapshot).
pub type ServiceAccountTokens<'a> = &'a dyn Fn(&str) -> Result<Principal, AuthnError>;

/// Built once per config (re)load; immutable and shared across request threads.
pub struct Authenticator {
    anonymous_roles: Option<Vec<String>>,
    jwt: Option<JwtVerifier>,
    api_keys: ApiKeyTable,
    api_key_header: String,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material stays out of logs; only the shape is shown.
        formatter
            .debug_struct("Authenticator")
            .field("anonymous_roles", &self.anonymous_roles)
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
            Some(jwt) => Some(JwtVerifier::new(jwt, keys::load_keys(jwt, base_dir, env)?)?),
            None => None,
        };
        Ok(Authenticator {
            anonymous_roles: config
                .anonymous
                .enabled
                .then(|| config.anonymous.roles.clone()),
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
    }

    /// [`Authenticator::authenticate`], where a credential that starts with
    /// [`SERVICE_ACCOUNT_TOKEN_PREFIX`] (as `Bearer` or in the API-key header) is a
    /// service-account token from the grants store, looked up by `tokens`.
    pub fn authenticate_with_tokens(
        &self,
        authorization: Option<&str>,
        api_key: Option<&str>,
        tokens: ServiceAccountTokens<'_>,
    ) -> Result<Principal, AuthnError> {
        match presented(authorization, api_key)? {
            Presented::ApiKey(token) | Presented::Bearer(token)
                if token.starts_with(SERVICE_ACCOUNT_TOKEN_PREFIX) =>
            {
                tokens(token)
            }
            Presented::Nothing => self
                .anonymous_roles
                .as_ref()
                .map(|roles| Principal::anonymous(roles.clone()))
                .ok_or(AuthnError::MissingCredentials),
            Presented::ApiKey(key) => self.api_keys.authenticate(key),
            Presented::Bearer(value) if !looks_like_jwt(value) && !self.api_keys.is_empty() => {
                self.api_keys.authenticate(value)
            }
            Presented::Bearer(token) => match &self.jwt {
                Some(verifier) => verifier.verify(token),
                None => Err(AuthnError::UnknownKey),
            },
        }
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
