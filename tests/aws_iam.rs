//! AWS IAM database authentication end to end: datagate assumes the datasource's role
//! with STS on moto (`python3 -m moto.server`, PyPI `moto[server]`, installed by
//! `deploy/install-deps.sh`) through the SDK's endpoint override, and the demo upstream
//! records the credential headers it receives. moto records every request it serves, so
//! AssumeRole calls are counted and their parameters read as sent. Redshift Serverless,
//! which moto does not emulate, runs against `tests/compat/redshift_serverless_standin.py`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use support::gateway::{Gateway, GatewayOptions, repository_root};
use support::{ChildProcess, call, clear_recorded, free_port, recorded_requests, spawn_upstream};

const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/datagate-aurora";

struct Moto {
    process: Option<ChildProcess>,
    address: SocketAddr,
    _recording: tempfile::TempDir,
}

impl Moto {
    fn start() -> Moto {
        let port = free_port();
        // Each server records to a file of its own (moto's default is one shared file).
        let recording = tempfile::tempdir().unwrap();
        let process = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .env("MOTO_ENABLE_RECORDING", "true")
            .env("MOTO_RECORDER_FILEPATH", recording.path().join("recording"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (install it with deploy/install-deps.sh)");
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        support::wait_for_http_ok(
            &format!("http://{address}/moto-api/"),
            Duration::from_secs(30),
        );
        ureq::post(&format!(
            "http://{address}/moto-api/recorder/start-recording"
        ))
        .call()
        .unwrap();
        Moto {
            process: Some(ChildProcess::new(process)),
            address,
            _recording: recording,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The parameters of every AssumeRole call moto has served.
    fn assume_role_calls(&self) -> Vec<HashMap<String, String>> {
        let recording = ureq::get(&format!(
            "{}/moto-api/recorder/download-recording",
            self.url()
        ))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
        recording
            .lines()
            .filter(|line| !line.trim().is_empty())
            .filter_map(|line| {
                let entry: Value = serde_json::from_str(line).ok()?;
                let body = entry["body"].as_str().unwrap_or_default();
                let body = base64::engine::general_purpose::STANDARD
                    .decode(body)
                    .unwrap_or_else(|_| body.as_bytes().to_vec());
                let params: HashMap<String, String> =
                    form_urlencoded::parse(&body).into_owned().collect();
                (params.get("Action").map(String::as_str) == Some("AssumeRole")).then_some(params)
            })
            .collect()
    }

    fn stop(&mut self) {
        self.process.take();
    }
}

fn aws_env() -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "AKIDDATAGATETEST"),
        ("AWS_SECRET_ACCESS_KEY", "datagate-test-secret"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/datagate-test"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/datagate-test"),
    ]
    .iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect()
}

const DATASOURCES: &str = r#"
- uid: aurora
  dialect: postgres
  aws_iam:
    role_arn: arn:aws:iam::123456789012:role/datagate-aurora
    external_id: ext-42
    region: us-east-1
    db_user: app_reader
    engine: aurora-postgresql
    host: aurora.cluster-demo.us-east-1.rds.amazonaws.com
    port: 5432
- uid: demo
  dialect: sqlite
  tables: [orders, customers, posts]
"#;

struct Setup {
    gateway: Gateway,
    upstream: SocketAddr,
    _upstream_process: ChildProcess,
}

fn start(aws_yaml: &str, datasources: &str) -> Setup {
    let (upstream_process, upstream) = spawn_upstream(&[]);
    let mut options = GatewayOptions::new(upstream);
    options.aws_yaml = Some(aws_yaml.to_string());
    options.datasources_yaml = Some(datasources.to_string());
    options.env = aws_env();
    let gateway = Gateway::start(options);
    let before = gateway.revision();
    gateway.write_policy(
        "30-aws.csv",
        "p, role:Gamma, datasources:uid:aurora, Query\np, role:Gamma, datasources:uid:warehouse, Query\np, role:Gamma, datasources:uid:lake, Query\n",
    );
    assert!(Gateway::eventually(Duration::from_secs(10), || gateway
        .revision()
        > before));
    Setup {
        gateway,
        upstream,
        _upstream_process: upstream_process,
    }
}

fn aws_yaml(moto: &str, extra: &str) -> String {
    format!(
        "database_iam_auth: true\nendpoint_url: {moto}\nallow_plaintext_upstream: true\n{extra}"
    )
}

fn read(setup: &Setup, uid: &str, user: &str) -> (u16, Value) {
    let token = setup.gateway.token(user, &["Gamma"], &[], None);
    call(
        "GET",
        &setup.gateway.url(&format!("/api/datasources/uid/{uid}")),
        Some(&token),
        None,
    )
}

fn query_of(token: &str) -> HashMap<String, String> {
    let (_, query) = token.split_once("/?").unwrap();
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

#[test]
fn assume_role_is_called_as_configured_and_the_token_reaches_the_upstream() {
    let moto = Moto::start();
    let setup = start(&aws_yaml(&moto.url(), ""), DATASOURCES);
    clear_recorded(setup.upstream);
    // A client-supplied copy of the token header never survives.
    let token = setup.gateway.token("gus", &["Gamma"], &[], None);
    let response = ureq::get(&setup.gateway.url("/api/datasources/uid/aurora"))
        .set("Authorization", &format!("Bearer {token}"))
        .set("X-Datagate-Db-Token", "forged-by-the-client")
        .set("X-Datagate-Db-User", "postgres")
        .call()
        .unwrap();
    assert_eq!(response.status(), 200);
    let forwarded = recorded_requests(setup.upstream);
    assert_eq!(forwarded.len(), 1);
    assert_eq!(
        forwarded[0].header_values("X-Datagate-Db-User"),
        vec!["app_reader"]
    );
    let tokens = forwarded[0].header_values("X-Datagate-Db-Token");
    assert_eq!(tokens.len(), 1);
    let db_token = &tokens[0];
    assert!(
        db_token.starts_with("aurora.cluster-demo.us-east-1.rds.amazonaws.com:5432/?"),
        "{db_token}"
    );
    let query = query_of(db_token);
    assert_eq!(query["Action"], "connect");
    assert_eq!(query["DBUser"], "app_reader");
    assert_eq!(query["X-Amz-Expires"], "900");
    assert!(query["X-Amz-Credential"].ends_with("/us-east-1/rds-db/aws4_request"));
    assert!(
        query.contains_key("X-Amz-Security-Token"),
        "signed with the assumed role's session"
    );
    assert!(
        !query["X-Amz-Credential"].starts_with("AKIDDATAGATETEST"),
        "not with the base credentials"
    );
    assert_eq!(
        forwarded[0].header_values("X-Datagate-Db-Endpoint"),
        vec!["aurora.cluster-demo.us-east-1.rds.amazonaws.com:5432"]
    );

    let calls = moto.assume_role_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["RoleArn"], ROLE_ARN);
    assert_eq!(calls[0]["ExternalId"], "ext-42");
    assert_eq!(calls[0]["SourceIdentity"], "gus");
    assert_eq!(calls[0]["RoleSessionName"], "datagate-gus");
    assert_eq!(calls[0]["DurationSeconds"], "3600");

    // Requests for datasources without aws_iam carry no credential headers at all.
    clear_recorded(setup.upstream);
    let viewer = setup
        .gateway
        .token("vi", &[], &[], Some(datagate::principal::BasicRole::Viewer));
    let response = ureq::get(&setup.gateway.url("/api/datasources/uid/demo"))
        .set("Authorization", &format!("Bearer {viewer}"))
        .set("X-Datagate-Db-Token", "forged-by-the-client")
        .call()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        recorded_requests(setup.upstream)[0]
            .header_values("X-Datagate-Db-Token")
            .is_empty()
    );
}

#[test]
fn a_thousand_concurrent_requests_on_a_cold_cache_make_one_assume_role_call() {
    let moto = Moto::start();
    let setup = start(&aws_yaml(&moto.url(), ""), DATASOURCES);
    let token = setup.gateway.token("gus", &["Gamma"], &[], None);
    let url = setup.gateway.url("/api/datasources/uid/aurora");
    let barrier = Arc::new(Barrier::new(1000));
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..1000)
            .map(|_| {
                let barrier = barrier.clone();
                let token = &token;
                let url = &url;
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || {
                        barrier.wait();
                        call("GET", url, Some(token), None).0
                    })
                    .unwrap()
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    });
    assert!(
        statuses.iter().all(|status| *status == 200),
        "{:?}",
        statuses
            .iter()
            .filter(|status| **status != 200)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        moto.assume_role_calls().len(),
        1,
        "concurrent misses coalesce"
    );
    assert_eq!(
        setup
            .gateway
            .metric("datagate_sts_calls_total{outcome=\"success\"}"),
        1.0
    );
    assert_eq!(
        setup
            .gateway
            .metric("datagate_credential_cache_total{result=\"hit\"}")
            + setup
                .gateway
                .metric("datagate_credential_cache_total{result=\"miss\"}"),
        1000.0
    );
}

#[test]
fn credentials_expire_after_the_ttl_and_refresh_ahead_in_the_background() {
    let moto = Moto::start();
    // Expiry without refresh-ahead: after the TTL the next request fetches anew.
    let setup = start(
        &aws_yaml(&moto.url(), "credential_ttl: 1500ms\nrefresh_ahead: 0s\n"),
        DATASOURCES,
    );
    assert_eq!(read(&setup, "aurora", "gus").0, 200);
    assert_eq!(read(&setup, "aurora", "gus").0, 200);
    assert_eq!(moto.assume_role_calls().len(), 1);
    std::thread::sleep(Duration::from_millis(1800));
    assert_eq!(read(&setup, "aurora", "gus").0, 200);
    assert_eq!(
        moto.assume_role_calls().len(),
        2,
        "the expired entry was fetched again"
    );
    drop(setup);

    // Refresh ahead: inside the window, the request is served from the cache and a
    // background refresh replaces the entry.
    let moto = Moto::start();
    let setup = start(
        &aws_yaml(&moto.url(), "credential_ttl: 4s\nrefresh_ahead: 3s\n"),
        DATASOURCES,
    );
    clear_recorded(setup.upstream);
    assert_eq!(read(&setup, "aurora", "gus").0, 200);
    assert_eq!(read(&setup, "aurora", "gus").0, 200, "fresh: no refresh");
    assert_eq!(moto.assume_role_calls().len(), 1);
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(read(&setup, "aurora", "gus").0, 200);
    assert!(Gateway::eventually(Duration::from_secs(5), || moto
        .assume_role_calls()
        .len()
        == 2));
    assert!(Gateway::eventually(Duration::from_secs(5), || {
        setup
            .gateway
            .metric("datagate_credential_refreshes_total{outcome=\"refreshed\"}")
            == 1.0
    }));
    assert_eq!(read(&setup, "aurora", "gus").0, 200);
    let tokens: Vec<String> = recorded_requests(setup.upstream)
        .iter()
        .map(|request| {
            query_of(&request.header_values("X-Datagate-Db-Token")[0])["X-Amz-Credential"].clone()
        })
        .collect();
    assert_ne!(
        tokens.first(),
        tokens.last(),
        "after the refresh, tokens are signed with the new credentials"
    );
    // Different end users are different STS sessions (SourceIdentity).
    assert_eq!(read(&setup, "aurora", "ann").0, 200);
    assert!(
        moto.assume_role_calls()
            .iter()
            .any(|call| call["SourceIdentity"] == "ann")
    );
}

#[test]
fn when_sts_is_down_cached_credentials_serve_until_they_expire_then_requests_fail_cleanly() {
    let mut moto = Moto::start();
    let setup = start(
        &aws_yaml(&moto.url(), "credential_ttl: 8s\nrefresh_ahead: 7s\n"),
        DATASOURCES,
    );
    assert_eq!(read(&setup, "aurora", "gus").0, 200);
    moto.stop();
    // Still valid: served, although the background refresh fails.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(read(&setup, "aurora", "gus").0, 200);
    assert!(Gateway::eventually(Duration::from_secs(10), || {
        setup
            .gateway
            .metric("datagate_credential_refreshes_total{outcome=\"failed\"}")
            >= 1.0
    }));
    assert_eq!(read(&setup, "aurora", "gus").0, 200);
    // Expired, STS still down: refused before the upstream, with nothing to leak.
    assert!(Gateway::eventually(Duration::from_secs(10), || read(
        &setup, "aurora", "gus"
    )
    .0 == 503));
    clear_recorded(setup.upstream);
    let (status, body) = read(&setup, "aurora", "gus");
    assert_eq!(status, 503);
    assert_eq!(body["kind"], "credentials_unavailable");
    let text = body.to_string();
    for secret in [
        "arn:",
        "123456789012",
        "AKID",
        "ASIA",
        "datagate-aurora",
        "ext-42",
    ] {
        assert!(!text.contains(secret), "`{secret}` leaked: {text}");
    }
    assert!(recorded_requests(setup.upstream).is_empty());
    // A user with no cached credential is refused the same way.
    assert_eq!(read(&setup, "aurora", "newcomer").0, 503);
}

#[test]
fn with_the_flag_off_requests_get_the_reference_message_and_check_warns() {
    let setup = start("database_iam_auth: false\n", DATASOURCES);
    clear_recorded(setup.upstream);
    let (status, body) = read(&setup, "aurora", "gus");
    assert_eq!(status, 403);
    assert_eq!(
        body["message"],
        "AWS IAM database authentication is not enabled."
    );
    assert!(recorded_requests(setup.upstream).is_empty());
    let output = Command::new(env!("CARGO_BIN_EXE_datagate"))
        .args(["check", "--config"])
        .arg(&setup.gateway.config_path)
        .output()
        .unwrap();
    assert!(output.status.success());
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains(
            "warning: datasource `aurora` uses aws_iam but `aws.database_iam_auth` is off"
        ),
        "{report}"
    );
}

#[test]
fn tokens_are_not_sent_to_a_plain_http_upstream_without_opt_in() {
    let moto = Moto::start();
    let setup = start(
        &format!("database_iam_auth: true\nendpoint_url: {}\n", moto.url()),
        DATASOURCES,
    );
    clear_recorded(setup.upstream);
    let (status, body) = read(&setup, "aurora", "gus");
    assert_eq!(status, 502);
    assert_eq!(body["kind"], "plaintext_upstream");
    assert!(recorded_requests(setup.upstream).is_empty());
    assert!(
        moto.assume_role_calls().is_empty(),
        "nothing is fetched for a token that cannot be sent"
    );
}

#[test]
fn redshift_cluster_credentials_come_from_get_cluster_credentials() {
    let moto = Moto::start();
    let created = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import boto3; boto3.client('redshift', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='a', aws_secret_access_key='b').create_cluster(ClusterIdentifier='analytics', NodeType='dc2.large', MasterUsername='admin', MasterUserPassword='Password1', ClusterType='single-node')",
            moto.url()
        ))
        .status()
        .unwrap();
    assert!(created.success());
    let datasources = r#"
- uid: warehouse
  dialect: postgres
  aws_iam:
    role_arn: arn:aws:iam::123456789012:role/datagate-redshift
    region: us-east-1
    db_user: reporter
    engine: redshift
    cluster_identifier: analytics
    database: dev
    host: analytics.abc.us-east-1.redshift.amazonaws.com
    port: 5439
- uid: demo
  dialect: sqlite
  tables: [orders, customers, posts]
"#;
    let setup = start(&aws_yaml(&moto.url(), ""), datasources);
    clear_recorded(setup.upstream);
    assert_eq!(read(&setup, "warehouse", "gus").0, 200);
    assert_eq!(read(&setup, "warehouse", "gus").0, 200);
    let forwarded = recorded_requests(setup.upstream);
    assert_eq!(
        forwarded[0].header_values("X-Datagate-Db-User"),
        vec!["IAM:reporter"]
    );
    let password = &forwarded[0].header_values("X-Datagate-Db-Token")[0];
    assert!(!password.is_empty());
    assert_eq!(
        &forwarded[1].header_values("X-Datagate-Db-Token")[0],
        password,
        "cached until shortly before it expires"
    );
    assert_eq!(
        setup
            .gateway
            .metric("datagate_db_token_cache_total{result=\"miss\"}"),
        1.0
    );
}

#[test]
fn redshift_serverless_credentials_and_endpoint_come_from_the_stand_in() {
    let record = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new("python3")
        .arg(repository_root().join("tests/compat/redshift_serverless_standin.py"))
        .args(["--port", "0", "--record"])
        .arg(record.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _standin = ChildProcess::new(child);
    let port = line.trim().strip_prefix("listening on ").unwrap();
    let datasources = r#"
- uid: lake
  dialect: postgres
  aws_iam:
    role_arn: arn:aws:iam::123456789012:role/datagate-serverless
    region: us-east-1
    db_user: unused
    engine: redshift-serverless
    workgroup: bi
    database: dev
- uid: demo
  dialect: sqlite
  tables: [orders, customers, posts]
"#;
    let setup = start(
        &aws_yaml(&format!("http://127.0.0.1:{port}"), ""),
        datasources,
    );
    clear_recorded(setup.upstream);
    let (status, body) = read(&setup, "lake", "gus");
    assert_eq!(status, 200, "{body}");
    let forwarded = recorded_requests(setup.upstream);
    assert_eq!(
        forwarded[0].header_values("X-Datagate-Db-User"),
        vec!["IAM:dev"]
    );
    assert!(forwarded[0].header_values("X-Datagate-Db-Token")[0].starts_with("serverless-"));
    assert_eq!(
        forwarded[0].header_values("X-Datagate-Db-Endpoint"),
        vec!["bi.123456789012.us-east-1.redshift-serverless.amazonaws.com:5439"]
    );
    let requests: Vec<Value> = std::fs::read_to_string(record.path())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let targets: Vec<&str> = requests
        .iter()
        .map(|request| {
            request["target"]
                .as_str()
                .or(request["action"].as_str())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        targets,
        vec![
            "AssumeRole",
            "RedshiftServerless.GetCredentials",
            "RedshiftServerless.GetWorkgroup"
        ]
    );
    assert_eq!(requests[1]["params"]["workgroupName"], "bi");
    assert_eq!(requests[1]["params"]["dbName"], "dev");
    // The Serverless calls are signed with the assumed role's credentials.
    assert!(
        requests[1]["authorization"]
            .as_str()
            .unwrap()
            .contains("Credential=ASIASTANDIN")
    );
}

#[test]
fn store_datasources_take_aws_iam_as_a_write_only_secret() {
    let moto = Moto::start();
    let (upstream_process, upstream) = spawn_upstream(&[]);
    let mut options = GatewayOptions::new(upstream);
    options.aws_yaml = Some(aws_yaml(&moto.url(), ""));
    options.env = aws_env();
    options.store_yaml =
        Some("url: sqlite:store.db\npoll_interval: 100ms\nmax_staleness: 5s\n".to_string());
    let gateway = Gateway::start(options);
    let setup = Setup {
        gateway,
        upstream,
        _upstream_process: upstream_process,
    };
    let admin = setup.gateway.admin_token();
    let datasource = |aws_iam: Value| {
        serde_json::json!({
            "uid": "lake", "name": "Lake", "dialect": "postgres",
            "secure_settings": {"aws_iam": aws_iam}
        })
        .to_string()
    };
    let (status, body) = call(
        "POST",
        &setup.gateway.admin_url("/api/datasources"),
        Some(&admin),
        Some(&datasource(
            serde_json::json!({"role_arn": "arn:aws:iam::123456789012:role/x", "region": "us-east-1", "db_user": "app", "engine": "aurora-postgresql"}),
        )),
    );
    assert_eq!(status, 400, "Aurora needs host and port: {body}");
    assert!(!body.to_string().contains("123456789012"), "{body}");
    let (status, created) = call(
        "POST",
        &setup.gateway.admin_url("/api/datasources"),
        Some(&admin),
        Some(&datasource(serde_json::json!({
            "role_arn": "arn:aws:iam::123456789012:role/datagate-lake", "region": "us-east-1",
            "db_user": "lake_reader", "engine": "aurora-mysql", "host": "lake.cluster-y.us-east-1.rds.amazonaws.com", "port": 3306
        }))),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["secure_settings_set"],
        serde_json::json!(["aws_iam"])
    );
    for path in ["/api/datasources", "/api/audit"] {
        let (_, listing) = call("GET", &setup.gateway.admin_url(path), Some(&admin), None);
        assert!(
            !listing.to_string().contains("datagate-lake"),
            "{path}: {listing}"
        );
    }
    let before = setup.gateway.revision();
    setup
        .gateway
        .write_policy("30-aws.csv", "p, role:Gamma, datasources:uid:lake, Query\n");
    assert!(Gateway::eventually(Duration::from_secs(10), || setup
        .gateway
        .revision()
        > before));
    clear_recorded(setup.upstream);
    let (status, body) = read(&setup, "lake", "gus");
    assert_eq!(status, 200, "{body}");
    let forwarded = recorded_requests(setup.upstream);
    assert_eq!(
        forwarded[0].header_values("X-Datagate-Db-User"),
        vec!["lake_reader"]
    );
    assert!(
        forwarded[0].header_values("X-Datagate-Db-Token")[0]
            .starts_with("lake.cluster-y.us-east-1.rds.amazonaws.com:3306/?Action=connect")
    );
    assert_eq!(
        moto.assume_role_calls()[0]["RoleArn"],
        "arn:aws:iam::123456789012:role/datagate-lake"
    );
}

#[test]
fn one_request_naming_two_iam_datasources_is_refused_and_one_named_twice_is_not() {
    let moto = Moto::start();
    let datasources = format!(
        "{DATASOURCES}{}",
        r#"- uid: warehouse
  dialect: postgres
  aws_iam:
    role_arn: arn:aws:iam::123456789012:role/datagate-warehouse
    region: us-east-1
    db_user: warehouse_reader
    engine: aurora-postgresql
    host: warehouse.cluster-w.us-east-1.rds.amazonaws.com
    port: 5432
"#
    );
    let setup = start(&aws_yaml(&moto.url(), ""), &datasources);
    // Gamma may query the IAM datasources, a Viewer the demo one.
    let token = setup.gateway.token(
        "gus",
        &["Gamma"],
        &[],
        Some(datagate::principal::BasicRole::Viewer),
    );
    let query = |uids: &[&str]| {
        let queries: Vec<Value> = uids
            .iter()
            .enumerate()
            .map(|(index, uid)| {
                serde_json::json!({"refId": index.to_string(), "datasource": {"uid": uid}, "rawSql": "SELECT 1"})
            })
            .collect();
        serde_json::json!({ "queries": queries }).to_string()
    };

    clear_recorded(setup.upstream);
    let (status, body) = call(
        "POST",
        &setup.gateway.url("/api/ds/query"),
        Some(&token),
        Some(&query(&["warehouse", "demo", "aurora", "warehouse"])),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["kind"], "several_iam_datasources", "{body}");
    // Named once each and sorted, whatever order the queries had.
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("(aurora, warehouse)"),
        "{body}"
    );
    assert!(recorded_requests(setup.upstream).is_empty());
    assert!(moto.assume_role_calls().is_empty());

    // The same IAM datasource in two queries is one datasource: one credential.
    let (status, body) = call(
        "POST",
        &setup.gateway.url("/api/ds/query"),
        Some(&token),
        Some(&query(&["aurora", "demo", "aurora"])),
    );
    assert_eq!(status, 200, "{body}");
    let forwarded = recorded_requests(setup.upstream);
    assert_eq!(forwarded.len(), 1);
    assert_eq!(
        forwarded[0].header_values("X-Datagate-Db-User"),
        vec!["app_reader"]
    );
    assert_eq!(moto.assume_role_calls().len(), 1);
}
