//! The whole store as one consistent value, read when a snapshot is built, and its
//! translation into what a snapshot holds: policy lines (grants and role permissions),
//! store identities that enrich an authenticated principal, service-account token
//! digests, RLS filters and datasources.

use std::collections::HashMap;

use sqlx::{Any, Row, Transaction};

use super::StoreError;
use super::records::GrantRow;
use crate::policy::{PolicyLine, SourcedLine, datasource_object};
use crate::principal::{BasicRole, subject};
use crate::rls::{DatasourceConfig, Dialect, FilterDefinition};

/// The name store lines carry in errors (`admin store line 3`).
pub const STORE_SOURCE: &str = "admin store";

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoreUser {
    pub id: i64,
    pub login: String,
    pub is_service_account: bool,
    pub basic_role: Option<BasicRole>,
    pub roles: Vec<String>,
}

impl StoreUser {
    /// The policy subject: `user:<login>` or `serviceaccount:<login>`.
    pub fn subject(&self) -> String {
        if self.is_service_account {
            format!("{}{}", subject::SERVICE_ACCOUNT, self.login)
        } else {
            format!("{}{}", subject::USER, self.login)
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoreToken {
    pub sha256: [u8; 32],
    pub service_account_id: i64,
    pub expires_at_ms: Option<i64>,
}

/// What the store adds to an authenticated caller with the same subject.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StoreIdentity {
    pub roles: Vec<String>,
    pub teams: Vec<String>,
    pub basic_role: Option<BasicRole>,
}

/// Everything in the store at one revision.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StoreContents {
    pub revision: i64,
    pub users: Vec<StoreUser>,
    pub teams: Vec<(i64, String)>,
    /// `(team id, user id)`.
    pub members: Vec<(i64, i64)>,
    pub tokens: Vec<StoreToken>,
    /// `(role name, permission, view)`.
    pub role_permissions: Vec<(String, String, String)>,
    pub grants: Vec<GrantRow>,
    pub filters: Vec<FilterDefinition>,
    pub datasources: Vec<DatasourceConfig>,
}

pub(super) async fn load(tx: &mut Transaction<'_, Any>) -> Result<StoreContents, StoreError> {
    let revision: i64 = sqlx::query("SELECT revision FROM store_revision WHERE id = 1")
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;
    let mut users = Vec::new();
    for row in sqlx::query(
        "SELECT id, login, is_service_account, basic_role, roles FROM users ORDER BY id",
    )
    .fetch_all(&mut **tx)
    .await?
    {
        let basic_role: Option<String> = row.try_get("basic_role")?;
        users.push(StoreUser {
            id: row.try_get("id")?,
            login: row.try_get("login")?,
            is_service_account: row.try_get::<i64, _>("is_service_account")? != 0,
            basic_role: basic_role.and_then(|role| role.parse().ok()),
            roles: serde_json::from_str(&row.try_get::<String, _>("roles")?).unwrap_or_default(),
        });
    }
    let teams = sqlx::query("SELECT id, name FROM teams ORDER BY id")
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("id")?, row.try_get("name")?)))
        .collect::<Result<_, StoreError>>()?;
    let members =
        sqlx::query("SELECT team_id, user_id FROM team_members ORDER BY team_id, user_id")
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("team_id")?, row.try_get("user_id")?)))
            .collect::<Result<_, StoreError>>()?;
    let mut tokens = Vec::new();
    for row in sqlx::query(
        "SELECT token_sha256, service_account_id, expires_at FROM service_account_tokens ORDER BY id",
    )
    .fetch_all(&mut **tx)
    .await?
    {
        let mut sha256 = [0u8; 32];
        let text: String = row.try_get("token_sha256")?;
        if hex::decode_to_slice(&text, &mut sha256).is_err() {
            return Err(StoreError::Database("stored token digest is not hex".into()));
        }
        tokens.push(StoreToken {
            sha256,
            service_account_id: row.try_get("service_account_id")?,
            expires_at_ms: row.try_get("expires_at")?,
        });
    }
    let role_permissions = sqlx::query(
        "SELECT r.name, p.permission, p.view_name FROM role_permissions p JOIN roles r ON r.id = p.role_id \
         ORDER BY r.name, p.view_name, p.permission",
    )
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
    .collect::<Result<_, StoreError>>()?;
    let grants = sqlx::query(
        "SELECT datasource_uid, grantee_kind, grantee, permission, id FROM datasource_grants \
         ORDER BY datasource_uid, grantee_kind, grantee",
    )
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|row| {
        Ok(GrantRow {
            datasource_uid: row.try_get(0)?,
            grantee_kind: row.try_get(1)?,
            grantee: row.try_get(2)?,
            permission: row.try_get(3)?,
            id: row.try_get(4)?,
        })
    })
    .collect::<Result<_, StoreError>>()?;
    let mut filters = Vec::new();
    for row in sqlx::query("SELECT definition FROM rls_filters ORDER BY id")
        .fetch_all(&mut **tx)
        .await?
    {
        let text: String = row.try_get(0)?;
        filters.push(
            serde_json::from_str(&text).map_err(|error| {
                StoreError::Database(format!("stored filter unreadable: {error}"))
            })?,
        );
    }
    let mut datasources = Vec::new();
    for row in sqlx::query(
        "SELECT uid, dialect, tables, deny_unlisted_tables, secure_settings FROM datasources ORDER BY id",
    )
    .fetch_all(&mut **tx)
    .await?
    {
        let dialect: String = row.try_get("dialect")?;
        let dialect: Dialect =
            serde_json::from_value(serde_json::Value::String(dialect.clone()))
                .map_err(|_| StoreError::Database(format!("stored dialect `{dialect}` unknown")))?;
        datasources.push(DatasourceConfig {
            uid: row.try_get("uid")?,
            dialect,
            tables: serde_json::from_str(&row.try_get::<String, _>("tables")?).unwrap_or_default(),
            deny_unlisted_tables: row.try_get::<i64, _>("deny_unlisted_tables")? != 0,
            denied_functions: None,
            aws_iam: aws_iam_of(&row.try_get::<String, _>("secure_settings")?)?,
            templating: None,
        });
    }
    Ok(StoreContents {
        revision,
        users,
        teams,
        members,
        tokens,
        role_permissions,
        grants,
        filters,
        datasources,
    })
}

/// The `aws_iam` secure setting of a stored datasource, checked.
pub(crate) fn aws_iam_of(
    secure_settings: &str,
) -> Result<Option<crate::creds::AwsIamConfig>, StoreError> {
    let settings: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(secure_settings).unwrap_or_default();
    let Some(value) = settings.get("aws_iam") else {
        return Ok(None);
    };
    let iam: crate::creds::AwsIamConfig = serde_json::from_value(value.clone())
        .map_err(|error| StoreError::Invalid(format!("`secure_settings.aws_iam`: {error}")))?;
    iam.validate().map_err(StoreError::Invalid)?;
    Ok(Some(iam))
}

impl StoreContents {
    fn user(&self, id: i64) -> Option<&StoreUser> {
        self.users.iter().find(|user| user.id == id)
    }

    /// The policy subject a grant row is for; `None` if it names a deleted principal.
    pub fn grantee_subject(&self, grant: &GrantRow) -> Option<String> {
        match grant.grantee_kind.as_str() {
            "user" => grant
                .grantee
                .parse::<i64>()
                .ok()
                .and_then(|id| self.user(id))
                .map(StoreUser::subject),
            "team" => grant.grantee.parse::<i64>().ok().and_then(|id| {
                self.teams
                    .iter()
                    .find(|(team_id, _)| *team_id == id)
                    .map(|(_, name)| format!("{}{name}", subject::TEAM))
            }),
            "builtin" => Some(format!("{}{}", subject::BASIC, grant.grantee)),
            _ => None,
        }
    }

    /// Grants and role permissions as policy lines, checked like file lines.
    pub fn policy_lines(&self) -> Result<Vec<SourcedLine>, crate::policy::PolicyError> {
        let mut lines = Vec::new();
        let mut push = |line: PolicyLine| {
            let number = lines.len() + 1;
            lines.push(SourcedLine::new(line, STORE_SOURCE, number));
        };
        for grant in &self.grants {
            if let Some(subject) = self.grantee_subject(grant) {
                push(PolicyLine::Grant {
                    subject,
                    object: datasource_object(&grant.datasource_uid),
                    action: grant.permission.clone(),
                });
            }
        }
        for (role, permission, view) in &self.role_permissions {
            push(PolicyLine::Grant {
                subject: format!("{}{role}", subject::ROLE),
                object: view.clone(),
                action: permission.clone(),
            });
        }
        // Same checks as a file line, so the store cannot hold what a file could not.
        for sourced in &lines {
            PolicyLine::from_fields(&sourced.line.fields()).map_err(|problem| {
                crate::policy::PolicyError::Line {
                    location: sourced.source.clone(),
                    problem,
                }
            })?;
        }
        Ok(lines)
    }

    /// Store roles, teams and basic roles by policy subject (`user:alice`).
    pub fn identities(&self) -> HashMap<String, StoreIdentity> {
        let mut identities: HashMap<String, StoreIdentity> = HashMap::new();
        for user in &self.users {
            let identity = identities.entry(user.subject()).or_default();
            identity.roles.extend(user.roles.iter().cloned());
            identity.basic_role = user.basic_role;
        }
        for (team_id, user_id) in &self.members {
            let (Some(user), Some((_, team))) = (
                self.user(*user_id),
                self.teams.iter().find(|(id, _)| id == team_id),
            ) else {
                continue;
            };
            identities
                .entry(user.subject())
                .or_default()
                .teams
                .push(team.clone());
        }
        identities
    }

    /// Token digest → (service account login, expiry in ms since the epoch).
    pub fn token_logins(&self) -> HashMap<[u8; 32], (String, Option<i64>)> {
        self.tokens
            .iter()
            .filter_map(|token| {
                self.user(token.service_account_id)
                    .filter(|user| user.is_service_account)
                    .map(|user| (token.sha256, (user.login.clone(), token.expires_at_ms)))
            })
            .collect()
    }
}
