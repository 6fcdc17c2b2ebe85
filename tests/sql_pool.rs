//! Bounded SQL work, end to end with a real `datagate` process: while clients flood a SQL
//! route with heavy statements (2,000-branch `UNION`s over a protected table), an
//! authentication-only route on the same proxy still answers, and the flood beyond the
//! pool's queue is refused with `503 sql_busy` and a `Retry-After` — counted, and never
//! forwarded. One caller flooding the pool is held to its share (`429 sql_caller_limit`)
//! while another caller's SQL is still admitted, and its own cached statements, which
//! need no pool thread, are still answered.

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

const GRANTS: &str = "p, role:Public, Chart, can_read\np, role:Public, datasources:uid:demo, Query\n\
     p, role:Gamma, Chart, can_read\np, role:Gamma, datasources:uid:demo, Query\n";

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
    // One SQL thread and one queue slot: a handful of concurrent statements overflow it.
    start_with_pool(upstream, "threads: 1\n    queue_limit: 1")
}

fn start_with_pool(upstream: std::net::SocketAddr, pool: &str) -> Gateway {
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
    options.extra_yaml = Some(format!(
        "sql:\n  max_bytes: 262144\n  max_cpu_time: 30s\n  pool:\n    {pool}\n"
    ));
    Gateway::start(options)
}

/// What a SQL client got: status, `kind` and `Retry-After`.
struct Answer {
    status: u16,
    kind: Option<String>,
    retry_after: Option<String>,
    text: String,
}

fn post_sql(url: &str, token: Option<&str>, sql: &str) -> Option<Answer> {
    let body = serde_json::json!({ "sql": sql }).to_string();
    let mut request = ureq::post(url)
        .timeout(Duration::from_secs(120))
        .set("Content-Type", "application/json");
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let response = match request.send_string(&body) {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        // The test failed and stopped the process.
        Err(_) => return None,
    };
    let status = response.status();
    let retry_after = response.header("Retry-After").map(str::to_owned);
    let text = response.into_string().unwrap();
    let kind = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|value| value["kind"].as_str().map(str::to_owned));
    Some(Answer {
        status,
        kind,
        retry_after,
        text,
    })
}

/// A `Retry-After` of whole seconds, at least one.
fn retry_seconds(answer: &Answer) -> Option<u64> {
    answer
        .retry_after
        .as_deref()
        .and_then(|value| value.parse::<u64>().ok())
        .filter(|seconds| *seconds >= 1)
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
    let busy_without_retry_after = Arc::new(AtomicUsize::new(0));
    let salt = Arc::new(AtomicUsize::new(10_000));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (sql_url, stop) = (sql_url.clone(), stop.clone());
            let (ok, busy, other, salt, no_retry) = (
                sql_ok.clone(),
                sql_busy.clone(),
                sql_other.clone(),
                salt.clone(),
                busy_without_retry_after.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let sql = heavy_union(2_000, salt.fetch_add(1, Ordering::SeqCst));
                    let Some(answer) = post_sql(&sql_url, None, &sql) else {
                        return;
                    };
                    match (answer.status, answer.kind.as_deref()) {
                        (200, _) => ok.fetch_add(1, Ordering::SeqCst),
                        (503, Some("sql_busy")) => {
                            if retry_seconds(&answer).is_none() {
                                no_retry.fetch_add(1, Ordering::SeqCst);
                            }
                            busy.fetch_add(1, Ordering::SeqCst)
                        }
                        _ => {
                            eprintln!("SQL route answered {}: {}", answer.status, answer.text);
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
    assert_eq!(
        busy_without_retry_after.load(Ordering::SeqCst),
        0,
        "every sql_busy carries a Retry-After of whole seconds"
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

#[test]
fn one_caller_is_held_to_its_share_while_another_callers_sql_is_admitted() {
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    // One thread, room for three waiting, two tasks per caller. Six greedy clients would
    // fill all four places without the share (and the other caller would be refused
    // `sql_busy`); held to two, they leave room. The two callers hold at most three tasks,
    // so the three waiting places never overflow.
    let gateway = start_with_pool(
        upstream,
        "threads: 1\n    queue_limit: 3\n    per_caller_limit: 2",
    );
    let sql_url = gateway.url("/api/sql");
    let greedy = gateway.token("greedy", &["Gamma"], &[], None);
    let patient = gateway.token("patient", &["Gamma"], &[], None);
    // A statement the greedy caller ran before: its rewrite is cached.
    let cached_sql = "SELECT id FROM orders WHERE id < 3";
    assert_eq!(
        post_sql(&sql_url, Some(&greedy), cached_sql)
            .unwrap()
            .status,
        200
    );

    let stop = Arc::new(AtomicBool::new(false));
    let greedy_ok = Arc::new(AtomicUsize::new(0));
    let greedy_limited = Arc::new(AtomicUsize::new(0));
    let greedy_other = Arc::new(AtomicUsize::new(0));
    let limited_without_retry_after = Arc::new(AtomicUsize::new(0));
    let salt = Arc::new(AtomicUsize::new(50_000));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (sql_url, stop, token, salt) =
                (sql_url.clone(), stop.clone(), greedy.clone(), salt.clone());
            let (ok, limited, other, no_retry) = (
                greedy_ok.clone(),
                greedy_limited.clone(),
                greedy_other.clone(),
                limited_without_retry_after.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let sql = heavy_union(2_000, salt.fetch_add(1, Ordering::SeqCst));
                    let Some(answer) = post_sql(&sql_url, Some(&token), &sql) else {
                        return;
                    };
                    match (answer.status, answer.kind.as_deref()) {
                        (200, _) => ok.fetch_add(1, Ordering::SeqCst),
                        (429, Some("sql_caller_limit")) => {
                            if retry_seconds(&answer).is_none() {
                                no_retry.fetch_add(1, Ordering::SeqCst);
                            }
                            limited.fetch_add(1, Ordering::SeqCst)
                        }
                        _ => {
                            eprintln!("greedy caller got {}: {}", answer.status, answer.text);
                            other.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            })
        })
        .collect();

    // The greedy caller demonstrably holds its whole share...
    assert!(
        Gateway::eventually(Duration::from_secs(120), || greedy_limited
            .load(Ordering::SeqCst)
            > 0),
        "the greedy caller was never held to its share"
    );
    // ...and another caller's heavy statements are admitted every time, rewritten for
    // that caller.
    for attempt in 0..5 {
        let sql = heavy_union(2_000, 90_000 + attempt);
        let answer = post_sql(&sql_url, Some(&patient), &sql).unwrap();
        assert_eq!(
            answer.status, 200,
            "the other caller's SQL was refused: {}",
            answer.text
        );
    }
    // A cached rewrite needs no pool thread: the caller held to its share still gets it.
    for attempt in 0..5 {
        let answer = post_sql(&sql_url, Some(&greedy), cached_sql).unwrap();
        assert_eq!(
            answer.status, 200,
            "a cached statement waited for the pool (attempt {attempt}): {}",
            answer.text
        );
    }
    let limited_during = greedy_limited.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    assert!(limited_during > 0);
    assert_eq!(greedy_other.load(Ordering::SeqCst), 0, "unexpected answers");
    assert_eq!(
        limited_without_retry_after.load(Ordering::SeqCst),
        0,
        "every sql_caller_limit carries a Retry-After of whole seconds"
    );

    // Counted by the pool and as refusals; none of them reached the upstream.
    let limited = greedy_limited.load(Ordering::SeqCst) as f64;
    assert_eq!(
        gateway.metric_with(
            "datagate_sql_pool_rejected_total",
            &["reason=\"caller_limit\""]
        ),
        limited
    );
    assert_eq!(
        gateway.metric_with(
            "datagate_refusals_total",
            &["status=\"429\"", "kind=\"sql_caller_limit\""]
        ),
        limited
    );
    assert_eq!(
        gateway.metric_with("datagate_sql_pool_rejected_total", &["reason=\"busy\""]),
        0.0,
        "the queue itself never filled"
    );
    let recorded = recorded_requests(upstream);
    let patient_forwarded: Vec<_> = recorded
        .iter()
        .filter(|request| request.body_text.contains("tenant_id = 'patient'"))
        .collect();
    assert_eq!(patient_forwarded.len(), 5);
    assert!(patient_forwarded.iter().all(|request| {
        request
            .body_text
            .matches("AND (note <> 'internal')")
            .count()
            == 2_000
    }));
    // The cached statement, once before the flood and five times during it, each time
    // rewritten for its caller.
    let cached_forwarded = recorded
        .iter()
        .filter(|request| {
            request.body_text.contains("id < 3")
                && request.body_text.contains("tenant_id = 'greedy'")
        })
        .count();
    assert_eq!(cached_forwarded, 6);
    assert_eq!(
        recorded.len(),
        greedy_ok.load(Ordering::SeqCst) + 5 + 6,
        "only the admitted statements reached the upstream"
    );
}
