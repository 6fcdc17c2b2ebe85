//! A real Apache Superset 6.1 for integration tests (`tests/superset.rs`), and datagate in
//! front of it with the Superset pack and the `superset` identity preset.
//!
//! One Superset per test process: [`shared`] runs `tests/compat/superset/harness.py setup`
//! (metadata DB, users, the SQLite data DB written from [`demo_rls`]'s rows, datasets and
//! a chart through Superset's REST API) and starts gunicorn on loopback once; every test
//! starts its own datagate ([`superset_gateway`]) in front of it. gunicorn runs under the
//! harness with `--exit-with-stdin`: when this process exits, however it dies, its stdin
//! pipe closes and the harness stops gunicorn and removes Superset's home directory.
//!
//! Every request a test sends carries an `X-Test-Marker` header, which a gunicorn hook
//! records before Superset handles the request: [`Superset::received`] is how a deny test
//! proves Superset got nothing, and an allow test that it got the request.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use super::ChildProcess;
use super::demo_rls;
use super::free_port;
use super::gateway::{Gateway, GatewayOptions, repository_root};

/// The ids `harness.py setup` wrote to `ids.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Ids {
    pub database_id: u64,
    pub datasets: std::collections::BTreeMap<String, u64>,
    pub charts: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub dashboards: std::collections::BTreeMap<String, u64>,
    pub data_db: PathBuf,
}

pub struct Superset {
    pub address: SocketAddr,
    pub home: PathBuf,
    pub ids: Ids,
    pub access_log: PathBuf,
    /// The harness (gunicorn's parent); its stdin pipe lives as long as this process.
    _serve: Mutex<ChildProcess>,
    /// Superset's MCP service, started by the first test that asks ([`Superset::mcp`]).
    mcp: OnceLock<McpService>,
    /// A second gunicorn over the same home with a deployment's CSRF protection and
    /// Talisman on, started by the first test that asks
    /// ([`Superset::with_production_defaults`]).
    production: OnceLock<(SocketAddr, Mutex<ChildProcess>)>,
}

/// `superset mcp run` on loopback, over the same metadata and data databases.
pub struct McpService {
    pub address: SocketAddr,
    /// Its output: uvicorn's access log lines carry the request's query string.
    pub log: PathBuf,
    _process: Mutex<ChildProcess>,
}

/// The Superset venv `tests/compat/superset/install.sh` creates.
pub fn venv() -> PathBuf {
    std::env::var_os("DATAGATE_SUPERSET_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/datagate/superset-venv"))
}

fn harness() -> PathBuf {
    repository_root().join("tests/compat/superset/harness.py")
}

static SHARED: OnceLock<Option<Superset>> = OnceLock::new();

/// The process-wide Superset, started on first use; `None` (with the reason printed) only
/// when the venv is not installed. Any other failure to start fails the test.
pub fn shared() -> Option<&'static Superset> {
    SHARED.get_or_init(start).as_ref()
}

fn start() -> Option<Superset> {
    let python = venv().join("bin/python");
    if !venv().join("bin/superset").exists() || !python.exists() {
        eprintln!(
            "SKIPPED: no Superset venv at {} (run tests/compat/superset/install.sh, which \
             deploy/install-deps.sh and .ci/run call)",
            venv().display()
        );
        return None;
    }
    let home =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("superset-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let data_db = home.join("demo.db");
    {
        let connection = rusqlite::Connection::open(&data_db).unwrap();
        connection.execute_batch(demo_rls::SCHEMA).unwrap();
        connection.execute_batch(demo_rls::ROWS).unwrap();
    }
    let output = Command::new(&python)
        .arg(harness())
        .args(["setup", "--home"])
        .arg(&home)
        .arg("--data-db")
        .arg(&data_db)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "harness.py setup failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let ids: Ids =
        serde_json::from_str(&std::fs::read_to_string(home.join("ids.json")).unwrap()).unwrap();
    let access_log = home.join("access.log");
    let (address, serve) = serve(&home, &access_log, false);
    Some(Superset {
        address,
        home,
        ids,
        access_log,
        _serve: Mutex::new(serve),
        mcp: OnceLock::new(),
        production: OnceLock::new(),
    })
}

/// gunicorn (two workers) over `home` on a free loopback port, answering `/health`; with
/// `production_defaults`, Flask-WTF's CSRF protection and Talisman are on, as in a
/// Superset deployment (superset_config.py reads `DATAGATE_SUPERSET_PRODUCTION_DEFAULTS`).
fn serve(home: &Path, access_log: &Path, production_defaults: bool) -> (SocketAddr, ChildProcess) {
    let port = free_port();
    let mut command = Command::new(venv().join("bin/python"));
    command
        .arg(harness())
        .args(["serve", "--exit-with-stdin", "--workers", "2", "--home"])
        .arg(home)
        .arg("--port")
        .arg(port.to_string())
        .arg("--access-log")
        .arg(access_log);
    if production_defaults {
        command.arg("--production-defaults");
    }
    let child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut serve = ChildProcess::new(child);
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let up = ureq::get(&format!("http://{address}/health"))
            .timeout(Duration::from_secs(2))
            .call()
            .is_ok();
        if up {
            break;
        }
        if let Some(status) = serve.wait_for_exit(Duration::from_millis(0)) {
            panic!("Superset's gunicorn exited before answering: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "Superset did not answer /health within 180 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The arrivals hook (gunicorn_hooks.py) is what makes `received` exact; a server
    // without it would leave allow tests racing gunicorn's own log line again.
    let arrivals = std::fs::read_to_string(access_log).unwrap_or_default();
    assert!(
        arrivals
            .lines()
            .any(|line| line.starts_with("arrived GET /health ")),
        "gunicorn_hooks.py did not record the /health probe in {}",
        access_log.display()
    );
    (address, serve)
}

fn start_mcp(superset: &Superset) -> McpService {
    let port = free_port();
    let log = superset.home.join("mcp.log");
    let child = Command::new(venv().join("bin/python"))
        .arg(harness())
        .args(["mcp", "--exit-with-stdin", "--home"])
        .arg(&superset.home)
        .arg("--port")
        .arg(port.to_string())
        .arg("--access-log")
        .arg(&log)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut process = ChildProcess::new(child);
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    // Up when it answers a JSON-RPC ping (as a caller: the MCP service refuses anything
    // without datagate's identity headers, with a JSON-RPC error, which is an answer).
    loop {
        let up = ureq::post(&format!("http://{address}/mcp"))
            .timeout(Duration::from_secs(2))
            .set("Accept", "application/json, text/event-stream")
            .send_json(serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "ping"}))
            .is_ok();
        if up {
            break;
        }
        if let Some(status) = process.wait_for_exit(Duration::from_millis(0)) {
            panic!(
                "`superset mcp run` exited before answering: {status}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "`superset mcp run` did not answer within 180 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    McpService {
        address,
        log,
        _process: Mutex::new(process),
    }
}

impl McpService {
    /// Whether any request whose query string carries `marker` reached the MCP service
    /// (uvicorn logs `"POST /mcp?marker=… HTTP/1.1"` once it starts answering). A
    /// sentinel request straight to the service, waited for in the log, orders the
    /// check after any line the marked request would have produced.
    pub fn received(&self, marker: &str) -> bool {
        let sentinel = self::marker();
        let (reply, _) = self.direct_marked(
            None,
            &sentinel,
            &serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "ping"}),
        );
        assert_eq!(
            reply.status,
            200,
            "the MCP service's ping: {}",
            reply.text()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.logged(&sentinel) {
            assert!(
                Instant::now() < deadline,
                "the sentinel request never appeared in the MCP service's log"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.logged(marker)
    }

    fn logged(&self, marker: &str) -> bool {
        let Ok(text) = std::fs::read_to_string(&self.log) else {
            return false;
        };
        let needle = format!("/mcp?marker={marker} ");
        text.lines().any(|line| line.contains(&needle))
    }

    /// A JSON-RPC request straight to the MCP service (no datagate) as `caller` (user,
    /// roles), or with no identity headers: the control. Returns the reply and its marker.
    pub fn direct(&self, caller: Option<(&str, &[&str])>, body: &Value) -> (Reply, String) {
        let marker = self::marker();
        let (reply, _) = self.direct_marked(caller, &marker, body);
        (reply, marker)
    }

    fn direct_marked(
        &self,
        caller: Option<(&str, &[&str])>,
        marker: &str,
        body: &Value,
    ) -> (Reply, String) {
        let roles = caller.map(|(_, roles)| roles.join(",")).unwrap_or_default();
        let mut headers = vec![("Accept", "application/json, text/event-stream")];
        if let Some((user, _)) = caller {
            headers.push(("X-Datagate-User", user));
            headers.push(("X-Datagate-Roles", roles.as_str()));
        }
        let reply = send(
            "POST",
            &format!("http://{}/mcp?marker={marker}", self.address),
            &headers,
            Some(("application/json", body.to_string().into_bytes())),
        );
        (reply, marker.to_string())
    }
}

/// The JSON-RPC messages of an MCP answer: the `data:` lines of a server-sent event
/// stream (Superset's MCP service answers `text/event-stream`), or one JSON body
/// (datagate's own JSON-RPC errors).
pub fn mcp_messages(reply: &Reply) -> Vec<Value> {
    let text = reply.text();
    if reply
        .header("content-type")
        .is_some_and(|value| value.starts_with("text/event-stream"))
    {
        return text
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .map(|data| serde_json::from_str(data).unwrap())
            .collect();
    }
    vec![serde_json::from_str(&text).unwrap_or(Value::Null)]
}

/// The answer to request `id` among an MCP reply's messages (progress and log
/// notifications come first on a stream).
pub fn mcp_answer(reply: &Reply, id: &Value) -> Value {
    mcp_messages(reply)
        .into_iter()
        .find(|message| {
            &message["id"] == id
                && (message.get("result").is_some() || message.get("error").is_some())
        })
        .unwrap_or_else(|| panic!("no answer to {id} in {}", reply.text()))
}

impl Superset {
    /// Whether any request carrying `marker` reached Superset (of the production-defaults
    /// server too, once started).
    ///
    /// gunicorn_hooks.py records a request's marker before Superset handles it, so once
    /// datagate has answered with Superset's response the record is already in the log;
    /// a refused request has none. (gunicorn's own access-log line comes only after the
    /// response is sent, by any of its workers: reading that raced the reply.)
    pub fn received(&self, marker: &str) -> bool {
        let mut logs = vec![self.access_log.clone()];
        if self.production.get().is_some() {
            logs.push(self.home.join(PRODUCTION_ACCESS_LOG));
        }
        logs.iter().any(|log| logged(log, marker))
    }
}

/// The access log of the server [`Superset::with_production_defaults`] starts.
const PRODUCTION_ACCESS_LOG: &str = "access-production.log";

fn logged(log: &Path, marker: &str) -> bool {
    let Ok(file) = std::fs::File::open(log) else {
        return false;
    };
    let needle = format!("marker={marker}");
    std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.split_whitespace().any(|field| field == needle))
}

impl Superset {
    /// A request straight to Superset (no datagate) as `user` with `roles`: the control
    /// that shows what Superset itself would do with a request datagate refuses.
    pub fn direct(
        &self,
        method: &str,
        path: &str,
        user: &str,
        roles: &[&str],
        body: Option<&Value>,
    ) -> Reply {
        let roles = roles.join(",");
        send(
            method,
            &format!("http://{}{path}", self.address),
            &[("X-Datagate-User", user), ("X-Datagate-Roles", &roles)],
            body.map(|body| ("application/json", body.to_string().into_bytes())),
        )
    }

    /// Superset's MCP service over the same databases, started on first use.
    pub fn mcp(&self) -> &McpService {
        self.mcp.get_or_init(|| start_mcp(self))
    }

    /// The address of this Superset served as a deployment serves it — Flask-WTF's CSRF
    /// protection and Talisman on — over the same metadata and data databases; started on
    /// first use. The browser test runs against it, so the UI is proven to work through
    /// datagate with the defaults an operator has (the REST tests call the API as a
    /// non-browser client, with CSRF off).
    pub fn with_production_defaults(&self) -> SocketAddr {
        self.production
            .get_or_init(|| {
                let (address, process) =
                    serve(&self.home, &self.home.join(PRODUCTION_ACCESS_LOG), true);
                (address, Mutex::new(process))
            })
            .0
    }

    /// The data DB Superset queries (the oracle reads the same rows from `demo_rls`).
    pub fn data_db(&self) -> &Path {
        &self.ids.data_db
    }

    /// The datasource uid datagate reads from SQL Lab's `database_id`.
    pub fn database_uid(&self) -> String {
        self.ids.database_id.to_string()
    }
}

/// One answer: status, headers (lowercased names) and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A unique marker for one request, recorded by Superset's access log if it arrives.
pub fn marker() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// One HTTP request; redirects are not followed (a test sees Superset's own 302s).
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, Vec<u8>)>,
) -> Reply {
    let agent = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(60))
        .build();
    let mut request = agent.request(method, url);
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let result = match body {
        Some((content_type, bytes)) => request.set("Content-Type", content_type).send_bytes(&bytes),
        None => request.call(),
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{method} {url}: {error}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .filter_map(|name| {
            let value = response.header(&name)?.to_string();
            Some((name.to_ascii_lowercase(), value))
        })
        .collect();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut body).unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

/// A caller of datagate: a minted token and a marker per request.
pub struct Caller<'a> {
    pub gateway: &'a Gateway,
    pub token: Option<String>,
}

impl Caller<'_> {
    /// Sends one request through datagate; returns the reply and its marker.
    pub fn send(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> (Reply, String) {
        let marker = marker();
        let authorization = self.token.as_ref().map(|token| format!("Bearer {token}"));
        let mut headers = vec![("X-Test-Marker", marker.as_str())];
        if let Some(authorization) = &authorization {
            headers.push(("Authorization", authorization));
        }
        (
            send(method, &self.gateway.url(path), &headers, body),
            marker,
        )
    }

    pub fn get(&self, path: &str) -> (Reply, String) {
        self.send("GET", path, None)
    }

    /// One JSON-RPC request to the MCP route (`POST /mcp`, the marker in the query string
    /// where the MCP service's log records it).
    pub fn mcp(&self, body: &Value) -> (Reply, String) {
        let marker = marker();
        let authorization = self.token.as_ref().map(|token| format!("Bearer {token}"));
        let mut headers = vec![("Accept", "application/json, text/event-stream")];
        if let Some(authorization) = &authorization {
            headers.push(("Authorization", authorization));
        }
        (
            send(
                "POST",
                &self.gateway.url(&format!("/mcp?marker={marker}")),
                &headers,
                Some(("application/json", body.to_string().into_bytes())),
            ),
            marker,
        )
    }

    pub fn post_json(&self, path: &str, body: &Value) -> (Reply, String) {
        self.send(
            "POST",
            path,
            Some(("application/json", body.to_string().into_bytes())),
        )
    }
}

/// Extra settings for [`superset_gateway`].
#[derive(Default)]
pub struct SupersetGatewayOptions {
    /// Further policy files (name, contents) beside the repository's.
    pub policy_files: Vec<(String, String)>,
    /// YAML for `exports:`; the defaults when `None`.
    pub exports_yaml: Option<String>,
    /// Further `routes.table` entries (YAML list items).
    pub extra_routes: Option<String>,
    /// YAML for `charts:` (chart-data row-level security); none when `None`.
    pub charts_yaml: Option<String>,
    /// Where datagate forwards to, when not Superset's web app (its MCP service).
    pub upstream: Option<SocketAddr>,
    /// YAML for `auth:` (browser sign-in); the test HMAC keys when `None`.
    pub auth_yaml: Option<String>,
    /// The proxy port (known before start when the IdP must redirect to it).
    pub proxy_port: Option<u16>,
    /// Environment of the datagate process (secrets named by `*_env` keys).
    pub env: Vec<(String, String)>,
    /// Audit allowed requests too (`audit.log_allowed`).
    pub log_allowed: bool,
}

/// datagate in front of `superset`: `routes: {packs: [superset], unmatched: deny}`,
/// `identity_headers.preset: superset`, the repository's policies with the demo RLS
/// filters (`policies/50-demo.rls.yaml`) moved onto Superset's demo database, and
/// SQL Lab (`role:sql_lab`) granted `Query` on it.
pub fn superset_gateway(superset: &Superset, options: SupersetGatewayOptions) -> Gateway {
    let uid = superset.database_uid();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(repository_root().join("policies")).unwrap() {
        let entry = entry.unwrap();
        // `policies/tests/` holds policy test suites, not policies.
        if !entry.path().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let contents = std::fs::read_to_string(entry.path()).unwrap();
        let contents = if name == "50-demo.rls.yaml" {
            contents.replace("datasource: demo", &format!("datasource: \"{uid}\""))
        } else {
            contents
        };
        files.push((name, contents));
    }
    files.push((
        "40-superset-test.csv".to_string(),
        format!("p, role:sql_lab, datasources:uid:{uid}, Query\n"),
    ));
    files.extend(options.policy_files);
    let mut gateway_options = GatewayOptions::new(options.upstream.unwrap_or(superset.address));
    gateway_options.routes_yaml = Some(format!(
        "packs: [superset]\nunmatched: deny\ntable:\n{}",
        options.extra_routes.unwrap_or_else(|| "  []\n".to_string())
    ));
    gateway_options.datasources_yaml = Some(format!(
        "- uid: \"{uid}\"\n  dialect: sqlite\n  tables: [orders, customers, posts]\n  \
         deny_unlisted_tables: true\n"
    ));
    gateway_options.policy_files = Some(files);
    gateway_options.exports_yaml = options.exports_yaml;
    gateway_options.auth_yaml = options.auth_yaml;
    gateway_options.proxy_port = options.proxy_port;
    gateway_options.env = options.env;
    gateway_options.log_allowed = options.log_allowed;
    let charts = options
        .charts_yaml
        .map(|charts| {
            let indented: String = charts.lines().map(|line| format!("  {line}\n")).collect();
            format!("charts:\n{indented}")
        })
        .unwrap_or_default();
    gateway_options.extra_yaml = Some(format!("identity_headers:\n  preset: superset\n{charts}"));
    Gateway::start(gateway_options)
}

/// The caller `name` with `roles`, through `gateway`.
pub fn caller<'a>(gateway: &'a Gateway, name: &str, roles: &[&str]) -> Caller<'a> {
    Caller {
        gateway,
        token: Some(gateway.token(name, roles, &[], None)),
    }
}

/// A SQL Lab execute body as Superset 6.1's frontend sends it.
pub fn sql_lab_body(database_id: u64, client_id: &str, sql: &str) -> Value {
    serde_json::json!({
        "client_id": client_id,
        "database_id": database_id,
        "runAsync": false,
        "catalog": null,
        "schema": "main",
        "sql": sql,
        "sql_editor_id": "1",
        "tab": "Untitled Query 1",
        "tmp_table_name": "",
        "select_as_cta": false,
        "ctas_method": "TABLE",
        "templateParams": "",
        "queryLimit": 1000,
        "expand_data": true,
    })
}

/// SQL Lab's answer as rows in column order.
pub fn sql_lab_rows(answer: &Value) -> Vec<Vec<Value>> {
    let columns: Vec<String> = answer["columns"]
        .as_array()
        .unwrap_or_else(|| panic!("no columns in {answer}"))
        .iter()
        .map(|column| column["name"].as_str().unwrap().to_string())
        .collect();
    answer["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {answer}"))
        .iter()
        .map(|row| columns.iter().map(|name| row[name].clone()).collect())
        .collect()
}

/// Rows of a CSV export (Superset writes a BOM and `,`-separated text), as strings.
pub fn csv_rows(text: &str) -> Vec<Vec<String>> {
    text.trim_start_matches('\u{feff}')
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| line.split(',').map(str::to_string).collect())
        .collect()
}
