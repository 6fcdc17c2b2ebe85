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

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

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

/// Owners kept in memory when there is no store, and the store claims waiting to be
/// written together.
#[derive(Clone)]
pub struct MemoryOwners {
    owners: Cache<String, String>,
    claims: Arc<ClaimQueue>,
}

impl Default for MemoryOwners {
    fn default() -> MemoryOwners {
        MemoryOwners {
            owners: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(RESULT_BINDING_TTL)
                .build(),
            claims: Arc::default(),
        }
    }
}

/// Group commit for results claims. Every SQL Lab execute binds its `client_id` before it
/// is forwarded, and one durable transaction per claim (an fsync with SQLite) capped the
/// route at ~66 requests a second. Claims that arrive while a transaction is being written
/// wait and go into the next one together: each still commits durably before its request
/// is forwarded, and each still learns whether it won its id.
#[derive(Default)]
struct ClaimQueue {
    waiting: std::sync::Mutex<Vec<PendingClaim>>,
    /// Held by the request writing the waiting claims.
    writer: tokio::sync::Mutex<()>,
}

struct PendingClaim {
    id: String,
    owner: String,
    answer: tokio::sync::oneshot::Sender<Result<bool, ()>>,
}

/// At most this many claims in one transaction.
const MAX_CLAIMS_PER_TRANSACTION: usize = 512;

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
    owner_name(principal.kind, &principal.username)
}

/// `Kind:name`, the kind as its `Debug` name (`User`, `ServiceAccount`, `Anonymous`):
/// that spelling is what stored bindings hold. Built directly, not through `format!`,
/// because every request on a binding route makes one.
fn owner_name(kind: crate::principal::PrincipalKind, username: &str) -> String {
    use crate::principal::PrincipalKind;
    let kind = match kind {
        PrincipalKind::User => "User",
        PrincipalKind::ServiceAccount => "ServiceAccount",
        PrincipalKind::Anonymous => "Anonymous",
    };
    let mut owner = String::with_capacity(kind.len() + 1 + username.len());
    owner.push_str(kind);
    owner.push(':');
    owner.push_str(username);
    owner
}

/// What a forwarded request's response binds: to whom, and where the ids are.
#[derive(Debug, Clone)]
pub struct ResponseBinding {
    owner: String,
    pointers: Arc<[JsonPointer]>,
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
        pointers: Arc::clone(&results.bind_response),
    })
}

impl ResponseBinding {
    /// Every string the pointers name in a complete response body (`null` and absent
    /// members name nothing: a query still running has no results key yet).
    pub fn ids(&self, body: &[u8]) -> Result<Vec<String>, ResponseBindingError> {
        // Only the bound members are built: a SQL Lab response carries its rows too.
        let document = crate::route::parse_along(&self.pointers, body)
            .map_err(|error| ResponseBindingError::NotJson(error.to_string()))?;
        let mut ids = Vec::new();
        let mut values = crate::route::ReachedValues::new();
        for pointer in self.pointers.iter() {
            values.clear();
            pointer
                .reach_values(&document, &mut values)
                .map_err(ResponseBindingError::Shape)?;
            for value in values.iter().copied().flatten() {
                if let serde_json::Value::String(id) = value
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
                let queue = state.result_owners.claims.clone();
                // In the request's log span (its trace id), which is current here.
                let claim = async move {
                    if let Err(refusal) = claim_in_store(&queue, &store, &id, &owner).await {
                        tracing::warn!(%refusal, "a results id from a response was not stored");
                    }
                };
                tokio::spawn(tracing::Instrument::instrument(
                    claim,
                    tracing::Span::current(),
                ));
            }
        }
    }
}

/// Whether the route binds or checks results ids in the request ([`check`] does nothing
/// otherwise). A route that only binds its response (SQL Lab's execute) skips the stage;
/// [`response_binding`] covers it.
pub fn applies(identified: &Identified<'_>) -> bool {
    identified.route.as_ref().is_some_and(|(route, _)| {
        route
            .results()
            .is_some_and(|results| results.bind.is_some() || results.owned.is_some())
    })
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
    claim_in_store(&state.result_owners.claims, store, id, owner).await
}

async fn claim_in_store(
    queue: &Arc<ClaimQueue>,
    store: &Store,
    id: &str,
    owner: &str,
) -> Result<(), Refusal> {
    let (answer, mut answered) = tokio::sync::oneshot::channel();
    queue.waiting_claims().push(PendingClaim {
        id: id.to_string(),
        owner: owner.to_string(),
        answer,
    });
    let won = loop {
        if let Some(result) = take_answer(&mut answered).inspect_err(|_| unwritten())? {
            break result;
        }
        let _writer = queue.writer.lock().await;
        // The writer before us may have taken this claim into its transaction.
        if let Some(result) = take_answer(&mut answered).inspect_err(|_| unwritten())? {
            break result;
        }
        let batch = std::mem::take(&mut *queue.waiting_claims());
        // On a task of its own, so a request dropped mid-write cannot abandon the claims
        // of the others in its batch; in this request's span, so the batch's own log
        // line carries the trace id of the request that wrote it.
        let store = store.clone();
        let written = tokio::spawn(write_claims(store, batch).in_current_span()).await;
        if written.is_err() {
            unwritten();
            return Err(Refusal::ResultStore);
        }
    };
    if won {
        Ok(())
    } else {
        Err(Refusal::ResultOwner { id: id.to_string() })
    }
}

/// Logged by every request whose claim was in a batch the store did not take, in that
/// request's span (its trace id): the batch's line names only the writer's.
fn unwritten() {
    tracing::warn!("this request's results binding was not written; refused");
}

impl ClaimQueue {
    fn waiting_claims(&self) -> std::sync::MutexGuard<'_, Vec<PendingClaim>> {
        // A poisoned queue only means a panic while pushing or taking; its contents
        // are still a valid list of claims.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `Some(won)` once a writer has answered the claim; a writer that gave up without
/// answering refuses it (fail closed).
fn take_answer(
    answered: &mut tokio::sync::oneshot::Receiver<Result<bool, ()>>,
) -> Result<Option<bool>, Refusal> {
    match answered.try_recv() {
        Ok(Ok(won)) => Ok(Some(won)),
        Ok(Err(())) | Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
            Err(Refusal::ResultStore)
        }
        Err(tokio::sync::oneshot::error::TryRecvError::Empty) => Ok(None),
    }
}

/// One transaction for every waiting claim (in chunks of [`MAX_CLAIMS_PER_TRANSACTION`]);
/// each claim learns whether it won its id, or all of a failed transaction's are refused.
async fn write_claims(store: Store, batch: Vec<PendingClaim>) {
    let mut batch = batch.into_iter().peekable();
    while batch.peek().is_some() {
        let chunk: Vec<PendingClaim> = batch.by_ref().take(MAX_CLAIMS_PER_TRANSACTION).collect();
        match write_claim_chunk(&store, &chunk).await {
            Ok(outcomes) => {
                for (claim, won) in chunk.into_iter().zip(outcomes) {
                    let _ = claim.answer.send(Ok(won));
                }
            }
            Err(error) => {
                tracing::error!(%error, claims = chunk.len(), "results bindings could not be written");
                for claim in chunk {
                    let _ = claim.answer.send(Err(()));
                }
            }
        }
    }
}

async fn write_claim_chunk(
    store: &Store,
    chunk: &[PendingClaim],
) -> Result<Vec<bool>, sqlx::Error> {
    let now = crate::store::now_ms();
    let expires = now + RESULT_BINDING_TTL.as_millis() as i64;
    let mut transaction = store.pool().begin().await?;
    let mut outcomes = Vec::with_capacity(chunk.len());
    for claim in chunk {
        // Insert, or take over a row that is ours or expired; a live row of another
        // owner is left alone (0 rows affected). Two claims of one id in one batch
        // resolve in order, as they would in two transactions.
        let affected = sqlx::query(
            "INSERT INTO result_owners (result_id, owner, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (result_id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at \
             WHERE result_owners.owner = excluded.owner OR result_owners.expires_at <= $4",
        )
        .bind(&claim.id)
        .bind(&claim.owner)
        .bind(expires)
        .bind(now)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        outcomes.push(affected > 0);
    }
    transaction.commit().await?;
    Ok(outcomes)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Owners already stored were written as `{kind:?}:{name}`: the direct spelling must
    /// stay that, or a stored binding would stop matching its own caller.
    #[test]
    fn owner_names_are_spelt_as_stored_bindings_hold_them() {
        use crate::principal::PrincipalKind;
        for kind in [
            PrincipalKind::User,
            PrincipalKind::ServiceAccount,
            PrincipalKind::Anonymous,
        ] {
            assert_eq!(owner_name(kind, "alice@x"), format!("{kind:?}:alice@x"));
        }
    }

    /// Claims made at the same time are written in shared transactions and each still
    /// gets the answer one transaction per claim would give: the first owner of an id
    /// wins, the same owner may claim again, everything committed is in the store.
    #[test]
    fn claims_at_the_same_time_commit_together_and_first_owner_wins() {
        let directory = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for store in crate::store::tests::stores(directory.path()).await {
                let queue = Arc::new(ClaimQueue::default());
                let mut claims = tokio::task::JoinSet::new();
                // 100 ids, each claimed by alice, then by bob and alice again at once.
                for index in 0..100 {
                    let (queue, store) = (queue.clone(), store.clone());
                    claims.spawn(async move {
                        let id = format!("client-{index}");
                        let first = claim_in_store(&queue, &store, &id, "user:alice").await;
                        let (bob, again) = tokio::join!(
                            claim_in_store(&queue, &store, &id, "user:bob"),
                            claim_in_store(&queue, &store, &id, "user:alice"),
                        );
                        (first.is_ok(), bob.err(), again.is_ok())
                    });
                }
                while let Some(joined) = claims.join_next().await {
                    let (first, bob, again) = joined.unwrap();
                    assert!(first, "{:?}", store.backend());
                    assert!(matches!(bob, Some(Refusal::ResultOwner { .. })), "{bob:?}");
                    assert!(again);
                }
                let owners: Vec<(String,)> =
                    sqlx::query_as("SELECT DISTINCT owner FROM result_owners")
                        .fetch_all(store.pool())
                        .await
                        .unwrap();
                assert_eq!(owners, vec![("user:alice".to_string(),)]);
                let count: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM result_owners")
                    .fetch_one(store.pool())
                    .await
                    .unwrap();
                assert_eq!(count.0, 100);
                assert!(queue.waiting_claims().is_empty());
            }
        });
    }

    /// Log lines captured by a test subscriber.
    #[derive(Clone, Default)]
    struct CapturedLog(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for CapturedLog {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// When the store does not take a batch of claims, every request in it is refused and
    /// says so in its own span (so under its own trace id), and the batch's line, with the
    /// store's error, is in the span of the request that wrote it.
    #[test]
    fn a_batch_the_store_did_not_take_is_logged_in_each_requests_span() {
        let directory = tempfile::tempdir().unwrap();
        let log = CapturedLog::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _subscriber = tracing::subscriber::set_default(subscriber);
        // One thread: the spawned batch writer logs to this thread's subscriber too.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = crate::store::tests::stores(directory.path())
                .await
                .remove(0);
            sqlx::query("DROP TABLE result_owners")
                .execute(store.pool())
                .await
                .unwrap();
            let queue = Arc::new(ClaimQueue::default());
            let mut claims = tokio::task::JoinSet::new();
            for index in 0..8 {
                let (queue, store) = (queue.clone(), store.clone());
                claims.spawn(
                    async move {
                        claim_in_store(&queue, &store, &format!("client-{index}"), "user:alice")
                            .await
                    }
                    .instrument(tracing::info_span!("request", trace_id = index)),
                );
            }
            while let Some(joined) = claims.join_next().await {
                let refused = joined.unwrap();
                assert!(matches!(refused, Err(Refusal::ResultStore)), "{refused:?}");
            }
        });
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        for index in 0..8 {
            let span = format!("request{{trace_id={index}}}");
            assert!(
                text.lines()
                    .any(|line| line.contains(&span) && line.contains("was not written")),
                "{span}: {text}"
            );
        }
        let batches: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("results bindings could not be written"))
            .collect();
        assert!(!batches.is_empty(), "{text}");
        assert!(
            batches
                .iter()
                .all(|line| line.contains("request{trace_id=")),
            "{text}"
        );
    }
}
