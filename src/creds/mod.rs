//! Database credentials for datasources on AWS IAM authentication.
//!
//! The stage after row-level security on the request path:
//! `authorize → rewrite → credentials(datasource) → upstream`. For a datasource with an
//! `aws_iam` setting, [`CredentialBroker::database_credentials`] assumes the
//! datasource's role with STS and turns the temporary credentials into what the database
//! accepts: an RDS/Aurora IAM auth token (a SigV4-presigned `rds-db:connect` URL, signed
//! with aws-sigv4), Redshift `GetClusterCredentials`, or Redshift Serverless
//! `GetCredentials` (with `GetWorkgroup` for the endpoint).
//!
//! Both layers are cached so the request path does not wait on AWS: STS credentials in
//! moka, keyed by `(role_arn, region, external_id)` (and the end user when
//! `aws.source_identity` carries it), for at most `aws.credential_ttl` and never past
//! their expiry minus `aws.expiry_margin`; concurrent misses for one key coalesce into a
//! single AssumeRole call; an entry within `aws.refresh_ahead` of its end is refreshed in
//! the background while it keeps serving; when STS fails, a still-valid entry keeps
//! serving. Database tokens are cached per (credentials, endpoint, user) until shortly
//! before they expire. Errors are sanitised: no ARN, key or account id reaches a client.

mod config;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use moka::Expiry;
use parking_lot::Mutex;

pub use config::{AwsConfig, AwsIamConfig, DbCredentialHeaders, Engine};

use crate::metrics::Metrics;

/// The reference's message when the feature flag is off.
pub const IAM_AUTH_DISABLED: &str = "AWS IAM database authentication is not enabled.";

/// RDS IAM auth tokens are valid for 15 minutes.
pub const RDS_TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// Why credentials could not be had. `Display` is safe for clients (sanitised);
/// [`CredsError::detail`] is for the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredsError {
    #[error("{IAM_AUTH_DISABLED}")]
    Disabled,
    #[error(
        "database credentials for datasource `{datasource}` are unavailable right now; try again shortly"
    )]
    Unavailable { datasource: String, detail: String },
    #[error(
        "datasource `{datasource}` uses an engine this build cannot authenticate (built without the `redshift` feature)"
    )]
    EngineNotBuilt { datasource: String },
    #[error(
        "IAM database tokens are never sent to a plain-HTTP upstream (set `upstream.tls`, or `aws.allow_plaintext_upstream` if the hop is otherwise protected)"
    )]
    PlaintextUpstream,
    #[error("the request names several IAM-authenticated datasources ({0}); send one per request")]
    SeveralDatasources(String),
}

impl CredsError {
    /// What the log gets (may name AWS resources; never shown to clients).
    pub fn detail(&self) -> String {
        match self {
            CredsError::Unavailable { detail, .. } => detail.clone(),
            other => other.to_string(),
        }
    }
}

/// What goes to the upstream for one datasource.
#[derive(Clone, PartialEq, Eq)]
pub struct DbCredentials {
    pub user: String,
    pub token: String,
    /// `host:port`, when known.
    pub endpoint: Option<String>,
}

impl std::fmt::Debug for DbCredentials {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DbCredentials")
            .field("user", &self.user)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The STS cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CredentialKey {
    pub role_arn: String,
    pub region: String,
    pub external_id: Option<String>,
    /// The end user, when `aws.source_identity` is on.
    pub source_identity: Option<String>,
}

/// A cached STS credential.
#[derive(Debug)]
pub struct CachedCredentials {
    pub credentials: Credentials,
    pub fetched_at: Instant,
    /// When the cache stops using it: the TTL or the expiry minus the margin.
    pub usable_until: Instant,
}

impl CachedCredentials {
    fn remaining(&self) -> Duration {
        self.usable_until.saturating_duration_since(Instant::now())
    }
}

struct UntilUsable;

impl Expiry<CredentialKey, Arc<CachedCredentials>> for UntilUsable {
    fn expire_after_create(
        &self,
        _key: &CredentialKey,
        value: &Arc<CachedCredentials>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.usable_until.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &CredentialKey,
        value: &Arc<CachedCredentials>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.usable_until.saturating_duration_since(updated_at))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    access_key_id: String,
    engine: Engine,
    /// host:port, cluster or workgroup.
    target: String,
    db_user: String,
    database: Option<String>,
}

struct CachedToken {
    credentials: DbCredentials,
    usable_until: Instant,
}

struct TokenUntilUsable;

impl Expiry<TokenKey, Arc<CachedToken>> for TokenUntilUsable {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        value: &Arc<CachedToken>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.usable_until.saturating_duration_since(created_at))
    }
}

/// Converts a wall-clock expiry into the monotonic clock, now.
fn instant_of(at: SystemTime) -> Instant {
    match at.duration_since(SystemTime::now()) {
        Ok(ahead) => Instant::now() + ahead,
        Err(_) => Instant::now(),
    }
}

/// Gets and caches database credentials; one per process, shared by every request.
pub struct CredentialBroker {
    config: AwsConfig,
    shared: aws_config::SdkConfig,
    credentials: moka::future::Cache<CredentialKey, Arc<CachedCredentials>>,
    tokens: moka::future::Cache<TokenKey, Arc<CachedToken>>,
    refreshing: Mutex<std::collections::HashSet<CredentialKey>>,
    metrics: Arc<Metrics>,
}

impl CredentialBroker {
    /// Loads the standard AWS provider chain (environment, profile, web identity, IMDS)
    /// for the base credentials datagate assumes roles with.
    pub async fn new(config: AwsConfig, metrics: Arc<Metrics>) -> CredentialBroker {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(endpoint) = &config.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        CredentialBroker {
            config,
            shared,
            credentials: moka::future::Cache::builder()
                .max_capacity(10_000)
                .expire_after(UntilUsable)
                .build(),
            tokens: moka::future::Cache::builder()
                .max_capacity(10_000)
                .expire_after(TokenUntilUsable)
                .build(),
            refreshing: Mutex::new(std::collections::HashSet::new()),
            metrics,
        }
    }

    pub fn config(&self) -> &AwsConfig {
        &self.config
    }

    /// The credentials the upstream needs for `datasource` on behalf of `user`.
    pub async fn database_credentials(
        self: &Arc<Self>,
        datasource: &str,
        iam: &AwsIamConfig,
        user: &str,
    ) -> Result<DbCredentials, CredsError> {
        if !self.config.database_iam_auth {
            return Err(CredsError::Disabled);
        }
        let key = CredentialKey {
            role_arn: iam.role_arn.clone(),
            region: iam.region.clone(),
            external_id: iam.external_id.clone(),
            source_identity: self.config.source_identity.then(|| source_identity(user)),
        };
        let cached = self.sts_credentials(datasource, &key).await?;
        self.token(datasource, iam, &cached).await
    }

    /// STS credentials for `key`: from the cache (refreshing ahead of the end), or one
    /// AssumeRole call shared by every concurrent miss.
    pub async fn sts_credentials(
        self: &Arc<Self>,
        datasource: &str,
        key: &CredentialKey,
    ) -> Result<Arc<CachedCredentials>, CredsError> {
        if let Some(cached) = self.credentials.get(key).await {
            self.metrics
                .credential_cache
                .with_label_values(&["hit"])
                .inc();
            self.metrics
                .credential_age_seconds
                .observe(cached.fetched_at.elapsed().as_secs_f64());
            if cached.remaining() < self.config.refresh_ahead {
                self.refresh_in_background(datasource, key.clone());
            }
            return Ok(cached);
        }
        self.metrics
            .credential_cache
            .with_label_values(&["miss"])
            .inc();
        let broker = self.clone();
        let fetch_key = key.clone();
        self.credentials
            .try_get_with(
                key.clone(),
                async move { broker.assume_role(&fetch_key).await },
            )
            .await
            .map_err(|error: Arc<String>| CredsError::Unavailable {
                datasource: datasource.to_string(),
                detail: error.to_string(),
            })
    }

    /// Puts credentials in the cache as if STS had just returned them, usable for
    /// `usable_for` (warming a cache from elsewhere; benchmarks).
    pub async fn seed(&self, key: CredentialKey, credentials: Credentials, usable_for: Duration) {
        let fetched_at = Instant::now();
        self.credentials
            .insert(
                key,
                Arc::new(CachedCredentials {
                    credentials,
                    fetched_at,
                    usable_until: fetched_at + usable_for,
                }),
            )
            .await;
    }

    fn refresh_in_background(self: &Arc<Self>, datasource: &str, key: CredentialKey) {
        if !self.refreshing.lock().insert(key.clone()) {
            return;
        }
        let broker = self.clone();
        let datasource = datasource.to_string();
        tokio::spawn(async move {
            match broker.assume_role(&key).await {
                Ok(fresh) => {
                    broker.credentials.insert(key.clone(), fresh).await;
                    broker
                        .metrics
                        .credential_refreshes
                        .with_label_values(&["refreshed"])
                        .inc();
                }
                Err(error) => {
                    // The entry keeps serving until it is no longer usable.
                    broker
                        .metrics
                        .credential_refreshes
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::warn!(%datasource, %error, "STS refresh failed; the cached credential keeps serving until it expires");
                }
            }
            broker.refreshing.lock().remove(&key);
        });
    }

    fn sts_client(&self, region: &str) -> aws_sdk_sts::Client {
        let config = aws_sdk_sts::config::Builder::from(&self.shared)
            .region(aws_sdk_sts::config::Region::new(region.to_string()))
            .build();
        aws_sdk_sts::Client::from_conf(config)
    }

    async fn assume_role(&self, key: &CredentialKey) -> Result<Arc<CachedCredentials>, String> {
        let mut request = self
            .sts_client(&key.region)
            .assume_role()
            .role_arn(&key.role_arn)
            .role_session_name(session_name(key.source_identity.as_deref()))
            .duration_seconds(self.config.session_duration.as_secs().clamp(900, 43_200) as i32);
        if let Some(external_id) = &key.external_id {
            request = request.external_id(external_id);
        }
        if let Some(identity) = &key.source_identity {
            request = request.source_identity(identity);
        }
        let result = request.send().await;
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics.sts_calls.with_label_values(&[outcome]).inc();
        let output = result.map_err(|error| {
            format!(
                "AssumeRole failed: {}",
                aws_sdk_sts::error::DisplayErrorContext(&error)
            )
        })?;
        let credentials = output
            .credentials()
            .ok_or_else(|| "AssumeRole returned no credentials".to_string())?;
        let expires_at = SystemTime::try_from(*credentials.expiration())
            .map_err(|_| "AssumeRole returned an unreadable expiration".to_string())?;
        let fetched_at = Instant::now();
        let by_expiry = instant_of(expires_at)
            .checked_sub(self.config.expiry_margin)
            .unwrap_or(fetched_at);
        let usable_until = by_expiry.min(fetched_at + self.config.credential_ttl);
        if usable_until <= fetched_at {
            return Err(
                "AssumeRole returned credentials that expire within the safety margin".into(),
            );
        }
        Ok(Arc::new(CachedCredentials {
            credentials: Credentials::new(
                credentials.access_key_id(),
                credentials.secret_access_key(),
                Some(credentials.session_token().to_string()),
                Some(expires_at),
                "datagate-sts",
            ),
            fetched_at,
            usable_until,
        }))
    }

    async fn token(
        self: &Arc<Self>,
        datasource: &str,
        iam: &AwsIamConfig,
        sts: &Arc<CachedCredentials>,
    ) -> Result<DbCredentials, CredsError> {
        let target = match iam.engine {
            Engine::AuroraPostgresql | Engine::AuroraMysql => format!(
                "{}:{}",
                iam.host.as_deref().unwrap_or_default(),
                iam.port.unwrap_or_default()
            ),
            Engine::Redshift => iam.cluster_identifier.clone().unwrap_or_default(),
            Engine::RedshiftServerless => iam.workgroup.clone().unwrap_or_default(),
        };
        let key = TokenKey {
            access_key_id: sts.credentials.access_key_id().to_string(),
            engine: iam.engine,
            target,
            db_user: iam.db_user.clone(),
            database: iam.database.clone(),
        };
        if let Some(cached) = self.tokens.get(&key).await {
            self.metrics.token_cache.with_label_values(&["hit"]).inc();
            return Ok(cached.credentials.clone());
        }
        self.metrics.token_cache.with_label_values(&["miss"]).inc();
        let broker = self.clone();
        let iam = iam.clone();
        let sts = sts.clone();
        let datasource_name = datasource.to_string();
        self.tokens
            .try_get_with(key, async move {
                broker.new_token(&datasource_name, &iam, &sts).await
            })
            .await
            .map(|cached| cached.credentials.clone())
            .map_err(|error: Arc<CredsError>| (*error).clone())
    }

    async fn new_token(
        &self,
        datasource: &str,
        iam: &AwsIamConfig,
        sts: &CachedCredentials,
    ) -> Result<Arc<CachedToken>, CredsError> {
        let unavailable = |detail: String| CredsError::Unavailable {
            datasource: datasource.to_string(),
            detail,
        };
        let margin = self.config.expiry_margin;
        match iam.engine {
            Engine::AuroraPostgresql | Engine::AuroraMysql => {
                let host = iam.host.as_deref().unwrap_or_default();
                let port = iam.port.unwrap_or_default();
                let signed_at = SystemTime::now();
                let token = rds_auth_token(
                    &sts.credentials,
                    &iam.region,
                    host,
                    port,
                    &iam.db_user,
                    signed_at,
                )
                .map_err(unavailable)?;
                let by_token = Instant::now() + RDS_TOKEN_LIFETIME.saturating_sub(margin);
                Ok(Arc::new(CachedToken {
                    credentials: DbCredentials {
                        user: iam.db_user.clone(),
                        token,
                        endpoint: Some(format!("{host}:{port}")),
                    },
                    usable_until: by_token.min(sts.usable_until),
                }))
            }
            Engine::Redshift | Engine::RedshiftServerless => self
                .redshift_token(iam, sts, margin)
                .await
                .map_err(|error| match error {
                    RedshiftError::NotBuilt => CredsError::EngineNotBuilt {
                        datasource: datasource.to_string(),
                    },
                    RedshiftError::Failed(detail) => unavailable(detail),
                }),
        }
    }

    #[cfg(feature = "redshift")]
    async fn redshift_token(
        &self,
        iam: &AwsIamConfig,
        sts: &CachedCredentials,
        margin: Duration,
    ) -> Result<Arc<CachedToken>, RedshiftError> {
        let provider =
            aws_credential_types::provider::SharedCredentialsProvider::new(sts.credentials.clone());
        let region = aws_config::Region::new(iam.region.clone());
        let duration = 900;
        let (user, token, expires_at, endpoint) = if iam.engine == Engine::Redshift {
            let config = aws_sdk_redshift::config::Builder::from(&self.shared)
                .region(region)
                .credentials_provider(provider)
                .build();
            let mut request = aws_sdk_redshift::Client::from_conf(config)
                .get_cluster_credentials()
                .db_user(&iam.db_user)
                .cluster_identifier(iam.cluster_identifier.clone().unwrap_or_default())
                .duration_seconds(duration)
                .auto_create(false);
            if let Some(database) = &iam.database {
                request = request.db_name(database);
            }
            let output = request.send().await.map_err(|error| {
                RedshiftError::Failed(format!(
                    "GetClusterCredentials failed: {}",
                    aws_sdk_redshift::error::DisplayErrorContext(&error)
                ))
            })?;
            let endpoint = iam
                .host
                .as_ref()
                .map(|host| format!("{host}:{}", iam.port.unwrap_or(5439)));
            (
                output.db_user().unwrap_or(&iam.db_user).to_string(),
                output.db_password().unwrap_or_default().to_string(),
                output.expiration().copied(),
                endpoint,
            )
        } else {
            let config = aws_sdk_redshiftserverless::config::Builder::from(&self.shared)
                .region(region)
                .credentials_provider(provider)
                .build();
            let client = aws_sdk_redshiftserverless::Client::from_conf(config);
            let workgroup = iam.workgroup.clone().unwrap_or_default();
            let mut request = client
                .get_credentials()
                .workgroup_name(&workgroup)
                .duration_seconds(duration);
            if let Some(database) = &iam.database {
                request = request.db_name(database);
            }
            let output = request.send().await.map_err(|error| {
                RedshiftError::Failed(format!(
                    "GetCredentials failed: {}",
                    aws_sdk_redshiftserverless::error::DisplayErrorContext(&error)
                ))
            })?;
            let endpoint = match &iam.host {
                Some(host) => Some(format!("{host}:{}", iam.port.unwrap_or(5439))),
                None => {
                    let described = client
                        .get_workgroup()
                        .workgroup_name(&workgroup)
                        .send()
                        .await
                        .map_err(|error| {
                            RedshiftError::Failed(format!(
                                "GetWorkgroup failed: {}",
                                aws_sdk_redshiftserverless::error::DisplayErrorContext(&error)
                            ))
                        })?;
                    described
                        .workgroup()
                        .and_then(|workgroup| workgroup.endpoint())
                        .and_then(|endpoint| {
                            Some(format!("{}:{}", endpoint.address()?, endpoint.port()?))
                        })
                }
            };
            (
                output.db_user().unwrap_or(&iam.db_user).to_string(),
                output.db_password().unwrap_or_default().to_string(),
                output.expiration().copied(),
                endpoint,
            )
        };
        if token.is_empty() {
            return Err(RedshiftError::Failed("no password in the response".into()));
        }
        let by_expiry = expires_at
            .and_then(|at| SystemTime::try_from(at).ok())
            .map(instant_of)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(duration as u64))
            .checked_sub(margin)
            .unwrap_or_else(Instant::now);
        Ok(Arc::new(CachedToken {
            credentials: DbCredentials {
                user,
                token,
                endpoint,
            },
            usable_until: by_expiry.min(sts.usable_until),
        }))
    }

    #[cfg(not(feature = "redshift"))]
    async fn redshift_token(
        &self,
        _iam: &AwsIamConfig,
        _sts: &CachedCredentials,
        _margin: Duration,
    ) -> Result<Arc<CachedToken>, RedshiftError> {
        Err(RedshiftError::NotBuilt)
    }
}

enum RedshiftError {
    #[cfg_attr(feature = "redshift", allow(dead_code))]
    NotBuilt,
    Failed(String),
}

/// For logs: ARNs and 12-digit account ids replaced, so a role's identity never lands in
/// a log line even when an AWS error message quotes it.
pub fn redact_aws_identifiers(text: &str) -> String {
    text.split_inclusive(|character: char| {
        character.is_whitespace() || "\"',;()".contains(character)
    })
    .map(|word| {
        let trimmed = word.trim_end_matches(|character: char| {
            character.is_whitespace() || "\"',;()".contains(character)
        });
        let tail = &word[trimmed.len()..];
        let sensitive = trimmed.contains("arn:aws")
            || (trimmed.len() >= 12
                && trimmed
                    .as_bytes()
                    .windows(12)
                    .any(|window| window.iter().all(u8::is_ascii_digit)));
        if sensitive {
            format!("<redacted>{tail}")
        } else {
            word.to_string()
        }
    })
    .collect()
}

/// `SourceIdentity` allows `[\w+=,.@-]`, 2–64 characters: other characters become `-`.
pub fn source_identity(user: &str) -> String {
    let mut identity: String = user
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || "_+=,.@-".contains(character) {
                character
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    while identity.len() < 2 {
        identity.push('-');
    }
    identity
}

/// `datagate` or `datagate-<user>`, within RoleSessionName's 64 characters.
fn session_name(source_identity: Option<&str>) -> String {
    match source_identity {
        Some(identity) => format!("datagate-{identity}").chars().take(64).collect(),
        None => "datagate".to_string(),
    }
}

/// An RDS/Aurora IAM auth token: `host:port/?Action=connect&DBUser=…` presigned with
/// SigV4 (service `rds-db`, valid 15 minutes from `signed_at`), by aws-sigv4.
pub fn rds_auth_token(
    credentials: &Credentials,
    region: &str,
    host: &str,
    port: u16,
    db_user: &str,
    signed_at: SystemTime,
) -> Result<String, String> {
    use aws_sigv4::http_request::{
        SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
    };
    let identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(RDS_TOKEN_LIFETIME);
    settings.signature_location = SignatureLocation::QueryParams;
    let parameters = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds-db")
        .time(signed_at)
        .settings(settings)
        .build()
        .map_err(|error| format!("signing parameters: {error}"))?
        .into();
    let user: String = form_urlencoded::byte_serialize(db_user.as_bytes()).collect();
    let url = format!("https://{host}:{port}/?Action=connect&DBUser={user}");
    let request = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|error| format!("signable request: {error}"))?;
    let (instructions, _signature) = sign(request, &parameters)
        .map_err(|error| format!("signing: {error}"))?
        .into_parts();
    let mut signed = http::Request::builder()
        .uri(&url)
        .body(())
        .map_err(|error| format!("request: {error}"))?;
    instructions.apply_to_request_http1x(&mut signed);
    let uri = signed.uri().to_string();
    Ok(uri
        .strip_prefix("https://")
        .map(str::to_string)
        .unwrap_or(uri))
}

#[cfg(test)]
mod tests;
