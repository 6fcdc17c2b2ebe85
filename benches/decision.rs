//! Decision latency: the compiled index at 10, 10k and 1M policy lines against casbin's
//! `enforce()` at 10 and 10k lines, on the same policies and requests.
//!
//! `cargo bench --bench decision -- --warm-up-time 1 --measurement-time 3`

mod synthetic;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use datagate::policy::{CompiledPolicy, KNOWN_MODEL, load_policy_from_sources};

use synthetic::{Synthetic, requests, single_subject_requests, synthetic_policy};

const REQUESTS: usize = 1024;

fn build(lines: usize) -> (Synthetic, CompiledPolicy) {
    let synthetic = synthetic_policy(lines);
    let policy = match load_policy_from_sources(KNOWN_MODEL, &synthetic.files) {
        Ok(policy) => policy,
        Err(error) => {
            eprintln!("synthetic policy failed to load: {error}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "policy with {lines} requested lines: {} lines loaded",
        policy.line_count()
    );
    (synthetic, policy)
}

fn decisions(criterion: &mut Criterion) {
    for (label, lines, with_casbin) in [
        ("10", 10, true),
        ("10k", 10_000, true),
        ("1M", 1_000_000, false),
    ] {
        let (synthetic, policy) = build(lines);
        let principal_requests = requests(&synthetic, REQUESTS);
        let user_requests = single_subject_requests(&synthetic, REQUESTS);
        let allowed = principal_requests
            .iter()
            .filter(|(subjects, object, action)| policy.allows(subjects, object, action))
            .count();
        eprintln!("{label}: {allowed}/{REQUESTS} principal requests allowed");

        let mut group = criterion.benchmark_group(format!("decision/{label}"));
        let mut next = 0usize;
        group.bench_function("index/principal(4 subjects)", |bencher| {
            bencher.iter(|| {
                next = (next + 1) % REQUESTS;
                let (subjects, object, action) = &principal_requests[next];
                black_box(policy.allows(subjects, object, action))
            })
        });
        group.bench_function("index/user(1 subject)", |bencher| {
            bencher.iter(|| {
                next = (next + 1) % REQUESTS;
                let (subjects, object, action) = &user_requests[next];
                black_box(policy.allows(subjects, object, action))
            })
        });
        if with_casbin {
            if lines > 1000 {
                group.sample_size(10);
                group.measurement_time(Duration::from_secs(3));
            }
            group.bench_function("casbin/user(1 subject)", |bencher| {
                bencher.iter(|| {
                    next = (next + 1) % REQUESTS;
                    let (subjects, object, action) = &user_requests[next];
                    black_box(policy.casbin_allows(subjects, object, action))
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, decisions);
criterion_main!(benches);
