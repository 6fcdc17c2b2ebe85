//! `datagate migrate export-permissions`: Superset's migration to granular export
//! controls. Every role that holds `can_csv` on a view is granted `can_export_data`,
//! `can_export_image` and `can_copy_clipboard` on that view, in the policy files (one
//! file of its own, `policies/90-export-permissions.csv`, picked up by hot reload) and in
//! the grants store. Idempotent: what a role already holds is not added again.
//!
//! Off the request path; an operator runs it once when turning the controls on.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::config::Config;
use crate::export::{COPY_CLIPBOARD, EXPORT_DATA, EXPORT_IMAGE, LEGACY_CSV};
use crate::policy::{PolicyError, PolicyLine, policy_lines_of_directory};
use crate::principal::subject;
use crate::store::{Change, PageRequest, RolePermission, Store, StoreError};

/// The file the migration writes its lines to.
pub const MIGRATION_FILE: &str = "90-export-permissions.csv";

const NEW_PERMISSIONS: [&str; 3] = [EXPORT_DATA, EXPORT_IMAGE, COPY_CLIPBOARD];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot write `{file}`: {message}")]
    Write { file: String, message: String },
    #[error("the migrated policy does not build, nothing was written: {0}")]
    Invalid(String),
}

/// What the migration changed (or, with `dry_run`, would change).
#[derive(Debug, Default)]
pub struct MigrationReport {
    pub dry_run: bool,
    /// `p, role:<name>, <view>, <permission>` lines for [`MIGRATION_FILE`].
    pub file_lines: Vec<String>,
    /// `(role, permission, view)` added to store roles.
    pub store_grants: Vec<(String, String, String)>,
}

impl MigrationReport {
    /// One line per change, then a summary.
    pub fn render(&self) -> String {
        let verb = if self.dry_run { "would add" } else { "added" };
        let mut text = String::new();
        for line in &self.file_lines {
            let _ = writeln!(text, "policies/{MIGRATION_FILE}: {verb} `{line}`");
        }
        for (role, permission, view) in &self.store_grants {
            let _ = writeln!(
                text,
                "store: role `{role}`: {verb} `{permission} on {view}`"
            );
        }
        if self.file_lines.is_empty() && self.store_grants.is_empty() {
            text.push_str(
                "nothing to change: every role with can_csv already holds the export permissions",
            );
        } else {
            let _ = write!(
                text,
                "{} file line(s) and {} store permission(s) {}",
                self.file_lines.len(),
                self.store_grants.len(),
                if self.dry_run {
                    "would be added (dry run: nothing written)"
                } else {
                    "added"
                }
            );
        }
        text
    }
}

/// Lines the policy files need so that every `can_csv` role also holds the new
/// permissions on the same view.
pub fn missing_file_lines(lines: &[crate::policy::SourcedLine]) -> Vec<String> {
    let held: BTreeSet<(&str, &str, &str)> = lines
        .iter()
        .filter_map(|sourced| match &sourced.line {
            PolicyLine::Grant {
                subject,
                object,
                action,
            } => Some((subject.as_str(), object.as_str(), action.as_str())),
            _ => None,
        })
        .collect();
    let mut missing = Vec::new();
    for (holder, view, action) in &held {
        if *action != LEGACY_CSV || !holder.starts_with(subject::ROLE) {
            continue;
        }
        for permission in NEW_PERMISSIONS {
            if !held.contains(&(holder, view, permission)) {
                missing.push(format!("p, {holder}, {view}, {permission}"));
            }
        }
    }
    missing
}

/// Runs the migration over the config's policy directory and, when configured, its store.
pub async fn export_permissions(
    config: &Config,
    dry_run: bool,
) -> Result<MigrationReport, MigrateError> {
    let directory = config.policy_directory();
    let lines = policy_lines_of_directory(&directory)?;
    let mut report = MigrationReport {
        dry_run,
        file_lines: missing_file_lines(&lines),
        store_grants: Vec::new(),
    };
    if !report.file_lines.is_empty() && !dry_run {
        let path = directory.join(MIGRATION_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            "# Written by `datagate migrate export-permissions`: every role that held can_csv\n\
             # is granted the granular export permissions on the same view.\n"
                .to_string()
        });
        if !text.ends_with('\n') {
            text.push('\n');
        }
        for line in &report.file_lines {
            text.push_str(line);
            text.push('\n');
        }
        // Check the result parses like every policy file before it replaces anything.
        crate::policy::parse_policy_file(MIGRATION_FILE, &text)?;
        let write_error = |error: std::io::Error| MigrateError::Write {
            file: MIGRATION_FILE.to_string(),
            message: error.to_string(),
        };
        let temporary = directory.join(format!(".{MIGRATION_FILE}.tmp"));
        std::fs::write(&temporary, text).map_err(write_error)?;
        std::fs::rename(&temporary, &path).map_err(write_error)?;
    }
    if let Some(store_config) = &config.store {
        let store = Store::connect(store_config, &config.base_dir).await?;
        migrate_store(&store, config, &mut report).await?;
    }
    Ok(report)
}

async fn migrate_store(
    store: &Store,
    config: &Config,
    report: &mut MigrationReport,
) -> Result<(), MigrateError> {
    let mut page = PageRequest {
        page: 1,
        page_size: crate::store::MAX_PAGE_SIZE,
    };
    loop {
        let listing = store.list_roles(page).await?;
        for role in &listing.items {
            let held: std::collections::HashSet<&RolePermission> =
                role.permissions.iter().collect();
            let mut added = Vec::new();
            for granted in role
                .permissions
                .iter()
                .filter(|permission| permission.permission == LEGACY_CSV)
            {
                for permission in NEW_PERMISSIONS {
                    let wanted = RolePermission {
                        permission: permission.to_string(),
                        view: granted.view.clone(),
                    };
                    if !held.contains(&wanted) && !added.contains(&wanted) {
                        added.push(wanted);
                    }
                }
            }
            if added.is_empty() {
                continue;
            }
            for permission in &added {
                report.store_grants.push((
                    role.name.clone(),
                    permission.permission.clone(),
                    permission.view.clone(),
                ));
            }
            if report.dry_run {
                continue;
            }
            let mut permissions = role.permissions.clone();
            permissions.extend(added);
            let validating_config = config.clone();
            let validate = move |update: crate::store::StoreUpdate| match update {
                crate::store::StoreUpdate::Full(contents) => {
                    crate::state::build_snapshot_content_with_store(
                        &validating_config,
                        &std::sync::Arc::new(*contents),
                    )
                    .map(|_| ())
                }
                // Without a base revision the store always hands over the whole store.
                crate::store::StoreUpdate::Delta(_) => Ok(()),
            };
            store
                .apply(
                    "datagate migrate export-permissions",
                    Change::UpdateRole {
                        id: role.id,
                        name: role.name.clone(),
                        description: role.description.clone(),
                        permissions,
                    },
                    None,
                    validate,
                )
                .await?;
        }
        if !listing.has_next {
            return Ok(());
        }
        page.page += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_permissions_of_csv_roles_are_added() {
        let lines = crate::policy::parse_policy_file(
            "x.csv",
            "p, role:Alpha, *, can_csv\np, role:Alpha, *, can_export_data\n\
             p, role:Gamma, Chart, can_read\np, user:bob, *, can_csv\n\
             p, role:Report, Dashboard, can_csv\n",
        )
        .unwrap();
        assert_eq!(
            missing_file_lines(&lines),
            vec![
                "p, role:Alpha, *, can_export_image",
                "p, role:Alpha, *, can_copy_clipboard",
                "p, role:Report, Dashboard, can_export_data",
                "p, role:Report, Dashboard, can_export_image",
                "p, role:Report, Dashboard, can_copy_clipboard",
            ]
        );
    }
}
