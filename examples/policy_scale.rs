//! Snapshot build time and resident memory for a large synthetic policy, and decision
//! latency percentiles on it.
//!
//! `cargo run --release --example policy_scale -- 1000000`

#[path = "../benches/synthetic.rs"]
mod synthetic;

use std::time::Instant;

use datagate::policy::{KNOWN_MODEL, load_policy_from_sources};

fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let lines: usize = std::env::args()
        .nth(1)
        .and_then(|argument| argument.parse().ok())
        .unwrap_or(1_000_000);
    let synthetic = synthetic::synthetic_policy(lines);
    let source_bytes: usize = synthetic.files.iter().map(|(_, text)| text.len()).sum();
    let before = resident_kib().unwrap_or(0);
    let started = Instant::now();
    let policy = match load_policy_from_sources(KNOWN_MODEL, &synthetic.files) {
        Ok(policy) => policy,
        Err(error) => {
            eprintln!("load failed: {error}");
            std::process::exit(1);
        }
    };
    let build = started.elapsed();
    let after = resident_kib().unwrap_or(0);
    println!(
        "lines={} users={} teams={} datasources={} source={:.1} MiB",
        policy.line_count(),
        synthetic.users,
        synthetic.teams,
        synthetic.datasources,
        source_bytes as f64 / 1048576.0
    );
    println!(
        "build (parse + validate + casbin enforcer + index + digest): {:.2} s",
        build.as_secs_f64()
    );
    println!(
        "VmRSS before={} MiB after={} MiB increase={} MiB (casbin enforcer + index)",
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024
    );

    let requests = synthetic::requests(&synthetic, 100_000);
    let mut nanos: Vec<u64> = Vec::with_capacity(requests.len());
    let mut allowed = 0usize;
    for (subjects, object, action) in &requests {
        let started = Instant::now();
        let decision = policy.allows(subjects, object, action);
        nanos.push(started.elapsed().as_nanos() as u64);
        allowed += usize::from(decision);
    }
    nanos.sort_unstable();
    let percentile = |p: f64| nanos[((nanos.len() as f64 - 1.0) * p) as usize];
    println!(
        "index decisions (4-subject principals): n={} allowed={} p50={} ns p99={} ns p99.9={} ns max={} ns",
        nanos.len(),
        allowed,
        percentile(0.5),
        percentile(0.99),
        percentile(0.999),
        nanos.last().copied().unwrap_or(0)
    );
    if std::env::args().any(|argument| argument == "--casbin-sample") {
        let started = Instant::now();
        let sample = 3;
        for (subjects, object, action) in requests.iter().take(sample) {
            let user = &subjects[..1];
            std::hint::black_box(policy.casbin_allows(user, object, action));
        }
        println!(
            "casbin enforce at this size: {:.1} ms per single-subject decision",
            started.elapsed().as_secs_f64() * 1000.0 / sample as f64
        );
    }
}
