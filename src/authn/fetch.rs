//! The HTTP client datagate uses to talk to the identity provider: the JWKS and discovery
//! documents (background task, `remote.rs`) and the token endpoint (login callback,
//! `oidc.rs`). hyper-util's client over rustls (ring provider, the system's roots).
//!
//! Every URL has passed `config::check_fetch_url` (https, or http on loopback). Redirects
//! are never followed (hyper does not), bodies are bounded, and each exchange — connect,
//! request, whole response — is bounded by one timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A response body larger than this is refused (JWKS and metadata are a few KiB).
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// Why an exchange with the identity provider failed. Messages name no URL: they reach
/// `/readyz` and logs shared with people who need not know internal addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("the identity provider could not be reached")]
    Unreachable,
    #[error("the identity provider answered HTTP {0}")]
    Status(u16),
    #[error("the response is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("the key set is invalid: {0}")]
    Invalid(String),
    #[error("discovery failed: {0}")]
    Discovery(String),
}

impl FetchError {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            FetchError::Unreachable => "unreachable",
            FetchError::Status(_) => "status",
            FetchError::TooLarge => "too_large",
            FetchError::Invalid(_) => "invalid",
            FetchError::Discovery(_) => "discovery",
        }
    }
}

pub(crate) struct IdpResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

pub(crate) struct IdpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl IdpClient {
    /// `keep_alive`: pool connections (the background task); off for clients used from
    /// the proxy's many runtimes, whose pooled connections would stay bound to one.
    pub(crate) fn new(timeout: Duration, keep_alive: bool) -> Result<IdpClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|error| format!("no usable TLS roots: {error}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let mut builder = Client::builder(TokioExecutor::new());
        if !keep_alive {
            builder.pool_max_idle_per_host(0);
        }
        Ok(IdpClient {
            client: builder.build(connector),
            timeout,
        })
    }

    pub(crate) async fn get(&self, url: &url::Url) -> Result<IdpResponse, FetchError> {
        let request = http::Request::get(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, user_agent())
            .body(Full::new(Bytes::new()))
            .map_err(|_| FetchError::Unreachable)?;
        self.exchange(request).await
    }

    /// POSTs a form with HTTP Basic client authentication.
    pub(crate) async fn post_form(
        &self,
        url: &url::Url,
        authorization: &str,
        form: String,
    ) -> Result<IdpResponse, FetchError> {
        let request = http::Request::post(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::AUTHORIZATION, authorization)
            .header(http::header::USER_AGENT, user_agent())
            .body(Full::new(Bytes::from(form)))
            .map_err(|_| FetchError::Unreachable)?;
        self.exchange(request).await
    }

    async fn exchange(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<IdpResponse, FetchError> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|_| FetchError::Unreachable)?;
            let (parts, body) = response.into_parts();
            if parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u64>().ok())
                .is_some_and(|length| length > MAX_DOCUMENT_BYTES as u64)
            {
                return Err(FetchError::TooLarge);
            }
            let body = Limited::new(body, MAX_DOCUMENT_BYTES)
                .collect()
                .await
                .map_err(|error| {
                    if error.is::<http_body_util::LengthLimitError>() {
                        FetchError::TooLarge
                    } else {
                        FetchError::Unreachable
                    }
                })?
                .to_bytes();
            Ok(IdpResponse {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: body.to_vec(),
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| FetchError::Unreachable)?
    }
}

fn user_agent() -> &'static str {
    concat!("datagate/", env!("CARGO_PKG_VERSION"))
}
