//! Searches behind the Grafana-compatible listings of the admin API
//! (`/api/users/search`, `/api/users/lookup`, `/api/teams/search`,
//! `/api/serviceaccounts/search`): a case-insensitive substring `query`, exact names and
//! Grafana's 1-based `page` / `perpage` paging, where a page past the end is empty.

use sqlx::Row;

use super::records::{
    TEAM_SELECT, TeamRecord, USER_COLUMNS, UserRecord, team_from_row, user_from_row,
};
use super::{Store, StoreError};

/// Grafana's `page` (1-based) and `perpage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchPage {
    pub page: i64,
    pub per_page: i64,
}

impl SearchPage {
    fn offset(&self) -> i64 {
        (self.page - 1).saturating_mul(self.per_page)
    }
}

/// One page of matches and how many match in all.
#[derive(Debug, Clone)]
pub struct Found<T> {
    pub total_count: i64,
    pub items: Vec<T>,
}

/// `%text%` for `LIKE … ESCAPE '\'`, lowercased, with the pattern characters escaped so
/// a query matches literally.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for character in text.to_lowercase().chars() {
        if matches!(character, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(character);
    }
    pattern.push('%');
    pattern
}

impl Store {
    /// Users (or service accounts) whose login, email or name contains `query`
    /// (case-insensitively; empty matches all), by id.
    pub async fn search_users(
        &self,
        query: &str,
        page: SearchPage,
        service_accounts: bool,
    ) -> Result<Found<UserRecord>, StoreError> {
        if query.contains('\0') {
            // No stored text holds NUL (PostgreSQL cannot), so nothing matches.
            return Ok(Found {
                total_count: 0,
                items: Vec::new(),
            });
        }
        let condition = "is_service_account = $1 AND ($2 = '%%' OR LOWER(login) LIKE $2 ESCAPE '\\' \
             OR LOWER(COALESCE(email, '')) LIKE $2 ESCAPE '\\' OR LOWER(COALESCE(name, '')) LIKE $2 ESCAPE '\\')";
        let flag = i64::from(service_accounts);
        let pattern = contains_pattern(query);
        let total_count = sqlx::query(&format!("SELECT COUNT(*) FROM users WHERE {condition}"))
            .bind(flag)
            .bind(pattern.clone())
            .fetch_one(self.pool())
            .await?
            .try_get::<i64, _>(0)?;
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE {condition} ORDER BY id LIMIT $3 OFFSET $4"
        ))
        .bind(flag)
        .bind(pattern)
        .bind(page.per_page)
        .bind(page.offset())
        .fetch_all(self.pool())
        .await?;
        Ok(Found {
            total_count,
            items: rows.iter().map(user_from_row).collect::<Result<_, _>>()?,
        })
    }

    /// The user (not service account) whose login or email is exactly `login_or_email`;
    /// a login match wins over an email match.
    pub async fn user_by_login_or_email(
        &self,
        login_or_email: &str,
    ) -> Result<UserRecord, StoreError> {
        let not_found = || StoreError::NotFound {
            what: "user",
            id: login_or_email.to_string(),
        };
        if login_or_email.contains('\0') {
            return Err(not_found());
        }
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE is_service_account = 0 AND (login = $1 OR email = $1) \
             ORDER BY CASE WHEN login = $1 THEN 0 ELSE 1 END, id LIMIT 1"
        ))
        .bind(login_or_email.to_string())
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(not_found)?;
        user_from_row(&row)
    }

    /// Teams named exactly `name` (when given) whose name contains `query`.
    pub async fn search_teams(
        &self,
        name: Option<&str>,
        query: &str,
        page: SearchPage,
    ) -> Result<Found<TeamRecord>, StoreError> {
        if query.contains('\0') || name.is_some_and(|name| name.contains('\0')) {
            return Ok(Found {
                total_count: 0,
                items: Vec::new(),
            });
        }
        let condition =
            "($1 = '' OR t.name = $2) AND ($3 = '%%' OR LOWER(t.name) LIKE $3 ESCAPE '\\')";
        let exact = name.unwrap_or_default().to_string();
        // `$1 = ''` distinguishes "no name given" from a given name.
        let given = if name.is_some() { "name" } else { "" };
        let pattern = contains_pattern(query);
        let total_count = sqlx::query(&format!("SELECT COUNT(*) FROM teams t WHERE {condition}"))
            .bind(given)
            .bind(exact.clone())
            .bind(pattern.clone())
            .fetch_one(self.pool())
            .await?
            .try_get::<i64, _>(0)?;
        let rows = sqlx::query(&format!(
            "{TEAM_SELECT} WHERE {condition} ORDER BY t.id LIMIT $4 OFFSET $5"
        ))
        .bind(given)
        .bind(exact)
        .bind(pattern)
        .bind(page.per_page)
        .bind(page.offset())
        .fetch_all(self.pool())
        .await?;
        Ok(Found {
            total_count,
            items: rows.iter().map(team_from_row).collect::<Result<_, _>>()?,
        })
    }

    /// How many tokens each of `service_account_ids` has.
    pub async fn token_counts(
        &self,
        service_account_ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, i64>, StoreError> {
        let mut counts = std::collections::HashMap::new();
        for id in service_account_ids {
            let count = sqlx::query(
                "SELECT COUNT(*) FROM service_account_tokens WHERE service_account_id = $1",
            )
            .bind(*id)
            .fetch_one(self.pool())
            .await?
            .try_get::<i64, _>(0)?;
            counts.insert(*id, count);
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::contains_pattern;

    #[test]
    fn a_query_matches_literally() {
        assert_eq!(contains_pattern("Ann"), "%ann%");
        assert_eq!(contains_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
        assert_eq!(contains_pattern(""), "%%");
    }
}
