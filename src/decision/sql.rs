//! Row-level security for every SQL string a route carries, after authorization: each
//! statement's datasource is checked, template syntax and write options are refused where
//! the route says so, and the rewritten SQL is put back into the request the upstream
//! receives.
//!
//! Split in three so the CPU-heavy part runs off the proxy's I/O threads: [`plan_sql`]
//! (cheap: find the statements, check templating and datasource permissions) and
//! [`finish_sql`] (put the rewrites back) run on the caller's thread; [`SqlJob::run`]
//! (parse, rewrite, print, re-parse, verify) runs on the bounded [`crate::sql_pool`],
//! unless every statement's rewrite is cached ([`SqlJob::cached`], looked up in place).

use std::sync::Arc;

use serde::Serialize;

use super::Refusal;
use super::authorize::{CheckOutcome, Identified, Permit};
use super::request::ParsedRequest;
use crate::principal::Principal;
use crate::rls::{RewriteLimits, Rewritten, RlsError};
use crate::sql_location::{SqlItem, Templating};
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

/// Statements up to this size are looked up in the rewrite cache on the proxy's I/O
/// thread (the lookup hashes the SQL); larger ones always go to the pool.
const CACHE_LOOKUP_MAX_BYTES: usize = 16 * 1024;

/// The statements a request carries, each already cleared for its datasource; what is
/// left is the rewrite itself.
pub struct SqlPlan {
    items: Vec<SqlItem>,
    /// The route explicitly allows non-query statements.
    allow_writes: bool,
}

impl SqlPlan {
    /// The largest statement, in bytes: the size the SQL pool budgets.
    pub fn largest_statement(&self) -> usize {
        self.items
            .iter()
            .map(|item| item.sql.len())
            .max()
            .unwrap_or(0)
    }

    /// Every statement's rewrite from the cache, when all of them are there (and small):
    /// the request then needs no pool thread, and no owned copy of its statements.
    pub fn cached(
        &self,
        snapshot: &PolicySnapshot,
        principal: &Principal,
        limits: RewriteLimits,
    ) -> Option<Vec<Result<Rewritten, RlsError>>> {
        self.items
            .iter()
            .map(|item| {
                if item.sql.len() > CACHE_LOOKUP_MAX_BYTES {
                    return None;
                }
                snapshot
                    .rls
                    .cached(&crate::rls::RewriteRequest {
                        datasource_uid: &item.datasource_uid,
                        sql: &item.sql,
                        principal,
                        allow_writes: self.allow_writes,
                        limits,
                    })
                    .map(Ok)
            })
            .collect()
    }

    /// The work for the SQL pool: owned, so it can leave this thread.
    pub fn job(
        &self,
        snapshot: &Arc<PolicySnapshot>,
        principal: &Arc<Principal>,
        limits: RewriteLimits,
    ) -> SqlJob {
        SqlJob {
            snapshot: snapshot.clone(),
            principal: Arc::clone(principal),
            allow_writes: self.allow_writes,
            limits,
            statements: self
                .items
                .iter()
                .map(|item| (item.datasource_uid.clone(), item.sql.clone()))
                .collect(),
        }
    }
}

/// Row-level security for a request's statements, in order; runs on a pool thread.
pub struct SqlJob {
    snapshot: Arc<PolicySnapshot>,
    principal: Arc<Principal>,
    allow_writes: bool,
    limits: RewriteLimits,
    /// (datasource uid, SQL) per statement.
    statements: Vec<(String, String)>,
}

impl SqlJob {
    /// Rewrites every statement; stops at the first refusal (the request is refused
    /// whole), so the results are the rewrites of a prefix of the statements.
    pub fn run(self) -> Vec<Result<Rewritten, RlsError>> {
        let mut results = Vec::with_capacity(self.statements.len());
        for (datasource_uid, sql) in &self.statements {
            let result = self.snapshot.rls.rewrite(&crate::rls::RewriteRequest {
                datasource_uid,
                sql,
                principal: &self.principal,
                allow_writes: self.allow_writes,
                limits: self.limits,
            });
            let failed = result.is_err();
            results.push(result);
            if failed {
                break;
            }
        }
        results
    }
}

/// Stage 6a: the statements the route carries, each datasource checked. `None` when the
/// route carries no SQL. Each statement's datasource must itself be queryable by the
/// caller (a body can name other datasources than the route's check saw).
pub fn plan_sql(
    snapshot: &PolicySnapshot,
    identified: &Identified<'_>,
    permit: &Permit,
    request: &ParsedRequest,
    mut trace: Option<&mut Vec<CheckOutcome>>,
) -> Result<Option<SqlPlan>, Refusal> {
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
    let subjects = permit.subjects();
    for item in &items {
        let object = crate::policy::datasource_object(&item.datasource_uid);
        let allowed = snapshot.policy.allows(subjects, &object, QUERY_ACTION);
        if let Some(trace) = trace.as_deref_mut() {
            trace.push(
                CheckOutcome::new(
                    format!(
                        "datasource permission `{QUERY_ACTION}` on `{}` for SQL at `{}`",
                        item.datasource_uid, item.location
                    ),
                    allowed,
                )
                .permission(format!("{QUERY_ACTION} on {}", item.datasource_uid)),
            );
        }
        if !allowed {
            return Err(Refusal::MissingDatasourcePermission {
                action: QUERY_ACTION.to_string(),
                uid: item.datasource_uid.clone(),
            });
        }
    }
    Ok(Some(SqlPlan {
        items,
        allow_writes: sql.allow_writes,
    }))
}

/// Stage 6c: the pool's rewrites put back into the request. Any refusal refuses the
/// whole request.
pub fn finish_sql(
    plan: SqlPlan,
    results: Vec<Result<Rewritten, RlsError>>,
    request: &ParsedRequest,
    mut trace: Option<&mut Vec<CheckOutcome>>,
) -> Result<SqlRewrite, Refusal> {
    // The pool returns one result per statement unless one was refused; a short answer
    // without a refusal is a broken worker and is refused too.
    if results.len() != plan.items.len() && results.iter().all(Result::is_ok) {
        return Err(Refusal::SqlPool(crate::sql_pool::SqlPoolError::WorkerLost));
    }
    let mut rewritten_statements = Vec::with_capacity(plan.items.len());
    for (item, result) in plan.items.iter().zip(results) {
        let rewritten = result.map_err(|error| Refusal::Sql {
            location: item.location.clone(),
            error,
        })?;
        if let Some(trace) = trace.as_deref_mut() {
            trace.push(CheckOutcome::new(
                format!("row-level security for SQL at `{}`", item.location),
                true,
            ));
        }
        rewritten_statements.push(rewritten);
    }
    let (query, body) = {
        // Inline for the usual one to four statements; borrowed only while applied.
        let rewrites: smallvec::SmallVec<[Option<&str>; 4]> = rewritten_statements
            .iter()
            .map(|rewritten| rewritten.changed.then_some(&*rewritten.sql))
            .collect();
        crate::sql_location::apply(request, &plan.items, &rewrites)?
    };
    // The request is rewritten: each item's texts move into its statement, uncopied.
    let statements = plan
        .items
        .into_iter()
        .zip(rewritten_statements)
        .map(|(item, rewritten)| StatementRewrite {
            location: item.location,
            datasource: item.datasource_uid,
            original_sql: item.sql,
            rewritten,
        })
        .collect();
    Ok(SqlRewrite {
        query,
        body,
        statements,
    })
}

/// Who the SQL pool counts a request's statements against: the principal, or for an
/// anonymous caller the client address (every anonymous client is the same principal).
pub fn pool_caller(
    principal: &Principal,
    client_address: Option<std::net::IpAddr>,
) -> crate::sql_pool::CallerKey {
    use crate::principal::{PrincipalKind, subject};
    use crate::sql_pool::CallerKey;
    match (principal.kind, client_address) {
        (PrincipalKind::User, _) => {
            CallerKey::new(format!("{}{}", subject::USER, principal.username))
        }
        (PrincipalKind::ServiceAccount, _) => CallerKey::new(format!(
            "{}{}",
            subject::SERVICE_ACCOUNT,
            principal.username
        )),
        (PrincipalKind::Anonymous, Some(address)) => CallerKey::new(format!("ip:{address}")),
        (PrincipalKind::Anonymous, None) => CallerKey::new("anonymous"),
    }
}

/// The action a SQL statement needs on its datasource.
pub const QUERY_ACTION: &str = "datasources:query";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::PrincipalKind;
    use crate::sql_pool::CallerKey;

    #[test]
    fn the_pool_counts_principals_by_name_and_anonymous_callers_by_address() {
        let address: std::net::IpAddr = [192, 0, 2, 7].into();
        let mut alice = Principal::anonymous(vec!["Gamma".into()]);
        alice.kind = PrincipalKind::User;
        alice.username = "alice".into();
        // Wherever alice connects from, it is her share.
        assert_eq!(
            pool_caller(&alice, Some(address)),
            CallerKey::new("user:alice")
        );
        assert_eq!(pool_caller(&alice, None), CallerKey::new("user:alice"));
        let mut robot = alice.clone();
        robot.kind = PrincipalKind::ServiceAccount;
        assert_eq!(
            pool_caller(&robot, None),
            CallerKey::new("serviceaccount:alice")
        );
        let anonymous = Principal::anonymous(vec!["Public".into()]);
        assert_eq!(
            pool_caller(&anonymous, Some(address)),
            CallerKey::new("ip:192.0.2.7")
        );
        assert_ne!(
            pool_caller(&anonymous, Some([192, 0, 2, 8].into())),
            pool_caller(&anonymous, Some(address))
        );
    }
}
