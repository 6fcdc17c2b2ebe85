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
pub async fn database_credentials<'n>(
    state: &AppState,
    snapshot: &PolicySnapshot,
    permit: &'n Permit,
    sql_datasources: impl Iterator<Item = &'n str>,
) -> Result<Option<crate::creds::DbCredentials>, Refusal> {
    // Every request passes here and almost none names an IAM datasource: the datasources
    // are looked up where they are, and only IAM ones are kept (inline, no allocation).
    let mut iam: smallvec::SmallVec<[(&str, &crate::creds::AwsIamConfig); 2]> =
        smallvec::SmallVec::new();
    for uid in permit
        .datasource_uids()
        .iter()
        .map(String::as_str)
        .chain(sql_datasources)
    {
        if let Some(config) = snapshot
            .rls
            .datasource(uid)
            .and_then(|datasource| datasource.aws_iam.as_ref())
            && !iam.iter().any(|(seen, _)| *seen == uid)
        {
            iam.push((uid, config));
        }
    }
    let (uid, iam) = match iam.as_mut_slice() {
        [] => return Ok(None),
        [one] => *one,
        several => {
            several.sort_unstable_by_key(|(uid, _)| *uid);
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
