//! The command line: `run` (default), `check`, `explain`, `test`, `token`, `migrate`.
//!
//! `main.rs` only parses arguments and calls these. Each command loads the one config file
//! the same way, so `check` passing means `run` will start and `explain` answers exactly as
//! the running proxy would.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::authn::{Authenticator, MintRequest, mint_token};
use crate::config::Config;
use crate::decision::{self, RequestHead};
use crate::http_error::HttpError;
use crate::principal::BasicRole;
use crate::route::RouteTable;
use crate::state::AppState;
use crate::state::build_snapshot_content;

#[derive(Debug, Parser)]
#[command(name = "datagate", version, about = "A policy sidecar for data APIs")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The configuration file (also accepted after the subcommand).
    #[arg(long, global = true, env = "DATAGATE_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy and the admin listener (the default command).
    Run(RunArgs),
    /// Validate the config, the casbin model and the policies; exit non-zero naming the first problem.
    Check,
    /// Decide one request without an upstream and print the decision as JSON.
    Explain(ExplainArgs),
    /// Mint a JWT with the config's HMAC key (for demos and tests).
    Token(TokenArgs),
    /// Run policy test suites (`<policy.directory>/tests/*.yaml` unless paths are given):
    /// each case decided as the proxy would, with no upstream; exits non-zero on a failure.
    Test(TestArgs),
    /// One-off migrations of policy files and the store.
    #[command(subcommand)]
    Migrate(MigrateCommand),
}

#[derive(Debug, Default, clap::Args)]
pub struct RunArgs {
    /// Take the listening socket over from a running datagate (graceful upgrade): start
    /// this, then send SIGQUIT to the old process; both use `shutdown.upgrade_socket`.
    #[arg(long, short = 'u')]
    pub upgrade: bool,
}

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Grant can_export_data, can_export_image and can_copy_clipboard to every role that
    /// has can_csv (policy files and store); idempotent.
    ExportPermissions {
        /// Print what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// One request to explain; also the JSON body of `POST /api/authz/explain`.
#[derive(Debug, clap::Args, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainArgs {
    /// A JWT (without `Bearer `); omit for an anonymous request.
    #[arg(long)]
    #[serde(default)]
    pub token: Option<String>,
    /// An API key, sent in the configured API-key header.
    #[arg(long)]
    #[serde(default)]
    pub api_key: Option<String>,
    #[arg(long, default_value = "GET")]
    #[serde(default = "default_method")]
    pub method: String,
    /// The request path, optionally with `?query`.
    #[arg(long)]
    pub path: String,
    /// The request body (for routes that read it).
    #[arg(long)]
    #[serde(default)]
    pub body: Option<String>,
    #[arg(long, default_value = "application/json")]
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// Further request headers, `Name: value` (repeatable): they go through the same
    /// header checks and token sources as at the proxy (a cookie, `X_Datagate_User`, …).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    #[serde(default)]
    pub headers: Vec<String>,
}

fn default_method() -> String {
    "GET".to_string()
}

fn default_content_type() -> String {
    "application/json".to_string()
}

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Test files, or directories of `*.yaml` test files.
    pub paths: Vec<PathBuf>,
    /// Also write the results as JUnit XML to this file.
    #[arg(long)]
    pub junit: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The `sub` claim (also the username unless other username claims are set).
    #[arg(long)]
    pub sub: String,
    /// Comma-separated roles, e.g. `Gamma,sql_lab`.
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    pub teams: Vec<String>,
    /// Basic role: Viewer, Editor or Admin.
    #[arg(long)]
    pub org_role: Option<BasicRole>,
    /// Lifetime, e.g. `15m`, `1h`.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Extra claims as a JSON object, e.g. `{"email":"a@example.com"}`.
    #[arg(long)]
    pub claims: Option<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("`{text}`: {error}"))
}

/// A command failed; the message is printed and the process exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("no config file given: pass `--config FILE` or set DATAGATE_CONFIG")]
    NoConfig,
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Startup(#[from] crate::state::StartupError),
    #[error("{0}")]
    Authn(#[from] crate::authn::AuthnError),
    #[error("{0}")]
    Routes(#[from] crate::route::RouteError),
    #[error("{0}")]
    Snapshot(#[from] crate::state::SnapshotError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Migrate(#[from] crate::migrate::MigrateError),
    #[error("{0}")]
    PolicyTest(#[from] crate::policy_test::PolicyTestError),
    #[error("{context}: {message}")]
    Other {
        context: &'static str,
        message: String,
    },
}

pub fn load_config(path: Option<&Path>) -> Result<Config, CliError> {
    let path = path.ok_or(CliError::NoConfig)?;
    Ok(Config::load(path)?)
}

/// `datagate check`: everything `run` would build, without binding ports.
pub fn check(config_path: Option<&Path>) -> Result<String, CliError> {
    let config = load_config(config_path)?;
    let authenticator = Authenticator::from_config(&config.auth, &config.base_dir)?;
    RouteTable::from_config(&config.routes)?;
    let content = build_snapshot_content(&config)?;
    let mut report = format!(
        "ok: config, model, {} policy lines and the RLS filters are valid (digest {})",
        content.policy.line_count(),
        content.digest
    );
    // A remote key set is fetched once, as `run` does before it is ready; failing to
    // reach the identity provider now is a warning (the config itself is valid).
    match command_runtime()?.block_on(authenticator.fetch_remote_keys_once()) {
        Ok(false) => {}
        Ok(true) => report.push_str("\nok: the identity provider's key set was fetched"),
        Err(reason) => report.push_str(&format!(
            "\nwarning: the identity provider's key set could not be fetched now ({reason}); `run` is not ready until it is"
        )),
    }
    if content.policy.uses_casbin_fallback() {
        report.push_str("\nwarning: the casbin model is not the shape the compiled index understands; decisions will use casbin's enforcer (much slower)");
    }
    for datasource in &config.datasources {
        if datasource.aws_iam.is_none() {
            continue;
        }
        if !config.aws.database_iam_auth {
            report.push_str(&format!(
                "\nwarning: datasource `{}` uses aws_iam but `aws.database_iam_auth` is off: its requests will be refused with \"{}\"",
                datasource.uid,
                crate::creds::IAM_AUTH_DISABLED
            ));
        } else if !config.upstream.tls && !config.aws.allow_plaintext_upstream {
            report.push_str(&format!(
                "\nwarning: datasource `{}` uses aws_iam but the upstream is plain HTTP: its requests will be refused (set `upstream.tls` or `aws.allow_plaintext_upstream`)",
                datasource.uid
            ));
        }
    }
    Ok(report)
}

/// `datagate explain`: the decision the proxy would make, as one JSON object.
pub fn explain(
    config_path: Option<&Path>,
    args: &ExplainArgs,
) -> Result<serde_json::Value, CliError> {
    let config = load_config(config_path)?;
    let state = AppState::build(config)?;
    Ok(command_runtime()?.block_on(async {
        // As `run` does before it is ready; without the keys the decision says so.
        if let Err(reason) = state.authenticator.fetch_remote_keys_once().await {
            tracing::warn!(%reason, "the identity provider's key set could not be fetched");
        }
        explain_request(&state, args).await
    }))
}

/// The request headers an explained request carries: `--token` as `Authorization:
/// Bearer`, `--api-key` in the configured header, `--content-type`, then each `--header`.
fn explain_headers(state: &AppState, args: &ExplainArgs) -> Result<http::HeaderMap, String> {
    let mut headers = http::HeaderMap::new();
    let mut add = |name: &str, value: &str| -> Result<(), String> {
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("`{}` is not a header name", name.trim()))?;
        let value = http::HeaderValue::from_str(value.trim())
            .map_err(|_| format!("the value of `{name}` is not a header value"))?;
        headers.append(name, value);
        Ok(())
    };
    if let Some(token) = &args.token {
        add("authorization", &format!("Bearer {token}"))?;
    }
    if let Some(api_key) = &args.api_key {
        add(state.authenticator.api_key_header(), api_key)?;
    }
    add("content-type", &args.content_type)?;
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("`--header {header}` is not `Name: value`"))?;
        add(name, value)?;
    }
    Ok(headers)
}

/// A runtime for a command's own I/O (fetching remote keys, the store).
fn command_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| CliError::Other {
            context: "command runtime",
            message: error.to_string(),
        })
}

/// `explain`: [`crate::decision::admit`] on a request described by arguments, traced.
/// The proxy makes the same call, so the answer is the proxy's, stage for stage (MCP
/// tool, SQL, results binding and credentials included).
pub async fn explain_request(state: &Arc<AppState>, args: &ExplainArgs) -> serde_json::Value {
    let snapshot = state.snapshot();
    let (raw_path, query) = match args.path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (args.path.as_str(), None),
    };
    let presented = match explain_headers(state, args) {
        Ok(headers) => decision::read_headers(state, &args.method, &headers),
        Err(message) => {
            return json!({"decision": "invalid", "status": 400, "reason": message});
        }
    };
    let head = RequestHead {
        method: &args.method,
        raw_path,
        query,
        headers: &presented,
        client_address: None,
    };
    let mut body = decision::GivenBody(args.body.as_deref().map(str::as_bytes));
    let options = decision::AdmitOptions {
        trace: true,
        ..Default::default()
    };
    let admitted = decision::admit(state, &snapshot, &head, &mut body, options).await;
    let (verdict, status, reason, forwarded) = match &admitted.verdict {
        decision::Verdict::Forward(forward) => (
            "allow",
            200,
            "allowed".to_string(),
            Some(json!({
                "query": forward.query,
                "body": forward.body.as_ref().map(|body| String::from_utf8_lossy(body).into_owned()),
                "database_credentials": forward.db_credentials.is_some(),
            })),
        ),
        decision::Verdict::Answer(_) => ("answer", 200, "answered by datagate".to_string(), None),
        decision::Verdict::Refuse(refusal) => {
            let error = HttpError::from(refusal);
            ("deny", error.status, refusal.to_string(), None)
        }
    };
    json!({
        "decision": verdict,
        "status": status,
        "reason": reason,
        "kind": admitted.refusal().and_then(|refusal| HttpError::from(refusal).kind),
        "route": admitted.route.name(),
        "canonical_path": admitted.canonical_path,
        "principal": admitted.principal,
        "checks": admitted.checks,
        "sql": admitted.statements,
        "forwarded": forwarded,
        "policy_revision": snapshot.revision,
    })
}

/// `datagate test`: the report (printed) and whether every case passed.
pub fn policy_test(
    config_path: Option<&Path>,
    args: &TestArgs,
) -> Result<(String, bool), CliError> {
    let config_path = config_path.ok_or(CliError::NoConfig)?;
    let report = crate::policy_test::run(config_path, &args.paths)?;
    if let Some(path) = &args.junit {
        let junit_error = |source| crate::policy_test::PolicyTestError::Junit {
            path: path.display().to_string(),
            source,
        };
        let xml = report.junit().map_err(junit_error)?;
        std::fs::write(path, xml).map_err(junit_error)?;
    }
    let passed = report.failed() == 0;
    Ok((report.render(), passed))
}

/// `datagate token`.
pub fn token(config_path: Option<&Path>, args: &TokenArgs) -> Result<String, CliError> {
    let config = load_config(config_path)?;
    let extra_claims = match &args.claims {
        None => serde_json::Map::new(),
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => {
                return Err(CliError::Other {
                    context: "--claims",
                    message: "must be a JSON object".to_string(),
                });
            }
            Err(error) => {
                return Err(CliError::Other {
                    context: "--claims",
                    message: error.to_string(),
                });
            }
        },
    };
    let request = MintRequest {
        subject: args.sub.clone(),
        roles: args.roles.clone(),
        teams: args.teams.clone(),
        org_role: args.org_role,
        ttl: args.ttl,
        extra_claims,
    };
    Ok(mint_token(&config.auth, &config.base_dir, &request)?)
}

/// `datagate migrate export-permissions [--dry-run]`.
pub fn migrate_export_permissions(
    config_path: Option<&Path>,
    dry_run: bool,
) -> Result<String, CliError> {
    let config = load_config(config_path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| CliError::Other {
            context: "migration runtime",
            message: error.to_string(),
        })?;
    let report = runtime.block_on(crate::migrate::export_permissions(&config, dry_run))?;
    Ok(report.render())
}

/// Sets up datagate's own logs: `DATAGATE_LOG` filters (default `info`); text is
/// coloured only when stderr is a terminal; `json` writes one object a line.
pub fn init_logging(format: crate::config::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("DATAGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let _ = match format {
        crate::config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            // A request's lines carry its trace id (`"span": {"trace_id": …}`).
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        crate::config::LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// `datagate run`: start everything and serve until a shutdown signal.
pub fn run(config_path: Option<&Path>, args: &RunArgs) -> Result<(), CliError> {
    let config = load_config(config_path)?;
    init_logging(config.logging.format);
    let upstream = crate::proxy::resolve_upstream(&config.upstream.address).map_err(|error| {
        CliError::Other {
            context: "upstream.address",
            message: error.to_string(),
        }
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("datagate-admin")
        .enable_all()
        .build()
        .map_err(|error| CliError::Other {
            context: "admin runtime",
            message: error.to_string(),
        })?;
    let store = match &config.store {
        Some(store_config) => {
            let store =
                runtime.block_on(crate::store::Store::connect(store_config, &config.base_dir))?;
            let contents = runtime.block_on(store.load())?;
            tracing::info!(
                backend = store.backend().as_str(),
                store_revision = contents.revision,
                "grants store connected"
            );
            Some((store, contents))
        }
        None => None,
    };
    let state = AppState::build_with_store(config, store)?;
    state.confirm_store_current();
    if state.config.aws.database_iam_auth {
        let broker = runtime.block_on(crate::creds::CredentialBroker::new(
            state.config.aws.clone(),
            state.metrics.clone(),
        ));
        let _ = state.credentials.set(Arc::new(broker));
        tracing::info!("AWS IAM database authentication enabled");
    }
    let verifier =
        crate::dataset_verify::DatasetVerifier::new(&state.config).map_err(|(key, message)| {
            CliError::Other {
                context: "charts.verify",
                message: format!("`{key}` {message}"),
            }
        })?;
    if let Some(verifier) = verifier {
        let _ = state.dataset_verifier.set(verifier);
        tracing::info!("mapped datasets are verified against the upstream (charts.verify)");
    }
    if let Some(otlp) = &state.config.telemetry.otlp {
        let telemetry = crate::telemetry::Telemetry::start(
            otlp,
            &state.config.base_dir,
            state.metrics.trace_spans.clone(),
        )
        .map_err(|error| CliError::Other {
            context: "telemetry.otlp",
            message: error.to_string(),
        })?;
        let _ = state.telemetry.set(telemetry);
        tracing::info!(
            endpoint = %otlp.endpoint,
            sample_ratio = otlp.sample_ratio,
            "OpenTelemetry trace export enabled"
        );
    }
    let snapshot = state.snapshot();
    if snapshot.policy.uses_casbin_fallback() {
        tracing::warn!(
            "the casbin model is not the shape the compiled index understands: every decision is made by casbin's enforcer, which is orders of magnitude slower"
        );
    }
    tracing::info!(
        revision = snapshot.revision,
        digest = snapshot.policy.digest(),
        lines = snapshot.policy.line_count(),
        "policy loaded"
    );

    let _watcher = if state.config.policy.watch {
        Some(
            crate::reload::watch_policy_files(state.clone()).map_err(|error| CliError::Other {
                context: "policy.watch",
                message: error.to_string(),
            })?,
        )
    } else {
        None
    };
    if state.config.policy.watch {
        crate::reload::poll_policy_files(state.clone(), state.config.policy.poll_interval)
            .map_err(|error| CliError::Other {
                context: "policy.poll_interval",
                message: error.to_string(),
            })?;
    }
    crate::reload::reload_on_sighup(state.clone()).map_err(|error| CliError::Other {
        context: "SIGHUP handler",
        message: error.to_string(),
    })?;
    start_admin_listener(state.clone(), runtime)?;
    crate::lifecycle::probe_until_accepting(state.clone(), state.config.listen.proxy);
    run_proxy(state, upstream, args.upgrade);
    Ok(())
}

fn start_admin_listener(
    state: Arc<AppState>,
    runtime: tokio::runtime::Runtime,
) -> Result<(), CliError> {
    let address = state.config.listen.admin;
    let listener = {
        let _in_runtime = runtime.enter();
        bind_admin(address)
    }
    .map_err(|error| CliError::Other {
        context: "listen.admin",
        message: format!("cannot bind `{address}`: {error}"),
    })?;
    std::thread::Builder::new()
        .name("datagate-admin".to_string())
        .spawn(move || {
            runtime.block_on(async move {
                crate::replication::start(state.clone());
                state.authenticator.start_key_refresh(state.metrics.clone());
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        tracing::info!(%address, "admin listener ready");
                        if let Err(error) = axum::serve(listener, crate::admin::router(state)).await
                        {
                            tracing::error!(%error, "admin listener stopped");
                        }
                    }
                    Err(error) => tracing::error!(%error, "admin listener failed"),
                }
            });
        })
        .map_err(|error| CliError::Other {
            context: "admin thread",
            message: error.to_string(),
        })?;
    Ok(())
}

/// The admin port with `SO_REUSEPORT`, so a new process in a graceful upgrade can bind it
/// while the old one still serves it.
fn bind_admin(address: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(address)?;
    let listener = socket.listen(1024)?;
    listener.into_std()
}

fn run_proxy(state: Arc<AppState>, upstream: std::net::SocketAddr, upgrade: bool) {
    let listen = &state.config.listen;
    let threads = if listen.threads == 0 {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    } else {
        listen.threads
    };
    let shutdown = &state.config.shutdown;
    let server_conf = pingora::server::configuration::ServerConf {
        // pingora sleeps this long after it stops accepting; the drain watcher
        // (`lifecycle`) ends the process sooner once no request is in flight.
        grace_period_seconds: Some(shutdown.grace_period.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: shutdown.upgrade_socket.clone(),
        ..crate::server::server_conf(threads, state.config.upstream.keepalive_pool_size)
    };
    let options = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(Some(options), server_conf);
    // With `--upgrade` this waits for the old process to hand its listening socket over.
    server.bootstrap();
    let proxy_address = listen.proxy.to_string();
    let limits = crate::connection_guard::ConnectionLimits::new(
        listen.max_connections,
        listen.max_connections_per_ip,
        state.metrics.connections_refused.clone(),
        state.metrics.connections_open.clone(),
    );
    let proxy = pingora::proxy::http_proxy(
        &server.configuration,
        crate::proxy::DatagateProxy::new(state.clone(), upstream),
    );
    let guarded = crate::connection_guard::GuardedApp::new(proxy, limits, listen.header_timeout);
    let mut service =
        pingora::services::listening::Service::new("datagate-proxy".to_string(), guarded);
    service.add_tcp(&proxy_address);
    server.add_service(service);
    tracing::info!(address = %proxy_address, upgrade, "proxy starting");
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(crate::lifecycle::DrainingSignals { state }),
    });
}
