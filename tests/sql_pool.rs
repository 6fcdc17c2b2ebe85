//! Bounded SQL work, end to end with a real `datagate` process: while clients flood a SQL
//! route with heavy statements (2,000-branch `UNION`s over a protected table), an
//! authentication-only route on the same proxy still answers, and the flood beyond the
//! pool's queue is refused with `503 sql_busy` — counted, and never forwarded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::gateway::{Gateway, GatewayOptions, repository_root};
use support::{call, clear_recorded, recorded_requests, spawn_upstream};

const ROUTES: &str = r#"
unmatched: deny
table:
  - name: chart-read
    methods: [GET]
    path: /api/v1/chart/{pk}
    permissions:
      any_of: ["can_read on Chart"]
  - name: sql-run
    methods: [POST]
    path: /api/sql
    permissions:
      any_of: ["can_read on Chart"]
    sql:
      locations:
        - json_pointer: /sql
          datasource: {fixed: demo}
"#;

const GRANTS: &str =
    "p, role:Public, Chart, can_read\np, role:Public, datasources:uid:demo, Query\n";

/// A statement that is expensive to check and rewrite: `branches` SELECTs over the
/// protected `orders` table, each wrapped by the rewrite (2,000 branches are about 56 KB,
/// under the 64 KiB body limit). `salt` makes every statement distinct, so none is a
/// rewrite-cache hit.
fn heavy_union(branches: usize, salt: usize) -> String {
    let mut sql = format!("SELECT id FROM orders WHERE id > {salt}");
    for _ in 1..branches {
        sql.push_str(" UNION SELECT id FROM orders");
    }
    sql
}

fn start(upstream: std::net::SocketAddr) -> Gateway {
    let mut options = GatewayOptions::new(upstream);
    options.routes_yaml = Some(ROUTES.to_string());
    let builtin =
        std::fs::read_to_string(repository_root().join("policies/00-builtin-hierarchy.csv"))
            .unwrap();
    let filters =
        std::fs::read_to_string(repository_root().join("policies/50-demo.rls.yaml")).unwrap();
    options.policy_files = Some(vec![
        ("00-builtin-hierarchy.csv".to_string(), builtin),
        ("10-grants.csv".to_string(), GRANTS.to_string()),
        ("50-demo.rls.yaml".to_string(), filters),
    ]);
    // One SQL thread and one queue slot: a handful of concurrent statements overflow it.
    options.extra_yaml = Some(
        "sql:\n  max_bytes: 262144\n  max_cpu_time: 30s\n  pool:\n    threads: 1\n    queue_limit: 1\n"
            .to_string(),
    );
    Gateway::start(options)
}

#[test]
fn an_auth_only_route_answers_while_sql_is_saturated_and_overload_is_sql_busy() {
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    // Owned by this thread: a failing assertion drops it, which stops the process.
    let gateway = start(upstream);
    let sql_url = gateway.url("/api/sql");

    // A light statement goes through the pool and is forwarded rewritten.
    let (status, _) = call(
        "POST",
        &gateway.url("/api/sql"),
        None,
        Some(r#"{"sql": "SELECT id FROM orders"}"#),
    );
    assert_eq!(status, 200);
    let forwarded = recorded_requests(upstream);
    assert_eq!(forwarded.len(), 1);
    assert!(
        forwarded[0].body_text.contains("note <> 'internal'"),
        "the forwarded SQL is the rewrite: {}",
        forwarded[0].body_text
    );
    clear_recorded(upstream);

    let stop = Arc::new(AtomicBool::new(false));
    let sql_ok = Arc::new(AtomicUsize::new(0));
    let sql_busy = Arc::new(AtomicUsize::new(0));
    let sql_other = Arc::new(AtomicUsize::new(0));
    let salt = Arc::new(AtomicUsize::new(10_000));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (sql_url, stop) = (sql_url.clone(), stop.clone());
            let (ok, busy, other, salt) = (
                sql_ok.clone(),
                sql_busy.clone(),
                sql_other.clone(),
                salt.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let sql = heavy_union(2_000, salt.fetch_add(1, Ordering::SeqCst));
                    let body = serde_json::json!({ "sql": sql }).to_string();
                    let response = ureq::post(&sql_url)
                        .timeout(Duration::from_secs(120))
                        .set("Content-Type", "application/json")
                        .send_string(&body);
                    let (status, text) = match response {
                        Ok(response) => (response.status(), response.into_string().unwrap()),
                        Err(ureq::Error::Status(status, response)) => {
                            (status, response.into_string().unwrap())
                        }
                        // The test failed and stopped the process.
                        Err(_) => return,
                    };
                    let kind = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|value| value["kind"].as_str().map(str::to_owned));
                    match (status, kind.as_deref()) {
                        (200, _) => ok.fetch_add(1, Ordering::SeqCst),
                        (503, Some("sql_busy")) => busy.fetch_add(1, Ordering::SeqCst),
                        _ => {
                            eprintln!("SQL route answered {status}: {text}");
                            other.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            })
        })
        .collect();

    // Wait until the pool is demonstrably saturated: a statement was refused as busy.
    assert!(
        Gateway::eventually(Duration::from_secs(120), || sql_busy.load(Ordering::SeqCst)
            > 0),
        "no statement was refused as busy"
    );
    // While the SQL clients keep the pool full, the auth-only route answers every time.
    let mut answered = 0;
    for pk in 0..20 {
        let (status, _) = call(
            "GET",
            &gateway.url(&format!("/api/v1/chart/{pk}")),
            None,
            None,
        );
        assert_eq!(status, 200, "the auth-only route answered {status}");
        answered += 1;
    }
    let busy_during = sql_busy.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(answered, 20);
    assert!(busy_during > 0);
    assert_eq!(
        sql_other.load(Ordering::SeqCst),
        0,
        "unexpected SQL answers"
    );

    // Busy refusals are counted, by the pool and as refusals with their status and kind.
    let busy = sql_busy.load(Ordering::SeqCst) as f64;
    assert_eq!(
        gateway.metric_with("datagate_sql_pool_rejected_total", &["reason=\"busy\""]),
        busy
    );
    assert_eq!(
        gateway.metric_with(
            "datagate_refusals_total",
            &["status=\"503\"", "kind=\"sql_busy\""]
        ),
        busy
    );
    // The upstream saw exactly the chart reads and the statements that were answered 200:
    // nothing refused as busy reached it.
    let recorded = recorded_requests(upstream);
    let sql_forwarded = recorded
        .iter()
        .filter(|request| request.path == "/api/sql")
        .count();
    assert_eq!(sql_forwarded, sql_ok.load(Ordering::SeqCst));
    assert_eq!(
        recorded
            .iter()
            .filter(|request| request.path.starts_with("/api/v1/chart/"))
            .count(),
        20
    );
}

#[test]
fn a_statement_over_its_cpu_budget_is_refused_and_not_forwarded() {
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    let mut options = GatewayOptions::new(upstream);
    options.routes_yaml = Some(ROUTES.to_string());
    let builtin =
        std::fs::read_to_string(repository_root().join("policies/00-builtin-hierarchy.csv"))
            .unwrap();
    let filters =
        std::fs::read_to_string(repository_root().join("policies/50-demo.rls.yaml")).unwrap();
    options.policy_files = Some(vec![
        ("00-builtin-hierarchy.csv".to_string(), builtin),
        ("10-grants.csv".to_string(), GRANTS.to_string()),
        ("50-demo.rls.yaml".to_string(), filters),
    ]);
    // A 1 ms budget: a 2,000-branch statement cannot be checked within it.
    options.extra_yaml = Some("sql:\n  max_cpu_time: 1ms\n".to_string());
    let gateway = Gateway::start(options);
    let body = serde_json::json!({ "sql": heavy_union(2_000, 1) }).to_string();
    let (status, answer) = call("POST", &gateway.url("/api/sql"), None, Some(&body));
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["kind"], "sql_cpu_budget");
    assert!(recorded_requests(upstream).is_empty());
    // A small statement still fits the budget.
    let (status, _) = call(
        "POST",
        &gateway.url("/api/sql"),
        None,
        Some(r#"{"sql": "SELECT 1"}"#),
    );
    assert_eq!(status, 200);
}
