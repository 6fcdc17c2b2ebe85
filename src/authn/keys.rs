//! Startup-time loading of JWT verification keys: HMAC secrets (env or file), PEM public
//! keys and JWKS documents.
//!
//! This is the only part of authn that does I/O, and it runs once while the
//! [`super::Authenticator`] is built (never on the request path). Errors name the config
//! key and the file, and never include secret bytes.

use std::fs;
use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::config::{JwtConfig, JwtKeyConfig, MIN_HMAC_SECRET_BYTES};
use super::error::AuthnError;

/// Resolves an environment variable; injectable so tests need not mutate the process env.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A key ready to verify tokens, with the single algorithm it is pinned to.
pub(crate) struct LoadedKey {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub decoding_key: DecodingKey,
}

/// All keys of `auth.jwt`: configured keys first (in order), then the JWKS keys.
pub(crate) fn load_keys(
    jwt: &JwtConfig,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Result<Vec<LoadedKey>, AuthnError> {
    let mut loaded = Vec::with_capacity(jwt.keys.len());
    for (index, key) in jwt.keys.iter().enumerate() {
        let config_key = format!("auth.jwt.keys[{index}]");
        let decoding_key = if key.algorithm.family() == AlgorithmFamily::Hmac {
            DecodingKey::from_secret(&read_hmac_secret(key, &config_key, base_dir, env)?)
        } else {
            load_public_key(key, &config_key, base_dir)?
        };
        loaded.push(LoadedKey {
            kid: key.kid.clone(),
            algorithm: key.algorithm,
            decoding_key,
        });
    }
    if let Some(jwks_file) = &jwt.jwks_file {
        loaded.extend(load_jwks(&resolve(base_dir, jwks_file))?);
    }
    Ok(loaded)
}

/// The secret of an HMAC key. A trailing newline in a secret file is not part of the
/// secret (editors add one); the environment value is taken as is.
pub(crate) fn read_hmac_secret(
    key: &JwtKeyConfig,
    config_key: &str,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Result<Vec<u8>, AuthnError> {
    let (source_key, secret) = match (&key.secret_env, &key.secret_file) {
        (Some(name), None) => {
            let source_key = format!("{config_key}.secret_env");
            let value = env(name).ok_or_else(|| {
                AuthnError::config(
                    &source_key,
                    format!("environment variable `{name}` is not set or not UTF-8"),
                )
            })?;
            (source_key, value.into_bytes())
        }
        (None, Some(file)) => {
            let source_key = format!("{config_key}.secret_file");
            let path = resolve(base_dir, file);
            let mut bytes = fs::read(&path).map_err(|error| {
                AuthnError::config(
                    &source_key,
                    format!("cannot read `{}`: {}", path.display(), error.kind()),
                )
            })?;
            while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                bytes.pop();
            }
            (source_key, bytes)
        }
        _ => {
            return Err(AuthnError::config(
                config_key,
                "set exactly one of `secret_env` and `secret_file`",
            ));
        }
    };
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(AuthnError::config(
            source_key,
            format!(
                "HMAC secret is {} bytes; at least {MIN_HMAC_SECRET_BYTES} are required",
                secret.len()
            ),
        ));
    }
    Ok(secret)
}

fn load_public_key(
    key: &JwtKeyConfig,
    config_key: &str,
    base_dir: &Path,
) -> Result<DecodingKey, AuthnError> {
    let source_key = format!("{config_key}.public_key_file");
    let Some(file) = &key.public_key_file else {
        return Err(AuthnError::config(
            config_key,
            format!("{:?} needs `public_key_file`", key.algorithm),
        ));
    };
    let path = resolve(base_dir, file);
    let pem = fs::read(&path).map_err(|error| {
        AuthnError::config(
            &source_key,
            format!("cannot read `{}`: {}", path.display(), error.kind()),
        )
    })?;
    let invalid =
        |problem: &str| AuthnError::config(&source_key, format!("`{}` {problem}", path.display()));
    // jsonwebtoken would happily take the public half out of a private key or a
    // certificate; we insist on a public key so private keys never live on the proxy.
    match first_pem_label(&pem) {
        Some("PUBLIC KEY" | "RSA PUBLIC KEY") => {}
        Some(label) if label.contains("PRIVATE") => {
            return Err(invalid(
                "holds a private key; give the public key only (openssl pkey -pubout)",
            ));
        }
        _ => return Err(invalid("is not a PEM public key (BEGIN PUBLIC KEY)")),
    }
    let decoding_key = match key.algorithm.family() {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&pem),
        AlgorithmFamily::Hmac => return Err(invalid("cannot be used with an HMAC algorithm")),
    }
    .map_err(|_| {
        invalid(&format!(
            "is not a valid {:?} public key for {:?}",
            key.algorithm.family(),
            key.algorithm
        ))
    })?;
    check_key_size(key.algorithm, &decoding_key)
        .map_err(|problem| invalid(&format!("does not fit {:?}: {problem}", key.algorithm)))?;
    Ok(decoding_key)
}

/// Catches an EC key of the wrong curve (e.g. a P-256 key configured for ES384) at
/// startup instead of as a mysterious signature failure at request time.
fn check_key_size(algorithm: Algorithm, key: &DecodingKey) -> Result<(), &'static str> {
    let expected = match algorithm {
        Algorithm::ES256 => 65,
        Algorithm::ES384 => 97,
        Algorithm::EdDSA => 32,
        _ => return Ok(()),
    };
    match key.try_get_as_bytes() {
        Ok(bytes) if bytes.len() == expected => Ok(()),
        _ => Err("wrong curve or key size"),
    }
}

fn first_pem_label(pem: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(pem).ok()?;
    let begin = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let rest = text.get(begin..)?;
    rest.get(..rest.find("-----")?)
}

fn load_jwks(path: &Path) -> Result<Vec<LoadedKey>, AuthnError> {
    const KEY: &str = "auth.jwt.jwks_file";
    let text = fs::read(path).map_err(|error| {
        AuthnError::config(
            KEY,
            format!("cannot read `{}`: {}", path.display(), error.kind()),
        )
    })?;
    let set: JwkSet = serde_json::from_slice(&text).map_err(|error| {
        AuthnError::config(
            KEY,
            format!("`{}` is not a JWK set: {error}", path.display()),
        )
    })?;
    let mut loaded = Vec::with_capacity(set.keys.len());
    for (index, jwk) in set.keys.iter().enumerate() {
        match key_from_jwk(jwk, None) {
            Ok(Some(key)) => loaded.push(key),
            Ok(None) => {}
            Err(problem) => {
                return Err(AuthnError::config(
                    KEY,
                    format!("`{}` keys[{index}]: {problem}", path.display()),
                ));
            }
        }
    }
    Ok(loaded)
}

/// The signing keys of a JWKS served by the identity provider. Unlike a local file, a
/// key datagate cannot use is skipped (reported in the second list) rather than failing
/// the whole set: IdPs publish keys for other algorithms and purposes beside the ones
/// that sign their tokens, and a skipped key can only make fewer tokens verify.
pub(crate) fn parse_remote_jwks(
    body: &[u8],
    default_algorithm: Option<Algorithm>,
) -> Result<(Vec<LoadedKey>, Vec<String>), String> {
    crate::json_guard::reject_duplicate_keys(body)
        .map_err(|error| format!("the JWKS is not valid JSON without repeated keys: {error}"))?;
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|error| format!("not a JWK set: {error}"))?;
    let mut loaded = Vec::with_capacity(set.keys.len());
    let mut skipped = Vec::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        match key_from_jwk(jwk, default_algorithm) {
            Ok(Some(key)) => loaded.push(key),
            Ok(None) => {}
            Err(problem) => skipped.push(format!("keys[{index}]: {problem}")),
        }
    }
    Ok((loaded, skipped))
}

/// One JWK as a verification key pinned to one algorithm; `Ok(None)` for encryption keys,
/// which can never verify a JWS.
fn key_from_jwk(
    jwk: &Jwk,
    default_algorithm: Option<Algorithm>,
) -> Result<Option<LoadedKey>, String> {
    // Encryption keys share JWKS documents with signing keys at many IdPs; they are
    // skipped rather than refused.
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Ok(None);
    }
    let algorithm = match jwk.common.key_algorithm {
        Some(KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256) => {
            return Ok(None);
        }
        Some(key_algorithm) => Algorithm::try_from(key_algorithm)
            .map_err(|_| format!("unsupported `alg` {key_algorithm}"))?,
        None => default_algorithm
            .ok_or_else(|| "has no `alg`; every JWK must pin its algorithm".to_string())?,
    };
    let curve_fits = match (&jwk.algorithm, algorithm) {
        (AlgorithmParameters::OctetKey(_), _) => {
            return Err(
                "symmetric (`oct`) keys are not accepted from JWKS; configure them under auth.jwt.keys"
                    .into(),
            );
        }
        (AlgorithmParameters::EllipticCurve(params), Algorithm::ES256) => {
            params.curve == EllipticCurve::P256
        }
        (AlgorithmParameters::EllipticCurve(params), Algorithm::ES384) => {
            params.curve == EllipticCurve::P384
        }
        (AlgorithmParameters::OctetKeyPair(params), Algorithm::EdDSA) => {
            params.curve == EllipticCurve::Ed25519
        }
        (AlgorithmParameters::RSA(_), _) => algorithm.family() == AlgorithmFamily::Rsa,
        _ => false,
    };
    if !curve_fits {
        return Err(format!(
            "key type or curve does not match `alg` {algorithm:?}"
        ));
    }
    let decoding_key = DecodingKey::from_jwk(jwk)
        .map_err(|_| "key parameters are not valid base64url".to_string())?;
    Ok(Some(LoadedKey {
        kid: jwk.common.key_id.clone(),
        algorithm,
        decoding_key,
    }))
}

fn resolve(base_dir: &Path, file: &Path) -> PathBuf {
    if file.is_absolute() {
        file.to_path_buf()
    } else {
        base_dir.join(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_label_is_read_from_the_first_begin_line() {
        let pem = b"junk\n-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert_eq!(first_pem_label(pem), Some("PUBLIC KEY"));
        assert_eq!(first_pem_label(b"no pem here"), None);
        assert_eq!(
            first_pem_label(b"-----BEGIN RSA PRIVATE KEY-----"),
            Some("RSA PRIVATE KEY")
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let base = Path::new("/etc/datagate");
        assert_eq!(
            resolve(base, Path::new("keys/a.pem")),
            Path::new("/etc/datagate/keys/a.pem")
        );
        assert_eq!(resolve(base, Path::new("/abs.pem")), Path::new("/abs.pem"));
    }
}
