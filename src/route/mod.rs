//! The route table: which checks a request needs, decided by method and canonical path.
//!
//! Sits between authentication and authorization: `identify` canonicalises the path
//! ([`canonicalize_path`]) and calls [`RouteTable::resolve`]; `authorize` reads the
//! matched [`Route`]'s required role permissions and uses [`extract_datasource_uids`] to
//! find the datasources the request touches. Compiled once at start-up from the `routes:`
//! config key; matching is a scan of a short table, most specific template first.

mod canonical;
mod extract;

use std::fmt;

use serde::Deserialize;

pub use canonical::{MAX_PATH_BYTES, canonicalize_path};
pub use extract::extract_datasource_uids;

use crate::sql_location::{RouteSqlConfig, SqlDatasource, SqlSource};

/// The largest body the proxy can read for inspection and still forward: pingora replays a
/// body read in `request_filter` from its 64 KiB retry buffer (DESIGN.md §4).
pub const MAX_INSPECTED_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("invalid request path: {0}")]
    InvalidPath(String),
    #[error("`{key}`: {message}")]
    Config { key: String, message: String },
    #[error("malformed JSON body: {0}")]
    MalformedJson(String),
    #[error("datasource uid at `{location}` must be a string or number, found {found}")]
    InvalidUid { location: String, found: String },
    #[error("datasource uid at `{0}` is empty")]
    EmptyUid(String),
    #[error("route `{0}` needs a datasource uid and the request names none")]
    NoDatasource(String),
    #[error("form body is not valid UTF-8")]
    InvalidForm,
}

fn config_error(key: String, message: impl Into<String>) -> RouteError {
    RouteError::Config {
        key,
        message: message.into(),
    }
}

/// What happens to a request no route matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmatchedPolicy {
    /// Refused with 403 (the default: only what is mapped gets through).
    #[default]
    Deny,
    /// Any authenticated caller passes; anonymous callers get 401.
    Authenticated,
    /// Passes unchecked.
    Allow,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesConfig {
    #[serde(default)]
    pub unmatched: UnmatchedPolicy,
    /// Bodies read for inspection are bounded by this (at most 64 KiB).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    #[serde(default)]
    pub table: Vec<RouteConfig>,
}

fn default_max_body_bytes() -> usize {
    MAX_INSPECTED_BODY_BYTES
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// HTTP methods; `*` matches any.
    pub methods: Vec<String>,
    /// `/literal/{param}/{param}.json/{*rest}`.
    pub path: String,
    #[serde(default)]
    pub permissions: Option<PermissionsConfig>,
    #[serde(default)]
    pub datasource: Option<DatasourceRequirementConfig>,
    /// Refuse anonymous callers even when anonymous access is enabled.
    #[serde(default)]
    pub authenticated: bool,
    /// Where the route's SQL is, for row-level security.
    #[serde(default)]
    pub sql: Option<RouteSqlConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionsConfig {
    /// `"can_read on Chart"`; any one suffices.
    #[serde(default)]
    pub any_of: Vec<String>,
    /// Every one is required.
    #[serde(default)]
    pub all_of: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasourceRequirementConfig {
    /// e.g. `datasources:query`.
    pub action: String,
    pub uids: Vec<UidSource>,
    /// Refuse a request that names no datasource (default true).
    #[serde(default = "default_required")]
    pub required: bool,
}

fn default_required() -> bool {
    true
}

/// Where datasource uids come from. Written `{path_param: uid}`, `{query_param: ds}`,
/// `{json_pointer: /queries/*/datasource/uid}` or `{form_field: ds}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "UidSourceFields")]
pub enum UidSource {
    PathParam(String),
    QueryParam(String),
    /// RFC 6901 pointer; a `*` segment means every element of an array.
    JsonPointer(String),
    FormField(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UidSourceFields {
    path_param: Option<String>,
    query_param: Option<String>,
    json_pointer: Option<String>,
    form_field: Option<String>,
}

impl TryFrom<UidSourceFields> for UidSource {
    type Error = String;

    fn try_from(fields: UidSourceFields) -> Result<Self, Self::Error> {
        match (fields.path_param, fields.query_param, fields.json_pointer, fields.form_field) {
            (Some(name), None, None, None) => Ok(UidSource::PathParam(name)),
            (None, Some(name), None, None) => Ok(UidSource::QueryParam(name)),
            (None, None, Some(pointer), None) => Ok(UidSource::JsonPointer(pointer)),
            (None, None, None, Some(name)) => Ok(UidSource::FormField(name)),
            _ => Err("a uid source needs exactly one of `path_param`, `query_param`, `json_pointer`, `form_field`".to_string()),
        }
    }
}

/// A Superset/FAB role permission: `action` on `view`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePermission {
    pub action: String,
    pub view: String,
}

impl fmt::Display for RolePermission {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} on {}", self.action, self.view)
    }
}

impl RolePermission {
    /// Parses `"can_read on Chart"`.
    pub fn parse(text: &str) -> Option<RolePermission> {
        let (action, view) = text.trim().split_once(" on ")?;
        let (action, view) = (action.trim(), view.trim());
        let valid = |part: &str| !part.is_empty() && !part.chars().any(char::is_whitespace);
        (valid(action) && valid(view) && action.starts_with("can_")).then(|| RolePermission {
            action: action.to_string(),
            view: view.to_string(),
        })
    }
}

/// The datasource check of a route.
#[derive(Debug, Clone)]
pub struct DatasourceRequirement {
    pub action: String,
    pub sources: Vec<UidSource>,
    pub required: bool,
    route_name: String,
}

/// A route's SQL, compiled.
#[derive(Debug, Clone)]
pub struct CompiledSql {
    pub sources: Vec<(SqlSource, SqlDatasource)>,
    pub allow_writes: bool,
    reads_body: bool,
}

/// One template segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`, optionally with literal text around it in the same segment (`{db}.json`).
    Param {
        name: String,
        prefix: String,
        suffix: String,
    },
    /// `{*name}`: the rest of the path, possibly empty.
    Rest(String),
}

impl Segment {
    /// Literal beats affixed parameter beats bare parameter beats rest.
    fn specificity(&self) -> u8 {
        match self {
            Segment::Literal(_) => 3,
            Segment::Param { prefix, suffix, .. } if !prefix.is_empty() || !suffix.is_empty() => 2,
            Segment::Param { .. } => 1,
            Segment::Rest(_) => 0,
        }
    }
}

/// Path parameters of a match, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathParams(Vec<(String, String)>);

impl PathParams {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    name: String,
    methods: Vec<String>,
    segments: Vec<Segment>,
    specificity: Vec<u8>,
    any_of: Vec<RolePermission>,
    all_of: Vec<RolePermission>,
    datasource: Option<DatasourceRequirement>,
    authenticated: bool,
    sql: Option<CompiledSql>,
}

impl Route {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Whether the route's checks read the request body (datasource uids or SQL in it).
    pub fn needs_body(&self) -> bool {
        let uids_in_body = self.datasource.as_ref().is_some_and(|requirement| {
            requirement
                .sources
                .iter()
                .any(|source| matches!(source, UidSource::JsonPointer(_) | UidSource::FormField(_)))
        });
        uids_in_body || self.sql.as_ref().is_some_and(|sql| sql.reads_body)
    }
    pub fn permissions_any_of(&self) -> &[RolePermission] {
        &self.any_of
    }
    pub fn permissions_all_of(&self) -> &[RolePermission] {
        &self.all_of
    }
    pub fn datasource(&self) -> Option<&DatasourceRequirement> {
        self.datasource.as_ref()
    }
    pub fn requires_authentication(&self) -> bool {
        self.authenticated
    }
    pub fn sql(&self) -> Option<&CompiledSql> {
        self.sql.as_ref()
    }

    fn matches_method(&self, method: &str) -> bool {
        self.methods
            .iter()
            .any(|allowed| allowed == "*" || allowed == method)
    }

    /// The decoded parameters when `segments` (of a canonical path) fit the template.
    fn match_path(&self, segments: &[&str]) -> Option<PathParams> {
        let mut params = Vec::new();
        let mut remaining = segments;
        for template in &self.segments {
            match template {
                Segment::Rest(name) => {
                    let rest = remaining.join("/");
                    params.push((name.clone(), canonical::decode_segment(&rest)?));
                    return Some(PathParams(params));
                }
                _ => {
                    let (segment, rest) = remaining.split_first()?;
                    let decoded = canonical::decode_segment(segment)?;
                    match template {
                        Segment::Literal(literal) => {
                            if *literal != decoded {
                                return None;
                            }
                        }
                        Segment::Param {
                            name,
                            prefix,
                            suffix,
                        } => {
                            let value = decoded
                                .strip_prefix(prefix.as_str())?
                                .strip_suffix(suffix.as_str())?;
                            if value.is_empty() {
                                return None;
                            }
                            params.push((name.clone(), value.to_string()));
                        }
                        Segment::Rest(_) => {}
                    }
                    remaining = rest;
                }
            }
        }
        remaining.is_empty().then_some(PathParams(params))
    }
}

/// The outcome of routing one request.
pub enum Resolution<'t> {
    Matched {
        route: &'t Route,
        params: PathParams,
    },
    Unmatched(UnmatchedPolicy),
}

#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
    unmatched: UnmatchedPolicy,
    max_body_bytes: usize,
}

const KNOWN_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "*",
];

impl RoutesConfig {
    /// Everything [`RouteTable::from_config`] checks, without keeping the result.
    pub fn validate(&self) -> Result<(), RouteError> {
        RouteTable::from_config(self).map(|_| ())
    }
}

fn parse_template(path: &str, key: &str) -> Result<Vec<Segment>, RouteError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(config_error(
            key.to_string(),
            format!("`{path}` must start with `/`"),
        ));
    };
    let raw_segments: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(raw_segments.len());
    let mut names = std::collections::HashSet::new();
    for (index, raw) in raw_segments.iter().enumerate() {
        let segment = match (raw.find('{'), raw.rfind('}')) {
            (None, None) => Segment::Literal((*raw).to_string()),
            (Some(open), Some(close)) if open < close => {
                let inner = &raw[open + 1..close];
                let (prefix, suffix) = (&raw[..open], &raw[close + 1..]);
                if inner.contains(['{', '}'])
                    || prefix.contains(['{', '}'])
                    || suffix.contains(['{', '}'])
                {
                    return Err(config_error(
                        key.to_string(),
                        format!("segment `{raw}` has more than one parameter"),
                    ));
                }
                if let Some(name) = inner.strip_prefix('*') {
                    if index + 1 != raw_segments.len() || !prefix.is_empty() || !suffix.is_empty() {
                        return Err(config_error(
                            key.to_string(),
                            format!("`{{*{name}}}` must be the whole last segment"),
                        ));
                    }
                    Segment::Rest(name.to_string())
                } else {
                    Segment::Param {
                        name: inner.to_string(),
                        prefix: prefix.to_string(),
                        suffix: suffix.to_string(),
                    }
                }
            }
            _ => {
                return Err(config_error(
                    key.to_string(),
                    format!("unbalanced braces in `{raw}`"),
                ));
            }
        };
        if let Segment::Param { name, .. } | Segment::Rest(name) = &segment {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|character| character.is_ascii_alphanumeric() || character == '_')
            {
                return Err(config_error(
                    key.to_string(),
                    format!("parameter name `{name}` must be letters, digits or `_`"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(config_error(
                    key.to_string(),
                    format!("parameter `{name}` appears twice"),
                ));
            }
        }
        segments.push(segment);
    }
    Ok(segments)
}

fn parse_permissions(list: &[String], key: &str) -> Result<Vec<RolePermission>, RouteError> {
    list.iter()
        .enumerate()
        .map(|(index, text)| {
            RolePermission::parse(text).ok_or_else(|| {
                config_error(
                    format!("{key}[{index}]"),
                    format!("`{text}` is not `can_<action> on <View>`"),
                )
            })
        })
        .collect()
}

fn validate_pointer(pointer: &str, key: String) -> Result<(), RouteError> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(config_error(
            key,
            format!("JSON pointer `{pointer}` must start with `/`"),
        ));
    }
    let mut characters = pointer.chars().peekable();
    while let Some(character) = characters.next() {
        if character == '~' && !matches!(characters.peek(), Some('0' | '1')) {
            return Err(config_error(
                key,
                format!("JSON pointer `{pointer}` has a `~` not followed by 0 or 1"),
            ));
        }
    }
    Ok(())
}

impl RouteTable {
    pub fn from_config(config: &RoutesConfig) -> Result<RouteTable, RouteError> {
        if config.max_body_bytes == 0 || config.max_body_bytes > MAX_INSPECTED_BODY_BYTES {
            return Err(config_error(
                "routes.max_body_bytes".into(),
                format!(
                    "must be between 1 and {MAX_INSPECTED_BODY_BYTES} (pingora can replay at most 64 KiB of an inspected body)"
                ),
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut routes = Vec::with_capacity(config.table.len());
        for (index, route) in config.table.iter().enumerate() {
            let key = format!("routes.table[{index}]");
            if route.name.trim().is_empty() {
                return Err(config_error(format!("{key}.name"), "must not be empty"));
            }
            if !names.insert(route.name.clone()) {
                return Err(config_error(
                    format!("{key}.name"),
                    format!("`{}` is used by another route", route.name),
                ));
            }
            if route.methods.is_empty() {
                return Err(config_error(
                    format!("{key}.methods"),
                    "must list at least one method",
                ));
            }
            for (method_index, method) in route.methods.iter().enumerate() {
                if !KNOWN_METHODS.contains(&method.as_str()) {
                    return Err(config_error(
                        format!("{key}.methods[{method_index}]"),
                        format!("`{method}` is not an HTTP method (write it in upper case)"),
                    ));
                }
            }
            let segments = parse_template(&route.path, &format!("{key}.path"))?;
            let permissions = route.permissions.clone().unwrap_or_default();
            let any_of =
                parse_permissions(&permissions.any_of, &format!("{key}.permissions.any_of"))?;
            let all_of =
                parse_permissions(&permissions.all_of, &format!("{key}.permissions.all_of"))?;
            let datasource = match &route.datasource {
                None => None,
                Some(requirement) => {
                    if requirement.action.trim().is_empty() {
                        return Err(config_error(
                            format!("{key}.datasource.action"),
                            "must not be empty",
                        ));
                    }
                    if requirement.uids.is_empty() {
                        return Err(config_error(
                            format!("{key}.datasource.uids"),
                            "must name at least one source",
                        ));
                    }
                    for (source_index, source) in requirement.uids.iter().enumerate() {
                        let source_key = format!("{key}.datasource.uids[{source_index}]");
                        match source {
                            UidSource::PathParam(name) => {
                                let declared = segments.iter().any(|segment| {
                                    matches!(segment, Segment::Param { name: declared, .. } | Segment::Rest(declared) if declared == name)
                                });
                                if !declared {
                                    return Err(config_error(
                                        source_key,
                                        format!("`{name}` is not a parameter of `{}`", route.path),
                                    ));
                                }
                            }
                            UidSource::JsonPointer(pointer) => {
                                validate_pointer(pointer, source_key)?
                            }
                            UidSource::QueryParam(name) | UidSource::FormField(name)
                                if name.is_empty() =>
                            {
                                return Err(config_error(source_key, "name must not be empty"));
                            }
                            _ => {}
                        }
                    }
                    Some(DatasourceRequirement {
                        action: requirement.action.clone(),
                        sources: requirement.uids.clone(),
                        required: requirement.required,
                        route_name: route.name.clone(),
                    })
                }
            };
            let sql = match &route.sql {
                None => None,
                Some(sql) => {
                    let sources = sql
                        .sources()
                        .map_err(|message| config_error(format!("{key}.sql"), message))?;
                    let uses_route_datasource = sources
                        .iter()
                        .any(|(_, datasource)| matches!(datasource, SqlDatasource::FromRoute));
                    if uses_route_datasource && datasource.is_none() {
                        return Err(config_error(
                            format!("{key}.sql"),
                            "`datasource: from_route` needs the route's `datasource` check",
                        ));
                    }
                    Some(CompiledSql {
                        reads_body: sql.reads_body(),
                        sources,
                        allow_writes: sql.allow_writes,
                    })
                }
            };
            routes.push(Route {
                name: route.name.clone(),
                methods: route.methods.clone(),
                specificity: segments.iter().map(Segment::specificity).collect(),
                segments,
                any_of,
                all_of,
                datasource,
                authenticated: route.authenticated,
                sql,
            });
        }
        Ok(RouteTable {
            routes,
            unmatched: config.unmatched,
            max_body_bytes: config.max_body_bytes,
        })
    }

    /// The most specific route for the request (segment by segment: literal, then
    /// parameter with literal text around it, then bare parameter, then `{*rest}`); the
    /// first in the table on a tie.
    pub fn resolve<'t>(&'t self, method: &str, canonical_path: &str) -> Resolution<'t> {
        let segments: Vec<&str> = canonical_path
            .strip_prefix('/')
            .unwrap_or(canonical_path)
            .split('/')
            .collect();
        let mut best: Option<(&Route, PathParams)> = None;
        for route in &self.routes {
            if !route.matches_method(method) {
                continue;
            }
            let Some(params) = route.match_path(&segments) else {
                continue;
            };
            let better = match &best {
                None => true,
                Some((current, _)) => route.specificity > current.specificity,
            };
            if better {
                best = Some((route, params));
            }
        }
        match best {
            Some((route, params)) => Resolution::Matched { route, params },
            None => Resolution::Unmatched(self.unmatched),
        }
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests;
