//! Every write the admin API can make, as one enum, and how each is applied inside the
//! write transaction opened by [`super::Store::apply`]. Each change reports what it did
//! (action, target, before and after) for the audit trail.

use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{Any, Row, Transaction};
use utoipa::ToSchema;

use super::delta::Scope;
use super::records::{
    DATASOURCE_SELECT, RolePermission, TEAM_SELECT, USER_COLUMNS, datasource_from_row,
    filter_from_row, team_from_row, user_from_row,
};
use super::{Applied, StoreError, now_ms};
use crate::principal::BasicRole;
use crate::rls::{Dialect, FilterDefinition};

/// Who a datasource grant is for, as in Grafana's API paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grantee {
    /// `users/:id`: a user or a service account.
    User(i64),
    /// `teams/:id`.
    Team(i64),
    /// `builtInRoles/:name`.
    BuiltInRole(BasicRole),
}

impl Grantee {
    fn kind_and_key(&self) -> (&'static str, String) {
        match self {
            Grantee::User(id) => ("user", id.to_string()),
            Grantee::Team(id) => ("team", id.to_string()),
            Grantee::BuiltInRole(role) => ("builtin", role.as_str().to_string()),
        }
    }
}

/// A user or service account as written through the API.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserInput {
    pub login: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// `Viewer`, `Editor` or `Admin`.
    #[serde(default)]
    pub basic_role: Option<String>,
    /// Superset/FAB roles held in addition to the token's.
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServiceAccountTokenInput {
    pub service_account_id: i64,
    pub name: String,
    /// Hex sha256 of the token; the token itself is never stored.
    pub token_sha256: String,
    pub expires_at_ms: Option<i64>,
}

/// One write.
#[derive(Debug, Clone)]
pub enum Change {
    SetDatasourcePermission {
        datasource_uid: String,
        grantee: Grantee,
        /// `None` removes the grant.
        level: Option<String>,
    },
    CreateUser {
        input: UserInput,
        service_account: bool,
    },
    UpdateUser {
        id: i64,
        input: UserInput,
        service_account: bool,
    },
    DeleteUser {
        id: i64,
        service_account: bool,
    },
    CreateTeam {
        name: String,
        email: Option<String>,
    },
    UpdateTeam {
        id: i64,
        name: String,
        email: Option<String>,
    },
    DeleteTeam {
        id: i64,
    },
    AddTeamMember {
        team_id: i64,
        user_id: i64,
    },
    RemoveTeamMember {
        team_id: i64,
        user_id: i64,
    },
    CreateToken(ServiceAccountTokenInput),
    DeleteToken {
        service_account_id: i64,
        token_id: i64,
    },
    CreateRole {
        name: String,
        description: Option<String>,
        permissions: Vec<RolePermission>,
    },
    UpdateRole {
        id: i64,
        name: String,
        description: Option<String>,
        permissions: Vec<RolePermission>,
    },
    DeleteRole {
        id: i64,
    },
    CreateFilter(FilterDefinition),
    UpdateFilter {
        id: i64,
        filter: FilterDefinition,
    },
    DeleteFilter {
        id: i64,
    },
    CreateDatasource(DatasourceInput),
    UpdateDatasource {
        id: i64,
        input: DatasourceInput,
    },
    DeleteDatasource {
        id: i64,
    },
}

/// A datasource as written through the API.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasourceInput {
    pub uid: String,
    pub name: String,
    pub dialect: Dialect,
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub deny_unlisted_tables: bool,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub settings: serde_json::Map<String, Value>,
    /// Write-only: stored, never returned. On update, keys given replace stored ones;
    /// a key set to `null` is removed; keys not given are kept.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub secure_settings: serde_json::Map<String, Value>,
}

/// Names become policy subjects and objects: keep them to printable text without the
/// characters the policy grammar uses.
pub(crate) fn check_name(field: &str, value: &str) -> Result<(), StoreError> {
    if value.trim().is_empty() {
        return Err(StoreError::Invalid(format!("`{field}` must not be empty")));
    }
    if value.chars().count() > 190 {
        return Err(StoreError::Invalid(format!(
            "`{field}` is longer than 190 characters"
        )));
    }
    if value != value.trim()
        || value
            .chars()
            .any(|character| character.is_control() || matches!(character, ',' | '"' | '#'))
    {
        return Err(StoreError::Invalid(format!(
            "`{field}` must not have surrounding spaces, control characters, `,`, `\"` or `#`"
        )));
    }
    Ok(())
}

fn check_basic_role(value: &Option<String>) -> Result<Option<String>, StoreError> {
    value
        .as_deref()
        .map(|role| {
            role.parse::<BasicRole>()
                .map(|role| role.as_str().to_string())
                .map_err(|error| StoreError::Invalid(error.to_string()))
        })
        .transpose()
}

fn check_user_input(input: &UserInput) -> Result<Option<String>, StoreError> {
    check_name("login", &input.login)?;
    for role in &input.roles {
        check_name("roles[]", role)?;
    }
    check_basic_role(&input.basic_role)
}

type Tx<'a> = Transaction<'a, Any>;

async fn user_json(tx: &mut Tx<'_>, id: i64) -> Result<Option<Value>, StoreError> {
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(|row| user_from_row(&row).map(|user| json!(user)))
        .transpose()
}

async fn require_user(
    tx: &mut Tx<'_>,
    id: i64,
    service_account: Option<bool>,
) -> Result<Value, StoreError> {
    let what = if service_account == Some(true) {
        "service account"
    } else {
        "user"
    };
    let user = user_json(tx, id)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what,
            id: id.to_string(),
        })?;
    if let Some(wanted) = service_account
        && user["is_service_account"].as_bool() != Some(wanted)
    {
        return Err(StoreError::NotFound {
            what,
            id: id.to_string(),
        });
    }
    Ok(user)
}

async fn team_json(tx: &mut Tx<'_>, id: i64) -> Result<Value, StoreError> {
    let row = sqlx::query(&format!("{TEAM_SELECT} WHERE t.id = $1"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "team",
            id: id.to_string(),
        })?;
    Ok(json!(team_from_row(&row)?))
}

async fn role_json(tx: &mut Tx<'_>, id: i64) -> Result<Value, StoreError> {
    let row = sqlx::query("SELECT id, uid, name, description FROM roles WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "role",
            id: id.to_string(),
        })?;
    let permissions: Vec<Value> = sqlx::query(
        "SELECT permission, view_name FROM role_permissions WHERE role_id = $1 ORDER BY view_name, permission",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|row| {
        Ok(json!({
            "permission": row.try_get::<String, _>("permission")?,
            "view": row.try_get::<String, _>("view_name")?,
        }))
    })
    .collect::<Result<_, StoreError>>()?;
    Ok(json!({
        "id": row.try_get::<i64, _>("id")?,
        "uid": row.try_get::<String, _>("uid")?,
        "name": row.try_get::<String, _>("name")?,
        "description": row.try_get::<Option<String>, _>("description")?,
        "permissions": permissions,
    }))
}

async fn filter_json(tx: &mut Tx<'_>, id: i64) -> Result<Value, StoreError> {
    let row = sqlx::query("SELECT id, uid, definition, created_at FROM rls_filters WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "filter",
            id: id.to_string(),
        })?;
    Ok(json!(filter_from_row(&row)?))
}

async fn datasource_json(tx: &mut Tx<'_>, id: i64) -> Result<Value, StoreError> {
    let row = sqlx::query(&format!("{DATASOURCE_SELECT} WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "datasource",
            id: id.to_string(),
        })?;
    // The record type lists secure setting names only, so this is safe to audit.
    Ok(json!(datasource_from_row(&row)?))
}

fn check_role_permissions(permissions: &[RolePermission]) -> Result<(), StoreError> {
    for permission in permissions {
        check_name("permissions[].permission", &permission.permission)?;
        check_name("permissions[].view", &permission.view)?;
        if !permission.permission.starts_with("can_") {
            return Err(StoreError::Invalid(format!(
                "role permission `{}` must start with `can_`",
                permission.permission
            )));
        }
    }
    Ok(())
}

async fn write_role_permissions(
    tx: &mut Tx<'_>,
    role_id: i64,
    permissions: &[RolePermission],
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM role_permissions WHERE role_id = $1")
        .bind(role_id)
        .execute(&mut **tx)
        .await?;
    let mut seen = std::collections::HashSet::new();
    for permission in permissions {
        if !seen.insert(permission) {
            continue;
        }
        sqlx::query(
            "INSERT INTO role_permissions (role_id, permission, view_name) VALUES ($1, $2, $3)",
        )
        .bind(role_id)
        .bind(permission.permission.clone())
        .bind(permission.view.clone())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn check_filter(filter: &FilterDefinition) -> Result<(), StoreError> {
    check_name("name", &filter.name)?;
    check_name("datasource", &filter.datasource)?;
    Ok(())
}

fn check_datasource(input: &DatasourceInput) -> Result<(), StoreError> {
    check_name("uid", &input.uid)?;
    if let Some(value) = input.secure_settings.get("aws_iam")
        && !value.is_null()
    {
        let settings = serde_json::json!({ "aws_iam": value }).to_string();
        super::contents::aws_iam_of(&settings)?;
    }
    if input.uid.contains(':') || input.uid.contains('*') || input.uid.contains('/') {
        return Err(StoreError::Invalid(
            "`uid` must not contain `:`, `*` or `/`".into(),
        ));
    }
    check_name("name", &input.name)
}

async fn insert_returning_id<'q>(
    tx: &mut Tx<'_>,
    query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
) -> Result<i64, StoreError> {
    Ok(query.fetch_one(&mut **tx).await?.try_get::<i64, _>(0)?)
}

fn applied(action: &str, target: String, before: Option<Value>, after: Option<Value>) -> Applied {
    Applied {
        action: action.to_string(),
        target,
        before,
        after,
        created_id: None,
        revision: 0,
    }
}

pub(super) async fn apply(tx: &mut Tx<'_>, change: &Change) -> Result<Applied, StoreError> {
    match change {
        Change::SetDatasourcePermission {
            datasource_uid,
            grantee,
            level,
        } => {
            match grantee {
                Grantee::User(id) => {
                    require_user(tx, *id, None).await?;
                }
                Grantee::Team(id) => {
                    team_json(tx, *id).await?;
                }
                Grantee::BuiltInRole(_) => {}
            }
            let (kind, key) = grantee.kind_and_key();
            let before: Option<String> = sqlx::query(
                "SELECT permission FROM datasource_grants WHERE datasource_uid = $1 AND grantee_kind = $2 AND grantee = $3",
            )
            .bind(datasource_uid.clone())
            .bind(kind)
            .bind(key.clone())
            .fetch_optional(&mut **tx)
            .await?
            .map(|row| row.try_get::<String, _>(0))
            .transpose()?;
            // A changed level updates the row in place, so the grant keeps its id.
            let statement = match (&before, level) {
                (_, None) => {
                    "DELETE FROM datasource_grants WHERE datasource_uid = $1 AND grantee_kind = $2 AND grantee = $3"
                }
                (Some(_), Some(_)) => {
                    "UPDATE datasource_grants SET permission = $4 WHERE datasource_uid = $1 AND grantee_kind = $2 AND grantee = $3"
                }
                (None, Some(_)) => {
                    "INSERT INTO datasource_grants (datasource_uid, grantee_kind, grantee, permission) VALUES ($1, $2, $3, $4)"
                }
            };
            let query = sqlx::query(statement)
                .bind(datasource_uid.clone())
                .bind(kind)
                .bind(key.clone());
            match level {
                Some(level) => query.bind(level.clone()),
                None => query,
            }
            .execute(&mut **tx)
            .await?;
            let state = |permission: &Option<String>| {
                permission
                    .as_ref()
                    .map(|permission| json!({"grantee_kind": kind, "grantee": key, "permission": permission}))
            };
            Ok(applied(
                "datasource_permission.set",
                format!("datasources:uid:{datasource_uid}/{kind}/{key}"),
                state(&before),
                state(level),
            ))
        }
        Change::CreateUser {
            input,
            service_account,
        } => {
            let basic_role = check_user_input(input)?;
            let id = insert_returning_id(
                tx,
                sqlx::query(
                    "INSERT INTO users (uid, login, email, name, basic_role, roles, is_service_account, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                )
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(input.login.clone())
                .bind(input.email.clone())
                .bind(input.name.clone())
                .bind(basic_role)
                .bind(json!(input.roles).to_string())
                .bind(i64::from(*service_account))
                .bind(now_ms()),
            )
            .await?;
            let after = user_json(tx, id).await?;
            let what = if *service_account {
                "service_account"
            } else {
                "user"
            };
            let mut result = applied(
                &format!("{what}.create"),
                format!("{what}s/{id}"),
                None,
                after,
            );
            result.created_id = Some(id);
            Ok(result)
        }
        Change::UpdateUser {
            id,
            input,
            service_account,
        } => {
            let basic_role = check_user_input(input)?;
            let before = require_user(tx, *id, Some(*service_account)).await?;
            sqlx::query(
                "UPDATE users SET login = $1, email = $2, name = $3, basic_role = $4, roles = $5 WHERE id = $6",
            )
            .bind(input.login.clone())
            .bind(input.email.clone())
            .bind(input.name.clone())
            .bind(basic_role)
            .bind(json!(input.roles).to_string())
            .bind(*id)
            .execute(&mut **tx)
            .await?;
            let after = user_json(tx, *id).await?;
            let what = if *service_account {
                "service_account"
            } else {
                "user"
            };
            Ok(applied(
                &format!("{what}.update"),
                format!("{what}s/{id}"),
                Some(before),
                after,
            ))
        }
        Change::DeleteUser {
            id,
            service_account,
        } => {
            let before = require_user(tx, *id, Some(*service_account)).await?;
            // Explicit rather than relying on ON DELETE CASCADE, which SQLite only honours
            // with foreign keys switched on.
            for statement in [
                "DELETE FROM team_members WHERE user_id = $1",
                "DELETE FROM service_account_tokens WHERE service_account_id = $1",
            ] {
                sqlx::query(statement).bind(*id).execute(&mut **tx).await?;
            }
            sqlx::query(
                "DELETE FROM datasource_grants WHERE grantee_kind = 'user' AND grantee = $1",
            )
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?;
            sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(*id)
                .execute(&mut **tx)
                .await?;
            let what = if *service_account {
                "service_account"
            } else {
                "user"
            };
            Ok(applied(
                &format!("{what}.delete"),
                format!("{what}s/{id}"),
                Some(before),
                None,
            ))
        }
        Change::CreateTeam { name, email } => {
            check_name("name", name)?;
            let id = insert_returning_id(
                tx,
                sqlx::query(
                    "INSERT INTO teams (uid, name, email, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
                )
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(name.clone())
                .bind(email.clone())
                .bind(now_ms()),
            )
            .await?;
            let after = team_json(tx, id).await?;
            let mut result = applied("team.create", format!("teams/{id}"), None, Some(after));
            result.created_id = Some(id);
            Ok(result)
        }
        Change::UpdateTeam { id, name, email } => {
            check_name("name", name)?;
            let before = team_json(tx, *id).await?;
            sqlx::query("UPDATE teams SET name = $1, email = $2 WHERE id = $3")
                .bind(name.clone())
                .bind(email.clone())
                .bind(*id)
                .execute(&mut **tx)
                .await?;
            let after = team_json(tx, *id).await?;
            Ok(applied(
                "team.update",
                format!("teams/{id}"),
                Some(before),
                Some(after),
            ))
        }
        Change::DeleteTeam { id } => {
            let before = team_json(tx, *id).await?;
            sqlx::query("DELETE FROM team_members WHERE team_id = $1")
                .bind(*id)
                .execute(&mut **tx)
                .await?;
            sqlx::query(
                "DELETE FROM datasource_grants WHERE grantee_kind = 'team' AND grantee = $1",
            )
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?;
            sqlx::query("DELETE FROM teams WHERE id = $1")
                .bind(*id)
                .execute(&mut **tx)
                .await?;
            Ok(applied(
                "team.delete",
                format!("teams/{id}"),
                Some(before),
                None,
            ))
        }
        Change::AddTeamMember { team_id, user_id } => {
            team_json(tx, *team_id).await?;
            // The body names the user: a missing one is bad input (400), not a missing
            // resource at this URL (404 would say the team is gone).
            require_user(tx, *user_id, None)
                .await
                .map_err(|error| match error {
                    StoreError::NotFound { .. } => {
                        StoreError::Invalid(format!("`user_id`: user `{user_id}` does not exist"))
                    }
                    other => other,
                })?;
            let existing =
                sqlx::query("SELECT 1 FROM team_members WHERE team_id = $1 AND user_id = $2")
                    .bind(*team_id)
                    .bind(*user_id)
                    .fetch_optional(&mut **tx)
                    .await?;
            if existing.is_none() {
                sqlx::query("INSERT INTO team_members (team_id, user_id) VALUES ($1, $2)")
                    .bind(*team_id)
                    .bind(*user_id)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(applied(
                "team_member.add",
                format!("teams/{team_id}/members/{user_id}"),
                existing.map(|_| json!({"user_id": user_id})),
                Some(json!({"user_id": user_id})),
            ))
        }
        Change::RemoveTeamMember { team_id, user_id } => {
            team_json(tx, *team_id).await?;
            let removed =
                sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
                    .bind(*team_id)
                    .bind(*user_id)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
            if removed == 0 {
                return Err(StoreError::NotFound {
                    what: "team member",
                    id: user_id.to_string(),
                });
            }
            Ok(applied(
                "team_member.remove",
                format!("teams/{team_id}/members/{user_id}"),
                Some(json!({"user_id": user_id})),
                None,
            ))
        }
        Change::CreateToken(input) => {
            check_name("name", &input.name)?;
            require_user(tx, input.service_account_id, Some(true)).await?;
            let id = insert_returning_id(
                tx,
                sqlx::query(
                    "INSERT INTO service_account_tokens (uid, service_account_id, name, token_sha256, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                )
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(input.service_account_id)
                .bind(input.name.clone())
                .bind(input.token_sha256.clone())
                .bind(now_ms())
                .bind(input.expires_at_ms),
            )
            .await?;
            let mut result = applied(
                "service_account_token.create",
                format!("serviceaccounts/{}/tokens/{id}", input.service_account_id),
                None,
                Some(json!({"id": id, "name": input.name})),
            );
            result.created_id = Some(id);
            Ok(result)
        }
        Change::DeleteToken {
            service_account_id,
            token_id,
        } => {
            require_user(tx, *service_account_id, Some(true)).await?;
            let row = sqlx::query(
                "SELECT name FROM service_account_tokens WHERE id = $1 AND service_account_id = $2",
            )
            .bind(*token_id)
            .bind(*service_account_id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "token",
                id: token_id.to_string(),
            })?;
            let name: String = row.try_get(0)?;
            sqlx::query("DELETE FROM service_account_tokens WHERE id = $1")
                .bind(*token_id)
                .execute(&mut **tx)
                .await?;
            Ok(applied(
                "service_account_token.delete",
                format!("serviceaccounts/{service_account_id}/tokens/{token_id}"),
                Some(json!({"id": token_id, "name": name})),
                None,
            ))
        }
        Change::CreateRole {
            name,
            description,
            permissions,
        } => {
            check_name("name", name)?;
            check_role_permissions(permissions)?;
            let id = insert_returning_id(
                tx,
                sqlx::query(
                    "INSERT INTO roles (uid, name, description, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
                )
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(name.clone())
                .bind(description.clone())
                .bind(now_ms()),
            )
            .await?;
            write_role_permissions(tx, id, permissions).await?;
            let after = role_json(tx, id).await?;
            let mut result = applied("role.create", format!("roles/{id}"), None, Some(after));
            result.created_id = Some(id);
            Ok(result)
        }
        Change::UpdateRole {
            id,
            name,
            description,
            permissions,
        } => {
            check_name("name", name)?;
            check_role_permissions(permissions)?;
            let before = role_json(tx, *id).await?;
            sqlx::query("UPDATE roles SET name = $1, description = $2 WHERE id = $3")
                .bind(name.clone())
                .bind(description.clone())
                .bind(*id)
                .execute(&mut **tx)
                .await?;
            write_role_permissions(tx, *id, permissions).await?;
            let after = role_json(tx, *id).await?;
            Ok(applied(
                "role.update",
                format!("roles/{id}"),
                Some(before),
                Some(after),
            ))
        }
        Change::DeleteRole { id } => {
            let before = role_json(tx, *id).await?;
            sqlx::query("DELETE FROM role_permissions WHERE role_id = $1")
                .bind(*id)
                .execute(&mut **tx)
                .await?;
            sqlx::query("DELETE FROM roles WHERE id = $1")
                .bind(*id)
                .execute(&mut **tx)
                .await?;
            Ok(applied(
                "role.delete",
                format!("roles/{id}"),
                Some(before),
                None,
            ))
        }
        Change::CreateFilter(filter) => {
            check_filter(filter)?;
            let id = insert_returning_id(
                tx,
                sqlx::query(
                    "INSERT INTO rls_filters (uid, name, definition, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
                )
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(filter.name.clone())
                .bind(json!(filter).to_string())
                .bind(now_ms()),
            )
            .await?;
            let after = filter_json(tx, id).await?;
            let mut result = applied(
                "rls_filter.create",
                format!("rls/filters/{id}"),
                None,
                Some(after),
            );
            result.created_id = Some(id);
            Ok(result)
        }
        Change::UpdateFilter { id, filter } => {
            check_filter(filter)?;
            let before = filter_json(tx, *id).await?;
            sqlx::query("UPDATE rls_filters SET name = $1, definition = $2 WHERE id = $3")
                .bind(filter.name.clone())
                .bind(json!(filter).to_string())
                .bind(*id)
                .execute(&mut **tx)
                .await?;
            let after = filter_json(tx, *id).await?;
            Ok(applied(
                "rls_filter.update",
                format!("rls/filters/{id}"),
                Some(before),
                Some(after),
            ))
        }
        Change::DeleteFilter { id } => {
            let before = filter_json(tx, *id).await?;
            sqlx::query("DELETE FROM rls_filters WHERE id = $1")
                .bind(*id)
                .execute(&mut **tx)
                .await?;
            Ok(applied(
                "rls_filter.delete",
                format!("rls/filters/{id}"),
                Some(before),
                None,
            ))
        }
        Change::CreateDatasource(input) => {
            check_datasource(input)?;
            let secure: serde_json::Map<String, Value> = input
                .secure_settings
                .iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            let id = insert_returning_id(
                tx,
                sqlx::query(
                    "INSERT INTO datasources (uid, uuid, name, dialect, tables, deny_unlisted_tables, settings, secure_settings, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                )
                .bind(input.uid.clone())
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(input.name.clone())
                .bind(json!(input.dialect).as_str().unwrap_or_default().to_string())
                .bind(json!(input.tables).to_string())
                .bind(i64::from(input.deny_unlisted_tables))
                .bind(Value::Object(input.settings.clone()).to_string())
                .bind(Value::Object(secure).to_string())
                .bind(now_ms()),
            )
            .await?;
            let after = datasource_json(tx, id).await?;
            let mut result = applied(
                "datasource.create",
                format!("datasources/{id}"),
                None,
                Some(after),
            );
            result.created_id = Some(id);
            Ok(result)
        }
        Change::UpdateDatasource { id, input } => {
            check_datasource(input)?;
            let before = datasource_json(tx, *id).await?;
            let stored: String =
                sqlx::query("SELECT secure_settings FROM datasources WHERE id = $1")
                    .bind(*id)
                    .fetch_one(&mut **tx)
                    .await?
                    .try_get(0)?;
            let mut secure: serde_json::Map<String, Value> =
                serde_json::from_str(&stored).unwrap_or_default();
            for (key, value) in &input.secure_settings {
                if value.is_null() {
                    secure.remove(key);
                } else {
                    secure.insert(key.clone(), value.clone());
                }
            }
            sqlx::query(
                "UPDATE datasources SET uid = $1, name = $2, dialect = $3, tables = $4, deny_unlisted_tables = $5, \
                 settings = $6, secure_settings = $7 WHERE id = $8",
            )
            .bind(input.uid.clone())
            .bind(input.name.clone())
            .bind(json!(input.dialect).as_str().unwrap_or_default().to_string())
            .bind(json!(input.tables).to_string())
            .bind(i64::from(input.deny_unlisted_tables))
            .bind(Value::Object(input.settings.clone()).to_string())
            .bind(Value::Object(secure).to_string())
            .bind(*id)
            .execute(&mut **tx)
            .await?;
            let after = datasource_json(tx, *id).await?;
            Ok(applied(
                "datasource.update",
                format!("datasources/{id}"),
                Some(before),
                Some(after),
            ))
        }
        Change::DeleteDatasource { id } => {
            let before = datasource_json(tx, *id).await?;
            sqlx::query("DELETE FROM datasource_grants WHERE datasource_uid = $1")
                .bind(before["uid"].as_str().unwrap_or_default().to_string())
                .execute(&mut **tx)
                .await?;
            sqlx::query("DELETE FROM datasources WHERE id = $1")
                .bind(*id)
                .execute(&mut **tx)
                .await?;
            Ok(applied(
                "datasource.delete",
                format!("datasources/{id}"),
                Some(before),
                None,
            ))
        }
    }
}

/// The parts of the store `change` touched (see [`super::delta`]); `applied` gives the
/// ids a create assigned and what a delete removed.
pub(super) fn scopes_of(change: &Change, applied: &Applied) -> Vec<Scope> {
    let created = applied.created_id.unwrap_or_default();
    match change {
        Change::SetDatasourcePermission {
            datasource_uid,
            grantee,
            ..
        } => {
            let (kind, grantee) = grantee.kind_and_key();
            vec![Scope::Grant {
                datasource: datasource_uid.clone(),
                kind: kind.to_string(),
                grantee,
            }]
        }
        Change::CreateUser { .. } => vec![Scope::User { id: created }],
        Change::UpdateUser { id, .. } => vec![Scope::User { id: *id }],
        Change::DeleteUser { id, .. } => vec![
            Scope::User { id: *id },
            Scope::MembersOfUser { user: *id },
            Scope::TokensOfAccount { account: *id },
            Scope::GrantsOfGrantee {
                kind: "user".into(),
                grantee: id.to_string(),
            },
        ],
        Change::CreateTeam { .. } => vec![Scope::Team { id: created }],
        Change::UpdateTeam { id, .. } => vec![Scope::Team { id: *id }],
        Change::DeleteTeam { id } => vec![
            Scope::Team { id: *id },
            Scope::MembersOfTeam { team: *id },
            Scope::GrantsOfGrantee {
                kind: "team".into(),
                grantee: id.to_string(),
            },
        ],
        Change::AddTeamMember { user_id, .. } | Change::RemoveTeamMember { user_id, .. } => {
            vec![Scope::MembersOfUser { user: *user_id }]
        }
        Change::CreateToken(input) => vec![Scope::TokensOfAccount {
            account: input.service_account_id,
        }],
        Change::DeleteToken {
            service_account_id, ..
        } => vec![Scope::TokensOfAccount {
            account: *service_account_id,
        }],
        Change::CreateRole { .. } => vec![Scope::Role { id: created }],
        Change::UpdateRole { id, .. } | Change::DeleteRole { id } => vec![Scope::Role { id: *id }],
        Change::CreateFilter(_) => vec![Scope::Filter { id: created }],
        Change::UpdateFilter { id, .. } | Change::DeleteFilter { id } => {
            vec![Scope::Filter { id: *id }]
        }
        Change::CreateDatasource(_) => vec![Scope::Datasource { id: created }],
        Change::UpdateDatasource { id, .. } => vec![Scope::Datasource { id: *id }],
        Change::DeleteDatasource { id } => {
            let uid = applied
                .before
                .as_ref()
                .and_then(|before| before["uid"].as_str())
                .unwrap_or_default()
                .to_string();
            vec![
                Scope::Datasource { id: *id },
                Scope::GrantsOnDatasource { datasource: uid },
            ]
        }
    }
}
