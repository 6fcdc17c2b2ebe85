use super::*;
use crate::principal::PrincipalKind;

pub(super) fn policy(dialect: Dialect) -> RlsPolicy {
    RlsPolicy::compile(
        &[datasource_d(dialect)],
        vec![filter_on_d(
            "own",
            FilterType::Regular,
            "orders",
            "Gamma",
            "tenant_id = '{{ current_username() }}'",
        )],
    )
    .unwrap()
}

/// Datasource `d`, nothing configured but its dialect.
fn datasource_d(dialect: Dialect) -> DatasourceConfig {
    DatasourceConfig {
        uid: "d".into(),
        dialect,
        tables: vec![],
        deny_unlisted_tables: false,
        denied_functions: None,
        aws_iam: None,
        templating: None,
    }
}

/// A filter on datasource `d`: one table, one role.
fn filter_on_d(
    name: &str,
    filter_type: FilterType,
    table: &str,
    role: &str,
    clause: &str,
) -> FilterDefinition {
    FilterDefinition {
        name: name.into(),
        filter_type,
        datasource: "d".into(),
        tables: vec![table.into()],
        roles: vec![role.into()],
        group_key: None,
        clause: clause.into(),
        description: None,
    }
}

fn alice() -> Principal {
    let mut principal = Principal::anonymous(vec!["Gamma".into()]);
    principal.kind = PrincipalKind::User;
    principal.username = "alice".into();
    principal
}

fn rewrite(dialect: Dialect, sql: &str) -> Result<Rewritten, RlsError> {
    policy(dialect).rewrite(&RewriteRequest {
        datasource_uid: "d",
        sql,
        principal: &alice(),
        allow_writes: false,
        limits: RewriteLimits::default(),
    })
}

const WRAPPED: &str = "(SELECT * FROM orders WHERE (tenant_id = 'alice'))";

#[test]
fn aliases_are_kept_or_the_table_name_is_used() {
    assert_eq!(
        rewrite(Dialect::Postgres, "SELECT o.id FROM orders AS o")
            .unwrap()
            .sql
            .as_ref(),
        format!("SELECT o.id FROM {WRAPPED} AS o")
    );
    assert_eq!(
        rewrite(Dialect::Postgres, "SELECT orders.id FROM orders")
            .unwrap()
            .sql
            .as_ref(),
        format!("SELECT orders.id FROM {WRAPPED} AS orders")
    );
}

#[test]
fn postgres_cte_scoping() {
    // Without RECURSIVE the CTE's own name in its body is the real table; outside, the CTE.
    let rewritten = rewrite(
        Dialect::Postgres,
        "WITH orders AS (SELECT * FROM orders) SELECT * FROM orders",
    )
    .unwrap();
    assert_eq!(
        &*rewritten.sql,
        format!("WITH orders AS (SELECT * FROM {WRAPPED} AS orders) SELECT * FROM orders")
    );
    // A schema-qualified name is never the CTE.
    let rewritten = rewrite(
        Dialect::Postgres,
        "WITH orders AS (SELECT 1 AS id) SELECT * FROM public.orders",
    )
    .unwrap();
    assert!(
        rewritten
            .sql
            .contains("(SELECT * FROM public.orders WHERE (tenant_id = 'alice')) AS orders"),
        "{}",
        rewritten.sql
    );
    // A CTE declared later is not visible to an earlier body.
    let rewritten = rewrite(
        Dialect::Postgres,
        "WITH a AS (SELECT * FROM orders), orders AS (SELECT 1) SELECT * FROM a",
    )
    .unwrap();
    assert!(rewritten.sql.contains(WRAPPED), "{}", rewritten.sql);
}

#[test]
fn unprotected_sql_passes_unchanged() {
    let rewritten = rewrite(Dialect::Sqlite, "SELECT * FROM posts -- note").unwrap();
    assert!(!rewritten.changed);
    assert_eq!(&*rewritten.sql, "SELECT * FROM posts -- note");
}

#[test]
fn refusals_carry_their_kind() {
    for (sql, kind) in [
        ("SELECT 1; SELECT 2", "multiple_statements"),
        ("DELETE FROM orders", "statement_not_allowed"),
        ("SELECT * INTO x FROM orders", "statement_not_allowed"),
        (
            "SELECT query_to_xml('select * from orders', true, true, '')",
            "denied_function",
        ),
        ("SELECT * FROM pg_catalog.pg_class", "catalog_access"),
        ("SELECT * FROM ONLY orders", "statement_not_allowed"),
        ("SELEKT 1", "parse_error"),
    ] {
        assert_eq!(
            rewrite(Dialect::Postgres, sql).unwrap_err().kind(),
            kind,
            "{sql}"
        );
    }
    let nested = format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200));
    assert_eq!(
        rewrite(Dialect::Postgres, &nested).unwrap_err().kind(),
        "too_deeply_nested"
    );
    let chain = format!(
        "SELECT * FROM orders WHERE {}",
        vec!["id = 1"; 5000].join(" OR ")
    );
    assert_eq!(
        rewrite(Dialect::Postgres, &chain).unwrap_err().kind(),
        "too_deeply_nested"
    );
}

#[test]
fn the_verifier_rejects_an_unwrapped_reference() {
    let policy = policy(Dialect::Postgres);
    let rules = policy.datasources.get("d").unwrap();
    let applicable: Vec<&CompiledFilter> = rules.filters.iter().collect();
    let bindings: Vec<(String, Result<Vec<BoundValue>, RlsError>)> = applicable
        .iter()
        .map(|filter| {
            (
                filter.name.clone(),
                filter
                    .clause
                    .values_for(&alice(), &filter.name, Dialect::Postgres),
            )
        })
        .collect();
    let caller = CallerRules::new(rules, &applicable, &bindings);
    let parse_one = |sql: &str| {
        parse(sql, Dialect::Postgres, RewriteLimits::default())
            .unwrap()
            .remove(0)
    };
    assert!(
        rewrite::verify_statement(
            &parse_one(&format!("SELECT * FROM {WRAPPED} AS orders")),
            &caller
        )
        .is_ok()
    );
    for unwrapped in [
        "SELECT * FROM orders",
        "SELECT * FROM (SELECT * FROM orders WHERE (tenant_id = 'bob')) AS orders",
        "SELECT * FROM (SELECT * FROM orders WHERE TRUE) AS orders",
        "SELECT * FROM posts WHERE id IN (SELECT id FROM orders)",
    ] {
        assert!(
            matches!(
                rewrite::verify_statement(&parse_one(unwrapped), &caller),
                Err(RlsError::VerificationFailed(_))
            ),
            "{unwrapped}"
        );
    }
}

#[test]
fn the_cache_never_crosses_callers() {
    let policy = policy(Dialect::Sqlite);
    let mut bob = alice();
    bob.username = "bob".into();
    fn request(principal: &Principal) -> RewriteRequest<'_> {
        RewriteRequest {
            datasource_uid: "d",
            sql: "SELECT * FROM orders",
            principal,
            allow_writes: false,
            limits: RewriteLimits::default(),
        }
    }
    let alice = alice();
    let first = policy.rewrite(&request(&alice)).unwrap();
    let second = policy.rewrite(&request(&bob)).unwrap();
    let again = policy.rewrite(&request(&alice)).unwrap();
    assert!(first.sql.contains("'alice'") && second.sql.contains("'bob'"));
    assert!(!second.cache_hit && again.cache_hit);
    assert_eq!(again.sql, first.sql);
}

/// The lookup the proxy thread makes compares the caller's values where the principal
/// holds them: it must find exactly what [`RlsPolicy::rewrite`] would (same bindings, even
/// from another caller, is a hit; any bound value that differs, or a filter that newly
/// applies, is a miss; a binding that failed must fail the same way).
#[test]
fn the_copy_free_cache_lookup_finds_what_the_rewrite_would() {
    let policy = RlsPolicy::compile(
        &[datasource_d(Dialect::Sqlite)],
        vec![
            filter_on_d(
                "own",
                FilterType::Regular,
                "orders",
                "Gamma",
                "tenant_id = '{{ current_username() }}' AND region = {{ claim('region') }}",
            ),
            filter_on_d(
                "mail",
                FilterType::Regular,
                "customers",
                "Gamma",
                "email = '{{ current_user_email() }}'",
            ),
            filter_on_d(
                "auditors",
                FilterType::Regular,
                "orders",
                "Auditor",
                "audited IN ({{ current_user_roles() }})",
            ),
        ],
    )
    .unwrap();
    let with_region = |username: &str, region: serde_json::Value| {
        let mut principal = alice();
        principal.username = username.into();
        principal.claims = Arc::new(serde_json::Map::from_iter([("region".to_string(), region)]));
        principal
    };
    fn request(principal: &Principal) -> RewriteRequest<'_> {
        RewriteRequest {
            datasource_uid: "d",
            sql: "SELECT * FROM orders",
            principal,
            allow_writes: false,
            limits: RewriteLimits::default(),
        }
    }
    // `alice` has no email: the `mail` binding fails, which this query does not need.
    let alice = with_region("alice", serde_json::json!(7));
    assert!(policy.cached(&request(&alice)).is_none());
    let first = policy.rewrite(&request(&alice)).unwrap();
    assert!(
        first.sql.contains("'alice'") && first.sql.contains("7"),
        "{}",
        first.sql
    );
    let hit = policy
        .cached(&request(&alice))
        .expect("the same caller hits");
    assert!(hit.cache_hit);
    assert_eq!(hit.sql, first.sql);
    // Another caller whose bindings are the same shares the entry.
    let mut twin = alice.clone();
    twin.teams = vec!["elsewhere".into()];
    assert_eq!(
        policy.cached(&request(&twin)).map(|hit| hit.sql),
        Some(first.sql.clone())
    );
    // Any bound value that differs misses, and so does the same digits as text.
    for other in [
        with_region("bob", serde_json::json!(7)),
        with_region("alice", serde_json::json!(8)),
        with_region("alice", serde_json::json!("7")),
    ] {
        assert!(policy.cached(&request(&other)).is_none(), "{other:?}");
    }
    // The failed binding now succeeds: a different binding, a miss.
    let mut with_email = alice.clone();
    with_email.email = Some("alice@example.com".into());
    assert!(policy.cached(&request(&with_email)).is_none());
    // A filter that newly applies (another role) misses.
    let mut auditor = alice.clone();
    auditor.roles.push("Auditor".into());
    assert!(policy.cached(&request(&auditor)).is_none());
    let audited = policy.rewrite(&request(&auditor)).unwrap();
    assert!(
        !audited.cache_hit && audited.sql.contains("'Auditor'"),
        "{}",
        audited.sql
    );
    assert!(policy.cached(&request(&auditor)).is_some());
    // A value the rewrite refuses to bind (NUL) never matches a cached one.
    let unsafe_region = with_region("alice", serde_json::json!("a\u{0}b"));
    assert!(policy.cached(&request(&unsafe_region)).is_none());
}

/// The demo policy's two filters on `orders` (a regular and a base filter), as a Gamma
/// caller holds them.
fn two_filter_policy() -> RlsPolicy {
    let filters = vec![
        filter_on_d(
            "own",
            FilterType::Regular,
            "orders",
            "Gamma",
            "tenant_id = '{{ current_username() }}'",
        ),
        filter_on_d(
            "hide_internal",
            FilterType::Base,
            "orders",
            "Admin",
            "note <> 'internal'",
        ),
    ];
    RlsPolicy::compile(&[datasource_d(Dialect::Sqlite)], filters).unwrap()
}

#[test]
fn operators_the_rewrite_adds_do_not_count_against_the_statement() {
    // 2,000 branches with one operator of their own: under the limit. Each wrapped branch
    // adds three (`=`, `AND`, `<>`) and the wrapper's `*`, so the rewrite holds 8,000 —
    // which the re-parse once counted against the statement and refused as
    // `verification_failed`.
    let mut sql = "SELECT id FROM orders WHERE id > 1".to_string();
    for _ in 1..2_000 {
        sql.push_str(" UNION SELECT id FROM orders");
    }
    let policy = two_filter_policy();
    let rewritten = policy
        .rewrite(&RewriteRequest {
            datasource_uid: "d",
            sql: &sql,
            principal: &alice(),
            allow_writes: false,
            limits: RewriteLimits::default(),
        })
        .unwrap();
    let wrapper =
        "(SELECT * FROM orders WHERE (tenant_id = 'alice') AND (note <> 'internal')) AS orders";
    assert_eq!(rewritten.sql.matches(wrapper).count(), 2_000);
    assert_eq!(rewritten.sql.matches("FROM orders").count(), 2_000);

    // A statement at the limit by itself is still rewritten, however many references the
    // rewrite wraps...
    let own = vec!["id = 1"; 2_048].join(" OR "); // 4,095 operators
    let mut sql = format!("SELECT id FROM orders WHERE {own}");
    for _ in 1..100 {
        sql.push_str(" UNION SELECT id FROM orders");
    }
    let request = |sql: &str| {
        policy.rewrite(&RewriteRequest {
            datasource_uid: "d",
            sql,
            principal: &alice(),
            allow_writes: false,
            limits: RewriteLimits::default(),
        })
    };
    assert_eq!(request(&sql).unwrap().sql.matches(wrapper).count(), 100);
    // ...and one over it is refused by the limit, before any rewrite.
    let over = format!("{sql} UNION SELECT id FROM orders WHERE id = 1 OR id = 2");
    assert_eq!(request(&over).unwrap_err().kind(), "too_deeply_nested");
}
