//! Identification and authorization: who is calling, which route the request is, and
//! whether every check of that route passes against one policy snapshot.
//!
//! ```text
//! identify(head)            stale-grants check → authenticate → canonicalise → resolve
//! authorize(snapshot, ..)   role permissions → datasource permissions → table page →
//!                           export permission                               → Permit
//! ```
//! A [`Permit`] can only be built here: holding one proves every check ran against one
//! snapshot.

use std::sync::Arc;

use serde::Serialize;
use sha2::Digest;

use super::callers::Caller;
use super::request::ParsedRequest;
use super::{Refusal, RequestHead};
use crate::authn::AuthnError;
use crate::metrics::RouteLabel;
use crate::principal::{Principal, PrincipalKind};
use crate::route::PathParams;
use crate::route::{
    Resolution, Route, UnmatchedPolicy, canonicalize_path_shared, extract_datasource_uids,
};
use crate::state::{AppState, PolicySnapshot};

/// Who is calling and which route the request is. The body has not been read yet.
pub struct Identified<'t> {
    /// Shared with the permit, the decision and the SQL pool's job: one caller, no copies.
    pub caller: Arc<Caller>,
    /// The path the route was matched on; it is also what the upstream receives.
    pub canonical_path: Arc<str>,
    pub route: Option<(&'t Route, PathParams)>,
    pub(super) unmatched_policy: UnmatchedPolicy,
}

impl Identified<'_> {
    pub fn route_name(&self) -> &str {
        self.route
            .as_ref()
            .map(|(route, _)| route.name())
            .unwrap_or(crate::metrics::UNMATCHED_ROUTE)
    }

    /// The route's name as permits and metrics carry it.
    pub fn route_label(&self) -> Arc<RouteLabel> {
        self.route
            .as_ref()
            .map_or_else(RouteLabel::unmatched, |(route, _)| route.label().clone())
    }

    /// Whether authorization needs the request body (the route extracts from it).
    pub fn needs_body(&self) -> bool {
        self.route
            .as_ref()
            .is_some_and(|(route, _)| route.needs_body())
    }

    /// Whether the route carries SQL that row-level security must see.
    pub fn carries_sql(&self) -> bool {
        self.route
            .as_ref()
            .is_some_and(|(route, _)| route.sql().is_some())
    }
}

/// Proof that a request passed every check. Only [`authorize`] builds one (the fields are
/// private to this module).
#[derive(Debug, Clone)]
pub struct Permit {
    caller: Arc<Caller>,
    route: Arc<RouteLabel>,
    canonical_path: Arc<str>,
    datasource_uids: Vec<String>,
    policy_revision: u64,
}

impl Permit {
    pub fn principal(&self) -> &Principal {
        &self.caller.principal
    }
    /// The caller as shared with later stages (the SQL pool's job).
    pub fn shared_principal(&self) -> &Arc<Principal> {
        &self.caller.principal
    }
    /// The policy subjects the caller acts as ([`Principal::subjects`]).
    pub fn subjects(&self) -> &[String] {
        &self.caller.subjects
    }
    /// What the upstream is told about the caller ([`crate::proxy::headers`]).
    pub fn upstream_identity(&self) -> &crate::proxy::headers::IdentityHeaderValues {
        self.caller.upstream_identity()
    }
    pub fn route(&self) -> &str {
        self.route.name()
    }
    /// The route's name with its request series ([`crate::metrics::Metrics::count_allowed`]).
    pub fn route_label(&self) -> &RouteLabel {
        &self.route
    }
    pub fn canonical_path(&self) -> &str {
        &self.canonical_path
    }
    pub fn datasource_uids(&self) -> &[String] {
        &self.datasource_uids
    }
    pub fn policy_revision(&self) -> u64 {
        self.policy_revision
    }
}

/// One check and how it went, for `explain`, `datagate test` and the audit reason.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub check: String,
    pub passed: bool,
    /// The permission the check decided on (`can_read on Chart`,
    /// `datasources:query on demo`); for an `any_of` that passed, the one that granted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permission: Option<String>,
    /// Set on the export check: the request is an export of this kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<crate::export::ExportKind>,
}

impl CheckOutcome {
    pub fn new(check: impl Into<String>, passed: bool) -> CheckOutcome {
        CheckOutcome {
            check: check.into(),
            passed,
            permission: None,
            export: None,
        }
    }

    pub fn permission(mut self, permission: impl Into<String>) -> CheckOutcome {
        self.permission = Some(permission.into());
        self
    }

    pub fn export(mut self, kind: crate::export::ExportKind) -> CheckOutcome {
        self.export = Some(kind);
        self
    }
}

/// Stage 1–3: authenticate, canonicalise, resolve. Refuses bad credentials even on routes
/// that would allow anonymous access: a client that presents a credential must present a
/// valid one. A replica that cannot confirm its grants are current refuses everything
/// first (fail closed on stale grants).
pub fn identify<'t>(
    state: &'t AppState,
    snapshot: &PolicySnapshot,
    head: &RequestHead<'_>,
    clock: &mut super::StageClock,
) -> Result<Identified<'t>, Refusal> {
    let started = clock.start();
    let principal = (|| {
        if let Some(age) = state.policy_staleness() {
            return Err(Refusal::PolicyStale {
                seconds: age.as_secs(),
            });
        }
        Ok(match head.headers.asserted_caller() {
            Some(caller) => {
                let principal = asserted_principal(state, snapshot, caller)?;
                let subjects = principal.subjects();
                Caller::new(Arc::new(principal), subjects)
            }
            None => authenticate_with_subjects(
                state,
                snapshot,
                head.headers.authorization.as_deref(),
                head.headers.api_key.as_deref(),
            )?,
        })
    })();
    clock.stop(super::Stage::Authenticate, started, &principal);
    let caller = principal?;
    let started = clock.start();
    let routed = canonicalize_path_shared(head.raw_path)
        .map_err(Refusal::BadPath)
        .map(|canonical_path| {
            let resolution = state.routes.resolve(head.method, &canonical_path);
            (canonical_path, resolution)
        });
    clock.stop(super::Stage::Route, started, &routed);
    let (canonical_path, resolution) = routed?;
    let (route, unmatched_policy) = match resolution {
        Resolution::Matched { route, params } => (Some((route, params)), UnmatchedPolicy::Deny),
        Resolution::Unmatched(policy) => (None, policy),
    };
    Ok(Identified {
        caller,
        canonical_path,
        route,
        unmatched_policy,
    })
}

/// Authenticates against the config's keys and the snapshot's service-account tokens,
/// then adds what the grants store says about the caller (roles, teams, basic role), so
/// authorization and row-level security see the same identity.
pub fn authenticate(
    state: &AppState,
    snapshot: &PolicySnapshot,
    authorization: Option<&str>,
    api_key: Option<&str>,
) -> Result<Principal, AuthnError> {
    authenticate_with_subjects(state, snapshot, authorization, api_key)
        .map(|caller| Principal::clone(&caller.principal))
}

/// [`authenticate`], and the principal's [`Principal::subjects`]; both remembered by the
/// snapshot for a caller who comes back with the same verified token
/// ([`super::callers`]).
fn authenticate_with_subjects(
    state: &AppState,
    snapshot: &PolicySnapshot,
    authorization: Option<&str>,
    api_key: Option<&str>,
) -> Result<super::callers::EnrichedCaller, AuthnError> {
    let tokens = |token: &str| {
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let (login, expires_at_ms) = snapshot
            .store
            .tokens
            .get(&digest)
            .ok_or(AuthnError::UnknownApiKey)?;
        if expires_at_ms.is_some_and(|expires| expires <= crate::store::now_ms()) {
            return Err(AuthnError::Expired);
        }
        Ok(crate::authn::service_account(login, &[], &[], None))
    };
    let verified = state
        .authenticator
        .authenticate_with_tokens(authorization, api_key, &tokens)?;
    Ok(snapshot.callers.enriched(&verified, || {
        let (principal, subjects) = enrich_with_subjects(snapshot, Principal::clone(&verified));
        Caller::new(Arc::new(principal), subjects)
    }))
}

/// The principal of a caller a policy test states ([`super::AssertedCaller`]): claims
/// are mapped as a verified token's are, and both forms are enriched like an
/// authenticated caller.
pub fn asserted_principal(
    state: &AppState,
    snapshot: &PolicySnapshot,
    caller: &super::AssertedCaller,
) -> Result<Principal, AuthnError> {
    let principal = match caller {
        super::AssertedCaller::Claims(claims) => {
            state.authenticator.principal_from_claims(claims.clone())?
        }
        super::AssertedCaller::Principal(principal) => principal.clone(),
    };
    Ok(enrich(snapshot, principal))
}

/// What the grants store and the policy's memberships add to an authenticated caller.
fn enrich(snapshot: &PolicySnapshot, principal: Principal) -> Principal {
    enrich_with_subjects(snapshot, principal).0
}

/// [`enrich`], and the enriched principal's subjects: computed once, or twice when the
/// policy's memberships add to them (this runs on every request).
fn enrich_with_subjects(
    snapshot: &PolicySnapshot,
    mut principal: Principal,
) -> (Principal, Vec<String>) {
    let own_subject = match principal.kind {
        PrincipalKind::User => Some(crate::principal::subject::USER),
        PrincipalKind::ServiceAccount => Some(crate::principal::subject::SERVICE_ACCOUNT),
        PrincipalKind::Anonymous => None,
    }
    .map(|prefix| [prefix, principal.username.as_str()].concat());
    if let Some(subject) = own_subject
        && let Some(identity) = snapshot.store.identities.get(&subject)
    {
        for role in &identity.roles {
            if !principal.roles.contains(role) {
                principal.roles.push(role.clone());
            }
        }
        for team in &identity.teams {
            if !principal.teams.contains(team) {
                principal.teams.push(team.clone());
            }
        }
        principal.basic_role = principal.basic_role.max(identity.basic_role);
    }
    // Roles, teams and basic roles held through policy memberships (`g, user:alice,
    // role:Gamma`) count like the token's: authorization already grants their
    // permissions, so row-level security must apply their filters too.
    let subjects = principal.subjects();
    let groups = snapshot.policy.groups_of(&subjects);
    if groups.is_empty() {
        return (principal, subjects);
    }
    {
        for group in groups {
            if let Some(role) = group.strip_prefix(crate::principal::subject::ROLE) {
                if !principal.roles.iter().any(|held| held == role) {
                    principal.roles.push(role.to_string());
                }
            } else if let Some(team) = group.strip_prefix(crate::principal::subject::TEAM) {
                if !principal.teams.iter().any(|held| held == team) {
                    principal.teams.push(team.to_string());
                }
            } else if let Some(basic) = group.strip_prefix(crate::principal::subject::BASIC) {
                principal.basic_role = principal.basic_role.max(basic.parse().ok());
            }
        }
    }
    let subjects = principal.subjects();
    (principal, subjects)
}

/// Stage 5: every check against one snapshot, reading the request as parsed once. `trace`, when given, receives every check with its outcome.
pub fn authorize(
    snapshot: &PolicySnapshot,
    identified: &Identified<'_>,
    head: &RequestHead<'_>,
    request: &ParsedRequest,
    mut trace: Option<&mut Vec<CheckOutcome>>,
) -> Result<Permit, Refusal> {
    let principal = &identified.caller.principal;
    let anonymous = principal.kind == PrincipalKind::Anonymous;
    // Outcomes (and their text) are built only when a caller asked for them: a proxied
    // request does not.
    let mut record = |outcome: &dyn Fn() -> CheckOutcome| {
        if let Some(trace) = trace.as_deref_mut() {
            trace.push(outcome());
        }
    };
    let Some((route, params)) = &identified.route else {
        return match identified.unmatched_policy {
            UnmatchedPolicy::Allow => {
                record(&|| {
                    CheckOutcome::new(
                        "unmatched route: allowed by `routes.unmatched: allow`",
                        true,
                    )
                });
                Ok(permit(snapshot, identified, Vec::new()))
            }
            UnmatchedPolicy::Authenticated if !anonymous => {
                record(&|| CheckOutcome::new("unmatched route: caller is authenticated", true));
                Ok(permit(snapshot, identified, Vec::new()))
            }
            UnmatchedPolicy::Authenticated => {
                record(&|| CheckOutcome::new("unmatched route: caller is authenticated", false));
                Err(Refusal::AuthenticationRequired {
                    reason: "unmatched routes require an authenticated caller".into(),
                })
            }
            UnmatchedPolicy::Deny => {
                record(&|| CheckOutcome::new("unmatched route: `routes.unmatched: deny`", false));
                Err(Refusal::UnmatchedRoute {
                    method: head.method.to_string(),
                    path: identified.canonical_path.to_string(),
                })
            }
        };
    };

    if route.requires_authentication() {
        record(&|| CheckOutcome::new("route requires an authenticated caller", !anonymous));
        if anonymous {
            return Err(Refusal::AuthenticationRequired {
                reason: format!("route `{}` does not allow anonymous callers", route.name()),
            });
        }
    }

    let subjects = &identified.caller.subjects[..];
    let denied = |permission: String| {
        if anonymous {
            Refusal::AuthenticationRequired {
                reason: format!("anonymous callers lack `{permission}`"),
            }
        } else {
            Refusal::MissingPermission { permission }
        }
    };

    for required in route.permissions_all_of() {
        let passed = snapshot
            .policy
            .allows(subjects, &required.view, &required.action);
        record(&|| {
            CheckOutcome::new(format!("role permission `{required}`"), passed)
                .permission(required.to_string())
        });
        if !passed {
            return Err(denied(required.to_string()));
        }
    }
    let any_of = route.permissions_any_of();
    if !any_of.is_empty() {
        // The first candidate that allows is the permission that decided.
        let granting = any_of.iter().find(|candidate| {
            snapshot
                .policy
                .allows(subjects, &candidate.view, &candidate.action)
        });
        let listed = || {
            any_of
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("` or `")
        };
        record(&|| {
            let deciding = granting.map_or_else(listed, ToString::to_string);
            CheckOutcome::new(
                format!("role permission `{}`", listed()),
                granting.is_some(),
            )
            .permission(deciding)
        });
        if granting.is_none() {
            return Err(denied(listed()));
        }
    }

    let mut datasource_uids = Vec::new();
    if let Some(requirement) = route.datasource() {
        datasource_uids =
            extract_datasource_uids(requirement, params, request).map_err(Refusal::BadRequest)?;
        for uid in &datasource_uids {
            let object = crate::policy::datasource_object(uid);
            let passed = snapshot
                .policy
                .allows(subjects, &object, &requirement.action);
            record(&|| {
                CheckOutcome::new(
                    format!("datasource permission `{}` on `{uid}`", requirement.action),
                    passed,
                )
                .permission(format!("{} on {uid}", requirement.action))
            });
            if !passed {
                return Err(if anonymous {
                    Refusal::AuthenticationRequired {
                        reason: format!(
                            "anonymous callers lack `{}` on datasource `{uid}`",
                            requirement.action
                        ),
                    }
                } else {
                    Refusal::MissingDatasourcePermission {
                        action: requirement.action.clone(),
                        uid: uid.clone(),
                    }
                });
            }
        }
    }

    if let Some(table_param) = route.table_page_param() {
        let table = match params.lookup(table_param) {
            Some(crate::route::ParamValue::Text(table)) => {
                tilde_decode(table).ok_or_else(|| Refusal::TablePageFiltered {
                    reason: format!("table name `{table}` is not validly encoded"),
                })?
            }
            _ => {
                return Err(Refusal::TablePageFiltered {
                    reason: "the table name is not valid UTF-8".into(),
                });
            }
        };
        for uid in &datasource_uids {
            let result = snapshot.rls.table_page_allowed(uid, &table, principal);
            record(&|| {
                CheckOutcome::new(
                    format!("table page `{table}` unfiltered for this caller"),
                    result.is_ok(),
                )
            });
            result.map_err(|reason| Refusal::TablePageFiltered { reason })?;
        }
    }

    if let Some(export) = route.export() {
        let is_export = export
            .applies(params, request)
            .map_err(Refusal::BadRequest)?;
        match snapshot.exports.required_permission(export.kind) {
            Some(required) if is_export => {
                let passed = snapshot
                    .policy
                    .allows(subjects, &required.view, &required.action);
                record(&|| {
                    CheckOutcome::new(
                        format!("{} export needs `{required}`", export.kind.as_str()),
                        passed,
                    )
                    .permission(required.to_string())
                    .export(export.kind)
                });
                if !passed {
                    return Err(denied(required.to_string()));
                }
            }
            // An export no permission controls (images with the granular controls off).
            None if is_export => record(&|| {
                CheckOutcome::new(
                    format!("{} export: not controlled", export.kind.as_str()),
                    true,
                )
                .export(export.kind)
            }),
            _ => {}
        }
    }
    Ok(permit(snapshot, identified, datasource_uids))
}

/// Datasette's tilde-encoding of names in paths (`~2F` is `/`); `None` when a `~` is not
/// followed by two hex digits or the result is not UTF-8, so an encoded name can never
/// name a different table to datagate than to Datasette.
pub fn tilde_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'~' {
            let hex = bytes.get(index + 1..index + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

pub(super) fn permit(
    snapshot: &PolicySnapshot,
    identified: &Identified<'_>,
    datasource_uids: Vec<String>,
) -> Permit {
    Permit {
        caller: identified.caller.clone(),
        route: identified.route_label(),
        canonical_path: identified.canonical_path.clone(),
        datasource_uids,
        policy_revision: snapshot.revision,
    }
}
