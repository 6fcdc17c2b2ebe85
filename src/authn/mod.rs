//! Authentication: turns a request's credentials into a [`Principal`].
//!
//! The first stage of the request path (`pipeline::identify`). A JWT is verified with
//! `jsonwebtoken` against keys whose algorithm is pinned at start-up (a token's header
//! cannot choose a weaker or different algorithm: no `alg: none`, no HS/RS confusion);
//! an API key is looked up by its sha256; no credentials give the anonymous `Public`
//! principal when enabled. Every failure is an [`AuthnError`] whose message is safe to
//! return to the client.

mod config;
mod keys;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use config::{
    AnonymousConfig, ApiKeyConfig, ApiKeysConfig, AuthConfig, ClaimsConfig, JwtConfig, KeyConfig,
};

use crate::principal::{BasicRole, Principal, PrincipalKind};

/// Why a caller could not be authenticated. `Config` is for operators (start-up); every
/// other message may be shown to the client.
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    #[error("no credentials")]
    MissingCredentials,
    #[error("malformed credentials: {0}")]
    Malformed(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token algorithm `{0}` is not accepted for its key")]
    WrongAlgorithm(String),
    #[error("token names an unknown key id `{0}`")]
    UnknownKey(String),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token lacks the `{0}` claim")]
    MissingClaim(String),
    #[error("token claim `{0}` is invalid: {1}")]
    InvalidClaim(String, String),
    #[error("unknown API key")]
    UnknownApiKey,
    #[error("authentication config: {0}")]
    Config(String),
}

impl AuthnError {
    pub fn is_config_error(&self) -> bool {
        matches!(self, AuthnError::Config(_))
    }
}

struct ApiKeyIdentity {
    name: String,
    roles: Vec<String>,
    teams: Vec<String>,
    basic_role: Option<BasicRole>,
}

/// Immutable, built once; shared by every request.
pub struct Authenticator {
    keys: Vec<keys::VerificationKey>,
    /// One validation per algorithm in use, prepared at start-up.
    validations: HashMap<Algorithm, Validation>,
    claims: ClaimsConfig,
    anonymous: Option<Vec<String>>,
    api_key_header: String,
    /// sha256(key) → identity. Looking up a hash needs no constant-time compare: the
    /// attacker controls the input, not the stored secret, and a hash match reveals
    /// nothing about other keys.
    api_keys: HashMap<[u8; 32], ApiKeyIdentity>,
}

impl Authenticator {
    pub fn from_config(config: &AuthConfig, base_dir: &Path) -> Result<Self, AuthnError> {
        config.validate()?;
        let keys = keys::load_keys(&config.jwt, base_dir)?;
        let mut validations = HashMap::new();
        for key in &keys {
            validations.entry(key.algorithm).or_insert_with(|| {
                let mut validation = Validation::new(key.algorithm);
                validation.leeway = config.jwt.leeway_seconds;
                validation.validate_nbf = true;
                // A configured issuer or audience must also be present, not just correct
                // when present.
                let mut required = vec!["exp"];
                if config.jwt.issuer.is_some() {
                    required.push("iss");
                }
                if !config.jwt.audience.is_empty() {
                    required.push("aud");
                }
                validation.set_required_spec_claims(&required);
                match &config.jwt.issuer {
                    Some(issuer) => validation.set_issuer(&[issuer]),
                    None => validation.iss = None,
                }
                if config.jwt.audience.is_empty() {
                    validation.validate_aud = false;
                } else {
                    validation.set_audience(&config.jwt.audience);
                }
                validation
            });
        }
        let mut api_keys = HashMap::new();
        for key in &config.api_keys.keys {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&key.sha256, &mut hash).map_err(|_| {
                AuthnError::Config(format!("API key `{}`: sha256 is not hex", key.name))
            })?;
            let basic_role = match &key.org_role {
                Some(role) => Some(
                    role.parse::<BasicRole>()
                        .map_err(|error| AuthnError::Config(error.to_string()))?,
                ),
                None => None,
            };
            api_keys.insert(
                hash,
                ApiKeyIdentity {
                    name: key.name.clone(),
                    roles: key.roles.clone(),
                    teams: key.teams.clone(),
                    basic_role,
                },
            );
        }
        Ok(Authenticator {
            keys,
            validations,
            claims: config.jwt.claims.clone(),
            anonymous: config
                .anonymous
                .enabled
                .then(|| config.anonymous.roles.clone()),
            api_key_header: config.api_keys.header.clone(),
            api_keys,
        })
    }

    pub fn api_key_header(&self) -> &str {
        &self.api_key_header
    }

    /// `authorization`: the `Authorization` header; `api_key`: the API-key header.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        api_key: Option<&str>,
    ) -> Result<Principal, AuthnError> {
        if let Some(header) = authorization {
            let (scheme, credential) = header.trim().split_once(' ').ok_or_else(|| {
                AuthnError::Malformed("`Authorization` must be `Bearer <token>`".into())
            })?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(AuthnError::Malformed(format!(
                    "unsupported authorization scheme `{}`",
                    truncate(scheme)
                )));
            }
            let credential = credential.trim();
            if credential.is_empty() || credential.contains(char::is_whitespace) {
                return Err(AuthnError::Malformed(
                    "bearer credential is empty or contains spaces".into(),
                ));
            }
            // Two dots: a JWT. Anything else is tried as an API key (service accounts).
            if credential.matches('.').count() == 2 || self.api_keys.is_empty() {
                return self.authenticate_jwt(credential);
            }
            return self.authenticate_api_key(credential);
        }
        if let Some(key) = api_key {
            return self.authenticate_api_key(key.trim());
        }
        match &self.anonymous {
            Some(roles) => Ok(Principal::anonymous(roles.clone())),
            None => Err(AuthnError::MissingCredentials),
        }
    }

    fn authenticate_api_key(&self, key: &str) -> Result<Principal, AuthnError> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let identity = self.api_keys.get(&hash).ok_or(AuthnError::UnknownApiKey)?;
        Ok(Principal {
            kind: PrincipalKind::ServiceAccount,
            username: identity.name.clone(),
            user_id: None,
            email: None,
            roles: identity.roles.clone(),
            teams: identity.teams.clone(),
            basic_role: identity.basic_role,
            claims: Map::new(),
        })
    }

    fn authenticate_jwt(&self, token: &str) -> Result<Principal, AuthnError> {
        let header = jsonwebtoken::decode_header(token).map_err(|error| {
            AuthnError::Malformed(format!("not a valid JWT ({})", describe(&error)))
        })?;
        let algorithm = header.alg;
        let candidates: Vec<&keys::VerificationKey> = match &header.kid {
            Some(kid) => {
                let key = self
                    .keys
                    .iter()
                    .find(|key| key.kid.as_deref() == Some(kid.as_str()))
                    .ok_or_else(|| AuthnError::UnknownKey(truncate(kid)))?;
                if key.algorithm != algorithm {
                    return Err(AuthnError::WrongAlgorithm(format!("{algorithm:?}")));
                }
                vec![key]
            }
            // Without a kid, only keys pinned to the header's algorithm are tried.
            None => self
                .keys
                .iter()
                .filter(|key| key.algorithm == algorithm)
                .collect(),
        };
        if candidates.is_empty() {
            return Err(AuthnError::WrongAlgorithm(format!("{algorithm:?}")));
        }
        let validation = self
            .validations
            .get(&algorithm)
            .ok_or_else(|| AuthnError::WrongAlgorithm(format!("{algorithm:?}")))?;
        let mut last_error = AuthnError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => return self.principal_from_claims(data.claims),
                Err(error) => {
                    let mapped = map_jwt_error(&error);
                    // Only a bad signature means "maybe another key"; anything else is final.
                    if !matches!(mapped, AuthnError::BadSignature) {
                        return Err(mapped);
                    }
                    last_error = mapped;
                }
            }
        }
        Err(last_error)
    }

    fn principal_from_claims(&self, claims: Map<String, Value>) -> Result<Principal, AuthnError> {
        let username = self
            .claims
            .username
            .iter()
            .find_map(|claim| {
                claims
                    .get(claim)
                    .and_then(Value::as_str)
                    .filter(|value| !value.is_empty())
            })
            .map(str::to_string)
            .ok_or_else(|| AuthnError::MissingClaim(self.claims.username.join("` or `")))?;
        let optional_text = |claim: &str| -> Result<Option<String>, AuthnError> {
            match claims.get(claim) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => Ok(Some(text.clone())),
                Some(Value::Number(number)) => Ok(Some(number.to_string())),
                Some(_) => Err(AuthnError::InvalidClaim(
                    claim.to_string(),
                    "expected a string".into(),
                )),
            }
        };
        let list = |claim: &str| -> Result<Vec<String>, AuthnError> {
            match claims.get(claim) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::String(text)) => Ok(vec![text.clone()]),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| {
                        item.as_str().map(str::to_string).ok_or_else(|| {
                            AuthnError::InvalidClaim(
                                claim.to_string(),
                                "expected an array of strings".into(),
                            )
                        })
                    })
                    .collect(),
                Some(_) => Err(AuthnError::InvalidClaim(
                    claim.to_string(),
                    "expected a string or an array of strings".into(),
                )),
            }
        };
        let basic_role = match optional_text(&self.claims.org_role)? {
            None => None,
            Some(text) => Some(text.parse::<BasicRole>().map_err(|error| {
                AuthnError::InvalidClaim(self.claims.org_role.clone(), error.to_string())
            })?),
        };
        Ok(Principal {
            kind: PrincipalKind::User,
            user_id: optional_text(&self.claims.user_id)?,
            email: optional_text(&self.claims.email)?,
            roles: list(&self.claims.roles)?,
            teams: list(&self.claims.teams)?,
            basic_role,
            username,
            claims,
        })
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

fn describe(error: &jsonwebtoken::errors::Error) -> &'static str {
    match error.kind() {
        ErrorKind::Base64(_) => "bad base64",
        ErrorKind::Json(_) => "bad JSON",
        ErrorKind::Utf8(_) => "bad UTF-8",
        ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            "unsupported algorithm"
        }
        _ => "bad structure",
    }
}

fn map_jwt_error(error: &jsonwebtoken::errors::Error) -> AuthnError {
    match error.kind() {
        ErrorKind::ExpiredSignature => AuthnError::Expired,
        ErrorKind::ImmatureSignature => AuthnError::NotYetValid,
        ErrorKind::InvalidSignature => AuthnError::BadSignature,
        ErrorKind::InvalidIssuer => AuthnError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthnError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => AuthnError::MissingClaim(truncate(claim)),
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthnError::InvalidClaim(truncate(claim), "wrong type".into())
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            AuthnError::WrongAlgorithm("header".into())
        }
        _ => AuthnError::Malformed(format!("not a valid JWT ({})", describe(error))),
    }
}

/// What `datagate token` puts in a token.
pub struct MintRequest {
    pub subject: String,
    pub roles: Vec<String>,
    pub teams: Vec<String>,
    pub org_role: Option<BasicRole>,
    pub ttl: Duration,
    pub extra_claims: Map<String, Value>,
}

/// Signs a token with the config's first HMAC key (demos and tests).
pub fn mint_token(
    config: &AuthConfig,
    base_dir: &Path,
    request: &MintRequest,
) -> Result<String, AuthnError> {
    let (algorithm, kid, key) = keys::first_hmac_signing_key(&config.jwt, base_dir)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let mut claims = request.extra_claims.clone();
    claims.insert("sub".into(), Value::String(request.subject.clone()));
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + request.ttl.as_secs()).into());
    let claim_names = &config.jwt.claims;
    if !request.roles.is_empty() {
        claims.insert(claim_names.roles.clone(), request.roles.clone().into());
    }
    if !request.teams.is_empty() {
        claims.insert(claim_names.teams.clone(), request.teams.clone().into());
    }
    if let Some(role) = request.org_role {
        claims.insert(claim_names.org_role.clone(), role.as_str().into());
    }
    if let Some(issuer) = &config.jwt.issuer {
        claims.entry("iss").or_insert_with(|| issuer.clone().into());
    }
    if let Some(audience) = config.jwt.audience.first() {
        claims
            .entry("aud")
            .or_insert_with(|| audience.clone().into());
    }
    let mut header = jsonwebtoken::Header::new(algorithm);
    header.kid = kid;
    jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|error| AuthnError::Config(format!("cannot sign: {error}")))
}

#[cfg(test)]
mod tests;
