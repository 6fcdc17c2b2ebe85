//! What one policy revision holds, and how it is built: in full from the policy files and
//! the whole store, or — for a store write or a replica's catch-up — from the serving
//! revision and only the store rows that changed.
//!
//! Off the request path (start-up, reloads, admin writes, replica syncs); requests read
//! the result through [`crate::state::AppState::snapshot`]. A snapshot has two parts:
//! - the **file part** ([`FileParts`], the file policy's casbin enforcer and compiled
//!   index inside [`CompiledPolicy`]): rebuilt only when the files change;
//! - the **store part**: the store's contents, the store grants by subject (inside
//!   [`CompiledPolicy`]), identities, token digests, datasource uids — all persistent
//!   maps, so a store change copies the serving part in O(1) and replaces only the
//!   entries the changed rows feed. Row-level security is recompiled (from the file part
//!   and the store's filters and datasources) only when a filter or datasource changed.
//!
//! Validation is the same either way: every store line is checked like a file line and
//! row-level security must compile, or the update is refused and nothing changes.
//!
//! The digest identifies a revision's content by the files' digest and the store
//! revision the snapshot holds, not by hashing the store's rows (which would cost a pass
//! over 1M grants per write): every committed write bumps the store revision, and all
//! replicas at one store revision hold the same rows, so replicas serving the same files
//! at the same store revision show the same digest.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::policy::{CompiledPolicy, PolicyError, PolicyLine, SourcedLine};
use crate::rls::{FilterDefinition, RlsError, RlsPolicy, parse_filter_file};
use crate::sources::{PolicyInputs, SourcesError};
use crate::store::{StoreContents, StoreDelta, StoreIdentity, StoreUpdate};

/// A persistent hash map with foldhash (keys are inserted by admins only; lookups run per
/// request, see [`crate::policy`]'s store grants for the reasoning).
pub type SharedMap<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// One immutable policy revision: grants and RLS filters, built and swapped together.
pub struct PolicySnapshot {
    pub revision: u64,
    pub policy: CompiledPolicy,
    pub rls: Arc<RlsPolicy>,
    /// sha256 over the files' digest and the store revision (see the module docs).
    pub digest: String,
    pub loaded_at: SystemTime,
    pub store: StoreView,
    /// What the policy files contributed.
    pub files: Arc<FileParts>,
    /// Whether this revision was built in full or from the previous one and a store delta.
    pub build: BuildKind,
    /// Export rules (from the config file; fixed for the process's life).
    pub exports: crate::export::ExportConfig,
    /// Callers enriched against this revision, for the next request of the same caller.
    pub callers: crate::decision::callers::CallerMemo,
}

/// How a snapshot was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildKind {
    /// From the files and the whole store.
    Full,
    /// From the previous revision and the store rows that changed.
    Incremental,
}

impl BuildKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildKind::Full => "full",
            BuildKind::Incremental => "incremental",
        }
    }
}

/// What the policy files contributed to a snapshot, shared by every revision built from
/// the same files.
pub struct FileParts {
    /// The files as read.
    pub inputs: Arc<PolicyInputs>,
    /// sha256 over the model, the grant files and the filter files.
    pub digest: String,
    /// The filter files' filters.
    pub filters: Vec<FilterDefinition>,
    /// Datasource grants from the policy files, for the permission listings.
    pub datasource_grants: Vec<SourcedLine>,
}

/// What a snapshot takes from the grants store (empty without one).
#[derive(Debug, Clone, Default)]
pub struct StoreView {
    /// The store revision this snapshot was built from.
    pub revision: i64,
    /// Roles, teams and basic roles the store adds to a principal, by subject.
    pub identities: SharedMap<String, StoreIdentity>,
    /// Service-account token digest → (login, expiry in ms since the epoch).
    pub tokens: SharedMap<[u8; 32], (String, Option<i64>)>,
    /// Every datasource uid known to config or store.
    pub datasource_uids: Arc<HashSet<String>>,
    /// The store contents themselves, for the admin API's permission listings.
    pub contents: Arc<StoreContents>,
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
    /// A store delta starts after the revision serving: applying it would skip changes.
    #[error("store changes from revision {from} cannot apply to revision {serving}")]
    StoreGap { from: i64, serving: i64 },
}

impl From<SourcesError> for SnapshotError {
    fn from(error: SourcesError) -> Self {
        match error {
            SourcesError::Policy(error) => SnapshotError::Policy(error),
            SourcesError::Read { path, message } => SnapshotError::Read { path, message },
        }
    }
}

/// The policy content of one revision, before it gets a revision number. Cloning is
/// cheap (every part is shared).
#[derive(Clone)]
pub struct SnapshotContent {
    pub policy: CompiledPolicy,
    pub rls: Arc<RlsPolicy>,
    pub digest: String,
    pub store: StoreView,
    pub files: Arc<FileParts>,
    pub build: BuildKind,
}

impl PolicySnapshot {
    /// This revision's content, to build the next one from (cheap: every part is shared).
    pub fn content(&self) -> SnapshotContent {
        SnapshotContent {
            policy: self.policy.clone(),
            rls: self.rls.clone(),
            digest: self.digest.clone(),
            store: self.store.clone(),
            files: self.files.clone(),
            build: self.build,
        }
    }
}

/// A snapshot an admin write built inside its transaction, with what it was built from
/// and on; served by [`crate::state::AppState::serve_store_build`].
pub struct StoreBuild {
    /// The serving snapshot the write built on.
    pub base: Arc<PolicySnapshot>,
    /// What took the base's store part to the write's (kept to apply it again should
    /// another snapshot be serving when the write commits).
    pub update: StoreUpdate,
    pub content: SnapshotContent,
}

impl StoreBuild {
    /// Builds the snapshot `update` makes of `base`.
    pub fn build(
        config: &Config,
        base: Arc<PolicySnapshot>,
        update: StoreUpdate,
    ) -> Result<StoreBuild, SnapshotError> {
        let content = apply_update(config, &base.content(), &update)?;
        Ok(StoreBuild {
            base,
            update,
            content,
        })
    }
}

/// The snapshot `update` makes of `base`: a delta applied to its store part, or the whole
/// store built with its files.
pub fn apply_update(
    config: &Config,
    base: &SnapshotContent,
    update: &StoreUpdate,
) -> Result<SnapshotContent, SnapshotError> {
    match update {
        StoreUpdate::Delta(delta) => base.with_store_delta(config, delta),
        StoreUpdate::Full(contents) => {
            build_snapshot_from_inputs(config, &base.files.inputs, &Arc::new((**contents).clone()))
        }
    }
}

/// Builds everything a snapshot holds from the config's files alone (no store).
pub fn build_snapshot_content(config: &Config) -> Result<SnapshotContent, SnapshotError> {
    build_snapshot_content_with_store(config, &Arc::new(StoreContents::default()))
}

/// Reads the config's files and builds a snapshot from them and the store's contents.
pub fn build_snapshot_content_with_store(
    config: &Config,
    store: &Arc<StoreContents>,
) -> Result<SnapshotContent, SnapshotError> {
    let inputs = PolicyInputs::read(config)?;
    build_snapshot_from_inputs(config, &Arc::new(inputs), store)
}

/// The snapshot digest: the files' digest and the store revision.
fn snapshot_digest(files_digest: &str, store_revision: i64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(files_digest.as_bytes());
    hasher.update(b"\0store revision\0");
    hasher.update(store_revision.to_le_bytes());
    hex::encode(hasher.finalize())
}

/// Row-level security over the config's and the store's datasources and the files' and
/// the store's filters; a datasource defined in both refuses it.
fn compile_rls(
    config: &Config,
    file_filters: &[FilterDefinition],
    store: &StoreContents,
) -> Result<(RlsPolicy, HashSet<String>), SnapshotError> {
    let mut filters = file_filters.to_vec();
    filters.extend(store.filters().cloned());
    let mut datasources = config.datasources.clone();
    for datasource in store.datasources() {
        if datasources.iter().any(|known| known.uid == datasource.uid) {
            return Err(SnapshotError::Rls(RlsError::InvalidFilter(format!(
                "datasource `{}` is defined both in the config file and in the store",
                datasource.uid
            ))));
        }
        datasources.push(datasource.clone());
    }
    let uids = datasources
        .iter()
        .map(|datasource| datasource.uid.clone())
        .collect();
    Ok((RlsPolicy::compile(&datasources, filters)?, uids))
}

/// The filter files' filters, and the files' digest: the policy files' digest (the model
/// and the grant files) followed by every filter file, names and contents framed.
fn filter_parts(
    policy_digest: &str,
    filter_files: &[(String, String)],
) -> Result<(Vec<FilterDefinition>, String), SnapshotError> {
    let mut hasher = Sha256::new();
    hasher.update(policy_digest.as_bytes());
    let mut filters = Vec::new();
    for (name, text) in filter_files {
        filters.extend(parse_filter_file(name, text)?);
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
    }
    Ok((filters, hex::encode(hasher.finalize())))
}

/// Builds everything a snapshot holds from input files already read and the whole
/// store; nothing is swapped here. Store grants add to file grants (grants only ever
/// allow, so neither source can take away what the other gives); store filters and
/// datasources join the file ones, and a name defined in both refuses the build.
pub fn build_snapshot_from_inputs(
    config: &Config,
    inputs: &Arc<PolicyInputs>,
    store: &Arc<StoreContents>,
) -> Result<SnapshotContent, SnapshotError> {
    let sources = inputs.texts.parse()?;
    let datasource_grants: Vec<SourcedLine> = sources
        .lines
        .iter()
        .filter(|sourced| {
            matches!(&sourced.line, PolicyLine::Grant { object, .. } if object.starts_with("datasources:"))
        })
        .cloned()
        .collect();
    let file_policy = sources.compile()?;
    let (filters, digest) = filter_parts(file_policy.digest(), &inputs.filter_files)?;
    let files = Arc::new(FileParts {
        inputs: inputs.clone(),
        digest,
        filters,
        datasource_grants,
    });
    let policy = file_policy.with_store_subjects(store.subject_lines())?;
    let (rls, datasource_uids) = compile_rls(config, &files.filters, store)?;
    let mut identities = SharedMap::default();
    for user in store.users() {
        if let Some((subject, identity)) = store.identity(user.id) {
            identities.insert(subject, identity);
        }
    }
    let view = StoreView {
        revision: store.revision,
        identities,
        tokens: store.token_entries().collect(),
        datasource_uids: Arc::new(datasource_uids),
        contents: store.clone(),
    };
    Ok(SnapshotContent {
        policy,
        rls: Arc::new(rls),
        digest: snapshot_digest(&files.digest, store.revision),
        store: view,
        files,
        build: BuildKind::Full,
    })
}

impl SnapshotContent {
    /// The content `inputs` make of this one when only filter files differ (the model and
    /// the grant files are the same text): the compiled grants — the costly part, seconds
    /// at a million lines — are kept, and only row-level security is compiled again.
    /// `None` when the grant files differ too (a full build is needed).
    pub fn with_filter_files(
        &self,
        config: &Config,
        inputs: &Arc<PolicyInputs>,
    ) -> Option<Result<SnapshotContent, SnapshotError>> {
        if inputs.texts != self.files.inputs.texts {
            return None;
        }
        Some(self.rebuilt_filters(config, inputs))
    }

    fn rebuilt_filters(
        &self,
        config: &Config,
        inputs: &Arc<PolicyInputs>,
    ) -> Result<SnapshotContent, SnapshotError> {
        let (filters, digest) = filter_parts(self.policy.digest(), &inputs.filter_files)?;
        let files = Arc::new(FileParts {
            inputs: inputs.clone(),
            digest,
            filters,
            datasource_grants: self.files.datasource_grants.clone(),
        });
        let (rls, datasource_uids) = compile_rls(config, &files.filters, &self.store.contents)?;
        Ok(SnapshotContent {
            policy: self.policy.clone(),
            rls: Arc::new(rls),
            digest: snapshot_digest(&files.digest, self.store.revision),
            store: StoreView {
                datasource_uids: Arc::new(datasource_uids),
                ..self.store.clone()
            },
            files,
            build: BuildKind::Incremental,
        })
    }

    /// The content `delta` makes of this one: the changed rows applied to a copy of the
    /// store part, and only what they feed rebuilt. `self` is unchanged; an invalid
    /// result is refused. The delta must start at or before this content's store
    /// revision (it then covers every change since).
    pub fn with_store_delta(
        &self,
        config: &Config,
        delta: &StoreDelta,
    ) -> Result<SnapshotContent, SnapshotError> {
        if delta.from_revision > self.store.revision {
            return Err(SnapshotError::StoreGap {
                from: delta.from_revision,
                serving: self.store.revision,
            });
        }
        let before = &self.store.contents;
        let mut after = (**before).clone();
        let touched = after.apply(&delta.rows);
        after.revision = delta.to_revision;
        let policy = self
            .policy
            .with_store_subjects(after.subject_updates(before, &touched))?;
        let (rls, datasource_uids) = if touched.filters_or_datasources {
            let (rls, uids) = compile_rls(config, &self.files.filters, &after)?;
            (Arc::new(rls), Arc::new(uids))
        } else {
            (self.rls.clone(), self.store.datasource_uids.clone())
        };
        let mut identities = self.store.identities.clone();
        let users = after.identity_users(before, &touched);
        for user in &users {
            if let Some(user) = before.user(*user) {
                identities.remove(&user.subject());
            }
        }
        for user in &users {
            if let Some((subject, identity)) = after.identity(*user) {
                identities.insert(subject, identity);
            }
        }
        let mut tokens = self.store.tokens.clone();
        let touched_tokens = after.touched_tokens(before, &touched);
        for token in &touched_tokens {
            if let Some((digest, _)) = before.token_entry(token.id) {
                tokens.remove(&digest);
            }
        }
        for token in &touched_tokens {
            if let Some((digest, entry)) = after.token_entry(token.id) {
                tokens.insert(digest, entry);
            }
        }
        let revision = after.revision;
        Ok(SnapshotContent {
            policy,
            rls,
            digest: snapshot_digest(&self.files.digest, revision),
            store: StoreView {
                revision,
                identities,
                tokens,
                datasource_uids,
                contents: Arc::new(after),
            },
            files: self.files.clone(),
            build: BuildKind::Incremental,
        })
    }
}

#[cfg(test)]
mod tests;
