//! Grafana's datasource permissions API, wire-compatible with
//! `GET /api/access-control/datasources/:uid` and
//! `POST /api/access-control/datasources/:uid/{users|teams|builtInRoles}/:id`
//! (`shared/reference/grafana-datasource-permissions-api.md`), so Grafana clients and
//! scripts work unchanged against datagate's admin port.
//!
//! Reading needs `datasources.permissions:read` and writing
//! `datasources.permissions:write` on the datasource's scope. Listings show the grants
//! made through this API (`isManaged: true`) and those from policy files
//! (`isManaged: false`; a wildcard-scope file grant is `isInherited: true`). Every item's
//! `id` is the grant's own and survives changes to other grants. File grants to Superset
//! roles have no Grafana item shape; `…/role-grants` lists them. No response names a
//! policy file or line. Removing a grant here removes only the managed one: a file grant
//! stays until its file changes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::error::AdminError;
use super::support::{
    AdminResult, into_response, json_response, parse_body, parse_id, require_datasource_action,
    write,
};
use crate::policy::{DATASOURCE_LEVELS, PolicyLine};
use crate::principal::{BasicRole, subject};
use crate::state::{AppState, PolicySnapshot};
use crate::store::{Change, Grantee};

const READ: &str = "datasources.permissions:read";
const WRITE: &str = "datasources.permissions:write";

/// One entry of `GET /api/access-control/datasources/:uid`, in Grafana's shape.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PermissionItem {
    pub id: i64,
    pub role_name: String,
    pub is_managed: bool,
    pub is_inherited: bool,
    pub is_service_account: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_login: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_avatar_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_avatar_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub built_in_role: Option<String>,
    pub actions: Vec<String>,
    pub permission: String,
}

/// `{"permission": "Query" | "Edit" | "Admin" | ""}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPermission {
    pub permission: String,
}

/// `{"message": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    pub message: String,
}

/// The actions a level grants (Grafana's table; `policies/00-builtin-hierarchy.csv`).
pub fn level_actions(level: &str) -> Vec<String> {
    let mut actions = vec!["datasources:read", "datasources:query"];
    if level == "Edit" || level == "Admin" {
        actions.extend(["datasources:write", "datasources:delete"]);
    }
    if level == "Admin" {
        actions.extend([
            "datasources.permissions:read",
            "datasources.permissions:write",
        ]);
    }
    if !DATASOURCE_LEVELS.contains(&level) {
        // A single-action file grant such as `datasources:query`.
        return vec![level.to_string()];
    }
    actions.into_iter().map(str::to_string).collect()
}

fn avatar_url(seed: &str) -> String {
    let digest = hex::encode(Sha256::digest(seed.as_bytes()));
    format!("/avatar/{}", &digest[..32])
}

fn known_datasource(snapshot: &PolicySnapshot, uid: &str) -> Result<(), AdminError> {
    if snapshot.store.datasource_uids.contains(uid) {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!(
            "datasource `{uid}` not found"
        )))
    }
}

/// Ids of policy-file grants sit above 2^52 (store ids never get there) and below 2^53,
/// so they never collide with a store grant's and stay exact in JavaScript clients.
const FILE_GRANT_ID_BASE: i64 = 1 << 52;

/// A policy-file grant's id: derived from the grant itself (who, on what, which level),
/// so it stays the same across reloads, revokes of other grants and edits elsewhere in
/// the file.
fn file_grant_id(subject: &str, object: &str, action: &str) -> i64 {
    let digest = Sha256::digest(format!("{subject}\n{object}\n{action}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    FILE_GRANT_ID_BASE | (i64::from_be_bytes(bytes) & (FILE_GRANT_ID_BASE - 1))
}

/// The policy-file grants on `uid` (exact or wildcard scope), with whether each is
/// inherited from a wildcard.
fn file_grants_on<'a>(
    snapshot: &'a PolicySnapshot,
    uid: &str,
) -> impl Iterator<Item = (&'a str, &'a str, &'a str, bool)> + 'a {
    let exact = crate::policy::datasource_object(uid);
    snapshot
        .files
        .datasource_grants
        .iter()
        .filter_map(move |sourced| {
            let PolicyLine::Grant {
                subject: grantee,
                object,
                action,
            } = &sourced.line
            else {
                return None;
            };
            let inherited = object == "datasources:*" || object == "datasources:uid:*";
            (object == &exact || inherited).then_some((
                grantee.as_str(),
                object.as_str(),
                action.as_str(),
                inherited,
            ))
        })
}

/// Every grant on `uid` to a grantee Grafana's item shape can express (users, service
/// accounts, teams, built-in roles), managed ones first, in a stable order. Ids are the
/// grants' own (see [`file_grant_id`] for file grants). Grants to Superset roles are
/// listed apart, by [`role_grants`].
pub fn permission_items(snapshot: &PolicySnapshot, uid: &str) -> Vec<PermissionItem> {
    let contents = &snapshot.store.contents;
    let mut items = Vec::new();
    let blank = |id: i64, role_name: String, permission: &str| PermissionItem {
        id,
        role_name,
        is_managed: true,
        is_inherited: false,
        is_service_account: false,
        user_id: None,
        user_login: None,
        user_avatar_url: None,
        team: None,
        team_id: None,
        team_avatar_url: None,
        built_in_role: None,
        actions: level_actions(permission),
        permission: permission.to_string(),
    };
    for (key, grant) in contents.grants_on(uid) {
        match &*key.grantee_kind {
            "user" => {
                let Some(user) = key
                    .grantee
                    .parse::<i64>()
                    .ok()
                    .and_then(|id| contents.user(id))
                else {
                    continue;
                };
                let mut item = blank(
                    grant.id,
                    format!("managed:users:{}:permissions", user.id),
                    &grant.permission,
                );
                item.is_service_account = user.is_service_account;
                item.user_id = Some(user.id);
                item.user_login = Some(user.login.clone());
                item.user_avatar_url = Some(avatar_url(&user.login));
                items.push(item);
            }
            "team" => {
                let Some((team_id, name)) = key
                    .grantee
                    .parse::<i64>()
                    .ok()
                    .and_then(|id| contents.team_name(id).map(|name| (id, name)))
                else {
                    continue;
                };
                let mut item = blank(
                    grant.id,
                    format!("managed:teams:{team_id}:permissions"),
                    &grant.permission,
                );
                item.team = Some(name.to_string());
                item.team_id = Some(team_id);
                item.team_avatar_url = Some(avatar_url(name));
                items.push(item);
            }
            "builtin" => {
                let mut item = blank(
                    grant.id,
                    format!(
                        "managed:builtins:{}:permissions",
                        key.grantee.to_lowercase()
                    ),
                    &grant.permission,
                );
                item.built_in_role = Some(key.grantee.to_string());
                items.push(item);
            }
            _ => {}
        }
    }
    for (grantee, object, action, inherited) in file_grants_on(snapshot, uid) {
        // `policy:` plus the grantee, never the file or line: those are operator detail.
        let mut item = blank(
            file_grant_id(grantee, object, action),
            format!("policy:{grantee}"),
            action,
        );
        item.is_managed = false;
        item.is_inherited = inherited;
        if let Some(login) = grantee.strip_prefix(subject::USER) {
            item.user_id = contents
                .users()
                .find(|user| !user.is_service_account && user.login == login)
                .map(|user| user.id);
            item.user_login = Some(login.to_string());
            item.user_avatar_url = Some(avatar_url(login));
        } else if let Some(login) = grantee.strip_prefix(subject::SERVICE_ACCOUNT) {
            item.is_service_account = true;
            item.user_id = contents
                .users()
                .find(|user| user.is_service_account && user.login == login)
                .map(|user| user.id);
            item.user_login = Some(login.to_string());
            item.user_avatar_url = Some(avatar_url(login));
        } else if let Some(team) = grantee.strip_prefix(subject::TEAM) {
            item.team_id = contents
                .teams()
                .find(|(_, name)| *name == team)
                .map(|(id, _)| id);
            item.team = Some(team.to_string());
            item.team_avatar_url = Some(avatar_url(team));
        } else if let Some(role) = grantee.strip_prefix(subject::BASIC) {
            item.built_in_role = Some(role.to_string());
        } else {
            continue;
        }
        items.push(item);
    }
    items
}

/// One policy-file grant on a datasource to a Superset/FAB role (or another grantee
/// Grafana's permission items have no field for).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleGrant {
    /// Stable, derived from the grant (as in the Grafana listing).
    pub id: i64,
    /// The grantee as the policy names it, e.g. `role:Gamma`.
    pub subject: String,
    /// The Superset role's name, for `role:` grantees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub permission: String,
    pub actions: Vec<String>,
    /// Granted on every datasource (`datasources:*`).
    pub is_inherited: bool,
}

/// The grants on `uid` that [`permission_items`] cannot list in Grafana's shape.
pub fn role_grants(snapshot: &PolicySnapshot, uid: &str) -> Vec<RoleGrant> {
    file_grants_on(snapshot, uid)
        .filter(|(grantee, ..)| {
            ![
                subject::USER,
                subject::SERVICE_ACCOUNT,
                subject::TEAM,
                subject::BASIC,
            ]
            .iter()
            .any(|prefix| grantee.starts_with(prefix))
        })
        .map(|(grantee, object, action, inherited)| RoleGrant {
            id: file_grant_id(grantee, object, action),
            subject: grantee.to_string(),
            role: grantee.strip_prefix(subject::ROLE).map(str::to_string),
            permission: action.to_string(),
            actions: level_actions(action),
            is_inherited: inherited,
        })
        .collect()
}

#[utoipa::path(
    get,
    path = "/api/access-control/datasources/{uid}",
    tag = "datasource permissions",
    params(("uid" = String, Path, description = "datasource uid")),
    responses(
        (status = 200, description = "every grant on the datasource", body = [PermissionItem]),
        (status = 401, description = "no or invalid credentials", body = Message),
        (status = 403, description = "caller lacks `datasources.permissions:read` on it", body = Message),
        (status = 404, description = "unknown datasource", body = Message),
    ),
    security(("bearer" = []))
)]
pub async fn get_permissions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(uid): Path<String>,
) -> Response {
    into_response((|| -> AdminResult {
        let caller = require_datasource_action(&state, &headers, &uid, READ)?;
        known_datasource(&caller.snapshot, &uid)?;
        Ok(json_response(
            StatusCode::OK,
            &permission_items(&caller.snapshot, &uid),
        ))
    })())
}

#[utoipa::path(
    get,
    path = "/api/access-control/datasources/{uid}/role-grants",
    tag = "datasource permissions",
    params(("uid" = String, Path, description = "datasource uid")),
    responses(
        (status = 200, description = "policy-file grants on the datasource to Superset roles, which Grafana's permission items cannot express", body = [RoleGrant]),
        (status = 401, description = "no or invalid credentials", body = Message),
        (status = 403, description = "caller lacks `datasources.permissions:read` on it", body = Message),
        (status = 404, description = "unknown datasource", body = Message),
    ),
    security(("bearer" = []))
)]
pub async fn get_role_grants(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(uid): Path<String>,
) -> Response {
    into_response((|| -> AdminResult {
        let caller = require_datasource_action(&state, &headers, &uid, READ)?;
        known_datasource(&caller.snapshot, &uid)?;
        Ok(json_response(
            StatusCode::OK,
            &role_grants(&caller.snapshot, &uid),
        ))
    })())
}

async fn set_permission(
    state: Arc<AppState>,
    headers: HeaderMap,
    uid: String,
    grantee: Result<Grantee, AdminError>,
    body: Bytes,
) -> AdminResult {
    let caller = require_datasource_action(&state, &headers, &uid, WRITE)?;
    known_datasource(&caller.snapshot, &uid)?;
    let grantee = grantee?;
    let request: SetPermission = parse_body(&body)?;
    let level = match request.permission.as_str() {
        "" => None,
        level if DATASOURCE_LEVELS.contains(&level) => Some(level.to_string()),
        other => {
            return Err(AdminError::BadRequest(format!(
                "permission `{other}` is not one of `Query`, `Edit`, `Admin` or `` (empty, to remove)"
            )));
        }
    };
    let removing = level.is_none();
    write(
        &state,
        &caller,
        Change::SetDatasourcePermission {
            datasource_uid: uid,
            grantee,
            level,
        },
    )
    .await?;
    let message = if removing {
        "Permission removed"
    } else {
        "Permission updated"
    };
    Ok(json_response(
        StatusCode::OK,
        &Message {
            message: message.to_string(),
        },
    ))
}

#[utoipa::path(
    post,
    path = "/api/access-control/datasources/{uid}/users/{id}",
    tag = "datasource permissions",
    params(("uid" = String, Path), ("id" = i64, Path, description = "user or service account id")),
    request_body = SetPermission,
    responses(
        (status = 200, body = Message, description = "`Permission updated` or `Permission removed`"),
        (status = 400, body = Message), (status = 401, body = Message),
        (status = 403, body = Message), (status = 404, body = Message),
    ),
    security(("bearer" = []))
)]
pub async fn set_user_permission(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((uid, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let grantee = parse_id("user", &id).map(Grantee::User);
    into_response(set_permission(state, headers, uid, grantee, body).await)
}

#[utoipa::path(
    post,
    path = "/api/access-control/datasources/{uid}/teams/{id}",
    tag = "datasource permissions",
    params(("uid" = String, Path), ("id" = i64, Path, description = "team id")),
    request_body = SetPermission,
    responses(
        (status = 200, body = Message, description = "`Permission updated` or `Permission removed`"),
        (status = 400, body = Message), (status = 401, body = Message),
        (status = 403, body = Message), (status = 404, body = Message),
    ),
    security(("bearer" = []))
)]
pub async fn set_team_permission(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((uid, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let grantee = parse_id("team", &id).map(Grantee::Team);
    into_response(set_permission(state, headers, uid, grantee, body).await)
}

#[utoipa::path(
    post,
    path = "/api/access-control/datasources/{uid}/builtInRoles/{name}",
    tag = "datasource permissions",
    params(("uid" = String, Path), ("name" = String, Path, description = "`Viewer`, `Editor` or `Admin`")),
    request_body = SetPermission,
    responses(
        (status = 200, body = Message, description = "`Permission updated` or `Permission removed`"),
        (status = 400, body = Message), (status = 401, body = Message),
        (status = 403, body = Message), (status = 404, body = Message),
    ),
    security(("bearer" = []))
)]
pub async fn set_built_in_role_permission(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((uid, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    // Grafana spells them `Viewer`, `Editor`, `Admin`; other spellings are refused so a
    // typo never creates a grant nobody holds.
    let grantee = BasicRole::ALL
        .into_iter()
        .find(|role| role.as_str() == name)
        .map(Grantee::BuiltInRole)
        .ok_or_else(|| {
            AdminError::BadRequest(format!(
                "built-in role `{name}` is not one of `Viewer`, `Editor`, `Admin`"
            ))
        });
    into_response(set_permission(state, headers, uid, grantee, body).await)
}
