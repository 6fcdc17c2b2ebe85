//! Datasource uids from a request: path parameters, query parameters, JSON pointers (a `*`
//! segment takes every element of an array: a Grafana `/api/ds/query` body names one
//! datasource per query and every one must be allowed), form fields.

use serde_json::Value;

use super::{DatasourceRequirement, PathParams, RouteError, UidSource};

/// Every uid the request names for `requirement`, deduplicated in order of appearance.
pub fn extract_datasource_uids(
    requirement: &DatasourceRequirement,
    params: &PathParams,
    raw_query: Option<&str>,
    body: Option<&[u8]>,
    content_type: Option<&str>,
) -> Result<Vec<String>, RouteError> {
    let mut uids: Vec<String> = Vec::new();
    let mut push = |uid: String, location: &str| -> Result<(), RouteError> {
        if uid.is_empty() {
            return Err(RouteError::EmptyUid(location.to_string()));
        }
        if !uids.contains(&uid) {
            uids.push(uid);
        }
        Ok(())
    };
    let mut json_body: Option<Value> = None;
    for source in &requirement.sources {
        match source {
            UidSource::PathParam(name) => {
                if let Some(value) = params.get(name) {
                    push(value.to_string(), &format!("path parameter `{name}`"))?;
                }
            }
            UidSource::QueryParam(name) => {
                for value in form_values(raw_query.unwrap_or_default(), name) {
                    push(value, &format!("query parameter `{name}`"))?;
                }
            }
            UidSource::FormField(name) => {
                let Some(body) = body else { continue };
                if !content_type.is_some_and(is_form) {
                    continue;
                }
                let text = std::str::from_utf8(body).map_err(|_| RouteError::InvalidForm)?;
                for value in form_values(text, name) {
                    push(value, &format!("form field `{name}`"))?;
                }
            }
            UidSource::JsonPointer(pointer) => {
                let Some(body) = body else { continue };
                if content_type.is_some_and(is_form) {
                    continue;
                }
                if json_body.is_none() {
                    json_body = Some(
                        serde_json::from_slice(body)
                            .map_err(|error| RouteError::MalformedJson(error.to_string()))?,
                    );
                }
                let Some(root) = json_body.as_ref() else {
                    continue;
                };
                let mut found = Vec::new();
                collect(root, &pointer_segments(pointer), String::new(), &mut found);
                for (location, value) in found {
                    let uid = match value {
                        Value::String(text) => text.clone(),
                        Value::Number(number) => number.to_string(),
                        // An absent datasource in one array element is "none named there".
                        Value::Null => continue,
                        other => {
                            return Err(RouteError::InvalidUid {
                                location,
                                found: type_name(other).to_string(),
                            });
                        }
                    };
                    push(uid, &location)?;
                }
            }
        }
    }
    if uids.is_empty() && requirement.required {
        return Err(RouteError::NoDatasource(requirement.route_name.clone()));
    }
    Ok(uids)
}

fn is_form(content_type: &str) -> bool {
    content_type.split(';').next().is_some_and(|media_type| {
        media_type
            .trim()
            .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// All values of `name` in form encoding (`+` is a space), every occurrence.
fn form_values(text: &str, name: &str) -> Vec<String> {
    form_urlencoded::parse(text.as_bytes())
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
        .collect()
}

enum PointerSegment {
    Key(String),
    Every,
}

fn pointer_segments(pointer: &str) -> Vec<PointerSegment> {
    if pointer.is_empty() {
        return Vec::new();
    }
    pointer
        .trim_start_matches('/')
        .split('/')
        .map(|segment| match segment {
            "*" => PointerSegment::Every,
            key => PointerSegment::Key(key.replace("~1", "/").replace("~0", "~")),
        })
        .collect()
}

fn collect<'v>(
    value: &'v Value,
    segments: &[PointerSegment],
    location: String,
    found: &mut Vec<(String, &'v Value)>,
) {
    let Some((first, rest)) = segments.split_first() else {
        found.push((
            if location.is_empty() {
                "/".to_string()
            } else {
                location
            },
            value,
        ));
        return;
    };
    match (first, value) {
        (PointerSegment::Every, Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                collect(item, rest, format!("{location}/{index}"), found);
            }
        }
        (PointerSegment::Key(key), Value::Object(map)) => {
            if let Some(child) = map.get(key) {
                collect(
                    child,
                    rest,
                    format!("{location}/{}", key.replace('~', "~0").replace('/', "~1")),
                    found,
                );
            }
        }
        (PointerSegment::Key(key), Value::Array(items)) => {
            if let Some(child) = key.parse::<usize>().ok().and_then(|index| items.get(index)) {
                collect(child, rest, format!("{location}/{key}"), found);
            }
        }
        _ => {}
    }
}
