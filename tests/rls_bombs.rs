//! The corpus's size and nesting bombs (`repeat:` cases), alone in their own test binary:
//! an engine that overflows its stack on them aborts this process only, and the abort
//! itself is the finding.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "rls_support/mod.rs"]
mod support;

use datagate::rls::Dialect;
use support::{
    PgServer, assert_no_failures, load_corpus, manifest_path, pg_fixture, pg_url, run_corpus,
    sqlite_fixture,
};

#[test]
fn bombs_on_sqlite() {
    let corpus = load_corpus(&manifest_path("tests/rls/corpus.yaml"));
    let fixture = sqlite_fixture(&corpus);
    assert_no_failures(&run_corpus(
        &corpus,
        Dialect::Sqlite,
        &fixture,
        &fixture.engine,
        true,
    ));
}

#[test]
fn bombs_on_postgres() {
    let Some(url) = pg_url() else {
        eprintln!("note: DATAGATE_TEST_PG_URL is unset; PostgreSQL bombs skipped");
        return;
    };
    let corpus = load_corpus(&manifest_path("tests/rls/corpus.yaml"));
    let server = PgServer::connect(&url, "bombs");
    let fixture = pg_fixture(&server, &corpus);
    let failures = run_corpus(&corpus, Dialect::Postgres, &fixture, &fixture.engine, true);
    drop(fixture);
    server.drop_all();
    assert_no_failures(&failures);
}
