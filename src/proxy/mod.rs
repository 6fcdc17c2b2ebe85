//! The pingora `ProxyHttp` implementation: thin glue from pingora's phases to
//! [`crate::decision::admit`].
//!
//! - `request_filter`: [`headers::check_client_headers`] and the token sources, then
//!   [`crate::decision::admit`] with the connection as its body source, then
//!   [`headers::check_upgrade`]; a refusal (or datagate's own answer,
//!   `/api/me/permissions`) is written here by [`write_json`], so the upstream never sees
//!   a refused request. `fail_to_proxy` renders pingora's own failures the same way.
//! - `upstream_peer`: the configured upstream with its timeouts.
//! - `upstream_request_filter`: canonical path, then [`HeaderPlan::prepare_upstream_request`]:
//!   protected client headers removed, identity, database-credential and forwarding
//!   headers written.
//! - `response_filter` / `response_body_filter`: the export guard on what comes back.
//! - `logging`: metrics and the audit line.
//!
//! With `telemetry.otlp` set, each phase also feeds the request's
//! [`crate::telemetry::RequestTrace`]: started in `request_filter`, the decision's stages
//! recorded after `admit`, the `upstream` span (and the one `traceparent` the upstream
//! gets) in `upstream_request_filter`, ended in `response_filter` and `logging`.

mod body;
mod forward;
pub(crate) mod headers;

use std::borrow::Cow;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, Session};
use pingora::proxy::ProxyHttp;
use pingora::{Error, ErrorType, Result};
use tracing::Instrument as _;

use crate::audit::AuditEvent;
use crate::decision::{self, Permit, Refusal, RequestHead, Verdict};
use crate::http_error::HttpError;
use crate::state::AppState;

pub use headers::{
    HeaderError, HeaderPlan, IdentityHeaderNames, check_client_headers, encode_identity_value,
    normalized_name, replace_db_credential_headers,
};

/// Splits `host:port` and checks both parts; used by config validation.
pub fn upstream_host_port(address: &str) -> std::result::Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("`{address}` must be `host:port`"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{port}` in `{address}` is not a port number"))?;
    if host.is_empty() || port == 0 {
        return Err(format!(
            "`{address}` must be `host:port` with a non-zero port"
        ));
    }
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
    ))
}

/// Resolves the upstream once at start-up (pingora would resolve per peer, on the request path).
pub fn resolve_upstream(address: &str) -> std::io::Result<SocketAddr> {
    address.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("upstream `{address}` resolved to no address"),
        )
    })
}

/// How long a refused request's unread body is drained before the connection closes.
const LINGER_ON_REFUSAL: std::time::Duration = std::time::Duration::from_secs(2);

pub struct DatagateProxy {
    state: Arc<AppState>,
    upstream: SocketAddr,
    sni: String,
    headers: HeaderPlan,
    /// Upstream connections for bodies pingora cannot replay ([`forward`]).
    connector: pingora::connectors::http::Connector,
}

impl DatagateProxy {
    pub fn new(state: Arc<AppState>, upstream: SocketAddr) -> DatagateProxy {
        // The server name matters only to TLS: a plain-HTTP peer gets an empty one, which
        // it clones per request without allocating.
        let sni = if state.config.upstream.tls {
            state.config.upstream.sni.clone().unwrap_or_else(|| {
                upstream_host_port(&state.config.upstream.address)
                    .map(|(host, _)| host)
                    .unwrap_or_default()
            })
        } else {
            String::new()
        };
        let headers = HeaderPlan::new(&state.config);
        DatagateProxy {
            state,
            upstream,
            sni,
            headers,
            connector: pingora::connectors::http::Connector::new(None),
        }
    }
}

/// Per-request state carried between pingora's phases.
pub struct RequestContext {
    started: Instant,
    /// Counts this request in `datagate_requests_in_flight` until the context drops.
    _in_flight: crate::metrics::InFlight,
    /// When the request went upstream, until its response head is timed.
    upstream_started: Option<Instant>,
    permit: Option<Permit>,
    /// Row-level security's replacements for the query string and the body.
    rewritten_query: Option<String>,
    rewritten_body: Option<Bytes>,
    body_replaced: bool,
    /// The body was read (and any `Expect: 100-continue` answered) by datagate.
    body_read: bool,
    /// Filled for every decided request; `logging` turns it into metrics and audit.
    outcome: Option<Outcome>,
    /// The JSON-RPC call on an MCP route: refusals are answered as JSON-RPC errors.
    mcp: Option<decision::McpCall>,
    /// The upstream response was an export the caller may not make: its body is
    /// replaced by this refusal.
    refused_response_body: Option<Bytes>,
    /// The snapshot the request was decided against (the response guard decides with it).
    snapshot: Option<Arc<crate::state::PolicySnapshot>>,
    /// IAM database credentials for the upstream.
    db_credentials: Option<crate::creds::DbCredentials>,
    /// Results ids the response binds to the caller, and the response held back until
    /// it is complete (see `decision::results`).
    response_binding: Option<decision::results::ResponseBinding>,
    held_response: Option<Vec<u8>>,
    /// The request's spans, when traces are exported (boxed: the context is moved between
    /// pingora's phases, and stays one pointer wide when tracing is off).
    trace: Option<Box<crate::telemetry::RequestTrace>>,
}

struct Outcome {
    /// Who and what was refused; an allowed request's audit line reads these from its
    /// permit, and only when the line is written (most deployments audit refusals only).
    refused: Option<RefusedRequest>,
    status: u16,
    reason: Cow<'static, str>,
    revision: u64,
    /// Allowed, but the response-side export guard refused what came back.
    refused_response: bool,
}

struct RefusedRequest {
    method: String,
    path: String,
    route: String,
    user: String,
    roles: Vec<String>,
}

#[async_trait]
impl ProxyHttp for DatagateProxy {
    type CTX = RequestContext;

    /// No downstream modules. pingora's default adds its response-compression module,
    /// disabled (level 0): it would compress nothing, yet every request would build its
    /// context and pass its request, header and body filters (about five allocations per
    /// request; `benches/per_request.sh`, stop 29 in the README).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestContext {
        RequestContext {
            started: Instant::now(),
            _in_flight: crate::metrics::InFlight::start(&self.state.metrics),
            upstream_started: None,
            permit: None,
            rewritten_query: None,
            rewritten_body: None,
            body_replaced: false,
            body_read: false,
            outcome: None,
            mcp: None,
            refused_response_body: None,
            snapshot: None,
            db_credentials: None,
            response_binding: None,
            held_response: None,
            trace: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<bool> {
        let snapshot = self.state.snapshot();
        if let Some(telemetry) = self.state.telemetry.get() {
            let request = session.req_header();
            ctx.trace = Some(Box::new(
                telemetry.start_request(request.method.as_str(), &request.headers),
            ));
        }
        // datagate's own sign-in endpoints (OIDC callback, logout) are answered here.
        if let Some(endpoint) = self
            .state
            .authenticator
            .browser_endpoint(session.req_header().uri.path())
        {
            // Boxed (as the large-body forward below): rare paths with large futures
            // stay out of every request's `request_filter` state.
            return Box::pin(self.answer_browser_endpoint(session, ctx, endpoint)).await;
        }
        let request = session.req_header();
        // Cloning a standard method copies no text (the head must not borrow the session:
        // the body is read from it below).
        let method = request.method.clone();
        let raw_path = request.uri.path().to_owned();
        let query = request.uri.query().map(str::to_owned);
        let declared_length = headers::content_length(request);
        // Header checks and token sources, read once, the same way for `explain`.
        let presented = decision::read_headers(&self.state, method.as_str(), &request.headers);
        let head = RequestHead {
            method: method.as_str(),
            raw_path: &raw_path,
            query: query.as_deref(),
            headers: &presented,
            client_address: session
                .client_addr()
                .and_then(|address| address.as_inet())
                .map(|address| address.ip()),
        };
        let mut body = body::SessionBody {
            session,
            declared_length,
            read: None,
        };
        let decision = decision::admit(
            &self.state,
            &snapshot,
            &head,
            &mut body,
            decision::AdmitOptions {
                time_stages: ctx.trace.is_some(),
                ..Default::default()
            },
        )
        .instrument(log_span(ctx))
        .await;
        let read_body = body.read.take();
        if let Some(trace) = &ctx.trace {
            record_decision(trace, &decision);
        }
        ctx.body_read = decision.body_read;
        ctx.mcp = decision.mcp.clone();
        self.count_sql(&decision);
        match decision.verdict {
            Verdict::Forward(forward) => {
                let forward = *forward;
                let permit = forward.permit;
                self.state
                    .metrics
                    .observe_allowed_decision(ctx.started.elapsed());
                self.state.metrics.count_allowed(permit.route_label());
                ctx.outcome = Some(Outcome {
                    refused: None,
                    status: 0,
                    reason: Cow::Borrowed("allowed"),
                    revision: permit.policy_revision(),
                    refused_response: false,
                });
                ctx.rewritten_query = forward.query;
                ctx.rewritten_body = forward.body;
                ctx.db_credentials = forward.db_credentials;
                ctx.response_binding = forward.response_binding;
                ctx.permit = Some(permit);
                ctx.snapshot = Some(snapshot);
                // Larger than pingora's retry buffer: pingora would send the headers and
                // no body, so datagate forwards this one itself.
                if session.as_downstream().retry_buffer_truncated() {
                    let Some(body) = ctx.rewritten_body.take().or(read_body) else {
                        return Err(Error::explain(
                            ErrorType::InternalError,
                            "an overflowed retry buffer without a body read",
                        ));
                    };
                    return Box::pin(self.forward_buffered(session, ctx, body)).await;
                }
                Ok(false)
            }
            Verdict::Answer(decision::Answer::Permissions(permissions)) => {
                self.state.metrics.count_allowed(&decision.route);
                let body = serde_json::to_vec(&permissions).unwrap_or_default();
                write_json(session, &HttpError::new(200, ""), Some(body)).await?;
                Ok(true)
            }
            Verdict::Refuse(refusal) => {
                let outcome = refused_outcome(
                    &head,
                    &refusal,
                    decision.route.name(),
                    decision.principal.as_deref(),
                    decision.policy_revision,
                );
                self.refuse(session, ctx, refusal, outcome).await
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<Box<HttpPeer>> {
        // Fail closed: no permit, no upstream connection (request_filter always sets one
        // or answers the request itself, so this is a guard against future phase changes).
        if ctx.permit.is_none() {
            return Err(Error::explain(
                ErrorType::HTTPStatus(403),
                "request reached upstream_peer without a permit",
            ));
        }
        let upstream = &self.state.config.upstream;
        let mut peer = HttpPeer::new(self.upstream, upstream.tls, self.sni.clone());
        peer.options.connection_timeout = Some(upstream.connect_timeout);
        peer.options.read_timeout = Some(upstream.read_timeout);
        peer.options.write_timeout = Some(upstream.write_timeout);
        peer.options.idle_timeout = Some(upstream.idle_timeout);
        peer.options.verify_cert = upstream.verify_certificate;
        peer.options.verify_hostname = upstream.verify_certificate;
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        ctx.upstream_started = Some(Instant::now());
        let Some(permit) = ctx.permit.as_ref() else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(403),
                "upstream request without a permit",
            ));
        };
        headers::set_canonical_path(
            upstream_request,
            permit.canonical_path(),
            ctx.rewritten_query.as_deref(),
        )?;
        // A new attempt (pingora retries a stale pooled connection): the rewritten body
        // goes out again in place of the replayed original.
        ctx.body_replaced = false;
        let peer = session
            .client_addr()
            .and_then(|address| address.as_inet())
            .map(|address| address.ip());
        let token_sources = self.state.authenticator.token_sources();
        headers::edit_upstream_headers(upstream_request, |upstream_headers| {
            if ctx.body_read {
                // Already answered to the client; the upstream gets the body without waiting.
                upstream_headers.remove(http::header::EXPECT);
            }
            if let Some(body) = &ctx.rewritten_body {
                // The rewritten body replaces the original in `request_body_filter`.
                upstream_headers.remove(http::header::TRANSFER_ENCODING);
                upstream_headers.insert(http::header::CONTENT_LENGTH, body.len().into());
            }
            // The caller's own credentials stay here unless a token source forwards them.
            let edits = token_sources.upstream_edits(upstream_headers);
            remove_consumed_credentials(upstream_headers, edits)?;
            self.headers.prepare_upstream_headers(
                upstream_headers,
                permit.upstream_identity(),
                ctx.db_credentials.as_ref(),
                peer,
            )?;
            if ctx.response_binding.is_some() {
                // datagate reads this response's ids; a compressed one could not be read.
                upstream_headers.insert(
                    http::header::ACCEPT_ENCODING,
                    http::HeaderValue::from_static("identity"),
                );
            }
            if let Some(trace) = ctx.trace.as_mut() {
                // The upstream continues datagate's trace, never a client's header: exactly
                // one `traceparent`, naming the upstream span.
                for name in [crate::telemetry::TRACEPARENT, crate::telemetry::TRACESTATE] {
                    upstream_headers.remove(name);
                }
                for (name, value) in trace.start_upstream() {
                    let name = http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| Error::explain(ErrorType::InternalError, "trace header"))?;
                    let value = http::HeaderValue::try_from(value)
                        .map_err(|_| Error::explain(ErrorType::InternalError, "trace header"))?;
                    upstream_headers.append(name, value);
                }
            }
            Ok(())
        })
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        // The whole original body was read in `request_filter` and is replayed here from
        // pingora's retry buffer; the rewritten body goes out instead, once per attempt
        // (kept, not taken: a retried attempt must not send an empty body under the
        // rewritten body's `Content-Length`).
        if let Some(rewritten) = &ctx.rewritten_body {
            *body = if !ctx.body_replaced {
                ctx.body_replaced = true;
                Some(rewritten.clone())
            } else if end_of_stream {
                None
            } else {
                Some(Bytes::new())
            };
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        error: Box<Error>,
        _ctx: &mut RequestContext,
        reused: bool,
    ) -> Box<Error> {
        let mut error = error.more_context(format!("Peer: {peer}"));
        let retry = forward::may_retry(
            forward::AttemptFailure::of(&error),
            reused,
            session.req_header().method.is_idempotent(),
            !session.as_ref().retry_buffer_truncated(),
        );
        error.set_retry(retry);
        error
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        // No await below: the log span can stay entered.
        let span = log_span(ctx);
        let _entered = span.enter();
        if let Some(started) = ctx.upstream_started.take() {
            self.state
                .metrics
                .observe_upstream(Some(response.status.as_u16()), started.elapsed());
        }
        if let Some(trace) = ctx.trace.as_mut() {
            trace.end_upstream(Some(response.status.as_u16()));
        }
        if let Err(error) = headers::check_upstream_switch(session.req_header(), response) {
            if let Some(outcome) = ctx.outcome.as_mut() {
                outcome.status = 502;
                outcome.reason = "upstream switched protocols without an upgrade request".into();
            }
            return Err(error);
        }
        if self.state.config.exports.response_guard
            && let Some(permit) = &ctx.permit
        {
            let text = |name: http::header::HeaderName| {
                response
                    .headers
                    .get(name)
                    .and_then(|value| value.to_str().ok())
            };
            let kind = crate::export::response_export_kind(
                text(http::header::CONTENT_TYPE),
                text(http::header::CONTENT_DISPOSITION),
            );
            // Only an export-typed response costs the permission lookups.
            if let Some(kind) = kind
                && let Some(snapshot) = &ctx.snapshot
                && !snapshot
                    .exports
                    .allowance(&snapshot.policy, permit.subjects())
                    .allows(kind)
            {
                let refusal = decision::export_refusal(&self.state.config.exports, kind);
                let error = HttpError::from(&refusal);
                let body = Bytes::from(error.json_body());
                *response = ResponseHeader::build(error.status, Some(4))?;
                response.insert_header(http::header::CONTENT_TYPE, "application/json")?;
                response.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
                response.insert_header(http::header::CACHE_CONTROL, "no-store")?;
                ctx.refused_response_body = Some(body);
                self.state
                    .metrics
                    .requests
                    .with_label_values(&[permit.route(), "deny_response"])
                    .inc();
                if let Some(outcome) = ctx.outcome.as_mut() {
                    outcome.reason = format!("response refused: {refusal}").into();
                    outcome.refused_response = true;
                }
            }
        }
        if ctx.refused_response_body.is_none()
            && let Some(binding) = &ctx.response_binding
            && response.status.is_success()
        {
            match response_encoding(response) {
                None => ctx.held_response = Some(Vec::new()),
                Some(encoding) => {
                    let error = decision::results::ResponseBindingError::Encoded(encoding);
                    tracing::warn!(%error, ?binding, "results ids in a response were not bound");
                }
            }
        }
        if let Some(outcome) = ctx.outcome.as_mut() {
            outcome.status = response.status.as_u16();
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestContext,
    ) -> Result<Option<std::time::Duration>> {
        let span = log_span(ctx);
        let _entered = span.enter();
        // Not one byte of a refused export reaches the client: every upstream chunk is
        // dropped and the refusal goes out instead, once, at the end.
        if ctx.refused_response_body.is_some() {
            *body = if end_of_stream {
                ctx.refused_response_body.take()
            } else {
                None
            };
            return Ok(None);
        }
        if let Some(held) = ctx.held_response.as_mut() {
            if let Some(chunk) = body.take() {
                if held.len() + chunk.len() > decision::results::MAX_BOUND_RESPONSE_BYTES {
                    // Too large to read: sent on as it is, binding nothing.
                    tracing::warn!(
                        error = %decision::results::ResponseBindingError::TooLarge,
                        "results ids in a response were not bound"
                    );
                    let mut released = std::mem::take(held);
                    released.extend_from_slice(&chunk);
                    *body = Some(Bytes::from(released));
                    ctx.held_response = None;
                    return Ok(None);
                }
                held.extend_from_slice(&chunk);
            }
            if end_of_stream {
                let complete = ctx.held_response.take().unwrap_or_default();
                if let Some(binding) = &ctx.response_binding {
                    match binding.ids(&complete) {
                        Ok(ids) => binding.record(&self.state, ids),
                        Err(error) => {
                            tracing::warn!(%error, "results ids in a response were not bound");
                        }
                    }
                }
                *body = Some(Bytes::from(complete));
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        ctx: &mut RequestContext,
    ) -> pingora::proxy::FailToProxy {
        let rendered = HttpError::from_proxy_failure(error);
        if let Some(outcome) = ctx.outcome.as_mut() {
            outcome.status = rendered.as_ref().map_or(0, |rendered| rendered.status);
            outcome.reason = format!("proxy failure: {:?}", error.etype()).into();
        }
        if let Some(rendered) = &rendered
            && session.response_written().is_none()
            && let Err(write_error) = write_json(session, rendered, None).await
        {
            tracing::debug!(%write_error, "could not answer a failed request");
        }
        pingora::proxy::FailToProxy {
            error_code: rendered.map_or(0, |rendered| rendered.status),
            can_reuse_downstream: false,
        }
    }

    async fn logging(
        &self,
        session: &mut Session,
        _error: Option<&Error>,
        ctx: &mut RequestContext,
    ) {
        if let Some(started) = ctx.upstream_started.take() {
            // Went upstream and no response head came back (connect, timeout, reset).
            self.state.metrics.observe_upstream(None, started.elapsed());
        }
        let trace_id = ctx.trace.as_ref().map(|trace| trace.trace_id());
        if let Some(trace) = ctx.trace.take() {
            let status = session
                .response_written()
                .map_or(0, |response| response.status.as_u16());
            trace.finish(status);
        }
        let Some(outcome) = ctx.outcome.take() else {
            return;
        };
        let allowed = ctx.permit.is_some() && !outcome.refused_response;
        let decision = if allowed { "allow" } else { "deny" };
        if !self.state.audit.wants(allowed) {
            return;
        }
        let request = match (outcome.refused, &ctx.permit) {
            (Some(refused), _) => refused,
            (None, Some(permit)) => RefusedRequest {
                method: session.req_header().method.as_str().to_owned(),
                path: permit.canonical_path().to_owned(),
                route: permit.route().to_owned(),
                user: permit.principal().username.clone(),
                roles: permit.principal().roles.clone(),
            },
            (None, None) => return,
        };
        self.state.audit.record(AuditEvent {
            timestamp: SystemTime::now(),
            user: request.user,
            roles: request.roles,
            method: request.method,
            path: request.path,
            route: request.route,
            decision,
            status: outcome.status,
            reason: outcome.reason.into_owned(),
            policy_revision: outcome.revision,
            trace_id,
        });
    }
}

/// The span the request's log lines are written in (naming its trace id), or none when
/// traces are off.
fn log_span(ctx: &RequestContext) -> tracing::Span {
    ctx.trace
        .as_ref()
        .map_or_else(tracing::Span::none, |trace| trace.log_span().clone())
}

/// The decision on the request's root span, and its stages as child spans. Attributes
/// carry kinds and counts, never refusal messages or SQL.
fn record_decision(trace: &crate::telemetry::RequestTrace, decision: &decision::Decision) {
    let refusal_kind = decision
        .refusal()
        .map(|refusal| HttpError::from(refusal).kind.unwrap_or("none"));
    trace.record_stages(&decision.stages, refusal_kind);
    trace.record_decision(&crate::telemetry::DecisionSummary {
        route: decision.route.name(),
        canonical_path: decision.canonical_path.as_deref(),
        allowed: !matches!(decision.verdict, Verdict::Refuse(_)),
        refusal_kind,
        principal_kind: decision
            .principal
            .as_ref()
            .map(|principal| principal.kind.as_str()),
        policy_revision: decision.policy_revision,
        statements: decision.statements.len(),
        statements_rewritten: decision
            .statements
            .iter()
            .filter(|statement| statement.rewritten.changed)
            .count(),
    });
}

fn remove_consumed_credentials(
    upstream_headers: &mut http::HeaderMap,
    edits: crate::authn::UpstreamCredentialEdits<'_>,
) -> Result<()> {
    for name in edits.remove_headers {
        upstream_headers.remove(name);
    }
    if let Some(cookie) = edits.cookie {
        upstream_headers.remove(http::header::COOKIE);
        if let Some(cookie) = cookie {
            let cookie = http::HeaderValue::try_from(cookie)
                .map_err(|_| Error::explain(ErrorType::InternalError, "cookie header"))?;
            upstream_headers.insert(http::header::COOKIE, cookie);
        }
    }
    Ok(())
}

fn refused_outcome(
    head: &RequestHead<'_>,
    refusal: &Refusal,
    route: &str,
    principal: Option<&crate::principal::Principal>,
    revision: u64,
) -> Outcome {
    Outcome {
        refused: Some(RefusedRequest {
            method: head.method.to_string(),
            path: head.raw_path.to_string(),
            route: route.to_string(),
            user: principal
                .map(|principal| principal.username.clone())
                .unwrap_or_default(),
            roles: principal
                .map(|principal| principal.roles.clone())
                .unwrap_or_default(),
        }),
        status: HttpError::from(refusal).status,
        reason: refusal.to_string().into(),
        revision,
        refused_response: false,
    }
}

impl DatagateProxy {
    fn count_sql(&self, decision: &decision::Decision) {
        let metrics = &self.state.metrics;
        if let Some(elapsed) = decision.sql_time {
            metrics.sql_rewrite_seconds.observe(elapsed.as_secs_f64());
        }
        for statement in &decision.statements {
            metrics.count_sql_statement(statement.rewritten.changed, statement.rewritten.cache_hit);
        }
        match decision.refusal() {
            Some(Refusal::Sql { error, .. }) => {
                metrics
                    .sql_rewrites
                    .with_label_values(&["refused", error.kind()])
                    .inc();
            }
            Some(Refusal::SqlLocation(error)) => {
                metrics
                    .sql_rewrites
                    .with_label_values(&["refused", error.kind()])
                    .inc();
            }
            _ => {}
        }
    }

    /// The OIDC callback or logout: a redirect with cookies, or a refusal.
    async fn answer_browser_endpoint(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        endpoint: crate::authn::BrowserEndpoint,
    ) -> Result<bool> {
        let request = session.req_header();
        let query = request.uri.query().map(str::to_owned);
        let headers = request.headers.clone();
        let head_method = request.method.as_str().to_owned();
        let head_path = request.uri.path().to_owned();
        match self
            .state
            .authenticator
            .answer_browser_endpoint(endpoint, query.as_deref(), &headers)
            .await
        {
            Ok(response) => {
                self.write_synthetic(session, response).await?;
                Ok(true)
            }
            Err(error) => {
                let presented = decision::PresentedHeaders::default();
                let head = RequestHead {
                    method: &head_method,
                    raw_path: &head_path,
                    query: None,
                    headers: &presented,
                    client_address: None,
                };
                let refusal = Refusal::Authentication(error);
                let revision = self.state.snapshot().revision;
                let outcome = refused_outcome(&head, &refusal, "sign-in", None, revision);
                self.refuse(session, ctx, refusal, outcome).await
            }
        }
    }

    async fn write_synthetic(
        &self,
        session: &mut Session,
        synthetic: crate::authn::SyntheticResponse,
    ) -> Result<()> {
        let mut response = ResponseHeader::build(synthetic.status, Some(4))?;
        for (name, value) in synthetic.headers {
            response.append_header(name, value)?;
        }
        response.insert_header(
            http::header::CONTENT_LENGTH,
            synthetic.body.len().to_string(),
        )?;
        session
            .write_response_header(Box::new(response), false)
            .await?;
        session
            .write_response_body(Some(Bytes::from(synthetic.body)), true)
            .await?;
        Ok(())
    }

    /// Answers a refused request; the upstream is never contacted.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        refusal: Refusal,
        outcome: Outcome,
    ) -> Result<bool> {
        self.state
            .metrics
            .decision_seconds
            .with_label_values(&["deny"])
            .observe(ctx.started.elapsed().as_secs_f64());
        // Counted before answering, so a scrape right after the response sees it.
        self.state
            .metrics
            .requests
            .with_label_values(&[
                outcome
                    .refused
                    .as_ref()
                    .map_or(crate::metrics::UNMATCHED_ROUTE, |refused| {
                        refused.route.as_str()
                    }),
                "deny",
            ])
            .inc();
        let mut error = HttpError::from(&refusal);
        self.state
            .metrics
            .count_refusal(error.status, error.kind.unwrap_or("none"));
        if let Some(call) = &ctx.mcp
            && let Some(json_rpc) = error.as_json_rpc(&call.id)
        {
            error = json_rpc;
        }
        let mut outcome = outcome;
        if ctx.mcp.is_some() {
            outcome.status = error.status;
        }
        ctx.outcome = Some(outcome);
        // A browser without (valid) credentials is sent to sign in instead.
        if matches!(
            refusal,
            Refusal::Authentication(
                crate::authn::AuthnError::MissingCredentials
                    | crate::authn::AuthnError::SessionExpired
                    | crate::authn::AuthnError::SessionInvalid
            ) | Refusal::AuthenticationRequired { .. }
        ) {
            let request = session.req_header();
            let return_to = request
                .uri
                .path_and_query()
                .map_or("/", |path_and_query| path_and_query.as_str())
                .to_owned();
            if let Some(redirect) = self.state.authenticator.sign_in_redirect(
                request.method.as_str(),
                request.uri.path(),
                &return_to,
                &request.headers,
            ) {
                session.set_keepalive(None);
                self.write_synthetic(session, redirect).await?;
                return Ok(true);
            }
        }
        // The unread body of a refused request would desynchronise a kept-alive connection.
        session.set_keepalive(None);
        write_json(session, &error, None).await?;
        // A client still sending its body would see the connection reset before reading
        // the answer; read and discard for a bounded time first (a lingering close).
        if !session.as_downstream_mut().is_body_done() {
            let _ = tokio::time::timeout(
                LINGER_ON_REFUSAL,
                session.as_downstream_mut().drain_request_body(),
            )
            .await;
        }
        Ok(true)
    }
}

/// A response's `Content-Encoding` other than `identity`, if any.
fn response_encoding(response: &ResponseHeader) -> Option<String> {
    let encodings: Vec<&str> = response
        .headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .map(|value| value.to_str().unwrap_or("not text"))
        .collect();
    let encoded = encodings
        .iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|encoding| !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity"));
    encoded.then(|| encodings.join(", "))
}

/// Writes a JSON response datagate makes itself: `body`, or the error's `{message, kind}`
/// body. Every refusal, datagate's own answers and pingora's failures go out through here.
async fn write_json(session: &mut Session, error: &HttpError, body: Option<Vec<u8>>) -> Result<()> {
    let body = Bytes::from(body.unwrap_or_else(|| error.json_body()));
    let mut response = ResponseHeader::build(error.status, Some(4))?;
    response.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    response.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    response.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if let Some(challenge) = &error.www_authenticate {
        response.insert_header(http::header::WWW_AUTHENTICATE, challenge.clone())?;
    }
    if let Some(seconds) = error.retry_after {
        response.insert_header(http::header::RETRY_AFTER, seconds.to_string())?;
    }
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
