//! Row-level security through the live proxy: the SQL Lab, Grafana and Datasette routes of
//! the example config, the demo upstream executing the (rewritten) SQL on SQLite, and an
//! oracle — a copy of the database holding only the caller's permitted rows, built with
//! bound parameters, independently of the rewriter — that every answer must equal.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use datagate::principal::BasicRole;
use serde_json::{Value, json};
use support::demo_rls::{Caller, ROWS, SCHEMA, oracle, rows_of, sorted};
use support::gateway::{Gateway, GatewayOptions};
use support::{ChildProcess, clear_recorded, recorded_requests, spawn_upstream};

struct Setup {
    _upstream: ChildProcess,
    upstream: std::net::SocketAddr,
    gateway: Gateway,
    _fixture: tempfile::TempDir,
}

fn setup() -> Setup {
    let fixture = tempfile::tempdir().unwrap();
    std::fs::write(fixture.path().join("schema.sql"), SCHEMA).unwrap();
    std::fs::write(fixture.path().join("rows.sql"), ROWS).unwrap();
    let schema = fixture.path().join("schema.sql").display().to_string();
    let rows = fixture.path().join("rows.sql").display().to_string();
    let (upstream_process, upstream) =
        spawn_upstream(&["--schema-file", &schema, "--rows-file", &rows]);
    let gateway = Gateway::start(GatewayOptions::new(upstream));
    Setup {
        _upstream: upstream_process,
        upstream,
        gateway,
        _fixture: fixture,
    }
}

fn token(gateway: &Gateway, caller: &Caller) -> String {
    let mut roles = caller.roles.to_vec();
    roles.push("sql_lab");
    gateway.token(caller.name, &roles, &[], Some(BasicRole::Viewer))
}

fn post(url: &str, token: &str, body: &Value) -> (u16, Value) {
    let result = ureq::post(url)
        .set("Authorization", &format!("Bearer {token}"))
        .send_json(body.clone());
    match result {
        Ok(response) => (response.status(), response.into_json().unwrap()),
        Err(ureq::Error::Status(code, response)) => {
            (code, response.into_json().unwrap_or(Value::Null))
        }
        Err(error) => panic!("{error}"),
    }
}

fn get(url: &str, token: &str) -> (u16, Value) {
    match ureq::get(url)
        .set("Authorization", &format!("Bearer {token}"))
        .call()
    {
        Ok(response) => (response.status(), response.into_json().unwrap()),
        Err(ureq::Error::Status(code, response)) => {
            (code, response.into_json().unwrap_or(Value::Null))
        }
        Err(error) => panic!("{error}"),
    }
}

fn as_rows(value: &Value) -> Vec<Vec<Value>> {
    serde_json::from_value(value.clone()).unwrap()
}

const CALLERS: [Caller; 4] = [
    Caller {
        name: "alice",
        roles: &["Gamma", "EU_team"],
    },
    Caller {
        name: "bob",
        roles: &["Gamma", "EU_team", "US_team"],
    },
    Caller {
        name: "root",
        roles: &["Admin"],
    },
    Caller {
        name: "x' OR '1'='1",
        roles: &["Gamma"],
    },
];

const QUERIES: [&str; 10] = [
    "SELECT * FROM orders",
    "SELECT o.id, c.name FROM orders o LEFT JOIN customers c ON c.id = o.customer_id",
    "WITH orders AS (SELECT 1 AS id) SELECT * FROM main.orders",
    "SELECT id, title FROM posts UNION ALL SELECT id, note FROM orders",
    "SELECT c.name, (SELECT sum(amount) FROM orders o WHERE o.customer_id = c.id) FROM customers c",
    "SELECT * FROM posts WHERE id IN (SELECT customer_id FROM orders WHERE amount > 1000000)",
    "SELECT count(*), sum(amount) FROM orders",
    "SELECT * FROM ORDERS -- trailing comment",
    "SELECT * FROM \"orders\" WHERE id > 0",
    "SELECT region, count(*) FROM customers GROUP BY region HAVING count(*) > 0",
];

#[test]
fn every_route_returns_exactly_the_oracle_rows() {
    let setup = setup();
    for caller in &CALLERS {
        let oracle = oracle(caller);
        let token = token(&setup.gateway, caller);
        for sql in QUERIES {
            let expected = sorted(rows_of(&oracle, sql).unwrap());

            let (status, body) = post(
                &setup.gateway.url("/api/v1/sqllab/execute/"),
                &token,
                &json!({"sql": sql, "database_id": 1}),
            );
            assert_eq!(status, 200, "{} / {sql}: {body}", caller.name);
            assert_eq!(
                sorted(as_rows(&body["data"])),
                expected,
                "SQL Lab, {} / {sql}",
                caller.name
            );

            let grafana = json!({"queries": [
                {"refId": "A", "datasource": {"uid": "demo"}, "rawSql": sql},
                {"refId": "B", "datasource": {"uid": "demo"}, "rawSql": "SELECT count(*) FROM orders"},
            ]});
            let (status, body) = post(&setup.gateway.url("/api/ds/query"), &token, &grafana);
            assert_eq!(status, 200, "{} / {sql}: {body}", caller.name);
            assert_eq!(
                sorted(as_rows(&body["results"]["A"]["rows"])),
                expected,
                "Grafana, {} / {sql}",
                caller.name
            );
            assert_eq!(
                sorted(as_rows(&body["results"]["B"]["rows"])),
                sorted(rows_of(&oracle, "SELECT count(*) FROM orders").unwrap()),
                "Grafana second query, {}",
                caller.name
            );

            let encoded: String = form_urlencoded::byte_serialize(sql.as_bytes()).collect();
            let (status, body) = get(
                &setup
                    .gateway
                    .url(&format!("/demo.json?_shape=arrays&sql={encoded}&_size=max")),
                &token,
            );
            assert_eq!(status, 200, "{} / {sql}: {body}", caller.name);
            assert_eq!(
                sorted(as_rows(&body["rows"])),
                expected,
                "Datasette, {} / {sql}",
                caller.name
            );
        }
    }
}

#[test]
fn the_rest_of_the_request_arrives_as_the_checked_value() {
    let setup = setup();
    let token = token(&setup.gateway, &CALLERS[0]);
    let body = r#"{ "queries" : [ {"refId":"A","datasource":{"uid":"demo"},"rawSql":"SELECT id FROM orders","maxDataPoints": 1e3, "x":"\u00e9"} ], "from":"now-1h" }"#;
    let response = ureq::post(&setup.gateway.url("/api/ds/query"))
        .set("Authorization", &format!("Bearer {token}"))
        .set("Content-Type", "application/json")
        .send_string(body)
        .unwrap();
    assert_eq!(response.status(), 200);
    let recorded = recorded_requests(setup.upstream);
    assert_eq!(recorded.len(), 1);
    let received = &recorded[0];
    let sent: Value = serde_json::from_str(body).unwrap();
    let arrived: Value = serde_json::from_str(&received.body_text).unwrap();
    assert_ne!(
        arrived["queries"][0]["rawSql"], sent["queries"][0]["rawSql"],
        "the SQL was rewritten"
    );
    // Everything but the SQL is the value datagate checked, forwarded in canonical form
    // (re-serialised, so every JSON parser reads it the same way).
    let mut expected = sent.clone();
    expected["queries"][0]["rawSql"] = arrived["queries"][0]["rawSql"].clone();
    assert_eq!(arrived, expected);
    assert_eq!(
        received.body_text,
        serde_json::to_string(&arrived).unwrap(),
        "the body is canonical JSON"
    );
    assert_eq!(received.body_length, received.body_text.len());
    assert_eq!(
        received.header_values("content-length"),
        vec![received.body_length.to_string()]
    );

    clear_recorded(setup.upstream);
    let (status, _) = get(
        &setup
            .gateway
            .url("/demo.json?_shape=arrays&sql=SELECT+id+FROM+orders&_size=max"),
        &token,
    );
    assert_eq!(status, 200);
    let recorded = recorded_requests(setup.upstream);
    let query = recorded[0].query.clone().unwrap();
    assert!(query.starts_with("_shape=arrays&sql="), "{query}");
    assert!(query.ends_with("&_size=max"), "{query}");
    assert!(query.contains("tenant_id"), "{query}");
}

#[test]
fn unsafe_sql_is_refused_with_a_kind_and_never_forwarded() {
    let setup = setup();
    let token = token(&setup.gateway, &CALLERS[0]);
    for (sql, status, kind) in [
        ("SELECT 1; SELECT * FROM orders", 400, "multiple_statements"),
        (
            "CREATE TABLE leak AS SELECT * FROM orders",
            403,
            "statement_not_allowed",
        ),
        ("DELETE FROM orders", 403, "statement_not_allowed"),
        ("SELECT * FROM sqlite_master", 403, "catalog_access"),
        (
            "SELECT * FROM pragma_table_info('orders')",
            403,
            "denied_function",
        ),
        ("SELECT * FROM secrets", 403, "unlisted_table"),
        ("SELEKT * FROM orders", 400, "parse_error"),
    ] {
        let (got, body) = post(
            &setup.gateway.url("/api/v1/sqllab/execute/"),
            &token,
            &json!({"sql": sql}),
        );
        assert_eq!(got, status, "{sql}: {body}");
        assert_eq!(body["kind"], kind, "{sql}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("/sql"),
            "{sql}: {body}"
        );
    }
    let huge = format!(
        "SELECT * FROM orders WHERE {}",
        vec!["id = 1"; 20_000].join(" OR ")
    );
    let (got, body) = get(
        &setup.gateway.url(&format!(
            "/demo.json?sql={}",
            form_urlencoded::byte_serialize(huge.as_bytes()).collect::<String>()
        )),
        &token,
    );
    assert!((400..500).contains(&got), "{got}: {body}");
    assert!(recorded_requests(setup.upstream).is_empty());

    let metrics = ureq::get(&setup.gateway.admin_url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains(
            r#"datagate_sql_rewrites_total{kind="multiple_statements",outcome="refused"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("datagate_sql_rewrite_duration_seconds_count"),
        "{metrics}"
    );

    // A datasource the caller may not query, named inside the body.
    let (got, body) = post(
        &setup.gateway.url("/api/ds/query"),
        &token,
        &json!({"queries": [{"refId": "A", "datasource": {"uid": "finance"}, "rawSql": "SELECT 1"}]}),
    );
    assert_eq!(got, 403, "{body}");
    assert!(recorded_requests(setup.upstream).is_empty());
}

#[test]
fn explain_shows_filters_predicates_and_rewritten_sql() {
    let setup = setup();
    let admin = setup.gateway.admin_token();
    let alice = token(&setup.gateway, &CALLERS[0]);
    let request = json!({
        "token": alice,
        "method": "POST",
        "path": "/api/v1/sqllab/execute/",
        "body": json!({"sql": "SELECT * FROM orders"}).to_string(),
    });
    let (status, body) = post(
        &setup.gateway.admin_url("/api/authz/explain"),
        &admin,
        &request,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "allow");
    let statement = &body["sql"][0];
    assert_eq!(statement["location"], "/sql");
    assert_eq!(statement["datasource"], "demo");
    let applied = &statement["rewritten"]["applied"][0];
    assert_eq!(applied["table"], "orders");
    let names: Vec<&str> = applied["filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"own_orders") && names.contains(&"hide_internal"),
        "{names:?}"
    );
    assert!(applied["predicate"].as_str().unwrap().contains("'alice'"));
    assert!(
        statement["rewritten"]["sql"]
            .as_str()
            .unwrap()
            .contains("'alice'")
    );
    let (status, _) = post(
        &setup.gateway.admin_url("/api/authz/explain"),
        &alice,
        &request,
    );
    assert_eq!(status, 403, "Admin only");
}

/// Roles held through policy memberships (`g, user:…, role:…`) bring their filters with
/// them: authorization grants their permissions, so row-level security must apply too.
#[test]
fn roles_from_policy_memberships_bring_their_filters() {
    let setup = setup();
    let before = setup.gateway.revision();
    setup.gateway.write_policy(
        "40-memberships.csv",
        "g, user:alice, role:Gamma\ng, user:alice, role:sql_lab\ng, team:eu, role:EU_team\n",
    );
    assert!(Gateway::eventually(
        std::time::Duration::from_secs(10),
        || setup.gateway.revision() > before
    ));
    // The token names no role at all: every role comes from the policy files.
    let token = setup
        .gateway
        .token("alice", &[], &["eu"], Some(BasicRole::Viewer));
    let as_gamma = Caller {
        name: "alice",
        roles: &["Gamma", "EU_team"],
    };
    let oracle = oracle(&as_gamma);
    for sql in ["SELECT * FROM orders", "SELECT * FROM customers"] {
        let (status, body) = post(
            &setup.gateway.url("/api/v1/sqllab/execute/"),
            &token,
            &json!({"sql": sql, "database_id": 1}),
        );
        assert_eq!(status, 200, "{sql}: {body}");
        assert_eq!(
            sorted(as_rows(&body["data"])),
            sorted(rows_of(&oracle, sql).unwrap()),
            "{sql}"
        );
    }
}
