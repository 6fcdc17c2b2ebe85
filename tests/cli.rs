//! The `datagate` command line as operators use it: `check`, `explain`, `token`, and
//! start-up refusing a bad config.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;

use support::gateway::{Gateway, GatewayOptions, repository_root};

fn datagate(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_datagate"))
        .args(args)
        .env("DATAGATE_LOG", "error")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn example_config() -> String {
    repository_root()
        .join("deploy/datagate.example.yaml")
        .display()
        .to_string()
}

/// A config directory like the gateway's, without starting anything.
fn config_dir(edit: impl FnOnce(&str) -> String) -> (tempfile::TempDir, String) {
    let options = GatewayOptions::new("127.0.0.1:9".parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hmac.secret"),
        support::gateway::TEST_HMAC_SECRET,
    )
    .unwrap();
    std::fs::copy(
        repository_root().join("casbin_model.conf"),
        dir.path().join("casbin_model.conf"),
    )
    .unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for entry in std::fs::read_dir(repository_root().join("policies")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), policies.join(entry.file_name())).unwrap();
    }
    let yaml = Gateway::config_yaml(
        &options,
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    let path = dir.path().join("datagate.yaml");
    std::fs::write(&path, edit(&yaml)).unwrap();
    let path = path.display().to_string();
    (dir, path)
}

#[test]
fn check_accepts_the_example_config() {
    let (code, stdout, stderr) = datagate(&["check", "--config", &example_config()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("ok:"), "{stdout}");
}

#[test]
fn check_names_the_policy_file_and_line_of_the_first_problem() {
    let (dir, config) = config_dir(|yaml| yaml.to_string());
    std::fs::write(
        dir.path().join("policies/30-broken.csv"),
        "# comment\np, user:alice, datasources:uid:demo, Query\np, user:bob, datasources:bogus, Query\n",
    )
    .unwrap();
    let (code, _, stderr) = datagate(&["check", "--config", &config]);
    assert_ne!(code, 0);
    assert!(stderr.contains("30-broken.csv"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
}

#[test]
fn unknown_or_invalid_config_keys_refuse_start_up_naming_the_key() {
    let (_dir, config) = config_dir(|yaml| yaml.replace("listen:\n", "listen:\n  proxxy: 1\n"));
    let (code, _, stderr) = datagate(&["run", "--config", &config]);
    assert_ne!(code, 0);
    assert!(stderr.contains("proxxy"), "{stderr}");

    let (_dir, config) = config_dir(|yaml| yaml.replace("read_timeout: 10s", "read_timeout: soon"));
    let (code, _, stderr) = datagate(&["check", "--config", &config]);
    assert_ne!(code, 0);
    assert!(stderr.contains("upstream.read_timeout"), "{stderr}");
    assert!(stderr.contains("soon"), "{stderr}");

    let (_dir, config) =
        config_dir(|yaml| yaml.replace("leeway_seconds: 0", "leeway_seconds: 600"));
    let (code, _, stderr) = datagate(&["check", "--config", &config]);
    assert_ne!(code, 0);
    assert!(stderr.contains("leeway"), "{stderr}");
}

#[test]
fn explain_prints_the_decision_each_check_and_the_revision() {
    let config = example_config();
    let (_, token, _) = datagate(&[
        "token", "--config", &config, "--sub", "alice", "--roles", "sql_lab",
    ]);
    let token = token.trim();
    let (code, stdout, stderr) = datagate(&[
        "explain",
        "--config",
        &config,
        "--token",
        token,
        "--method",
        "DELETE",
        "--path",
        "/api/v1/chart/1",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["decision"], "deny");
    assert_eq!(result["status"], 403);
    assert_eq!(result["route"], "superset-chart-write");
    assert_eq!(result["policy_revision"], 1);
    assert_eq!(result["reason"], "missing permission `can_write on Chart`");
    assert_eq!(result["checks"][0]["passed"], false);
    assert!(
        result["checks"][0]["check"]
            .as_str()
            .unwrap()
            .contains("can_write on Chart")
    );

    let (_, gamma, _) = datagate(&[
        "token", "--config", &config, "--sub", "alice", "--roles", "Gamma",
    ]);
    let (code, stdout, _) = datagate(&[
        "explain",
        "--config",
        &config,
        "--token",
        gamma.trim(),
        "--method",
        "GET",
        "--path",
        "/api/v1/chart/1",
    ]);
    assert_eq!(code, 0);
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["decision"], "allow");
    assert_eq!(result["status"], 200);
    assert_eq!(result["principal"]["username"], "alice");

    let body = r#"{"queries":[{"refId":"A","datasource":{"uid":"finance"},"rawSql":"SELECT 1"}]}"#;
    let (_, viewer, _) = datagate(&[
        "token",
        "--config",
        &config,
        "--sub",
        "carol",
        "--org-role",
        "Viewer",
    ]);
    let (code, stdout, _) = datagate(&[
        "explain",
        "--config",
        &config,
        "--token",
        viewer.trim(),
        "--method",
        "POST",
        "--path",
        "/api/ds/query",
        "--body",
        body,
    ]);
    assert_eq!(code, 0);
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["decision"], "deny");
    assert_eq!(
        result["reason"],
        "missing permission `datasources:query` on datasource `finance`"
    );

    let (code, stdout, _) = datagate(&[
        "explain",
        "--config",
        &config,
        "--token",
        "garbage",
        "--path",
        "/api/v1/chart/1",
    ]);
    assert_eq!(code, 0, "evaluation ran, so exit 0");
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["status"], 401);
}

#[test]
fn token_without_an_hmac_key_is_a_clear_error() {
    let (_dir, config) = config_dir(|yaml| {
        yaml.replace(
            "      - kid: test-hmac\n        algorithm: HS256\n        secret_file: hmac.secret\n",
            "      - kid: rsa\n        algorithm: RS256\n        public_key_file: rsa.pub.pem\n",
        )
    });
    let dir = std::path::Path::new(&config)
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::copy(
        repository_root().join("tests/fixtures/authn/rsa-public.pem"),
        dir.join("rsa.pub.pem"),
    )
    .unwrap();
    let (code, _, stderr) = datagate(&["token", "--config", &config, "--sub", "alice"]);
    assert_ne!(code, 0);
    assert!(stderr.to_lowercase().contains("hmac"), "{stderr}");
}
