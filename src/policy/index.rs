//! The compiled decision index: the request path's answer to "may these subjects do this
//! action on this object?" in a handful of hash lookups.
//!
//! Built once per policy snapshot from the same lines casbin gets, for the known model
//! shape (`g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && g2(p.act, r.act)`):
//! - `g` is precomputed into a closure: every subject maps to every subject it inherits;
//! - `g2` is precomputed into a closure: every action maps to every action it implies;
//! - grants are keyed by subject, then object (exact objects in a hash map; `*`
//!   patterns, which keyMatch treats as "starts with the part before the first `*`", in
//!   a short per-subject list).
//!
//! casbin's role manager stops following links after a fixed number of hops
//! ([`CASBIN_MAX_HIERARCHY_LEVEL`]). Rather than imitate its order-dependent cut-off, the
//! build refuses hierarchies that reach that deep, so the index and casbin always agree.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use serde::Serialize;

use super::PolicyError;
use super::line::{DATASOURCE_SCOPE_PREFIX, PolicyLine, SourcedLine};

/// casbin-rs' `DefaultRoleManager::new(10)`: a BFS that stops after this many levels.
/// Every node at distance ≤ 9 is always found, so the index accepts hierarchies up to 9.
pub const CASBIN_MAX_HIERARCHY_LEVEL: usize = 10;
const DEEPEST_ALLOWED_LINK: usize = CASBIN_MAX_HIERARCHY_LEVEL - 1;

pub(super) type NameId = u32;

/// Hashes the index's own `u32` ids with one multiplication. SipHash (the std default)
/// costs more than the rest of a lookup; ids are assigned by the index, so there is
/// nothing for a caller to collide on.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

const GOLDEN_RATIO_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 =
                (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(GOLDEN_RATIO_MULTIPLIER);
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.0 = (self.0 ^ u64::from(value)).wrapping_mul(GOLDEN_RATIO_MULTIPLIER);
    }
}

type IdMap<V> = HashMap<NameId, V, BuildHasherDefault<IdHasher>>;

/// The subjects one decision has already checked: a principal's own subjects and their
/// inherited ones overlap (`user:alice` → `role:Gamma`, and `role:Gamma` itself). A
/// fixed array, no allocation; past its capacity a subject is simply checked twice.
struct CheckedSubjects {
    ids: [NameId; 32],
    len: usize,
}

impl CheckedSubjects {
    fn new() -> Self {
        CheckedSubjects {
            ids: [0; 32],
            len: 0,
        }
    }

    /// False when `subject` was already checked.
    fn first_time(&mut self, subject: NameId) -> bool {
        let checked = self.ids.get(..self.len).unwrap_or_default();
        if checked.contains(&subject) {
            return false;
        }
        if let Some(slot) = self.ids.get_mut(self.len) {
            *slot = subject;
            self.len += 1;
        }
        true
    }
}

/// Names to dense ids, so the index stores `u32`s instead of repeated strings.
#[derive(Default)]
struct Interner {
    /// Request-supplied names (subjects, objects, actions) are hashed with seeded foldhash
    /// rather than SipHash: they are only looked up, the policy alone inserts, so no
    /// client can grow a bucket, and a lookup compares the whole name.
    ids: HashMap<Arc<str>, NameId, foldhash::fast::RandomState>,
    names: Vec<Arc<str>>,
}

impl Interner {
    fn intern(&mut self, name: &str) -> Result<NameId, PolicyError> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        let id = NameId::try_from(self.names.len()).map_err(|_| PolicyError::TooLarge)?;
        let name: Arc<str> = Arc::from(name);
        self.names.push(Arc::clone(&name));
        self.ids.insert(name, id);
        Ok(id)
    }

    fn get(&self, name: &str) -> Option<NameId> {
        self.ids.get(name).copied()
    }

    fn name(&self, id: NameId) -> &str {
        self.names.get(id as usize).map_or("", |name| name)
    }

    fn len(&self) -> usize {
        self.names.len()
    }
}

/// The actions granted on one object. Almost always one, so no allocation for it.
#[derive(Debug, Clone)]
enum GrantedActions {
    One(NameId),
    Many(Vec<NameId>),
}

impl GrantedActions {
    fn add(&mut self, action: NameId) {
        match self {
            GrantedActions::One(existing) if *existing == action => {}
            GrantedActions::One(existing) => *self = GrantedActions::Many(vec![*existing, action]),
            GrantedActions::Many(actions) => {
                if !actions.contains(&action) {
                    actions.push(action);
                }
            }
        }
    }

    fn as_slice(&self) -> &[NameId] {
        match self {
            GrantedActions::One(action) => std::slice::from_ref(action),
            GrantedActions::Many(actions) => actions,
        }
    }
}

struct PatternGrant {
    /// The pattern as written (`datasources:uid:*`), for listing.
    pattern: Arc<str>,
    /// What keyMatch compares: everything before the first `*`.
    prefix: Arc<str>,
    actions: GrantedActions,
}

/// Everything a decision needs about one subject, in one place (one cache miss, not
/// three, on large policies).
#[derive(Default)]
struct SubjectEntry {
    /// Every subject it inherits through `g`, itself excluded.
    inherited: Box<[NameId]>,
    exact: IdMap<GrantedActions>,
    patterns: Vec<PatternGrant>,
}

/// One grant an explain or `/api/me/permissions` caller holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct EffectiveGrant {
    /// The object or pattern as granted (`Chart`, `*`, `datasources:uid:*`).
    pub object: String,
    /// The action as granted (`can_read`, `Query`).
    pub action: String,
    /// Every action the grant carries, itself included (`Query` → `Query`,
    /// `datasources:query`, `datasources:read`), sorted.
    pub implies: Vec<String>,
    /// The subject the grant was made to (the caller's own or an inherited one).
    pub via: String,
}

/// Everything the given subjects hold, split by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EffectivePermissions {
    /// FAB-style permissions as `(action, view)` pairs, implied actions included, sorted.
    pub role_permissions: Vec<(String, String)>,
    /// Datasource grants (scope, level, what the level implies, via whom), sorted.
    pub datasource_grants: Vec<EffectiveGrant>,
}

pub struct DecisionIndex {
    subjects: Interner,
    objects: Interner,
    actions: Interner,
    /// By action id: every action it implies through `g2`, itself included, sorted.
    implied: Vec<Box<[NameId]>>,
    /// By subject id.
    entries: Vec<SubjectEntry>,
}

impl DecisionIndex {
    pub fn build(lines: &[SourcedLine]) -> Result<DecisionIndex, PolicyError> {
        let mut subjects = Interner::default();
        let mut objects = Interner::default();
        let mut actions = Interner::default();
        let mut memberships: Vec<(NameId, NameId)> = Vec::new();
        let mut implications: Vec<(NameId, NameId)> = Vec::new();
        let mut exact_grants: Vec<(NameId, NameId, NameId)> = Vec::new();
        let mut pattern_grants: Vec<(NameId, &str, NameId)> = Vec::new();

        for sourced in lines {
            match &sourced.line {
                PolicyLine::Grant {
                    subject,
                    object,
                    action,
                } => {
                    let subject = subjects.intern(subject)?;
                    let action = actions.intern(action)?;
                    if object.contains('*') {
                        pattern_grants.push((subject, object.as_str(), action));
                    } else {
                        exact_grants.push((subject, objects.intern(object)?, action));
                    }
                }
                PolicyLine::Membership { member, group } => {
                    memberships.push((subjects.intern(member)?, subjects.intern(group)?));
                }
                PolicyLine::ActionImplies { action, implied } => {
                    implications.push((actions.intern(action)?, actions.intern(implied)?));
                }
            }
        }

        let inherited = closure(&subjects, &memberships, "role")?;
        let implied = closure(&actions, &implications, "action")?
            .into_iter()
            .enumerate()
            .map(|(action, reachable)| {
                let mut all = reachable.into_vec();
                all.push(action as NameId);
                all.sort_unstable();
                all.into_boxed_slice()
            })
            .collect();

        let mut grants: Vec<SubjectEntry> = inherited
            .into_iter()
            .map(|inherited| SubjectEntry {
                inherited,
                ..SubjectEntry::default()
            })
            .collect();
        for (subject, object, action) in exact_grants {
            if let Some(subject_grants) = grants.get_mut(subject as usize) {
                subject_grants
                    .exact
                    .entry(object)
                    .and_modify(|granted| granted.add(action))
                    .or_insert(GrantedActions::One(action));
            }
        }
        for (subject, pattern, action) in pattern_grants {
            let Some(subject_grants) = grants.get_mut(subject as usize) else {
                continue;
            };
            match subject_grants
                .patterns
                .iter_mut()
                .find(|existing| &*existing.pattern == pattern)
            {
                Some(existing) => existing.actions.add(action),
                None => {
                    let prefix = pattern.split('*').next().unwrap_or_default();
                    subject_grants.patterns.push(PatternGrant {
                        pattern: Arc::from(pattern),
                        prefix: Arc::from(prefix),
                        actions: GrantedActions::One(action),
                    });
                }
            }
        }
        for subject_grants in &mut grants {
            subject_grants.exact.shrink_to_fit();
            subject_grants.patterns.shrink_to_fit();
        }

        Ok(DecisionIndex {
            subjects,
            objects,
            actions,
            implied,
            entries: grants,
        })
    }

    /// The id of an action some file line names.
    pub(super) fn action_id(&self, action: &str) -> Option<NameId> {
        self.actions.get(action)
    }

    pub(super) fn action_name(&self, action: NameId) -> &str {
        self.actions.name(action)
    }

    /// Does `granted` imply `requested` through the `g2` closure (itself included)?
    pub(super) fn implies(&self, granted: NameId, requested: NameId) -> bool {
        self.implied
            .get(granted as usize)
            .is_some_and(|implied| implied.binary_search(&requested).is_ok())
    }

    /// Every action `granted` implies, itself included, as names.
    pub(super) fn implied_names(&self, granted: NameId) -> Vec<String> {
        self.implied
            .get(granted as usize)
            .map(|implied| {
                implied
                    .iter()
                    .map(|&id| self.actions.name(id).to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The subjects `subject` inherits through `g` lines (itself excluded), as names.
    pub(super) fn inherited_names<'a>(&'a self, subject: &str) -> impl Iterator<Item = &'a str> {
        self.subjects
            .get(subject)
            .map_or(&[][..], |id| self.inherited_by(id))
            .iter()
            .map(|&id| self.subjects.name(id))
    }

    /// The decision: is any of `subjects`, or a subject one of them inherits, granted an
    /// action that implies `action` on an object pattern matching `object`?
    pub fn allows(&self, subjects: &[String], object: &str, action: &str) -> bool {
        let Some(action) = self.actions.get(action) else {
            // No line mentions the action, so no grant can imply it.
            return false;
        };
        let object_id = self.objects.get(object);
        let mut checked = CheckedSubjects::new();
        subjects.iter().any(|name| {
            let Some(subject) = self.subjects.get(name) else {
                return false;
            };
            std::iter::once(&subject)
                .chain(self.inherited_by(subject))
                .any(|&holder| {
                    checked.first_time(holder)
                        && self.subject_allows(holder, object_id, object, action)
                })
        })
    }

    fn inherited_by(&self, subject: NameId) -> &[NameId] {
        self.entries
            .get(subject as usize)
            .map_or(&[], |entry| &entry.inherited)
    }

    fn subject_allows(
        &self,
        subject: NameId,
        object_id: Option<NameId>,
        object: &str,
        action: NameId,
    ) -> bool {
        let Some(grants) = self.entries.get(subject as usize) else {
            return false;
        };
        let exact = object_id
            .and_then(|object_id| grants.exact.get(&object_id))
            .is_some_and(|granted| self.any_implies(granted, action));
        exact
            || grants.patterns.iter().any(|pattern| {
                object.starts_with(&*pattern.prefix) && self.any_implies(&pattern.actions, action)
            })
    }

    fn any_implies(&self, granted: &GrantedActions, action: NameId) -> bool {
        granted.as_slice().iter().any(|&granted| {
            self.implied
                .get(granted as usize)
                .is_some_and(|implied| implied.binary_search(&action).is_ok())
        })
    }

    /// Everything `subjects` hold, directly or inherited. Walks only the callers' own
    /// grant lists, never the whole policy.
    /// Every group `subjects` belong to through `g` lines, transitively, as names
    /// (`role:Gamma`, `team:eng`, `basic:Viewer`), without repeats.
    pub fn groups_of(&self, subjects: &[String]) -> Vec<String> {
        let mut groups: Vec<String> = Vec::new();
        for name in subjects {
            let Some(subject) = self.subjects.get(name) else {
                continue;
            };
            for &group in self.inherited_by(subject) {
                let group = self.subjects.name(group);
                if !subjects.iter().any(|known| known == group)
                    && !groups.iter().any(|known| known == group)
                {
                    groups.push(group.to_string());
                }
            }
        }
        groups
    }

    pub fn effective_permissions(&self, subjects: &[String]) -> EffectivePermissions {
        let mut holders: Vec<NameId> = Vec::new();
        let mut seen = HashSet::new();
        for name in subjects {
            let Some(subject) = self.subjects.get(name) else {
                continue;
            };
            for &holder in std::iter::once(&subject).chain(self.inherited_by(subject)) {
                if seen.insert(holder) {
                    holders.push(holder);
                }
            }
        }
        let mut role_permissions = Vec::new();
        let mut datasource_grants = Vec::new();
        for holder in holders {
            let Some(grants) = self.entries.get(holder as usize) else {
                continue;
            };
            let exact = grants
                .exact
                .iter()
                .map(|(object, granted)| (self.objects.name(*object), granted));
            let patterns = grants
                .patterns
                .iter()
                .map(|pattern| (&*pattern.pattern, &pattern.actions));
            for (object, granted) in exact.chain(patterns) {
                for &action in granted.as_slice() {
                    let implies: Vec<String> = self
                        .implied
                        .get(action as usize)
                        .map(|implied| {
                            implied
                                .iter()
                                .map(|&id| self.actions.name(id).to_string())
                                .collect()
                        })
                        .unwrap_or_default();
                    if object.starts_with(DATASOURCE_SCOPE_PREFIX) {
                        let mut implies = implies;
                        implies.sort();
                        datasource_grants.push(EffectiveGrant {
                            object: object.to_string(),
                            action: self.actions.name(action).to_string(),
                            implies,
                            via: self.subjects.name(holder).to_string(),
                        });
                    } else {
                        role_permissions.extend(
                            implies
                                .into_iter()
                                .map(|implied| (implied, object.to_string())),
                        );
                    }
                }
            }
        }
        role_permissions.sort();
        role_permissions.dedup();
        datasource_grants.sort();
        datasource_grants.dedup();
        EffectivePermissions {
            role_permissions,
            datasource_grants,
        }
    }
}

/// For every node, every node reachable through `edges` (itself excluded), by BFS with
/// a visited set (so cycles terminate). Fails if any node is reachable only through more
/// links than casbin follows.
fn closure(
    names: &Interner,
    edges: &[(NameId, NameId)],
    relation: &'static str,
) -> Result<Vec<Box<[NameId]>>, PolicyError> {
    let node_count = names.len();
    let mut adjacency: Vec<Vec<NameId>> = vec![Vec::new(); node_count];
    for &(from, to) in edges {
        if from == to {
            continue;
        }
        if let Some(targets) = adjacency.get_mut(from as usize)
            && !targets.contains(&to)
        {
            targets.push(to);
        }
    }
    let mut result: Vec<Box<[NameId]>> = Vec::with_capacity(node_count);
    // Reused across starts: `visited_at[n] == start + 1` marks n as seen in this BFS.
    let mut visited_at: Vec<usize> = vec![0; node_count];
    let mut queue: VecDeque<(NameId, usize)> = VecDeque::new();
    for start in 0..node_count {
        let direct = adjacency.get(start).map_or(&[][..], |targets| targets);
        if direct.is_empty() {
            result.push(Box::default());
            continue;
        }
        let mark = start + 1;
        if let Some(slot) = visited_at.get_mut(start) {
            *slot = mark;
        }
        let mut reachable = Vec::new();
        queue.clear();
        queue.push_back((start as NameId, 0));
        while let Some((node, level)) = queue.pop_front() {
            for &next in adjacency
                .get(node as usize)
                .map_or(&[][..], |targets| targets)
            {
                let Some(slot) = visited_at.get_mut(next as usize) else {
                    continue;
                };
                if *slot == mark {
                    continue;
                }
                *slot = mark;
                if level + 1 > DEEPEST_ALLOWED_LINK {
                    return Err(PolicyError::HierarchyTooDeep {
                        relation,
                        from: names.name(start as NameId).to_string(),
                        to: names.name(next).to_string(),
                        limit: DEEPEST_ALLOWED_LINK,
                    });
                }
                reachable.push(next);
                queue.push_back((next, level + 1));
            }
        }
        result.push(reachable.into_boxed_slice());
    }
    Ok(result)
}
