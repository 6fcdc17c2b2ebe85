//! Route resolution: the shipped Superset pack (379 routes, every endpoint of the real
//! app) against the example table (8 routes), for requests a Superset UI makes and one no
//! route matches. Resolution runs on every request, so its cost must not grow with the
//! pack.
//!
//! `cargo bench --bench routes -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use datagate::route::{Resolution, RouteTable, RoutesConfig, canonicalize_path};

const REQUESTS: [(&str, &str); 6] = [
    ("GET", "/api/v1/chart/42"),
    ("POST", "/api/v1/sqllab/execute/"),
    ("POST", "/api/v1/chart/data"),
    ("GET", "/superset/dashboard/7/"),
    ("GET", "/static/assets/spa.entry.js"),
    ("GET", "/api/v1/no_such_resource/1"),
];

fn table(config: RoutesConfig) -> RouteTable {
    RouteTable::from_config(&config).unwrap_or_else(|error| {
        eprintln!("bench routes: {error}");
        std::process::exit(1)
    })
}

fn superset_pack() -> RouteTable {
    table(RoutesConfig {
        packs: vec!["superset".into()],
        ..RoutesConfig::default()
    })
}

fn example_table() -> RouteTable {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        routes: RoutesConfig,
    }
    let wrapper: Wrapper = serde_yaml::from_str(include_str!("../deploy/routes.example.yaml"))
        .unwrap_or_else(|error| {
            eprintln!("bench routes: {error}");
            std::process::exit(1)
        });
    table(wrapper.routes)
}

fn resolutions(criterion: &mut Criterion) {
    for (label, routes) in [
        ("superset_pack", superset_pack()),
        ("example", example_table()),
    ] {
        let requests: Vec<(&str, String)> = REQUESTS
            .iter()
            .map(|(method, path)| {
                let canonical = canonicalize_path(path).unwrap_or_else(|error| {
                    eprintln!("bench path {path}: {error:?}");
                    std::process::exit(1)
                });
                (*method, canonical)
            })
            .collect();
        let matched = requests
            .iter()
            .filter(|(method, path)| {
                matches!(routes.resolve(method, path), Resolution::Matched { .. })
            })
            .count();
        eprintln!(
            "{label}: {} routes, {matched} of {} requests matched",
            routes.routes().count(),
            requests.len()
        );
        criterion.bench_function(&format!("resolve_{label}_6_requests"), |bencher| {
            bencher.iter(|| {
                for (method, path) in &requests {
                    black_box(routes.resolve(black_box(method), black_box(path)));
                }
            })
        });
    }
}

criterion_group!(benches, resolutions);
criterion_main!(benches);
