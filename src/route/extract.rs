//! Datasource uids from a request, after the route is resolved and (for routes whose
//! [`Route::needs_body`](super::Route::needs_body) is true) the bounded body is read;
//! `authorize` checks the route's datasource action on every uid returned.
//!
//! The rule throughout: when datagate and an upstream could read a request differently,
//! take the union of the readings, because checking an extra uid can only refuse more.
//! Repeated query parameters all count; a query or form body containing `;` is also read
//! with `;` as a separator (older Python and Go servers split on it). Anything that cannot
//! be read reliably is refused: malformed JSON, uids of the wrong JSON type, bodies whose
//! content type the route has no source for, escapes that do not decode to UTF-8.

use std::collections::HashSet;

use serde_json::Value;

use super::canonical::percent_decode_lenient;
use super::template::ParamValue;
use super::{DatasourceRequirement, PathParams, RouteError, UidSource};

/// What the body's content type says it is.
enum BodyKind {
    Json,
    Form,
    Other(String),
}

fn body_kind(content_type: Option<&str>) -> BodyKind {
    let Some(content_type) = content_type else {
        // The brief's rule, and what most JSON APIs assume: no content type reads as JSON.
        return BodyKind::Json;
    };
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if media_type == "application/json" || media_type.ends_with("+json") {
        BodyKind::Json
    } else if media_type == "application/x-www-form-urlencoded" {
        BodyKind::Form
    } else {
        // Echoed back to the client; bounded so a huge header cannot bloat the refusal.
        BodyKind::Other(media_type.chars().take(64).collect())
    }
}

/// Order-preserving set of uids.
#[derive(Default)]
struct Found {
    uids: Vec<String>,
    seen: HashSet<String>,
}

impl Found {
    fn add(&mut self, uid: String, location: impl FnOnce() -> String) -> Result<(), RouteError> {
        if uid.is_empty() {
            return Err(RouteError::EmptyUid(location()));
        }
        if self.seen.insert(uid.clone()) {
            self.uids.push(uid);
        }
        Ok(())
    }
}

/// Every uid the request names for `requirement`, deduplicated, in order of appearance.
pub fn extract_datasource_uids(
    requirement: &DatasourceRequirement,
    params: &PathParams,
    raw_query: Option<&str>,
    body: Option<&[u8]>,
    content_type: Option<&str>,
) -> Result<Vec<String>, RouteError> {
    let mut found = Found::default();
    let body = body.filter(|body| !body.is_empty());
    let kind = body_kind(content_type);
    let reads_json = requirement
        .sources
        .iter()
        .any(|source| matches!(source, UidSource::JsonPointer(_)));
    let reads_form = requirement
        .sources
        .iter()
        .any(|source| matches!(source, UidSource::FormField(_)));
    if body.is_some() && (reads_json || reads_form) {
        match &kind {
            BodyKind::Json if reads_json => {}
            BodyKind::Form if reads_form => {}
            // A body datagate cannot read may still name datasources to the upstream.
            BodyKind::Json => {
                return Err(RouteError::UnsupportedContentType(
                    content_type.map_or("(none)", |_| "application/json").into(),
                ));
            }
            BodyKind::Form => {
                return Err(RouteError::UnsupportedContentType(
                    "application/x-www-form-urlencoded".into(),
                ));
            }
            BodyKind::Other(media_type) => {
                return Err(RouteError::UnsupportedContentType(media_type.clone()));
            }
        }
    }
    let json_body = match (body, &kind) {
        (Some(body), BodyKind::Json) if reads_json => Some(
            serde_json::from_slice::<Value>(body)
                .map_err(|error| RouteError::MalformedJson(error.to_string()))?,
        ),
        _ => None,
    };

    for source in &requirement.sources {
        match source {
            UidSource::PathParam(name) => match params.lookup(name) {
                // An empty `{*rest}` names nothing rather than an empty uid.
                Some(ParamValue::Text("")) | None => {}
                Some(ParamValue::Text(value)) => {
                    found.add(value.to_string(), || format!("path parameter `{name}`"))?;
                }
                Some(ParamValue::NotUtf8 { .. }) => {
                    return Err(RouteError::UidNotUtf8(format!("path parameter `{name}`")));
                }
            },
            UidSource::QueryParam(name) => {
                let location = || format!("query parameter `{name}`");
                for value in form_values(raw_query.unwrap_or_default().as_bytes(), name) {
                    let value = value.ok_or_else(|| RouteError::UidNotUtf8(location()))?;
                    found.add(value, location)?;
                }
            }
            UidSource::FormField(name) => {
                let (Some(body), BodyKind::Form) = (body, &kind) else {
                    continue;
                };
                let location = || format!("form field `{name}`");
                for value in form_values(body, name) {
                    let value = value.ok_or_else(|| RouteError::UidNotUtf8(location()))?;
                    found.add(value, location)?;
                }
            }
            UidSource::JsonPointer(pointer) => {
                let Some(document) = &json_body else {
                    continue;
                };
                for (location, uid) in pointer.uids(document)? {
                    found.add(uid, || format!("`{location}`"))?;
                }
            }
        }
    }
    if found.uids.is_empty() && requirement.required {
        return Err(RouteError::NoDatasource(requirement.route_name.clone()));
    }
    Ok(found.uids)
}

/// Every value of `name` in `application/x-www-form-urlencoded` text (also the query
/// string): `+` is a space, escapes decode once. `None` marks a value that is not UTF-8.
fn form_values(text: &[u8], name: &str) -> Vec<Option<String>> {
    let mut values = values_split_by(text, name, |byte| byte == b'&');
    if text.contains(&b';') {
        values.extend(values_split_by(text, name, |byte| {
            matches!(byte, b'&' | b';')
        }));
    }
    values
}

fn values_split_by(text: &[u8], name: &str, separator: impl Fn(u8) -> bool) -> Vec<Option<String>> {
    text.split(|byte| separator(*byte))
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (key, value) = match pair.iter().position(|byte| *byte == b'=') {
                Some(equals) => (pair.get(..equals)?, pair.get(equals + 1..)?),
                None => (pair, &[][..]),
            };
            (form_decode(key) == name.as_bytes())
                .then(|| String::from_utf8(form_decode(value)).ok())
        })
        .collect()
}

fn form_decode(text: &[u8]) -> Vec<u8> {
    let spaced: Vec<u8> = text
        .iter()
        .map(|&byte| if byte == b'+' { b' ' } else { byte })
        .collect();
    percent_decode_lenient(&spaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_decode_and_repeat() {
        let values = form_values(b"ds=a&x=1&ds=b+c&d%73=%41&ds", "ds");
        assert_eq!(
            values,
            vec![
                Some("a".into()),
                Some("b c".into()),
                Some("A".into()),
                Some(String::new()),
            ]
        );
        assert_eq!(form_values(b"ds=%FF", "ds"), vec![None]);
        assert_eq!(form_values(b"ds=%zz", "ds"), vec![Some("%zz".into())]);
        assert_eq!(form_values(b"ds=a%3Db", "ds"), vec![Some("a=b".into())]);
    }

    #[test]
    fn semicolons_are_read_both_ways() {
        assert_eq!(
            form_values(b"x=1;ds=secret", "ds"),
            vec![Some("secret".into())]
        );
        assert_eq!(
            form_values(b"ds=a;b", "ds"),
            vec![Some("a;b".into()), Some("a".into())]
        );
    }

    #[test]
    fn content_types() {
        assert!(matches!(body_kind(None), BodyKind::Json));
        assert!(matches!(
            body_kind(Some("Application/JSON; charset=utf-8")),
            BodyKind::Json
        ));
        assert!(matches!(
            body_kind(Some("application/vnd.api+json")),
            BodyKind::Json
        ));
        assert!(matches!(
            body_kind(Some("application/x-www-form-urlencoded;charset=UTF-8")),
            BodyKind::Form
        ));
        assert!(
            matches!(body_kind(Some("text/plain")), BodyKind::Other(kind) if kind == "text/plain")
        );
    }
}
