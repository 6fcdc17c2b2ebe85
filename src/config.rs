//! The one YAML configuration file, read once at start-up.
//!
//! `datagate run` and `datagate check` call [`Config::load`]; everything the request path
//! needs is built from the validated result. Unknown keys are refused and every error names
//! the key that is wrong, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::authn::AuthConfig;
use crate::rls::{DatasourceConfig, RewriteLimits};
use crate::route::RoutesConfig;

/// Why the configuration could not be used. Operators read these: they name the file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file `{path}`: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: ListenConfig,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub identity_headers: IdentityHeadersConfig,
    /// Routing and trust headers (`X-Forwarded-*` and friends).
    #[serde(default)]
    pub forwarding: ForwardingConfig,
    pub policy: PolicyConfig,
    pub auth: AuthConfig,
    pub routes: RoutesConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    /// Datasources whose SQL datagate inspects (dialect, known tables).
    #[serde(default)]
    pub datasources: Vec<DatasourceConfig>,
    /// Bounds on the SQL datagate is willing to analyse.
    #[serde(default)]
    pub sql: SqlLimitsConfig,
    /// Superset chart data: which datasets read which protected tables.
    #[serde(default)]
    pub charts: crate::chart_data::ChartsConfig,
    /// AWS IAM database authentication (STS credentials, database tokens).
    #[serde(default)]
    pub aws: crate::creds::AwsConfig,
    /// Export controls (Superset's granular export permissions).
    #[serde(default)]
    pub exports: crate::export::ExportConfig,
    /// The grants store behind the admin API; without it grants come only from files.
    #[serde(default)]
    pub store: Option<crate::store::StoreConfig>,
    /// How the process drains and hands over its socket.
    #[serde(default)]
    pub shutdown: crate::lifecycle::ShutdownConfig,
    /// How datagate's own logs are written.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// OpenTelemetry trace export (off unless `telemetry.otlp` is set).
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// Directory relative paths are resolved against: the config file's directory.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Where clients (and the BI service's users) connect.
    pub proxy: SocketAddr,
    /// Health, readiness, metrics and the admin API. Keep it off the public network.
    pub admin: SocketAddr,
    /// Worker threads for the proxy; 0 means one per CPU.
    #[serde(default)]
    pub threads: usize,
    /// A client must finish sending a request head within this long (from its first
    /// byte; on a new connection, from accepting it), or the connection is closed.
    #[serde(default = "default_header_timeout", with = "duration_text")]
    pub header_timeout: Duration,
    /// Open client connections beyond this are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open client connections from one IP address beyond this are closed at once.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_connections_per_ip() -> usize {
    1_000
}

/// `logging` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `text` (the default; coloured only on a terminal) or `json` (one object a line).
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` of the protected service.
    pub address: String,
    /// Speak TLS to the upstream.
    #[serde(default)]
    pub tls: bool,
    /// Server name for TLS (SNI and certificate check); defaults to the address's host.
    #[serde(default)]
    pub sni: Option<String>,
    /// Verify the upstream's certificate (only turn off for a lab).
    #[serde(default = "default_true")]
    pub verify_certificate: bool,
    #[serde(default = "default_connect_timeout", with = "duration_text")]
    pub connect_timeout: Duration,
    #[serde(default = "default_read_timeout", with = "duration_text")]
    pub read_timeout: Duration,
    #[serde(default = "default_read_timeout", with = "duration_text")]
    pub write_timeout: Duration,
    /// How long an idle upstream connection stays in the keepalive pool.
    #[serde(default = "default_idle_timeout", with = "duration_text")]
    pub idle_timeout: Duration,
    /// Idle upstream connections kept for reuse.
    #[serde(default = "default_keepalive_pool_size")]
    pub keepalive_pool_size: usize,
}

/// Headers that carry the authenticated identity to the upstream. Any client header whose
/// name equals one of them after lowercasing and mapping `_` to `-` is removed first, so the
/// upstream can trust them (see `src/proxy/headers.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeadersConfig {
    /// Which upstream's trust scheme the header names follow; `custom` (the default) uses
    /// the names below.
    #[serde(default)]
    pub preset: IdentityPreset,
    /// The caller's login (`custom` default `X-Datagate-User`).
    #[serde(default)]
    pub user: Option<String>,
    /// Comma-separated roles (`custom` default `X-Datagate-Roles`).
    #[serde(default)]
    pub roles: Option<String>,
    /// Comma-separated teams (`custom` default `X-Datagate-Teams`).
    #[serde(default)]
    pub teams: Option<String>,
    /// Grafana basic role (`custom` default `X-Datagate-Org-Role`).
    #[serde(default)]
    pub basic_role: Option<String>,
    /// The caller's e-mail, when the token has one (`custom`: not sent unless named).
    #[serde(default)]
    pub email: Option<String>,
    /// The caller's display name (the token's `name` claim; `custom`: not sent unless named).
    #[serde(default)]
    pub name: Option<String>,
    /// Further client headers to drop (e.g. the upstream's own remote-user header).
    #[serde(default = "default_strip_headers")]
    pub strip: Vec<String>,
}

impl Default for IdentityHeadersConfig {
    fn default() -> Self {
        IdentityHeadersConfig {
            preset: IdentityPreset::default(),
            user: None,
            roles: None,
            teams: None,
            basic_role: None,
            email: None,
            name: None,
            strip: default_strip_headers(),
        }
    }
}

/// `identity_headers.preset`: the header names an upstream's own trust scheme reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityPreset {
    /// The names in `identity_headers` (datagate's `X-Datagate-*` by default).
    #[default]
    Custom,
    /// Grafana's auth proxy (`X-WEBAUTH-*`).
    Grafana,
    /// `deploy/superset/datagate_security.py`.
    Superset,
    /// `deploy/datasette/datagate_actor.py`.
    Datasette,
}

/// `forwarding:`: the routing and trust headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`,
/// URL and method overrides). datagate is the edge of the service it protects, so client
/// copies are dropped and datagate writes the ones it vouches for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardingConfig {
    /// Client headers dropped before forwarding; a trailing `*` matches a prefix. Replaces
    /// the default list when given.
    #[serde(default = "default_trust_headers")]
    pub strip: Vec<String>,
    /// `replace` (default): `X-Forwarded-For` is the address of datagate's peer.
    /// `append`: when the peer is one of `trusted_proxies`, the client's list (if every
    /// entry is an IP address) is kept and the peer appended.
    #[serde(default)]
    pub x_forwarded_for: ForwardedForMode,
    /// Peers whose `X-Forwarded-For` is appended to: IP addresses or CIDR ranges
    /// (`10.0.0.5`, `10.42.0.0/16`).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The scheme written to `X-Forwarded-Proto` (`https` when TLS ends in front of datagate).
    #[serde(default)]
    pub x_forwarded_proto: ForwardedProto,
    /// Write `X-Forwarded-Host` from the request's own `Host` (off: none is sent).
    #[serde(default)]
    pub x_forwarded_host: bool,
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        ForwardingConfig {
            strip: default_trust_headers(),
            x_forwarded_for: ForwardedForMode::default(),
            trusted_proxies: Vec::new(),
            x_forwarded_proto: ForwardedProto::default(),
            x_forwarded_host: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedForMode {
    #[default]
    Replace,
    Append,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedProto {
    #[default]
    Http,
    Https,
}

impl ForwardedProto {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardedProto::Http => "http",
            ForwardedProto::Https => "https",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The casbin model (`casbin_model.conf`).
    pub model: PathBuf,
    /// Directory of `*.csv` policy files.
    pub directory: PathBuf,
    /// Reload when the model or a policy file changes.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// Quiet period after the last file event before reloading (editors write in bursts).
    #[serde(default = "default_debounce", with = "duration_text")]
    pub debounce: Duration,
    /// How often file sizes and times are compared as a safety net under the watcher.
    #[serde(default = "default_poll_interval", with = "duration_text")]
    pub poll_interval: Duration,
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `stdout` (default), `stderr`, or a file path (appended to).
    #[serde(default)]
    pub output: Option<String>,
    /// Also write one line per allowed request (refusals are always audited).
    #[serde(default)]
    pub log_allowed: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlLimitsConfig {
    /// Larger SQL is refused (`sql_too_large`).
    #[serde(default = "default_max_sql_bytes")]
    pub max_bytes: usize,
    /// Deeper nesting is refused (`too_deeply_nested`), bounding parse time and stack.
    #[serde(default = "default_max_nesting_depth")]
    pub max_nesting_depth: usize,
    /// The CPU time one statement may take to check and rewrite (`sql_cpu_budget` over
    /// it); `0s` turns the budget off.
    #[serde(default = "default_max_cpu_time", with = "duration_text")]
    pub max_cpu_time: Duration,
    /// The bounded pool SQL rewrites run on.
    #[serde(default)]
    pub pool: crate::sql_pool::SqlPoolConfig,
}

impl Default for SqlLimitsConfig {
    fn default() -> Self {
        SqlLimitsConfig {
            max_bytes: default_max_sql_bytes(),
            max_nesting_depth: default_max_nesting_depth(),
            max_cpu_time: default_max_cpu_time(),
            pool: crate::sql_pool::SqlPoolConfig::default(),
        }
    }
}

impl SqlLimitsConfig {
    pub fn rewrite_limits(&self) -> RewriteLimits {
        RewriteLimits {
            max_sql_bytes: self.max_bytes,
            max_nesting_depth: self.max_nesting_depth,
            max_cpu: (!self.max_cpu_time.is_zero()).then_some(self.max_cpu_time),
        }
    }
}

fn default_max_cpu_time() -> Duration {
    Duration::from_secs(1)
}

fn default_max_sql_bytes() -> usize {
    256 * 1024
}
fn default_max_nesting_depth() -> usize {
    64
}

fn default_true() -> bool {
    true
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_keepalive_pool_size() -> usize {
    128
}
fn default_debounce() -> Duration {
    Duration::from_millis(200)
}
fn default_strip_headers() -> Vec<String> {
    [
        "X-Remote-User",
        "X-Forwarded-User",
        "X-Webauth-User",
        "Remote-User",
    ]
    .iter()
    .map(|name| name.to_string())
    .collect()
}
/// Routing and trust headers that proxies and frameworks (Werkzeug's ProxyFix, Spring,
/// IIS, Symfony, Rails) read to rebuild the URL, the client address or the method.
fn default_trust_headers() -> Vec<String> {
    [
        "X-Forwarded-*",
        "Forwarded",
        "X-Real-IP",
        "X-Client-IP",
        "Client-IP",
        "True-Client-IP",
        "CF-Connecting-IP",
        "Fastly-Client-IP",
        "X-Cluster-Client-IP",
        "X-ProxyUser-Ip",
        "X-Original-URL",
        "X-Original-URI",
        "X-Original-Host",
        "X-Original-Forwarded-For",
        "X-Rewrite-URL",
        "X-Host",
        "X-Scheme",
        "X-Url-Scheme",
        "Front-End-Https",
        "X-Script-Name",
        "X-HTTP-Method-Override",
        "X-Method-Override",
        "X-HTTP-Method",
    ]
    .iter()
    .map(|name| name.to_string())
    .collect()
}

/// Durations are written the human way (`250ms`, `2s`, `1m`).
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|error| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({error}); write e.g. `250ms`, `2s`, `1m`"
            ))
        })
    }
}

impl Config {
    /// Reads, parses and validates the file; relative paths inside resolve against its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        // Absolute, so file-watcher events and relative paths in the file agree.
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let base_dir = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
        Config::from_yaml(&text, &path.display().to_string(), base_dir)
    }

    /// Parses YAML text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str, base_dir: PathBuf) -> Result<Config, ConfigError> {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let mut config: Config =
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                let key = error.path().to_string();
                let inner = error.into_inner();
                let location = inner
                    .location()
                    .map(|at| format!(" (line {}, column {})", at.line(), at.column()))
                    .unwrap_or_default();
                ConfigError::Parse {
                    path: origin.to_string(),
                    message: if key == "." {
                        format!("{inner}{location}")
                    } else {
                        format!("key `{key}`: {inner}{location}")
                    },
                }
            })?;
        config.base_dir = base_dir;
        config.validate()?;
        Ok(config)
    }

    /// Semantic checks serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.proxy == self.listen.admin {
            return Err(ConfigError::invalid(
                "listen.admin",
                "must differ from `listen.proxy`",
            ));
        }
        crate::proxy::upstream_host_port(&self.upstream.address)
            .map_err(|message| ConfigError::invalid("upstream.address", message))?;
        if self.upstream.keepalive_pool_size == 0 {
            return Err(ConfigError::invalid(
                "upstream.keepalive_pool_size",
                "must be at least 1",
            ));
        }
        for (index, datasource) in self.datasources.iter().enumerate() {
            if let Some(iam) = &datasource.aws_iam {
                iam.validate().map_err(|message| {
                    ConfigError::invalid(&format!("datasources[{index}].aws_iam"), message)
                })?;
            }
        }
        self.charts
            .validate(&self.datasources)
            .map_err(|(key, message)| ConfigError::invalid(&key, message))?;
        crate::dataset_verify::DatasetVerifier::new(self)
            .map_err(|(key, message)| ConfigError::invalid(&key, message))?;
        for (key, name) in [
            ("aws.headers.db_user", &self.aws.headers.db_user),
            ("aws.headers.db_token", &self.aws.headers.db_token),
            ("aws.headers.db_endpoint", &self.aws.headers.db_endpoint),
        ] {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::invalid(
                    key,
                    format!("`{name}` is not a valid HTTP header name"),
                ));
            }
        }
        if let Some(store) = &self.store {
            if store.url.is_none() && store.url_env.is_none() {
                return Err(ConfigError::invalid(
                    "store.url",
                    "required (`sqlite:PATH` or `postgresql://…`), or `store.url_env`",
                ));
            }
            if store.url.is_some() && store.url_env.is_some() {
                return Err(ConfigError::invalid(
                    "store.url",
                    "set `url` or `url_env`, not both",
                ));
            }
            if store.poll_interval.is_zero() {
                return Err(ConfigError::invalid(
                    "store.poll_interval",
                    "must be greater than zero",
                ));
            }
            if store.max_staleness <= store.poll_interval * 2 {
                return Err(ConfigError::invalid(
                    "store.max_staleness",
                    "must be more than twice `store.poll_interval`, or replicas would refuse requests between two polls",
                ));
            }
        }
        for (key, value) in [
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.read_timeout", self.upstream.read_timeout),
            ("upstream.write_timeout", self.upstream.write_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(key, "must be greater than zero"));
            }
        }
        crate::proxy::HeaderPlan::validate(self)
            .map_err(|(key, message)| ConfigError::invalid(&key, message))?;
        let mut seen_uids = std::collections::HashSet::new();
        for (index, datasource) in self.datasources.iter().enumerate() {
            if datasource.uid.is_empty() {
                return Err(ConfigError::invalid(
                    &format!("datasources[{index}].uid"),
                    "must not be empty",
                ));
            }
            if !seen_uids.insert(datasource.uid.as_str()) {
                return Err(ConfigError::invalid(
                    &format!("datasources[{index}].uid"),
                    format!("`{}` is listed twice", datasource.uid),
                ));
            }
        }
        if self.sql.pool.queue_limit == 0 {
            return Err(ConfigError::invalid(
                "sql.pool.queue_limit",
                "must be at least 1",
            ));
        }
        if self.sql.pool.per_caller_limit == 0 {
            return Err(ConfigError::invalid(
                "sql.pool.per_caller_limit",
                "must be at least 1",
            ));
        }
        if !(0..=19).contains(&self.sql.pool.niceness) {
            return Err(ConfigError::invalid("sql.pool.niceness", "must be 0 to 19"));
        }
        if self.listen.header_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "listen.header_timeout",
                "must be greater than zero",
            ));
        }
        if self.listen.max_connections == 0 || self.listen.max_connections_per_ip == 0 {
            return Err(ConfigError::invalid(
                "listen.max_connections",
                "connection limits must be at least 1",
            ));
        }
        if self.shutdown.upgrade_socket.is_empty() {
            return Err(ConfigError::invalid(
                "shutdown.upgrade_socket",
                "must be a path",
            ));
        }
        if self.sql.max_bytes == 0 || self.sql.max_nesting_depth == 0 {
            return Err(ConfigError::invalid(
                "sql",
                "limits must be greater than zero",
            ));
        }
        if let Some(otlp) = &self.telemetry.otlp {
            otlp.validate()
                .map_err(|(key, message)| ConfigError::invalid(key, message))?;
        }
        self.auth.validate().map_err(|error| ConfigError::Invalid {
            key: "auth".to_string(),
            message: error.to_string(),
        })?;
        self.routes
            .validate()
            .map_err(|error| ConfigError::Invalid {
                key: "routes".to_string(),
                message: error.to_string(),
            })?;
        Ok(())
    }

    /// A path from the config, resolved against the config file's directory.
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    pub fn policy_model_path(&self) -> PathBuf {
        self.resolve_path(&self.policy.model)
    }

    pub fn policy_directory(&self) -> PathBuf {
        self.resolve_path(&self.policy.directory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
listen: {proxy: "127.0.0.1:8080", admin: "127.0.0.1:9180"}
upstream: {address: "127.0.0.1:8088"}
policy: {model: casbin_model.conf, directory: policies}
auth: {}
routes: {}
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text, "test.yaml", PathBuf::from("/etc/datagate"))
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.upstream.connect_timeout, Duration::from_secs(2));
        assert_eq!(config.upstream.keepalive_pool_size, 128);
        assert_eq!(config.identity_headers.preset, IdentityPreset::Custom);
        assert!(config.policy.watch);
        assert_eq!(
            config.policy_directory(),
            PathBuf::from("/etc/datagate/policies")
        );
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key() {
        let text = MINIMAL.replace("upstream: {", "upstream: {adress: x, ");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("adress"), "{error}");
        assert!(error.contains("upstream"), "{error}");
    }

    #[test]
    fn bad_values_name_the_key_and_the_value() {
        let text = MINIMAL.replace(
            r#"{address: "127.0.0.1:8088"}"#,
            r#"{address: "127.0.0.1:8088", connect_timeout: soon}"#,
        );
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("upstream.connect_timeout"), "{error}");
        assert!(error.contains("`soon`"), "{error}");

        let text = MINIMAL.replace("127.0.0.1:8088", "no-port-here");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("upstream.address"), "{error}");

        let text = MINIMAL.replace("127.0.0.1:9180", "127.0.0.1:8080");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("listen.admin"), "{error}");

        let text = MINIMAL.replace(
            "routes: {}",
            "routes: {}\nidentity_headers: {user: \"bad header\"}",
        );
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("identity_headers.user"), "{error}");

        let text = format!("{MINIMAL}sql: {{pool: {{per_caller_limit: 0}}}}\n");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("sql.pool.per_caller_limit"), "{error}");

        // charts.verify names the user and roles in identity headers Grafana's preset
        // does not have, and reads the upstream at its address.
        let verify = "charts: {verify: {user: datagate-verifier, roles: [Admin]}}\n";
        assert!(parse(&format!("{MINIMAL}{verify}")).is_ok());
        let text = format!("{MINIMAL}identity_headers: {{preset: grafana}}\n{verify}");
        let error = parse(&text).unwrap_err().to_string();
        assert!(
            error.contains("charts.verify") && error.contains("roles"),
            "{error}"
        );
        let text = MINIMAL.replace(
            "upstream: {address: \"127.0.0.1:8088\"}",
            "upstream: {address: \"127.0.0.1:8088\", tls: true, sni: superset.internal}",
        );
        let error = parse(&format!("{text}{verify}")).unwrap_err().to_string();
        assert!(
            error.contains("charts.verify") && error.contains("upstream.sni"),
            "{error}"
        );
        let text = format!("{MINIMAL}charts: {{verify: {{user: x, roles: [], refresh: soon}}}}\n");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("`soon`"), "{error}");
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.sql.pool.per_caller_limit, 8);
    }

    #[test]
    fn trace_export_is_off_by_default_and_its_settings_are_checked() {
        assert!(parse(MINIMAL).unwrap().telemetry.otlp.is_none());
        let otlp = |settings: &str| {
            parse(&format!(
                "{MINIMAL}telemetry:\n  otlp: {{endpoint: \"http://127.0.0.1:4318/v1/traces\"{settings}}}\n"
            ))
        };
        let config = otlp("").unwrap();
        let settings = config.telemetry.otlp.unwrap();
        assert_eq!(settings.protocol, "http/protobuf");
        assert_eq!(settings.service_name, "datagate");
        assert_eq!(settings.sample_ratio, 1.0);
        for (settings, key) in [
            (", protocol: grpc", "telemetry.otlp.protocol"),
            (", protocol: http/json", "telemetry.otlp.protocol"),
            (", sample_ratio: 1.5", "telemetry.otlp.sample_ratio"),
            (", sample_ratio: -0.1", "telemetry.otlp.sample_ratio"),
            (", service_name: \" \"", "telemetry.otlp.service_name"),
            (", timeout: 0s", "telemetry.otlp.timeout"),
            (", sampler: always", "sampler"),
        ] {
            let error = otlp(settings).unwrap_err().to_string();
            assert!(error.contains(key), "{settings}: {error}");
        }
        for endpoint in ["collector:4318", "ftp://collector/v1/traces", "not a url"] {
            let error = parse(&format!(
                "{MINIMAL}telemetry:\n  otlp: {{endpoint: \"{endpoint}\"}}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                error.contains("telemetry.otlp.endpoint"),
                "{endpoint}: {error}"
            );
        }
    }

    #[test]
    fn a_missing_section_is_named() {
        let text = MINIMAL.replace("routes: {}", "");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("routes"), "{error}");
    }
}
