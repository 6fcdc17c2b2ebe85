//! TEMPORARY STUB — replaced by the real authn module.
use crate::principal::{BasicRole, Principal};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
#[derive(Debug, Clone, Deserialize, Default)]
pub struct AuthConfig {}
impl AuthConfig {
    pub fn validate(&self) -> Result<(), AuthnError> {
        Ok(())
    }
}
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    #[error("missing credentials")]
    MissingCredentials,
    #[error("config: {0}")]
    Config(String),
}
impl AuthnError {
    pub fn is_config_error(&self) -> bool {
        matches!(self, AuthnError::Config(_))
    }
}
pub struct Authenticator {}
impl Authenticator {
    pub fn from_config(_config: &AuthConfig, _base_dir: &Path) -> Result<Self, AuthnError> {
        Ok(Authenticator {})
    }
    pub fn authenticate(
        &self,
        _authorization: Option<&str>,
        _api_key: Option<&str>,
    ) -> Result<Principal, AuthnError> {
        Err(AuthnError::MissingCredentials)
    }
    pub fn api_key_header(&self) -> &str {
        "x-api-key"
    }
}
pub struct MintRequest {
    pub subject: String,
    pub roles: Vec<String>,
    pub teams: Vec<String>,
    pub org_role: Option<BasicRole>,
    pub ttl: Duration,
    pub extra_claims: serde_json::Map<String, serde_json::Value>,
}
pub fn mint_token(
    _config: &AuthConfig,
    _base_dir: &Path,
    _request: &MintRequest,
) -> Result<String, AuthnError> {
    Err(AuthnError::Config("stub".into()))
}
