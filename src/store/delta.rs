//! The change feed: what each committed revision touched, and how a replica (or the
//! writer itself) turns "everything between revision r and R" into rows to apply.
//!
//! Off the request path. Every write records, in the same transaction, the *scopes* it
//! touched in `store_changes` (a user, a team's members, one grant key, a datasource's
//! grants, …), not the rows themselves: rows are re-read, so the log holds no secret
//! settings and applying it is idempotent. To bring contents at revision `r` to `R`, the
//! reader takes the scopes of every revision in `(r, R]` from the log and reads the
//! current rows of each, in one consistent read: the rows of a scope at `R` replace what
//! the scope held at `r`, and scopes no revision touched did not change. A missing
//! revision in the log (a write by an older datagate, rows pruned, a revision bumped by
//! hand) or more than [`MAX_INCREMENTAL_REVISIONS`] behind means a full reload instead.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};

use super::StoreError;
use super::contents::{
    DATASOURCE_ROW, GRANT_ROW, ScopeRows, StoreContents, TOKEN_ROW, USER_ROW, datasource_of_row,
    filter_of_text, grant_of_row, load, token_of_row, user_of_row,
};

/// A replica further behind than this many revisions reloads the whole store rather than
/// read the scopes of every revision it missed.
pub const MAX_INCREMENTAL_REVISIONS: i64 = 1_000;

/// How many revisions the change log keeps; older rows are pruned by the writes.
pub const CHANGE_LOG_REVISIONS: i64 = 10_000;

/// A part of the store one write touched; its rows are re-read to apply the write.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case", deny_unknown_fields)]
pub enum Scope {
    User {
        id: i64,
    },
    Team {
        id: i64,
    },
    MembersOfTeam {
        team: i64,
    },
    MembersOfUser {
        user: i64,
    },
    TokensOfAccount {
        account: i64,
    },
    Role {
        id: i64,
    },
    Grant {
        datasource: String,
        kind: String,
        grantee: String,
    },
    GrantsOfGrantee {
        kind: String,
        grantee: String,
    },
    GrantsOnDatasource {
        datasource: String,
    },
    Filter {
        id: i64,
    },
    Datasource {
        id: i64,
    },
}

/// The rows that take contents at `from_revision` (or any revision up to
/// `to_revision`) to `to_revision`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreDelta {
    pub from_revision: i64,
    pub to_revision: i64,
    pub rows: Vec<ScopeRows>,
}

/// What a snapshot needs to catch up with the store.
#[derive(Debug, Clone)]
pub enum StoreUpdate {
    /// The whole store (start-up, a gap in the change log, too far behind). Boxed: the
    /// contents' maps are larger than a delta's handle.
    Full(Box<StoreContents>),
    /// Only what changed.
    Delta(StoreDelta),
}

impl StoreUpdate {
    pub fn revision(&self) -> i64 {
        match self {
            StoreUpdate::Full(contents) => contents.revision,
            StoreUpdate::Delta(delta) => delta.to_revision,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            StoreUpdate::Full(_) => "full",
            StoreUpdate::Delta(_) => "incremental",
        }
    }
}

/// Records the scopes revision `revision` touched, and prunes what no replica will ask
/// for any more.
pub(super) async fn record(
    tx: &mut Transaction<'_, Any>,
    revision: i64,
    scopes: &[Scope],
) -> Result<(), StoreError> {
    let text = serde_json::to_string(scopes)
        .map_err(|error| StoreError::Database(format!("cannot encode the change: {error}")))?;
    sqlx::query("INSERT INTO store_changes (revision, scopes) VALUES ($1, $2)")
        .bind(revision)
        .bind(text)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM store_changes WHERE revision <= $1")
        .bind(revision - CHANGE_LOG_REVISIONS)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The scopes of every revision in `(from, to]`, or `None` when the log does not hold
/// all of them.
async fn scopes_between(
    tx: &mut Transaction<'_, Any>,
    from: i64,
    to: i64,
) -> Result<Option<BTreeSet<Scope>>, StoreError> {
    if to - from > MAX_INCREMENTAL_REVISIONS {
        return Ok(None);
    }
    let rows = sqlx::query(
        "SELECT revision, scopes FROM store_changes WHERE revision > $1 AND revision <= $2 ORDER BY revision",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&mut **tx)
    .await?;
    let mut expected = from + 1;
    let mut scopes = BTreeSet::new();
    for row in rows {
        let revision: i64 = row.try_get(0)?;
        if revision != expected {
            return Ok(None);
        }
        expected += 1;
        let text: String = row.try_get(1)?;
        let Ok(listed) = serde_json::from_str::<Vec<Scope>>(&text) else {
            // Written by a datagate that knows scopes this one does not: reload instead.
            return Ok(None);
        };
        scopes.extend(listed);
    }
    Ok((expected == to + 1).then_some(scopes))
}

/// Brings contents at revision `from` to `to` (the revision `tx` sees): the rows of the
/// scopes in between when the log has them all, else the whole store.
pub(super) async fn catch_up(
    tx: &mut Transaction<'_, Any>,
    from: i64,
    to: i64,
) -> Result<StoreUpdate, StoreError> {
    match scopes_between(tx, from, to).await? {
        Some(scopes) => {
            let mut rows = Vec::with_capacity(scopes.len());
            for scope in &scopes {
                rows.push(read_scope(tx, scope).await?);
            }
            Ok(StoreUpdate::Delta(StoreDelta {
                from_revision: from,
                to_revision: to,
                rows,
            }))
        }
        None => Ok(StoreUpdate::Full(Box::new(load(tx).await?))),
    }
}

async fn grant_rows<'q>(
    tx: &mut Transaction<'_, Any>,
    query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
) -> Result<Vec<super::GrantRow>, StoreError> {
    query
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(grant_of_row)
        .collect()
}

/// The current rows of one scope.
async fn read_scope(tx: &mut Transaction<'_, Any>, scope: &Scope) -> Result<ScopeRows, StoreError> {
    Ok(match scope {
        Scope::User { id } => {
            let row = sqlx::query(&format!("{USER_ROW} WHERE id = $1"))
                .bind(*id)
                .fetch_optional(&mut **tx)
                .await?;
            ScopeRows::User(*id, row.as_ref().map(user_of_row).transpose()?)
        }
        Scope::Team { id } => {
            let row = sqlx::query("SELECT name FROM teams WHERE id = $1")
                .bind(*id)
                .fetch_optional(&mut **tx)
                .await?;
            ScopeRows::Team(*id, row.map(|row| row.try_get::<String, _>(0)).transpose()?)
        }
        Scope::MembersOfTeam { team } => {
            let users = sqlx::query("SELECT user_id FROM team_members WHERE team_id = $1")
                .bind(*team)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(|row| row.try_get::<i64, _>(0))
                .collect::<Result<_, _>>()?;
            ScopeRows::MembersOfTeam(*team, users)
        }
        Scope::MembersOfUser { user } => {
            let teams = sqlx::query("SELECT team_id FROM team_members WHERE user_id = $1")
                .bind(*user)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(|row| row.try_get::<i64, _>(0))
                .collect::<Result<_, _>>()?;
            ScopeRows::MembersOfUser(*user, teams)
        }
        Scope::TokensOfAccount { account } => {
            let tokens = sqlx::query(&format!("{TOKEN_ROW} WHERE service_account_id = $1"))
                .bind(*account)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(token_of_row)
                .collect::<Result<_, _>>()?;
            ScopeRows::TokensOfAccount(*account, tokens)
        }
        Scope::Role { id } => {
            let name = sqlx::query("SELECT name FROM roles WHERE id = $1")
                .bind(*id)
                .fetch_optional(&mut **tx)
                .await?
                .map(|row| row.try_get::<String, _>(0))
                .transpose()?;
            let role = match name {
                Some(name) => {
                    let permissions = sqlx::query(
                        "SELECT permission, view_name FROM role_permissions WHERE role_id = $1",
                    )
                    .bind(*id)
                    .fetch_all(&mut **tx)
                    .await?
                    .iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                    .collect::<Result<_, StoreError>>()?;
                    Some((name, permissions))
                }
                None => None,
            };
            ScopeRows::Role(*id, role)
        }
        Scope::Grant {
            datasource,
            kind,
            grantee,
        } => {
            let rows = grant_rows(
                tx,
                sqlx::query(&format!(
                    "{GRANT_ROW} WHERE datasource_uid = $1 AND grantee_kind = $2 AND grantee = $3"
                ))
                .bind(datasource.clone())
                .bind(kind.clone())
                .bind(grantee.clone()),
            )
            .await?;
            ScopeRows::Grant(
                (datasource.clone(), kind.clone(), grantee.clone()),
                rows.into_iter().next(),
            )
        }
        Scope::GrantsOfGrantee { kind, grantee } => {
            let rows = grant_rows(
                tx,
                sqlx::query(&format!(
                    "{GRANT_ROW} WHERE grantee_kind = $1 AND grantee = $2"
                ))
                .bind(kind.clone())
                .bind(grantee.clone()),
            )
            .await?;
            ScopeRows::GrantsOfGrantee(kind.clone(), grantee.clone(), rows)
        }
        Scope::GrantsOnDatasource { datasource } => {
            let rows = grant_rows(
                tx,
                sqlx::query(&format!("{GRANT_ROW} WHERE datasource_uid = $1"))
                    .bind(datasource.clone()),
            )
            .await?;
            ScopeRows::GrantsOnDatasource(datasource.clone(), rows)
        }
        Scope::Filter { id } => {
            let row = sqlx::query("SELECT definition FROM rls_filters WHERE id = $1")
                .bind(*id)
                .fetch_optional(&mut **tx)
                .await?;
            let filter = match row {
                Some(row) => Some(filter_of_text(&row.try_get::<String, _>(0)?)?),
                None => None,
            };
            ScopeRows::Filter(*id, filter)
        }
        Scope::Datasource { id } => {
            let row = sqlx::query(&format!("{DATASOURCE_ROW} WHERE id = $1"))
                .bind(*id)
                .fetch_optional(&mut **tx)
                .await?;
            ScopeRows::Datasource(*id, row.as_ref().map(datasource_of_row).transpose()?)
        }
    })
}
