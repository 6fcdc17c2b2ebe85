//! Database credentials for the request's datasource (AWS IAM), the last stage before
//! forwarding; any failure refuses the request before an upstream connection.

use super::Refusal;
use super::authorize::Permit;
use crate::state::{AppState, PolicySnapshot};

/// Stage 7: database credentials for the request's datasource, when it uses AWS IAM
/// authentication. `sql_datasources` are the datasources the request's SQL named.
/// Refuses (before any upstream connection) when the feature flag is off, when the
/// token would travel over plain HTTP, when several IAM datasources are named, or when
/// no valid credential can be had.
pub async fn database_credentials(
    state: &AppState,
    snapshot: &PolicySnapshot,
    permit: &Permit,
    sql_datasources: &[String],
) -> Result<Option<crate::creds::DbCredentials>, Refusal> {
    let mut uids: Vec<&str> = permit
        .datasource_uids()
        .iter()
        .chain(sql_datasources)
        .map(String::as_str)
        .collect();
    uids.sort_unstable();
    uids.dedup();
    let iam: Vec<(&str, &crate::creds::AwsIamConfig)> = uids
        .into_iter()
        .filter_map(|uid| {
            snapshot
                .rls
                .datasource(uid)
                .and_then(|datasource| datasource.aws_iam.as_ref())
                .map(|iam| (uid, iam))
        })
        .collect();
    let (uid, iam) = match iam.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        several => {
            let names: Vec<&str> = several.iter().map(|(uid, _)| *uid).collect();
            return Err(Refusal::Credentials(
                crate::creds::CredsError::SeveralDatasources(names.join(", ")),
            ));
        }
    };
    let aws = &state.config.aws;
    if !aws.database_iam_auth {
        return Err(Refusal::Credentials(crate::creds::CredsError::Disabled));
    }
    if !state.config.upstream.tls && !aws.allow_plaintext_upstream {
        return Err(Refusal::Credentials(
            crate::creds::CredsError::PlaintextUpstream,
        ));
    }
    let broker = state
        .credentials
        .get()
        .ok_or(Refusal::Credentials(crate::creds::CredsError::Disabled))?;
    // Boxed: the AWS SDK's futures are large, and this state would otherwise be part of
    // every request's decision future (see `decide`).
    Box::pin(broker.database_credentials(uid, iam, &permit.principal().username))
        .await
        .map(Some)
        .map_err(|error| {
            tracing::warn!(
                datasource = uid,
                detail = %crate::creds::redact_aws_identifiers(&error.detail()),
                "database credentials unavailable"
            );
            Refusal::Credentials(error)
        })
}
