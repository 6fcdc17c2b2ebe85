//! The route table: which checks a request needs, decided by method and canonical path.
//!
//! Sits between authentication and authorization. The proxy canonicalises the request
//! path ([`canonicalize_path`]), resolves it ([`RouteTable::resolve`]) to a [`Route`] and
//! its decoded [`PathParams`], reads the body only when [`Route::needs_body`] (bounded by
//! [`RouteTable::max_body_bytes`]), and [`extract_datasource_uids`] finds the datasources
//! the request touches; `authorize` then checks the route's role permissions and its
//! datasource action on every uid. The canonical path is also what the upstream receives.
//!
//! **Precedence.** Of the routes whose method and template match, the most specific wins.
//! Specificity is compared path segment by path segment from the left, the first
//! difference deciding: a literal segment beats a parameter with literal text around it
//! (`{db}.json`), which beats a bare `{param}`, which beats a segment swallowed by
//! `{*rest}`. Then the end of the path: a template ending exactly like the path (same
//! trailing slash) beats one differing only by a trailing slash, which beats `{*rest}`.
//! Then the method: a route naming it beats a `GET` route answering `HEAD`, which beats
//! `*`. Remaining ties go to the route listed first; a route that could never win (same
//! path shape and no method of its own) is a config error.
//!
//! **HEAD.** A route listing `GET` also matches `HEAD`: Werkzeug and Go serve `HEAD` with
//! the `GET` handler, so `HEAD` must carry `GET`'s checks rather than fall through to the
//! `unmatched` policy.
//!
//! Compiled once per config load; `resolve` scans the table (tens of routes) without
//! allocation beyond the split path and the matched parameters.

pub use crate::sql_location::CompiledSql;

mod canonical;
mod config;
mod extract;
mod index;
mod packs;
mod pointer;
pub mod rison;
mod template;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

pub(crate) use canonical::percent_decode_lenient;
pub use canonical::{MAX_PATH_BYTES, canonicalize_path, canonicalize_path_shared};
pub use config::{
    DEFAULT_INSPECTED_BODY_BYTES, DatasourceConfig, ExportMarkerConfig, ExportRouteConfig,
    MAX_INSPECTED_BODY_BYTES, McpConfig, McpToolConfig, PermissionsConfig, RisonSourceConfig,
    RouteConfig, RoutesConfig, TablePageConfig, UidSourceConfig, UnmatchedPolicy,
};
pub use extract::extract_datasource_uids;
pub use pointer::{JsonPointer, ReachedValues, parse_along};
pub use template::{ParamValue, PathParams};

use template::{SplitPath, Template};

use crate::metrics::RouteLabel;

/// Everything that can go wrong in routing. `Config` is for operators at load time; the
/// other variants can reach HTTP clients and never echo the path or body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    #[error("invalid request path: {0}")]
    InvalidPath(&'static str),
    #[error("malformed JSON body: {0}")]
    MalformedJson(String),
    #[error("this route cannot read datasource uids from a body of type `{0}`")]
    UnsupportedContentType(String),
    #[error("expected {expected} at `{location}` of the JSON body, found {found}")]
    JsonShape {
        location: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("datasource uid at `{location}` must be a string or an integer, found {found}")]
    UidNotScalar {
        location: String,
        found: &'static str,
    },
    #[error("`{0}` names no datasource uid; every element must name one")]
    MissingUid(String),
    #[error("datasource uid in {0} is empty")]
    EmptyUid(String),
    #[error("datasource uid in {0} is not valid UTF-8")]
    UidNotUtf8(String),
    #[error("route `{0}` needs a datasource uid and the request names none")]
    NoDatasource(String),
    #[error(
        "the JSON body has `{found}` where `{location}` is expected; case-insensitive decoders read it as that key, so it is refused"
    )]
    CaseFoldedKey { location: String, found: String },
    #[error("query parameter `{0}` is not rison datagate can read the way the upstream does: {1}")]
    Rison(String, rison::RisonError),
}

fn config_error(key: impl Into<String>, message: impl Into<String>) -> RouteError {
    RouteError::Config {
        key: key.into(),
        message: message.into(),
    }
}

/// A Superset/FAB role permission, written `"can_read on Chart"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    /// Parses `"can_<action> on <View>"`. Views may contain single spaces (`SQL Lab`).
    pub fn parse(text: &str) -> Result<RolePermission, String> {
        let shape = || format!("`{text}` is not `can_<action> on <View>`");
        let (action, view) = text.split_once(" on ").ok_or_else(shape)?;
        let action_ok = action.strip_prefix("can_").is_some_and(|verb| {
            !verb.is_empty()
                && verb
                    .chars()
                    .all(|character| character.is_ascii_alphanumeric() || character == '_')
        });
        let view_ok = !view.is_empty()
            && view.trim() == view
            && !view.contains("  ")
            && !view.chars().any(char::is_control);
        if action_ok && view_ok {
            Ok(RolePermission {
                action: action.to_string(),
                view: view.to_string(),
            })
        } else {
            Err(shape())
        }
    }
}

/// Where a datasource uid is found in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UidSource {
    /// A template parameter, decoded.
    PathParam(String),
    /// Every occurrence of a query parameter.
    QueryParam(String),
    /// Every value a pointer names in a JSON body.
    JsonPointer(JsonPointer),
    /// Every occurrence of a field of an `application/x-www-form-urlencoded` body.
    FormField(String),
    /// Every value a pointer names inside every occurrence of a Rison query parameter.
    Rison { param: String, pointer: JsonPointer },
}

impl UidSource {
    /// Whether this source reads the request body.
    pub fn reads_body(&self) -> bool {
        matches!(self, UidSource::JsonPointer(_) | UidSource::FormField(_))
    }
}

/// A route's datasource check: `action` on every uid found in `sources`.
#[derive(Debug, Clone)]
pub struct DatasourceRequirement {
    pub action: String,
    pub sources: Vec<UidSource>,
    /// A request naming no uid is refused.
    pub required: bool,
    route_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MethodMatcher {
    Named(String),
    Any,
}

/// How a request method matched a route's list; larger wins.
const METHOD_NAMED: u8 = 2;
const METHOD_HEAD_AS_GET: u8 = 1;
const METHOD_ANY: u8 = 0;

const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// One compiled row of the route table.
#[derive(Debug, Clone)]
pub struct Route {
    /// The name, and the series its allowed requests count in.
    label: Arc<RouteLabel>,
    path: String,
    methods: Vec<MethodMatcher>,
    template: Template,
    any_of: Vec<RolePermission>,
    all_of: Vec<RolePermission>,
    datasource: Option<DatasourceRequirement>,
    authenticated: bool,
    sql: Option<CompiledSql>,
    export: Option<ExportRequirement>,
    mcp: Option<McpTools>,
    table_page: Option<String>,
    allow_upgrade: bool,
    results: Option<ResultsRequirement>,
    chart_data: Option<crate::chart_data::ChartDataMode>,
}

/// A route's results binding (see [`crate::decision::results`]): each is a set of places
/// to read ids from, compiled like datasource uid sources.
#[derive(Debug, Clone)]
pub struct ResultsRequirement {
    pub bind: Option<DatasourceRequirement>,
    pub owned: Option<DatasourceRequirement>,
    /// Where a successful JSON response names ids the caller now owns (shared with every
    /// request's response binding, not copied into each).
    pub bind_response: Arc<[JsonPointer]>,
}

/// A route's export declaration: what kind of export, and when a request is one.
#[derive(Debug, Clone)]
pub struct ExportRequirement {
    pub kind: crate::export::ExportKind,
    /// Each: where to look, and the (lower-case) values that make it an export.
    markers: Vec<(DatasourceRequirement, Vec<String>)>,
}

impl ExportRequirement {
    /// Whether this request is an export.
    pub fn applies(
        &self,
        params: &PathParams,
        request: &crate::decision::request::ParsedRequest,
    ) -> Result<bool, RouteError> {
        if self.markers.is_empty() {
            return Ok(true);
        }
        for (source, values) in &self.markers {
            // A body of another kind than the marker reads (Superset's form-encoded chart
            // CSV download carries its JSON in a field) counts as an export: unread is
            // never taken for "not an export".
            let found = match extract_datasource_uids(source, params, request) {
                Err(RouteError::UnsupportedContentType(_)) => return Ok(true),
                other => other?,
            };
            if found
                .iter()
                .any(|value| values.contains(&value.to_lowercase()))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn reads_body(&self) -> bool {
        self.markers
            .iter()
            .any(|(source, _)| source.sources.iter().any(UidSource::reads_body))
    }
}

/// An MCP (JSON-RPC) endpoint's tools, each compiled as a route named `mcp.<tool>`.
#[derive(Debug, Clone)]
pub struct McpTools {
    tools: HashMap<String, Route>,
    methods: HashSet<String>,
    proxy_tools: HashSet<String>,
    json_string_arguments: Vec<String>,
}

impl McpTools {
    pub fn tool(&self, name: &str) -> Option<&Route> {
        self.tools.get(name)
    }

    /// Whether the JSON-RPC method passes without a tool decision.
    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.contains(method)
    }

    /// Whether `name` is a tool that calls the tool it names.
    pub fn is_proxy(&self, name: &str) -> bool {
        self.proxy_tools.contains(name)
    }

    /// Arguments that may arrive as a JSON string holding the object.
    pub fn json_string_arguments(&self) -> &[String] {
        &self.json_string_arguments
    }
}

impl Route {
    pub fn name(&self) -> &str {
        self.label.name()
    }

    /// The name as the permit and the request metrics carry it.
    pub fn label(&self) -> &Arc<RouteLabel> {
        &self.label
    }

    /// The template as written in the config.
    pub fn path_template(&self) -> &str {
        &self.path
    }

    /// The methods as written in the config (`*` for any).
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.methods.iter().map(|method| match method {
            MethodMatcher::Named(name) => name.as_str(),
            MethodMatcher::Any => "*",
        })
    }

    /// Whether the route's checks read the request body (uids, SQL, export markers, or
    /// an MCP call in it).
    pub fn needs_body(&self) -> bool {
        let uids_in_body = self
            .datasource
            .as_ref()
            .is_some_and(|requirement| requirement.sources.iter().any(UidSource::reads_body));
        uids_in_body
            || self.sql.as_ref().is_some_and(CompiledSql::reads_body)
            || self
                .export
                .as_ref()
                .is_some_and(ExportRequirement::reads_body)
            || self.mcp.is_some()
            || matches!(
                self.chart_data,
                Some(
                    crate::chart_data::ChartDataMode::Inject
                        | crate::chart_data::ChartDataMode::Samples
                        | crate::chart_data::ChartDataMode::GuardDataset
                )
            )
            || self.results.as_ref().is_some_and(|results| {
                [&results.bind, &results.owned]
                    .into_iter()
                    .flatten()
                    .any(|requirement| requirement.sources.iter().any(UidSource::reads_body))
            })
    }

    /// The route's export declaration, if it has one.
    pub fn export(&self) -> Option<&ExportRequirement> {
        self.export.as_ref()
    }

    /// The tool table, when the route is an MCP endpoint.
    pub fn mcp(&self) -> Option<&McpTools> {
        self.mcp.as_ref()
    }

    /// `Upgrade` requests may pass (after the route's checks); the tunnel is not inspected.
    pub fn allows_upgrade(&self) -> bool {
        self.allow_upgrade
    }

    /// The path parameter naming the table, when the route is a table page.
    pub fn table_page_param(&self) -> Option<&str> {
        self.table_page.as_deref()
    }

    /// The route's results binding, if any.
    pub fn results(&self) -> Option<&ResultsRequirement> {
        self.results.as_ref()
    }

    /// What the route does with Superset chart data, if it serves any.
    pub fn chart_data(&self) -> Option<crate::chart_data::ChartDataMode> {
        self.chart_data
    }

    /// Where the route's SQL is, for row-level security.
    pub fn sql(&self) -> Option<&CompiledSql> {
        self.sql.as_ref()
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

    /// Anonymous callers are refused even when anonymous access is enabled.
    pub fn requires_authentication(&self) -> bool {
        self.authenticated
    }

    fn method_rank(&self, method: &str) -> Option<u8> {
        self.methods
            .iter()
            .filter_map(|allowed| match allowed {
                MethodMatcher::Named(name) if name == method => Some(METHOD_NAMED),
                MethodMatcher::Named(name) if name == "GET" && method == "HEAD" => {
                    Some(METHOD_HEAD_AS_GET)
                }
                MethodMatcher::Named(_) => None,
                MethodMatcher::Any => Some(METHOD_ANY),
            })
            .max()
    }
}

/// The outcome of routing one request.
#[derive(Debug)]
pub enum Resolution<'t> {
    Matched {
        route: &'t Route,
        params: PathParams,
    },
    Unmatched(UnmatchedPolicy),
}

/// The compiled `routes:` config.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// The routes by leading literal segments: resolution tries only those that can match.
    index: index::RouteIndex,
    unmatched: UnmatchedPolicy,
    max_body_bytes: usize,
}

impl RoutesConfig {
    /// Every check [`RouteTable::from_config`] makes, without keeping the table.
    pub fn validate(&self) -> Result<(), RouteError> {
        RouteTable::from_config(self).map(|_| ())
    }
}

impl RouteTable {
    pub fn from_config(config: &RoutesConfig) -> Result<RouteTable, RouteError> {
        if config.max_body_bytes == 0 || config.max_body_bytes > MAX_INSPECTED_BODY_BYTES {
            return Err(config_error(
                "routes.max_body_bytes",
                format!(
                    "`{}` is outside 1..={MAX_INSPECTED_BODY_BYTES}: an inspected body is held in memory whole",
                    config.max_body_bytes
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut entries: Vec<(String, RouteConfig)> = Vec::new();
        for (pack_index, pack) in config.packs.iter().enumerate() {
            let routes = packs::routes(pack)
                .map_err(|message| config_error(format!("routes.packs[{pack_index}]"), message))?;
            for (index, route) in routes.into_iter().enumerate() {
                entries.push((format!("routes pack `{pack}` route {index}"), route));
            }
        }
        for (index, route_config) in config.table.iter().enumerate() {
            entries.push((format!("routes.table[{index}]"), route_config.clone()));
        }
        let mut routes: Vec<Route> = Vec::with_capacity(entries.len());
        for (key, route_config) in &entries {
            let key = key.as_str();
            let route = compile_route(route_config, key)?;
            if !names.insert(route.name().to_string()) {
                return Err(config_error(
                    format!("{key}.name"),
                    format!("`{}` is already the name of another route", route.name()),
                ));
            }
            if let Some((earlier_index, earlier)) =
                routes.iter().enumerate().find(|(_, earlier)| {
                    earlier.template.same_shape(&route.template)
                        && route
                            .methods
                            .iter()
                            .all(|method| earlier.methods.contains(method))
                })
            {
                return Err(config_error(
                    format!("{key}.path"),
                    format!(
                        "route `{}` can never match: `{}` ({}) has the same path shape and methods and comes first",
                        route.name(),
                        earlier.name(),
                        entries[earlier_index].0
                    ),
                ));
            }
            routes.push(route);
        }
        let mut index = index::RouteIndex::default();
        for (position, route) in routes.iter().enumerate() {
            index.insert(position, route.template.leading_literals());
        }
        Ok(RouteTable {
            routes,
            index,
            unmatched: config.unmatched,
            max_body_bytes: config.max_body_bytes,
        })
    }

    /// The most specific route for `method` and `canonical_path` (see the module docs for
    /// the precedence rule). `canonical_path` must come from [`canonicalize_path`].
    pub fn resolve<'t>(&'t self, method: &str, canonical_path: &str) -> Resolution<'t> {
        let path = SplitPath::new(canonical_path);
        let mut candidates: smallvec::SmallVec<[usize; 16]> = smallvec::SmallVec::new();
        self.index
            .candidates(path.decoded_segments(), &mut candidates);
        // In table order, so that a tie goes to the earlier route as it always has.
        candidates.sort_unstable();
        let routes = candidates
            .into_iter()
            .filter_map(|position| self.routes.get(position));
        self.most_specific(routes, method, &path)
    }

    /// [`Self::resolve`] by trying every route: the oracle the index is tested against.
    #[cfg(test)]
    fn resolve_by_scan<'t>(&'t self, method: &str, canonical_path: &str) -> Resolution<'t> {
        let path = SplitPath::new(canonical_path);
        self.most_specific(self.routes.iter(), method, &path)
    }

    /// The most specific of `routes` (given in table order) that matches; on a tie the
    /// earlier one.
    fn most_specific<'t>(
        &'t self,
        routes: impl Iterator<Item = &'t Route>,
        method: &str,
        path: &SplitPath<'_>,
    ) -> Resolution<'t> {
        let mut best: Option<(&Route, PathParams, template::Specificity)> = None;
        for route in routes {
            let Some(method_rank) = route.method_rank(method) else {
                continue;
            };
            let Some(found) = route.template.matches(path) else {
                continue;
            };
            let mut rank = found.specificity;
            rank.push(method_rank);
            // Strictly greater: on a tie the earlier route stays.
            if best
                .as_ref()
                .is_none_or(|(_, _, best_rank)| rank > *best_rank)
            {
                best = Some((route, found.params, rank));
            }
        }
        match best {
            Some((route, params, _)) => Resolution::Matched { route, params },
            None => Resolution::Unmatched(self.unmatched),
        }
    }

    /// Largest body read for inspection on routes that [`Route::needs_body`].
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    pub fn unmatched_policy(&self) -> UnmatchedPolicy {
        self.unmatched
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

fn compile_route(config: &RouteConfig, key: &str) -> Result<Route, RouteError> {
    if config.name.trim().is_empty() {
        return Err(config_error(format!("{key}.name"), "must not be empty"));
    }
    if config.methods.is_empty() {
        return Err(config_error(
            format!("{key}.methods"),
            "must list at least one method",
        ));
    }
    let mut methods = Vec::with_capacity(config.methods.len());
    for (method_index, method) in config.methods.iter().enumerate() {
        let method_key = format!("{key}.methods[{method_index}]");
        let matcher = if method == "*" {
            MethodMatcher::Any
        } else if KNOWN_METHODS.contains(&method.as_str()) {
            MethodMatcher::Named(method.clone())
        } else if KNOWN_METHODS.contains(&method.to_ascii_uppercase().as_str()) {
            return Err(config_error(
                method_key,
                format!(
                    "`{method}`: methods are case-sensitive; write `{}`",
                    method.to_ascii_uppercase()
                ),
            ));
        } else {
            return Err(config_error(
                method_key,
                format!("`{method}` is not an HTTP method"),
            ));
        };
        if methods.contains(&matcher) {
            return Err(config_error(
                method_key,
                format!("`{method}` is listed twice"),
            ));
        }
        methods.push(matcher);
    }
    let template = Template::parse(&config.path)
        .map_err(|message| config_error(format!("{key}.path"), message))?;
    let permissions = config.permissions.clone().unwrap_or_default();
    let any_of = compile_permissions(&permissions.any_of, &format!("{key}.permissions.any_of"))?;
    let all_of = compile_permissions(&permissions.all_of, &format!("{key}.permissions.all_of"))?;
    let datasource = config
        .datasource
        .as_ref()
        .map(|datasource| compile_datasource(datasource, &template, &config.name, key))
        .transpose()?;
    let sql = match &config.sql {
        None => None,
        Some(sql) => {
            let compiled = sql
                .compile()
                .map_err(|message| config_error(format!("{key}.sql"), message))?;
            if compiled.uses_route_datasource() && datasource.is_none() {
                return Err(config_error(
                    format!("{key}.sql"),
                    "`datasource: from_route` needs the route's `datasource` check",
                ));
            }
            Some(compiled)
        }
    };
    let export = config
        .export
        .as_ref()
        .map(|export| compile_export(export, &template, &config.name, key))
        .transpose()?;
    let mcp = match &config.mcp {
        None => None,
        Some(mcp) => {
            if config.sql.is_some() || export.is_some() {
                return Err(config_error(
                    format!("{key}.mcp"),
                    "an MCP route declares SQL and checks per tool, not on the route",
                ));
            }
            let mut tools = HashMap::new();
            for name in &mcp.proxy_tools {
                if mcp.tools.contains_key(name) {
                    return Err(config_error(
                        format!("{key}.mcp.proxy_tools"),
                        format!(
                            "`{name}` is also in `tools`: a proxy is decided as the tool it names"
                        ),
                    ));
                }
            }
            for (name, tool) in &mcp.tools {
                let tool_key = format!("{key}.mcp.tools.{name}");
                let has_permissions = tool.permissions.as_ref().is_some_and(|permissions| {
                    !permissions.any_of.is_empty() || !permissions.all_of.is_empty()
                });
                let stated = [tool.public, tool.authenticated, has_permissions];
                if stated.iter().filter(|stated| **stated).count() != 1 {
                    return Err(config_error(
                        tool_key,
                        "needs `permissions`, `authenticated: true` or `public: true` (exactly one)",
                    ));
                }
                if tool.chart_data.as_ref().is_some_and(|chart| {
                    chart.mode != crate::chart_data::ChartDataMode::RefuseWhenFiltered
                }) {
                    return Err(config_error(
                        format!("{tool_key}.chart_data"),
                        "an MCP tool carries no query context: only `{mode: refuse_when_filtered}`",
                    ));
                }
                let tool_route = RouteConfig {
                    name: format!("mcp.{name}"),
                    methods: config.methods.clone(),
                    path: config.path.clone(),
                    permissions: tool.permissions.clone(),
                    datasource: tool.datasource.clone(),
                    authenticated: (config.authenticated && !tool.public) || tool.authenticated,
                    sql: tool.sql.clone(),
                    export: None,
                    mcp: None,
                    table_page: None,
                    allow_upgrade: false,
                    results: None,
                    chart_data: tool.chart_data.clone(),
                };
                tools.insert(name.clone(), compile_route(&tool_route, &tool_key)?);
            }
            let methods: HashSet<String> = match &mcp.methods {
                Some(methods) => methods.iter().cloned().collect(),
                None => config::DEFAULT_MCP_METHODS
                    .iter()
                    .map(|method| (*method).to_string())
                    .collect(),
            };
            if methods.contains("tools/call") {
                return Err(config_error(
                    format!("{key}.mcp.methods"),
                    "`tools/call` is decided per tool, not listed as a method",
                ));
            }
            Some(McpTools {
                tools,
                methods,
                proxy_tools: mcp.proxy_tools.iter().cloned().collect(),
                json_string_arguments: mcp.json_string_arguments.clone(),
            })
        }
    };
    let table_page = match &config.table_page {
        None => None,
        Some(page) => {
            if !template.has_param(&page.table_param) {
                return Err(config_error(
                    format!("{key}.table_page.table_param"),
                    format!(
                        "`{}` is not a parameter of the route's path",
                        page.table_param
                    ),
                ));
            }
            if datasource.is_none() {
                return Err(config_error(
                    format!("{key}.table_page"),
                    "needs the route's `datasource` check (which datasource the table is in)",
                ));
            }
            Some(page.table_param.clone())
        }
    };
    let results = match &config.results {
        None => None,
        Some(results) => {
            let compile = |uids: &[UidSourceConfig], which: &str| {
                if uids.is_empty() {
                    return Ok(None);
                }
                let source = DatasourceConfig {
                    action: "results".to_string(),
                    uids: uids.to_vec(),
                    required: false,
                };
                let key = format!("{key}.results.{which}");
                compile_datasource(&source, &template, &config.name, &key)
                    .map(Some)
                    .map_err(|error| match error {
                        RouteError::Config { key, message } => RouteError::Config {
                            key: key.replace(".datasource.uids", ""),
                            message,
                        },
                        other => other,
                    })
            };
            let bind = compile(&results.bind, "bind")?;
            let owned = compile(&results.owned, "owned")?;
            let mut bind_response = Vec::with_capacity(results.bind_response.len());
            for (index, pointer) in results.bind_response.iter().enumerate() {
                bind_response.push(JsonPointer::parse(pointer).map_err(|message| {
                    config_error(format!("{key}.results.bind_response[{index}]"), message)
                })?);
            }
            if bind.is_none() && owned.is_none() && bind_response.is_empty() {
                return Err(config_error(
                    format!("{key}.results"),
                    "needs `bind`, `owned` or `bind_response` (where the results id is)",
                ));
            }
            Some(ResultsRequirement {
                bind,
                owned,
                bind_response: bind_response.into(),
            })
        }
    };
    let chart_data = config.chart_data.as_ref().map(|chart| chart.mode);
    if chart_data.is_some() && (config.sql.is_some() || config.mcp.is_some()) {
        return Err(config_error(
            format!("{key}.chart_data"),
            "a chart-data route carries a query context, not `sql` or `mcp`",
        ));
    }
    Ok(Route {
        chart_data,
        results,
        label: Arc::new(RouteLabel::new(config.name.as_str())),
        path: config.path.clone(),
        methods,
        template,
        any_of,
        all_of,
        datasource,
        authenticated: config.authenticated,
        sql,
        export,
        mcp,
        table_page,
        allow_upgrade: config.allow_upgrade,
    })
}

fn compile_export(
    config: &ExportRouteConfig,
    template: &Template,
    route_name: &str,
    route_key: &str,
) -> Result<ExportRequirement, RouteError> {
    let mut markers = Vec::with_capacity(config.when.len());
    for (index, marker) in config.when.iter().enumerate() {
        let key = format!("{route_key}.export.when[{index}]");
        if marker.values.is_empty() {
            return Err(config_error(
                format!("{key}.values"),
                "must list at least one value",
            ));
        }
        let source = DatasourceConfig {
            action: "export".to_string(),
            uids: vec![UidSourceConfig {
                path_param: marker.path_param.clone(),
                query_param: marker.query_param.clone(),
                json_pointer: marker.json_pointer.clone(),
                form_field: marker.form_field.clone(),
                rison: None,
            }],
            required: false,
        };
        let requirement = compile_datasource(&source, template, route_name, &key).map_err(
            |error| match error {
                RouteError::Config { key, message } => RouteError::Config {
                    key: key.replace(".datasource.uids[0]", ""),
                    message,
                },
                other => other,
            },
        )?;
        markers.push((
            requirement,
            marker
                .values
                .iter()
                .map(|value| value.to_lowercase())
                .collect(),
        ));
    }
    Ok(ExportRequirement {
        kind: config.kind,
        markers,
    })
}

fn compile_permissions(list: &[String], key: &str) -> Result<Vec<RolePermission>, RouteError> {
    list.iter()
        .enumerate()
        .map(|(index, text)| {
            RolePermission::parse(text)
                .map_err(|message| config_error(format!("{key}[{index}]"), message))
        })
        .collect()
}

fn compile_datasource(
    config: &DatasourceConfig,
    template: &Template,
    route_name: &str,
    route_key: &str,
) -> Result<DatasourceRequirement, RouteError> {
    let key = format!("{route_key}.datasource");
    if config.action.trim().is_empty() {
        return Err(config_error(format!("{key}.action"), "must not be empty"));
    }
    if config
        .action
        .chars()
        .any(|character| character.is_whitespace() || character.is_control())
    {
        return Err(config_error(
            format!("{key}.action"),
            format!(
                "`{}` must not contain whitespace",
                config.action.escape_debug()
            ),
        ));
    }
    if config.uids.is_empty() {
        return Err(config_error(
            format!("{key}.uids"),
            "must name at least one uid source",
        ));
    }
    let mut sources = Vec::with_capacity(config.uids.len());
    for (index, source) in config.uids.iter().enumerate() {
        let source_key = format!("{key}.uids[{index}]");
        let compiled = match (
            &source.path_param,
            &source.query_param,
            &source.json_pointer,
            &source.form_field,
            &source.rison,
        ) {
            (None, None, None, None, Some(rison)) => {
                if rison.query_param.is_empty() {
                    return Err(config_error(
                        format!("{source_key}.rison.query_param"),
                        "must not be empty",
                    ));
                }
                UidSource::Rison {
                    param: rison.query_param.clone(),
                    pointer: JsonPointer::parse(&rison.json_pointer).map_err(|message| {
                        config_error(format!("{source_key}.rison.json_pointer"), message)
                    })?,
                }
            }
            (Some(name), None, None, None, None) => {
                if !template.has_param(name) {
                    return Err(config_error(
                        format!("{source_key}.path_param"),
                        format!("`{name}` is not a parameter of the route's path"),
                    ));
                }
                UidSource::PathParam(name.clone())
            }
            (None, Some(name), None, None, None) => {
                if name.is_empty() {
                    return Err(config_error(
                        format!("{source_key}.query_param"),
                        "must not be empty",
                    ));
                }
                UidSource::QueryParam(name.clone())
            }
            (None, None, Some(pointer), None, None) => {
                UidSource::JsonPointer(JsonPointer::parse(pointer).map_err(|message| {
                    config_error(format!("{source_key}.json_pointer"), message)
                })?)
            }
            (None, None, None, Some(name), None) => {
                if name.is_empty() {
                    return Err(config_error(
                        format!("{source_key}.form_field"),
                        "must not be empty",
                    ));
                }
                UidSource::FormField(name.clone())
            }
            _ => {
                return Err(config_error(
                    source_key,
                    "needs exactly one of `path_param`, `query_param`, `json_pointer`, `form_field`, `rison`",
                ));
            }
        };
        if sources.contains(&compiled) {
            return Err(config_error(source_key, "repeats an earlier uid source"));
        }
        sources.push(compiled);
    }
    Ok(DatasourceRequirement {
        action: config.action.clone(),
        sources,
        required: config.required,
        route_name: route_name.to_string(),
    })
}
