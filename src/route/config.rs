//! The `routes:` key of the configuration file, as written by operators. Read at start-up
//! (and on config reload) and compiled by [`RouteTable::from_config`](super::RouteTable::from_config),
//! which performs every semantic check; nothing here runs per request.

use serde::Deserialize;

/// The largest body the proxy may read for inspection. pingora forwards a body read in
/// `request_filter` only from its retry buffer, which holds 64 KiB (pingora 0.9): a larger
/// inspected body would reach the upstream as headers without a body (DESIGN.md §4).
pub const MAX_INSPECTED_BODY_BYTES: usize = 64 * 1024;

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
    /// Inspection limit for routes that read the body; at most
    /// [`MAX_INSPECTED_BODY_BYTES`].
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    #[serde(default)]
    pub table: Vec<RouteConfig>,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        RoutesConfig {
            unmatched: UnmatchedPolicy::Deny,
            max_body_bytes: MAX_INSPECTED_BODY_BYTES,
            table: Vec::new(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    MAX_INSPECTED_BODY_BYTES
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
#[derive(Debug, Clone, Deserialize)]
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
}
