//! TEMPORARY STUB — replaced by the real route module.
use serde::Deserialize;
#[derive(Debug, Clone, Deserialize, Default)]
pub struct RoutesConfig {}
impl RoutesConfig {
    pub fn validate(&self) -> Result<(), RouteError> {
        Ok(())
    }
}
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("bad path")]
    BadPath,
    #[error("malformed json")]
    MalformedJson(String),
    #[error("no datasource")]
    NoDatasource,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmatchedPolicy {
    Deny,
    Authenticated,
    Allow,
}
#[derive(Debug, Clone)]
pub struct RolePermission {
    pub action: String,
    pub view: String,
}
impl std::fmt::Display for RolePermission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}", self.action, self.view)
    }
}
#[derive(Debug, Clone)]
pub struct DatasourceRequirement {
    pub action: String,
}
#[derive(Debug, Clone, Default)]
pub struct PathParams {}
pub struct Route {
    pub name: String,
}
impl Route {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn needs_body(&self) -> bool {
        false
    }
    pub fn permissions_any_of(&self) -> &[RolePermission] {
        &[]
    }
    pub fn permissions_all_of(&self) -> &[RolePermission] {
        &[]
    }
    pub fn datasource(&self) -> Option<&DatasourceRequirement> {
        None
    }
    pub fn requires_authentication(&self) -> bool {
        false
    }
    pub fn sql(&self) -> Option<&CompiledSql> {
        None
    }
}
pub enum Resolution<'t> {
    Matched {
        route: &'t Route,
        params: PathParams,
    },
    Unmatched(UnmatchedPolicy),
}
pub struct RouteTable {}
impl RouteTable {
    pub fn from_config(_config: &RoutesConfig) -> Result<Self, RouteError> {
        Ok(RouteTable {})
    }
    pub fn resolve<'t>(&'t self, _method: &str, _canonical_path: &str) -> Resolution<'t> {
        Resolution::Unmatched(UnmatchedPolicy::Deny)
    }
    pub fn max_body_bytes(&self) -> usize {
        65536
    }
}
pub fn canonicalize_path(raw_path: &str) -> Result<String, RouteError> {
    Ok(raw_path.to_string())
}
pub fn extract_datasource_uids(
    _requirement: &DatasourceRequirement,
    _params: &PathParams,
    _raw_query: Option<&str>,
    _body: Option<&[u8]>,
    _content_type: Option<&str>,
) -> Result<Vec<String>, RouteError> {
    Ok(vec![])
}
pub struct CompiledSql {
    pub sources: Vec<(
        crate::sql_location::SqlSource,
        crate::sql_location::SqlDatasource,
    )>,
    pub allow_writes: bool,
}
