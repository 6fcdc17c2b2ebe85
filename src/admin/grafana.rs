//! Grafana's HTTP API where datagate's resources overlap it, shape for shape with
//! Grafana's documentation, so `grafana-client` and scripts written against Grafana work
//! against the admin port: `/api/health`, `/api/frontend/settings` (what clients call
//! on connect), `/api/org`, user search and lookup, team and service-account search,
//! and the datasources (config-file ones included, read-only).
//!
//! Paging follows Grafana: `page` is 1-based, `perpage` defaults to 1000, and a page past
//! the end is empty (clients page until they see an empty one). Searches and lookups
//! need the Admin role, like the rest of the management API; datasources are listed to
//! any caller who may read them (`datasources:read`), as Grafana does.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::error::AdminError;
use super::permissions::Message;
use super::support::{
    ADMIN_ROLE, AdminResult, Caller, authenticate, into_response, json_response, parse_query,
    require_admin, store,
};
use crate::policy::datasource_object;
use crate::state::AppState;
use crate::store::{SearchPage, TeamRecord, UserRecord};

/// The Grafana HTTP API version whose request and response shapes these endpoints
/// follow. Clients choose between old and new Grafana APIs by it (grafana-client uses
/// the access-control datasource permissions API above 10.2.2), so it is reported as
/// the version on connect; datagate's own version is reported beside it.
pub const GRAFANA_API_VERSION: &str = "11.0.0";

/// Grafana's default and datagate's largest `perpage`.
pub const MAX_PER_PAGE: i64 = 1000;

use crate::store::MAX_PAGE;

/// `query`, `page`, `perpage` of a Grafana search.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes the query string for the OpenAPI document
pub struct SearchParams {
    /// Case-insensitive substring of the login, email or name.
    query: Option<String>,
    /// 1-based page number.
    #[param(minimum = 1, maximum = 1_000_000, default = 1)]
    page: Option<i64>,
    /// Items per page.
    #[param(minimum = 1, maximum = 1000, default = 1000)]
    perpage: Option<i64>,
}

/// `name`, `query`, `page`, `perpage` of Grafana's team search.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes the query string for the OpenAPI document
pub struct TeamSearchParams {
    /// Only the team with exactly this name.
    name: Option<String>,
    /// Case-insensitive substring of the team name.
    query: Option<String>,
    /// 1-based page number.
    #[param(minimum = 1, maximum = 1_000_000, default = 1)]
    page: Option<i64>,
    /// Items per page.
    #[param(minimum = 1, maximum = 1000, default = 1000)]
    perpage: Option<i64>,
}

/// `loginOrEmail` of Grafana's user lookup.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes the query string for the OpenAPI document
pub struct LookupParams {
    /// The user's exact login or email.
    #[serde(rename = "loginOrEmail")]
    #[param(rename = "loginOrEmail", min_length = 1)]
    login_or_email: String,
}

fn avatar_url(seed: &str) -> String {
    let digest = hex::encode(Sha256::digest(seed.as_bytes()));
    format!("/avatar/{}", &digest[..32])
}

/// `page` and `perpage` with Grafana's defaults, in range or refused.
fn search_page(parameters: &HashMap<String, String>) -> Result<SearchPage, AdminError> {
    let number = |name: &str, default: i64, maximum: i64| -> Result<i64, AdminError> {
        let Some(text) = parameters.get(name) else {
            return Ok(default);
        };
        text.parse::<i64>()
            .ok()
            .filter(|value| (1..=maximum).contains(value))
            .ok_or_else(|| {
                AdminError::BadRequest(format!(
                    "`{name}` must be an integer from 1 to {maximum}, got `{text}`"
                ))
            })
    };
    Ok(SearchPage {
        page: number("page", 1, MAX_PAGE)?,
        per_page: number("perpage", MAX_PER_PAGE, MAX_PER_PAGE)?,
    })
}

/// A user in Grafana's search shape.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrafanaUser {
    pub id: i64,
    pub uid: String,
    pub name: String,
    pub login: String,
    pub email: String,
    pub avatar_url: String,
    /// Holds the Admin role or the `Admin` basic role.
    pub is_admin: bool,
    pub is_disabled: bool,
    pub auth_labels: Vec<String>,
}

fn is_admin(user: &UserRecord) -> bool {
    user.basic_role.as_deref() == Some("Admin") || user.roles.iter().any(|role| role == ADMIN_ROLE)
}

fn grafana_user(user: UserRecord) -> GrafanaUser {
    GrafanaUser {
        is_admin: is_admin(&user),
        avatar_url: avatar_url(user.email.as_deref().unwrap_or(&user.login)),
        name: user.name.clone().unwrap_or_else(|| user.login.clone()),
        email: user.email.unwrap_or_default(),
        id: user.id,
        uid: user.uid,
        login: user.login,
        is_disabled: false,
        auth_labels: Vec::new(),
    }
}

/// `GET /api/users/search`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserSearch {
    pub total_count: i64,
    pub users: Vec<GrafanaUser>,
    pub page: i64,
    pub per_page: i64,
}

async fn user_search(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<UserSearch, AdminError> {
    require_admin(state, headers)?;
    let parameters = parse_query(query, &["query", "page", "perpage"])?;
    let page = search_page(&parameters)?;
    let text = parameters
        .get("query")
        .map(String::as_str)
        .unwrap_or_default();
    let found = store(state)?.search_users(text, page, false).await?;
    Ok(UserSearch {
        total_count: found.total_count,
        users: found.items.into_iter().map(grafana_user).collect(),
        page: page.page,
        per_page: page.per_page,
    })
}

#[utoipa::path(get, path = "/api/users/search", tag = "users", params(SearchParams),
    responses(
        (status = 200, body = UserSearch, description = "Grafana's user search page"),
        (status = 400, body = Message, description = "an unknown or repeated query parameter, or `page`/`perpage` out of range"),
        (status = 401, body = Message, description = "no or invalid credentials"),
        (status = 403, body = Message, description = "the caller is not an Admin"),
        (status = 503, body = Message, description = "no grants store is configured"),
    ),
    security(("bearer" = [])))]
pub async fn search_users(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    into_response(
        user_search(&state, &headers, query.as_deref())
            .await
            .map(|found| json_response(StatusCode::OK, &found)),
    )
}

/// Grafana's `GET /api/users?page=N`: the users of one page as an array; a page past the
/// end is `[]`.
#[utoipa::path(get, path = "/api/users", tag = "users", params(SearchParams),
    responses(
        (status = 200, body = [GrafanaUser], description = "the users of the page; `[]` past the end"),
        (status = 400, body = Message, description = "an unknown or repeated query parameter, or `page`/`perpage` out of range"),
        (status = 401, body = Message, description = "no or invalid credentials"),
        (status = 403, body = Message, description = "the caller is not an Admin"),
        (status = 503, body = Message, description = "no grants store is configured"),
    ),
    security(("bearer" = [])))]
pub async fn list_users(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    into_response(
        user_search(&state, &headers, query.as_deref())
            .await
            .map(|found| json_response(StatusCode::OK, &found.users)),
    )
}

/// A user profile as Grafana's `GET /api/users/lookup` answers it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrafanaUserProfile {
    pub id: i64,
    pub uid: String,
    pub email: String,
    pub name: String,
    pub login: String,
    pub theme: String,
    pub org_id: i64,
    pub is_grafana_admin: bool,
    pub is_disabled: bool,
    pub is_external: bool,
    pub auth_labels: Vec<String>,
    pub updated_at: String,
    pub created_at: String,
    pub avatar_url: String,
}

#[utoipa::path(get, path = "/api/users/lookup", tag = "users", params(LookupParams),
    responses(
        (status = 200, body = GrafanaUserProfile, description = "the user with that login (or, failing that, email)"),
        (status = 400, body = Message, description = "`loginOrEmail` missing or empty, or an unknown query parameter"),
        (status = 401, body = Message, description = "no or invalid credentials"),
        (status = 403, body = Message, description = "the caller is not an Admin"),
        (status = 404, body = Message, description = "no such user"),
        (status = 503, body = Message, description = "no grants store is configured"),
    ),
    security(("bearer" = [])))]
pub async fn lookup_user(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    into_response(
        async {
            require_admin(&state, &headers)?;
            let parameters = parse_query(query.as_deref(), &["loginOrEmail"])?;
            let wanted = parameters
                .get("loginOrEmail")
                .filter(|text| !text.is_empty())
                .ok_or_else(|| {
                    AdminError::BadRequest("query parameter `loginOrEmail` is required".into())
                })?;
            let user = store(&state)?.user_by_login_or_email(wanted).await?;
            let grafana = grafana_user(user.clone());
            Ok(json_response(
                StatusCode::OK,
                &GrafanaUserProfile {
                    id: user.id,
                    uid: user.uid,
                    email: grafana.email,
                    name: grafana.name,
                    login: user.login,
                    theme: String::new(),
                    org_id: 1,
                    is_grafana_admin: grafana.is_admin,
                    is_disabled: false,
                    is_external: false,
                    auth_labels: Vec::new(),
                    updated_at: user.created_at.clone(),
                    created_at: user.created_at,
                    avatar_url: grafana.avatar_url,
                },
            ))
        }
        .await,
    )
}

/// A team in Grafana's search shape.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrafanaTeam {
    pub id: i64,
    pub uid: String,
    pub org_id: i64,
    pub name: String,
    pub email: String,
    pub avatar_url: String,
    pub member_count: i64,
}

fn grafana_team(team: TeamRecord) -> GrafanaTeam {
    GrafanaTeam {
        avatar_url: avatar_url(&team.name),
        id: team.id,
        uid: team.uid,
        org_id: 1,
        name: team.name,
        email: team.email.unwrap_or_default(),
        member_count: team.member_count,
    }
}

/// `GET /api/teams/search`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TeamSearch {
    pub total_count: i64,
    pub teams: Vec<GrafanaTeam>,
    pub page: i64,
    pub per_page: i64,
}

#[utoipa::path(get, path = "/api/teams/search", tag = "teams", params(TeamSearchParams),
    responses(
        (status = 200, body = TeamSearch, description = "Grafana's team search page"),
        (status = 400, body = Message, description = "an unknown or repeated query parameter, or `page`/`perpage` out of range"),
        (status = 401, body = Message, description = "no or invalid credentials"),
        (status = 403, body = Message, description = "the caller is not an Admin"),
        (status = 503, body = Message, description = "no grants store is configured"),
    ),
    security(("bearer" = [])))]
pub async fn search_teams(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    into_response(
        async {
            require_admin(&state, &headers)?;
            let parameters = parse_query(query.as_deref(), &["name", "query", "page", "perpage"])?;
            let page = search_page(&parameters)?;
            let text = parameters
                .get("query")
                .map(String::as_str)
                .unwrap_or_default();
            let found = store(&state)?
                .search_teams(parameters.get("name").map(String::as_str), text, page)
                .await?;
            Ok(json_response(
                StatusCode::OK,
                &TeamSearch {
                    total_count: found.total_count,
                    teams: found.items.into_iter().map(grafana_team).collect(),
                    page: page.page,
                    per_page: page.per_page,
                },
            ))
        }
        .await,
    )
}

/// A service account in Grafana's search shape.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrafanaServiceAccount {
    pub id: i64,
    pub uid: String,
    pub name: String,
    pub login: String,
    pub org_id: i64,
    pub is_disabled: bool,
    /// The basic role, or `None`.
    pub role: String,
    /// How many tokens it has.
    pub tokens: i64,
    pub avatar_url: String,
}

/// `GET /api/serviceaccounts/search`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountSearch {
    pub total_count: i64,
    pub service_accounts: Vec<GrafanaServiceAccount>,
    pub page: i64,
    pub per_page: i64,
}

#[utoipa::path(get, path = "/api/serviceaccounts/search", tag = "service accounts", params(SearchParams),
    responses(
        (status = 200, body = ServiceAccountSearch, description = "Grafana's service account search page"),
        (status = 400, body = Message, description = "an unknown or repeated query parameter, or `page`/`perpage` out of range"),
        (status = 401, body = Message, description = "no or invalid credentials"),
        (status = 403, body = Message, description = "the caller is not an Admin"),
        (status = 503, body = Message, description = "no grants store is configured"),
    ),
    security(("bearer" = [])))]
pub async fn search_service_accounts(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    into_response(
        async {
            require_admin(&state, &headers)?;
            let parameters = parse_query(query.as_deref(), &["query", "page", "perpage"])?;
            let page = search_page(&parameters)?;
            let text = parameters
                .get("query")
                .map(String::as_str)
                .unwrap_or_default();
            let store = store(&state)?;
            let found = store.search_users(text, page, true).await?;
            let ids: Vec<i64> = found.items.iter().map(|account| account.id).collect();
            let tokens = store.token_counts(&ids).await?;
            let service_accounts = found
                .items
                .into_iter()
                .map(|account| GrafanaServiceAccount {
                    avatar_url: avatar_url(&account.login),
                    tokens: tokens.get(&account.id).copied().unwrap_or(0),
                    role: account.basic_role.clone().unwrap_or_else(|| "None".into()),
                    name: account
                        .name
                        .clone()
                        .unwrap_or_else(|| account.login.clone()),
                    id: account.id,
                    uid: account.uid,
                    login: account.login,
                    org_id: 1,
                    is_disabled: false,
                })
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &ServiceAccountSearch {
                    total_count: found.total_count,
                    service_accounts,
                    page: page.page,
                    per_page: page.per_page,
                },
            ))
        }
        .await,
    )
}

/// A datasource in Grafana's shape. Config-file datasources are `readOnly` (like
/// Grafana's provisioned ones); secure settings show only as `secureJsonFields` names.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrafanaDatasource {
    /// The store's id, or for a config-file datasource a stable id derived from its uid
    /// (above 2^52, never a store id).
    pub id: i64,
    pub uid: String,
    pub org_id: i64,
    pub name: String,
    /// The SQL dialect datagate parses its queries in.
    #[serde(rename = "type")]
    pub datasource_type: String,
    pub type_logo_url: String,
    pub access: String,
    pub url: String,
    pub user: String,
    pub database: String,
    pub basic_auth: bool,
    pub is_default: bool,
    /// The datasource's settings (store datasources) plus its `tables`.
    #[schema(value_type = Object)]
    pub json_data: Value,
    #[schema(value_type = Object)]
    pub secure_json_fields: Value,
    pub version: i64,
    pub read_only: bool,
}

/// Every datasource the snapshot knows, config-file ones first, then the store's (by id).
async fn all_datasources(state: &AppState) -> Result<Vec<GrafanaDatasource>, AdminError> {
    let dialect_name = |dialect: &crate::rls::Dialect| {
        serde_json::to_value(dialect)
            .ok()
            .and_then(|value| value.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let blank = |id: i64, uid: &str, name: &str, datasource_type: String| GrafanaDatasource {
        id,
        uid: uid.to_string(),
        org_id: 1,
        name: name.to_string(),
        datasource_type,
        type_logo_url: String::new(),
        access: "proxy".into(),
        url: String::new(),
        user: String::new(),
        database: String::new(),
        basic_auth: false,
        is_default: false,
        json_data: json!({}),
        secure_json_fields: json!({}),
        version: 1,
        read_only: true,
    };
    let mut listed: Vec<GrafanaDatasource> = state
        .config
        .datasources
        .iter()
        .map(|datasource| {
            let mut item = blank(
                config_datasource_id(&datasource.uid),
                &datasource.uid,
                &datasource.uid,
                dialect_name(&datasource.dialect),
            );
            item.json_data = json!({"tables": datasource.tables});
            item
        })
        .collect();
    if let Some(store) = &state.store {
        let mut page = crate::store::PageRequest {
            page: 1,
            page_size: crate::store::MAX_PAGE_SIZE,
        };
        loop {
            let records = store.list_datasources(page).await?;
            for record in &records.items {
                let mut item = blank(
                    record.id,
                    &record.uid,
                    &record.name,
                    dialect_name(&record.dialect),
                );
                let mut json_data = record.settings.clone();
                if let Some(object) = json_data.as_object_mut() {
                    object.insert("tables".into(), json!(record.tables));
                }
                item.json_data = json_data;
                item.secure_json_fields = Value::Object(
                    record
                        .secure_settings_set
                        .iter()
                        .map(|name| (name.clone(), Value::Bool(true)))
                        .collect(),
                );
                item.read_only = false;
                listed.push(item);
            }
            if !records.has_next {
                break;
            }
            page.page += 1;
        }
    }
    Ok(listed)
}

/// A config-file datasource's id: stable, from its uid, in the range store ids never
/// reach.
fn config_datasource_id(uid: &str) -> i64 {
    let digest = Sha256::digest(format!("datasource\n{uid}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    let base = 1_i64 << 52;
    base | (i64::from_be_bytes(bytes) & (base - 1))
}

fn may_read(caller: &Caller, uid: &str) -> bool {
    caller.principal.roles.iter().any(|role| role == ADMIN_ROLE)
        || caller.snapshot.policy.allows(
            &caller.principal.subjects(),
            &datasource_object(uid),
            "datasources:read",
        )
}

#[utoipa::path(get, path = "/api/datasources", tag = "datasources",
    responses(
        (status = 200, body = [GrafanaDatasource], description = "every datasource the caller may read (`datasources:read`), config-file ones included"),
        (status = 401, body = Message, description = "no or invalid credentials"),
        (status = 503, body = Message, description = "the grants store is unreachable"),
    ),
    security(("bearer" = [])))]
pub async fn list_datasources(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    into_response(
        async {
            let caller = authenticate(&state, &headers)?;
            parse_query(query.as_deref(), &[])?;
            let readable: Vec<GrafanaDatasource> = all_datasources(&state)
                .await?
                .into_iter()
                .filter(|datasource| may_read(&caller, &datasource.uid))
                .collect();
            Ok(json_response(StatusCode::OK, &readable))
        }
        .await,
    )
}

#[utoipa::path(get, path = "/api/datasources/uid/{uid}", tag = "datasources",
    params(("uid" = String, Path, description = "datasource uid")),
    responses(
        (status = 200, body = GrafanaDatasource, description = "the datasource"),
        (status = 401, body = Message, description = "no or invalid credentials"),
        (status = 403, body = Message, description = "the caller lacks `datasources:read` on it"),
        (status = 404, body = Message, description = "no such datasource"),
        (status = 503, body = Message, description = "the grants store is unreachable"),
    ),
    security(("bearer" = [])))]
pub async fn get_datasource_by_uid(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(uid): Path<String>,
) -> Response {
    into_response(
        async {
            let caller = authenticate(&state, &headers)?;
            if !may_read(&caller, &uid) {
                return Err(AdminError::Refused(
                    crate::decision::Refusal::MissingDatasourcePermission {
                        action: "datasources:read".into(),
                        uid,
                    },
                ));
            }
            let found = all_datasources(&state)
                .await?
                .into_iter()
                .find(|datasource| datasource.uid == uid)
                .ok_or_else(|| AdminError::NotFound(format!("datasource `{uid}` not found")))?;
            Ok(json_response(StatusCode::OK, &found))
        }
        .await,
    )
}

/// `GET /api/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub commit: String,
    /// `ok`, or `failing` when the grants store does not answer.
    pub database: String,
    pub version: String,
}

#[utoipa::path(get, path = "/api/health", tag = "operations",
    responses(
        (status = 200, body = Health, description = "up, and the grants store (if any) answers"),
        (status = 503, body = Health, description = "the grants store does not answer"),
    ))]
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let database_ok = match &state.store {
        Some(store) => store.revision().await.is_ok(),
        None => true,
    };
    let body = Health {
        commit: String::new(),
        database: if database_ok { "ok" } else { "failing" }.into(),
        version: GRAFANA_API_VERSION.into(),
    };
    let status = if database_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}

/// The part of Grafana's `GET /api/frontend/settings` clients read on connect.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FrontendSettings {
    pub build_info: BuildInfo,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    /// The Grafana API version these endpoints follow.
    pub version: String,
    pub commit: String,
    pub edition: String,
    pub env: String,
    /// datagate's own version.
    pub datagate_version: String,
}

#[utoipa::path(get, path = "/api/frontend/settings", tag = "operations",
    responses((status = 200, body = FrontendSettings, description = "build information (what `grafana-client` reads on connect)")))]
pub async fn frontend_settings() -> Response {
    json_response(
        StatusCode::OK,
        &FrontendSettings {
            build_info: BuildInfo {
                version: GRAFANA_API_VERSION.into(),
                commit: String::new(),
                edition: "datagate".into(),
                env: "production".into(),
                datagate_version: env!("CARGO_PKG_VERSION").into(),
            },
        },
    )
}

/// `GET /api/org`: datagate has one organisation, Grafana's default.
#[derive(Debug, Serialize, ToSchema)]
pub struct Organization {
    pub id: i64,
    pub name: String,
    #[schema(value_type = Object)]
    pub address: Value,
}

#[utoipa::path(get, path = "/api/org", tag = "operations",
    responses(
        (status = 200, body = Organization, description = "the one organisation"),
        (status = 401, body = Message, description = "no or invalid credentials"),
    ),
    security(("bearer" = [])))]
pub async fn current_org(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    into_response((|| -> AdminResult {
        authenticate(&state, &headers)?;
        Ok(json_response(
            StatusCode::OK,
            &Organization {
                id: 1,
                name: "Main Org.".into(),
                address: json!({"address1": "", "address2": "", "city": "", "zipCode": "", "state": "", "country": ""}),
            },
        ))
    })())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paging_follows_grafana_and_refuses_out_of_range() {
        let parameters = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect()
        };
        assert_eq!(
            search_page(&parameters(&[])).unwrap(),
            SearchPage {
                page: 1,
                per_page: 1000
            }
        );
        assert_eq!(
            search_page(&parameters(&[("page", "3"), ("perpage", "2")])).unwrap(),
            SearchPage {
                page: 3,
                per_page: 2
            }
        );
        for (name, value) in [
            ("page", "0"),
            ("page", "-1"),
            ("page", "x"),
            ("perpage", "1001"),
            ("perpage", "0"),
        ] {
            assert!(
                search_page(&parameters(&[(name, value)])).is_err(),
                "{name}={value}"
            );
        }
    }

    #[test]
    fn config_datasource_ids_are_stable_and_above_store_ids() {
        assert_eq!(config_datasource_id("demo"), config_datasource_id("demo"));
        assert_ne!(config_datasource_id("demo"), config_datasource_id("other"));
        assert!(config_datasource_id("demo") >= 1 << 52);
        assert!(config_datasource_id("demo") < 1 << 53);
    }
}
