//! Export controls, SQL Lab permissions, the route packs, the MCP tool table and
//! `/api/me/permissions`, end to end through the live proxy in front of the demo
//! upstream (which records what it receives: every refusal is checked to have sent it
//! nothing).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use datagate::principal::BasicRole;
use proptest::prelude::*;
use serde_json::{Value, json};
use support::gateway::{Gateway, GatewayOptions};
use support::{call, clear_recorded, recorded_requests, spawn_upstream};

const PACKS: &str = "packs: [superset, grafana]\n";

fn gateway_with(
    routes: Option<&str>,
    exports: Option<&str>,
) -> (Gateway, support::ChildProcess, std::net::SocketAddr) {
    let (upstream_process, upstream) = spawn_upstream(&[]);
    let mut options = GatewayOptions::new(upstream);
    options.routes_yaml = routes.map(str::to_string);
    options.exports_yaml = exports.map(str::to_string);
    // These tests are about exports and permissions: no datasource counts for chart
    // row-level security (tests/chart_data.rs covers it), so replays are not refused.
    options.extra_yaml = Some("charts:\n  datasources: []\n".to_string());
    (Gateway::start(options), upstream_process, upstream)
}

fn post_json(gateway: &Gateway, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    call("POST", &gateway.url(path), token, Some(&body.to_string()))
}

/// Adds a policy file and waits for the reload.
fn add_policy(gateway: &Gateway, name: &str, contents: &str) {
    let before = gateway.revision();
    gateway.write_policy(name, contents);
    assert!(Gateway::eventually(Duration::from_secs(10), || gateway
        .revision()
        > before));
}

#[test]
fn data_exports_need_the_granular_permission_with_no_csv_fallback() {
    let (gateway, _upstream_process, upstream) = gateway_with(Some(PACKS), None);
    add_policy(
        &gateway,
        "30-test.csv",
        "p, role:CsvOnly, *, can_csv\np, role:CsvOnly, Chart, can_read\n",
    );
    // Superset's built-in roles all hold `can_csv`; the demo's Analyst role
    // (policies/60-demo-roles.csv) reads charts and holds no export permission.
    let reader = gateway.token("gus", &["Analyst"], &[], None);
    let alpha = gateway.token("ada", &["Alpha"], &[], None);
    let csv_only = gateway.token("cy", &["CsvOnly"], &[], None);

    // `?format=csv` makes the chart data route an export.
    clear_recorded(upstream);
    let (status, body) = call(
        "GET",
        &gateway.url("/api/v1/chart/7/data/?format=csv"),
        Some(&reader),
        None,
    );
    assert_eq!(status, 403);
    assert_eq!(
        body["message"],
        "missing permission `can_export_data on Superset`"
    );
    assert!(recorded_requests(upstream).is_empty());
    let (status, _) = call(
        "GET",
        &gateway.url("/api/v1/chart/7/data/?format=CSV"),
        Some(&reader),
        None,
    );
    assert_eq!(status, 403, "values compare case-insensitively");
    let (status, _) = call(
        "GET",
        &gateway.url("/api/v1/chart/7/data/?format=json"),
        Some(&reader),
        None,
    );
    assert_eq!(status, 200, "not an export");
    let (status, _) = call(
        "GET",
        &gateway.url("/api/v1/chart/7/data/?format=json&format=xlsx"),
        Some(&reader),
        None,
    );
    assert_eq!(status, 403, "every occurrence of the parameter counts");
    let (status, _) = call(
        "GET",
        &gateway.url("/api/v1/chart/7/data/?format=csv"),
        Some(&alpha),
        None,
    );
    assert_eq!(status, 200);
    // Granular controls are a hard switch: can_csv alone does not allow it.
    let (status, body) = call(
        "GET",
        &gateway.url("/api/v1/chart/7/data/?format=csv"),
        Some(&csv_only),
        None,
    );
    assert_eq!(status, 403, "{body}");

    // A JSON body field (`result_format`) marks the chart data endpoint's exports.
    add_policy(
        &gateway,
        "31-datasource.csv",
        "p, role:Gamma, datasources:uid:demo, Query\n",
    );
    let chart_data = |format: &str, token: &str| {
        post_json(
            &gateway,
            "/api/v1/chart/data",
            Some(token),
            json!({"datasource": {"id": "demo", "type": "table"}, "queries": [{}], "result_format": format}),
        )
    };
    clear_recorded(upstream);
    assert_eq!(chart_data("csv", &reader).0, 403);
    assert_eq!(chart_data("xlsx", &reader).0, 403);
    assert!(recorded_requests(upstream).is_empty());
    assert_eq!(chart_data("json", &reader).0, 200);

    // Legacy `explore_json`: `?csv=true` / `?xlsx=true` make it an export (compared
    // case-insensitively, stricter than Superset's `== "true"`; any occurrence counts).
    add_policy(
        &gateway,
        "32-explore-json.csv",
        "p, role:Analyst, Superset, can_explore_json\n",
    );
    clear_recorded(upstream);
    for query in ["csv=true", "xlsx=true", "csv=TRUE", "json=true&csv=true"] {
        let (status, body) = call(
            "POST",
            &gateway.url(&format!("/superset/explore_json/?{query}")),
            Some(&reader),
            Some("{}"),
        );
        assert_eq!(
            (status, body["message"].clone()),
            (
                403,
                json!("missing permission `can_export_data on Superset`")
            ),
            "{query}"
        );
    }
    assert!(recorded_requests(upstream).is_empty());

    // Image exports: screenshots and thumbnails are exports by path.
    let (status, body) = call(
        "GET",
        &gateway.url("/api/v1/chart/7/screenshot/abc/"),
        Some(&reader),
        None,
    );
    assert_eq!(
        (status, body["message"].clone()),
        (
            403,
            json!("missing permission `can_export_image on Superset`")
        )
    );
    let (status, _) = call(
        "GET",
        &gateway.url("/api/v1/dashboard/3/thumbnail/abc/"),
        Some(&alpha),
        None,
    );
    assert_eq!(status, 200);
}

#[test]
fn with_granular_controls_off_can_csv_governs_data_and_images_are_free() {
    let (gateway, _upstream_process, _upstream) =
        gateway_with(Some(PACKS), Some("granular_export_controls: false\n"));
    add_policy(
        &gateway,
        "30-test.csv",
        "p, role:CsvOnly, *, can_csv\np, role:CsvOnly, Chart, can_read\np, role:NewOnly, *, can_export_data\np, role:NewOnly, Chart, can_read\n",
    );
    let csv_only = gateway.token("cy", &["CsvOnly"], &[], None);
    let new_only = gateway.token("ny", &["NewOnly"], &[], None);
    // Superset's built-in roles all hold `can_csv`; the demo's Analyst role
    // (policies/60-demo-roles.csv) reads charts and holds no export permission.
    let reader = gateway.token("gus", &["Analyst"], &[], None);
    assert_eq!(
        call(
            "GET",
            &gateway.url("/api/v1/chart/7/data/?format=csv"),
            Some(&csv_only),
            None
        )
        .0,
        200
    );
    let (status, body) = call(
        "GET",
        &gateway.url("/api/v1/chart/7/data/?format=csv"),
        Some(&new_only),
        None,
    );
    assert_eq!(status, 403);
    assert_eq!(body["message"], "missing permission `can_csv on Superset`");
    let (status, _) = call(
        "GET",
        &gateway.url("/api/v1/chart/7/screenshot/abc/"),
        Some(&reader),
        None,
    );
    assert_eq!(status, 200, "legacy: images are not export-controlled");
}

#[test]
fn the_response_guard_stops_undeclared_downloads_before_any_byte() {
    let (gateway, _upstream_process, upstream) = gateway_with(None, None);
    // Superset's built-in roles all hold `can_csv`; the demo's Analyst role
    // (policies/60-demo-roles.csv) reads charts and holds no export permission.
    let reader = gateway.token("gus", &["Analyst"], &[], None);
    let alpha = gateway.token("ada", &["Alpha"], &[], None);
    // The chart read route declares no export; the upstream answers with a CSV anyway.
    let url = gateway.url("/api/v1/chart/1?demo_content_type=text/csv");
    let response = ureq::get(&url)
        .set("Authorization", &format!("Bearer {reader}"))
        .call();
    let Err(ureq::Error::Status(status, response)) = response else {
        panic!("a CSV reached a caller without can_export_data");
    };
    assert_eq!(status, 403);
    assert_eq!(response.header("Content-Type"), Some("application/json"));
    let text = response.into_string().unwrap();
    assert!(!text.contains("region,revenue"), "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["message"],
        "missing permission `can_export_data on Superset`"
    );
    // The request did reach the upstream (the guard acts on the response).
    assert_eq!(recorded_requests(upstream).len(), 1);
    let (status, _) = call("GET", &url, Some(&alpha), None);
    assert_eq!(status, 200);
    let body = ureq::get(&url)
        .set("Authorization", &format!("Bearer {alpha}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(body.starts_with("region,revenue"));

    // Spreadsheets too; images only as attachments.
    let xlsx = gateway.url("/api/v1/chart/1?demo_content_type=application/vnd.openxmlformats-officedocument.spreadsheetml.sheet");
    assert_eq!(call("GET", &xlsx, Some(&reader), None).0, 403);
    let inline_png = gateway.url("/api/v1/chart/1?demo_content_type=image/png");
    assert_eq!(call("GET", &inline_png, Some(&reader), None).0, 200);
    let attached_png = gateway.url(
        "/api/v1/chart/1?demo_content_type=image/png&demo_disposition=attachment;%20filename=c.png",
    );
    let (status, body) = call("GET", &attached_png, Some(&reader), None);
    assert_eq!(
        (status, body["message"].clone()),
        (
            403,
            json!("missing permission `can_export_image on Superset`")
        )
    );

    // Refusals by the guard are audited as denials.
    let audited = Gateway::eventually(Duration::from_secs(5), || {
        gateway.audit_lines().iter().any(|line| {
            line["decision"] == "deny"
                && line["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("response refused")
        })
    });
    assert!(audited, "{:?}", gateway.audit_lines());
}

#[test]
fn sql_lab_routes_need_their_permissions() {
    let (gateway, _upstream_process, upstream) = gateway_with(Some(PACKS), None);
    add_policy(
        &gateway,
        "30-test.csv",
        "p, role:sql_lab, datasources:uid:demo, Query\n\
         p, role:Runner, SQLLab, can_execute_sql_query\n\
         p, role:Runner, datasources:uid:demo, Query\n",
    );
    let sql_lab = gateway.token("sue", &["sql_lab"], &[], None);
    let gamma = gateway.token("gus", &["Gamma"], &[], None);
    let runner = gateway.token("ron", &["Runner"], &[], None);
    let execute = json!({"database_id": "demo", "sql": "SELECT id FROM orders"});
    clear_recorded(upstream);
    let (status, body) = post_json(
        &gateway,
        "/api/v1/sqllab/execute/",
        Some(&gamma),
        execute.clone(),
    );
    assert_eq!(
        (status, body["message"].clone()),
        (
            403,
            json!("missing permission `can_execute_sql_query on SQLLab`")
        )
    );
    assert!(recorded_requests(upstream).is_empty());
    let (status, _) = post_json(
        &gateway,
        "/api/v1/sqllab/execute/",
        Some(&sql_lab),
        execute.clone(),
    );
    assert_eq!(status, 200);
    // The SQL arrived rewritten (row-level security applies to SQL Lab).
    let forwarded = recorded_requests(upstream);
    assert!(
        forwarded
            .last()
            .unwrap()
            .body_text
            .contains("(SELECT * FROM orders WHERE"),
        "{}",
        forwarded.last().unwrap().body_text
    );
    // Superset's sql_lab role estimates and formats too; a role holding only
    // `can_execute_sql_query` does neither. Format SQL is `can_read on SQLLab` in Superset.
    let (status, body) = post_json(
        &gateway,
        "/api/v1/sqllab/estimate/",
        Some(&runner),
        execute.clone(),
    );
    assert_eq!(
        (status, body["message"].clone()),
        (
            403,
            json!("missing permission `can_estimate_query_cost on SQLLab`")
        )
    );
    let (status, _) = post_json(
        &gateway,
        "/api/v1/sqllab/estimate/",
        Some(&sql_lab),
        execute.clone(),
    );
    assert_eq!(status, 200);
    let (status, body) = post_json(
        &gateway,
        "/api/v1/sqllab/format_sql/",
        Some(&runner),
        json!({"sql": "select 1"}),
    );
    assert_eq!(
        (status, body["message"].clone()),
        (403, json!("missing permission `can_read on SQLLab`"))
    );
    let (status, _) = post_json(
        &gateway,
        "/api/v1/sqllab/format_sql/",
        Some(&sql_lab),
        json!({"sql": "select 1"}),
    );
    assert_eq!(status, 200);
    // Dataset samples are a dataset's rows without datagate's filters: served to a caller
    // no filter applies to (refused while filters apply: tests/superset.rs).
    clear_recorded(upstream);
    let admin = gateway.admin_token();
    let (status, _) = call(
        "POST",
        &gateway.url("/datasource/samples?datasource_id=1&datasource_type=table"),
        Some(&admin),
        Some("{}"),
    );
    assert_eq!(status, 200);
    assert_eq!(recorded_requests(upstream).len(), 1);
}

#[test]
fn mcp_tool_calls_are_authorized_per_tool() {
    let (gateway, _upstream_process, upstream) = gateway_with(Some(PACKS), None);
    add_policy(
        &gateway,
        "30-test.csv",
        "p, role:sql_lab, datasources:uid:demo, Query\n",
    );
    let gamma = gateway.token("gus", &["Gamma"], &[], None);
    let sql_lab = gateway.token("sue", &["sql_lab"], &[], None);
    let tool_call = |id: i64, tool: &str, arguments: Value| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}});

    clear_recorded(upstream);
    let (status, _) = post_json(
        &gateway,
        "/mcp",
        Some(&gamma),
        tool_call(1, "list_charts", json!({"request": {"page": 1}})),
    );
    assert_eq!(status, 200);
    assert_eq!(
        recorded_requests(upstream).len(),
        1,
        "allowed calls are forwarded"
    );

    // A refused call is a JSON-RPC error, and never reaches the upstream.
    clear_recorded(upstream);
    let (status, body) = post_json(
        &gateway,
        "/mcp",
        Some(&gamma),
        tool_call(
            2,
            "execute_sql",
            json!({"database_id": "demo", "sql": "SELECT 1"}),
        ),
    );
    assert_eq!(status, 200);
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], 2);
    assert_eq!(body["error"]["code"], -32001);
    assert_eq!(
        body["error"]["message"],
        "missing permission `can_execute_sql_query on SQLLab`"
    );
    let (_, body) = post_json(
        &gateway,
        "/mcp",
        Some(&gamma),
        tool_call(3, "drop_everything", json!({})),
    );
    assert_eq!(body["error"]["data"]["kind"], "mcp_unknown_tool");
    let (_, body) = post_json(
        &gateway,
        "/mcp",
        Some(&gamma),
        json!([tool_call(4, "list_charts", json!({}))]),
    );
    assert_eq!(body["error"]["code"], -32600, "batches are refused: {body}");
    let (_, body) = post_json(
        &gateway,
        "/mcp",
        Some(&gamma),
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {}}),
    );
    assert_eq!(body["error"]["code"], -32600, "{body}");
    assert!(recorded_requests(upstream).is_empty());

    // execute_sql: permission, datasource and row-level security on its SQL, in the
    // `request` object Superset's MCP service reads.
    let last_forwarded = || -> Value {
        serde_json::from_str(&recorded_requests(upstream).last().unwrap().body_text).unwrap()
    };
    let (status, body) = post_json(
        &gateway,
        "/mcp",
        Some(&sql_lab),
        tool_call(
            6,
            "execute_sql",
            json!({"request": {"database_id": "demo", "sql": "SELECT id FROM orders"}}),
        ),
    );
    assert_eq!(status, 200, "{body}");
    let forwarded = last_forwarded();
    let sql = forwarded["params"]["arguments"]["request"]["sql"]
        .as_str()
        .unwrap();
    assert!(sql.contains("(SELECT * FROM orders WHERE"), "{sql}");
    assert_eq!(
        forwarded["id"], 6,
        "the rest of the request arrives unchanged"
    );
    // The request as a JSON string is forwarded as the object datagate checked.
    let (status, body) = post_json(
        &gateway,
        "/mcp",
        Some(&sql_lab),
        tool_call(
            7,
            "execute_sql",
            json!({"request": json!({"database_id": "demo", "query": "SELECT id FROM orders"}).to_string()}),
        ),
    );
    assert_eq!(status, 200, "{body}");
    let forwarded = last_forwarded();
    let request = &forwarded["params"]["arguments"]["request"];
    assert!(request.is_object(), "{forwarded}");
    assert!(
        request["query"]
            .as_str()
            .unwrap()
            .contains("(SELECT * FROM orders WHERE"),
        "{request}"
    );
    // Through the `call_tool` proxy: decided as execute_sql, forwarded as the proxy call
    // with the checked arguments (and the client's `_meta`).
    let (status, body) = post_json(
        &gateway,
        "/mcp",
        Some(&sql_lab),
        json!({"jsonrpc": "2.0", "id": "p-8", "method": "tools/call", "params": {
            "name": "call_tool",
            "arguments": {"name": "execute_sql", "arguments": {"request": {"database_id": "demo", "sql": "SELECT id FROM orders"}}},
            "_meta": {"progressToken": 8},
        }}),
    );
    assert_eq!(status, 200, "{body}");
    let forwarded = last_forwarded();
    assert_eq!(forwarded["params"]["name"], "call_tool", "{forwarded}");
    assert_eq!(forwarded["params"]["_meta"], json!({"progressToken": 8}));
    assert_eq!(forwarded["params"]["arguments"]["name"], "execute_sql");
    let sql = forwarded["params"]["arguments"]["arguments"]["request"]["sql"]
        .as_str()
        .unwrap();
    assert!(sql.contains("(SELECT * FROM orders WHERE"), "{sql}");
    // The proxy call of a tool the caller may not use is refused as that tool.
    clear_recorded(upstream);
    let (_, body) = post_json(
        &gateway,
        "/mcp",
        Some(&gamma),
        tool_call(
            9,
            "call_tool",
            json!({"name": "execute_sql", "arguments": {"request": {"database_id": "demo", "sql": "SELECT 1"}}}),
        ),
    );
    assert_eq!(
        (&body["id"], &body["error"]["message"]),
        (
            &json!(9),
            &json!("missing permission `can_execute_sql_query on SQLLab`")
        ),
        "{body}"
    );
    // Methods that are not in the route's list are refused, with their id.
    let (_, body) = post_json(
        &gateway,
        "/mcp",
        Some(&gamma),
        json!({"jsonrpc": "2.0", "id": 10, "method": "resources/read", "params": {"uri": "instance://metadata"}}),
    );
    assert_eq!(body["id"], 10, "{body}");
    assert_eq!(
        body["error"]["data"]["kind"], "mcp_method_refused",
        "{body}"
    );
    assert!(recorded_requests(upstream).is_empty());

    // Every MCP request needs a signed-in caller (Superset's MCP service runs each tool
    // as a user); non-call methods in the route's list pass for any of them.
    for body in [
        tool_call(11, "health_check", json!({})),
        json!({"jsonrpc": "2.0", "id": 12, "method": "tools/list"}),
    ] {
        let (status, _) = post_json(&gateway, "/mcp", None, body);
        assert_eq!(status, 401);
    }
    let (status, _) = post_json(
        &gateway,
        "/mcp",
        Some(&gamma),
        json!({"jsonrpc": "2.0", "id": 13, "method": "tools/list"}),
    );
    assert_eq!(status, 200);

    // Every call is audited under its tool's name.
    let audited = Gateway::eventually(Duration::from_secs(5), || {
        gateway
            .audit_lines()
            .iter()
            .any(|line| line["route"] == "mcp.execute_sql" && line["decision"] == "deny")
    });
    assert!(audited, "{:?}", gateway.audit_lines());
}

#[test]
fn grafana_pack_checks_every_datasource() {
    let (gateway, _upstream_process, upstream) = gateway_with(Some(PACKS), None);
    let viewer = gateway.token("vi", &[], &[], Some(BasicRole::Viewer));
    clear_recorded(upstream);
    let (status, _) = call(
        "GET",
        &gateway.url("/api/datasources/proxy/uid/pg_main/api/v1/query"),
        Some(&viewer),
        None,
    );
    assert_eq!(status, 403);
    let (status, _) = call(
        "GET",
        &gateway.url("/api/datasources/proxy/uid/demo/anything"),
        Some(&viewer),
        None,
    );
    assert_eq!(status, 200);
    let (status, _) = call(
        "DELETE",
        &gateway.url("/api/datasources/uid/demo"),
        Some(&viewer),
        None,
    );
    assert_eq!(status, 403, "Query does not include delete");
    let (status, _) = post_json(
        &gateway,
        "/api/ds/query",
        Some(&viewer),
        json!({"queries": [{"datasource": {"uid": "demo"}, "rawSql": "SELECT 1"}, {"datasource": {"uid": "pg_main"}, "rawSql": "SELECT 1"}]}),
    );
    assert_eq!(status, 403, "every query's datasource must be allowed");
    assert_eq!(recorded_requests(upstream).len(), 1);
}

#[test]
fn me_permissions_reports_the_callers_own_permissions() {
    let (gateway, _upstream_process, upstream) = gateway_with(Some(PACKS), None);
    let gamma = gateway.token("gus", &["Gamma"], &[], Some(BasicRole::Viewer));
    clear_recorded(upstream);
    let (status, me) = call(
        "GET",
        &gateway.url("/api/me/permissions"),
        Some(&gamma),
        None,
    );
    assert_eq!(status, 200);
    assert!(
        recorded_requests(upstream).is_empty(),
        "answered by datagate itself"
    );
    assert_eq!(me["user"], "gus");
    assert!(
        me["permissions"]
            .as_array()
            .unwrap()
            .contains(&json!({"permission": "can_read", "view": "Chart"}))
    );
    // Superset's Gamma holds `can_csv`, so datagate's granular permissions too.
    assert_eq!(me["exports"]["data"], true);
    assert_eq!(
        me["exports"]["required"]["data"],
        "can_export_data on Superset"
    );
    assert_eq!(me["datasources"]["demo"]["level"], "Query");
    let (_, anonymous) = call("GET", &gateway.url("/api/me/permissions"), None, None);
    assert_eq!(anonymous["kind"], "anonymous");
    // Superset's Public role holds nothing.
    assert_eq!(anonymous["permissions"], json!([]));
    assert_eq!(anonymous["exports"]["data"], false);
    let (status, _) = call(
        "GET",
        &gateway.url("/api/me/permissions"),
        Some("not-a-token"),
        None,
    );
    assert_eq!(status, 401);
}

/// A request of the packs and what it needs, as a frontend would derive it from
/// `/api/me/permissions`.
struct Probe {
    method: &'static str,
    path: &'static str,
    body: Option<Value>,
    /// Role permissions (any one of them) the route needs, `(permission, view)`.
    needs: &'static [(&'static str, &'static str)],
    /// A datasource action on `demo`.
    datasource_action: Option<&'static str>,
    /// An export kind the request is.
    export: Option<&'static str>,
}

fn probes() -> Vec<Probe> {
    vec![
        Probe {
            method: "GET",
            path: "/api/v1/chart/1",
            body: None,
            needs: &[("can_read", "Chart")],
            datasource_action: None,
            export: None,
        },
        Probe {
            method: "PUT",
            path: "/api/v1/chart/1",
            body: Some(json!({})),
            needs: &[("can_write", "Chart")],
            datasource_action: None,
            export: None,
        },
        Probe {
            method: "GET",
            path: "/api/v1/dashboard/1",
            body: None,
            needs: &[("can_read", "Dashboard")],
            datasource_action: None,
            export: None,
        },
        Probe {
            method: "POST",
            path: "/api/v1/saved_query/",
            body: Some(json!({})),
            needs: &[("can_write", "SavedQuery")],
            datasource_action: None,
            export: None,
        },
        Probe {
            method: "GET",
            path: "/api/v1/chart/1/data/?format=csv",
            body: None,
            needs: &[("can_read", "Chart")],
            datasource_action: None,
            export: Some("data"),
        },
        Probe {
            method: "GET",
            path: "/api/v1/chart/1/thumbnail/x/",
            body: None,
            needs: &[("can_read", "Chart")],
            datasource_action: None,
            export: Some("image"),
        },
        Probe {
            method: "GET",
            path: "/api/datasources/uid/demo",
            body: None,
            needs: &[],
            datasource_action: Some("datasources:read"),
            export: None,
        },
        Probe {
            method: "DELETE",
            path: "/api/datasources/uid/demo",
            body: None,
            needs: &[],
            datasource_action: Some("datasources:delete"),
            export: None,
        },
        Probe {
            method: "POST",
            path: "/api/v1/sqllab/format_sql/",
            body: Some(json!({"sql": "select 1"})),
            // Superset checks `can_read on SQLLab` for format_sql.
            needs: &[("can_read", "SQLLab")],
            datasource_action: None,
            export: None,
        },
        Probe {
            method: "GET",
            path: "/api/v1/dataset/",
            body: None,
            needs: &[("can_read", "Dataset")],
            datasource_action: None,
            export: None,
        },
    ]
}

fn predicted(me: &Value, probe: &Probe) -> bool {
    let granted = me["permissions"].as_array().unwrap();
    let holds = |permission: &str, view: &str| {
        granted.iter().any(|grant| {
            grant["permission"] == permission && (grant["view"] == view || grant["view"] == "*")
        })
    };
    let role_ok = probe.needs.is_empty()
        || probe
            .needs
            .iter()
            .any(|(permission, view)| holds(permission, view));
    let datasource_ok = probe.datasource_action.is_none_or(|action| {
        me["datasources"]["demo"]["actions"]
            .as_array()
            .is_some_and(|actions| actions.contains(&json!(action)))
    });
    let export_ok = probe.export.is_none_or(|kind| me["exports"][kind] == true);
    role_ok && datasource_ok && export_ok
}

#[test]
fn me_permissions_predicts_every_proxy_decision() {
    let (gateway, _upstream_process, _upstream) = gateway_with(Some(PACKS), None);
    add_policy(
        &gateway,
        "30-test.csv",
        "p, team:editors, datasources:uid:demo, Edit\np, role:Formatter, SQLLab, can_read\np, role:Exporter, *, can_export_image\n",
    );
    let roles = [
        "Admin",
        "Alpha",
        "Gamma",
        "sql_lab",
        "Formatter",
        "Exporter",
        "Nobody",
    ];
    let probes = probes();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        proptest::sample::subsequence(roles.to_vec(), 0..=3),
        any::<bool>(),
        proptest::option::of(prop_oneof![
            Just(BasicRole::Viewer),
            Just(BasicRole::Editor),
            Just(BasicRole::Admin)
        ]),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(roles, in_team, basic_role, anonymous)| {
            let token = (!anonymous).then(|| {
                let teams: &[&str] = if in_team { &["editors"] } else { &[] };
                gateway.token("prop-user", &roles, teams, basic_role)
            });
            let (status, me) = call("GET", &gateway.url("/api/me/permissions"), token.as_deref(), None);
            prop_assert_eq!(status, 200);
            for probe in &probes {
                let body = probe.body.as_ref().map(Value::to_string);
                let (status, answer) = call(probe.method, &gateway.url(probe.path), token.as_deref(), body.as_deref());
                let allowed = status == 200;
                prop_assert!(
                    status == 200 || status == 403 || status == 401,
                    "{} {}: unexpected {} {}", probe.method, probe.path, status, answer
                );
                prop_assert_eq!(
                    allowed,
                    predicted(&me, probe),
                    "{} {} for roles {:?} team {} basic {:?} anonymous {}: proxy said {} {}; /api/me/permissions said {}",
                    probe.method, probe.path, roles, in_team, basic_role, anonymous, status, answer, me
                );
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_export_permissions_migration_is_idempotent_over_files_and_store() {
    let (upstream_process, upstream) = spawn_upstream(&[]);
    let mut options = GatewayOptions::new(upstream);
    options.routes_yaml = Some(PACKS.to_string());
    options.store_yaml =
        Some("url: sqlite:store.db\npoll_interval: 100ms\nmax_staleness: 5s\n".to_string());
    options.extra_yaml = Some("charts:\n  datasources: []\n".to_string());
    let gateway = Gateway::start(options);
    add_policy(
        &gateway,
        "30-legacy.csv",
        "p, role:Legacy, *, can_csv\np, role:Legacy, Chart, can_read\n",
    );
    let admin = gateway.admin_token();
    let (status, _) = call(
        "POST",
        &gateway.admin_url("/api/roles"),
        Some(&admin),
        Some(&json!({"name": "StoreLegacy", "permissions": [
            {"permission": "can_csv", "view": "Superset"}, {"permission": "can_read", "view": "Chart"}
        ]}).to_string()),
    );
    assert_eq!(status, 201);
    let legacy = gateway.token("leo", &["Legacy"], &[], None);
    let store_legacy = gateway.token("sto", &["StoreLegacy"], &[], None);
    let export = gateway.url("/api/v1/chart/1/data/?format=csv");
    assert_eq!(call("GET", &export, Some(&legacy), None).0, 403);
    assert_eq!(call("GET", &export, Some(&store_legacy), None).0, 403);

    let migrate = |dry_run: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_datagate"));
        command
            .args(["migrate", "export-permissions", "--config"])
            .arg(&gateway.config_path);
        if dry_run {
            command.arg("--dry-run");
        }
        let output = command.env("DATAGATE_LOG", "error").output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let planned = migrate(true);
    assert!(
        planned.contains("would add `p, role:Legacy, *, can_export_data`"),
        "{planned}"
    );
    assert!(
        planned.contains("store: role `StoreLegacy`: would add `can_copy_clipboard on Superset`"),
        "{planned}"
    );
    assert!(
        !planned.contains("role:Alpha"),
        "Alpha already holds them: {planned}"
    );
    assert!(
        !gateway
            .policy_dir()
            .join("90-export-permissions.csv")
            .exists(),
        "dry run writes nothing"
    );
    assert_eq!(call("GET", &export, Some(&legacy), None).0, 403);

    let applied = migrate(false);
    assert!(
        applied.contains("added `p, role:Legacy, *, can_export_image`"),
        "{applied}"
    );
    // The running gateway picks up both: the file by hot reload, the store by its poller.
    assert!(Gateway::eventually(Duration::from_secs(10), || call(
        "GET",
        &export,
        Some(&legacy),
        None
    )
    .0 == 200));
    assert!(Gateway::eventually(Duration::from_secs(10), || call(
        "GET",
        &export,
        Some(&store_legacy),
        None
    )
    .0 == 200));

    let again = migrate(false);
    assert!(again.starts_with("nothing to change"), "{again}");
    drop(upstream_process);
}
