//! Shared state: the current policy snapshot behind `ArcSwap`, and how it is replaced.
//!
//! Every request loads one snapshot at its start and decides against it to the end, so a
//! reload in the middle of a request never mixes two revisions. A reload (file change,
//! SIGHUP, `POST /api/admin/reload`) builds a new snapshot off to the side, and only a
//! snapshot that built cleanly is swapped in; a failed build leaves the old one serving and
//! is recorded for `GET /api/admin/policy/status`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::audit::AuditSink;
use crate::authn::Authenticator;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::{CompiledPolicy, PolicyError, load_policy};
use crate::rls::{RlsError, RlsPolicy, parse_filter_file};
use crate::route::RouteTable;

/// One immutable policy revision: grants and RLS filters, built and swapped together.
pub struct PolicySnapshot {
    pub revision: u64,
    pub policy: CompiledPolicy,
    pub rls: RlsPolicy,
    /// sha256 over the model, the grant files and the filter files.
    pub digest: String,
    pub loaded_at: SystemTime,
}

/// Why a snapshot could not be built; the serving one stays.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Rls(#[from] RlsError),
    #[error("cannot read `{path}`: {message}")]
    Read { path: String, message: String },
}

/// The policy content of one revision, before it gets a revision number.
pub struct SnapshotContent {
    pub policy: CompiledPolicy,
    pub rls: RlsPolicy,
    pub digest: String,
}

/// RLS filter files: `*.rls.yaml` / `*.rls.yml` in the policy directory, by name; dotfiles
/// (a ConfigMap's `..data` internals) are skipped, symlinked files followed.
fn filter_files(directory: &Path) -> Result<Vec<(String, String)>, SnapshotError> {
    let read_error = |message: String| SnapshotError::Read {
        path: directory.display().to_string(),
        message,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory).map_err(|error| read_error(error.to_string()))? {
        let entry = entry.map_err(|error| read_error(error.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !(name.ends_with(".rls.yaml") || name.ends_with(".rls.yml")) {
            continue;
        }
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|error| SnapshotError::Read {
            path: name.clone(),
            message: error.to_string(),
        })?;
        files.push((name, text));
    }
    files.sort();
    Ok(files)
}

/// Builds everything a snapshot holds from the config's files; nothing is swapped here.
pub fn build_snapshot_content(config: &Config) -> Result<SnapshotContent, SnapshotError> {
    let policy_directory = config.policy_directory();
    let policy = load_policy(&config.policy_model_path(), &policy_directory)?;
    let files = filter_files(&policy_directory)?;
    let mut filters = Vec::new();
    let mut hasher = Sha256::new();
    hasher.update(policy.digest().as_bytes());
    for (name, text) in &files {
        filters.extend(parse_filter_file(name, text)?);
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
    }
    let rls = RlsPolicy::compile(&config.datasources, filters)?;
    Ok(SnapshotContent {
        policy,
        rls,
        digest: hex::encode(hasher.finalize()),
    })
}

/// What asked for a reload; recorded in logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    Startup,
    FileChange,
    Signal,
    AdminApi,
}

impl ReloadTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadTrigger::Startup => "startup",
            ReloadTrigger::FileChange => "file_change",
            ReloadTrigger::Signal => "signal",
            ReloadTrigger::AdminApi => "admin_api",
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
    pub engine: &'static str,
    pub last_error: Option<ReloadFailure>,
}

/// Everything a request needs, shared by the proxy workers, the admin listener and the
/// reload watcher.
pub struct AppState {
    pub config: Config,
    pub authenticator: Authenticator,
    pub routes: RouteTable,
    pub metrics: Metrics,
    pub audit: AuditSink,
    snapshot: ArcSwap<PolicySnapshot>,
    next_revision: AtomicU64,
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
}

impl AppState {
    /// Builds everything from a validated config; the initial policy must load.
    pub fn build(config: Config) -> Result<Arc<AppState>, StartupError> {
        let authenticator = Authenticator::from_config(&config.auth, &config.base_dir)?;
        let routes = RouteTable::from_config(&config.routes)?;
        let content = build_snapshot_content(&config)?;
        let audit = AuditSink::open(&config.audit, &config.base_dir)?;
        let metrics = Metrics::new()?;
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
        };
        Ok(Arc::new(AppState {
            config,
            authenticator,
            routes,
            metrics,
            audit,
            snapshot: ArcSwap::from_pointee(snapshot),
            next_revision: AtomicU64::new(2),
            reload_lock: Mutex::new(()),
            last_reload_error: Mutex::new(None),
        }))
    }

    /// The snapshot a request decides against, from start to end.
    pub fn snapshot(&self) -> Arc<PolicySnapshot> {
        self.snapshot.load_full()
    }

    /// Rebuilds the policy from disk and swaps it in if it built; the old snapshot keeps
    /// serving otherwise.
    pub fn reload(&self, trigger: ReloadTrigger) -> Result<ReloadOutcome, SnapshotError> {
        let _one_reload_at_a_time = self.reload_lock.lock();
        match build_snapshot_content(&self.config) {
            Ok(content) => {
                *self.last_reload_error.lock() = None;
                if content.digest == self.snapshot.load().digest {
                    self.count_reload(trigger, "unchanged");
                    return Ok(ReloadOutcome::Unchanged);
                }
                let revision = self.next_revision.fetch_add(1, Ordering::SeqCst);
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
                    "policy reloaded"
                );
                self.snapshot.store(Arc::new(PolicySnapshot {
                    revision,
                    policy: content.policy,
                    rls: content.rls,
                    digest: content.digest,
                    loaded_at: SystemTime::now(),
                }));
                self.metrics.policy_revision.set(revision as i64);
                self.count_reload(trigger, "swapped");
                Ok(ReloadOutcome::Swapped)
            }
            Err(error) => {
                tracing::error!(trigger = trigger.as_str(), error = %error, "policy reload refused; the previous revision keeps serving");
                *self.last_reload_error.lock() = Some(ReloadFailure {
                    message: error.to_string(),
                    at: SystemTime::now(),
                    trigger: trigger.as_str(),
                });
                self.count_reload(trigger, "failed");
                Err(error)
            }
        }
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
            engine: if snapshot.policy.uses_casbin_fallback() {
                "casbin"
            } else {
                "compiled_index"
            },
            last_error: self.last_reload_error.lock().clone(),
        }
    }
}

/// Timestamps on the wire are RFC 3339 in UTC.
pub mod time_rfc3339 {
    use std::time::SystemTime;

    use serde::Serializer;

    pub fn format(at: SystemTime) -> String {
        let at: time::OffsetDateTime = at.into();
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| at.unix_timestamp().to_string())
    }

    pub fn serialize<S: Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*at))
    }
}
