//! Results bound to their caller. Superset re-runs (export) or re-reads (results) the
//! stored, already-rewritten query of whoever created a SQL Lab `client_id`: naming
//! another caller's id would return their rows. So when a route binds results
//! (`results.bind`), datagate records the caller as the id's owner before forwarding —
//! refusing an id another caller owns — and on routes that read results
//! (`results.owned`), it refuses every caller but the owner, and ids it never saw.
//!
//! Ids the upstream makes itself (Superset's `resultsKey`) are bound from the response:
//! on routes with `results.bind_response`, the proxy holds a successful JSON response
//! back until it is complete, records every id the pointers name as the caller's, then
//! sends it on unchanged ([`ResponseBinding`]). A response too large or not readable as
//! JSON binds nothing, so reading its ids later is refused (`result_unknown`).
//!
//! Runs after authorization, before credentials. Bindings live in the grants store when
//! there is one (every replica sees them), with a TTL; otherwise in this process's memory.
//! A binding made from a response is also kept in memory, because the response may reach
//! the caller before the store write completes: this replica then already knows it.

use std::time::Duration;

use moka::sync::Cache;

use super::Refusal;
use super::authorize::{Identified, Permit};
use super::request::ParsedRequest;
use crate::route::JsonPointer;
use crate::state::AppState;
use crate::store::Store;

/// Responses larger than this are passed on without binding their ids.
pub const MAX_BOUND_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

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

/// What a forwarded request's response binds: to whom, and where the ids are.
#[derive(Debug, Clone)]
pub struct ResponseBinding {
    owner: String,
    pointers: Vec<JsonPointer>,
}

/// Why a response's ids could not be read (nothing is bound; reading them is refused).
#[derive(Debug, thiserror::Error)]
pub enum ResponseBindingError {
    #[error("the response is larger than {MAX_BOUND_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("the response is encoded (`{0}`)")]
    Encoded(String),
    #[error("the response is not JSON: {0}")]
    NotJson(String),
    #[error("the response does not have the configured shape: {0}")]
    Shape(crate::route::RouteError),
}

/// The response binding for a request the route lets through, if the route has one.
pub fn response_binding(identified: &Identified<'_>, permit: &Permit) -> Option<ResponseBinding> {
    let (route, _) = identified.route.as_ref()?;
    let results = route.results()?;
    if results.bind_response.is_empty() {
        return None;
    }
    Some(ResponseBinding {
        owner: owner_of(permit),
        pointers: results.bind_response.clone(),
    })
}

impl ResponseBinding {
    /// Every string the pointers name in a complete response body (`null` and absent
    /// members name nothing: a query still running has no results key yet).
    pub fn ids(&self, body: &[u8]) -> Result<Vec<String>, ResponseBindingError> {
        let document: serde_json::Value = serde_json::from_slice(body)
            .map_err(|error| ResponseBindingError::NotJson(error.to_string()))?;
        let mut ids = Vec::new();
        for pointer in &self.pointers {
            for reached in pointer
                .reach(&document)
                .map_err(ResponseBindingError::Shape)?
            {
                if let Some(serde_json::Value::String(id)) = reached.value
                    && !id.is_empty()
                    && !ids.contains(id)
                {
                    ids.push(id.clone());
                }
            }
        }
        Ok(ids)
    }

    /// Records `ids` as the caller's. Runs in the proxy's response path, which cannot
    /// wait: memory at once (first owner wins), the store in the background.
    pub fn record(&self, state: &AppState, ids: Vec<String>) {
        for id in ids {
            let existing = state
                .result_owners
                .owners
                .get_with(id.clone(), || self.owner.clone());
            if existing != self.owner {
                tracing::warn!("a response named a results id another caller owns; not rebound");
                continue;
            }
            if let Some(store) = &state.store {
                let store = store.clone();
                let owner = self.owner.clone();
                tokio::spawn(async move {
                    if let Err(refusal) = claim_in_store(&store, &id, &owner).await {
                        tracing::warn!(%refusal, "a results id from a response was not stored");
                    }
                });
            }
        }
    }
}

/// Binds or checks result ids as the route says.
/// Whether the route binds or checks results ids at all ([`check`] does nothing otherwise).
pub fn applies(identified: &Identified<'_>) -> bool {
    identified
        .route
        .as_ref()
        .is_some_and(|(route, _)| route.results().is_some())
}

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
    claim_in_store(store, id, owner).await
}

async fn claim_in_store(store: &Store, id: &str, owner: &str) -> Result<(), Refusal> {
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
    let stored = lookup_in_store(store, id).await?;
    // A binding from a response this replica saw, whose store write may still be on
    // its way; the store's answer wins when it has one.
    Ok(stored.or_else(|| state.result_owners.owners.get(id)))
}

async fn lookup_in_store(store: &Store, id: &str) -> Result<Option<String>, Refusal> {
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
