//! Request-header work for the upstream request: identity headers, forwarding headers and
//! the canonical path.

use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, Result};

use crate::config::IdentityHeadersConfig;
use crate::principal::Principal;

/// A header's value as text, if present and valid UTF-8. Invalid UTF-8 counts as absent;
/// for credentials that means "not presented", which can only lead to a refusal or the
/// anonymous principal, never to more access.
pub fn header_text(request: &RequestHeader, name: &str) -> Option<String> {
    request
        .headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

pub fn content_length(request: &RequestHeader) -> Option<usize> {
    request
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse().ok())
}

/// Identity values come from tokens and may hold any character; header values may not.
/// Control characters, `%`, `,` (the list separator) and non-ASCII bytes are
/// percent-encoded, so `alice@example.com` passes unchanged and nothing can inject a header.
pub fn encode_identity_value(value: &str) -> String {
    const ENCODED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%').add(b',');
    percent_encoding::utf8_percent_encode(value, ENCODED).to_string()
}

fn internal(context: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, context)
}

/// Removes every client-supplied copy of the identity headers, then sets them from the
/// authenticated principal.
/// Removes any client copy of the database credential headers, then sets ours (when the
/// request's datasource uses IAM authentication).
pub fn replace_db_credential_headers(
    request: &mut RequestHeader,
    names: &crate::creds::DbCredentialHeaders,
    credentials: Option<&crate::creds::DbCredentials>,
) -> Result<()> {
    for name in [&names.db_user, &names.db_token, &names.db_endpoint] {
        while request.remove_header(name.as_str()).is_some() {}
    }
    let Some(credentials) = credentials else {
        return Ok(());
    };
    request
        .insert_header(
            names.db_user.clone(),
            encode_identity_value(&credentials.user),
        )
        .map_err(|_| internal("database user header"))?;
    request
        .insert_header(names.db_token.clone(), credentials.token.clone())
        .map_err(|_| internal("database token header"))?;
    if let Some(endpoint) = &credentials.endpoint {
        request
            .insert_header(names.db_endpoint.clone(), encode_identity_value(endpoint))
            .map_err(|_| internal("database endpoint header"))?;
    }
    Ok(())
}

pub fn replace_identity_headers(
    request: &mut RequestHeader,
    names: &IdentityHeadersConfig,
    principal: &Principal,
) -> Result<()> {
    for name in [&names.user, &names.roles, &names.teams, &names.basic_role]
        .into_iter()
        .chain(names.strip.iter())
    {
        while request.remove_header(name.as_str()).is_some() {}
    }
    request
        .insert_header(
            names.user.clone(),
            encode_identity_value(&principal.username),
        )
        .map_err(|_| internal("identity header"))?;
    let roles: Vec<String> = principal
        .roles
        .iter()
        .map(|role| encode_identity_value(role))
        .collect();
    request
        .insert_header(names.roles.clone(), roles.join(","))
        .map_err(|_| internal("identity header"))?;
    let teams: Vec<String> = principal
        .teams
        .iter()
        .map(|team| encode_identity_value(team))
        .collect();
    request
        .insert_header(names.teams.clone(), teams.join(","))
        .map_err(|_| internal("identity header"))?;
    if let Some(basic_role) = principal.basic_role {
        request
            .insert_header(names.basic_role.clone(), basic_role.as_str())
            .map_err(|_| internal("identity header"))?;
    }
    Ok(())
}

/// datagate is the edge of the service it protects, so forwarding headers describe the
/// connection datagate saw; client-supplied values are replaced, not trusted.
pub fn set_forwarded(request: &mut RequestHeader, client_ip: Option<&str>) -> Result<()> {
    while request.remove_header("x-forwarded-for").is_some() {}
    while request.remove_header("x-forwarded-proto").is_some() {}
    if let Some(client_ip) = client_ip {
        request
            .insert_header("x-forwarded-for", client_ip.to_string())
            .map_err(|_| internal("x-forwarded-for"))?;
    }
    request
        .insert_header("x-forwarded-proto", "http")
        .map_err(|_| internal("x-forwarded-proto"))?;
    Ok(())
}

/// The upstream receives the path the route was matched on, so the two can never disagree.
pub fn set_canonical_path(
    request: &mut RequestHeader,
    canonical_path: &str,
    rewritten_query: Option<&str>,
) -> Result<()> {
    let query = rewritten_query.or(request.uri.query());
    let path_and_query = match query {
        Some(query) => format!("{canonical_path}?{query}"),
        None => canonical_path.to_string(),
    };
    let uri = http::Uri::builder()
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| internal("canonical path is not a valid URI"))?;
    request.set_uri(uri);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_values_cannot_inject_headers_or_split_lists() {
        assert_eq!(
            encode_identity_value("alice@example.com"),
            "alice@example.com"
        );
        assert_eq!(encode_identity_value("a\r\nX-Evil: 1"), "a%0D%0AX-Evil: 1");
        assert_eq!(encode_identity_value("a,b"), "a%2Cb");
        assert_eq!(encode_identity_value("50%"), "50%25");
        assert_eq!(encode_identity_value("Zoë"), "Zo%C3%AB");
    }
}
