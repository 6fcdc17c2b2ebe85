//! Why a request is refused: one enum for every stage of [`crate::decision::admit`].
//! Rendered to HTTP only by [`crate::http_error`] (and, on MCP routes, as a JSON-RPC
//! error by the same code).

use crate::authn::AuthnError;
use crate::route::RouteError;

/// Why a request is refused. Rendered to HTTP only by [`crate::http_error`].
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Authentication(#[from] AuthnError),
    #[error("authentication required: {reason}")]
    AuthenticationRequired { reason: String },
    #[error("{0}")]
    BadPath(RouteError),
    #[error("no route matches `{method} {path}` and unmatched requests are denied")]
    UnmatchedRoute { method: String, path: String },
    #[error("missing permission `{permission}`")]
    MissingPermission { permission: String },
    #[error("missing permission `{action}` on datasource `{uid}`")]
    MissingDatasourcePermission { action: String, uid: String },
    #[error("{0}")]
    BadRequest(RouteError),
    #[error("{0}")]
    BadBody(#[from] crate::decision::request::RequestError),
    #[error("request body is larger than the {limit}-byte inspection limit of route `{route}`")]
    BodyTooLarge { route: String, limit: usize },
    #[error("request body could not be read")]
    BodyUnreadable,
    #[error("{0}")]
    SqlLocation(#[from] crate::sql_location::SqlLocationError),
    #[error(
        "results `{id}` belong to another caller; only the caller who ran the query may read or export them"
    )]
    ResultOwner { id: String },
    #[error(
        "results `{id}` are not known to datagate (expired, or created without it); run the query again"
    )]
    ResultUnknown { id: String },
    #[error("the results binding store could not be used")]
    ResultStore,
    #[error("the forwarded path and query string would be longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error(
        "this replica has not confirmed its grants are current for {seconds} s; refusing rather than serving stale grants"
    )]
    PolicyStale { seconds: u64 },
    #[error("{reason}")]
    TablePageFiltered { reason: String },
    #[error("{0}")]
    Credentials(crate::creds::CredsError),
    #[error("{0}")]
    Header(#[from] crate::proxy::HeaderError),
    #[error("invalid MCP request: {0}")]
    McpInvalid(String),
    #[error("MCP tool `{0}` is not in datagate's tool table, so it is refused")]
    McpUnknownTool(String),
    #[error("MCP method `{0}` is not one datagate lets through, so it is refused")]
    McpMethodRefused(String),
    #[error("{0}")]
    SqlPool(crate::sql_pool::SqlPoolError),
    #[error("{0}")]
    ChartData(crate::chart_data::ChartDataError),
    #[error("SQL at `{location}` refused: {error}")]
    Sql {
        location: String,
        error: crate::rls::RlsError,
    },
}
