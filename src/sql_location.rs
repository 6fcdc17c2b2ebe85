//! Where a route's SQL lives in a request, and how rewritten SQL is put back.
//!
//! Runs after authorization and before the rewrite: [`find_sql`] pulls every SQL string
//! (JSON pointers with `*` over arrays, a query parameter as in Datasette's `?sql=`, or a
//! form field) with the datasource each one targets; [`splice`] writes the rewritten SQL
//! back in place, so every other byte of the body and query string arrives unchanged.
//! JSON positions come from `json-spanned-value` (serde_json underneath), never from a
//! parser of our own; anything ambiguous (a repeated key or parameter) is refused.

use std::ops::Range;

use json_spanned_value::spanned;
use serde::Deserialize;

/// A route's `sql:` section: where its SQL is and whether writes are allowed.
///
/// ```yaml
/// sql:
///   allow_writes: false
///   locations:
///     - json_pointer: /queries/*/rawSql
///       datasource: {json_pointer: /queries/*/datasource/uid}
///     - query_param: sql
///       datasource: from_route
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSqlConfig {
    pub locations: Vec<SqlLocationConfig>,
    /// Non-query statements pass (never against protected tables). Off by default.
    #[serde(default)]
    pub allow_writes: bool,
}

/// One configured location; exactly one of `json_pointer`, `query_param`, `form_field`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlLocationConfig {
    #[serde(default)]
    pub json_pointer: Option<String>,
    #[serde(default)]
    pub query_param: Option<String>,
    #[serde(default)]
    pub form_field: Option<String>,
    pub datasource: SqlDatasource,
}

impl RouteSqlConfig {
    /// The locations as (source, datasource) pairs; an error names the location by index.
    pub fn sources(&self) -> Result<Vec<(SqlSource, SqlDatasource)>, String> {
        if self.locations.is_empty() {
            return Err("`locations` must name at least one place the SQL is".to_string());
        }
        self.locations
            .iter()
            .enumerate()
            .map(|(index, location)| {
                let source = match (&location.json_pointer, &location.query_param, &location.form_field) {
                    (Some(pointer), None, None) => {
                        pointer_segments(pointer).map_err(|error| format!("locations[{index}]: {error}"))?;
                        SqlSource::JsonPointer(pointer.clone())
                    }
                    (None, Some(name), None) => SqlSource::QueryParam(name.clone()),
                    (None, None, Some(name)) => SqlSource::FormField(name.clone()),
                    _ => {
                        return Err(format!(
                            "locations[{index}] needs exactly one of `json_pointer`, `query_param`, `form_field`"
                        ));
                    }
                };
                if let SqlDatasource::JsonPointer(pointer) = &location.datasource {
                    pointer_segments(pointer).map_err(|error| format!("locations[{index}].datasource: {error}"))?;
                }
                Ok((source, location.datasource.clone()))
            })
            .collect()
    }

    /// Whether any location is in the body (the proxy must then read it).
    pub fn reads_body(&self) -> bool {
        self.locations
            .iter()
            .any(|location| location.json_pointer.is_some() || location.form_field.is_some())
    }
}

/// One place SQL can be found, as configured on a route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SqlSource {
    /// A JSON pointer; `*` matches every element of an array.
    JsonPointer(String),
    /// A query-string parameter (`?sql=…`).
    QueryParam(String),
    /// A field of an `application/x-www-form-urlencoded` body.
    FormField(String),
}

/// Where the datasource of a SQL item comes from. Written `from_route`,
/// `{fixed: uid}` or `{json_pointer: /queries/*/datasource/uid}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SqlDatasourceSyntax")]
pub enum SqlDatasource {
    /// A JSON pointer whose `*`s take the same indices as the SQL pointer's, e.g.
    /// SQL `/queries/*/rawSql` with datasource `/queries/*/datasource/uid`.
    JsonPointer(String),
    /// A datasource uid given directly.
    Fixed(String),
    /// Use the uid the route's datasource check extracted (it must be exactly one).
    FromRoute,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SqlDatasourceSyntax {
    Keyword(String),
    Fields {
        #[serde(default)]
        fixed: Option<String>,
        #[serde(default)]
        json_pointer: Option<String>,
    },
}

impl TryFrom<SqlDatasourceSyntax> for SqlDatasource {
    type Error = String;

    fn try_from(syntax: SqlDatasourceSyntax) -> Result<Self, Self::Error> {
        match syntax {
            SqlDatasourceSyntax::Keyword(keyword) if keyword == "from_route" => {
                Ok(SqlDatasource::FromRoute)
            }
            SqlDatasourceSyntax::Fields {
                fixed: Some(uid),
                json_pointer: None,
            } => Ok(SqlDatasource::Fixed(uid)),
            SqlDatasourceSyntax::Fields {
                fixed: None,
                json_pointer: Some(pointer),
            } => Ok(SqlDatasource::JsonPointer(pointer)),
            _ => Err(
                "a SQL datasource is `from_route`, `{fixed: <uid>}` or `{json_pointer: <pointer>}`"
                    .to_string(),
            ),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SqlLocationError {
    #[error("malformed JSON body: {0}")]
    MalformedJson(String),
    #[error("`{pointer}` must be a string of SQL, found {found}")]
    NotAString {
        pointer: String,
        found: &'static str,
    },
    #[error("datasource at `{0}` is missing or not a string")]
    MissingDatasource(String),
    #[error(
        "the request names the SQL parameter `{0}` more than once; refusing an ambiguous request"
    )]
    RepeatedParameter(String),
    #[error("parameter `{0}` is not valid UTF-8 after decoding")]
    InvalidEncoding(String),
    #[error("the route's SQL needs exactly one datasource, found {0}")]
    AmbiguousDatasource(usize),
    #[error("invalid JSON pointer `{0}`")]
    InvalidPointer(String),
}

/// Which part of the request an item came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Body,
    Query,
}

/// One SQL string found in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlItem {
    /// Human-readable location, e.g. `/queries/1/rawSql` or `?sql`.
    pub location: String,
    pub sql: String,
    pub datasource_uid: String,
    part: Part,
    /// Bytes of the encoded value in its part (JSON string incl. quotes, or the raw
    /// percent-encoded parameter value).
    span: Range<usize>,
    encoding: Encoding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    JsonString,
    FormUrlEncoded,
}

/// Finds every configured SQL string. `route_datasources` are the uids the route's
/// datasource check extracted (for [`SqlDatasource::FromRoute`]).
pub fn find_sql(
    sources: &[(SqlSource, SqlDatasource)],
    route_datasources: &[String],
    query: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Vec<SqlItem>, SqlLocationError> {
    let mut items = Vec::new();
    let mut parsed_body: Option<spanned::Value> = None;
    for (source, datasource) in sources {
        match source {
            SqlSource::JsonPointer(pointer) => {
                let Some(body) = body else { continue };
                if parsed_body.is_none() {
                    parsed_body = Some(
                        json_spanned_value::from_slice(body)
                            .map_err(|error| SqlLocationError::MalformedJson(error.to_string()))?,
                    );
                }
                let Some(root) = parsed_body.as_ref() else {
                    continue;
                };
                let segments = pointer_segments(pointer)?;
                let mut found = Vec::new();
                collect_matches(root, &segments, &mut Vec::new(), &mut found);
                for (indices, value) in found {
                    let concrete = substitute(&segments, &indices);
                    let sql = match value.get_ref() {
                        json_spanned_value::Value::String(text) => text.clone(),
                        json_spanned_value::Value::Null => continue,
                        other => {
                            return Err(SqlLocationError::NotAString {
                                pointer: concrete,
                                found: other.type_str(),
                            });
                        }
                    };
                    let datasource_uid =
                        resolve_datasource(datasource, root, &indices, route_datasources)?;
                    items.push(SqlItem {
                        location: concrete,
                        sql,
                        datasource_uid,
                        part: Part::Body,
                        span: value.range(),
                        encoding: Encoding::JsonString,
                    });
                }
            }
            SqlSource::QueryParam(name) => {
                if let Some((span, sql)) = find_form_value(query.unwrap_or_default(), name)? {
                    let datasource_uid = resolve_plain_datasource(datasource, route_datasources)?;
                    items.push(SqlItem {
                        location: format!("?{name}"),
                        sql,
                        datasource_uid,
                        part: Part::Query,
                        span,
                        encoding: Encoding::FormUrlEncoded,
                    });
                }
            }
            SqlSource::FormField(name) => {
                let Some(body) = body else { continue };
                let text = std::str::from_utf8(body)
                    .map_err(|_| SqlLocationError::InvalidEncoding(name.clone()))?;
                if let Some((span, sql)) = find_form_value(text, name)? {
                    let datasource_uid = resolve_plain_datasource(datasource, route_datasources)?;
                    items.push(SqlItem {
                        location: format!("form field `{name}`"),
                        sql,
                        datasource_uid,
                        part: Part::Body,
                        span,
                        encoding: Encoding::FormUrlEncoded,
                    });
                }
            }
        }
    }
    Ok(items)
}

/// Replaces each item's SQL with its rewrite (`None` keeps the original bytes). Returns
/// the new query string and body, or `None` for a part that did not change.
pub fn splice(
    query: Option<&str>,
    body: Option<&[u8]>,
    items: &[SqlItem],
    rewrites: &[Option<String>],
) -> (Option<String>, Option<Vec<u8>>) {
    let mut body_edits = Vec::new();
    let mut query_edits = Vec::new();
    for (item, rewrite) in items.iter().zip(rewrites) {
        let Some(rewrite) = rewrite else { continue };
        let encoded = match item.encoding {
            Encoding::JsonString => serde_json::to_string(rewrite).unwrap_or_default(),
            Encoding::FormUrlEncoded => {
                form_urlencoded::byte_serialize(rewrite.as_bytes()).collect()
            }
        };
        match item.part {
            Part::Body => body_edits.push((item.span.clone(), encoded)),
            Part::Query => query_edits.push((item.span.clone(), encoded)),
        }
    }
    let new_query = match query {
        Some(query) if !query_edits.is_empty() => {
            Some(String::from_utf8_lossy(&apply_edits(query.as_bytes(), query_edits)).into_owned())
        }
        _ => None,
    };
    let new_body = match body {
        Some(body) if !body_edits.is_empty() => Some(apply_edits(body, body_edits)),
        _ => None,
    };
    (new_query, new_body)
}

fn apply_edits(original: &[u8], mut edits: Vec<(Range<usize>, String)>) -> Vec<u8> {
    edits.sort_by_key(|(range, _)| range.start);
    let mut output = Vec::with_capacity(original.len() + 256);
    let mut cursor = 0;
    for (range, replacement) in edits {
        if range.start < cursor || range.end > original.len() {
            continue;
        }
        output.extend_from_slice(original.get(cursor..range.start).unwrap_or_default());
        output.extend_from_slice(replacement.as_bytes());
        cursor = range.end;
    }
    output.extend_from_slice(original.get(cursor..).unwrap_or_default());
    output
}

/// The raw span and decoded value of `name` in `a=1&name=…` form encoding. A name given
/// twice is refused: which copy an upstream uses is its own business.
fn find_form_value(
    text: &str,
    name: &str,
) -> Result<Option<(Range<usize>, String)>, SqlLocationError> {
    let mut found = None;
    let mut offset = 0;
    for pair in text.split('&') {
        let start = offset;
        offset += pair.len() + 1;
        let (raw_name, value_start) = match pair.find('=') {
            Some(position) => (&pair[..position], start + position + 1),
            None => (pair, start + pair.len()),
        };
        if decode_form(raw_name).as_deref() != Some(name) {
            continue;
        }
        if found.is_some() {
            return Err(SqlLocationError::RepeatedParameter(name.to_string()));
        }
        let raw_value = text
            .get(value_start..start + pair.len())
            .unwrap_or_default();
        let value = decode_form(raw_value)
            .ok_or_else(|| SqlLocationError::InvalidEncoding(name.to_string()))?;
        found = Some((value_start..start + pair.len(), value));
    }
    Ok(found)
}

fn decode_form(raw: &str) -> Option<String> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Every,
}

fn pointer_segments(pointer: &str) -> Result<Vec<Segment>, SqlLocationError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(SqlLocationError::InvalidPointer(pointer.to_string()));
    };
    Ok(rest
        .split('/')
        .map(|segment| {
            if segment == "*" {
                Segment::Every
            } else {
                Segment::Key(segment.replace("~1", "/").replace("~0", "~"))
            }
        })
        .collect())
}

fn collect_matches<'v>(
    value: &'v spanned::Value,
    segments: &[Segment],
    indices: &mut Vec<usize>,
    found: &mut Vec<(Vec<usize>, &'v spanned::Value)>,
) {
    let Some((first, rest)) = segments.split_first() else {
        found.push((indices.clone(), value));
        return;
    };
    match (first, value.get_ref()) {
        (Segment::Every, json_spanned_value::Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                indices.push(index);
                collect_matches(item, rest, indices, found);
                indices.pop();
            }
        }
        (Segment::Key(key), json_spanned_value::Value::Object(map)) => {
            if let Some(child) = map.get(key.as_str()) {
                collect_matches(child, rest, indices, found);
            }
        }
        (Segment::Key(key), json_spanned_value::Value::Array(items)) => {
            if let Some(child) = key.parse::<usize>().ok().and_then(|index| items.get(index)) {
                collect_matches(child, rest, indices, found);
            }
        }
        _ => {}
    }
}

/// The pointer with its `*`s replaced by the matched indices, for messages.
fn substitute(segments: &[Segment], indices: &[usize]) -> String {
    let mut indices = indices.iter();
    segments
        .iter()
        .map(|segment| match segment {
            Segment::Key(key) => format!("/{}", key.replace('~', "~0").replace('/', "~1")),
            Segment::Every => format!("/{}", indices.next().copied().unwrap_or_default()),
        })
        .collect()
}

fn resolve_datasource(
    datasource: &SqlDatasource,
    root: &spanned::Value,
    indices: &[usize],
    route_datasources: &[String],
) -> Result<String, SqlLocationError> {
    match datasource {
        SqlDatasource::JsonPointer(pointer) => {
            let segments = pointer_segments(pointer)?;
            let mut indices = indices.iter();
            let concrete: Vec<Segment> = segments
                .into_iter()
                .map(|segment| match segment {
                    Segment::Every => indices
                        .next()
                        .map(|index| Segment::Key(index.to_string()))
                        .unwrap_or(Segment::Every),
                    key => key,
                })
                .collect();
            let mut found = Vec::new();
            collect_matches(root, &concrete, &mut Vec::new(), &mut found);
            let described = substitute(&concrete, &[]);
            match found.as_slice() {
                [(_, value)] => match value.get_ref() {
                    json_spanned_value::Value::String(uid) if !uid.is_empty() => Ok(uid.clone()),
                    json_spanned_value::Value::Number(number) => Ok(number.to_string()),
                    _ => Err(SqlLocationError::MissingDatasource(described)),
                },
                _ => Err(SqlLocationError::MissingDatasource(described)),
            }
        }
        other => resolve_plain_datasource(other, route_datasources),
    }
}

fn resolve_plain_datasource(
    datasource: &SqlDatasource,
    route_datasources: &[String],
) -> Result<String, SqlLocationError> {
    match datasource {
        SqlDatasource::Fixed(uid) => Ok(uid.clone()),
        SqlDatasource::FromRoute | SqlDatasource::JsonPointer(_) => match route_datasources {
            [uid] => Ok(uid.clone()),
            other => Err(SqlLocationError::AmbiguousDatasource(other.len())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grafana_sources() -> Vec<(SqlSource, SqlDatasource)> {
        vec![(
            SqlSource::JsonPointer("/queries/*/rawSql".into()),
            SqlDatasource::JsonPointer("/queries/*/datasource/uid".into()),
        )]
    }

    #[test]
    fn finds_every_array_item_with_its_own_datasource() {
        let body = br#"{"queries":[{"datasource":{"uid":"a"},"rawSql":"SELECT 1"},{"rawSql":"SELECT \"x\"","datasource":{"uid":"b"}}],"from":"now-1h"}"#;
        let items = find_sql(&grafana_sources(), &[], None, Some(body)).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].sql, "SELECT 1");
        assert_eq!(items[0].datasource_uid, "a");
        assert_eq!(items[0].location, "/queries/0/rawSql");
        assert_eq!(items[1].sql, "SELECT \"x\"");
        assert_eq!(items[1].datasource_uid, "b");
    }

    #[test]
    fn splicing_changes_only_the_sql_bytes() {
        let body = br#"{ "queries" : [ {"datasource":{"uid":"a"},"rawSql":"SELECT 1", "maxDataPoints": 1e3 } ], "x":"\u00e9" }"#;
        let items = find_sql(&grafana_sources(), &[], None, Some(body)).unwrap();
        let (query, new_body) =
            splice(None, Some(body), &items, &[Some("SELECT 'é' \"q\"".into())]);
        assert_eq!(query, None);
        let expected = r#"{ "queries" : [ {"datasource":{"uid":"a"},"rawSql":"SELECT 'é' \"q\"", "maxDataPoints": 1e3 } ], "x":"\u00e9" }"#;
        assert_eq!(String::from_utf8(new_body.unwrap()).unwrap(), expected);
    }

    #[test]
    fn query_parameters_are_decoded_and_re_encoded_in_place() {
        let sources = vec![(
            SqlSource::QueryParam("sql".into()),
            SqlDatasource::FromRoute,
        )];
        let query = "_shape=array&sql=select+*+from+orders%3B&_size=10";
        let items = find_sql(&sources, &["demo".into()], Some(query), None).unwrap();
        assert_eq!(items[0].sql, "select * from orders;");
        assert_eq!(items[0].datasource_uid, "demo");
        let (new_query, body) = splice(Some(query), None, &items, &[Some("SELECT a&b=1".into())]);
        assert_eq!(body, None);
        assert_eq!(
            new_query.unwrap(),
            "_shape=array&sql=SELECT+a%26b%3D1&_size=10"
        );
    }

    #[test]
    fn repeated_parameters_and_non_string_sql_are_refused() {
        let sources = vec![(
            SqlSource::QueryParam("sql".into()),
            SqlDatasource::Fixed("d".into()),
        )];
        assert_eq!(
            find_sql(&sources, &[], Some("sql=select+1&s%71l=select+2"), None),
            Err(SqlLocationError::RepeatedParameter("sql".into()))
        );
        let body = br#"{"queries":[{"datasource":{"uid":"a"},"rawSql":["SELECT 1"]}]}"#;
        assert!(matches!(
            find_sql(&grafana_sources(), &[], None, Some(body)),
            Err(SqlLocationError::NotAString { .. })
        ));
        let body = br#"{"queries":[{"rawSql":"SELECT 1"}]}"#;
        assert!(matches!(
            find_sql(&grafana_sources(), &[], None, Some(body)),
            Err(SqlLocationError::MissingDatasource(_))
        ));
    }

    #[test]
    fn form_fields_work_like_query_parameters() {
        let sources = vec![(
            SqlSource::FormField("sql".into()),
            SqlDatasource::Fixed("d".into()),
        )];
        let body = b"csrf=x&sql=SELECT%201";
        let items = find_sql(&sources, &[], None, Some(body)).unwrap();
        assert_eq!(items[0].sql, "SELECT 1");
        let (_, new_body) = splice(None, Some(body), &items, &[Some("SELECT 2".into())]);
        assert_eq!(new_body.unwrap(), b"csrf=x&sql=SELECT+2");
    }
}
