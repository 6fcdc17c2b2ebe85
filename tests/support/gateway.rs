//! Starts a real `datagate` process for integration tests: a temporary directory with a
//! config, the repository's model and policies (or the test's own), and the example HMAC
//! key; free ports; readiness awaited on `/readyz`.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use datagate::authn::{MintRequest, mint_token};
use datagate::config::Config;
use datagate::principal::BasicRole;

use super::{ChildProcess, free_port};

/// The `auth.jwt` section of the default test config: the HMAC key tokens are minted with.
pub const TEST_JWT_YAML: &str = "jwt:
  leeway_seconds: 0
  keys:
    - kid: test-hmac
      algorithm: HS256
      secret_file: hmac.secret
  claims:
    roles: roles
    teams: teams
    org_role: org_role
";

pub const TEST_HMAC_SECRET: &str = "test-only-hmac-secret-0123456789abcdef-0123456789";

/// Options for [`Gateway::start`].
pub struct GatewayOptions {
    pub upstream: SocketAddr,
    /// YAML for the `routes:` key; the example config's routes when `None`.
    pub routes_yaml: Option<String>,
    /// Replace the repository's `policies/` with these files (name, contents).
    pub policy_files: Option<Vec<(String, String)>>,
    pub anonymous_enabled: bool,
    pub log_allowed: bool,
    /// Reload on file changes (off to test SIGHUP and the admin endpoint alone).
    pub watch: bool,
    /// YAML for the `datasources:` key; the example config's when `None`.
    pub datasources_yaml: Option<String>,
    /// YAML for the `store:` key; no store when `None`.
    pub store_yaml: Option<String>,
    /// YAML for the `exports:` key; the defaults when `None`.
    pub exports_yaml: Option<String>,
    /// YAML for the `aws:` key; the defaults when `None`.
    pub aws_yaml: Option<String>,
    /// Extra environment variables for the datagate process.
    pub env: Vec<(String, String)>,
    /// Further top-level YAML appended to the config (e.g. `identity_headers:`).
    pub extra_yaml: Option<String>,
    /// Extra keys for the `listen:` section, e.g. `header_timeout: 1s`.
    pub listen_yaml: Option<String>,
    /// YAML for the `auth:` key, replacing the test HMAC key setup when set.
    pub auth_yaml: Option<String>,
    /// The proxy port, when the test must know it before start (a free one otherwise).
    pub proxy_port: Option<u16>,
    /// Write datagate's own log (stderr) to a file the test reads ([`Gateway::log_text`])
    /// instead of the test's stderr.
    pub capture_log: bool,
}

impl GatewayOptions {
    pub fn new(upstream: SocketAddr) -> Self {
        GatewayOptions {
            upstream,
            routes_yaml: None,
            policy_files: None,
            anonymous_enabled: true,
            log_allowed: false,
            watch: true,
            datasources_yaml: None,
            store_yaml: None,
            exports_yaml: None,
            aws_yaml: None,
            env: Vec::new(),
            extra_yaml: None,
            listen_yaml: None,
            auth_yaml: None,
            proxy_port: None,
            capture_log: false,
        }
    }
}

pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub audit_path: PathBuf,
    pub process: ChildProcess,
    config: Config,
    env: Vec<(String, String)>,
    log_path: Option<PathBuf>,
}

pub fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `routes:` section of the example config, so tests exercise what users run.
/// A section of the example config, so tests exercise what users run.
pub fn example_section(key: &str) -> String {
    let text =
        std::fs::read_to_string(repository_root().join("deploy/datagate.example.yaml")).unwrap();
    let value: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    serde_yaml::to_string(&value[key]).unwrap()
}

pub fn example_routes_yaml() -> String {
    example_section("routes")
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|line| format!("{pad}{line}\n")).collect()
}

impl Gateway {
    pub fn config_yaml(options: &GatewayOptions, proxy: SocketAddr, admin: SocketAddr) -> String {
        let routes = options
            .routes_yaml
            .clone()
            .unwrap_or_else(example_routes_yaml);
        let datasources = options
            .datasources_yaml
            .clone()
            .unwrap_or_else(|| example_section("datasources"));
        format!(
            r#"listen:
  proxy: {proxy}
  admin: {admin}
  threads: 2
{listen_extra}upstream:
  address: {upstream}
  connect_timeout: 2s
  read_timeout: 10s
policy:
  model: casbin_model.conf
  directory: policies
  watch: {watch}
  debounce: 100ms
  poll_interval: 500ms
auth:
{auth}routes:
{routes}datasources:
{datasources}{store}{exports}{aws}audit:
  output: audit.log
  log_allowed: {log_allowed}
{extra}"#,
            upstream = options.upstream,
            auth = indent(
                &options.auth_yaml.clone().unwrap_or_else(|| format!(
                    "anonymous:\n  enabled: {}\n  roles: [Public]\n{TEST_JWT_YAML}",
                    options.anonymous_enabled
                )),
                2
            ),
            routes = indent(&routes, 2),
            datasources = indent(&datasources, 2),
            log_allowed = options.log_allowed,
            extra = options.extra_yaml.clone().unwrap_or_default(),
            listen_extra = options
                .listen_yaml
                .as_ref()
                .map(|listen| indent(listen, 2))
                .unwrap_or_default(),
            watch = options.watch,
            aws = options
                .aws_yaml
                .as_ref()
                .map(|aws| format!("aws:\n{}", indent(aws, 2)))
                .unwrap_or_default(),
            exports = options
                .exports_yaml
                .as_ref()
                .map(|exports| format!("exports:\n{}", indent(exports, 2)))
                .unwrap_or_default(),
            store = options
                .store_yaml
                .as_ref()
                .map(|store| format!("store:\n{}", indent(store, 2)))
                .unwrap_or_default(),
        )
    }

    pub fn start(options: GatewayOptions) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hmac.secret"), TEST_HMAC_SECRET).unwrap();
        std::fs::copy(
            repository_root().join("casbin_model.conf"),
            dir.path().join("casbin_model.conf"),
        )
        .unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        match &options.policy_files {
            Some(files) => {
                for (name, contents) in files {
                    std::fs::write(policies.join(name), contents).unwrap();
                }
            }
            None => {
                for entry in std::fs::read_dir(repository_root().join("policies")).unwrap() {
                    let entry = entry.unwrap();
                    // `policies/tests/` holds the policy test suites, not policy files.
                    if entry.path().is_file() {
                        std::fs::copy(entry.path(), policies.join(entry.file_name())).unwrap();
                    }
                }
            }
        }
        let proxy_port = options.proxy_port.unwrap_or_else(free_port);
        let proxy: SocketAddr = format!("127.0.0.1:{proxy_port}").parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config_path = dir.path().join("datagate.yaml");
        std::fs::write(&config_path, Gateway::config_yaml(&options, proxy, admin)).unwrap();
        let config = Config::load(&config_path).unwrap();
        let log_path = options.capture_log.then(|| dir.path().join("datagate.log"));
        let process = spawn_datagate(&config_path, &options.env, log_path.as_deref());
        wait_until_ready(admin, proxy);
        Gateway {
            log_path,
            audit_path: dir.path().join("audit.log"),
            dir,
            proxy,
            admin,
            config_path,
            process,
            config,
            env: options.env.clone(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    /// What datagate has logged so far, when started with `capture_log`.
    pub fn log_text(&self) -> String {
        let path = self
            .log_path
            .as_ref()
            .expect("the gateway was started without capture_log");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    pub fn token(
        &self,
        subject: &str,
        roles: &[&str],
        teams: &[&str],
        org_role: Option<BasicRole>,
    ) -> String {
        mint_token(
            &self.config.auth,
            &self.config.base_dir,
            &MintRequest {
                subject: subject.to_string(),
                roles: roles.iter().map(|role| role.to_string()).collect(),
                teams: teams.iter().map(|team| team.to_string()).collect(),
                org_role,
                ttl: Duration::from_secs(600),
                extra_claims: serde_json::Map::new(),
            },
        )
        .unwrap()
    }

    /// A token with further claims (e.g. `email`, `name`).
    pub fn token_with_claims(
        &self,
        subject: &str,
        roles: &[&str],
        teams: &[&str],
        org_role: Option<BasicRole>,
        extra_claims: serde_json::Value,
    ) -> String {
        mint_token(
            &self.config.auth,
            &self.config.base_dir,
            &MintRequest {
                subject: subject.to_string(),
                roles: roles.iter().map(|role| role.to_string()).collect(),
                teams: teams.iter().map(|team| team.to_string()).collect(),
                org_role,
                ttl: Duration::from_secs(600),
                extra_claims: extra_claims.as_object().cloned().unwrap_or_default(),
            },
        )
        .unwrap()
    }

    pub fn admin_token(&self) -> String {
        self.token("root", &["Admin"], &[], Some(BasicRole::Admin))
    }

    /// The serving policy revision, from the status endpoint.
    pub fn revision(&self) -> u64 {
        let status: serde_json::Value = ureq::get(&self.admin_url("/api/admin/policy/status"))
            .set("Authorization", &format!("Bearer {}", self.admin_token()))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        status["revision"].as_u64().unwrap()
    }

    pub fn policy_status(&self) -> serde_json::Value {
        ureq::get(&self.admin_url("/api/admin/policy/status"))
            .set("Authorization", &format!("Bearer {}", self.admin_token()))
            .call()
            .unwrap()
            .into_json()
            .unwrap()
    }

    /// Polls until `predicate` holds or `timeout` passes; returns whether it held.
    pub fn eventually(timeout: Duration, mut predicate: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if predicate() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        predicate()
    }

    /// The value of the first `/metrics` line starting with `prefix` (0 when absent).
    pub fn metric(&self, prefix: &str) -> f64 {
        self.metric_with(prefix, &[])
    }

    /// The value of the first `/metrics` line starting with `name` and containing every
    /// one of `labels` (`source="notify"`), in whatever order they are printed.
    pub fn metric_with(&self, name: &str, labels: &[&str]) -> f64 {
        let text = ureq::get(&self.admin_url("/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        text.lines()
            .find(|line| line.starts_with(name) && labels.iter().all(|label| line.contains(label)))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit_path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    pub fn write_policy(&self, name: &str, contents: &str) {
        write_atomically(&self.policy_dir().join(name), contents);
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Stops the process and starts it again on the same config, directory and ports.
    pub fn restart(&mut self) {
        self.process.kill();
        self.process = spawn_datagate(&self.config_path, &self.env, self.log_path.as_deref());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect(self.admin).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                panic!("datagate did not come back after a restart");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        wait_until_ready(self.admin, self.proxy);
    }
}

fn spawn_datagate(
    config_path: &Path,
    env: &[(String, String)],
    log_path: Option<&Path>,
) -> ChildProcess {
    let stderr = match log_path {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap(),
        ),
        None => Stdio::inherit(),
    };
    let child = Command::new(env!("CARGO_BIN_EXE_datagate"))
        .arg("run")
        .arg("--config")
        .arg(config_path)
        .env("DATAGATE_LOG", "error")
        .envs(
            env.iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        )
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    ChildProcess::new(child)
}

/// Writes through a temporary file and a rename, as editors and config tools do.
pub fn write_atomically(path: &Path, contents: &str) {
    let temporary = path.with_extension("tmp~");
    std::fs::write(&temporary, contents).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn wait_until_ready(admin: SocketAddr, proxy: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let admin_ready = ureq::get(&format!("http://{admin}/readyz"))
            .timeout(Duration::from_millis(500))
            .call()
            .is_ok();
        let proxy_ready = TcpStream::connect_timeout(&proxy, Duration::from_millis(200)).is_ok();
        if admin_ready && proxy_ready {
            return;
        }
        assert!(Instant::now() < deadline, "datagate did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}
