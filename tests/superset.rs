//! A real Apache Superset 6.1 behind a real datagate (the Superset pack, the `superset`
//! identity preset, the demo row-level security filters on Superset's demo database),
//! driven through Superset's REST API as different callers.
//!
//! One Superset serves every test in this file (`support::superset::shared`, started once);
//! each test starts its own datagate in front of it. Refusals are proved to have sent
//! Superset nothing by gunicorn's access log (every request carries a marker); rows are
//! compared with the oracle of `support::demo_rls` over the same demo rows. Where datagate
//! refuses something, the test also sends it to Superset directly — the control that shows
//! the real Superset would have done it.
//!
//! Skips (with the reason printed) only when the Superset venv is not installed
//! (`tests/compat/superset/install.sh`, called by `deploy/install-deps.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

/// The same Superset driven through its real UI in headless Chromium.
#[path = "superset_ui/mod.rs"]
mod ui;

use serde_json::{Value, json};
use support::demo_rls::{self, oracle, rows_of, sorted};
use support::superset::{
    self, Superset, SupersetGatewayOptions, caller, csv_rows, sql_lab_body, sql_lab_rows,
    superset_gateway,
};

const ALICE: demo_rls::Caller = demo_rls::Caller {
    name: "alice",
    roles: &["Gamma", "sql_lab"],
};
const BOB: demo_rls::Caller = demo_rls::Caller {
    name: "bob",
    roles: &["Gamma", "sql_lab"],
};
const ADMIN: demo_rls::Caller = demo_rls::Caller {
    name: "admin",
    roles: &["Admin"],
};

/// SQL Lab queries whose rows must equal the oracle's for every caller.
const CORPUS: &[&str] = &[
    "SELECT id, tenant_id, amount, note FROM orders",
    "SELECT * FROM orders WHERE tenant_id = 'bob' OR 1 = 1",
    "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id",
    "SELECT count(*) AS n, sum(amount) AS total FROM orders",
    "WITH x AS (SELECT * FROM orders) SELECT id, note FROM x",
    "SELECT id FROM orders UNION SELECT id FROM orders WHERE tenant_id = 'bob'",
    "SELECT (SELECT max(amount) FROM orders) AS m",
    "SELECT tenant_id, count(*) AS n FROM orders GROUP BY tenant_id",
    "SELECT id FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE tenant_id <> 'alice')",
];

fn shared_or_skip() -> Option<&'static Superset> {
    let superset = superset::shared();
    if superset.is_none() {
        eprintln!("tests/superset.rs: skipped, Superset is not installed");
    }
    superset
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &superset::marker()[..10])
}

#[test]
fn sql_lab_returns_only_the_callers_rows() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let gateway = superset_gateway(superset, SupersetGatewayOptions::default());
    for who in [&ALICE, &BOB, &ADMIN] {
        let client = caller(&gateway, who.name, who.roles);
        let expected_db = oracle(who);
        for sql in CORPUS {
            let (reply, _) = client.post_json(
                "/api/v1/sqllab/execute/",
                &sql_lab_body(superset.ids.database_id, &unique("c"), sql),
            );
            assert_eq!(
                reply.status,
                200,
                "{} running {sql}: {}",
                who.name,
                reply.text()
            );
            let answer = reply.json();
            let expected = rows_of(&expected_db, sql).unwrap();
            assert_eq!(
                sorted(sql_lab_rows(&answer)),
                sorted(expected),
                "{} running {sql}: Superset executed {}",
                who.name,
                answer["query"]["executedSql"]
            );
        }
    }
    // The control: straight to Superset, alice's first query returns every tenant's rows.
    let direct = superset.direct(
        "POST",
        "/api/v1/sqllab/execute/",
        "alice",
        ALICE.roles,
        Some(&sql_lab_body(
            superset.ids.database_id,
            &unique("d"),
            CORPUS[0],
        )),
    );
    assert_eq!(direct.status, 200, "{}", direct.text());
    let all = rows_of(&oracle(&ADMIN), "SELECT count(*) FROM orders").unwrap();
    assert_eq!(
        json!(sql_lab_rows(&direct.json()).len()),
        all[0][0],
        "Superset alone applies no filter to SQL Lab"
    );

    // Gamma alone may not run SQL (no `can_execute_sql_query on SQLLab`): nothing sent.
    let gamma = caller(&gateway, "gus", &["Gamma"]);
    let (reply, marker) = gamma.post_json(
        "/api/v1/sqllab/execute/",
        &sql_lab_body(superset.ids.database_id, &unique("g"), "SELECT 1"),
    );
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(!superset.received(&marker));
}

#[test]
fn template_syntax_is_refused_and_superset_receives_nothing() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let gateway = superset_gateway(superset, SupersetGatewayOptions::default());
    let alice = caller(&gateway, "alice", ALICE.roles);
    let injection = "' AS x UNION SELECT note FROM orders WHERE tenant_id = 'bob' --";
    let with_params = |sql: &str, params: &str| {
        let mut body = sql_lab_body(superset.ids.database_id, &unique("t"), sql);
        body["templateParams"] = json!(params);
        body
    };
    let attempts = [
        // [1/6]: Jinja renders a UNION after datagate's rewrite.
        with_params(
            "SELECT '{{ t }}' AS x",
            &json!({"t": injection}).to_string(),
        ),
        // Jinja inside a string literal, no templateParams.
        with_params("SELECT '{{ \"x\" }}' AS x FROM orders", ""),
        with_params("SELECT id FROM orders WHERE '{% if 1 %}' = ''", ""),
        with_params("SELECT id FROM orders {# comment #}", ""),
        // Parameters alone (Superset renders `{{ }}` only, but a non-empty object is refused).
        with_params("SELECT id FROM orders", &json!({"t": 1}).to_string()),
    ];
    for body in &attempts {
        let (reply, marker) = alice.post_json("/api/v1/sqllab/execute/", body);
        assert_eq!(reply.status, 403, "{body}: {}", reply.text());
        assert_eq!(reply.json()["kind"], "template_syntax", "{body}");
        assert!(!superset.received(&marker), "Superset received {body}");
    }
    // The control: this Superset renders templates (ENABLE_TEMPLATE_PROCESSING), and the
    // first attempt, sent to it directly, returns bob's notes to alice.
    let direct = superset.direct(
        "POST",
        "/api/v1/sqllab/execute/",
        "alice",
        ALICE.roles,
        Some(&attempts[0]),
    );
    assert_eq!(direct.status, 200, "{}", direct.text());
    let values: Vec<Value> = sql_lab_rows(&direct.json()).into_iter().flatten().collect();
    assert!(values.contains(&json!("b1")), "{values:?}");
}

#[test]
fn select_as_cta_is_refused_as_a_write() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let gateway = superset_gateway(superset, SupersetGatewayOptions::default());
    let alice = caller(&gateway, "alice", ALICE.roles);
    let mut bodies = Vec::new();
    let mut body = sql_lab_body(
        superset.ids.database_id,
        &unique("w"),
        "SELECT * FROM orders",
    );
    body["select_as_cta"] = json!(true);
    body["tmp_table_name"] = json!("stolen");
    bodies.push(body.clone());
    body["select_as_cta"] = json!(false);
    bodies.push(body.clone());
    body["tmp_table_name"] = json!("");
    body["ctas_method"] = json!("VIEW");
    body["select_as_cta"] = json!(true);
    bodies.push(body);
    for body in &bodies {
        let (reply, marker) = alice.post_json("/api/v1/sqllab/execute/", body);
        assert_eq!(reply.status, 403, "{body}: {}", reply.text());
        assert_eq!(reply.json()["kind"], "write_option", "{body}");
        assert!(!superset.received(&marker));
    }
    let data = rusqlite::Connection::open(superset.data_db()).unwrap();
    let tables: i64 = data
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name NOT IN ('orders', 'customers', 'posts')",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0, "nothing was created in the data database");
}

#[test]
fn results_and_exports_belong_to_the_caller_who_ran_the_query() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    // The default policies (Superset's own roles): sql_lab holds `can_export_csv on SQLLab`
    // and `can_csv`, so the granular `can_export_data` too.
    let gateway = superset_gateway(superset, SupersetGatewayOptions::default());
    let alice = caller(&gateway, "alice", ALICE.roles);
    let bob = caller(&gateway, "bob", BOB.roles);
    let sql = "SELECT id, tenant_id, note FROM orders";
    let bobs_id = unique("bob");
    let (reply, _) = bob.post_json(
        "/api/v1/sqllab/execute/",
        &sql_lab_body(superset.ids.database_id, &bobs_id, sql),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let bobs_rows: Vec<Vec<String>> = rows_of(&oracle(&BOB), sql)
        .unwrap()
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|value| match value {
                    Value::String(text) => text,
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();

    // bob exports his own results: the CSV holds exactly his rows.
    let path = format!("/api/v1/sqllab/export/{bobs_id}/");
    let (reply, _) = bob.get(&path);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let mut rows = csv_rows(&reply.text());
    assert_eq!(rows.remove(0), ["id", "tenant_id", "note"]);
    assert_eq!(rows, bobs_rows);

    // alice names bob's client_id: refused, Superset receives nothing.
    let (reply, marker) = alice.get(&path);
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.json()["kind"], "result_owner");
    assert!(!superset.received(&marker));
    // A client_id nobody ran through datagate: unknown, refused.
    let (reply, marker) = alice.get("/api/v1/sqllab/export/never-seen/");
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.json()["kind"], "result_unknown");
    assert!(!superset.received(&marker));

    // The control: Superset itself hands bob's (already filtered) rows to alice.
    let direct = superset.direct("GET", &path, "alice", ALICE.roles, None);
    assert_eq!(direct.status, 200, "{}", direct.text());
    let mut rows = csv_rows(&direct.text());
    rows.remove(0);
    assert_eq!(rows, bobs_rows, "Superset does not check who ran the query");
}

/// Superset's results key (SQL Lab with a results backend) is bound to the caller from
/// Superset's own execute response; Superset's results endpoint checks table access
/// only, so without the binding anyone holding the key reads the rows.
#[test]
fn results_keys_belong_to_the_caller_who_ran_the_query() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let gateway = superset_gateway(superset, SupersetGatewayOptions::default());
    let alice = caller(&gateway, "alice", ALICE.roles);
    let bob = caller(&gateway, "bob", BOB.roles);
    let sql = "SELECT id, tenant_id, note FROM orders";
    let (reply, _) = bob.post_json(
        "/api/v1/sqllab/execute/",
        &sql_lab_body(superset.ids.database_id, &unique("bob"), sql),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    let key = answer["query"]["resultsKey"]
        .as_str()
        .unwrap_or_else(|| panic!("Superset stored no results: {answer}"))
        .to_string();
    let bobs_rows = sorted(sql_lab_rows(&answer));
    assert_eq!(bobs_rows, sorted(rows_of(&oracle(&BOB), sql).unwrap()));
    let path = format!("/api/v1/sqllab/results/?q=(key:'{key}')");

    // bob reads his stored results through datagate: his rows.
    let (reply, _) = bob.get(&path);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(sorted(sql_lab_rows(&reply.json())), bobs_rows);
    // alice names bob's key: refused, Superset receives nothing.
    let (reply, marker) = alice.get(&path);
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.json()["kind"], "result_owner");
    assert!(!superset.received(&marker));
    // A key nobody received through datagate, and a `q` prison would read as another key.
    let (reply, marker) = alice.get("/api/v1/sqllab/results/?q=(key:'never-seen')");
    assert_eq!(reply.json()["kind"], "result_unknown", "{}", reply.text());
    assert!(!superset.received(&marker));
    let (reply, marker) = alice.get(&format!(
        "/api/v1/sqllab/results/?q=(key:'alices',key:'{key}')"
    ));
    assert_eq!(reply.json()["kind"], "malformed_rison", "{}", reply.text());
    assert!(!superset.received(&marker));

    // The control: Superset itself gives bob's stored rows to alice.
    let direct = superset.direct("GET", &path, "alice", ALICE.roles, None);
    assert_eq!(direct.status, 200, "{}", direct.text());
    assert_eq!(sorted(sql_lab_rows(&direct.json())), bobs_rows);
}

#[test]
fn bulk_chart_delete_is_checked_by_datagate_and_by_superset() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let gateway = superset_gateway(
        superset,
        SupersetGatewayOptions {
            policy_files: vec![(
                "41-readonly.csv".to_string(),
                "p, role:ReadOnly, Chart, can_read\n".to_string(),
            )],
            ..Default::default()
        },
    );
    let chart = superset.ids.charts["orders"];
    let path = format!("/api/v1/chart/?q=!({chart})");
    // Without `can_write on Chart` the bulk delete is datagate's to refuse: nothing sent.
    let reader = caller(&gateway, "rita", &["ReadOnly"]);
    let (reply, marker) = reader.send("DELETE", &path, None);
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(
        reply.json()["message"],
        "missing permission `can_write on Chart`"
    );
    assert!(!superset.received(&marker));
    // Gamma holds `can_write on Chart` in Superset (and so in datagate's default policies):
    // the request is forwarded and Superset's ownership check refuses admin's chart.
    let alice = caller(&gateway, "alice", ALICE.roles);
    let (reply, marker) = alice.send("DELETE", &path, None);
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(superset.received(&marker));
    let still_there = superset.direct(
        "GET",
        &format!("/api/v1/chart/{chart}"),
        "admin",
        &["Admin"],
        None,
    );
    assert_eq!(still_there.status, 200, "{}", still_there.text());
}

#[test]
fn the_ui_loads_through_datagate_for_a_signed_in_user() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let gateway = superset_gateway(superset, SupersetGatewayOptions::default());
    let alice = caller(&gateway, "alice", ALICE.roles);
    let (reply, _) = alice.get("/");
    assert_eq!(reply.status, 302, "{}", reply.text());
    assert!(
        reply
            .header("location")
            .is_some_and(|location| location.ends_with("/superset/welcome/")),
        "{:?}",
        reply.headers
    );
    let mut assets = Vec::new();
    for page in [
        "/superset/welcome/",
        "/sqllab/",
        "/chart/list/",
        "/dashboard/list/",
    ] {
        let (reply, _) = alice.get(page);
        assert_eq!(reply.status, 200, "{page}: {}", reply.text());
        let html = reply.text();
        assert!(
            html.contains("<html") || html.contains("<!DOCTYPE"),
            "{page}"
        );
        // The bundles the page loads.
        for piece in html.split("src=\"").skip(1) {
            let src = piece.split('"').next().unwrap_or_default();
            if src.starts_with("/static/") && !assets.contains(&src.to_string()) {
                assets.push(src.to_string());
            }
        }
    }
    assert!(!assets.is_empty(), "the welcome page loads scripts");
    assets.push("/static/assets/manifest.json".to_string());
    for asset in &assets {
        let (reply, _) = alice.get(asset);
        assert_eq!(reply.status, 200, "{asset}");
    }
    for api in [
        "/api/v1/me/",
        "/api/v1/me/roles/",
        "/api/v1/database/",
        "/api/v1/chart/",
        "/api/v1/dashboard/",
        "/api/v1/menu/",
    ] {
        let (reply, _) = alice.get(api);
        assert_eq!(reply.status, 200, "{api}: {}", reply.text());
    }
    let (reply, _) = alice.get("/api/v1/me/");
    assert_eq!(reply.json()["result"]["username"], "alice");
    // Anonymous callers are Public, which holds nothing: no UI, no API.
    let anonymous = support::superset::Caller {
        gateway: &gateway,
        token: None,
    };
    let (reply, marker) = anonymous.get("/superset/welcome/");
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert!(!superset.received(&marker));
    let (reply, marker) = anonymous.get("/api/v1/me/");
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert!(!superset.received(&marker));
    // Superset's own sign-in is refused: identity comes from datagate.
    let (reply, marker) = anonymous.send(
        "POST",
        "/api/v1/security/login",
        Some((
            "application/json",
            br#"{"username":"admin","password":"x"}"#.to_vec(),
        )),
    );
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(!superset.received(&marker));
}

#[test]
fn streaming_export_belongs_to_the_caller_who_ran_the_query() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let gateway = superset_gateway(superset, SupersetGatewayOptions::default());
    let alice = caller(&gateway, "alice", ALICE.roles);
    let bob = caller(&gateway, "bob", BOB.roles);
    let sql = "SELECT id, tenant_id, note FROM orders";
    let bobs_id = unique("bob");
    let (reply, _) = bob.post_json(
        "/api/v1/sqllab/execute/",
        &sql_lab_body(superset.ids.database_id, &bobs_id, sql),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The UI's large export posts a form (`client_id`, `filename`, `expected_rows`).
    let form = |client_id: &str| {
        Some((
            "application/x-www-form-urlencoded",
            format!("client_id={client_id}&filename=x.csv&expected_rows=10").into_bytes(),
        ))
    };
    let (reply, _) = bob.send("POST", "/api/v1/sqllab/export_streaming/", form(&bobs_id));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let mut rows = csv_rows(&reply.text());
    assert_eq!(rows.remove(0), ["id", "tenant_id", "note"]);
    assert_eq!(rows, text_rows(&BOB, sql));
    let (reply, marker) = alice.send("POST", "/api/v1/sqllab/export_streaming/", form(&bobs_id));
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.json()["kind"], "result_owner");
    assert!(!superset.received(&marker));
    // The control: Superset streams bob's results to alice.
    let direct = send_form_direct(superset, "alice", ALICE.roles, &bobs_id);
    assert_eq!(direct.status, 200, "{}", direct.text());
    let mut rows = csv_rows(&direct.text());
    rows.remove(0);
    assert_eq!(rows, text_rows(&BOB, sql));
}

fn send_form_direct(
    superset: &Superset,
    user: &str,
    roles: &[&str],
    client_id: &str,
) -> superset::Reply {
    let roles = roles.join(",");
    superset::send(
        "POST",
        &format!(
            "http://{}/api/v1/sqllab/export_streaming/",
            superset.address
        ),
        &[("X-Datagate-User", user), ("X-Datagate-Roles", &roles)],
        Some((
            "application/x-www-form-urlencoded",
            format!("client_id={client_id}").into_bytes(),
        )),
    )
}

/// The oracle's rows for `who`, as the text a CSV export holds.
fn text_rows(who: &demo_rls::Caller, sql: &str) -> Vec<Vec<String>> {
    rows_of(&oracle(who), sql)
        .unwrap()
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|value| match value {
                    Value::String(text) => text,
                    other => other.to_string(),
                })
                .collect()
        })
        .collect()
}

/// `analyst_sql` is Superset's sql_lab inside Superset (superset_config.py's
/// `DATAGATE_ROLE_MAP`), so Superset lets it export; datagate grants it SQL Lab and
/// `can_export_csv on SQLLab` but no `can_csv` / `can_export_data`.
const ANALYST: demo_rls::Caller = demo_rls::Caller {
    name: "ann",
    roles: &["analyst_sql"],
};

fn analyst_gateway(superset: &Superset, granular: bool, extra: &str) -> support::gateway::Gateway {
    superset_gateway(
        superset,
        SupersetGatewayOptions {
            policy_files: vec![(
                "41-analyst.csv".to_string(),
                format!(
                    "p, role:analyst_sql, SQLLab, can_execute_sql_query\n\
                     p, role:analyst_sql, SQLLab, can_export_csv\n\
                     p, role:analyst_sql, SQLLab, can_read\n\
                     p, role:analyst_sql, datasources:uid:{}, Query\n{extra}",
                    superset.database_uid()
                ),
            )],
            exports_yaml: Some(format!("granular_export_controls: {granular}\n")),
            ..Default::default()
        },
    )
}

#[test]
fn sql_lab_exports_need_datagates_export_permission_which_superset_never_checks() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let sql = "SELECT id, tenant_id, note FROM orders";
    // (granular controls, extra grant, may export)
    let cases = [
        (true, "", false),
        // Granular controls are a hard switch: can_csv alone does not do.
        (true, "p, role:analyst_sql, Superset, can_csv\n", false),
        (
            true,
            "p, role:analyst_sql, Superset, can_export_data\n",
            true,
        ),
        (false, "", false),
        // Legacy: can_csv governs data export.
        (false, "p, role:analyst_sql, Superset, can_csv\n", true),
    ];
    for (granular, extra, allowed) in cases {
        let gateway = analyst_gateway(superset, granular, extra);
        let ann = caller(&gateway, ANALYST.name, ANALYST.roles);
        let client_id = unique("ann");
        let (reply, _) = ann.post_json(
            "/api/v1/sqllab/execute/",
            &sql_lab_body(superset.ids.database_id, &client_id, sql),
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            sorted(sql_lab_rows(&reply.json())),
            sorted(rows_of(&oracle(&ANALYST), sql).unwrap())
        );
        let (reply, marker) = ann.get(&format!("/api/v1/sqllab/export/{client_id}/"));
        let (streamed, streamed_marker) = ann.send(
            "POST",
            "/api/v1/sqllab/export_streaming/",
            Some((
                "application/x-www-form-urlencoded",
                format!("client_id={client_id}").into_bytes(),
            )),
        );
        let context = format!("granular {granular}, extra {extra:?}: {}", reply.text());
        if allowed {
            assert_eq!(reply.status, 200, "{context}");
            let mut rows = csv_rows(&reply.text());
            rows.remove(0);
            assert_eq!(sorted_text(rows), sorted_text(text_rows(&ANALYST, sql)));
            assert_eq!(streamed.status, 200, "{context}: {}", streamed.text());
        } else {
            let wanted = if granular {
                "missing permission `can_export_data on Superset`"
            } else {
                "missing permission `can_csv on Superset`"
            };
            assert_eq!(reply.status, 403, "{context}");
            assert_eq!(reply.json()["message"], wanted, "{context}");
            assert!(!superset.received(&marker));
            assert_eq!(streamed.status, 403, "{context}: {}", streamed.text());
            assert!(!superset.received(&streamed_marker));
            // The control: Superset itself lets this user download (it holds sql_lab's
            // `can_export_csv` there and never checks the granular permissions).
            let direct = superset.direct(
                "GET",
                &format!("/api/v1/sqllab/export/{client_id}/"),
                ANALYST.name,
                ANALYST.roles,
                None,
            );
            assert_eq!(direct.status, 200, "{}", direct.text());
        }
    }
}

fn sorted_text(mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    rows.sort();
    rows
}

/// datagate in front of Superset with the datasets over `orders` mapped for chart-data
/// RLS (the physical table and the harness's two virtual datasets), and the grants chart
/// data and its CSV download need.
/// `charts.datasets` entries mapping each of `ids` to table `orders`, with the SQL
/// Superset stores for the virtual ones (what an operator copies into the mapping).
fn orders_mappings(superset: &Superset, ids: &[u64]) -> String {
    let uid = superset.database_uid();
    ids.iter()
        .map(|id| {
            let stored = superset.direct(
                "GET",
                &format!("/api/v1/dataset/{id}"),
                "admin",
                &["Admin"],
                None,
            );
            let sql = match stored.json()["result"]["sql"].as_str() {
                Some(sql) if !sql.trim().is_empty() => format!(", sql: {}", json!(sql)),
                _ => String::new(),
            };
            format!("  - {{id: {id}, datasource: \"{uid}\", table: orders{sql}}}\n")
        })
        .collect()
}

/// How the chart tests' datagate reads mapped datasets from Superset to verify them.
const VERIFY_YAML: &str = "verify: {user: datagate-verifier, roles: [Admin]}\n";

fn chart_gateway(superset: &Superset) -> support::gateway::Gateway {
    chart_gateway_granting(superset, "")
}

/// [`chart_gateway`] with `extra` policy lines.
fn chart_gateway_granting(superset: &Superset, extra: &str) -> support::gateway::Gateway {
    let uid = superset.database_uid();
    let ids: Vec<u64> = ["orders", "orders_daily", "orders_amounts"]
        .iter()
        .map(|name| superset.ids.datasets[*name])
        .collect();
    let mappings = orders_mappings(superset, &ids);
    superset_gateway(
        superset,
        SupersetGatewayOptions {
            charts_yaml: Some(format!("datasets:\n{mappings}{VERIFY_YAML}")),
            policy_files: vec![(
                "41-charts-test.csv".to_string(),
                format!(
                    "p, role:Gamma, Superset, can_export_data\np, role:Admin, datasources:uid:{uid}, Query\n{extra}"
                ),
            )],
            ..SupersetGatewayOptions::default()
        },
    )
}

fn chart_context(dataset: u64, result_format: &str, result_type: &str) -> Value {
    json!({
        "datasource": {"id": dataset, "type": "table"},
        "force": true,
        "queries": [{
            "columns": ["id", "tenant_id", "amount"],
            "filters": [],
            "extras": {"having": "", "where": "amount > 0"},
            "row_limit": 1000,
            "url_params": {}
        }],
        "form_data": {"viz_type": "table", "datasource": format!("{dataset}__table")},
        "result_format": result_format,
        "result_type": result_type
    })
}

/// Chart-data rows (`result[0].data`) in column order, as JSON values.
fn chart_rows(answer: &Value) -> Vec<Vec<Value>> {
    answer["result"][0]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {answer}"))
        .iter()
        .map(|row| {
            vec![
                row["id"].clone(),
                row["tenant_id"].clone(),
                row["amount"].clone(),
            ]
        })
        .collect()
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[test]
fn chart_data_returns_only_the_callers_rows() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let gateway = chart_gateway(superset);
    let dataset = superset.ids.datasets["orders"];
    let oracle_sql = "SELECT id, tenant_id, amount FROM orders WHERE amount > 0";
    for who in [&ALICE, &BOB, &ADMIN] {
        let client = caller(&gateway, who.name, who.roles);
        let expected = rows_of(&oracle(who), oracle_sql).unwrap();

        // JSON, as the chart view posts it.
        let (reply, _) = client.post_json(
            "/api/v1/chart/data",
            &chart_context(dataset, "json", "full"),
        );
        assert_eq!(reply.status, 200, "{}: {}", who.name, reply.text());
        assert_eq!(
            sorted(chart_rows(&reply.json())),
            sorted(expected.clone()),
            "{}: Superset ran {}",
            who.name,
            reply.json()["result"][0]["query"]
        );

        // The form-encoded CSV download (`form_data=`), as the UI's "Download CSV" posts it.
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair(
                "form_data",
                &chart_context(dataset, "csv", "full").to_string(),
            )
            .finish();
        let (reply, _) = client.send(
            "POST",
            "/api/v1/chart/data",
            Some(("application/x-www-form-urlencoded", form.into_bytes())),
        );
        assert_eq!(reply.status, 200, "{} CSV: {}", who.name, reply.text());
        let mut csv = csv_rows(&reply.text());
        assert_eq!(csv.remove(0), vec!["id", "tenant_id", "amount"]);
        let mut expected_csv: Vec<Vec<String>> = expected
            .iter()
            .map(|row| row.iter().map(as_text).collect())
            .collect();
        expected_csv.sort();
        csv.sort();
        assert_eq!(csv, expected_csv, "{} CSV", who.name);
    }

    // The SQL the real Superset generated carries the filter (result_type `query`).
    let alice = caller(&gateway, "alice", ALICE.roles);
    let (reply, _) = alice.post_json(
        "/api/v1/chart/data",
        &chart_context(dataset, "json", "query"),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let generated = reply.json()["result"][0]["query"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(generated.contains("tenant_id = 'alice'"), "{generated}");
    assert!(generated.contains("note <> 'internal'"), "{generated}");

    // The control: straight to Superset, alice's chart data has every tenant's rows.
    let direct = superset.direct(
        "POST",
        "/api/v1/chart/data",
        "alice",
        ALICE.roles,
        Some(&chart_context(dataset, "json", "full")),
    );
    assert_eq!(direct.status, 200, "{}", direct.text());
    let all = rows_of(
        &oracle(&ADMIN),
        "SELECT count(*) FROM orders WHERE amount > 0",
    )
    .unwrap();
    assert_eq!(
        json!(chart_rows(&direct.json()).len()),
        all[0][0],
        "Superset alone applies no filter to alice's chart data"
    );
}

#[test]
fn chart_sql_fragments_unmapped_datasets_and_replays_are_refused_before_superset() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let gateway = chart_gateway(superset);
    let dataset = superset.ids.datasets["orders"];
    let alice = caller(&gateway, "alice", ALICE.roles);
    let with_query = |query: Value| {
        let mut context = chart_context(dataset, "json", "full");
        context["queries"][0] = query;
        context
    };
    let attempts: Vec<(Value, &str)> = vec![
        (
            json!({"metrics": [{"expressionType": "SQL", "sqlExpression": "(SELECT group_concat(note) FROM orders)", "label": "x"}]}),
            "subquery_not_allowed",
        ),
        (
            json!({"columns": [{"expressionType": "SQL", "sqlExpression": "tenant_id || (SELECT 1)", "label": "x"}]}),
            "subquery_not_allowed",
        ),
        (
            json!({"columns": ["id"], "metrics": ["count"], "groupby": ["(SELECT max(amount) FROM orders)"]}),
            "subquery_not_allowed",
        ),
        (
            json!({"columns": ["id"], "extras": {"where": "1 = 1) OR (1 = 1"}}),
            "parse_error",
        ),
        (
            json!({"columns": ["id"], "extras": {"where": "1 = 1 --"}}),
            "comment_not_allowed",
        ),
        (
            json!({"columns": ["id"], "extras": {"where": "tenant_id = '{{ current_username() }}'"}}),
            "template_syntax",
        ),
        (
            json!({"columns": ["id"], "extras": {"having": "count(*) > 0; DELETE FROM orders"}}),
            "multiple_statements",
        ),
        (
            json!({"columns": ["id"], "where": "1 = 1"}),
            "chart_field_refused",
        ),
    ];
    for (query, kind) in attempts {
        let (reply, marker) = alice.post_json("/api/v1/chart/data", &with_query(query.clone()));
        assert_eq!(reply.json()["kind"], kind, "{query}: {}", reply.text());
        assert!(
            reply.status == 403 || reply.status == 400,
            "{}",
            reply.status
        );
        assert!(!superset.received(&marker), "Superset received {query}");
    }

    // A dataset datagate has no mapping for: refused while filters apply, forwarded for
    // a caller no filter applies to.
    let customers = superset.ids.datasets["customers"];
    let (reply, marker) = alice.post_json(
        "/api/v1/chart/data",
        &chart_context(customers, "json", "full"),
    );
    assert_eq!(
        (reply.status, reply.json()["kind"].clone()),
        (403, json!("chart_dataset_unmapped")),
        "{}",
        reply.text()
    );
    assert!(!superset.received(&marker));
    let admin = caller(&gateway, "admin", ADMIN.roles);
    let mut customers_context = chart_context(customers, "json", "full");
    customers_context["queries"][0]["columns"] = json!(["id", "name"]);
    customers_context["queries"][0]["extras"] = json!({});
    let (reply, _) = admin.post_json("/api/v1/chart/data", &customers_context);
    assert_eq!(reply.status, 200, "Superset's answer: {}", reply.text());
    assert_eq!(reply.json()["result"][0]["rowcount"], 3, "{}", reply.text());

    // Replays of a saved chart's query context (by id) and of a cache key.
    let chart = superset.ids.charts["orders"];
    let (reply, marker) = alice.get(&format!("/api/v1/chart/{chart}/data/"));
    assert_eq!(
        (reply.status, reply.json()["kind"].clone()),
        (403, json!("chart_replay_filtered")),
        "{}",
        reply.text()
    );
    assert!(!superset.received(&marker));
    // A cache key (more in `reads_datagate_cannot_filter_serve_only_unfiltered_callers`).
    let (reply, marker) = alice.get("/api/v1/chart/data/qc-0123456789abcdef0123456789abcdef");
    assert_eq!(
        (reply.status, reply.json()["kind"].clone()),
        (403, json!("chart_replay_filtered")),
        "{}",
        reply.text()
    );
    assert!(!superset.received(&marker));
    // The control: Superset serves alice the saved chart with every tenant's rows.
    let direct = superset.direct(
        "GET",
        &format!("/api/v1/chart/{chart}/data/"),
        "alice",
        ALICE.roles,
        None,
    );
    assert_eq!(direct.status, 200, "{}", direct.text());
    let all = rows_of(&oracle(&ADMIN), "SELECT count(*) FROM orders").unwrap();
    assert_eq!(json!(chart_rows(&direct.json()).len()), all[0][0]);
}

/// The checked-in pack (`deploy/route-packs/superset.yaml`) is what
/// `tests/compat/superset/generate_pack.py` writes from the installed Superset's own route
/// map: an edit to the pack that the generator would not make, or a generator change not
/// regenerated, fails here.
#[test]
fn the_checked_in_pack_is_what_the_generator_writes_from_superset() {
    if shared_or_skip().is_none() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(support::superset::venv().join("bin/python"))
        .arg(support::gateway::repository_root().join("tests/compat/superset/generate_pack.py"))
        .arg("--check")
        .env("DATAGATE_SUPERSET_HOME", home.path())
        .current_dir(support::gateway::repository_root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the pack is stale: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What Superset reads from a dataset without a query context datagate could rewrite —
/// Explore's filter value suggestions (column values), legacy `explore_json` — or
/// replays from its cache: refused while filters apply to the caller (Superset receives
/// nothing), served to a caller no filter applies to, with what Superset has (the
/// oracle's values for the unfiltered admin).
#[test]
fn reads_datagate_cannot_filter_serve_only_unfiltered_callers() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    // Superset's Gamma lacks the permission; granted here (in datagate only), so what
    // refuses alice is her row filters.
    let gateway = chart_gateway_granting(
        superset,
        "p, role:Gamma, Datasource, can_get_column_values\n",
    );
    let alice = caller(&gateway, "alice", ALICE.roles);
    let admin = caller(&gateway, "admin", ADMIN.roles);
    let orders = superset.ids.datasets["orders"];
    let column_values = format!("/api/v1/datasource/table/{orders}/column/tenant_id/values/");
    let form_data = json!({
        "datasource": format!("{orders}__table"), "viz_type": "table",
        "all_columns": ["id", "tenant_id"], "row_limit": 1000,
    });
    let explore_json = format!(
        "/superset/explore_json/?form_data={}",
        url::form_urlencoded::byte_serialize(form_data.to_string().as_bytes()).collect::<String>()
    );
    let cache_key = "/api/v1/chart/data/qc-0123456789abcdef0123456789abcdef";
    let requests: Vec<(&str, &str, Option<Value>)> = vec![
        ("GET", &column_values, None),
        ("POST", &explore_json, Some(json!({}))),
        ("GET", cache_key, None),
    ];
    let send = |who: &support::superset::Caller<'_>,
                (method, path, body): &(&str, &str, Option<Value>)| {
        who.send(
            method,
            path,
            body.as_ref()
                .map(|body| ("application/json", body.to_string().into_bytes())),
        )
    };
    for request in &requests {
        let (reply, marker) = send(&alice, request);
        assert_eq!(
            (reply.status, reply.json()["kind"].clone()),
            (403, json!("chart_replay_filtered")),
            "{} {}: {}",
            request.0,
            request.1,
            reply.text()
        );
        assert!(!superset.received(&marker), "{} {}", request.0, request.1);
        let (_, marker) = send(&admin, request);
        assert!(
            superset.received(&marker),
            "admin's {} {}",
            request.0,
            request.1
        );
    }

    let everything = oracle(&ADMIN);
    let (reply, _) = send(&admin, &requests[0]);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let mut tenants: Vec<String> = reply.json()["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", reply.text()))
        .iter()
        .map(as_text)
        .collect();
    tenants.sort();
    let wanted: Vec<String> = rows_of(
        &everything,
        "SELECT DISTINCT tenant_id FROM orders ORDER BY tenant_id",
    )
    .unwrap()
    .iter()
    .map(|row| as_text(&row[0]))
    .collect();
    assert_eq!(tenants, wanted, "column values");
}

/// Explore's Samples tab and drill to detail (`POST /datasource/samples`, one query
/// object on the dataset the query string names): the caller's filters are injected into
/// the query Superset builds, so carol and O'Brien get exactly the oracle's rows — all of
/// them, and those a drill-to-detail filter selects — while the same request straight to
/// Superset returns every tenant's. Fragments are checked as in chart data, and the query
/// string is limited to what the UI sends.
#[test]
fn samples_and_drill_to_detail_return_only_the_callers_rows() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    // Superset's Gamma lacks `can_samples on Datasource`; Alpha has it, and Gamma's
    // filter still applies. Users of their own (role changes are per user in Superset,
    // and the other tests' alice and bob run at the same time).
    let gateway = chart_gateway(superset);
    let orders = superset.ids.datasets["orders"];
    let path = format!("/datasource/samples?datasource_id={orders}&datasource_type=table");
    let columns = ["id", "tenant_id", "customer_id", "amount", "note", "region"];
    // Compared as text: Superset's frame and SQLite type the same values differently.
    let as_sorted_text = |rows: Vec<Vec<Value>>| -> Vec<String> {
        sorted(
            rows.iter()
                .map(|row| row.iter().map(|value| json!(as_text(value))).collect())
                .collect(),
        )
    };
    let rows = |reply: &superset::Reply| -> Vec<String> {
        let data = reply.json()["result"]["data"].clone();
        as_sorted_text(
            data.as_array()
                .unwrap_or_else(|| panic!("no rows in {}", reply.text()))
                .iter()
                .map(|row| columns.iter().map(|name| row[*name].clone()).collect())
                .collect(),
        )
    };
    let oracle_rows = |who: &demo_rls::Caller, sql: &str| -> Vec<String> {
        as_sorted_text(rows_of(&oracle(who), sql).unwrap())
    };
    let drill = json!({"filters": [{"col": "amount", "op": ">=", "val": 55}]});
    const CAROL: demo_rls::Caller = demo_rls::Caller {
        name: "carol",
        roles: &["Alpha", "Gamma"],
    };
    const OBRIEN: demo_rls::Caller = demo_rls::Caller {
        name: "O'Brien",
        roles: &["Alpha", "Gamma"],
    };
    for who in [&CAROL, &OBRIEN] {
        let person = caller(&gateway, who.name, who.roles);
        let (reply, _) = person.post_json(&path, &json!({}));
        assert_eq!(reply.status, 200, "{}: {}", who.name, reply.text());
        assert_eq!(
            rows(&reply),
            oracle_rows(
                who,
                "SELECT id, tenant_id, customer_id, amount, note, region FROM orders"
            ),
            "{}: samples",
            who.name
        );
        let (reply, _) = person.post_json(&path, &drill);
        assert_eq!(reply.status, 200, "{}: {}", who.name, reply.text());
        assert_eq!(
            rows(&reply),
            oracle_rows(
                who,
                "SELECT id, tenant_id, customer_id, amount, note, region FROM orders WHERE amount >= 55"
            ),
            "{}: drill to detail",
            who.name
        );
    }
    // The control: straight to Superset, carol's samples are every tenant's rows.
    let direct = superset.direct("POST", &path, CAROL.name, CAROL.roles, Some(&json!({})));
    assert_eq!(direct.status, 200, "{}", direct.text());
    assert_eq!(
        rows(&direct),
        oracle_rows(
            &ADMIN,
            "SELECT id, tenant_id, customer_id, amount, note, region FROM orders"
        )
    );

    // Refused before Superset: fragments that reach other rows, the query string's other
    // parameters (templated SQL reads them), a dataset named twice, another kind of
    // datasource, and a body that is not a query object.
    let carol = caller(&gateway, CAROL.name, CAROL.roles);
    let refused: Vec<(String, Value, &str)> = vec![
        (
            path.clone(),
            json!({"extras": {"where": "1=1) OR (1=1"}}),
            "parse_error",
        ),
        (
            path.clone(),
            json!({"filters": [{"col": {"sqlExpression": "(SELECT max(note) FROM orders)", "label": "x"}, "op": "IS NOT NULL"}]}),
            "subquery_not_allowed",
        ),
        (
            format!("{path}&tenant=bob"),
            json!({}),
            "chart_field_refused",
        ),
        (
            format!("{path}&datasource_id={orders}"),
            json!({}),
            "bad_query_context",
        ),
        (
            format!("/datasource/samples?datasource_id={orders}&datasource_type=query"),
            json!({}),
            "chart_field_refused",
        ),
        (path.clone(), json!([1]), "bad_query_context"),
    ];
    for (path, body, kind) in refused {
        let (reply, marker) = carol.post_json(&path, &body);
        assert_eq!(
            (reply.status >= 400, reply.json()["kind"].as_str()),
            (true, Some(kind)),
            "{path} {body}: {}",
            reply.text()
        );
        assert!(!superset.received(&marker), "{path} {body}");
    }
}

// --- Superset's MCP service (`superset mcp run`) behind datagate ------------------------

/// datagate with the Superset pack in front of Superset's MCP service (and the demo
/// filters, as for SQL Lab).
fn mcp_gateway(superset: &Superset) -> support::gateway::Gateway {
    superset_gateway(
        superset,
        SupersetGatewayOptions {
            upstream: Some(superset.mcp().address),
            ..SupersetGatewayOptions::default()
        },
    )
}

fn tool_call(id: i64, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
}

fn execute_sql(id: i64, database_id: u64, sql: &str) -> Value {
    tool_call(
        id,
        "execute_sql",
        json!({"request": {"database_id": database_id, "sql": sql}}),
    )
}

/// A tool's result as Superset's MCP service returns it: the JSON in its text content.
fn tool_result(answer: &Value) -> Value {
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text content in {answer}"));
    serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// execute_sql's rows in column order, and the SQL Superset executed.
fn mcp_sql_rows(answer: &Value) -> (Vec<Vec<Value>>, String) {
    let result = tool_result(answer);
    assert_eq!(result["success"], true, "{result}");
    let columns: Vec<String> = result["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|column| column["name"].as_str().unwrap().to_string())
        .collect();
    let rows = result["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| columns.iter().map(|name| row[name].clone()).collect())
        .collect();
    let executed = result["statements"]
        .as_array()
        .and_then(|statements| statements.last())
        .map(|statement| statement["executed_sql"].as_str().unwrap().to_string())
        .unwrap_or_default();
    (rows, executed)
}

#[test]
fn mcp_execute_sql_returns_only_the_callers_rows() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let gateway = mcp_gateway(superset);
    let database = superset.ids.database_id;
    for who in [&ALICE, &BOB, &ADMIN] {
        let client = caller(&gateway, who.name, who.roles);
        let expected_db = oracle(who);
        for (index, sql) in CORPUS.iter().enumerate() {
            let id = index as i64 + 1;
            let expected = sorted(rows_of(&expected_db, sql).unwrap());
            // The request object, the `query` alias, the request as a JSON string, and
            // through the `call_tool` proxy: each is what Superset reads, filtered.
            let shapes = [
                execute_sql(id, database, sql),
                tool_call(
                    id,
                    "execute_sql",
                    json!({"request": {"database_id": database, "query": sql}}),
                ),
                tool_call(
                    id,
                    "execute_sql",
                    json!({"request": json!({"database_id": database, "sql": sql}).to_string()}),
                ),
                tool_call(
                    id,
                    "call_tool",
                    json!({"name": "execute_sql", "arguments": {"request": {"database_id": database, "sql": sql}}}),
                ),
            ];
            for body in &shapes {
                let (reply, _) = client.mcp(body);
                assert_eq!(reply.status, 200, "{}: {body}: {}", who.name, reply.text());
                assert!(
                    reply
                        .header("content-type")
                        .is_some_and(|value| value.starts_with("text/event-stream")),
                    "Superset's stream reaches the client: {:?}",
                    reply.headers
                );
                let answer = superset::mcp_answer(&reply, &json!(id));
                let (rows, executed) = mcp_sql_rows(&answer);
                assert_eq!(
                    sorted(rows),
                    expected,
                    "{} through MCP {body}: Superset executed {executed}",
                    who.name
                );
            }
        }
    }
    // Both `sql` and `query`: Superset reads `sql` (pydantic's first alias); datagate
    // rewrote both, so either reading is filtered.
    let alice = caller(&gateway, "alice", ALICE.roles);
    let (reply, _) = alice.mcp(&tool_call(
        50,
        "execute_sql",
        json!({"request": {"database_id": database, "query": "SELECT id, tenant_id FROM orders WHERE 1 = 1", "sql": "SELECT id, tenant_id FROM orders"}}),
    ));
    let (rows, executed) = mcp_sql_rows(&superset::mcp_answer(&reply, &json!(50)));
    assert_eq!(
        sorted(rows),
        sorted(rows_of(&oracle(&ALICE), "SELECT id, tenant_id FROM orders").unwrap()),
        "{executed}"
    );
    assert!(executed.contains("tenant_id = 'alice'"), "{executed}");

    // The control: straight to the MCP service, alice's first query returns every row.
    let (direct, _) = superset.mcp().direct(
        Some(("alice", ALICE.roles)),
        &execute_sql(1, database, CORPUS[0]),
    );
    let (rows, _) = mcp_sql_rows(&superset::mcp_answer(&direct, &json!(1)));
    let all = rows_of(&oracle(&ADMIN), "SELECT count(*) FROM orders").unwrap();
    assert_eq!(
        json!(rows.len()),
        all[0][0],
        "Superset alone applies no filter to MCP SQL"
    );
}

#[test]
fn mcp_runs_as_the_caller_datagate_authenticated() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let gateway = mcp_gateway(superset);
    for who in [&ALICE, &BOB, &ADMIN] {
        let client = caller(&gateway, who.name, who.roles);
        for body in [
            tool_call(1, "get_instance_info", json!({})),
            tool_call(
                1,
                "call_tool",
                json!({"name": "get_instance_info", "arguments": {}}),
            ),
        ] {
            let (reply, _) = client.mcp(&body);
            let user = &tool_result(&superset::mcp_answer(&reply, &json!(1)))["current_user"];
            assert_eq!(user["username"], who.name, "{body}: {user}");
            assert_eq!(user["roles"], json!(who.roles), "{body}: {user}");
        }
    }
    // Callers at the same time: each message runs in its own Flask context, so no
    // caller's user carries into another's call.
    std::thread::scope(|scope| {
        for who in [&ALICE, &BOB, &ADMIN] {
            let gateway = &gateway;
            scope.spawn(move || {
                let client = caller(gateway, who.name, who.roles);
                for round in 0..8 {
                    let tool = if round % 2 == 0 {
                        "get_instance_info"
                    } else {
                        "call_tool"
                    };
                    let arguments = if round % 2 == 0 {
                        json!({})
                    } else {
                        json!({"name": "get_instance_info", "arguments": {}})
                    };
                    let (reply, _) = client.mcp(&tool_call(round, tool, arguments));
                    let answer = superset::mcp_answer(&reply, &json!(round));
                    assert_eq!(
                        tool_result(&answer)["current_user"]["username"],
                        who.name,
                        "round {round}"
                    );
                }
            });
        }
    });
    // A client's own identity headers never reach the service: datagate writes its own.
    let alice = caller(&gateway, "alice", ALICE.roles);
    let marker = superset::marker();
    let reply = superset::send(
        "POST",
        &gateway.url(&format!("/mcp?marker={marker}")),
        &[
            (
                "Authorization",
                &format!("Bearer {}", alice.token.clone().unwrap()),
            ),
            ("Accept", "application/json, text/event-stream"),
            ("X-Datagate-User", "admin"),
            ("X_Datagate_Roles", "Admin"),
        ],
        Some((
            "application/json",
            tool_call(2, "get_instance_info", json!({}))
                .to_string()
                .into_bytes(),
        )),
    );
    let user = &tool_result(&superset::mcp_answer(&reply, &json!(2)))["current_user"];
    assert_eq!(user["username"], "alice", "{user}");
    // The marker check itself: what datagate forwards is in the service's log.
    assert!(superset.mcp().received(&marker));
    // Anonymous callers get datagate's 401 and the service sees nothing.
    let anonymous = support::superset::Caller {
        gateway: &gateway,
        token: None,
    };
    let (reply, marker) =
        anonymous.mcp(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}));
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert!(!superset.mcp().received(&marker));
    // Without datagate's identity headers the MCP service itself serves nothing — not the
    // tool list, not a tool (deploy/superset/datagate_security.py, `MCP_AUTH_FACTORY`).
    for body in [
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}),
        tool_call(4, "health_check", json!({})),
    ] {
        let (reply, _) = superset.mcp().direct(None, &body);
        let answer = superset::mcp_answer(&reply, &json!(4));
        let refused = answer["error"]["data"]["kind"] == "identity_missing"
            || answer["result"]["isError"] == true;
        assert!(refused, "{body}: {answer}");
    }
}

#[test]
fn mcp_refusals_carry_the_request_id_and_reach_nothing() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let mcp = superset.mcp();
    let gateway = mcp_gateway(superset);
    let database = superset.ids.database_id;
    let alice = caller(&gateway, "alice", ALICE.roles);
    let gus = caller(&gateway, "gus", &["Gamma"]);
    let chart = superset.ids.charts["orders"];
    let injection = "' AS x UNION SELECT note FROM orders WHERE tenant_id = 'bob' --";
    let template_attack = tool_call(
        11,
        "execute_sql",
        json!({"request": {"database_id": database, "sql": "SELECT '{{ t }}' AS x", "template_params": {"t": injection}}}),
    );
    let proxied_template = tool_call(
        12,
        "call_tool",
        json!({"name": "execute_sql", "arguments": template_attack["params"]["arguments"].clone()}),
    );
    let get_chart_data = tool_call(
        13,
        "get_chart_data",
        json!({"request": {"identifier": chart}}),
    );
    let boolean_database = tool_call(
        14,
        "execute_sql",
        json!({"request": {"database_id": true, "sql": "SELECT id, tenant_id FROM orders"}}),
    );
    let read_resource = json!({"jsonrpc": "2.0", "id": "r-15", "method": "resources/read", "params": {"uri": "instance://metadata"}});
    // (caller, request, (status, kind; "" for none)): each refused by datagate as a
    // JSON-RPC error carrying the request's id.
    let attempts: Vec<(&support::superset::Caller, Value, (u16, &str))> = vec![
        (&alice, template_attack.clone(), (403, "template_syntax")),
        (&alice, proxied_template.clone(), (403, "template_syntax")),
        (
            &alice,
            tool_call(
                16,
                "execute_sql",
                json!({"request": {"database_id": database, "sql": "SELECT id FROM orders", "template_params": {"t": 1}}}),
            ),
            (403, "template_syntax"),
        ),
        (
            &alice,
            get_chart_data.clone(),
            (403, "chart_replay_filtered"),
        ),
        (
            &alice,
            tool_call(
                17,
                "call_tool",
                json!({"name": "get_chart_preview", "arguments": {"request": {"identifier": chart, "format": "table"}}}),
            ),
            (403, "chart_replay_filtered"),
        ),
        (&alice, boolean_database.clone(), (400, "")),
        (&alice, read_resource.clone(), (403, "mcp_method_refused")),
        (
            &alice,
            tool_call(18, "drop_everything", json!({})),
            (403, "mcp_unknown_tool"),
        ),
        (
            &alice,
            tool_call(
                19,
                "call_tool",
                json!({"name": "drop_everything", "arguments": {}}),
            ),
            (403, "mcp_unknown_tool"),
        ),
        (
            &alice,
            tool_call(
                20,
                "call_tool",
                json!({"name": "call_tool", "arguments": {"name": "execute_sql", "arguments": {}}}),
            ),
            (400, "mcp_invalid"),
        ),
        // The pack's old flat shape: Superset refuses it too; datagate finds no database.
        (
            &alice,
            tool_call(
                21,
                "execute_sql",
                json!({"database_id": database, "sql": "SELECT 1"}),
            ),
            (400, ""),
        ),
        (
            &alice,
            tool_call(
                22,
                "execute_sql",
                json!({"request": "{\"database_id\": 1, \"sql\": \"SELECT 1\", \"sql\": \"SELECT 2\"}"}),
            ),
            (400, "mcp_invalid"),
        ),
        (
            &alice,
            tool_call(23, "execute_sql", json!({"request": "[1]"})),
            (400, "mcp_invalid"),
        ),
        (
            &alice,
            json!({"jsonrpc": "2.0", "id": 24, "method": "tools/call", "params": {"name": "execute_sql", "arguments": {}, "task": {}}}),
            (400, "mcp_invalid"),
        ),
        (&gus, execute_sql(25, database, "SELECT 1"), (403, "")),
        (
            &gus,
            tool_call(
                26,
                "call_tool",
                json!({"name": "execute_sql", "arguments": {"request": {"database_id": database, "sql": "SELECT 1"}}}),
            ),
            (403, ""),
        ),
    ];
    for (client, body, (status, kind)) in &attempts {
        let (reply, marker) = client.mcp(body);
        assert_eq!(reply.status, 200, "{body}: {}", reply.text());
        let answer = reply.json();
        assert_eq!(answer["jsonrpc"], "2.0", "{answer}");
        assert_eq!(answer["id"], body["id"], "the request's id: {answer}");
        let kind = if kind.is_empty() {
            Value::Null
        } else {
            json!(kind)
        };
        assert_eq!(
            (
                &answer["error"]["data"]["status"],
                &answer["error"]["data"]["kind"]
            ),
            (&json!(status), &kind),
            "{body}: {answer}"
        );
        assert!(!mcp.received(&marker), "the MCP service received {body}");
    }

    // The controls: each attack works against the MCP service directly.
    let alice_direct = Some(("alice", ALICE.roles));
    for body in [&template_attack, &proxied_template] {
        let (reply, _) = mcp.direct(alice_direct, body);
        let (rows, _) = mcp_sql_rows(&superset::mcp_answer(&reply, &body["id"]));
        let values: Vec<Value> = rows.into_iter().flatten().collect();
        assert!(
            values.contains(&json!("b1")),
            "bob's notes for alice: {values:?}"
        );
    }
    let (reply, _) = mcp.direct(alice_direct, &boolean_database);
    let (rows, _) = mcp_sql_rows(&superset::mcp_answer(&reply, &json!(14)));
    assert_eq!(
        rows.len(),
        7,
        "Superset reads `true` as database 1: {rows:?}"
    );
    let (reply, _) = mcp.direct(alice_direct, &get_chart_data);
    let data = tool_result(&superset::mcp_answer(&reply, &json!(13)));
    let tenants = data.to_string();
    assert!(
        tenants.contains("\"bob\""),
        "the saved chart's rows, every tenant's: {data}"
    );
    let (reply, _) = mcp.direct(alice_direct, &read_resource);
    let answer = superset::mcp_answer(&reply, &json!("r-15"));
    assert!(answer["result"]["contents"].is_array(), "{answer}");
    // Superset 6.1 itself refuses a `request` sent as a JSON string (pydantic expects the
    // object); through datagate the same call returns alice's rows (previous test), as
    // the object datagate checked and forwarded.
    let string_request = tool_call(
        27,
        "execute_sql",
        json!({"request": json!({"database_id": database, "sql": "SELECT 1 AS one"}).to_string()}),
    );
    let (reply, _) = mcp.direct(alice_direct, &string_request);
    let answer = superset::mcp_answer(&reply, &json!(27));
    assert!(
        answer["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|text| text.starts_with("Error")),
        "{answer}"
    );
}

/// What Superset 6.1 generates beyond a plain table query, each through datagate: a
/// series limit (an inner top-groups subquery joined to the main query), a time series
/// with a series limit on a virtual dataset (the dataset's SQL wrapped twice), and a
/// virtual dataset that lacks the filters' columns. The caller's filters must reach
/// every SELECT that reads the table, and rows must equal the oracle's.
#[test]
fn chart_rls_holds_for_series_limits_time_series_and_virtual_datasets() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let gateway = chart_gateway(superset);
    let orders = superset.ids.datasets["orders"];
    let daily = superset.ids.datasets["orders_daily"];
    let amounts = superset.ids.datasets["orders_amounts"];
    let context = |dataset: u64, viz: &str, query: Value, result_type: &str| {
        json!({
            "datasource": {"id": dataset, "type": "table"},
            "force": true,
            "queries": [query],
            "form_data": {"viz_type": viz, "datasource": format!("{dataset}__table")},
            "result_format": "json",
            "result_type": result_type
        })
    };
    // Top tenant by count (series limit 1), then its rows grouped by region.
    let series = json!({
        "columns": ["tenant_id", "region"], "metrics": ["count"],
        "series_columns": ["tenant_id"], "series_limit": 1, "series_limit_metric": "count",
        "order_desc": true, "orderby": [["count", false]], "filters": [],
        "extras": {"having": "", "where": "amount > 0"}, "row_limit": 1000
    });
    // The 6.1 line chart's query: a day axis, a series per tenant, top five series.
    let time_series = json!({
        "time_range": "No filter", "granularity": "ts", "filters": [],
        "extras": {"having": "", "where": "amount > 0", "time_grain_sqla": "P1D"},
        "columns": [{"timeGrain": "P1D", "columnType": "BASE_AXIS", "sqlExpression": "ts",
                     "label": "ts", "expressionType": "SQL"}, "tenant_id"],
        "metrics": ["count"], "orderby": [["count", false]], "series_columns": ["tenant_id"],
        "series_limit": 5, "series_limit_metric": "count", "order_desc": true,
        "row_limit": 10000, "time_offsets": [], "post_processing": []
    });
    let series_oracle = "SELECT tenant_id, region, count(*) FROM orders WHERE amount > 0 \
                         GROUP BY tenant_id, region";
    let time_series_oracle = "SELECT CAST(strftime('%s', date('2024-01-01', '+' || id || ' days')) \
                              AS INTEGER) * 1000, tenant_id, count(*) FROM orders \
                              WHERE amount > 0 GROUP BY id, tenant_id";
    for who in [&ALICE, &BOB] {
        let client = caller(&gateway, who.name, who.roles);
        let predicate = format!("tenant_id = '{}'", who.name);
        let expected = oracle(who);
        for (dataset, viz, query, columns, oracle_sql) in [
            (
                orders,
                "table",
                &series,
                ["tenant_id", "region", "count"],
                series_oracle,
            ),
            (
                daily,
                "echarts_timeseries_line",
                &time_series,
                ["ts", "tenant_id", "count"],
                time_series_oracle,
            ),
        ] {
            // The SQL Superset generated: the predicate in the series-limit subquery
            // and in the main query.
            let (reply, _) = client.post_json(
                "/api/v1/chart/data",
                &context(dataset, viz, query.clone(), "query"),
            );
            assert_eq!(reply.status, 200, "{}: {}", who.name, reply.text());
            let generated = reply.json()["result"][0]["query"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(generated.contains("AS series_limit"), "{generated}");
            assert_eq!(
                generated.matches(&predicate).count(),
                2,
                "{}: the filter in both SELECTs: {generated}",
                who.name
            );
            assert_eq!(
                generated.matches("note <> 'internal'").count(),
                2,
                "{generated}"
            );
            // The rows Superset returned.
            let (reply, _) = client.post_json(
                "/api/v1/chart/data",
                &context(dataset, viz, query.clone(), "full"),
            );
            assert_eq!(reply.status, 200, "{}: {}", who.name, reply.text());
            let answer = reply.json();
            let got: Vec<Vec<String>> = answer["result"][0]["data"]
                .as_array()
                .unwrap_or_else(|| panic!("no data: {answer}"))
                .iter()
                .map(|row| {
                    columns
                        .iter()
                        .map(|name| shown_number(&row[*name]))
                        .collect()
                })
                .collect();
            let want: Vec<Vec<String>> = rows_of(&expected, oracle_sql)
                .unwrap()
                .iter()
                .map(|row| row.iter().map(shown_number).collect())
                .collect();
            assert_eq!(
                sorted_text(got),
                sorted_text(want),
                "{} on dataset {dataset}: Superset ran {}",
                who.name,
                answer["result"][0]["query"]
            );
        }
    }
    // The control: straight to Superset, alice's time series has every tenant's rows
    // (the virtual dataset filters nothing by itself).
    let direct = superset.direct(
        "POST",
        "/api/v1/chart/data",
        "alice",
        ALICE.roles,
        Some(&context(
            daily,
            "echarts_timeseries_line",
            time_series.clone(),
            "full",
        )),
    );
    assert_eq!(direct.status, 200, "{}", direct.text());
    let all = rows_of(
        &oracle(&ADMIN),
        "SELECT count(*) FROM orders WHERE amount > 0",
    )
    .unwrap();
    assert_eq!(
        json!(direct.json()["result"][0]["data"].as_array().unwrap().len()),
        all[0][0]
    );

    // A mapped virtual dataset without the filters' columns: Superset cannot apply the
    // condition and fails; no row comes back. A caller no filter applies to reads it.
    let plain =
        json!({"columns": ["id", "amount"], "extras": {"where": "amount > 0"}, "row_limit": 100});
    let alice = caller(&gateway, "alice", ALICE.roles);
    let (reply, _) = alice.post_json(
        "/api/v1/chart/data",
        &context(amounts, "table", plain.clone(), "full"),
    );
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(
        reply.text().contains("no such column: tenant_id"),
        "{}",
        reply.text()
    );
    assert!(reply.json()["result"].is_null(), "{}", reply.text());
    let admin = caller(&gateway, "admin", ADMIN.roles);
    let (reply, _) = admin.post_json(
        "/api/v1/chart/data",
        &context(amounts, "table", plain, "full"),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        json!(reply.json()["result"][0]["data"].as_array().unwrap().len()),
        all[0][0]
    );
}

/// A number or text as one string, integral numbers without a fraction (Superset
/// returns epoch milliseconds and counts as floats or integers depending on the path).
fn shown_number(value: &Value) -> String {
    match value {
        Value::Number(number) => match number.as_f64() {
            Some(float) if float.fract() == 0.0 && float.abs() < 1e15 => {
                format!("{}", float as i64)
            }
            _ => number.to_string(),
        },
        other => as_text(other),
    }
}

#[test]
fn mapped_datasets_keep_their_table_database_and_checked_sql() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let gateway = chart_gateway(superset);
    let dataset = superset.ids.datasets["orders"];
    let path = format!("/api/v1/dataset/{dataset}");
    // Admin: no role may move a mapped dataset off its table or store unchecked SQL in
    // it, since every filtered caller's charts read what is stored.
    let admin = caller(&gateway, "admin", &["Admin"]);
    let put = |body: Value| {
        admin.send(
            "PUT",
            &path,
            Some(("application/json", body.to_string().into_bytes())),
        )
    };
    let attempts: Vec<(Value, &str)> = vec![
        (
            json!({"sql": "SELECT * FROM customers"}),
            "chart_dataset_mapped",
        ),
        (json!({"table_name": "customers"}), "chart_dataset_mapped"),
        (json!({"schema": "other"}), "chart_dataset_mapped"),
        (json!({"database_id": 999}), "chart_dataset_mapped"),
        (
            json!({"template_params": "{\"tenant\": \"bob\"}"}),
            "chart_dataset_mapped",
        ),
        (
            json!({"metrics": [{"metric_name": "everyone", "expression": "(SELECT sum(amount) FROM orders)"}]}),
            "subquery_not_allowed",
        ),
        (
            json!({"columns": [{"column_name": "leak", "expression": "(SELECT group_concat(note) FROM orders)"}]}),
            "subquery_not_allowed",
        ),
        (
            json!({"fetch_values_predicate": "1 = 1 --"}),
            "comment_not_allowed",
        ),
    ];
    for (body, kind) in attempts {
        let (reply, marker) = put(body.clone());
        // 400 for SQL that cannot be read (a comment), 403 for what is refused.
        assert!(
            reply.status == 403 || reply.status == 400,
            "{body}: {}",
            reply.text()
        );
        assert_eq!(reply.json()["kind"], kind, "{body}: {}", reply.text());
        assert!(!superset.received(&marker), "Superset received {body}");
    }
    // The legacy editor's form (`/datasource/save/`, `data=<dataset JSON>`) likewise.
    let form_body = format!(
        "data={}",
        form_urlencoded::byte_serialize(
            json!({"id": dataset, "type": "table", "database": {"id": 1}, "sql": "SELECT * FROM customers", "columns": [], "metrics": [], "owners": []})
                .to_string()
                .as_bytes()
        )
        .collect::<String>()
    );
    // A `q` naming an unmapped dataset does not stand in for the body's `id`, which is
    // what Superset's save reads.
    for save in ["/datasource/save/", "/datasource/save/?q=!(999)"] {
        let (reply, marker) = admin.send(
            "POST",
            save,
            Some((
                "application/x-www-form-urlencoded",
                form_body.clone().into_bytes(),
            )),
        );
        assert_eq!(reply.status, 403, "{save}: {}", reply.text());
        assert_eq!(reply.json()["kind"], "chart_dataset_mapped");
        assert!(!superset.received(&marker));
    }
    // Deleting it (alone or in a bulk delete) would let a new dataset take its id.
    for delete in [path.clone(), format!("/api/v1/dataset/?q=!({dataset})")] {
        let (reply, marker) = admin.send("DELETE", &delete, None);
        assert_eq!(reply.status, 403, "{delete}: {}", reply.text());
        assert_eq!(reply.json()["kind"], "chart_dataset_mapped");
        assert!(!superset.received(&marker));
    }
    // Imports that overwrite datasets from a ZIP datagate does not read.
    let (reply, marker) = admin.send(
        "POST",
        "/api/v1/dataset/import/",
        Some(("multipart/form-data; boundary=x", b"--x--\r\n".to_vec())),
    );
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.json()["kind"], "chart_dataset_import_refused");
    assert!(!superset.received(&marker));

    // An edit that keeps the mapping's promise reaches Superset, with the stored
    // expression as datagate printed it.
    let description = unique("checked edit");
    let (reply, marker) = put(json!({
        "description": description,
        "table_name": "orders",
        "sql": null,
        "template_params": null,
        "fetch_values_predicate": "amount   >=   0"
    }));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(superset.received(&marker));
    let stored = superset.direct("GET", &path, "admin", &["Admin"], None);
    assert_eq!(stored.status, 200, "{}", stored.text());
    assert_eq!(stored.json()["result"]["description"], description.as_str());
    assert_eq!(
        stored.json()["result"]["fetch_values_predicate"],
        "amount >= 0"
    );
    // A dataset datagate does not map is Superset's to decide: forwarded.
    let customers = superset.ids.datasets["customers"];
    let (reply, marker) = admin.send(
        "PUT",
        &format!("/api/v1/dataset/{customers}"),
        Some((
            "application/json",
            json!({"description": unique("unmapped")})
                .to_string()
                .into_bytes(),
        )),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(superset.received(&marker));
}

/// A browser sends many requests at once, so after a role change several requests find
/// the Superset user's roles stale and write the same role rows together. Every one of
/// them is answered with exactly the roles datagate named (the losers of that race re-read
/// what the winner wrote), none with an error or as another role set. Sent to Superset
/// directly: the code under test is `deploy/superset/datagate_security.py`.
#[test]
fn concurrent_requests_after_a_role_change_all_get_the_new_roles() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let user = unique("rosa");
    let role_sets: [&[&str]; 2] = [&["Gamma"], &["Gamma", "sql_lab"]];
    for round in 0..6 {
        let roles = role_sets[round % 2];
        let barrier = std::sync::Barrier::new(8);
        let replies: Vec<superset::Reply> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        superset.direct("GET", "/api/v1/me/roles/", &user, roles, None)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for reply in replies {
            assert_eq!(reply.status, 200, "round {round}: {}", reply.text());
            let mut held: Vec<String> = reply.json()["result"]["roles"]
                .as_object()
                .unwrap_or_else(|| panic!("round {round}: {}", reply.text()))
                .keys()
                .cloned()
                .collect();
            held.sort();
            assert_eq!(held, roles, "round {round}");
        }
    }
}

/// The menu a page shows follows a role change at once. Superset memoizes each user's
/// bootstrap data, menu included, for 60 s (`cached_common_bootstrap_data`): without
/// `datagate_security.py` forgetting it when it changes the user's roles, a user given
/// Gamma kept sql_lab's menu (found by the browser test), and one whose roles were taken
/// away kept showing the old menu. Sent to Superset directly, as above.
#[test]
fn the_menu_follows_a_role_change_at_once() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let user = unique("mona");
    let menu = |roles: &[&str]| -> Vec<String> {
        let page = superset.direct("GET", "/superset/welcome/", &user, roles, None);
        assert_eq!(page.status, 200, "{}", page.text());
        let text = page.text();
        let encoded = text
            .split("data-bootstrap=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no bootstrap data in the page"));
        let bootstrap: Value = serde_json::from_str(&unescape_attribute(encoded)).unwrap();
        bootstrap["common"]["menu_data"]["menu"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let sql_lab_only = menu(&["sql_lab"]);
    assert!(
        !sql_lab_only.iter().any(|name| name == "Dashboards"),
        "{sql_lab_only:?}"
    );
    let with_gamma = menu(&["Gamma", "sql_lab"]);
    assert!(
        with_gamma.iter().any(|name| name == "Dashboards"),
        "given Gamma: {with_gamma:?}"
    );
    let taken_away = menu(&["sql_lab"]);
    assert_eq!(taken_away, sql_lab_only, "Gamma taken away");
}

/// An HTML attribute value as Jinja (markupsafe) escapes it, unescaped.
fn unescape_attribute(value: &str) -> String {
    value
        .replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// With `charts.verify`, datagate reads each mapped dataset from Superset before a
/// filtered caller's chart data on it is forwarded, and applies the rules an edit through
/// datagate keeps to what is stored: SQL stored before datagate was in front (here: a
/// saved metric with a subquery over `orders`, written straight to Superset), and a mapped
/// id Superset does not have (the next dataset created would take it), are refused, and
/// Superset receives nothing of the caller's request.
#[test]
fn mapped_datasets_are_verified_against_what_superset_stores() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let name = unique("orders_rogue_");
    let created = superset.direct(
        "POST",
        "/api/v1/dataset/",
        "admin",
        &["Admin"],
        Some(&json!({
            "database": superset.ids.database_id,
            "schema": "main",
            "table_name": name,
            "sql": "SELECT id, tenant_id, amount, note FROM orders",
        })),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let rogue = created.json()["id"].as_u64().unwrap();
    let stored = superset.direct(
        "PUT",
        &format!("/api/v1/dataset/{rogue}"),
        "admin",
        &["Admin"],
        Some(&json!({"metrics": [
            {"metric_name": "everyone", "expression": "(SELECT group_concat(note) FROM orders)"}
        ]})),
    );
    assert_eq!(stored.status, 200, "{}", stored.text());
    let clean = superset.ids.datasets["orders"];
    let missing = 9_000_000 + rogue;
    let mut mappings = orders_mappings(superset, &[clean, rogue]);
    mappings.push_str(&format!(
        "  - {{id: {missing}, datasource: \"{}\", table: orders}}\n",
        superset.database_uid()
    ));
    let uid = superset.database_uid();
    let gateway = superset_gateway(
        superset,
        SupersetGatewayOptions {
            charts_yaml: Some(format!("datasets:\n{mappings}{VERIFY_YAML}")),
            policy_files: vec![(
                "41-charts-test.csv".to_string(),
                format!(
                    "p, role:Gamma, Superset, can_export_data\np, role:Gamma, datasources:uid:{uid}, Query\n"
                ),
            )],
            ..SupersetGatewayOptions::default()
        },
    );
    let alice = caller(&gateway, "alice", ALICE.roles);
    // The mapped dataset Superset stores as mapped: verified, and served filtered.
    let (reply, marker) =
        alice.post_json("/api/v1/chart/data", &chart_context(clean, "json", "full"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(superset.received(&marker));
    assert_eq!(
        sorted(chart_rows(&reply.json())),
        sorted(
            rows_of(
                &oracle(&ALICE),
                "SELECT id, tenant_id, amount FROM orders WHERE amount > 0"
            )
            .unwrap()
        ),
    );
    // The metric Superset pastes into every chart's query on the rogue dataset.
    let (reply, marker) =
        alice.post_json("/api/v1/chart/data", &chart_context(rogue, "json", "full"));
    assert_eq!(reply.status, 403, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["kind"], "chart_dataset_unverified", "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("/metrics/0/expression"), "{message}");
    assert!(!superset.received(&marker));
    // The verdict is kept: asked again, the same refusal.
    let (again, marker) =
        alice.post_json("/api/v1/chart/data", &chart_context(rogue, "json", "full"));
    assert_eq!(again.status, 403, "{}", again.text());
    assert!(!superset.received(&marker));
    // A mapped id Superset does not have.
    let (reply, marker) = alice.post_json(
        "/api/v1/chart/data",
        &chart_context(missing, "json", "full"),
    );
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.json()["kind"], "chart_dataset_unverified");
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("no such dataset"),
        "{}",
        reply.text()
    );
    assert!(!superset.received(&marker));
    // Three reads: one per dataset; the repeated request was decided from the kept verdict.
    let verifications = "datagate_dataset_verifications_total";
    assert_eq!(
        gateway.metric_with(verifications, &["result=\"verified\""]),
        1.0
    );
    assert_eq!(
        gateway.metric_with(verifications, &["result=\"mismatch\""]),
        2.0
    );
    // The control: straight to Superset, the rogue metric reads every tenant's notes.
    let mut context = chart_context(rogue, "json", "full");
    context["queries"][0]["metrics"] = json!(["everyone"]);
    context["queries"][0]["columns"] = json!([]);
    let direct = superset.direct(
        "POST",
        "/api/v1/chart/data",
        "alice",
        ALICE.roles,
        Some(&context),
    );
    assert_eq!(direct.status, 200, "{}", direct.text());
    let everyone = direct.json()["result"][0]["data"][0]["everyone"].to_string();
    for tenant_note in rows_of(&oracle(&BOB), "SELECT note FROM orders").unwrap() {
        let Value::String(note) = &tenant_note[0] else {
            continue;
        };
        assert!(
            everyone.contains(note.as_str()),
            "{everyone} lacks bob's {note}"
        );
    }
}

/// A mapped virtual dataset (its `sql` in the mapping) can be edited through datagate,
/// as Superset's dataset editor saves it — the whole dataset, its SQL unchanged — while
/// changing or clearing its SQL is refused and reaches nothing.
#[test]
fn a_mapped_virtual_dataset_is_edited_with_its_sql_unchanged() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    let gateway = chart_gateway(superset);
    let dataset = superset.ids.datasets["orders_amounts"];
    let path = format!("/api/v1/dataset/{dataset}");
    let stored = superset
        .direct("GET", &path, "admin", &["Admin"], None)
        .json();
    let sql = stored["result"]["sql"].as_str().unwrap().to_string();
    let admin = caller(&gateway, "admin", &["Admin"]);
    let put = |body: Value| {
        admin.send(
            "PUT",
            &path,
            Some(("application/json", body.to_string().into_bytes())),
        )
    };
    let description = unique("edited through datagate ");
    let (reply, marker) = put(json!({"sql": sql, "description": description}));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(superset.received(&marker));
    let after = superset
        .direct("GET", &path, "admin", &["Admin"], None)
        .json();
    assert_eq!(after["result"]["description"], json!(description));
    assert_eq!(after["result"]["sql"], json!(sql));
    for changed in [json!("SELECT * FROM customers"), json!(null), json!("")] {
        let (reply, marker) = put(json!({"sql": changed}));
        assert_eq!(reply.status, 403, "{changed}: {}", reply.text());
        assert_eq!(reply.json()["kind"], "chart_dataset_mapped");
        assert!(!superset.received(&marker), "{changed}");
    }
}
