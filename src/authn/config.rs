//! The `auth:` section of datagate's YAML config.
//!
//! Read once at startup (and on config reload) by the lead's config loader; turned into an
//! immutable [`super::Authenticator`] by [`super::Authenticator::from_config`]. Everything
//! here is plain data plus [`AuthConfig::validate`], which checks shape and ranges without
//! touching the file system (reading secrets and keys happens in `keys.rs`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;

use super::error::AuthnError;
use crate::principal::BasicRole;

/// HMAC secrets shorter than this are refused: RFC 7518 §3.2 requires a key at least as
/// long as the hash output, and short secrets are brute-forceable offline from any token.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Clock-skew tolerance is capped: a larger leeway mostly extends stolen tokens' lifetime.
pub const MAX_LEEWAY_SECONDS: u64 = 60;
pub const DEFAULT_LEEWAY_SECONDS: u64 = 30;
pub const DEFAULT_API_KEY_HEADER: &str = "X-API-Key";
pub const DEFAULT_VERIFIED_TOKEN_CACHE_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub anonymous: AnonymousConfig,
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    #[serde(default)]
    pub api_keys: Option<ApiKeysConfig>,
    /// Where tokens are read from, in order (see `sources.rs`); default `authorization`.
    #[serde(default = "super::sources::default_token_sources")]
    pub token_sources: Vec<super::sources::TokenSourceConfig>,
    /// Browser sign-in with OpenID Connect (see `oidc.rs`); needs `jwt.issuer` with
    /// `discovery: true`.
    #[serde(default)]
    pub oidc: Option<super::oidc::OidcConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            anonymous: AnonymousConfig::default(),
            jwt: None,
            api_keys: None,
            token_sources: super::sources::default_token_sources(),
            oidc: None,
        }
    }
}

/// Callers without credentials. Disabled unless configured: a forgotten `auth:` section
/// should fail closed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnonymousConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_anonymous_roles")]
    pub roles: Vec<String>,
}

impl Default for AnonymousConfig {
    fn default() -> Self {
        AnonymousConfig {
            enabled: false,
            roles: default_anonymous_roles(),
        }
    }
}

fn default_anonymous_roles() -> Vec<String> {
    vec!["Public".to_string()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// When set, tokens must carry this `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// When set, tokens must carry an `aud` naming at least one of these. When unset,
    /// `aud` is not checked at all.
    #[serde(default)]
    pub audience: Option<Vec<String>>,
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    #[serde(default)]
    pub keys: Vec<JwtKeyConfig>,
    /// A JWKS document; every key in it must carry `alg`, which pins it.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS served by the identity provider (https, or http on a loopback address),
    /// fetched at start and kept fresh in the background (see `remote.rs`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Read `jwks_uri` from `{issuer}/.well-known/openid-configuration` (needs `issuer`).
    #[serde(default)]
    pub discovery: bool,
    /// When and how remote keys are refreshed.
    #[serde(default)]
    pub jwks_refresh: JwksRefreshConfig,
    /// PEM certificates trusted for the identity provider (discovery, JWKS, the OIDC
    /// token endpoint) besides the system's roots: an IdP behind a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The algorithm for remote JWKS keys that carry no `alg` (Entra ID omits it). Must
    /// be asymmetric and fit the key type; without it such keys are skipped.
    #[serde(default)]
    pub jwks_default_algorithm: Option<Algorithm>,
    #[serde(default)]
    pub claims: ClaimMapping,
    /// How many verified tokens to remember (0 disables the cache); see `cache.rs`.
    #[serde(default = "default_cache_entries")]
    pub verified_token_cache_entries: usize,
}

/// The refresh schedule of a remote JWKS. Durations are written `30s`, `10m`, `1h`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksRefreshConfig {
    /// Refresh interval when the response has no `Cache-Control: max-age`.
    #[serde(
        default = "default_refresh_interval",
        with = "crate::config::duration_text"
    )]
    pub interval: Duration,
    /// `max-age` is honoured, but never below this...
    #[serde(default = "default_min_refresh", with = "crate::config::duration_text")]
    pub min_interval: Duration,
    /// ...nor above this: a key the IdP removes stops verifying within it.
    #[serde(default = "default_max_refresh", with = "crate::config::duration_text")]
    pub max_interval: Duration,
    /// After a failed fetch, the next attempt comes this much later.
    #[serde(
        default = "default_retry_interval",
        with = "crate::config::duration_text"
    )]
    pub retry_interval: Duration,
    /// How long the last good key set keeps verifying while the IdP cannot be reached;
    /// after that, tokens it would verify are refused and `/readyz` reports why.
    #[serde(default = "default_max_stale", with = "crate::config::duration_text")]
    pub max_stale: Duration,
    /// A token naming an unknown `kid` triggers a refetch at most this often (a flood of
    /// made-up kids costs the IdP one request per interval).
    #[serde(
        default = "default_kid_miss_interval",
        with = "crate::config::duration_text"
    )]
    pub kid_miss_min_interval: Duration,
    /// Bound on one fetch (connect + response); also how long a request waits for a
    /// kid-miss refetch.
    #[serde(
        default = "default_fetch_timeout",
        with = "crate::config::duration_text"
    )]
    pub fetch_timeout: Duration,
}

impl Default for JwksRefreshConfig {
    fn default() -> Self {
        JwksRefreshConfig {
            interval: default_refresh_interval(),
            min_interval: default_min_refresh(),
            max_interval: default_max_refresh(),
            retry_interval: default_retry_interval(),
            max_stale: default_max_stale(),
            kid_miss_min_interval: default_kid_miss_interval(),
            fetch_timeout: default_fetch_timeout(),
        }
    }
}

fn default_refresh_interval() -> Duration {
    Duration::from_secs(600)
}
fn default_min_refresh() -> Duration {
    Duration::from_secs(60)
}
fn default_max_refresh() -> Duration {
    Duration::from_secs(3600)
}
fn default_retry_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_max_stale() -> Duration {
    Duration::from_secs(4 * 3600)
}
fn default_kid_miss_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_cache_entries() -> usize {
    DEFAULT_VERIFIED_TOKEN_CACHE_ENTRIES
}

fn default_leeway() -> u64 {
    DEFAULT_LEEWAY_SECONDS
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    #[serde(default)]
    pub kid: Option<String>,
    /// The only algorithm this key verifies; a token whose header says otherwise is
    /// rejected before any signature check.
    pub algorithm: Algorithm,
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
}

/// Where each principal field comes from in the token's claims. A name starting with `/`
/// is a JSON pointer into the claims (e.g. `/realm_access/roles` for Keycloak).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMapping {
    /// The first of these that holds a non-empty string becomes the username.
    #[serde(default = "default_username_claims")]
    pub username: Vec<String>,
    #[serde(default = "default_user_id_claim")]
    pub user_id: String,
    #[serde(default = "default_email_claim")]
    pub email: String,
    #[serde(default = "default_roles_claim")]
    pub roles: String,
    #[serde(default = "default_teams_claim")]
    pub teams: String,
    #[serde(default = "default_org_role_claim")]
    pub org_role: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        ClaimMapping {
            username: default_username_claims(),
            user_id: default_user_id_claim(),
            email: default_email_claim(),
            roles: default_roles_claim(),
            teams: default_teams_claim(),
            org_role: default_org_role_claim(),
        }
    }
}

fn default_username_claims() -> Vec<String> {
    ["preferred_username", "username", "email", "sub"]
        .into_iter()
        .map(String::from)
        .collect()
}
fn default_user_id_claim() -> String {
    "sub".to_string()
}
fn default_email_claim() -> String {
    "email".to_string()
}
fn default_roles_claim() -> String {
    "roles".to_string()
}
fn default_teams_claim() -> String {
    "teams".to_string()
}
fn default_org_role_claim() -> String {
    "org_role".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    #[serde(default = "default_api_key_header")]
    pub header: String,
    #[serde(default)]
    pub keys: Vec<ApiKeyConfig>,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        ApiKeysConfig {
            header: default_api_key_header(),
            keys: Vec::new(),
        }
    }
}

fn default_api_key_header() -> String {
    DEFAULT_API_KEY_HEADER.to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Becomes the service account's username.
    pub name: String,
    /// Hex of sha256(key); the key itself is never stored.
    pub sha256: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub teams: Vec<String>,
    #[serde(default)]
    pub org_role: Option<BasicRole>,
}

impl AuthConfig {
    /// Semantic checks that need no file system access. Errors name the key.
    pub fn validate(&self) -> Result<(), AuthnError> {
        if self.anonymous.enabled {
            check_names("auth.anonymous.roles", &self.anonymous.roles)?;
        }
        if let Some(jwt) = &self.jwt {
            jwt.validate()?;
        }
        if let Some(api_keys) = &self.api_keys {
            api_keys.validate()?;
        }
        if self.oidc.is_some()
            && !self
                .jwt
                .as_ref()
                .is_some_and(|jwt| jwt.discovery && jwt.issuer.is_some())
        {
            return Err(AuthnError::config(
                "auth.oidc",
                "needs `auth.jwt.issuer` with `discovery: true` (endpoints and keys come from the provider's metadata)",
            ));
        }
        Ok(())
    }

    /// The header carrying API keys (default `X-API-Key`).
    pub fn api_key_header(&self) -> &str {
        self.api_keys
            .as_ref()
            .map_or(DEFAULT_API_KEY_HEADER, |api_keys| api_keys.header.as_str())
    }
}

impl JwtConfig {
    fn validate(&self) -> Result<(), AuthnError> {
        if self.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(AuthnError::config(
                "auth.jwt.leeway_seconds",
                format!(
                    "`{}` is too large; must be 0..={MAX_LEEWAY_SECONDS}",
                    self.leeway_seconds
                ),
            ));
        }
        if let Some(issuer) = &self.issuer
            && issuer.trim().is_empty()
        {
            return Err(AuthnError::config(
                "auth.jwt.issuer",
                "must not be empty; remove it to skip the issuer check",
            ));
        }
        if let Some(audience) = &self.audience {
            if audience.is_empty() {
                return Err(AuthnError::config(
                    "auth.jwt.audience",
                    "must list at least one audience; remove it to skip the audience check",
                ));
            }
            check_names("auth.jwt.audience", audience)?;
        }
        self.validate_remote()?;
        if self.keys.is_empty() && self.jwks_file.is_none() && !self.has_remote_keys() {
            return Err(AuthnError::config(
                "auth.jwt.keys",
                "no verification keys: configure `keys`, `jwks_file`, `jwks_url` or `discovery` (or remove `jwt`)",
            ));
        }
        let mut kids = HashSet::new();
        for (index, key) in self.keys.iter().enumerate() {
            key.validate(&format!("auth.jwt.keys[{index}]"))?;
            if let Some(kid) = &key.kid
                && !kids.insert(kid.as_str())
            {
                return Err(AuthnError::config(
                    format!("auth.jwt.keys[{index}].kid"),
                    format!("duplicate kid `{kid}`"),
                ));
            }
        }
        self.claims.validate()
    }
}

impl JwtConfig {
    /// Whether keys come from the identity provider (a JWKS URL or discovery).
    pub fn has_remote_keys(&self) -> bool {
        self.jwks_url.is_some() || self.discovery
    }

    fn validate_remote(&self) -> Result<(), AuthnError> {
        if let Some(url) = &self.jwks_url {
            if self.discovery {
                return Err(AuthnError::config(
                    "auth.jwt.jwks_url",
                    "set `jwks_url` or `discovery: true`, not both",
                ));
            }
            check_fetch_url(url)
                .map_err(|problem| AuthnError::config("auth.jwt.jwks_url", problem))?;
        }
        if self.discovery {
            let Some(issuer) = &self.issuer else {
                return Err(AuthnError::config(
                    "auth.jwt.discovery",
                    "needs `auth.jwt.issuer` (discovery reads `{issuer}/.well-known/openid-configuration`)",
                ));
            };
            check_fetch_url(issuer)
                .map_err(|problem| AuthnError::config("auth.jwt.issuer", problem))?;
        }
        if let Some(algorithm) = self.jwks_default_algorithm
            && algorithm.family() == AlgorithmFamily::Hmac
        {
            return Err(AuthnError::config(
                "auth.jwt.jwks_default_algorithm",
                format!("{algorithm:?} is symmetric; remote keys are public keys"),
            ));
        }
        let refresh = &self.jwks_refresh;
        let zero = Duration::ZERO;
        for (key, value) in [
            ("interval", refresh.interval),
            ("min_interval", refresh.min_interval),
            ("max_interval", refresh.max_interval),
            ("retry_interval", refresh.retry_interval),
            ("max_stale", refresh.max_stale),
            ("fetch_timeout", refresh.fetch_timeout),
        ] {
            if value == zero {
                return Err(AuthnError::config(
                    format!("auth.jwt.jwks_refresh.{key}"),
                    "must be greater than zero",
                ));
            }
        }
        if !(refresh.min_interval <= refresh.interval && refresh.interval <= refresh.max_interval) {
            return Err(AuthnError::config(
                "auth.jwt.jwks_refresh",
                "needs min_interval <= interval <= max_interval",
            ));
        }
        if refresh.max_stale <= refresh.max_interval {
            return Err(AuthnError::config(
                "auth.jwt.jwks_refresh.max_stale",
                "must be longer than max_interval, or keys would go stale between two refreshes",
            ));
        }
        Ok(())
    }
}

/// Remote key material is fetched over https only; plain http is accepted for loopback
/// addresses (an IdP on the same host or in the same pod), where nobody is on the path.
pub fn check_fetch_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|error| format!("`{text}` is not a URL: {error}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{text}` must not carry credentials"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_host(&url) => Ok(url),
        "http" => Err(format!(
            "`{text}` is plain http; use https (http is accepted on loopback addresses only)"
        )),
        other => Err(format!("`{text}`: scheme `{other}` is not https")),
    }
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

impl JwtKeyConfig {
    fn validate(&self, key: &str) -> Result<(), AuthnError> {
        if let Some(kid) = &self.kid
            && kid.is_empty()
        {
            return Err(AuthnError::config(
                format!("{key}.kid"),
                "must not be empty; remove it for a key without kid",
            ));
        }
        if self.algorithm.family() == AlgorithmFamily::Hmac {
            match (&self.secret_env, &self.secret_file) {
                (Some(_), Some(_)) => {
                    return Err(AuthnError::config(
                        key,
                        "set exactly one of `secret_env` and `secret_file`, not both",
                    ));
                }
                (None, None) => {
                    return Err(AuthnError::config(
                        key,
                        format!(
                            "{:?} needs a secret: set `secret_env` or `secret_file`",
                            self.algorithm
                        ),
                    ));
                }
                (Some(name), None) if name.is_empty() => {
                    return Err(AuthnError::config(
                        format!("{key}.secret_env"),
                        "must name an environment variable",
                    ));
                }
                _ => {}
            }
            if self.public_key_file.is_some() {
                return Err(AuthnError::config(
                    format!("{key}.public_key_file"),
                    format!(
                        "{:?} is an HMAC algorithm and uses a secret",
                        self.algorithm
                    ),
                ));
            }
        } else {
            if self.public_key_file.is_none() {
                return Err(AuthnError::config(
                    key,
                    format!(
                        "{:?} needs `public_key_file` (a PEM public key)",
                        self.algorithm
                    ),
                ));
            }
            if self.secret_env.is_some() || self.secret_file.is_some() {
                return Err(AuthnError::config(
                    key,
                    format!(
                        "{:?} is asymmetric: use `public_key_file`, not a secret",
                        self.algorithm
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl ClaimMapping {
    fn validate(&self) -> Result<(), AuthnError> {
        if self.username.is_empty() {
            return Err(AuthnError::config(
                "auth.jwt.claims.username",
                "must list at least one claim",
            ));
        }
        check_names("auth.jwt.claims.username", &self.username)?;
        for (key, claim) in [
            ("auth.jwt.claims.user_id", &self.user_id),
            ("auth.jwt.claims.email", &self.email),
            ("auth.jwt.claims.roles", &self.roles),
            ("auth.jwt.claims.teams", &self.teams),
            ("auth.jwt.claims.org_role", &self.org_role),
        ] {
            if claim.is_empty() {
                return Err(AuthnError::config(key, "must name a claim"));
            }
        }
        Ok(())
    }
}

impl ApiKeysConfig {
    fn validate(&self) -> Result<(), AuthnError> {
        let header_is_token = !self.header.is_empty()
            && self
                .header
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if !header_is_token {
            return Err(AuthnError::config(
                "auth.api_keys.header",
                format!("`{}` is not a valid header name", self.header),
            ));
        }
        if self.header.eq_ignore_ascii_case("authorization") {
            return Err(AuthnError::config(
                "auth.api_keys.header",
                "must not be `Authorization`; API keys are already accepted as Bearer values there",
            ));
        }
        let mut names = HashSet::new();
        let mut digests = HashSet::new();
        for (index, api_key) in self.keys.iter().enumerate() {
            let key = format!("auth.api_keys.keys[{index}]");
            if api_key.name.trim().is_empty() {
                return Err(AuthnError::config(
                    format!("{key}.name"),
                    "must not be empty",
                ));
            }
            if !names.insert(api_key.name.as_str()) {
                return Err(AuthnError::config(
                    format!("{key}.name"),
                    format!("duplicate api key name `{}`", api_key.name),
                ));
            }
            let digest = parse_sha256_hex(&api_key.sha256).ok_or_else(|| {
                AuthnError::config(
                    format!("{key}.sha256"),
                    "must be 64 hex digits (sha256 of the key)",
                )
            })?;
            if !digests.insert(digest) {
                return Err(AuthnError::config(
                    format!("{key}.sha256"),
                    "the same key digest is configured twice",
                ));
            }
            check_names(&format!("{key}.roles"), &api_key.roles)?;
            check_names(&format!("{key}.teams"), &api_key.teams)?;
        }
        Ok(())
    }
}

pub(crate) fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text, &mut digest).ok()?;
    Some(digest)
}

/// Role, team and audience names become policy subjects or comparisons; an empty one is
/// always a typo.
fn check_names(key: &str, names: &[String]) -> Result<(), AuthnError> {
    for (index, name) in names.iter().enumerate() {
        if name.trim().is_empty() {
            return Err(AuthnError::config(
                format!("{key}[{index}]"),
                "must not be empty",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AuthConfig, serde_yaml::Error> {
        serde_yaml::from_str(yaml)
    }

    fn config_key(error: AuthnError) -> String {
        match error {
            AuthnError::Config(config) => config.key,
            other => format!("not a config error: {other}"),
        }
    }

    const HMAC_KEY: &str =
        "jwt:\n  keys:\n    - kid: a\n      algorithm: HS256\n      secret_env: SECRET\n";

    #[test]
    fn defaults_fail_closed() {
        let config = parse("{}").unwrap();
        assert!(!config.anonymous.enabled);
        assert_eq!(config.anonymous.roles, vec!["Public"]);
        assert!(config.jwt.is_none());
        assert_eq!(config.api_key_header(), "X-API-Key");
        config.validate().unwrap();
    }

    #[test]
    fn jwt_defaults() {
        let config = parse(HMAC_KEY).unwrap();
        let jwt = config.jwt.as_ref().unwrap();
        assert_eq!(jwt.leeway_seconds, 30);
        assert_eq!(
            jwt.claims.username,
            vec!["preferred_username", "username", "email", "sub"]
        );
        config.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level() {
        assert!(parse("anonymus: {}").is_err());
        assert!(parse("anonymous: {enabled: true, role: [x]}").is_err());
        assert!(parse(&format!("{HMAC_KEY}      secret: x\n")).is_err());
        assert!(parse("jwt: {keys: [], claim: {}}").is_err());
        assert!(parse("api_keys: {keys: [{name: a, sha256: b, role: []}]}").is_err());
    }

    #[test]
    fn unknown_algorithm_is_a_parse_error() {
        let error = parse("jwt: {keys: [{algorithm: none, secret_env: X}]}").unwrap_err();
        assert!(error.to_string().contains("none"), "{error}");
    }

    #[test]
    fn leeway_is_capped() {
        let config = parse(&format!("{HMAC_KEY}  leeway_seconds: 61\n")).unwrap();
        assert_eq!(
            config_key(config.validate().unwrap_err()),
            "auth.jwt.leeway_seconds"
        );
        let config = parse(&format!("{HMAC_KEY}  leeway_seconds: 60\n")).unwrap();
        config.validate().unwrap();
    }

    #[test]
    fn hmac_keys_need_exactly_one_secret_source() {
        let both = "jwt: {keys: [{algorithm: HS256, secret_env: A, secret_file: b}]}";
        let error = parse(both).unwrap().validate().unwrap_err();
        assert_eq!(config_key(error.clone()), "auth.jwt.keys[0]");
        assert!(error.to_string().contains("not both"), "{error}");
        let neither = "jwt: {keys: [{algorithm: HS512}]}";
        let error = parse(neither).unwrap().validate().unwrap_err();
        assert_eq!(config_key(error), "auth.jwt.keys[0]");
        let with_pem = "jwt: {keys: [{algorithm: HS256, secret_env: A, public_key_file: k}]}";
        let error = parse(with_pem).unwrap().validate().unwrap_err();
        assert_eq!(config_key(error), "auth.jwt.keys[0].public_key_file");
    }

    #[test]
    fn asymmetric_keys_need_a_public_key_and_no_secret() {
        let missing =
            "jwt: {keys: [{kid: a, algorithm: HS256, secret_env: A}, {algorithm: RS256}]}";
        let error = parse(missing).unwrap().validate().unwrap_err();
        assert_eq!(config_key(error), "auth.jwt.keys[1]");
        let secret = "jwt: {keys: [{algorithm: ES256, public_key_file: k, secret_env: A}]}";
        let error = parse(secret).unwrap().validate().unwrap_err();
        assert_eq!(config_key(error), "auth.jwt.keys[0]");
    }

    #[test]
    fn duplicate_kids_and_empty_key_sets_are_rejected() {
        let duplicate = "jwt: {keys: [{kid: a, algorithm: HS256, secret_env: A}, {kid: a, algorithm: HS256, secret_env: B}]}";
        let error = parse(duplicate).unwrap().validate().unwrap_err();
        assert_eq!(config_key(error), "auth.jwt.keys[1].kid");
        let empty = "jwt: {issuer: x}";
        let error = parse(empty).unwrap().validate().unwrap_err();
        assert_eq!(config_key(error), "auth.jwt.keys");
    }

    #[test]
    fn username_claim_list_must_not_be_empty() {
        let config = parse(&format!("{HMAC_KEY}  claims: {{username: []}}\n")).unwrap();
        assert_eq!(
            config_key(config.validate().unwrap_err()),
            "auth.jwt.claims.username"
        );
    }

    #[test]
    fn api_key_digests_must_be_sha256_hex() {
        let bad = "api_keys: {keys: [{name: bot, sha256: abc}]}";
        let error = parse(bad).unwrap().validate().unwrap_err();
        assert_eq!(config_key(error), "auth.api_keys.keys[0].sha256");
        let digest = "a".repeat(64);
        let good =
            format!("api_keys: {{keys: [{{name: bot, sha256: {digest}, org_role: Viewer}}]}}");
        parse(&good).unwrap().validate().unwrap();
        let duplicate = format!(
            "api_keys: {{keys: [{{name: a, sha256: {digest}}}, {{name: b, sha256: {}}}]}}",
            digest.to_uppercase()
        );
        let error = parse(&duplicate).unwrap().validate().unwrap_err();
        assert_eq!(config_key(error), "auth.api_keys.keys[1].sha256");
    }

    #[test]
    fn api_key_header_must_be_a_plain_header_name() {
        for header in ["", "X API Key", "authorization"] {
            let yaml = format!("api_keys: {{header: '{header}'}}");
            let error = parse(&yaml).unwrap().validate().unwrap_err();
            assert_eq!(config_key(error), "auth.api_keys.header", "{header}");
        }
    }

    #[test]
    fn empty_role_names_are_rejected() {
        let yaml = "anonymous: {enabled: true, roles: ['']}";
        let error = parse(yaml).unwrap().validate().unwrap_err();
        assert_eq!(config_key(error), "auth.anonymous.roles[0]");
    }
}
