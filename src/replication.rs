//! Keeps every replica's snapshot in step with the grants store.
//!
//! Off the request path; runs on the admin runtime. Two loops feed one check:
//! - on PostgreSQL, a `LISTEN` connection wakes the check as soon as any replica commits
//!   a write (the notification carries the revision and the commit time, so propagation
//!   latency is measured); a dropped connection is re-established with backoff and
//!   followed by a full resync;
//! - on every backend, a poller runs the check every `store.poll_interval`, so a lost
//!   notification is caught within one interval.
//!
//! The check reads the store's revision; when it is newer than the one serving, it reads
//! what the missed revisions changed from the change log and applies only that to the
//! serving snapshot ([`crate::store::delta`]); on a gap in the log, when too far behind,
//! or when the delta does not apply, it loads the whole store and rebuilds. Whenever the check succeeds, the replica has
//! confirmed its grants are current; if it cannot confirm for longer than
//! `store.max_staleness`, data requests are refused with 503 (see `decision::identify`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::state::{AppState, ReloadTrigger};
use crate::store::{Backend, CHANGE_CHANNEL, Store};

/// Starts the sync loops on the current tokio runtime.
pub fn start(state: Arc<AppState>) {
    let Some(store) = state.store.clone() else {
        return;
    };
    let Some(config) = state.config.store.clone() else {
        return;
    };
    let wake = Arc::new(Notify::new());
    if store.backend() == Backend::Postgres {
        tokio::spawn(listen(state.clone(), store.clone(), wake.clone()));
    }
    tokio::spawn(async move {
        loop {
            check(&state, &store, "poll", None).await;
            tokio::select! {
                () = tokio::time::sleep(config.poll_interval) => {}
                () = wake.notified() => {}
            }
        }
    });
}

/// Brings the snapshot up to the store's revision; confirms currency on success.
/// `committed_at_ms` (from a notification) measures propagation latency.
async fn check(state: &Arc<AppState>, store: &Store, source: &str, committed_at_ms: Option<i64>) {
    let revision = match store.revision().await {
        Ok(revision) => revision,
        Err(error) => {
            count(state, source, "failed");
            tracing::warn!(%error, source, "cannot read the store revision; grants may go stale");
            return;
        }
    };
    if revision <= state.store_revision() {
        state.confirm_store_current();
        count(state, source, "current");
        return;
    }
    let update = match store.changes_since(state.store_revision()).await {
        Ok(Some(update)) => update,
        Ok(None) => {
            state.confirm_store_current();
            count(state, source, "current");
            return;
        }
        Err(error) => {
            count(state, source, "failed");
            tracing::warn!(%error, source, "cannot read the store changes; grants may go stale");
            return;
        }
    };
    let loaded_revision = update.revision();
    let mut kind = update.kind();
    let reload_state = state.clone();
    let result = tokio::task::spawn_blocking(move || {
        match reload_state.apply_store_update(ReloadTrigger::StoreChange, &update) {
            // A write through this replica moved the snapshot past the delta's start
            // between the read and now: cannot happen (serving only moves forward and
            // the delta covers it), but a full reload is always right.
            Err(crate::state::SnapshotError::StoreGap { .. }) => Err(None),
            Err(error) => Err(Some(error)),
            Ok(outcome) => Ok(outcome),
        }
    })
    .await;
    let result = match result {
        Ok(Err(None)) => match store.load().await {
            Ok(contents) => {
                kind = "full";
                let reload_state = state.clone();
                tokio::task::spawn_blocking(move || {
                    reload_state.reload_store(ReloadTrigger::StoreChange, contents)
                })
                .await
                .map(|result| result.map_err(Some))
            }
            Err(error) => {
                count(state, source, "failed");
                tracing::warn!(%error, source, "cannot load the store; grants may go stale");
                return;
            }
        },
        other => other,
    };
    match result {
        Ok(Ok(_)) => {
            // Confirmed only if what we loaded is at least what we were told about.
            if loaded_revision >= revision {
                state.confirm_store_current();
            }
            count(
                state,
                source,
                if kind == "incremental" {
                    "incremental"
                } else {
                    "reloaded"
                },
            );
            if let Some(committed_at_ms) = committed_at_ms {
                let latency_ms = (crate::store::now_ms() - committed_at_ms).max(0);
                state
                    .metrics
                    .store_propagation_seconds
                    .observe(latency_ms as f64 / 1000.0);
            }
            tracing::info!(
                store_revision = loaded_revision,
                source,
                update = kind,
                "store change applied"
            );
        }
        Ok(Err(error)) => {
            // The store holds something this replica cannot build (e.g. a filter for a
            // datasource only another replica's config knows). Keep serving the old
            // snapshot, and do not confirm: after max_staleness, refuse.
            count(state, source, "failed");
            let error = error.map_or_else(|| "store gap".to_string(), |error| error.to_string());
            tracing::error!(%error, store_revision = loaded_revision, "store contents refused; the previous snapshot keeps serving");
        }
        Err(error) => {
            count(state, source, "failed");
            tracing::error!(%error, "store reload task failed");
        }
    }
}

fn count(state: &AppState, source: &str, result: &str) {
    state
        .metrics
        .store_syncs
        .with_label_values(&[source, result])
        .inc();
}

/// `LISTEN` on PostgreSQL; reconnects with backoff and resyncs after every reconnect.
async fn listen(state: Arc<AppState>, store: Store, wake: Arc<Notify>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match sqlx::postgres::PgListener::connect(store.url()).await {
            Ok(mut listener) => {
                if let Err(error) = listener.listen(CHANGE_CHANNEL).await {
                    tracing::warn!(%error, "LISTEN failed; retrying");
                } else {
                    backoff = Duration::from_millis(100);
                    tracing::info!(channel = CHANGE_CHANNEL, "listening for store changes");
                    // Anything committed while we were not listening.
                    wake.notify_one();
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(notification)) => {
                                let committed_at_ms = notification
                                    .payload()
                                    .split_once(' ')
                                    .and_then(|(_, at)| at.parse::<i64>().ok());
                                check(&state, &store, "notify", committed_at_ms).await;
                            }
                            // The connection dropped; sqlx reconnects on the next call,
                            // but a notification may have been lost meanwhile.
                            Ok(None) => {
                                tracing::warn!("store change connection lost; resyncing");
                                wake.notify_one();
                            }
                            Err(error) => {
                                tracing::warn!(%error, "store change listener failed; reconnecting");
                                break;
                            }
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::store::redact(&error.to_string(), store.url()), "cannot connect the store change listener; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
