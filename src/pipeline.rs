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
    Ok(permit(snapshot, identified, datasource_uids))
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
