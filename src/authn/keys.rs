//! Verification keys, built once at start-up: each with exactly one pinned algorithm.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

use super::AuthnError;
use super::config::{JwtConfig, KeyConfig, MIN_HMAC_SECRET_BYTES};

/// A verification key and the only algorithm it accepts.
pub struct VerificationKey {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let algorithm = match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => {
            return Err(format!(
                "`{other}` is not a supported algorithm (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)"
            ));
        }
    };
    Ok(algorithm)
}

pub fn is_hmac(algorithm: Algorithm) -> bool {
    matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    )
}

fn config_error(key: String, message: impl Into<String>) -> AuthnError {
    AuthnError::Config(format!("`{key}`: {}", message.into()))
}

/// Reads an HMAC secret; the value never appears in an error.
pub fn read_secret(key: &KeyConfig, base_dir: &Path, prefix: &str) -> Result<Vec<u8>, AuthnError> {
    let secret = match (&key.secret_env, &key.secret_file) {
        (Some(variable), None) => std::env::var(variable)
            .map_err(|_| {
                config_error(
                    format!("{prefix}.secret_env"),
                    format!("environment variable `{variable}` is not set"),
                )
            })?
            .into_bytes(),
        (None, Some(file)) => {
            let mut bytes = std::fs::read(base_dir.join(file)).map_err(|error| {
                config_error(
                    format!("{prefix}.secret_file"),
                    format!("cannot read `{file}`: {error}"),
                )
            })?;
            while bytes
                .last()
                .is_some_and(|byte| *byte == b'\n' || *byte == b'\r')
            {
                bytes.pop();
            }
            bytes
        }
        _ => {
            return Err(config_error(
                prefix.to_string(),
                "an HMAC key needs exactly one of `secret_env`, `secret_file`",
            ));
        }
    };
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(config_error(
            prefix.to_string(),
            format!(
                "the HMAC secret is {} bytes; at least {MIN_HMAC_SECRET_BYTES} are required",
                secret.len()
            ),
        ));
    }
    Ok(secret)
}

/// Every configured key plus every key of the JWKS file.
pub fn load_keys(config: &JwtConfig, base_dir: &Path) -> Result<Vec<VerificationKey>, AuthnError> {
    let mut keys = Vec::new();
    for (index, key) in config.keys.iter().enumerate() {
        let prefix = format!("auth.jwt.keys[{index}]");
        let algorithm = parse_algorithm(&key.algorithm)
            .map_err(|message| config_error(format!("{prefix}.algorithm"), message))?;
        let decoding_key = if is_hmac(algorithm) {
            DecodingKey::from_secret(&read_secret(key, base_dir, &prefix)?)
        } else {
            let file = key
                .public_key_file
                .as_deref()
                .ok_or_else(|| config_error(format!("{prefix}.public_key_file"), "missing"))?;
            let pem = std::fs::read(base_dir.join(file)).map_err(|error| {
                config_error(
                    format!("{prefix}.public_key_file"),
                    format!("cannot read `{file}`: {error}"),
                )
            })?;
            let parsed = match algorithm {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            };
            parsed.map_err(|error| {
                config_error(
                    format!("{prefix}.public_key_file"),
                    format!(
                        "`{file}` is not a PEM public key for {}: {error}",
                        key.algorithm
                    ),
                )
            })?
        };
        keys.push(VerificationKey {
            kid: key.kid.clone(),
            algorithm,
            key: decoding_key,
        });
    }
    if let Some(file) = &config.jwks_file {
        let text = std::fs::read_to_string(base_dir.join(file)).map_err(|error| {
            config_error(
                "auth.jwt.jwks_file".into(),
                format!("cannot read `{file}`: {error}"),
            )
        })?;
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text).map_err(|error| {
            config_error(
                "auth.jwt.jwks_file".into(),
                format!("`{file}` is not a JWKS document: {error}"),
            )
        })?;
        for (index, jwk) in set.keys.iter().enumerate() {
            let origin = format!("auth.jwt.jwks_file keys[{index}]");
            // The algorithm is pinned by the JWK itself; a key without `alg` could be
            // used with any algorithm of its family, so it is refused.
            let key_algorithm = jwk
                .common
                .key_algorithm
                .ok_or_else(|| config_error(origin.clone(), "every JWK must carry `alg`"))?;
            let algorithm = parse_algorithm(&key_algorithm.to_string())
                .map_err(|message| config_error(origin.clone(), message))?;
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|error| config_error(origin.clone(), format!("unusable JWK: {error}")))?;
            keys.push(VerificationKey {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key,
            });
        }
    }
    Ok(keys)
}

/// The first HMAC key, for `datagate token`.
pub fn first_hmac_signing_key(
    config: &JwtConfig,
    base_dir: &Path,
) -> Result<(Algorithm, Option<String>, EncodingKey), AuthnError> {
    for (index, key) in config.keys.iter().enumerate() {
        let Ok(algorithm) = parse_algorithm(&key.algorithm) else {
            continue;
        };
        if is_hmac(algorithm) {
            let secret = read_secret(key, base_dir, &format!("auth.jwt.keys[{index}]"))?;
            return Ok((
                algorithm,
                key.kid.clone(),
                EncodingKey::from_secret(&secret),
            ));
        }
    }
    Err(AuthnError::Config(
        "no HMAC key configured in `auth.jwt.keys`: `datagate token` can only mint tokens with an HMAC (HS256/384/512) key".into(),
    ))
}
