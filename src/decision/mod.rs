//! `admit`: the request path as one straight line of plain functions, free of pingora.
//! The proxy, `datagate explain`, `datagate test` and the tests all call [`admit`], so
//! what `explain` says is what the proxy does.
//!
//! ```text
//! admit(state, snapshot, head, body) -> Decision
//!   identify      stale grants → credentials → principal → canonical path → route
//!   (answer)      GET /api/me/permissions is answered here, never forwarded
//!   read body     only when the route inspects it, bounded (413 over the limit)
//!   parse once    ParsedRequest: query pairs, one JSON value (repeated and case-folded
//!                 keys refused) or form pairs — every later stage reads this
//!   MCP tool      a `tools/call` (or a proxy call naming one) switches to the tool's
//!                 own route and is read as one canonical call, which is forwarded
//!   authorize     role → datasource → table page → export               → Permit
//!   rewrite       SQL locations → templating / write options → verified RLS rewrite
//!   results       who owns a SQL Lab `client_id` (bound on execute, checked on read)
//!   credentials   STS-backed database tokens
//!   forward       the canonical request: a JSON body re-serialised from the checked
//!                 value, rewritten query string and form values re-encoded in place
//! ```
//!
//! Every refusal is a [`Refusal`], rendered to HTTP in one place ([`crate::http_error`]).

mod authorize;
pub mod callers;
mod chart;
mod creds;
mod mcp;
mod permissions;
mod refusal;
pub mod request;
pub mod results;
mod sql;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

pub use authorize::{
    CheckOutcome, Identified, Permit, asserted_principal, authenticate, authorize, identify,
    tilde_decode,
};
pub use creds::database_credentials;
pub use mcp::{McpCall, select_mcp_tool};
pub use permissions::{
    CallerPermissions, DatasourceAccess, ExportPermissions, GrantedPermission, PERMISSIONS_PATH,
    PERMISSIONS_ROUTE, caller_permissions, export_refusal, is_permissions_request,
    permissions_route_label,
};
pub use refusal::Refusal;
pub use sql::{
    QUERY_ACTION, SqlJob, SqlPlan, SqlRewrite, StatementRewrite, finish_sql, plan_sql, pool_caller,
};

use crate::chart_data::ChartDataError;
use crate::metrics::RouteLabel;
use crate::principal::Principal;
use crate::state::{AppState, PolicySnapshot};
use request::{ParsedBody, ParsedRequest};

/// The parts of an HTTP request the decision depends on, borrowed from whatever server
/// received it.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// The path exactly as received, without the query string.
    pub raw_path: &'a str,
    pub query: Option<&'a str>,
    /// The request's headers as [`read_headers`] read them.
    pub headers: &'a PresentedHeaders,
    /// The connection's peer (`None` outside the proxy): an anonymous caller's share of
    /// the SQL pool is counted by it.
    pub client_address: Option<std::net::IpAddr>,
}

/// What a request's headers present, read once by [`read_headers`] so that every
/// caller of [`admit`] (proxy, `explain`, `datagate test`) applies the same header rules.
/// Owned, so the proxy can read the body afterwards.
#[derive(Debug, Clone, Default)]
pub struct PresentedHeaders {
    /// The `Authorization` value the token sources found (a cookie or named header
    /// becomes `Bearer …`; a browser session too).
    pub authorization: Option<String>,
    pub api_key: Option<String>,
    pub content_type: Option<String>,
    /// The request asks to switch protocols (`Upgrade`).
    pub upgrade: bool,
    /// Why the headers are refused, if they are: [`admit`] refuses first.
    problem: Option<HeadersProblem>,
    /// A caller stated instead of proven; only `datagate test` sets it
    /// ([`PresentedHeaders::stating`]).
    asserted_caller: Option<AssertedCaller>,
}

/// Who a policy test says is calling, in place of a credential (`datagate test` states
/// callers rather than minting tokens). It becomes a [`Principal`] the way a verified
/// token does and is then enriched like one (store identities, policy memberships), so
/// every later stage of [`admit`] is the proxy's. Nothing on the request path builds one.
#[derive(Debug, Clone)]
pub enum AssertedCaller {
    /// Claims as a verified token would carry them, mapped by `auth.jwt.claims`.
    Claims(serde_json::Map<String, serde_json::Value>),
    /// The principal the claim mapping would produce (user or service account).
    Principal(Principal),
}

#[derive(Debug, Clone)]
enum HeadersProblem {
    Header(crate::proxy::headers::HeaderError),
    Authentication(crate::authn::AuthnError),
}

impl PresentedHeaders {
    /// A request presenting exactly these (no header refusals): tests and tools.
    pub fn given(
        authorization: Option<String>,
        api_key: Option<String>,
        content_type: Option<String>,
    ) -> PresentedHeaders {
        PresentedHeaders {
            authorization,
            api_key,
            content_type,
            upgrade: false,
            problem: None,
            asserted_caller: None,
        }
    }

    /// The same headers with `caller` stated in place of any credential (`datagate
    /// test`; the header checks still apply).
    pub fn stating(mut self, caller: AssertedCaller) -> PresentedHeaders {
        self.asserted_caller = Some(caller);
        self
    }

    pub fn asserted_caller(&self) -> Option<&AssertedCaller> {
        self.asserted_caller.as_ref()
    }
}

/// Reads a request's headers the one way datagate does: a credential header that is
/// repeated, not text, or spelled with `_` for `-` is refused (WSGI servers read `_` and
/// `-` alike); then the configured token sources, in order, find the credential.
pub fn read_headers(state: &AppState, method: &str, headers: &http::HeaderMap) -> PresentedHeaders {
    let authenticator = &state.authenticator;
    let text = |value: Option<&http::HeaderValue>| {
        value
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let mut presented = PresentedHeaders {
        authorization: None,
        api_key: text(headers.get(authenticator.token_sources().api_key_header_name())),
        content_type: text(headers.get(http::header::CONTENT_TYPE)),
        upgrade: headers.contains_key(http::header::UPGRADE),
        problem: None,
        asserted_caller: None,
    };
    let mut credential_headers: smallvec::SmallVec<[&str; 4]> = smallvec::smallvec![
        http::header::AUTHORIZATION.as_str(),
        authenticator.api_key_header(),
    ];
    credential_headers.extend(authenticator.token_sources().header_names());
    if let Err(error) = crate::proxy::headers::check_client_headers(headers, &credential_headers) {
        presented.problem = Some(HeadersProblem::Header(error));
        return presented;
    }
    match authenticator.presented(method, headers) {
        Ok(credential) => presented.authorization = credential.authorization,
        Err(error) => presented.problem = Some(HeadersProblem::Authentication(error)),
    }
    presented
}

/// Why a body could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyReadError {
    TooLarge,
    Unreadable,
}

/// Where [`admit`] gets the body from, only when the route inspects it: the proxy reads
/// it from the connection, `explain` and `datagate test` hand over bytes.
#[async_trait]
pub trait BodySource: Send {
    /// The whole body; more than `limit` bytes is [`BodyReadError::TooLarge`].
    async fn read(&mut self, limit: usize) -> Result<Bytes, BodyReadError>;
}

/// A body given as bytes (`None`: no body).
pub struct GivenBody<'a>(pub Option<&'a [u8]>);

#[async_trait]
impl BodySource for GivenBody<'_> {
    async fn read(&mut self, limit: usize) -> Result<Bytes, BodyReadError> {
        match self.0 {
            Some(body) if body.len() > limit => Err(BodyReadError::TooLarge),
            Some(body) => Ok(Bytes::copy_from_slice(body)),
            None => Ok(Bytes::new()),
        }
    }
}

/// What [`admit`] should record beyond the verdict.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmitOptions {
    /// Record every check with its outcome (`explain`, `datagate test`).
    pub trace: bool,
    /// Record when each stage ran ([`Decision::stages`], for OpenTelemetry spans).
    pub time_stages: bool,
}

/// A stage of the request path, as traces name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Authenticate,
    Route,
    ReadBody,
    Authorize,
    Rewrite,
    Results,
    Credentials,
    /// The proxy's call to the upstream (timed by the proxy, not by [`admit`]).
    Upstream,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Authenticate => "authenticate",
            Stage::Route => "route",
            Stage::ReadBody => "read_body",
            Stage::Authorize => "authorize",
            Stage::Rewrite => "rewrite",
            Stage::Results => "results",
            Stage::Credentials => "credentials",
            Stage::Upstream => "upstream",
        }
    }
}

/// When one stage ran, and whether it refused the request.
#[derive(Debug, Clone, Copy)]
pub struct StageTiming {
    pub stage: Stage,
    pub started: Instant,
    pub ended: Instant,
    pub refused: bool,
}

/// Times stages only when [`AdmitOptions::time_stages`] asks: otherwise no clock is read.
#[derive(Debug, Default)]
pub struct StageClock {
    enabled: bool,
    timings: Vec<StageTiming>,
}

impl StageClock {
    fn new(enabled: bool) -> StageClock {
        StageClock {
            enabled,
            timings: Vec::new(),
        }
    }

    fn start(&self) -> Option<Instant> {
        self.enabled.then(Instant::now)
    }

    fn stop<T, E>(&mut self, stage: Stage, started: Option<Instant>, result: &Result<T, E>) {
        if let Some(started) = started {
            self.timings.push(StageTiming {
                stage,
                started,
                ended: Instant::now(),
                refused: result.is_err(),
            });
        }
    }
}

/// What to do with a request.
#[derive(Debug)]
pub enum Verdict {
    /// Send the canonical request upstream.
    Forward(Box<Forward>),
    /// datagate answers the request itself (it never reaches the upstream).
    Answer(Answer),
    /// Refuse; nothing reaches the upstream.
    Refuse(Refusal),
}

/// The request the upstream receives, and the proof it may.
#[derive(Debug)]
pub struct Forward {
    pub permit: Permit,
    /// Replaces the query string (`None`: the original).
    pub query: Option<String>,
    /// Replaces the body (`None`: the original, or no body).
    pub body: Option<Bytes>,
    pub db_credentials: Option<crate::creds::DbCredentials>,
    /// Ids the upstream's response will name that become the caller's.
    pub response_binding: Option<results::ResponseBinding>,
}

/// A response datagate gives itself.
#[derive(Debug)]
pub enum Answer {
    Permissions(Box<CallerPermissions>),
}

/// The decision on one request, with what `explain`, metrics and the audit line need.
#[derive(Debug)]
pub struct Decision {
    pub verdict: Verdict,
    /// The route's name (`unmatched` when none matched or identification failed).
    pub route: Arc<RouteLabel>,
    pub principal: Option<Arc<Principal>>,
    pub canonical_path: Option<Arc<str>>,
    /// Set on MCP routes: refusals are answered as JSON-RPC errors with this id.
    pub mcp: Option<McpCall>,
    /// Every check with its outcome, when traced.
    pub checks: Vec<CheckOutcome>,
    /// Every SQL statement and its rewrite.
    pub statements: Vec<StatementRewrite>,
    /// What chart-data row-level security checked and injected.
    pub chart_data: Option<crate::chart_data::ChartRewrite>,
    /// Time spent in row-level security, when the route carries SQL.
    pub sql_time: Option<Duration>,
    /// The body was read from the client (so `Expect: 100-continue` was answered).
    pub body_read: bool,
    /// The route lets an `Upgrade` through (after every check passed).
    pub allows_upgrade: bool,
    pub policy_revision: u64,
    /// When each stage ran, when [`AdmitOptions::time_stages`] asked.
    pub stages: Vec<StageTiming>,
}

impl Decision {
    pub fn refusal(&self) -> Option<&Refusal> {
        match &self.verdict {
            Verdict::Refuse(refusal) => Some(refusal),
            _ => None,
        }
    }
}

/// The longest path and query string datagate forwards; a rewrite that makes the query
/// string longer is refused rather than sent as a URI the upstream may not parse.
pub const MAX_FORWARDED_URI_BYTES: usize = 32 * 1024;

/// Decides one request against one snapshot. Never touches the upstream.
pub async fn admit(
    state: &AppState,
    snapshot: &Arc<PolicySnapshot>,
    head: &RequestHead<'_>,
    body: &mut dyn BodySource,
    options: AdmitOptions,
) -> Decision {
    let mut decision = Decision {
        verdict: Verdict::Refuse(Refusal::BodyUnreadable),
        route: RouteLabel::unmatched(),
        principal: None,
        canonical_path: None,
        mcp: None,
        checks: Vec::new(),
        statements: Vec::new(),
        chart_data: None,
        sql_time: None,
        body_read: false,
        allows_upgrade: false,
        policy_revision: snapshot.revision,
        stages: Vec::new(),
    };
    let mut clock = StageClock::new(options.time_stages);
    if let Some(problem) = &head.headers.problem {
        decision.verdict = Verdict::Refuse(match problem {
            HeadersProblem::Header(error) => Refusal::from(error.clone()),
            HeadersProblem::Authentication(error) => Refusal::Authentication(error.clone()),
        });
        return decision;
    }
    let identified = match identify(state, snapshot, head, &mut clock) {
        // A kid no key set holds may be the IdP's new key: one bounded, rate-limited JWKS
        // refetch, then one more try.
        Err(Refusal::Authentication(crate::authn::AuthnError::UnknownKey))
            if Box::pin(state.authenticator.refetch_for_unknown_kid()).await =>
        {
            identify(state, snapshot, head, &mut clock)
        }
        other => other,
    };
    let mut identified = match identified {
        Ok(identified) => identified,
        Err(refusal) => {
            decision.verdict = Verdict::Refuse(refusal);
            decision.stages = clock.timings;
            return decision;
        }
    };
    decision.route = identified.route_label();
    decision.principal = Some(identified.caller.principal.clone());
    decision.canonical_path = Some(identified.canonical_path.clone());
    if is_permissions_request(head, &identified) {
        decision.route = permissions_route_label();
        decision.verdict = Verdict::Answer(Answer::Permissions(Box::new(caller_permissions(
            snapshot,
            &identified.caller.principal,
        ))));
        decision.stages = clock.timings;
        return decision;
    }
    decision.verdict = match decide(
        state,
        snapshot,
        head,
        body,
        options,
        &mut identified,
        &mut decision,
        &mut clock,
    )
    .await
    {
        Ok(forward) => Verdict::Forward(Box::new(forward)),
        Err(refusal) => Verdict::Refuse(refusal),
    };
    // The tool's own route decides an MCP call, and is what metrics and audit name.
    decision.route = identified.route_label();
    decision.allows_upgrade = identified
        .route
        .as_ref()
        .is_some_and(|(route, _)| route.allows_upgrade());
    // An upgraded connection is a tunnel nothing inspects: only where the route allows
    // it, and only after every check passed.
    if head.headers.upgrade
        && !decision.allows_upgrade
        && matches!(decision.verdict, Verdict::Forward(_))
    {
        decision.verdict = Verdict::Refuse(Refusal::from(
            crate::proxy::headers::HeaderError::UpgradeNotAllowed {
                route: decision.route.name().to_string(),
            },
        ));
    }
    decision.stages = clock.timings;
    decision
}

/// Everything after identification, as one result.
#[allow(clippy::too_many_arguments)]
async fn decide(
    state: &AppState,
    snapshot: &Arc<PolicySnapshot>,
    head: &RequestHead<'_>,
    body: &mut dyn BodySource,
    options: AdmitOptions,
    identified: &mut Identified<'_>,
    decision: &mut Decision,
    clock: &mut StageClock,
) -> Result<Forward, Refusal> {
    let needs_body = identified.needs_body();
    let limit = state.routes.max_body_bytes();
    let body_bytes = if needs_body {
        let started = clock.start();
        let bytes = body.read(limit).await.map_err(|error| match error {
            BodyReadError::TooLarge => Refusal::BodyTooLarge {
                route: identified.route_name().to_string(),
                limit,
            },
            BodyReadError::Unreadable => Refusal::BodyUnreadable,
        });
        clock.stop(Stage::ReadBody, started, &bytes);
        decision.body_read = true;
        Some(bytes?)
    } else {
        None
    };
    if mcp::is_mcp(identified) {
        decision.mcp = Some(McpCall::default());
    }
    let started = clock.start();
    let permit = (|| {
        let mut request = ParsedRequest::parse(
            head.query,
            head.headers.content_type.as_deref(),
            body_bytes.as_deref(),
        )?;
        if let Some(call) = decision.mcp.as_mut()
            && let Some(canonical) = select_mcp_tool(identified, &request, call)?
        {
            request = canonical;
        }
        let trace = options.trace.then_some(&mut decision.checks);
        let permit = authorize(snapshot, identified, head, &request, trace)?;
        Ok::<_, Refusal>((request, permit))
    })();
    clock.stop(Stage::Authorize, started, &permit);
    let (request, permit) = permit?;

    let rewrites = identified.carries_sql()
        || identified
            .route
            .as_ref()
            .is_some_and(|(route, _)| route.chart_data().is_some());
    let rewritten = if rewrites {
        let started = clock.start();
        let trace = options.trace.then_some(&mut decision.checks);
        // Boxed, like every rare await here: an async fn's state is as large as its
        // largest await, and pingora moves the request's futures between its phases.
        let rewritten = Box::pin(rewrite_sql(
            state,
            snapshot,
            head,
            identified,
            &permit,
            &request,
            trace,
            &mut decision.sql_time,
        ))
        .await;
        clock.stop(Stage::Rewrite, started, &rewritten);
        rewritten
    } else {
        Ok(Rewrites::default())
    };
    let Rewrites {
        query,
        mut forwarded_body,
        statements,
        chart_data,
    } = rewritten?;
    decision.statements = statements;
    decision.chart_data = chart_data;
    // Whatever datagate inspected as JSON goes upstream as datagate read it.
    if forwarded_body.is_none()
        && let ParsedBody::Json(value) = &request.body
    {
        // A failure refuses: the original bytes are not what was checked.
        let canonical = serde_json::to_vec(value).map_err(|_| Refusal::BodyUnreadable)?;
        forwarded_body = Some(Bytes::from(canonical));
    }
    // A call made through a proxy tool goes upstream as that proxy call again.
    if let Some(call) = &decision.mcp
        && let Some(body) = forwarded_body.take()
    {
        forwarded_body = Some(mcp::forwarded_body(call, body)?);
    }
    let forwarded_query = query.as_deref().or(head.query).unwrap_or_default();
    if identified.canonical_path.len() + forwarded_query.len() + 1 > MAX_FORWARDED_URI_BYTES {
        return Err(Refusal::UriTooLong {
            limit: MAX_FORWARDED_URI_BYTES,
        });
    }
    if results::applies(identified) {
        let started = clock.start();
        let owners = Box::pin(results::check(state, identified, &permit, &request)).await;
        clock.stop(Stage::Results, started, &owners);
        owners?;
    }
    let response_binding = results::response_binding(identified, &permit);
    let started = clock.start();
    let sql_datasources = decision
        .statements
        .iter()
        .map(|statement| statement.datasource.as_str());
    let db_credentials = database_credentials(state, snapshot, &permit, sql_datasources).await;
    // Only a request whose datasource uses IAM authentication has this stage.
    if !matches!(db_credentials, Ok(None)) {
        clock.stop(Stage::Credentials, started, &db_credentials);
    }
    let db_credentials = db_credentials?;
    Ok(Forward {
        permit,
        query,
        body: forwarded_body,
        db_credentials,
        response_binding,
    })
}

/// What row-level security made of a request's SQL and chart data.
#[derive(Default)]
struct Rewrites {
    query: Option<String>,
    forwarded_body: Option<Bytes>,
    statements: Vec<StatementRewrite>,
    chart_data: Option<crate::chart_data::ChartRewrite>,
}

/// Stage 6: the route's SQL rewritten on the SQL pool, and chart data's filters injected.
/// `sql_time` is set whenever row-level security ran, refused or not.
#[allow(clippy::too_many_arguments)]
async fn rewrite_sql(
    state: &AppState,
    snapshot: &Arc<PolicySnapshot>,
    head: &RequestHead<'_>,
    identified: &Identified<'_>,
    permit: &Permit,
    request: &ParsedRequest,
    mut trace: Option<&mut Vec<CheckOutcome>>,
    sql_time: &mut Option<Duration>,
) -> Result<Rewrites, Refusal> {
    let mut statements = Vec::new();
    let mut chart_data = None;

    let mut query = None;
    let mut forwarded_body = None;
    let plan = if identified.carries_sql() {
        plan_sql(snapshot, identified, permit, request, trace.as_deref_mut())?
    } else {
        None
    };
    if let Some(plan) = plan {
        // Parsing and rewriting run on the bounded SQL pool, not on this (I/O) thread;
        // a full queue refuses at once with `sql_busy`. Cached rewrites are read here.
        let started = Instant::now();
        let limits = state.config.sql.rewrite_limits();
        let results = match plan.cached(snapshot, permit.principal(), limits) {
            Some(results) => Ok(results),
            None => {
                let job = plan.job(snapshot, permit.shared_principal(), limits);
                let caller = pool_caller(permit.principal(), head.client_address);
                state
                    .sql_pool
                    .run(&caller, plan.largest_statement(), move || job.run())
                    .await
            }
        };
        *sql_time = Some(started.elapsed());
        let rewrite = finish_sql(
            plan,
            results.map_err(Refusal::SqlPool)?,
            request,
            trace.as_deref_mut(),
        )?;
        query = rewrite.query;
        forwarded_body = rewrite.body.map(Bytes::from);
        statements = rewrite.statements;
    }
    if identified
        .route
        .as_ref()
        .is_some_and(|(route, _)| route.chart_data().is_some())
    {
        let started = Instant::now();
        let limits = state.config.sql.rewrite_limits();
        let verifier = state.dataset_verifier.get();
        let traced_before = trace.as_ref().map(|trace| trace.len());
        let mut result = chart::rewrite_chart_data(
            &state.config.charts,
            verifier,
            head.method,
            snapshot,
            identified,
            permit,
            request,
            limits,
            trace.as_deref_mut(),
        );
        if let (
            Err(Refusal::ChartData(ChartDataError::VerificationPending { dataset })),
            Some(verifier),
        ) = (&result, verifier)
            && let Some(mapping) = state.config.charts.dataset(*dataset)
        {
            // Read from the upstream once per `refresh`, then decided again with a verdict.
            verifier
                .verify(&snapshot.rls, mapping, limits, &state.metrics)
                .await?;
            if let (Some(trace), Some(length)) = (trace.as_deref_mut(), traced_before) {
                trace.truncate(length);
            }
            result = chart::rewrite_chart_data(
                &state.config.charts,
                Some(verifier),
                head.method,
                snapshot,
                identified,
                permit,
                request,
                limits,
                trace,
            );
        }
        *sql_time = Some(started.elapsed());
        let outcome = result?;
        if outcome.body.is_some() {
            forwarded_body = outcome.body;
        }
        chart_data = outcome.rewrite;
    }
    Ok(Rewrites {
        query,
        forwarded_body,
        statements,
        chart_data,
    })
}
