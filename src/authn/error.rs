//! The one error type of the authn stage.
//!
//! Every variant except [`AuthnError::Config`] can reach an HTTP client (the lead maps
//! them to 401/403 in one place), so their messages never carry secrets, key material or
//! file system paths. [`AuthnError::Config`] is for operators at startup and names the
//! config key (and, where useful, the file) that is wrong — still never a secret value.

use std::fmt;

/// Why the presented credentials could not even be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// `Authorization` used a scheme other than `Bearer` (e.g. `Basic`).
    UnsupportedScheme,
    /// `Authorization: Bearer` with nothing after it.
    EmptyBearer,
    /// The bearer value contains whitespace or non-printable characters.
    BearerSyntax,
    /// Both an `Authorization` header and the API-key header were sent.
    ConflictingCredentials,
    /// The API-key header was present but empty.
    EmptyApiKey,
    /// The token or API key is longer than we are willing to process.
    TooLong,
    /// The token does not have three base64url segments with a JSON object payload.
    Token,
    /// The token header is not valid JSON or names an algorithm we do not support
    /// (this includes `alg: none`).
    TokenHeader,
    /// The token header lists `crit` extensions, none of which we understand.
    CriticalHeader,
    /// The token's claims object names one claim twice.
    RepeatedClaim,
}

impl fmt::Display for Malformed {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Malformed::UnsupportedScheme => "only the Bearer authorization scheme is supported",
            Malformed::EmptyBearer => "bearer credential is empty",
            Malformed::BearerSyntax => {
                "bearer credential must be a single token of printable characters"
            }
            Malformed::ConflictingCredentials => {
                "both an Authorization header and an API key were presented"
            }
            Malformed::EmptyApiKey => "api key is empty",
            Malformed::TooLong => "credential is too long",
            Malformed::Token => "token is not a well-formed JWT",
            Malformed::TokenHeader => "token header is invalid or names an unsupported algorithm",
            Malformed::CriticalHeader => "token header lists unsupported critical extensions",
            Malformed::RepeatedClaim => "token claims name one claim more than once",
        })
    }
}

/// A configuration problem, found while building the [`super::Authenticator`] or minting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config key, e.g. `auth.jwt.keys[0].secret_file`.
    pub key: String,
    /// What is wrong, lowercase, without secret values.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.key, self.problem)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("no credentials presented")]
    MissingCredentials,
    #[error("malformed credentials: {0}")]
    Malformed(Malformed),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token algorithm is not accepted for its key")]
    WrongAlgorithm,
    #[error("token signing key is not known")]
    UnknownKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    /// The claim name comes from config (or is a registered claim such as `exp`).
    #[error("token lacks the `{0}` claim")]
    MissingClaim(String),
    #[error("token claim `{claim}` is invalid: {reason}")]
    InvalidClaim { claim: String, reason: String },
    #[error("unknown api key")]
    UnknownApiKey,
    /// The identity provider's keys could not be fetched, or the last good set is older
    /// than `auth.jwt.jwks_refresh.max_stale`; tokens are refused rather than trusted.
    #[error("the identity provider's signing keys are unavailable; try again later")]
    KeysUnavailable,
    #[error("the session cookie is not valid; sign in again")]
    SessionInvalid,
    #[error("the session has expired; sign in again")]
    SessionExpired,
    #[error("the identity is too large for a session cookie")]
    SessionTooLarge,
    /// A state-changing request authenticated by a cookie came from another site (or
    /// did not say where it came from).
    #[error(
        "cross-site request refused: a request authenticated by a cookie must come from this site (Origin / Sec-Fetch-Site)"
    )]
    CrossSiteRequest,
    /// The OpenID Connect login callback could not complete.
    #[error("sign-in failed: {0}")]
    Login(String),
    #[error("invalid auth config at {0}")]
    Config(ConfigError),
}

impl AuthnError {
    /// True for problems of the deployment rather than of the caller.
    pub fn is_config_error(&self) -> bool {
        matches!(self, AuthnError::Config(_))
    }

    pub(crate) fn config(key: impl Into<String>, problem: impl Into<String>) -> Self {
        AuthnError::Config(ConfigError {
            key: key.into(),
            problem: problem.into(),
        })
    }

    pub(crate) fn invalid_claim(claim: &str, reason: impl Into<String>) -> Self {
        AuthnError::InvalidClaim {
            claim: claim.to_string(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_are_flagged_and_name_the_key() {
        let error = AuthnError::config("auth.jwt.leeway_seconds", "must be at most 60");
        assert!(error.is_config_error());
        assert_eq!(
            error.to_string(),
            "invalid auth config at auth.jwt.leeway_seconds: must be at most 60"
        );
        assert!(!AuthnError::Expired.is_config_error());
    }

    #[test]
    fn client_messages_are_lowercase() {
        let messages = [
            AuthnError::MissingCredentials.to_string(),
            AuthnError::Malformed(Malformed::UnsupportedScheme).to_string(),
            AuthnError::WrongAlgorithm.to_string(),
            AuthnError::UnknownApiKey.to_string(),
        ];
        for message in messages {
            let first = message.chars().next().unwrap_or(' ');
            assert!(first.is_lowercase(), "{message}");
        }
    }
}
