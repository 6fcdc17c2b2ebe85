//! What every admin handler shares: who the caller is and what they may administer,
//! strict parsing of bodies, path ids and query strings, responses, and the one write
//! path (store transaction → snapshot swap → audit line) that makes a write effective
//! before its response is sent.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::AdminError;
use crate::decision::Refusal;
use crate::http_error::HttpError;
use crate::policy::datasource_object;
use crate::principal::{Principal, PrincipalKind};
use crate::state::{AppState, PolicySnapshot, ReloadTrigger, StoreBuild};
use crate::store::{Applied, Change, Store, StoreUpdate};

/// The role that may use every admin endpoint.
pub const ADMIN_ROLE: &str = "Admin";

/// Every JSON response of the admin API says so, with its charset (as Grafana does).
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=UTF-8";

/// Inspected admin bodies larger than this are refused.
pub const MAX_ADMIN_BODY_BYTES: usize = 256 * 1024;

pub fn error_response(error: &AdminError) -> Response {
    http_error_response(HttpError::from(error))
}

pub fn http_error_response(error: HttpError) -> Response {
    let mut response = (
        StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, JSON_CONTENT_TYPE)],
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
    if let Some(seconds) = error.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    }
    response
}

pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, JSON_CONTENT_TYPE)], bytes).into_response(),
        Err(error) => error_response(&AdminError::Internal(error.to_string())),
    }
}

/// Handlers return this; both arms become a response.
pub type AdminResult = Result<Response, AdminError>;

pub fn into_response(result: AdminResult) -> Response {
    result.unwrap_or_else(|error| error_response(&error))
}

/// The authenticated caller and the snapshot it was checked against.
pub struct Caller {
    pub principal: Principal,
    pub snapshot: Arc<PolicySnapshot>,
}

/// Authenticates like the proxy: JWT, configured API key or service-account token.
/// Anonymous callers get 401 on every admin endpoint.
pub fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, AdminError> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let snapshot = state.snapshot();
    let principal = crate::decision::authenticate(
        state,
        &snapshot,
        text(header::AUTHORIZATION.as_str()),
        text(state.authenticator.api_key_header()),
    )
    .map_err(Refusal::Authentication)?;
    if principal.kind == PrincipalKind::Anonymous {
        return Err(AdminError::Refused(Refusal::AuthenticationRequired {
            reason: "the admin API requires an authenticated caller".to_string(),
        }));
    }
    Ok(Caller {
        principal,
        snapshot,
    })
}

/// Authenticates and requires the Admin role.
pub fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<Caller, AdminError> {
    let caller = authenticate(state, headers)?;
    if !caller.principal.roles.iter().any(|role| role == ADMIN_ROLE) {
        return Err(AdminError::Refused(Refusal::MissingPermission {
            permission: format!("role `{ADMIN_ROLE}`"),
        }));
    }
    Ok(caller)
}

/// Authenticates and requires `action` (e.g. `datasources.permissions:write`) on the
/// datasource's scope, decided by the same engine as the proxy: a datasource Admin
/// manages that datasource and no other.
pub fn require_datasource_action(
    state: &AppState,
    headers: &HeaderMap,
    datasource_uid: &str,
    action: &str,
) -> Result<Caller, AdminError> {
    let caller = authenticate(state, headers)?;
    let allowed = caller.snapshot.policy.allows(
        &caller.principal.subjects(),
        &datasource_object(datasource_uid),
        action,
    );
    if !allowed {
        return Err(AdminError::Refused(Refusal::MissingDatasourcePermission {
            action: action.to_string(),
            uid: datasource_uid.to_string(),
        }));
    }
    Ok(caller)
}

pub fn store(state: &AppState) -> Result<&Store, AdminError> {
    state.store.as_ref().ok_or(AdminError::NoStore)
}

/// A JSON body, strictly: valid UTF-8 JSON, no repeated keys, no unknown fields; the
/// error names the field and position.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    if body.len() > MAX_ADMIN_BODY_BYTES {
        return Err(AdminError::BadRequest(format!(
            "request body is larger than {MAX_ADMIN_BODY_BYTES} bytes"
        )));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::BadRequest(
            "request body is empty; expected a JSON object".into(),
        ));
    }
    crate::json_guard::reject_duplicate_keys(body)
        .map_err(|error| AdminError::BadRequest(format!("invalid JSON body: {error}")))?;
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if path == "." || path.is_empty() {
            AdminError::BadRequest(format!("invalid JSON body: {inner}"))
        } else {
            AdminError::BadRequest(format!("invalid JSON body at `{path}`: {inner}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|error| AdminError::BadRequest(format!("invalid JSON body: {error}")))?;
    Ok(value)
}

/// A numeric id from the path.
pub fn parse_id(what: &str, text: &str) -> Result<i64, AdminError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            AdminError::BadRequest(format!("{what} id `{text}` is not a positive integer"))
        })
}

/// Query parameters, each at most once, only the `allowed` names.
pub fn parse_query(
    query: Option<&str>,
    allowed: &[&str],
) -> Result<HashMap<String, String>, AdminError> {
    let mut parameters = HashMap::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&name.as_ref()) {
            return Err(AdminError::BadRequest(format!(
                "unknown query parameter `{name}` (expected one of: {})",
                allowed.join(", ")
            )));
        }
        if parameters
            .insert(name.to_string(), value.to_string())
            .is_some()
        {
            return Err(AdminError::BadRequest(format!(
                "query parameter `{name}` is given more than once"
            )));
        }
    }
    Ok(parameters)
}

pub fn page_request(
    parameters: &HashMap<String, String>,
) -> Result<crate::store::PageRequest, AdminError> {
    let number = |name: &str, default: i64| -> Result<i64, AdminError> {
        parameters.get(name).map_or(Ok(default), |text| {
            text.parse().map_err(|_| {
                AdminError::BadRequest(format!("`{name}` must be an integer, got `{text}`"))
            })
        })
    };
    let defaults = crate::store::PageRequest::default();
    let request = crate::store::PageRequest {
        page: number("page", defaults.page)?,
        page_size: number("page_size", defaults.page_size)?,
    };
    request.validate()?;
    Ok(request)
}

/// The one write path. Serialises writes within this replica, applies the change in one
/// store transaction that also validates the resulting policy (a change that would not
/// build is refused and leaves nothing behind), then swaps the new snapshot in before
/// returning, so a request that starts after the response sees the change.
pub async fn write(
    state: &Arc<AppState>,
    caller: &Caller,
    change: Change,
) -> Result<Applied, AdminError> {
    let store = store(state)?;
    let _one_write_at_a_time = state.admin_writes.lock().await;
    // The snapshot is built once, inside the transaction on a blocking thread (the
    // validation), from the serving one and the rows the change touched, and that same
    // build is served after the commit.
    let building_state = state.clone();
    let base = state.snapshot();
    let base_revision = base.store.revision;
    let build = move |update: StoreUpdate| StoreBuild::build(&building_state.config, base, update);
    let result = store
        .apply(
            &caller.principal.username,
            change,
            Some(base_revision),
            build,
        )
        .await;
    let (applied, build) = match result {
        Ok(done) => done,
        Err(error) => {
            let result = match &error {
                crate::store::StoreError::Database(_)
                | crate::store::StoreError::Connect { .. } => "failed",
                _ => "rejected",
            };
            state
                .metrics
                .admin_writes
                .with_label_values(&["any", result])
                .inc();
            return Err(AdminError::Store(error));
        }
    };
    let serving_state = state.clone();
    let served = tokio::task::spawn_blocking(move || {
        serving_state.serve_store_build(ReloadTrigger::StoreWrite, build)
    })
    .await
    .map_err(|_| AdminError::ServeLost)?;
    state
        .metrics
        .admin_writes
        .with_label_values(&[applied.action.as_str(), "applied"])
        .inc();
    state
        .audit
        .record_admin_change(crate::audit::AdminChangeEvent {
            timestamp: std::time::SystemTime::now(),
            actor: caller.principal.username.clone(),
            action: applied.action.clone(),
            target: applied.target.clone(),
            before: applied.before.clone(),
            after: applied.after.clone(),
            store_revision: applied.revision,
            policy_revision: state.snapshot().revision,
        });
    served.map_err(AdminError::NotServing)?;
    state.confirm_store_current();
    Ok(applied)
}
