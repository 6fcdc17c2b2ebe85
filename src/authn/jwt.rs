//! JWT verification on the request path: pick the key, let jsonwebtoken check signature
//! and registered claims, then map the claims to a principal.
//!
//! Key selection (the algorithm is always pinned per key):
//! - header has `kid`: exactly that key; unknown kid → [`AuthnError::UnknownKey`]; key
//!   pinned to another algorithm → [`AuthnError::WrongAlgorithm`].
//! - header has no `kid`: the keys pinned to the header's `alg`, in config order
//!   (configured keys, then JWKS keys), at most [`MAX_KEYS_TRIED_WITHOUT_KID`] of them;
//!   the first whose signature verifies decides. Keys beyond that bound are reachable
//!   only by `kid`, which keeps the worst-case cost of a forged kid-less token small.
//!
//! Keys come from the configuration (`keys`, `jwks_file`; built once at startup) and,
//! with `jwks_url` or discovery, from the identity provider's JWKS (see `remote.rs`),
//! whose current set is read lock-free per request. Configured keys are looked at first.
//! A token header that names its `kid` twice, or claims that repeat a name, are refused
//! before any key is tried; `iss` must be a string.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation, decode, decode_header, get_current_timestamp,
};
use serde_json::Value;

use super::cache::VerifiedTokenCache;
use super::claims::principal_from_claims;
use super::config::{ClaimMapping, JwtConfig};
use super::error::{AuthnError, Malformed};
use super::keys::LoadedKey;
use super::remote::RemoteKeys;
use crate::principal::Principal;

pub const MAX_KEYS_TRIED_WITHOUT_KID: usize = 4;

/// The generation recorded for tokens verified by a configured (local) key; remote key
/// sets count from 1.
pub(crate) const LOCAL_GENERATION: u64 = 0;

pub(crate) struct VerificationKey {
    algorithm: Algorithm,
    decoding_key: DecodingKey,
    validation: Validation,
}

/// Keys indexed for selection: by `kid`, and per algorithm for kid-less tokens (bounded).
/// Built once per configuration (local keys) or per fetched JWKS (remote keys).
pub(crate) struct KeySet {
    keys: Vec<VerificationKey>,
    by_kid: HashMap<String, usize>,
    without_kid: Vec<(Algorithm, Vec<usize>)>,
}

impl KeySet {
    /// `source_key` names the config key in errors (two keys with one kid are refused).
    pub(crate) fn new(
        config: &JwtConfig,
        loaded: Vec<LoadedKey>,
        source_key: &str,
    ) -> Result<Self, AuthnError> {
        let mut keys = Vec::with_capacity(loaded.len());
        let mut by_kid = HashMap::with_capacity(loaded.len());
        let mut without_kid: Vec<(Algorithm, Vec<usize>)> = Vec::new();
        for (index, key) in loaded.into_iter().enumerate() {
            if let Some(kid) = key.kid
                && by_kid.insert(kid.clone(), index).is_some()
            {
                return Err(AuthnError::config(
                    source_key,
                    format!("kid `{kid}` is used by more than one key"),
                ));
            }
            match without_kid
                .iter_mut()
                .find(|(algorithm, _)| *algorithm == key.algorithm)
            {
                Some((_, candidates)) if candidates.len() < MAX_KEYS_TRIED_WITHOUT_KID => {
                    candidates.push(index)
                }
                Some(_) => {}
                None => without_kid.push((key.algorithm, vec![index])),
            }
            keys.push(VerificationKey {
                algorithm: key.algorithm,
                validation: validation_for(config, key.algorithm),
                decoding_key: key.decoding_key,
            });
        }
        Ok(KeySet {
            keys,
            by_kid,
            without_kid,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn contains_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    fn by_kid(&self, kid: &str) -> Option<&VerificationKey> {
        self.by_kid.get(kid).and_then(|index| self.keys.get(*index))
    }

    fn candidates(&self, algorithm: Algorithm) -> impl Iterator<Item = &VerificationKey> {
        self.without_kid
            .iter()
            .filter(move |(candidate, _)| *candidate == algorithm)
            .flat_map(|(_, indexes)| indexes.iter())
            .filter_map(|index| self.keys.get(*index))
    }
}

pub(crate) struct JwtVerifier {
    local: KeySet,
    remote: Option<Arc<RemoteKeys>>,
    claims: ClaimMapping,
    leeway_seconds: u64,
    cache: VerifiedTokenCache,
}

impl JwtVerifier {
    pub(crate) fn new(
        config: &JwtConfig,
        loaded: Vec<LoadedKey>,
        remote: Option<Arc<RemoteKeys>>,
    ) -> Result<Self, AuthnError> {
        Ok(JwtVerifier {
            local: KeySet::new(config, loaded, "auth.jwt.jwks_file")?,
            remote,
            claims: config.claims.clone(),
            leeway_seconds: config.leeway_seconds,
            cache: VerifiedTokenCache::new(config.verified_token_cache_entries),
        })
    }

    pub(crate) fn remote(&self) -> Option<&Arc<RemoteKeys>> {
        self.remote.as_ref()
    }

    pub(crate) fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthnError> {
        if !self.cache.is_enabled() {
            let (claims, _) = self.verified_claims(token)?;
            return principal_from_claims(claims, &self.claims).map(Arc::new);
        }
        let now = get_current_timestamp();
        if let Some((principal, generation)) = self.cache.get(token, now)
            && self.generation_still_serves(generation)
        {
            return Ok(principal);
        }
        let (claims, generation) = self.verified_claims(token)?;
        let expires_at = numeric_date(claims.get("exp"));
        let principal = Arc::new(principal_from_claims(claims, &self.claims)?);
        if let Some(expires_at) = expires_at {
            let usable_until = expires_at.saturating_add(self.leeway_seconds);
            self.cache
                .insert(token, &principal, usable_until, now, generation);
        }
        Ok(principal)
    }

    /// A cached verification stands only while the key set that verified it is still the
    /// serving one: a rotated-out key must stop verifying at the next refresh, and a key
    /// set gone stale refuses its tokens (fail closed).
    fn generation_still_serves(&self, generation: u64) -> bool {
        if generation == LOCAL_GENERATION {
            return true;
        }
        self.remote
            .as_ref()
            .and_then(|remote| remote.usable().ok())
            .is_some_and(|keys| keys.generation == generation)
    }

    fn verified_claims(&self, token: &str) -> Result<(Value, u64), AuthnError> {
        let header = decode_header(token).map_err(|error| match error.kind() {
            ErrorKind::InvalidToken => AuthnError::Malformed(Malformed::Token),
            _ => AuthnError::Malformed(Malformed::TokenHeader),
        })?;
        // RFC 7515 §4.1.11: a recipient must reject a token whose `crit` names an
        // extension it does not understand, and we understand none.
        if header.crit.is_some() {
            return Err(AuthnError::Malformed(Malformed::CriticalHeader));
        }
        // Repeated names in the header or the claims have no defined meaning (RFC 7515
        // §4 lets a recipient refuse them); a service that reads the other copy would
        // see another identity than the one datagate checked.
        reject_repeated_names(token)?;
        if let Some(kid) = &header.kid {
            if let Some(key) = self.local.by_kid(kid) {
                return decode_checked(token, key, header.alg, LOCAL_GENERATION);
            }
            let Some(remote) = &self.remote else {
                return Err(AuthnError::UnknownKey);
            };
            let keys = remote.usable()?;
            let key = keys.set.by_kid(kid).ok_or(AuthnError::UnknownKey)?;
            return decode_checked(token, key, header.alg, keys.generation);
        }
        let local_candidates: Vec<&VerificationKey> = self
            .local
            .candidates(header.alg)
            .take(MAX_KEYS_TRIED_WITHOUT_KID)
            .collect();
        let remote_keys = match &self.remote {
            Some(remote) if local_candidates.len() < MAX_KEYS_TRIED_WITHOUT_KID => {
                match remote.usable() {
                    Ok(keys) => Some(keys),
                    Err(error) if local_candidates.is_empty() => return Err(error),
                    Err(_) => None,
                }
            }
            _ => None,
        };
        let remote_candidates: Vec<&VerificationKey> = remote_keys
            .as_ref()
            .map(|keys| {
                keys.set
                    .candidates(header.alg)
                    .take(MAX_KEYS_TRIED_WITHOUT_KID - local_candidates.len())
                    .collect()
            })
            .unwrap_or_default();
        if local_candidates.is_empty() && remote_candidates.is_empty() {
            let any_key = !self.local.is_empty()
                || remote_keys
                    .as_ref()
                    .is_some_and(|keys| !keys.set.is_empty());
            return Err(if any_key {
                AuthnError::WrongAlgorithm
            } else {
                AuthnError::UnknownKey
            });
        }
        let remote_generation = remote_keys.as_ref().map_or(0, |keys| keys.generation);
        let tagged = local_candidates
            .into_iter()
            .map(|key| (key, LOCAL_GENERATION))
            .chain(
                remote_candidates
                    .into_iter()
                    .map(|key| (key, remote_generation)),
            );
        for (key, generation) in tagged {
            match decode_checked(token, key, header.alg, generation) {
                Err(AuthnError::BadSignature) => continue,
                decided => return decided,
            }
        }
        Err(AuthnError::BadSignature)
    }
}

impl JwtVerifier {
    /// Verifies an OpenID Connect ID token from the login callback (OIDC Core §3.1.3.7):
    /// signed by a key of the identity provider's JWKS, `iss` = `issuer`, `aud` naming
    /// `client_id`, `azp` = `client_id` when there are several audiences, not expired.
    /// The caller checks the nonce.
    pub(crate) fn verify_id_token(
        &self,
        token: &str,
        issuer: &str,
        client_id: &str,
    ) -> Result<Value, AuthnError> {
        let header =
            decode_header(token).map_err(|_| AuthnError::Malformed(Malformed::TokenHeader))?;
        if header.crit.is_some() {
            return Err(AuthnError::Malformed(Malformed::CriticalHeader));
        }
        reject_repeated_names(token)?;
        let remote = self.remote.as_ref().ok_or(AuthnError::UnknownKey)?;
        let keys = remote.usable()?;
        let key = match &header.kid {
            Some(kid) => keys.set.by_kid(kid).ok_or(AuthnError::UnknownKey)?,
            None => keys
                .set
                .candidates(header.alg)
                .next()
                .ok_or(AuthnError::UnknownKey)?,
        };
        if key.algorithm != header.alg {
            return Err(AuthnError::WrongAlgorithm);
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.leeway_seconds;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = decode::<Value>(token, &key.decoding_key, &validation)
            .map_err(map_error)?
            .claims;
        check_registered_claim_types(&claims)?;
        if let Some(Value::Array(audiences)) = claims.get("aud")
            && audiences.len() > 1
            && claims.get("azp").and_then(Value::as_str) != Some(client_id)
        {
            return Err(AuthnError::WrongAudience);
        }
        Ok(claims)
    }

    /// Maps a session's claims (verified at login) to a principal, like a token's.
    pub(crate) fn principal_from_session(
        &self,
        claims: serde_json::Map<String, Value>,
    ) -> Result<Principal, AuthnError> {
        principal_from_claims(Value::Object(claims), &self.claims)
    }
}

/// Decodes with a key whose pinned algorithm must be the header's, then applies the
/// claim checks jsonwebtoken does not make.
fn decode_checked(
    token: &str,
    key: &VerificationKey,
    header_algorithm: Algorithm,
    generation: u64,
) -> Result<(Value, u64), AuthnError> {
    if key.algorithm != header_algorithm {
        return Err(AuthnError::WrongAlgorithm);
    }
    let claims = decode_with(token, key)?;
    check_registered_claim_types(&claims)?;
    Ok((claims, generation))
}

/// jsonwebtoken accepts `iss` as an array and checks it against the configured issuer as
/// a set; RFC 7519 §4.1.1 makes it a single StringOrURI, and an upstream that reads the
/// claim itself would take either element. Only a string is accepted.
fn check_registered_claim_types(claims: &Value) -> Result<(), AuthnError> {
    match claims.get("iss") {
        None | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(AuthnError::invalid_claim("iss", "expected a string")),
    }
}

/// Refuses a token whose header or claims object repeats a name. serde_json (and
/// jsonwebtoken with it) keeps the last copy; other JWT libraries keep the first.
fn reject_repeated_names(token: &str) -> Result<(), AuthnError> {
    use base64::Engine as _;
    let mut segments = token.split('.');
    for (segment, refusal) in [
        (segments.next(), Malformed::TokenHeader),
        (segments.next(), Malformed::RepeatedClaim),
    ] {
        let Some(segment) = segment else {
            return Err(AuthnError::Malformed(Malformed::Token));
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|_| AuthnError::Malformed(Malformed::Token))?;
        match crate::json_guard::reject_duplicate_keys(&bytes) {
            Ok(()) => {}
            Err(crate::json_guard::JsonGuardError::DuplicateKey(_)) => {
                return Err(AuthnError::Malformed(refusal));
            }
            Err(_) => return Err(AuthnError::Malformed(Malformed::Token)),
        }
    }
    Ok(())
}

fn decode_with(token: &str, key: &VerificationKey) -> Result<Value, AuthnError> {
    let data = decode::<Value>(token, &key.decoding_key, &key.validation).map_err(map_error)?;
    if data.claims.is_object() {
        Ok(data.claims)
    } else {
        Err(AuthnError::Malformed(Malformed::Token))
    }
}

/// `exp` as jsonwebtoken reads it (integer or float seconds); anything else is not cached.
fn numeric_date(value: Option<&Value>) -> Option<u64> {
    let value = value?;
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
            .map(|seconds| seconds.floor() as u64)
    })
}

fn validation_for(config: &JwtConfig, algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = config.leeway_seconds;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    // jsonwebtoken only compares iss/aud when the token carries them; a configured check
    // must also fail tokens that simply omit the claim.
    let mut required = vec!["exp"];
    if let Some(issuer) = &config.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &config.audience {
        Some(audience) => {
            validation.set_audience(audience);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

fn map_error(error: JwtError) -> AuthnError {
    match error.into_kind() {
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthnError::Malformed(Malformed::Token),
        ErrorKind::ExpiredSignature => AuthnError::Expired,
        ErrorKind::ImmatureSignature => AuthnError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthnError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthnError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => AuthnError::MissingClaim(claim),
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthnError::invalid_claim(&claim, "expected a numeric date")
        }
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthnError::WrongAlgorithm,
        // Everything else is a signature or key-material failure; the client learns only
        // that the signature did not verify.
        _ => AuthnError::BadSignature,
    }
}
