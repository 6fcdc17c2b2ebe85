//! Cost of database credentials on the request path once the caches are warm: the STS
//! and token cache lookups for one datasource, and attaching the credential headers to
//! the upstream request. `cargo bench --bench credentials`.

#![allow(clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials;
use criterion::{Criterion, criterion_group, criterion_main};
use datagate::creds::{AwsConfig, AwsIamConfig, CredentialBroker, CredentialKey, Engine};
use datagate::metrics::Metrics;
use pingora::http::RequestHeader;

fn iam() -> AwsIamConfig {
    serde_json::from_value(serde_json::json!({
        "role_arn": "arn:aws:iam::123456789012:role/bench",
        "region": "us-east-1",
        "db_user": "app",
        "engine": "aurora-postgresql",
        "host": "bench.cluster-x.us-east-1.rds.amazonaws.com",
        "port": 5432,
    }))
    .unwrap_or_else(|error| panic!("bench iam config: {error}"))
}

fn bench_credentials(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|error| panic!("runtime: {error}"));
    let metrics = Arc::new(Metrics::new().unwrap_or_else(|error| panic!("metrics: {error}")));
    let config = AwsConfig {
        database_iam_auth: true,
        endpoint_url: Some("http://127.0.0.1:9".into()),
        ..AwsConfig::default()
    };
    let broker = Arc::new(runtime.block_on(CredentialBroker::new(config, metrics)));
    let iam = iam();
    assert_eq!(iam.engine, Engine::AuroraPostgresql);
    let key = CredentialKey {
        role_arn: iam.role_arn.clone(),
        region: iam.region.clone(),
        external_id: None,
        source_identity: Some("bench".into()),
    };
    let credentials = Credentials::new("ASIABENCH", "secret", Some("token".into()), None, "bench");
    runtime.block_on(broker.seed(key, credentials, Duration::from_secs(3600)));
    // First call signs and caches the token; every later call is two cache hits.
    runtime
        .block_on(broker.database_credentials("aurora", &iam, "bench"))
        .unwrap_or_else(|error| panic!("warm-up: {error}"));

    // What the harness itself costs per iteration, to subtract from the line below.
    criterion.bench_function("baseline: block_on of a ready future", |bencher| {
        bencher.iter(|| runtime.block_on(std::future::ready(1u8)))
    });

    criterion.bench_function("credentials: warm STS + token cache hit", |bencher| {
        bencher.iter(|| {
            runtime
                .block_on(broker.database_credentials("aurora", &iam, "bench"))
                .unwrap_or_else(|error| panic!("{error}"))
        })
    });

    let db_credentials = runtime
        .block_on(broker.database_credentials("aurora", &iam, "bench"))
        .unwrap_or_else(|error| panic!("{error}"));
    let headers = datagate::creds::DbCredentialHeaders::default();
    criterion.bench_function(
        "credentials: attach headers to the upstream request",
        |bencher| {
            bencher.iter_batched(
                || {
                    let mut request =
                        RequestHeader::build("GET", b"/api/datasources/uid/aurora", None)
                            .unwrap_or_else(|error| panic!("{error}"));
                    let _ = request.insert_header("X-Datagate-Db-Token", "forged");
                    request
                },
                |mut request| {
                    datagate::proxy::replace_db_credential_headers(
                        &mut request,
                        &headers,
                        Some(&db_credentials),
                    )
                    .unwrap_or_else(|error| panic!("{error}"));
                    request
                },
                criterion::BatchSize::SmallInput,
            )
        },
    );
}

criterion_group!(benches, bench_credentials);
criterion_main!(benches);
