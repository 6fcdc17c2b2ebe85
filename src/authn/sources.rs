//! Where the caller's token is read from, and what of it the upstream gets to see.
//!
//! Where it sits: first thing on the request path, before [`super::Authenticator`]
//! verifies anything. [`TokenSources::presented`] walks the configured sources in order
//! (`auth.token_sources`; default: `Authorization: Bearer` only) over the request's
//! headers and returns the one credential the caller presented, in the form the
//! authenticator reads (`Bearer <token>`), plus whether it came from a cookie (then
//! state-changing requests need a same-origin check, see `csrf.rs`).
//! [`TokenSources::upstream_edits`] lists what to remove before the request goes
//! upstream: every source's header or cookie, unless that source says `forward: true`.
//!
//! Rules (Envoy's jwt_authn takes the first location that holds a token; so do we, but a
//! second location holding a *different* token is refused: two credentials could name two
//! identities, and which one the upstream believes is not ours to guess):
//! - a source that appears twice (two `Authorization` headers, two cookies of the name)
//!   with different values is refused;
//! - a value that is not UTF-8 is refused, never treated as absent.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName};
use serde::Deserialize;

use super::error::{AuthnError, Malformed};

/// One place a token may come from (`auth.token_sources[]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenSourceConfig {
    /// `Authorization: Bearer <token>` (also carries API keys and service-account
    /// tokens as Bearer values).
    Authorization {
        /// Send the caller's `Authorization` on to the upstream. Off by default: the
        /// upstream should trust datagate's identity headers, not the caller's token
        /// (a Grafana or Superset that also reads the token would authenticate the
        /// caller a second time, by its own rules).
        #[serde(default)]
        forward: bool,
    },
    /// A header that holds the bare token, as set by an authenticating proxy in front
    /// of datagate: oauth2-proxy's `X-Forwarded-Access-Token`, Cloudflare Access's
    /// `Cf-Access-Jwt-Assertion`, Google IAP's `X-Goog-IAP-JWT-Assertion`.
    Header {
        name: String,
        #[serde(default)]
        forward: bool,
    },
    /// A cookie that holds the bare token (Cloudflare Access's `CF_Authorization`).
    Cookie {
        name: String,
        #[serde(default)]
        forward: bool,
    },
}

impl TokenSourceConfig {
    fn describe(&self) -> String {
        match self {
            TokenSourceConfig::Authorization { .. } => "the Authorization header".into(),
            TokenSourceConfig::Header { name, .. } => format!("header `{name}`"),
            TokenSourceConfig::Cookie { name, .. } => format!("cookie `{name}`"),
        }
    }
}

pub fn default_token_sources() -> Vec<TokenSourceConfig> {
    vec![TokenSourceConfig::Authorization { forward: false }]
}

/// The credential a request presented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresentedCredential {
    /// What the authenticator reads as the `Authorization` header: the header itself
    /// for the `authorization` source, `Bearer <token>` for the others.
    pub authorization: Option<String>,
    /// The credential came from a cookie: a browser sends it on cross-site requests
    /// too, so state-changing requests need a same-origin check.
    pub cookie_borne: bool,
}

/// Header removals and the rewritten `Cookie` header for the upstream request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamCredentialEdits<'s> {
    /// Headers to remove entirely.
    pub remove_headers: &'s [HeaderName],
    /// `Some(None)`: remove `Cookie`; `Some(Some(value))`: replace every `Cookie` header
    /// with this one; `None`: leave cookies alone.
    pub cookie: Option<Option<String>>,
}

/// The configured sources, validated.
#[derive(Debug, Clone)]
pub struct TokenSources {
    sources: Vec<TokenSourceConfig>,
    /// Cookies the upstream never receives: datagate's own (the session and login
    /// cookies), then every cookie source that is not forwarded. Listed once here, not
    /// per request.
    removed_cookies: Vec<String>,
    /// What the upstream never receives, in this order: the API-key header datagate
    /// consumed, `Authorization` unless a source forwards it, every header source that
    /// is not forwarded. Parsed once here, not per request.
    removed_headers: Vec<HeaderName>,
    api_key_header: HeaderName,
}

impl TokenSources {
    pub(crate) fn new(
        sources: &[TokenSourceConfig],
        api_key_header: &str,
    ) -> Result<TokenSources, AuthnError> {
        if sources.is_empty() {
            return Err(AuthnError::config(
                "auth.token_sources",
                "must list at least one source (remove it for the default, `authorization`)",
            ));
        }
        let mut seen = Vec::new();
        for (index, source) in sources.iter().enumerate() {
            let key = format!("auth.token_sources[{index}]");
            match source {
                TokenSourceConfig::Authorization { .. } => {}
                TokenSourceConfig::Header { name, .. } => {
                    if !is_token(name) {
                        return Err(AuthnError::config(
                            format!("{key}.name"),
                            format!("`{name}` is not a valid header name"),
                        ));
                    }
                    for reserved in ["authorization", "cookie", "host", "content-length"] {
                        if name.eq_ignore_ascii_case(reserved) {
                            return Err(AuthnError::config(
                                format!("{key}.name"),
                                format!("`{name}` cannot be a token header"),
                            ));
                        }
                    }
                    if name.eq_ignore_ascii_case(api_key_header) {
                        return Err(AuthnError::config(
                            format!("{key}.name"),
                            format!("`{name}` is already the API-key header"),
                        ));
                    }
                }
                TokenSourceConfig::Cookie { name, .. } => {
                    if !is_token(name) {
                        return Err(AuthnError::config(
                            format!("{key}.name"),
                            format!("`{name}` is not a valid cookie name"),
                        ));
                    }
                }
            }
            let identity = normalised(source);
            if seen.contains(&identity) {
                return Err(AuthnError::config(
                    key,
                    format!("{} is listed twice", source.describe()),
                ));
            }
            seen.push(identity);
        }
        let header_name = |name: &str, key: String| {
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| {
                AuthnError::config(key, format!("`{name}` is not a valid header name"))
            })
        };
        let api_key_header = header_name(api_key_header, "auth.api_keys.header".into())?;
        let mut removed_headers = vec![api_key_header.clone()];
        // `Authorization` goes unless a source forwards it — also when it is not a
        // source at all: an upstream could still read it as a credential of its own.
        let forwards_authorization = sources
            .iter()
            .any(|source| matches!(source, TokenSourceConfig::Authorization { forward: true }));
        if !forwards_authorization {
            removed_headers.push(http::header::AUTHORIZATION);
        }
        for (index, source) in sources.iter().enumerate() {
            if let TokenSourceConfig::Header {
                name,
                forward: false,
            } = source
            {
                removed_headers.push(header_name(
                    name,
                    format!("auth.token_sources[{index}].name"),
                )?);
            }
        }
        Ok(TokenSources {
            sources: sources.to_vec(),
            removed_cookies: unforwarded_cookies(sources),
            removed_headers,
            api_key_header,
        })
    }

    /// The API-key header, parsed once.
    pub fn api_key_header_name(&self) -> &HeaderName {
        &self.api_key_header
    }

    /// Cookies datagate sets itself; never forwarded.
    pub(crate) fn with_own_cookies(mut self, names: Vec<String>) -> TokenSources {
        self.removed_cookies = names;
        self.removed_cookies
            .extend(unforwarded_cookies(&self.sources));
        self
    }

    /// The headers token sources read (besides `Authorization`), for the one-value,
    /// one-spelling check of credential headers.
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().filter_map(|source| match source {
            TokenSourceConfig::Header { name, .. } => Some(name.as_str()),
            _ => None,
        })
    }

    /// The one credential the request presents, from the first source that holds one.
    pub fn presented(&self, headers: &HeaderMap) -> Result<PresentedCredential, AuthnError> {
        // The token is borrowed from the request where it can be: one copy per request
        // (the `Authorization` value handed on), not three.
        let mut chosen: Option<(String, bool, Cow<'_, str>)> = None;
        for source in &self.sources {
            let found = match source {
                TokenSourceConfig::Authorization { .. } => {
                    single_header(headers, &http::header::AUTHORIZATION)?
                        .map(|value| (value.to_string(), Cow::Borrowed(bearer_token(value))))
                }
                TokenSourceConfig::Header { name, .. } => {
                    single_header(headers, name)?.map(|value| {
                        let value = value.trim();
                        (format!("Bearer {value}"), Cow::Borrowed(value))
                    })
                }
                TokenSourceConfig::Cookie { name, .. } => single_cookie(headers, name)?
                    .map(|value| (format!("Bearer {value}"), Cow::Owned(value))),
            };
            let Some((authorization, token)) = found else {
                continue;
            };
            if token.is_empty() {
                return Err(AuthnError::Malformed(Malformed::EmptyBearer));
            }
            let cookie_borne = matches!(source, TokenSourceConfig::Cookie { .. });
            match &chosen {
                None => chosen = Some((authorization, cookie_borne, token)),
                // The same token in two places (Cloudflare Access sends the header and
                // the cookie) is one credential.
                Some((_, _, first)) if *first == token => {}
                Some(_) => {
                    return Err(AuthnError::Malformed(Malformed::ConflictingCredentials));
                }
            }
        }
        Ok(match chosen {
            Some((authorization, cookie_borne, _)) => PresentedCredential {
                authorization: Some(authorization),
                cookie_borne,
            },
            None => PresentedCredential::default(),
        })
    }

    /// What to take out of the request before it goes upstream.
    pub fn upstream_edits(&self, headers: &HeaderMap) -> UpstreamCredentialEdits<'_> {
        let mut edits = UpstreamCredentialEdits {
            remove_headers: &self.removed_headers,
            cookie: None,
        };
        let cookies_to_remove = &self.removed_cookies;
        if !cookies_to_remove.is_empty() && headers.contains_key(http::header::COOKIE) {
            let kept = cookie_pairs(headers)
                .filter(|(name, _)| !cookies_to_remove.iter().any(|removed| removed == name))
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>();
            let original = cookie_pairs(headers).count();
            if kept.len() != original || headers.get_all(http::header::COOKIE).iter().count() > 1 {
                edits.cookie = Some((!kept.is_empty()).then(|| kept.join("; ")));
            }
        }
        edits
    }
}

/// The cookie sources that are not forwarded, in configuration order.
fn unforwarded_cookies(sources: &[TokenSourceConfig]) -> Vec<String> {
    sources
        .iter()
        .filter_map(|source| match source {
            TokenSourceConfig::Cookie {
                name,
                forward: false,
            } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn normalised(source: &TokenSourceConfig) -> String {
    match source {
        TokenSourceConfig::Authorization { .. } => "authorization".into(),
        TokenSourceConfig::Header { name, .. } => format!("header:{}", name.to_ascii_lowercase()),
        TokenSourceConfig::Cookie { name, .. } => format!("cookie:{name}"),
    }
}

/// RFC 9110 token characters (header and cookie names).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

/// The value after `Bearer ` for comparing sources (the authenticator parses it
/// properly); the whole value for other schemes.
fn bearer_token(value: &str) -> &str {
    let value = value.trim();
    match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => value,
    }
}

/// The header's value when it appears once (or repeats one value); refused when it
/// repeats different values or is not UTF-8.
fn single_header(
    headers: &HeaderMap,
    name: impl http::header::AsHeaderName,
) -> Result<Option<&str>, AuthnError> {
    let mut found: Option<&str> = None;
    for value in headers.get_all(name) {
        let text = value
            .to_str()
            .map_err(|_| AuthnError::Malformed(Malformed::BearerSyntax))?;
        match found {
            None => found = Some(text),
            Some(first) if first == text => {}
            Some(_) => return Err(AuthnError::Malformed(Malformed::ConflictingCredentials)),
        }
    }
    Ok(found)
}

/// The cookie's value; refused when two cookies of that name differ.
fn single_cookie(headers: &HeaderMap, name: &str) -> Result<Option<String>, AuthnError> {
    for value in headers.get_all(http::header::COOKIE) {
        if value.to_str().is_err() {
            return Err(AuthnError::Malformed(Malformed::BearerSyntax));
        }
    }
    let mut found: Option<&str> = None;
    for (cookie, value) in cookie_pairs(headers) {
        if cookie != name {
            continue;
        }
        match found {
            None => found = Some(value),
            Some(first) if first == value => {}
            Some(_) => return Err(AuthnError::Malformed(Malformed::ConflictingCredentials)),
        }
    }
    Ok(found.map(str::to_string))
}

/// `name=value` pairs of every `Cookie` header (RFC 6265 §5.4 syntax: `; `-separated);
/// values as sent, quotes included. Non-UTF-8 headers are skipped here (refused by the
/// caller where it matters).
pub(crate) fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(http::header::COOKIE)
        .into_iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.trim(), value.trim()))
        })
}

/// The value of one cookie, for datagate's own cookies (first one wins is not used:
/// duplicates are refused by the caller through [`single_cookie`]).
pub(crate) fn cookie_value(headers: &HeaderMap, name: &str) -> Result<Option<String>, AuthnError> {
    single_cookie(headers, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn sources(yaml: &str) -> TokenSources {
        let config: Vec<TokenSourceConfig> = serde_yaml::from_str(yaml).unwrap();
        TokenSources::new(&config, "X-API-Key").unwrap()
    }

    const ALL: &str = "- source: authorization\n- source: header\n  name: Cf-Access-Jwt-Assertion\n- source: cookie\n  name: CF_Authorization\n";

    #[test]
    fn the_first_source_holding_a_token_is_used() {
        let sources = sources(ALL);
        let presented = sources
            .presented(&headers(&[("cf-access-jwt-assertion", "a.b.c")]))
            .unwrap();
        assert_eq!(presented.authorization.as_deref(), Some("Bearer a.b.c"));
        assert!(!presented.cookie_borne);
        let presented = sources
            .presented(&headers(&[("cookie", "x=1; CF_Authorization=c.d.e")]))
            .unwrap();
        assert_eq!(presented.authorization.as_deref(), Some("Bearer c.d.e"));
        assert!(presented.cookie_borne);
        let presented = sources
            .presented(&headers(&[("authorization", "Bearer a.b.c")]))
            .unwrap();
        assert_eq!(presented.authorization.as_deref(), Some("Bearer a.b.c"));
        assert_eq!(
            sources.presented(&HeaderMap::new()).unwrap(),
            PresentedCredential::default()
        );
    }

    #[test]
    fn one_token_in_two_places_is_one_credential_but_two_tokens_are_refused() {
        let sources = sources(ALL);
        let same = headers(&[
            ("cf-access-jwt-assertion", "a.b.c"),
            ("cookie", "CF_Authorization=a.b.c"),
        ]);
        assert!(!sources.presented(&same).unwrap().cookie_borne);
        for conflicting in [
            headers(&[
                ("cf-access-jwt-assertion", "a.b.c"),
                ("cookie", "CF_Authorization=x.y.z"),
            ]),
            headers(&[
                ("authorization", "Bearer a.b.c"),
                ("cf-access-jwt-assertion", "x.y.z"),
            ]),
            headers(&[
                ("authorization", "Bearer a.b.c"),
                ("authorization", "Bearer x.y.z"),
            ]),
            headers(&[("cookie", "CF_Authorization=a.b.c; CF_Authorization=x.y.z")]),
        ] {
            assert_eq!(
                sources.presented(&conflicting),
                Err(AuthnError::Malformed(Malformed::ConflictingCredentials)),
                "{conflicting:?}"
            );
        }
    }

    #[test]
    fn non_utf8_and_empty_values_are_refused_not_ignored() {
        let sources = sources(ALL);
        let mut map = HeaderMap::new();
        map.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert!(sources.presented(&map).is_err());
        assert_eq!(
            sources.presented(&headers(&[("cf-access-jwt-assertion", " ")])),
            Err(AuthnError::Malformed(Malformed::EmptyBearer))
        );
    }

    #[test]
    fn sources_are_removed_before_the_upstream_unless_forwarded() {
        let request = headers(&[
            ("authorization", "Bearer a.b.c"),
            ("cookie", "theme=dark; CF_Authorization=a.b.c; lang=en"),
        ]);
        let all = sources(ALL);
        let edits = all.upstream_edits(&request);
        let names = |edits: &UpstreamCredentialEdits<'_>| -> Vec<String> {
            edits
                .remove_headers
                .iter()
                .map(|name| name.as_str().to_string())
                .collect()
        };
        assert_eq!(
            names(&edits),
            vec!["x-api-key", "authorization", "cf-access-jwt-assertion"]
        );
        assert_eq!(edits.cookie, Some(Some("theme=dark; lang=en".to_string())));
        let forwarding = sources(
            "- source: authorization\n  forward: true\n- source: cookie\n  name: CF_Authorization\n  forward: true\n",
        );
        let forwarded = forwarding.upstream_edits(&request);
        assert_eq!(names(&forwarded), vec!["x-api-key"]);
        assert_eq!(forwarded.cookie, None);
        let only_token = headers(&[("cookie", "CF_Authorization=a.b.c")]);
        assert_eq!(sources(ALL).upstream_edits(&only_token).cookie, Some(None));
    }

    #[test]
    fn bad_source_lists_are_config_errors() {
        for yaml in [
            "[]",
            "- source: header\n  name: Authorization\n",
            "- source: header\n  name: X-API-Key\n",
            "- source: header\n  name: 'bad name'\n",
            "- source: authorization\n- source: authorization\n",
            "- source: header\n  name: X-A\n- source: header\n  name: x-a\n",
        ] {
            let config: Vec<TokenSourceConfig> = serde_yaml::from_str(yaml).unwrap();
            assert!(
                TokenSources::new(&config, "X-API-Key")
                    .unwrap_err()
                    .is_config_error(),
                "{yaml}"
            );
        }
        assert!(serde_yaml::from_str::<Vec<TokenSourceConfig>>("- source: query\n").is_err());
    }
}

/// CSRF defence for credentials a browser attaches by itself (cookies): a request that
/// can change state (anything but `GET`, `HEAD`, `OPTIONS`) must show it comes from this
/// site. `Sec-Fetch-Site`, when sent, must be `same-origin`; otherwise `Origin` must be
/// `public_origin` (or, without one configured, name the request's own `Host`). A
/// request that says neither is refused: every current browser sends one of them.
pub fn check_same_origin(
    method: &str,
    headers: &HeaderMap,
    public_origin: Option<&str>,
) -> Result<(), AuthnError> {
    if matches!(method, "GET" | "HEAD" | "OPTIONS") {
        return Ok(());
    }
    let text = |name: &str| -> Result<Option<&str>, AuthnError> {
        let mut values = headers.get_all(name).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(AuthnError::CrossSiteRequest);
        }
        first
            .map(|value| value.to_str().map_err(|_| AuthnError::CrossSiteRequest))
            .transpose()
    };
    if let Some(site) = text("sec-fetch-site")? {
        return if site.trim().eq_ignore_ascii_case("same-origin") {
            Ok(())
        } else {
            Err(AuthnError::CrossSiteRequest)
        };
    }
    let origin = text("origin")?.ok_or(AuthnError::CrossSiteRequest)?.trim();
    let same = match public_origin {
        Some(expected) => origin.eq_ignore_ascii_case(expected.trim_end_matches('/')),
        None => {
            let host = text("host")?.ok_or(AuthnError::CrossSiteRequest)?.trim();
            origin
                .split_once("://")
                .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
        }
    };
    if same {
        Ok(())
    } else {
        Err(AuthnError::CrossSiteRequest)
    }
}

#[cfg(test)]
mod same_origin_tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn safe_methods_pass_and_state_changes_need_this_sites_origin() {
        let public = Some("https://data.example");
        assert!(check_same_origin("GET", &HeaderMap::new(), public).is_ok());
        for (pairs, allowed) in [
            (vec![("sec-fetch-site", "same-origin")], true),
            (vec![("sec-fetch-site", "same-site")], false),
            (
                vec![
                    ("sec-fetch-site", "cross-site"),
                    ("origin", "https://data.example"),
                ],
                false,
            ),
            (vec![("origin", "https://data.example")], true),
            (vec![("origin", "https://evil.example")], false),
            (vec![("origin", "null")], false),
            (vec![], false),
        ] {
            assert_eq!(
                check_same_origin("POST", &headers(&pairs), public).is_ok(),
                allowed,
                "{pairs:?}"
            );
        }
        let by_host = headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080"),
        ]);
        assert!(check_same_origin("DELETE", &by_host, None).is_ok());
        let other = headers(&[
            ("origin", "http://127.0.0.1:9999"),
            ("host", "127.0.0.1:8080"),
        ]);
        assert!(check_same_origin("DELETE", &other, None).is_err());
    }
}
