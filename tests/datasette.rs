//! The Datasette route pack against a real Datasette server (PyPI `datasette`, installed
//! by `deploy/install-deps.sh`): the rows Datasette returns through datagate must equal
//! the row-level security oracle's, CSV downloads are exports, and table pages of
//! filtered tables are refused however their name is spelt.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use datagate::principal::BasicRole;
use serde_json::Value;
use support::demo_rls::{Caller, ROWS, SCHEMA, oracle, rows_of, sorted};
use support::gateway::{Gateway, GatewayOptions};
use support::{ChildProcess, call, free_port, wait_for_http_ok};

struct Datasette {
    _process: ChildProcess,
    address: std::net::SocketAddr,
    _directory: tempfile::TempDir,
}

/// Serves the demo database as `demo` (the file's name) on a free port.
fn start_datasette() -> Datasette {
    let directory = tempfile::tempdir().unwrap();
    let database = directory.path().join("demo.db");
    let connection = rusqlite::Connection::open(&database).unwrap();
    connection.execute_batch(SCHEMA).unwrap();
    connection.execute_batch(ROWS).unwrap();
    drop(connection);
    let port = free_port();
    let process = Command::new("python3")
        .args(["-m", "datasette", "serve"])
        .arg(&database)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--setting", "sql_time_limit_ms", "5000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m datasette (install it with deploy/install-deps.sh)");
    let process = ChildProcess::new(process);
    let address = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_http_ok(
        &format!("http://{address}/-/versions.json"),
        Duration::from_secs(30),
    );
    Datasette {
        _process: process,
        address,
        _directory: directory,
    }
}

fn start() -> (Datasette, Gateway) {
    let datasette = start_datasette();
    let mut options = GatewayOptions::new(datasette.address);
    options.routes_yaml = Some("packs: [datasette]\n".to_string());
    (datasette, Gateway::start(options))
}

const CALLERS: [Caller; 3] = [
    Caller {
        name: "alice",
        roles: &["Gamma", "EU_team"],
    },
    Caller {
        name: "x' OR '1'='1",
        roles: &["Gamma"],
    },
    Caller {
        name: "root",
        roles: &["Admin"],
    },
];

const QUERIES: [&str; 6] = [
    "SELECT * FROM orders",
    "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id",
    "WITH t AS (SELECT * FROM orders) SELECT count(*), sum(amount) FROM t",
    "SELECT id, title FROM posts UNION ALL SELECT id, note FROM orders",
    "SELECT * FROM customers WHERE id IN (SELECT customer_id FROM orders)",
    "select * from ORDERS /* comment */ where amount > 15",
];

fn token(gateway: &Gateway, caller: &Caller) -> String {
    // Viewer: `Query` on `demo` (policies/20-grafana-datasources.csv).
    gateway.token(caller.name, caller.roles, &[], Some(BasicRole::Viewer))
}

fn query_url(gateway: &Gateway, extension: &str, sql: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(sql.as_bytes()).collect();
    gateway.url(&format!("/demo.{extension}?sql={encoded}&_shape=arrays"))
}

#[test]
fn datasette_returns_exactly_the_oracle_rows() {
    let (_datasette, gateway) = start();
    for caller in &CALLERS {
        let oracle = oracle(caller);
        let token = token(&gateway, caller);
        for sql in QUERIES {
            let (status, body) = call("GET", &query_url(&gateway, "json", sql), Some(&token), None);
            assert_eq!(status, 200, "{} / {sql}: {body}", caller.name);
            let rows: Vec<Vec<Value>> = serde_json::from_value(body["rows"].clone()).unwrap();
            assert_eq!(
                sorted(rows),
                sorted(rows_of(&oracle, sql).unwrap()),
                "{} / {sql}",
                caller.name
            );
        }
    }
    // What Datasette refuses or datagate refuses never leaks rows either.
    let alice = token(&gateway, &CALLERS[0]);
    let (status, body) = call(
        "GET",
        &query_url(&gateway, "json", "SELECT * FROM sqlite_master"),
        Some(&alice),
        None,
    );
    assert_eq!(status, 403, "{body}");
    let (status, _) = call(
        "GET",
        &query_url(&gateway, "json", "SELECT 1; SELECT * FROM orders"),
        Some(&alice),
        None,
    );
    assert_eq!(status, 400);
    // No datasource grant, no query.
    let outsider = gateway.token("eve", &["Gamma"], &[], None);
    let (status, _) = call(
        "GET",
        &query_url(&gateway, "json", "SELECT * FROM posts"),
        Some(&outsider),
        None,
    );
    assert_eq!(status, 403);
}

#[test]
fn datasette_csv_is_a_data_export() {
    let (_datasette, gateway) = start();
    let sql = "SELECT id, tenant_id FROM orders";
    // Superset's built-in roles all hold `can_csv` (and so the granular permissions); the
    // demo's Analyst role (policies/60-demo-roles.csv) holds no export permission.
    let analyst = token(
        &gateway,
        &Caller {
            name: "carl",
            roles: &["Analyst"],
        },
    );
    let (status, body) = call(
        "GET",
        &query_url(&gateway, "csv", sql),
        Some(&analyst),
        None,
    );
    assert_eq!(status, 403);
    assert_eq!(
        body["message"],
        "missing permission `can_export_data on Superset`"
    );
    // Alpha may export; the CSV holds only the caller's rows.
    let exporter = Caller {
        name: "alice",
        roles: &["Alpha", "Gamma"],
    };
    let token = token(&gateway, &exporter);
    let response = ureq::get(&query_url(&gateway, "csv", sql))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    let text = response.into_string().unwrap();
    let data_lines: Vec<&str> = text
        .lines()
        .skip(1)
        .filter(|line| !line.is_empty())
        .collect();
    let expected = rows_of(&oracle(&exporter), sql).unwrap();
    assert_eq!(data_lines.len(), expected.len(), "{text}");
    assert!(
        data_lines.iter().all(|line| line.ends_with(",alice")),
        "{text}"
    );
}

#[test]
fn table_pages_of_filtered_tables_are_refused_however_spelt() {
    let (_datasette, gateway) = start();
    let gamma = token(&gateway, &CALLERS[0]);
    for path in [
        "/demo/orders.json",
        "/demo/ORDERS.json",
        "/demo/ord~65rs.json",
        "/demo/orders",
        "/demo/orders.csv",
    ] {
        let (status, body) = call("GET", &gateway.url(path), Some(&gamma), None);
        assert_eq!(status, 403, "{path}: {body}");
    }
    let (status, body) = call(
        "GET",
        &gateway.url("/demo/ord~zzrs.json"),
        Some(&gamma),
        None,
    );
    assert_eq!(status, 403, "an invalid encoding is refused: {body}");
    // Unfiltered tables are served by Datasette as usual.
    let (status, body) = call(
        "GET",
        &gateway.url("/demo/posts.json?_shape=arrays"),
        Some(&gamma),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"].as_array().unwrap().len(), 2);
    // No filter applies to an Admin on orders: the table page is exact for them.
    let admin = token(&gateway, &CALLERS[2]);
    let (status, body) = call(
        "GET",
        &gateway.url("/demo/orders.json?_shape=arrays"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let rows: Vec<Vec<Value>> = serde_json::from_value(body["rows"].clone()).unwrap();
    assert_eq!(
        sorted(rows),
        sorted(rows_of(&oracle(&CALLERS[2]), "SELECT * FROM orders").unwrap())
    );
    // Tables not listed for the datasource are refused on a deny-unlisted datasource.
    let (status, _) = call(
        "GET",
        &gateway.url("/demo/sqlite_master.json"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 403);
}
