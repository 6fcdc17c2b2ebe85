//! Last step of JWT authentication: verified claims → [`Principal`].
//!
//! Pure function over the claims object and the configured [`ClaimMapping`]. Claims of the
//! wrong type are errors, never silently dropped: a `roles` claim that is a number means
//! the IdP and datagate disagree about the token format, and guessing could grant or hide
//! permissions.

use serde_json::Value;

use super::config::ClaimMapping;
use super::error::{AuthnError, Malformed};
use crate::principal::{BasicRole, Principal, PrincipalKind};

pub(crate) fn principal_from_claims(
    claims: Value,
    mapping: &ClaimMapping,
) -> Result<Principal, AuthnError> {
    let username = mapping
        .username
        .iter()
        .find_map(|name| match lookup(&claims, name) {
            Some(Value::String(text)) if !text.is_empty() => Some(text.clone()),
            _ => None,
        })
        .ok_or_else(|| AuthnError::MissingClaim(mapping.username.join(" | ")))?;
    let user_id = optional_identifier(&claims, &mapping.user_id)?;
    let email = optional_string(&claims, &mapping.email)?;
    let roles = string_list(&claims, &mapping.roles)?;
    let teams = string_list(&claims, &mapping.teams)?;
    let basic_role = basic_role(&claims, &mapping.org_role)?;
    let Value::Object(claims) = claims else {
        return Err(AuthnError::Malformed(Malformed::Token));
    };
    Ok(Principal {
        kind: PrincipalKind::User,
        username,
        user_id,
        email,
        roles,
        teams,
        basic_role,
        claims: std::sync::Arc::new(claims),
    })
}

/// A claim by name, or by JSON pointer when the name starts with `/` (nested claims such
/// as Keycloak's `realm_access.roles`).
fn lookup<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if name.starts_with('/') {
        claims.pointer(name)
    } else {
        claims.get(name)
    }
}

/// Ids are strings in most IdPs but integers in some (Grafana, numeric `sub`s); both are
/// identifiers, so both are accepted and kept as text.
fn optional_identifier(claims: &Value, name: &str) -> Result<Option<String>, AuthnError> {
    match lookup(claims, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(Value::Number(number)) if number.is_i64() || number.is_u64() => {
            Ok(Some(number.to_string()))
        }
        Some(_) => Err(AuthnError::invalid_claim(
            name,
            "expected a string or an integer",
        )),
    }
}

fn optional_string(claims: &Value, name: &str) -> Result<Option<String>, AuthnError> {
    match lookup(claims, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(AuthnError::invalid_claim(name, "expected a string")),
    }
}

/// An array of strings, or a single string meaning a one-element list. Empty names are
/// refused because they would become the policy subject `role:`.
fn string_list(claims: &Value, name: &str) -> Result<Vec<String>, AuthnError> {
    const EXPECTED: &str = "expected a string or an array of non-empty strings";
    match lookup(claims, name) {
        None => Ok(Vec::new()),
        Some(Value::String(text)) if !text.is_empty() => Ok(vec![text.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(text) if !text.is_empty() => Ok(text.clone()),
                _ => Err(AuthnError::invalid_claim(name, EXPECTED)),
            })
            .collect(),
        Some(_) => Err(AuthnError::invalid_claim(name, EXPECTED)),
    }
}

fn basic_role(claims: &Value, name: &str) -> Result<Option<BasicRole>, AuthnError> {
    match lookup(claims, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => text
            .parse::<BasicRole>()
            .map(Some)
            .map_err(|error| AuthnError::invalid_claim(name, error.to_string())),
        Some(_) => Err(AuthnError::invalid_claim(
            name,
            "expected one of Viewer, Editor, Admin",
        )),
    }
}

/// The principal of an API key: claims are empty because there is no token.
pub fn service_account(
    name: &str,
    roles: &[String],
    teams: &[String],
    basic_role: Option<BasicRole>,
) -> Principal {
    Principal {
        kind: PrincipalKind::ServiceAccount,
        username: name.to_string(),
        user_id: None,
        email: None,
        roles: roles.to_vec(),
        teams: teams.to_vec(),
        basic_role,
        claims: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(claims: Value) -> Result<Principal, AuthnError> {
        principal_from_claims(claims, &ClaimMapping::default())
    }

    #[test]
    fn all_fields_are_mapped_and_claims_kept() {
        let principal = map(json!({
            "sub": "42", "preferred_username": "alice", "email": "a@x.org",
            "roles": ["Gamma", "sql_lab"], "teams": "eng", "org_role": "editor",
            "custom": {"tenant": 7}
        }))
        .unwrap();
        assert_eq!(principal.kind, PrincipalKind::User);
        assert_eq!(principal.username, "alice");
        assert_eq!(principal.user_id.as_deref(), Some("42"));
        assert_eq!(principal.email.as_deref(), Some("a@x.org"));
        assert_eq!(principal.roles, vec!["Gamma", "sql_lab"]);
        assert_eq!(principal.teams, vec!["eng"]);
        assert_eq!(principal.basic_role, Some(BasicRole::Editor));
        assert_eq!(principal.claims["custom"], json!({"tenant": 7}));
    }

    #[test]
    fn username_falls_back_in_order_skipping_empty_and_non_strings() {
        let principal =
            map(json!({"preferred_username": "", "username": 5, "email": "e@x", "sub": "s"}))
                .unwrap();
        assert_eq!(principal.username, "e@x");
        let principal = map(json!({"sub": "only-sub"})).unwrap();
        assert_eq!(principal.username, "only-sub");
        assert!(matches!(
            map(json!({"name": "x"})),
            Err(AuthnError::MissingClaim(_))
        ));
    }

    #[test]
    fn wrong_claim_types_are_rejected() {
        for (claims, claim) in [
            (json!({"sub": "a", "roles": 3}), "roles"),
            (json!({"sub": "a", "roles": ["ok", 3]}), "roles"),
            (json!({"sub": "a", "roles": [""]}), "roles"),
            (json!({"sub": "a", "teams": {"a": 1}}), "teams"),
            (json!({"sub": "a", "org_role": "Owner"}), "org_role"),
            (json!({"sub": "a", "org_role": 1}), "org_role"),
            (json!({"sub": "a", "email": ["a@x"]}), "email"),
            (json!({"sub": ["a"], "username": "u"}), "sub"),
        ] {
            match map(claims.clone()) {
                Err(AuthnError::InvalidClaim { claim: name, .. }) => {
                    assert_eq!(name, claim, "{claims}")
                }
                other => panic!("{claims}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_org_role_is_named_in_the_error() {
        let error = map(json!({"sub": "a", "org_role": "Owner"})).unwrap_err();
        assert!(error.to_string().contains("`Owner`"), "{error}");
    }

    #[test]
    fn numeric_user_ids_are_kept_as_text() {
        let principal = map(json!({"sub": 17, "username": "bob"})).unwrap();
        assert_eq!(principal.user_id.as_deref(), Some("17"));
        assert_eq!(principal.username, "bob");
    }

    #[test]
    fn json_pointer_claims_reach_nested_values() {
        let mapping = ClaimMapping {
            roles: "/realm_access/roles".into(),
            ..ClaimMapping::default()
        };
        let principal = principal_from_claims(
            json!({"sub": "a", "realm_access": {"roles": ["Alpha"]}}),
            &mapping,
        )
        .unwrap();
        assert_eq!(principal.roles, vec!["Alpha"]);
    }
}
