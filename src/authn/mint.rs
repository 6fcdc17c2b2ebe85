//! Minting HMAC-signed tokens for demos, tests and the CLI (`datagate token ...`).
//!
//! Not on the request path. Tokens are signed with the first HMAC key of `auth.jwt.keys`
//! and carry exactly the claims [`super::Authenticator`] reads back, so a minted token
//! round-trips to the principal that was asked for.

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{AlgorithmFamily, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Map, Value};

use super::config::AuthConfig;
use super::error::AuthnError;
use super::keys::{EnvLookup, read_hmac_secret};
use crate::principal::BasicRole;

#[derive(Debug, Clone, PartialEq)]
pub struct MintRequest {
    pub subject: String,
    pub roles: Vec<String>,
    pub teams: Vec<String>,
    pub org_role: Option<BasicRole>,
    pub ttl: Duration,
    /// Further claims (e.g. `tenant_id` for RLS templates); must not collide with the
    /// claims the request sets itself.
    pub extra_claims: Map<String, Value>,
}

/// Signs a token for `request` with the first HMAC key in `config`, reading its secret
/// from the process environment or the secret file.
pub fn mint_token(
    config: &AuthConfig,
    base_dir: &Path,
    request: &MintRequest,
) -> Result<String, AuthnError> {
    mint_token_with_env(config, base_dir, request, &|name| std::env::var(name).ok())
}

/// [`mint_token`] with an explicit environment lookup.
pub fn mint_token_with_env(
    config: &AuthConfig,
    base_dir: &Path,
    request: &MintRequest,
    env: EnvLookup<'_>,
) -> Result<String, AuthnError> {
    config.validate()?;
    let no_hmac_key = || {
        AuthnError::config(
            "auth.jwt.keys",
            "no HMAC key configured; minting needs an HS256/HS384/HS512 key with `secret_env` or `secret_file`",
        )
    };
    let jwt = config.jwt.as_ref().ok_or_else(no_hmac_key)?;
    let (index, key) = jwt
        .keys
        .iter()
        .enumerate()
        .find(|(_, key)| key.algorithm.family() == AlgorithmFamily::Hmac)
        .ok_or_else(no_hmac_key)?;
    if request.subject.is_empty() {
        return Err(AuthnError::invalid_claim(
            "sub",
            "subject must not be empty",
        ));
    }
    let ttl = request.ttl.as_secs();
    if ttl == 0 {
        return Err(AuthnError::invalid_claim(
            "exp",
            "ttl must be at least one second",
        ));
    }

    let mapping = &jwt.claims;
    let username_claim = mapping.username.first().map_or("sub", String::as_str);
    for (config_key, claim) in [
        ("auth.jwt.claims.username", username_claim),
        ("auth.jwt.claims.roles", &mapping.roles),
        ("auth.jwt.claims.teams", &mapping.teams),
        ("auth.jwt.claims.org_role", &mapping.org_role),
    ] {
        if claim.starts_with('/') {
            return Err(AuthnError::config(
                config_key,
                "minting supports only top-level claim names, not JSON pointers",
            ));
        }
    }

    let now = get_current_timestamp();
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::from(request.subject.as_str()));
    claims.insert(username_claim.into(), Value::from(request.subject.as_str()));
    claims.insert(mapping.roles.clone(), Value::from(request.roles.clone()));
    claims.insert(mapping.teams.clone(), Value::from(request.teams.clone()));
    if let Some(org_role) = request.org_role {
        claims.insert(mapping.org_role.clone(), Value::from(org_role.as_str()));
    }
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now.saturating_add(ttl)));
    if let Some(issuer) = &jwt.issuer {
        claims.insert("iss".into(), Value::from(issuer.as_str()));
    }
    if let Some(audience) = &jwt.audience {
        claims.insert("aud".into(), Value::from(audience.clone()));
    }
    for (name, value) in &request.extra_claims {
        if claims.contains_key(name) || matches!(name.as_str(), "nbf" | "iss" | "aud") {
            return Err(AuthnError::invalid_claim(
                name,
                "is set by the mint request itself and cannot be an extra claim",
            ));
        }
        claims.insert(name.clone(), value.clone());
    }

    let config_key = format!("auth.jwt.keys[{index}]");
    let secret = read_hmac_secret(key, &config_key, base_dir, env)?;
    let mut header = Header::new(key.algorithm);
    header.kid = key.kid.clone();
    encode(&header, &claims, &EncodingKey::from_secret(&secret))
        .map_err(|_| AuthnError::config(config_key, "signing failed"))
}
