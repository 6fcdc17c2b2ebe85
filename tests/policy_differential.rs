//! Differential test: the compiled decision index must give casbin's answer on every
//! request, for random policy sets (memberships with multi-level chains and cycles,
//! grants on every scope shape and level, FAB permissions with `*`) and random requests
//! (granted and ungranted subjects, objects and actions, edge-case objects).
//!
//! About half of the grants come from the grants store instead of the files: the store's
//! lines are not loaded into the snapshot's casbin enforcer (they are compiled straight
//! into the store part of the index, see `src/policy/store_grants.rs`), so the reference
//! here is casbin over the file and store lines together, built by the test.

use std::sync::atomic::{AtomicUsize, Ordering};

use datagate::policy::{
    BUILTIN_HIERARCHY_CSV, CasbinReference, CompiledPolicy, KNOWN_MODEL, PolicyError, PolicyLine,
    SourcedLine, StoreSubjectLines, load_policy_from_sources, parse_policy_file,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const MEMBERS: &[&str] = &[
    "user:u0",
    "user:u1",
    "user:u2",
    "user:u3",
    "serviceaccount:s0",
];
const GROUPS: &[&str] = &[
    "team:t0",
    "team:t1",
    "team:t2",
    "role:Admin",
    "role:Gamma",
    "role:Public",
    "role:sql_lab",
    "basic:Viewer",
    "basic:Editor",
    "basic:Admin",
];
const GRANT_SCOPES: &[&str] = &[
    "datasources:*",
    "datasources:uid:*",
    "datasources:uid:a",
    "datasources:uid:b",
    "datasources:uid:ab",
];
const GRANT_LEVELS: &[&str] = &[
    "Query",
    "Edit",
    "Admin",
    "datasources:query",
    "datasources:write",
    "datasources.permissions:read",
];
const GRANT_VIEWS: &[&str] = &["*", "Chart", "Dashboard", "SQLLab"];
const ROLE_PERMISSIONS: &[&str] = &["can_read", "can_write", "can_csv"];
/// Extra `g2` lines some policy sets add (one of them makes a cycle with another).
const EXTRA_IMPLICATIONS: &[(&str, &str)] = &[
    ("can_write", "can_read"),
    ("can_csv", "can_export_data"),
    ("can_read", "can_write"),
];
const REQUEST_OBJECTS: &[&str] = &[
    "datasources:uid:a",
    "datasources:uid:b",
    "datasources:uid:ab",
    "datasources:uid:c",
    "datasources:uid:",
    "datasources:uid:*",
    "datasources:",
    "Chart",
    "Dashboard",
    "SQLLab",
    "Dataset",
];
const REQUEST_ACTIONS: &[&str] = &[
    "datasources:read",
    "datasources:query",
    "datasources:write",
    "datasources:delete",
    "datasources.permissions:read",
    "datasources.permissions:write",
    "Query",
    "Edit",
    "Admin",
    "can_read",
    "can_write",
    "can_csv",
    "can_export_data",
];

const POLICY_SETS: u32 = 200;
const REQUESTS_PER_SET: usize = 500;

fn pick(pool: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    proptest::sample::select(pool)
}

fn any_subject() -> impl Strategy<Value = &'static str> {
    prop_oneof![pick(MEMBERS), pick(GROUPS)]
}

type Grant = (&'static str, &'static str, &'static str);

fn grant() -> impl Strategy<Value = Grant> {
    prop_oneof![
        (any_subject(), pick(GRANT_SCOPES), pick(GRANT_LEVELS)),
        (any_subject(), pick(GRANT_VIEWS), pick(ROLE_PERMISSIONS)),
    ]
}

fn membership_line() -> impl Strategy<Value = String> {
    // Groups can be members too: multi-level chains and cycles come from here.
    (any_subject(), pick(GROUPS)).prop_map(|(member, group)| format!("g, {member}, {group}"))
}

/// The grants (all of them, for aiming requests), the policy file, and the grants that
/// come from the store instead.
type RandomPolicy = (Vec<Grant>, String, Vec<Grant>);

fn policy() -> impl Strategy<Value = RandomPolicy> {
    (
        proptest::collection::vec((grant(), any::<bool>()), 1..16),
        proptest::collection::vec(membership_line(), 0..14),
        proptest::sample::subsequence(EXTRA_IMPLICATIONS, 0..=EXTRA_IMPLICATIONS.len()),
    )
        .prop_map(|(placed, memberships, implications)| {
            let mut csv = String::new();
            let mut store = Vec::new();
            for ((subject, object, action), in_store) in &placed {
                if *in_store {
                    store.push((*subject, *object, *action));
                } else {
                    csv.push_str(&format!("p, {subject}, {object}, {action}\n"));
                }
            }
            let grants = placed.into_iter().map(|(grant, _)| grant).collect();
            for line in &memberships {
                csv.push_str(line);
                csv.push('\n');
            }
            for (action, implied) in implications {
                csv.push_str(&format!("g2, {action}, {implied}\n"));
            }
            (grants, csv, store)
        })
}

type Request = (Vec<&'static str>, &'static str, &'static str);

/// A random request, or (half the time) one aimed at a random grant of the policy: its
/// subject among the caller's, an object its scope covers, an action its level may imply.
/// Purely random requests would be ~90% denies.
#[derive(Debug, Clone)]
struct RequestSeed {
    aimed: bool,
    grant: usize,
    subjects: Vec<&'static str>,
    object: &'static str,
    action: &'static str,
}

fn request_seed() -> impl Strategy<Value = RequestSeed> {
    (
        any::<bool>(),
        any::<usize>(),
        proptest::collection::vec(any_subject(), 1..=4),
        pick(REQUEST_OBJECTS),
        pick(REQUEST_ACTIONS),
    )
        .prop_map(|(aimed, grant, subjects, object, action)| RequestSeed {
            aimed,
            grant,
            subjects,
            object,
            action,
        })
}

fn is_datasource(name: &str) -> bool {
    name.starts_with("datasources")
}

fn request(seed: RequestSeed, grants: &[Grant]) -> Request {
    let RequestSeed {
        aimed,
        grant,
        mut subjects,
        object,
        action,
    } = seed;
    let Some(&(grant_subject, grant_object, grant_action)) =
        grants.get(grant % grants.len().max(1)).filter(|_| aimed)
    else {
        return (subjects, object, action);
    };
    let last = subjects.len() - 1;
    subjects[last] = grant_subject;
    let object = if grant_object.contains('*') {
        // Any object of the grant's kind: the pattern may or may not cover it.
        if is_datasource(grant_object) == is_datasource(object) || grant_object == "*" {
            object
        } else {
            "datasources:uid:b"
        }
    } else {
        grant_object
    };
    let action = if is_datasource(grant_object) == is_datasource(action) {
        action
    } else {
        grant_action
    };
    (subjects, object, action)
}

fn store_line(subject: &str, object: &str, action: &str) -> SourcedLine {
    SourcedLine::new(
        PolicyLine::Grant {
            subject: subject.to_string(),
            object: object.to_string(),
            action: action.to_string(),
        },
        "admin store",
        1,
    )
}

/// The snapshot's policy (files compiled, store lines added by subject) and casbin over
/// every line.
fn compile(csv: &str, store: &[Grant]) -> Result<(CompiledPolicy, CasbinReference), PolicyError> {
    let files = load_policy_from_sources(
        KNOWN_MODEL,
        &[
            (
                "00-builtin.csv".to_string(),
                BUILTIN_HIERARCHY_CSV.to_string(),
            ),
            ("50-random.csv".to_string(), csv.to_string()),
        ],
    )?;
    let mut by_subject: Vec<StoreSubjectLines> = Vec::new();
    for (subject, object, action) in store {
        let line = store_line(subject, object, action);
        match by_subject
            .iter_mut()
            .find(|update| update.subject == *subject)
        {
            Some(update) => update.lines.push(line),
            None => by_subject.push(StoreSubjectLines {
                subject: subject.to_string(),
                lines: vec![line],
            }),
        }
    }
    let policy = files.with_store_subjects(by_subject)?;
    let mut lines = parse_policy_file("00-builtin.csv", BUILTIN_HIERARCHY_CSV)?;
    lines.extend(parse_policy_file("50-random.csv", csv)?);
    lines.extend(
        store
            .iter()
            .map(|(subject, object, action)| store_line(subject, object, action)),
    );
    Ok((policy, CasbinReference::build(KNOWN_MODEL, &lines)?))
}

#[test]
fn compiled_index_agrees_with_casbin_enforce() {
    let decisions = AtomicUsize::new(0);
    let allowed = AtomicUsize::new(0);
    let too_deep = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: POLICY_SETS,
        // Shrinking a 500-request case is slow and the failure message already carries
        // the policy and the request.
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        policy(),
        proptest::collection::vec(request_seed(), REQUESTS_PER_SET),
    );
    let outcome = runner.run(&strategy, |((grants, csv, store), seeds)| {
        let (policy, reference) = match compile(&csv, &store) {
            Ok(compiled) => compiled,
            // Random memberships can (rarely) chain deeper than casbin follows; the
            // loader refuses those by design, which its unit tests cover.
            Err(PolicyError::HierarchyTooDeep { .. }) => {
                too_deep.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Err(error) => return Err(TestCaseError::fail(format!("{error}\n{csv}"))),
        };
        prop_assert!(!policy.uses_casbin_fallback());
        for seed in seeds {
            let (subjects, object, action) = request(seed, &grants);
            let subjects: Vec<String> = subjects.iter().map(|s| s.to_string()).collect();
            let index = policy.allows(&subjects, object, action);
            let casbin = reference.allows(&subjects, object, action);
            prop_assert_eq!(
                index,
                casbin,
                "request ({:?}, {}, {}) on policy:\n{}store lines: {:?}",
                subjects,
                object,
                action,
                csv,
                store
            );
            decisions.fetch_add(1, Ordering::Relaxed);
            if index {
                allowed.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    });
    if let Err(proptest::test_runner::TestError::Fail(reason, _)) = &outcome {
        panic!("index and casbin disagree: {reason}");
    }
    outcome.unwrap();

    let decisions = decisions.into_inner();
    let allowed = allowed.into_inner();
    eprintln!(
        "differential: {decisions} decisions, {allowed} allowed ({:.1}%), {} denied, {} policy sets refused as too deep",
        100.0 * allowed as f64 / decisions.max(1) as f64,
        decisions - allowed,
        too_deep.into_inner(),
    );
    assert!(decisions >= 95_000, "only {decisions} decisions compared");
    // Both answers must be well represented, or the test proves little.
    assert!(
        allowed * 10 >= decisions,
        "too few allows: {allowed}/{decisions}"
    );
    assert!(
        allowed * 10 <= decisions * 9,
        "too few denies: {allowed}/{decisions}"
    );
}
