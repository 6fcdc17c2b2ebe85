//! Generated queries against the RLS oracle: random SELECTs over the corpus schema (joins
//! incl. LEFT, subqueries in several clauses, set operations, CTEs incl. ones shadowing
//! protected names, aggregates with GROUP BY/HAVING, DISTINCT, ORDER BY/LIMIT) for random
//! users. The original must run on the full database (else it is discarded and
//! regenerated); then the engine's rewrite on the full database must return exactly the
//! rows the original returns on the user's oracle database.
//!
//! Counts: `DATAGATE_RLS_GENERATED_CASES` (default 10 000 on SQLite) and
//! `DATAGATE_RLS_GENERATED_PG_CASES` (default 1 500, only with `DATAGATE_TEST_PG_URL`);
//! `DATAGATE_RLS_SHOW_DISCARDS=1` prints why each discarded query failed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "rls_support/mod.rs"]
mod support;

use std::cell::RefCell;

use datagate::rls::Dialect;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use support::{
    Corpus, Expect, Fixture, PgServer, judge, load_corpus, manifest_path, pg_fixture, pg_url,
    sqlite_fixture,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Type {
    Int,
    Real,
    Text,
}

struct TableInfo {
    name: &'static str,
    columns: &'static [(&'static str, Type)],
}

const TABLES: &[TableInfo] = &[
    TableInfo {
        name: "orders",
        columns: &[
            ("id", Type::Int),
            ("tenant_id", Type::Text),
            ("customer_id", Type::Int),
            ("amount", Type::Real),
            ("note", Type::Text),
            ("region", Type::Text),
            ("parent", Type::Int),
        ],
    },
    TableInfo {
        name: "customers",
        columns: &[
            ("id", Type::Int),
            ("name", Type::Text),
            ("region", Type::Text),
        ],
    },
    TableInfo {
        name: "posts",
        columns: &[("id", Type::Int), ("title", Type::Text)],
    },
    TableInfo {
        name: "tickets",
        columns: &[
            ("id", Type::Int),
            ("owner_email", Type::Text),
            ("owner_uid", Type::Text),
            ("dept", Type::Text),
            ("level", Type::Text),
        ],
    },
    TableInfo {
        name: "order_items",
        columns: &[
            ("id", Type::Int),
            ("order_id", Type::Int),
            ("sku", Type::Text),
            ("qty", Type::Int),
        ],
    },
    TableInfo {
        name: "audit_log",
        columns: &[
            ("id", Type::Int),
            ("\"user\"", Type::Text),
            ("\"select\"", Type::Text),
        ],
    },
    TableInfo {
        name: "secrets",
        columns: &[("id", Type::Int), ("val", Type::Text)],
    },
];

const TEXT_LITERALS: &[&str] = &[
    "alice",
    "bob",
    "EU",
    "US",
    "internal",
    "Support",
    "Sales",
    "low",
    "secret",
    "Acme",
    "O''Brien",
    "dave@x.org",
    "42",
];

/// A FROM item with the columns visible through its alias.
struct Source {
    sql: String,
    alias: String,
    columns: Vec<(String, Type)>,
}

struct Generator {
    state: u64,
    next_alias: usize,
    dialect: Dialect,
    /// CTE names in scope with their (c0 Int, c1 Text) shape.
    ctes: Vec<String>,
}

impl Generator {
    fn new(seed: u64, dialect: Dialect) -> Generator {
        Generator {
            state: seed | 1,
            next_alias: 0,
            dialect,
            ctes: Vec::new(),
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic from the proptest seed, so failures reproduce.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn alias(&mut self) -> String {
        self.next_alias += 1;
        format!("t{}", self.next_alias)
    }

    fn table_name(&mut self, table: &TableInfo) -> String {
        match self.below(8) {
            0 => table.name.to_uppercase(),
            1 => format!("\"{}\"", table.name),
            2 => match self.dialect {
                Dialect::Postgres => format!("public.{}", table.name),
                _ => format!("main.{}", table.name),
            },
            _ => table.name.to_string(),
        }
    }

    fn table_source(&mut self) -> Source {
        let table = &TABLES[self.below(TABLES.len())];
        let name = self.table_name(table);
        let alias = self.alias();
        Source {
            sql: format!("{name} {alias}"),
            alias,
            columns: table
                .columns
                .iter()
                .map(|(column, ty)| (column.to_string(), *ty))
                .collect(),
        }
    }

    fn source(&mut self, depth: usize) -> Source {
        let roll = self.below(10);
        if roll == 0 && depth < 2 {
            let alias = self.alias();
            let inner = self.pair_select(depth + 1);
            return Source {
                sql: format!("({inner}) {alias}"),
                alias,
                columns: vec![("c0".into(), Type::Int), ("c1".into(), Type::Text)],
            };
        }
        if roll == 1 && !self.ctes.is_empty() {
            let pick = self.below(self.ctes.len());
            let name = self.ctes[pick].clone();
            let alias = self.alias();
            return Source {
                sql: format!("{name} {alias}"),
                alias,
                columns: vec![("c0".into(), Type::Int), ("c1".into(), Type::Text)],
            };
        }
        self.table_source()
    }

    fn column(&mut self, sources: &[Source], wanted: Option<Type>) -> Option<(String, Type)> {
        let candidates: Vec<(String, Type)> = sources
            .iter()
            .flat_map(|source| {
                source
                    .columns
                    .iter()
                    .filter(|(_, ty)| wanted.is_none_or(|wanted| wanted == *ty))
                    .map(|(column, ty)| (format!("{}.{column}", source.alias), *ty))
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.below(candidates.len())].clone())
    }

    fn protected_subquery_table(&mut self) -> (&'static TableInfo, String) {
        let table = &TABLES[self.below(TABLES.len())];
        let name = self.table_name(table);
        (table, name)
    }

    fn predicate(&mut self, sources: &[Source], depth: usize) -> String {
        let roll = self.below(if depth < 2 { 12 } else { 7 });
        match roll {
            0 | 1 => match self.column(sources, Some(Type::Int)) {
                Some((column, _)) => format!(
                    "{column} {} {}",
                    ["<", ">", "=", "<>"][self.below(4)],
                    self.below(12)
                ),
                None => "1 = 1".into(),
            },
            2 | 3 => match self.column(sources, Some(Type::Text)) {
                Some((column, _)) => {
                    let literal = TEXT_LITERALS[self.below(TEXT_LITERALS.len())];
                    format!("{column} {} '{literal}'", ["=", "<>", ">"][self.below(3)])
                }
                None => "1 = 1".into(),
            },
            4 => match self.column(sources, None) {
                Some((column, _)) => format!(
                    "{column} IS {}NULL",
                    if self.chance(50) { "NOT " } else { "" }
                ),
                None => "1 = 1".into(),
            },
            5 => match self.column(sources, Some(Type::Real)) {
                Some((column, _)) => format!("{column} > {}", [0, 50, 100, 1000][self.below(4)]),
                None => "1 = 0".into(),
            },
            6 => format!(
                "({} {} {})",
                self.predicate(sources, depth + 1),
                ["AND", "OR"][self.below(2)],
                self.predicate(sources, depth + 1)
            ),
            7 | 8 => {
                let Some((outer, _)) = self.column(sources, Some(Type::Int)) else {
                    return "1 = 1".into();
                };
                let (table, name) = self.protected_subquery_table();
                let alias = self.alias();
                let inner_column = table
                    .columns
                    .iter()
                    .filter(|(_, ty)| *ty == Type::Int)
                    .nth(self.below(2))
                    .or(table.columns.first())
                    .map(|(c, _)| *c)
                    .unwrap_or("id");
                let inner_source = Source {
                    sql: String::new(),
                    alias: alias.clone(),
                    columns: table
                        .columns
                        .iter()
                        .map(|(c, t)| (c.to_string(), *t))
                        .collect(),
                };
                let filter = self.predicate(&[inner_source], depth + 1);
                format!(
                    "{outer} {}IN (SELECT {alias}.{inner_column} FROM {name} {alias} WHERE {filter})",
                    if self.chance(25) { "NOT " } else { "" }
                )
            }
            9 | 10 => {
                let Some((outer, _)) = self.column(sources, Some(Type::Int)) else {
                    return "1 = 1".into();
                };
                let (table, name) = self.protected_subquery_table();
                let alias = self.alias();
                let inner_column = table
                    .columns
                    .iter()
                    .rfind(|(_, ty)| *ty == Type::Int)
                    .map(|(c, _)| *c)
                    .unwrap_or("id");
                format!(
                    "{}EXISTS (SELECT 1 FROM {name} {alias} WHERE {alias}.{inner_column} = {outer})",
                    if self.chance(30) { "NOT " } else { "" }
                )
            }
            _ => {
                let Some((outer, _)) = self.column(sources, Some(Type::Int)) else {
                    return "1 = 1".into();
                };
                let (_, name) = self.protected_subquery_table();
                format!("{outer} <= (SELECT count(*) FROM {name})")
            }
        }
    }

    /// FROM clause with 1–3 sources and joins.
    fn join_tree(&mut self, depth: usize) -> (String, Vec<Source>) {
        let first = self.source(depth);
        let mut sql = first.sql.clone();
        let mut sources = vec![first];
        let joins = match self.below(10) {
            0..=4 => 0,
            5..=8 => 1,
            _ => 2,
        };
        for _ in 0..joins {
            let next = self.source(depth);
            let left = self.column(&sources, Some(Type::Int));
            let right = self.column(std::slice::from_ref(&next), Some(Type::Int));
            let kind = [
                "JOIN",
                "LEFT JOIN",
                "INNER JOIN",
                "CROSS JOIN",
                "LEFT OUTER JOIN",
                "RIGHT JOIN",
                "FULL OUTER JOIN",
            ][self.below(7)];
            match (kind, left, right) {
                ("CROSS JOIN", _, _) | (_, None, _) | (_, _, None) => {
                    sql.push_str(&format!(" CROSS JOIN {}", next.sql));
                }
                (kind, Some((left, _)), Some((right, _))) => {
                    sql.push_str(&format!(" {kind} {} ON {left} = {right}", next.sql));
                }
            }
            sources.push(next);
        }
        (sql, sources)
    }

    /// SELECT with output (c0 Int, c1 Text): usable in set operations, CTEs, derived tables.
    fn pair_select(&mut self, depth: usize) -> String {
        let (from, sources) = self.join_tree(depth);
        let int = self
            .column(&sources, Some(Type::Int))
            .map(|(c, _)| c)
            .unwrap_or_else(|| "0".into());
        let text = self
            .column(&sources, Some(Type::Text))
            .map(|(c, _)| c)
            .unwrap_or_else(|| "'x'".into());
        let mut sql = format!(
            "SELECT {}{int} AS c0, {text} AS c1 FROM {from}",
            if self.chance(15) { "DISTINCT " } else { "" }
        );
        if self.chance(60) {
            sql.push_str(&format!(" WHERE {}", self.predicate(&sources, depth)));
        }
        sql
    }

    fn top_query(&mut self) -> (String, bool) {
        let mut prefix = String::new();
        if self.chance(25) {
            let names = ["orders", "customers", "tickets", "cte_a", "ORDERS"];
            let name = names[self.below(names.len())].to_string();
            let body = self.pair_select(1);
            prefix = format!("WITH {name} AS ({body}) ");
            self.ctes.push(name);
        }
        let forms = if prefix.is_empty() { 7 } else { 6 };
        let body = match self.below(forms) {
            0 | 1 => {
                let (from, sources) = self.join_tree(0);
                let mut projection = Vec::new();
                for index in 0..(1 + self.below(3)) {
                    if self.chance(15) {
                        let (table, name) = self.protected_subquery_table();
                        let alias = self.alias();
                        let inner_int = table
                            .columns
                            .iter()
                            .rfind(|(_, ty)| *ty == Type::Int)
                            .map(|(c, _)| *c)
                            .unwrap_or("id");
                        let outer = self
                            .column(&sources, Some(Type::Int))
                            .map(|(c, _)| c)
                            .unwrap_or_else(|| "0".into());
                        projection.push(format!("(SELECT count(*) FROM {name} {alias} WHERE {alias}.{inner_int} = {outer}) AS c{index}"));
                    } else if let Some((column, _)) = self.column(&sources, None) {
                        projection.push(format!("{column} AS c{index}"));
                    }
                }
                let distinct = if self.chance(15) { "DISTINCT " } else { "" };
                let mut sql = format!("SELECT {distinct}{} FROM {from}", projection.join(", "));
                if self.chance(70) {
                    sql.push_str(&format!(" WHERE {}", self.predicate(&sources, 0)));
                }
                if self.chance(30) {
                    let order: Vec<String> = (1..=projection.len())
                        .map(|position| position.to_string())
                        .collect();
                    sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
                    if self.chance(70) {
                        sql.push_str(&format!(" LIMIT {}", 1 + self.below(5)));
                        if self.chance(30) {
                            sql.push_str(&format!(" OFFSET {}", self.below(3)));
                        }
                    }
                }
                sql
            }
            2 => {
                let (from, sources) = self.join_tree(0);
                let key = self
                    .column(&sources, None)
                    .map(|(c, _)| c)
                    .unwrap_or_else(|| "1".into());
                let measure = match self
                    .column(&sources, Some(Type::Real))
                    .or_else(|| self.column(&sources, Some(Type::Int)))
                {
                    Some((column, _)) => format!("sum({column})"),
                    None => "count(*)".into(),
                };
                let mut sql =
                    format!("SELECT {key} AS c0, count(*) AS c1, {measure} AS c2 FROM {from}");
                if self.chance(50) {
                    sql.push_str(&format!(" WHERE {}", self.predicate(&sources, 0)));
                }
                sql.push_str(&format!(" GROUP BY {key}"));
                if self.chance(40) {
                    sql.push_str(&format!(" HAVING count(*) > {}", self.below(3)));
                } else if self.chance(30) {
                    let (_, name) = self.protected_subquery_table();
                    sql.push_str(&format!(
                        " HAVING count(*) * 3 >= (SELECT count(*) FROM {name})"
                    ));
                }
                if self.chance(20) {
                    let (_, name) = self.protected_subquery_table();
                    sql.push_str(&format!(
                        " ORDER BY (SELECT count(*) FROM {name}), 1, 2, 3 LIMIT {}",
                        1 + self.below(4)
                    ));
                }
                sql
            }
            3 | 4 => {
                let left = self.pair_select(0);
                let right = self.pair_select(0);
                let operator = ["UNION", "UNION ALL", "INTERSECT", "EXCEPT"][self.below(4)];
                let mut sql = format!("{left} {operator} {right}");
                if self.chance(20) {
                    sql.push_str(&format!(" ORDER BY 1, 2 LIMIT {}", 1 + self.below(4)));
                }
                sql
            }
            5 => {
                let inner = self.pair_select(1);
                let alias = self.alias();
                format!(
                    "SELECT {alias}.c0, count(*) AS n FROM ({inner}) {alias} GROUP BY {alias}.c0"
                )
            }
            _ => {
                // Recursive CTE: the anchor and the recursive term both read tables.
                let anchor = self.pair_select(1);
                let (table, name) = self.protected_subquery_table();
                let int = table
                    .columns
                    .iter()
                    .rfind(|(_, ty)| *ty == Type::Int)
                    .map(|(column, _)| *column)
                    .unwrap_or("id");
                let step = self.alias();
                format!(
                    "WITH RECURSIVE walk(c0, c1) AS ({anchor} UNION SELECT {step}.id, walk.c1 FROM walk JOIN {name} {step} ON {step}.{int} = walk.c0) SELECT c0, c1 FROM walk"
                )
            }
        };
        (format!("{prefix}{body}"), false)
    }
}

struct Tally {
    accepted: usize,
    discarded: usize,
    failures: Vec<String>,
    failing_queries: usize,
}

fn run_generated(corpus: &Corpus, fixture: &Fixture, dialect: Dialect, cases: u32) -> Tally {
    let users: Vec<String> = corpus.users.keys().cloned().collect();
    let tally = RefCell::new(Tally {
        accepted: 0,
        discarded: 0,
        failures: Vec::new(),
        failing_queries: 0,
    });
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    });
    let strategy = (0..users.len(), any::<u64>());
    let show_discards = std::env::var("DATAGATE_RLS_SHOW_DISCARDS").is_ok();
    let outcome = runner.run(&strategy, |(user_index, seed)| {
        let user = &users[user_index];
        let mut tally = tally.borrow_mut();
        for attempt in 0..50u64 {
            let mut generator = Generator::new(seed.wrapping_add(attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15)), dialect);
            let (sql, _) = generator.top_query();
            if let Err(error) = fixture.full.run(&sql) {
                if show_discards {
                    eprintln!("discard [{dialect:?}]: {error}\n    {sql}");
                }
                tally.discarded += 1;
                continue;
            }
            tally.accepted += 1;
            if let Err(failure) = judge(&fixture.oracle, &fixture.engine, user, &sql, Expect::Filtered, None, false) {
                tally.failing_queries += 1;
                if tally.failures.len() < 40 {
                    let rewritten = match fixture.engine.rewrite(user, &sql) {
                        Ok(rewritten) => rewritten.sql.to_string(),
                        Err(error) => format!("<error {}: {error}>", error.kind()),
                    };
                    tally.failures.push(format!(
                        "[{dialect:?}]{} user={user:?}\n    sql: {sql}\n    rewritten: {rewritten}\n    {}",
                        if failure.leak { " LEAK" } else { "" },
                        failure.detail
                    ));
                }
            }
            break;
        }
        Ok(())
    });
    if let Err(error) = outcome {
        panic!("runner error: {error}");
    }
    tally.into_inner()
}

fn case_count(variable: &str, default: u32) -> u32 {
    std::env::var(variable)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn report(tally: &Tally, dialect: Dialect) {
    eprintln!(
        "{dialect:?}: {} generated queries judged, {} discarded (invalid on the database), {} failed",
        tally.accepted, tally.discarded, tally.failing_queries
    );
    for failure in &tally.failures {
        eprintln!("FAIL {failure}");
    }
    let leaks = tally
        .failures
        .iter()
        .filter(|line| line.contains(" LEAK "))
        .count();
    assert!(
        tally.failing_queries == 0,
        "{} of {} generated queries failed ({leaks} leaks among the first {} shown)",
        tally.failing_queries,
        tally.accepted,
        tally.failures.len()
    );
}

#[test]
fn generated_queries_on_sqlite() {
    let corpus = load_corpus(&manifest_path("tests/rls/corpus.yaml"));
    let fixture = sqlite_fixture(&corpus);
    let cases = case_count("DATAGATE_RLS_GENERATED_CASES", 10_000);
    let tally = run_generated(&corpus, &fixture, Dialect::Sqlite, cases);
    assert!(
        tally.accepted as u32 == cases,
        "only {} of {cases} accepted",
        tally.accepted
    );
    report(&tally, Dialect::Sqlite);
}

#[test]
fn generated_queries_on_postgres() {
    let Some(url) = pg_url() else {
        eprintln!("note: DATAGATE_TEST_PG_URL is unset; PostgreSQL generated queries skipped");
        return;
    };
    let corpus = load_corpus(&manifest_path("tests/rls/corpus.yaml"));
    let server = PgServer::connect(&url, "gen");
    let fixture = pg_fixture(&server, &corpus);
    let tally = run_generated(
        &corpus,
        &fixture,
        Dialect::Postgres,
        case_count("DATAGATE_RLS_GENERATED_PG_CASES", 1_500),
    );
    drop(fixture);
    server.drop_all();
    report(&tally, Dialect::Postgres);
}

/// The generator must produce the structures it claims, or the oracle checks little.
#[test]
fn generator_covers_the_techniques() {
    let mut seen = [0usize; 13];
    let needles = [
        "WITH RECURSIVE",
        "RIGHT JOIN",
        "FULL OUTER JOIN",
        "HAVING",
        "JOIN",
        "LEFT",
        "IN (SELECT",
        "EXISTS",
        "UNION",
        "WITH ",
        "GROUP BY",
        "LIMIT",
        "(SELECT count(*)",
    ];
    for seed in 0..3000u64 {
        let (sql, _) = Generator::new(seed * 7919 + 1, Dialect::Sqlite).top_query();
        for (index, needle) in needles.iter().enumerate() {
            if sql.contains(needle) {
                seen[index] += 1;
            }
        }
    }
    for (needle, count) in needles.iter().zip(seen) {
        assert!(
            count >= 50,
            "generator rarely emits `{needle}` ({count}/3000)"
        );
    }
}
