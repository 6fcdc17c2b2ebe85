//! The management surface of the admin API: users, teams and members, service accounts
//! and their tokens, roles and their permissions, RLS filters and datasources. Every
//! endpoint needs the Admin role; listings are paged (`page`, `page_size`); creates
//! answer 201 with the record (its `uid` is a UUID); every write goes through
//! [`super::support::write`], so it is validated, audited and serving before the
//! response.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::AdminError;
use super::permissions::Message;
use super::support::{
    AdminResult, into_response, json_response, page_request, parse_body, parse_id, parse_query,
    require_admin, store, write,
};
use crate::authn::SERVICE_ACCOUNT_TOKEN_PREFIX;
use crate::rls::FilterDefinition;
use crate::state::AppState;
use crate::store::{
    Change, DatasourceInput, Page, PageRequest, RolePermission, ServiceAccountTokenInput, Store,
    StoreError, UserInput, UserRecord,
};

const PAGE_PARAMETERS: &[&str] = &["page", "page_size"];

fn deleted(what: &str) -> Response {
    json_response(
        StatusCode::OK,
        &Message {
            message: format!("{what} deleted"),
        },
    )
}

fn created_id(applied: &crate::store::Applied) -> Result<i64, AdminError> {
    applied
        .created_id
        .ok_or_else(|| AdminError::Internal("create returned no id".into()))
}

/// A store read borrowing the store, as a future (listings and lookups).
type StoreRead<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Admin role, then `page` / `page_size`, then one paged store listing.
async fn paged<T: Serialize>(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    list: impl for<'a> FnOnce(&'a Store, PageRequest) -> StoreRead<'a, Page<T>>,
) -> Response {
    into_response(
        async {
            require_admin(state, headers)?;
            let page = page_request(&parse_query(query, PAGE_PARAMETERS)?)?;
            Ok(json_response(
                StatusCode::OK,
                &list(store(state)?, page).await?,
            ))
        }
        .await,
    )
}

/// Admin role, then a numeric path id, then one store record.
async fn one<T: Serialize>(
    state: &AppState,
    headers: &HeaderMap,
    what: &str,
    id: &str,
    read: impl for<'a> FnOnce(&'a Store, i64) -> StoreRead<'a, T>,
) -> Response {
    into_response(
        async {
            require_admin(state, headers)?;
            let id = parse_id(what, id)?;
            Ok(json_response(
                StatusCode::OK,
                &read(store(state)?, id).await?,
            ))
        }
        .await,
    )
}

/// Admin role, then a numeric path id, then the delete `change` applied.
async fn removal(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    what: &str,
    id: &str,
    change: impl FnOnce(i64) -> Change,
) -> Response {
    into_response(
        async {
            let caller = require_admin(state, headers)?;
            let id = parse_id(what, id)?;
            write(state, &caller, change(id)).await?;
            Ok(deleted(what))
        }
        .await,
    )
}

/// Admin role, then a JSON body, then the create `change` applied; answers 201 with the
/// created record as the store now has it.
async fn creation<Input: DeserializeOwned, Record: Serialize>(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: &[u8],
    change: impl FnOnce(Input) -> Change,
    read: impl for<'a> FnOnce(&'a Store, i64) -> StoreRead<'a, Record>,
) -> Response {
    into_response(
        async {
            let caller = require_admin(state, headers)?;
            let input: Input = parse_body(body)?;
            let applied = write(state, &caller, change(input)).await?;
            let record = read(store(state)?, created_id(&applied)?).await?;
            Ok(json_response(StatusCode::CREATED, &record))
        }
        .await,
    )
}

/// Admin role, then a numeric path id and a JSON body, then the update `change`
/// applied; answers 200 with the record as the store now has it.
async fn update<Input: DeserializeOwned, Record: Serialize>(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    what: &str,
    id: &str,
    body: &[u8],
    change: impl FnOnce(i64, Input) -> Change,
    read: impl for<'a> FnOnce(&'a Store, i64) -> StoreRead<'a, Record>,
) -> Response {
    into_response(
        async {
            let caller = require_admin(state, headers)?;
            let id = parse_id(what, id)?;
            let input: Input = parse_body(body)?;
            write(state, &caller, change(id, input)).await?;
            Ok(json_response(
                StatusCode::OK,
                &read(store(state)?, id).await?,
            ))
        }
        .await,
    )
}

// ---------------------------------------------------------------- users

#[utoipa::path(post, path = "/api/users", tag = "users", request_body = UserInput,
    responses((status = 201, body = UserRecord), (status = 400, body = Message), (status = 409, body = Message)),
    security(("bearer" = [])))]
pub async fn create_user(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    into_response(create_account(&state, &headers, &body, false).await)
}

async fn create_account(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: &[u8],
    service_account: bool,
) -> AdminResult {
    let caller = require_admin(state, headers)?;
    let input: UserInput = parse_body(body)?;
    if service_account && input.email.is_some() {
        return Err(AdminError::BadRequest(
            "service accounts have no `email`".into(),
        ));
    }
    let applied = write(
        state,
        &caller,
        Change::CreateUser {
            input,
            service_account,
        },
    )
    .await?;
    let record = store(state)?
        .user(created_id(&applied)?, Some(service_account))
        .await?;
    Ok(json_response(StatusCode::CREATED, &record))
}

#[utoipa::path(get, path = "/api/users/{id}", tag = "users", params(("id" = i64, Path)),
    responses((status = 200, body = UserRecord), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn get_user(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    one(&state, &headers, "user", &id, |store, id| {
        Box::pin(store.user(id, Some(false)))
    })
    .await
}

#[utoipa::path(put, path = "/api/users/{id}", tag = "users", params(("id" = i64, Path)), request_body = UserInput,
    responses((status = 200, body = UserRecord), (status = 400, body = Message), (status = 404, body = Message), (status = 409, body = Message)),
    security(("bearer" = [])))]
pub async fn update_user(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    into_response(update_account(&state, &headers, &id, &body, false).await)
}

async fn update_account(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    id: &str,
    body: &[u8],
    service_account: bool,
) -> AdminResult {
    let caller = require_admin(state, headers)?;
    let what = if service_account {
        "service account"
    } else {
        "user"
    };
    let id = parse_id(what, id)?;
    let input: UserInput = parse_body(body)?;
    write(
        state,
        &caller,
        Change::UpdateUser {
            id,
            input,
            service_account,
        },
    )
    .await?;
    let record = store(state)?.user(id, Some(service_account)).await?;
    Ok(json_response(StatusCode::OK, &record))
}

#[utoipa::path(delete, path = "/api/users/{id}", tag = "users", params(("id" = i64, Path)),
    responses((status = 200, body = Message), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn delete_user(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    removal(&state, &headers, "user", &id, |id| Change::DeleteUser {
        id,
        service_account: false,
    })
    .await
}

// ---------------------------------------------------------------- service accounts

#[utoipa::path(get, path = "/api/serviceaccounts", tag = "service accounts",
    params(crate::store::PageRequest),
    responses((status = 200, body = Page<UserRecord>), (status = 400, body = Message)),
    security(("bearer" = [])))]
pub async fn list_service_accounts(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    paged(&state, &headers, query.as_deref(), |store, page| {
        Box::pin(store.list_users(page, true))
    })
    .await
}

#[utoipa::path(post, path = "/api/serviceaccounts", tag = "service accounts", request_body = UserInput,
    responses((status = 201, body = UserRecord), (status = 400, body = Message), (status = 409, body = Message)),
    security(("bearer" = [])))]
pub async fn create_service_account(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    into_response(create_account(&state, &headers, &body, true).await)
}

#[utoipa::path(get, path = "/api/serviceaccounts/{id}", tag = "service accounts", params(("id" = i64, Path)),
    responses((status = 200, body = UserRecord), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn get_service_account(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    one(&state, &headers, "service account", &id, |store, id| {
        Box::pin(store.user(id, Some(true)))
    })
    .await
}

#[utoipa::path(put, path = "/api/serviceaccounts/{id}", tag = "service accounts", params(("id" = i64, Path)), request_body = UserInput,
    responses((status = 200, body = UserRecord), (status = 400, body = Message), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn update_service_account(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    into_response(update_account(&state, &headers, &id, &body, true).await)
}

#[utoipa::path(delete, path = "/api/serviceaccounts/{id}", tag = "service accounts", params(("id" = i64, Path)),
    responses((status = 200, body = Message), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn delete_service_account(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    removal(&state, &headers, "service account", &id, |id| {
        Change::DeleteUser {
            id,
            service_account: true,
        }
    })
    .await
}

/// `POST /api/serviceaccounts/:id/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    /// Lifetime in seconds, at most 100 years; omitted or 0 = no expiry.
    #[serde(default)]
    #[schema(maximum = 3_153_600_000_u64)]
    pub seconds_to_live: Option<u64>,
}

/// The longest token lifetime: 100 years (a longer one is a mistake, and far-future
/// times overflow date libraries).
pub const MAX_TOKEN_SECONDS: u64 = 3_153_600_000;

/// The only response that ever carries the token.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    pub id: i64,
    pub uid: String,
    pub name: String,
    /// Shown once. Use it as `Authorization: Bearer <key>` on the proxy and admin ports.
    pub key: String,
    pub expires_at: Option<String>,
}

#[utoipa::path(get, path = "/api/serviceaccounts/{id}/tokens", tag = "service accounts",
    params(("id" = i64, Path), crate::store::PageRequest),
    responses((status = 200, body = Page<crate::store::TokenRecord>), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn list_tokens(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    into_response(
        async {
            require_admin(&state, &headers)?;
            let id = parse_id("service account", &id)?;
            let page = page_request(&parse_query(query.as_deref(), PAGE_PARAMETERS)?)?;
            let listing = store(&state)?.service_account_tokens(id, page).await?;
            Ok(json_response(StatusCode::OK, &listing))
        }
        .await,
    )
}

#[utoipa::path(post, path = "/api/serviceaccounts/{id}/tokens", tag = "service accounts",
    params(("id" = i64, Path)), request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = Message), (status = 404, body = Message), (status = 409, body = Message)),
    security(("bearer" = [])))]
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    into_response(
        async {
            let caller = require_admin(&state, &headers)?;
            let service_account_id = parse_id("service account", &id)?;
            let request: CreateToken = parse_body(&body)?;
            if request.seconds_to_live.unwrap_or(0) > MAX_TOKEN_SECONDS {
                return Err(AdminError::BadRequest(format!(
                    "`seconds_to_live` may be at most {MAX_TOKEN_SECONDS} (100 years)"
                )));
            }
            let key = new_token()?;
            let expires_at_ms = match request.seconds_to_live {
                None | Some(0) => None,
                Some(seconds) => Some(
                    crate::store::now_ms().saturating_add(
                        i64::try_from(seconds)
                            .unwrap_or(i64::MAX / 2_000)
                            .saturating_mul(1000),
                    ),
                ),
            };
            let applied = write(
                &state,
                &caller,
                Change::CreateToken(ServiceAccountTokenInput {
                    service_account_id,
                    name: request.name.clone(),
                    token_sha256: crate::authn::api_key_digest(&key),
                    expires_at_ms,
                }),
            )
            .await?;
            let token_id = created_id(&applied)?;
            let listing = store(&state)?
                .service_account_tokens(
                    service_account_id,
                    crate::store::PageRequest {
                        page: 1,
                        page_size: crate::store::MAX_PAGE_SIZE,
                    },
                )
                .await?;
            let uid = listing
                .items
                .iter()
                .find(|token| token.id == token_id)
                .map(|token| token.uid.clone())
                .unwrap_or_default();
            Ok(json_response(
                StatusCode::CREATED,
                &CreatedToken {
                    id: token_id,
                    uid,
                    name: request.name,
                    key,
                    expires_at: expires_at_ms.map(crate::store::format_ms),
                },
            ))
        }
        .await,
    )
}

/// 32 bytes from the operating system's generator, base64url, behind the prefix.
fn new_token() -> Result<String, AdminError> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| AdminError::Internal(error.to_string()))?;
    Ok(format!(
        "{SERVICE_ACCOUNT_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

#[utoipa::path(delete, path = "/api/serviceaccounts/{id}/tokens/{token_id}", tag = "service accounts",
    params(("id" = i64, Path), ("token_id" = i64, Path)),
    responses((status = 200, body = Message), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn delete_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, token_id)): Path<(String, String)>,
) -> Response {
    into_response(
        async {
            let caller = require_admin(&state, &headers)?;
            let service_account_id = parse_id("service account", &id)?;
            let token_id = parse_id("token", &token_id)?;
            write(
                &state,
                &caller,
                Change::DeleteToken {
                    service_account_id,
                    token_id,
                },
            )
            .await?;
            Ok(deleted("token"))
        }
        .await,
    )
}

// ---------------------------------------------------------------- teams

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamInput {
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberInput {
    /// A user or service account id.
    pub user_id: i64,
}

#[utoipa::path(get, path = "/api/teams", tag = "teams", params(crate::store::PageRequest),
    responses((status = 200, body = Page<crate::store::TeamRecord>), (status = 400, body = Message)),
    security(("bearer" = [])))]
pub async fn list_teams(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    paged(&state, &headers, query.as_deref(), |store, page| {
        Box::pin(store.list_teams(page))
    })
    .await
}

#[utoipa::path(post, path = "/api/teams", tag = "teams", request_body = TeamInput,
    responses((status = 201, body = crate::store::TeamRecord), (status = 400, body = Message), (status = 409, body = Message)),
    security(("bearer" = [])))]
pub async fn create_team(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    creation(
        &state,
        &headers,
        &body,
        |input: TeamInput| Change::CreateTeam {
            name: input.name,
            email: input.email,
        },
        |store, id| Box::pin(store.team(id)),
    )
    .await
}

#[utoipa::path(get, path = "/api/teams/{id}", tag = "teams", params(("id" = i64, Path)),
    responses((status = 200, body = crate::store::TeamRecord), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn get_team(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    one(&state, &headers, "team", &id, |store, id| {
        Box::pin(store.team(id))
    })
    .await
}

#[utoipa::path(put, path = "/api/teams/{id}", tag = "teams", params(("id" = i64, Path)), request_body = TeamInput,
    responses((status = 200, body = crate::store::TeamRecord), (status = 400, body = Message), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn update_team(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    update(
        &state,
        &headers,
        "team",
        &id,
        &body,
        |id, input: TeamInput| Change::UpdateTeam {
            id,
            name: input.name,
            email: input.email,
        },
        |store, id| Box::pin(store.team(id)),
    )
    .await
}

#[utoipa::path(delete, path = "/api/teams/{id}", tag = "teams", params(("id" = i64, Path)),
    responses((status = 200, body = Message), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn delete_team(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    removal(&state, &headers, "team", &id, |id| Change::DeleteTeam {
        id,
    })
    .await
}

#[utoipa::path(get, path = "/api/teams/{id}/members", tag = "teams",
    params(("id" = i64, Path), crate::store::PageRequest),
    responses((status = 200, body = Page<UserRecord>), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn list_members(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    into_response(
        async {
            require_admin(&state, &headers)?;
            let id = parse_id("team", &id)?;
            let page = page_request(&parse_query(query.as_deref(), PAGE_PARAMETERS)?)?;
            Ok(json_response(
                StatusCode::OK,
                &store(&state)?.team_members(id, page).await?,
            ))
        }
        .await,
    )
}

#[utoipa::path(post, path = "/api/teams/{id}/members", tag = "teams", params(("id" = i64, Path)), request_body = MemberInput,
    responses((status = 200, body = Message), (status = 400, body = Message), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn add_member(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    into_response(
        async {
            let caller = require_admin(&state, &headers)?;
            let team_id = parse_id("team", &id)?;
            let input: MemberInput = parse_body(&body)?;
            write(
                &state,
                &caller,
                Change::AddTeamMember {
                    team_id,
                    user_id: input.user_id,
                },
            )
            .await?;
            Ok(json_response(
                StatusCode::OK,
                &Message {
                    message: "Member added to team".into(),
                },
            ))
        }
        .await,
    )
}

#[utoipa::path(delete, path = "/api/teams/{id}/members/{user_id}", tag = "teams",
    params(("id" = i64, Path), ("user_id" = i64, Path)),
    responses((status = 200, body = Message), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn remove_member(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, user_id)): Path<(String, String)>,
) -> Response {
    into_response(
        async {
            let caller = require_admin(&state, &headers)?;
            let team_id = parse_id("team", &id)?;
            let user_id = parse_id("user", &user_id)?;
            write(
                &state,
                &caller,
                Change::RemoveTeamMember { team_id, user_id },
            )
            .await?;
            Ok(json_response(
                StatusCode::OK,
                &Message {
                    message: "Team member removed".into(),
                },
            ))
        }
        .await,
    )
}

// ---------------------------------------------------------------- roles

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleInput {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// `can_x` on `View`, export permissions (`can_export_data`, …) included.
    #[serde(default)]
    pub permissions: Vec<RolePermission>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolePermissionsInput {
    pub permissions: Vec<RolePermission>,
}

#[utoipa::path(get, path = "/api/roles", tag = "roles", params(crate::store::PageRequest),
    responses((status = 200, body = Page<crate::store::RoleRecord>), (status = 400, body = Message)),
    security(("bearer" = [])))]
pub async fn list_roles(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    paged(&state, &headers, query.as_deref(), |store, page| {
        Box::pin(store.list_roles(page))
    })
    .await
}

#[utoipa::path(post, path = "/api/roles", tag = "roles", request_body = RoleInput,
    responses((status = 201, body = crate::store::RoleRecord), (status = 400, body = Message), (status = 409, body = Message)),
    security(("bearer" = [])))]
pub async fn create_role(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    creation(
        &state,
        &headers,
        &body,
        |input: RoleInput| Change::CreateRole {
            name: input.name,
            description: input.description,
            permissions: input.permissions,
        },
        |store, id| Box::pin(store.role(id)),
    )
    .await
}

#[utoipa::path(get, path = "/api/roles/{id}", tag = "roles", params(("id" = i64, Path)),
    responses((status = 200, body = crate::store::RoleRecord), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn get_role(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    one(&state, &headers, "role", &id, |store, id| {
        Box::pin(store.role(id))
    })
    .await
}

#[utoipa::path(put, path = "/api/roles/{id}", tag = "roles", params(("id" = i64, Path)), request_body = RoleInput,
    responses((status = 200, body = crate::store::RoleRecord), (status = 400, body = Message), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn update_role(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    update(
        &state,
        &headers,
        "role",
        &id,
        &body,
        |id, input: RoleInput| Change::UpdateRole {
            id,
            name: input.name,
            description: input.description,
            permissions: input.permissions,
        },
        |store, id| Box::pin(store.role(id)),
    )
    .await
}

#[utoipa::path(put, path = "/api/roles/{id}/permissions", tag = "roles", params(("id" = i64, Path)), request_body = RolePermissionsInput,
    responses((status = 200, body = crate::store::RoleRecord), (status = 400, body = Message), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn set_role_permissions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    into_response(
        async {
            let caller = require_admin(&state, &headers)?;
            let id = parse_id("role", &id)?;
            let input: RolePermissionsInput = parse_body(&body)?;
            let current = store(&state)?.role(id).await?;
            write(
                &state,
                &caller,
                Change::UpdateRole {
                    id,
                    name: current.name,
                    description: current.description,
                    permissions: input.permissions,
                },
            )
            .await?;
            Ok(json_response(
                StatusCode::OK,
                &store(&state)?.role(id).await?,
            ))
        }
        .await,
    )
}

#[utoipa::path(delete, path = "/api/roles/{id}", tag = "roles", params(("id" = i64, Path)),
    responses((status = 200, body = Message), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn delete_role(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    removal(&state, &headers, "role", &id, |id| Change::DeleteRole {
        id,
    })
    .await
}

// ---------------------------------------------------------------- RLS filters

#[utoipa::path(get, path = "/api/rls/filters", tag = "row-level security", params(crate::store::PageRequest),
    responses((status = 200, body = Page<crate::store::FilterRecord>), (status = 400, body = Message)),
    security(("bearer" = [])))]
pub async fn list_filters(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    paged(&state, &headers, query.as_deref(), |store, page| {
        Box::pin(store.list_filters(page))
    })
    .await
}

#[utoipa::path(post, path = "/api/rls/filters", tag = "row-level security", request_body = FilterDefinition,
    responses((status = 201, body = crate::store::FilterRecord), (status = 400, body = Message, description = "malformed, or the clause does not compile against its datasource"), (status = 409, body = Message)),
    security(("bearer" = [])))]
pub async fn create_filter(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    creation(
        &state,
        &headers,
        &body,
        Change::CreateFilter,
        |store, id| Box::pin(store.filter(id)),
    )
    .await
}

#[utoipa::path(get, path = "/api/rls/filters/{id}", tag = "row-level security", params(("id" = i64, Path)),
    responses((status = 200, body = crate::store::FilterRecord), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn get_filter(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    one(&state, &headers, "filter", &id, |store, id| {
        Box::pin(store.filter(id))
    })
    .await
}

#[utoipa::path(put, path = "/api/rls/filters/{id}", tag = "row-level security", params(("id" = i64, Path)), request_body = FilterDefinition,
    responses((status = 200, body = crate::store::FilterRecord), (status = 400, body = Message), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn update_filter(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    update(
        &state,
        &headers,
        "filter",
        &id,
        &body,
        |id, filter| Change::UpdateFilter { id, filter },
        |store, id| Box::pin(store.filter(id)),
    )
    .await
}

#[utoipa::path(delete, path = "/api/rls/filters/{id}", tag = "row-level security", params(("id" = i64, Path)),
    responses((status = 200, body = Message), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn delete_filter(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    removal(&state, &headers, "filter", &id, |id| Change::DeleteFilter {
        id,
    })
    .await
}

// ---------------------------------------------------------------- datasources

#[utoipa::path(post, path = "/api/datasources", tag = "datasources", request_body = DatasourceInput,
    responses((status = 201, body = crate::store::DatasourceRecord), (status = 400, body = Message), (status = 409, body = Message)),
    security(("bearer" = [])))]
pub async fn create_datasource(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    creation(
        &state,
        &headers,
        &body,
        Change::CreateDatasource,
        |store, id| Box::pin(store.datasource(id)),
    )
    .await
}

#[utoipa::path(get, path = "/api/datasources/{id}", tag = "datasources", params(("id" = i64, Path)),
    responses((status = 200, body = crate::store::DatasourceRecord), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn get_datasource(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    one(&state, &headers, "datasource", &id, |store, id| {
        Box::pin(store.datasource(id))
    })
    .await
}

#[utoipa::path(put, path = "/api/datasources/{id}", tag = "datasources", params(("id" = i64, Path)), request_body = DatasourceInput,
    responses((status = 200, body = crate::store::DatasourceRecord), (status = 400, body = Message), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn update_datasource(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    update(
        &state,
        &headers,
        "datasource",
        &id,
        &body,
        |id, input| Change::UpdateDatasource { id, input },
        |store, id| Box::pin(store.datasource(id)),
    )
    .await
}

#[utoipa::path(delete, path = "/api/datasources/{id}", tag = "datasources", params(("id" = i64, Path)),
    responses((status = 200, body = Message), (status = 400, body = Message, description = "a filter still uses it"), (status = 404, body = Message)),
    security(("bearer" = [])))]
pub async fn delete_datasource(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    removal(&state, &headers, "datasource", &id, |id| {
        Change::DeleteDatasource { id }
    })
    .await
}

// ---------------------------------------------------------------- audit

#[utoipa::path(get, path = "/api/audit", tag = "audit", params(crate::store::AuditQuery),
    responses((status = 200, body = Page<crate::store::AuditRecord>), (status = 400, body = Message)),
    security(("bearer" = [])))]
pub async fn list_audit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    into_response(
        async {
            require_admin(&state, &headers)?;
            let parameters = parse_query(
                query.as_deref(),
                &["page", "page_size", "user", "action", "from", "to"],
            )?;
            let page = page_request(&parameters)?;
            let query = crate::store::AuditQuery {
                page: Some(page.page),
                page_size: Some(page.page_size),
                user: parameters.get("user").cloned(),
                action: parameters.get("action").cloned(),
                from: parameters.get("from").cloned(),
                to: parameters.get("to").cloned(),
            };
            Ok(json_response(
                StatusCode::OK,
                &store(&state)?.audit_events(&query).await?,
            ))
        }
        .await,
    )
}
