//! Row-level security cost: parsing a ~1 KB SELECT over three protected tables alone, next
//! to the full rewrite (parse, checks, wrap, print, re-parse, verify), and a cache hit.
//! Also times a 256 KiB query and a deeply nested one, which must be refused or bounded.
//!
//! `cargo bench --bench rls`

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use datagate::principal::{Principal, PrincipalKind};
use datagate::rls::{
    DatasourceConfig, Dialect, FilterDefinition, FilterType, RewriteLimits, RewriteRequest,
    RlsPolicy,
};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;

const QUERY: &str = "WITH recent AS (SELECT o.id, o.customer_id, o.amount, o.region FROM orders o WHERE o.amount > 10 AND o.note <> 'x') \
SELECT c.name, c.region, count(DISTINCT r.id) AS order_count, sum(r.amount) AS total, max(t.level) AS worst_ticket, \
(SELECT count(*) FROM tickets t2 WHERE t2.customer_id = c.id AND t2.level > 2) AS open_tickets \
FROM customers c JOIN recent r ON r.customer_id = c.id LEFT JOIN tickets t ON t.customer_id = c.id \
WHERE c.region IN ('EU', 'US') AND EXISTS (SELECT 1 FROM orders o2 WHERE o2.customer_id = c.id AND o2.amount > 100) \
AND c.id NOT IN (SELECT customer_id FROM tickets WHERE level > 4) \
GROUP BY c.name, c.region HAVING sum(r.amount) > (SELECT avg(amount) FROM orders) \
UNION ALL SELECT 'total', NULL, count(*), sum(amount), NULL, NULL FROM orders WHERE amount > 0 \
ORDER BY 4 DESC LIMIT 100";

fn policy() -> RlsPolicy {
    let datasource = DatasourceConfig {
        uid: "bench".into(),
        dialect: Dialect::Sqlite,
        tables: vec!["orders".into(), "customers".into(), "tickets".into()],
        deny_unlisted_tables: true,
        denied_functions: None,
        aws_iam: None,
        templating: None,
    };
    let filter = |name: &str, table: &str, group: Option<&str>, clause: &str| FilterDefinition {
        name: name.into(),
        filter_type: FilterType::Regular,
        datasource: "bench".into(),
        tables: vec![table.into()],
        roles: vec!["Gamma".into()],
        group_key: group.map(str::to_string),
        clause: clause.into(),
        description: None,
    };
    RlsPolicy::compile(
        &[datasource],
        vec![
            filter(
                "own_orders",
                "orders",
                None,
                "tenant_id = '{{ current_username() }}'",
            ),
            filter("eu", "customers", Some("region"), "region = 'EU'"),
            filter("us", "customers", Some("region"), "region = 'US'"),
            filter(
                "own_tickets",
                "tickets",
                None,
                "owner = '{{ current_username() }}'",
            ),
        ],
    )
    .unwrap_or_else(|error| {
        eprintln!("bench policy: {error}");
        std::process::exit(1)
    })
}

fn principal(name: &str) -> Principal {
    let mut principal = Principal::anonymous(vec!["Gamma".into()]);
    principal.kind = PrincipalKind::User;
    principal.username = name.into();
    principal
}

fn benchmarks(criterion: &mut Criterion) {
    println!("query: {} bytes", QUERY.len());
    let policy = policy();
    let alice = principal("alice");
    let limits = RewriteLimits::default();
    let mut group = criterion.benchmark_group("rls");
    group.bench_function("parse_only", |bench| {
        bench.iter(|| Parser::parse_sql(&SQLiteDialect {}, black_box(QUERY)))
    });
    let mut counter = 0u64;
    group.bench_function("rewrite_uncached", |bench| {
        bench.iter(|| {
            // A distinct user each time defeats the cache (the bound value differs).
            counter += 1;
            let user = principal(&format!("user{counter}"));
            policy.rewrite(&RewriteRequest {
                datasource_uid: "bench",
                sql: black_box(QUERY),
                principal: &user,
                allow_writes: false,
                limits,
            })
        })
    });
    let _ = policy.rewrite(&RewriteRequest {
        datasource_uid: "bench",
        sql: QUERY,
        principal: &alice,
        allow_writes: false,
        limits,
    });
    group.bench_function("rewrite_cache_hit", |bench| {
        bench.iter(|| {
            policy.rewrite(&RewriteRequest {
                datasource_uid: "bench",
                sql: black_box(QUERY),
                principal: &alice,
                allow_writes: false,
                limits,
            })
        })
    });
    group.finish();

    // Hostile sizes: timed once each, reported, never asserted.
    let huge = format!(
        "SELECT * FROM orders WHERE id IN ({})",
        (0..40_000)
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let huge = &huge[..huge.len().min(256 * 1024 - 1)];
    let nested = format!(
        "SELECT * FROM orders WHERE id = {}1{}",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    let subqueries = format!(
        "{}SELECT * FROM orders{}",
        "SELECT * FROM (".repeat(200),
        ") AS t".repeat(200)
    );
    let chain = format!(
        "SELECT * FROM orders WHERE {}",
        vec!["id = 1"; 20_000].join(" OR ")
    );
    for (label, sql) in [
        ("256 KiB IN list", huge.to_string()),
        ("5000 nested parentheses", nested),
        ("200 nested subqueries", subqueries),
        ("20000-term OR chain", chain),
    ] {
        let started = Instant::now();
        let result = policy.rewrite(&RewriteRequest {
            datasource_uid: "bench",
            sql: &sql,
            principal: &alice,
            allow_writes: false,
            limits,
        });
        println!(
            "{label} ({} bytes): {:?} in {:?}",
            sql.len(),
            result
                .as_ref()
                .map(|rewritten| rewritten.changed)
                .map_err(|error| error.kind()),
            started.elapsed()
        );
    }
}

criterion_group!(benches, benchmarks);
criterion_main!(benches);
