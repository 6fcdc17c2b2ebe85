//! The admin listener (axum): health, readiness, metrics, and policy administration.
//!
//! It runs on its own port and its own small tokio runtime, beside pingora's, so a flood
//! on the proxy port cannot starve `/healthz` or a reload. `/healthz`, `/readyz` and
//! `/metrics` are unauthenticated (probes and scrapers); `/api/admin/*` authenticates like
//! the proxy and requires the `Admin` role.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::http_error::HttpError;
use crate::pipeline::Refusal;
use crate::principal::Principal;
use crate::state::{AppState, ReloadTrigger};

/// The role that may use `/api/admin/*`.
pub const ADMIN_ROLE: &str = "Admin";

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/admin/reload", post(reload))
        .route("/api/admin/policy/status", get(policy_status))
        .route("/api/authz/explain", post(explain))
        .fallback(not_found)
        .with_state(state)
}

/// Binds the admin port and serves until the process exits.
pub async fn serve(state: Arc<AppState>, address: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(%address, "admin listener ready");
    axum::serve(listener, router(state)).await
}

fn error_response(error: HttpError) -> Response {
    let mut response = (
        StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        error.json_body(),
    )
        .into_response();
    if let Some(challenge) = error.www_authenticate
        && let Ok(value) = challenge.parse()
    {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Authenticates the caller and requires the Admin role.
fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<Principal, HttpError> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let principal = state
        .authenticator
        .authenticate(
            text(header::AUTHORIZATION.as_str()),
            text(state.authenticator.api_key_header()),
        )
        .map_err(|error| HttpError::from(&Refusal::Authentication(error)))?;
    if principal.kind == crate::principal::PrincipalKind::Anonymous {
        return Err(HttpError::from(&Refusal::AuthenticationRequired {
            reason: "the admin API requires an authenticated caller".to_string(),
        }));
    }
    if !principal.roles.iter().any(|role| role == ADMIN_ROLE) {
        return Err(HttpError::from(&Refusal::MissingPermission {
            permission: format!("role `{ADMIN_ROLE}`"),
        }));
    }
    Ok(principal)
}

async fn healthz() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
}

/// Ready once a valid snapshot is serving. The process refuses to start without one, so
/// this is true whenever the listener answers; it stays explicit so a future asynchronous
/// start (e.g. from a remote store) cannot report ready too early.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.snapshot();
    let body = json!({"status": "ready", "policy_revision": snapshot.revision});
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn reload(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let principal = match require_admin(&state, &headers) {
        Ok(principal) => principal,
        Err(error) => return error_response(error),
    };
    tracing::info!(user = %principal.username, "reload requested through the admin API");
    let reload_state = state.clone();
    let result =
        tokio::task::spawn_blocking(move || reload_state.reload(ReloadTrigger::AdminApi)).await;
    match result {
        Ok(Ok(outcome)) => {
            let status = state.policy_status();
            (
                StatusCode::OK,
                axum::Json(json!({"result": outcome, "revision": status.revision, "digest": status.digest})),
            )
                .into_response()
        }
        Ok(Err(error)) => error_response(HttpError::new(
            422,
            format!("reload refused, the previous policy keeps serving: {error}"),
        )),
        Err(_) => error_response(HttpError::new(500, "reload task failed")),
    }
}

async fn policy_status(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(error) = require_admin(&state, &headers) {
        return error_response(error);
    }
    (StatusCode::OK, axum::Json(state.policy_status())).into_response()
}

/// The same evaluation as `datagate explain`, against the serving snapshot.
async fn explain(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(error) = require_admin(&state, &headers) {
        return error_response(error);
    }
    let request: crate::cli::ExplainArgs = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return error_response(HttpError::new(
                400,
                format!("invalid explain request: {error}"),
            ));
        }
    };
    (
        StatusCode::OK,
        axum::Json(crate::cli::explain_request(&state, &request)),
    )
        .into_response()
}

async fn not_found() -> Response {
    error_response(HttpError::new(404, "no such admin endpoint"))
}
