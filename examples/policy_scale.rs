//! Snapshot build time and resident memory for a large synthetic policy, and decision
//! latency percentiles on it.
//!
//! `cargo run --release --example policy_scale -- 1000000`
//! `cargo run --release --example policy_scale -- 1000000 --store`: the datasource grants
//! come from the grants store instead (the store part of the snapshot, beside the file
//! index; memberships and role permissions stay in files), and one subject's update — what
//! an admin write applies — is timed too.
//! `cargo run --release --example policy_scale -- 1000000 --reload`: the same files as a
//! policy directory with a row-level security filter file; a full snapshot build, then
//! the reload of an edited filter file (the grants kept, row-level security compiled).

#[path = "../benches/synthetic.rs"]
mod synthetic;

use std::time::Instant;

use datagate::policy::{
    CompiledPolicy, KNOWN_MODEL, PolicyLine, SourcedLine, StoreSubjectLines,
    load_policy_from_sources, parse_policy_file,
};

/// The synthetic files with their datasource grants moved into the store part.
fn with_store_grants(files: &[(String, String)]) -> CompiledPolicy {
    let mut file_text = String::new();
    let mut by_subject: std::collections::HashMap<String, Vec<SourcedLine>> =
        std::collections::HashMap::new();
    for (name, text) in files {
        for sourced in parse_policy_file(name, text).unwrap_or_default() {
            match &sourced.line {
                PolicyLine::Grant {
                    subject, object, ..
                } if object.starts_with("datasources:") => {
                    by_subject
                        .entry(subject.clone())
                        .or_default()
                        .push(sourced.clone());
                }
                line => {
                    file_text.push_str(&line.to_string());
                    file_text.push('\n');
                }
            }
        }
    }
    let files = match load_policy_from_sources(KNOWN_MODEL, &[("files.csv".to_string(), file_text)])
    {
        Ok(policy) => policy,
        Err(error) => {
            eprintln!("load failed: {error}");
            std::process::exit(1);
        }
    };
    let updates = by_subject
        .into_iter()
        .map(|(subject, lines)| StoreSubjectLines { subject, lines })
        .collect();
    match files.with_store_subjects(updates) {
        Ok(policy) => policy,
        Err(error) => {
            eprintln!("store lines refused: {error}");
            std::process::exit(1);
        }
    }
}

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
    let store = std::env::args().any(|argument| argument == "--store");
    let before = resident_kib().unwrap_or(0);
    let started = Instant::now();
    let policy = if store {
        with_store_grants(&synthetic.files)
    } else {
        match load_policy_from_sources(KNOWN_MODEL, &synthetic.files) {
            Ok(policy) => policy,
            Err(error) => {
                eprintln!("load failed: {error}");
                std::process::exit(1);
            }
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
    if store {
        println!(
            "build (files: parse + casbin enforcer + index; store: {} lines by subject): {:.2} s",
            policy.store_line_count(),
            build.as_secs_f64()
        );
    } else {
        println!(
            "build (parse + validate + casbin enforcer + index + digest): {:.2} s",
            build.as_secs_f64()
        );
    }
    println!(
        "VmRSS before={} MiB after={} MiB increase={} MiB ({})",
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024,
        if store {
            "file enforcer + index, store grants, and the parsed lines held during the build"
        } else {
            "casbin enforcer + index"
        }
    );
    if store {
        // What one admin write does to the policy: replace one subject's store lines in
        // a copy that shares the rest.
        let mut nanos: Vec<u64> = Vec::new();
        for round in 0..200 {
            let subject = format!("user:u{round}");
            let update = StoreSubjectLines {
                subject: subject.clone(),
                lines: vec![SourcedLine::new(
                    PolicyLine::Grant {
                        subject,
                        object: "datasources:uid:fresh".into(),
                        action: if round % 2 == 0 { "Edit" } else { "Query" }.into(),
                    },
                    "admin store",
                    1,
                )],
            };
            let started = Instant::now();
            let updated = policy.with_store_subjects(vec![update]);
            nanos.push(started.elapsed().as_nanos() as u64);
            std::hint::black_box(updated.is_ok());
        }
        nanos.sort_unstable();
        println!(
            "one subject's store update (copy + replace): p50={} µs p99={} µs",
            nanos[nanos.len() / 2] / 1000,
            nanos[nanos.len() * 99 / 100] / 1000
        );
    }

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
    if std::env::args().any(|argument| argument == "--reload") {
        filter_edit_reload(&synthetic.files);
    }
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

/// A snapshot of `files` (plus a filter file) built in full, then the reload of an
/// edited filter file, each timed.
fn filter_edit_reload(files: &[(String, String)]) {
    use std::sync::Arc;
    let Ok(directory) = tempfile::tempdir() else {
        eprintln!("no temporary directory");
        return;
    };
    let policies = directory.path().join("policies");
    let filter = |clause: &str| {
        format!(
            "filters:\n  - {{name: own, type: regular, datasource: bench, tables: [orders], roles: [Gamma], clause: \"{clause}\"}}\n"
        )
    };
    let written = std::fs::create_dir(&policies)
        .and_then(|()| std::fs::write(directory.path().join("model.conf"), KNOWN_MODEL))
        .and_then(|()| {
            files
                .iter()
                .try_for_each(|(name, text)| std::fs::write(policies.join(name), text))
        })
        .and_then(|()| std::fs::write(policies.join("90-bench.rls.yaml"), filter("tenant_id = 1")));
    if let Err(error) = written {
        eprintln!("cannot write the policy directory: {error}");
        return;
    }
    let yaml = "listen: {proxy: \"127.0.0.1:8080\", admin: \"127.0.0.1:9180\"}\n\
                upstream: {address: \"127.0.0.1:8088\"}\n\
                policy: {model: model.conf, directory: policies}\n\
                auth: {}\nroutes: {}\ndatasources:\n  - {uid: bench, dialect: sqlite}\n";
    let config = match datagate::config::Config::from_yaml(
        yaml,
        "bench.yaml",
        directory.path().to_path_buf(),
    ) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("config refused: {error}");
            return;
        }
    };
    let store = Arc::new(datagate::store::StoreContents::default());
    let read = |config: &datagate::config::Config| {
        datagate::sources::PolicyInputs::read(config).map(Arc::new)
    };
    let started = Instant::now();
    let serving = match read(&config)
        .map_err(|error| error.to_string())
        .and_then(|inputs| {
            datagate::snapshot::build_snapshot_from_inputs(&config, &inputs, &store)
                .map_err(|error| error.to_string())
        }) {
        Ok(serving) => serving,
        Err(error) => {
            eprintln!("build failed: {error}");
            return;
        }
    };
    let full = started.elapsed();
    if let Err(error) = std::fs::write(policies.join("90-bench.rls.yaml"), filter("tenant_id = 2"))
    {
        eprintln!("cannot edit the filter file: {error}");
        return;
    }
    let started = Instant::now();
    let reloaded =
        read(&config)
            .map_err(|error| error.to_string())
            .and_then(|inputs| match serving.with_filter_files(&config, &inputs) {
                Some(result) => result.map_err(|error| error.to_string()),
                None => Err("the grant files differ".to_string()),
            });
    let filter_only = started.elapsed();
    match reloaded {
        Ok(_) => println!(
            "snapshot from the policy directory: full build {:.2} s; reload of an edited filter file (read + digest + row-level security): {:.1} ms",
            full.as_secs_f64(),
            filter_only.as_secs_f64() * 1000.0
        ),
        Err(error) => eprintln!("filter reload failed: {error}"),
    }
}
