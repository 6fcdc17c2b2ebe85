//! The `auth:` config section and its validation.

use serde::Deserialize;

use super::AuthnError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub anonymous: AnonymousConfig,
    #[serde(default)]
    pub jwt: JwtConfig,
    #[serde(default)]
    pub api_keys: ApiKeysConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnonymousConfig {
    /// Requests without credentials act as the anonymous principal.
    #[serde(default)]
    pub enabled: bool,
    /// Roles the anonymous principal holds (Superset's `Public`).
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
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`, at most 60 seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// A JWKS document; every key in it must carry `alg`.
    #[serde(default)]
    pub jwks_file: Option<String>,
    #[serde(default)]
    pub claims: ClaimsConfig,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuer: None,
            audience: Vec::new(),
            leeway_seconds: default_leeway(),
            keys: Vec::new(),
            jwks_file: None,
            claims: ClaimsConfig::default(),
        }
    }
}

fn default_leeway() -> u64 {
    30
}

/// Most leeway an operator may configure.
pub const MAX_LEEWAY_SECONDS: u64 = 60;

/// Shortest HMAC secret accepted (RFC 7518 §3.2 asks for at least the hash size).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Selects this key when a token's header names it.
    #[serde(default)]
    pub kid: Option<String>,
    /// The one algorithm this key verifies (HS256 … EdDSA).
    pub algorithm: String,
    /// HMAC secret from an environment variable.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// HMAC secret from a file (trailing newline ignored).
    #[serde(default)]
    pub secret_file: Option<String>,
    /// PEM public key for RS*, PS*, ES*, EdDSA.
    #[serde(default)]
    pub public_key_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimsConfig {
    /// The first present, non-empty string claim is the username.
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

impl Default for ClaimsConfig {
    fn default() -> Self {
        ClaimsConfig {
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
        .iter()
        .map(|claim| claim.to_string())
        .collect()
}
fn default_user_id_claim() -> String {
    "sub".into()
}
fn default_email_claim() -> String {
    "email".into()
}
fn default_roles_claim() -> String {
    "roles".into()
}
fn default_teams_claim() -> String {
    "teams".into()
}
fn default_org_role_claim() -> String {
    "org_role".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// Header carrying the key; `Authorization: Bearer <key>` works too.
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
    "X-API-Key".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Becomes the service account's username.
    pub name: String,
    /// Hex sha256 of the key: keys are never stored in clear.
    pub sha256: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub teams: Vec<String>,
    #[serde(default)]
    pub org_role: Option<String>,
}

fn invalid(key: String, message: impl Into<String>) -> AuthnError {
    AuthnError::Config(format!("`{key}`: {}", message.into()))
}

impl AuthConfig {
    /// Checks that do not read files (those happen when the authenticator is built).
    pub fn validate(&self) -> Result<(), AuthnError> {
        let jwt = &self.jwt;
        if jwt.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(invalid(
                "auth.jwt.leeway_seconds".into(),
                format!(
                    "{} is more than the maximum of {MAX_LEEWAY_SECONDS}",
                    jwt.leeway_seconds
                ),
            ));
        }
        if jwt.claims.username.is_empty() {
            return Err(invalid(
                "auth.jwt.claims.username".into(),
                "must list at least one claim",
            ));
        }
        for (index, key) in jwt.keys.iter().enumerate() {
            let prefix = format!("auth.jwt.keys[{index}]");
            let algorithm = super::keys::parse_algorithm(&key.algorithm)
                .map_err(|message| invalid(format!("{prefix}.algorithm"), message))?;
            let is_hmac = super::keys::is_hmac(algorithm);
            match (
                is_hmac,
                &key.secret_env,
                &key.secret_file,
                &key.public_key_file,
            ) {
                (true, Some(_), None, None) | (true, None, Some(_), None) => {}
                (true, _, _, Some(_)) => {
                    return Err(invalid(
                        format!("{prefix}.public_key_file"),
                        format!(
                            "{} is an HMAC algorithm: give `secret_env` or `secret_file`",
                            key.algorithm
                        ),
                    ));
                }
                (true, _, _, None) => {
                    return Err(invalid(
                        prefix,
                        "an HMAC key needs exactly one of `secret_env`, `secret_file`",
                    ));
                }
                (false, None, None, Some(_)) => {}
                (false, _, _, None) => {
                    return Err(invalid(
                        format!("{prefix}.public_key_file"),
                        format!("{} needs a PEM public key", key.algorithm),
                    ));
                }
                (false, _, _, Some(_)) => {
                    return Err(invalid(
                        prefix,
                        format!(
                            "{} is not an HMAC algorithm: remove `secret_env`/`secret_file`",
                            key.algorithm
                        ),
                    ));
                }
            }
            if let Some(kid) = &key.kid
                && jwt
                    .keys
                    .iter()
                    .take(index)
                    .any(|earlier| earlier.kid.as_ref() == Some(kid))
            {
                return Err(invalid(
                    format!("{prefix}.kid"),
                    format!("`{kid}` is used by another key"),
                ));
            }
        }
        let api_keys = &self.api_keys;
        if http::HeaderName::from_bytes(api_keys.header.as_bytes()).is_err() {
            return Err(invalid(
                "auth.api_keys.header".into(),
                format!("`{}` is not a valid header name", api_keys.header),
            ));
        }
        for (index, key) in api_keys.keys.iter().enumerate() {
            let prefix = format!("auth.api_keys.keys[{index}]");
            if key.name.trim().is_empty() {
                return Err(invalid(format!("{prefix}.name"), "must not be empty"));
            }
            let valid_hash = key.sha256.len() == 64
                && key
                    .sha256
                    .chars()
                    .all(|character| character.is_ascii_hexdigit());
            if !valid_hash {
                return Err(invalid(
                    format!("{prefix}.sha256"),
                    "must be 64 hex digits (sha256 of the key)",
                ));
            }
            if let Some(role) = &key.org_role {
                role.parse::<crate::principal::BasicRole>()
                    .map_err(|error| invalid(format!("{prefix}.org_role"), error.to_string()))?;
            }
        }
        Ok(())
    }
}
