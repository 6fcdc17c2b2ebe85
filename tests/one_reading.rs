//! One reading of every request (issue [1/6]): on every route datagate inspects, the
//! upstream receives only what datagate parsed and checked, in a form every mainstream
//! parser reads the same way; anything that could be read two ways is refused with a
//! specific `kind`, and the upstream receives nothing.
//!
//! Real processes: the demo upstream records every request; datagate runs the example
//! config. The forwarded requests are read back with a Go-semantics JSON decoder
//! (case-insensitive keys, last match wins — Grafana's `encoding/json`) and with Python's
//! `urllib.parse`, with and without `;` as a separator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fmt;

use datagate::principal::BasicRole;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};
use support::gateway::{Gateway, GatewayOptions};
use support::{ChildProcess, call, clear_recorded, free_port, recorded_requests, spawn_upstream};

struct Setup {
    _upstream: ChildProcess,
    upstream: std::net::SocketAddr,
    gateway: Gateway,
}

fn setup() -> Setup {
    let (upstream_process, upstream) = spawn_upstream(&[]);
    let gateway = Gateway::start(GatewayOptions::new(upstream));
    Setup {
        _upstream: upstream_process,
        upstream,
        gateway,
    }
}

/// A JSON value as Go's `encoding/json` builds it: objects keep every member in order,
/// repeats included, so a lookup can do what Go does.
#[derive(Debug, Clone)]
enum GoJson {
    Scalar(Value),
    Array(Vec<GoJson>),
    Object(Vec<(String, GoJson)>),
}

impl GoJson {
    fn parse(text: &str) -> GoJson {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        deserializer.deserialize_any(GoVisitor).unwrap()
    }

    /// Go's struct-field matching: the last member whose key equals `field` under
    /// Unicode case folding wins (exact matches are not preferred once decoded in order).
    fn field(&self, field: &str) -> Option<&GoJson> {
        let GoJson::Object(members) = self else {
            return None;
        };
        members
            .iter()
            .filter(|(key, _)| go_equal_fold(key, field))
            .map(|(_, value)| value)
            .next_back()
    }

    fn index(&self, index: usize) -> Option<&GoJson> {
        match self {
            GoJson::Array(items) => items.get(index),
            _ => None,
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            GoJson::Scalar(Value::String(text)) => Some(text),
            _ => None,
        }
    }
}

/// `bytes.EqualFold`: equal under Unicode simple case folding (`ſ` is `s`, `K` is `k`).
fn go_equal_fold(left: &str, right: &str) -> bool {
    fn fold(character: char) -> char {
        match character {
            'ſ' => 's',
            '\u{212a}' => 'k',
            '\u{212b}' => 'å',
            other => other.to_lowercase().next().unwrap_or(other),
        }
    }
    left.chars().count() == right.chars().count()
        && left
            .chars()
            .zip(right.chars())
            .all(|(a, b)| fold(a) == fold(b))
}

struct GoVisitor;

impl<'de> Visitor<'de> for GoVisitor {
    type Value = GoJson;
    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("JSON")
    }
    fn visit_bool<E>(self, value: bool) -> Result<GoJson, E> {
        Ok(GoJson::Scalar(json!(value)))
    }
    fn visit_i64<E>(self, value: i64) -> Result<GoJson, E> {
        Ok(GoJson::Scalar(json!(value)))
    }
    fn visit_u64<E>(self, value: u64) -> Result<GoJson, E> {
        Ok(GoJson::Scalar(json!(value)))
    }
    fn visit_f64<E>(self, value: f64) -> Result<GoJson, E> {
        Ok(GoJson::Scalar(json!(value)))
    }
    fn visit_str<E>(self, value: &str) -> Result<GoJson, E> {
        Ok(GoJson::Scalar(json!(value)))
    }
    fn visit_unit<E>(self) -> Result<GoJson, E> {
        Ok(GoJson::Scalar(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<GoJson, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = sequence.next_element_seed(GoSeed)? {
            items.push(item);
        }
        Ok(GoJson::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<GoJson, A::Error> {
        let mut members = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            members.push((key, map.next_value_seed(GoSeed)?));
        }
        Ok(GoJson::Object(members))
    }
}

struct GoSeed;

impl<'de> serde::de::DeserializeSeed<'de> for GoSeed {
    type Value = GoJson;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<GoJson, D::Error> {
        deserializer.deserialize_any(GoVisitor)
    }
}

#[test]
fn the_go_decoder_of_the_tests_reads_the_attack_as_grafana_does() {
    // The decoder must see the attack, or the tests below would prove nothing.
    let attack =
        GoJson::parse(r#"{"queries":[{"rawSql":"SELECT 1","rawsql":"SELECT * FROM orders"}]}"#);
    let query = attack.field("queries").unwrap().index(0).unwrap();
    assert_eq!(
        query.field("rawSql").unwrap().text(),
        Some("SELECT * FROM orders")
    );
    let folded = GoJson::parse(r#"{"rawſql":"SELECT 2"}"#);
    assert_eq!(folded.field("rawSql").unwrap().text(), Some("SELECT 2"));
}

#[test]
fn grafana_bodies_go_would_read_differently_are_refused_before_the_upstream() {
    let setup = setup();
    let token = setup
        .gateway
        .token("alice", &["Gamma", "EU_team"], &[], Some(BasicRole::Admin));
    let url = setup.gateway.url("/api/ds/query");
    let cases = [
        (
            r#"{"queries":[{"refId":"A","datasource":{"uid":"demo"},"rawSql":"SELECT 1","rawsql":"SELECT * FROM orders"}]}"#,
            "case_folded_key",
        ),
        (
            r#"{"queries":[{"refId":"A","datasource":{"uid":"demo"},"RAWSQL":"SELECT * FROM orders"}]}"#,
            "case_folded_key",
        ),
        (
            r#"{"queries":[{"refId":"A","datasource":{"uid":"demo"},"RawSql":"SELECT * FROM orders"}]}"#,
            "case_folded_key",
        ),
        (
            r#"{"queries":[{"refId":"A","datasource":{"uid":"demo"},"rawſql":"SELECT * FROM orders"}]}"#,
            "case_folded_key",
        ),
        (
            r#"{"queries":[{"refId":"A","datasource":{"uid":"demo"},"rawSql":null,"rawQuery":"SELECT * FROM orders"}]}"#,
            "sql_missing",
        ),
        (
            r#"{"queries":[{"refId":"A","datasource":{"uid":"demo"},"rawSql":"SELECT 1"},{"refId":"B","datasource":{"uid":"demo"}}]}"#,
            "sql_missing",
        ),
        (
            r#"{"queries":[{"refId":"A","datasource":{"uid":"demo"},"rawSql":"SELECT 1","rawSql":"SELECT * FROM orders"}]}"#,
            "duplicate_key",
        ),
        (
            r#"{"queries":[{"refId":"A","datasource":{"uid":"demo","UID":"other"},"rawSql":"SELECT 1"}]}"#,
            "case_folded_key",
        ),
    ];
    for (body, kind) in cases {
        clear_recorded(setup.upstream);
        let (status, answer) = call("POST", &url, Some(&token), Some(body));
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["kind"], kind, "{body}: {answer}");
        assert!(
            recorded_requests(setup.upstream).is_empty(),
            "the upstream received {body}"
        );
    }
    // A top-level array is not the object the SQL pointer walks.
    clear_recorded(setup.upstream);
    let (status, _) = call("POST", &url, Some(&token), Some(r#"[{"queries":[]}]"#));
    assert_eq!(status, 400);
    assert!(recorded_requests(setup.upstream).is_empty());
}

#[test]
fn the_upstream_reads_exactly_the_checked_sql_with_go_semantics() {
    let setup = setup();
    let token = setup
        .gateway
        .token("alice", &["Gamma", "EU_team"], &[], Some(BasicRole::Admin));
    // Escaped keys and odd spacing are canonicalised: the upstream sees plain keys.
    let body = r#"{ "queries" : [ {"refId":"A", "datasource":{"uid":"demo"}, "raw\u0053ql":"SELECT id FROM orders", "maxDataPoints": 100 } ] }"#;
    clear_recorded(setup.upstream);
    let (status, answer) = call(
        "POST",
        &setup.gateway.url("/api/ds/query"),
        Some(&token),
        Some(body),
    );
    assert_eq!(status, 200, "{answer}");
    let recorded = recorded_requests(setup.upstream);
    assert_eq!(recorded.len(), 1);
    let forwarded = &recorded[0].body_text;
    let go = GoJson::parse(forwarded);
    let go_sql = go
        .field("queries")
        .and_then(|queries| queries.index(0))
        .and_then(|query| query.field("rawSql"))
        .and_then(GoJson::text)
        .unwrap()
        .to_string();
    let exact: Value = serde_json::from_str(forwarded).unwrap();
    assert_eq!(exact["queries"][0]["rawSql"], go_sql, "{forwarded}");
    // The filter was applied to what both decoders read.
    assert!(
        go_sql.contains("tenant") || go_sql.contains("WHERE"),
        "{go_sql}"
    );
    assert_ne!(go_sql, "SELECT id FROM orders");
    assert!(!forwarded.contains("\\u0053"), "{forwarded}");
}

#[test]
fn semicolons_in_sql_query_strings_are_refused_and_forwarded_queries_parse_one_way() {
    let setup = setup();
    let token = setup
        .gateway
        .token("alice", &["Gamma", "EU_team"], &[], Some(BasicRole::Admin));
    clear_recorded(setup.upstream);
    let (status, answer) = call(
        "GET",
        &setup
            .gateway
            .url("/demo.json?x=1;sql=SELECT%20*%20FROM%20orders"),
        Some(&token),
        None,
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["kind"], "ambiguous_query");
    assert!(recorded_requests(setup.upstream).is_empty());

    let (status, answer) = call(
        "GET",
        &setup
            .gateway
            .url("/demo.json?sql=SELECT%20id%20FROM%20orders%20WHERE%20note%20%3C%3E%20%27a%3Bb%27&_shape=array"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "{answer}");
    let recorded = recorded_requests(setup.upstream);
    let query = recorded[0].query.clone().unwrap();
    // Python's reading with `&` only (3.9.2 and later) and with `&` and `;` (before):
    // the forwarded query has one meaning to both.
    let script = r#"
import sys, json, re, urllib.parse
query = sys.argv[1]
modern = urllib.parse.parse_qs(query, separator='&', keep_blank_values=True)
legacy = {}
for pair in re.split('[&;]', query):
    if pair:
        name, _, value = pair.partition('=')
        legacy.setdefault(urllib.parse.unquote_plus(name), []).append(urllib.parse.unquote_plus(value))
print(json.dumps([modern, legacy]))
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script, &query])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let readings: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(readings[0], readings[1], "{query}");
    let sql = readings[0]["sql"][0].as_str().unwrap();
    assert!(
        sql.contains("'a;b'") && sql != "SELECT id FROM orders WHERE note <> 'a;b'",
        "{sql}"
    );
}

#[test]
fn templating_and_write_options_never_reach_superset() {
    let setup = setup();
    let token = setup.gateway.token(
        "alice",
        &["Gamma", "EU_team", "sql_lab"],
        &[],
        Some(BasicRole::Viewer),
    );
    let url = setup.gateway.url("/api/v1/sqllab/execute/");
    let cases = [
        (
            json!({"sql": "SELECT '{{ t }}' AS x", "database_id": 1,
                   "templateParams": "{\"t\": \"' AS x UNION SELECT note FROM orders WHERE tenant_id = 'mallory' --\"}"}),
            "template_syntax",
        ),
        (
            json!({"sql": "SELECT '{{ 1 }}' AS x", "database_id": 1}),
            "template_syntax",
        ),
        (
            json!({"sql": "SELECT 1 {% if true %}{% endif %}", "database_id": 1}),
            "template_syntax",
        ),
        (
            json!({"sql": "SELECT 1", "database_id": 1, "templateParams": {"t": "x"}}),
            "template_syntax",
        ),
        (
            json!({"sql": "SELECT * FROM orders", "database_id": 1, "select_as_cta": true, "tmp_table_name": "t"}),
            "write_option",
        ),
        (json!({"database_id": 1}), "sql_missing"),
        (json!({"sql": null, "database_id": 1}), "sql_missing"),
    ];
    for (body, kind) in cases {
        clear_recorded(setup.upstream);
        let (status, answer) = call("POST", &url, Some(&token), Some(&body.to_string()));
        assert!(status == 400 || status == 403, "{body}: {status} {answer}");
        assert_eq!(answer["kind"], kind, "{body}: {answer}");
        assert!(recorded_requests(setup.upstream).is_empty(), "{body}");
    }
    // What the 6.1 frontend sends by default passes.
    let (status, answer) = call(
        "POST",
        &url,
        Some(&token),
        Some(
            &json!({"sql": "SELECT id FROM orders", "database_id": 1, "client_id": "c-ok",
                    "select_as_cta": false, "tmp_table_name": "", "templateParams": "",
                    "runAsync": false, "schema": null, "queryLimit": 1000})
            .to_string(),
        ),
    );
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn results_are_bound_to_the_caller_who_ran_the_query() {
    let setup = setup();
    let alice = setup.gateway.token("alice", &["Admin"], &[], None);
    let bob = setup.gateway.token("bob", &["Admin"], &[], None);
    let execute = setup.gateway.url("/api/v1/sqllab/execute/");
    let run = |token: &str, client_id: &str| {
        call(
            "POST",
            &execute,
            Some(token),
            Some(
                &json!({"sql": "SELECT id FROM orders", "database_id": 1, "client_id": client_id})
                    .to_string(),
            ),
        )
    };
    assert_eq!(run(&alice, "alice-1").0, 200);
    // The same id again is alice's; bob cannot take it over.
    assert_eq!(run(&alice, "alice-1").0, 200);
    clear_recorded(setup.upstream);
    let (status, answer) = run(&bob, "alice-1");
    assert_eq!(
        (status, answer["kind"].clone()),
        (403, json!("result_owner")),
        "{answer}"
    );
    assert!(recorded_requests(setup.upstream).is_empty());

    let export = |token: &str, client_id: &str| {
        call(
            "GET",
            &setup
                .gateway
                .url(&format!("/api/v1/sqllab/export/{client_id}/")),
            Some(token),
            None,
        )
    };
    clear_recorded(setup.upstream);
    let (status, answer) = export(&bob, "alice-1");
    assert_eq!(
        (status, answer["kind"].clone()),
        (403, json!("result_owner")),
        "{answer}"
    );
    let (status, answer) = export(&bob, "never-ran");
    assert_eq!(
        (status, answer["kind"].clone()),
        (403, json!("result_unknown")),
        "{answer}"
    );
    assert!(recorded_requests(setup.upstream).is_empty());
    // The owner's export reaches the upstream.
    let _ = export(&alice, "alice-1");
    let recorded = recorded_requests(setup.upstream);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].path, "/api/v1/sqllab/export/alice-1/");
}

#[test]
fn pingora_failures_are_answered_with_the_json_error_body() {
    let closed = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway = Gateway::start(GatewayOptions::new(closed));
    let token = gateway.token("root", &["Admin"], &[], None);
    let (status, answer) = call("GET", &gateway.url("/api/v1/chart/1"), Some(&token), None);
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["kind"], "upstream_error");
    let message = answer["message"].as_str().unwrap();
    assert!(!message.contains("127.0.0.1"), "{message}");
}

#[test]
fn explain_reads_the_request_as_the_proxy_does() {
    let setup = setup();
    let token = setup
        .gateway
        .token("alice", &["Gamma", "EU_team"], &[], Some(BasicRole::Admin));
    let (status, answer) = call(
        "POST",
        &setup.gateway.admin_url("/api/authz/explain"),
        Some(&setup.gateway.admin_token()),
        Some(
            &json!({
                "method": "POST", "path": "/api/ds/query", "token": token,
                "body": r#"{"queries":[{"datasource":{"uid":"demo"},"RAWSQL":"SELECT 1"}]}"#,
            })
            .to_string(),
        ),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["decision"], "deny");
    assert_eq!(answer["kind"], "case_folded_key");

    // Headers go through the proxy's own header rules: each request below is refused by
    // the proxy and explained as refused, with the same status and kind.
    let cases: [(&str, Vec<(&str, String)>); 3] = [
        (
            "a second Authorization",
            vec![("Authorization", format!("Bearer {token}"))],
        ),
        (
            "an API key header spelt with `_`",
            vec![("X_API_Key", "k".to_string())],
        ),
        (
            "an upgrade",
            vec![
                ("Upgrade", "websocket".to_string()),
                ("Connection", "Upgrade".to_string()),
            ],
        ),
    ];
    for (what, headers) in cases {
        let explained_headers: Vec<String> = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}"))
            .collect();
        let (status, explained) = call(
            "POST",
            &setup.gateway.admin_url("/api/authz/explain"),
            Some(&setup.gateway.admin_token()),
            Some(
                &json!({"path": "/api/v1/chart/1", "token": token, "headers": explained_headers})
                    .to_string(),
            ),
        );
        assert_eq!(status, 200, "{explained}");
        // Raw, so a header can be sent twice.
        let mut raw = format!(
            "GET /api/v1/chart/1 HTTP/1.1\r\nHost: datagate\r\nAuthorization: Bearer {token}\r\n"
        );
        for (name, value) in &headers {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        raw.push_str("Connection: close\r\n\r\n");
        let mut stream = std::net::TcpStream::connect(setup.gateway.proxy).unwrap();
        use std::io::{Read, Write};
        stream.write_all(raw.as_bytes()).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let status: u16 = response
            .split(' ')
            .nth(1)
            .and_then(|status| status.parse().ok())
            .unwrap_or_else(|| panic!("{what}: {response}"));
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        let proxied = (status, serde_json::from_str(body).unwrap_or(Value::Null));
        assert_eq!(explained["decision"], "deny", "{what}: {explained}");
        assert_eq!(
            (explained["status"].as_u64(), explained["kind"].clone()),
            (Some(u64::from(proxied.0)), proxied.1["kind"].clone()),
            "{what}: explain and proxy differ"
        );
    }
    assert!(recorded_requests(setup.upstream).is_empty());
}

#[test]
fn results_keys_from_superset_responses_are_bound_to_the_caller() {
    let setup = setup();
    let alice = setup.gateway.token("alice", &["Admin"], &[], None);
    let bob = setup.gateway.token("bob", &["Admin"], &[], None);
    let run = |token: &str, client_id: &str, run_async: bool| {
        call(
            "POST",
            &setup.gateway.url("/api/v1/sqllab/execute/"),
            Some(token),
            Some(
                &json!({"sql": "SELECT id FROM orders", "database_id": 1,
                        "client_id": client_id, "runAsync": run_async})
                .to_string(),
            ),
        )
    };
    let results = |token: &str, q: &str| {
        let q: String = url::form_urlencoded::byte_serialize(q.as_bytes()).collect();
        call(
            "GET",
            &setup.gateway.url(&format!("/api/v1/sqllab/results/?q={q}")),
            Some(token),
            None,
        )
    };
    let refused = |(status, answer): (u16, Value), expected: (u16, &str)| {
        assert_eq!(
            (status, answer["kind"].as_str()),
            (expected.0, Some(expected.1)),
            "{answer}"
        );
    };

    // Synchronous: the key is in the execute response, which reaches alice unchanged.
    let (status, answer) = run(&alice, "alice-sync", false);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["query"]["resultsKey"], json!("results-alice-sync"));
    clear_recorded(setup.upstream);
    refused(
        results(&bob, "(key:'results-alice-sync')"),
        (403, "result_owner"),
    );
    refused(
        results(&bob, "(key:results-never-seen)"),
        (403, "result_unknown"),
    );
    // Rison Superset's `prison` would read differently (it keeps the last `key`), or
    // not at all, is refused before anything reaches Superset.
    refused(
        results(&bob, "(key:'results-alice-sync',key:'results-bob')"),
        (400, "malformed_rison"),
    );
    refused(
        results(&bob, "(key:'results-alice-sync'"),
        (400, "malformed_rison"),
    );
    // `;` splits on older Python servers: every reading must be the caller's.
    let raw = call(
        "GET",
        &setup
            .gateway
            .url("/api/v1/sqllab/results/?q=(key:x);q=(key:'results-alice-sync')"),
        Some(&bob),
        None,
    );
    refused(raw, (400, "malformed_rison"));
    assert!(recorded_requests(setup.upstream).is_empty());
    let (status, _) = results(&alice, "(key:'results-alice-sync',rows:10)");
    assert_eq!(status, 200);
    let recorded = recorded_requests(setup.upstream);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].path, "/api/v1/sqllab/results/");

    // Asynchronous: no key yet; it appears in the caller's own polling response.
    let (status, answer) = run(&alice, "alice-async", true);
    assert_eq!(
        (status, answer["query"]["resultsKey"].clone()),
        (200, Value::Null)
    );
    refused(
        results(&alice, "(key:'results-alice-async')"),
        (403, "result_unknown"),
    );
    let (status, answer) = call(
        "GET",
        &setup
            .gateway
            .url("/api/v1/query/updated_since?q=(last_updated_ms:0)"),
        Some(&alice),
        None,
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["result"]
            .as_array()
            .is_some_and(|queries| queries.len() == 3)
    );
    let (status, _) = results(&alice, "(key:'results-alice-async')");
    assert_eq!(status, 200);
    // bob polling later sees the same keys (this demo does not filter by user): the
    // first owner keeps them.
    let (status, _) = call(
        "GET",
        &setup
            .gateway
            .url("/api/v1/query/updated_since?q=(last_updated_ms:0)"),
        Some(&bob),
        None,
    );
    assert_eq!(status, 200);
    clear_recorded(setup.upstream);
    refused(
        results(&bob, "(key:'results-alice-async')"),
        (403, "result_owner"),
    );
    assert!(recorded_requests(setup.upstream).is_empty());
}

/// Superset reads `?q=` with Python's `prison`; datagate's reading must agree on
/// everything it accepts, and refuse whatever prison refuses.
#[test]
fn rison_is_read_as_superset_reads_it() {
    let corpus = [
        "(key:'a1-b2',rows:100)",
        "(key:abc)",
        "(key:'it!'s',rows:-5)",
        "(filters:!((col:id,opr:eq,value:'x y')),page:0,page_size:25)",
        "!(1,2,3)",
        "(a:!t,b:!f,c:!n)",
        "(a:1.5,b:2e3,c:-1.25e-2)",
        "(key:'!!')",
        "(key:été)",
        "(key:a.b~c%d+e_f)",
        "(key:'x'",
        "(key:'x'))",
        "(key:'a!b')",
        "(key:-)",
        "(key:1-2)",
        "(,key:x)",
        "(key:x,)",
        "(key x)",
        "'unterminated",
        "",
        "(key:'')",
        "()",
        "!()",
    ];
    let script = "import json, sys, prison\nout = []\nfor text in json.load(sys.stdin):\n    try:\n        out.append({'ok': prison.loads(text)})\n    except Exception:\n        out.append({'error': True})\nprint(json.dumps(out))\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with prison (deploy/install-deps.sh installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&corpus).unwrap().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "prison is not installed");
    let prison: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    for (text, theirs) in corpus.iter().zip(&prison) {
        let ours = datagate::route::rison::parse(text);
        match (&ours, theirs.get("ok")) {
            (Ok(value), Some(expected)) => assert_eq!(value, expected, "`{text}`"),
            (Ok(value), None) => panic!("`{text}`: datagate read {value}, prison refused it"),
            (Err(_), Some(_)) | (Err(_), None) => {}
        }
        if theirs.get("error").is_some() {
            assert!(
                ours.is_err(),
                "`{text}`: prison refused it, datagate did not"
            );
        }
    }
    // Where datagate is stricter than prison, on purpose: prison keeps the last of a
    // repeated key, and takes `1.` as a number.
    for text in ["(key:mine,key:theirs)", "(key:1.)"] {
        assert!(datagate::route::rison::parse(text).is_err(), "`{text}`");
    }
}
