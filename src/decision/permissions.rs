//! `GET /api/me/permissions`: the caller's effective permissions, answered by datagate
//! itself from the same snapshot and identity as every proxied request, never forwarded.

use std::sync::{Arc, LazyLock};

use serde::Serialize;

use super::authorize::Identified;
use super::{Refusal, RequestHead};
use crate::metrics::RouteLabel;
use crate::principal::{Principal, PrincipalKind};
use crate::state::PolicySnapshot;

/// The path of the caller's own permissions on the proxy port.
pub const PERMISSIONS_PATH: &str = "/api/me/permissions";
/// Its name in metrics and audit events.
pub const PERMISSIONS_ROUTE: &str = "datagate-me-permissions";

/// The label [`PERMISSIONS_ROUTE`]'s requests are counted and audited under.
pub fn permissions_route_label() -> Arc<RouteLabel> {
    static LABEL: LazyLock<Arc<RouteLabel>> =
        LazyLock::new(|| Arc::new(RouteLabel::new(PERMISSIONS_ROUTE)));
    LABEL.clone()
}

/// `GET /api/me/permissions` (the canonical path, exactly; it is never forwarded).
pub fn is_permissions_request(head: &RequestHead<'_>, identified: &Identified<'_>) -> bool {
    (head.method == "GET" || head.method == "HEAD")
        && &*identified.canonical_path == PERMISSIONS_PATH
}

/// What the caller may do, so a frontend can disable a button instead of meeting a 403.
#[derive(Debug, Clone, Serialize)]
pub struct CallerPermissions {
    pub user: String,
    pub kind: PrincipalKind,
    pub roles: Vec<String>,
    pub teams: Vec<String>,
    pub basic_role: Option<crate::principal::BasicRole>,
    /// FAB permissions as granted (a `view` of `*` covers every view).
    pub permissions: Vec<GrantedPermission>,
    pub exports: ExportPermissions,
    /// Every known datasource: the caller's level and allowed actions there.
    pub datasources: std::collections::BTreeMap<String, DatasourceAccess>,
    pub policy_revision: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GrantedPermission {
    pub permission: String,
    pub view: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportPermissions {
    pub granular_export_controls: bool,
    pub data: bool,
    pub image: bool,
    pub clipboard: bool,
    /// The permission each kind needs (`null`: not controlled).
    pub required: std::collections::BTreeMap<&'static str, Option<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasourceAccess {
    /// The highest of `Query`, `Edit`, `Admin` whose every action is allowed.
    pub level: Option<&'static str>,
    pub actions: Vec<&'static str>,
}

const DATASOURCE_ACTIONS: [&str; 6] = [
    "datasources:read",
    "datasources:query",
    "datasources:write",
    "datasources:delete",
    "datasources.permissions:read",
    "datasources.permissions:write",
];

/// The identified caller's effective permissions under `snapshot`, decided by the same
/// engine (and store identity enrichment, done by [`identify`]) as every proxied request.
pub fn caller_permissions(snapshot: &PolicySnapshot, principal: &Principal) -> CallerPermissions {
    let subjects = principal.subjects();
    let effective = snapshot.policy.effective_permissions(&subjects);
    let allowance = snapshot.exports.allowance(&snapshot.policy, &subjects);
    let mut required = std::collections::BTreeMap::new();
    for kind in crate::export::ExportKind::ALL {
        required.insert(
            kind.as_str(),
            snapshot
                .exports
                .required_permission(kind)
                .map(|permission| permission.to_string()),
        );
    }
    let mut datasources = std::collections::BTreeMap::new();
    for uid in snapshot.store.datasource_uids.iter() {
        let object = crate::policy::datasource_object(uid);
        let actions: Vec<&'static str> = DATASOURCE_ACTIONS
            .into_iter()
            .filter(|action| snapshot.policy.allows(&subjects, &object, action))
            .collect();
        let level = ["Admin", "Edit", "Query"].into_iter().find(|level| {
            crate::admin::level_actions(level)
                .iter()
                .all(|action| actions.contains(&action.as_str()))
        });
        datasources.insert(uid.clone(), DatasourceAccess { level, actions });
    }
    CallerPermissions {
        user: principal.username.clone(),
        kind: principal.kind,
        roles: principal.roles.clone(),
        teams: principal.teams.clone(),
        basic_role: principal.basic_role,
        permissions: effective
            .role_permissions
            .into_iter()
            .map(|(permission, view)| GrantedPermission { permission, view })
            .collect(),
        exports: ExportPermissions {
            granular_export_controls: snapshot.exports.granular_export_controls,
            data: allowance.data,
            image: allowance.image,
            clipboard: allowance.clipboard,
            required,
        },
        datasources,
        policy_revision: snapshot.revision,
    }
}

/// The refusal for an upstream response that is an export the caller may not make.
pub fn export_refusal(
    exports: &crate::export::ExportConfig,
    kind: crate::export::ExportKind,
) -> Refusal {
    Refusal::MissingPermission {
        permission: exports.required_permission(kind).map_or_else(
            || format!("{} export", kind.as_str()),
            |permission| permission.to_string(),
        ),
    }
}
