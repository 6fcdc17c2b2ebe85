//! Incremental snapshots against full rebuilds: random sequences of admin writes on a
//! real SQLite store, each applied to the serving snapshot as a delta (and, for a
//! lagging "replica", several revisions at a time through the change log), must give the
//! same store contents, identities, tokens, decisions and effective permissions as a
//! snapshot built from scratch from the store — and the same decisions as casbin over
//! the file and store lines together.

use std::sync::Arc;

use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

use super::*;
use crate::policy::{BUILTIN_HIERARCHY_CSV, CasbinReference, KNOWN_MODEL, parse_policy_file};
use crate::store::{Change, Grantee, ServiceAccountTokenInput, Store, UserInput};

const LOGINS: &[&str] = &["ann", "bob", "cy", "dee"];
const TEAMS: &[&str] = &["t0", "t1", "t2"];
const ROLES: &[&str] = &["Gamma", "Alpha", "Extra"];
const UIDS: &[&str] = &["a", "b", "cfg", "zz"];
const LEVELS: &[&str] = &["Query", "Edit", "Admin"];
const VIEWS: &[(&str, &str)] = &[
    ("can_read", "Chart"),
    ("can_write", "Chart"),
    ("can_read", "*"),
    ("can_csv", "Dashboard"),
];
const OBJECTS: &[&str] = &[
    "datasources:uid:a",
    "datasources:uid:b",
    "datasources:uid:cfg",
    "datasources:uid:zz",
    "datasources:uid:nope",
    "Chart",
    "Dashboard",
    "SQLLab",
];
const ACTIONS: &[&str] = &[
    "datasources:read",
    "datasources:query",
    "datasources:write",
    "datasources.permissions:write",
    "Query",
    "Admin",
    "can_read",
    "can_write",
    "can_csv",
    "can_export_data",
];

/// File lines that give store subjects inheritance and implications to go through.
const FILE_POLICY: &str = "\
g, team:t0, role:Gamma
g, user:ann, team:t1
g, role:Alpha, role:Gamma
p, role:Gamma, datasources:uid:b, Query
p, basic:Viewer, Dashboard, can_read
g2, can_csv, can_export_data
";

fn write_config(directory: &std::path::Path) -> Config {
    std::fs::create_dir(directory.join("policies")).unwrap();
    std::fs::write(directory.join("model.conf"), KNOWN_MODEL).unwrap();
    std::fs::write(
        directory.join("policies/00-builtin.csv"),
        BUILTIN_HIERARCHY_CSV,
    )
    .unwrap();
    std::fs::write(directory.join("policies/50-test.csv"), FILE_POLICY).unwrap();
    let text = r#"
listen: {proxy: "127.0.0.1:8080", admin: "127.0.0.1:9180"}
upstream: {address: "127.0.0.1:8088"}
policy: {model: model.conf, directory: policies}
auth: {}
routes: {}
datasources:
  - {uid: cfg, dialect: sqlite}
"#;
    Config::from_yaml(text, "test.yaml", directory.to_path_buf()).unwrap()
}

/// The ids the writes so far created, to aim later writes at.
#[derive(Default)]
struct Created {
    users: Vec<i64>,
    accounts: Vec<i64>,
    teams: Vec<i64>,
    roles: Vec<i64>,
    tokens: Vec<(i64, i64)>,
    datasources: Vec<i64>,
}

fn pick<T: Copy>(items: &[T], at: u8) -> Option<T> {
    (!items.is_empty()).then(|| items[at as usize % items.len()])
}

fn user_input(login: u8, basic: u8, roles: u8) -> UserInput {
    UserInput {
        login: LOGINS[login as usize % LOGINS.len()].to_string(),
        email: None,
        name: None,
        basic_role: ["Viewer", "Editor", "Admin", ""]
            .get(basic as usize % 4)
            .filter(|role| !role.is_empty())
            .map(|role| role.to_string()),
        roles: ROLES
            .iter()
            .enumerate()
            .filter(|(index, _)| roles & (1 << index) != 0)
            .map(|(_, role)| role.to_string())
            .collect(),
    }
}

fn role_permissions(mask: u8) -> Vec<crate::store::RolePermission> {
    VIEWS
        .iter()
        .enumerate()
        .filter(|(index, _)| mask & (1 << index) != 0)
        .map(|(_, (permission, view))| crate::store::RolePermission {
            permission: permission.to_string(),
            view: view.to_string(),
        })
        .collect()
}

/// One write from five random bytes, aimed at what exists; `None` when there is
/// nothing to aim at.
fn change(op: [u8; 5], created: &Created) -> Option<Change> {
    let [kind, a, b, c, d] = op;
    let grantee = |choice: u8| match choice % 3 {
        0 => pick(&created.users, a).map(Grantee::User),
        1 => pick(&created.teams, a).map(Grantee::Team),
        _ => Some(Grantee::BuiltInRole(
            crate::principal::BasicRole::ALL[a as usize % 3],
        )),
    };
    Some(match kind % 17 {
        0 | 1 => Change::CreateUser {
            input: user_input(a, b, c),
            service_account: d % 3 == 0,
        },
        2 => {
            let id = pick(&created.users, a)?;
            Change::UpdateUser {
                id,
                input: user_input(b, c, d),
                service_account: created.accounts.contains(&id),
            }
        }
        3 => {
            let id = pick(&created.users, a)?;
            Change::DeleteUser {
                id,
                service_account: created.accounts.contains(&id),
            }
        }
        4 => Change::CreateTeam {
            name: TEAMS[a as usize % TEAMS.len()].to_string(),
            email: None,
        },
        5 => Change::UpdateTeam {
            id: pick(&created.teams, a)?,
            name: TEAMS[b as usize % TEAMS.len()].to_string(),
            email: None,
        },
        6 => Change::DeleteTeam {
            id: pick(&created.teams, a)?,
        },
        7 => Change::AddTeamMember {
            team_id: pick(&created.teams, a)?,
            user_id: pick(&created.users, b)?,
        },
        8 => Change::RemoveTeamMember {
            team_id: pick(&created.teams, a)?,
            user_id: pick(&created.users, b)?,
        },
        9..=11 => Change::SetDatasourcePermission {
            datasource_uid: UIDS[b as usize % UIDS.len()].to_string(),
            grantee: grantee(c)?,
            level: LEVELS.get(d as usize % 4).map(|level| level.to_string()),
        },
        12 => Change::CreateRole {
            name: ROLES[a as usize % ROLES.len()].to_string(),
            description: None,
            permissions: role_permissions(b),
        },
        13 => Change::UpdateRole {
            id: pick(&created.roles, a)?,
            name: ROLES[b as usize % ROLES.len()].to_string(),
            description: None,
            permissions: role_permissions(c),
        },
        14 => Change::DeleteRole {
            id: pick(&created.roles, a)?,
        },
        15 => {
            if b % 2 == 0 {
                let account = pick(&created.accounts, a)?;
                Change::CreateToken(ServiceAccountTokenInput {
                    service_account_id: account,
                    name: format!("token-{c}"),
                    token_sha256: hex::encode([c, d, a, b].repeat(8)),
                    expires_at_ms: None,
                })
            } else {
                let (account, token) = pick(&created.tokens, a)?;
                Change::DeleteToken {
                    service_account_id: account,
                    token_id: token,
                }
            }
        }
        _ => {
            if b % 2 == 0 {
                Change::CreateDatasource(crate::store::DatasourceInput {
                    uid: ["a", "zz", "cfg"][a as usize % 3].to_string(),
                    name: "store datasource".into(),
                    dialect: crate::rls::Dialect::Sqlite,
                    tables: vec![],
                    deny_unlisted_tables: false,
                    settings: Default::default(),
                    secure_settings: Default::default(),
                })
            } else {
                Change::DeleteDatasource {
                    id: pick(&created.datasources, a)?,
                }
            }
        }
    })
}

fn record_created(change: &Change, applied: &crate::store::Applied, created: &mut Created) {
    let Some(id) = applied.created_id else {
        if let Change::DeleteToken { token_id, .. } = change {
            created.tokens.retain(|(_, token)| token != token_id);
        }
        return;
    };
    match change {
        Change::CreateUser {
            service_account, ..
        } => {
            created.users.push(id);
            if *service_account {
                created.accounts.push(id);
            }
        }
        Change::CreateTeam { .. } => created.teams.push(id),
        Change::CreateRole { .. } => created.roles.push(id),
        Change::CreateToken(input) => created.tokens.push((input.service_account_id, id)),
        Change::CreateDatasource(_) => created.datasources.push(id),
        _ => {}
    }
}

fn subjects_to_ask() -> Vec<Vec<String>> {
    let mut singles: Vec<String> = Vec::new();
    for login in LOGINS {
        singles.push(format!("user:{login}"));
        singles.push(format!("serviceaccount:{login}"));
    }
    singles.extend(TEAMS.iter().map(|team| format!("team:{team}")));
    singles.extend(ROLES.iter().map(|role| format!("role:{role}")));
    singles.extend(["basic:Viewer", "basic:Editor", "basic:Admin"].map(String::from));
    let mut sets: Vec<Vec<String>> = singles.iter().map(|one| vec![one.clone()]).collect();
    sets.push(vec![
        "user:bob".into(),
        "team:t0".into(),
        "basic:Editor".into(),
    ]);
    sets.push(vec!["user:nobody".into(), "role:Extra".into()]);
    sets
}

fn sorted<K: Ord + Clone, V: Clone>(map: impl Iterator<Item = (K, V)>) -> Vec<(K, V)> {
    let mut entries: Vec<(K, V)> = map.collect();
    entries.sort_by(|left, right| left.0.cmp(&right.0));
    entries
}

/// Everything observable of `incremental` equals `full`, and its decisions equal
/// casbin's over files and store together.
fn same(
    incremental: &SnapshotContent,
    full: &SnapshotContent,
    casbin: &CasbinReference,
    context: &str,
) -> Result<(), TestCaseError> {
    proptest::prop_assert_eq!(
        &*incremental.store.contents,
        &*full.store.contents,
        "contents: {}",
        context
    );
    proptest::prop_assert_eq!(
        sorted(
            incremental
                .store
                .identities
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
        ),
        sorted(
            full.store
                .identities
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
        ),
        "identities: {}",
        context
    );
    proptest::prop_assert_eq!(
        sorted(
            incremental
                .store
                .tokens
                .iter()
                .map(|(key, value)| (*key, value.clone()))
        ),
        sorted(
            full.store
                .tokens
                .iter()
                .map(|(key, value)| (*key, value.clone()))
        ),
        "tokens: {}",
        context
    );
    proptest::prop_assert_eq!(
        &incremental.store.datasource_uids,
        &full.store.datasource_uids,
        "{}",
        context
    );
    proptest::prop_assert_eq!(&incremental.digest, &full.digest, "{}", context);
    proptest::prop_assert_eq!(
        incremental.policy.line_count(),
        full.policy.line_count(),
        "{}",
        context
    );
    for subjects in subjects_to_ask() {
        for object in OBJECTS {
            for action in ACTIONS {
                let answer = incremental.policy.allows(&subjects, object, action);
                proptest::prop_assert_eq!(
                    answer,
                    full.policy.allows(&subjects, object, action),
                    "{:?} {} {}: {}",
                    subjects,
                    object,
                    action,
                    context
                );
                proptest::prop_assert_eq!(
                    answer,
                    casbin.allows(&subjects, object, action),
                    "casbin {:?} {} {}: {}",
                    subjects,
                    object,
                    action,
                    context
                );
            }
        }
        proptest::prop_assert_eq!(
            incremental.policy.effective_permissions(&subjects),
            full.policy.effective_permissions(&subjects),
            "{:?}: {}",
            subjects,
            context
        );
    }
    Ok(())
}

fn casbin_of(contents: &StoreContents) -> CasbinReference {
    let mut lines = parse_policy_file("00-builtin.csv", BUILTIN_HIERARCHY_CSV).unwrap();
    lines.extend(parse_policy_file("50-test.csv", FILE_POLICY).unwrap());
    for subject in contents.subject_lines() {
        lines.extend(subject.lines);
    }
    CasbinReference::build(KNOWN_MODEL, &lines).unwrap()
}

#[test]
fn random_writes_applied_incrementally_equal_a_full_rebuild() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 12,
        max_shrink_iters: 0,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        proptest::collection::vec(proptest::array::uniform5(0u8..=255), 10..40),
        1usize..6,
    );
    let incremental_swaps = std::sync::atomic::AtomicUsize::new(0);
    let outcome = runner.run(&strategy, |(ops, lag)| {
        runtime.block_on(async {
            let directory = tempfile::tempdir().unwrap();
            let config = write_config(directory.path());
            let store = Store::connect_url(
                &format!(
                    "sqlite://{}?mode=rwc",
                    directory.path().join("store.db").display()
                ),
                2,
            )
            .await
            .unwrap();
            let inputs = Arc::new(PolicyInputs::read(&config).unwrap());
            let start = build_snapshot_from_inputs(
                &config,
                &inputs,
                &Arc::new(store.load().await.unwrap()),
            )
            .unwrap();
            let mut serving = start;
            let mut lagging = serving.clone();
            let mut created = Created::default();
            for (step, op) in ops.iter().enumerate() {
                let Some(change) = change(*op, &created) else {
                    continue;
                };
                let base = serving.clone();
                let building_config = config.clone();
                let result = store
                    .apply(
                        "test",
                        change.clone(),
                        Some(base.store.revision),
                        move |update| apply_update(&building_config, &base, &update),
                    )
                    .await;
                let (applied, content) = match result {
                    Ok(done) => done,
                    // Conflicts, unknown ids, refused builds: nothing changed.
                    Err(_) => continue,
                };
                record_created(&change, &applied, &mut created);
                proptest::prop_assert_eq!(content.build, BuildKind::Incremental);
                incremental_swaps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                serving = content;
                let contents = Arc::new(store.load().await.unwrap());
                let full = build_snapshot_from_inputs(&config, &inputs, &contents).unwrap();
                let casbin = casbin_of(&contents);
                same(
                    &serving,
                    &full,
                    &casbin,
                    &format!("after step {step}: {change:?}"),
                )?;
                // A replica that syncs every `lag` steps, several revisions at once.
                if step % lag == 0 {
                    let update = store
                        .changes_since(lagging.store.revision)
                        .await
                        .unwrap()
                        .unwrap();
                    proptest::prop_assert_eq!(update.kind(), "incremental");
                    lagging = apply_update(&config, &lagging, &update).unwrap();
                    same(
                        &lagging,
                        &full,
                        &casbin,
                        &format!("replica after step {step}"),
                    )?;
                }
            }
            Ok(())
        })
    });
    if let Err(proptest::test_runner::TestError::Fail(reason, _)) = &outcome {
        panic!("incremental and full snapshots disagree: {reason}");
    }
    outcome.unwrap();
    assert!(
        incremental_swaps.into_inner() >= 100,
        "too few writes were applied to prove anything"
    );
}

#[test]
fn a_write_that_would_not_build_changes_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let directory = tempfile::tempdir().unwrap();
        let config = write_config(directory.path());
        let store = Store::connect_url(
            &format!(
                "sqlite://{}?mode=rwc",
                directory.path().join("store.db").display()
            ),
            2,
        )
        .await
        .unwrap();
        let inputs = Arc::new(PolicyInputs::read(&config).unwrap());
        let serving =
            build_snapshot_from_inputs(&config, &inputs, &Arc::new(store.load().await.unwrap()))
                .unwrap();
        // A store datasource named like a config one: row-level security refuses it.
        let base = serving.clone();
        let building_config = config.clone();
        let error = store
            .apply(
                "test",
                Change::CreateDatasource(crate::store::DatasourceInput {
                    uid: "cfg".into(),
                    name: "twice".into(),
                    dialect: crate::rls::Dialect::Sqlite,
                    tables: vec![],
                    deny_unlisted_tables: false,
                    settings: Default::default(),
                    secure_settings: Default::default(),
                }),
                Some(base.store.revision),
                move |update| apply_update(&building_config, &base, &update).map(|_| ()),
            )
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("defined both in the config file"),
            "{error}"
        );
        assert_eq!(store.revision().await.unwrap(), serving.store.revision);
        assert_eq!(
            store.load().await.unwrap(),
            *serving.store.contents,
            "nothing was written"
        );
        assert!(
            store
                .changes_since(serving.store.revision)
                .await
                .unwrap()
                .is_none()
        );
    });
}

#[test]
fn a_gap_in_the_change_log_means_a_full_update() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::connect_url(
            &format!(
                "sqlite://{}?mode=rwc",
                directory.path().join("store.db").display()
            ),
            2,
        )
        .await
        .unwrap();
        let accept = |update: StoreUpdate| -> Result<StoreUpdate, SnapshotError> { Ok(update) };
        let (_, update) = store
            .apply(
                "test",
                Change::CreateTeam {
                    name: "t0".into(),
                    email: None,
                },
                Some(0),
                accept,
            )
            .await
            .unwrap();
        assert_eq!(update.kind(), "incremental");
        // A revision bumped without a change record (an older datagate, a hand edit).
        sqlx::query("UPDATE store_revision SET revision = revision + 1")
            .execute(store.pool())
            .await
            .unwrap();
        let (_, update) = store
            .apply(
                "test",
                Change::CreateTeam {
                    name: "t1".into(),
                    email: None,
                },
                Some(1),
                accept,
            )
            .await
            .unwrap();
        assert_eq!(update.kind(), "full");
        assert_eq!(update.revision(), 3);
        let update = store.changes_since(0).await.unwrap().unwrap();
        assert_eq!(update.kind(), "full");
        let update = store.changes_since(2).await.unwrap().unwrap();
        assert_eq!(update.kind(), "incremental");
        assert!(store.changes_since(3).await.unwrap().is_none());
    });
}

/// A filter-file change keeps the compiled grants and compiles row-level security alone;
/// the result is what a full build of the same files gives (digest, filters, rewrites,
/// decisions). A grant-file change is not taken that way.
#[test]
fn a_filter_only_change_keeps_the_grants_and_equals_a_full_build() {
    let directory = tempfile::tempdir().unwrap();
    let config = write_config(directory.path());
    let filter = |clause: &str| {
        format!(
            "filters:\n  - {{name: own, type: regular, datasource: cfg, tables: [orders], roles: [Gamma], clause: \"{clause}\"}}\n"
        )
    };
    let filter_path = directory.path().join("policies/60-filters.rls.yaml");
    std::fs::write(&filter_path, filter("tenant_id = 1")).unwrap();
    let store = Arc::new(StoreContents::default());
    let before_inputs = Arc::new(PolicyInputs::read(&config).unwrap());
    let serving = build_snapshot_from_inputs(&config, &before_inputs, &store).unwrap();

    std::fs::write(&filter_path, filter("tenant_id = 2")).unwrap();
    let inputs = Arc::new(PolicyInputs::read(&config).unwrap());
    let kept = serving
        .with_filter_files(&config, &inputs)
        .expect("only a filter file changed")
        .unwrap();
    let full = build_snapshot_from_inputs(&config, &inputs, &store).unwrap();
    assert_eq!(kept.build, BuildKind::Incremental);
    assert_eq!(kept.digest, full.digest);
    assert_ne!(kept.digest, serving.digest);
    assert_eq!(kept.files.digest, full.files.digest);
    assert_eq!(kept.files.filters, full.files.filters);
    assert_eq!(kept.store.datasource_uids, full.store.datasource_uids);
    assert!(
        kept.policy.shares_files_with(&serving.policy),
        "grants rebuilt"
    );
    let mut gamma = crate::principal::Principal::anonymous(vec!["Gamma".into()]);
    gamma.kind = crate::principal::PrincipalKind::User;
    gamma.username = "ann".into();
    let rewrite = |content: &SnapshotContent| {
        content
            .rls
            .rewrite(&crate::rls::RewriteRequest {
                datasource_uid: "cfg",
                sql: "SELECT id FROM orders",
                principal: &gamma,
                allow_writes: false,
                limits: crate::rls::RewriteLimits::default(),
            })
            .unwrap()
            .sql
    };
    assert_eq!(rewrite(&kept), rewrite(&full));
    assert!(
        rewrite(&kept).contains("tenant_id = 2"),
        "{}",
        rewrite(&kept)
    );
    let subjects = gamma.subjects();
    for object in OBJECTS {
        for action in ACTIONS {
            assert_eq!(
                kept.policy.allows(&subjects, object, action),
                full.policy.allows(&subjects, object, action),
                "{object} {action}"
            );
        }
    }

    // A grant file changed too: a full build is needed.
    std::fs::write(
        directory.path().join("policies/50-test.csv"),
        format!("{FILE_POLICY}p, role:Gamma, Chart, can_write\n"),
    )
    .unwrap();
    let inputs = Arc::new(PolicyInputs::read(&config).unwrap());
    assert!(serving.with_filter_files(&config, &inputs).is_none());
}
