//! Shared machinery of the RLS oracle tests (corpus, generated, injection).
//!
//! The oracle answers "which rows may this user see?" WITHOUT the engine: a small reference
//! implementation of Superset's RLS semantics (regular/base, group-key OR, AND across
//! groups) turns each user's applicable filters into one predicate whose template values
//! are bound as driver parameters, then deletes every row of a protected table for which
//! that predicate is not TRUE. The user's original query on that copy is the truth the
//! engine's rewritten query on the full database must match.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use datagate::principal::{Principal, PrincipalKind};
use datagate::rls::{
    DatasourceConfig, Dialect, FilterDefinition, FilterType, RewriteLimits, RewriteRequest,
    Rewritten, RlsError, RlsPolicy,
};
use serde::Deserialize;

/// One result cell, normalised so rows of the same engine compare exactly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cell {
    Null,
    Int(i64),
    Real(String),
    Text(String),
    Blob(Vec<u8>),
}

pub type Rows = Vec<Vec<Cell>>;

/// Prefix of every error string that means "the policy layer refused"; the rest is
/// `<kind>: <message>`. Anything else is an error from the database (the upstream).
pub const REJECTED_PREFIX: &str = "rejected:";

/// What the lead can plug in: the engine + a database here, or the live proxy.
/// `Err` strings starting with [`REJECTED_PREFIX`] are refusals before the upstream.
pub trait QueryExecutor {
    fn query(&self, user: &str, sql: &str) -> Result<Rows, String>;

    /// Only meaningful on the oracle: whether `user` lacks a template value some filter
    /// needs. Refusing such a user with `missing_template_value` is then always acceptable
    /// (fail closed), even when the table only appears in a CTE the database never reads.
    fn lacks_template_value(&self, _user: &str) -> bool {
        false
    }
}

/// The kind of a refusal, if the error is one.
pub fn rejection_kind(error: &str) -> Option<&str> {
    let rest = error.strip_prefix(REJECTED_PREFIX)?;
    Some(rest.split(':').next().unwrap_or(rest).trim())
}

// ---------------------------------------------------------------------------------------
// Corpus
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Corpus {
    pub schema: String,
    pub rows: String,
    pub filters: Vec<CorpusFilter>,
    pub users: BTreeMap<String, CorpusUser>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusFilter {
    pub name: String,
    #[serde(rename = "type")]
    pub filter_type: FilterType,
    pub tables: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub group_key: Option<String>,
    pub clause: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusUser {
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Filtered,
    Rejected,
    /// A known limitation (the case's `note` says which): refusing or erroring is
    /// accepted, but rows, if any, must equal the oracle's — never a leak.
    #[serde(rename = "fails_closed")]
    FailsClosed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseDialect {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub id: String,
    pub user: String,
    pub sql: String,
    pub expect: Expect,
    #[serde(default)]
    pub dialect: Option<CaseDialect>,
    /// Expected `RlsError::kind()` for rejected cases, where it is unambiguous.
    #[serde(default)]
    pub kind: Option<String>,
    /// Compare in order (the query orders by a unique key).
    #[serde(default)]
    pub ordered: bool,
    /// SQL is generated: `repeat` copies of `sql` joined / nested (size and nesting bombs).
    #[serde(default)]
    pub repeat: Option<usize>,
    #[serde(default)]
    pub note: Option<String>,
}

impl Case {
    pub fn runs_on(&self, dialect: Dialect) -> bool {
        matches!(
            (self.dialect.unwrap_or(CaseDialect::Sqlite), dialect),
            (CaseDialect::Both, _)
                | (CaseDialect::Sqlite, Dialect::Sqlite)
                | (CaseDialect::Postgres, Dialect::Postgres)
        )
    }

    /// The SQL to send, expanding generated bombs: `{N}` in `sql` is replaced by `repeat`.
    pub fn full_sql(&self) -> String {
        match self.repeat {
            None => self.sql.clone(),
            Some(count) => expand_bomb(&self.sql, count),
        }
    }
}

/// `sql` holds `PREFIX|||MIDDLE|||SUFFIX`: PREFIX×n + MIDDLE + SUFFIX×n.
fn expand_bomb(sql: &str, count: usize) -> String {
    let parts: Vec<&str> = sql.split("|||").collect();
    match parts.as_slice() {
        [prefix, middle, suffix] => {
            format!("{}{}{}", prefix.repeat(count), middle, suffix.repeat(count))
        }
        _ => sql.repeat(count),
    }
}

pub fn manifest_path(relative: &str) -> String {
    format!("{}/{}", env!("CARGO_MANIFEST_DIR"), relative)
}

pub fn load_corpus(path: &str) -> Corpus {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read corpus {path}: {error}"));
    serde_yaml::from_str(&text).unwrap_or_else(|error| panic!("bad corpus {path}: {error}"))
}

pub fn principal(name: &str, user: &CorpusUser) -> Principal {
    Principal {
        kind: PrincipalKind::User,
        username: name.to_string(),
        user_id: user.user_id.clone(),
        email: user.email.clone(),
        roles: user.roles.clone(),
        teams: Vec::new(),
        basic_role: None,
        claims: std::sync::Arc::new(user.claims.clone()),
    }
}

pub fn filter_definitions(filters: &[CorpusFilter], datasource: &str) -> Vec<FilterDefinition> {
    filters
        .iter()
        .map(|filter| FilterDefinition {
            name: filter.name.clone(),
            filter_type: filter.filter_type,
            datasource: datasource.to_string(),
            tables: filter.tables.clone(),
            roles: filter.roles.clone(),
            group_key: filter.group_key.clone(),
            clause: filter.clause.clone(),
            description: filter.description.clone(),
        })
        .collect()
}

pub fn protected_tables(filters: &[CorpusFilter]) -> Vec<String> {
    let mut tables: Vec<String> = filters
        .iter()
        .flat_map(|filter| filter.tables.iter().map(|table| unqualified(table)))
        .collect();
    tables.sort();
    tables.dedup();
    tables
}

fn unqualified(table: &str) -> String {
    table
        .rsplit('.')
        .next()
        .unwrap_or(table)
        .to_ascii_lowercase()
}

pub fn compile_policy(filters: &[CorpusFilter], dialect: Dialect, tables: &[String]) -> RlsPolicy {
    let datasource = DatasourceConfig {
        uid: "demo".to_string(),
        dialect,
        tables: tables.to_vec(),
        deny_unlisted_tables: false,
        denied_functions: None,
        aws_iam: None,
        templating: None,
    };
    RlsPolicy::compile(&[datasource], filter_definitions(filters, "demo"))
        .unwrap_or_else(|error| panic!("policy does not compile: {error}"))
}

// ---------------------------------------------------------------------------------------
// Reference semantics (independent of the engine)
// ---------------------------------------------------------------------------------------

/// A template value, bound through the driver, never spliced.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Text(String),
    Int(i64),
    Real(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceholderStyle {
    /// `?` (SQLite, MySQL)
    Question,
    /// `$1`, `$2`… (PostgreSQL)
    Dollar,
}

#[derive(Debug, Clone)]
pub struct BoundPredicate {
    pub sql: String,
    pub params: Vec<Param>,
}

/// Why a user has no bindable predicate for a table.
#[derive(Debug, Clone, PartialEq)]
pub struct MissingValue(pub String);

fn applies(filter: &CorpusFilter, principal: &Principal) -> bool {
    let holds_role = filter
        .roles
        .iter()
        .any(|role| principal.roles.contains(role));
    match filter.filter_type {
        FilterType::Regular => holds_role,
        FilterType::Base => !holds_role,
    }
}

/// Superset combination for one table: `Ok(None)` = no filter applies (all rows).
pub fn permitted_predicate(
    filters: &[CorpusFilter],
    principal: &Principal,
    table: &str,
    style: PlaceholderStyle,
) -> Result<Option<BoundPredicate>, MissingValue> {
    let table = unqualified(table);
    let mut groups: Vec<(Option<String>, Vec<&CorpusFilter>)> = Vec::new();
    for filter in filters {
        if !filter
            .tables
            .iter()
            .any(|listed| unqualified(listed) == table)
        {
            continue;
        }
        if !applies(filter, principal) {
            continue;
        }
        match &filter.group_key {
            Some(key) => match groups
                .iter_mut()
                .find(|(group, _)| group.as_ref() == Some(key))
            {
                Some((_, members)) => members.push(filter),
                None => groups.push((Some(key.clone()), vec![filter])),
            },
            None => groups.push((None, vec![filter])),
        }
    }
    if groups.is_empty() {
        return Ok(None);
    }
    let mut params = Vec::new();
    let mut conjuncts = Vec::new();
    for (_, members) in &groups {
        let mut disjuncts = Vec::new();
        for filter in members {
            disjuncts.push(format!(
                "({})",
                bind_clause(&filter.clause, principal, style, &mut params)?
            ));
        }
        conjuncts.push(format!("({})", disjuncts.join(" OR ")));
    }
    Ok(Some(BoundPredicate {
        sql: conjuncts.join(" AND "),
        params,
    }))
}

/// Replaces `{{ … }}` templates by driver placeholders (a quoted `'{{ … }}'` loses its
/// quotes: the value is a parameter, not text inside a literal).
pub fn bind_clause(
    clause: &str,
    principal: &Principal,
    style: PlaceholderStyle,
    params: &mut Vec<Param>,
) -> Result<String, MissingValue> {
    let mut output = String::new();
    let mut rest = clause;
    while let Some(start) = rest.find("{{") {
        let Some(length) = rest[start..].find("}}") else {
            return Err(MissingValue(format!("unterminated template in `{clause}`")));
        };
        let inner = rest[start + 2..start + length].trim();
        output.push_str(&rest[..start]);
        let mut after = &rest[start + length + 2..];
        if output.ends_with('\'') && after.starts_with('\'') {
            output.pop();
            after = &after[1..];
        }
        let values = template_values(inner, principal)?;
        let placeholders: Vec<String> = values
            .into_iter()
            .map(|value| {
                params.push(value);
                match style {
                    PlaceholderStyle::Question => "?".to_string(),
                    PlaceholderStyle::Dollar => format!("${}", params.len()),
                }
            })
            .collect();
        output.push_str(&placeholders.join(", "));
        rest = after;
    }
    output.push_str(rest);
    Ok(output)
}

fn template_values(expression: &str, principal: &Principal) -> Result<Vec<Param>, MissingValue> {
    let compact: String = expression.chars().filter(|c| !c.is_whitespace()).collect();
    let missing = |what: &str| MissingValue(format!("{what} of `{}`", principal.username));
    match compact.as_str() {
        "current_username()" => Ok(vec![Param::Text(principal.username.clone())]),
        "current_user_id()" => principal
            .user_id
            .clone()
            .map(|id| vec![Param::Text(id)])
            .ok_or_else(|| missing("user id")),
        "current_user_email()" => principal
            .email
            .clone()
            .map(|email| vec![Param::Text(email)])
            .ok_or_else(|| missing("email")),
        "current_user_roles()" => {
            if principal.roles.is_empty() {
                Err(missing("roles"))
            } else {
                Ok(principal.roles.iter().cloned().map(Param::Text).collect())
            }
        }
        other => {
            let name = other
                .strip_prefix("claim(")
                .and_then(|rest| rest.strip_suffix(')'))
                .map(|quoted| quoted.trim_matches(|c| c == '\'' || c == '"'))
                .ok_or_else(|| MissingValue(format!("unknown template `{expression}`")))?;
            match principal.claims.get(name) {
                Some(serde_json::Value::String(text)) => Ok(vec![Param::Text(text.clone())]),
                Some(serde_json::Value::Number(number)) => match number.as_i64() {
                    Some(integer) => Ok(vec![Param::Int(integer)]),
                    None => Ok(vec![Param::Real(number.as_f64().unwrap_or(f64::NAN))]),
                },
                _ => Err(missing(&format!("claim `{name}`"))),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------------

/// Runs SQL and returns normalised rows.
pub trait Database {
    fn run(&self, sql: &str) -> Result<Rows, String>;
}

pub struct SqliteDb(pub rusqlite::Connection);

impl SqliteDb {
    /// The full database: schema + every row, read-only afterwards.
    pub fn full(schema: &str, rows: &str) -> SqliteDb {
        let connection = sqlite_loaded(schema, rows);
        read_only_sqlite(&connection);
        SqliteDb(connection)
    }

    /// The user's oracle: every protected table holds only the permitted rows; a table whose
    /// predicate cannot be bound (missing template value) is dropped, so any query touching
    /// it errors (and the engine must refuse).
    pub fn oracle(
        schema: &str,
        rows: &str,
        filters: &[CorpusFilter],
        principal: &Principal,
    ) -> SqliteDb {
        let connection = sqlite_loaded(schema, rows);
        for table in protected_tables(filters) {
            match permitted_predicate(filters, principal, &table, PlaceholderStyle::Question) {
                Ok(None) => {}
                Ok(Some(predicate)) => {
                    let sql = format!(
                        "DELETE FROM {table} WHERE CASE WHEN ({}) THEN 0 ELSE 1 END = 1",
                        predicate.sql
                    );
                    let params: Vec<rusqlite::types::Value> =
                        predicate.params.iter().map(sqlite_value).collect();
                    connection
                        .execute(&sql, rusqlite::params_from_iter(params))
                        .unwrap_or_else(|error| panic!("oracle delete `{sql}`: {error}"));
                }
                Err(_) => {
                    connection
                        .execute_batch(&format!("DROP TABLE {table}"))
                        .unwrap_or_else(|error| panic!("oracle drop {table}: {error}"));
                }
            }
        }
        read_only_sqlite(&connection);
        SqliteDb(connection)
    }
}

pub fn sqlite_value(param: &Param) -> rusqlite::types::Value {
    match param {
        Param::Text(text) => rusqlite::types::Value::Text(text.clone()),
        Param::Int(integer) => rusqlite::types::Value::Integer(*integer),
        Param::Real(real) => rusqlite::types::Value::Real(*real),
    }
}

fn sqlite_loaded(schema: &str, rows: &str) -> rusqlite::Connection {
    let connection = rusqlite::Connection::open_in_memory()
        .unwrap_or_else(|error| panic!("sqlite open: {error}"));
    connection
        .execute_batch(schema)
        .unwrap_or_else(|error| panic!("sqlite schema: {error}"));
    connection
        .execute_batch(rows)
        .unwrap_or_else(|error| panic!("sqlite rows: {error}"));
    connection
}

fn read_only_sqlite(connection: &rusqlite::Connection) {
    connection
        .execute_batch("PRAGMA query_only = ON;")
        .unwrap_or_else(|error| panic!("sqlite query_only: {error}"));
}

impl Database for SqliteDb {
    fn run(&self, sql: &str) -> Result<Rows, String> {
        let mut statement = self.0.prepare(sql).map_err(|error| error.to_string())?;
        let width = statement.column_count();
        let mut rows = statement.query([]).map_err(|error| error.to_string())?;
        let mut output = Vec::new();
        while let Some(row) = rows.next().map_err(|error| error.to_string())? {
            let mut cells = Vec::with_capacity(width);
            for index in 0..width {
                let value = row.get_ref(index).map_err(|error| error.to_string())?;
                cells.push(match value {
                    rusqlite::types::ValueRef::Null => Cell::Null,
                    rusqlite::types::ValueRef::Integer(integer) => Cell::Int(integer),
                    rusqlite::types::ValueRef::Real(real) => Cell::Real(format!("{real:?}")),
                    rusqlite::types::ValueRef::Text(text) => {
                        Cell::Text(String::from_utf8_lossy(text).into_owned())
                    }
                    rusqlite::types::ValueRef::Blob(blob) => Cell::Blob(blob.to_vec()),
                });
            }
            output.push(cells);
        }
        Ok(output)
    }
}

/// PostgreSQL: one fresh DATABASE per role (full / each user's oracle) per test run, because
/// corpus queries schema-qualify `public.orders` and a per-schema copy could not serve them.
/// Query connections are read-only with a statement timeout; everything is dropped at the end.
pub struct PgServer {
    base: postgres::Config,
    admin: Mutex<postgres::Client>,
    created: Mutex<Vec<String>>,
    prefix: String,
}

pub fn pg_url() -> Option<String> {
    std::env::var("DATAGATE_TEST_PG_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

impl PgServer {
    pub fn connect(url: &str, tag: &str) -> PgServer {
        let base: postgres::Config = url
            .parse()
            .unwrap_or_else(|error| panic!("pg url: {error}"));
        let admin = base
            .connect(postgres::NoTls)
            .unwrap_or_else(|error| panic!("pg connect: {error}"));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|duration| duration.as_nanos() % 1_000_000_000)
            .unwrap_or(0);
        PgServer {
            base,
            admin: Mutex::new(admin),
            created: Mutex::new(Vec::new()),
            prefix: format!("dg_rls_{tag}_{}_{nanos}", std::process::id()),
        }
    }

    /// Creates a fresh database with schema + rows and returns a setup connection to it.
    fn create(&self, suffix: &str, schema: &str, rows: &str) -> (String, postgres::Client) {
        let name = format!("{}_{suffix}", self.prefix);
        {
            let mut admin = self
                .admin
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .unwrap_or_else(|error| panic!("create database {name}: {error}"));
        }
        self.created
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(name.clone());
        let mut config = self.base.clone();
        config.dbname(&name);
        let mut client = config
            .connect(postgres::NoTls)
            .unwrap_or_else(|error| panic!("connect {name}: {error}"));
        client
            .batch_execute(schema)
            .unwrap_or_else(|error| panic!("pg schema: {error}"));
        client
            .batch_execute(rows)
            .unwrap_or_else(|error| panic!("pg rows: {error}"));
        (name, client)
    }

    fn reader(&self, name: &str) -> PgDb {
        let mut config = self.base.clone();
        config.dbname(name);
        config.options("-c default_transaction_read_only=on -c statement_timeout=10000");
        let client = config
            .connect(postgres::NoTls)
            .unwrap_or_else(|error| panic!("connect {name}: {error}"));
        PgDb(Mutex::new(client))
    }

    pub fn full(&self, schema: &str, rows: &str) -> PgDb {
        let (name, _setup) = self.create("full", schema, rows);
        self.reader(&name)
    }

    /// Same contract as [`SqliteDb::oracle`].
    pub fn oracle(
        &self,
        suffix: &str,
        schema: &str,
        rows: &str,
        filters: &[CorpusFilter],
        principal: &Principal,
    ) -> PgDb {
        let (name, mut setup) = self.create(suffix, schema, rows);
        for table in protected_tables(filters) {
            match permitted_predicate(filters, principal, &table, PlaceholderStyle::Dollar) {
                Ok(None) => {}
                Ok(Some(predicate)) => {
                    let sql = format!(
                        "DELETE FROM {table} WHERE CASE WHEN ({}) THEN 0 ELSE 1 END = 1",
                        predicate.sql
                    );
                    let owned = pg_params(&predicate.params);
                    let references: Vec<&(dyn postgres::types::ToSql + Sync)> =
                        owned.iter().map(|param| param.as_ref()).collect();
                    setup
                        .execute(&sql, &references)
                        .unwrap_or_else(|error| panic!("pg oracle delete `{sql}`: {error}"));
                }
                Err(_) => setup
                    .batch_execute(&format!("DROP TABLE {table}"))
                    .unwrap_or_else(|error| panic!("pg oracle drop {table}: {error}")),
            }
        }
        drop(setup);
        self.reader(&name)
    }

    pub fn drop_all(&self) {
        let names: Vec<String> = self
            .created
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .drain(..)
            .collect();
        let mut admin = self
            .admin
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for name in names {
            if let Err(error) =
                admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            {
                eprintln!("note: could not drop {name}: {error}");
            }
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.drop_all();
    }
}

pub fn pg_params(params: &[Param]) -> Vec<Box<dyn postgres::types::ToSql + Sync>> {
    params
        .iter()
        .map(|param| -> Box<dyn postgres::types::ToSql + Sync> {
            match param {
                Param::Text(text) => Box::new(text.clone()),
                Param::Int(integer) => Box::new(*integer),
                Param::Real(real) => Box::new(*real),
            }
        })
        .collect()
}

pub struct PgDb(pub Mutex<postgres::Client>);

impl PgDb {
    pub fn setup(&self, sql: &str) {
        let mut client = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        client
            .batch_execute(sql)
            .unwrap_or_else(|error| panic!("pg setup `{sql}`: {error}"));
    }
}

impl Database for PgDb {
    /// Simple-query protocol: every value comes back as text, so every type compares.
    fn run(&self, sql: &str) -> Result<Rows, String> {
        let mut client = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        let result = client.simple_query(sql);
        // A statement that opened a transaction must not poison later queries.
        if !client.is_closed() {
            let _ = client.batch_execute("ROLLBACK");
        }
        let messages = result.map_err(|error| match error.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => error.to_string(),
        })?;
        let mut output = Vec::new();
        for message in messages {
            if let postgres::SimpleQueryMessage::Row(row) = message {
                output.push(
                    (0..row.len())
                        .map(|index| match row.get(index) {
                            Some(text) => Cell::Text(text.to_string()),
                            None => Cell::Null,
                        })
                        .collect(),
                );
            }
        }
        Ok(output)
    }
}

// ---------------------------------------------------------------------------------------
// Executors
// ---------------------------------------------------------------------------------------

/// The system under test when run in-process: the engine's rewrite, then the full database.
pub struct EngineExecutor {
    pub policy: RlsPolicy,
    pub principals: BTreeMap<String, Principal>,
    pub database: Box<dyn Database>,
    pub limits: RewriteLimits,
}

impl EngineExecutor {
    pub fn rewrite(&self, user: &str, sql: &str) -> Result<Rewritten, RlsError> {
        let principal = self
            .principals
            .get(user)
            .unwrap_or_else(|| panic!("unknown user `{user}` in test"));
        self.policy.rewrite(&RewriteRequest {
            datasource_uid: "demo",
            sql,
            principal,
            allow_writes: false,
            limits: self.limits,
        })
    }
}

impl QueryExecutor for EngineExecutor {
    fn query(&self, user: &str, sql: &str) -> Result<Rows, String> {
        // An engine panic is a failure of this case, not the end of the whole run.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.rewrite(user, sql)))
                .map_err(|_| "engine panicked".to_string())?;
        let rewritten =
            outcome.map_err(|error| format!("{REJECTED_PREFIX}{}: {error}", error.kind()))?;
        self.database.run(&rewritten.sql)
    }
}

/// The truth: the original query on the user's oracle database.
pub struct OracleExecutor {
    pub databases: BTreeMap<String, Box<dyn Database>>,
    /// Users with at least one protected table whose predicate cannot be bound.
    pub lacking_values: std::collections::BTreeSet<String>,
}

/// Users for whom some protected table's predicate misses a template value.
pub fn users_lacking_values(
    filters: &[CorpusFilter],
    principals: &BTreeMap<String, Principal>,
) -> std::collections::BTreeSet<String> {
    principals
        .iter()
        .filter(|(_, principal)| {
            protected_tables(filters).iter().any(|table| {
                permitted_predicate(filters, principal, table, PlaceholderStyle::Question).is_err()
            })
        })
        .map(|(name, _)| name.clone())
        .collect()
}

impl QueryExecutor for OracleExecutor {
    fn lacks_template_value(&self, user: &str) -> bool {
        self.lacking_values.contains(user)
    }

    fn query(&self, user: &str, sql: &str) -> Result<Rows, String> {
        let database = self
            .databases
            .get(user)
            .unwrap_or_else(|| panic!("no oracle database for `{user}`"));
        database.run(sql)
    }
}

/// A deliberately broken executor (no filtering) used to prove the harness catches leaks.
pub struct UnfilteredExecutor<'a>(pub &'a dyn Database);

impl QueryExecutor for UnfilteredExecutor<'_> {
    fn query(&self, _user: &str, sql: &str) -> Result<Rows, String> {
        self.0.run(sql)
    }
}

pub struct Fixture {
    pub engine: EngineExecutor,
    pub oracle: OracleExecutor,
    pub full: Box<dyn Database>,
}

pub fn principals(corpus: &Corpus) -> BTreeMap<String, Principal> {
    corpus
        .users
        .iter()
        .map(|(name, user)| (name.clone(), principal(name, user)))
        .collect()
}

pub fn sqlite_fixture(corpus: &Corpus) -> Fixture {
    let tables = protected_tables(&corpus.filters);
    let principals = principals(corpus);
    let lacking_values = users_lacking_values(&corpus.filters, &principals);
    let databases = principals
        .iter()
        .map(|(name, principal)| {
            let database: Box<dyn Database> = Box::new(SqliteDb::oracle(
                &corpus.schema,
                &corpus.rows,
                &corpus.filters,
                principal,
            ));
            (name.clone(), database)
        })
        .collect();
    Fixture {
        engine: EngineExecutor {
            policy: compile_policy(&corpus.filters, Dialect::Sqlite, &tables),
            principals,
            database: Box::new(SqliteDb::full(&corpus.schema, &corpus.rows)),
            limits: RewriteLimits::default(),
        },
        oracle: OracleExecutor {
            databases,
            lacking_values,
        },
        full: Box::new(SqliteDb::full(&corpus.schema, &corpus.rows)),
    }
}

pub fn pg_fixture(server: &PgServer, corpus: &Corpus) -> Fixture {
    let tables = protected_tables(&corpus.filters);
    let principals = principals(corpus);
    let lacking_values = users_lacking_values(&corpus.filters, &principals);
    let databases = principals
        .iter()
        .enumerate()
        .map(|(index, (name, principal))| {
            let database: Box<dyn Database> = Box::new(server.oracle(
                &format!("u{index}"),
                &corpus.schema,
                &corpus.rows,
                &corpus.filters,
                principal,
            ));
            (name.clone(), database)
        })
        .collect();
    let full = server.full(&corpus.schema, &corpus.rows);
    let full_reader = server.reader(&format!("{}_full", server.prefix));
    Fixture {
        engine: EngineExecutor {
            policy: compile_policy(&corpus.filters, Dialect::Postgres, &tables),
            principals,
            database: Box::new(full),
            limits: RewriteLimits::default(),
        },
        oracle: OracleExecutor {
            databases,
            lacking_values,
        },
        full: Box::new(full_reader),
    }
}

// ---------------------------------------------------------------------------------------
// Verdicts
// ---------------------------------------------------------------------------------------

fn sorted(rows: &Rows) -> Rows {
    let mut copy = rows.clone();
    copy.sort();
    copy
}

/// Rows of `got` not matched by a row of `expected` (multiset difference).
pub fn extra_rows(got: &Rows, expected: &Rows) -> Rows {
    let mut remaining = sorted(expected);
    let mut extra = Vec::new();
    for row in sorted(got) {
        match remaining.binary_search(&row) {
            Ok(position) => {
                remaining.remove(position);
            }
            Err(_) => extra.push(row),
        }
    }
    extra
}

pub fn same_rows(got: &Rows, expected: &Rows, ordered: bool) -> bool {
    if ordered {
        got == expected
    } else {
        sorted(got) == sorted(expected)
    }
}

/// Why a case failed; `leak` = the subject returned rows the oracle does not have.
#[derive(Debug, Clone)]
pub struct Failure {
    pub leak: bool,
    pub detail: String,
}

fn short(rows: &Rows) -> String {
    let text = format!("{rows:?}");
    if text.len() > 600 {
        format!(
            "{}… ({} rows)",
            &text[..text
                .char_indices()
                .nth(600)
                .map(|(i, _)| i)
                .unwrap_or(text.len())],
            rows.len()
        )
    } else {
        text
    }
}

/// Judges one query for one user. `expect_kind` is checked for rejected cases.
pub fn judge(
    oracle: &dyn QueryExecutor,
    subject: &dyn QueryExecutor,
    user: &str,
    sql: &str,
    expect: Expect,
    expect_kind: Option<&str>,
    ordered: bool,
) -> Result<(), Failure> {
    let got = subject.query(user, sql);
    if expect == Expect::FailsClosed {
        return match got {
            Err(_) => Ok(()),
            Ok(got_rows) => {
                let expected = oracle.query(user, sql).unwrap_or_default();
                if same_rows(&got_rows, &expected, ordered) {
                    Ok(())
                } else {
                    Err(Failure {
                        leak: !extra_rows(&got_rows, &expected).is_empty(),
                        detail: format!(
                            "known limitation returned rows that differ from the oracle: {}",
                            short(&got_rows)
                        ),
                    })
                }
            }
        };
    }
    match expect {
        Expect::Rejected => match &got {
            Err(error) => match rejection_kind(error) {
                Some(kind) => match expect_kind {
                    Some(wanted) if wanted != kind => Err(Failure {
                        leak: false,
                        detail: format!(
                            "rejected with kind `{kind}`, expected `{wanted}` ({error})"
                        ),
                    }),
                    _ => Ok(()),
                },
                None => Err(Failure {
                    leak: false,
                    detail: format!(
                        "not refused by the policy layer; the database answered: {error}"
                    ),
                }),
            },
            Ok(rows) => Err(Failure {
                leak: true,
                detail: format!(
                    "expected rejection, got {} rows: {}",
                    rows.len(),
                    short(rows)
                ),
            }),
        },
        Expect::FailsClosed => Ok(()),
        Expect::Filtered => {
            let truth = oracle.query(user, sql);
            match (truth, got) {
                (Ok(expected), Ok(got)) => {
                    if same_rows(&got, &expected, ordered) {
                        Ok(())
                    } else {
                        let extra = extra_rows(&got, &expected);
                        let missing = extra_rows(&expected, &got);
                        Err(Failure {
                            leak: !extra.is_empty(),
                            detail: format!(
                                "rows differ: expected {} got {}; extra (LEAKED) {}; missing {}",
                                short(&expected),
                                short(&got),
                                short(&extra),
                                short(&missing)
                            ),
                        })
                    }
                }
                (Ok(_), Err(error))
                    if rejection_kind(&error) == Some("missing_template_value")
                        && oracle.lacks_template_value(user) =>
                {
                    Ok(())
                }
                (Ok(expected), Err(error)) => Err(Failure {
                    leak: false,
                    detail: match rejection_kind(&error) {
                        Some(_) => format!(
                            "over-rejected a valid query ({error}); oracle has {} rows",
                            expected.len()
                        ),
                        None => format!(
                            "rewritten query fails on the database: {error}; oracle has {} rows",
                            expected.len()
                        ),
                    },
                }),
                (Err(_), Err(_)) => Ok(()),
                (Err(oracle_error), Ok(got)) => Err(Failure {
                    leak: !got.is_empty(),
                    detail: format!(
                        "original errors on the oracle ({oracle_error}) but the subject returned {} rows: {}",
                        got.len(),
                        short(&got)
                    ),
                }),
            }
        }
    }
}

/// MariaDB/MySQL through the text protocol (every value arrives as bytes → text).
pub struct MysqlDb(pub Mutex<mysql::Conn>);

pub const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

impl Database for MysqlDb {
    fn run(&self, sql: &str) -> Result<Rows, String> {
        use mysql::prelude::Queryable;
        let mut connection = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        let rows: Vec<mysql::Row> = connection.query(sql).map_err(|error| error.to_string())?;
        Ok(rows
            .into_iter()
            .map(|row| {
                row.unwrap()
                    .into_iter()
                    .map(|value| match value {
                        mysql::Value::NULL => Cell::Null,
                        mysql::Value::Int(integer) => Cell::Int(integer),
                        mysql::Value::Bytes(bytes) => {
                            Cell::Text(String::from_utf8_lossy(&bytes).into_owned())
                        }
                        other => Cell::Text(format!("{other:?}")),
                    })
                    .collect()
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------
// Corpus runner
// ---------------------------------------------------------------------------------------

/// Runs every case of `dialect` against `subject`; returns the failure lines.
/// Size and nesting bombs (`repeat:` cases) run only when `bombs` is set, from their own
/// test binary (`rls_bombs`): a stack overflow aborts the process and would hide every
/// other result.
pub fn run_corpus(
    corpus: &Corpus,
    dialect: Dialect,
    fixture: &Fixture,
    subject: &dyn QueryExecutor,
    bombs: bool,
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in corpus
        .cases
        .iter()
        .filter(|case| case.runs_on(dialect) && case.repeat.is_some() == bombs)
    {
        ran += 1;
        let sql = case.full_sql();
        if case.expect == Expect::Filtered
            && let Err(error) = fixture.oracle.query(&case.user, &sql)
        {
            eprintln!(
                "note: [{dialect:?}] {} errors on the oracle: {error}",
                case.id
            );
        }
        let verdict = judge(
            &fixture.oracle,
            subject,
            &case.user,
            &sql,
            case.expect,
            case.kind.as_deref(),
            case.ordered,
        );
        if let Err(failure) = verdict {
            let shown_sql: String = if sql.len() > 200 {
                format!(
                    "{}… ({} bytes)",
                    &sql[..sql
                        .char_indices()
                        .nth(200)
                        .map(|(i, _)| i)
                        .unwrap_or(sql.len())],
                    sql.len()
                )
            } else {
                sql.clone()
            };
            let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                fixture.engine.rewrite(&case.user, &sql)
            }));
            let rewritten = match attempt {
                Ok(Ok(rewritten)) if rewritten.sql.len() <= 600 => rewritten.sql.to_string(),
                Ok(Ok(rewritten)) => format!("<{} bytes>", rewritten.sql.len()),
                Ok(Err(error)) => format!("<error {}: {error}>", error.kind()),
                Err(_) => "<engine panicked>".to_string(),
            };
            failures.push(format!(
                "[{dialect:?}] {}{} user={:?} expect={:?}\n    sql: {shown_sql}\n    rewritten: {rewritten}\n    {}",
                case.id,
                if failure.leak { " LEAK" } else { "" },
                case.user,
                case.expect,
                failure.detail
            ));
        }
    }
    eprintln!(
        "{dialect:?}: ran {ran} corpus cases, {} failed",
        failures.len()
    );
    failures
}

pub fn assert_no_failures(failures: &[String]) {
    for failure in failures {
        eprintln!("FAIL {failure}");
    }
    let leaks = failures
        .iter()
        .filter(|line| line.contains(" LEAK "))
        .count();
    assert!(
        failures.is_empty(),
        "{} corpus failures ({leaks} leaks); see the FAIL lines above",
        failures.len()
    );
}
