use std::path::PathBuf;

use super::*;
use crate::principal::{BasicRole, Principal, PrincipalKind};

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn policy_from(csv: &str) -> CompiledPolicy {
    load_policy_from_sources(
        KNOWN_MODEL,
        &[
            ("00-builtin.csv".into(), BUILTIN_HIERARCHY_CSV.into()),
            ("50-test.csv".into(), csv.into()),
        ],
    )
    .unwrap()
}

fn subjects(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

/// Asserts the index's answer and that casbin gives the same one.
fn check(policy: &CompiledPolicy, who: &[&str], object: &str, action: &str, expected: bool) {
    let who = subjects(who);
    assert_eq!(
        policy.allows(&who, object, action),
        expected,
        "index: {who:?} {object} {action}"
    );
    assert_eq!(
        policy.casbin_allows(&who, object, action),
        expected,
        "casbin: {who:?} {object} {action}"
    );
}

fn load_error(csv: &str) -> String {
    load_policy_from_sources(KNOWN_MODEL, &[("bad.csv".into(), csv.into())])
        .unwrap_err()
        .to_string()
}

#[test]
fn compiled_policy_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CompiledPolicy>();
}

#[test]
fn shipped_model_and_policies_load_with_the_index() {
    let policy = load_policy(
        &crate_root().join("casbin_model.conf"),
        &crate_root().join("policies"),
    )
    .unwrap();
    assert!(!policy.uses_casbin_fallback());
    assert!(policy.line_count() > 30);
    assert_eq!(policy.digest().len(), 64);
    // Superset 6.1's built-in roles (10-superset-roles.csv is generated from them).
    check(&policy, &["role:Gamma"], "Chart", "can_read", true);
    check(&policy, &["role:Gamma"], "Chart", "can_write", true);
    check(
        &policy,
        &["role:Gamma"],
        "SQLLab",
        "can_execute_sql_query",
        false,
    );
    // Every built-in role holds `can_csv`, so datagate's granular export permissions too,
    // on the export view (`Superset`) only.
    check(
        &policy,
        &["role:Gamma"],
        "Superset",
        "can_export_data",
        true,
    );
    check(&policy, &["role:Gamma"], "Chart", "can_export_data", false);
    check(
        &policy,
        &["role:Alpha"],
        "Superset",
        "can_export_data",
        true,
    );
    check(
        &policy,
        &["role:Admin"],
        "Superset",
        "can_copy_clipboard",
        true,
    );
    check(&policy, &["role:Admin"], "AnyView", "can_read", false);
    check(
        &policy,
        &["role:sql_lab"],
        "SQLLab",
        "can_execute_sql_query",
        true,
    );
    check(
        &policy,
        &["role:sql_lab"],
        "SQLLab",
        "can_get_results",
        true,
    );
    check(&policy, &["role:sql_lab"], "SQLLab", "can_export_csv", true);
    // Public holds nothing in Superset unless PUBLIC_ROLE_LIKE says otherwise.
    check(&policy, &["role:Public"], "Dashboard", "can_read", false);
    check(&policy, &["role:Public"], "Chart", "can_read", false);
    check(
        &policy,
        &["role:Public"],
        &datasource_object("demo"),
        "datasources:query",
        false,
    );
    check(
        &policy,
        &["basic:Viewer"],
        &datasource_object("demo"),
        "datasources:query",
        true,
    );
    check(
        &policy,
        &["basic:Viewer"],
        &datasource_object("demo"),
        "datasources:write",
        false,
    );
    check(
        &policy,
        &["basic:Admin"],
        &datasource_object("x"),
        "datasources.permissions:write",
        true,
    );
    check(
        &policy,
        &["user:alice"],
        &datasource_object("pg_main"),
        "datasources.permissions:write",
        true,
    );
    check(
        &policy,
        &["user:alice"],
        &datasource_object("warehouse"),
        "datasources:query",
        false,
    );
    check(
        &policy,
        &["serviceaccount:reporting"],
        &datasource_object("warehouse"),
        "datasources:write",
        true,
    );
}

#[test]
fn anonymous_principal_acts_only_as_public() {
    let policy = policy_from(
        "p, role:Public, Dashboard, can_read\n\
         p, role:Gamma, Chart, can_read\n",
    );
    let anonymous = Principal::anonymous(vec!["Public".into()]).subjects();
    assert!(policy.allows(&anonymous, "Dashboard", "can_read"));
    assert!(!policy.allows(&anonymous, "Dashboard", "can_write"));
    assert!(!policy.allows(&anonymous, "Chart", "can_read"));
}

#[test]
fn basic_roles_nest_viewer_editor_admin() {
    let policy = policy_from(
        "p, basic:Viewer, datasources:uid:v, Query\n\
         p, basic:Editor, datasources:uid:e, Query\n\
         p, basic:Admin, datasources:uid:a, Query\n",
    );
    let (v, e, a) = (
        datasource_object("v"),
        datasource_object("e"),
        datasource_object("a"),
    );
    for (role, allowed) in [
        ("basic:Viewer", [true, false, false]),
        ("basic:Editor", [true, true, false]),
        ("basic:Admin", [true, true, true]),
    ] {
        for (object, expected) in [&v, &e, &a].into_iter().zip(allowed) {
            check(&policy, &[role], object, "datasources:query", expected);
        }
    }
    let editor = Principal {
        kind: PrincipalKind::User,
        username: "eve".into(),
        user_id: None,
        email: None,
        roles: vec![],
        teams: vec![],
        basic_role: Some(BasicRole::Editor),
        claims: Default::default(),
    };
    assert!(policy.allows(&editor.subjects(), &v, "datasources:read"));
    assert!(!policy.allows(&editor.subjects(), &a, "datasources:read"));
}

#[test]
fn levels_nest_query_edit_admin() {
    let policy = policy_from(
        "p, user:q, datasources:uid:x, Query\n\
         p, user:e, datasources:uid:x, Edit\n\
         p, user:a, datasources:uid:x, Admin\n\
         p, user:raw, datasources:uid:x, datasources:read\n",
    );
    let x = datasource_object("x");
    let expectations = [
        ("datasources:read", [true, true, true, true]),
        ("datasources:query", [true, true, true, false]),
        ("datasources:write", [false, true, true, false]),
        ("datasources:delete", [false, true, true, false]),
        ("datasources.permissions:read", [false, false, true, false]),
        ("datasources.permissions:write", [false, false, true, false]),
        ("Query", [true, true, true, false]),
        ("Edit", [false, true, true, false]),
        ("Admin", [false, false, true, false]),
    ];
    for (action, allowed) in expectations {
        for (user, expected) in ["user:q", "user:e", "user:a", "user:raw"]
            .into_iter()
            .zip(allowed)
        {
            check(&policy, &[user], &x, action, expected);
        }
    }
}

#[test]
fn datasource_scope_wildcards() {
    let policy = policy_from(
        "p, user:all, datasources:*, Query\n\
         p, user:uids, datasources:uid:*, Query\n\
         p, user:one, datasources:uid:x, Query\n",
    );
    for uid in ["x", "xy", "y"] {
        let object = datasource_object(uid);
        check(&policy, &["user:all"], &object, "datasources:query", true);
        check(&policy, &["user:uids"], &object, "datasources:query", true);
        check(
            &policy,
            &["user:one"],
            &object,
            "datasources:query",
            uid == "x",
        );
    }
    check(&policy, &["user:all"], "Chart", "datasources:query", false);
    check(
        &policy,
        &["user:nobody"],
        &datasource_object("x"),
        "datasources:query",
        false,
    );
}

#[test]
fn view_wildcard_covers_every_view() {
    let policy = policy_from("p, role:Admin, *, can_read\np, role:Gamma, Chart, can_read\n");
    check(&policy, &["role:Admin"], "Chart", "can_read", true);
    check(&policy, &["role:Admin"], "Dashboard", "can_read", true);
    check(&policy, &["role:Admin"], "Dashboard", "can_write", false);
    check(&policy, &["role:Gamma"], "Dashboard", "can_read", false);
}

#[test]
fn team_and_role_memberships_grant_through_the_group() {
    let policy = policy_from(
        "g, user:alice, team:eng\n\
         g, team:eng, role:sql_lab\n\
         p, team:eng, datasources:uid:pg, Query\n\
         p, role:sql_lab, SQLLab, can_execute_sql_query\n",
    );
    check(
        &policy,
        &["user:alice"],
        &datasource_object("pg"),
        "datasources:query",
        true,
    );
    check(
        &policy,
        &["user:alice"],
        "SQLLab",
        "can_execute_sql_query",
        true,
    );
    check(
        &policy,
        &["user:bob"],
        &datasource_object("pg"),
        "datasources:query",
        false,
    );
    check(
        &policy,
        &["user:bob", "team:eng"],
        &datasource_object("pg"),
        "datasources:query",
        true,
    );
    check(
        &policy,
        &["team:eng"],
        &datasource_object("pg"),
        "datasources:write",
        false,
    );
}

#[test]
fn membership_cycles_terminate_and_share_grants() {
    let policy = policy_from(
        "g, team:a, team:b\n\
         g, team:b, team:c\n\
         g, team:c, team:a\n\
         g, user:u, team:a\n\
         p, team:c, Chart, can_read\n\
         p, team:a, Dashboard, can_read\n",
    );
    for who in ["team:a", "team:b", "team:c", "user:u"] {
        check(&policy, &[who], "Chart", "can_read", true);
        check(&policy, &[who], "Dashboard", "can_read", true);
        check(&policy, &[who], "Dataset", "can_read", false);
    }
}

#[test]
fn hierarchies_deeper_than_casbin_follows_are_rejected() {
    let chain = |links: usize| {
        let mut csv = String::new();
        for level in 0..links {
            csv.push_str(&format!("g, team:t{level}, team:t{}\n", level + 1));
        }
        csv.push_str(&format!("p, team:t{links}, Chart, can_read\n"));
        csv
    };
    let policy = policy_from(&chain(9));
    check(&policy, &["team:t0"], "Chart", "can_read", true);
    let error =
        load_policy_from_sources(KNOWN_MODEL, &[("deep.csv".into(), chain(10))]).unwrap_err();
    assert!(
        matches!(
            error,
            PolicyError::HierarchyTooDeep {
                relation: "role",
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("`team:t0` reaches `team:t10`"),
        "{error}"
    );
}

#[test]
fn every_validation_error_names_file_and_line() {
    let cases = [
        ("x, a, b", "unknown line type `x`"),
        ("p, user:a, Chart", "`p` lines have 4 fields, found 3"),
        ("g, user:a, team:b, c", "`g` lines have 3 fields, found 4"),
        ("g2, Edit", "`g2` lines have 3 fields, found 2"),
        ("p, user:a, , can_read", "field 3 is empty"),
        (
            "p, alice, Chart, can_read",
            "unknown subject prefix in `alice`",
        ),
        (
            "p, basic:Owner, Chart, can_read",
            "unknown basic role `Owner`",
        ),
        (
            "p, user:a, datasources:uid:, Query",
            "bad datasource scope `datasources:uid:`",
        ),
        (
            "p, user:a, datasources:foo, Query",
            "bad datasource scope `datasources:foo`",
        ),
        (
            "p, user:a, datasources:uid:a*, Query",
            "bad datasource scope `datasources:uid:a*`",
        ),
        (
            "p, user:a, datasources:uid:a, Queryy",
            "unknown level `Queryy`",
        ),
        (
            "p, role:Gamma, Chart, read",
            "role permission `read` must start with `can_`",
        ),
        ("g, team:a, user:b", "`user:b` cannot have members"),
    ];
    for (line, problem) in cases {
        // Two comment lines and a blank line before: the error must count them.
        let error = load_error(&format!("# header\n\n# more\n{line}\n"));
        assert_eq!(
            error,
            format!("{problem}{} in bad.csv line 4", rest_of(&error, problem))
        );
    }
}

/// The part of a message between the asserted prefix and ` in <file> line <n>`.
fn rest_of(error: &str, problem: &str) -> String {
    let tail = error
        .strip_prefix(problem)
        .unwrap_or_else(|| panic!("{error}"));
    let end = tail.rfind(" in ").unwrap_or_else(|| panic!("{error}"));
    tail[..end].to_string()
}

#[test]
fn errors_in_later_files_name_that_file() {
    let error = load_policy_from_sources(
        KNOWN_MODEL,
        &[
            ("a.csv".into(), "p, role:Gamma, Chart, can_read\n".into()),
            (
                "b.csv".into(),
                "p, role:Gamma, Chart, can_read\np, role:Gamma, Chart, read\n".into(),
            ),
        ],
    )
    .unwrap_err();
    assert!(
        matches!(&error, PolicyError::Line { location, .. } if location.file == "b.csv" && location.line == 2)
    );
}

#[test]
fn comments_blank_lines_and_whitespace_are_tolerated() {
    let policy =
        policy_from("   \n  # indented comment\n\tp ,  role:Gamma ,Chart,  can_read  \n\n");
    assert_eq!(
        policy.line_count(),
        BUILTIN_HIERARCHY_CSV
            .lines()
            .filter(|l| l.starts_with('g'))
            .count()
            + 1
    );
    check(&policy, &["role:Gamma"], "Chart", "can_read", true);
}

#[test]
fn model_syntax_errors_name_the_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("broken_model.conf");
    std::fs::write(&model, KNOWN_MODEL.replace("&& g2(p.act, r.act)", "&& (")).unwrap();
    let error = load_policy(&model, &crate_root().join("policies")).unwrap_err();
    assert!(matches!(error, PolicyError::Model { .. }), "{error}");
    assert!(error.to_string().contains("`broken_model.conf`"), "{error}");
    assert!(
        !error
            .to_string()
            .contains(&dir.path().display().to_string())
    );

    std::fs::write(&model, "[request_definition]\nr = sub, obj, act\n").unwrap();
    assert!(matches!(
        load_policy(&model, &crate_root().join("policies")),
        Err(PolicyError::Model { .. })
    ));
}

#[test]
fn an_unknown_model_shape_falls_back_to_casbin() {
    let exact_model = KNOWN_MODEL.replace(
        "m = g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && g2(p.act, r.act)",
        "m = g(r.sub, p.sub) && r.obj == p.obj && g2(p.act, r.act)",
    );
    assert_ne!(exact_model, KNOWN_MODEL);
    let files = [
        ("00.csv".to_string(), BUILTIN_HIERARCHY_CSV.to_string()),
        (
            "10.csv".to_string(),
            "p, user:a, datasources:uid:*, Query\np, user:a, datasources:uid:x, Query\n"
                .to_string(),
        ),
    ];
    let policy = load_policy_from_sources(&exact_model, &files).unwrap();
    assert!(policy.uses_casbin_fallback());
    let who = subjects(&["user:a"]);
    // With `==` instead of keyMatch, the pattern is a literal object.
    assert!(policy.allows(&who, &datasource_object("x"), "datasources:query"));
    assert!(!policy.allows(&who, &datasource_object("y"), "datasources:query"));

    // Comments and spacing alone do not count as a different shape.
    let reformatted = KNOWN_MODEL.replace("r = sub, obj, act", "r   =   sub,obj,  act  # request");
    let policy = load_policy_from_sources(&reformatted.replace("  # request", ""), &files).unwrap();
    assert!(!policy.uses_casbin_fallback());
}

#[test]
fn policy_dir_skips_dotfiles_and_other_files_and_follows_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("..2024_01_01");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(
        data.join("10-roles.csv"),
        "p, role:Gamma, Chart, can_read\n",
    )
    .unwrap();
    std::fs::write(data.join("broken.csv"), "not, a, policy, line, at all\n").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("..2024_01_01", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink(data.join("10-roles.csv"), dir.path().join("10-roles.csv"))
            .unwrap();
    }
    std::fs::write(dir.path().join(".hidden.csv"), "garbage\n").unwrap();
    std::fs::write(dir.path().join("README.md"), "garbage\n").unwrap();
    std::fs::write(dir.path().join("00-builtin.csv"), BUILTIN_HIERARCHY_CSV).unwrap();
    let policy = load_policy(&crate_root().join("casbin_model.conf"), dir.path()).unwrap();
    #[cfg(unix)]
    check(&policy, &["role:Gamma"], "Chart", "can_read", true);
    assert!(!policy.uses_casbin_fallback());
}

#[test]
fn missing_policy_dir_is_an_error_without_the_full_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let error = load_policy(&crate_root().join("casbin_model.conf"), &missing).unwrap_err();
    assert!(matches!(error, PolicyError::Read { .. }));
    assert!(
        !error
            .to_string()
            .contains(&dir.path().display().to_string()),
        "{error}"
    );
}

#[test]
fn digest_tracks_model_names_and_contents() {
    let files = |contents: &str| vec![("a.csv".to_string(), contents.to_string())];
    let digest = |model: &str, files: &[(String, String)]| {
        load_policy_from_sources(model, files)
            .unwrap()
            .digest()
            .to_string()
    };
    let base = digest(KNOWN_MODEL, &files("p, role:G, Chart, can_read\n"));
    assert_eq!(
        base,
        digest(KNOWN_MODEL, &files("p, role:G, Chart, can_read\n"))
    );
    assert_ne!(
        base,
        digest(KNOWN_MODEL, &files("p, role:G, Chart, can_write\n"))
    );
    assert_ne!(
        base,
        digest(
            &format!("{KNOWN_MODEL}\n"),
            &files("p, role:G, Chart, can_read\n")
        )
    );
    let renamed = vec![(
        "b.csv".to_string(),
        "p, role:G, Chart, can_read\n".to_string(),
    )];
    assert_ne!(base, digest(KNOWN_MODEL, &renamed));
}

#[test]
fn compile_policy_accepts_parsed_lines_from_any_source() {
    let mut lines = parse_policy_file("00.csv", BUILTIN_HIERARCHY_CSV).unwrap();
    lines.push(SourcedLine::new(
        PolicyLine::Grant {
            subject: "user:zoe".into(),
            object: datasource_object("pg"),
            action: "Edit".into(),
        },
        "admin store",
        1,
    ));
    let policy = compile_policy(KNOWN_MODEL, lines.clone()).unwrap();
    check(
        &policy,
        &["user:zoe"],
        &datasource_object("pg"),
        "datasources:delete",
        true,
    );
    check(
        &policy,
        &["user:zoe"],
        &datasource_object("pg"),
        "datasources.permissions:read",
        false,
    );
    assert_eq!(policy.line_count(), lines.len());
    let again = compile_policy(KNOWN_MODEL, lines).unwrap();
    assert_eq!(policy.digest(), again.digest());
}

#[test]
fn effective_permissions_list_own_and_inherited_grants() {
    let policy = policy_from(
        "g, user:alice, team:eng\n\
         p, team:eng, datasources:uid:pg, Query\n\
         p, user:alice, datasources:*, datasources:read\n\
         p, role:Gamma, Chart, can_read\n\
         p, role:Other, Chart, can_write\n",
    );
    let permissions = policy.effective_permissions(&subjects(&["user:alice", "role:Gamma"]));
    assert_eq!(
        permissions.role_permissions,
        vec![("can_read".to_string(), "Chart".to_string())]
    );
    assert_eq!(permissions.datasource_grants.len(), 2);
    let team_grant = permissions
        .datasource_grants
        .iter()
        .find(|grant| grant.via == "team:eng")
        .unwrap();
    assert_eq!(team_grant.object, "datasources:uid:pg");
    assert_eq!(team_grant.action, "Query");
    assert_eq!(
        team_grant.implies,
        vec!["Query", "datasources:query", "datasources:read"]
    );
    assert!(
        policy
            .effective_permissions(&subjects(&["user:nobody"]))
            .datasource_grants
            .is_empty()
    );
}

#[test]
fn unknown_subjects_objects_and_actions_are_denied() {
    let policy = policy_from("p, role:Gamma, *, can_read\n");
    check(&policy, &[], "Chart", "can_read", false);
    check(&policy, &["role:gamma"], "Chart", "can_read", false);
    check(&policy, &["role:Gamma"], "Chart", "can_fly", false);
    check(&policy, &["role:Gamma"], "", "can_read", true);
}

#[test]
fn line_numbers_hold_without_a_trailing_newline_and_with_crlf() {
    let error = load_error("p, role:G, Chart, can_read\n\n# c\np, role:G, Chart, read");
    assert!(error.ends_with("in bad.csv line 4"), "{error}");
    let error = load_error("p, role:G, Chart, can_read\r\n\r\np, role:G, Chart, read\r\n");
    assert!(error.ends_with("in bad.csv line 3"), "{error}");
}

#[test]
fn groups_of_matches_casbins_role_manager() {
    let files = vec![
        ("00-builtin-hierarchy.csv".to_string(), BUILTIN_HIERARCHY_CSV.to_string()),
        (
            "10-memberships.csv".to_string(),
            "g, user:alice, role:Gamma\ng, role:Gamma, role:Viewer_like\ng, user:alice, team:eu\n\
             g, team:eu, role:EU_team\ng, serviceaccount:bot, basic:Editor\np, role:Gamma, Chart, can_read\n"
                .to_string(),
        ),
    ];
    let policy = load_policy_from_sources(KNOWN_MODEL, &files).unwrap();
    let sorted = |mut names: Vec<String>| {
        names.sort();
        names
    };
    for subjects in [
        vec!["user:alice".to_string()],
        vec!["serviceaccount:bot".to_string()],
        vec!["user:nobody".to_string(), "role:Gamma".to_string()],
        vec!["basic:Admin".to_string()],
    ] {
        assert_eq!(
            sorted(policy.groups_of(&subjects)),
            sorted(policy.casbin_groups_of(&subjects)),
            "{subjects:?}"
        );
    }
    assert_eq!(
        sorted(policy.groups_of(&["user:alice".to_string()])),
        vec!["role:EU_team", "role:Gamma", "role:Viewer_like", "team:eu"]
    );
    assert_eq!(
        sorted(policy.groups_of(&["serviceaccount:bot".to_string()])),
        vec!["basic:Editor", "basic:Viewer"]
    );
}
