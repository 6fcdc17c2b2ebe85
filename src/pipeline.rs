//! `admit`: the request path as one straight line of plain functions, free of pingora.
//!
//! ```text
//! identify(head)            authenticate → canonicalise path → resolve route
//! (proxy reads the body, bounded, only when the route inspects it)
//! authorize(snapshot, ..)   role permissions → datasource permissions → Permit
//! ```
//! The proxy, `datagate explain` and the tests all call these same functions, so what
//! `explain` says is what the proxy does. A [`Permit`] can only be built here: holding one
//! proves every check ran against one snapshot.

use serde::Serialize;
use sha2::Digest;

use crate::authn::AuthnError;
use crate::principal::{Principal, PrincipalKind};
use crate::route::PathParams;
use crate::route::{
    Resolution, Route, RouteError, UnmatchedPolicy, canonicalize_path, extract_datasource_uids,
};
use crate::state::{AppState, PolicySnapshot};

/// The parts of an HTTP request the decision depends on, borrowed from whatever server
/// received it.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// The path exactly as received, without the query string.
    pub raw_path: &'a str,
    pub query: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub api_key: Option<&'a str>,
    pub content_type: Option<&'a str>,
}

/// Why a request is refused. Rendered to HTTP only by [`crate::http_error`].
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Authentication(#[from] AuthnError),
    #[error("authentication required: {reason}")]
    AuthenticationRequired { reason: String },
    #[error("{0}")]
    BadPath(RouteError),
    #[error("no route matches `{method} {path}` and unmatched requests are denied")]
    UnmatchedRoute { method: String, path: String },
    #[error("missing permission `{permission}`")]
    MissingPermission { permission: String },
    #[error("missing permission `{action}` on datasource `{uid}`")]
    MissingDatasourcePermission { action: String, uid: String },
    #[error("{0}")]
    BadRequest(RouteError),
    #[error("{0}")]
    BadBody(#[from] crate::json_guard::JsonGuardError),
    #[error("request body is larger than the {limit}-byte inspection limit of route `{route}`")]
    BodyTooLarge { route: String, limit: usize },
    #[error("request body could not be read")]
    BodyUnreadable,
    #[error("{0}")]
    SqlLocation(#[from] crate::sql_location::SqlLocationError),
    #[error(
        "this replica has not confirmed its grants are current for {seconds} s; refusing rather than serving stale grants"
    )]
    PolicyStale { seconds: u64 },
    #[error("{reason}")]
    TablePageFiltered { reason: String },
    #[error("{0}")]
    Credentials(crate::creds::CredsError),
    #[error("{0}")]
    Header(#[from] crate::proxy::HeaderError),
    #[error("invalid MCP request: {0}")]
    McpInvalid(String),
    #[error("MCP tool `{0}` is not in datagate's tool table, so it is refused")]
    McpUnknownTool(String),
    #[error("SQL at `{location}` refused: {error}")]
    Sql {
        location: String,
        error: crate::rls::RlsError,
    },
}

/// Who is calling and which route the request is. The body has not been read yet.
pub struct Identified<'t> {
    pub principal: Principal,
    /// The path the route was matched on; it is also what the upstream receives.
    pub canonical_path: String,
    pub route: Option<(&'t Route, PathParams)>,
    unmatched_policy: UnmatchedPolicy,
}

impl Identified<'_> {
    pub fn route_name(&self) -> &str {
        self.route
            .as_ref()
            .map(|(route, _)| route.name())
            .unwrap_or("unmatched")
    }

    /// Whether authorization needs the request body (the route extracts from it).
    pub fn needs_body(&self) -> bool {
        self.route
            .as_ref()
            .is_some_and(|(route, _)| route.needs_body())
    }

    /// Whether the route carries SQL that row-level security must see.
    pub fn carries_sql(&self) -> bool {
        self.route
            .as_ref()
            .is_some_and(|(route, _)| route.sql().is_some())
    }
}

/// Proof that a request passed every check. Only [`authorize`] builds one (the fields are
/// private to this module).
#[derive(Debug, Clone)]
pub struct Permit {
    principal: Principal,
    route: String,
    canonical_path: String,
    datasource_uids: Vec<String>,
    policy_revision: u64,
}

impl Permit {
    pub fn principal(&self) -> &Principal {
        &self.principal
    }
    pub fn route(&self) -> &str {
        &self.route
    }
    pub fn canonical_path(&self) -> &str {
        &self.canonical_path
    }
    pub fn datasource_uids(&self) -> &[String] {
        &self.datasource_uids
    }
    pub fn policy_revision(&self) -> u64 {
        self.policy_revision
    }
}

/// One check and how it went, for `explain` and the audit reason.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub check: String,
    pub passed: bool,
}

/// Stage 1–3: authenticate, canonicalise, resolve. Refuses bad credentials even on routes
/// that would allow anonymous access: a client that presents a credential must present a
/// valid one. A replica that cannot confirm its grants are current refuses everything
/// first (fail closed on stale grants).
pub fn identify<'t>(
    state: &'t AppState,
    snapshot: &PolicySnapshot,
    head: &RequestHead<'_>,
) -> Result<Identified<'t>, Refusal> {
    if let Some(age) = state.policy_staleness() {
        return Err(Refusal::PolicyStale {
            seconds: age.as_secs(),
        });
    }
    let principal = authenticate(state, snapshot, head.authorization, head.api_key)?;
    let canonical_path = canonicalize_path(head.raw_path).map_err(Refusal::BadPath)?;
    let (route, unmatched_policy) = match state.routes.resolve(head.method, &canonical_path) {
        Resolution::Matched { route, params } => (Some((route, params)), UnmatchedPolicy::Deny),
        Resolution::Unmatched(policy) => (None, policy),
    };
    Ok(Identified {
        principal,
        canonical_path,
        route,
        unmatched_policy,
    })
}

/// Authenticates against the config's keys and the snapshot's service-account tokens,
/// then adds what the grants store says about the caller (roles, teams, basic role), so
/// authorization and row-level security see the same identity.
pub fn authenticate(
    state: &AppState,
    snapshot: &PolicySnapshot,
    authorization: Option<&str>,
    api_key: Option<&str>,
) -> Result<Principal, AuthnError> {
    let tokens = |token: &str| {
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let (login, expires_at_ms) = snapshot
            .store
            .tokens
            .get(&digest)
            .ok_or(AuthnError::UnknownApiKey)?;
        if expires_at_ms.is_some_and(|expires| expires <= crate::store::now_ms()) {
            return Err(AuthnError::Expired);
        }
        Ok(crate::authn::service_account(login, &[], &[], None))
    };
    let mut principal =
        state
            .authenticator
            .authenticate_with_tokens(authorization, api_key, &tokens)?;
    if principal.kind != PrincipalKind::Anonymous
        && let Some(subject) = principal.subjects().first()
        && let Some(identity) = snapshot.store.identities.get(subject)
    {
        for role in &identity.roles {
            if !principal.roles.contains(role) {
                principal.roles.push(role.clone());
            }
        }
        for team in &identity.teams {
            if !principal.teams.contains(team) {
                principal.teams.push(team.clone());
            }
        }
        principal.basic_role = principal.basic_role.max(identity.basic_role);
    }
    // Roles, teams and basic roles held through policy memberships (`g, user:alice,
    // role:Gamma`) count like the token's: authorization already grants their
    // permissions, so row-level security must apply their filters too.
    {
        for group in snapshot.policy.groups_of(&principal.subjects()) {
            if let Some(role) = group.strip_prefix(crate::principal::subject::ROLE) {
                if !principal.roles.iter().any(|held| held == role) {
                    principal.roles.push(role.to_string());
                }
            } else if let Some(team) = group.strip_prefix(crate::principal::subject::TEAM) {
                if !principal.teams.iter().any(|held| held == team) {
                    principal.teams.push(team.to_string());
                }
            } else if let Some(basic) = group.strip_prefix(crate::principal::subject::BASIC) {
                principal.basic_role = principal.basic_role.max(basic.parse().ok());
            }
        }
    }
    Ok(principal)
}

/// Stage 5: every check against one snapshot. `body` is the bounded request body when the
/// route needs it. `trace`, when given, receives every check with its outcome.
pub fn authorize(
    snapshot: &PolicySnapshot,
    identified: &Identified<'_>,
    head: &RequestHead<'_>,
    body: Option<&[u8]>,
    mut trace: Option<&mut Vec<CheckOutcome>>,
) -> Result<Permit, Refusal> {
    let principal = &identified.principal;
    let anonymous = principal.kind == PrincipalKind::Anonymous;
    let mut record = |check: String, passed: bool| {
        if let Some(trace) = trace.as_deref_mut() {
            trace.push(CheckOutcome { check, passed });
        }
    };
    let Some((route, params)) = &identified.route else {
        return match identified.unmatched_policy {
            UnmatchedPolicy::Allow => {
                record(
                    "unmatched route: allowed by `routes.unmatched: allow`".into(),
                    true,
                );
                Ok(permit(snapshot, identified, Vec::new()))
            }
            UnmatchedPolicy::Authenticated if !anonymous => {
                record("unmatched route: caller is authenticated".into(), true);
                Ok(permit(snapshot, identified, Vec::new()))
            }
            UnmatchedPolicy::Authenticated => {
                record("unmatched route: caller is authenticated".into(), false);
                Err(Refusal::AuthenticationRequired {
                    reason: "unmatched routes require an authenticated caller".into(),
                })
            }
            UnmatchedPolicy::Deny => {
                record("unmatched route: `routes.unmatched: deny`".into(), false);
                Err(Refusal::UnmatchedRoute {
                    method: head.method.to_string(),
                    path: identified.canonical_path.clone(),
                })
            }
        };
    };

    if route.requires_authentication() {
        record("route requires an authenticated caller".into(), !anonymous);
        if anonymous {
            return Err(Refusal::AuthenticationRequired {
                reason: format!("route `{}` does not allow anonymous callers", route.name()),
            });
        }
    }

    let subjects = principal.subjects();
    let denied = |permission: String| {
        if anonymous {
            Refusal::AuthenticationRequired {
                reason: format!("anonymous callers lack `{permission}`"),
            }
        } else {
            Refusal::MissingPermission { permission }
        }
    };

    for required in route.permissions_all_of() {
        let passed = snapshot
            .policy
            .allows(&subjects, &required.view, &required.action);
        record(format!("role permission `{required}`"), passed);
        if !passed {
            return Err(denied(required.to_string()));
        }
    }
    let any_of = route.permissions_any_of();
    if !any_of.is_empty() {
        let passed = any_of.iter().any(|candidate| {
            snapshot
                .policy
                .allows(&subjects, &candidate.view, &candidate.action)
        });
        let listed = any_of
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("` or `");
        record(format!("role permission `{listed}`"), passed);
        if !passed {
            return Err(denied(listed));
        }
    }

    if let Some(body) = body
        && is_json(head.content_type)
    {
        crate::json_guard::reject_duplicate_keys(body)?;
    }

    let mut datasource_uids = Vec::new();
    if let Some(requirement) = route.datasource() {
        datasource_uids =
            extract_datasource_uids(requirement, params, head.query, body, head.content_type)
                .map_err(Refusal::BadRequest)?;
        for uid in &datasource_uids {
            let object = crate::policy::datasource_object(uid);
            let passed = snapshot
                .policy
                .allows(&subjects, &object, &requirement.action);
            record(
                format!("datasource permission `{}` on `{uid}`", requirement.action),
                passed,
            );
            if !passed {
                return Err(if anonymous {
                    Refusal::AuthenticationRequired {
                        reason: format!(
                            "anonymous callers lack `{}` on datasource `{uid}`",
                            requirement.action
                        ),
                    }
                } else {
                    Refusal::MissingDatasourcePermission {
                        action: requirement.action.clone(),
                        uid: uid.clone(),
                    }
                });
            }
        }
    }

    if let Some(table_param) = route.table_page_param() {
        let table = match params.lookup(table_param) {
            Some(crate::route::ParamValue::Text(table)) => {
                tilde_decode(table).ok_or_else(|| Refusal::TablePageFiltered {
                    reason: format!("table name `{table}` is not validly encoded"),
                })?
            }
            _ => {
                return Err(Refusal::TablePageFiltered {
                    reason: "the table name is not valid UTF-8".into(),
                });
            }
        };
        for uid in &datasource_uids {
            let result = snapshot.rls.table_page_allowed(uid, &table, principal);
            record(
                format!("table page `{table}` unfiltered for this caller"),
                result.is_ok(),
            );
            result.map_err(|reason| Refusal::TablePageFiltered { reason })?;
        }
    }

    if let Some(export) = route.export() {
        let is_export = export
            .applies(params, head.query, body, head.content_type)
            .map_err(Refusal::BadRequest)?;
        if is_export && let Some(required) = snapshot.exports.required_permission(export.kind) {
            let passed = snapshot
                .policy
                .allows(&subjects, &required.view, &required.action);
            record(
                format!("{} export needs `{required}`", export.kind.as_str()),
                passed,
            );
            if !passed {
                return Err(denied(required.to_string()));
            }
        }
    }
    Ok(permit(snapshot, identified, datasource_uids))
}

/// Datasette's tilde-encoding of names in paths (`~2F` is `/`); `None` when a `~` is not
/// followed by two hex digits or the result is not UTF-8, so an encoded name can never
/// name a different table to datagate than to Datasette.
pub fn tilde_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'~' {
            let hex = bytes.get(index + 1..index + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// The JSON-RPC call of an MCP request, once its tool is known.
#[derive(Debug, Clone, Default)]
pub struct McpCall {
    /// The request's `id`, for a JSON-RPC error answer.
    pub id: serde_json::Value,
    /// `Some` for `tools/call`.
    pub tool: Option<String>,
}

/// On an MCP route, reads the JSON-RPC request and, for `tools/call`, switches the
/// identified route to the tool's own route (`mcp.<tool>`), whose checks and SQL then
/// apply. Batches are refused: each call must be decided on its own.
pub fn select_mcp_tool<'t>(
    identified: &mut Identified<'t>,
    body: Option<&[u8]>,
) -> Result<Option<McpCall>, Refusal> {
    let Some((route, params)) = &identified.route else {
        return Ok(None);
    };
    let Some(tools) = route.mcp() else {
        return Ok(None);
    };
    // A repeated `method` or `name` could be read one way here and another upstream.
    crate::json_guard::reject_duplicate_keys(body.unwrap_or_default())?;
    let document: serde_json::Value = serde_json::from_slice(body.unwrap_or_default())
        .map_err(|error| Refusal::McpInvalid(format!("the body is not JSON: {error}")))?;
    let Some(request) = document.as_object() else {
        return Err(Refusal::McpInvalid(
            "batch requests are not supported; send one JSON-RPC request per HTTP request".into(),
        ));
    };
    let mut call = McpCall {
        id: request
            .get("id")
            .cloned()
            .unwrap_or(serde_json::Value::Null),
        tool: None,
    };
    let method = request
        .get("method")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| Refusal::McpInvalid("`method` is missing or not a string".into()))?;
    if method != "tools/call" {
        return Ok(Some(call));
    }
    let name = request
        .get("params")
        .and_then(|params| params.get("name"))
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| Refusal::McpInvalid("`params.name` is missing or not a string".into()))?;
    let tool = tools
        .tool(name)
        .ok_or_else(|| Refusal::McpUnknownTool(name.to_string()))?;
    let params = params.clone();
    identified.route = Some((tool, params));
    call.tool = Some(name.to_string());
    Ok(Some(call))
}

/// JSON unless declared otherwise: a body without a content type is still inspected as JSON.
fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_none_or(|content_type| {
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        media_type.eq_ignore_ascii_case("application/json")
            || media_type.to_ascii_lowercase().ends_with("+json")
    })
}

fn permit(
    snapshot: &PolicySnapshot,
    identified: &Identified<'_>,
    datasource_uids: Vec<String>,
) -> Permit {
    Permit {
        principal: identified.principal.clone(),
        route: identified.route_name().to_string(),
        canonical_path: identified.canonical_path.clone(),
        datasource_uids,
        policy_revision: snapshot.revision,
    }
}

/// The request after row-level security: what replaces the query string and the body
/// (`None`: unchanged), and what was applied, for `explain` and metrics.
#[derive(Debug, Clone, Default)]
pub struct SqlRewrite {
    pub query: Option<String>,
    pub body: Option<Vec<u8>>,
    pub statements: Vec<StatementRewrite>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatementRewrite {
    pub location: String,
    pub datasource: String,
    pub original_sql: String,
    pub rewritten: crate::rls::Rewritten,
}

/// Stage 6: every SQL string the route carries goes through row-level security. Each
/// statement's datasource must itself be queryable by the caller (a body can name other
/// datasources than the route's check saw). Any failure refuses the whole request.
pub fn rewrite_sql(
    snapshot: &PolicySnapshot,
    identified: &Identified<'_>,
    permit: &Permit,
    head: &RequestHead<'_>,
    body: Option<&[u8]>,
    limits: crate::rls::RewriteLimits,
    mut trace: Option<&mut Vec<CheckOutcome>>,
) -> Result<Option<SqlRewrite>, Refusal> {
    let Some((route, _)) = &identified.route else {
        return Ok(None);
    };
    let Some(sql) = route.sql() else {
        return Ok(None);
    };
    let items =
        crate::sql_location::find_sql(&sql.sources, permit.datasource_uids(), head.query, body)?;
    let subjects = permit.principal().subjects();
    let mut rewrites = Vec::with_capacity(items.len());
    let mut statements = Vec::with_capacity(items.len());
    for item in &items {
        let object = crate::policy::datasource_object(&item.datasource_uid);
        let allowed = snapshot.policy.allows(&subjects, &object, QUERY_ACTION);
        if let Some(trace) = trace.as_deref_mut() {
            trace.push(CheckOutcome {
                check: format!(
                    "datasource permission `{QUERY_ACTION}` on `{}` for SQL at `{}`",
                    item.datasource_uid, item.location
                ),
                passed: allowed,
            });
        }
        if !allowed {
            return Err(Refusal::MissingDatasourcePermission {
                action: QUERY_ACTION.to_string(),
                uid: item.datasource_uid.clone(),
            });
        }
        let rewritten = snapshot
            .rls
            .rewrite(&crate::rls::RewriteRequest {
                datasource_uid: &item.datasource_uid,
                sql: &item.sql,
                principal: permit.principal(),
                allow_writes: sql.allow_writes,
                limits,
            })
            .map_err(|error| Refusal::Sql {
                location: item.location.clone(),
                error,
            })?;
        if let Some(trace) = trace.as_deref_mut() {
            trace.push(CheckOutcome {
                check: format!("row-level security for SQL at `{}`", item.location),
                passed: true,
            });
        }
        rewrites.push(rewritten.changed.then(|| rewritten.sql.clone()));
        statements.push(StatementRewrite {
            location: item.location.clone(),
            datasource: item.datasource_uid.clone(),
            original_sql: item.sql.clone(),
            rewritten,
        });
    }
    let (query, body) = crate::sql_location::splice(head.query, body, &items, &rewrites);
    Ok(Some(SqlRewrite {
        query,
        body,
        statements,
    }))
}

/// The action a SQL statement needs on its datasource.
pub const QUERY_ACTION: &str = "datasources:query";

/// The path of the caller's own permissions on the proxy port.
pub const PERMISSIONS_PATH: &str = "/api/me/permissions";
/// Its name in metrics and audit events.
pub const PERMISSIONS_ROUTE: &str = "datagate-me-permissions";

/// `GET /api/me/permissions` (the canonical path, exactly; it is never forwarded).
pub fn is_permissions_request(head: &RequestHead<'_>, identified: &Identified<'_>) -> bool {
    (head.method == "GET" || head.method == "HEAD") && identified.canonical_path == PERMISSIONS_PATH
}

/// What the caller may do, so a frontend can disable a button instead of meeting a 403.
#[derive(Debug, Clone, Serialize)]
pub struct CallerPermissions {
    pub user: String,
    pub kind: PrincipalKind,
    pub roles: Vec<String>,
    pub teams: Vec<String>,
    pub basic_role: Option<crate::principal::BasicRole>,
    /// FAB permissions as granted (a `view` of `*` covers every view).
    pub permissions: Vec<GrantedPermission>,
    pub exports: ExportPermissions,
    /// Every known datasource: the caller's level and allowed actions there.
    pub datasources: std::collections::BTreeMap<String, DatasourceAccess>,
    pub policy_revision: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GrantedPermission {
    pub permission: String,
    pub view: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportPermissions {
    pub granular_export_controls: bool,
    pub data: bool,
    pub image: bool,
    pub clipboard: bool,
    /// The permission each kind needs (`null`: not controlled).
    pub required: std::collections::BTreeMap<&'static str, Option<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasourceAccess {
    /// The highest of `Query`, `Edit`, `Admin` whose every action is allowed.
    pub level: Option<&'static str>,
    pub actions: Vec<&'static str>,
}

const DATASOURCE_ACTIONS: [&str; 6] = [
    "datasources:read",
    "datasources:query",
    "datasources:write",
    "datasources:delete",
    "datasources.permissions:read",
    "datasources.permissions:write",
];

/// The identified caller's effective permissions under `snapshot`, decided by the same
/// engine (and store identity enrichment, done by [`identify`]) as every proxied request.
pub fn caller_permissions(snapshot: &PolicySnapshot, principal: &Principal) -> CallerPermissions {
    let subjects = principal.subjects();
    let effective = snapshot.policy.effective_permissions(&subjects);
    let allowance = snapshot.exports.allowance(&snapshot.policy, &subjects);
    let mut required = std::collections::BTreeMap::new();
    for kind in crate::export::ExportKind::ALL {
        required.insert(
            kind.as_str(),
            snapshot
                .exports
                .required_permission(kind)
                .map(|permission| permission.to_string()),
        );
    }
    let mut datasources = std::collections::BTreeMap::new();
    for uid in &snapshot.store.datasource_uids {
        let object = crate::policy::datasource_object(uid);
        let actions: Vec<&'static str> = DATASOURCE_ACTIONS
            .into_iter()
            .filter(|action| snapshot.policy.allows(&subjects, &object, action))
            .collect();
        let level = ["Admin", "Edit", "Query"].into_iter().find(|level| {
            crate::admin::level_actions(level)
                .iter()
                .all(|action| actions.contains(&action.as_str()))
        });
        datasources.insert(uid.clone(), DatasourceAccess { level, actions });
    }
    CallerPermissions {
        user: principal.username.clone(),
        kind: principal.kind,
        roles: principal.roles.clone(),
        teams: principal.teams.clone(),
        basic_role: principal.basic_role,
        permissions: effective
            .role_permissions
            .into_iter()
            .map(|(permission, view)| GrantedPermission { permission, view })
            .collect(),
        exports: ExportPermissions {
            granular_export_controls: snapshot.exports.granular_export_controls,
            data: allowance.data,
            image: allowance.image,
            clipboard: allowance.clipboard,
            required,
        },
        datasources,
        policy_revision: snapshot.revision,
    }
}

/// The refusal for an upstream response that is an export the caller may not make.
pub fn export_refusal(
    exports: &crate::export::ExportConfig,
    kind: crate::export::ExportKind,
) -> Refusal {
    Refusal::MissingPermission {
        permission: exports.required_permission(kind).map_or_else(
            || format!("{} export", kind.as_str()),
            |permission| permission.to_string(),
        ),
    }
}

/// Stage 7: database credentials for the request's datasource, when it uses AWS IAM
/// authentication. `sql_datasources` are the datasources the request's SQL named.
/// Refuses (before any upstream connection) when the feature flag is off, when the
/// token would travel over plain HTTP, when several IAM datasources are named, or when
/// no valid credential can be had.
pub async fn database_credentials(
    state: &AppState,
    snapshot: &PolicySnapshot,
    permit: &Permit,
    sql_datasources: &[String],
) -> Result<Option<crate::creds::DbCredentials>, Refusal> {
    let mut uids: Vec<&str> = permit
        .datasource_uids()
        .iter()
        .chain(sql_datasources)
        .map(String::as_str)
        .collect();
    uids.sort_unstable();
    uids.dedup();
    let iam: Vec<(&str, &crate::creds::AwsIamConfig)> = uids
        .into_iter()
        .filter_map(|uid| {
            snapshot
                .rls
                .datasource(uid)
                .and_then(|datasource| datasource.aws_iam.as_ref())
                .map(|iam| (uid, iam))
        })
        .collect();
    let (uid, iam) = match iam.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        several => {
            let names: Vec<&str> = several.iter().map(|(uid, _)| *uid).collect();
            return Err(Refusal::Credentials(
                crate::creds::CredsError::SeveralDatasources(names.join(", ")),
            ));
        }
    };
    let aws = &state.config.aws;
    if !aws.database_iam_auth {
        return Err(Refusal::Credentials(crate::creds::CredsError::Disabled));
    }
    if !state.config.upstream.tls && !aws.allow_plaintext_upstream {
        return Err(Refusal::Credentials(
            crate::creds::CredsError::PlaintextUpstream,
        ));
    }
    let broker = state
        .credentials
        .get()
        .ok_or(Refusal::Credentials(crate::creds::CredsError::Disabled))?;
    broker
        .database_credentials(uid, iam, &permit.principal().username)
        .await
        .map(Some)
        .map_err(|error| {
            tracing::warn!(
                datasource = uid,
                detail = %crate::creds::redact_aws_identifiers(&error.detail()),
                "database credentials unavailable"
            );
            Refusal::Credentials(error)
        })
}
