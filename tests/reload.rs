//! Hot reload end to end: file edits (in place, atomic rename, Kubernetes ConfigMap symlink
//! swap), SIGHUP and the admin endpoint each swap in a new revision; a bad file never
//! replaces a good snapshot; requests in flight during swaps never fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::gateway::{Gateway, GatewayOptions, repository_root};
use support::{ChildProcess, spawn_upstream};

const ROUTES: &str = r#"
unmatched: deny
table:
  - name: chart-read
    methods: [GET]
    path: /api/v1/chart/{pk}
    permissions:
      any_of: ["can_read on Chart"]
  - name: dashboard-read
    methods: [GET]
    path: /api/v1/dashboard/{pk}
    permissions:
      any_of: ["can_read on Dashboard"]
"#;

fn hierarchy() -> String {
    std::fs::read_to_string(repository_root().join("policies/00-builtin-hierarchy.csv")).unwrap()
}

const GRANTS_V1: &str = "p, role:Gamma, Chart, can_read\n";
const GRANTS_V2: &str = "p, role:Gamma, Chart, can_read\np, role:Gamma, Dashboard, can_read\n";

fn start(watch: bool) -> (ChildProcess, Gateway) {
    let (upstream_process, upstream) = spawn_upstream(&[]);
    let mut options = GatewayOptions::new(upstream);
    options.routes_yaml = Some(ROUTES.to_string());
    options.watch = watch;
    options.policy_files = Some(vec![
        ("00-builtin-hierarchy.csv".to_string(), hierarchy()),
        ("10-grants.csv".to_string(), GRANTS_V1.to_string()),
    ]);
    (upstream_process, Gateway::start(options))
}

fn status_of(gateway: &Gateway, path: &str, token: &str) -> u16 {
    match ureq::get(&gateway.url(path))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
    {
        Ok(response) => response.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(error) => panic!("{error}"),
    }
}

fn admin_reload(gateway: &Gateway) -> serde_json::Value {
    let response = ureq::post(&gateway.admin_url("/api/admin/reload"))
        .set(
            "Authorization",
            &format!("Bearer {}", gateway.admin_token()),
        )
        .call();
    match response {
        Ok(response) => response.into_json().unwrap(),
        Err(ureq::Error::Status(code, response)) => {
            let mut body: serde_json::Value = response.into_json().unwrap();
            body["status"] = code.into();
            body
        }
        Err(error) => panic!("{error}"),
    }
}

#[test]
fn an_edited_policy_file_takes_effect_without_restart() {
    let (_upstream, gateway) = start(true);
    let token = gateway.token("alice", &["Gamma"], &[], None);
    assert_eq!(status_of(&gateway, "/api/v1/dashboard/1", &token), 403);
    gateway.write_policy("10-grants.csv", GRANTS_V2);
    assert!(Gateway::eventually(Duration::from_secs(10), || {
        status_of(&gateway, "/api/v1/dashboard/1", &token) == 200
    }));
    assert_eq!(gateway.revision(), 2);
    // Revoking works the same way, in place this time (no rename).
    std::fs::write(gateway.policy_dir().join("10-grants.csv"), GRANTS_V1).unwrap();
    assert!(Gateway::eventually(Duration::from_secs(10), || {
        status_of(&gateway, "/api/v1/dashboard/1", &token) == 403
    }));
    assert_eq!(gateway.revision(), 3);
}

#[test]
fn a_bad_policy_file_is_refused_and_the_old_snapshot_keeps_serving() {
    let (_upstream, gateway) = start(true);
    let token = gateway.token("alice", &["Gamma"], &[], None);
    let broken = "p, role:Gamma, Chart, can_read\np, role:Gamma, datasources:uid:demo, Queryy\n";
    gateway.write_policy("10-grants.csv", broken);
    assert!(Gateway::eventually(Duration::from_secs(10), || {
        !gateway.policy_status()["last_error"].is_null()
    }));
    let status = gateway.policy_status();
    let message = status["last_error"]["message"].as_str().unwrap();
    assert!(message.contains("10-grants.csv"), "{message}");
    assert!(message.contains("line 2"), "{message}");
    assert!(message.contains("Queryy"), "{message}");
    assert_eq!(status["revision"], 1);
    assert_eq!(status_of(&gateway, "/api/v1/chart/1", &token), 200);
    let metrics = ureq::get(&gateway.admin_url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains(r#"datagate_policy_reloads_total{result="failed",trigger="file_change"}"#),
        "{metrics}"
    );
    // The admin endpoint reports the same refusal as 422 and keeps the revision.
    let reply = admin_reload(&gateway);
    assert_eq!(reply["status"], 422, "{reply}");
    assert_eq!(gateway.revision(), 1);

    // Fixing the file recovers and clears the error; the revision goes up, never back.
    gateway.write_policy("10-grants.csv", GRANTS_V2);
    assert!(Gateway::eventually(Duration::from_secs(10), || gateway
        .revision()
        == 2));
    assert!(gateway.policy_status()["last_error"].is_null());
    assert_eq!(status_of(&gateway, "/api/v1/dashboard/1", &token), 200);

    // A broken model is refused the same way.
    std::fs::write(
        gateway.dir.path().join("casbin_model.conf"),
        "[request_definition]\nr = sub, obj\n[matchers]\nm = nonsense(((\n",
    )
    .unwrap();
    assert!(Gateway::eventually(Duration::from_secs(10), || {
        !gateway.policy_status()["last_error"].is_null()
    }));
    assert_eq!(gateway.revision(), 2);
    assert_eq!(status_of(&gateway, "/api/v1/dashboard/1", &token), 200);
}

#[test]
fn sighup_and_the_admin_endpoint_reload_when_watching_is_off() {
    let (_upstream, gateway) = start(false);
    let token = gateway.token("alice", &["Gamma"], &[], None);
    gateway.write_policy("10-grants.csv", GRANTS_V2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        status_of(&gateway, "/api/v1/dashboard/1", &token),
        403,
        "no watcher: nothing changes yet"
    );

    let reply = admin_reload(&gateway);
    assert_eq!(reply["result"], "swapped", "{reply}");
    assert_eq!(reply["revision"], 2);
    assert_eq!(
        status_of(&gateway, "/api/v1/dashboard/1", &token),
        200,
        "effective when the reload returns"
    );
    let reply = admin_reload(&gateway);
    assert_eq!(reply["result"], "unchanged");
    assert_eq!(reply["revision"], 2);

    gateway.write_policy("10-grants.csv", GRANTS_V1);
    let killed = unsafe { libc::kill(gateway.pid() as i32, libc::SIGHUP) };
    assert_eq!(killed, 0);
    assert!(Gateway::eventually(Duration::from_secs(10), || gateway
        .revision()
        == 3));
    assert_eq!(status_of(&gateway, "/api/v1/dashboard/1", &token), 403);
}

/// The layout kubelet uses for a ConfigMap volume: files are symlinks into `..data`, itself
/// a symlink to a timestamped directory, and an update swaps `..data` atomically.
#[test]
fn a_configmap_style_symlink_swap_is_picked_up() {
    let (_upstream, gateway) = start(true);
    let token = gateway.token("alice", &["Gamma"], &[], None);
    let policies = gateway.policy_dir();
    // Convert the plain files into a ConfigMap layout (revision may bump once or not at all:
    // the content is identical, so the digest is unchanged).
    let version_one = policies.join("..2026_11_22_v1");
    std::fs::create_dir(&version_one).unwrap();
    std::fs::write(version_one.join("00-builtin-hierarchy.csv"), hierarchy()).unwrap();
    std::fs::write(version_one.join("10-grants.csv"), GRANTS_V1).unwrap();
    std::os::unix::fs::symlink("..2026_11_22_v1", policies.join("..data")).unwrap();
    for name in ["00-builtin-hierarchy.csv", "10-grants.csv"] {
        let temporary = policies.join(format!("{name}.link"));
        std::os::unix::fs::symlink(format!("..data/{name}"), &temporary).unwrap();
        std::fs::rename(&temporary, policies.join(name)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        gateway.revision(),
        1,
        "same content through symlinks: same digest"
    );

    // The kubelet update: new directory, new ..data symlink renamed over the old one.
    let version_two = policies.join("..2026_11_22_v2");
    std::fs::create_dir(&version_two).unwrap();
    std::fs::write(version_two.join("00-builtin-hierarchy.csv"), hierarchy()).unwrap();
    std::fs::write(version_two.join("10-grants.csv"), GRANTS_V2).unwrap();
    std::os::unix::fs::symlink("..2026_11_22_v2", policies.join("..data_tmp")).unwrap();
    std::fs::rename(policies.join("..data_tmp"), policies.join("..data")).unwrap();
    std::fs::remove_dir_all(&version_one).unwrap();
    assert!(Gateway::eventually(Duration::from_secs(10), || {
        status_of(&gateway, "/api/v1/dashboard/1", &token) == 200
    }));
    assert_eq!(gateway.revision(), 2);
}

#[test]
fn requests_during_repeated_swaps_never_fail() {
    let (_upstream, gateway) = start(false);
    let gateway = Arc::new(gateway);
    let token = gateway.token("alice", &["Gamma"], &[], None);
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (gateway, token, stop, failures, completed) = (
                gateway.clone(),
                token.clone(),
                stop.clone(),
                failures.clone(),
                completed.clone(),
            );
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().build();
                while !stop.load(Ordering::Relaxed) {
                    let status = match agent
                        .get(&gateway.url("/api/v1/chart/1"))
                        .set("Authorization", &format!("Bearer {token}"))
                        .call()
                    {
                        Ok(response) => response.status(),
                        Err(ureq::Error::Status(code, _)) => code,
                        Err(_) => 0,
                    };
                    if status != 200 {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    completed.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for round in 0..20 {
        let grants = if round % 2 == 0 { GRANTS_V2 } else { GRANTS_V1 };
        gateway.write_policy("10-grants.csv", grants);
        let reply = admin_reload(&gateway);
        assert_eq!(reply["result"], "swapped", "{reply}");
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(gateway.revision(), 21);
    assert!(completed.load(Ordering::Relaxed) > 20);
    assert_eq!(failures.load(Ordering::Relaxed), 0);
}

/// Replacing the whole directory drops the inotify watch; the periodic check still sees it.
#[test]
fn a_policy_directory_replaced_wholesale_is_picked_up() {
    let (_upstream, gateway) = start(true);
    let token = gateway.token("alice", &["Gamma"], &[], None);
    let policies = gateway.policy_dir();
    let staged = gateway.dir.path().join("policies.new");
    std::fs::create_dir(&staged).unwrap();
    std::fs::write(staged.join("00-builtin-hierarchy.csv"), hierarchy()).unwrap();
    std::fs::write(staged.join("10-grants.csv"), GRANTS_V2).unwrap();
    std::fs::rename(&policies, gateway.dir.path().join("policies.old")).unwrap();
    std::fs::rename(&staged, &policies).unwrap();
    assert!(Gateway::eventually(Duration::from_secs(10), || {
        status_of(&gateway, "/api/v1/dashboard/1", &token) == 200
    }));
    assert_eq!(gateway.revision(), 2);
}

/// Every `datagate_policy_reloads_total` count for file-triggered reloads, whatever the
/// result.
fn file_reloads_counted(gateway: &Gateway) -> f64 {
    let text = ureq::get(&gateway.admin_url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .filter(|line| {
            line.starts_with("datagate_policy_reloads_total")
                && line.contains(r#"trigger="file_change""#)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The watcher once reacted to the open and read events of its own reloads, rebuilding
/// the snapshot several times a second forever. Idle now means no reload at all, while a
/// real edit is still picked up.
#[test]
fn an_idle_gateway_does_not_reload_and_an_edit_still_does() {
    let (_upstream, gateway) = start(true);
    // Files written a moment ago are "racy" (their times may not move on the next write)
    // and get digested by the poll for a couple of seconds; after that, silence.
    std::thread::sleep(Duration::from_secs(3));
    let before = file_reloads_counted(&gateway);
    // Reading the files, as a backup job or `datagate check` would, is not a change.
    for _ in 0..5 {
        let _ = std::fs::read_to_string(gateway.policy_dir().join("10-grants.csv")).unwrap();
        std::thread::sleep(Duration::from_millis(600));
    }
    assert_eq!(file_reloads_counted(&gateway), before, "idle reloads");
    assert_eq!(gateway.revision(), 1);

    let token = gateway.token("alice", &["Gamma"], &[], None);
    gateway.write_policy("10-grants.csv", GRANTS_V2);
    assert!(Gateway::eventually(Duration::from_secs(10), || {
        status_of(&gateway, "/api/v1/dashboard/1", &token) == 200
    }));
    assert_eq!(gateway.revision(), 2);
    assert!(
        gateway.metric_with(
            "datagate_policy_reloads_total",
            &[r#"trigger="file_change""#, r#"result="swapped""#]
        ) >= 1.0
    );
}

/// An edited row-level security filter file is compiled alone: the grants are kept (the
/// build counts as `incremental`), and the next statement is rewritten with the edited
/// filter. A grant-file edit after it is a full build.
#[test]
fn an_edited_filter_file_is_compiled_without_rebuilding_the_grants() {
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    let mut options = GatewayOptions::new(upstream);
    options.routes_yaml = Some(format!(
        "{ROUTES}  - name: sql-run\n    methods: [POST]\n    path: /api/sql\n    \
         permissions: {{any_of: [\"can_read on Chart\"]}}\n    sql:\n      locations:\n        \
         - {{json_pointer: /sql, datasource: {{fixed: demo}}}}\n"
    ));
    let filters =
        std::fs::read_to_string(repository_root().join("policies/50-demo.rls.yaml")).unwrap();
    options.policy_files = Some(vec![
        ("00-builtin-hierarchy.csv".to_string(), hierarchy()),
        (
            "10-grants.csv".to_string(),
            format!("{GRANTS_V1}p, role:Gamma, datasources:uid:demo, Query\n"),
        ),
        ("50-demo.rls.yaml".to_string(), filters.clone()),
    ]);
    let gateway = Gateway::start(options);
    let token = gateway.token("alice", &["Gamma"], &[], None);
    let forwarded_sql = || {
        support::clear_recorded(upstream);
        let response = ureq::post(&gateway.url("/api/sql"))
            .set("Authorization", &format!("Bearer {token}"))
            .set("Content-Type", "application/json")
            .send_string(r#"{"sql": "SELECT id FROM orders"}"#)
            .unwrap();
        assert_eq!(response.status(), 200);
        let recorded = support::recorded_requests(upstream);
        assert_eq!(recorded.len(), 1);
        recorded[0].body_text.clone()
    };
    assert!(forwarded_sql().contains("tenant_id = 'alice'"));
    let builds = |build: &str| {
        gateway.metric_with(
            "datagate_snapshot_builds_total",
            &[&format!("build=\"{build}\"")],
        )
    };

    let edited = filters.replace("note <> 'internal'", "note <> 'edited'");
    assert_ne!(edited, filters);
    gateway.write_policy("50-demo.rls.yaml", &edited);
    assert!(Gateway::eventually(Duration::from_secs(10), || gateway
        .revision()
        == 2));
    let sql = forwarded_sql();
    assert!(sql.contains("note <> 'edited'"), "{sql}");
    assert!(sql.contains("tenant_id = 'alice'"), "{sql}");
    assert_eq!(builds("incremental"), 1.0);
    assert_eq!(builds("full"), 0.0);
    assert_eq!(status_of(&gateway, "/api/v1/dashboard/1", &token), 403);

    // A grant edit needs the grants compiled: a full build.
    gateway.write_policy(
        "10-grants.csv",
        &format!("{GRANTS_V2}p, role:Gamma, datasources:uid:demo, Query\n"),
    );
    assert!(Gateway::eventually(Duration::from_secs(10), || gateway
        .revision()
        == 3));
    assert_eq!(status_of(&gateway, "/api/v1/dashboard/1", &token), 200);
    assert_eq!(builds("full"), 1.0);
    assert!(forwarded_sql().contains("note <> 'edited'"));
}
