//! Identity against a real OpenID Connect provider: panva's certified `oidc-provider`, run
//! by Node on loopback (tests/compat/oidc/provider.mjs, installed by its install.sh), in
//! front of the demo upstream. Tokens are issued by the provider itself (client
//! credentials grant, JWT access tokens signed with its published keys).
//!
//! Covered: discovery, JWKS rotation (a new key is accepted through the kid-miss refetch,
//! a removed key is refused after one refresh), kid-miss rate limiting (counted as the
//! provider's JWKS hits), `Cache-Control: max-age`, and the provider going down (the last
//! good keys keep serving, then tokens are refused and `/readyz` says why; recovery).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::gateway::{Gateway, GatewayOptions, repository_root};
use support::{ChildProcess, recorded_requests, spawn_upstream};

const CLIENT_SECRET: &str = "datagate-test-client-secret-0123456789";

const ROUTES: &str = r#"
unmatched: deny
table:
  - name: chart-read
    methods: [GET]
    path: /api/v1/chart/{pk}
    permissions:
      any_of: ["can_read on Chart"]
"#;

/// The provider's client-credentials tokens name the client (`datagate`) as `sub`.
const GRANTS: &str = "p, user:datagate, Chart, can_read\n";

fn provider_dir() -> PathBuf {
    repository_root().join("tests/compat/oidc")
}

/// The oidc-provider process and its control endpoints.
struct Provider {
    process: ChildProcess,
    state: tempfile::TempDir,
    port: u16,
    redirect_uri: String,
}

impl Provider {
    fn start(redirect_uri: &str) -> Provider {
        let state = tempfile::tempdir().unwrap();
        let (process, port) = spawn_provider(state.path(), 0, redirect_uri);
        Provider {
            process,
            state,
            port,
            redirect_uri: redirect_uri.to_string(),
        }
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer())
    }

    fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts again on the same port with the same keys.
    fn restart(&mut self) {
        self.process.kill();
        let (process, _) = spawn_provider(self.state.path(), self.port, &self.redirect_uri);
        self.process = process;
    }

    fn jwks_hits(&self) -> u64 {
        let body: Value = ureq::get(&self.url("/__test/jwks_hits"))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        body["hits"].as_u64().unwrap()
    }

    /// Publishes exactly these keys; the first one signs new tokens.
    fn publish_keys(&self, kids: &[&str]) {
        ureq::post(&self.url("/__test/keys"))
            .send_json(json!({ "kids": kids }))
            .unwrap();
    }

    fn set_cache_control(&self, value: &str) {
        ureq::post(&self.url("/__test/cache_control"))
            .send_json(json!({ "value": value }))
            .unwrap();
    }

    /// A JWT access token from the provider's token endpoint (client credentials).
    fn access_token(&self) -> String {
        let response: Value = ureq::post(&self.url("/token"))
            .set(
                "Authorization",
                &format!(
                    "Basic {}",
                    base64_encode(format!("datagate:{CLIENT_SECRET}").as_bytes())
                ),
            )
            .send_form(&[
                ("grant_type", "client_credentials"),
                ("scope", "api"),
                ("resource", "urn:datagate"),
            ])
            .unwrap()
            .into_json()
            .unwrap();
        response["access_token"].as_str().unwrap().to_string()
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn spawn_provider(state: &Path, port: u16, redirect_uri: &str) -> (ChildProcess, u16) {
    let mut child = Command::new("node")
        .arg(provider_dir().join("provider.mjs"))
        .args(["--port", &port.to_string()])
        .arg("--state")
        .arg(state)
        .args(["--redirect-uri", redirect_uri])
        .args(["--client-secret", CLIENT_SECRET])
        .current_dir(provider_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs tests/compat/oidc/provider.mjs (run tests/compat/oidc/install.sh)");
    let stdout = child.stdout.take().unwrap();
    let process = ChildProcess::new(child);
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the OIDC provider exited before listening"
        );
        if let Some(address) = line.trim().strip_prefix("listening on http://") {
            let address: SocketAddr = address.parse().unwrap();
            return (process, address.port());
        }
    }
}

/// datagate with the provider as its only source of keys.
fn start_gateway(provider: &Provider, jwt_extra: &str) -> (ChildProcess, SocketAddr, Gateway) {
    let (upstream_process, upstream) = spawn_upstream(&[]);
    let mut options = GatewayOptions::new(upstream);
    options.routes_yaml = Some(ROUTES.to_string());
    options.policy_files = Some(vec![("10-grants.csv".to_string(), GRANTS.to_string())]);
    options.auth_yaml = Some(format!(
        "jwt:\n  issuer: {issuer}\n  discovery: true\n  audience: [urn:datagate]\n  leeway_seconds: 0\n{jwt_extra}",
        issuer = provider.issuer()
    ));
    (upstream_process, upstream, Gateway::start(options))
}

fn status_with(gateway: &Gateway, token: &str) -> (u16, Value) {
    support::call("GET", &gateway.url("/api/v1/chart/1"), Some(token), None)
}

fn readyz(gateway: &Gateway) -> (u16, Value) {
    support::call("GET", &gateway.admin_url("/readyz"), None, None)
}

fn fetches(gateway: &Gateway, result: &str) -> f64 {
    ["startup", "scheduled", "kid_miss"]
        .iter()
        .map(|trigger| {
            gateway.metric_with(
                "datagate_jwks_fetches_total",
                &[
                    &format!("trigger=\"{trigger}\""),
                    &format!("result=\"{result}\""),
                ],
            )
        })
        .sum()
}

/// A token with a made-up kid: never verifiable, so it is all cost to the verifier.
fn token_with_kid(kid: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_string());
    let claims = json!({"sub": "mallory", "exp": jsonwebtoken::get_current_timestamp() + 600});
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"not-a-key-the-idp-has-0123456789"),
    )
    .unwrap()
}

#[test]
fn discovery_finds_the_jwks_and_the_providers_tokens_are_accepted() {
    let provider = Provider::start("http://127.0.0.1:1/oauth2/callback");
    let (_upstream_process, upstream, gateway) = start_gateway(&provider, "");
    let (status, body) = readyz(&gateway);
    assert_eq!(status, 200, "{body}");
    let token = provider.access_token();
    let (status, body) = status_with(&gateway, &token);
    assert_eq!(status, 200, "{body}");
    let seen = recorded_requests(upstream);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header_values("x-datagate-user"), vec!["datagate"]);
    // A token for another audience, and one signed by nobody the provider knows.
    let forged = token_with_kid("key-1");
    assert_eq!(status_with(&gateway, &forged).0, 401);
    assert_eq!(
        recorded_requests(upstream).len(),
        1,
        "refusals reach nobody"
    );
    assert!(fetches(&gateway, "updated") >= 1.0);
    assert_eq!(gateway.metric("datagate_jwks_keys"), 1.0);
}

#[test]
fn a_rotated_in_key_is_fetched_on_first_use_and_a_removed_key_stops_within_one_refresh() {
    let provider = Provider::start("http://127.0.0.1:1/oauth2/callback");
    let (_upstream_process, upstream, gateway) = start_gateway(
        &provider,
        "  jwks_refresh: {interval: 1s, min_interval: 1s, max_interval: 1s, max_stale: 1h, kid_miss_min_interval: 1s}\n",
    );
    let old_token = provider.access_token();
    assert_eq!(status_with(&gateway, &old_token).0, 200);

    // The IdP starts signing with a new key (publishing both).
    provider.publish_keys(&["key-2", "key-1"]);
    let new_token = provider.access_token();
    let header = jsonwebtoken::decode_header(&new_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some("key-2"));
    let (status, body) = status_with(&gateway, &new_token);
    assert_eq!(status, 200, "a new key is accepted at once: {body}");
    assert_eq!(status_with(&gateway, &old_token).0, 200);

    // The IdP retires the old key: after the next refresh its tokens are refused (the
    // verified-token cache included).
    provider.publish_keys(&["key-2"]);
    let before = fetches(&gateway, "updated");
    assert!(Gateway::eventually(Duration::from_secs(10), || fetches(
        &gateway, "updated"
    ) > before));
    let (status, body) = status_with(&gateway, &old_token);
    assert_eq!(status, 401, "{body}");
    assert_eq!(status_with(&gateway, &new_token).0, 200);
    assert_eq!(recorded_requests(upstream).len(), 4);
}

#[test]
fn a_flood_of_unknown_kids_costs_the_provider_one_fetch_per_interval() {
    let provider = Provider::start("http://127.0.0.1:1/oauth2/callback");
    let (_upstream_process, upstream, gateway) =
        start_gateway(&provider, "  jwks_refresh: {kid_miss_min_interval: 1h}\n");
    let hits_before = provider.jwks_hits();
    for index in 0..40 {
        let (status, _) = status_with(&gateway, &token_with_kid(&format!("random-{index}")));
        assert_eq!(status, 401);
    }
    let hits = provider.jwks_hits() - hits_before;
    assert!(hits <= 1, "{hits} JWKS fetches for 40 unknown kids");
    assert_eq!(
        gateway.metric_with(
            "datagate_jwks_kid_misses_total",
            &["result=\"rate_limited\""]
        ),
        (40 - hits) as f64
    );
    assert!(recorded_requests(upstream).is_empty());
    // The real token still works: its kid is known, no fetch needed.
    assert_eq!(status_with(&gateway, &provider.access_token()).0, 200);
}

#[test]
fn cache_control_max_age_sets_the_refresh_schedule() {
    let provider = Provider::start("http://127.0.0.1:1/oauth2/callback");
    provider.set_cache_control("public, max-age=1");
    // Without max-age the schedule would be an hour.
    let (_upstream_process, _upstream, _gateway) = start_gateway(
        &provider,
        "  jwks_refresh: {interval: 1h, min_interval: 1s, max_interval: 2h, max_stale: 3h}\n",
    );
    let hits = provider.jwks_hits();
    assert!(
        Gateway::eventually(Duration::from_secs(15), || provider.jwks_hits() >= hits + 2),
        "datagate did not refresh on the provider's max-age"
    );
}

#[test]
fn when_the_provider_is_down_the_last_keys_serve_until_max_stale_then_tokens_are_refused() {
    let mut provider = Provider::start("http://127.0.0.1:1/oauth2/callback");
    let (_upstream_process, upstream, gateway) = start_gateway(
        &provider,
        "  jwks_refresh: {interval: 1s, min_interval: 1s, max_interval: 1s, retry_interval: 200ms, max_stale: 6s, fetch_timeout: 1s}\n",
    );
    let token = provider.access_token();
    assert_eq!(status_with(&gateway, &token).0, 200);
    provider.stop();
    assert!(Gateway::eventually(Duration::from_secs(10), || gateway
        .metric_with(
            "datagate_jwks_fetch_failures_total",
            &["reason=\"unreachable\""]
        )
        >= 1.0));
    // The last good key set keeps serving (it is about a second old, max_stale is 6 s)...
    let (status, body) = status_with(&gateway, &token);
    assert_eq!(status, 200, "{body}");
    assert_eq!(readyz(&gateway).0, 200);
    // ...until it is older than max_stale: then tokens are refused, fail closed.
    assert!(Gateway::eventually(
        Duration::from_secs(20),
        || status_with(&gateway, &token).0 == 503
    ));
    let (status, body) = status_with(&gateway, &token);
    assert_eq!(status, 503);
    assert_eq!(body["kind"], "identity_keys_unavailable");
    let (status, body) = readyz(&gateway);
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("max_stale"), "{message}");
    assert!(message.contains("could not be reached"), "{message}");
    assert!(
        !message.contains("127.0.0.1"),
        "no addresses in readyz: {message}"
    );
    let forwarded = recorded_requests(upstream).len();
    assert_eq!(status_with(&gateway, &token).0, 503);
    assert_eq!(
        recorded_requests(upstream).len(),
        forwarded,
        "refused: nothing forwarded"
    );

    // The provider comes back with the same keys: served again, ready again.
    provider.restart();
    assert!(Gateway::eventually(Duration::from_secs(10), || readyz(
        &gateway
    )
    .0 == 200));
    assert_eq!(status_with(&gateway, &token).0, 200);
}

// ---------------------------------------------------------------------------------------
// Browser sign-in: authorization code + PKCE against the same provider.

const BROWSER_ROUTES: &str = r#"
unmatched: deny
table:
  - name: chart-read
    methods: [GET]
    path: /api/v1/chart/{pk}
    permissions:
      any_of: ["can_read on Chart"]
  - name: chart-write
    methods: [POST]
    path: /api/v1/chart/
    permissions:
      any_of: ["can_write on Chart"]
"#;

const BROWSER_GRANTS: &str = "p, user:alice, Chart, can_read\np, user:alice, Chart, can_write\n";
const OIDC_SECRET_ENV: &str = "DG_TEST_OIDC_CLIENT_SECRET";
const SESSION_KEYS_ENV: &str = "DG_TEST_SESSION_KEYS";

fn session_key() -> String {
    base64_encode(&[0x5a; 32])
}

/// A provider whose client redirects to a datagate on a port chosen now, and that
/// datagate with browser sign-in.
fn start_browser_setup(session_lifetime: &str) -> (Provider, ChildProcess, SocketAddr, Gateway) {
    let proxy_port = support::free_port();
    let public_url = format!("http://127.0.0.1:{proxy_port}");
    let provider = Provider::start(&format!("{public_url}/oauth2/callback"));
    ureq::post(&provider.url("/__test/login"))
        .send_json(json!({"account": "alice", "roles": ["Gamma"]}))
        .unwrap();
    let (upstream_process, upstream) = spawn_upstream(&[]);
    let mut options = GatewayOptions::new(upstream);
    options.proxy_port = Some(proxy_port);
    options.routes_yaml = Some(BROWSER_ROUTES.to_string());
    options.policy_files = Some(vec![(
        "10-grants.csv".to_string(),
        BROWSER_GRANTS.to_string(),
    )]);
    options.env = vec![
        (OIDC_SECRET_ENV.to_string(), CLIENT_SECRET.to_string()),
        (SESSION_KEYS_ENV.to_string(), session_key()),
    ];
    options.auth_yaml = Some(format!(
        r#"jwt:
  issuer: {issuer}
  discovery: true
  audience: [urn:datagate]
  leeway_seconds: 0
oidc:
  client_id: datagate
  client_secret_env: {OIDC_SECRET_ENV}
  public_url: {public_url}
  session:
    keys_env: {SESSION_KEYS_ENV}
    lifetime: {session_lifetime}
"#,
        issuer = provider.issuer()
    ));
    let gateway = Gateway::start(options);
    (provider, upstream_process, upstream, gateway)
}

/// A minimal browser: follows redirects and keeps cookies by name (cookies ignore ports,
/// as browsers do for 127.0.0.1), sending `Accept: text/html` like a navigation.
struct CookieBrowser {
    agent: ureq::Agent,
    cookies: std::collections::BTreeMap<String, String>,
}

struct Page {
    status: u16,
    location: Option<String>,
    body: String,
}

impl CookieBrowser {
    fn new() -> CookieBrowser {
        CookieBrowser {
            agent: ureq::AgentBuilder::new().redirects(0).build(),
            cookies: Default::default(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Page {
        let mut request = self
            .agent
            .request(method, url)
            .timeout(Duration::from_secs(15))
            .set("Accept", "text/html,application/xhtml+xml");
        if !self.cookies.is_empty() {
            request = request.set("Cookie", &self.cookie_header());
        }
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let result = match body {
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_string(body),
            None => request.call(),
        };
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("{method} {url}: {error}"),
        };
        for set_cookie in response.all("set-cookie") {
            let pair = set_cookie.split(';').next().unwrap_or_default();
            let (name, value) = pair.split_once('=').unwrap();
            if set_cookie.contains("Max-Age=0") || value.is_empty() {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_string(), value.to_string());
            }
        }
        Page {
            status: response.status(),
            location: response.header("location").map(str::to_string),
            body: response.into_string().unwrap_or_default(),
        }
    }

    /// GETs `url` and follows redirects (relative ones against the current URL).
    fn navigate(&mut self, url: &str) -> Page {
        let mut current = url::Url::parse(url).unwrap();
        for _ in 0..20 {
            let page = self.request("GET", current.as_str(), &[], None);
            match (&page.location, page.status) {
                (Some(location), 301 | 302 | 303 | 307 | 308) => {
                    current = current.join(location).unwrap();
                }
                _ => return page,
            }
        }
        panic!("too many redirects from {url}");
    }
}

fn sign_in(gateway: &Gateway) -> (CookieBrowser, Page) {
    let mut browser = CookieBrowser::new();
    let page = browser.navigate(&gateway.url("/api/v1/chart/7"));
    (browser, page)
}

#[test]
fn a_real_chromium_signs_in_through_the_provider_and_reaches_the_upstream_as_the_user() {
    let (_provider, _upstream_process, upstream, gateway) = start_browser_setup("1h");
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(gateway.url("/api/v1/chart/7"))
        .stderr(Stdio::null())
        .output()
        .expect("chromium runs (tests/compat/oidc/install.sh installs it)");
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(dom.contains("\"x-datagate-user\":[\"alice\"]"), "{dom}");
    let seen = recorded_requests(upstream);
    let chart: Vec<_> = seen
        .iter()
        .filter(|request| request.path == "/api/v1/chart/7")
        .collect();
    assert_eq!(chart.len(), 1, "{seen:?}");
    assert_eq!(chart[0].header_values("x-datagate-user"), vec!["alice"]);
    for cookie in chart[0].header_values("cookie") {
        assert!(
            !cookie.contains("datagate-session"),
            "the session cookie stays at datagate: {cookie}"
        );
    }
}

#[test]
fn sign_in_sessions_tampering_api_clients_csrf_and_logout() {
    let (provider, _upstream_process, upstream, gateway) = start_browser_setup("1h");

    // An API client gets 401 JSON, never a redirect.
    let (status, body) = support::call("GET", &gateway.url("/api/v1/chart/7"), None, None);
    assert_eq!(status, 401, "{body}");

    // A browser is sent to the provider, signs in, and lands on the page it asked for.
    let (mut browser, page) = sign_in(&gateway);
    assert_eq!(page.status, 200, "{}", page.body);
    let echoed: Value = serde_json::from_str(&page.body).unwrap();
    assert_eq!(echoed["x-datagate-user"], json!(["alice"]));
    assert_eq!(echoed["path"], "/api/v1/chart/7");
    let session = browser
        .cookies
        .get("datagate-session")
        .cloned()
        .expect("a session cookie");
    assert!(
        !browser.cookies.contains_key("datagate-login"),
        "the login cookie is cleared"
    );

    // The session holds the verified claims: later requests need no provider at all.
    let hits = provider.jwks_hits();
    let page = browser.request("GET", &gateway.url("/api/v1/chart/8"), &[], None);
    assert_eq!(page.status, 200);
    assert_eq!(provider.jwks_hits(), hits);

    // A tampered cookie is no session: a browser is sent to sign in again, an API
    // client refused; the upstream sees neither.
    let before = recorded_requests(upstream).len();
    let mut tampered = session.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let mut forger = CookieBrowser::new();
    forger
        .cookies
        .insert("datagate-session".into(), tampered.clone());
    let page = forger.request("GET", &gateway.url("/api/v1/chart/7"), &[], None);
    assert_eq!(page.status, 302);
    assert!(page.location.unwrap().starts_with(&provider.url("/auth")));
    let response = ureq::get(&gateway.url("/api/v1/chart/7"))
        .set("Cookie", &format!("datagate-session={tampered}"))
        .call();
    assert!(matches!(response, Err(ureq::Error::Status(401, _))));
    assert_eq!(recorded_requests(upstream).len(), before);

    // CSRF: a state-changing request carried by the cookie must come from this site.
    let url = gateway.url("/api/v1/chart/");
    let public_origin = format!("http://{}", gateway.proxy);
    for hostile in [
        vec![("Origin", "http://evil.example")],
        vec![
            ("Sec-Fetch-Site", "cross-site"),
            ("Origin", public_origin.as_str()),
        ],
        vec![],
    ] {
        let page = browser.request("POST", &url, &hostile, Some("{}"));
        assert_eq!(page.status, 403, "{hostile:?}: {}", page.body);
        let body: Value = serde_json::from_str(&page.body).unwrap();
        assert_eq!(body["kind"], "cross_site_request");
    }
    assert_eq!(recorded_requests(upstream).len(), before);
    let page = browser.request(
        "POST",
        &url,
        &[("Origin", public_origin.as_str())],
        Some("{}"),
    );
    assert_eq!(page.status, 200, "{}", page.body);
    let page = browser.request(
        "POST",
        &url,
        &[("Sec-Fetch-Site", "same-origin")],
        Some("{}"),
    );
    assert_eq!(page.status, 200, "{}", page.body);

    // datagate's cookies never reach the upstream.
    for request in recorded_requests(upstream) {
        for cookie in request.header_values("cookie") {
            assert!(!cookie.contains("datagate-"), "{cookie}");
        }
    }

    // Logout clears the session (and goes on to the provider's logout).
    let page = browser.request("GET", &gateway.url("/oauth2/logout"), &[], None);
    assert_eq!(page.status, 302);
    assert!(
        page.location
            .unwrap()
            .starts_with(&provider.url("/session/end"))
    );
    assert!(!browser.cookies.contains_key("datagate-session"));
    let page = browser.request("GET", &gateway.url("/api/v1/chart/7"), &[], None);
    assert_eq!(page.status, 302, "signed out: back to sign-in");
}

#[test]
fn a_session_ends_at_its_lifetime() {
    let (_provider, _upstream_process, upstream, gateway) = start_browser_setup("2s");
    let (mut browser, page) = sign_in(&gateway);
    assert_eq!(page.status, 200, "{}", page.body);
    let before = recorded_requests(upstream).len();
    // The cookie would be dropped by the browser too; datagate must not rely on that.
    let session = browser.cookies.get("datagate-session").cloned().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let response = ureq::get(&gateway.url("/api/v1/chart/7"))
        .set("Cookie", &format!("datagate-session={session}"))
        .call();
    match response {
        Err(ureq::Error::Status(401, response)) => {
            let body: Value = response.into_json().unwrap();
            assert!(
                body["message"].as_str().unwrap().contains("expired"),
                "{body}"
            );
        }
        other => panic!("expired session accepted: {:?}", other.map(|r| r.status())),
    }
    let page = browser.request("GET", &gateway.url("/api/v1/chart/7"), &[], None);
    assert_eq!(page.status, 302);
    assert_eq!(recorded_requests(upstream).len(), before);
}

#[test]
fn a_callback_without_this_browsers_login_state_is_refused() {
    let (_provider, _upstream_process, upstream, gateway) = start_browser_setup("1h");
    // A login started in another browser (an attacker's), whose callback URL the victim
    // is made to open: no login cookie here, so no session.
    let mut attacker = CookieBrowser::new();
    let page = attacker.request("GET", &gateway.url("/api/v1/chart/7"), &[], None);
    let authorize = url::Url::parse(&page.location.unwrap()).unwrap();
    let state: String = authorize
        .query_pairs()
        .find(|(name, _)| name == "state")
        .unwrap()
        .1
        .into_owned();
    let mut victim = CookieBrowser::new();
    let page = victim.request(
        "GET",
        &gateway.url(&format!("/oauth2/callback?code=stolen&state={state}")),
        &[],
        None,
    );
    assert_eq!(page.status, 400, "{}", page.body);
    let body: Value = serde_json::from_str(&page.body).unwrap();
    assert_eq!(body["kind"], "sign_in_failed");
    assert!(!victim.cookies.contains_key("datagate-session"));
    // With the login cookie but a different state: refused too.
    let page = attacker.request(
        "GET",
        &gateway.url("/oauth2/callback?code=x&state=not-the-state"),
        &[],
        None,
    );
    assert_eq!(page.status, 400);
    assert!(recorded_requests(upstream).is_empty());
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with the openssl command.
fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("the openssl command");
        assert!(status.success(), "openssl {args:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=datagate test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "idp.key",
            "-out",
            "idp.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("idp.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "idp.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "idp.pem",
        "-days",
        "2",
        "-extfile",
        "idp.ext",
    ]);
    (dir.join("ca.pem"), dir.join("idp.pem"), dir.join("idp.key"))
}

/// The provider over https with a certificate from a private CA: datagate trusts it
/// through `auth.jwt.ca_file` (and not without it), for discovery, the JWKS, `check` and
/// `explain`, which fetch the keys as `run` does.
#[test]
fn an_https_provider_behind_a_private_ca_is_trusted_through_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, certificate, key) = private_ca(dir.path());
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new("node")
        .arg(provider_dir().join("provider.mjs"))
        .args([
            "--port",
            "0",
            "--redirect-uri",
            "http://127.0.0.1:1/oauth2/callback",
        ])
        .args(["--client-secret", CLIENT_SECRET])
        .arg("--state")
        .arg(state.path())
        .arg("--tls-cert")
        .arg(&certificate)
        .arg("--tls-key")
        .arg(&key)
        .current_dir(provider_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs tests/compat/oidc/provider.mjs");
    let stdout = child.stdout.take().unwrap();
    let _provider = ChildProcess::new(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let issuer = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("provider: {line:?}"))
        .to_string();
    assert!(issuer.starts_with("https://127.0.0.1:"), "{issuer}");
    // A token from the provider's https token endpoint, fetched by curl with the CA.
    let output = Command::new("curl")
        .args(["-sf", "--cacert"])
        .arg(&ca)
        .args(["-u", &format!("datagate:{CLIENT_SECRET}")])
        .args([
            "-d",
            "grant_type=client_credentials&scope=api&resource=urn:datagate",
        ])
        .arg(format!("{issuer}/token"))
        .output()
        .unwrap();
    assert!(output.status.success(), "curl could not get a token");
    let token: Value = serde_json::from_slice(&output.stdout).unwrap();
    let token = token["access_token"].as_str().unwrap().to_string();

    let auth = |ca_file: Option<&Path>| {
        let ca_line = ca_file
            .map(|path| format!("  ca_file: {}\n", path.display()))
            .unwrap_or_default();
        format!(
            "jwt:\n  issuer: {issuer}\n  discovery: true\n  audience: [urn:datagate]\n  jwks_refresh: {{fetch_timeout: 2s}}\n{ca_line}"
        )
    };
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    let mut options = GatewayOptions::new(upstream);
    options.routes_yaml = Some(ROUTES.to_string());
    options.policy_files = Some(vec![("10-grants.csv".to_string(), GRANTS.to_string())]);
    options.auth_yaml = Some(auth(Some(&ca)));
    let gateway = Gateway::start(options);
    let (status, body) = status_with(&gateway, &token);
    assert_eq!(status, 200, "{body}");
    assert_eq!(recorded_requests(upstream).len(), 1);

    // The same config through `check` and `explain`, with and without the CA.
    let cli = |auth_yaml: String, args: &[&str]| {
        let config = std::fs::read_to_string(&gateway.config_path).unwrap();
        let start = config.find("\nauth:\n").expect("an auth section") + 1;
        let end = config.find("\nroutes:").expect("a routes section") + 1;
        let indented: String = auth_yaml
            .lines()
            .map(|line| format!("  {line}\n"))
            .collect();
        let rewritten = format!("{}auth:\n{indented}{}", &config[..start], &config[end..]);
        let path = gateway.config_path.with_file_name("cli.yaml");
        std::fs::write(&path, rewritten).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_datagate"))
            .args(args)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let checked = cli(auth(Some(&ca)), &["check"]);
    assert!(checked.contains("key set was fetched"), "{checked}");
    let checked = cli(auth(None), &["check"]);
    assert!(checked.contains("could not be fetched now"), "{checked}");
    assert!(
        !checked.contains("127.0.0.1"),
        "no address in the report: {checked}"
    );
    let explain = [
        "explain",
        "--path",
        "/api/v1/chart/1",
        "--token",
        token.as_str(),
    ];
    let explained: Value = serde_json::from_str(&cli(auth(Some(&ca)), &explain)).unwrap();
    assert_eq!(explained["decision"], json!("allow"), "{explained}");
    let explained: Value = serde_json::from_str(&cli(auth(None), &explain)).unwrap();
    assert_eq!(
        (explained["status"].clone(), explained["kind"].clone()),
        (json!(503), json!("identity_keys_unavailable")),
        "{explained}"
    );
}
