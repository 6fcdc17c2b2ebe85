//! What the admin API reads from the store: one record type per resource, and paged
//! listings. Secrets never appear in a record: token hashes and datasource secure
//! settings stay in the database (a datasource record lists only which secure fields are
//! set).

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::{Store, StoreError};
use crate::rls::{Dialect, FilterDefinition};

/// `page` (1-based) and `page_size` query parameters.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageRequest {
    /// 1-based page number.
    #[serde(default = "default_page")]
    #[param(minimum = 1, maximum = 1_000_000, default = 1, required = false)]
    pub page: i64,
    /// Items per page.
    #[serde(default = "default_page_size")]
    #[param(minimum = 1, maximum = 1000, default = 50, required = false)]
    pub page_size: i64,
}

pub const MAX_PAGE_SIZE: i64 = 1000;

/// The largest `page` accepted (pages past the end are empty anyway).
pub const MAX_PAGE: i64 = 1_000_000;

fn default_page() -> i64 {
    1
}
fn default_page_size() -> i64 {
    50
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            page: default_page(),
            page_size: default_page_size(),
        }
    }
}

impl PageRequest {
    pub fn validate(&self) -> Result<(), StoreError> {
        if !(1..=MAX_PAGE).contains(&self.page) {
            return Err(StoreError::Invalid(format!(
                "`page` must be between 1 and {MAX_PAGE}, got `{}`",
                self.page
            )));
        }
        if !(1..=MAX_PAGE_SIZE).contains(&self.page_size) {
            return Err(StoreError::Invalid(format!(
                "`page_size` must be between 1 and {MAX_PAGE_SIZE}, got `{}`",
                self.page_size
            )));
        }
        Ok(())
    }

    fn offset(&self) -> i64 {
        (self.page - 1).saturating_mul(self.page_size)
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub page: i64,
    pub page_size: i64,
    /// Items on this page.
    pub count: usize,
    pub total_count: i64,
    pub total_pages: i64,
    pub has_next: bool,
    pub has_previous: bool,
}

impl<T> Page<T> {
    fn new(items: Vec<T>, request: PageRequest, total_count: i64) -> Page<T> {
        let total_pages = (total_count + request.page_size - 1) / request.page_size;
        Page {
            count: items.len(),
            items,
            page: request.page,
            page_size: request.page_size,
            total_count,
            total_pages,
            has_next: request.page < total_pages,
            has_previous: request.page > 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserRecord {
    pub id: i64,
    pub uid: String,
    pub login: String,
    pub email: Option<String>,
    pub name: Option<String>,
    /// Grafana basic role: `Viewer`, `Editor` or `Admin`.
    pub basic_role: Option<String>,
    /// Superset/FAB roles this user holds in addition to those in its token.
    pub roles: Vec<String>,
    pub is_service_account: bool,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TeamRecord {
    pub id: i64,
    pub uid: String,
    pub name: String,
    pub email: Option<String>,
    pub member_count: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenRecord {
    pub id: i64,
    pub uid: String,
    pub name: String,
    pub service_account_id: i64,
    pub created_at: String,
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolePermission {
    /// `can_<verb>`, e.g. `can_read`, `can_export_data`.
    pub permission: String,
    /// The view (Superset object), e.g. `Chart`, or `*` for every view.
    pub view: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RoleRecord {
    pub id: i64,
    pub uid: String,
    pub name: String,
    pub description: Option<String>,
    pub permissions: Vec<RolePermission>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FilterRecord {
    pub id: i64,
    pub uid: String,
    #[serde(flatten)]
    pub filter: FilterDefinition,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DatasourceRecord {
    pub id: i64,
    /// The operator's identifier, used in grants and routes.
    pub uid: String,
    /// Generated at creation.
    pub uuid: String,
    pub name: String,
    pub dialect: Dialect,
    pub tables: Vec<String>,
    pub deny_unlisted_tables: bool,
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    /// Names of the secure settings that are set; their values are write-only.
    pub secure_settings_set: Vec<String>,
    pub created_at: String,
}

/// One datasource grant held in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantRow {
    /// Stable for the grant's life: a permission change keeps it, a revoke retires it.
    pub id: i64,
    pub datasource_uid: String,
    /// `user`, `team` or `builtin`.
    pub grantee_kind: String,
    pub grantee: String,
    pub permission: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditRecord {
    pub id: i64,
    pub uid: String,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
    pub revision: i64,
}

/// Filters for `GET /api/audit`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// 1-based page number.
    #[serde(default)]
    #[param(minimum = 1, maximum = 1_000_000, default = 1)]
    pub page: Option<i64>,
    /// Items per page.
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000, default = 50)]
    pub page_size: Option<i64>,
    /// Only changes made by this actor (login).
    #[serde(default)]
    pub user: Option<String>,
    /// Only this action, e.g. `datasource_permission.set`.
    #[serde(default)]
    pub action: Option<String>,
    /// RFC 3339; only changes at or after.
    #[serde(default)]
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339; only changes before.
    #[serde(default)]
    #[param(format = DateTime)]
    pub to: Option<String>,
}

pub(crate) fn format_ms(at_ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms.max(0) as u64);
    crate::state::time_rfc3339::format(at)
}

fn parse_json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

pub(crate) fn user_from_row(row: &AnyRow) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        id: row.try_get("id")?,
        uid: row.try_get("uid")?,
        login: row.try_get("login")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        basic_role: row.try_get("basic_role")?,
        roles: parse_json_list(&row.try_get::<String, _>("roles")?),
        is_service_account: row.try_get::<i64, _>("is_service_account")? != 0,
        created_at: format_ms(row.try_get("created_at")?),
    })
}

pub(crate) const USER_COLUMNS: &str =
    "id, uid, login, email, name, basic_role, roles, is_service_account, created_at";

pub(crate) fn team_from_row(row: &AnyRow) -> Result<TeamRecord, StoreError> {
    Ok(TeamRecord {
        id: row.try_get("id")?,
        uid: row.try_get("uid")?,
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        member_count: row.try_get("member_count")?,
        created_at: format_ms(row.try_get("created_at")?),
    })
}

pub(crate) const TEAM_SELECT: &str = "SELECT t.id, t.uid, t.name, t.email, t.created_at, \
     (SELECT COUNT(*) FROM team_members m WHERE m.team_id = t.id) AS member_count FROM teams t";

pub(crate) fn filter_from_row(row: &AnyRow) -> Result<FilterRecord, StoreError> {
    let definition: String = row.try_get("definition")?;
    Ok(FilterRecord {
        id: row.try_get("id")?,
        uid: row.try_get("uid")?,
        filter: serde_json::from_str(&definition)
            .map_err(|error| StoreError::Database(format!("stored filter unreadable: {error}")))?,
        created_at: format_ms(row.try_get("created_at")?),
    })
}

pub(crate) fn datasource_from_row(row: &AnyRow) -> Result<DatasourceRecord, StoreError> {
    let dialect: String = row.try_get("dialect")?;
    let secure: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&row.try_get::<String, _>("secure_settings")?).unwrap_or_default();
    Ok(DatasourceRecord {
        id: row.try_get("id")?,
        uid: row.try_get("uid")?,
        uuid: row.try_get("uuid")?,
        name: row.try_get("name")?,
        dialect: serde_json::from_value(serde_json::Value::String(dialect.clone()))
            .map_err(|_| StoreError::Database(format!("stored dialect `{dialect}` unknown")))?,
        tables: parse_json_list(&row.try_get::<String, _>("tables")?),
        deny_unlisted_tables: row.try_get::<i64, _>("deny_unlisted_tables")? != 0,
        settings: serde_json::from_str(&row.try_get::<String, _>("settings")?)
            .unwrap_or(serde_json::Value::Object(Default::default())),
        secure_settings_set: secure.keys().cloned().collect(),
        created_at: format_ms(row.try_get("created_at")?),
    })
}

fn token_from_row(row: &AnyRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: row.try_get("id")?,
        uid: row.try_get("uid")?,
        name: row.try_get("name")?,
        service_account_id: row.try_get("service_account_id")?,
        created_at: format_ms(row.try_get("created_at")?),
        expires_at: row.try_get::<Option<i64>, _>("expires_at")?.map(format_ms),
    })
}

impl Store {
    async fn count(&self, sql: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query(sql)
            .fetch_one(self.pool())
            .await?
            .try_get::<i64, _>(0)?)
    }

    pub async fn list_users(
        &self,
        page: PageRequest,
        service_accounts: bool,
    ) -> Result<Page<UserRecord>, StoreError> {
        page.validate()?;
        let flag = i64::from(service_accounts);
        let total = sqlx::query("SELECT COUNT(*) FROM users WHERE is_service_account = $1")
            .bind(flag)
            .fetch_one(self.pool())
            .await?
            .try_get::<i64, _>(0)?;
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE is_service_account = $1 ORDER BY id LIMIT $2 OFFSET $3"
        ))
        .bind(flag)
        .bind(page.page_size)
        .bind(page.offset())
        .fetch_all(self.pool())
        .await?;
        let items = rows.iter().map(user_from_row).collect::<Result<_, _>>()?;
        Ok(Page::new(items, page, total))
    }

    /// A user or service account by id; `service_account` says which one the caller
    /// asked for (`None`: either).
    pub async fn user(
        &self,
        id: i64,
        service_account: Option<bool>,
    ) -> Result<UserRecord, StoreError> {
        let what = match service_account {
            Some(true) => "service account",
            _ => "user",
        };
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what,
                id: id.to_string(),
            })?;
        let user = user_from_row(&row)?;
        if service_account.is_some_and(|wanted| wanted != user.is_service_account) {
            return Err(StoreError::NotFound {
                what,
                id: id.to_string(),
            });
        }
        Ok(user)
    }

    pub async fn list_teams(&self, page: PageRequest) -> Result<Page<TeamRecord>, StoreError> {
        page.validate()?;
        let total = self.count("SELECT COUNT(*) FROM teams").await?;
        let rows = sqlx::query(&format!("{TEAM_SELECT} ORDER BY t.id LIMIT $1 OFFSET $2"))
            .bind(page.page_size)
            .bind(page.offset())
            .fetch_all(self.pool())
            .await?;
        let items = rows.iter().map(team_from_row).collect::<Result<_, _>>()?;
        Ok(Page::new(items, page, total))
    }

    pub async fn team(&self, id: i64) -> Result<TeamRecord, StoreError> {
        let row = sqlx::query(&format!("{TEAM_SELECT} WHERE t.id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "team",
                id: id.to_string(),
            })?;
        team_from_row(&row)
    }

    pub async fn team_members(
        &self,
        team_id: i64,
        page: PageRequest,
    ) -> Result<Page<UserRecord>, StoreError> {
        page.validate()?;
        self.team(team_id).await?;
        let total = sqlx::query("SELECT COUNT(*) FROM team_members WHERE team_id = $1")
            .bind(team_id)
            .fetch_one(self.pool())
            .await?
            .try_get::<i64, _>(0)?;
        let columns = USER_COLUMNS
            .split(", ")
            .map(|column| format!("u.{column}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sqlx::query(&format!(
            "SELECT {columns} FROM users u JOIN team_members m ON m.user_id = u.id \
             WHERE m.team_id = $1 ORDER BY u.id LIMIT $2 OFFSET $3"
        ))
        .bind(team_id)
        .bind(page.page_size)
        .bind(page.offset())
        .fetch_all(self.pool())
        .await?;
        let items = rows.iter().map(user_from_row).collect::<Result<_, _>>()?;
        Ok(Page::new(items, page, total))
    }

    pub async fn service_account_tokens(
        &self,
        service_account_id: i64,
        page: PageRequest,
    ) -> Result<Page<TokenRecord>, StoreError> {
        page.validate()?;
        self.user(service_account_id, Some(true)).await?;
        let total = sqlx::query(
            "SELECT COUNT(*) FROM service_account_tokens WHERE service_account_id = $1",
        )
        .bind(service_account_id)
        .fetch_one(self.pool())
        .await?
        .try_get::<i64, _>(0)?;
        let rows = sqlx::query(
            "SELECT id, uid, name, service_account_id, created_at, expires_at \
             FROM service_account_tokens WHERE service_account_id = $1 ORDER BY id LIMIT $2 OFFSET $3",
        )
        .bind(service_account_id)
        .bind(page.page_size)
        .bind(page.offset())
        .fetch_all(self.pool())
        .await?;
        let items = rows.iter().map(token_from_row).collect::<Result<_, _>>()?;
        Ok(Page::new(items, page, total))
    }

    pub async fn list_roles(&self, page: PageRequest) -> Result<Page<RoleRecord>, StoreError> {
        page.validate()?;
        let total = self.count("SELECT COUNT(*) FROM roles").await?;
        let rows = sqlx::query("SELECT id FROM roles ORDER BY id LIMIT $1 OFFSET $2")
            .bind(page.page_size)
            .bind(page.offset())
            .fetch_all(self.pool())
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            items.push(self.role(row.try_get("id")?).await?);
        }
        Ok(Page::new(items, page, total))
    }

    pub async fn role(&self, id: i64) -> Result<RoleRecord, StoreError> {
        let row =
            sqlx::query("SELECT id, uid, name, description, created_at FROM roles WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: "role",
                    id: id.to_string(),
                })?;
        let permissions = sqlx::query(
            "SELECT permission, view_name FROM role_permissions WHERE role_id = $1 ORDER BY view_name, permission",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|row| {
            Ok(RolePermission {
                permission: row.try_get("permission")?,
                view: row.try_get("view_name")?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
        Ok(RoleRecord {
            id: row.try_get("id")?,
            uid: row.try_get("uid")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            permissions,
            created_at: format_ms(row.try_get("created_at")?),
        })
    }

    pub async fn list_filters(&self, page: PageRequest) -> Result<Page<FilterRecord>, StoreError> {
        page.validate()?;
        let total = self.count("SELECT COUNT(*) FROM rls_filters").await?;
        let rows = sqlx::query(
            "SELECT id, uid, definition, created_at FROM rls_filters ORDER BY id LIMIT $1 OFFSET $2",
        )
        .bind(page.page_size)
        .bind(page.offset())
        .fetch_all(self.pool())
        .await?;
        let items = rows.iter().map(filter_from_row).collect::<Result<_, _>>()?;
        Ok(Page::new(items, page, total))
    }

    pub async fn filter(&self, id: i64) -> Result<FilterRecord, StoreError> {
        let row =
            sqlx::query("SELECT id, uid, definition, created_at FROM rls_filters WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: "filter",
                    id: id.to_string(),
                })?;
        filter_from_row(&row)
    }

    pub async fn list_datasources(
        &self,
        page: PageRequest,
    ) -> Result<Page<DatasourceRecord>, StoreError> {
        page.validate()?;
        let total = self.count("SELECT COUNT(*) FROM datasources").await?;
        let rows = sqlx::query(&format!(
            "{DATASOURCE_SELECT} ORDER BY id LIMIT $1 OFFSET $2"
        ))
        .bind(page.page_size)
        .bind(page.offset())
        .fetch_all(self.pool())
        .await?;
        let items = rows
            .iter()
            .map(datasource_from_row)
            .collect::<Result<_, _>>()?;
        Ok(Page::new(items, page, total))
    }

    pub async fn datasource(&self, id: i64) -> Result<DatasourceRecord, StoreError> {
        let row = sqlx::query(&format!("{DATASOURCE_SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "datasource",
                id: id.to_string(),
            })?;
        datasource_from_row(&row)
    }

    pub async fn audit_events(&self, query: &AuditQuery) -> Result<Page<AuditRecord>, StoreError> {
        let page = PageRequest {
            page: query.page.unwrap_or_else(default_page),
            page_size: query.page_size.unwrap_or_else(default_page_size),
        };
        page.validate()?;
        let parse_time = |name: &str, text: &Option<String>| -> Result<Option<i64>, StoreError> {
            text.as_deref()
                .map(|text| {
                    time::OffsetDateTime::parse(
                        text,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .map(|at| (at.unix_timestamp_nanos() / 1_000_000) as i64)
                    .map_err(|_| {
                        StoreError::Invalid(format!(
                            "`{name}` must be an RFC 3339 time such as `2026-01-31T12:00:00Z`, got `{text}`"
                        ))
                    })
                })
                .transpose()
        };
        let from = parse_time("from", &query.from)?.unwrap_or(i64::MIN);
        let to = parse_time("to", &query.to)?.unwrap_or(i64::MAX);
        // Empty string = no filter; keeps one statement for every combination.
        let user = query.user.clone().unwrap_or_default();
        let action = query.action.clone().unwrap_or_default();
        let condition =
            "($1 = '' OR actor = $1) AND ($2 = '' OR action = $2) AND at_ms >= $3 AND at_ms < $4";
        let total = sqlx::query(&format!(
            "SELECT COUNT(*) FROM audit_events WHERE {condition}"
        ))
        .bind(user.clone())
        .bind(action.clone())
        .bind(from)
        .bind(to)
        .fetch_one(self.pool())
        .await?
        .try_get::<i64, _>(0)?;
        let rows = sqlx::query(&format!(
            "SELECT id, uid, at_ms, actor, action, target, before_state, after_state, revision \
             FROM audit_events WHERE {condition} ORDER BY id DESC LIMIT $5 OFFSET $6"
        ))
        .bind(user)
        .bind(action)
        .bind(from)
        .bind(to)
        .bind(page.page_size)
        .bind(page.offset())
        .fetch_all(self.pool())
        .await?;
        let parse = |text: Option<String>| text.and_then(|text| serde_json::from_str(&text).ok());
        let items = rows
            .iter()
            .map(|row| {
                Ok(AuditRecord {
                    id: row.try_get("id")?,
                    uid: row.try_get("uid")?,
                    at: format_ms(row.try_get("at_ms")?),
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    before: parse(row.try_get("before_state")?),
                    after: parse(row.try_get("after_state")?),
                    revision: row.try_get("revision")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Page::new(items, page, total))
    }
}

pub(crate) const DATASOURCE_SELECT: &str = "SELECT id, uid, uuid, name, dialect, tables, deny_unlisted_tables, settings, secure_settings, created_at FROM datasources";
