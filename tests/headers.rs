//! What the upstream's own HTTP parser makes of the headers datagate forwards: a WSGI app
//! that echoes its environ (`tests/compat/wsgi_echo/echo.py`) behind Werkzeug, gunicorn and
//! wsgiref — servers that map `-` and `_` to the same `HTTP_*` variable — and the real
//! Datasette with datagate's actor plugin (`deploy/datasette/datagate_actor.py`).
//! Requests are written byte for byte on a socket, so header spellings reach datagate
//! exactly as an attacker would send them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use datagate::principal::BasicRole;
use serde_json::{Value, json};
use support::gateway::{Gateway, GatewayOptions, repository_root};
use support::{ChildProcess, free_port, wait_for_http_ok};

#[derive(Clone, Copy, Debug)]
enum Server {
    Werkzeug,
    Gunicorn,
    Wsgiref,
}

const SERVERS: [Server; 3] = [Server::Werkzeug, Server::Gunicorn, Server::Wsgiref];

struct Echo {
    _process: ChildProcess,
    address: SocketAddr,
}

fn echo_dir() -> PathBuf {
    repository_root().join("tests/compat/wsgi_echo")
}

fn start_echo(server: Server) -> Echo {
    let port = free_port();
    let mut command = Command::new("python3");
    match server {
        Server::Werkzeug => {
            command.args(["echo.py", "werkzeug", &port.to_string()]);
        }
        Server::Wsgiref => {
            command.args(["echo.py", "wsgiref", &port.to_string()]);
        }
        Server::Gunicorn => {
            command.args(["-m", "gunicorn", "-w", "1", "--threads", "4", "-b"]);
            command.arg(format!("127.0.0.1:{port}"));
            command.arg("echo:app");
        }
    }
    let process = command
        .current_dir(echo_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with werkzeug and gunicorn (deploy/install-deps.sh)");
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_http_ok(
        &format!("http://{address}/__echo/seen"),
        Duration::from_secs(30),
    );
    clear_seen(address);
    Echo {
        _process: ChildProcess::new(process),
        address,
    }
}

/// Every environ the echo app recorded (asked directly, not through datagate).
fn seen(address: SocketAddr) -> Vec<serde_json::Map<String, Value>> {
    ureq::get(&format!("http://{address}/__echo/seen"))
        .call()
        .unwrap()
        .into_json()
        .unwrap()
}

fn clear_seen(address: SocketAddr) {
    ureq::delete(&format!("http://{address}/__echo/seen"))
        .call()
        .unwrap();
}

const ROUTES: &str = r#"unmatched: authenticated
table:
  - name: live
    methods: [GET]
    path: "/live/{*rest}"
    authenticated: true
    allow_upgrade: true
"#;

fn gateway(upstream: SocketAddr, extra_yaml: Option<&str>) -> Gateway {
    let mut options = GatewayOptions::new(upstream);
    options.routes_yaml = Some(ROUTES.to_string());
    options.extra_yaml = extra_yaml.map(str::to_string);
    Gateway::start(options)
}

/// Sends one HTTP/1.1 request with exactly these header lines; returns the status and body.
fn send(proxy: SocketAddr, request_line: &str, headers: &[(&str, &[u8])]) -> (u16, Value) {
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut raw = format!("{request_line} HTTP/1.1\r\nHost: {proxy}\r\n").into_bytes();
    let mut connection = false;
    for (name, value) in headers {
        connection |= name.eq_ignore_ascii_case("connection");
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n");
    }
    if !connection {
        raw.extend_from_slice(b"Connection: close\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    stream.write_all(&raw).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).to_string();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

/// The environ keys a forged header could have produced, whatever its spelling.
const FORGEABLE: [&str; 16] = [
    "REMOTE_USER",
    "HTTP_REMOTE_USER",
    "HTTP_X_DATAGATE_DB_TOKEN",
    "HTTP_X_DATAGATE_DB_USER",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_X_FORWARDED_PREFIX",
    "HTTP_FORWARDED",
    "HTTP_X_REAL_IP",
    "HTTP_X_ORIGINAL_URL",
    "HTTP_X_REWRITE_URL",
    "HTTP_X_HTTP_METHOD_OVERRIDE",
    "HTTP_X_METHOD_OVERRIDE",
    "HTTP_X_HTTP_METHOD",
    "HTTP_X_WEBAUTH_USER",
    "HTTP_X_DATAGATE_EMAIL",
];

#[test]
fn forged_identity_and_routing_headers_never_reach_wsgi_servers() {
    for server in SERVERS {
        let echo = start_echo(server);
        let gateway = gateway(echo.address, None);
        let token = gateway.token("alice", &["Gamma", " Admin"], &["eu"], None);
        let authorization = bearer(&token);
        let attack: Vec<(&str, &[u8])> = vec![
            ("Authorization", &authorization),
            ("X_Datagate_User", b"root"),
            ("X-Datagate_Roles", b"Admin"),
            ("Remote_User", b"root"),
            ("Remote-User", b"root"),
            ("X_Datagate_Db_Token", b"stolen"),
            ("X-Datagate-Db-User", b"admin"),
            ("X_Datagate_Email", b"root@example.com"),
            ("X_WEBAUTH_USER", b"admin"),
            ("X-Forwarded-Host", b"evil.example"),
            ("X_Forwarded_Host", b"evil.example"),
            ("X-Forwarded-Port", b"1"),
            ("X-Forwarded-Prefix", b"/evil"),
            ("X-Forwarded-For", b"10.9.9.9"),
            ("X_Forwarded_Proto", b"https"),
            ("Forwarded", b"for=10.9.9.9;host=evil.example;proto=https"),
            ("X-Real-IP", b"10.9.9.9"),
            ("X-Original-URL", b"/admin"),
            ("X-Rewrite-URL", b"/admin"),
            ("X-HTTP-Method-Override", b"DELETE"),
            ("X_Method_Override", b"DELETE"),
            ("X-HTTP-Method", b"DELETE"),
            ("X-Request-Id", b"kept-1"),
        ];
        let (status, body) = send(gateway.proxy, "GET /api/anything", &attack);
        assert_eq!(status, 200, "{server:?}: {body}");
        let environs = seen(echo.address);
        assert_eq!(environs.len(), 1, "{server:?}");
        let environ = &environs[0];
        let get = |key: &str| environ.get(key).and_then(Value::as_str);
        assert_eq!(get("REQUEST_METHOD"), Some("GET"), "{server:?}");
        assert_eq!(get("PATH_INFO"), Some("/api/anything"), "{server:?}");
        assert_eq!(get("HTTP_X_DATAGATE_USER"), Some("alice"), "{server:?}");
        // `" Admin"` stays a role other than `Admin` for an upstream that splits and trims.
        assert_eq!(
            get("HTTP_X_DATAGATE_ROLES"),
            Some("Gamma,%20Admin"),
            "{server:?}"
        );
        assert_eq!(get("HTTP_X_DATAGATE_TEAMS"), Some("eu"), "{server:?}");
        assert_eq!(get("HTTP_X_FORWARDED_FOR"), Some("127.0.0.1"), "{server:?}");
        assert_eq!(get("HTTP_X_FORWARDED_PROTO"), Some("http"), "{server:?}");
        assert_eq!(get("HTTP_X_REQUEST_ID"), Some("kept-1"), "{server:?}");
        for key in FORGEABLE {
            assert_eq!(get(key), None, "{server:?} received {key}");
        }
    }
}

#[test]
fn werkzeug_proxy_fix_behind_datagate_sees_datagate_not_the_client() {
    // Superset with ENABLE_PROXY_FIX rebuilds scheme, host, port, prefix and client address
    // from X-Forwarded-*; behind datagate those describe datagate's connection only.
    let echo = start_echo(Server::Gunicorn);
    let gateway = gateway(echo.address, None);
    let token = gateway.token("alice", &["Gamma"], &[], None);
    let authorization = bearer(&token);
    let (status, body) = send(
        gateway.proxy,
        "GET /proxyfix/api/v1/chart/",
        &[
            ("Authorization", &authorization),
            ("X-Forwarded-Host", b"evil.example"),
            ("X-Forwarded-Port", b"8443"),
            ("X-Forwarded-Prefix", b"/phish"),
            ("X-Forwarded-Proto", b"https"),
            ("X-Forwarded-For", b"10.9.9.9"),
            ("X_Forwarded_Host", b"evil2.example"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let environ = &seen(echo.address)[0];
    assert_eq!(environ["HTTP_HOST"], gateway.proxy.to_string().as_str());
    assert_eq!(environ["wsgi.url_scheme"], "http");
    assert_eq!(environ["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(environ["SCRIPT_NAME"], "");
    // No X-Forwarded-Port reached ProxyFix: the port is the server's own.
    assert_eq!(
        environ["SERVER_PORT"],
        echo.address.port().to_string().as_str()
    );
}

#[test]
fn forwarded_for_is_appended_only_from_a_trusted_proxy() {
    let echo = start_echo(Server::Wsgiref);
    let appending = gateway(
        echo.address,
        Some("forwarding:\n  x_forwarded_for: append\n  trusted_proxies: [127.0.0.0/8]\n"),
    );
    let token = appending.token("alice", &["Gamma"], &[], None);
    let authorization = bearer(&token);
    let headers: Vec<(&str, &[u8])> = vec![
        ("Authorization", &authorization),
        ("X-Forwarded-For", b"203.0.113.7"),
    ];
    let (status, _) = send(appending.proxy, "GET /api/anything", &headers);
    assert_eq!(status, 200);
    assert_eq!(
        seen(echo.address)[0]["HTTP_X_FORWARDED_FOR"],
        "203.0.113.7, 127.0.0.1"
    );
    // A peer outside the range: replaced.
    clear_seen(echo.address);
    let strict = gateway(
        echo.address,
        Some("forwarding:\n  x_forwarded_for: append\n  trusted_proxies: [10.0.0.0/8]\n"),
    );
    let token = strict.token("alice", &["Gamma"], &[], None);
    let authorization = bearer(&token);
    let headers: Vec<(&str, &[u8])> = vec![
        ("Authorization", &authorization),
        ("X-Forwarded-For", b"203.0.113.7"),
    ];
    let (status, _) = send(strict.proxy, "GET /api/anything", &headers);
    assert_eq!(status, 200);
    assert_eq!(seen(echo.address)[0]["HTTP_X_FORWARDED_FOR"], "127.0.0.1");
}

#[test]
fn upgrade_is_refused_unless_the_route_allows_it_and_then_only_after_its_checks() {
    let echo = start_echo(Server::Werkzeug);
    let gateway = gateway(echo.address, None);
    let token = gateway.token("alice", &["Gamma"], &[], None);
    let authorization = bearer(&token);
    let websocket: Vec<(&str, &[u8])> = vec![
        ("Authorization", &authorization),
        ("Upgrade", b"websocket"),
        ("Connection", b"Upgrade"),
        ("Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", b"13"),
    ];
    let (status, body) = send(gateway.proxy, "GET /api/anything", &websocket);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["kind"], "upgrade_not_allowed", "{body}");
    let (status, body) = send(
        gateway.proxy,
        "GET /api/anything",
        &[("Authorization", &bearer(&token)), ("Upgrade", b"h2c")],
    );
    assert_eq!(status, 403, "{body}");
    assert!(seen(echo.address).is_empty(), "the upstream saw nothing");

    // The route allows upgrades, but its checks come first: anonymous is refused.
    let (status, _) = send(gateway.proxy, "GET /live/socket", &websocket[1..]);
    assert_eq!(status, 401);
    assert!(seen(echo.address).is_empty());
    // Allowed and authenticated: the handshake reaches the upstream.
    let (status, body) = send(gateway.proxy, "GET /live/socket", &websocket);
    assert_eq!(status, 200, "{body}");
    let environs = seen(echo.address);
    assert_eq!(environs.len(), 1);
    assert_eq!(environs[0]["HTTP_UPGRADE"], "websocket");
    assert_eq!(environs[0]["HTTP_X_DATAGATE_USER"], "alice");
}

#[test]
fn ambiguous_credentials_are_refused_not_read_as_anonymous() {
    let echo = start_echo(Server::Wsgiref);
    let gateway = gateway(echo.address, None);
    let alice = gateway.token("alice", &["Gamma"], &[], None);
    let root = gateway.admin_token();
    type Headers = Vec<(&'static str, Vec<u8>)>;
    let cases: Vec<(Headers, &str)> = vec![
        (
            vec![
                ("Authorization", bearer(&alice)),
                ("Authorization", bearer(&root)),
            ],
            "duplicate_credentials",
        ),
        (
            vec![("Authorization", b"Bearer \xff\xfe\xfd".to_vec())],
            "credential_not_text",
        ),
        (
            vec![
                ("X-Api-Key", b"one".to_vec()),
                ("X-Api-Key", b"two".to_vec()),
            ],
            "duplicate_credentials",
        ),
        (
            vec![("X_Api_Key", b"one".to_vec())],
            "ambiguous_header_name",
        ),
        (
            vec![
                ("Authorization", bearer(&alice)),
                ("Connection", b"close, Content-Type".to_vec()),
            ],
            "connection_nominates_protected",
        ),
    ];
    for (headers, kind) in cases {
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_slice()))
            .collect();
        let (status, body) = send(gateway.proxy, "GET /api/anything", &headers);
        assert_eq!(status, 400, "{kind}: {body}");
        assert_eq!(body["kind"], kind, "{body}");
    }
    assert!(seen(echo.address).is_empty(), "the upstream saw nothing");
}

#[test]
fn grafana_preset_sends_exactly_the_auth_proxy_headers() {
    let echo = start_echo(Server::Gunicorn);
    let gateway = gateway(
        echo.address,
        Some("identity_headers:\n  preset: grafana\nforwarding:\n  x_forwarded_host: true\n"),
    );
    let token = gateway.token_with_claims(
        "alice",
        &["Gamma"],
        &["analysts", "eu ops"],
        Some(BasicRole::Editor),
        json!({"email": "alice@example.com", "name": "Alice Liddell"}),
    );
    let (status, body) = send(
        gateway.proxy,
        "GET /api/dashboards/home",
        &[
            ("Authorization", &bearer(&token)),
            ("X-WEBAUTH-USER", b"admin"),
            ("X-Webauth-Grafana-Admin", b"true"),
            ("X_WEBAUTH_ROLE", b"Admin"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let environs = seen(echo.address);
    let environ = &environs[0];
    let mut identity: Vec<(String, String)> = environ
        .iter()
        .filter(|(key, _)| key.starts_with("HTTP_X_WEBAUTH") || key.starts_with("HTTP_X_DATAGATE"))
        .map(|(key, value)| (key.clone(), value.as_str().unwrap().to_string()))
        .collect();
    identity.sort();
    let expected: Vec<(String, String)> = [
        ("HTTP_X_WEBAUTH_EMAIL", "alice@example.com"),
        ("HTTP_X_WEBAUTH_GROUPS", "analysts,eu ops"),
        ("HTTP_X_WEBAUTH_NAME", "Alice Liddell"),
        ("HTTP_X_WEBAUTH_ROLE", "Editor"),
        ("HTTP_X_WEBAUTH_USER", "alice"),
    ]
    .iter()
    .map(|(key, value)| (key.to_string(), value.to_string()))
    .collect();
    assert_eq!(identity, expected);
    // Asked for: X-Forwarded-Host is the Host the client connected to.
    assert_eq!(
        environ["HTTP_X_FORWARDED_HOST"],
        gateway.proxy.to_string().as_str()
    );

    // An anonymous caller is not signed in to Grafana as anyone.
    clear_seen(echo.address);
    let (status, _) = send(
        gateway.proxy,
        "GET /api/dashboards/home",
        &[("X-WEBAUTH-USER", b"admin")],
    );
    assert_eq!(status, 401, "unmatched: authenticated refuses anonymous");
    assert!(seen(echo.address).is_empty());
}

#[test]
fn an_upstream_101_never_becomes_a_tunnel_for_requests_after_it() {
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("received");
    // Port 0 and the announced address: a port picked here and bound later by the script
    // can be taken by another test's listener in between (seen in CI as a refused connect).
    let mut process = Command::new("python3")
        .arg(echo_dir().join("always_101.py"))
        .arg("0")
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = process.stdout.take().unwrap();
    let _upstream = ChildProcess::new(process);
    let address = support::announced_address(stdout);
    std::fs::write(&log, b"").unwrap();
    let gateway = gateway(address, None);
    let token = gateway.token("alice", &["Gamma"], &[], None);

    // An allowed request without `Upgrade`, answered 101 by the upstream: the client gets
    // 502, not the 101, and an anonymous DELETE written next on the same connection never
    // reaches the upstream as tunnel bytes.
    let mut stream = TcpStream::connect(gateway.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let first = format!(
        "GET /api/anything HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
        gateway.proxy
    );
    stream.write_all(first.as_bytes()).unwrap();
    let mut answer = [0u8; 4096];
    let read = stream.read(&mut answer).unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..read]).to_string();
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    let second = format!(
        "DELETE /api/v1/chart/1 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        gateway.proxy
    );
    let _ = stream.write_all(second.as_bytes());
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    drop(stream);
    std::thread::sleep(Duration::from_millis(300));
    let received = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).to_string();
    assert!(received.starts_with("GET /api/anything"), "{received}");
    assert!(!received.contains("DELETE"), "tunnelled: {received}");

    // On a route with `allow_upgrade: true` an anonymous handshake is refused first…
    std::fs::write(&log, b"").unwrap();
    let handshake = |authorization: &str| {
        format!(
            "GET /live/socket HTTP/1.1\r\nHost: {}\r\n{authorization}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            gateway.proxy
        )
    };
    let mut stream = TcpStream::connect(gateway.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(handshake("").as_bytes()).unwrap();
    let mut answer = [0u8; 4096];
    let read = stream.read(&mut answer).unwrap_or(0);
    let text = String::from_utf8_lossy(&answer[..read]).to_string();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    drop(stream);
    assert_eq!(
        std::fs::read(&log).unwrap(),
        b"",
        "the upstream saw nothing"
    );
    // …and an authenticated one becomes the tunnel the README describes: bytes inside it
    // reach the upstream uninspected.
    let mut stream = TcpStream::connect(gateway.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let authorization = format!("Authorization: Bearer {token}\r\n");
    stream
        .write_all(handshake(&authorization).as_bytes())
        .unwrap();
    let read = stream.read(&mut answer).unwrap_or(0);
    let text = String::from_utf8_lossy(&answer[..read]).to_string();
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    stream.write_all(b"tunnelled-bytes").unwrap();
    assert!(Gateway::eventually(Duration::from_secs(5), || {
        String::from_utf8_lossy(&std::fs::read(&log).unwrap()).contains("tunnelled-bytes")
    }));
    let received = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).to_string();
    assert!(received.starts_with("GET /live/socket"), "{received}");
    assert!(
        received.contains("x-datagate-user: alice") || received.contains("X-Datagate-User: alice"),
        "{received}"
    );
}

struct Datasette {
    _process: ChildProcess,
    address: SocketAddr,
}

fn start_datasette_with_actor_plugin() -> Datasette {
    let port = free_port();
    let process = Command::new("python3")
        .args(["-m", "datasette", "serve", "--memory"])
        .arg("--plugins-dir")
        .arg(repository_root().join("deploy/datasette"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m datasette (deploy/install-deps.sh)");
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_http_ok(
        &format!("http://{address}/-/versions.json"),
        Duration::from_secs(30),
    );
    Datasette {
        _process: ChildProcess::new(process),
        address,
    }
}

#[test]
fn datasette_sees_the_caller_datagate_authenticated_as_its_actor() {
    let datasette = start_datasette_with_actor_plugin();
    let gateway = gateway(
        datasette.address,
        Some("identity_headers:\n  preset: datasette\n"),
    );
    let token = gateway.token_with_claims(
        "zoë",
        &["Gamma", " Admin", "a,b"],
        &["eu"],
        Some(BasicRole::Viewer),
        json!({"email": "zoe@example.com", "name": "Zoë Q"}),
    );
    let (status, body) = send(
        gateway.proxy,
        "GET /-/actor.json",
        &[
            ("Authorization", &bearer(&token)),
            ("X_Datagate_User", b"root"),
            ("x-datagate-roles", b"Admin"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["actor"],
        json!({
            "id": "zoë",
            "roles": ["Gamma", " Admin", "a,b"],
            "teams": ["eu"],
            "org_role": "Viewer",
            "email": "zoe@example.com",
            "name": "Zoë Q",
        })
    );
    // A forged header alone makes nobody an actor through datagate.
    let mut options = GatewayOptions::new(datasette.address);
    options.routes_yaml = Some("unmatched: allow\n".to_string());
    options.extra_yaml = Some("identity_headers:\n  preset: datasette\n".to_string());
    let open_gateway = Gateway::start(options);
    let (status, body) = send(
        open_gateway.proxy,
        "GET /-/actor.json",
        &[("X-Datagate-User", b"root"), ("X_Datagate_User", b"root")],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["actor"], Value::Null);
}
