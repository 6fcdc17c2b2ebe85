//! End to end through real processes: the demo upstream (which records every request),
//! datagate in front of it, and HTTP between them. Every refusal asserts the upstream
//! received nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use datagate::principal::BasicRole;
use support::gateway::{Gateway, GatewayOptions};
use support::{clear_recorded, recorded_requests, spawn_upstream};

/// Status, lower-cased headers and body of a response, whatever its status.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

fn reply(result: Result<ureq::Response, ureq::Error>) -> Reply {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("transport error: {error}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .map(|name| {
            let value = response.header(&name).unwrap_or_default().to_string();
            (name, value)
        })
        .collect();
    let body = response.into_string().unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

fn get(url: &str, token: Option<&str>) -> Reply {
    let mut request = ureq::get(url);
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    reply(request.call())
}

fn post_json(url: &str, token: Option<&str>, body: &str) -> Reply {
    let mut request = ureq::post(url).set("Content-Type", "application/json");
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    reply(request.send_string(body))
}

/// One raw HTTP/1.1 exchange, for requests ureq would normalise (odd paths, chunked bodies).
fn raw_http(address: std::net::SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

struct Setup {
    _upstream: support::ChildProcess,
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

#[test]
fn allowed_request_reaches_upstream_with_trusted_identity_headers() {
    let setup = setup();
    let token = setup
        .gateway
        .token("alice", &["Gamma"], &["analysts"], Some(BasicRole::Viewer));
    let response = reply(
        ureq::get(&setup.gateway.url("/api/v1/chart/1"))
            .set("Authorization", &format!("Bearer {token}"))
            .set("X-Datagate-User", "mallory")
            .set("X-Datagate-Roles", "Admin")
            .set("X-Remote-User", "mallory")
            .set("X-Forwarded-For", "10.9.9.9")
            .call(),
    );
    assert_eq!(response.status, 200, "{}", response.body);
    let recorded = recorded_requests(setup.upstream);
    assert_eq!(recorded.len(), 1);
    let request = &recorded[0];
    assert_eq!(request.method, "GET");
    assert_eq!(request.path, "/api/v1/chart/1");
    assert_eq!(request.header_values("x-datagate-user"), vec!["alice"]);
    assert_eq!(request.header_values("x-datagate-roles"), vec!["Gamma"]);
    assert_eq!(request.header_values("x-datagate-teams"), vec!["analysts"]);
    assert_eq!(request.header_values("x-datagate-org-role"), vec!["Viewer"]);
    assert!(request.header_values("x-remote-user").is_empty());
    assert_eq!(request.header_values("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(request.header_values("x-forwarded-proto"), vec!["http"]);
}

#[test]
fn missing_role_permission_is_403_naming_it_and_upstream_sees_nothing() {
    let setup = setup();
    // sql_lab may run SQL but holds no chart permissions.
    let token = setup.gateway.token("bob", &["sql_lab"], &[], None);
    let response = reply(
        ureq::delete(&setup.gateway.url("/api/v1/chart/1"))
            .set("Authorization", &format!("Bearer {token}"))
            .call(),
    );
    assert_eq!(response.status, 403);
    assert_eq!(
        response.json()["message"],
        "missing permission `can_write on Chart`"
    );
    assert!(recorded_requests(setup.upstream).is_empty());
}

#[test]
fn anonymous_and_bad_credentials_are_401_and_upstream_sees_nothing() {
    let setup = setup();
    let anonymous = get(&setup.gateway.url("/api/v1/chart/1"), None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    assert!(
        anonymous.json()["message"]
            .as_str()
            .unwrap()
            .contains("can_read on Chart")
    );

    for bad in [
        "not-a-jwt",
        "a.b.c",
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.",
    ] {
        let response = get(&setup.gateway.url("/api/v1/chart/1"), Some(bad));
        assert_eq!(response.status, 401, "{bad}: {}", response.body);
        assert!(
            response
                .header("www-authenticate")
                .unwrap()
                .starts_with("Bearer")
        );
        assert!(response.json()["message"].is_string());
    }
    // A token signed with a different key.
    let forged = {
        let header = jsonwebtoken::Header {
            kid: Some("test-hmac".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        };
        let claims =
            serde_json::json!({"sub": "alice", "roles": ["Admin"], "exp": 4_000_000_000u64});
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-that-is-long-enough!!"),
        )
        .unwrap()
    };
    let response = get(&setup.gateway.url("/api/v1/chart/1"), Some(&forged));
    assert_eq!(response.status, 401);
    // Expired.
    let expired = {
        let header = jsonwebtoken::Header {
            kid: Some("test-hmac".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        };
        let claims =
            serde_json::json!({"sub": "alice", "roles": ["Admin"], "exp": 1_000_000_000u64});
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(support::gateway::TEST_HMAC_SECRET.as_bytes()),
        )
        .unwrap()
    };
    let response = get(&setup.gateway.url("/api/v1/chart/1"), Some(&expired));
    assert_eq!(response.status, 401);
    assert!(recorded_requests(setup.upstream).is_empty());
}

#[test]
fn unmatched_routes_are_denied_by_default() {
    let setup = setup();
    let token = setup.gateway.admin_token();
    let response = get(&setup.gateway.url("/api/v1/secret-export"), Some(&token));
    assert_eq!(response.status, 403);
    assert!(
        response.json()["message"]
            .as_str()
            .unwrap()
            .contains("no route matches")
    );
    assert!(recorded_requests(setup.upstream).is_empty());
}

#[test]
fn every_datasource_in_a_grafana_query_body_must_be_allowed() {
    let setup = setup();
    let token = setup
        .gateway
        .token("alice", &["Gamma"], &[], Some(BasicRole::Viewer));
    let allowed = r#"{"queries":[{"refId":"A","datasource":{"uid":"demo"},"rawSql":"SELECT id FROM posts"},{"refId":"B","datasource":{"uid":"demo"},"rawSql":"SELECT 1"}]}"#;
    let response = post_json(&setup.gateway.url("/api/ds/query"), Some(&token), allowed);
    assert_eq!(response.status, 200, "{}", response.body);
    let recorded = recorded_requests(setup.upstream);
    assert_eq!(recorded.len(), 1);
    // What datagate checked, re-serialised: the same JSON value, in canonical form.
    let canonical =
        serde_json::to_string(&serde_json::from_str::<serde_json::Value>(allowed).unwrap())
            .unwrap();
    assert_eq!(
        recorded[0].body_text, canonical,
        "the body must arrive as the value datagate checked"
    );
    clear_recorded(setup.upstream);

    let mixed = r#"{"queries":[{"refId":"A","datasource":{"uid":"demo"},"rawSql":"SELECT 1"},{"refId":"B","datasource":{"uid":"finance"},"rawSql":"SELECT 1"}]}"#;
    let response = post_json(&setup.gateway.url("/api/ds/query"), Some(&token), mixed);
    assert_eq!(response.status, 403);
    assert_eq!(
        response.json()["message"],
        "missing permission `datasources:query` on datasource `finance`"
    );
    assert!(recorded_requests(setup.upstream).is_empty());
}

#[test]
fn malformed_json_on_a_body_route_is_400_and_not_forwarded() {
    let setup = setup();
    let token = setup
        .gateway
        .token("alice", &["Gamma"], &[], Some(BasicRole::Viewer));
    let response = post_json(
        &setup.gateway.url("/api/ds/query"),
        Some(&token),
        r#"{"queries": [ "#,
    );
    assert_eq!(response.status, 400);
    assert!(response.json()["message"].is_string());
    assert!(recorded_requests(setup.upstream).is_empty());
}

/// A raw HTTP/1.1 request with a chunked body of `body` cut into `chunk`-byte chunks.
fn chunked_request(path: &str, token: &str, body: &str, chunk: usize) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for piece in body.as_bytes().chunks(chunk) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

/// Inspected bodies reach the upstream as the value datagate checked, byte for byte and
/// with a matching `Content-Length`, at every size up to `routes.max_body_bytes`: up to
/// pingora's 64 KiB retry buffer through pingora's replay, above it through datagate's own
/// forward path (`proxy::forward`). Over the limit is a 413 and the upstream sees nothing.
#[test]
fn inspected_bodies_arrive_whole_at_every_size_up_to_the_limit_and_over_it_are_413() {
    const LIMIT: usize = 2 * 1024 * 1024;
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    let mut options = GatewayOptions::new(upstream);
    let routes = support::gateway::example_routes_yaml();
    assert!(routes.contains("max_body_bytes: 262144"), "{routes}");
    options.routes_yaml = Some(routes.replace(
        "max_body_bytes: 262144",
        &format!("max_body_bytes: {LIMIT}"),
    ));
    let gateway = Gateway::start(options);
    let token = gateway.token("alice", &["Gamma"], &[], Some(BasicRole::Viewer));
    let body_of = |total: usize| {
        let prefix = r#"{"queries":[{"refId":"A","datasource":{"uid":"demo"},"rawSql":"SELECT 1"}],"padding":""#;
        let suffix = r#""}"#;
        let padding = "x".repeat(total - prefix.len() - suffix.len());
        format!("{prefix}{padding}{suffix}")
    };
    let canonical = |body: &str| {
        serde_json::to_string(&serde_json::from_str::<serde_json::Value>(body).unwrap()).unwrap()
    };
    let expect_forwarded = |size: usize, body: &str, how: &str| {
        let recorded = recorded_requests(upstream);
        assert_eq!(recorded.len(), 1, "{how} size {size}");
        assert_eq!(recorded[0].body_length, size, "{how} size {size}");
        assert!(
            recorded[0].body_text == canonical(body),
            "{how} size {size}: body differs"
        );
        assert_eq!(
            recorded[0].header_values("content-length"),
            vec![size.to_string()],
            "{how} size {size}"
        );
        assert!(
            recorded[0].header_values("transfer-encoding").is_empty(),
            "{how} size {size}"
        );
        clear_recorded(upstream);
    };
    for size in [
        100, 65_535, 65_536, 65_537, 100_000, 300_000, 1_048_576, LIMIT,
    ] {
        let body = body_of(size);
        assert_eq!(body.len(), size);
        let response = post_json(&gateway.url("/api/ds/query"), Some(&token), &body);
        assert_eq!(response.status, 200, "size {size}: {}", response.body);
        // The upstream's answer came back through the same path.
        assert!(
            response.json()["results"]["A"]["rows"].is_array(),
            "size {size}"
        );
        expect_forwarded(size, &body, "content-length");
    }
    for (size, chunk) in [
        (40_000, 7_000),
        (65_537, 65_537),
        (100_000, 16_384),
        (1_048_576, 65_536),
    ] {
        let body = body_of(size);
        let (status, text) = raw_http(
            gateway.proxy,
            &chunked_request("/api/ds/query", &token, &body, chunk),
        );
        assert_eq!(status, 200, "chunked size {size}: {text}");
        expect_forwarded(size, &body, "chunked");
    }
    for size in [LIMIT + 1, 3_000_000] {
        let response = post_json(&gateway.url("/api/ds/query"), Some(&token), &body_of(size));
        assert_eq!(response.status, 413, "size {size}");
        assert!(
            response.json()["message"]
                .as_str()
                .unwrap()
                .contains(&LIMIT.to_string())
        );
        assert!(recorded_requests(upstream).is_empty(), "size {size}");
    }
    // Chunked: no Content-Length to check up front; the running count must stop it.
    let (status, text) = raw_http(
        gateway.proxy,
        &chunked_request("/api/ds/query", &token, &body_of(LIMIT + 1), 65_536),
    );
    assert_eq!(status, 413, "{text}");
    assert!(recorded_requests(upstream).is_empty());
}

/// `tests/compat/wsgi_echo/closes_kept_alive.py` on an ephemeral port, answering or
/// dropping requests as `mode` says, with the log of what it did.
struct ClosingUpstream {
    address: std::net::SocketAddr,
    log: std::path::PathBuf,
    _log_dir: tempfile::TempDir,
    _process: support::ChildProcess,
}

impl ClosingUpstream {
    fn start(mode: &str) -> ClosingUpstream {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("answers");
        let mut process = std::process::Command::new("python3")
            .arg(
                support::gateway::repository_root()
                    .join("tests/compat/wsgi_echo/closes_kept_alive.py"),
            )
            .arg("0")
            .arg(&log)
            .arg(mode)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = process.stdout.take().unwrap();
        let process = support::ChildProcess::new(process);
        ClosingUpstream {
            address: support::announced_address(stdout),
            log,
            _log_dir: log_dir,
            _process: process,
        }
    }

    /// One line per request: `answered <length>[ <body>]` or `dropped`.
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// A body over pingora's retry buffer goes through datagate's own forward path; when the
/// pooled connection it takes was closed by the upstream as it was reused (a keep-alive
/// timeout racing the request), the request is sent again on a fresh connection instead
/// of failing with 502. The upstream (`closes_kept_alive.py`) answers the first request
/// on each connection and drops the second unanswered.
#[test]
fn a_large_body_is_sent_again_when_the_kept_alive_upstream_connection_was_closed() {
    // `body`: the upstream read the request, then closed (datagate's read fails);
    // `head`: it closed with the body unread (datagate's writes fail or its read is reset).
    for drop_at in ["body", "head"] {
        let closing = ClosingUpstream::start(drop_at);
        let upstream = closing.address;
        // 6 MiB: more than datagate's send buffer (at most 4 MiB here) and the upstream's
        // small receive window take, so in `head` mode datagate's writes fail.
        let mut options = GatewayOptions::new(upstream);
        options.routes_yaml = Some(
            support::gateway::example_routes_yaml()
                .replace("max_body_bytes: 262144", "max_body_bytes: 8388608"),
        );
        let gateway = Gateway::start(options);
        let token = gateway.token("alice", &["Gamma"], &[], Some(BasicRole::Viewer));
        let prefix = r#"{"queries":[{"refId":"A","datasource":{"uid":"demo"},"rawSql":"SELECT 1"}],"padding":""#;
        let body = format!("{prefix}{}\"}}", "x".repeat(6 << 20));
        let statuses: Vec<u16> = (0..3)
            .map(|_| post_json(&gateway.url("/api/ds/query"), Some(&token), &body).status)
            .collect();
        let lines = closing.lines();
        let answered = format!("answered {}", body.len());
        let answered = lines.iter().filter(|line| **line == answered).count();
        let dropped = lines.iter().filter(|line| *line == "dropped").count();
        if drop_at == "head" {
            // Rounds 2 and 3 first took the connection the previous round left in the pool,
            // could not write the request whole there, and sent it again on a fresh one.
            assert_eq!(statuses, [200, 200, 200], "{drop_at}: {lines:?}");
            assert_eq!((answered, dropped), (3, 2), "{drop_at}: {lines:?}");
        } else {
            // The upstream had the whole POST before it closed: it may have acted on it, so
            // it is not sent twice (as pingora and nginx decide); round 3 gets a fresh
            // connection.
            assert_eq!(statuses, [200, 502, 200], "{drop_at}: {lines:?}");
            assert_eq!((answered, dropped), (2, 1), "{drop_at}: {lines:?}");
        }
    }
}

/// Through pingora's own path (a body under its retry buffer), a request whose SQL was
/// rewritten and whose pooled connection failed is retried by pingora (`PUT` is
/// idempotent) and the retry carries the rewritten body again — not the client's
/// original, and not an empty body under the rewritten body's `Content-Length`.
#[test]
fn a_retried_attempt_sends_the_rewritten_body_again() {
    let closing = ClosingUpstream::start("body");
    let upstream = closing.address;
    let mut options = GatewayOptions::new(upstream);
    options.routes_yaml = Some(
        "unmatched: deny\ntable:\n  - name: sql-put\n    methods: [PUT]\n    path: /api/sql\n    \
         permissions: {any_of: [\"can_read on Chart\"]}\n    sql:\n      locations:\n        \
         - {json_pointer: /sql, datasource: {fixed: demo}}\n"
            .to_string(),
    );
    let root = support::gateway::repository_root();
    options.policy_files = Some(vec![
        (
            "00-builtin-hierarchy.csv".to_string(),
            std::fs::read_to_string(root.join("policies/00-builtin-hierarchy.csv")).unwrap(),
        ),
        (
            "10-grants.csv".to_string(),
            "p, role:Gamma, Chart, can_read\np, role:Gamma, datasources:uid:demo, Query\n"
                .to_string(),
        ),
        (
            "50-demo.rls.yaml".to_string(),
            std::fs::read_to_string(root.join("policies/50-demo.rls.yaml")).unwrap(),
        ),
    ]);
    let gateway = Gateway::start(options);
    let token = gateway.token("alice", &["Gamma"], &[], None);
    let body = r#"{"sql": "SELECT id FROM orders"}"#;
    for round in 1..=2 {
        let response = ureq::put(&gateway.url("/api/sql"))
            .set("Authorization", &format!("Bearer {token}"))
            .set("Content-Type", "application/json")
            .send_string(body)
            .unwrap_or_else(|error| panic!("round {round}: {error}"));
        assert_eq!(response.status(), 200, "round {round}");
    }
    let lines = closing.lines();
    // Round 2 took the pooled connection, which the upstream dropped after reading the
    // request; pingora sent it again on a fresh one.
    assert_eq!(
        lines.iter().filter(|line| *line == "dropped").count(),
        1,
        "{lines:?}"
    );
    let answers: Vec<&String> = lines
        .iter()
        .filter(|line| line.starts_with("answered "))
        .collect();
    assert_eq!(answers.len(), 2, "{lines:?}");
    for answer in answers {
        let (length, forwarded) = answer["answered ".len()..].split_once(' ').unwrap();
        assert_eq!(
            length.parse::<usize>().unwrap(),
            forwarded.len(),
            "{answer}"
        );
        assert!(
            forwarded.contains("tenant_id"),
            "not the rewritten SQL: {answer}"
        );
    }
}

/// An upstream that drops a large-body request on a fresh connection: no retry (the
/// failure is not a stale pooled connection), and the answer is the upstream failure it
/// is (502 `upstream_error`), not an internal error.
#[test]
fn a_large_body_the_upstream_drops_on_a_fresh_connection_is_a_502() {
    let closing = ClosingUpstream::start("always");
    let upstream = closing.address;
    let gateway = Gateway::start(GatewayOptions::new(upstream));
    let token = gateway.token("alice", &["Gamma"], &[], Some(BasicRole::Viewer));
    let prefix =
        r#"{"queries":[{"refId":"A","datasource":{"uid":"demo"},"rawSql":"SELECT 1"}],"padding":""#;
    let body = format!("{prefix}{}\"}}", "x".repeat(100_000));
    let response = post_json(&gateway.url("/api/ds/query"), Some(&token), &body);
    assert_eq!(response.status, 502, "{}", response.body);
    assert_eq!(
        response.json()["kind"],
        "upstream_error",
        "{}",
        response.body
    );
    assert_eq!(closing.lines(), ["dropped"], "sent more than once");
}

/// A SQL Lab query larger than pingora's retry buffer is rewritten like a small one: the
/// upstream receives the same rewritten SQL with the long literal in place.
#[test]
fn a_100_kb_sql_lab_query_is_rewritten_and_forwarded_whole() {
    let setup = setup();
    let token = setup
        .gateway
        .token("alice", &["Gamma", "sql_lab"], &[], Some(BasicRole::Viewer));
    let forwarded_sql = |padding: &str| {
        let body = serde_json::json!({
            "database_id": 1,
            "sql": format!("SELECT id, note FROM orders WHERE note <> '{padding}'"),
        })
        .to_string();
        let response = post_json(
            &setup.gateway.url("/api/v1/sqllab/execute/"),
            Some(&token),
            &body,
        );
        assert_eq!(response.status, 200, "{}", response.body);
        let recorded = recorded_requests(setup.upstream);
        assert_eq!(recorded.len(), 1);
        assert_eq!(
            recorded[0].header_values("content-length"),
            vec![recorded[0].body_length.to_string()]
        );
        clear_recorded(setup.upstream);
        let forwarded: serde_json::Value = serde_json::from_str(&recorded[0].body_text).unwrap();
        (
            forwarded["sql"].as_str().unwrap().to_string(),
            response.json(),
        )
    };
    let (small, small_answer) = forwarded_sql("y");
    assert!(small.contains("tenant_id"), "{small}");
    let padding = "y".repeat(100_000);
    let (large, large_answer) = forwarded_sql(&padding);
    assert!(large.len() > 100_000);
    assert_eq!(large, small.replace("'y'", &format!("'{padding}'")));
    assert_eq!(large_answer["data"], small_answer["data"]);
}

#[test]
fn paths_are_canonicalised_and_the_upstream_gets_the_canonical_form() {
    let setup = setup();
    let token = setup.gateway.token("alice", &["Gamma"], &[], None);
    for raw in [
        "/api/v1/chart/../chart/7",
        "/api/v1//chart/./7",
        "/api/v1/%63hart/7",
        "/api/v1/dashboard/..%2Fchart/7",
    ] {
        let request = format!(
            "GET {raw} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        let (status, text) = raw_http(setup.gateway.proxy, request.as_bytes());
        assert_eq!(status, 200, "{raw}: {text}");
        let recorded = recorded_requests(setup.upstream);
        assert_eq!(recorded.len(), 1, "{raw}");
        assert_eq!(recorded[0].path, "/api/v1/chart/7", "{raw}");
        clear_recorded(setup.upstream);
    }
    // Sneaking a write route past a read check by path tricks is impossible: DELETE on the
    // canonical chart path needs can_write, which a Public-role caller lacks.
    let reader = setup.gateway.token("carol", &["Public"], &[], None);
    let token = reader;
    let request = format!(
        "DELETE /api/v1/x/../chart/7 HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let (status, _) = raw_http(setup.gateway.proxy, request.as_bytes());
    assert_eq!(status, 403);
    for raw in [
        "/../etc/passwd",
        "/api/%2e%2e/%2e%2e/x",
        "/api/v1/chart/%zz",
        "/api/v1/chart/%00",
    ] {
        let request = format!(
            "GET {raw} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        let (status, text) = raw_http(setup.gateway.proxy, request.as_bytes());
        assert_eq!(status, 400, "{raw}: {text}");
    }
    assert!(recorded_requests(setup.upstream).is_empty());
}

#[test]
fn refusals_are_audited_as_json_lines() {
    let setup = setup();
    let token = setup.gateway.token("bob", &["sql_lab"], &[], None);
    let response = reply(
        ureq::delete(&setup.gateway.url("/api/v1/chart/3"))
            .set("Authorization", &format!("Bearer {token}"))
            .call(),
    );
    assert_eq!(response.status, 403);
    assert!(Gateway::eventually(Duration::from_secs(5), || !setup
        .gateway
        .audit_lines()
        .is_empty()));
    let lines = setup.gateway.audit_lines();
    let line = &lines[0];
    assert_eq!(line["user"], "bob");
    assert_eq!(line["roles"], serde_json::json!(["sql_lab"]));
    assert_eq!(line["method"], "DELETE");
    assert_eq!(line["path"], "/api/v1/chart/3");
    assert_eq!(line["route"], "superset-chart-write");
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["status"], 403);
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("can_write on Chart")
    );
    assert_eq!(line["policy_revision"], 1);
    assert!(line["timestamp"].as_str().unwrap().contains('T'));
}

#[test]
fn admin_listener_serves_health_readiness_metrics_and_guards_admin_endpoints() {
    let setup = setup();
    let gateway = &setup.gateway;
    assert_eq!(get(&gateway.admin_url("/healthz"), None).status, 200);
    let ready = get(&gateway.admin_url("/readyz"), None);
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["policy_revision"], 1);

    let token = gateway.token("alice", &["Gamma"], &[], None);
    assert_eq!(
        get(&gateway.url("/api/v1/chart/1"), Some(&token)).status,
        200
    );
    assert_eq!(get(&gateway.url("/nope"), Some(&token)).status, 403);
    let metrics = get(&gateway.admin_url("/metrics"), None).body;
    assert!(
        metrics
            .contains(r#"datagate_requests_total{decision="allow",route="superset-chart-read"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"datagate_requests_total{decision="deny",route="unmatched"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("datagate_decision_duration_seconds_bucket"));
    assert!(metrics.contains("datagate_policy_revision 1"));
    assert!(
        metrics.contains(r#"datagate_policy_reloads_total{result="swapped",trigger="startup"} 1"#)
    );

    // Admin endpoints: anonymous → 401, non-Admin → 403, Admin → 200.
    assert_eq!(
        get(&gateway.admin_url("/api/admin/policy/status"), None).status,
        401
    );
    assert_eq!(
        get(&gateway.admin_url("/api/admin/policy/status"), Some(&token)).status,
        403
    );
    let status = gateway.policy_status();
    assert_eq!(status["revision"], 1);
    assert_eq!(status["digest"].as_str().unwrap().len(), 64);
    assert!(status["last_error"].is_null());
    let reload = reply(ureq::post(&gateway.admin_url("/api/admin/reload")).call());
    assert_eq!(reload.status, 401);
}

#[test]
fn a_body_that_repeats_a_key_is_refused_as_ambiguous() {
    let setup = setup();
    let token = setup
        .gateway
        .token("alice", &["Gamma"], &[], Some(BasicRole::Viewer));
    let ambiguous = r#"{"queries":[{"refId":"A","datasource":{"uid":"demo","uid":"finance"},"rawSql":"SELECT 1"}]}"#;
    let response = post_json(&setup.gateway.url("/api/ds/query"), Some(&token), ambiguous);
    assert_eq!(response.status, 400);
    assert!(
        response.json()["message"]
            .as_str()
            .unwrap()
            .contains("`uid`")
    );
    assert!(recorded_requests(setup.upstream).is_empty());
}

/// curl sends `Expect: 100-continue` for bodies over 1 KiB and waits for the go-ahead:
/// datagate reads inspected bodies itself, so it must answer `100 Continue` itself.
#[test]
fn expect_100_continue_is_answered_before_reading_an_inspected_body() {
    let setup = setup();
    let token = setup
        .gateway
        .token("alice", &["Gamma"], &[], Some(BasicRole::Viewer));
    let body = format!(
        r#"{{"queries":[{{"refId":"A","datasource":{{"uid":"demo"}},"rawSql":"SELECT 1"}}],"padding":"{}"}}"#,
        "x".repeat(4000)
    );
    let mut stream = TcpStream::connect(setup.gateway.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /api/ds/query HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 64];
    let read = stream.read(&mut interim).unwrap();
    assert!(
        String::from_utf8_lossy(&interim[..read]).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim[..read])
    );
    stream.write_all(body.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    assert!(text.contains("200 OK"), "{text}");
    let recorded = recorded_requests(setup.upstream);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].body_length, body.len());
    assert!(recorded[0].header_values("expect").is_empty());
}
