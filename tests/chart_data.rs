//! Row-level security on Superset chart data through the live proxy (the Superset route
//! pack, a recording upstream): the query context the upstream receives carries the
//! caller's filters in every query's `extras.where`, for the JSON body and the
//! form-encoded `form_data` the UI's CSV download posts; adversarial SQL fragments,
//! unmapped datasets and replays are refused and the upstream receives nothing.
//!
//! The oracle: the forwarded `WHERE` is run as Superset runs it for a physical dataset
//! (`SELECT … FROM orders WHERE <extras.where>`) on the full demo database and must
//! return exactly the rows of the caller's oracle copy (policies/50-demo.rls.yaml
//! evaluated independently, with bound parameters).

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
}

fn setup() -> Setup {
    let (upstream_process, upstream) = spawn_upstream(&[]);
    let mut options = GatewayOptions::new(upstream);
    options.routes_yaml = Some("unmatched: deny\npacks: [superset]\n".into());
    // The repository's policies, plus what the form-encoded CSV download (an export) and
    // the legacy views need, so refusals here are row-level security's own.
    let mut policies: Vec<(String, String)> =
        std::fs::read_dir(support::gateway::repository_root().join("policies"))
            .unwrap()
            .map(|entry| entry.unwrap())
            .filter(|entry| entry.path().is_file())
            .map(|entry| {
                (
                    entry.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(entry.path()).unwrap(),
                )
            })
            .collect();
    policies.push((
        "90-charts.csv".into(),
        "p, role:Gamma, Superset, can_export_data\np, role:Admin, Superset, can_export_data\np, role:Gamma, Superset, can_explore_json\np, role:Gamma, Datasource, can_get_column_values\n".into(),
    ));
    options.policy_files = Some(policies);
    options.extra_yaml =
        Some("charts:\n  datasets:\n    - {id: 7, datasource: demo, table: orders}\n".into());
    Setup {
        _upstream: upstream_process,
        upstream,
        gateway: Gateway::start(options),
    }
}

const CALLERS: [Caller; 4] = [
    Caller {
        name: "alice",
        roles: &["Gamma", "EU_team"],
    },
    Caller {
        name: "bob",
        roles: &["Gamma"],
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

fn token(gateway: &Gateway, caller: &Caller) -> String {
    gateway.token(caller.name, caller.roles, &[], Some(BasicRole::Viewer))
}

fn send(request: ureq::Request, body: Option<(&str, String)>) -> (u16, Value) {
    let result = match body {
        Some((content_type, body)) => request.set("Content-Type", content_type).send_string(&body),
        None => request.call(),
    };
    match result {
        Ok(response) => (
            response.status(),
            response.into_json().unwrap_or(Value::Null),
        ),
        Err(ureq::Error::Status(code, response)) => {
            (code, response.into_json().unwrap_or(Value::Null))
        }
        Err(error) => panic!("{error}"),
    }
}

fn post_json(setup: &Setup, token: &str, context: &Value) -> (u16, Value) {
    send(
        ureq::post(&setup.gateway.url("/api/v1/chart/data"))
            .set("Authorization", &format!("Bearer {token}")),
        Some(("application/json", context.to_string())),
    )
}

fn post_form(setup: &Setup, token: &str, context: &Value) -> (u16, Value) {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("form_data", &context.to_string())
        .finish();
    send(
        ureq::post(&setup.gateway.url("/api/v1/chart/data"))
            .set("Authorization", &format!("Bearer {token}")),
        Some(("application/x-www-form-urlencoded", body)),
    )
}

/// The query context the upstream received in its only request.
fn forwarded_context(setup: &Setup) -> Value {
    let recorded = recorded_requests(setup.upstream);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let request = &recorded[0];
    assert_eq!(request.path, "/api/v1/chart/data");
    let content_type = request.header_values("content-type").join(",");
    if content_type.contains("x-www-form-urlencoded") {
        let (_, value) = form_urlencoded::parse(request.body_text.as_bytes())
            .find(|(name, _)| name == "form_data")
            .expect("form_data forwarded");
        serde_json::from_str(&value).unwrap()
    } else {
        serde_json::from_str(&request.body_text).unwrap()
    }
}

fn context(dataset: Value, where_clause: &str) -> Value {
    json!({
        "datasource": {"id": dataset, "type": "table"},
        "force": false,
        "queries": [{
            "columns": ["id", "tenant_id", "note"],
            "metrics": [{"expressionType": "SQL", "sqlExpression": "SUM(amount)", "label": "total"}],
            "extras": {"having": "", "where": where_clause},
            "filters": [],
            "row_limit": 1000,
            "url_params": {"slice_id": "1"}
        }],
        "form_data": {"viz_type": "table", "url_params": {"slice_id": "1"}},
        "result_format": "json",
        "result_type": "full"
    })
}

/// Superset's SQL for a physical dataset keeps `extras.where` as one parenthesised
/// conjunct of the outer `WHERE`; run it on the whole database.
fn rows_superset_would_return(where_clause: Option<&str>) -> Vec<String> {
    let database = rusqlite::Connection::open_in_memory().unwrap();
    database.execute_batch(SCHEMA).unwrap();
    database.execute_batch(ROWS).unwrap();
    let sql = match where_clause {
        Some(clause) => format!("SELECT id, tenant_id, note FROM orders WHERE ({clause})"),
        None => "SELECT id, tenant_id, note FROM orders".into(),
    };
    sorted(rows_of(&database, &sql).unwrap())
}

#[test]
fn chart_data_carries_exactly_the_callers_rows_for_json_and_form_bodies() {
    let setup = setup();
    for caller in &CALLERS {
        let token = token(&setup.gateway, caller);
        let expected =
            sorted(rows_of(&oracle(caller), "SELECT id, tenant_id, note FROM orders").unwrap());
        for user_where in ["", "amount > 0"] {
            for form in [false, true] {
                clear_recorded(setup.upstream);
                let sent = context(json!(7), user_where);
                let (status, body) = if form {
                    post_form(&setup, &token, &sent)
                } else {
                    post_json(&setup, &token, &sent)
                };
                assert_eq!(status, 200, "{} form={form}: {body}", caller.name);
                let forwarded = forwarded_context(&setup);
                let query = &forwarded["queries"][0];
                let where_clause = query["extras"]["where"].as_str();
                let mut rows = rows_superset_would_return(where_clause);
                if !user_where.is_empty() {
                    // The user's own condition still applies (all demo amounts are > 0).
                    assert!(where_clause.unwrap().contains("amount > 0"));
                }
                rows.sort();
                assert_eq!(
                    rows, expected,
                    "{} form={form}: {where_clause:?}",
                    caller.name
                );
                let filtered = caller.name != "root";
                assert_eq!(
                    query.get("url_params").is_none(),
                    filtered,
                    "{}",
                    caller.name
                );
                assert_eq!(
                    query["metrics"][0]["sqlExpression"], "SUM(amount)",
                    "fragments are forwarded as printed"
                );
            }
        }
    }
}

#[test]
fn adversarial_fragments_unmapped_datasets_and_replays_are_refused_before_the_upstream() {
    let setup = setup();
    let alice = token(&setup.gateway, &CALLERS[0]);
    let root = token(&setup.gateway, &CALLERS[2]);
    let fragments: Vec<(Value, &str)> = vec![
        (
            json!({"metrics": [{"expressionType": "SQL", "sqlExpression": "(SELECT SUM(amount) FROM orders)", "label": "x"}]}),
            "subquery_not_allowed",
        ),
        (
            json!({"columns": [{"sqlExpression": "(SELECT group_concat(tenant_id) FROM orders)", "label": "x", "expressionType": "SQL"}]}),
            "subquery_not_allowed",
        ),
        (
            json!({"groupby": ["tenant_id || (SELECT 1 FROM orders)"], "metrics": ["count"]}),
            "subquery_not_allowed",
        ),
        (
            json!({"columns": ["id"], "extras": {"where": "1=1) OR (1=1"}}),
            "parse_error",
        ),
        (
            json!({"columns": ["id"], "extras": {"where": "1=1 --"}}),
            "comment_not_allowed",
        ),
        (
            json!({"columns": ["id"], "extras": {"where": "tenant_id = '{{ current_username() }}'"}}),
            "template_syntax",
        ),
        (
            json!({"metrics": ["count"], "orderby": [["load_extension('x')", true]]}),
            "denied_function",
        ),
        (
            json!({"columns": ["id"], "where": "1=1"}),
            "chart_field_refused",
        ),
        (
            json!({"metrics": ["count"], "annotation_layers": [{"sourceType": "table", "value": 3, "name": "a", "annotationType": "EVENT"}]}),
            "chart_field_refused",
        ),
    ];
    for (query, kind) in fragments {
        for form in [false, true] {
            clear_recorded(setup.upstream);
            let sent = json!({"datasource": {"id": 7, "type": "table"}, "queries": [query]});
            let (status, body) = if form {
                post_form(&setup, &alice, &sent)
            } else {
                post_json(&setup, &alice, &sent)
            };
            assert_eq!(body["kind"], kind, "{query} form={form}: {body}");
            assert!(status == 403 || status == 400, "{status}");
            assert!(
                recorded_requests(setup.upstream).is_empty(),
                "the upstream received a refused request"
            );
        }
    }

    // A dataset datagate cannot map: refused while filters apply, forwarded otherwise.
    for dataset in [
        json!(8),
        json!("5b6f7a2e-9d1c-4f3e-8a2b-1c2d3e4f5a6b"),
        json!("\u{0667}"),
    ] {
        clear_recorded(setup.upstream);
        let (status, body) = post_json(&setup, &alice, &context(dataset.clone(), ""));
        assert_eq!(
            (status, body["kind"].as_str()),
            (403, Some("chart_dataset_unmapped")),
            "{dataset}"
        );
        assert!(recorded_requests(setup.upstream).is_empty());
    }
    clear_recorded(setup.upstream);
    let (status, _) = post_json(&setup, &root, &context(json!(8), ""));
    assert_eq!(status, 200);
    assert_eq!(recorded_requests(setup.upstream).len(), 1);

    // Replays of query contexts datagate cannot see: refused while filters apply.
    for path in [
        "/api/v1/chart/3/data/?format=json",
        "/superset/explore_json/data/qc-0123456789abcdef",
        "/api/v1/chart/data/qc-0123456789abcdef",
    ] {
        clear_recorded(setup.upstream);
        let (status, body) = send(
            ureq::get(&setup.gateway.url(path)).set("Authorization", &format!("Bearer {alice}")),
            None,
        );
        assert_eq!(
            (status, body["kind"].as_str()),
            (403, Some("chart_replay_filtered")),
            "{path}: {body}"
        );
        assert!(recorded_requests(setup.upstream).is_empty());
    }
    for path in [
        "/api/v1/chart/3/data/?format=json",
        "/api/v1/chart/data/qc-0123456789abcdef",
    ] {
        clear_recorded(setup.upstream);
        let (status, _) = send(
            ureq::get(&setup.gateway.url(path)).set("Authorization", &format!("Bearer {root}")),
            None,
        );
        assert_eq!(status, 200, "{path}: an unfiltered caller's replay passes");
        assert_eq!(recorded_requests(setup.upstream).len(), 1, "{path}");
    }
}
