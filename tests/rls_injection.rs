//! Hostile template values: usernames, emails, user ids and claim values full of quotes,
//! escapes, template syntax, placeholders, comments, control characters, Unicode tricks,
//! huge lengths and near-duplicates of other users' values. Every value owns exactly one
//! row; whatever the value, a query must return exactly that row (never another user's,
//! never all rows). Values containing NUL cannot be stored by PostgreSQL: they must be
//! refused or return nothing. Runs on SQLite, and on PostgreSQL with `DATAGATE_TEST_PG_URL`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "rls_support/mod.rs"]
mod support;

use datagate::principal::{Principal, PrincipalKind};
use datagate::rls::{Dialect, FilterType, RewriteLimits, RewriteRequest, RlsPolicy};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use support::{
    Cell, CorpusFilter, Database, MYSQL_URL, MysqlDb, PgServer, PlaceholderStyle, REJECTED_PREFIX,
    SqliteDb, compile_policy, permitted_predicate, pg_params, pg_url, rejection_kind, sqlite_value,
};

const SCHEMA: &str =
    "CREATE TABLE notes (id INTEGER PRIMARY KEY, owner TEXT, email TEXT, tenant TEXT, body TEXT);";

const PIECES: &[&str] = &[
    "'",
    "''",
    "'''",
    "\\",
    "\\'",
    "\\\\'",
    "\"",
    "\"\"",
    "`",
    "{{",
    "}}",
    "{{ current_username() }}",
    "{{ claim('tenant') }}",
    "{% if true %}x{% endif %}",
    "{#",
    "#}",
    "$1",
    "$$",
    "$a$",
    "?",
    "?1",
    ":name",
    "@p",
    "%s",
    "%",
    "_",
    "--",
    "/*",
    "*/",
    ";",
    "\n",
    "\r\n",
    "\t",
    " OR 1=1",
    "' OR '1'='1",
    "') OR ('1'='1",
    "'; DROP TABLE notes; --",
    "\u{202E}",
    "\u{200F}",
    "\u{200B}",
    "\u{FEFF}",
    "مرحبا",
    "שלום",
    "e\u{0301}",
    "🙂",
    "＇",
    "\u{2019}",
    "\u{0}",
    "NULL",
    "alice",
    "ALICE",
    " ",
];

/// Payloads aimed at printers that keep `\'` as-is (sqlparser's literal Display does) and at
/// MySQL, where a trailing backslash escapes the closing quote.
const ATTACKS: &[&str] = &[
    "\\' OR '1'='1",
    "\\' OR owner IS NOT NULL OR '1'='1",
    "\\' OR 1=1 OR '\\",
    "x\\",
    "\\",
    "\\\\",
    "x\\\\'",
    "\\'",
    "\\'' OR ''='",
    "\\' OR ''='",
];

/// Queries every value runs; the last ones complete a break-out started by a value that
/// swallows the wrapper's closing quote (`owner = 'x\') AS notes WHERE body <> '…`).
const QUERIES: &[&str] = &[
    "SELECT id FROM notes",
    "SELECT n.id FROM notes n WHERE n.id IN (SELECT id FROM notes)",
    "SELECT id FROM notes WHERE body <> ' OR 1=1) AS notes -- '",
    "SELECT id FROM notes WHERE body <> ' OR 1=1) notes -- '",
    "SELECT id FROM notes WHERE body <> ' OR 1=1)) AS notes -- '",
];

/// Which principal field carries the hostile value; `roles` = a hostile role name next to
/// the `roles` role, read through `current_user_roles()`.
const KINDS: [&str; 5] = ["username", "email", "claim", "user_id", "roles"];

fn filters() -> Vec<CorpusFilter> {
    let filter = |name: &str, role: &str, clause: &str| CorpusFilter {
        name: name.to_string(),
        filter_type: FilterType::Regular,
        tables: vec!["notes".to_string()],
        roles: vec![role.to_string()],
        group_key: None,
        clause: clause.to_string(),
        description: None,
    };
    vec![
        filter("by_name", "username", "owner = '{{ current_username() }}'"),
        filter("by_email", "email", "email = '{{ current_user_email() }}'"),
        filter("by_claim", "claim", "tenant = {{ claim('tenant') }}"),
        filter("by_id", "user_id", "owner = '{{ current_user_id() }}'"),
        filter(
            "by_roles",
            "roles",
            "tenant IN ({{ current_user_roles() }})",
        ),
        // Everyone without one of the roles above sees nothing.
        CorpusFilter {
            filter_type: FilterType::Base,
            roles: KINDS.iter().map(|kind| kind.to_string()).collect(),
            ..filter("deny_default", "", "1 = 0")
        },
    ]
}

fn hostile_values() -> Vec<String> {
    let mut values: Vec<String> = ATTACKS.iter().map(|attack| attack.to_string()).collect();
    for piece in PIECES {
        values.push(piece.to_string());
        values.push(format!("alice{piece}"));
        values.push(format!("{piece}alice"));
        values.push(format!("a{piece}b{piece}c"));
    }
    for first in PIECES.iter().take(32) {
        for second in PIECES.iter().take(24) {
            values.push(format!("{first}{second}"));
        }
    }
    for base in ["alice", "bob", "O'Brien"] {
        values.push(base.to_uppercase());
        values.push(format!(" {base}"));
        values.push(format!("{base} "));
        values.push(format!("{base}\t"));
        values.push(format!("{base}\n"));
        values.push(base.to_string());
    }
    for length in [1_000, 10_000, 100_000] {
        values.push("'".repeat(length));
        values.push("\\'".repeat(length / 2));
        values.push(format!("{}x", "a".repeat(length)));
    }
    // proptest-generated mixtures of the pieces and arbitrary characters.
    let strategy = proptest::collection::vec(
        prop_oneof![
            proptest::sample::select(PIECES.to_vec()).prop_map(str::to_string),
            any::<char>().prop_map(String::from)
        ],
        1..10,
    )
    .prop_map(|parts| parts.concat());
    let mut runner = TestRunner::deterministic();
    for _ in 0..400 {
        if let Ok(tree) = strategy.new_tree(&mut runner) {
            values.push(tree.current());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    values.retain(|value| seen.insert(value.clone()));
    values
}

fn principal_for(kind: &str, value: &str) -> Principal {
    let mut principal = Principal {
        kind: PrincipalKind::User,
        username: format!("{kind}_user"),
        user_id: None,
        email: None,
        roles: vec![kind.to_string()],
        teams: Vec::new(),
        basic_role: None,
        claims: Default::default(),
    };
    match kind {
        "username" => principal.username = value.to_string(),
        "email" => principal.email = Some(value.to_string()),
        "claim" => {
            std::sync::Arc::make_mut(&mut principal.claims).insert(
                "tenant".into(),
                serde_json::Value::String(value.to_string()),
            );
        }
        "roles" => principal.roles.push(value.to_string()),
        _ => principal.user_id = Some(value.to_string()),
    }
    principal
}

/// Row i (id = i + 1) belongs to value i; NUL values get no row (PostgreSQL cannot store them).
fn storable(value: &str) -> bool {
    !value.contains('\u{0}')
}

struct Outcome {
    checked: usize,
    refused_nul: usize,
    failures: Vec<String>,
}

fn run(
    dialect: Dialect,
    values: &[String],
    database: &dyn Database,
    reference: &dyn Fn(&Principal) -> Result<Vec<i64>, String>,
) -> Outcome {
    let filters = filters();
    let policy: RlsPolicy = compile_policy(&filters, dialect, &["notes".to_string()]);
    let mut outcome = Outcome {
        checked: 0,
        refused_nul: 0,
        failures: Vec::new(),
    };
    for (index, value) in values.iter().enumerate() {
        for kind in KINDS {
            let principal = principal_for(kind, value);
            let expected: Vec<i64> = if storable(value) {
                vec![index as i64 + 1]
            } else {
                Vec::new()
            };
            for &sql in QUERIES {
                outcome.checked += 1;
                let shown: String = format!("{value:?}").chars().take(80).collect();
                let request = RewriteRequest {
                    datasource_uid: "demo",
                    sql,
                    principal: &principal,
                    allow_writes: false,
                    limits: RewriteLimits::default(),
                };
                let result = policy
                    .rewrite(&request)
                    .map_err(|error| format!("{REJECTED_PREFIX}{}: {error}", error.kind()))
                    .and_then(|rewritten| database.run(&rewritten.sql));
                match result {
                    Err(error) if rejection_kind(&error).is_some() => {
                        if storable(value) {
                            outcome.failures.push(format!(
                                "[{dialect:?}] {kind}={shown}: refused a harmless value: {error}"
                            ));
                        } else {
                            outcome.refused_nul += 1;
                        }
                    }
                    Err(error) => {
                        if storable(value) {
                            outcome.failures.push(format!(
                                "[{dialect:?}] {kind}={shown}: rewritten query fails: {error}"
                            ));
                        }
                    }
                    Ok(rows) => {
                        let mut got: Vec<i64> = rows
                            .iter()
                            .map(|row| match row.first() {
                                Some(Cell::Int(id)) => *id,
                                Some(Cell::Text(text)) => text.parse().unwrap_or(-1),
                                _ => -1,
                            })
                            .collect();
                        got.sort_unstable();
                        if got != expected {
                            let leak = got.iter().any(|id| !expected.contains(id));
                            outcome.failures.push(format!(
                                "[{dialect:?}] {kind}={shown}{}: sql `{sql}` expected {expected:?} got {} rows {:?}",
                                if leak { " LEAK" } else { "" },
                                got.len(),
                                got.iter().take(10).collect::<Vec<_>>()
                            ));
                        }
                    }
                }
            }
            // The independent reference (parameter-bound predicate) must agree with the
            // by-construction expectation, or the test itself is wrong.
            if storable(value) && kind == "username" {
                let reference_rows = reference(&principal);
                if reference_rows.as_ref() != Ok(&expected) {
                    outcome.failures.push(format!(
                        "[{dialect:?}] reference disagrees for {value:?}: {reference_rows:?}"
                    ));
                }
            }
        }
    }
    outcome
}

fn report(dialect: Dialect, values: &[String], outcome: &Outcome) {
    eprintln!(
        "{dialect:?}: {} hostile values, {} queries checked, {} NUL values refused, {} failures",
        values.len(),
        outcome.checked,
        outcome.refused_nul,
        outcome.failures.len()
    );
    for failure in outcome.failures.iter().take(60) {
        eprintln!("FAIL {failure}");
    }
    let leaks = outcome
        .failures
        .iter()
        .filter(|line| line.contains(" LEAK"))
        .count();
    let reference_errors = outcome
        .failures
        .iter()
        .filter(|line| line.contains("reference disagrees"))
        .count();
    assert_eq!(
        reference_errors, 0,
        "the reference oracle itself disagrees with the construction"
    );
    assert!(
        outcome.failures.is_empty(),
        "{} injection failures ({leaks} leaks)",
        outcome.failures.len()
    );
}

#[test]
fn hostile_values_are_many_and_distinct() {
    let values = hostile_values();
    assert!(values.len() >= 1000, "only {} hostile values", values.len());
    assert!(values.iter().any(|value| value.contains('\u{0}')));
    assert!(values.iter().any(|value| value.len() >= 100_000));
}

#[test]
fn hostile_values_on_sqlite() {
    let values = hostile_values();
    let connection =
        rusqlite::Connection::open_in_memory().unwrap_or_else(|error| panic!("{error}"));
    connection
        .execute_batch(SCHEMA)
        .unwrap_or_else(|error| panic!("{error}"));
    {
        let mut insert = connection
            .prepare("INSERT INTO notes VALUES (?1, ?2, ?2, ?2, 'body')")
            .unwrap_or_else(|error| panic!("{error}"));
        for (index, value) in values
            .iter()
            .enumerate()
            .filter(|(_, value)| storable(value))
        {
            insert
                .execute(rusqlite::params![index as i64 + 1, value])
                .unwrap_or_else(|error| panic!("{error}"));
        }
    }
    connection
        .execute_batch("PRAGMA query_only = ON;")
        .unwrap_or_else(|error| panic!("{error}"));
    let database = SqliteDb(connection);
    let filters = filters();
    let reference = |principal: &Principal| -> Result<Vec<i64>, String> {
        let predicate =
            permitted_predicate(&filters, principal, "notes", PlaceholderStyle::Question)
                .map_err(|missing| missing.0)?
                .ok_or("no predicate")?;
        let mut statement = database
            .0
            .prepare(&format!(
                "SELECT id FROM notes WHERE {} ORDER BY id",
                predicate.sql
            ))
            .map_err(|error| error.to_string())?;
        let params: Vec<rusqlite::types::Value> =
            predicate.params.iter().map(sqlite_value).collect();
        let ids = statement
            .query_map(rusqlite::params_from_iter(params), |row| {
                row.get::<_, i64>(0)
            })
            .map_err(|error| error.to_string())?
            .collect::<Result<Vec<i64>, _>>()
            .map_err(|error| error.to_string())?;
        Ok(ids)
    };
    let outcome = run(Dialect::Sqlite, &values, &database, &reference);
    report(Dialect::Sqlite, &values, &outcome);
}

#[test]
fn hostile_values_on_postgres() {
    let Some(url) = pg_url() else {
        eprintln!("note: DATAGATE_TEST_PG_URL is unset; PostgreSQL injection test skipped");
        return;
    };
    let values = hostile_values();
    let server = PgServer::connect(&url, "inj");
    let database = server.full(SCHEMA, "SELECT 1;");
    {
        let mut client = database
            .0
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        client
            .batch_execute("SET default_transaction_read_only = off")
            .unwrap_or_else(|error| panic!("{error}"));
        let insert = client
            .prepare("INSERT INTO notes VALUES ($1, $2, $2, $2, 'body')")
            .unwrap_or_else(|error| panic!("{error}"));
        for (index, value) in values
            .iter()
            .enumerate()
            .filter(|(_, value)| storable(value))
        {
            client
                .execute(&insert, &[&(index as i32 + 1), value])
                .unwrap_or_else(|error| panic!("{error}"));
        }
        client
            .batch_execute("SET default_transaction_read_only = on")
            .unwrap_or_else(|error| panic!("{error}"));
    }
    let filters = filters();
    let reference = |principal: &Principal| -> Result<Vec<i64>, String> {
        let predicate = permitted_predicate(&filters, principal, "notes", PlaceholderStyle::Dollar)
            .map_err(|missing| missing.0)?
            .ok_or("no predicate")?;
        let owned = pg_params(&predicate.params);
        let references: Vec<&(dyn postgres::types::ToSql + Sync)> =
            owned.iter().map(|param| param.as_ref()).collect();
        let mut client = database
            .0
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let rows = client
            .query(
                &format!(
                    "SELECT id::bigint FROM notes WHERE {} ORDER BY id",
                    predicate.sql
                ),
                &references,
            )
            .map_err(|error| error.to_string())?;
        Ok(rows.iter().map(|row| row.get::<_, i64>(0)).collect())
    };
    let outcome = run(Dialect::Postgres, &values, &database, &reference);
    drop(database);
    server.drop_all();
    report(Dialect::Postgres, &values, &outcome);
}

/// MariaDB at 127.0.0.1:3306 (root, no password), optional: backslash escapes are ON in
/// MySQL string literals, so `\'` in a value is the classic break-out.
#[test]
fn hostile_values_on_mysql() {
    use mysql::prelude::Queryable;
    let Ok(mut admin) = mysql::Conn::new(mysql::Opts::from_url(MYSQL_URL).unwrap()) else {
        eprintln!("note: MariaDB is not reachable at 127.0.0.1:3306; MySQL injection test skipped");
        return;
    };
    let name = format!("dg_rls_inj_{}", std::process::id());
    admin.query_drop(format!("CREATE DATABASE {name}")).unwrap();
    let options = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(MYSQL_URL).unwrap())
        .db_name(Some(name.clone()));
    let mut connection = mysql::Conn::new(options).unwrap();
    connection.query_drop("SET NAMES utf8mb4").unwrap();
    // Binary columns: byte-exact comparison (the default collations fold case and pad spaces).
    connection
        .query_drop("CREATE TABLE notes (id INT PRIMARY KEY, owner LONGBLOB, email LONGBLOB, tenant LONGBLOB, body TEXT)")
        .unwrap();
    let values = hostile_values();
    for (index, value) in values
        .iter()
        .enumerate()
        .filter(|(_, value)| storable(value))
    {
        connection
            .exec_drop(
                "INSERT INTO notes VALUES (?, ?, ?, ?, 'body')",
                (index as i64 + 1, value, value, value),
            )
            .unwrap();
    }
    let database = MysqlDb(std::sync::Mutex::new(connection));
    let filters = filters();
    let reference = |principal: &Principal| -> Result<Vec<i64>, String> {
        let predicate =
            permitted_predicate(&filters, principal, "notes", PlaceholderStyle::Question)
                .map_err(|missing| missing.0)?
                .ok_or("no predicate")?;
        let params: Vec<mysql::Value> = predicate
            .params
            .iter()
            .map(|param| match param {
                support::Param::Text(text) => mysql::Value::from(text.as_str()),
                support::Param::Int(integer) => mysql::Value::from(*integer),
                support::Param::Real(real) => mysql::Value::from(*real),
            })
            .collect();
        let mut connection = database
            .0
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        connection
            .exec::<i64, _, _>(
                format!("SELECT id FROM notes WHERE {} ORDER BY id", predicate.sql),
                params,
            )
            .map_err(|error| error.to_string())
    };
    let outcome = run(Dialect::Mysql, &values, &database, &reference);
    drop(database);
    admin.query_drop(format!("DROP DATABASE {name}")).unwrap();
    report(Dialect::Mysql, &values, &outcome);
}
