//! First step of authentication: which credential did the caller present?
//!
//! Pure parsing of the `Authorization` header and the API-key header into a
//! [`Presented`] credential; no key material is touched here.

use super::error::{AuthnError, Malformed};

/// Tokens and API keys longer than this are refused before any decoding. Real IdP tokens
/// with many roles stay well below it; the bound keeps base64/JSON work per request small.
pub const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presented<'a> {
    Nothing,
    /// The value after `Bearer `: a JWT or (if it is not one) an API key.
    Bearer(&'a str),
    /// The value of the configured API-key header.
    ApiKey(&'a str),
}

pub(crate) fn presented<'a>(
    authorization: Option<&'a str>,
    api_key: Option<&'a str>,
) -> Result<Presented<'a>, AuthnError> {
    match (authorization, api_key) {
        (None, None) => Ok(Presented::Nothing),
        // Two credentials could name two identities; picking one silently would let a
        // client (or a misbehaving hop) decide which one wins.
        (Some(_), Some(_)) => Err(AuthnError::Malformed(Malformed::ConflictingCredentials)),
        (Some(header), None) => bearer_value(header).map(Presented::Bearer),
        (None, Some(key)) => {
            let key = key.trim();
            if key.is_empty() {
                return Err(AuthnError::Malformed(Malformed::EmptyApiKey));
            }
            check_credential_chars(key)?;
            Ok(Presented::ApiKey(key))
        }
    }
}

/// `Bearer <token>`: scheme case-insensitive (RFC 7235), exactly one space, then a single
/// run of printable characters.
fn bearer_value(header: &str) -> Result<&str, AuthnError> {
    let header = header.trim();
    let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthnError::Malformed(Malformed::UnsupportedScheme));
    }
    if value.is_empty() {
        return Err(AuthnError::Malformed(Malformed::EmptyBearer));
    }
    check_credential_chars(value)?;
    Ok(value)
}

fn check_credential_chars(value: &str) -> Result<(), AuthnError> {
    if value.len() > MAX_CREDENTIAL_BYTES {
        return Err(AuthnError::Malformed(Malformed::TooLong));
    }
    // Every byte checked, without stopping at the first bad one: a loop the compiler
    // vectorises (this runs on every request's token).
    let graphic = value
        .bytes()
        .fold(true, |all, byte| all & byte.is_ascii_graphic());
    if !graphic {
        return Err(AuthnError::Malformed(Malformed::BearerSyntax));
    }
    Ok(())
}

/// JWS compact serialisation always has dots; API keys we issue never do. A bearer value
/// with a dot therefore goes to JWT verification (and fails there if it is garbage).
pub(crate) fn looks_like_jwt(value: &str) -> bool {
    value.contains('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn malformed(authorization: Option<&str>, api_key: Option<&str>) -> Malformed {
        match presented(authorization, api_key) {
            Err(AuthnError::Malformed(reason)) => reason,
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn bearer_values_are_extracted() {
        assert_eq!(
            presented(Some("Bearer a.b.c"), None),
            Ok(Presented::Bearer("a.b.c"))
        );
        assert_eq!(
            presented(Some("bearer xyz"), None),
            Ok(Presented::Bearer("xyz"))
        );
        assert_eq!(
            presented(Some("  BEARER tok  "), None),
            Ok(Presented::Bearer("tok"))
        );
        assert_eq!(presented(None, None), Ok(Presented::Nothing));
        assert_eq!(presented(None, Some(" k1 ")), Ok(Presented::ApiKey("k1")));
    }

    #[test]
    fn other_schemes_are_refused() {
        assert_eq!(
            malformed(Some("Basic YWxpY2U6cHc="), None),
            Malformed::UnsupportedScheme
        );
        assert_eq!(
            malformed(Some("Token abc"), None),
            Malformed::UnsupportedScheme
        );
        assert_eq!(
            malformed(Some("abc.def.ghi"), None),
            Malformed::UnsupportedScheme
        );
        assert_eq!(malformed(Some(""), None), Malformed::UnsupportedScheme);
    }

    #[test]
    fn empty_and_spaced_bearers_are_refused() {
        assert_eq!(malformed(Some("Bearer"), None), Malformed::EmptyBearer);
        assert_eq!(malformed(Some("Bearer   "), None), Malformed::EmptyBearer);
        assert_eq!(
            malformed(Some("Bearer  a.b.c"), None),
            Malformed::BearerSyntax
        );
        assert_eq!(
            malformed(Some("Bearer a b c"), None),
            Malformed::BearerSyntax
        );
        assert_eq!(
            malformed(Some("Bearer a\tb"), None),
            Malformed::BearerSyntax
        );
        assert_eq!(
            malformed(Some("Bearer é.b.c"), None),
            Malformed::BearerSyntax
        );
    }

    #[test]
    fn conflicting_and_empty_api_keys_are_refused() {
        assert_eq!(
            malformed(Some("Bearer x"), Some("y")),
            Malformed::ConflictingCredentials
        );
        assert_eq!(malformed(None, Some("  ")), Malformed::EmptyApiKey);
    }

    #[test]
    fn huge_credentials_are_refused_before_decoding() {
        let huge = format!("Bearer {}", "a".repeat(MAX_CREDENTIAL_BYTES + 1));
        assert_eq!(malformed(Some(&huge), None), Malformed::TooLong);
        let huge_key = "k".repeat(MAX_CREDENTIAL_BYTES + 1);
        assert_eq!(malformed(None, Some(&huge_key)), Malformed::TooLong);
    }

    #[test]
    fn jwt_shape_is_recognised_by_dots() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("dg_live_0123456789"));
    }
}
