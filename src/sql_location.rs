//! Where a route's SQL lives in a request, what else about it is checked, and how the
//! rewritten SQL is put back.
//!
//! Runs after authorization and before the rewrite, on the request as
//! [`crate::decision::request`] read it once: [`find_sql`] pulls every SQL string (JSON
//! pointers with `*` over arrays, a query parameter as in Datasette's `?sql=`, or a form
//! field) with the datasource each one targets; [`apply`] builds what the upstream
//! receives. A JSON body is re-serialised from the checked value (so every JSON parser
//! reads exactly what datagate checked); a query string or form body keeps every byte
//! except the SQL value, which is re-encoded in place.
//!
//! Anything ambiguous is refused: SQL missing at a configured location (unless the route
//! says SQL is optional), SQL that is not a string, a repeated parameter, a raw `;` in a
//! text SQL is read from, template syntax where templating is refused, and body fields
//! the route forbids (options that make the upstream write).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use crate::decision::request::{FormValueError, ParsedBody, ParsedRequest};
use crate::route::JsonPointer;

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
    /// A request carrying no SQL at any location passes (e.g. Datasette's database page,
    /// whose `?sql=` is optional). Off by default: a SQL route without SQL is refused.
    #[serde(default)]
    pub optional: bool,
    /// Whether SQL may contain template syntax the upstream renders after datagate's
    /// rewrite (Superset's Jinja). Unset: the datasource's setting, else `refuse`.
    #[serde(default)]
    pub templating: Option<Templating>,
    /// Where the request carries template parameters (Superset's `/templateParams`);
    /// non-empty parameters are refused where templating is refused.
    #[serde(default)]
    pub template_params: Option<String>,
    /// Body fields that must be absent or hold one of `allowed` (e.g. Superset's
    /// `select_as_cta`, which makes SQL Lab create a table).
    #[serde(default)]
    pub forbidden_fields: Vec<ForbiddenFieldConfig>,
}

/// Whether template syntax may reach an upstream that renders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Templating {
    Refuse,
    Allow,
}

/// A body field that makes the upstream do more than read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForbiddenFieldConfig {
    pub json_pointer: String,
    /// Values that are harmless (e.g. `false`); absent or `null` always is.
    #[serde(default)]
    pub allowed: Vec<Value>,
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
    /// Compiles the section; an error names the offending entry.
    pub fn compile(&self) -> Result<CompiledSql, String> {
        if self.locations.is_empty() {
            return Err("`locations` must name at least one place the SQL is".to_string());
        }
        let pointer = |text: &str, key: String| {
            JsonPointer::parse(text).map_err(|error| format!("{key}: {error}"))
        };
        let mut locations = Vec::with_capacity(self.locations.len());
        for (index, location) in self.locations.iter().enumerate() {
            let source = match (
                &location.json_pointer,
                &location.query_param,
                &location.form_field,
            ) {
                (Some(text), None, None) => {
                    SqlSource::JsonPointer(pointer(text, format!("locations[{index}]"))?)
                }
                (None, Some(name), None) => SqlSource::QueryParam(name.clone()),
                (None, None, Some(name)) => SqlSource::FormField(name.clone()),
                _ => {
                    return Err(format!(
                        "locations[{index}] needs exactly one of `json_pointer`, `query_param`, `form_field`"
                    ));
                }
            };
            let datasource = match &location.datasource {
                SqlDatasource::JsonPointer(text) => CompiledDatasource::JsonPointer(pointer(
                    text,
                    format!("locations[{index}].datasource"),
                )?),
                SqlDatasource::Fixed(uid) => CompiledDatasource::Fixed(uid.clone()),
                SqlDatasource::FromRoute => CompiledDatasource::FromRoute,
            };
            locations.push(SqlLocation { source, datasource });
        }
        let template_params = self
            .template_params
            .as_deref()
            .map(|text| pointer(text, "template_params".into()))
            .transpose()?;
        let forbidden_fields = self
            .forbidden_fields
            .iter()
            .enumerate()
            .map(|(index, field)| {
                Ok(ForbiddenField {
                    pointer: pointer(&field.json_pointer, format!("forbidden_fields[{index}]"))?,
                    allowed: field.allowed.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(CompiledSql {
            reads_body: self
                .locations
                .iter()
                .any(|location| location.json_pointer.is_some() || location.form_field.is_some())
                || template_params.is_some()
                || !forbidden_fields.is_empty(),
            locations,
            allow_writes: self.allow_writes,
            optional: self.optional,
            templating: self.templating,
            template_params,
            forbidden_fields,
        })
    }
}

/// A route's SQL section, compiled at config load.
#[derive(Debug, Clone)]
pub struct CompiledSql {
    pub locations: Vec<SqlLocation>,
    pub allow_writes: bool,
    pub optional: bool,
    pub templating: Option<Templating>,
    pub template_params: Option<JsonPointer>,
    pub forbidden_fields: Vec<ForbiddenField>,
    reads_body: bool,
}

impl CompiledSql {
    /// Whether any check reads the body (the proxy must then read it).
    pub fn reads_body(&self) -> bool {
        self.reads_body
    }

    /// Whether any location uses the route's datasource check.
    pub fn uses_route_datasource(&self) -> bool {
        self.locations
            .iter()
            .any(|location| matches!(location.datasource, CompiledDatasource::FromRoute))
    }
}

#[derive(Debug, Clone)]
pub struct SqlLocation {
    pub source: SqlSource,
    pub datasource: CompiledDatasource,
}

#[derive(Debug, Clone)]
pub struct ForbiddenField {
    pub pointer: JsonPointer,
    pub allowed: Vec<Value>,
}

/// Where a SQL item's datasource comes from, compiled.
#[derive(Debug, Clone)]
pub enum CompiledDatasource {
    /// `*`s take the SQL pointer's indices.
    JsonPointer(JsonPointer),
    Fixed(String),
    FromRoute,
}

/// One place SQL can be found, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlSource {
    /// A JSON pointer; `*` matches every element of an array.
    JsonPointer(JsonPointer),
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
    #[error("`{pointer}` must be a string of SQL, found {found}")]
    NotAString {
        pointer: String,
        found: &'static str,
    },
    #[error("this route carries SQL and the request has none at {0}")]
    Missing(String),
    #[error("datasource at `{0}` is missing or not a string")]
    MissingDatasource(String),
    #[error("SQL parameter: {0}")]
    Form(#[from] FormValueError),
    #[error("the route's SQL needs exactly one datasource, found {0}")]
    AmbiguousDatasource(usize),
    #[error("{0}")]
    Body(crate::route::RouteError),
    #[error("the route reads SQL from a {expected} body, and this body is {found}")]
    WrongBody {
        expected: &'static str,
        found: String,
    },
    #[error(
        "field `{pointer}` holds {found}, which would make the upstream write; this route is read-only"
    )]
    ForbiddenField { pointer: String, found: String },
    #[error(
        "SQL at `{location}` contains template syntax (`{syntax}`) that the upstream would render after datagate's rewrite; templating is refused here"
    )]
    TemplateSyntax {
        location: String,
        syntax: &'static str,
    },
    #[error("the rewritten body could not be serialised: {0}")]
    Reserialise(String),
    #[error(
        "template parameters at `{0}` are refused: the upstream would render them into the SQL after datagate's rewrite"
    )]
    TemplateParams(String),
}

impl SqlLocationError {
    /// The machine-readable kind in the refusal body.
    pub fn kind(&self) -> &'static str {
        match self {
            SqlLocationError::Missing(_) => "sql_missing",
            SqlLocationError::Form(FormValueError::Semicolon) => "ambiguous_query",
            SqlLocationError::ForbiddenField { .. } => "write_option",
            SqlLocationError::TemplateSyntax { .. } | SqlLocationError::TemplateParams(_) => {
                "template_syntax"
            }
            SqlLocationError::Body(crate::route::RouteError::CaseFoldedKey { .. }) => {
                "case_folded_key"
            }
            _ => "bad_sql_location",
        }
    }
}

/// Which part of the request an item came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// A concrete JSON pointer into the body.
    Json(String),
    /// The encoded value's bytes in the query string.
    Query(std::ops::Range<usize>),
    /// The encoded value's bytes in the form body.
    Form(std::ops::Range<usize>),
}

/// One SQL string found in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlItem {
    /// Human-readable location, e.g. `/queries/1/rawSql` or `?sql`.
    pub location: String,
    pub sql: String,
    pub datasource_uid: String,
    place: Place,
}

/// A configured SQL location the request does not fill, named only if no location is
/// filled (then the refusal lists them all), so a request that is fine formats nothing.
enum MissingLocation<'a> {
    Pointer(&'a JsonPointer),
    Concrete(String),
    QueryParameter(&'a str),
    FormField(&'a str),
}

impl std::fmt::Display for MissingLocation<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MissingLocation::Pointer(pointer) => write!(formatter, "`{pointer}`"),
            MissingLocation::Concrete(location) => write!(formatter, "`{location}`"),
            MissingLocation::QueryParameter(name) => write!(formatter, "query parameter `{name}`"),
            MissingLocation::FormField(name) => write!(formatter, "form field `{name}`"),
        }
    }
}

/// Finds every configured SQL string and runs the route's body checks (forbidden
/// fields). `route_datasources` are the uids the route's datasource check extracted (for
/// `from_route`).
pub fn find_sql(
    sql: &CompiledSql,
    route_datasources: &[String],
    request: &ParsedRequest,
) -> Result<Vec<SqlItem>, SqlLocationError> {
    check_forbidden_fields(sql, request)?;
    let mut items = Vec::new();
    let mut missing: Vec<MissingLocation<'_>> = Vec::new();
    for location in &sql.locations {
        match &location.source {
            SqlSource::JsonPointer(pointer) => {
                let root = match &request.body {
                    ParsedBody::Json(root) => root,
                    ParsedBody::Absent => {
                        missing.push(MissingLocation::Pointer(pointer));
                        continue;
                    }
                    ParsedBody::Form(_) | ParsedBody::Unreadable { .. } => {
                        return Err(SqlLocationError::WrongBody {
                            expected: "JSON",
                            found: body_description(&request.body),
                        });
                    }
                };
                for reached in pointer.reach(root).map_err(SqlLocationError::Body)? {
                    let concrete = if reached.location.is_empty() {
                        "/".to_string()
                    } else {
                        reached.location.clone()
                    };
                    let sql_text = match reached.value {
                        Some(Value::String(text)) => text.clone(),
                        None => {
                            // Every element of a list must carry its SQL: a hole could be
                            // filled by another key the upstream reads.
                            if reached.under_wildcard && !sql.optional {
                                return Err(SqlLocationError::Missing(format!("`{concrete}`")));
                            }
                            missing.push(MissingLocation::Concrete(concrete));
                            continue;
                        }
                        Some(other) => {
                            return Err(SqlLocationError::NotAString {
                                pointer: concrete,
                                found: json_type(other),
                            });
                        }
                    };
                    let datasource_uid = match &location.datasource {
                        CompiledDatasource::JsonPointer(datasource) => {
                            json_datasource(&datasource.with_indices(&reached.indices), root)?
                        }
                        other => plain_datasource(other, route_datasources)?,
                    };
                    items.push(SqlItem {
                        location: concrete,
                        sql: sql_text,
                        datasource_uid,
                        place: Place::Json(reached.location),
                    });
                }
            }
            SqlSource::QueryParam(name) => match request.query.single_value(name)? {
                Some((pair, text)) => items.push(SqlItem {
                    location: format!("?{name}"),
                    sql: text,
                    datasource_uid: plain_datasource(&location.datasource, route_datasources)?,
                    place: Place::Query(pair.value_span.clone()),
                }),
                None => missing.push(MissingLocation::QueryParameter(name)),
            },
            SqlSource::FormField(name) => {
                let form = match &request.body {
                    ParsedBody::Form(form) => form,
                    ParsedBody::Absent => {
                        missing.push(MissingLocation::FormField(name));
                        continue;
                    }
                    ParsedBody::Json(_) | ParsedBody::Unreadable { .. } => {
                        return Err(SqlLocationError::WrongBody {
                            expected: "form-encoded",
                            found: body_description(&request.body),
                        });
                    }
                };
                match form.single_value(name)? {
                    Some((pair, text)) => items.push(SqlItem {
                        location: format!("form field `{name}`"),
                        sql: text,
                        datasource_uid: plain_datasource(&location.datasource, route_datasources)?,
                        place: Place::Form(pair.value_span.clone()),
                    }),
                    None => missing.push(MissingLocation::FormField(name)),
                }
            }
        }
    }
    if items.is_empty() && !sql.optional {
        return Err(SqlLocationError::Missing(if missing.is_empty() {
            "any configured location".to_string()
        } else {
            missing
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or ")
        }));
    }
    Ok(items)
}

/// Refuses template syntax in `item`'s SQL and non-empty template parameters, for
/// upstreams that render templates (Superset's Jinja) after datagate's rewrite. Template
/// syntax inside string literals counts: Jinja renders the whole text.
pub fn check_templating(
    sql: &CompiledSql,
    items: &[SqlItem],
    request: &ParsedRequest,
) -> Result<(), SqlLocationError> {
    for item in items {
        if let Some(syntax) = crate::rls::template_syntax(&item.sql) {
            return Err(SqlLocationError::TemplateSyntax {
                location: item.location.clone(),
                syntax,
            });
        }
    }
    if let (Some(pointer), Some(root)) = (&sql.template_params, request.json()) {
        let mut values = crate::route::ReachedValues::new();
        pointer
            .reach_values(root, &mut values)
            .map_err(SqlLocationError::Body)?;
        for value in values {
            let empty = match value {
                None => true,
                Some(Value::String(text)) => {
                    let text = text.trim();
                    text.is_empty()
                        || serde_json::from_str::<Value>(text)
                            .is_ok_and(|value| is_empty_params(&value))
                }
                Some(value) => is_empty_params(value),
            };
            if !empty {
                return Err(SqlLocationError::TemplateParams(pointer.to_string()));
            }
        }
    }
    Ok(())
}

fn is_empty_params(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(members) => members.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

fn check_forbidden_fields(
    sql: &CompiledSql,
    request: &ParsedRequest,
) -> Result<(), SqlLocationError> {
    if sql.forbidden_fields.is_empty() {
        return Ok(());
    }
    let Some(root) = request.json() else {
        return Ok(());
    };
    // One list for every field's values: most fields are absent, and none needs its location.
    let mut values = crate::route::ReachedValues::new();
    for field in &sql.forbidden_fields {
        values.clear();
        field
            .pointer
            .reach_values(root, &mut values)
            .map_err(SqlLocationError::Body)?;
        for value in values.iter().copied().flatten() {
            if !field.allowed.contains(value) {
                let mut found = value.to_string();
                if found.len() > 64 {
                    found = format!("{}…", found.chars().take(64).collect::<String>());
                }
                return Err(SqlLocationError::ForbiddenField {
                    pointer: field.pointer.to_string(),
                    found,
                });
            }
        }
    }
    Ok(())
}

/// What the upstream receives instead of the original query string and body (`None`:
/// forward the original). A JSON body is always re-serialised from the checked value.
pub fn apply(
    request: &ParsedRequest,
    items: &[SqlItem],
    rewrites: &[Option<&str>],
) -> Result<(Option<String>, Option<Vec<u8>>), SqlLocationError> {
    // A request carries one or a few statements, each pointer a few tokens: kept inline.
    let mut json_edits: smallvec::SmallVec<[(PointerTokens<'_>, &str); 2]> =
        smallvec::SmallVec::new();
    let mut query_edits = Vec::new();
    let mut form_edits = Vec::new();
    for (item, rewrite) in items.iter().zip(rewrites) {
        let Some(rewrite) = *rewrite else { continue };
        match &item.place {
            Place::Json(pointer) => {
                if let Some(tokens) = pointer_tokens(pointer) {
                    json_edits.push((tokens, rewrite));
                }
            }
            Place::Query(span) => query_edits.push((span.clone(), encode_form(rewrite))),
            Place::Form(span) => form_edits.push((span.clone(), encode_form(rewrite))),
        }
    }
    let query = (!query_edits.is_empty()).then(|| {
        String::from_utf8_lossy(&apply_edits(request.query.text(), query_edits)).into_owned()
    });
    let body = match (&request.body, request.json()) {
        // A failure refuses the request: the original body still holds unrewritten SQL.
        (ParsedBody::Json(_), Some(json)) => {
            let pending = json_edits
                .iter()
                .map(|(tokens, text)| (tokens.as_slice(), *text))
                .collect();
            // Sized for the rewritten SQL (most of such a body) with room for its
            // escapes and the other members, so the buffer is not regrown as it fills.
            let estimate = 256
                + json_edits
                    .iter()
                    .map(|(_, text)| text.len() + text.len() / 8)
                    .sum::<usize>();
            let mut serialised = Vec::with_capacity(estimate);
            serde_json::to_writer(
                &mut serialised,
                &WithRewrites {
                    value: json,
                    pending,
                },
            )
            .map_err(|error| SqlLocationError::Reserialise(error.to_string()))?;
            Some(serialised)
        }
        (ParsedBody::Form(form), _) if !form_edits.is_empty() => {
            Some(apply_edits(form.text(), form_edits))
        }
        _ => None,
    };
    Ok((query, body))
}

/// A pointer's reference tokens (inline up to four: `/queries/0/rawSql` is three).
type PointerTokens<'p> = smallvec::SmallVec<[Cow<'p, str>; 4]>;

/// A concrete JSON pointer's reference tokens, unescaped as `serde_json`'s `pointer_mut`
/// reads them (`None`: not a pointer, which reaches nothing).
fn pointer_tokens(pointer: &str) -> Option<PointerTokens<'_>> {
    if pointer.is_empty() {
        return Some(PointerTokens::new());
    }
    let rest = pointer.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|token| {
                if token.contains('~') {
                    Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
                } else {
                    Cow::Borrowed(token)
                }
            })
            .collect(),
    )
}

/// An array index token as `serde_json`'s `pointer_mut` reads it.
fn pointer_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

/// The checked document serialised with the rewritten statements in their places —
/// exactly what setting each place on a copy of the document and serialising the copy
/// writes (a later rewrite of the same place wins; a place the document lacks is left
/// alone), without copying the document.
struct WithRewrites<'a> {
    value: &'a Value,
    /// Each rewrite whose pointer passes through this value: its tokens still to walk
    /// below it, and the text that goes there.
    pending: smallvec::SmallVec<[PendingRewrite<'a>; 2]>,
}

/// A rewrite's pointer tokens still to walk, and its text.
type PendingRewrite<'a> = (&'a [Cow<'a, str>], &'a str);

impl<'a> serde::Serialize for WithRewrites<'a> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        if self.pending.is_empty() {
            return self.value.serialize(serializer);
        }
        if let Some((_, text)) = self.pending.iter().rev().find(|(rest, _)| rest.is_empty()) {
            return serializer.serialize_str(text);
        }
        let below = |value: &'a Value, reaches: &dyn Fn(&str) -> bool| WithRewrites {
            value,
            pending: self
                .pending
                .iter()
                .filter_map(|(tokens, text)| {
                    let (first, rest) = tokens.split_first()?;
                    reaches(first).then_some((rest, *text))
                })
                .collect(),
        };
        match self.value {
            Value::Object(members) => {
                let mut map = serializer.serialize_map(Some(members.len()))?;
                for (key, member) in members {
                    map.serialize_entry(key, &below(member, &|token| token == key))?;
                }
                map.end()
            }
            Value::Array(items) => {
                let mut sequence = serializer.serialize_seq(Some(items.len()))?;
                for (index, item) in items.iter().enumerate() {
                    sequence.serialize_element(&below(item, &|token| {
                        pointer_index(token) == Some(index)
                    }))?;
                }
                sequence.end()
            }
            other => other.serialize(serializer),
        }
    }
}

fn encode_form(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn apply_edits(original: &[u8], mut edits: Vec<(std::ops::Range<usize>, String)>) -> Vec<u8> {
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

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn body_description(body: &ParsedBody) -> String {
    match body {
        ParsedBody::Absent => "absent".into(),
        ParsedBody::Json(_) => "JSON".into(),
        ParsedBody::Form(_) => "form-encoded".into(),
        ParsedBody::Unreadable { media_type } => format!("`{media_type}`"),
    }
}

fn json_datasource(pointer: &JsonPointer, root: &Value) -> Result<String, SqlLocationError> {
    let reached = pointer.reach(root).map_err(SqlLocationError::Body)?;
    match reached.as_slice() {
        [one] => match one.value {
            Some(Value::String(uid)) if !uid.is_empty() => Ok(uid.clone()),
            Some(Value::Number(number)) if number.is_i64() || number.is_u64() => {
                Ok(number.to_string())
            }
            _ => Err(SqlLocationError::MissingDatasource(pointer.to_string())),
        },
        _ => Err(SqlLocationError::MissingDatasource(pointer.to_string())),
    }
}

fn plain_datasource(
    datasource: &CompiledDatasource,
    route_datasources: &[String],
) -> Result<String, SqlLocationError> {
    match datasource {
        CompiledDatasource::Fixed(uid) => Ok(uid.clone()),
        CompiledDatasource::FromRoute | CompiledDatasource::JsonPointer(_) => {
            match route_datasources {
                [uid] => Ok(uid.clone()),
                other => Err(SqlLocationError::AmbiguousDatasource(other.len())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> CompiledSql {
        let config: RouteSqlConfig = serde_yaml::from_str(yaml).unwrap();
        config.compile().unwrap()
    }

    fn grafana() -> CompiledSql {
        compile(
            "locations:\n  - json_pointer: /queries/*/rawSql\n    datasource: {json_pointer: /queries/*/datasource/uid}\n",
        )
    }

    fn json(body: &str) -> ParsedRequest {
        ParsedRequest::parse(None, None, Some(body.as_bytes())).unwrap()
    }

    #[test]
    fn finds_every_array_item_with_its_own_datasource() {
        let request = json(
            r#"{"queries":[{"datasource":{"uid":"a"},"rawSql":"SELECT 1"},{"rawSql":"SELECT \"x\"","datasource":{"uid":"b"}}],"from":"now-1h"}"#,
        );
        let items = find_sql(&grafana(), &[], &request).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].sql, "SELECT 1");
        assert_eq!(items[0].datasource_uid, "a");
        assert_eq!(items[0].location, "/queries/0/rawSql");
        assert_eq!(items[1].sql, "SELECT \"x\"");
        assert_eq!(items[1].datasource_uid, "b");
    }

    /// The old reading, kept as the oracle: copy the document, set every place, serialise.
    fn edited_copy(document: &Value, edits: &[(&str, &str)]) -> Vec<u8> {
        let mut copy = document.clone();
        for (pointer, text) in edits {
            if let Some(slot) = copy.pointer_mut(pointer) {
                *slot = Value::String(text.to_string());
            }
        }
        serde_json::to_vec(&copy).unwrap()
    }

    fn with_rewrites(document: &Value, edits: &[(&str, &str)]) -> Vec<u8> {
        let tokens: Vec<(PointerTokens<'_>, &str)> = edits
            .iter()
            .filter_map(|(pointer, text)| Some((pointer_tokens(pointer)?, *text)))
            .collect();
        serde_json::to_vec(&WithRewrites {
            value: document,
            pending: tokens
                .iter()
                .map(|(tokens, text)| (tokens.as_slice(), *text))
                .collect(),
        })
        .unwrap()
    }

    #[test]
    fn rewrites_are_serialised_as_an_edited_copy_would_be() {
        let document = serde_json::json!({
            "sql": "SELECT 1",
            "a/b": {"~": "x", "n": [1, 2.5, null, true, {"q": "s"}]},
            "queries": [{"rawSql": "SELECT 2"}, {"rawSql": "SELECT 3", "x": {}}],
            "empty": [],
            "text": "é\"\n"
        });
        let cases: &[&[(&str, &str)]] = &[
            &[("/sql", "SELECT 'r'")],
            &[("/queries/1/rawSql", "B"), ("/queries/0/rawSql", "A")],
            &[("/a~1b/~0", "tilde"), ("/a~1b/n/4/q", "deep")],
            // Absent places, leading zeros, `+`, past the end, through a scalar: untouched.
            &[
                ("/missing", "no"),
                ("/queries/01/rawSql", "no"),
                ("/queries/+1/rawSql", "no"),
            ],
            &[("/queries/9/rawSql", "no"), ("/sql/x", "no"), ("sql", "no")],
            // The same place twice: the later one wins; a parent set after its child too.
            &[("/sql", "first"), ("/sql", "second")],
            &[("/a~1b/n/0", "child"), ("/a~1b", "parent")],
            &[("/a~1b", "parent"), ("/a~1b/n/0", "child")],
            &[("", "the whole document")],
            &[],
        ];
        for edits in cases {
            assert_eq!(
                String::from_utf8(with_rewrites(&document, edits)).unwrap(),
                String::from_utf8(edited_copy(&document, edits)).unwrap(),
                "{edits:?}"
            );
        }
    }

    #[test]
    fn the_json_body_is_re_serialised_from_the_checked_value() {
        let request = json(
            r#"{ "queries" : [ {"datasource":{"uid":"a"},"rawSql":"SELECT 1", "maxDataPoints": 1000 } ], "x":"\u00e9" }"#,
        );
        let items = find_sql(&grafana(), &[], &request).unwrap();
        let (query, body) = apply(&request, &items, &[Some("SELECT 'é' \"q\"")]).unwrap();
        assert_eq!(query, None);
        // serde_json's map keeps keys sorted; object member order carries no meaning.
        let expected = r#"{"queries":[{"datasource":{"uid":"a"},"maxDataPoints":1000,"rawSql":"SELECT 'é' \"q\""}],"x":"é"}"#;
        assert_eq!(String::from_utf8(body.unwrap()).unwrap(), expected);
        // Unchanged SQL still forwards the canonical form.
        let (_, body) = apply(&request, &items, &[None]).unwrap();
        assert!(
            String::from_utf8(body.unwrap())
                .unwrap()
                .starts_with(r#"{"queries":[{"#)
        );
    }

    #[test]
    fn a_request_filling_no_location_is_told_every_one() {
        let sql = compile(
            "locations:\n  - {json_pointer: /sql, datasource: {fixed: d}}\n  - {json_pointer: /queries/0/sql, datasource: {fixed: d}}\n  - {query_param: sql, datasource: {fixed: d}}\n",
        );
        let refused = |request: &ParsedRequest| match find_sql(&sql, &[], request) {
            Err(SqlLocationError::Missing(message)) => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(&json(r#"{"queries":[{}]}"#)),
            "`/sql` or `/queries/0/sql` or query parameter `sql`"
        );
        assert_eq!(
            refused(&ParsedRequest::parse(None, None, None).unwrap()),
            "`/sql` or `/queries/0/sql` or query parameter `sql`"
        );
        let sql = compile("locations:\n  - {form_field: sql, datasource: {fixed: d}}\n");
        assert_eq!(
            match find_sql(&sql, &[], &ParsedRequest::parse(None, None, None).unwrap()) {
                Err(SqlLocationError::Missing(message)) => message,
                other => panic!("{other:?}"),
            },
            "form field `sql`"
        );
    }

    #[test]
    fn sql_that_is_missing_null_or_elsewhere_is_refused() {
        for body in [
            r#"{"queries":[{"datasource":{"uid":"a"},"rawSql":"SELECT 1"},{"datasource":{"uid":"a"}}]}"#,
            r#"{"queries":[{"datasource":{"uid":"a"},"rawSql":null,"rawQuery":"SELECT * FROM orders"}]}"#,
            r#"{"queries":[]}"#,
            r#"{}"#,
        ] {
            assert!(
                matches!(
                    find_sql(&grafana(), &[], &json(body)),
                    Err(SqlLocationError::Missing(_))
                ),
                "{body}"
            );
        }
        // A key Go would read as `rawSql` is refused before anything else.
        assert_eq!(
            find_sql(
                &grafana(),
                &[],
                &json(r#"{"queries":[{"datasource":{"uid":"a"},"RAWSQL":"SELECT 1"}]}"#)
            )
            .unwrap_err()
            .kind(),
            "case_folded_key"
        );
        // A top-level array is not the object the pointer walks.
        assert!(matches!(
            find_sql(&grafana(), &[], &json(r#"[{"queries":[]}]"#)),
            Err(SqlLocationError::Body(_))
        ));
        let optional =
            compile("optional: true\nlocations:\n  - {query_param: sql, datasource: {fixed: d}}\n");
        let request = ParsedRequest::parse(Some("_size=10"), None, None).unwrap();
        assert_eq!(find_sql(&optional, &[], &request).unwrap(), vec![]);
    }

    #[test]
    fn query_parameters_are_decoded_and_re_encoded_in_place() {
        let sql = compile("locations:\n  - {query_param: sql, datasource: from_route}\n");
        let request = ParsedRequest::parse(
            Some("_shape=array&sql=select+*+from+orders%3B&_size=10"),
            None,
            None,
        )
        .unwrap();
        let items = find_sql(&sql, &["demo".into()], &request).unwrap();
        assert_eq!(items[0].sql, "select * from orders;");
        assert_eq!(items[0].datasource_uid, "demo");
        let (new_query, body) = apply(&request, &items, &[Some("SELECT a&b=1")]).unwrap();
        assert_eq!(body, None);
        assert_eq!(
            new_query.unwrap(),
            "_shape=array&sql=SELECT+a%26b%3D1&_size=10"
        );
    }

    #[test]
    fn repeated_parameters_semicolons_and_non_string_sql_are_refused() {
        let sql = compile("locations:\n  - {query_param: sql, datasource: {fixed: d}}\n");
        let query = |text: &str| ParsedRequest::parse(Some(text), None, None).unwrap();
        assert_eq!(
            find_sql(&sql, &[], &query("sql=select+1&s%71l=select+2")),
            Err(SqlLocationError::Form(FormValueError::Repeated(
                "sql".into()
            )))
        );
        let error = find_sql(&sql, &[], &query("x=1;sql=SELECT%20*%20FROM%20orders")).unwrap_err();
        assert_eq!(error.kind(), "ambiguous_query");
        assert!(matches!(
            find_sql(
                &grafana(),
                &[],
                &json(r#"{"queries":[{"datasource":{"uid":"a"},"rawSql":["SELECT 1"]}]}"#)
            ),
            Err(SqlLocationError::NotAString { .. })
        ));
        assert!(matches!(
            find_sql(
                &grafana(),
                &[],
                &json(r#"{"queries":[{"rawSql":"SELECT 1"}]}"#)
            ),
            Err(SqlLocationError::MissingDatasource(_))
        ));
    }

    #[test]
    fn form_fields_work_like_query_parameters() {
        let sql = compile("locations:\n  - {form_field: sql, datasource: {fixed: d}}\n");
        let request = ParsedRequest::parse(
            None,
            Some("application/x-www-form-urlencoded"),
            Some(b"csrf=x&sql=SELECT%201"),
        )
        .unwrap();
        let items = find_sql(&sql, &[], &request).unwrap();
        assert_eq!(items[0].sql, "SELECT 1");
        let (_, body) = apply(&request, &items, &[Some("SELECT 2")]).unwrap();
        assert_eq!(body.unwrap(), b"csrf=x&sql=SELECT+2");
    }

    #[test]
    fn templating_and_write_options_are_refused() {
        let sql = compile(
            "template_params: /templateParams\nforbidden_fields:\n  - {json_pointer: /select_as_cta, allowed: [false]}\n  - {json_pointer: /tmp_table_name, allowed: [\"\"]}\nlocations:\n  - {json_pointer: /sql, datasource: {fixed: d}}\n",
        );
        let check = |body: &str| -> Result<(), SqlLocationError> {
            let request = json(body);
            let items = find_sql(&sql, &[], &request)?;
            check_templating(&sql, &items, &request)
        };
        assert_eq!(
            check(
                r#"{"sql":"SELECT 1","templateParams":"{}","select_as_cta":false,"tmp_table_name":""}"#
            ),
            Ok(())
        );
        assert_eq!(check(r#"{"sql":"SELECT 1","templateParams":{}}"#), Ok(()));
        for (body, kind) in [
            (r#"{"sql":"SELECT '{{ t }}' AS x"}"#, "template_syntax"),
            (r#"{"sql":"SELECT 1 {# c #}"}"#, "template_syntax"),
            (
                r#"{"sql":"SELECT 1 {% if 1 %}{% endif %}"}"#,
                "template_syntax",
            ),
            (
                r#"{"sql":"SELECT 1","templateParams":"{\"t\": \"x\"}"}"#,
                "template_syntax",
            ),
            (
                r#"{"sql":"SELECT 1","templateParams":{"t":"x"}}"#,
                "template_syntax",
            ),
            (
                r#"{"sql":"SELECT 1","select_as_cta":true,"tmp_table_name":"t"}"#,
                "write_option",
            ),
            (r#"{"sql":"SELECT 1","tmp_table_name":"t"}"#, "write_option"),
        ] {
            assert_eq!(
                check(body).map_err(|error| error.kind()),
                Err(kind),
                "{body}"
            );
        }
    }
}
