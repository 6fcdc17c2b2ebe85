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
        // `policies/tests/` holds the policy test suites, not policy files.
        if entry.path().is_file() {
            std::fs::copy(entry.path(), policies.join(entry.file_name())).unwrap();
        }
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

#[test]
fn the_shipped_policy_tests_pass() {
    let (code, stdout, stderr) = datagate(&["test", "--config", &example_config()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let summary = stdout.lines().last().unwrap();
    assert!(summary.ends_with(" 0 failed"), "{stdout}");
    let passed: usize = summary
        .trim_start_matches("summary: ")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Every shipped file is found and runs (allow, deny, RLS, export, Grafana grants, packs).
    assert!(passed >= 40, "{stdout}");
    for file in [
        "superset-roles.yaml",
        "row-level-security.yaml",
        "exports.yaml",
        "grafana-datasources.yaml",
        "route-packs.yaml",
    ] {
        assert!(stdout.contains(file), "{file} did not run:\n{stdout}");
    }
}

/// A test file in a temporary directory, run against the example config.
fn run_test_file(yaml: &str, extra: &[&str]) -> (tempfile::TempDir, i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.yaml");
    std::fs::write(&file, yaml).unwrap();
    let config = example_config();
    let file = file.display().to_string();
    let mut args = vec!["test", "--config", config.as_str(), file.as_str()];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = datagate(&args);
    (dir, code, stdout, stderr)
}

#[test]
fn a_failing_case_fails_the_run_with_a_precise_diff() {
    let yaml = r#"
cases:
  - name: passes
    caller: {login: gina, roles: [Gamma]}
    request: {path: /api/v1/chart/7}
    expect: {decision: forward, permission: can_read on Chart}
  - name: wrong on purpose
    caller: {login: sam, roles: [sql_lab]}
    request: {method: DELETE, path: /api/v1/chart/7}
    expect: {decision: forward, route: superset-chart-read}
"#;
    let (_dir, code, stdout, stderr) = run_test_file(yaml, &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("PASS "), "{stdout}");
    assert!(stdout.contains("FAIL "), "{stdout}");
    assert!(stdout.contains("› wrong on purpose"), "{stdout}");
    assert!(
        stdout.contains(
            "decision: expected forward, got refuse (missing permission `can_write on Chart`)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("route: expected `superset-chart-read`, got `superset-chart-write`"),
        "{stdout}"
    );
    assert!(stdout.contains("summary: 1 passed, 1 failed"), "{stdout}");
}

#[test]
fn a_malformed_test_file_or_case_fails_naming_file_and_case() {
    let yaml = r#"
cases:
  - name: fine
    request: {path: /api/v1/dashboard/1}
    expect: {decision: forward}
  - name: typo in a key
    request: {path: /api/v1/chart/7}
    expect: {decision: refuse, stauts: 401}
"#;
    let (_dir, code, stdout, _) = run_test_file(yaml, &[]);
    assert_ne!(code, 0, "{stdout}");
    assert!(stdout.contains("ERROR"), "{stdout}");
    assert!(
        stdout.contains("cases.yaml` case 2 (`typo in a key`)"),
        "{stdout}"
    );
    assert!(stdout.contains("unknown field `stauts`"), "{stdout}");

    let (_dir, code, stdout, _) = run_test_file("cases: [\n", &[]);
    assert_ne!(code, 0, "{stdout}");
    assert!(stdout.contains("cases.yaml"), "{stdout}");

    // A directory without test files is an error, not an empty success.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, stderr) = datagate(&[
        "test",
        "--config",
        &example_config(),
        &empty.path().display().to_string(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no test files"), "{stderr}");
}

#[test]
fn junit_output_is_well_formed_and_counts_every_case() {
    let yaml = r#"
cases:
  - name: "passes & <escapes>"
    caller: {login: gina, roles: [Gamma]}
    request: {path: /api/v1/chart/7}
    expect: {decision: forward}
  - name: fails
    caller: anonymous
    request: {path: /api/v1/chart/7}
    expect: {decision: refuse, status: 403, reason: "a \"quoted\" <reason>"}
  - name: broken
    request: {path: /x}
"#;
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("report.xml");
    let junit_arg = junit.display().to_string();
    let (_test_dir, code, stdout, _) = run_test_file(yaml, &["--junit", &junit_arg]);
    assert_eq!(code, 1, "{stdout}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    // quick-xml checks that every end tag matches its start tag.
    let mut reader = quick_xml::Reader::from_str(&xml);
    let (mut testcases, mut failures, mut errors) = (0, 0, 0);
    let mut names = Vec::new();
    loop {
        let (element, empty) = match reader.read_event().expect("well-formed XML") {
            quick_xml::events::Event::Start(element) => (element, false),
            quick_xml::events::Event::Empty(element) => (element, true),
            quick_xml::events::Event::Eof => break,
            _ => continue,
        };
        match element.name().as_ref() {
            "testcase" => {
                testcases += 1;
                let name = element.try_get_attribute("name").unwrap().unwrap();
                let raw: &str = &name.value;
                names.push(quick_xml::escape::unescape(raw).unwrap().into_owned());
            }
            "failure" if !empty => failures += 1,
            "error" if !empty => errors += 1,
            _ => {}
        }
    }
    assert_eq!(testcases, 3, "{xml}");
    assert!(names.contains(&"passes & <escapes>".to_string()), "{xml}");
    assert!(
        xml.contains("<testsuites name=\"datagate test\" tests=\"3\" failures=\"1\" errors=\"1\">"),
        "{xml}"
    );
    assert_eq!((failures, errors), (1, 1), "{xml}");
}

/// `datagate test` and the running proxy decide alike: the cases below pass under
/// `datagate test` against the gateway's own config, and the same requests, sent through
/// a real datagate in front of the recording upstream with tokens for the same callers,
/// are forwarded or refused as the cases say — with the status they say, nothing reaching
/// the upstream on a refusal, and the SQL the upstream receives equal to the case's `sql`.
#[test]
fn datagate_test_decides_as_the_running_proxy_does() {
    struct Case {
        name: &'static str,
        login: Option<&'static str>,
        roles: &'static [&'static str],
        org_role: Option<datagate::principal::BasicRole>,
        method: &'static str,
        path: &'static str,
        body: Option<&'static str>,
        status: Option<u16>,
        sql: Option<&'static str>,
    }
    let viewer = Some(datagate::principal::BasicRole::Viewer);
    let cases = [
        Case {
            name: "Gamma reads a chart",
            login: Some("gina"),
            roles: &["Gamma"],
            org_role: None,
            method: "GET",
            path: "/api/v1/chart/7",
            body: None,
            status: None,
            sql: None,
        },
        Case {
            name: "sql_lab may not delete a chart",
            login: Some("sam"),
            roles: &["sql_lab"],
            org_role: None,
            method: "DELETE",
            path: "/api/v1/chart/7",
            body: None,
            status: Some(403),
            sql: None,
        },
        Case {
            name: "anonymous may not read a chart",
            login: None,
            roles: &[],
            org_role: None,
            method: "GET",
            path: "/api/v1/chart/7",
            body: None,
            status: Some(401),
            sql: None,
        },
        Case {
            name: "SQL Lab through row-level security",
            login: Some("alice"),
            roles: &["Gamma", "sql_lab"],
            org_role: viewer,
            method: "POST",
            path: "/api/v1/sqllab/execute/",
            body: Some(
                r#"{"database_id": 1, "client_id": "agree1", "sql": "SELECT id FROM orders"}"#,
            ),
            status: None,
            sql: Some(
                "SELECT id FROM (SELECT * FROM orders WHERE (tenant_id = 'alice') AND (note <> 'internal')) AS orders",
            ),
        },
        Case {
            name: "an unlisted table is refused",
            login: Some("alice"),
            roles: &["Gamma", "sql_lab"],
            org_role: viewer,
            method: "POST",
            path: "/api/v1/sqllab/execute/",
            body: Some(
                r#"{"database_id": 1, "client_id": "agree2", "sql": "SELECT * FROM secrets"}"#,
            ),
            status: Some(403),
            sql: None,
        },
    ];
    let mut yaml = String::from("cases:\n");
    for case in &cases {
        let caller = match case.login {
            None => "anonymous".to_string(),
            Some(login) => format!(
                "{{login: {login}, roles: [{}]{}}}",
                case.roles.join(", "),
                case.org_role
                    .map(|role| format!(", basic_role: {role}"))
                    .unwrap_or_default()
            ),
        };
        let expect = match (case.status, case.sql) {
            (Some(status), _) => format!("{{decision: refuse, status: {status}}}"),
            (None, Some(sql)) => format!("{{decision: forward, sql: \"{sql}\"}}"),
            (None, None) => "{decision: forward}".to_string(),
        };
        let body = case
            .body
            .map(|body| format!(", body: '{body}'"))
            .unwrap_or_default();
        yaml.push_str(&format!(
            "  - name: {}\n    caller: {caller}\n    request: {{method: {}, path: {}{body}}}\n    expect: {expect}\n",
            case.name, case.method, case.path
        ));
    }

    let (_upstream, upstream) = support::spawn_upstream(&[]);
    let gateway = Gateway::start(GatewayOptions::new(upstream));
    let file = gateway.dir.path().join("agreement.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let (code, stdout, stderr) = datagate(&[
        "test",
        "--config",
        &gateway.config_path.display().to_string(),
        &file.display().to_string(),
    ]);
    assert_eq!(code, 0, "{yaml}\n{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("summary: {} passed, 0 failed", cases.len())),
        "{stdout}"
    );

    for case in &cases {
        support::clear_recorded(upstream);
        let token = case
            .login
            .map(|login| gateway.token(login, case.roles, &[], case.org_role));
        let (status, _) = support::call(
            case.method,
            &gateway.url(case.path),
            token.as_deref(),
            case.body,
        );
        let received = support::recorded_requests(upstream);
        match case.status {
            Some(expected) => {
                assert_eq!(status, expected, "{}", case.name);
                assert!(received.is_empty(), "{}: {received:?}", case.name);
            }
            None => {
                assert_eq!(received.len(), 1, "{}: status {status}", case.name);
                if let Some(sql) = case.sql {
                    let body: serde_json::Value =
                        serde_json::from_str(&received[0].body_text).unwrap();
                    assert_eq!(body["sql"], sql, "{}", case.name);
                }
            }
        }
    }
}
