//! The HTTP client datagate uses to talk to the identity provider: the JWKS and discovery
//! documents (background task, `remote.rs`) and the token endpoint (login callback,
//! `oidc.rs`). hyper-util's client over rustls (ring provider, the system's roots plus
//! `auth.jwt.ca_file` when set).
//!
//! Every URL has passed `config::check_fetch_url` (https, or http on loopback). Redirects
//! are never followed (hyper does not), bodies are bounded, and each exchange — connect,
//! request, whole response — is bounded by one timeout.

use std::path::Path;
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
    pub(crate) fn new(
        timeout: Duration,
        keep_alive: bool,
        ca_file: Option<&Path>,
    ) -> Result<IdpClient, String> {
        let connector = https_connector(ca_file)?;
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

    /// GETs a JSON document with extra request headers (the dataset verifier's identity
    /// headers, `crate::dataset_verify`).
    pub(crate) async fn get_with_headers(
        &self,
        url: &url::Url,
        headers: &[(http::HeaderName, http::HeaderValue)],
    ) -> Result<IdpResponse, FetchError> {
        let mut request = http::Request::get(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, user_agent());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
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

/// An HTTP/1.1 connector for `http://` and `https://` URLs (rustls with ring, trusting
/// [`trust_roots`]); also used by the OTLP trace exporter.
pub(crate) fn https_connector(
    ca_file: Option<&Path>,
) -> Result<HttpsConnector<HttpConnector>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("no usable TLS versions: {error}"))?
        .with_root_certificates(trust_roots(ca_file)?)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build())
}

/// The system's roots, plus every certificate in `ca_file`. A `ca_file` that cannot be
/// read or holds no certificate is a configuration error, not a silent fallback.
fn trust_roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let mut added = 0;
        for certificate in CertificateDer::pem_file_iter(path)
            .map_err(|error| format!("`ca_file` cannot be read: {error}"))?
        {
            let certificate =
                certificate.map_err(|error| format!("`ca_file` is not PEM: {error}"))?;
            roots
                .add(certificate)
                .map_err(|error| format!("`ca_file` holds an unusable certificate: {error}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("`ca_file` holds no certificate".into());
        }
    }
    if roots.is_empty() {
        return Err("no trusted TLS roots: the system has none and `ca_file` is unset".into());
    }
    Ok(roots)
}

fn user_agent() -> &'static str {
    concat!("datagate/", env!("CARGO_PKG_VERSION"))
}
