//! Test support shared by the integration tests: child processes that die with the test,
//! free ports, the demo upstream and its request recorder, and (in `gateway`) datagate.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod demo_rls;
pub mod gateway;
pub mod superset;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// A spawned process, killed when dropped so a failing test leaves nothing running.
pub struct ChildProcess {
    child: Child,
}

impl ChildProcess {
    pub fn new(child: Child) -> Self {
        ChildProcess { child }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to exit on its own; its status if it did.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.try_wait().ok().flatten()
    }

    /// Kills the process and waits for it to exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    // The kernel may hand the same just-released port to two calls in a row (seen once:
    // a gateway's proxy and admin listeners got one port), so a port is handed out at
    // most once per test process.
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// Starts the demo upstream on an ephemeral port; returns it and its address.
pub fn spawn_upstream(extra_args: &[&str]) -> (ChildProcess, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_datagate-demo-upstream"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .args(extra_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let process = ChildProcess::new(child);
    let address = announced_address(stdout);
    wait_for_http_ok(
        &format!("http://{address}/__recorder/health"),
        Duration::from_secs(10),
    );
    (process, address)
}

/// The address a process bound to port 0 announces as its first line of output,
/// `listening on <address>`.
pub fn announced_address(stdout: impl std::io::Read) -> SocketAddr {
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected output instead of `listening on …`: {line:?}"))
        .parse()
        .unwrap()
}

pub fn wait_for_http_ok(url: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ureq::get(url)
            .timeout(Duration::from_millis(500))
            .call()
            .is_ok()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{url} did not answer 200 within {timeout:?}");
}

/// One request as the upstream received it.
#[derive(Debug, Clone, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub query: Option<String>,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body_text: String,
    pub body_length: usize,
}

impl RecordedRequest {
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .flat_map(|(_, values)| values.clone())
            .collect()
    }
}

pub fn recorded_requests(upstream: SocketAddr) -> Vec<RecordedRequest> {
    ureq::get(&format!("http://{upstream}/__recorder/requests"))
        .call()
        .unwrap()
        .into_json()
        .unwrap()
}

/// One HTTP call with an optional bearer token and JSON body; any status is returned, with
/// the body parsed as JSON (`Null` when it is not JSON).
pub fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut request = ureq::request(method, url).timeout(Duration::from_secs(10));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let result = match body {
        Some(body) => request
            .set("Content-Type", "application/json")
            .send_string(body),
        None => request.call(),
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{method} {url}: {error}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// A fresh PostgreSQL database for one test — `(url, name)` — or `None` when
/// `DATAGATE_TEST_PG_URL` is not set. Names start with `datagate_`, which `.ci/run`
/// drops before the next run.
pub fn fresh_postgres_database(purpose: &str) -> Option<(String, String)> {
    let url = std::env::var("DATAGATE_TEST_PG_URL").ok()?;
    let name = format!("datagate_{purpose}_{}", uuid::Uuid::new_v4().simple());
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
    Some((format!("{base}/{name}"), name))
}

pub fn clear_recorded(upstream: SocketAddr) {
    ureq::delete(&format!("http://{upstream}/__recorder/requests"))
        .call()
        .unwrap();
}
