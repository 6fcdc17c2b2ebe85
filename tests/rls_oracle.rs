//! RLS oracle over the adversarial corpus (`tests/rls/corpus.yaml`).
//!
//! For every case and dialect: the ORIGINAL query on the user's oracle database (protected
//! tables hold only the permitted rows, computed by the reference semantics in
//! `support`) must return the same rows as the engine's REWRITTEN query on the full
//! database. Rejected cases must be refused by the policy layer with the expected kind.
//! PostgreSQL runs when `DATAGATE_TEST_PG_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "rls_support/mod.rs"]
mod support;

use datagate::rls::Dialect;
use support::{
    Corpus, Database, PgServer, QueryExecutor, UnfilteredExecutor, assert_no_failures, load_corpus,
    manifest_path, pg_fixture, pg_url, run_corpus, sqlite_fixture,
};

fn corpus() -> Corpus {
    load_corpus(&manifest_path("tests/rls/corpus.yaml"))
}

#[test]
fn corpus_is_large_and_contains_every_public_case() {
    let corpus = corpus();
    let sqlite = corpus
        .cases
        .iter()
        .filter(|case| case.runs_on(Dialect::Sqlite))
        .count();
    let postgres = corpus
        .cases
        .iter()
        .filter(|case| case.runs_on(Dialect::Postgres))
        .count();
    assert!(sqlite + postgres >= 120, "only {sqlite} + {postgres} cases");
    let mut ids: Vec<&str> = corpus.cases.iter().map(|case| case.id.as_str()).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "duplicate case ids");
    for user in corpus.cases.iter().map(|case| &case.user) {
        assert!(
            corpus.users.contains_key(user),
            "case user `{user}` is not defined"
        );
    }
    let public = load_corpus(&manifest_path("tests/rls/public-corpus.yaml"));
    for case in &public.cases {
        let ours = corpus.cases.iter().find(|mine| mine.id == case.id);
        let ours = ours.unwrap_or_else(|| panic!("public case `{}` missing", case.id));
        assert_eq!(ours.sql, case.sql, "public case `{}` changed", case.id);
        assert_eq!(
            ours.expect, case.expect,
            "public case `{}` changed",
            case.id
        );
    }
}

/// The oracle must catch an executor that does no filtering at all, and must accept the
/// oracle itself: proves the harness can fail and is not vacuous.
#[test]
fn harness_catches_an_unfiltered_executor() {
    let corpus = corpus();
    let fixture = sqlite_fixture(&corpus);
    let unfiltered = UnfilteredExecutor(fixture.full.as_ref() as &dyn Database);
    let failures = run_corpus(&corpus, Dialect::Sqlite, &fixture, &unfiltered, false);
    for must_fail in [
        "plain",
        "union-branch",
        "exists-inference",
        "tickets-email",
        "deny-by-default-base",
    ] {
        assert!(
            failures
                .iter()
                .any(|line| line.contains(&format!("] {must_fail} LEAK"))),
            "unfiltered executor not caught on `{must_fail}`"
        );
    }
    let self_check = run_corpus(&corpus, Dialect::Sqlite, &fixture, &fixture.oracle, false);
    let filtered_failures: Vec<&String> = self_check
        .iter()
        .filter(|line| line.contains("expect=Filtered"))
        .collect();
    assert!(
        filtered_failures.is_empty(),
        "oracle disagrees with itself: {filtered_failures:#?}"
    );
}

#[test]
fn oracle_semantics_match_hand_computed_rows() {
    let corpus = corpus();
    let fixture = sqlite_fixture(&corpus);
    let ids = |user: &str, sql: &str| -> Vec<i64> {
        let rows = fixture
            .oracle
            .query(user, sql)
            .unwrap_or_else(|error| panic!("{error}"));
        let mut ids: Vec<i64> = rows
            .into_iter()
            .map(|row| match row.first() {
                Some(support::Cell::Int(id)) => *id,
                other => panic!("unexpected cell {other:?}"),
            })
            .collect();
        ids.sort_unstable();
        ids
    };
    // alice: own tenant AND note <> 'internal' (NULL note hidden too).
    assert_eq!(ids("alice", "SELECT id FROM orders"), vec![1]);
    assert_eq!(ids("root", "SELECT id FROM orders").len(), 11);
    assert_eq!(ids("bob", "SELECT id FROM customers"), vec![1, 2, 3]);
    assert_eq!(ids("alice", "SELECT id FROM customers"), vec![1, 3]);
    assert_eq!(ids("erin", "SELECT id FROM tickets"), vec![3, 4]);
    assert_eq!(ids("dave", "SELECT id FROM tickets"), vec![1]);
    assert_eq!(ids("leo", "SELECT id FROM tickets"), vec![5]);
    assert_eq!(ids("gina", "SELECT id FROM tickets"), vec![6, 7]);
    assert_eq!(ids("O'Brien", "SELECT id FROM orders"), vec![6]);
    assert!(ids("alice", "SELECT id FROM secrets").is_empty());
    assert!(
        fixture
            .oracle
            .query("hank", "SELECT id FROM tickets")
            .is_err()
    );
    assert!(
        fixture
            .oracle
            .query("frank", "SELECT id FROM tickets")
            .is_err()
    );
    assert_eq!(ids("frank", "SELECT id FROM orders").len(), 9);
}

#[test]
fn corpus_on_sqlite() {
    let corpus = corpus();
    let fixture = sqlite_fixture(&corpus);
    let failures = run_corpus(&corpus, Dialect::Sqlite, &fixture, &fixture.engine, false);
    assert_no_failures(&failures);
}

#[test]
fn corpus_on_postgres() {
    let Some(url) = pg_url() else {
        eprintln!("note: DATAGATE_TEST_PG_URL is unset; PostgreSQL corpus skipped");
        return;
    };
    let corpus = corpus();
    let server = PgServer::connect(&url, "corpus");
    let fixture = pg_fixture(&server, &corpus);
    let failures = run_corpus(&corpus, Dialect::Postgres, &fixture, &fixture.engine, false);
    drop(fixture);
    server.drop_all();
    assert_no_failures(&failures);
}

/// Every corpus case a second time on the same policy (now served from the rewrite cache),
/// interleaving users: a cache keyed on too little would hand one user another's predicate.
#[test]
fn corpus_twice_through_the_rewrite_cache() {
    let corpus = corpus();
    let fixture = sqlite_fixture(&corpus);
    let first = run_corpus(&corpus, Dialect::Sqlite, &fixture, &fixture.engine, false);
    let second = run_corpus(&corpus, Dialect::Sqlite, &fixture, &fixture.engine, false);
    let (hits, misses) = fixture.engine.policy.cache_stats();
    eprintln!("rewrite cache after two passes: {hits} hits, {misses} misses");
    let new_in_second: Vec<&String> = second.iter().filter(|line| !first.contains(line)).collect();
    assert!(
        new_in_second.is_empty(),
        "failures only on the cached pass: {new_in_second:#?}"
    );
    assert!(
        hits > 0,
        "the second pass was never served from the rewrite cache"
    );
}

/// Principals that share a username but differ in email / user id / claims / roles must
/// get different predicates, also when the cache already holds the first one's rewrite.
#[test]
fn rewrite_cache_keys_cover_every_template_input() {
    use support::{CorpusUser, SqliteDb, principal};
    let corpus = corpus();
    let mut fixture = sqlite_fixture(&corpus);
    let variants: Vec<CorpusUser> = vec![
        CorpusUser {
            roles: vec!["Support".into()],
            email: Some("dave@x.org".into()),
            ..Default::default()
        },
        CorpusUser {
            roles: vec!["Support".into()],
            email: Some("erin@x.org".into()),
            ..Default::default()
        },
        CorpusUser {
            roles: vec!["Lead".into()],
            user_id: Some("42".into()),
            ..Default::default()
        },
        CorpusUser {
            roles: vec!["Lead".into()],
            user_id: Some("7".into()),
            ..Default::default()
        },
        CorpusUser {
            roles: vec!["Tenant".into()],
            claims: serde_json::json!({"dept": "Sales"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            ..Default::default()
        },
        CorpusUser {
            roles: vec!["Tenant".into()],
            claims: serde_json::json!({"dept": "Support"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            ..Default::default()
        },
        CorpusUser {
            roles: vec!["Admin".into()],
            ..Default::default()
        },
        CorpusUser {
            roles: vec!["Support".into(), "Lead".into()],
            email: Some("erin@x.org".into()),
            user_id: Some("7".into()),
            ..Default::default()
        },
    ];
    let mut failures = Vec::new();
    for round in 0..2 {
        for (index, variant) in variants.iter().enumerate() {
            let same_name = principal("same", variant);
            let oracle =
                SqliteDb::oracle(&corpus.schema, &corpus.rows, &corpus.filters, &same_name);
            fixture.engine.principals.insert("same".into(), same_name);
            for sql in [
                "SELECT id FROM tickets",
                "SELECT t.id FROM tickets t ORDER BY t.id",
            ] {
                let expected = oracle.run(sql);
                let got = fixture.engine.query("same", sql);
                if expected != got {
                    failures.push(format!(
                        "round {round} variant {index} `{sql}`: expected {expected:?} got {got:?}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "cache/template-key failures: {failures:#?}"
    );
}
