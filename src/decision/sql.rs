//! Row-level security for every SQL string a route carries, after authorization: each
//! statement's datasource is checked, template syntax and write options are refused where
//! the route says so, and the rewritten SQL is put back into the request the upstream
//! receives.

use serde::Serialize;

use super::Refusal;
use super::authorize::{CheckOutcome, Identified, Permit};
use super::request::ParsedRequest;
use crate::sql_location::Templating;
use crate::state::PolicySnapshot;

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
    request: &ParsedRequest,
    limits: crate::rls::RewriteLimits,
    mut trace: Option<&mut Vec<CheckOutcome>>,
) -> Result<Option<SqlRewrite>, Refusal> {
    let Some((route, _)) = &identified.route else {
        return Ok(None);
    };
    let Some(sql) = route.sql() else {
        return Ok(None);
    };
    let items = crate::sql_location::find_sql(sql, permit.datasource_uids(), request)?;
    // Templating is refused unless the route, or else every statement's datasource,
    // allows it.
    let allows_templating = match sql.templating {
        Some(setting) => setting == Templating::Allow,
        None => {
            !items.is_empty()
                && items.iter().all(|item| {
                    snapshot
                        .rls
                        .datasource(&item.datasource_uid)
                        .and_then(|datasource| datasource.templating)
                        == Some(Templating::Allow)
                })
        }
    };
    if !allows_templating {
        crate::sql_location::check_templating(sql, &items, request)?;
    }
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
    let (query, body) = crate::sql_location::apply(request, &items, &rewrites)?;
    Ok(Some(SqlRewrite {
        query,
        body,
        statements,
    }))
}

/// The action a SQL statement needs on its datasource.
pub const QUERY_ACTION: &str = "datasources:query";
