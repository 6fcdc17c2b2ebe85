//! The grants store's share of a decision: what the admin store grants each subject,
//! next to the file policy's compiled index.
//!
//! Sits in the snapshot (built at start-up and on file reloads, updated by every admin
//! write and replica sync) and in the `authorize` stage, which asks it after the file
//! index. Store lines are `p` lines only (grants and role permissions; memberships come
//! from the store as principal enrichment), so they never change the `g`/`g2` closures the
//! file index precomputes: a store subject inherits through the file hierarchy exactly as
//! a file subject does, and the store part can change without touching the file part.
//!
//! Why a persistent map: a write must produce a new snapshot without copying 100k–1M
//! grants. [`imbl`]'s hash array mapped trie gives a copy in O(1) that shares every node
//! with the serving snapshot, and an update copies only the path to one subject (a few
//! nodes); the subject's own grants are a small plain map behind an `Arc`, replaced whole
//! (a subject's grants are one entity's rows, normally a handful). A sharded `Arc` layout
//! would make lookups one indirection cheaper but copies a whole shard per write and needs
//! its own code; the trie is a maintained crate and keeps writes O(log n) at any size.
//! Keys are hashed with foldhash (seeded per process): only admins insert keys, so the
//! flooding resistance of SipHash buys nothing here, and a lookup runs per subject per
//! decision.

use std::collections::HashMap;
use std::sync::Arc;

use super::index::{DecisionIndex, NameId};
use super::line::DATASOURCE_SCOPE_PREFIX;
use super::{EffectiveGrant, EffectivePermissions};

type FastState = foldhash::fast::RandomState;
type SubjectMap = imbl::GenericHashMap<
    Arc<str>,
    Arc<SubjectGrants>,
    FastState,
    imbl::shared_ptr::DefaultSharedPtr,
>;

/// An action a store line grants, resolved against the file index's action names when the
/// line is added: `Known` actions imply what the file `g2` lines say, `Unknown` ones only
/// themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StoreAction {
    Known(NameId),
    Unknown(Arc<str>),
}

/// The action a request asks for, resolved the same way.
enum Requested<'a> {
    Known(NameId),
    Name(&'a str),
}

/// `(pattern as written, the part before the first `*` (what keyMatch compares), actions)`.
type PatternGrant = (Arc<str>, Arc<str>, Box<[StoreAction]>);

#[derive(Debug, Default)]
struct SubjectGrants {
    exact: HashMap<Arc<str>, Box<[StoreAction]>, FastState>,
    patterns: Vec<PatternGrant>,
    line_count: usize,
}

/// What the store grants, by subject name. Cheap to clone (structurally shared).
#[derive(Clone, Default)]
pub(super) struct StoreGrants {
    subjects: SubjectMap,
    line_count: usize,
}

/// Shares one `Arc<str>` per distinct name within one update (a full build of 1M grants
/// over a few thousand datasources holds a few thousand object strings, not a million).
#[derive(Default)]
pub(super) struct NameCache {
    names: HashMap<String, Arc<str>, FastState>,
}

impl NameCache {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.names.get(name) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(name);
        self.names.insert(name.to_string(), shared.clone());
        shared
    }
}

fn resolve(index: Option<&DecisionIndex>, action: &str, names: &mut NameCache) -> StoreAction {
    match index.and_then(|index| index.action_id(action)) {
        Some(id) => StoreAction::Known(id),
        None => StoreAction::Unknown(names.get(action)),
    }
}

fn implies(index: Option<&DecisionIndex>, granted: &StoreAction, requested: &Requested) -> bool {
    match (granted, requested) {
        (StoreAction::Known(granted), Requested::Known(requested)) => {
            index.is_some_and(|index| index.implies(*granted, *requested))
        }
        // An action no file line names has no `g2` links: it implies only itself.
        (StoreAction::Unknown(granted), Requested::Name(requested)) => &**granted == *requested,
        // A file-known action never implies one the files do not know, and vice versa.
        _ => false,
    }
}

impl SubjectGrants {
    fn build(
        index: Option<&DecisionIndex>,
        lines: &[(String, String)],
        names: &mut NameCache,
    ) -> SubjectGrants {
        let mut exact: HashMap<Arc<str>, Vec<StoreAction>, FastState> = HashMap::default();
        let mut patterns: Vec<(Arc<str>, Arc<str>, Vec<StoreAction>)> = Vec::new();
        for (object, action) in lines {
            let action = resolve(index, action, names);
            let actions = if object.contains('*') {
                match patterns
                    .iter_mut()
                    .position(|(pattern, ..)| &**pattern == object.as_str())
                {
                    Some(position) => match patterns.get_mut(position) {
                        Some((_, _, actions)) => actions,
                        None => continue,
                    },
                    None => {
                        let prefix = object.split('*').next().unwrap_or_default();
                        patterns.push((names.get(object), names.get(prefix), Vec::new()));
                        match patterns.last_mut() {
                            Some((_, _, actions)) => actions,
                            None => continue,
                        }
                    }
                }
            } else {
                exact.entry(names.get(object)).or_default()
            };
            if !actions.contains(&action) {
                actions.push(action);
            }
        }
        SubjectGrants {
            exact: exact
                .into_iter()
                .map(|(object, actions)| (object, actions.into_boxed_slice()))
                .collect(),
            patterns: patterns
                .into_iter()
                .map(|(pattern, prefix, actions)| (pattern, prefix, actions.into_boxed_slice()))
                .collect(),
            line_count: lines.len(),
        }
    }

    fn allows(&self, index: Option<&DecisionIndex>, object: &str, requested: &Requested) -> bool {
        let any = |actions: &[StoreAction]| {
            actions
                .iter()
                .any(|granted| implies(index, granted, requested))
        };
        self.exact.get(object).is_some_and(|actions| any(actions))
            || self
                .patterns
                .iter()
                .any(|(_, prefix, actions)| object.starts_with(&**prefix) && any(actions))
    }

    /// `(object or pattern, actions)` for every grant.
    fn entries(&self) -> impl Iterator<Item = (&str, &[StoreAction])> {
        self.exact
            .iter()
            .map(|(object, actions)| (&**object, &**actions))
            .chain(
                self.patterns
                    .iter()
                    .map(|(pattern, _, actions)| (&**pattern, &**actions)),
            )
    }
}

fn action_name<'a>(index: Option<&'a DecisionIndex>, action: &'a StoreAction) -> &'a str {
    match action {
        StoreAction::Known(id) => index.map_or("", |index| index.action_name(*id)),
        StoreAction::Unknown(name) => name,
    }
}

impl StoreGrants {
    pub(super) fn line_count(&self) -> usize {
        self.line_count
    }

    /// Replaces everything the store grants `subject` with `lines` (`(object, action)`;
    /// empty removes the subject).
    pub(super) fn replace(
        &mut self,
        index: Option<&DecisionIndex>,
        subject: &str,
        lines: &[(String, String)],
        names: &mut NameCache,
    ) {
        if let Some(old) = self.subjects.remove(subject) {
            self.line_count -= old.line_count;
        }
        if lines.is_empty() {
            return;
        }
        let grants = SubjectGrants::build(index, lines, names);
        self.line_count += grants.line_count;
        self.subjects.insert(Arc::from(subject), Arc::new(grants));
    }

    /// Is any of `subjects`, or a subject one of them inherits through the file
    /// hierarchy, granted by the store an action implying `action` on `object`?
    pub(super) fn allows(
        &self,
        index: Option<&DecisionIndex>,
        subjects: &[String],
        object: &str,
        action: &str,
    ) -> bool {
        if self.subjects.is_empty() {
            return false;
        }
        let requested = match index.and_then(|index| index.action_id(action)) {
            Some(id) => Requested::Known(id),
            None => Requested::Name(action),
        };
        let holds = |name: &str| {
            self.subjects
                .get(name)
                .is_some_and(|grants| grants.allows(index, object, &requested))
        };
        subjects.iter().any(|name| {
            holds(name) || index.is_some_and(|index| index.inherited_names(name).any(&holds))
        })
    }

    /// Adds what the store grants `subjects` (and what they inherit) to `permissions`.
    pub(super) fn add_effective(
        &self,
        index: Option<&DecisionIndex>,
        subjects: &[String],
        permissions: &mut EffectivePermissions,
    ) {
        if self.subjects.is_empty() {
            return;
        }
        let mut holders: Vec<&str> = Vec::new();
        for name in subjects {
            for holder in std::iter::once(name.as_str()).chain(
                index
                    .into_iter()
                    .flat_map(|index| index.inherited_names(name)),
            ) {
                if !holders.contains(&holder) {
                    holders.push(holder);
                }
            }
        }
        for holder in holders {
            let Some(grants) = self.subjects.get(holder) else {
                continue;
            };
            for (object, actions) in grants.entries() {
                for action in actions {
                    let implies: Vec<String> = match (index, action) {
                        (Some(index), StoreAction::Known(id)) => index.implied_names(*id),
                        _ => vec![action_name(index, action).to_string()],
                    };
                    if object.starts_with(DATASOURCE_SCOPE_PREFIX) {
                        let mut implies = implies;
                        implies.sort();
                        permissions.datasource_grants.push(EffectiveGrant {
                            object: object.to_string(),
                            action: action_name(index, action).to_string(),
                            implies,
                            via: holder.to_string(),
                        });
                    } else {
                        permissions.role_permissions.extend(
                            implies
                                .into_iter()
                                .map(|implied| (implied, object.to_string())),
                        );
                    }
                }
            }
        }
    }

    /// Every store line as `(subject, object, action)`, for the casbin fallback.
    pub(super) fn lines<'a>(
        &'a self,
        index: Option<&'a DecisionIndex>,
    ) -> impl Iterator<Item = (&'a str, &'a str, &'a str)> + 'a {
        self.subjects.iter().flat_map(move |(subject, grants)| {
            grants.entries().flat_map(move |(object, actions)| {
                actions
                    .iter()
                    .map(move |action| (&**subject, object, action_name(index, action)))
            })
        })
    }
}
