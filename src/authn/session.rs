//! Browser sessions: the verified claims of an OpenID Connect login, held in a cookie that
//! is encrypted and authenticated with AES-256-GCM (ring's AEAD; a fresh random 96-bit
//! nonce per cookie, sent with it; the cookie's name is the associated data, so a value
//! cannot be moved to another cookie either). Any change to a cookie fails its tag.
//!
//! Where it sits: the login callback (`oidc.rs`) seals a [`Session`] after verifying the
//! ID token; on every later request the authenticator opens it — one decryption, no
//! identity-provider round trip — and maps the claims to a principal like a JWT's.
//!
//! Key rotation: `session.keys_file` holds one base64 key (32 bytes) per line. The first
//! seals; every line opens, so sessions sealed with the previous key keep working while
//! they live, and removing a line ends them. Lifetime is bounded twice: the cookie's
//! `Max-Age` and the `exp` sealed inside (the browser's word is not taken for it).

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::AuthnError;

/// AES-256-GCM keys are 32 bytes (`openssl rand -base64 32`).
pub const SESSION_KEY_BYTES: usize = 32;
/// Browsers limit a cookie to about 4 KiB; a session that would not fit is refused at
/// login rather than silently dropped by the browser.
pub const MAX_COOKIE_BYTES: usize = 4000;

/// What a session cookie holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The ID token's claims, as verified at login.
    pub claims: Map<String, Value>,
    /// Unix seconds; the session is refused after this whatever the cookie says.
    pub expires_at: u64,
}

/// Seals and opens session cookies (and other private cookies of the login flow).
pub struct CookieSealer {
    /// `keys[0]` seals; all of them open.
    keys: Vec<LessSafeKey>,
    secure: bool,
}

impl std::fmt::Debug for CookieSealer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CookieSealer")
            .field("keys", &self.keys.len())
            .field("secure", &self.secure)
            .finish()
    }
}

impl CookieSealer {
    /// `text`: base64 keys, one per line, current first. `config_key` names the setting.
    pub fn from_key_lines(text: &str, secure: bool, config_key: &str) -> Result<Self, AuthnError> {
        let mut keys = Vec::new();
        for (index, line) in text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .enumerate()
        {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(line)
                .map_err(|_| {
                    AuthnError::config(config_key, format!("key {} is not base64", index + 1))
                })?;
            if bytes.len() != SESSION_KEY_BYTES {
                return Err(AuthnError::config(
                    config_key,
                    format!(
                        "key {} has {} bytes; session keys have {SESSION_KEY_BYTES} (openssl rand -base64 32)",
                        index + 1,
                        bytes.len()
                    ),
                ));
            }
            let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| {
                AuthnError::config(config_key, format!("key {} is not usable", index + 1))
            })?;
            keys.push(LessSafeKey::new(key));
        }
        if keys.is_empty() {
            return Err(AuthnError::config(
                config_key,
                "holds no key; write one base64 key per line (openssl rand -base64 32)",
            ));
        }
        Ok(CookieSealer { keys, secure })
    }

    /// A `Set-Cookie` value carrying `value` encrypted under the current key.
    pub fn seal(
        &self,
        name: &str,
        value: &str,
        max_age_seconds: u64,
    ) -> Result<String, AuthnError> {
        let key = self.keys.first().ok_or(AuthnError::SessionInvalid)?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| AuthnError::SessionInvalid)?;
        let mut sealed = value.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| AuthnError::SessionInvalid)?;
        let mut wire = nonce.to_vec();
        wire.extend_from_slice(&sealed);
        let rendered = self.set_cookie(
            name,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(wire),
            max_age_seconds,
        );
        if rendered.len() > MAX_COOKIE_BYTES {
            return Err(AuthnError::SessionTooLarge);
        }
        Ok(rendered)
    }

    /// The plaintext of a sealed cookie value, trying every key; `None` when no key opens
    /// it (tampered, truncated, sealed under a removed key, or moved from another name).
    pub fn open(&self, name: &str, sealed_value: &str) -> Option<String> {
        let wire = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sealed_value)
            .ok()?;
        if wire.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = wire.split_at(NONCE_LEN);
        self.keys.iter().find_map(|key| {
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut buffer = sealed.to_vec();
            let plaintext = key
                .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buffer)
                .ok()?;
            String::from_utf8(plaintext.to_vec()).ok()
        })
    }

    /// A `Set-Cookie` value that deletes the cookie.
    pub fn clear(&self, name: &str) -> String {
        self.set_cookie(name, "", 0)
    }

    fn set_cookie(&self, name: &str, value: &str, max_age_seconds: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{name}={value}; Path=/; Max-Age={max_age_seconds}; HttpOnly; SameSite=Lax{secure}")
    }

    /// Seals a session.
    pub fn seal_session(
        &self,
        name: &str,
        session: &Session,
        max_age_seconds: u64,
    ) -> Result<String, AuthnError> {
        let json = serde_json::to_string(session).map_err(|_| AuthnError::SessionInvalid)?;
        self.seal(name, &json, max_age_seconds)
    }

    /// Opens a session cookie: it must decrypt under a configured key and not have
    /// expired (`now` in unix seconds).
    pub fn open_session(
        &self,
        name: &str,
        sealed_value: &str,
        now: u64,
    ) -> Result<Session, AuthnError> {
        let json = self
            .open(name, sealed_value)
            .ok_or(AuthnError::SessionInvalid)?;
        let session: Session =
            serde_json::from_str(&json).map_err(|_| AuthnError::SessionInvalid)?;
        if now >= session.expires_at {
            return Err(AuthnError::SessionExpired);
        }
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_line(byte: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([byte; SESSION_KEY_BYTES])
    }

    fn sealed_value(set_cookie: &str) -> String {
        let pair = set_cookie.split(';').next().unwrap();
        pair.split_once('=').unwrap().1.to_string()
    }

    fn session(expires_at: u64) -> Session {
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::from("alice"));
        Session { claims, expires_at }
    }

    #[test]
    fn a_sealed_session_opens_and_its_cookie_is_locked_down() {
        let sealer = CookieSealer::from_key_lines(&key_line(1), true, "k").unwrap();
        let set_cookie = sealer.seal_session("s", &session(200), 3600).unwrap();
        for attribute in [
            "HttpOnly",
            "Secure",
            "SameSite=Lax",
            "Path=/",
            "Max-Age=3600",
        ] {
            assert!(set_cookie.contains(attribute), "{set_cookie}");
        }
        assert!(
            !set_cookie.contains("alice"),
            "the claims are encrypted: {set_cookie}"
        );
        let opened = sealer
            .open_session("s", &sealed_value(&set_cookie), 100)
            .unwrap();
        assert_eq!(opened, session(200));
    }

    #[test]
    fn tampered_moved_expired_and_foreign_sessions_are_refused() {
        let sealer = CookieSealer::from_key_lines(&key_line(1), true, "k").unwrap();
        let value = sealed_value(&sealer.seal_session("s", &session(200), 3600).unwrap());
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&value)
            .unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(
            sealer.open_session("s", &tampered, 100),
            Err(AuthnError::SessionInvalid)
        );
        assert_eq!(
            sealer.open_session("other", &value, 100),
            Err(AuthnError::SessionInvalid)
        );
        assert_eq!(
            sealer.open_session("s", &value, 200),
            Err(AuthnError::SessionExpired)
        );
        let stranger = CookieSealer::from_key_lines(&key_line(2), true, "k").unwrap();
        assert_eq!(
            stranger.open_session("s", &value, 100),
            Err(AuthnError::SessionInvalid)
        );
    }

    #[test]
    fn previous_keys_open_and_only_the_current_key_seals() {
        let old = CookieSealer::from_key_lines(&key_line(1), true, "k").unwrap();
        let old_value = sealed_value(&old.seal_session("s", &session(200), 60).unwrap());
        let rotated =
            CookieSealer::from_key_lines(&format!("{}\n{}\n", key_line(2), key_line(1)), true, "k")
                .unwrap();
        assert!(rotated.open_session("s", &old_value, 100).is_ok());
        let new_value = sealed_value(&rotated.seal_session("s", &session(200), 60).unwrap());
        assert!(old.open_session("s", &new_value, 100).is_err());
        let retired = CookieSealer::from_key_lines(&key_line(2), true, "k").unwrap();
        assert!(retired.open_session("s", &old_value, 100).is_err());
    }

    #[test]
    fn short_and_missing_keys_are_config_errors() {
        let long = base64::engine::general_purpose::STANDARD.encode([1u8; 64]);
        for text in [
            "",
            "# only a comment\n",
            "c2hvcnQ=",
            "not base64!",
            long.as_str(),
        ] {
            assert!(
                CookieSealer::from_key_lines(text, true, "k")
                    .unwrap_err()
                    .is_config_error(),
                "{text}"
            );
        }
    }

    #[test]
    fn clearing_expires_the_cookie() {
        let sealer = CookieSealer::from_key_lines(&key_line(1), false, "k").unwrap();
        let cleared = sealer.clear("s");
        assert!(cleared.starts_with("s="), "{cleared}");
        assert!(cleared.contains("Max-Age=0"), "{cleared}");
        assert!(!cleared.contains("Secure"), "{cleared}");
    }
}
