//! The grants store: users, teams, service accounts and their tokens, roles, datasource
//! grants, RLS filters, datasources and the admin audit trail, in a real database.
//!
//! Off the request path. The admin API writes through [`Store::apply`]; a replica reads
//! the whole store into [`StoreContents`] at start-up, and afterwards only what the
//! revisions it has not seen touched ([`delta`]: the change log names the scopes, their
//! rows are re-read), falling back to the whole store on a gap. The proxy never waits on
//! the database: it decides from the snapshot.
//!
//! Backends: embedded SQLite (a file, created and migrated on first start) or PostgreSQL.
//! Both speak the same SQL through sqlx's `Any` driver; only the migrations differ
//! (identity columns). Every write is one transaction that bumps `store_revision`
//! first (which takes the write lock on both backends, so concurrent writers from any
//! replica are serialised), applies the change, records the audit event, validates the
//! resulting policy and only then commits; on PostgreSQL the commit also announces the
//! new revision with `NOTIFY`.

mod changes;
mod contents;
pub mod delta;
mod records;
mod search;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row};

pub use changes::{Change, DatasourceInput, Grantee, ServiceAccountTokenInput, UserInput};
pub use contents::{
    GrantKey, ScopeRows, StoreContents, StoreIdentity, StoreToken, StoreUser, StoredGrant, Touched,
};
pub use delta::{StoreDelta, StoreUpdate};
pub use records::*;
pub use search::{Found, SearchPage};

/// The PostgreSQL channel every write announces its revision on.
pub const CHANGE_CHANNEL: &str = "datagate_policy";

/// `store:` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:PATH` (relative to the config file) or `postgresql://…`.
    #[serde(default)]
    pub url: Option<String>,
    /// Name of an environment variable holding the URL (keeps passwords out of the file).
    #[serde(default)]
    pub url_env: Option<String>,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How often every replica compares the store's revision with its own, as a safety
    /// net under `LISTEN`.
    #[serde(
        default = "default_poll_interval",
        with = "crate::config::duration_text"
    )]
    pub poll_interval: Duration,
    /// A replica that has not confirmed its policy is current for this long answers data
    /// requests with 503 instead of serving possibly stale grants.
    #[serde(
        default = "default_max_staleness",
        with = "crate::config::duration_text"
    )]
    pub max_staleness: Duration,
}

fn default_max_connections() -> u32 {
    8
}
fn default_poll_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_max_staleness() -> Duration {
    Duration::from_secs(10)
}

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Why a store operation failed. `Database` and `Connect` messages are for operators
/// (logs); the admin API shows clients only a generic message for them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store config `{key}`: {message}")]
    Config { key: &'static str, message: String },
    #[error("cannot connect to the {backend} store: {message}")]
    Connect {
        backend: &'static str,
        message: String,
    },
    #[error("store migration failed: {0}")]
    Migrate(String),
    #[error("store query failed: {0}")]
    Database(String),
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// The change is well-formed but the policy it would produce does not build.
    #[error("the change was not applied: {0}")]
    Rejected(#[source] crate::state::SnapshotError),
    /// The thread building the new policy stopped before answering; nothing was written.
    #[error("the change was not applied: building the new policy failed")]
    BuildLost,
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(database_error) = &error
            && database_error.is_unique_violation()
        {
            return StoreError::Conflict("an entry with that name already exists".to_string());
        }
        StoreError::Database(error.to_string())
    }
}

/// A handle on the store; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// For `LISTEN` (PostgreSQL only), which needs its own connection.
    url: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        formatter
            .debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

static MIGRATE_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static MIGRATE_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl StoreConfig {
    /// The URL to connect to, with a relative SQLite path resolved against `base_dir`.
    pub fn resolve_url(&self, base_dir: &Path) -> Result<String, StoreError> {
        let url = match (&self.url, &self.url_env) {
            (Some(url), None) => url.clone(),
            (None, Some(name)) => std::env::var(name).map_err(|_| StoreError::Config {
                key: "store.url_env",
                message: format!("environment variable `{name}` is not set"),
            })?,
            (Some(_), Some(_)) => {
                return Err(StoreError::Config {
                    key: "store.url",
                    message: "set `url` or `url_env`, not both".into(),
                });
            }
            (None, None) => {
                return Err(StoreError::Config {
                    key: "store.url",
                    message: "required (`sqlite:PATH` or `postgresql://…`)".into(),
                });
            }
        };
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let (path, _query) = path.split_once('?').unwrap_or((path, ""));
            if path.is_empty() || path == ":memory:" {
                return Err(StoreError::Config {
                    key: "store.url",
                    message: "an SQLite store needs a file path (`sqlite:data/datagate.db`)".into(),
                });
            }
            let resolved = base_dir.join(path);
            return Ok(format!("sqlite://{}?mode=rwc", resolved.display()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(url);
        }
        Err(StoreError::Config {
            key: "store.url",
            message: "must start with `sqlite:` or `postgresql://`".into(),
        })
    }
}

impl Store {
    /// Connects, creating the SQLite file (and its directory) on first start, and runs
    /// the migrations.
    pub async fn connect(config: &StoreConfig, base_dir: &Path) -> Result<Store, StoreError> {
        let url = config.resolve_url(base_dir)?;
        Store::connect_url(&url, config.max_connections).await
    }

    /// [`Store::connect`] with an already resolved URL (tests).
    pub async fn connect_url(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        if backend == Backend::Sqlite
            && let Some(path) = url.strip_prefix("sqlite://")
        {
            let path = Path::new(path.split_once('?').map_or(path, |(path, _)| path));
            if let Some(parent) = path.parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|error| StoreError::Connect {
                    backend: backend.as_str(),
                    message: format!("cannot create the store directory: {error}"),
                })?;
            }
        }
        let connect_error = |error: sqlx::Error| StoreError::Connect {
            backend: backend.as_str(),
            message: redact(&error.to_string(), url),
        };
        let options: AnyConnectOptions = url.parse().map_err(connect_error)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        let migrator = match backend {
            Backend::Sqlite => &MIGRATE_SQLITE,
            Backend::Postgres => &MIGRATE_POSTGRES,
        };
        migrator
            .run(&pool)
            .await
            .map_err(|error| StoreError::Migrate(error.to_string()))?;
        Ok(Store {
            pool,
            backend,
            url: url.to_string(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection URL, for the change listener. Never show it: it may hold a password.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The store's current revision: bumped by every committed write.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT revision FROM store_revision WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// A transaction that reads one consistent state of the store: PostgreSQL's default
    /// (read committed) gives every statement its own snapshot, so a reader could see half
    /// of a write; repeatable read gives the whole transaction one. SQLite transactions
    /// are serializable already.
    async fn read_transaction(&self) -> Result<sqlx::Transaction<'_, sqlx::Any>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *transaction)
                .await?;
        }
        Ok(transaction)
    }

    /// Everything a policy snapshot needs, read in one transaction so it is consistent.
    pub async fn load(&self) -> Result<StoreContents, StoreError> {
        let mut transaction = self.read_transaction().await?;
        let contents = contents::load(&mut transaction).await?;
        transaction.commit().await?;
        Ok(contents)
    }

    /// What takes contents at revision `from` to the store's current revision: the rows
    /// the revisions in between touched, or the whole store when the change log does not
    /// cover them ([`delta`]). `None` when the store is not newer than `from`.
    pub async fn changes_since(&self, from: i64) -> Result<Option<StoreUpdate>, StoreError> {
        let mut transaction = self.read_transaction().await?;
        let revision: i64 = sqlx::query("SELECT revision FROM store_revision WHERE id = 1")
            .fetch_one(&mut *transaction)
            .await?
            .try_get(0)?;
        if revision <= from {
            transaction.commit().await?;
            return Ok(None);
        }
        let update = delta::catch_up(&mut transaction, from, revision).await?;
        transaction.commit().await?;
        Ok(Some(update))
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Applies one change as one transaction. `build` gets what takes the caller's
    /// contents at `base_revision` to the store as it would be after the change — the
    /// rows this and any missed revision touched, or the whole store (without a base, or
    /// when the change log does not reach back to it) — and builds what the caller will
    /// serve (a policy snapshot), or refuses the change (for example, a filter whose
    /// clause does not compile against its datasource): then nothing is written. It runs
    /// once, on a blocking thread (never on the async runtime), while the transaction
    /// holds the write lock: the build must see exactly what commits. On success returns
    /// what the change produced and what `build` returned.
    pub async fn apply<T, F>(
        &self,
        actor: &str,
        change: Change,
        base_revision: Option<i64>,
        build: F,
    ) -> Result<(Applied, T), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(StoreUpdate) -> Result<T, crate::state::SnapshotError> + Send + 'static,
    {
        let mut transaction = self.pool.begin().await?;
        // First statement: takes the write lock (row lock on PostgreSQL, RESERVED on
        // SQLite), so every writer on every replica is serialised from here.
        let revision: i64 = sqlx::query(
            "UPDATE store_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        )
        .fetch_one(&mut *transaction)
        .await?
        .try_get(0)?;
        let applied = changes::apply(&mut transaction, &change).await?;
        delta::record(
            &mut transaction,
            revision,
            &changes::scopes_of(&change, &applied),
        )
        .await?;
        let update = match base_revision {
            Some(base) if base < revision => {
                delta::catch_up(&mut transaction, base, revision).await?
            }
            _ => StoreUpdate::Full(Box::new(contents::load(&mut transaction).await?)),
        };
        let built = tokio::task::spawn_blocking(move || build(update))
            .await
            .map_err(|_| StoreError::BuildLost)?
            .map_err(StoreError::Rejected)?;
        sqlx::query(
            "INSERT INTO audit_events (uid, at_ms, actor, action, target, before_state, after_state, revision) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(now_ms())
        .bind(actor.to_string())
        .bind(applied.action.clone())
        .bind(applied.target.clone())
        .bind(applied.before.as_ref().map(ToString::to_string))
        .bind(applied.after.as_ref().map(ToString::to_string))
        .bind(revision)
        .execute(&mut *transaction)
        .await?;
        if self.backend == Backend::Postgres {
            // Delivered to listeners only when the transaction commits.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGE_CHANNEL)
                .bind(format!("{revision} {}", now_ms()))
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok((
            Applied {
                revision,
                ..applied
            },
            built,
        ))
    }
}

/// What one applied change did, for the response and the audit trail.
#[derive(Debug, Clone)]
pub struct Applied {
    /// e.g. `datasource_permission.set`, `user.create`.
    pub action: String,
    /// e.g. `datasources:uid:demo/users/3`.
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    /// The created row's id, for create changes.
    pub created_id: Option<i64>,
    /// The store revision the change committed as.
    pub revision: i64,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Connection errors can echo the URL, which may carry a password.
pub(crate) fn redact(message: &str, url: &str) -> String {
    let mut message = message.replace(url, "<store url>");
    if let Some((_, rest)) = url.split_once("://")
        && let Some((credentials, _)) = rest.split_once('@')
        && !credentials.is_empty()
    {
        message = message.replace(credentials, "<credentials>");
    }
    message
}

#[cfg(test)]
pub(crate) mod tests;
