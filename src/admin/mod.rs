//! The admin listener (axum): health, readiness, metrics, policy administration, the
//! Grafana-compatible datasource permissions API and the management API over the grants
//! store.
//!
//! It runs on its own port and its own small tokio runtime, beside pingora's, so a flood
//! on the proxy port cannot starve `/healthz` or a reload. `/healthz`, `/readyz`,
//! `/metrics` and `/api/openapi.json` are unauthenticated (probes, scrapers, clients);
//! everything else authenticates like the proxy. Datasource-permission endpoints need
//! `datasources.permissions:read`/`:write` on that datasource; every other endpoint needs
//! the Admin role. Routes are registered through utoipa's router, so the OpenAPI document
//! lists exactly the routes that are served.

mod error;
mod grafana;
mod manage;
mod openapi;
mod permissions;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::AdminError;
pub use permissions::{PermissionItem, level_actions, permission_items};
pub use support::ADMIN_ROLE;

use crate::http_error::HttpError;
use crate::state::{AppState, ReloadTrigger};
use support::{JSON_CONTENT_TYPE, error_response, http_error_response, require_admin};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "datagate admin API",
        description = "Grants, identities, row-level security filters and datasources behind the datagate policy sidecar. The datasource permission endpoints are wire-compatible with Grafana's.",
    ),
    modifiers(&BearerSecurity),
    tags(
        (name = "datasource permissions", description = "Grafana-compatible datasource permissions"),
        (name = "users"), (name = "service accounts"), (name = "teams"), (name = "roles"),
        (name = "row-level security"), (name = "datasources"), (name = "audit"), (name = "operations"),
    )
)]
struct ApiDoc;

struct BearerSecurity;

impl utoipa::Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "a JWT, a configured API key, or a service-account token (`dgsa_…`)",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every admin route, and the OpenAPI document that describes them.
pub fn routes() -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(openapi_json))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(reload))
        .routes(routes!(policy_status))
        .routes(routes!(explain))
        .routes(routes!(grafana::health))
        .routes(routes!(grafana::frontend_settings))
        .routes(routes!(grafana::current_org))
        .routes(routes!(permissions::get_permissions))
        .routes(routes!(permissions::get_role_grants))
        .routes(routes!(permissions::set_user_permission))
        .routes(routes!(permissions::set_team_permission))
        .routes(routes!(permissions::set_built_in_role_permission))
        .routes(routes!(grafana::list_users, manage::create_user))
        .routes(routes!(grafana::search_users))
        .routes(routes!(grafana::lookup_user))
        .routes(routes!(grafana::search_teams))
        .routes(routes!(grafana::search_service_accounts))
        .routes(routes!(
            manage::get_user,
            manage::update_user,
            manage::delete_user
        ))
        .routes(routes!(
            manage::list_service_accounts,
            manage::create_service_account
        ))
        .routes(routes!(
            manage::get_service_account,
            manage::update_service_account,
            manage::delete_service_account
        ))
        .routes(routes!(manage::list_tokens, manage::create_token))
        .routes(routes!(manage::delete_token))
        .routes(routes!(manage::list_teams, manage::create_team))
        .routes(routes!(
            manage::get_team,
            manage::update_team,
            manage::delete_team
        ))
        .routes(routes!(manage::list_members, manage::add_member))
        .routes(routes!(manage::remove_member))
        .routes(routes!(manage::list_roles, manage::create_role))
        .routes(routes!(
            manage::get_role,
            manage::update_role,
            manage::delete_role
        ))
        .routes(routes!(manage::set_role_permissions))
        .routes(routes!(manage::list_filters, manage::create_filter))
        .routes(routes!(
            manage::get_filter,
            manage::update_filter,
            manage::delete_filter
        ))
        .routes(routes!(
            grafana::list_datasources,
            manage::create_datasource
        ))
        .routes(routes!(grafana::get_datasource_by_uid))
        .routes(routes!(
            manage::get_datasource,
            manage::update_datasource,
            manage::delete_datasource
        ))
        .routes(routes!(manage::list_audit))
        .split_for_parts()
}

/// The OpenAPI document of the admin API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

pub fn router(state: Arc<AppState>) -> Router {
    routes()
        .0
        .fallback(not_found)
        .layer(axum::middleware::from_fn(json_everywhere))
        .with_state(state)
}

/// Every answer is JSON with its charset, errors included: axum's own answers (405 for
/// a method a route does not serve, rejections) get a `{"message"}` body here, keeping
/// their status and headers such as `Allow`.
async fn json_everywhere(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().clone();
    let mut response = next.run(request).await;
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/json") {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(JSON_CONTENT_TYPE),
        );
        return response;
    }
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        format!("method `{method}` is not allowed on this endpoint")
    } else {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_lowercase()
    };
    let mut replaced = http_error_response(HttpError::new(status.as_u16(), message));
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            replaced.headers_mut().insert(name.clone(), value.clone());
        }
    }
    replaced
}

#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "this document")))]
async fn openapi_json() -> Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let document = DOCUMENT.get_or_init(|| {
        let mut document = serde_json::to_value(openapi()).unwrap_or_else(|_| json!({}));
        openapi::complete(&mut document);
        serde_json::to_string_pretty(&document).unwrap_or_else(|_| "{}".to_string())
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, JSON_CONTENT_TYPE)],
        document.clone(),
    )
        .into_response()
}

/// Binds the admin port and serves until the process exits.
pub async fn serve(state: Arc<AppState>, address: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(%address, "admin listener ready");
    axum::serve(listener, router(state)).await
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "the process is up")))]
async fn healthz() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, JSON_CONTENT_TYPE)],
        r#"{"status":"ok"}"#,
    )
}

/// Ready once the proxy port accepts connections, a valid snapshot is serving and, with a
/// store, this replica has confirmed its grants are current within `store.max_staleness`;
/// 503 `draining` from SIGTERM (or SIGQUIT, an upgrade) on.
/// With remote JWT keys, also not ready until the identity provider's JWKS has been
/// fetched, nor once it is older than `max_stale`.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "serving a valid, current policy"), (status = 503, description = "starting (the proxy port is not accepting yet), draining (shutting down or upgrading), or grants may be stale")))]
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let snapshot = state.snapshot();
    if let Some(not_ready) = state.lifecycle.not_ready() {
        let (status, message) = match not_ready {
            crate::lifecycle::NotReady::Starting => {
                ("starting", "the proxy port is not accepting yet")
            }
            crate::lifecycle::NotReady::Draining { reason } => ("draining", reason),
        };
        let body = json!({
            "status": status,
            "policy_revision": snapshot.revision,
            "message": message,
        });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    if let Some(age) = state.policy_staleness() {
        let body = json!({
            "status": "stale",
            "policy_revision": snapshot.revision,
            "message": format!("grants not confirmed current for {} s", age.as_secs()),
        });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    if let Err(reason) = state.authenticator.readiness() {
        let body = json!({
            "status": "identity_keys_unavailable",
            "policy_revision": snapshot.revision,
            "message": reason,
        });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    let body = json!({
        "status": "ready",
        "policy_revision": snapshot.revision,
        "store_revision": snapshot.store.revision,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[utoipa::path(post, path = "/api/admin/reload", tag = "operations",
    responses((status = 200, description = "`swapped` or `unchanged`"), (status = 422, description = "the new policy does not build; the old one keeps serving")),
    security(("bearer" = [])))]
async fn reload(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let caller = match require_admin(&state, &headers) {
        Ok(caller) => caller,
        Err(error) => return error_response(&error),
    };
    tracing::info!(user = %caller.principal.username, "reload requested through the admin API");
    let reload_state = state.clone();
    let result = tokio::task::spawn_blocking(move || {
        // With a store, a reload re-reads it too, so an operator can force a resync.
        reload_state.reload(ReloadTrigger::AdminApi)
    })
    .await;
    if let Some(store) = &state.store
        && let Ok(contents) = store.load().await
    {
        let store_state = state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            store_state.reload_store(ReloadTrigger::AdminApi, contents)
        })
        .await;
    }
    match result {
        Ok(Ok(outcome)) => {
            let status = state.policy_status();
            (
                StatusCode::OK,
                axum::Json(json!({"result": outcome, "revision": status.revision, "digest": status.digest})),
            )
                .into_response()
        }
        Ok(Err(error)) => http_error_response(HttpError::new(
            422,
            format!("reload refused, the previous policy keeps serving: {error}"),
        )),
        Err(_) => http_error_response(HttpError::new(500, "reload task failed")),
    }
}

#[utoipa::path(get, path = "/api/admin/policy/status", tag = "operations",
    responses((status = 200, description = "revision, digest, loaded_at, lines, engine, last_error, store revision")),
    security(("bearer" = [])))]
async fn policy_status(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(error) = require_admin(&state, &headers) {
        return error_response(&error);
    }
    (StatusCode::OK, axum::Json(state.policy_status())).into_response()
}

/// The same evaluation as `datagate explain`, against the serving snapshot.
#[utoipa::path(post, path = "/api/authz/explain", tag = "operations",
    request_body = crate::cli::ExplainArgs,
    responses((status = 200, description = "the decision with every check")),
    security(("bearer" = [])))]
async fn explain(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(error) = require_admin(&state, &headers) {
        return error_response(&error);
    }
    let request: crate::cli::ExplainArgs = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return http_error_response(HttpError::new(
                400,
                format!("invalid explain request: {error}"),
            ));
        }
    };
    (
        StatusCode::OK,
        axum::Json(crate::cli::explain_request(&state, &request).await),
    )
        .into_response()
}

async fn not_found() -> Response {
    http_error_response(HttpError::new(404, "no such admin endpoint"))
}
