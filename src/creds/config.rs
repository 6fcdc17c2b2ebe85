//! The `aws:` section of the config file and a datasource's `aws_iam` setting.
//! Read at start-up (and, for store datasources, at every snapshot build); nothing here
//! runs per request.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `aws:` — how datagate gets database credentials for datasources with `aws_iam`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Superset's `AWS_DATABASE_IAM_AUTH`; off by default.
    #[serde(default)]
    pub database_iam_auth: bool,
    /// Longest a cached STS credential is used (Superset: 10 minutes).
    #[serde(
        default = "default_credential_ttl",
        with = "crate::config::duration_text"
    )]
    pub credential_ttl: Duration,
    /// Never use a credential closer than this to its expiry.
    #[serde(
        default = "default_expiry_margin",
        with = "crate::config::duration_text"
    )]
    pub expiry_margin: Duration,
    /// Refresh in the background when a cached credential has less than this left.
    #[serde(
        default = "default_refresh_ahead",
        with = "crate::config::duration_text"
    )]
    pub refresh_ahead: Duration,
    /// `DurationSeconds` asked of AssumeRole (at least 15 minutes).
    #[serde(
        default = "default_session_duration",
        with = "crate::config::duration_text"
    )]
    pub session_duration: Duration,
    /// Carry the end user as AssumeRole's `SourceIdentity` (credentials are then cached
    /// per user as well), so CloudTrail shows who a database session was for.
    #[serde(default = "default_true")]
    pub source_identity: bool,
    /// Send tokens to an `http://` upstream. The reference requires TLS for IAM database
    /// authentication; only turn this on when the hop is otherwise protected.
    #[serde(default)]
    pub allow_plaintext_upstream: bool,
    /// Endpoint for every AWS API datagate calls (an emulator, a VPC endpoint); default:
    /// the SDK's (`AWS_ENDPOINT_URL` is honoured too).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    #[serde(default)]
    pub headers: DbCredentialHeaders,
}

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig {
            database_iam_auth: false,
            credential_ttl: default_credential_ttl(),
            expiry_margin: default_expiry_margin(),
            refresh_ahead: default_refresh_ahead(),
            session_duration: default_session_duration(),
            source_identity: true,
            allow_plaintext_upstream: false,
            endpoint_url: None,
            headers: DbCredentialHeaders::default(),
        }
    }
}

fn default_credential_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_expiry_margin() -> Duration {
    Duration::from_secs(60)
}
fn default_refresh_ahead() -> Duration {
    Duration::from_secs(120)
}
fn default_session_duration() -> Duration {
    Duration::from_secs(3600)
}
fn default_true() -> bool {
    true
}

/// Headers that carry the database credentials upstream; client copies are removed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbCredentialHeaders {
    #[serde(default = "default_user_header")]
    pub db_user: String,
    #[serde(default = "default_token_header")]
    pub db_token: String,
    /// The database endpoint (`host:port`), which Redshift Serverless discovers.
    #[serde(default = "default_endpoint_header")]
    pub db_endpoint: String,
}

impl Default for DbCredentialHeaders {
    fn default() -> Self {
        DbCredentialHeaders {
            db_user: default_user_header(),
            db_token: default_token_header(),
            db_endpoint: default_endpoint_header(),
        }
    }
}

fn default_user_header() -> String {
    "X-Datagate-Db-User".to_string()
}
fn default_token_header() -> String {
    "X-Datagate-Db-Token".to_string()
}
fn default_endpoint_header() -> String {
    "X-Datagate-Db-Endpoint".to_string()
}

/// The database engines datagate can get IAM credentials for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    AuroraPostgresql,
    AuroraMysql,
    Redshift,
    RedshiftServerless,
}

/// A datasource's `aws_iam` setting. Treated as a secret: write-only through the admin
/// API (a secure setting), never returned, logged or shown in an error.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AwsIamConfig {
    pub role_arn: String,
    #[serde(default)]
    pub external_id: Option<String>,
    pub region: String,
    pub db_user: String,
    pub engine: Engine,
    /// Database host (RDS/Aurora, Redshift); Serverless discovers it from the workgroup.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// Redshift (provisioned): the cluster.
    #[serde(default)]
    pub cluster_identifier: Option<String>,
    /// Redshift Serverless: the workgroup.
    #[serde(default)]
    pub workgroup: Option<String>,
    /// Redshift / Serverless: the database name credentials are scoped to.
    #[serde(default)]
    pub database: Option<String>,
}

impl std::fmt::Debug for AwsIamConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Role ARNs carry account ids: keep them out of logs.
        formatter
            .debug_struct("AwsIamConfig")
            .field("engine", &self.engine)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl AwsIamConfig {
    /// Shape checks; errors name the field, never its value.
    pub fn validate(&self) -> Result<(), String> {
        if !self.role_arn.starts_with("arn:") || self.role_arn.split(':').count() < 6 {
            return Err("`aws_iam.role_arn` is not an IAM role ARN".into());
        }
        if self.region.is_empty() {
            return Err("`aws_iam.region` must not be empty".into());
        }
        if self.db_user.is_empty() {
            return Err("`aws_iam.db_user` must not be empty".into());
        }
        match self.engine {
            Engine::AuroraPostgresql | Engine::AuroraMysql => {
                if self.host.is_none() || self.port.is_none() {
                    return Err(
                        "`aws_iam.host` and `aws_iam.port` are required for Aurora/RDS".into(),
                    );
                }
            }
            Engine::Redshift => {
                if self.cluster_identifier.is_none() {
                    return Err("`aws_iam.cluster_identifier` is required for redshift".into());
                }
            }
            Engine::RedshiftServerless => {
                if self.workgroup.is_none() {
                    return Err("`aws_iam.workgroup` is required for redshift-serverless".into());
                }
            }
        }
        Ok(())
    }
}
