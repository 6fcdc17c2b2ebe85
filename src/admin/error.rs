//! The admin API's one error type. Handlers return it; [`crate::http_error`] turns it
//! into the JSON `{"message": …}` response, so statuses are decided in one place.

use crate::decision::Refusal;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Authentication failed or the caller lacks the permission (401 / 403).
    #[error("{0}")]
    Refused(Refusal),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Malformed input: bad JSON, a bad path parameter, an unknown query parameter.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("no grants store is configured (set `store.url` in the config file)")]
    NoStore,
    /// The write committed but this replica could not build a snapshot with it.
    #[error("the change was saved but is not serving yet: {0}")]
    NotServing(#[source] crate::state::SnapshotError),
    /// The thread swapping in a committed write's snapshot stopped before answering.
    #[error("the change was saved but is not serving yet: the swap did not finish")]
    ServeLost,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Refusal> for AdminError {
    fn from(refusal: Refusal) -> Self {
        AdminError::Refused(refusal)
    }
}
