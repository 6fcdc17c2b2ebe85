//! Policy lines: the CSV grammar of policy files (`p`, `g`, `g2`) and the checks every
//! line passes before casbin or the decision index sees it.
//!
//! Runs when a policy snapshot is built (startup, reload, admin write), never per
//! request. Everything here fails closed: one bad line rejects the whole snapshot, and
//! the error names the file and the 1-based line.

use std::fmt;

use crate::principal::{BasicRole, subject};

/// Where a line came from, for error messages (`10-roles.csv line 4`). Policy lines added
/// by the admin store use a descriptive name such as `admin store` instead of a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LineSource {
    pub file: String,
    /// 1-based.
    pub line: usize,
}

impl LineSource {
    pub fn new(file: impl Into<String>, line: usize) -> Self {
        LineSource {
            file: file.into(),
            line,
        }
    }
}

impl fmt::Display for LineSource {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} line {}", self.file, self.line)
    }
}

/// One policy statement, in casbin terms `p`, `g` and `g2`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PolicyLine {
    /// `p, subject, object, action`: `subject` may do `action` (or anything it implies)
    /// on every object `object` matches.
    Grant {
        subject: String,
        object: String,
        action: String,
    },
    /// `g, member, group`: `member` holds every grant of `group`.
    Membership { member: String, group: String },
    /// `g2, action, implied`: whoever is granted `action` is also granted `implied`.
    ActionImplies { action: String, implied: String },
}

/// A policy line with its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcedLine {
    pub line: PolicyLine,
    pub source: LineSource,
}

impl SourcedLine {
    pub fn new(line: PolicyLine, file: impl Into<String>, line_number: usize) -> Self {
        SourcedLine {
            line,
            source: LineSource::new(file, line_number),
        }
    }
}

/// What is wrong with one line; wrapped with its [`LineSource`] in
/// [`PolicyError::Line`](super::PolicyError::Line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("unknown line type `{0}` (expected p, g or g2)")]
    UnknownLineType(String),
    #[error("`{kind}` lines have {expected} fields, found {found}")]
    FieldCount {
        kind: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("field {position} is empty")]
    EmptyField { position: usize },
    #[error(
        "unknown subject prefix in `{0}` (expected user:, role:, team:, basic: or serviceaccount:)"
    )]
    UnknownSubjectPrefix(String),
    #[error("subject `{0}` has an empty name")]
    EmptySubjectName(String),
    #[error("unknown basic role `{0}` (expected Viewer, Editor or Admin, in that case)")]
    UnknownBasicRole(String),
    #[error("`{0}` cannot have members (groups are role:, team: or basic: subjects)")]
    NotAGroup(String),
    #[error(
        "bad datasource scope `{0}` (expected datasources:*, datasources:uid:* or datasources:uid:<uid>)"
    )]
    BadDatasourceScope(String),
    #[error(
        "unknown level `{0}` on a datasource (expected Query, Edit, Admin or a datasources: action)"
    )]
    UnknownLevel(String),
    #[error("role permission `{0}` must start with `can_`")]
    BadRolePermission(String),
    #[error("bad view `{0}` (a view is a name or `*` for every view)")]
    BadView(String),
    #[error("action `{0}` looks like a subject")]
    ActionLooksLikeSubject(String),
    /// The store adds grants only; memberships come from it as principal enrichment.
    #[error("only grant (`p`) lines of the subject being updated can come from the store")]
    NotAStoreGrant,
}

/// Datasource permission levels (Grafana): `Query` ⊂ `Edit` ⊂ `Admin`.
pub const DATASOURCE_LEVELS: [&str; 3] = ["Query", "Edit", "Admin"];
/// Every datasource scope starts with this.
pub const DATASOURCE_SCOPE_PREFIX: &str = "datasources:";
const DATASOURCE_UID_SCOPE_PREFIX: &str = "datasources:uid:";
const DATASOURCE_ACTION_PREFIXES: [&str; 2] = ["datasources:", "datasources.permissions:"];
const ROLE_PERMISSION_PREFIX: &str = "can_";

impl PolicyLine {
    /// Parses the fields of one CSV record (already trimmed) into a checked line.
    pub fn from_fields(fields: &[&str]) -> Result<PolicyLine, LineProblem> {
        let (kind, expected): (&'static str, usize) = match fields.first().copied() {
            Some("p") => ("p", 4),
            Some("g") => ("g", 3),
            Some("g2") => ("g2", 3),
            other => {
                return Err(LineProblem::UnknownLineType(
                    other.unwrap_or_default().to_string(),
                ));
            }
        };
        if fields.len() != expected {
            return Err(LineProblem::FieldCount {
                kind,
                expected,
                found: fields.len(),
            });
        }
        if let Some(position) = fields.iter().position(|field| field.is_empty()) {
            return Err(LineProblem::EmptyField {
                position: position + 1,
            });
        }
        let line = match (kind, fields) {
            ("p", [_, subject, object, action]) => PolicyLine::Grant {
                subject: subject.to_string(),
                object: object.to_string(),
                action: action.to_string(),
            },
            ("g", [_, member, group]) => PolicyLine::Membership {
                member: member.to_string(),
                group: group.to_string(),
            },
            (_, [_, action, implied]) => PolicyLine::ActionImplies {
                action: action.to_string(),
                implied: implied.to_string(),
            },
            _ => {
                return Err(LineProblem::FieldCount {
                    kind,
                    expected,
                    found: fields.len(),
                });
            }
        };
        line.validate()?;
        Ok(line)
    }

    /// Checks one line on its own. The admin store calls this before persisting a grant.
    pub fn validate(&self) -> Result<(), LineProblem> {
        match self {
            PolicyLine::Grant {
                subject,
                object,
                action,
            } => {
                check_non_empty(&[subject, object, action])?;
                check_subject(subject)?;
                check_grant_target(object, action)
            }
            PolicyLine::Membership { member, group } => {
                check_non_empty(&[member, group])?;
                check_subject(member)?;
                check_subject(group)?;
                let is_group = [subject::ROLE, subject::TEAM, subject::BASIC]
                    .iter()
                    .any(|prefix| group.starts_with(prefix));
                if is_group {
                    Ok(())
                } else {
                    Err(LineProblem::NotAGroup(group.clone()))
                }
            }
            PolicyLine::ActionImplies { action, implied } => {
                check_non_empty(&[action, implied])?;
                // casbin keeps `g` and `g2` links in one role graph: an action named like
                // a subject would let memberships and the action hierarchy leak into
                // each other, and the compiled index would disagree with casbin.
                for name in [action, implied] {
                    if has_subject_prefix(name) {
                        return Err(LineProblem::ActionLooksLikeSubject(name.clone()));
                    }
                }
                Ok(())
            }
        }
    }

    /// The CSV fields of this line, as they would appear in a policy file.
    pub fn fields(&self) -> Vec<&str> {
        match self {
            PolicyLine::Grant {
                subject,
                object,
                action,
            } => vec!["p", subject, object, action],
            PolicyLine::Membership { member, group } => vec!["g", member, group],
            PolicyLine::ActionImplies { action, implied } => vec!["g2", action, implied],
        }
    }
}

impl fmt::Display for PolicyLine {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.fields().join(", "))
    }
}

fn check_non_empty(fields: &[&String]) -> Result<(), LineProblem> {
    match fields.iter().position(|field| field.is_empty()) {
        Some(position) => Err(LineProblem::EmptyField {
            position: position + 2,
        }),
        None => Ok(()),
    }
}

fn has_subject_prefix(name: &str) -> bool {
    subject::ALL_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

fn check_subject(name: &str) -> Result<(), LineProblem> {
    let Some(prefix) = subject::ALL_PREFIXES
        .iter()
        .find(|prefix| name.starts_with(**prefix))
    else {
        return Err(LineProblem::UnknownSubjectPrefix(name.to_string()));
    };
    let rest = name.get(prefix.len()..).unwrap_or_default();
    if rest.is_empty() {
        return Err(LineProblem::EmptySubjectName(name.to_string()));
    }
    // Principal::subjects() always spells basic roles canonically (`basic:Viewer`), so a
    // grant to `basic:viewer` would silently never match: reject it instead.
    if *prefix == subject::BASIC && !BasicRole::ALL.iter().any(|role| role.as_str() == rest) {
        return Err(LineProblem::UnknownBasicRole(rest.to_string()));
    }
    Ok(())
}

fn check_grant_target(object: &str, action: &str) -> Result<(), LineProblem> {
    if object.starts_with(DATASOURCE_SCOPE_PREFIX) || object == "datasources" {
        check_datasource_scope(object)?;
        let is_level = DATASOURCE_LEVELS.contains(&action);
        let is_datasource_action = DATASOURCE_ACTION_PREFIXES.iter().any(|prefix| {
            action
                .strip_prefix(prefix)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('*'))
        });
        if is_level || is_datasource_action {
            Ok(())
        } else {
            Err(LineProblem::UnknownLevel(action.to_string()))
        }
    } else {
        // `*` alone means every view; anywhere else it would be a keyMatch prefix
        // pattern nobody meant to write.
        if object != "*" && object.contains('*') {
            return Err(LineProblem::BadView(object.to_string()));
        }
        let is_permission = action
            .strip_prefix(ROLE_PERMISSION_PREFIX)
            .is_some_and(|verb| !verb.is_empty());
        if is_permission {
            Ok(())
        } else {
            Err(LineProblem::BadRolePermission(action.to_string()))
        }
    }
}

fn check_datasource_scope(scope: &str) -> Result<(), LineProblem> {
    if scope == "datasources:*" || scope == "datasources:uid:*" {
        return Ok(());
    }
    match scope.strip_prefix(DATASOURCE_UID_SCOPE_PREFIX) {
        Some(uid) if !uid.is_empty() && !uid.contains('*') => Ok(()),
        _ => Err(LineProblem::BadDatasourceScope(scope.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<PolicyLine, LineProblem> {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        PolicyLine::from_fields(&fields)
    }

    #[test]
    fn accepts_the_documented_shapes() {
        for line in [
            "p, role:Gamma, Chart, can_read",
            "p, role:Admin, *, can_write",
            "p, user:alice, datasources:uid:pg_main, Query",
            "p, team:eng, datasources:uid:*, Edit",
            "p, basic:Admin, datasources:*, Admin",
            "p, serviceaccount:ci, datasources:uid:x, datasources:query",
            "p, user:bob, datasources:uid:x, datasources.permissions:read",
            "g, user:alice, team:eng",
            "g, basic:Admin, basic:Editor",
            "g2, Edit, Query",
        ] {
            assert!(parse(line).is_ok(), "{line}: {:?}", parse(line));
        }
    }

    #[test]
    fn rejects_each_bad_shape_with_its_own_problem() {
        let cases: Vec<(&str, LineProblem)> = vec![
            ("x, a, b", LineProblem::UnknownLineType("x".into())),
            (
                "p, user:a, Chart",
                LineProblem::FieldCount {
                    kind: "p",
                    expected: 4,
                    found: 3,
                },
            ),
            (
                "g, user:a, team:b, extra",
                LineProblem::FieldCount {
                    kind: "g",
                    expected: 3,
                    found: 4,
                },
            ),
            (
                "g2, Edit",
                LineProblem::FieldCount {
                    kind: "g2",
                    expected: 3,
                    found: 2,
                },
            ),
            (
                "p, user:a, , can_read",
                LineProblem::EmptyField { position: 3 },
            ),
            (
                "p, alice, Chart, can_read",
                LineProblem::UnknownSubjectPrefix("alice".into()),
            ),
            (
                "p, user:, Chart, can_read",
                LineProblem::EmptySubjectName("user:".into()),
            ),
            (
                "p, basic:Owner, Chart, can_read",
                LineProblem::UnknownBasicRole("Owner".into()),
            ),
            (
                "p, basic:viewer, Chart, can_read",
                LineProblem::UnknownBasicRole("viewer".into()),
            ),
            (
                "p, user:a, datasources:uid:, Query",
                LineProblem::BadDatasourceScope("datasources:uid:".into()),
            ),
            (
                "p, user:a, datasources:foo, Query",
                LineProblem::BadDatasourceScope("datasources:foo".into()),
            ),
            (
                "p, user:a, datasources:uid:a*, Query",
                LineProblem::BadDatasourceScope("datasources:uid:a*".into()),
            ),
            (
                "p, user:a, datasources:uid:x, Queryy",
                LineProblem::UnknownLevel("Queryy".into()),
            ),
            (
                "p, user:a, datasources:uid:x, can_read",
                LineProblem::UnknownLevel("can_read".into()),
            ),
            (
                "p, role:Gamma, Chart, read",
                LineProblem::BadRolePermission("read".into()),
            ),
            (
                "p, role:Gamma, Chart, can_",
                LineProblem::BadRolePermission("can_".into()),
            ),
            (
                "p, role:Gamma, Chart, Query",
                LineProblem::BadRolePermission("Query".into()),
            ),
            (
                "p, role:Gamma, Char*, can_read",
                LineProblem::BadView("Char*".into()),
            ),
            (
                "g, team:eng, user:alice",
                LineProblem::NotAGroup("user:alice".into()),
            ),
            (
                "g, eng, team:eng",
                LineProblem::UnknownSubjectPrefix("eng".into()),
            ),
            (
                "g2, role:Admin, Query",
                LineProblem::ActionLooksLikeSubject("role:Admin".into()),
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(parse(line), Err(expected), "{line}");
        }
    }

    #[test]
    fn display_round_trips_fields() {
        let line = parse("p, user:alice, datasources:uid:x, Query").unwrap();
        assert_eq!(line.to_string(), "p, user:alice, datasources:uid:x, Query");
    }
}
