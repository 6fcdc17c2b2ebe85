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

use super::template::ParamValue;
use super::{DatasourceRequirement, PathParams, RouteError, UidSource};
use crate::decision::request::{ParsedBody, ParsedRequest};

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
    request: &ParsedRequest,
) -> Result<Vec<String>, RouteError> {
    let mut found = Found::default();
    let reads_json = requirement
        .sources
        .iter()
        .any(|source| matches!(source, UidSource::JsonPointer(_)));
    let reads_form = requirement
        .sources
        .iter()
        .any(|source| matches!(source, UidSource::FormField(_)));
    if reads_json || reads_form {
        // A body datagate cannot read may still name datasources to the upstream.
        match &request.body {
            ParsedBody::Absent => {}
            ParsedBody::Json(_) if reads_json => {}
            ParsedBody::Form(_) if reads_form => {}
            ParsedBody::Json(_) => {
                return Err(RouteError::UnsupportedContentType(
                    "application/json".into(),
                ));
            }
            ParsedBody::Form(_) => {
                return Err(RouteError::UnsupportedContentType(
                    "application/x-www-form-urlencoded".into(),
                ));
            }
            ParsedBody::Unreadable { media_type } => {
                return Err(RouteError::UnsupportedContentType(media_type.clone()));
            }
        }
    }

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
                for value in request.query.all_values(name) {
                    let value = value.ok_or_else(|| RouteError::UidNotUtf8(location()))?;
                    found.add(value, location)?;
                }
            }
            UidSource::FormField(name) => {
                let ParsedBody::Form(form) = &request.body else {
                    continue;
                };
                let location = || format!("form field `{name}`");
                for value in form.all_values(name) {
                    let value = value.ok_or_else(|| RouteError::UidNotUtf8(location()))?;
                    found.add(value, location)?;
                }
            }
            UidSource::Rison { param, pointer } => {
                let location = || format!("query parameter `{param}`");
                for value in request.query.all_values(param) {
                    let value = value.ok_or_else(|| RouteError::UidNotUtf8(location()))?;
                    let document = super::rison::parse(&value)
                        .map_err(|error| RouteError::Rison(param.clone(), error))?;
                    for (inner, uid) in pointer.uids(&document)? {
                        found.add(uid, || format!("`{inner}` of {}", location()))?;
                    }
                }
            }
            UidSource::JsonPointer(pointer) => {
                let Some(document) = request.json() else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::JsonPointer;

    fn requirement(sources: Vec<UidSource>) -> DatasourceRequirement {
        DatasourceRequirement {
            action: "datasources:query".into(),
            sources,
            required: false,
            route_name: "test".into(),
        }
    }

    fn parsed(query: &str, content_type: Option<&str>, body: &[u8]) -> ParsedRequest {
        ParsedRequest::parse(Some(query), content_type, Some(body)).unwrap()
    }

    #[test]
    fn query_values_are_read_both_ways_when_a_semicolon_is_present() {
        let requirement = requirement(vec![UidSource::QueryParam("ds".into())]);
        let uids = extract_datasource_uids(
            &requirement,
            &PathParams::default(),
            &parsed("ds=a;ds=b", None, b""),
        )
        .unwrap();
        assert_eq!(uids, vec!["a;ds=b".to_string(), "a".into(), "b".into()]);
    }

    #[test]
    fn a_body_of_another_type_is_refused_when_uids_are_read_from_it() {
        let pointer = JsonPointer::parse("/uid").unwrap();
        let requirement = requirement(vec![UidSource::JsonPointer(pointer)]);
        let request = parsed("", Some("text/plain"), b"uid=secret");
        assert!(matches!(
            extract_datasource_uids(&requirement, &PathParams::default(), &request),
            Err(RouteError::UnsupportedContentType(_))
        ));
    }
}
