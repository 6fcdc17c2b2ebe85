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
//! All `DecodingKey`s and `Validation`s are built once at startup.

use std::collections::HashMap;

use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation, decode, decode_header, get_current_timestamp,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::cache::VerifiedTokenCache;
use super::claims::principal_from_claims;
use super::config::{ClaimMapping, JwtConfig};
use super::error::{AuthnError, Malformed};
use super::keys::LoadedKey;
use crate::principal::Principal;

pub const MAX_KEYS_TRIED_WITHOUT_KID: usize = 4;

struct VerificationKey {
    algorithm: Algorithm,
    decoding_key: DecodingKey,
    validation: Validation,
}

pub(crate) struct JwtVerifier {
    keys: Vec<VerificationKey>,
    by_kid: HashMap<String, usize>,
    /// Per algorithm, the keys a kid-less token may be tried against (bounded).
    without_kid: Vec<(Algorithm, Vec<usize>)>,
    claims: ClaimMapping,
    leeway_seconds: u64,
    cache: VerifiedTokenCache,
}

impl JwtVerifier {
    pub(crate) fn new(config: &JwtConfig, loaded: Vec<LoadedKey>) -> Result<Self, AuthnError> {
        let mut keys = Vec::with_capacity(loaded.len());
        let mut by_kid = HashMap::with_capacity(loaded.len());
        let mut without_kid: Vec<(Algorithm, Vec<usize>)> = Vec::new();
        for (index, key) in loaded.into_iter().enumerate() {
            if let Some(kid) = key.kid
                && by_kid.insert(kid.clone(), index).is_some()
            {
                return Err(AuthnError::config(
                    "auth.jwt.jwks_file",
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
        Ok(JwtVerifier {
            keys,
            by_kid,
            without_kid,
            claims: config.claims.clone(),
            leeway_seconds: config.leeway_seconds,
            cache: VerifiedTokenCache::new(config.verified_token_cache_entries),
        })
    }

    pub(crate) fn verify(&self, token: &str) -> Result<Principal, AuthnError> {
        if !self.cache.is_enabled() {
            return principal_from_claims(self.verified_claims(token)?, &self.claims);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = get_current_timestamp();
        if let Some(principal) = self.cache.get(&digest, now) {
            return Ok(principal);
        }
        let claims = self.verified_claims(token)?;
        let expires_at = numeric_date(claims.get("exp"));
        let principal = principal_from_claims(claims, &self.claims)?;
        if let Some(expires_at) = expires_at {
            let usable_until = expires_at.saturating_add(self.leeway_seconds);
            self.cache.insert(digest, &principal, usable_until, now);
        }
        Ok(principal)
    }

    fn verified_claims(&self, token: &str) -> Result<Value, AuthnError> {
        let header = decode_header(token).map_err(|error| match error.kind() {
            ErrorKind::InvalidToken => AuthnError::Malformed(Malformed::Token),
            _ => AuthnError::Malformed(Malformed::TokenHeader),
        })?;
        // RFC 7515 §4.1.11: a recipient must reject a token whose `crit` names an
        // extension it does not understand, and we understand none.
        if header.crit.is_some() {
            return Err(AuthnError::Malformed(Malformed::CriticalHeader));
        }
        if let Some(kid) = &header.kid {
            let key = self
                .by_kid
                .get(kid)
                .and_then(|index| self.keys.get(*index))
                .ok_or(AuthnError::UnknownKey)?;
            if key.algorithm != header.alg {
                return Err(AuthnError::WrongAlgorithm);
            }
            return decode_with(token, key);
        }
        let Some((_, candidates)) = self
            .without_kid
            .iter()
            .find(|(algorithm, _)| *algorithm == header.alg)
        else {
            return Err(if self.keys.is_empty() {
                AuthnError::UnknownKey
            } else {
                AuthnError::WrongAlgorithm
            });
        };
        for key in candidates.iter().filter_map(|index| self.keys.get(*index)) {
            match decode_with(token, key) {
                Err(AuthnError::BadSignature) => continue,
                decided => return decided,
            }
        }
        Err(AuthnError::BadSignature)
    }
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
