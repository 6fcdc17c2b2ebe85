//! The deployment artifacts, checked offline: the Kubernetes manifests against the
//! Kubernetes schemas (`kubernetes-validate`) and against what a sidecar needs, the
//! ConfigMap's config with `datagate check` and as a running sidecar (including a ConfigMap
//! `..data` swap), the systemd unit with `systemd-analyze verify` and `security`, the
//! Dockerfile with hadolint, and every PromQL query of the Grafana dashboard against the
//! metrics a real running datagate exports on `/metrics` (after traffic that makes each
//! family appear; only the AWS IAM families, which need STS, are taken from
//! `src/metrics.rs`).
//!
//! The validators are installed by `deploy/install-validators.sh` (called by
//! `deploy/install-deps.sh`, so `make test` and CI have them). A missing validator fails
//! the test with that hint; nothing is skipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use support::{ChildProcess, call, free_port, recorded_requests, spawn_upstream};

const MANIFESTS: [&str; 2] = ["superset.yaml", "grafana.yaml"];
/// Oldest Kubernetes the manifests claim (the `sleep` pre-stop action) and the newest the
/// validator ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|error| panic!("cannot read {relative}: {error}"))
}

/// A validator installed by `python3 -m pip` lands in that interpreter's scripts
/// directory, which need not be on PATH; fall back to PATH for system packages.
fn tool(name: &str) -> PathBuf {
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string());
    if let Some(scripts) = scripts {
        let candidate = Path::new(&scripts).join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from(name)
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
    let program = program.as_ref();
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {}: {error} (install the validators: deploy/install-validators.sh)",
                program.to_string_lossy()
            )
        })
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------

fn manifest_documents(name: &str) -> Vec<Yaml> {
    let text = read(&format!("deploy/kubernetes/{name}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .collect()
}

fn kind<'a>(documents: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    documents
        .iter()
        .filter(|document| document["kind"].as_str() == Some(kind))
        .collect()
}

fn one<'a>(documents: &'a [Yaml], wanted: &str) -> &'a Yaml {
    let found = kind(documents, wanted);
    assert_eq!(found.len(), 1, "expected exactly one {wanted}");
    found[0]
}

fn str_of<'a>(value: &'a Yaml, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

fn seq(value: &Yaml) -> &Vec<Yaml> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("not a list: {value:?}"))
}

fn container<'a>(deployment: &'a Yaml, name: &str) -> &'a Yaml {
    seq(&deployment["spec"]["template"]["spec"]["containers"])
        .iter()
        .find(|container| container["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container `{name}`"))
}

/// The datagate config and the policy files, as the ConfigMaps hold them.
struct SidecarConfig {
    config_yaml: String,
    model: String,
    policies: BTreeMap<String, String>,
}

fn sidecar_config(documents: &[Yaml]) -> SidecarConfig {
    let config_maps = kind(documents, "ConfigMap");
    let config = config_maps
        .iter()
        .find(|map| map["data"]["datagate.yaml"].is_string())
        .expect("a ConfigMap with datagate.yaml");
    let policies = config_maps
        .iter()
        .find(|map| {
            map["data"].as_mapping().is_some_and(|data| {
                data.keys()
                    .any(|key| key.as_str().unwrap().ends_with(".csv"))
            })
        })
        .expect("a ConfigMap with policy files");
    SidecarConfig {
        config_yaml: str_of(&config["data"]["datagate.yaml"], "datagate.yaml").to_string(),
        model: str_of(&config["data"]["casbin_model.conf"], "casbin_model.conf").to_string(),
        policies: policies["data"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(name, text)| {
                (
                    str_of(name, "file name").to_string(),
                    str_of(text, "policy").to_string(),
                )
            })
            .collect(),
    }
}

fn kubernetes_validate(path: &Path, version: &str) -> Output {
    let path = path.to_str().unwrap();
    run(
        tool("kubernetes-validate"),
        &["--strict", "--kubernetes-version", version, path],
    )
}

#[test]
fn kubernetes_manifests_match_the_kubernetes_schemas() {
    for name in MANIFESTS {
        let path = root().join("deploy/kubernetes").join(name);
        for version in KUBERNETES_VERSIONS {
            let output = kubernetes_validate(&path, version);
            assert!(
                output.status.success(),
                "{name} against Kubernetes {version}:\n{}",
                describe(&output)
            );
        }
    }
}

/// The schema check is not vacuous: a misspelt field or a wrong type is refused.
#[test]
fn kubernetes_validation_refuses_a_misspelt_field_and_a_wrong_type() {
    let text = read("deploy/kubernetes/superset.yaml");
    let directory = tempfile::tempdir().unwrap();
    for (what, from, to) in [
        (
            "misspelt field",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesytem: true",
        ),
        ("wrong type", "replicas: 2", "replicas: two"),
    ] {
        assert!(text.contains(from), "the manifest no longer has `{from}`");
        let broken = directory.path().join("broken.yaml");
        std::fs::write(&broken, text.replacen(from, to, 1)).unwrap();
        let output = kubernetes_validate(&broken, "1.37.0");
        assert!(
            !output.status.success(),
            "{what} was accepted:\n{}",
            describe(&output)
        );
    }
}

/// What makes it a sidecar deployment rather than just valid YAML: the app is reachable only
/// through datagate, datagate is locked down, probes and ports agree with its config, the
/// policy mount can hot-reload, and the NetworkPolicy and PDB select the pods.
#[test]
fn kubernetes_sidecar_only_exposes_datagate_and_is_locked_down() {
    for name in MANIFESTS {
        let documents = manifest_documents(name);
        let deployment = one(&documents, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        let config: Yaml = serde_yaml::from_str(&sidecar_config(&documents).config_yaml).unwrap();
        let port_of = |key: &str| -> u64 {
            let address: SocketAddr = str_of(&config["listen"][key], key).parse().unwrap();
            u64::from(address.port())
        };
        let (proxy_port, admin_port) = (port_of("proxy"), port_of("admin"));
        let upstream: SocketAddr = str_of(&config["upstream"]["address"], "upstream")
            .parse()
            .unwrap();
        assert!(
            upstream.ip().is_loopback(),
            "{name}: upstream {upstream} is not loopback"
        );

        let datagate = container(deployment, "datagate");
        let security = &datagate["securityContext"];
        assert_eq!(security["runAsNonRoot"], Yaml::Bool(true), "{name}");
        assert!(security["runAsUser"].as_u64().unwrap() > 0, "{name}");
        assert_eq!(
            security["readOnlyRootFilesystem"],
            Yaml::Bool(true),
            "{name}"
        );
        assert_eq!(
            security["allowPrivilegeEscalation"],
            Yaml::Bool(false),
            "{name}"
        );
        assert_eq!(
            seq(&security["capabilities"]["drop"]),
            &vec![Yaml::from("ALL")],
            "{name}"
        );
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault"),
            "{name}"
        );
        assert_eq!(
            pod["automountServiceAccountToken"],
            Yaml::Bool(false),
            "{name}"
        );
        for resource in ["cpu", "memory"] {
            assert!(
                !datagate["resources"]["requests"][resource].is_null(),
                "{name}: no {resource} request"
            );
        }
        assert!(
            !datagate["resources"]["limits"]["memory"].is_null(),
            "{name}"
        );

        // Container ports are the config's listen ports; probes hit the admin port's paths.
        let ports: BTreeMap<String, u64> = seq(&datagate["ports"])
            .iter()
            .map(|port| {
                (
                    str_of(&port["name"], "port name").to_string(),
                    port["containerPort"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(ports.get("proxy"), Some(&proxy_port), "{name}");
        assert_eq!(ports.get("admin"), Some(&admin_port), "{name}");
        for (probe, path) in [
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/healthz"),
        ] {
            let get = &datagate[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{name} {probe}");
            assert_eq!(get["port"].as_str(), Some("admin"), "{name} {probe}");
        }

        // Policies: a whole ConfigMap volume (a subPath mount never sees the `..data` swap).
        let volumes: BTreeMap<String, &Yaml> = seq(&pod["volumes"])
            .iter()
            .map(|volume| (str_of(&volume["name"], "volume").to_string(), volume))
            .collect();
        let mounts = seq(&datagate["volumeMounts"]);
        let mount_at = |path: &str| -> &Yaml {
            mounts
                .iter()
                .find(|mount| mount["mountPath"].as_str() == Some(path))
                .unwrap_or_else(|| panic!("{name}: nothing mounted at {path}"))
        };
        for mount in mounts {
            assert!(
                mount["subPath"].is_null(),
                "{name}: subPath mount {mount:?}"
            );
            assert_eq!(mount["readOnly"], Yaml::Bool(true), "{name}: {mount:?}");
        }
        let config_dir = Path::new("/etc/datagate/config");
        let policy_dir = config_dir.join(str_of(&config["policy"]["directory"], "directory"));
        let policy_dir = normalize(&policy_dir);
        let policy_volume = volumes[str_of(&mount_at(&policy_dir)["name"], "volume")];
        assert!(
            policy_volume["configMap"]["name"].is_string(),
            "{name}: policies are not a ConfigMap volume"
        );
        // Keys: every secret_file sits on a Secret volume.
        for key in seq(&config["auth"]["jwt"]["keys"]) {
            let file = normalize(&config_dir.join(str_of(&key["secret_file"], "secret_file")));
            let directory = Path::new(&file)
                .parent()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let volume = volumes[str_of(&mount_at(&directory)["name"], "volume")];
            assert!(
                volume["secret"]["secretName"].is_string(),
                "{name}: {directory} is not a Secret volume"
            );
        }
        assert!(
            !config["store"]["url_env"].is_null(),
            "{name}: the store URL must come from the environment (a Secret), not the ConfigMap"
        );

        // The app: bound to loopback, no container port of its own, not root.
        let app = seq(&pod["containers"])
            .iter()
            .find(|container| container["name"].as_str() != Some("datagate"))
            .unwrap();
        assert!(app["ports"].is_null(), "{name}: the app declares ports");
        let loopback_bind = seq(&app["env"]).iter().any(|variable| {
            matches!(
                variable["name"].as_str(),
                Some("SUPERSET_BIND_ADDRESS" | "GF_SERVER_HTTP_ADDR")
            ) && variable["value"].as_str() == Some("127.0.0.1")
        });
        assert!(loopback_bind, "{name}: the app is not bound to 127.0.0.1");
        assert_eq!(
            app["securityContext"]["allowPrivilegeEscalation"],
            Yaml::Bool(false),
            "{name}"
        );

        // Shutdown: the app outlives datagate's pre-stop pause and drain; the pod's grace
        // period covers both.
        let datagate_pause = datagate["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap();
        let app_pause = app["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap();
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(app_pause > datagate_pause, "{name}");
        assert!(grace > app_pause, "{name}");

        // The Service reaches datagate's proxy port and nothing else.
        let service = one(&documents, "Service");
        let service_ports = seq(&service["spec"]["ports"]);
        assert_eq!(service_ports.len(), 1, "{name}");
        assert_eq!(
            service_ports[0]["targetPort"].as_str(),
            Some("proxy"),
            "{name}"
        );
        assert_eq!(&service["spec"]["selector"], labels, "{name}");

        // NetworkPolicy: the proxy port, and the admin port only from a selected source.
        let policy = one(&documents, "NetworkPolicy");
        assert_eq!(
            &policy["spec"]["podSelector"]["matchLabels"], labels,
            "{name}"
        );
        let mut allowed = BTreeSet::new();
        for rule in seq(&policy["spec"]["ingress"]) {
            for port in seq(&rule["ports"]) {
                let port = port["port"].as_u64().unwrap();
                allowed.insert(port);
                if port == admin_port {
                    assert!(
                        !rule["from"].is_null(),
                        "{name}: the admin port is open to everyone"
                    );
                }
                if port != proxy_port && port != admin_port {
                    panic!("{name}: the NetworkPolicy admits port {port}");
                }
            }
        }
        assert!(allowed.contains(&proxy_port), "{name}");

        let budget = one(&documents, "PodDisruptionBudget");
        assert_eq!(&budget["spec"]["selector"]["matchLabels"], labels, "{name}");
        assert!(
            deployment["spec"]["replicas"].as_u64().unwrap() >= 2,
            "{name}"
        );
    }
}

fn normalize(path: &Path) -> String {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(part) => parts.push(part),
            _ => {}
        }
    }
    let joined: PathBuf = parts.iter().collect();
    format!("/{}", joined.display())
}

/// Lays the ConfigMaps and the Secret out as the pod sees them: `config/`, `policies/` and
/// `keys/` side by side, each in the kubelet's volume layout.
fn materialize(config: &SidecarConfig, root: &Path, config_yaml: &str) {
    let config_files = BTreeMap::from([
        ("datagate.yaml".to_string(), config_yaml.to_string()),
        ("casbin_model.conf".to_string(), config.model.clone()),
    ]);
    kubelet_volume(&root.join("config"), &config_files);
    kubelet_volume(&root.join("policies"), &config.policies);
    let keys = BTreeMap::from([(
        "jwt-hmac.secret".to_string(),
        support::gateway::TEST_HMAC_SECRET.to_string(),
    )]);
    kubelet_volume(&root.join("keys"), &keys);
}

/// The kubelet's layout for a ConfigMap or Secret volume: every file is a symlink into
/// `..data`, itself a symlink to a timestamped directory holding the files.
fn kubelet_volume(directory: &Path, files: &BTreeMap<String, String>) {
    std::fs::create_dir_all(directory).unwrap();
    write_volume_revision(directory, "..2026_12_01_v1", files);
    std::os::unix::fs::symlink("..2026_12_01_v1", directory.join("..data")).unwrap();
    for name in files.keys() {
        std::os::unix::fs::symlink(format!("..data/{name}"), directory.join(name)).unwrap();
    }
}

fn write_volume_revision(directory: &Path, revision: &str, files: &BTreeMap<String, String>) {
    let revision = directory.join(revision);
    std::fs::create_dir(&revision).unwrap();
    for (name, text) in files {
        std::fs::write(revision.join(name), text).unwrap();
    }
}

#[test]
fn kubernetes_config_maps_pass_datagate_check() {
    for name in MANIFESTS {
        let config = sidecar_config(&manifest_documents(name));
        let directory = tempfile::tempdir().unwrap();
        materialize(&config, directory.path(), &config.config_yaml);
        let output = Command::new(env!("CARGO_BIN_EXE_datagate"))
            .args(["check", "--config"])
            .arg(directory.path().join("config/datagate.yaml"))
            .env(
                "DATAGATE_STORE_URL",
                "postgresql://datagate@127.0.0.1:1/unused",
            )
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{name}: {}", describe(&output));
        assert!(stdout.starts_with("ok:"), "{name}: {stdout}");
        assert!(
            !stdout.contains("warning"),
            "{name}: check warns (the model must be the shape the compiled index understands): {stdout}"
        );
    }
}

fn wait_ready(admin: SocketAddr, proxy: SocketAddr, process: &mut ChildProcess) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = ureq::get(&format!("http://{admin}/readyz"))
            .timeout(Duration::from_millis(500))
            .call()
            .is_ok();
        if ready && TcpStream::connect_timeout(&proxy, Duration::from_millis(200)).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "datagate (pid {}) did not become ready",
            process.id()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mint(config_path: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_datagate"))
        .args(["token", "--config"])
        .arg(config_path)
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn eventually(timeout: Duration, mut predicate: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if predicate() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    predicate()
}

/// The Superset pod's datagate, run for real from its ConfigMaps (only the listen
/// addresses and the upstream are moved to free loopback ports; the store URL comes from
/// the environment, as the Secret provides it): it enforces the pack's permissions, refuses
/// anonymous callers before the upstream, and picks up a ConfigMap update (`..data` swap).
#[test]
fn superset_sidecar_runs_from_its_config_maps_and_reloads_on_a_config_map_swap() {
    let config = sidecar_config(&manifest_documents("superset.yaml"));
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut yaml: Yaml = serde_yaml::from_str(&config.config_yaml).unwrap();
    yaml["listen"]["proxy"] = Yaml::from(proxy.to_string());
    yaml["listen"]["admin"] = Yaml::from(admin.to_string());
    yaml["upstream"]["address"] = Yaml::from(upstream.to_string());
    let directory = tempfile::tempdir().unwrap();
    materialize(
        &config,
        directory.path(),
        &serde_yaml::to_string(&yaml).unwrap(),
    );
    let config_path = directory.path().join("config/datagate.yaml");
    let store = directory.path().join("store/datagate.db");
    let mut process = ChildProcess::new(
        Command::new(env!("CARGO_BIN_EXE_datagate"))
            .args(["run", "--config"])
            .arg(&config_path)
            .env("DATAGATE_STORE_URL", format!("sqlite:{}", store.display()))
            .env("DATAGATE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(admin, proxy, &mut process);

    let gamma = mint(&config_path, &["--sub", "alice", "--roles", "Gamma"]);
    let sql_lab = mint(&config_path, &["--sub", "bob", "--roles", "sql_lab"]);
    let chart = format!("http://{proxy}/api/v1/chart/1");

    let (status, _) = call("GET", &chart, Some(&gamma), None);
    assert_eq!(status, 200);
    let received = recorded_requests(upstream);
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].header_values("X-Datagate-User"), vec!["alice"]);

    support::clear_recorded(upstream);
    let (status, body) = call("GET", &chart, None, None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = call("DELETE", &chart, Some(&sql_lab), None);
    assert_eq!(status, 403, "{body}");
    assert!(recorded_requests(upstream).is_empty());

    // The kubelet's ConfigMap update: a new timestamped directory, `..data` renamed over.
    let mut updated = config.policies.clone();
    let roles = updated.get_mut("10-superset-roles.csv").unwrap();
    *roles = roles.replace("p, role:Gamma, Chart, can_read\n", "");
    let policies = directory.path().join("policies");
    write_volume_revision(&policies, "..2026_12_01_v2", &updated);
    std::os::unix::fs::symlink("..2026_12_01_v2", policies.join("..data_tmp")).unwrap();
    std::fs::rename(policies.join("..data_tmp"), policies.join("..data")).unwrap();
    std::fs::remove_dir_all(policies.join("..2026_12_01_v1")).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || call(
            "GET",
            &chart,
            Some(&gamma),
            None
        )
        .0 == 403),
        "the ConfigMap update was not picked up"
    );
    // Requests before the swap took effect were forwarded; from now on nothing is.
    support::clear_recorded(upstream);
    let (status, body) = call("GET", &chart, Some(&gamma), None);
    assert_eq!(status, 403, "{body}");
    assert!(recorded_requests(upstream).is_empty());
}

/// The Grafana pod's datagate from its ConfigMaps: datasource grants by basic role.
#[test]
fn grafana_sidecar_runs_from_its_config_maps() {
    let config = sidecar_config(&manifest_documents("grafana.yaml"));
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut yaml: Yaml = serde_yaml::from_str(&config.config_yaml).unwrap();
    yaml["listen"]["proxy"] = Yaml::from(proxy.to_string());
    yaml["listen"]["admin"] = Yaml::from(admin.to_string());
    yaml["upstream"]["address"] = Yaml::from(upstream.to_string());
    let directory = tempfile::tempdir().unwrap();
    materialize(
        &config,
        directory.path(),
        &serde_yaml::to_string(&yaml).unwrap(),
    );
    let config_path = directory.path().join("config/datagate.yaml");
    let store = directory.path().join("store/datagate.db");
    let mut process = ChildProcess::new(
        Command::new(env!("CARGO_BIN_EXE_datagate"))
            .args(["run", "--config"])
            .arg(&config_path)
            .env("DATAGATE_STORE_URL", format!("sqlite:{}", store.display()))
            .env("DATAGATE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(admin, proxy, &mut process);

    let viewer = mint(&config_path, &["--sub", "carol", "--org-role", "Viewer"]);
    let (status, body) = call(
        "GET",
        &format!("http://{proxy}/api/datasources/uid/prometheus"),
        Some(&viewer),
        None,
    );
    assert_eq!(status, 200, "{body}");
    // Grafana's auth proxy, as the manifest configures it, reads the caller datagate sent.
    let documents = manifest_documents("grafana.yaml");
    let grafana_env: BTreeMap<String, String> =
        seq(&container(one(&documents, "Deployment"), "grafana")["env"])
            .iter()
            .filter_map(|variable| {
                Some((
                    variable["name"].as_str()?.to_string(),
                    variable["value"].as_str()?.to_string(),
                ))
            })
            .collect();
    let received = recorded_requests(upstream);
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].header_values(&grafana_env["GF_AUTH_PROXY_HEADER_NAME"]),
        vec!["carol"]
    );
    let role_header = grafana_env["GF_AUTH_PROXY_HEADERS"]
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix("Role:"))
        .unwrap();
    assert_eq!(received[0].header_values(role_header), vec!["Viewer"]);
    support::clear_recorded(upstream);
    let (status, body) = call(
        "GET",
        &format!("http://{proxy}/api/datasources/uid/warehouse"),
        Some(&viewer),
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert!(recorded_requests(upstream).is_empty());
}

// ---------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------

fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            settings
                .entry(key.to_string())
                .or_default()
                .push(value.to_string());
        }
    }
    settings
}

/// The unit with its binary path pointed at this build (`verify` checks it exists).
fn unit_for_this_build(directory: &Path, text: &str) -> PathBuf {
    let path = directory.join("datagate.service");
    let text = text.replace("/usr/local/bin/datagate", env!("CARGO_BIN_EXE_datagate"));
    std::fs::write(&path, text).unwrap();
    path
}

fn systemd_verify(unit: &Path) -> Output {
    run(tool("systemd-analyze"), &["verify", unit.to_str().unwrap()])
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let directory = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(directory.path(), &read("deploy/systemd/datagate.service"));
    let output = systemd_verify(&unit);
    assert!(output.status.success(), "{}", describe(&output));
    // verify reports unknown or malformed settings as messages with exit 0: none allowed.
    assert!(
        output.stdout.is_empty() && output.stderr.is_empty(),
        "{}",
        describe(&output)
    );

    // Not vacuous: a misspelt directive is reported.
    let broken = read("deploy/systemd/datagate.service").replacen(
        "ProtectSystem=strict",
        "ProtectSystm=strict",
        1,
    );
    let broken_directory = tempfile::tempdir().unwrap();
    let output = systemd_verify(&unit_for_this_build(broken_directory.path(), &broken));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("ProtectSystm"),
        "{}",
        describe(&output)
    );
}

/// `systemd-analyze security` scores the sandbox; 2.0 and below is its "OK" band (1.4 when
/// written). `--threshold` is on its 0–100 scale.
#[test]
fn systemd_unit_exposure_is_in_the_ok_band() {
    let directory = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(directory.path(), &read("deploy/systemd/datagate.service"));
    let output = run(
        tool("systemd-analyze"),
        &[
            "security",
            "--offline=true",
            "--threshold=20",
            "--no-pager",
            unit.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", describe(&output));
}

#[test]
fn systemd_unit_has_the_hardening_and_lifecycle_datagate_relies_on() {
    let settings = unit_settings(&read("deploy/systemd/datagate.service"));
    let get = |key: &str| -> Vec<String> { settings.get(key).cloned().unwrap_or_default() };
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("MemoryDenyWriteExecute", "yes"),
        ("KillSignal", "SIGTERM"),
        ("ReadOnlyPaths", "/etc/datagate"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ] {
        assert_eq!(get(key), vec![value.to_string()], "{key}");
    }
    assert!(get("SystemCallFilter").contains(&"@system-service".to_string()));
    assert_eq!(
        get("ExecReload"),
        vec!["/bin/kill -HUP $MAINPID".to_string()]
    );
    // The ExecStart commands are real subcommands of this build.
    for command in get("ExecStartPre").iter().chain(get("ExecStart").iter()) {
        let mut words = command.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/datagate"));
        let subcommand = words.next().unwrap();
        let output = run(env!("CARGO_BIN_EXE_datagate"), &[subcommand, "--help"]);
        assert!(output.status.success(), "{command}: {}", describe(&output));
    }
    let timeout = humantime::parse_duration(&get("TimeoutStopSec")[0]).unwrap();
    assert!(
        timeout > Duration::from_secs(30),
        "TimeoutStopSec {timeout:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------

#[test]
fn dockerfile_passes_hadolint() {
    let output = run(
        tool("hadolint"),
        &["--no-color", root().join("Dockerfile").to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", describe(&output));
}

/// The default (last) stage is the minimal runtime, running as a non-root user, with the
/// binary from a locked release build; the build context keeps everything the build reads.
#[test]
fn dockerfile_builds_a_release_binary_into_a_non_root_runtime() {
    let text = read("Dockerfile");
    let stages: Vec<&str> = text.split("\nFROM ").skip(1).collect();
    let runtime = stages.last().unwrap();
    assert!(
        runtime.starts_with("gcr.io/distroless/cc-debian12"),
        "{runtime}"
    );
    let user = runtime
        .lines()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    let uid: u32 = user.split(':').next().unwrap().parse().unwrap();
    assert!(uid > 0);
    assert!(text.contains("cargo build --release --locked --bin datagate"));

    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.trim_end_matches('/').to_string())
        .collect();
    // What `cargo build` reads: the manifest, sources, declared benches, and the files the
    // crate embeds (`include_str!`, `sqlx::migrate!`).
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "benches",
        "migrations",
        "casbin_model.conf",
        "policies",
        "deploy/route-packs",
    ] {
        for pattern in &ignored {
            assert!(
                !(needed == pattern || needed.starts_with(&format!("{pattern}/"))),
                ".dockerignore `{pattern}` excludes `{needed}`"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Grafana dashboard
// ---------------------------------------------------------------------------------------

/// A metric datagate exports: its label names and whether it is a histogram.
#[derive(Debug)]
struct Declared {
    labels: BTreeSet<String>,
    histogram: bool,
}

/// Families that only appear after AWS IAM database authentication ran (STS calls,
/// credential and token caches): a test cannot make them appear without STS, so these
/// alone are read from `src/metrics.rs`.
const AWS_ONLY: [&str; 5] = [
    "datagate_sts_calls_total",
    "datagate_credential_cache_total",
    "datagate_credential_refreshes_total",
    "datagate_credential_age_seconds",
    "datagate_db_token_cache_total",
];

/// Reads the metric names (`"datagate_…"` literals), their label lists (the first
/// `&[…]` before the next name) and histogram-ness from the source.
fn source_declared_metrics() -> BTreeMap<String, Declared> {
    let source = read("src/metrics.rs");
    let starts: Vec<usize> = source
        .match_indices("\"datagate_")
        .map(|(index, _)| index)
        .collect();
    let mut declared = BTreeMap::new();
    for (position, &start) in starts.iter().enumerate() {
        let end = starts.get(position + 1).copied().unwrap_or(source.len());
        let segment = &source[start + 1..end];
        let name: String = segment
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let labels = segment
            .find("&[")
            .map(|open| {
                let list = &segment[open + 2..];
                let list = &list[..list.find(']').unwrap()];
                list.split(',')
                    .map(|label| label.trim().trim_matches('"').to_string())
                    .filter(|label| !label.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let before = &source[start.saturating_sub(60)..start];
        declared.insert(
            name,
            Declared {
                labels,
                histogram: before.contains("HistogramOpts::new("),
            },
        );
    }
    declared
}

/// Parses Prometheus text exposition: every family's type and the label names its samples
/// carry (`le` and the `_bucket`/`_sum`/`_count` suffixes folded into the histogram).
fn parse_exposition(text: &str) -> BTreeMap<String, Declared> {
    let mut families: BTreeMap<String, Declared> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            families.insert(
                name.to_string(),
                Declared {
                    labels: BTreeSet::new(),
                    histogram: kind == "histogram",
                },
            );
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap();
        let sample = &line[..name_end];
        let family = [
            sample,
            sample.strip_suffix("_bucket").unwrap_or(sample),
            sample.strip_suffix("_sum").unwrap_or(sample),
            sample.strip_suffix("_count").unwrap_or(sample),
        ]
        .into_iter()
        .find(|candidate| families.contains_key(*candidate))
        .unwrap_or_else(|| panic!("sample `{line}` has no # TYPE"));
        let labels = &mut families.get_mut(family).unwrap().labels;
        if line[name_end..].starts_with('{') {
            let close = line.rfind('}').unwrap();
            for pair in line[name_end + 1..close].split("\",") {
                if let Some((label, _)) = pair.split_once('=')
                    && label != "le"
                {
                    labels.insert(label.trim_start_matches(',').to_string());
                }
            }
        }
    }
    families
}

/// Starts a real datagate with a store and drives traffic through every kind of work it
/// counts (allowed, refused, SQL rewritten and cached, a reload, an admin write), then
/// scrapes `/metrics`. Families that stayed empty are missing from the scrape, so a
/// dashboard query on them fails the check.
fn exported_metrics() -> BTreeMap<String, Declared> {
    use support::gateway::{Gateway, GatewayOptions};
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    let mut options = GatewayOptions::new(upstream);
    options.store_yaml = Some("url: sqlite:store.db\npoll_interval: 200ms\n".to_string());
    // Traces exported to a collector that is not there: spans end, and their batches fail.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = unused.local_addr().unwrap();
    drop(unused);
    options.extra_yaml = Some(format!(
        "telemetry:\n  otlp:\n    endpoint: http://{nowhere}/v1/traces\n"
    ));
    options.env = vec![("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string())];
    let gateway = Gateway::start(options);
    let token = gateway.token("alice", &["Gamma", "sql_lab"], &[], None);
    let admin = gateway.admin_token();
    call("GET", &gateway.url("/api/v1/chart/1"), Some(&token), None);
    call("GET", &gateway.url("/api/v1/chart/1"), None, None);
    // A refusal, counted by status and kind.
    let (status, _) = call("DELETE", &gateway.url("/api/v1/chart/1"), None, None);
    assert!(status >= 400, "an anonymous delete was allowed: {status}");
    for _ in 0..2 {
        let (status, answer) = call(
            "POST",
            &gateway.url("/api/v1/sqllab/execute/"),
            Some(&admin),
            Some(r#"{"database_id": 1, "sql": "SELECT id FROM orders"}"#),
        );
        assert_eq!(status, 200, "{answer}");
    }
    let (status, answer) = call(
        "POST",
        &gateway.admin_url("/api/teams"),
        Some(&admin),
        Some(r#"{"name": "metrics-team"}"#),
    );
    assert!(status < 300, "admin write: {status} {answer}");
    // SIGHUP: a reload counted by trigger and result.
    let _ = Command::new("kill")
        .args(["-HUP", &gateway.pid().to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(500));
    let text = ureq::get(&gateway.admin_url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let mut families = parse_exposition(&text);
    assert!(
        families.contains_key("datagate_requests_total")
            && families.contains_key("datagate_sql_rewrites_total")
            && families.contains_key("datagate_admin_writes_total"),
        "the traffic did not reach the metrics:\n{text}"
    );
    let mut source = source_declared_metrics();
    for name in AWS_ONLY {
        let declared = source
            .remove(name)
            .unwrap_or_else(|| panic!("`{name}` is not in src/metrics.rs"));
        families.entry(name.to_string()).or_insert(declared);
    }
    families
}

/// Labels Prometheus attaches to every scraped series.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// Every PromQL expression in the dashboard (panel targets and `label_values` variables),
/// with Grafana's interval variables replaced so it parses.
fn dashboard_expressions(dashboard: &Json) -> Vec<String> {
    fn panels<'a>(list: &'a Json, out: &mut Vec<&'a Json>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            panels(&panel["panels"], out);
        }
    }
    let mut all = Vec::new();
    panels(&dashboard["panels"], &mut all);
    let mut expressions: Vec<String> = all
        .iter()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            let query = variable["query"]["query"].as_str().unwrap();
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.strip_suffix(')'))
                .unwrap_or_else(|| panic!("variable query `{query}` is not label_values(…)"));
            let (selector, label) = inner.rsplit_once(',').unwrap();
            // `label_values(m, l)` reads label l of m: checked like `sum by (l) (m)`.
            expressions.push(format!("sum by ({}) ({selector})", label.trim()));
        }
    }
    expressions
        .into_iter()
        .map(|expression| {
            expression
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m")
                .replace("$__range", "6h")
        })
        .collect()
}

/// Problems with `expressions` against `declared`: unparsable PromQL, metrics datagate does
/// not export, labels those metrics do not carry.
fn dashboard_problems(
    expressions: &[String],
    declared: &BTreeMap<String, Declared>,
) -> Vec<String> {
    let mut child = Command::new("python3")
        .arg(root().join("tests/deploy/promql_selectors.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), expressions).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promql_selectors.py (install the validators: deploy/install-validators.sh): {}",
        describe(&output)
    );
    let parsed: Vec<Json> = serde_json::from_slice(&output.stdout).unwrap();
    let mut problems = Vec::new();
    for (expression, parsed) in expressions.iter().zip(&parsed) {
        if let Some(error) = parsed["error"].as_str() {
            problems.push(format!("`{expression}` does not parse: {error}"));
            continue;
        }
        let mut available: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        for selector in parsed["selectors"].as_array().unwrap() {
            let Some(name) = selector["name"].as_str() else {
                problems.push(format!(
                    "`{expression}` has a selector without a metric name"
                ));
                continue;
            };
            let resolved = declared
                .get(name)
                .map(|metric| (metric, false))
                .or_else(|| {
                    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                        let base = name.strip_suffix(suffix)?;
                        let metric = declared.get(base).filter(|metric| metric.histogram)?;
                        Some((metric, *suffix == "_bucket"))
                    })
                });
            let Some((metric, bucket)) = resolved else {
                problems.push(format!(
                    "`{expression}`: `{name}` is not a metric datagate exports"
                ));
                continue;
            };
            let mut labels = metric.labels.clone();
            labels.extend(TARGET_LABELS.iter().map(|l| l.to_string()));
            if bucket {
                labels.insert("le".to_string());
            }
            for label in selector["labels"].as_array().unwrap() {
                let label = label.as_str().unwrap();
                if !labels.contains(label) {
                    problems.push(format!("`{expression}`: `{name}` has no label `{label}`"));
                }
            }
            available.extend(labels);
        }
        for label in parsed["grouping"].as_array().unwrap() {
            let label = label.as_str().unwrap();
            if !available.contains(label) {
                problems.push(format!(
                    "`{expression}` groups by `{label}`, which none of its metrics carry"
                ));
            }
        }
    }
    problems
}

#[test]
fn dashboard_queries_only_metrics_and_labels_datagate_exports() {
    let dashboard: Json = serde_json::from_str(&read("deploy/grafana-dashboard.json")).unwrap();
    let expressions = dashboard_expressions(&dashboard);
    assert!(expressions.len() > 20);
    let declared = exported_metrics();
    let problems = dashboard_problems(&expressions, &declared);
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The families an operator needs are all on it.
    let text = expressions.join("\n");
    for metric in [
        "datagate_requests_total",
        "datagate_decision_duration_seconds_bucket",
        "datagate_sql_rewrites_total",
        "datagate_sql_rewrite_duration_seconds_bucket",
        "datagate_sql_rewrite_cache_total",
        "datagate_policy_reloads_total",
        "datagate_policy_revision",
        "datagate_store_revision",
        "datagate_store_syncs_total",
        "datagate_sts_calls_total",
        "datagate_credential_cache_total",
        "datagate_refusals_total",
        "datagate_upstream_responses_total",
        "datagate_upstream_duration_seconds_bucket",
        "datagate_requests_in_flight",
        "datagate_trace_spans_total",
    ] {
        assert!(
            text.contains(metric),
            "the dashboard does not show {metric}"
        );
    }
}

/// The check catches what it exists for: a metric that is not exported, a label the metric
/// lacks, a grouping by an absent label, and PromQL that does not parse.
#[test]
fn dashboard_check_refuses_unknown_metrics_and_labels() {
    let declared = parse_exposition(
        "# TYPE datagate_requests_total counter\n\
         datagate_requests_total{route=\"a\",decision=\"allow\"} 1\n\
         # TYPE datagate_decision_duration_seconds histogram\n\
         datagate_decision_duration_seconds_bucket{decision=\"allow\",le=\"0.1\"} 1\n\
         datagate_decision_duration_seconds_sum{decision=\"allow\"} 0.01\n\
         datagate_decision_duration_seconds_count{decision=\"allow\"} 1\n\
         # TYPE datagate_policy_revision gauge\n\
         datagate_policy_revision 3\n",
    );
    let bad = [
        "rate(datagate_requests_totl[5m])",
        "rate(datagate_requests_total{tenant=\"a\"}[5m])",
        "sum by (tenant) (rate(datagate_requests_total[5m]))",
        "rate(datagate_policy_revision_bucket[5m])",
        "sum(rate(datagate_requests_total[5m]",
    ]
    .map(String::from);
    let problems = dashboard_problems(&bad, &declared);
    assert_eq!(problems.len(), bad.len(), "{problems:#?}");
    let good = ["sum by (decision, le) (rate(datagate_decision_duration_seconds_bucket{job=\"x\"}[5m])) / on (instance) group_left max by (instance) (datagate_policy_revision)".to_string()];
    let problems = dashboard_problems(&good, &declared);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn dashboard_panels_use_the_datasource_variable_and_do_not_overlap() {
    let dashboard: Json = serde_json::from_str(&read("deploy/grafana-dashboard.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "duplicate id");
        let grid = &panel["gridPos"];
        let (x, y, w, h) = (
            grid["x"].as_u64().unwrap(),
            grid["y"].as_u64().unwrap(),
            grid["w"].as_u64().unwrap(),
            grid["h"].as_u64().unwrap(),
        );
        assert!(
            x + w <= 24,
            "panel {} is wider than the grid",
            panel["title"]
        );
        for row in y..y + h {
            for column in x..x + w {
                assert!(
                    cells.insert((row, column)),
                    "panel {} overlaps another",
                    panel["title"]
                );
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "${datasource}");
        }
    }
}
