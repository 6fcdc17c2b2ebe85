//! Superset's real UI, in headless Chromium, through datagate: a person signs in at the
//! OpenID Connect provider (panva's oidc-provider, tests/compat/oidc/provider.mjs), lands
//! on Superset's home page, runs SQL in SQL Lab, opens a chart in Explore and on a
//! dashboard and downloads its CSV —
//! and every row the browser is shown is one the caller's filters allow.
//!
//! The browser is Debian's chromium driven by playwright-core
//! (tests/compat/browser/superset_ui.mjs, installed by its install.sh); the Superset is the
//! one every test in tests/superset.rs shares, served by a second gunicorn with Superset's
//! production defaults (CSRF protection, Talisman) on; datagate runs with the Superset pack,
//! `unmatched: deny`, the identity preset and browser sign-in (`auth.oidc`). Every
//! response the browser saw is collected: none may be a refusal except the deliberate
//! ones each test names, and datagate's audit log must agree. Rows are compared with the
//! oracle of `support::demo_rls`, as in the REST tests.
//!
//! Skips (printing why) when the Superset venv, Node's playwright-core or chromium is
//! missing.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::support::demo_rls::{self, oracle, rows_of};
use super::support::gateway::{Gateway, repository_root};
use super::support::superset::{
    self, Superset, SupersetGatewayOptions, csv_rows, superset_gateway,
};
use super::support::{ChildProcess, free_port};
use super::{ALICE, BOB, shared_or_skip};

const CLIENT_SECRET: &str = "datagate-test-client-secret-0123456789";
const OIDC_SECRET_ENV: &str = "DG_TEST_OIDC_CLIENT_SECRET";
const SESSION_KEYS_ENV: &str = "DG_TEST_SESSION_KEYS";

/// A user Superset lets see samples and drill to detail (Alpha), whom Gamma's row filter
/// still confines to her own orders. Her own user: the REST tests running beside this
/// one sign alice and bob in with other roles.
const CAROL: demo_rls::Caller = demo_rls::Caller {
    name: "carol",
    roles: &["Alpha", "Gamma"],
};

/// A Gamma-only user: Superset's Gamma may not run SQL, nor write datasets.
const GUS: demo_rls::Caller = demo_rls::Caller {
    name: "gus",
    roles: &["Gamma"],
};

fn browser_dir() -> PathBuf {
    repository_root().join("tests/compat/browser")
}

/// Whether the browser driver can run here; says why not.
fn browser_available() -> bool {
    if !browser_dir().join("node_modules/playwright-core").exists() {
        eprintln!("SKIPPED: no playwright-core (run tests/compat/browser/install.sh)");
        return false;
    }
    if Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| !status.success())
        .unwrap_or(true)
    {
        eprintln!("SKIPPED: no chromium (run tests/compat/oidc/install.sh)");
        return false;
    }
    true
}

/// The OIDC provider, whose next login is the account set with [`Provider::next_login`].
struct Provider {
    _process: ChildProcess,
    _state: tempfile::TempDir,
    issuer: String,
}

impl Provider {
    fn start(redirect_uri: &str) -> Provider {
        let state = tempfile::tempdir().unwrap();
        let directory = repository_root().join("tests/compat/oidc");
        let mut child = Command::new("node")
            .arg(directory.join("provider.mjs"))
            .args(["--port", "0", "--redirect-uri", redirect_uri])
            .args(["--client-secret", CLIENT_SECRET])
            .arg("--state")
            .arg(state.path())
            .current_dir(&directory)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs tests/compat/oidc/provider.mjs (run tests/compat/oidc/install.sh)");
        let stdout = child.stdout.take().unwrap();
        let process = ChildProcess::new(child);
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "the OIDC provider exited before listening"
            );
            if let Some(address) = line.trim().strip_prefix("listening on http://") {
                let address: SocketAddr = address.parse().unwrap();
                return Provider {
                    _process: process,
                    _state: state,
                    issuer: format!("http://{address}"),
                };
            }
        }
    }

    /// Who signs in next, with the `roles` claim the provider puts in the ID token.
    fn next_login(&self, who: &demo_rls::Caller) {
        ureq::post(&format!("{}/__test/login", self.issuer))
            .send_json(json!({"account": who.name, "roles": who.roles}))
            .unwrap();
    }
}

/// datagate in front of the shared Superset — served with its production defaults, CSRF
/// protection and Talisman on ([`Superset::with_production_defaults`]) — with browser
/// sign-in at `provider`, the `orders` dataset mapped for chart RLS (and verified against
/// what Superset stores), and the grants chart data and its CSV need.
fn browser_gateway(superset: &Superset, provider: &Provider, proxy_port: u16) -> Gateway {
    use base64::Engine as _;
    let uid = superset.database_uid();
    let public_url = format!("http://127.0.0.1:{proxy_port}");
    superset_gateway(
        superset,
        SupersetGatewayOptions {
            charts_yaml: Some(format!(
                "datasets:\n  - {{id: {}, datasource: \"{uid}\", table: orders}}\n\
                 verify: {{user: datagate-verifier, roles: [Admin]}}\n",
                superset.ids.datasets["orders"]
            )),
            policy_files: vec![(
                "41-charts-test.csv".to_string(),
                format!("p, role:Admin, datasources:uid:{uid}, Query\n"),
            )],
            auth_yaml: Some(format!(
                r#"jwt:
  issuer: {issuer}
  discovery: true
  audience: [urn:datagate]
oidc:
  client_id: datagate
  client_secret_env: {OIDC_SECRET_ENV}
  public_url: {public_url}
  session:
    keys_env: {SESSION_KEYS_ENV}
    lifetime: 1h
"#,
                issuer = provider.issuer
            )),
            proxy_port: Some(proxy_port),
            upstream: Some(superset.with_production_defaults()),
            env: vec![
                (OIDC_SECRET_ENV.to_string(), CLIENT_SECRET.to_string()),
                (
                    SESSION_KEYS_ENV.to_string(),
                    base64::engine::general_purpose::STANDARD.encode([0x3c; 32]),
                ),
            ],
            log_allowed: true,
            ..SupersetGatewayOptions::default()
        },
    )
}

/// Runs the browser driver through `steps` as whoever the provider signs in next; the
/// driver's report (see superset_ui.mjs). A step that cannot complete fails the test,
/// with a screenshot of the page.
fn browse(public_url: &str, steps: Value) -> Value {
    let work = tempfile::Builder::new()
        .prefix("superset-ui-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let screenshot = work.path().join("failed-step.png");
    let spec = work.path().join("spec.json");
    let report_path = work.path().join("report.json");
    std::fs::write(
        &spec,
        json!({"base": public_url, "steps": steps, "screenshot": screenshot, "report": report_path})
            .to_string(),
    )
    .unwrap();
    let output = Command::new("node")
        .arg(browser_dir().join("superset_ui.mjs"))
        .arg(&spec)
        .current_dir(browser_dir())
        .stderr(Stdio::inherit())
        .output()
        .expect("node runs tests/compat/browser/superset_ui.mjs");
    let written = std::fs::read_to_string(&report_path).unwrap_or_default();
    let report: Value = serde_json::from_str(written.trim()).unwrap_or_else(|error| {
        panic!(
            "the browser driver wrote no report ({error}; exit {}): {}",
            output.status,
            String::from_utf8_lossy(&output.stdout)
        )
    });
    if !output.status.success() {
        let kept = work.keep();
        panic!(
            "the browser could not finish: {}\nscreenshot: {}\nresponses: {}",
            report["error"],
            kept.join("failed-step.png").display(),
            refusals(&report)
                .iter()
                .map(|response| response.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    report
}

/// Same-origin responses the browser saw with status 400 or more.
fn refusals(report: &Value) -> Vec<&Value> {
    report["responses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|response| response["status"].as_u64().unwrap_or(0) >= 400)
        .collect()
}

/// One deliberate refusal: method, path prefix (query string excluded), status.
type Deliberate<'a> = (&'a str, &'a str, u64);

fn path_of(url: &str) -> String {
    url::Url::parse(url).unwrap().path().to_string()
}

/// Every response the browser saw is below 400 except `deliberate` ones; the page's
/// own origin served everything (the only other origin is the provider's sign-in);
/// datagate's audit log refused exactly the deliberate requests. Returns how many
/// static assets (bundles, styles, images) loaded.
fn assert_only_deliberate_refusals(
    report: &Value,
    gateway: &Gateway,
    public_url: &str,
    provider: &Provider,
    user: &str,
    deliberate: &[Deliberate<'_>],
) -> usize {
    let is_deliberate = |method: &str, path: &str, status: u64| {
        deliberate
            .iter()
            .any(|(m, p, s)| *m == method && path == *p && *s == status)
    };
    for response in refusals(report) {
        let url = response["url"].as_str().unwrap();
        let method = response["method"].as_str().unwrap();
        let status = response["status"].as_u64().unwrap();
        assert!(
            url.starts_with(public_url) && is_deliberate(method, &path_of(url), status),
            "{user}'s browser was refused {method} {url}: {status} {}",
            response["body"]
        );
    }
    for response in report["responses"].as_array().unwrap() {
        let url = response["url"].as_str().unwrap();
        assert!(
            url.starts_with(public_url) || url.starts_with(&provider.issuer),
            "{user}'s browser loaded {url} from another origin"
        );
    }
    // Superset's footer requests a telemetry pixel from the internet, which this
    // machine cannot reach, and Chromium reports the window a download was posted from
    // as aborted (the response became the file); Superset's event-log beacon
    // (`POST /superset/log/`) is aborted when the page it was sent from navigates away
    // (seen once in ~5 runs), and so is Chromium's own fetch of the tab's favicon (seen
    // once, under `make test`). More generally Chromium aborts whatever a page still
    // loads (a lazily loaded bundle chunk, seen once in CI) when the tab moves on to the
    // next page, or when the driver closes the browser; the driver marks those
    // (`navigated_away`, `in_flight_at_close`). A refusal by datagate is an answer, not
    // an abort, and the audit check below still sees every one; a connection datagate
    // broke is another error (reset, empty response, length mismatch). Nothing else may
    // fail to load.
    for failed in report["failed"].as_array().unwrap() {
        let url = failed["url"].as_str().unwrap();
        let same_origin_abort =
            url.starts_with(public_url) && failed["error"] == "net::ERR_ABORTED";
        let aborted = |method: &str, path: &str| {
            same_origin_abort && failed["method"] == method && path_of(url) == path
        };
        let download = aborted("POST", "/api/v1/chart/data");
        let log_beacon = aborted("POST", "/superset/log/");
        let tab_icon = aborted("GET", "/static/assets/images/favicon.png");
        let page_left = same_origin_abort
            && (failed["navigated_away"] == true || failed["in_flight_at_close"] == true);
        if download || log_beacon || tab_icon || page_left {
            // On record in the test's output, should an excused abort ever need a look.
            eprintln!("{user}'s browser: an aborted load, excused: {failed}");
        }
        assert!(
            download
                || log_beacon
                || tab_icon
                || page_left
                || (!url.starts_with(public_url) && !url.starts_with(&provider.issuer)),
            "{user}'s browser could not load {url} (step {}): {}",
            failed["step"],
            failed["error"]
        );
    }
    let denied: Vec<(String, String, u64)> = gateway
        .audit_lines()
        .into_iter()
        .filter(|line| line["decision"] == "deny" && line["user"] == user)
        .map(|line| {
            (
                line["method"].as_str().unwrap_or_default().to_string(),
                line["path"].as_str().unwrap_or_default().to_string(),
                line["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    for (method, path, status) in &denied {
        // Chromium asks for /favicon.ico itself on a page without an icon (datagate's
        // own JSON refusals); Superset has no such route, datagate refuses it unmapped.
        if (method.as_str(), path.as_str()) == ("GET", "/favicon.ico") {
            continue;
        }
        assert!(
            is_deliberate(method, path, *status),
            "datagate refused {user}'s {method} {path} ({status}) in the browser"
        );
    }
    for (method, path, status) in deliberate {
        assert!(
            denied
                .iter()
                .any(|(m, p, s)| m == method && p == path && s == status),
            "datagate's audit log has no refusal of {user}'s {method} {path}: {denied:?}"
        );
    }
    report["responses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|response| {
            response["status"] == 200
                && response["url"]
                    .as_str()
                    .is_some_and(|url| url.starts_with(&format!("{public_url}/static/")))
        })
        .count()
}

fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["do"] == name)
        .unwrap_or_else(|| panic!("no `{name}` step in the report"))
}

/// A value as the UI and CSV show it: text as is, integral numbers without a fraction.
fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => match number.as_f64() {
            Some(float) if float.fract() == 0.0 && float.abs() < 1e15 => {
                format!("{}", float as i64)
            }
            _ => number.to_string(),
        },
        Value::Null => "NULL".to_string(),
        other => other.to_string(),
    }
}

fn shown_rows(rows: &[Vec<Value>]) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(shown).collect())
        .collect();
    rows.sort();
    rows
}

/// Rows of JSON objects (`data` of SQL Lab or chart data) in `columns` order.
fn object_rows(data: &Value, columns: &[&str]) -> Vec<Vec<Value>> {
    data.as_array()
        .unwrap_or_else(|| panic!("no rows in {data}"))
        .iter()
        .map(|row| columns.iter().map(|name| row[*name].clone()).collect())
        .collect()
}

fn text_grid(rows: &Value) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|cell| cell.as_str().unwrap_or_default().trim().to_string())
                .collect()
        })
        .collect();
    rows.sort();
    rows
}

/// A chart step (Explore or a dashboard): every chart-data response the page received
/// holds exactly `oracle_rows` (id, tenant_id, amount), the SQL Superset generated
/// (where the response carries it) has the caller's filters, the table the chart drew
/// shows those rows, and "Export to .CSV" posted the form-encoded `form_data=` and
/// downloaded a file holding exactly them.
fn assert_chart_step(found: &Value, user: &str, oracle_rows: &[Vec<Value>]) {
    let columns = ["id", "tenant_id", "amount"];
    let chart_data = found["chart_data"].as_array().unwrap();
    assert!(
        !chart_data.is_empty(),
        "{user}: no chart data in {}",
        found["do"]
    );
    for response in chart_data {
        assert_eq!(response["status"], 200, "{user}: {response}");
        let result = &response["json"]["result"][0];
        assert_eq!(
            shown_rows(&object_rows(&result["data"], &columns)),
            shown_rows(oracle_rows),
            "{user}: chart data in {}, Superset ran {}",
            found["do"],
            result["query"]
        );
        if let Some(generated) = result["query"].as_str() {
            assert!(
                generated.contains(&format!("tenant_id = '{user}'"))
                    && generated.contains("note <> 'internal'"),
                "{user}: {generated}"
            );
        }
    }
    let table = &found["table"];
    assert_eq!(table["columns"], json!(columns));
    // Amounts are drawn formatted; ids and tenants as they are.
    let drawn: Vec<Vec<String>> = text_grid(&table["rows"])
        .into_iter()
        .map(|row| row[..2].to_vec())
        .collect();
    let mut wanted: Vec<Vec<String>> = shown_rows(oracle_rows)
        .into_iter()
        .map(|row| row[..2].to_vec())
        .collect();
    wanted.sort();
    assert_eq!(drawn, wanted, "{user}: the table drawn in {}", found["do"]);
    assert_eq!(found["csv_status"], 200, "{user}");
    assert!(
        found["csv_request_content_type"]
            .as_str()
            .unwrap()
            .starts_with("application/x-www-form-urlencoded"),
        "{}",
        found["csv_request_content_type"]
    );
    assert!(
        found["csv_request_body"]
            .as_str()
            .unwrap()
            .starts_with("form_data="),
        "{}",
        found["csv_request_body"]
    );
    let mut csv = csv_rows(found["csv"].as_str().unwrap());
    assert_eq!(csv.remove(0), columns, "{user}");
    csv.sort();
    let mut csv_expected: Vec<Vec<String>> = oracle_rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|value| match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    csv_expected.sort();
    assert_eq!(
        csv, csv_expected,
        "{user}: the CSV downloaded in {}",
        found["do"]
    );
}

const SQL_LAB_QUERY: &str = "SELECT id, tenant_id, amount, note FROM orders";

#[test]
fn in_chromium_each_user_signs_in_and_sql_lab_explore_dashboards_and_csv_show_only_their_rows() {
    let Some(superset) = shared_or_skip() else {
        return;
    };
    if !browser_available() {
        return;
    }
    let proxy_port = free_port();
    let public_url = format!("http://127.0.0.1:{proxy_port}");
    let provider = Provider::start(&format!("{public_url}/oauth2/callback"));
    let gateway = browser_gateway(superset, &provider, proxy_port);
    let chart = superset.ids.charts["orders"];
    let dashboard = superset.ids.dashboards["orders"];

    // The controls: the Superset behind this datagate enforces its production defaults.
    // A SQL Lab execute without Flask-WTF's token is refused by Superset itself (so the
    // browser's executes below passed its token through datagate), and pages carry
    // Talisman's Content-Security-Policy.
    let production = superset.with_production_defaults();
    let roles = ALICE.roles.join(",");
    let identity = [
        ("X-Datagate-User", ALICE.name),
        ("X-Datagate-Roles", roles.as_str()),
    ];
    let without_token = superset::send(
        "POST",
        &format!("http://{production}/api/v1/sqllab/execute/"),
        &identity,
        Some((
            "application/json",
            json!({"database_id": superset.ids.database_id, "sql": "SELECT 1"})
                .to_string()
                .into_bytes(),
        )),
    );
    assert_eq!(without_token.status, 400, "{}", without_token.text());
    assert!(
        without_token.text().contains("CSRF"),
        "{}",
        without_token.text()
    );
    let page = superset::send(
        "GET",
        &format!("http://{production}/superset/welcome/"),
        &identity,
        None,
    );
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(
        page.header("content-security-policy")
            .is_some_and(|policy| policy.contains("script-src")),
        "no Content-Security-Policy on {:?}",
        page.headers
    );

    for who in [&ALICE, &BOB] {
        provider.next_login(who);
        let report = browse(
            &public_url,
            json!([
                {"do": "welcome"},
                {"do": "sqllab", "sql": SQL_LAB_QUERY},
                {"do": "explore", "slice_id": chart, "save_as": format!("{}'s copy", who.name)},
                {"do": "dashboard", "dashboard_id": dashboard},
            ]),
        );
        let assets = assert_only_deliberate_refusals(
            &report,
            &gateway,
            &public_url,
            &provider,
            who.name,
            &[],
        );
        assert!(
            assets >= 10,
            "{}: only {assets} static assets loaded",
            who.name
        );
        let expected = oracle(who);

        // 1. Signed in at the provider, landed on the home page React rendered, as
        //    the user datagate named.
        let welcome = step(&report, "welcome");
        assert_eq!(
            welcome["url"],
            format!("{public_url}/superset/welcome/"),
            "{}",
            who.name
        );
        assert_eq!(welcome["username"], who.name);
        let mut roles: Vec<&str> = welcome["roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|role| role.as_str().unwrap())
            .collect();
        roles.sort();
        assert_eq!(roles, who.roles, "Superset's roles are datagate's");
        let menu = welcome["menu"].as_str().unwrap();
        for item in ["Dashboards", "Charts", "Datasets", "SQL"] {
            assert!(menu.contains(item), "{}: menu {menu:?}", who.name);
        }

        // 2. SQL Lab: the query typed and run in the editor; the rows Superset sent the
        //    page are the oracle's, and the result grid shows exactly those.
        let sqllab = step(&report, "sqllab");
        assert_eq!(sqllab["typed"], SQL_LAB_QUERY);
        let execute = &sqllab["execute"];
        assert_eq!(execute["status"], 200, "{}: {execute}", who.name);
        let columns = ["id", "tenant_id", "amount", "note"];
        let oracle_rows = rows_of(&expected, SQL_LAB_QUERY).unwrap();
        assert_eq!(
            shown_rows(&object_rows(&execute["json"]["data"], &columns)),
            shown_rows(&oracle_rows),
            "{}: SQL Lab executed {}",
            who.name,
            execute["json"]["query"]["executedSql"]
        );
        assert_eq!(sqllab["grid"]["columns"], json!(columns), "{}", who.name);
        assert_eq!(
            text_grid(&sqllab["grid"]["rows"]),
            shown_rows(&oracle_rows),
            "{}: SQL Lab's result grid",
            who.name
        );

        // 3. Explore, and the chart on a dashboard: what the page received, drew and
        //    downloaded.
        let chart_oracle = rows_of(&expected, "SELECT id, tenant_id, amount FROM orders").unwrap();
        assert_chart_step(step(&report, "explore"), who.name, &chart_oracle);
        // "Save as..." created the caller's own chart (a CSRF-protected write through
        // datagate), which Superset stored under her name.
        let saved = &step(&report, "explore")["saved"];
        assert_eq!(saved["status"], 201, "{}: {saved}", who.name);
        let copy = saved["json"]["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: {saved}", who.name));
        let stored = superset.direct(
            "GET",
            &format!("/api/v1/chart/{copy}"),
            "admin",
            &["Admin"],
            None,
        );
        assert_eq!(
            stored.json()["result"]["slice_name"],
            format!("{}'s copy", who.name),
            "{}",
            stored.text()
        );
        // "View query" shows the SQL Superset runs for the chart: with the caller's filters.
        let view_query = &step(&report, "explore")["view_query"];
        assert_eq!(view_query["status"], 200, "{}: {view_query}", who.name);
        let shown_sql = view_query["json"]["result"][0]["query"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: {view_query}", who.name));
        assert!(
            shown_sql.contains(&format!("tenant_id = '{}'", who.name))
                && shown_sql.contains("note <> 'internal'"),
            "{}: View query shows {shown_sql}",
            who.name
        );
        let on_dashboard = step(&report, "dashboard");
        assert_chart_step(on_dashboard, who.name, &chart_oracle);
        assert!(
            on_dashboard["chart_data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|response| response["url"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("dashboard_id={dashboard}"))),
            "{}: the dashboard's chart data names the dashboard",
            who.name
        );
        // "View as table" (`result_type: results`) from the chart's menu.
        let view = &on_dashboard["view_as_table"];
        assert_eq!(view["status"], 200, "{}: {view}", who.name);
        assert_eq!(
            shown_rows(&object_rows(
                &view["json"]["result"][0]["data"],
                &["id", "tenant_id", "amount"]
            )),
            shown_rows(&chart_oracle),
            "{}: View as table",
            who.name
        );
    }

    // 4. Explore's Samples tab, and "Drill to detail" on a dashboard's aggregate chart
    //    (Superset offers it only on charts that group rows): the rows of each samples
    //    response the page received are the oracle's (carol's one order; Superset alone
    //    would send all seven). The same dashboard's native filter: its values, and
    //    the chart's data once one is applied.
    provider.next_login(&CAROL);
    let report = browse(
        &public_url,
        json!([
            {"do": "welcome"},
            {"do": "samples", "slice_id": chart},
            {"do": "drill", "dashboard_id": superset.ids.dashboards["orders_by_tenant"],
             "filter_value": CAROL.name},
        ]),
    );
    assert_only_deliberate_refusals(&report, &gateway, &public_url, &provider, CAROL.name, &[]);
    let carol_rows = rows_of(&oracle(&CAROL), "SELECT id, tenant_id, amount FROM orders").unwrap();
    // The dashboard's native filter loaded its values (a `filter_select` chart-data
    // query) through datagate: carol's tenant only.
    let filter_values: Vec<&Value> = step(&report, "drill")["chart_data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|response| response["request"]["form_data"]["viz_type"] == "filter_select")
        .collect();
    assert!(
        !filter_values.is_empty(),
        "the native filter loaded no values: {}",
        step(&report, "drill")["chart_data"]
    );
    // The `tenant_id` of each row of a chart-data response.
    let tenants = |response: &Value| -> Vec<String> {
        response["json"]["result"][0]["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{response}"))
            .iter()
            .map(|row| shown(&row["tenant_id"]))
            .collect()
    };
    for response in filter_values {
        assert_eq!(response["status"], 200, "{response}");
        assert_eq!(
            tenants(response),
            ["carol"],
            "the native filter's values: {response}"
        );
    }
    // Applying the filter: the chart's query carries it, through datagate's checks,
    // and answers carol's one order (her tenant, one row).
    let applied = &step(&report, "drill")["filter_applied"];
    assert_eq!(applied["status"], 200, "{applied}");
    assert_eq!(tenants(applied), ["carol"], "{applied}");
    for name in ["samples", "drill"] {
        let found = &step(&report, name)["samples"];
        assert_eq!(found["status"], 200, "{name}: {found}");
        assert_eq!(
            shown_rows(&object_rows(
                &found["json"]["result"]["data"],
                &["id", "tenant_id", "amount"]
            )),
            shown_rows(&carol_rows),
            "{name}: {found}"
        );
    }

    // 5. A Gamma-only user tries what Gamma may not: open SQL Lab (no `can_read on
    //    SQLLab`) and delete a dataset the way the dataset list's delete action does
    //    (no `can_write on Dataset`). datagate refuses both; gunicorn receives neither.
    provider.next_login(&GUS);
    let dataset = superset.ids.datasets["posts"];
    let (sqllab_marker, delete_marker) = (superset::marker(), superset::marker());
    let report = browse(
        &public_url,
        json!([
            {"do": "welcome"},
            {"do": "navigate", "path": "/sqllab/", "marker": sqllab_marker},
            {"do": "navigate", "path": "/tablemodelview/list/", "marker": superset::marker()},
            {"do": "fetch", "method": "DELETE", "path": format!("/api/v1/dataset/{dataset}"),
             "marker": delete_marker},
        ]),
    );
    let delete_path = format!("/api/v1/dataset/{dataset}");
    assert_only_deliberate_refusals(
        &report,
        &gateway,
        &public_url,
        &provider,
        GUS.name,
        &[("GET", "/sqllab/", 403), ("DELETE", &delete_path, 403)],
    );
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps[1]["status"], 403, "{}", steps[1]);
    let body: Value = serde_json::from_str(steps[1]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["message"], "missing permission `can_read on SQLLab`");
    assert_eq!(
        steps[2]["status"], 200,
        "the dataset list is Gamma's to see"
    );
    assert_eq!(steps[3]["status"], 403, "{}", steps[3]);
    let body: Value = serde_json::from_str(steps[3]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["message"], "missing permission `can_write on Dataset`");
    assert!(
        !superset.received(&sqllab_marker),
        "Superset received /sqllab/"
    );
    assert!(
        !superset.received(&delete_marker),
        "Superset received the delete"
    );
    let still_there = superset.direct(
        "GET",
        &format!("/api/v1/dataset/{dataset}"),
        "admin",
        &["Admin"],
        None,
    );
    assert_eq!(still_there.status, 200, "{}", still_there.text());
}
