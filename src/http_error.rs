//! The one place where errors become HTTP responses.
//!
//! The proxy and the admin listener both render through [`HttpError`]; no other module
//! picks a status code. Messages are the errors' own `Display` texts, which are written to
//! be safe for clients: they name what was wrong, never secrets, file paths or other
//! principals' grants.

use serde::Serialize;

use crate::authn::AuthnError;
use crate::decision::Refusal;

/// A status code plus the JSON body `{"message": …}` and the headers that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
    /// `WWW-Authenticate` value for 401 responses.
    pub www_authenticate: Option<String>,
    /// A stable machine-readable reason where one exists (SQL refusals).
    pub kind: Option<&'static str>,
    /// A complete body replacing `{"message", "kind"}` (JSON-RPC errors).
    pub raw_body: Option<Vec<u8>>,
    /// `Retry-After` seconds, on overload and availability refusals (429, 503).
    pub retry_after: Option<u64>,
}

/// `Retry-After` for 503s whose cause datagate cannot time: the grants store or a replica's
/// confirmation coming back (polled every `store.poll_interval`, 500 ms by default), and
/// the identity provider's keys or STS (refetched every `jwks_refresh.retry_interval`,
/// 10 s by default, and on the next request).
const RETRY_STORE_SECONDS: u64 = 1;
const RETRY_DEPENDENCY_SECONDS: u64 = 10;

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
}

impl HttpError {
    pub fn new(status: u16, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
            www_authenticate: None,
            kind: None,
            raw_body: None,
            retry_after: None,
        }
    }

    fn with_kind(mut self, kind: &'static str) -> HttpError {
        self.kind = Some(kind);
        self
    }

    fn retry_after(mut self, seconds: u64) -> HttpError {
        self.retry_after = Some(seconds);
        self
    }

    fn unauthorized(message: String, token_was_invalid: bool) -> HttpError {
        let challenge = if token_was_invalid {
            "Bearer error=\"invalid_token\"".to_string()
        } else {
            "Bearer".to_string()
        };
        HttpError {
            status: 401,
            message,
            www_authenticate: Some(challenge),
            kind: None,
            raw_body: None,
            retry_after: None,
        }
    }

    /// The same refusal as a JSON-RPC error (HTTP 200), for MCP routes. Authentication
    /// and availability refusals stay HTTP (401 with its challenge, 429 and 503 with
    /// `Retry-After`), as MCP clients expect.
    pub fn as_json_rpc(&self, id: &serde_json::Value) -> Option<HttpError> {
        if matches!(self.status, 401 | 429 | 503) {
            return None;
        }
        let code = match self.status {
            400 | 413 => -32600,
            _ => -32001,
        };
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {
                "code": code,
                "message": self.message,
                "data": {"status": self.status, "kind": self.kind},
            },
        });
        Some(HttpError {
            status: 200,
            message: self.message.clone(),
            www_authenticate: None,
            kind: self.kind,
            raw_body: Some(serde_json::to_vec(&body).unwrap_or_default()),
            retry_after: None,
        })
    }

    pub fn json_body(&self) -> Vec<u8> {
        if let Some(body) = &self.raw_body {
            return body.clone();
        }
        serde_json::to_vec(&ErrorBody {
            message: &self.message,
            kind: self.kind,
        })
        .unwrap_or_else(|_| b"{\"message\":\"internal error\"}".to_vec())
    }
}

impl From<&Refusal> for HttpError {
    fn from(refusal: &Refusal) -> HttpError {
        let message = refusal.to_string();
        match refusal {
            Refusal::Authentication(AuthnError::MissingCredentials)
            | Refusal::AuthenticationRequired { .. } => HttpError::unauthorized(message, false),
            Refusal::Authentication(error) if error.is_config_error() => {
                HttpError::new(500, "authentication is misconfigured")
            }
            Refusal::Authentication(AuthnError::KeysUnavailable) => HttpError::new(503, message)
                .with_kind("identity_keys_unavailable")
                .retry_after(RETRY_DEPENDENCY_SECONDS),
            Refusal::Authentication(AuthnError::CrossSiteRequest) => {
                HttpError::new(403, message).with_kind("cross_site_request")
            }
            Refusal::Authentication(AuthnError::Login(_)) => {
                HttpError::new(400, message).with_kind("sign_in_failed")
            }
            Refusal::Authentication(_) => HttpError::unauthorized(message, true),
            Refusal::BadRequest(crate::route::RouteError::CaseFoldedKey { .. }) => {
                HttpError::new(400, message).with_kind("case_folded_key")
            }
            Refusal::BadRequest(crate::route::RouteError::Rison(..)) => {
                HttpError::new(400, message).with_kind("malformed_rison")
            }
            Refusal::BadBody(error) => {
                use crate::decision::request::RequestError;
                use crate::json_guard::JsonGuardError;
                let kind = match error {
                    RequestError::Json(JsonGuardError::DuplicateKey(_)) => "duplicate_key",
                    RequestError::Json(JsonGuardError::CaseFoldedKeys(..)) => "case_folded_key",
                    RequestError::Json(JsonGuardError::Malformed(_)) => "malformed_json",
                    RequestError::FormNotUtf8 => "malformed_form",
                };
                HttpError::new(400, message).with_kind(kind)
            }
            Refusal::BadPath(_) | Refusal::BadRequest(_) | Refusal::BodyUnreadable => {
                HttpError::new(400, message)
            }
            Refusal::ResultOwner { .. } => HttpError::new(403, message).with_kind("result_owner"),
            Refusal::ResultUnknown { .. } => {
                HttpError::new(403, message).with_kind("result_unknown")
            }
            Refusal::ResultStore => HttpError::new(503, message)
                .with_kind("result_store")
                .retry_after(RETRY_STORE_SECONDS),
            Refusal::UriTooLong { .. } => HttpError::new(414, message).with_kind("uri_too_long"),
            Refusal::UnmatchedRoute { .. }
            | Refusal::MissingPermission { .. }
            | Refusal::MissingDatasourcePermission { .. } => HttpError::new(403, message),
            Refusal::BodyTooLarge { .. } => HttpError::new(413, message),
            Refusal::TablePageFiltered { .. } => {
                HttpError::new(403, message).with_kind("table_page_filtered")
            }
            Refusal::Credentials(error) => {
                use crate::creds::CredsError;
                let (status, kind) = match error {
                    CredsError::Disabled => (403, "aws_iam_disabled"),
                    CredsError::Unavailable { .. } => (503, "credentials_unavailable"),
                    CredsError::EngineNotBuilt { .. } => (501, "engine_not_built"),
                    CredsError::PlaintextUpstream => (502, "plaintext_upstream"),
                    CredsError::SeveralDatasources(_) => (400, "several_iam_datasources"),
                };
                let error = HttpError::new(status, message).with_kind(kind);
                if status == 503 {
                    error.retry_after(RETRY_DEPENDENCY_SECONDS)
                } else {
                    error
                }
            }
            Refusal::Header(error) => {
                // A route that does not allow upgrades is a policy answer; the rest are
                // requests that could be read two ways.
                let status = match error {
                    crate::proxy::HeaderError::UpgradeNotAllowed { .. } => 403,
                    _ => 400,
                };
                HttpError::new(status, message).with_kind(error.kind())
            }
            Refusal::McpInvalid(_) => HttpError::new(400, message).with_kind("mcp_invalid"),
            Refusal::McpUnknownTool(_) => {
                HttpError::new(403, message).with_kind("mcp_unknown_tool")
            }
            Refusal::McpMethodRefused(_) => {
                HttpError::new(403, message).with_kind("mcp_method_refused")
            }
            Refusal::PolicyStale { .. } => HttpError::new(503, message)
                .with_kind("policy_stale")
                .retry_after(RETRY_STORE_SECONDS),
            Refusal::SqlLocation(error) => {
                let kind = error.kind();
                let status = match kind {
                    "write_option" | "template_syntax" => 403,
                    _ => 400,
                };
                HttpError::new(status, message).with_kind(kind)
            }
            Refusal::SqlPool(error) => {
                use crate::sql_pool::SqlPoolError;
                match error {
                    SqlPoolError::Busy { retry_after, .. } => HttpError::new(503, message)
                        .with_kind("sql_busy")
                        .retry_after(*retry_after),
                    // The pool has room; this caller is over its share.
                    SqlPoolError::CallerBusy { retry_after, .. } => HttpError::new(429, message)
                        .with_kind("sql_caller_limit")
                        .retry_after(*retry_after),
                    SqlPoolError::TooLarge { .. } => {
                        HttpError::new(413, message).with_kind("sql_too_large")
                    }
                    SqlPoolError::WorkerLost => {
                        HttpError::new(500, message).with_kind("sql_worker_lost")
                    }
                }
            }
            Refusal::ChartData(error) => {
                use crate::chart_data::ChartDataError;
                let status = match error {
                    ChartDataError::UnmappedDataset { .. }
                    | ChartDataError::ReplayFiltered { .. }
                    | ChartDataError::RefusedField { .. }
                    | ChartDataError::MappedDataset { .. }
                    | ChartDataError::OverwritesMappedDatasets { .. }
                    | ChartDataError::DatasetMismatch { .. } => 403,
                    ChartDataError::VerificationUnavailable { .. }
                    | ChartDataError::VerificationPending { .. } => 503,
                    ChartDataError::BadQueryContext(_) => 400,
                    ChartDataError::Fragment { error, .. } => sql_status(error.kind()),
                };
                HttpError::new(status, message).with_kind(error.kind())
            }
            Refusal::Sql { error, .. } => {
                let kind = error.kind();
                HttpError::new(sql_status(kind), message).with_kind(kind)
            }
        }
    }
}

/// The status of a refused SQL statement or fragment, by its kind: what policy forbids is
/// 403, a failed verification 422, SQL that cannot be read 400.
fn sql_status(kind: &str) -> u16 {
    match kind {
        "statement_not_allowed"
        | "denied_function"
        | "catalog_access"
        | "unlisted_table"
        | "unknown_datasource"
        | "missing_template_value"
        | "subquery_not_allowed"
        | "template_syntax" => 403,
        "verification_failed" => 422,
        _ => 400,
    }
}

impl HttpError {
    /// pingora's own failure of a request datagate allowed (the upstream unreachable, a
    /// timeout, a broken connection), as the JSON body every other error has; `None` when
    /// the client connection is already gone. Upstream addresses and causes stay in the log.
    pub fn from_proxy_failure(error: &pingora::Error) -> Option<HttpError> {
        use pingora::{ErrorSource, ErrorType};
        let etype = error.etype();
        let rendered = match (etype, error.esource()) {
            (ErrorType::HTTPStatus(code), _) => {
                HttpError::new(*code, "the request could not be proxied").with_kind("proxy_error")
            }
            (
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
                ErrorSource::Upstream,
            ) => HttpError::new(504, "the upstream did not answer in time")
                .with_kind("upstream_timeout"),
            (_, ErrorSource::Upstream) => {
                HttpError::new(502, "the upstream could not be reached or answered badly")
                    .with_kind("upstream_error")
            }
            (
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => return None,
            (_, ErrorSource::Downstream) => {
                HttpError::new(400, "the request could not be read").with_kind("bad_request")
            }
            (_, ErrorSource::Internal | ErrorSource::Unset) => {
                HttpError::new(500, "internal error").with_kind("internal")
            }
        };
        tracing::warn!(error = %error, status = rendered.status, "request failed in the proxy");
        Some(rendered)
    }
}

impl From<&crate::store::StoreError> for HttpError {
    fn from(error: &crate::store::StoreError) -> HttpError {
        use crate::store::StoreError;
        match error {
            StoreError::NotFound { .. } => HttpError::new(404, error.to_string()),
            StoreError::Conflict(_) => HttpError::new(409, error.to_string()),
            StoreError::Invalid(_) | StoreError::Rejected(_) => {
                HttpError::new(400, error.to_string())
            }
            StoreError::BuildLost => {
                tracing::error!(%error, "admin write: the policy build did not finish");
                HttpError::new(500, "internal error: the change was not applied")
            }
            // Database and connection errors can name hosts, tables and SQL: operators
            // read them in the log, clients get a generic message.
            StoreError::Config { .. }
            | StoreError::Connect { .. }
            | StoreError::Migrate(_)
            | StoreError::Database(_) => {
                tracing::error!(%error, "store operation failed");
                HttpError::new(500, "internal error: the grants store could not be used")
            }
        }
    }
}

impl From<&crate::admin::AdminError> for HttpError {
    fn from(error: &crate::admin::AdminError) -> HttpError {
        use crate::admin::AdminError;
        match error {
            AdminError::Refused(refusal) => HttpError::from(refusal),
            AdminError::Store(store_error) => HttpError::from(store_error),
            AdminError::BadRequest(message) => HttpError::new(400, message.clone()),
            AdminError::NotFound(message) => HttpError::new(404, message.clone()),
            AdminError::NoStore => HttpError::new(503, error.to_string()),
            AdminError::NotServing(_) | AdminError::ServeLost => {
                tracing::error!(%error, "admin write committed but not serving");
                HttpError::new(
                    500,
                    "the change was saved but this replica could not apply it; see the log",
                )
            }
            AdminError::Internal(_) => {
                tracing::error!(%error, "admin API internal error");
                HttpError::new(500, "internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_permission_is_403_and_names_it() {
        let error = HttpError::from(&Refusal::MissingPermission {
            permission: "can_read on Chart".into(),
        });
        assert_eq!(error.status, 403);
        assert_eq!(
            String::from_utf8_lossy(&error.json_body()),
            r#"{"message":"missing permission `can_read on Chart`"}"#
        );
    }

    #[test]
    fn anonymous_denials_challenge_for_credentials() {
        let error = HttpError::from(&Refusal::AuthenticationRequired { reason: "x".into() });
        assert_eq!(error.status, 401);
        assert_eq!(error.www_authenticate.as_deref(), Some("Bearer"));
    }

    #[test]
    fn header_refusals_carry_their_kind() {
        use crate::proxy::HeaderError;
        let upgrade = HttpError::from(&Refusal::from(HeaderError::UpgradeNotAllowed {
            route: "superset-chart-read".into(),
        }));
        assert_eq!(upgrade.status, 403);
        assert_eq!(upgrade.kind, Some("upgrade_not_allowed"));
        let twice = HttpError::from(&Refusal::from(HeaderError::DuplicateCredential {
            header: "authorization".into(),
        }));
        assert_eq!(twice.status, 400);
        assert_eq!(twice.kind, Some("duplicate_credentials"));
    }

    #[test]
    fn oversized_bodies_are_413() {
        let error = HttpError::from(&Refusal::BodyTooLarge {
            route: "grafana-ds-query".into(),
            limit: 65536,
        });
        assert_eq!(error.status, 413);
    }

    #[test]
    fn overload_and_availability_refusals_say_when_to_retry() {
        use crate::sql_pool::SqlPoolError;
        let busy = HttpError::from(&Refusal::SqlPool(SqlPoolError::Busy {
            queue_limit: 64,
            retry_after: 3,
        }));
        assert_eq!(
            (busy.status, busy.kind, busy.retry_after),
            (503, Some("sql_busy"), Some(3))
        );
        let share = HttpError::from(&Refusal::SqlPool(SqlPoolError::CallerBusy {
            limit: 8,
            retry_after: 2,
        }));
        assert_eq!(
            (share.status, share.kind, share.retry_after),
            (429, Some("sql_caller_limit"), Some(2))
        );
        // MCP clients get both as HTTP, with the header, not as JSON-RPC errors.
        assert!(share.as_json_rpc(&serde_json::json!(1)).is_none());
        for refusal in [
            Refusal::ResultStore,
            Refusal::PolicyStale { seconds: 12 },
            Refusal::Authentication(AuthnError::KeysUnavailable),
        ] {
            let error = HttpError::from(&refusal);
            assert_eq!(error.status, 503);
            assert!(
                error.retry_after.is_some_and(|seconds| seconds >= 1),
                "{refusal}"
            );
        }
        // A refusal that retrying cannot fix carries none.
        let forbidden = HttpError::from(&Refusal::MissingPermission {
            permission: "can_read on Chart".into(),
        });
        assert_eq!(forbidden.retry_after, None);
    }
}
