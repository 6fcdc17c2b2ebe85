//! The `routes:` key of the configuration file, as written by operators. Read at start-up
//! (and on config reload) and compiled by [`RouteTable::from_config`](super::RouteTable::from_config),
//! which performs every semantic check; nothing here runs per request.

use serde::Deserialize;

/// The largest `routes.max_body_bytes`: an inspected body is held in memory whole (parsed,
/// rewritten, re-serialised), so the bound is a memory bound per request. Bodies larger
/// than pingora's 64 KiB retry buffer are forwarded by datagate itself (`proxy::forward`).
pub const MAX_INSPECTED_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The default inspection limit: `sql.max_bytes`'s default, so a SQL Lab body holding the
/// largest SQL datagate rewrites by default is not refused for its size first.
pub const DEFAULT_INSPECTED_BODY_BYTES: usize = 256 * 1024;

/// What happens to a request that no route matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmatchedPolicy {
    /// Refused: only what is mapped gets through (the default).
    #[default]
    Deny,
    /// Any authenticated caller passes; anonymous callers are refused.
    Authenticated,
    /// Passes without checks.
    Allow,
}

/// `routes:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesConfig {
    #[serde(default)]
    pub unmatched: UnmatchedPolicy,
    /// Inspection limit for routes that read the body (default
    /// [`DEFAULT_INSPECTED_BODY_BYTES`]); at most [`MAX_INSPECTED_BODY_BYTES`].
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Ready route tables shipped with datagate (`superset`, `grafana`, `datasette`),
    /// added before `table`.
    #[serde(default)]
    pub packs: Vec<String>,
    #[serde(default)]
    pub table: Vec<RouteConfig>,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        RoutesConfig {
            unmatched: UnmatchedPolicy::Deny,
            max_body_bytes: DEFAULT_INSPECTED_BODY_BYTES,
            packs: Vec::new(),
            table: Vec::new(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    DEFAULT_INSPECTED_BODY_BYTES
}

/// `routes.table[i]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique; appears in audit events and refusals.
    pub name: String,
    /// Upper-case HTTP methods; `*` matches any. A route listing `GET` also answers `HEAD`.
    pub methods: Vec<String>,
    /// `/literal/{param}/{db}.json/{*rest}`.
    pub path: String,
    #[serde(default)]
    pub permissions: Option<PermissionsConfig>,
    #[serde(default)]
    pub datasource: Option<DatasourceConfig>,
    /// Refuse anonymous callers on this route even when anonymous access is enabled.
    #[serde(default)]
    pub authenticated: bool,
    /// Where the route's SQL is, for row-level security.
    #[serde(default)]
    pub sql: Option<crate::sql_location::RouteSqlConfig>,
    /// The route's requests are exports (all of them, or those `when` matches).
    #[serde(default)]
    pub export: Option<ExportRouteConfig>,
    /// A JSON-RPC (MCP) endpoint whose `tools/call` requests are authorized per tool.
    #[serde(default)]
    pub mcp: Option<McpConfig>,
    /// A page that shows one table's rows unfiltered (Datasette's table pages): refused
    /// when row-level security would filter that table for the caller.
    #[serde(default)]
    pub table_page: Option<TablePageConfig>,
    /// Let `Upgrade` requests (WebSocket) through once the route's checks pass; what
    /// flows inside the upgraded connection is not inspected. Off: `Upgrade` is refused.
    #[serde(default)]
    pub allow_upgrade: bool,
    /// Results bound to the caller who ran the query (Superset's SQL Lab `client_id`).
    #[serde(default)]
    pub results: Option<ResultsConfig>,
    /// Superset chart data: the query context is checked and the caller's filters are
    /// injected (`inject`), or a replay is refused while filters apply.
    #[serde(default)]
    pub chart_data: Option<crate::chart_data::ChartDataRouteConfig>,
}

/// `routes.table[i].results`: where a request names a results id, and whether it binds
/// the id to the caller (running a query) or must be the id's owner (reading results).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsConfig {
    /// Ids this request creates: recorded as the caller's (refused if another's).
    #[serde(default)]
    pub bind: Vec<UidSourceConfig>,
    /// Ids this request reads: refused unless the caller owns them.
    #[serde(default)]
    pub owned: Vec<UidSourceConfig>,
    /// JSON pointers (`*` for every element) into a successful JSON response whose
    /// string values are ids the caller now owns (Superset's `resultsKey`). The response
    /// is held back until it is complete and the ids are recorded, then sent unchanged.
    #[serde(default)]
    pub bind_response: Vec<String>,
}

/// `routes.table[i].table_page`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablePageConfig {
    /// The path parameter holding the table name (Datasette tilde-encoding is decoded).
    pub table_param: String,
}

/// `routes.table[i].export`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRouteConfig {
    pub kind: crate::export::ExportKind,
    /// Without markers every request on the route is an export; with them, a request is
    /// one when any marker finds one of its values (case-insensitively).
    #[serde(default)]
    pub when: Vec<ExportMarkerConfig>,
}

/// `routes.table[i].export.when[j]`: one place to look (exactly one of the four keys) and
/// the values that make the request an export.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportMarkerConfig {
    #[serde(default)]
    pub path_param: Option<String>,
    #[serde(default)]
    pub query_param: Option<String>,
    #[serde(default)]
    pub json_pointer: Option<String>,
    #[serde(default)]
    pub form_field: Option<String>,
    pub values: Vec<String>,
}

/// `routes.table[i].mcp`: tool name → what calling it needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    pub tools: std::collections::BTreeMap<String, McpToolConfig>,
    /// JSON-RPC methods other than `tools/call` that pass for any caller the route admits
    /// (they carry no data); every other method is refused. Unset: [`DEFAULT_MCP_METHODS`].
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Tools that call the tool they name (`{"name", "arguments"}`, Superset's
    /// `call_tool`): the named tool is decided as if it were called directly.
    #[serde(default)]
    pub proxy_tools: Vec<String>,
    /// Tool arguments the upstream also accepts as a JSON string holding the object
    /// (Superset's `request`): such a string is read strictly and forwarded as the object.
    #[serde(default)]
    pub json_string_arguments: Vec<String>,
}

/// The JSON-RPC methods an MCP route lets through by default: the session handshake,
/// liveness, the tool list and client notifications.
pub const DEFAULT_MCP_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "notifications/initialized",
    "notifications/cancelled",
];

/// `routes.table[i].mcp.tools.<name>`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpToolConfig {
    /// No permission needed, not even a signed-in caller.
    #[serde(default)]
    pub public: bool,
    /// No permission needed, but the caller must be signed in (tools the upstream runs
    /// for any user, e.g. Superset's `get_instance_info`).
    #[serde(default)]
    pub authenticated: bool,
    #[serde(default)]
    pub permissions: Option<PermissionsConfig>,
    /// Tools that return a saved chart's or a dataset's rows: only
    /// `{mode: refuse_when_filtered}` (datagate cannot filter what the upstream builds).
    #[serde(default)]
    pub chart_data: Option<crate::chart_data::ChartDataRouteConfig>,
    /// Where the tool's SQL is (pointers into the JSON-RPC request).
    #[serde(default)]
    pub sql: Option<crate::sql_location::RouteSqlConfig>,
    /// A datasource check on the tool's arguments.
    #[serde(default)]
    pub datasource: Option<DatasourceConfig>,
}

/// `routes.table[i].permissions`: FAB role permissions written `"can_read on Chart"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionsConfig {
    /// Any one suffices (an empty list imposes nothing).
    #[serde(default)]
    pub any_of: Vec<String>,
    /// Every one is required.
    #[serde(default)]
    pub all_of: Vec<String>,
}

/// `routes.table[i].datasource`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasourceConfig {
    /// e.g. `datasources:query`.
    pub action: String,
    /// Where uids are found; the union of everything found is checked.
    pub uids: Vec<UidSourceConfig>,
    /// Refuse a request that names no datasource (default true).
    #[serde(default = "default_required")]
    pub required: bool,
}

fn default_required() -> bool {
    true
}

/// `routes.table[i].datasource.uids[j]`: exactly one of the four keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UidSourceConfig {
    #[serde(default)]
    pub path_param: Option<String>,
    #[serde(default)]
    pub query_param: Option<String>,
    /// RFC 6901 pointer into a JSON body; a `*` segment means every element of an array.
    #[serde(default)]
    pub json_pointer: Option<String>,
    /// A field of an `application/x-www-form-urlencoded` body.
    #[serde(default)]
    pub form_field: Option<String>,
    /// A value inside a Rison query parameter (Superset's `?q=(key:'…')`).
    #[serde(default)]
    pub rison: Option<RisonSourceConfig>,
}

/// `…uids[j].rison`: the query parameter holding Rison, and a JSON pointer into it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RisonSourceConfig {
    pub query_param: String,
    pub json_pointer: String,
}
