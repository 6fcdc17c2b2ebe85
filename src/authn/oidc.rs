//! Browser sign-in: OpenID Connect authorization code flow with PKCE (`auth.oidc`).
//!
//! Where it sits: before authentication on the request path. datagate answers three
//! things itself, never forwarding them:
//! - a browser request without credentials (a `GET`/`HEAD` that accepts `text/html`, or
//!   any request under `browser_paths`) → [`BrowserLogin::start`]: `302` to the IdP's
//!   authorization endpoint with `state`, `nonce` and an S256 `code_challenge`; the three
//!   secrets and the page to return to travel in a short-lived encrypted cookie, so any
//!   replica can finish the login. API clients keep getting `401` JSON.
//! - `redirect_path` (the callback) → [`BrowserLogin::callback`]: `state` must match the
//!   cookie's, the code is exchanged at the token endpoint (client secret + PKCE
//!   verifier), the ID token is verified with the IdP's JWKS (signature, `iss`, `aud` =
//!   client id, `exp`, `nonce`, `azp`), and its claims become the session cookie
//!   (`session.rs`). Then `302` back to the page the browser asked for.
//! - `logout_path` → [`BrowserLogin::logout`]: the session cookie is cleared, and the
//!   browser is sent to the IdP's `end_session_endpoint` when it has one.
//!
//! The callback's token request is the only network call here (on the request path by
//! nature: the browser waits for it); it is bounded by `jwks_refresh.fetch_timeout`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::error::AuthnError;
use super::fetch::IdpClient;
use super::keys::EnvLookup;
use super::remote::ProviderMetadata;
use super::session::{CookieSealer, Session};

/// How long a started login may take before its callback is refused.
pub const LOGIN_TIMEOUT_SECONDS: u64 = 600;

/// `auth.oidc`: browser sign-in. Needs `auth.jwt.issuer` with `discovery: true` (the
/// endpoints and the keys come from the provider's metadata).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub client_id: String,
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// How browsers reach datagate (`https://data.example.com`); the redirect URI is
    /// this plus `redirect_path`, and the same-origin check compares against it.
    pub public_url: String,
    #[serde(default = "default_redirect_path")]
    pub redirect_path: String,
    #[serde(default = "default_logout_path")]
    pub logout_path: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Paths (prefixes) where a request without credentials is always sent to sign in,
    /// whatever its `Accept` says.
    #[serde(default)]
    pub browser_paths: Vec<String>,
    pub session: SessionConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// One base64 key of 64 bytes per line; the first seals, all open (rotation).
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
    /// The same, from an environment variable (lines separated by newlines or spaces).
    #[serde(default)]
    pub keys_env: Option<String>,
    /// A session ends this long after sign-in (and never after the ID token's own
    /// lifetime would allow a refresh... the session does not outlive this bound).
    #[serde(
        default = "default_session_lifetime",
        with = "crate::config::duration_text"
    )]
    pub lifetime: Duration,
    /// Default `__Host-datagate-session` over https, `datagate-session` over http.
    #[serde(default)]
    pub cookie_name: Option<String>,
}

fn default_redirect_path() -> String {
    "/oauth2/callback".into()
}
fn default_logout_path() -> String {
    "/oauth2/logout".into()
}
fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email"].map(String::from).to_vec()
}
fn default_session_lifetime() -> Duration {
    Duration::from_secs(8 * 3600)
}

/// A response datagate answers by itself (the proxy renders it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl SyntheticResponse {
    fn redirect(location: String, cookies: Vec<String>) -> SyntheticResponse {
        let mut headers = vec![
            ("location", location),
            ("cache-control", "no-store".to_string()),
            ("content-type", "text/plain; charset=utf-8".to_string()),
        ];
        headers.extend(cookies.into_iter().map(|cookie| ("set-cookie", cookie)));
        SyntheticResponse {
            status: 302,
            headers,
            body: Vec::new(),
        }
    }
}

/// Which of datagate's own browser endpoints a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowserEndpoint {
    Callback,
    Logout,
}

/// What the login cookie carries between the redirect and the callback.
#[derive(Debug, Serialize, Deserialize)]
struct PendingLogin {
    state: String,
    nonce: String,
    verifier: String,
    return_to: String,
    expires_at: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
}

pub struct BrowserLogin {
    config: OidcConfig,
    client_secret: String,
    sealer: CookieSealer,
    session_cookie: String,
    login_cookie: String,
    /// `scheme://host[:port]` of `public_url`.
    public_origin: String,
    redirect_uri: String,
    client: IdpClient,
}

impl std::fmt::Debug for BrowserLogin {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BrowserLogin")
            .field("client_id", &self.config.client_id)
            .field("public_origin", &self.public_origin)
            .finish_non_exhaustive()
    }
}

impl BrowserLogin {
    pub(crate) fn new(
        config: &OidcConfig,
        fetch_timeout: Duration,
        ca_file: Option<&Path>,
        base_dir: &Path,
        env: EnvLookup<'_>,
    ) -> Result<BrowserLogin, AuthnError> {
        if config.client_id.trim().is_empty() {
            return Err(AuthnError::config(
                "auth.oidc.client_id",
                "must not be empty",
            ));
        }
        let client_secret = read_secret(
            config.client_secret_env.as_deref(),
            config.client_secret_file.as_deref(),
            base_dir,
            env,
            "auth.oidc.client_secret",
        )?;
        let public_url = url::Url::parse(&config.public_url).map_err(|error| {
            AuthnError::config("auth.oidc.public_url", format!("not a URL: {error}"))
        })?;
        let secure = match public_url.scheme() {
            "https" => true,
            "http" => false,
            other => {
                return Err(AuthnError::config(
                    "auth.oidc.public_url",
                    format!("scheme `{other}` is not http(s)"),
                ));
            }
        };
        let public_origin = public_url.origin().ascii_serialization();
        for (key, path) in [
            ("auth.oidc.redirect_path", &config.redirect_path),
            ("auth.oidc.logout_path", &config.logout_path),
        ] {
            if !path.starts_with('/') || path.contains(['?', '#']) {
                return Err(AuthnError::config(
                    key,
                    format!("`{path}` must be a path starting with `/`"),
                ));
            }
        }
        if !config.scopes.iter().any(|scope| scope == "openid") {
            return Err(AuthnError::config(
                "auth.oidc.scopes",
                "must include `openid`",
            ));
        }
        let keys = read_secret(
            config.session.keys_env.as_deref(),
            config.session.keys_file.as_deref(),
            base_dir,
            env,
            "auth.oidc.session.keys",
        )?
        .replace(' ', "\n");
        let sealer = CookieSealer::from_key_lines(&keys, secure, "auth.oidc.session.keys")?;
        if config.session.lifetime.is_zero() {
            return Err(AuthnError::config(
                "auth.oidc.session.lifetime",
                "must be greater than zero",
            ));
        }
        let session_cookie = config.session.cookie_name.clone().unwrap_or_else(|| {
            if secure {
                "__Host-datagate-session".into()
            } else {
                "datagate-session".into()
            }
        });
        let login_cookie = if secure {
            "__Host-datagate-login".to_string()
        } else {
            "datagate-login".to_string()
        };
        // The callback runs on whichever proxy thread took the request; no pooled
        // connection is kept tied to one thread's runtime.
        let client = IdpClient::new(fetch_timeout, false, ca_file)
            .map_err(|problem| AuthnError::config("auth.jwt.ca_file", problem))?;
        Ok(BrowserLogin {
            redirect_uri: format!(
                "{}{}",
                config.public_url.trim_end_matches('/'),
                config.redirect_path
            ),
            config: config.clone(),
            client_secret,
            sealer,
            session_cookie,
            login_cookie,
            public_origin,
            client,
        })
    }

    pub fn session_cookie_name(&self) -> &str {
        &self.session_cookie
    }

    pub(crate) fn own_cookies(&self) -> Vec<String> {
        vec![self.session_cookie.clone(), self.login_cookie.clone()]
    }

    pub fn public_origin(&self) -> &str {
        &self.public_origin
    }

    pub fn endpoint(&self, path: &str) -> Option<BrowserEndpoint> {
        if path == self.config.redirect_path {
            Some(BrowserEndpoint::Callback)
        } else if path == self.config.logout_path {
            Some(BrowserEndpoint::Logout)
        } else {
            None
        }
    }

    /// Whether a request refused for lack of credentials should be sent to sign in.
    pub fn wants_sign_in(&self, method: &str, path: &str, accept: Option<&str>) -> bool {
        if self
            .config
            .browser_paths
            .iter()
            .any(|prefix| path.starts_with(prefix.as_str()))
        {
            return true;
        }
        matches!(method, "GET" | "HEAD")
            && accept.is_some_and(|accept| {
                accept
                    .split(',')
                    .any(|item| item.trim().to_ascii_lowercase().starts_with("text/html"))
            })
    }

    /// The redirect to the IdP, remembering `return_to` (path and query of the request).
    pub fn start(
        &self,
        metadata: &ProviderMetadata,
        return_to: &str,
        now: u64,
    ) -> Result<SyntheticResponse, AuthnError> {
        let endpoint = metadata.authorization_endpoint.as_deref().ok_or_else(|| {
            AuthnError::Login("the provider has no authorization endpoint".into())
        })?;
        let mut location = super::config::check_fetch_url(endpoint)
            .map_err(|problem| AuthnError::Login(format!("authorization endpoint {problem}")))?;
        let pending = PendingLogin {
            state: random_token()?,
            nonce: random_token()?,
            verifier: random_token()?,
            return_to: safe_return_to(return_to),
            expires_at: now + LOGIN_TIMEOUT_SECONDS,
        };
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(pending.verifier.as_bytes()));
        location
            .query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &self.config.scopes.join(" "))
            .append_pair("state", &pending.state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let pending = serde_json::to_string(&pending).map_err(|_| AuthnError::SessionInvalid)?;
        let cookie = self
            .sealer
            .seal(&self.login_cookie, &pending, LOGIN_TIMEOUT_SECONDS)?;
        Ok(SyntheticResponse::redirect(
            location.to_string(),
            vec![cookie],
        ))
    }

    /// Finishes a login: checks `state`, redeems the code, verifies the ID token with
    /// `verify_id_token` (signature, issuer, audience, expiry) and its nonce, and sets
    /// the session cookie.
    pub async fn callback(
        &self,
        metadata: &ProviderMetadata,
        query: Option<&str>,
        login_cookie: Option<&str>,
        verify_id_token: &(dyn Fn(&str, &str) -> Result<Value, AuthnError> + Sync),
        now: u64,
    ) -> Result<SyntheticResponse, AuthnError> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        let single = |name: &str| -> Result<Option<&str>, AuthnError> {
            let mut values = pairs.iter().filter(|(key, _)| key == name);
            let first = values.next().map(|(_, value)| value.as_str());
            if values.next().is_some() {
                return Err(AuthnError::Login(format!("`{name}` is given twice")));
            }
            Ok(first)
        };
        if let Some(error) = single("error")? {
            return Err(AuthnError::Login(format!(
                "the identity provider answered `{}`",
                error.chars().take(64).collect::<String>()
            )));
        }
        let pending: PendingLogin = login_cookie
            .and_then(|sealed| self.sealer.open(&self.login_cookie, sealed))
            .and_then(|json| serde_json::from_str(&json).ok())
            .ok_or_else(|| AuthnError::Login("no sign-in is in progress in this browser".into()))?;
        if now >= pending.expires_at {
            return Err(AuthnError::Login(
                "the sign-in took too long; start again".into(),
            ));
        }
        let state = single("state")?.unwrap_or_default();
        if !constant_time_eq(state.as_bytes(), pending.state.as_bytes()) {
            return Err(AuthnError::Login(
                "`state` does not match this browser's sign-in".into(),
            ));
        }
        let code = single("code")?
            .filter(|code| !code.is_empty())
            .ok_or_else(|| AuthnError::Login("no authorization code".into()))?;
        let token_endpoint = metadata
            .token_endpoint
            .as_deref()
            .ok_or_else(|| AuthnError::Login("the provider has no token endpoint".into()))?;
        let token_endpoint = super::config::check_fetch_url(token_endpoint)
            .map_err(|problem| AuthnError::Login(format!("token endpoint {problem}")))?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("code_verifier", &pending.verifier)
            .finish();
        // RFC 6749 §2.3.1: client_secret_basic with form-encoded id and secret.
        let encode =
            |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            encode(&self.config.client_id),
            encode(&self.client_secret)
        ));
        let response = self
            .client
            .post_form(&token_endpoint, &format!("Basic {credentials}"), form)
            .await
            .map_err(|error| AuthnError::Login(error.to_string()))?;
        if response.status != 200 {
            return Err(AuthnError::Login(format!(
                "the token endpoint answered HTTP {}",
                response.status
            )));
        }
        let body = response.body;
        let tokens: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| AuthnError::Login("the token response is not JSON".into()))?;
        let id_token = tokens
            .id_token
            .ok_or_else(|| AuthnError::Login("the token response has no id_token".into()))?;
        let claims = verify_id_token(&id_token, &self.config.client_id)?;
        let Value::Object(mut claims) = claims else {
            return Err(AuthnError::Login(
                "the ID token claims are not an object".into(),
            ));
        };
        match claims.get("nonce") {
            Some(Value::String(nonce))
                if constant_time_eq(nonce.as_bytes(), pending.nonce.as_bytes()) => {}
            _ => {
                return Err(AuthnError::Login(
                    "the ID token's nonce does not match".into(),
                ));
            }
        }
        // Protocol claims mean nothing once the session exists; dropping them keeps the
        // cookie small.
        for protocol in ["nonce", "at_hash", "c_hash", "s_hash", "sid", "jti"] {
            claims.remove(protocol);
        }
        let session = Session {
            claims,
            expires_at: now + self.config.session.lifetime.as_secs(),
        };
        let session_cookie = self.sealer.seal_session(
            &self.session_cookie,
            &session,
            self.config.session.lifetime.as_secs(),
        )?;
        Ok(SyntheticResponse::redirect(
            pending.return_to,
            vec![session_cookie, self.sealer.clear(&self.login_cookie)],
        ))
    }

    /// Clears the session; on to the IdP's logout when it has one.
    pub fn logout(&self, metadata: Option<&ProviderMetadata>) -> SyntheticResponse {
        let location = metadata
            .and_then(|metadata| metadata.end_session_endpoint.as_deref())
            .and_then(|endpoint| super::config::check_fetch_url(endpoint).ok())
            .map(|mut endpoint| {
                endpoint
                    .query_pairs_mut()
                    .append_pair("client_id", &self.config.client_id)
                    .append_pair(
                        "post_logout_redirect_uri",
                        &format!("{}/", self.config.public_url.trim_end_matches('/')),
                    );
                endpoint.to_string()
            })
            .unwrap_or_else(|| "/".to_string());
        SyntheticResponse::redirect(
            location,
            vec![
                self.sealer.clear(&self.session_cookie),
                self.sealer.clear(&self.login_cookie),
            ],
        )
    }

    /// The session's claims, when the cookie opens and has not expired.
    pub fn open_session(&self, sealed: &str, now: u64) -> Result<Map<String, Value>, AuthnError> {
        self.sealer
            .open_session(&self.session_cookie, sealed, now)
            .map(|session| session.claims)
    }

    pub(crate) fn login_cookie_name(&self) -> &str {
        &self.login_cookie
    }
}

/// Only a local path may be returned to after sign-in (`//host` and `/\host` are other
/// sites to a browser): anything else returns to `/`.
fn safe_return_to(requested: &str) -> String {
    let local = requested.starts_with('/')
        && !requested.starts_with("//")
        && !requested.starts_with("/\\")
        && !requested.chars().any(|char| char.is_control());
    if local {
        requested.to_string()
    } else {
        "/".to_string()
    }
}

fn random_token() -> Result<String, AuthnError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| AuthnError::Login("no randomness available".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

fn read_secret(
    env_name: Option<&str>,
    file: Option<&Path>,
    base_dir: &Path,
    env: EnvLookup<'_>,
    config_key: &str,
) -> Result<String, AuthnError> {
    match (env_name, file) {
        (Some(name), None) => env(name).ok_or_else(|| {
            AuthnError::config(
                format!("{config_key}_env"),
                format!("environment variable `{name}` is not set or not UTF-8"),
            )
        }),
        (None, Some(file)) => {
            let path = if file.is_absolute() {
                file.to_path_buf()
            } else {
                base_dir.join(file)
            };
            std::fs::read_to_string(&path)
                .map(|text| text.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|error| {
                    AuthnError::config(
                        format!("{config_key}_file"),
                        format!("cannot read `{}`: {}", path.display(), error.kind()),
                    )
                })
        }
        _ => Err(AuthnError::config(
            config_key,
            "set exactly one of the `_env` and `_file` forms",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_returned_to() {
        assert_eq!(safe_return_to("/dashboards?x=1"), "/dashboards?x=1");
        for hostile in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "",
            "/a\nb",
        ] {
            assert_eq!(safe_return_to(hostile), "/", "{hostile:?}");
        }
    }

    #[test]
    fn browsers_are_recognised_by_accept_or_path() {
        let config: OidcConfig = serde_yaml::from_str(
            "client_id: c\nclient_secret_env: S\npublic_url: https://d.example\nbrowser_paths: [/superset/]\nsession: {keys_env: K}\n",
        )
        .unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let env = |name: &str| match name {
            "S" => Some("secret".to_string()),
            "K" => Some(key.clone()),
            _ => None,
        };
        let login =
            BrowserLogin::new(&config, Duration::from_secs(1), None, Path::new("."), &env).unwrap();
        assert!(login.wants_sign_in("GET", "/x", Some("text/html,application/xhtml+xml")));
        assert!(!login.wants_sign_in("GET", "/x", Some("application/json")));
        assert!(!login.wants_sign_in("POST", "/x", Some("text/html")));
        assert!(login.wants_sign_in("POST", "/superset/welcome", None));
        assert_eq!(login.session_cookie_name(), "__Host-datagate-session");
        assert_eq!(
            login.endpoint("/oauth2/callback"),
            Some(BrowserEndpoint::Callback)
        );
        assert_eq!(login.public_origin(), "https://d.example");
    }

    #[test]
    fn the_redirect_carries_pkce_state_and_nonce_and_seals_them() {
        let config: OidcConfig = serde_yaml::from_str(
            "client_id: c\nclient_secret_env: S\npublic_url: http://127.0.0.1:9\nsession: {keys_env: K}\n",
        )
        .unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let env = |name: &str| match name {
            "S" => Some("secret".to_string()),
            "K" => Some(key.clone()),
            _ => None,
        };
        let login =
            BrowserLogin::new(&config, Duration::from_secs(1), None, Path::new("."), &env).unwrap();
        let metadata = ProviderMetadata {
            issuer: "https://idp.example".into(),
            jwks_uri: "https://idp.example/jwks".into(),
            authorization_endpoint: Some("https://idp.example/auth".into()),
            token_endpoint: None,
            end_session_endpoint: None,
        };
        let response = login.start(&metadata, "/page?a=1", 1000).unwrap();
        assert_eq!(response.status, 302);
        let location = &response
            .headers
            .iter()
            .find(|(name, _)| *name == "location")
            .unwrap()
            .1;
        let url = url::Url::parse(location).unwrap();
        let pairs: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs["code_challenge_method"], "S256");
        assert_eq!(pairs["redirect_uri"], "http://127.0.0.1:9/oauth2/callback");
        assert_eq!(pairs["client_id"], "c");
        assert!(pairs["state"].len() >= 43 && pairs["nonce"].len() >= 43);
        let cookie = &response
            .headers
            .iter()
            .find(|(name, _)| *name == "set-cookie")
            .unwrap()
            .1;
        assert!(cookie.starts_with("datagate-login="), "{cookie}");
        assert!(
            !cookie.contains(&pairs["state"]),
            "the state is sealed, not readable"
        );
    }
}
