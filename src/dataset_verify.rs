//! Mapped datasets, verified against what the upstream stores. Runs in the decision path's
//! row-level security stage, just before a filtered caller's chart data on a dataset
//! mapped in `charts.datasets` is checked and rewritten ([`crate::decision::chart`]).
//!
//! A mapping says "dataset 7's rows are table `orders`' rows", and datagate keeps every
//! edit through it true ([`crate::chart_data::DatasetEdit`]). Two things it cannot see
//! are checked here: what the dataset stored before datagate was put in front (a saved
//! metric with a subquery over the table), and a mapped id that does not exist yet and is
//! taken by the next dataset created. With `charts.verify`, datagate reads the dataset
//! from the upstream (`GET /api/v1/dataset/{id}`, as the identity `charts.verify` names)
//! and applies the edit rules to the stored definition
//! ([`crate::chart_data::DatasetEdit::check_stored`]). The verdict, either way, is kept
//! for `refresh`; a failed read is not kept and refuses the request (503).

use std::time::Duration;

use serde::Deserialize;

use crate::authn::fetch::{FetchError, IdpClient};
use crate::chart_data::{ChartDataError, DatasetEdit, DatasetMapping};
use crate::config::Config;
use crate::principal::{Principal, PrincipalKind};
use crate::rls::{RewriteLimits, RlsPolicy};

/// `charts.verify`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// The user datagate names in its identity headers when it reads a dataset; a user
    /// who may read every mapped dataset (Superset: e.g. role `Admin`).
    pub user: String,
    /// That user's roles, as sent in the roles header.
    pub roles: Vec<String>,
    /// How long a verdict holds before the dataset is read again.
    #[serde(default = "default_refresh", with = "crate::config::duration_text")]
    pub refresh: Duration,
    /// The bound on one read: connect, request and the whole answer.
    #[serde(default = "default_timeout", with = "crate::config::duration_text")]
    pub timeout: Duration,
}

fn default_refresh() -> Duration {
    Duration::from_secs(60)
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Why a dataset could not be read. Messages name no address: they reach logs.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the upstream could not be reached")]
    Unreachable,
    #[error("the upstream answered HTTP {0}")]
    Status(u16),
    #[error("the upstream's answer is not a dataset: {0}")]
    Invalid(String),
}

/// Reads mapped datasets from the upstream and keeps the verdicts.
pub struct DatasetVerifier {
    client: IdpClient,
    base: url::Url,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Who the stored fragments are checked as. Denied functions are the datasource's,
    /// and a fragment may name no relation, so no caller's filters enter the check.
    principal: Principal,
    /// `Ok`: verified; `Err`: the mismatch a filtered caller is refused with.
    verdicts: moka::sync::Cache<u64, Result<(), ChartDataError>>,
    /// One read at a time: a burst of requests on an expired verdict reads once.
    reading: tokio::sync::Mutex<()>,
}

impl DatasetVerifier {
    /// The verifier `charts.verify` configures; `None` when it is not set. Errors name the
    /// configuration key.
    pub fn new(config: &Config) -> Result<Option<DatasetVerifier>, (String, String)> {
        let Some(verify) = &config.charts.verify else {
            return Ok(None);
        };
        let invalid = |key: &str, message: String| (format!("charts.verify{key}"), message);
        let upstream = &config.upstream;
        if upstream.tls && !upstream.verify_certificate {
            return Err(invalid(
                "",
                "needs an upstream whose certificate is verified (`upstream.verify_certificate`)"
                    .into(),
            ));
        }
        let (host, port) = crate::proxy::upstream_host_port(&upstream.address)
            .map_err(|message| ("upstream.address".to_string(), message))?;
        // Read at `upstream.address`, the certificate checked for its host: a server name
        // of its own would need a connector that dials one name and verifies another.
        if upstream.tls && upstream.sni.as_deref().is_some_and(|sni| sni != host) {
            return Err(invalid(
                "",
                "reads the upstream at `upstream.address`; an `upstream.sni` other than its host is not supported".into(),
            ));
        }
        let scheme = if upstream.tls { "https" } else { "http" };
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let base = url::Url::parse(&format!("{scheme}://{authority}/"))
            .map_err(|error| ("upstream.address".to_string(), error.to_string()))?;
        let plan = crate::proxy::headers::HeaderPlan::new(config);
        let names = plan.identity_names();
        let (Some(user_header), Some(roles_header)) = (&names.user, &names.roles) else {
            return Err(invalid(
                "",
                "needs identity headers that carry the user and the roles".into(),
            ));
        };
        let header = |name: &str, value: String| {
            Ok::<_, (String, String)>((
                http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|error| invalid("", error.to_string()))?,
                http::HeaderValue::from_str(&value)
                    .map_err(|error| invalid(".user", error.to_string()))?,
            ))
        };
        let encoded = crate::proxy::headers::encode_identity_value;
        let roles: Vec<String> = verify.roles.iter().map(|role| encoded(role)).collect();
        let headers = vec![
            header(user_header, encoded(&verify.user))?,
            header(roles_header, roles.join(","))?,
        ];
        // No keep-alive: reads happen on whichever proxy runtime needs them, and a pooled
        // connection would stay bound to the runtime that opened it.
        let client =
            IdpClient::new(verify.timeout, false, None).map_err(|error| invalid("", error))?;
        let principal = Principal {
            kind: PrincipalKind::ServiceAccount,
            username: verify.user.clone(),
            user_id: None,
            email: None,
            roles: verify.roles.clone(),
            teams: Vec::new(),
            basic_role: None,
            claims: Default::default(),
        };
        Ok(Some(DatasetVerifier {
            client,
            base,
            headers,
            principal,
            verdicts: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(verify.refresh)
                .build(),
            reading: tokio::sync::Mutex::new(()),
        }))
    }

    /// The kept verdict on `dataset`: `Pending` when there is none (read it with
    /// [`DatasetVerifier::verify`]).
    pub fn verdict(&self, dataset: u64) -> Result<(), ChartDataError> {
        self.verdicts
            .get(&dataset)
            .unwrap_or(Err(ChartDataError::VerificationPending { dataset }))
    }

    /// Reads `dataset` from the upstream, checks it against its mapping and keeps the
    /// verdict; a failed read refuses (`VerificationUnavailable`) and is not kept.
    pub async fn verify(
        &self,
        rls: &RlsPolicy,
        dataset: &DatasetMapping,
        limits: RewriteLimits,
        metrics: &crate::metrics::Metrics,
    ) -> Result<(), ChartDataError> {
        let _reading = self.reading.lock().await;
        if let Some(verdict) = self.verdicts.get(&dataset.id) {
            return verdict;
        }
        let stored = match self.read(dataset.id).await {
            Ok(stored) => stored,
            Err(Read::Missing) => None,
            Err(Read::Failed(error)) => {
                metrics
                    .dataset_verifications
                    .with_label_values(&["failed"])
                    .inc();
                tracing::warn!(
                    dataset = dataset.id,
                    %error,
                    "could not read a mapped dataset to verify it"
                );
                return Err(ChartDataError::VerificationUnavailable {
                    dataset: dataset.id,
                });
            }
        };
        let check = DatasetEdit {
            rls,
            dataset,
            principal: &self.principal,
            limits,
            default_schema: rls
                .dialect(&dataset.datasource)
                .and_then(crate::rls::Dialect::default_schema),
        };
        let verdict = match stored {
            Some(stored) => check.check_stored(&stored),
            None => Err(ChartDataError::DatasetMismatch {
                dataset: dataset.id,
                table: dataset.table.clone(),
                reason: "the upstream has no such dataset".into(),
            }),
        };
        let result = if verdict.is_ok() {
            "verified"
        } else {
            "mismatch"
        };
        metrics
            .dataset_verifications
            .with_label_values(&[result])
            .inc();
        if let Err(mismatch) = &verdict {
            tracing::warn!(dataset = dataset.id, %mismatch, "a mapped dataset failed verification");
        }
        self.verdicts.insert(dataset.id, verdict.clone());
        verdict
    }

    /// The dataset's stored definition (`result`), or `Missing` on 404.
    async fn read(&self, dataset: u64) -> Result<Option<serde_json::Value>, Read> {
        let url = self
            .base
            .join(&format!("api/v1/dataset/{dataset}"))
            .map_err(|error| Read::Failed(VerifyError::Invalid(error.to_string())))?;
        let response = self
            .client
            .get_with_headers(&url, &self.headers)
            .await
            .map_err(|error| {
                Read::Failed(match error {
                    FetchError::Status(status) => VerifyError::Status(status),
                    FetchError::TooLarge => VerifyError::Invalid(error.to_string()),
                    _ => VerifyError::Unreachable,
                })
            })?;
        match response.status {
            200 => {}
            404 => return Err(Read::Missing),
            status => return Err(Read::Failed(VerifyError::Status(status))),
        }
        let mut answer: serde_json::Value = serde_json::from_slice(&response.body)
            .map_err(|error| Read::Failed(VerifyError::Invalid(error.to_string())))?;
        match answer.get_mut("result").map(serde_json::Value::take) {
            Some(result @ serde_json::Value::Object(_)) => Ok(Some(result)),
            _ => Err(Read::Failed(VerifyError::Invalid(
                "it has no `result` object".into(),
            ))),
        }
    }
}

enum Read {
    Missing,
    Failed(VerifyError),
}
