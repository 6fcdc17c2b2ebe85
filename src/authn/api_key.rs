//! API-key authentication: the presented key is hashed and looked up among the
//! configured digests. Runs on the request path; the table is built once at startup.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::claims::service_account;
use super::config::{ApiKeysConfig, parse_sha256_hex};
use super::error::AuthnError;
use crate::principal::{BasicRole, Principal};

struct ServiceAccount {
    name: String,
    roles: Vec<String>,
    teams: Vec<String>,
    basic_role: Option<BasicRole>,
}

pub(crate) struct ApiKeyTable {
    by_digest: HashMap<[u8; 32], ServiceAccount>,
}

impl ApiKeyTable {
    pub(crate) fn new(config: Option<&ApiKeysConfig>) -> Result<Self, AuthnError> {
        let mut by_digest = HashMap::new();
        for (index, api_key) in config
            .map_or(&[][..], |config| &config.keys)
            .iter()
            .enumerate()
        {
            let digest = parse_sha256_hex(&api_key.sha256).ok_or_else(|| {
                AuthnError::config(
                    format!("auth.api_keys.keys[{index}].sha256"),
                    "must be 64 hex digits (sha256 of the key)",
                )
            })?;
            by_digest.insert(
                digest,
                ServiceAccount {
                    name: api_key.name.clone(),
                    roles: api_key.roles.clone(),
                    teams: api_key.teams.clone(),
                    basic_role: api_key.org_role,
                },
            );
        }
        Ok(ApiKeyTable { by_digest })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub(crate) fn authenticate(&self, presented: &str) -> Result<Principal, AuthnError> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // The map compares digests, not keys. Timing of that comparison can at most reveal
        // how many leading bytes of sha256(guess) match a stored digest, and because
        // sha256 is preimage-resistant an attacker cannot steer a guess towards a longer
        // match, so a constant-time comparison would add nothing.
        self.by_digest
            .get(&digest)
            .map(|account| {
                service_account(
                    &account.name,
                    &account.roles,
                    &account.teams,
                    account.basic_role,
                )
            })
            .ok_or(AuthnError::UnknownApiKey)
    }
}

/// Hex sha256 of a key, as written into `auth.api_keys.keys[].sha256`.
pub fn api_key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::config::ApiKeyConfig;
    use crate::principal::PrincipalKind;

    #[test]
    fn known_keys_become_service_accounts() {
        let config = ApiKeysConfig {
            keys: vec![ApiKeyConfig {
                name: "ci-bot".into(),
                sha256: api_key_digest("s3cret-key"),
                roles: vec!["Gamma".into()],
                teams: vec![],
                org_role: Some(BasicRole::Viewer),
            }],
            ..ApiKeysConfig::default()
        };
        let table = ApiKeyTable::new(Some(&config)).unwrap();
        let principal = table.authenticate("s3cret-key").unwrap();
        assert_eq!(principal.kind, PrincipalKind::ServiceAccount);
        assert_eq!(principal.username, "ci-bot");
        assert_eq!(principal.roles, vec!["Gamma"]);
        assert_eq!(principal.basic_role, Some(BasicRole::Viewer));
        assert_eq!(
            table.authenticate("s3cret-kez"),
            Err(AuthnError::UnknownApiKey)
        );
    }

    #[test]
    fn digest_matches_sha256sum() {
        // printf abc | sha256sum
        assert_eq!(
            api_key_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
