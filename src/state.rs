//! Shared state: the current policy snapshot behind `ArcSwap`, and how it is replaced.
//!
//! Every request loads one snapshot at its start and decides against it to the end, so a
//! reload in the middle of a request never mixes two revisions. A reload (file change,
//! SIGHUP, `POST /api/admin/reload`) builds a new snapshot off to the side, and only a
//! snapshot that built cleanly is swapped in; a failed build leaves the old one serving and
//! is recorded for `GET /api/admin/policy/status`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;

use crate::audit::AuditSink;
use crate::authn::Authenticator;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::route::RouteTable;
use crate::sources::{FileStamp, PolicyInputs};
use crate::store::{Store, StoreContents, StoreUpdate};

pub use crate::snapshot::{
    BuildKind, FileParts, PolicySnapshot, SnapshotContent, SnapshotError, StoreBuild, StoreView,
    apply_update, build_snapshot_content, build_snapshot_content_with_store,
    build_snapshot_from_inputs,
};

/// What asked for a reload; recorded in logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    Startup,
    FileChange,
    Signal,
    AdminApi,
    /// A write through this replica's admin API.
    StoreWrite,
    /// Another replica's write, announced or found by the poller.
    StoreChange,
}

impl ReloadTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadTrigger::Startup => "startup",
            ReloadTrigger::FileChange => "file_change",
            ReloadTrigger::Signal => "signal",
            ReloadTrigger::AdminApi => "admin_api",
            ReloadTrigger::StoreWrite => "store_write",
            ReloadTrigger::StoreChange => "store_change",
        }
    }
}

/// The result of a reload that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// A new revision is serving.
    Swapped,
    /// The files hash to the serving digest: nothing to swap, the revision stays.
    Unchanged,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReloadFailure {
    pub message: String,
    #[serde(with = "time_rfc3339")]
    pub at: SystemTime,
    pub trigger: &'static str,
}

/// What `GET /api/admin/policy/status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyStatus {
    pub revision: u64,
    pub digest: String,
    #[serde(with = "time_rfc3339")]
    pub loaded_at: SystemTime,
    pub lines: usize,
    /// Of which from the grants store.
    pub store_lines: usize,
    /// `full` or `incremental`: how the serving snapshot was built.
    pub build: BuildKind,
    pub engine: &'static str,
    pub last_error: Option<ReloadFailure>,
    /// `sqlite`, `postgres`, or `null` without a store.
    pub store_backend: Option<&'static str>,
    /// The store revision the serving snapshot was built from.
    pub store_revision: i64,
    /// Seconds since this replica last confirmed its policy is current (store only).
    pub store_confirmed_seconds_ago: Option<f64>,
}

/// Everything a request needs, shared by the proxy workers, the admin listener and the
/// reload watcher.
pub struct AppState {
    pub config: Config,
    pub authenticator: Authenticator,
    pub routes: RouteTable,
    pub metrics: Arc<Metrics>,
    /// Database credentials for `aws_iam` datasources (when `aws.database_iam_auth`).
    pub credentials: std::sync::OnceLock<Arc<crate::creds::CredentialBroker>>,
    /// Trace export, started by `datagate run` when `telemetry.otlp` is set (never by
    /// `explain` or `test`, which build the same state).
    pub telemetry: std::sync::OnceLock<crate::telemetry::Telemetry>,
    pub audit: AuditSink,
    /// The grants store, when configured.
    pub store: Option<Store>,
    /// Serialises admin writes within this replica (the store serialises across them).
    pub admin_writes: tokio::sync::Mutex<()>,
    /// Readiness and drain state (`/readyz`).
    pub lifecycle: crate::lifecycle::Lifecycle,
    /// Where the decision path runs SQL rewrites, off the proxy's I/O threads.
    pub sql_pool: crate::sql_pool::SqlPool,
    /// Results ids bound to their callers, when there is no store to hold them.
    pub result_owners: crate::decision::results::MemoryOwners,
    /// Mapped Superset datasets checked against their stored definitions
    /// (`charts.verify`); set by `datagate run` only, since `explain` and `test` decide
    /// without reaching the upstream.
    pub dataset_verifier: std::sync::OnceLock<crate::dataset_verify::DatasetVerifier>,
    snapshot: ArcSwap<PolicySnapshot>,
    next_revision: AtomicU64,
    /// When this replica last confirmed that its snapshot holds the store's current
    /// revision, in milliseconds since `started`.
    store_confirmed_ms: AtomicI64,
    started: Instant,
    /// The input files the serving snapshot was built from: their digest decides
    /// "unchanged" before any build, and store-triggered rebuilds reuse them.
    serving_inputs: Mutex<Arc<PolicyInputs>>,
    /// The metadata of the input files when they were last read; while it vouches for the
    /// files on disk, the watcher and the poll neither read nor build.
    last_stamp: Mutex<Option<FileStamp>>,
    /// Serialises reloads so two triggers cannot race to swap in older content.
    reload_lock: Mutex<()>,
    last_reload_error: Mutex<Option<ReloadFailure>>,
}

/// Why the state could not be built at start-up.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("authentication config: {0}")]
    Authn(#[from] crate::authn::AuthnError),
    #[error("routes config: {0}")]
    Routes(#[from] crate::route::RouteError),
    #[error("policy: {0}")]
    Policy(#[from] SnapshotError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("audit output: {0}")]
    Audit(#[from] std::io::Error),
    #[error("SQL work pool: {0}")]
    SqlPool(std::io::Error),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

impl AppState {
    /// Builds everything from a validated config, without a store; the initial policy
    /// must load.
    pub fn build(config: Config) -> Result<Arc<AppState>, StartupError> {
        AppState::build_with_store(config, None)
    }

    /// Builds everything from a validated config and, when given, a connected store and
    /// its contents at start-up.
    pub fn build_with_store(
        config: Config,
        store: Option<(Store, StoreContents)>,
    ) -> Result<Arc<AppState>, StartupError> {
        let (store, contents) = match store {
            Some((store, contents)) => (Some(store), contents),
            None => (None, StoreContents::default()),
        };
        AppState::build_from(config, store, contents)
    }

    /// Builds everything from a validated config and store contents given as a value,
    /// with no store connection: the fixture store of a `datagate test` file. Nothing
    /// writes to it and it never goes stale.
    pub fn build_with_contents(
        config: Config,
        contents: StoreContents,
    ) -> Result<Arc<AppState>, StartupError> {
        AppState::build_from(config, None, contents)
    }

    fn build_from(
        config: Config,
        store: Option<Store>,
        contents: StoreContents,
    ) -> Result<Arc<AppState>, StartupError> {
        let authenticator = Authenticator::from_config(&config.auth, &config.base_dir)?;
        let routes = RouteTable::from_config(&config.routes)?;
        let contents = Arc::new(contents);
        let stamp = FileStamp::take(&config);
        let inputs = Arc::new(PolicyInputs::read(&config).map_err(SnapshotError::from)?);
        let content = build_snapshot_from_inputs(&config, &inputs, &contents)?;
        let store_revision = contents.revision;
        let audit = AuditSink::open(&config.audit, &config.base_dir)?;
        let metrics = Arc::new(Metrics::new()?);
        metrics.policy_revision.set(1);
        metrics
            .policy_reloads
            .with_label_values(&[ReloadTrigger::Startup.as_str(), "swapped"])
            .inc();
        let snapshot = PolicySnapshot {
            revision: 1,
            policy: content.policy,
            rls: content.rls,
            digest: content.digest,
            loaded_at: SystemTime::now(),
            store: content.store,
            files: content.files,
            build: content.build,
            exports: config.exports.clone(),
            callers: Default::default(),
        };
        metrics.store_revision.set(store_revision);
        let sql_pool = crate::sql_pool::SqlPool::start(
            &config.sql.pool,
            config.sql.max_bytes,
            metrics.sql_pool.clone(),
        )
        .map_err(StartupError::SqlPool)?;
        if config.charts.verify.is_none() && !config.charts.datasets.is_empty() {
            tracing::warn!(
                "charts.datasets maps datasets but charts.verify is not set: what the upstream stored for them before datagate was in front is not checked"
            );
        }
        Ok(Arc::new(AppState {
            config,
            authenticator,
            routes,
            metrics,
            audit,
            credentials: std::sync::OnceLock::new(),
            telemetry: std::sync::OnceLock::new(),
            store,
            admin_writes: tokio::sync::Mutex::new(()),
            lifecycle: crate::lifecycle::Lifecycle::default(),
            sql_pool,
            result_owners: Default::default(),
            dataset_verifier: std::sync::OnceLock::new(),
            snapshot: ArcSwap::from_pointee(snapshot),
            next_revision: AtomicU64::new(2),
            store_confirmed_ms: AtomicI64::new(0),
            started: Instant::now(),
            serving_inputs: Mutex::new(inputs),
            last_stamp: Mutex::new(Some(stamp)),
            reload_lock: Mutex::new(()),
            last_reload_error: Mutex::new(None),
        }))
    }

    /// The snapshot a request decides against, from start to end.
    pub fn snapshot(&self) -> Arc<PolicySnapshot> {
        self.snapshot.load_full()
    }

    /// Re-reads the policy files (with the store contents already held) and swaps in a
    /// new snapshot if their content changed and it built; the old snapshot keeps serving
    /// otherwise. Files whose digest is the serving one are not parsed or compiled.
    pub fn reload(&self, trigger: ReloadTrigger) -> Result<ReloadOutcome, SnapshotError> {
        self.reload_files(trigger, false)
            .map(|outcome| outcome.unwrap_or(ReloadOutcome::Unchanged))
    }

    /// Like [`reload`](Self::reload), for the watcher and the poll: when the files'
    /// metadata vouches that nothing changed since they were last read, nothing is read,
    /// built or counted, and the answer is `None`.
    pub fn reload_if_changed(
        &self,
        trigger: ReloadTrigger,
    ) -> Result<Option<ReloadOutcome>, SnapshotError> {
        self.reload_files(trigger, true)
    }

    fn reload_files(
        &self,
        trigger: ReloadTrigger,
        trust_stamp: bool,
    ) -> Result<Option<ReloadOutcome>, SnapshotError> {
        let _one_reload_at_a_time = self.reload_lock.lock();
        let stamp = FileStamp::take(&self.config);
        if trust_stamp
            && self
                .last_stamp
                .lock()
                .as_ref()
                .is_some_and(|last| last.vouches_for(&stamp))
        {
            return Ok(None);
        }
        // Recorded before the read: a file changed after this moment differs from it, so
        // the next check reads again.
        *self.last_stamp.lock() = Some(stamp);
        let inputs = match PolicyInputs::read(&self.config) {
            Ok(inputs) => inputs,
            Err(error) => return Err(self.refused(trigger, error.into())),
        };
        if inputs.digest == self.serving_inputs.lock().digest {
            *self.last_reload_error.lock() = None;
            self.count_reload(trigger, "unchanged");
            return Ok(Some(ReloadOutcome::Unchanged));
        }
        let contents = self.snapshot.load().store.contents.clone();
        self.rebuild(trigger, &Arc::new(inputs), &contents)
            .map(Some)
    }

    /// Brings the snapshot to what `update` makes of the store (a delta from the revision
    /// serving, or the whole store) with the serving input files (no file is read).
    /// Updates older than the serving store revision are ignored (a slow poll must not
    /// undo a newer write), and updates that fail to build leave the old snapshot in
    /// place. A delta that starts after the serving revision is refused
    /// ([`SnapshotError::StoreGap`]): the caller reloads in full.
    pub fn apply_store_update(
        &self,
        trigger: ReloadTrigger,
        update: &StoreUpdate,
    ) -> Result<ReloadOutcome, SnapshotError> {
        let _one_reload_at_a_time = self.reload_lock.lock();
        let serving = self.snapshot.load_full();
        if update.revision() < serving.store.revision {
            return Ok(ReloadOutcome::Unchanged);
        }
        let content = match update {
            StoreUpdate::Full(contents) => {
                let inputs = self.serving_inputs.lock().clone();
                build_snapshot_from_inputs(&self.config, &inputs, &Arc::new((**contents).clone()))
            }
            StoreUpdate::Delta(_) => apply_update(&self.config, &serving.content(), update),
        };
        let outcome = self.serve_content(trigger, content)?;
        self.metrics.store_revision.set(update.revision());
        Ok(outcome)
    }

    /// Like [`apply_store_update`](Self::apply_store_update) with the whole store.
    pub fn reload_store(
        &self,
        trigger: ReloadTrigger,
        contents: StoreContents,
    ) -> Result<ReloadOutcome, SnapshotError> {
        self.apply_store_update(trigger, &StoreUpdate::Full(Box::new(contents)))
    }

    /// The input files the serving snapshot was built from.
    pub fn serving_inputs(&self) -> Arc<PolicyInputs> {
        self.serving_inputs.lock().clone()
    }

    /// Serves a snapshot an admin write built inside its transaction on `build.base`,
    /// without building again. If another snapshot is serving by now (a file reload, or a
    /// replica sync applied meanwhile), the write's update is applied again to that one
    /// instead, so neither undoes the other. Updates older than the serving store
    /// revision are ignored, as in [`apply_store_update`](Self::apply_store_update).
    pub fn serve_store_build(
        &self,
        trigger: ReloadTrigger,
        build: StoreBuild,
    ) -> Result<ReloadOutcome, SnapshotError> {
        let _one_reload_at_a_time = self.reload_lock.lock();
        let StoreBuild {
            base,
            update,
            content,
        } = build;
        let serving = self.snapshot.load_full();
        if update.revision() < serving.store.revision {
            return Ok(ReloadOutcome::Unchanged);
        }
        let content = if Arc::ptr_eq(&serving, &base) {
            Ok(content)
        } else {
            match &update {
                StoreUpdate::Full(contents) => {
                    let inputs = self.serving_inputs.lock().clone();
                    build_snapshot_from_inputs(
                        &self.config,
                        &inputs,
                        &Arc::new((**contents).clone()),
                    )
                }
                StoreUpdate::Delta(_) => apply_update(&self.config, &serving.content(), &update),
            }
        };
        let outcome = self.serve_content(trigger, content)?;
        self.metrics.store_revision.set(update.revision());
        Ok(outcome)
    }

    /// Swaps in a store-triggered build (or records why it failed). Called with the
    /// reload lock held.
    fn serve_content(
        &self,
        trigger: ReloadTrigger,
        content: Result<SnapshotContent, SnapshotError>,
    ) -> Result<ReloadOutcome, SnapshotError> {
        match content {
            Ok(content) => {
                *self.last_reload_error.lock() = None;
                if content.digest == self.snapshot.load().digest {
                    self.count_reload(trigger, "unchanged");
                    return Ok(ReloadOutcome::Unchanged);
                }
                self.swap_in(trigger, content);
                Ok(ReloadOutcome::Swapped)
            }
            Err(error) => Err(self.refused(trigger, error)),
        }
    }

    /// The store revision the serving snapshot was built from.
    pub fn store_revision(&self) -> i64 {
        self.snapshot.load().store.revision
    }

    /// Records that the store was just seen at a revision this replica serves.
    pub fn confirm_store_current(&self) {
        let elapsed = self.started.elapsed().as_millis() as i64;
        self.store_confirmed_ms.store(elapsed, Ordering::SeqCst);
    }

    /// `Some(age)` when a store is configured and this replica has not confirmed its
    /// policy is current for longer than `store.max_staleness`.
    pub fn policy_staleness(&self) -> Option<Duration> {
        let max_staleness = self.config.store.as_ref()?.max_staleness;
        self.store.as_ref()?;
        let confirmed = self.store_confirmed_ms.load(Ordering::SeqCst);
        let age_ms = (self.started.elapsed().as_millis() as i64).saturating_sub(confirmed);
        let age = Duration::from_millis(age_ms.max(0) as u64);
        (age > max_staleness).then_some(age)
    }

    fn rebuild(
        &self,
        trigger: ReloadTrigger,
        inputs: &Arc<PolicyInputs>,
        contents: &Arc<StoreContents>,
    ) -> Result<ReloadOutcome, SnapshotError> {
        // Only filter files changed, over the store part serving: the compiled grants are
        // kept and row-level security alone is compiled.
        let serving = self.snapshot.load_full();
        let filters_only = if Arc::ptr_eq(contents, &serving.store.contents) {
            serving.content().with_filter_files(&self.config, inputs)
        } else {
            None
        };
        let built = filters_only
            .unwrap_or_else(|| build_snapshot_from_inputs(&self.config, inputs, contents));
        match built {
            Ok(content) => {
                *self.last_reload_error.lock() = None;
                *self.serving_inputs.lock() = inputs.clone();
                if content.digest == self.snapshot.load().digest {
                    self.count_reload(trigger, "unchanged");
                    return Ok(ReloadOutcome::Unchanged);
                }
                self.swap_in(trigger, content);
                Ok(ReloadOutcome::Swapped)
            }
            Err(error) => Err(self.refused(trigger, error)),
        }
    }

    /// Serves `content` as the next revision.
    fn swap_in(&self, trigger: ReloadTrigger, content: SnapshotContent) {
        let revision = self.next_revision.fetch_add(1, Ordering::SeqCst);
        self.metrics
            .snapshot_builds
            .with_label_values(&[content.build.as_str()])
            .inc();
        if content.policy.uses_casbin_fallback() {
            tracing::warn!(
                revision,
                "the casbin model is not the shape the compiled index understands: every decision is made by casbin's enforcer, which is orders of magnitude slower"
            );
        }
        tracing::info!(
            revision,
            digest = %content.digest,
            lines = content.policy.line_count(),
            trigger = trigger.as_str(),
            build = content.build.as_str(),
            "policy reloaded"
        );
        self.snapshot.store(Arc::new(PolicySnapshot {
            revision,
            policy: content.policy,
            rls: content.rls,
            digest: content.digest,
            loaded_at: SystemTime::now(),
            store: content.store,
            files: content.files,
            build: content.build,
            exports: self.config.exports.clone(),
            callers: Default::default(),
        }));
        self.metrics.policy_revision.set(revision as i64);
        self.count_reload(trigger, "swapped");
    }

    /// Logs, records and counts a refused reload; the serving snapshot stays.
    fn refused(&self, trigger: ReloadTrigger, error: SnapshotError) -> SnapshotError {
        tracing::error!(trigger = trigger.as_str(), error = %error, "policy reload refused; the previous revision keeps serving");
        *self.last_reload_error.lock() = Some(ReloadFailure {
            message: error.to_string(),
            at: SystemTime::now(),
            trigger: trigger.as_str(),
        });
        self.count_reload(trigger, "failed");
        error
    }

    fn count_reload(&self, trigger: ReloadTrigger, result: &str) {
        self.metrics
            .policy_reloads
            .with_label_values(&[trigger.as_str(), result])
            .inc();
    }

    pub fn policy_status(&self) -> PolicyStatus {
        let snapshot = self.snapshot();
        PolicyStatus {
            revision: snapshot.revision,
            digest: snapshot.digest.clone(),
            loaded_at: snapshot.loaded_at,
            lines: snapshot.policy.line_count(),
            store_lines: snapshot.policy.store_line_count(),
            build: snapshot.build,
            engine: if snapshot.policy.uses_casbin_fallback() {
                "casbin"
            } else {
                "compiled_index"
            },
            last_error: self.last_reload_error.lock().clone(),
            store_backend: self.store.as_ref().map(|store| store.backend().as_str()),
            store_revision: snapshot.store.revision,
            store_confirmed_seconds_ago: self.store.as_ref().map(|_| {
                let confirmed = self.store_confirmed_ms.load(Ordering::SeqCst);
                let now = self.started.elapsed().as_millis() as i64;
                (now - confirmed).max(0) as f64 / 1000.0
            }),
        }
    }
}

/// Timestamps on the wire are RFC 3339 in UTC.
pub mod time_rfc3339 {
    use std::time::SystemTime;

    use serde::Serializer;

    /// RFC 3339; a time outside `time`'s range (year 9999) is given as seconds since
    /// the epoch rather than panicking (`OffsetDateTime::from(SystemTime)` would).
    pub fn format(at: SystemTime) -> String {
        let since_epoch = at.duration_since(SystemTime::UNIX_EPOCH).ok();
        let converted = since_epoch.and_then(|duration| {
            time::OffsetDateTime::UNIX_EPOCH.checked_add(time::Duration::try_from(duration).ok()?)
        });
        match converted {
            Some(at) => at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| at.unix_timestamp().to_string()),
            None => since_epoch.map_or_else(|| "0".to_string(), |at| at.as_secs().to_string()),
        }
    }

    pub fn serialize<S: Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*at))
    }
}
