//! The admin API's OpenAPI document against the handlers: it is a valid OpenAPI 3.1
//! document (`openapi-spec-validator`), and a bounded schemathesis run with every check
//! (`--checks all`: statuses, content types, schemas, positive and negative data,
//! authentication, unsupported methods) finds nothing, against a real `datagate` with a
//! real SQLite store. openapi-spec-validator comes from `tests/compat/requirements.txt`;
//! schemathesis from its own virtualenv (`tests/compat/openapi/install.sh`, called by
//! `deploy/install-deps.sh`), because grafana-client's `urllib3-future` breaks the
//! `requests` transport schemathesis uses when both share one environment.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::gateway::{Gateway, GatewayOptions, repository_root};
use support::{call, spawn_upstream};

fn start() -> (Gateway, support::ChildProcess) {
    let (upstream_process, upstream) = spawn_upstream(&[]);
    let mut options = GatewayOptions::new(upstream);
    options.store_yaml =
        Some("url: sqlite:store/datagate.db\npoll_interval: 100ms\nmax_staleness: 5s\n".into());
    (Gateway::start(options), upstream_process)
}

fn document(gateway: &Gateway) -> serde_json::Value {
    let (status, document) = call("GET", &gateway.admin_url("/api/openapi.json"), None, None);
    assert_eq!(status, 200);
    document
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    let (gateway, _upstream) = start();
    let document = document(&gateway);
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let file = gateway.dir.path().join("openapi.json");
    std::fs::write(&file, document.to_string()).unwrap();
    let output = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "openapi-spec-validator: {text}");
}

#[test]
fn query_parameters_are_query_parameters_and_ids_are_positive() {
    let (gateway, _upstream) = start();
    let document = document(&gateway);
    let mut list_operations = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().unwrap();
                let place = parameter["in"].as_str().unwrap();
                if place == "path" {
                    assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{method} {path}: `{name}` is not in the path"
                    );
                    if parameter["schema"]["type"] == "integer" {
                        assert_eq!(
                            parameter["schema"]["minimum"], 1,
                            "{method} {path} `{name}`"
                        );
                    }
                } else {
                    assert_eq!(place, "query", "{method} {path} `{name}`");
                }
                if name == "page" {
                    list_operations += 1;
                }
            }
            let responses = operation["responses"].as_object().unwrap();
            if operation.get("security").is_some() {
                for status in ["401", "403"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} lacks {status}"
                    );
                }
            }
        }
    }
    assert!(list_operations >= 9, "{list_operations} paged operations");
    let login = &document["components"]["schemas"]["UserInput"]["properties"]["login"];
    assert_eq!(login["minLength"], 1, "{login}");
    assert!(login["pattern"].as_str().is_some(), "{login}");
}

/// The schemathesis executable of the virtualenv `tests/compat/openapi/install.sh` makes.
fn schemathesis() -> std::path::PathBuf {
    let venv = std::env::var("DATAGATE_SCHEMATHESIS_VENV")
        .unwrap_or_else(|_| "/var/cache/datagate/schemathesis-venv".to_string());
    std::path::Path::new(&venv).join("bin/schemathesis")
}

#[test]
fn schemathesis_finds_nothing() {
    let (gateway, _upstream) = start();
    let admin = gateway.admin_token();
    // Something for the listings and lookups to find.
    for (path, body) in [
        (
            "/api/users",
            json!({"login": "ann", "email": "ann@example.com"}),
        ),
        ("/api/teams", json!({"name": "analysts"})),
        ("/api/serviceaccounts", json!({"login": "reporter"})),
        ("/api/roles", json!({"name": "ChartReader"})),
    ] {
        let (status, created) = call(
            "POST",
            &gateway.admin_url(path),
            Some(&admin),
            Some(&body.to_string()),
        );
        assert_eq!(status, 201, "{path}: {created}");
    }
    let root = repository_root();
    let output = std::process::Command::new(schemathesis())
        .arg("--config-file")
        .arg(root.join("tests/compat/openapi/schemathesis.toml"))
        .arg("run")
        .arg(gateway.admin_url("/api/openapi.json"))
        .args(["--checks", "all"])
        .args(["--max-examples", "8"])
        // Bounded for CI: every operation is reached well within this (2 cores).
        .args(["--max-time", "90"])
        .args(["--seed", "20261201"])
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .args(["--header", &format!("Authorization: Bearer {admin}")])
        .args(["--no-color"])
        .current_dir(gateway.dir.path())
        .output()
        .expect("schemathesis runs (tests/compat/openapi/install.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(
        output.status.success(),
        "schemathesis reported failures:\n{text}"
    );
}
