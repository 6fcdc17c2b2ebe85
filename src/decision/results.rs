//! Results bound to their caller. Superset re-runs (export) or re-reads (results) the
//! stored, already-rewritten query of whoever created a SQL Lab `client_id`: naming
//! another caller's id would return their rows. So when a route binds results
//! (`results.bind`), datagate records the caller as the id's owner before forwarding —
//! refusing an id another caller owns — and on routes that read results
//! (`results.owned`), it refuses every caller but the owner, and ids it never saw.
//!
//! Runs after authorization, before credentials. Bindings live in the grants store when
//! there is one (every replica sees them), with a TTL; otherwise in this process's memory.

use std::time::Duration;

use moka::sync::Cache;

use super::Refusal;
use super::authorize::{Identified, Permit};
use super::request::ParsedRequest;
use crate::state::AppState;

/// How long a binding lasts after the query ran (Superset keeps results for a day by
/// default; a binding outliving them only refuses more).
pub const RESULT_BINDING_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Owners kept in memory when there is no store.
#[derive(Clone)]
pub struct MemoryOwners {
    owners: Cache<String, String>,
}

impl Default for MemoryOwners {
    fn default() -> MemoryOwners {
        MemoryOwners {
            owners: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(RESULT_BINDING_TTL)
                .build(),
        }
    }
}

impl std::fmt::Debug for MemoryOwners {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MemoryOwners")
            .field("entries", &self.owners.entry_count())
            .finish()
    }
}

/// The caller's identity as an owner: kind and name, so a user and a service account
/// of the same name are different owners.
fn owner_of(permit: &Permit) -> String {
    let principal = permit.principal();
    format!("{:?}:{}", principal.kind, principal.username)
}

/// Binds or checks result ids as the route says.
pub async fn check(
    state: &AppState,
    identified: &Identified<'_>,
    permit: &Permit,
    request: &ParsedRequest,
) -> Result<(), Refusal> {
    let Some((route, params)) = &identified.route else {
        return Ok(());
    };
    let Some(results) = route.results() else {
        return Ok(());
    };
    let owner = owner_of(permit);
    if let Some(bind) = &results.bind {
        for id in crate::route::extract_datasource_uids(bind, params, request)
            .map_err(Refusal::BadRequest)?
        {
            claim(state, &id, &owner).await?;
        }
    }
    if let Some(owned) = &results.owned {
        for id in crate::route::extract_datasource_uids(owned, params, request)
            .map_err(Refusal::BadRequest)?
        {
            match lookup(state, &id).await? {
                Some(recorded) if recorded == owner => {}
                Some(_) => return Err(Refusal::ResultOwner { id }),
                None => return Err(Refusal::ResultUnknown { id }),
            }
        }
    }
    Ok(())
}

async fn claim(state: &AppState, id: &str, owner: &str) -> Result<(), Refusal> {
    let Some(store) = &state.store else {
        let existing = state
            .result_owners
            .owners
            .get_with(id.to_string(), || owner.to_string());
        return if existing == owner {
            Ok(())
        } else {
            Err(Refusal::ResultOwner { id: id.to_string() })
        };
    };
    let now = crate::store::now_ms();
    let expires = now + RESULT_BINDING_TTL.as_millis() as i64;
    // Insert, or take over a row that is ours or expired; a live row of another owner
    // is left alone (0 rows affected).
    let affected = sqlx::query(
        "INSERT INTO result_owners (result_id, owner, expires_at) VALUES ($1, $2, $3) \
         ON CONFLICT (result_id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at \
         WHERE result_owners.owner = excluded.owner OR result_owners.expires_at <= $4",
    )
    .bind(id)
    .bind(owner)
    .bind(expires)
    .bind(now)
    .execute(store.pool())
    .await
    .map_err(|error| {
        tracing::error!(%error, "results binding could not be written");
        Refusal::ResultStore
    })?
    .rows_affected();
    if affected == 0 {
        return Err(Refusal::ResultOwner { id: id.to_string() });
    }
    Ok(())
}

async fn lookup(state: &AppState, id: &str) -> Result<Option<String>, Refusal> {
    let Some(store) = &state.store else {
        return Ok(state.result_owners.owners.get(id));
    };
    let row: Option<(String,)> =
        sqlx::query_as("SELECT owner FROM result_owners WHERE result_id = $1 AND expires_at > $2")
            .bind(id)
            .bind(crate::store::now_ms())
            .fetch_optional(store.pool())
            .await
            .map_err(|error| {
                tracing::error!(%error, "results binding could not be read");
                Refusal::ResultStore
            })?;
    Ok(row.map(|(owner,)| owner))
}
