//! Cost of the header stage on the request path: the client-header checks before
//! identification and the upstream request's header preparation (protected names removed
//! in every spelling, identity and forwarding headers written), for a browser-like request.
//! `cargo bench --bench headers`.

#![allow(clippy::panic)]

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use datagate::config::Config;
use datagate::principal::{BasicRole, Principal, PrincipalKind};
use datagate::proxy::{HeaderPlan, check_client_headers};
use pingora::http::RequestHeader;

const CONFIG: &str = r#"
listen: {proxy: "127.0.0.1:8080", admin: "127.0.0.1:9180"}
upstream: {address: "127.0.0.1:8088"}
policy: {model: casbin_model.conf, directory: policies}
auth: {}
routes: {}
"#;

fn browser_request() -> RequestHeader {
    let mut request = RequestHeader::build("GET", b"/api/v1/chart/1", None)
        .unwrap_or_else(|error| panic!("request: {error}"));
    for (name, value) in [
        ("Host", "bi.example.com"),
        (
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/140.0",
        ),
        ("Accept", "application/json"),
        ("Accept-Language", "en-GB,en;q=0.5"),
        ("Accept-Encoding", "gzip, deflate, br"),
        (
            "Authorization",
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl",
        ),
        ("Referer", "https://bi.example.com/superset/dashboard/1/"),
        ("Cookie", "session=abc; theme=dark"),
        ("Sec-Fetch-Site", "same-origin"),
        ("Sec-Fetch-Mode", "cors"),
        ("X-Request-Id", "0f1e2d3c"),
        ("Connection", "keep-alive"),
    ] {
        request
            .append_header(name, value)
            .unwrap_or_else(|error| panic!("header: {error}"));
    }
    request
}

fn bench_headers(criterion: &mut Criterion) {
    let config = Config::from_yaml(CONFIG, "bench.yaml", PathBuf::from("/tmp"))
        .unwrap_or_else(|error| panic!("config: {error}"));
    let plan = HeaderPlan::new(&config);
    let mut principal = Principal::anonymous(vec!["Gamma".into(), "sql_lab".into()]);
    principal.kind = PrincipalKind::User;
    principal.username = "alice@example.com".into();
    principal.teams = vec!["analysts".into()];
    principal.basic_role = Some(BasicRole::Viewer);
    let request = browser_request();
    let peer = Some(
        "127.0.0.1"
            .parse()
            .unwrap_or_else(|error| panic!("ip: {error}")),
    );

    criterion.bench_function("baseline: clone of a 12-header request", |bencher| {
        bencher.iter(|| std::hint::black_box(request.clone()))
    });
    criterion.bench_function("check_client_headers: 12 headers", |bencher| {
        bencher.iter(|| {
            check_client_headers(
                std::hint::black_box(&request.headers),
                &["authorization", "X-Api-Key"],
            )
        })
    });
    criterion.bench_function("prepare_upstream_request: clone + 12 headers", |bencher| {
        bencher.iter(|| {
            let mut upstream = request.clone();
            plan.prepare_upstream_request(&mut upstream, &principal, None, peer)
                .unwrap_or_else(|error| panic!("prepare: {error}"));
            upstream
        })
    });
}

criterion_group!(benches, bench_headers);
criterion_main!(benches);
