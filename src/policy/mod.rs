//! Authorization grants: loading, validation and the compiled decision index.
//!
//! Sits in the snapshot build (startup, reload, admin writes) and in the `authorize`
//! stage of the request path. A snapshot build reads `casbin_model.conf` and the policy
//! CSV files, validates every line (fail closed: one bad line rejects the snapshot, and
//! the error names the file and line), builds casbin's `Enforcer` as the reference
//! semantics, and compiles the same lines into a [`CompiledPolicy`] whose
//! [`allows`](CompiledPolicy::allows) is a handful of hash lookups with no I/O.
//!
//! Policy file format (one statement per line, `#` comments, blank lines ignored):
//! ```text
//! p, role:Gamma, Chart, can_read                  # FAB role permission
//! p, user:alice, datasources:uid:pg_main, Query   # datasource grant (Query ⊂ Edit ⊂ Admin)
//! g, user:alice, team:eng                         # membership
//! g2, Edit, Query                                 # action hierarchy
//! ```

mod index;
mod line;
mod reference;
mod store_grants;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use casbin::Enforcer;
use sha2::{Digest, Sha256};

pub use index::{CASBIN_MAX_HIERARCHY_LEVEL, EffectiveGrant, EffectivePermissions};
pub use line::{DATASOURCE_LEVELS, LineProblem, LineSource, PolicyLine, SourcedLine};
pub use reference::KNOWN_MODEL;

use index::DecisionIndex;
use store_grants::{NameCache, StoreGrants};

/// The built-in action and basic-role hierarchies (`policies/00-builtin-hierarchy.csv`),
/// for tests, benches and deployments that start without a policy directory.
pub const BUILTIN_HIERARCHY_CSV: &str = include_str!("../../policies/00-builtin-hierarchy.csv");

/// Why a policy snapshot could not be built. Messages are for operators: they name the
/// policy file (never its directory) and the line.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file `{name}`: {source}")]
    Read {
        name: String,
        source: std::io::Error,
    },
    #[error("{problem} in {location}")]
    Line {
        location: LineSource,
        problem: LineProblem,
    },
    #[error("malformed CSV in {location}: {message}")]
    Csv {
        location: LineSource,
        message: String,
    },
    #[error("invalid casbin model in `{file}`: {message}")]
    Model { file: String, message: String },
    #[error("casbin rejected the policy: {0}")]
    Casbin(String),
    #[error(
        "{relation} hierarchy too deep: `{from}` reaches `{to}` through more than {limit} links (casbin stops there)"
    )]
    HierarchyTooDeep {
        relation: &'static str,
        from: String,
        to: String,
        limit: usize,
    },
    #[error("policy too large: more than 2^32 distinct names")]
    TooLarge,
}

/// The object naming one datasource in grants and requests. Built without `format!`:
/// every datasource check of every request builds one.
pub fn datasource_object(uid: &str) -> String {
    const PREFIX: &str = "datasources:uid:";
    let mut object = String::with_capacity(PREFIX.len() + uid.len());
    object.push_str(PREFIX);
    object.push_str(uid);
    object
}

/// A validated, compiled policy revision. Immutable; shared by reference across requests.
/// Cloning is cheap: the file part is shared, the store part is structurally shared.
#[derive(Clone)]
pub struct CompiledPolicy {
    files: Arc<FilePolicy>,
    /// What the grants store adds, by subject (see [`store_grants`]).
    store: StoreGrants,
    /// casbin fallback mode only (a model the index does not implement): an enforcer over
    /// the file and the store lines together, rebuilt on every store change.
    combined: Option<Arc<Enforcer>>,
}

/// The policy files' part: casbin's enforcer over the file lines (the reference
/// semantics, which also validates them) and the compiled index. Rebuilt only when the
/// files change.
struct FilePolicy {
    enforcer: Enforcer,
    /// `None` when the model is not the shape the index implements: decisions then go
    /// through casbin.
    index: Option<DecisionIndex>,
    digest: String,
    line_count: usize,
    model_name: String,
    model_text: String,
    /// The file lines, kept only in fallback mode (to rebuild the combined enforcer).
    fallback_lines: Vec<SourcedLine>,
}

/// What the store grants one subject, replacing whatever it granted before (empty:
/// nothing any more). Every line must be a `p` line for that subject.
#[derive(Debug, Clone)]
pub struct StoreSubjectLines {
    pub subject: String,
    pub lines: Vec<SourcedLine>,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CompiledPolicy")
            .field("digest", &self.files.digest)
            .field("line_count", &self.line_count())
            .field("uses_casbin_fallback", &self.uses_casbin_fallback())
            .finish_non_exhaustive()
    }
}

impl CompiledPolicy {
    fn index(&self) -> Option<&DecisionIndex> {
        self.files.index.as_ref()
    }

    /// Is any of `subjects` (e.g. `Principal::subjects()`) allowed `action` on `object`?
    pub fn allows(&self, subjects: &[String], object: &str, action: &str) -> bool {
        match self.index() {
            Some(index) => {
                index.allows(subjects, object, action)
                    || self.store.allows(Some(index), subjects, object, action)
            }
            None => self.casbin_allows(subjects, object, action),
        }
    }

    /// casbin's own answer over the policy files — and, in fallback mode, the store lines
    /// too. Store lines are not loaded into casbin otherwise (see the README's
    /// Architecture: casbin is the reference, built per file reload; the differential
    /// test compares the index with casbin over files and store lines together, through
    /// [`CasbinReference`]). Slow: scans every grant line per subject.
    pub fn casbin_allows(&self, subjects: &[String], object: &str, action: &str) -> bool {
        let enforcer = self.combined.as_deref().unwrap_or(&self.files.enforcer);
        reference::enforce_any(enforcer, subjects, object, action)
    }

    /// sha256 (hex) of the model and every policy file, in load order. Store lines are
    /// not part of it: the snapshot digest adds the store's revision.
    pub fn digest(&self) -> &str {
        &self.files.digest
    }

    /// Whether both were compiled from the same policy files build (not merely equal).
    #[cfg(test)]
    pub(crate) fn shares_files_with(&self, other: &CompiledPolicy) -> bool {
        Arc::ptr_eq(&self.files, &other.files)
    }

    /// Policy lines (`p`, `g`, `g2`) loaded from files and store, duplicates included.
    pub fn line_count(&self) -> usize {
        self.files.line_count + self.store.line_count()
    }

    /// Store lines held.
    pub fn store_line_count(&self) -> usize {
        self.store.line_count()
    }

    /// True when the model is not the shape the compiled index implements, so every
    /// decision goes through casbin's `enforce()`. The caller should warn loudly.
    pub fn uses_casbin_fallback(&self) -> bool {
        self.files.index.is_none()
    }

    /// A copy with what the store grants the given subjects replaced (the rest shared
    /// with `self`). Every line is checked like a file line; one bad line refuses the
    /// whole update and `self` is unchanged. In casbin fallback mode the combined
    /// enforcer is rebuilt from every line (slow, but that mode is slow anyway).
    pub fn with_store_subjects(
        &self,
        updates: Vec<StoreSubjectLines>,
    ) -> Result<CompiledPolicy, PolicyError> {
        let mut checked: Vec<(String, Vec<(String, String)>)> = Vec::with_capacity(updates.len());
        for update in updates {
            let mut lines = Vec::with_capacity(update.lines.len());
            for sourced in update.lines {
                let problem = |problem| PolicyError::Line {
                    location: sourced.source.clone(),
                    problem,
                };
                PolicyLine::from_fields(&sourced.line.fields()).map_err(problem)?;
                match sourced.line {
                    PolicyLine::Grant {
                        subject,
                        object,
                        action,
                    } if subject == update.subject => lines.push((object, action)),
                    _ => return Err(problem(LineProblem::NotAStoreGrant)),
                }
            }
            checked.push((update.subject, lines));
        }
        let mut store = self.store.clone();
        let mut names = NameCache::default();
        for (subject, lines) in &checked {
            store.replace(self.index(), subject, lines, &mut names);
        }
        let combined = match &self.files.index {
            Some(_) => None,
            None => Some(Arc::new(self.combined_enforcer(&store)?)),
        };
        Ok(CompiledPolicy {
            files: self.files.clone(),
            store,
            combined,
        })
    }

    fn combined_enforcer(&self, store: &StoreGrants) -> Result<Enforcer, PolicyError> {
        let mut lines = self.files.fallback_lines.clone();
        for (subject, object, action) in store.lines(None) {
            lines.push(SourcedLine::new(
                PolicyLine::Grant {
                    subject: subject.to_string(),
                    object: object.to_string(),
                    action: action.to_string(),
                },
                "admin store",
                0,
            ));
        }
        let (enforcer, _) =
            reference::build_enforcer(&self.files.model_name, &self.files.model_text, &lines)?;
        Ok(enforcer)
    }

    /// The groups `subjects` belong to through `g` lines, transitively (`role:Gamma` for a
    /// `g, user:alice, role:Gamma` line).
    pub fn groups_of(&self, subjects: &[String]) -> Vec<String> {
        match self.index() {
            Some(index) => index.groups_of(subjects),
            None => self.casbin_groups_of(subjects),
        }
    }

    /// [`CompiledPolicy::groups_of`] from casbin's role manager (fallback mode, and the
    /// reference the index is tested against). Store lines have no `g` lines, so the
    /// files' enforcer knows every group.
    fn casbin_groups_of(&self, subjects: &[String]) -> Vec<String> {
        use casbin::CoreApi;
        let manager = self.files.enforcer.get_role_manager();
        let manager = manager.read();
        let mut groups: Vec<String> = Vec::new();
        let mut pending: Vec<String> = subjects.to_vec();
        while let Some(name) = pending.pop() {
            for group in manager.get_roles(&name, None) {
                if !subjects.contains(&group) && !groups.contains(&group) {
                    groups.push(group.clone());
                    pending.push(group);
                }
            }
        }
        groups
    }

    /// FAB permissions and datasource grants `subjects` hold, directly or inherited, from
    /// files and store. Empty in casbin fallback mode (the model's meaning is then
    /// unknown).
    pub fn effective_permissions(&self, subjects: &[String]) -> EffectivePermissions {
        let Some(index) = self.index() else {
            return EffectivePermissions::default();
        };
        let mut permissions = index.effective_permissions(subjects);
        self.store
            .add_effective(Some(index), subjects, &mut permissions);
        permissions.role_permissions.sort();
        permissions.role_permissions.dedup();
        permissions.datasource_grants.sort();
        permissions.datasource_grants.dedup();
        permissions
    }
}

/// casbin's enforcer over any lines, for tests that compare the compiled policy (files
/// and store together) with the reference semantics.
pub struct CasbinReference {
    enforcer: Enforcer,
}

impl CasbinReference {
    pub fn build(model_text: &str, lines: &[SourcedLine]) -> Result<CasbinReference, PolicyError> {
        let (enforcer, _) = reference::build_enforcer("casbin model", model_text, lines)?;
        Ok(CasbinReference { enforcer })
    }

    pub fn allows(&self, subjects: &[String], object: &str, action: &str) -> bool {
        reference::enforce_any(&self.enforcer, subjects, object, action)
    }
}

/// Loads `model_path` and every `*.csv` in `policy_dir` (by file name; dotfiles and
/// other files ignored, symlinks followed).
pub fn load_policy(model_path: &Path, policy_dir: &Path) -> Result<CompiledPolicy, PolicyError> {
    read_policy_sources(model_path, policy_dir)?.compile()
}

/// The model and the policy files, read and parsed once, not yet compiled: a snapshot
/// build inspects the lines (e.g. for permission listings) and adds the store's before
/// compiling everything in one go.
pub struct PolicySources {
    model_name: String,
    model_text: String,
    /// Every checked line of the files, in load order.
    pub lines: Vec<SourcedLine>,
    /// sha256 over the model and the files' raw contents.
    file_digest: String,
}

/// Reads and parses `model_path` and the `*.csv` files of `policy_dir`.
pub fn read_policy_sources(
    model_path: &Path,
    policy_dir: &Path,
) -> Result<PolicySources, PolicyError> {
    read_policy_texts(model_path, policy_dir)?.parse()
}

/// The raw text of the model and the `*.csv` files, read once: a reload digests these
/// bytes to decide whether anything changed, and builds from the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTexts {
    pub model_name: String,
    pub model_text: String,
    /// `(file name, contents)` in load order.
    pub files: Vec<(String, String)>,
}

impl PolicyTexts {
    /// Parses and checks every line.
    pub fn parse(&self) -> Result<PolicySources, PolicyError> {
        sources_of_files(
            self.model_name.clone(),
            self.model_text.clone(),
            &self.files,
        )
    }
}

/// Reads `model_path` and the `*.csv` files of `policy_dir` without parsing them.
pub fn read_policy_texts(model_path: &Path, policy_dir: &Path) -> Result<PolicyTexts, PolicyError> {
    let model_name = display_name(model_path);
    let model_text = fs::read_to_string(model_path).map_err(|source| PolicyError::Read {
        name: model_name.clone(),
        source,
    })?;
    let files = read_policy_dir(policy_dir)?;
    Ok(PolicyTexts {
        model_name,
        model_text,
        files,
    })
}

/// Parses in-memory files (`(file name, contents)` in load order) with their model.
fn sources_of_files(
    model_name: String,
    model_text: String,
    files: &[(String, String)],
) -> Result<PolicySources, PolicyError> {
    let mut hasher = Sha256::new();
    hash_framed(&mut hasher, model_text.as_bytes());
    let mut lines = Vec::new();
    for (name, contents) in files {
        hash_framed(&mut hasher, name.as_bytes());
        hash_framed(&mut hasher, contents.as_bytes());
        lines.extend(parse_policy_file(name, contents)?);
    }
    Ok(PolicySources {
        model_name,
        model_text,
        lines,
        file_digest: hex::encode(hasher.finalize()),
    })
}

impl PolicySources {
    /// Compiles the file lines, with no store lines yet (add them with
    /// [`CompiledPolicy::with_store_subjects`]). The digest is the files' own, so an
    /// unchanged directory keeps its digest.
    pub fn compile(self) -> Result<CompiledPolicy, PolicyError> {
        compile(
            &self.model_name,
            &self.model_text,
            self.lines,
            self.file_digest,
        )
    }
}

/// Like [`load_policy`], from in-memory sources: `(file name, contents)` in load order.
pub fn load_policy_from_sources(
    model_text: &str,
    files: &[(String, String)],
) -> Result<CompiledPolicy, PolicyError> {
    sources_of_files("casbin model".to_string(), model_text.to_string(), files)?.compile()
}

/// Compiles already-parsed lines, e.g. file lines plus the admin store's grants. The
/// digest covers the model and every line with its source.
pub fn compile_policy(
    model_text: &str,
    lines: Vec<SourcedLine>,
) -> Result<CompiledPolicy, PolicyError> {
    let mut hasher = Sha256::new();
    hash_framed(&mut hasher, model_text.as_bytes());
    for sourced in &lines {
        hash_framed(&mut hasher, sourced.source.file.as_bytes());
        hash_framed(&mut hasher, &(sourced.source.line as u64).to_le_bytes());
        for field in sourced.line.fields() {
            hash_framed(&mut hasher, field.as_bytes());
        }
    }
    let digest = hex::encode(hasher.finalize());
    compile("casbin model", model_text, lines, digest)
}

/// Every checked line of the `*.csv` files in `policy_dir`, in load order (the same
/// files [`load_policy`] reads).
pub fn policy_lines_of_directory(policy_dir: &Path) -> Result<Vec<SourcedLine>, PolicyError> {
    let mut lines = Vec::new();
    for (name, contents) in read_policy_dir(policy_dir)? {
        lines.extend(parse_policy_file(&name, &contents)?);
    }
    Ok(lines)
}

/// Parses one policy file into checked lines.
pub fn parse_policy_file(file_name: &str, contents: &str) -> Result<Vec<SourcedLine>, PolicyError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        // Record lengths differ by line type; the count is checked per type instead.
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(contents.as_bytes());
    let mut lines = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut counted_until = 0usize;
    let mut newlines_before_end = 0usize;
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(error) => {
                let line = error
                    .position()
                    .map_or(reader.position().line(), csv::Position::line);
                return Err(PolicyError::Csv {
                    location: LineSource::new(file_name, line as usize),
                    message: csv_problem(&error),
                });
            }
        }
        // A record's own position is where the reader started looking, before the
        // comments and blank lines it skipped, and csv's line counter disagrees with
        // editors on CRLF blank lines. The byte offset just past the record is exact: the
        // record's line is 1 + the newlines before its terminator.
        let record_end = (reader.position().byte() as usize).saturating_sub(1);
        newlines_before_end += contents
            .as_bytes()
            .get(counted_until..record_end)
            .unwrap_or_default()
            .iter()
            .filter(|&&byte| byte == b'\n')
            .count();
        counted_until = counted_until.max(record_end);
        let line = newlines_before_end + 1;
        let fields: Vec<&str> = record.iter().collect();
        // A whitespace-only line, or a comment indented past the csv reader's notice.
        let blank = fields.iter().all(|field| field.is_empty());
        if blank || fields.first().is_some_and(|first| first.starts_with('#')) {
            continue;
        }
        let policy_line =
            PolicyLine::from_fields(&fields).map_err(|problem| PolicyError::Line {
                location: LineSource::new(file_name, line),
                problem,
            })?;
        lines.push(SourcedLine::new(policy_line, file_name, line));
    }
    Ok(lines)
}

fn csv_problem(error: &csv::Error) -> String {
    match error.kind() {
        csv::ErrorKind::Utf8 { .. } => "invalid UTF-8".to_string(),
        csv::ErrorKind::Io(_) => "read error".to_string(),
        _ => "unparseable record".to_string(),
    }
}

fn compile(
    model_name: &str,
    model_text: &str,
    lines: Vec<SourcedLine>,
    digest: String,
) -> Result<CompiledPolicy, PolicyError> {
    let (enforcer, known_shape) = reference::build_enforcer(model_name, model_text, &lines)?;
    let index = if known_shape {
        Some(DecisionIndex::build(&lines)?)
    } else {
        None
    };
    let line_count = lines.len();
    let fallback_lines = if index.is_none() { lines } else { Vec::new() };
    Ok(CompiledPolicy {
        files: Arc::new(FilePolicy {
            enforcer,
            index,
            digest,
            line_count,
            model_name: model_name.to_string(),
            model_text: model_text.to_string(),
            fallback_lines,
        }),
        store: StoreGrants::default(),
        combined: None,
    })
}

/// Length-prefixed, so `("ab", "c")` and `("a", "bc")` hash differently.
fn hash_framed(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || "policy".into(),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// `*.csv` files in `dir`, sorted by name. Entries starting with `.` are skipped:
/// Kubernetes ConfigMap mounts hold `..data` and `..<timestamp>` directories next to the
/// symlinked files, and editors leave dotfiles behind.
fn read_policy_dir(dir: &Path) -> Result<Vec<(String, String)>, PolicyError> {
    let read_error = |source| PolicyError::Read {
        name: display_name(dir),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".csv") {
            continue;
        }
        // `metadata` follows symlinks: a link to a file counts, a link to a directory not.
        let is_file = fs::metadata(entry.path()).map_err(|source| PolicyError::Read {
            name: name.clone(),
            source,
        })?;
        if is_file.is_file() {
            names.push(name);
        }
    }
    names.sort();
    names
        .into_iter()
        .map(|name| {
            fs::read_to_string(dir.join(&name))
                .map(|contents| (name.clone(), contents))
                .map_err(|source| PolicyError::Read { name, source })
        })
        .collect()
}

#[cfg(test)]
mod tests;
