//! Synthetic policies of realistic shape for the decision bench and `examples/policy_scale`:
//! the shipped hierarchy and Superset roles, then users that each belong to a team, a
//! basic role and a FAB role and hold a few per-uid datasource grants, plus team grants.

#![allow(dead_code)]

use datagate::policy::BUILTIN_HIERARCHY_CSV;

const SUPERSET_ROLES_CSV: &str = include_str!("../policies/10-superset-roles.csv");
const LEVELS: [&str; 3] = ["Query", "Edit", "Admin"];
const BASIC_ROLES: [&str; 3] = ["Viewer", "Editor", "Admin"];
const ROLES: [&str; 3] = ["Gamma", "Alpha", "sql_lab"];
/// Per user: 3 memberships and this many datasource grants.
const GRANTS_PER_USER: usize = 7;
const LINES_PER_USER: usize = 3 + GRANTS_PER_USER;

pub struct Synthetic {
    pub files: Vec<(String, String)>,
    pub users: usize,
    pub teams: usize,
    pub datasources: usize,
}

/// About `grant_lines` lines in total (at least the fixed files).
pub fn synthetic_policy(grant_lines: usize) -> Synthetic {
    let users = grant_lines / LINES_PER_USER;
    let teams = (users / 20).max(1);
    let datasources = (grant_lines / 100).max(5);
    let mut generated = String::with_capacity(grant_lines * 48);
    for user in 0..users {
        let team = user % teams;
        generated.push_str(&format!("g, user:u{user}, team:t{team}\n"));
        generated.push_str(&format!(
            "g, user:u{user}, basic:{}\n",
            BASIC_ROLES[user % 3]
        ));
        generated.push_str(&format!("g, user:u{user}, role:{}\n", ROLES[user % 3]));
        for grant in 0..GRANTS_PER_USER {
            let uid = (user * 31 + grant * 7) % datasources;
            let level = LEVELS[(user + grant) % 3];
            generated.push_str(&format!(
                "p, user:u{user}, datasources:uid:d{uid}, {level}\n"
            ));
        }
    }
    // Every team also gets one datasource (one line per team, on top of the per-user lines).
    for team in 0..teams {
        generated.push_str(&format!(
            "p, team:t{team}, datasources:uid:d{}, Query\n",
            team % datasources
        ));
    }
    // Tiny policies still need a few grants.
    if users == 0 {
        for line in 0..grant_lines {
            generated.push_str(&format!(
                "p, user:u{line}, datasources:uid:d{}, Query\n",
                line % datasources
            ));
        }
    }
    let mut files = vec![(
        "00-builtin-hierarchy.csv".into(),
        BUILTIN_HIERARCHY_CSV.into(),
    )];
    // The ~40 role lines would dwarf the smallest policy.
    if grant_lines >= 100 {
        files.push(("10-superset-roles.csv".into(), SUPERSET_ROLES_CSV.into()));
    }
    files.push(("30-generated.csv".into(), generated));
    Synthetic {
        files,
        users,
        teams,
        datasources,
    }
}

/// Principal-like subject sets (`user`, FAB role, team, basic role) with datasource and
/// FAB requests; about half are allowed.
pub fn requests(synthetic: &Synthetic, count: usize) -> Vec<(Vec<String>, String, String)> {
    let users = synthetic.users.max(1);
    (0..count)
        .map(|request| {
            let user = (request * 7919) % users;
            let subjects = vec![
                format!("user:u{user}"),
                format!("role:{}", ROLES[user % 3]),
                format!("team:t{}", user % synthetic.teams),
                format!("basic:{}", BASIC_ROLES[user % 3]),
            ];
            let (object, action) = match request % 4 {
                // One of the user's own grants.
                0 => (
                    format!(
                        "datasources:uid:d{}",
                        (user * 31 + 7 * (request % 7)) % synthetic.datasources
                    ),
                    "datasources:query".to_string(),
                ),
                1 => (
                    format!("datasources:uid:d{}", request % synthetic.datasources),
                    "datasources:write".to_string(),
                ),
                2 => ("Chart".to_string(), "can_read".to_string()),
                _ => ("Dashboard".to_string(), "can_export_data".to_string()),
            };
            (subjects, object, action)
        })
        .collect()
}

/// Single-subject requests (the user only; memberships resolved by the policy), the
/// shape casbin's `enforce()` takes.
pub fn single_subject_requests(
    synthetic: &Synthetic,
    count: usize,
) -> Vec<(Vec<String>, String, String)> {
    requests(synthetic, count)
        .into_iter()
        .map(|(subjects, object, action)| (subjects.into_iter().take(1).collect(), object, action))
        .collect()
}
