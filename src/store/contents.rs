//! The whole store as one consistent value, and its translation into what a snapshot
//! holds: policy lines (grants and role permissions) by subject, store identities that
//! enrich an authenticated principal, service-account token digests, RLS filters and
//! datasources.
//!
//! Off the request path: read whole at start-up and on a full resync, and otherwise
//! changed row by row by [`StoreContents::apply`] with the rows a write touched
//! ([`super::delta`]). Every table is a persistent ordered map ([`imbl::OrdMap`]): a
//! snapshot's copy costs O(1) and shares every node with the serving one, an update
//! copies a path of O(log n) nodes, iteration is in key order (listings, stable output),
//! and per-datasource and per-grantee lookups are range scans. Secondary indexes (members
//! by user, tokens by account, grants by grantee) are kept next to the tables they index
//! so that a change can find what depends on it without a scan.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use sqlx::{Any, Row, Transaction};

use super::StoreError;
use super::records::GrantRow;
use crate::policy::{PolicyLine, SourcedLine, StoreSubjectLines, datasource_object};
use crate::principal::{BasicRole, subject};
use crate::rls::{DatasourceConfig, Dialect, FilterDefinition};

/// The name store lines carry in errors (`admin store line 3`; the number is the grant's
/// or role's id).
pub const STORE_SOURCE: &str = "admin store";

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoreUser {
    pub id: i64,
    pub login: String,
    pub is_service_account: bool,
    pub basic_role: Option<BasicRole>,
    pub roles: Vec<String>,
}

impl StoreUser {
    /// The policy subject: `user:<login>` or `serviceaccount:<login>`.
    pub fn subject(&self) -> String {
        if self.is_service_account {
            format!("{}{}", subject::SERVICE_ACCOUNT, self.login)
        } else {
            format!("{}{}", subject::USER, self.login)
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoreToken {
    pub id: i64,
    pub sha256: [u8; 32],
    pub service_account_id: i64,
    pub expires_at_ms: Option<i64>,
}

/// What the store adds to an authenticated caller with the same subject.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StoreIdentity {
    pub roles: Vec<String>,
    pub teams: Vec<String>,
    pub basic_role: Option<BasicRole>,
}

/// A datasource grant's key: `(datasource uid, grantee kind, grantee)`, the table's
/// unique key, in the order listings want.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantKey {
    pub datasource_uid: Arc<str>,
    /// `user`, `team` or `builtin`.
    pub grantee_kind: Arc<str>,
    /// A user or team id, or a basic role name.
    pub grantee: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGrant {
    pub id: i64,
    pub permission: Arc<str>,
}

/// A service-account token's entry in a snapshot: its sha256, and the account's login
/// and the token's expiry (ms since the epoch).
pub type TokenEntry = ([u8; 32], (String, Option<i64>));

/// Who holds datasource grants: the grant rows with the same `(grantee kind, grantee)`.
pub type GranteeKey = (Arc<str>, Arc<str>);

/// Everything in the store at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreContents {
    pub revision: i64,
    users: OrdMap<i64, StoreUser>,
    teams: OrdMap<i64, String>,
    /// `(team id, user id)`.
    members: OrdSet<(i64, i64)>,
    /// `(user id, team id)`: the same rows, by user.
    members_by_user: OrdSet<(i64, i64)>,
    tokens: OrdMap<i64, StoreToken>,
    /// `(service account id, token id)`.
    tokens_by_account: OrdSet<(i64, i64)>,
    /// Role id → name (roles without permissions included).
    roles: OrdMap<i64, String>,
    /// `(role name, permission, view)`.
    role_permissions: OrdSet<(String, String, String)>,
    grants: OrdMap<GrantKey, StoredGrant>,
    /// `(grantee kind, grantee, datasource uid)`: the grant keys, by grantee.
    grants_by_grantee: OrdSet<(Arc<str>, Arc<str>, Arc<str>)>,
    filters: OrdMap<i64, FilterDefinition>,
    datasources: OrdMap<i64, DatasourceConfig>,
}

/// The rows of one scope a write touched, as they are after it (see
/// [`super::delta::Scope`]): applying them replaces whatever the scope held.
#[derive(Debug, Clone, PartialEq)]
pub enum ScopeRows {
    User(i64, Option<StoreUser>),
    Team(i64, Option<String>),
    /// A team's member user ids.
    MembersOfTeam(i64, Vec<i64>),
    /// A user's team ids.
    MembersOfUser(i64, Vec<i64>),
    TokensOfAccount(i64, Vec<StoreToken>),
    /// A role's name and `(permission, view)` pairs.
    Role(i64, Option<(String, Vec<(String, String)>)>),
    /// One grant key and its row, if it still exists.
    Grant(GrantRowKey, Option<GrantRow>),
    GrantsOfGrantee(String, String, Vec<GrantRow>),
    GrantsOnDatasource(String, Vec<GrantRow>),
    Filter(i64, Option<FilterDefinition>),
    Datasource(i64, Option<DatasourceConfig>),
}

/// `(datasource uid, grantee kind, grantee)` as plain strings.
pub type GrantRowKey = (String, String, String);

/// What [`StoreContents::apply`] touched, for updating what a snapshot derives from the
/// store without recomputing it all.
#[derive(Debug, Default)]
pub struct Touched {
    /// Users whose store identity (roles, teams, basic role) may have changed.
    pub users: BTreeSet<i64>,
    /// Teams renamed, created or deleted (their members' identities change).
    pub teams: BTreeSet<i64>,
    /// Service accounts whose tokens (or login) changed.
    pub token_accounts: BTreeSet<i64>,
    /// Grantees whose datasource grants (or subject name) changed.
    pub grantees: BTreeSet<GranteeKey>,
    /// Role names (before and after) whose permissions changed.
    pub roles: BTreeSet<String>,
    /// A filter or datasource changed: row-level security is recompiled.
    pub filters_or_datasources: bool,
}

fn range_of(set: &OrdSet<(i64, i64)>, first: i64) -> impl Iterator<Item = i64> + '_ {
    set.range((first, i64::MIN)..=(first, i64::MAX))
        .map(|(_, second)| *second)
}

fn kind_name(kind: &str) -> Arc<str> {
    Arc::from(kind)
}

impl StoreContents {
    // ---- reading ----

    pub fn users(&self) -> impl Iterator<Item = &StoreUser> {
        self.users.values()
    }

    pub fn user(&self, id: i64) -> Option<&StoreUser> {
        self.users.get(&id)
    }

    /// `(id, name)` of every team.
    pub fn teams(&self) -> impl Iterator<Item = (i64, &str)> {
        self.teams.iter().map(|(id, name)| (*id, name.as_str()))
    }

    pub fn team_name(&self, id: i64) -> Option<&str> {
        self.teams.get(&id).map(String::as_str)
    }

    /// The team ids `user` is a member of.
    pub fn teams_of(&self, user: i64) -> impl Iterator<Item = i64> + '_ {
        range_of(&self.members_by_user, user)
    }

    /// The user ids in `team`.
    pub fn members_of(&self, team: i64) -> impl Iterator<Item = i64> + '_ {
        range_of(&self.members, team)
    }

    pub fn tokens_of(&self, account: i64) -> impl Iterator<Item = &StoreToken> + '_ {
        range_of(&self.tokens_by_account, account).filter_map(|id| self.tokens.get(&id))
    }

    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    pub fn role_permissions(&self) -> impl Iterator<Item = &(String, String, String)> {
        self.role_permissions.iter()
    }

    fn permissions_of_role<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a (String, String, String)> + 'a {
        self.role_permissions
            .range((
                Bound::Included((name.to_string(), String::new(), String::new())),
                Bound::Unbounded,
            ))
            .take_while(move |(role, _, _)| role == name)
    }

    pub fn grant_count(&self) -> usize {
        self.grants.len()
    }

    /// Every grant, ordered by datasource, grantee kind and grantee.
    pub fn grants(&self) -> impl Iterator<Item = (&GrantKey, &StoredGrant)> {
        self.grants.iter()
    }

    /// The grants on one datasource, in the same order.
    pub fn grants_on<'a>(
        &'a self,
        uid: &'a str,
    ) -> impl Iterator<Item = (&'a GrantKey, &'a StoredGrant)> + 'a {
        let start = GrantKey {
            datasource_uid: Arc::from(uid),
            grantee_kind: Arc::from(""),
            grantee: Arc::from(""),
        };
        self.grants
            .range((Bound::Included(start), Bound::Unbounded))
            .take_while(move |(key, _)| &*key.datasource_uid == uid)
    }

    /// The keys of the grants held by one grantee.
    fn grant_keys_of(&self, kind: &str, grantee: &str) -> Vec<GrantKey> {
        let start = (
            kind_name(kind),
            Arc::<str>::from(grantee),
            Arc::<str>::from(""),
        );
        self.grants_by_grantee
            .range((Bound::Included(start), Bound::Unbounded))
            .take_while(|(held_kind, held_grantee, _)| {
                &**held_kind == kind && &**held_grantee == grantee
            })
            .map(|(kind, grantee, uid)| GrantKey {
                datasource_uid: uid.clone(),
                grantee_kind: kind.clone(),
                grantee: grantee.clone(),
            })
            .collect()
    }

    pub fn filters(&self) -> impl Iterator<Item = &FilterDefinition> {
        self.filters.values()
    }

    pub fn datasources(&self) -> impl Iterator<Item = &DatasourceConfig> {
        self.datasources.values()
    }

    // ---- writing (load, fixtures, deltas) ----

    pub fn insert_user(&mut self, user: StoreUser) {
        self.users.insert(user.id, user);
    }

    pub fn insert_team(&mut self, id: i64, name: String) {
        self.teams.insert(id, name);
    }

    pub fn add_member(&mut self, team: i64, user: i64) {
        self.members.insert((team, user));
        self.members_by_user.insert((user, team));
    }

    pub fn insert_token(&mut self, token: StoreToken) {
        self.tokens_by_account
            .insert((token.service_account_id, token.id));
        self.tokens.insert(token.id, token);
    }

    pub fn insert_role(&mut self, id: i64, name: String) {
        self.roles.insert(id, name);
    }

    pub fn add_role_permission(&mut self, role: String, permission: String, view: String) {
        self.role_permissions.insert((role, permission, view));
    }

    pub fn insert_grant(&mut self, row: GrantRow) {
        let key = GrantKey {
            datasource_uid: Arc::from(row.datasource_uid),
            grantee_kind: kind_name(&row.grantee_kind),
            grantee: Arc::from(row.grantee),
        };
        self.insert_grant_key(
            key,
            StoredGrant {
                id: row.id,
                permission: Arc::from(row.permission),
            },
        );
    }

    fn insert_grant_key(&mut self, key: GrantKey, grant: StoredGrant) {
        self.grants_by_grantee.insert((
            key.grantee_kind.clone(),
            key.grantee.clone(),
            key.datasource_uid.clone(),
        ));
        self.grants.insert(key, grant);
    }

    fn remove_grant(&mut self, key: &GrantKey) {
        self.grants_by_grantee.remove(&(
            key.grantee_kind.clone(),
            key.grantee.clone(),
            key.datasource_uid.clone(),
        ));
        self.grants.remove(key);
    }

    pub fn insert_filter(&mut self, id: i64, filter: FilterDefinition) {
        self.filters.insert(id, filter);
    }

    pub fn insert_datasource(&mut self, id: i64, datasource: DatasourceConfig) {
        self.datasources.insert(id, datasource);
    }

    fn grant_key_of(datasource_uid: &str, grantee_kind: &str, grantee: &str) -> GrantKey {
        GrantKey {
            datasource_uid: Arc::from(datasource_uid),
            grantee_kind: kind_name(grantee_kind),
            grantee: Arc::from(grantee),
        }
    }

    /// Replaces the rows of each scope with the rows given (the store after a write),
    /// and says what that touched. Scopes may overlap: rows read in one transaction agree,
    /// so the order does not matter.
    pub fn apply(&mut self, rows: &[ScopeRows]) -> Touched {
        let mut touched = Touched::default();
        for scope in rows {
            match scope {
                ScopeRows::User(id, user) => {
                    self.users.remove(id);
                    if let Some(user) = user {
                        self.users.insert(*id, user.clone());
                    }
                    touched.users.insert(*id);
                    touched.token_accounts.insert(*id);
                    touched
                        .grantees
                        .insert((kind_name("user"), Arc::from(id.to_string())));
                }
                ScopeRows::Team(id, name) => {
                    self.teams.remove(id);
                    if let Some(name) = name {
                        self.teams.insert(*id, name.clone());
                    }
                    touched.teams.insert(*id);
                    touched
                        .grantees
                        .insert((kind_name("team"), Arc::from(id.to_string())));
                }
                ScopeRows::MembersOfTeam(team, users) => {
                    for user in self.members_of(*team).collect::<Vec<_>>() {
                        self.members.remove(&(*team, user));
                        self.members_by_user.remove(&(user, *team));
                        touched.users.insert(user);
                    }
                    for user in users {
                        self.add_member(*team, *user);
                        touched.users.insert(*user);
                    }
                }
                ScopeRows::MembersOfUser(user, teams) => {
                    for team in self.teams_of(*user).collect::<Vec<_>>() {
                        self.members.remove(&(team, *user));
                        self.members_by_user.remove(&(*user, team));
                    }
                    for team in teams {
                        self.add_member(*team, *user);
                    }
                    touched.users.insert(*user);
                }
                ScopeRows::TokensOfAccount(account, tokens) => {
                    for id in range_of(&self.tokens_by_account, *account).collect::<Vec<_>>() {
                        self.tokens.remove(&id);
                        self.tokens_by_account.remove(&(*account, id));
                    }
                    for token in tokens {
                        self.insert_token(token.clone());
                    }
                    touched.token_accounts.insert(*account);
                }
                ScopeRows::Role(id, role) => {
                    if let Some(old) = self.roles.remove(id) {
                        for permission in
                            self.permissions_of_role(&old).cloned().collect::<Vec<_>>()
                        {
                            self.role_permissions.remove(&permission);
                        }
                        touched.roles.insert(old);
                    }
                    if let Some((name, permissions)) = role {
                        self.roles.insert(*id, name.clone());
                        for (permission, view) in permissions {
                            self.add_role_permission(
                                name.clone(),
                                permission.clone(),
                                view.clone(),
                            );
                        }
                        touched.roles.insert(name.clone());
                    }
                }
                ScopeRows::Grant((uid, kind, grantee), row) => {
                    self.remove_grant(&Self::grant_key_of(uid, kind, grantee));
                    if let Some(row) = row {
                        self.insert_grant(row.clone());
                    }
                    touched
                        .grantees
                        .insert((kind_name(kind), Arc::from(grantee.as_str())));
                }
                ScopeRows::GrantsOfGrantee(kind, grantee, rows) => {
                    for key in self.grant_keys_of(kind, grantee) {
                        self.remove_grant(&key);
                    }
                    for row in rows {
                        self.insert_grant(row.clone());
                    }
                    touched
                        .grantees
                        .insert((kind_name(kind), Arc::from(grantee.as_str())));
                }
                ScopeRows::GrantsOnDatasource(uid, rows) => {
                    let keys: Vec<GrantKey> =
                        self.grants_on(uid).map(|(key, _)| key.clone()).collect();
                    for key in keys {
                        touched
                            .grantees
                            .insert((key.grantee_kind.clone(), key.grantee.clone()));
                        self.remove_grant(&key);
                    }
                    for row in rows {
                        touched.grantees.insert((
                            kind_name(&row.grantee_kind),
                            Arc::from(row.grantee.as_str()),
                        ));
                        self.insert_grant(row.clone());
                    }
                }
                ScopeRows::Filter(id, filter) => {
                    self.filters.remove(id);
                    if let Some(filter) = filter {
                        self.filters.insert(*id, filter.clone());
                    }
                    touched.filters_or_datasources = true;
                }
                ScopeRows::Datasource(id, datasource) => {
                    self.datasources.remove(id);
                    if let Some(datasource) = datasource {
                        self.datasources.insert(*id, datasource.clone());
                    }
                    touched.filters_or_datasources = true;
                }
            }
        }
        touched
    }

    // ---- what a snapshot derives ----

    /// The policy subject of a grantee; `None` if it names a deleted principal.
    pub fn grantee_subject(&self, kind: &str, grantee: &str) -> Option<String> {
        match kind {
            "user" => grantee
                .parse::<i64>()
                .ok()
                .and_then(|id| self.user(id))
                .map(StoreUser::subject),
            "team" => grantee
                .parse::<i64>()
                .ok()
                .and_then(|id| self.team_name(id))
                .map(|name| format!("{}{name}", subject::TEAM)),
            "builtin" => Some(format!("{}{grantee}", subject::BASIC)),
            _ => None,
        }
    }

    fn grant_line(subject: &str, key: &GrantKey, grant: &StoredGrant) -> SourcedLine {
        SourcedLine::new(
            PolicyLine::Grant {
                subject: subject.to_string(),
                object: datasource_object(&key.datasource_uid),
                action: grant.permission.to_string(),
            },
            STORE_SOURCE,
            grant.id.max(0) as usize,
        )
    }

    /// What the store grants one grantee, under its current subject (`None` when the
    /// grantee no longer resolves to one).
    fn grantee_lines(&self, kind: &str, grantee: &str) -> Option<StoreSubjectLines> {
        let subject = self.grantee_subject(kind, grantee)?;
        let lines = self
            .grant_keys_of(kind, grantee)
            .iter()
            .filter_map(|key| {
                self.grants
                    .get(key)
                    .map(|grant| Self::grant_line(&subject, key, grant))
            })
            .collect();
        Some(StoreSubjectLines { subject, lines })
    }

    fn role_lines(&self, name: &str) -> StoreSubjectLines {
        let subject = format!("{}{name}", subject::ROLE);
        let lines = self
            .permissions_of_role(name)
            .map(|(_, permission, view)| {
                SourcedLine::new(
                    PolicyLine::Grant {
                        subject: subject.clone(),
                        object: view.clone(),
                        action: permission.clone(),
                    },
                    STORE_SOURCE,
                    0,
                )
            })
            .collect();
        StoreSubjectLines { subject, lines }
    }

    /// Every store line, grouped by subject: grants and role permissions.
    pub fn subject_lines(&self) -> Vec<StoreSubjectLines> {
        let mut by_subject: HashMap<String, Vec<SourcedLine>> = HashMap::new();
        // Subjects resolve once per grantee, not once per grant.
        let mut subjects: HashMap<(Arc<str>, Arc<str>), Option<String>> = HashMap::new();
        for (key, grant) in &self.grants {
            let subject = subjects
                .entry((key.grantee_kind.clone(), key.grantee.clone()))
                .or_insert_with(|| self.grantee_subject(&key.grantee_kind, &key.grantee));
            if let Some(subject) = subject {
                by_subject
                    .entry(subject.clone())
                    .or_default()
                    .push(Self::grant_line(subject, key, grant));
            }
        }
        for (role, permission, view) in &self.role_permissions {
            let subject = format!("{}{role}", subject::ROLE);
            by_subject
                .entry(subject.clone())
                .or_default()
                .push(SourcedLine::new(
                    PolicyLine::Grant {
                        subject,
                        object: view.clone(),
                        action: permission.clone(),
                    },
                    STORE_SOURCE,
                    0,
                ));
        }
        by_subject
            .into_iter()
            .map(|(subject, lines)| StoreSubjectLines { subject, lines })
            .collect()
    }

    /// The per-subject line updates that take a snapshot built from `before` to `self`,
    /// for what `touched` says changed: first the subjects no longer held (empty), then
    /// the current lines of every touched grantee and role.
    pub fn subject_updates(
        &self,
        before: &StoreContents,
        touched: &Touched,
    ) -> Vec<StoreSubjectLines> {
        let mut grantees = touched.grantees.clone();
        for team in &touched.teams {
            grantees.insert((kind_name("team"), Arc::from(team.to_string())));
        }
        let mut vacated: BTreeSet<String> = BTreeSet::new();
        let mut current: Vec<StoreSubjectLines> = Vec::new();
        for (kind, grantee) in &grantees {
            if let Some(old) = before.grantee_subject(kind, grantee) {
                vacated.insert(old);
            }
            if let Some(lines) = self.grantee_lines(kind, grantee) {
                current.push(lines);
            }
        }
        for role in &touched.roles {
            vacated.insert(format!("{}{role}", subject::ROLE));
            current.push(self.role_lines(role));
        }
        for update in &current {
            vacated.remove(&update.subject);
        }
        vacated
            .into_iter()
            .map(|subject| StoreSubjectLines {
                subject,
                lines: Vec::new(),
            })
            .chain(current)
            .collect()
    }

    /// One user's store identity, under their subject.
    pub fn identity(&self, user: i64) -> Option<(String, StoreIdentity)> {
        let user = self.user(user)?;
        let teams = self
            .teams_of(user.id)
            .filter_map(|team| self.team_name(team).map(str::to_string))
            .collect();
        Some((
            user.subject(),
            StoreIdentity {
                roles: user.roles.clone(),
                teams,
                basic_role: user.basic_role,
            },
        ))
    }

    /// Every user whose identity `touched` may have changed (team changes reach their
    /// members before and after).
    pub fn identity_users(&self, before: &StoreContents, touched: &Touched) -> BTreeSet<i64> {
        let mut users = touched.users.clone();
        for team in &touched.teams {
            users.extend(before.members_of(*team));
            users.extend(self.members_of(*team));
        }
        users
    }

    /// The token ids `touched` may have changed the entries of.
    pub fn touched_tokens(&self, before: &StoreContents, touched: &Touched) -> Vec<StoreToken> {
        let mut tokens = Vec::new();
        for account in &touched.token_accounts {
            tokens.extend(before.tokens_of(*account).cloned());
            tokens.extend(self.tokens_of(*account).cloned());
        }
        tokens
    }

    /// A token's entry: its digest, and the service account's login and expiry; `None`
    /// when the token or its service account is gone.
    pub fn token_entry(&self, token: i64) -> Option<TokenEntry> {
        let token = self.tokens.get(&token)?;
        self.user(token.service_account_id)
            .filter(|user| user.is_service_account)
            .map(|user| (token.sha256, (user.login.clone(), token.expires_at_ms)))
    }

    /// Every token entry.
    pub fn token_entries(&self) -> impl Iterator<Item = TokenEntry> + '_ {
        self.tokens.keys().filter_map(|id| self.token_entry(*id))
    }
}

/// Reads a user row (`id, login, is_service_account, basic_role, roles`).
pub(super) fn user_of_row(row: &sqlx::any::AnyRow) -> Result<StoreUser, StoreError> {
    let basic_role: Option<String> = row.try_get("basic_role")?;
    Ok(StoreUser {
        id: row.try_get("id")?,
        login: row.try_get("login")?,
        is_service_account: row.try_get::<i64, _>("is_service_account")? != 0,
        basic_role: basic_role.and_then(|role| role.parse().ok()),
        roles: serde_json::from_str(&row.try_get::<String, _>("roles")?).unwrap_or_default(),
    })
}

/// Reads a token row (`id, token_sha256, service_account_id, expires_at`).
pub(super) fn token_of_row(row: &sqlx::any::AnyRow) -> Result<StoreToken, StoreError> {
    let mut sha256 = [0u8; 32];
    let text: String = row.try_get("token_sha256")?;
    if hex::decode_to_slice(&text, &mut sha256).is_err() {
        return Err(StoreError::Database(
            "stored token digest is not hex".into(),
        ));
    }
    Ok(StoreToken {
        id: row.try_get("id")?,
        sha256,
        service_account_id: row.try_get("service_account_id")?,
        expires_at_ms: row.try_get("expires_at")?,
    })
}

/// Reads a grant row (`datasource_uid, grantee_kind, grantee, permission, id`).
pub(super) fn grant_of_row(row: &sqlx::any::AnyRow) -> Result<GrantRow, StoreError> {
    Ok(GrantRow {
        datasource_uid: row.try_get(0)?,
        grantee_kind: row.try_get(1)?,
        grantee: row.try_get(2)?,
        permission: row.try_get(3)?,
        id: row.try_get(4)?,
    })
}

/// Reads a stored filter definition.
pub(super) fn filter_of_text(text: &str) -> Result<FilterDefinition, StoreError> {
    serde_json::from_str(text)
        .map_err(|error| StoreError::Database(format!("stored filter unreadable: {error}")))
}

/// Reads a datasource row (`uid, dialect, tables, deny_unlisted_tables, secure_settings`).
pub(super) fn datasource_of_row(row: &sqlx::any::AnyRow) -> Result<DatasourceConfig, StoreError> {
    let dialect: String = row.try_get("dialect")?;
    let dialect: Dialect = serde_json::from_value(serde_json::Value::String(dialect.clone()))
        .map_err(|_| StoreError::Database(format!("stored dialect `{dialect}` unknown")))?;
    Ok(DatasourceConfig {
        uid: row.try_get("uid")?,
        dialect,
        tables: serde_json::from_str(&row.try_get::<String, _>("tables")?).unwrap_or_default(),
        deny_unlisted_tables: row.try_get::<i64, _>("deny_unlisted_tables")? != 0,
        denied_functions: None,
        aws_iam: aws_iam_of(&row.try_get::<String, _>("secure_settings")?)?,
        templating: None,
    })
}

pub(super) const USER_ROW: &str =
    "SELECT id, login, is_service_account, basic_role, roles FROM users";
pub(super) const TOKEN_ROW: &str =
    "SELECT id, token_sha256, service_account_id, expires_at FROM service_account_tokens";
pub(super) const GRANT_ROW: &str =
    "SELECT datasource_uid, grantee_kind, grantee, permission, id FROM datasource_grants";
pub(super) const DATASOURCE_ROW: &str =
    "SELECT id, uid, dialect, tables, deny_unlisted_tables, secure_settings FROM datasources";

pub(super) async fn load(tx: &mut Transaction<'_, Any>) -> Result<StoreContents, StoreError> {
    let revision: i64 = sqlx::query("SELECT revision FROM store_revision WHERE id = 1")
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;
    let mut contents = StoreContents {
        revision,
        ..StoreContents::default()
    };
    for row in sqlx::query(&format!("{USER_ROW} ORDER BY id"))
        .fetch_all(&mut **tx)
        .await?
    {
        contents.insert_user(user_of_row(&row)?);
    }
    for row in sqlx::query("SELECT id, name FROM teams ORDER BY id")
        .fetch_all(&mut **tx)
        .await?
    {
        contents.insert_team(row.try_get("id")?, row.try_get("name")?);
    }
    for row in sqlx::query("SELECT team_id, user_id FROM team_members")
        .fetch_all(&mut **tx)
        .await?
    {
        contents.add_member(row.try_get("team_id")?, row.try_get("user_id")?);
    }
    for row in sqlx::query(&format!("{TOKEN_ROW} ORDER BY id"))
        .fetch_all(&mut **tx)
        .await?
    {
        contents.insert_token(token_of_row(&row)?);
    }
    for row in sqlx::query("SELECT id, name FROM roles ORDER BY id")
        .fetch_all(&mut **tx)
        .await?
    {
        contents.insert_role(row.try_get("id")?, row.try_get("name")?);
    }
    for row in sqlx::query(
        "SELECT r.name, p.permission, p.view_name FROM role_permissions p JOIN roles r ON r.id = p.role_id",
    )
    .fetch_all(&mut **tx)
    .await?
    {
        contents.add_role_permission(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    }
    // One shared string per distinct datasource uid, kind and grantee: with 1M grants
    // over a few thousand datasources and users that is most of the table's memory.
    let mut shared: HashMap<String, Arc<str>> = HashMap::new();
    let mut share = |text: String| -> Arc<str> {
        shared
            .entry(text)
            .or_insert_with_key(|text| Arc::from(text.as_str()))
            .clone()
    };
    for row in sqlx::query(GRANT_ROW).fetch_all(&mut **tx).await? {
        let row = grant_of_row(&row)?;
        let key = GrantKey {
            datasource_uid: share(row.datasource_uid),
            grantee_kind: share(row.grantee_kind),
            grantee: share(row.grantee),
        };
        let grant = StoredGrant {
            id: row.id,
            permission: share(row.permission),
        };
        contents.insert_grant_key(key, grant);
    }
    for row in sqlx::query("SELECT id, definition FROM rls_filters ORDER BY id")
        .fetch_all(&mut **tx)
        .await?
    {
        let text: String = row.try_get("definition")?;
        contents.insert_filter(row.try_get("id")?, filter_of_text(&text)?);
    }
    for row in sqlx::query(&format!("{DATASOURCE_ROW} ORDER BY id"))
        .fetch_all(&mut **tx)
        .await?
    {
        contents.insert_datasource(row.try_get("id")?, datasource_of_row(&row)?);
    }
    Ok(contents)
}

/// The `aws_iam` secure setting of a stored datasource, checked.
pub(crate) fn aws_iam_of(
    secure_settings: &str,
) -> Result<Option<crate::creds::AwsIamConfig>, StoreError> {
    let settings: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(secure_settings).unwrap_or_default();
    let Some(value) = settings.get("aws_iam") else {
        return Ok(None);
    };
    let iam: crate::creds::AwsIamConfig = serde_json::from_value(value.clone())
        .map_err(|error| StoreError::Invalid(format!("`secure_settings.aws_iam`: {error}")))?;
    iam.validate().map_err(StoreError::Invalid)?;
    Ok(Some(iam))
}
