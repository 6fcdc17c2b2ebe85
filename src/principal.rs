//! The authenticated caller, as every later stage sees it.
//!
//! `authn` builds a [`Principal`] from the request's credentials (or the anonymous
//! Public principal); `policy` decides over the principal's [`Principal::subjects`];
//! RLS templates read its username, id, email, roles and claims.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A user authenticated by a JWT.
    User,
    /// A machine caller authenticated by an API key or service-account token.
    ServiceAccount,
    /// No credentials; only allowed when anonymous access is enabled.
    Anonymous,
}

impl PrincipalKind {
    /// The serialised name (`user`, `service_account`, `anonymous`).
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::ServiceAccount => "service_account",
            PrincipalKind::Anonymous => "anonymous",
        }
    }
}

/// Grafana's basic (organisation) roles: `Viewer` ⊂ `Editor` ⊂ `Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BasicRole {
    Viewer,
    Editor,
    Admin,
}

impl BasicRole {
    pub const ALL: [BasicRole; 3] = [BasicRole::Viewer, BasicRole::Editor, BasicRole::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            BasicRole::Viewer => "Viewer",
            BasicRole::Editor => "Editor",
            BasicRole::Admin => "Admin",
        }
    }
}

impl fmt::Display for BasicRole {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The name was not one of `Viewer`, `Editor`, `Admin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown basic role `{0}` (expected Viewer, Editor or Admin)")]
pub struct UnknownBasicRole(pub String);

impl FromStr for BasicRole {
    type Err = UnknownBasicRole;

    /// Case-insensitive, because identity providers disagree on the case of `org_role`.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.to_ascii_lowercase().as_str() {
            "viewer" => Ok(BasicRole::Viewer),
            "editor" => Ok(BasicRole::Editor),
            "admin" => Ok(BasicRole::Admin),
            _ => Err(UnknownBasicRole(name.to_string())),
        }
    }
}

/// Subject prefixes used in policy lines (`p, role:Gamma, Chart, can_read`).
pub mod subject {
    pub const USER: &str = "user:";
    pub const ROLE: &str = "role:";
    pub const TEAM: &str = "team:";
    pub const BASIC: &str = "basic:";
    pub const SERVICE_ACCOUNT: &str = "serviceaccount:";
    pub const ALL_PREFIXES: [&str; 5] = [USER, ROLE, TEAM, BASIC, SERVICE_ACCOUNT];
}

/// Who is calling. Built only by `authn` on the request path (tests build it directly).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// Login name; `anonymous` for the anonymous principal.
    pub username: String,
    pub user_id: Option<String>,
    pub email: Option<String>,
    /// FAB/Superset roles, e.g. `Gamma`, `sql_lab`; anonymous callers hold `Public`.
    pub roles: Vec<String>,
    pub teams: Vec<String>,
    pub basic_role: Option<BasicRole>,
    /// Every claim of the token, for `{{ claim('name') }}` in RLS clauses. Shared: the
    /// verified-token cache hands out a copy of the principal on every request.
    #[serde(skip)]
    pub claims: std::sync::Arc<serde_json::Map<String, serde_json::Value>>,
}

impl Principal {
    /// The anonymous caller, holding the given roles (normally `["Public"]`).
    pub fn anonymous(roles: Vec<String>) -> Self {
        Principal {
            kind: PrincipalKind::Anonymous,
            username: "anonymous".to_string(),
            user_id: None,
            email: None,
            roles,
            teams: Vec::new(),
            basic_role: None,
            claims: Default::default(),
        }
    }

    /// The policy subjects this caller acts as, e.g.
    /// `["user:alice", "role:Gamma", "team:eng", "basic:Viewer"]`.
    /// Anonymous callers act only through their roles.
    pub fn subjects(&self) -> Vec<String> {
        // Concatenated, not `format!`ed: this runs on every request.
        fn subject(prefix: &str, name: &str) -> String {
            let mut subject = String::with_capacity(prefix.len() + name.len());
            subject.push_str(prefix);
            subject.push_str(name);
            subject
        }
        let mut subjects = Vec::with_capacity(2 + self.roles.len() + self.teams.len());
        match self.kind {
            PrincipalKind::User => subjects.push(subject(subject::USER, &self.username)),
            PrincipalKind::ServiceAccount => {
                subjects.push(subject(subject::SERVICE_ACCOUNT, &self.username))
            }
            PrincipalKind::Anonymous => {}
        }
        subjects.extend(self.roles.iter().map(|role| subject(subject::ROLE, role)));
        subjects.extend(self.teams.iter().map(|team| subject(subject::TEAM, team)));
        if let Some(basic_role) = self.basic_role {
            subjects.push(subject(subject::BASIC, basic_role.as_str()));
        }
        subjects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_cover_every_identity() {
        let principal = Principal {
            kind: PrincipalKind::User,
            username: "alice".into(),
            user_id: Some("7".into()),
            email: None,
            roles: vec!["Gamma".into()],
            teams: vec!["eng".into()],
            basic_role: Some(BasicRole::Editor),
            claims: Default::default(),
        };
        assert_eq!(
            principal.subjects(),
            vec!["user:alice", "role:Gamma", "team:eng", "basic:Editor"]
        );
    }

    #[test]
    fn anonymous_acts_only_through_roles() {
        let principal = Principal::anonymous(vec!["Public".into()]);
        assert_eq!(principal.subjects(), vec!["role:Public"]);
    }

    #[test]
    fn basic_role_parsing_is_case_insensitive_and_strict() {
        assert_eq!("viewer".parse::<BasicRole>(), Ok(BasicRole::Viewer));
        assert_eq!("ADMIN".parse::<BasicRole>(), Ok(BasicRole::Admin));
        assert!("Owner".parse::<BasicRole>().is_err());
    }
}
