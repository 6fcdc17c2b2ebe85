use std::path::PathBuf;

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use super::*;

const SECRET: &str = "unit-test-hmac-secret-0123456789abcdef";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/authn")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

fn config(yaml: &str) -> AuthConfig {
    serde_yaml::from_str(yaml).unwrap()
}

fn base_config() -> AuthConfig {
    std::fs::write(
        std::env::temp_dir().join("datagate-authn-test.secret"),
        SECRET,
    )
    .unwrap();
    config(&format!(
        r#"
anonymous: {{enabled: true, roles: [Public]}}
jwt:
  leeway_seconds: 5
  keys:
    - {{kid: hmac, algorithm: HS256, secret_file: {secret}}}
    - {{kid: rsa, algorithm: RS256, public_key_file: rsa_public.pem}}
    - {{kid: pss, algorithm: PS256, public_key_file: rsa_public.pem}}
    - {{kid: ec, algorithm: ES256, public_key_file: ec_public.pem}}
    - {{kid: ed, algorithm: EdDSA, public_key_file: ed25519_public.pem}}
  jwks_file: jwks.json
api_keys:
  keys:
    - {{name: ci-bot, sha256: {hash}, roles: [Gamma], org_role: Viewer}}
"#,
        secret = std::env::temp_dir()
            .join("datagate-authn-test.secret")
            .display(),
        hash = hex::encode(Sha256::digest(b"ci-bot-key-123")),
    ))
}

fn authenticator() -> Authenticator {
    Authenticator::from_config(&base_config(), &fixtures()).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(
    algorithm: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: serde_json::Value,
) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_string);
    encode(&header, &claims, key).unwrap()
}

fn claims() -> serde_json::Value {
    json!({"sub": "u-1", "preferred_username": "alice", "email": "alice@example.com", "roles": ["Gamma", "sql_lab"], "teams": "eng", "org_role": "editor", "exp": now() + 600})
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn every_supported_key_type_authenticates() {
    let authenticator = authenticator();
    let rsa = EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).unwrap();
    let cases = [
        sign(
            Algorithm::HS256,
            Some("hmac"),
            &EncodingKey::from_secret(SECRET.as_bytes()),
            claims(),
        ),
        sign(Algorithm::RS256, Some("rsa"), &rsa, claims()),
        sign(Algorithm::PS256, Some("pss"), &rsa, claims()),
        sign(
            Algorithm::ES256,
            Some("ec"),
            &EncodingKey::from_ec_pem(&fixture("ec_private.pem")).unwrap(),
            claims(),
        ),
        sign(
            Algorithm::EdDSA,
            Some("ed"),
            &EncodingKey::from_ed_pem(&fixture("ed25519_private.pem")).unwrap(),
            claims(),
        ),
        sign(Algorithm::RS256, Some("jwks-rsa-1"), &rsa, claims()),
        // No kid: the keys pinned to the header's algorithm are tried.
        sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            claims(),
        ),
    ];
    for token in cases {
        let principal = authenticator
            .authenticate(Some(&bearer(&token)), None)
            .unwrap();
        assert_eq!(principal.kind, PrincipalKind::User);
        assert_eq!(principal.username, "alice");
        assert_eq!(principal.user_id.as_deref(), Some("u-1"));
        assert_eq!(principal.email.as_deref(), Some("alice@example.com"));
        assert_eq!(principal.roles, vec!["Gamma", "sql_lab"]);
        assert_eq!(principal.teams, vec!["eng"]);
        assert_eq!(principal.basic_role, Some(BasicRole::Editor));
        assert_eq!(principal.claims["preferred_username"], "alice");
    }
}

#[test]
fn algorithm_is_pinned_per_key() {
    let authenticator = authenticator();
    // HS/RS confusion: an HS256 token "signed" with the RSA public key's PEM bytes.
    let confused = sign(
        Algorithm::HS256,
        Some("rsa"),
        &EncodingKey::from_secret(&fixture("rsa_public.pem")),
        claims(),
    );
    assert!(matches!(
        authenticator.authenticate(Some(&bearer(&confused)), None),
        Err(AuthnError::WrongAlgorithm(_))
    ));
    let confused_no_kid = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(&fixture("rsa_public.pem")),
        claims(),
    );
    assert!(matches!(
        authenticator.authenticate(Some(&bearer(&confused_no_kid)), None),
        Err(AuthnError::BadSignature)
    ));
    // An RSA key used with PS256 when it is pinned to RS256.
    let rsa = EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).unwrap();
    let wrong = sign(Algorithm::PS256, Some("rsa"), &rsa, claims());
    assert!(matches!(
        authenticator.authenticate(Some(&bearer(&wrong)), None),
        Err(AuthnError::WrongAlgorithm(_))
    ));
    // No key for RS384 at all.
    let unpinned = sign(Algorithm::RS384, None, &rsa, claims());
    assert!(matches!(
        authenticator.authenticate(Some(&bearer(&unpinned)), None),
        Err(AuthnError::WrongAlgorithm(_))
    ));
    // alg: none.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
    assert!(matches!(
        authenticator.authenticate(Some(&bearer(none)), None),
        Err(AuthnError::Malformed(_))
    ));
}

#[test]
fn time_issuer_audience_and_signature_are_checked() {
    let hmac = EncodingKey::from_secret(SECRET.as_bytes());
    let authenticator = authenticator();
    let token = |claims| sign(Algorithm::HS256, Some("hmac"), &hmac, claims);
    let check = |token: String| authenticator.authenticate(Some(&bearer(&token)), None);
    assert!(matches!(
        check(token(json!({"sub": "a", "exp": now() - 60}))),
        Err(AuthnError::Expired)
    ));
    assert!(
        check(token(json!({"sub": "a", "exp": now() - 2}))).is_ok(),
        "within leeway"
    );
    assert!(matches!(
        check(token(
            json!({"sub": "a", "exp": now() + 600, "nbf": now() + 120})
        )),
        Err(AuthnError::NotYetValid)
    ));
    assert!(
        matches!(check(token(json!({"sub": "a"}))), Err(AuthnError::MissingClaim(claim)) if claim == "exp")
    );
    let forged = sign(
        Algorithm::HS256,
        Some("hmac"),
        &EncodingKey::from_secret(b"another-secret-that-is-long-enough!!"),
        json!({"sub": "a", "exp": now() + 60}),
    );
    assert!(matches!(check(forged), Err(AuthnError::BadSignature)));
    let unknown_kid = sign(
        Algorithm::HS256,
        Some("nope"),
        &hmac,
        json!({"sub": "a", "exp": now() + 60}),
    );
    assert!(matches!(check(unknown_kid), Err(AuthnError::UnknownKey(kid)) if kid == "nope"));

    let mut strict = base_config();
    strict.jwt.issuer = Some("https://idp.example".into());
    strict.jwt.audience = vec!["datagate".into()];
    let strict = Authenticator::from_config(&strict, &fixtures()).unwrap();
    let check = |claims| strict.authenticate(Some(&bearer(&token(claims))), None);
    assert!(
        check(
            json!({"sub": "a", "exp": now() + 60, "iss": "https://idp.example", "aud": "datagate"})
        )
        .is_ok()
    );
    assert!(matches!(
        check(
            json!({"sub": "a", "exp": now() + 60, "iss": "https://evil.example", "aud": "datagate"})
        ),
        Err(AuthnError::WrongIssuer)
    ));
    assert!(matches!(
        check(json!({"sub": "a", "exp": now() + 60, "iss": "https://idp.example", "aud": "other"})),
        Err(AuthnError::WrongAudience)
    ));
    assert!(
        check(json!({"sub": "a", "exp": now() + 60, "aud": "datagate"})).is_err(),
        "issuer required when configured"
    );
}

#[test]
fn malformed_credentials_are_refused_specifically() {
    let authenticator = authenticator();
    for header in [
        "Basic YWxpY2U6cHc=",
        "Bearer",
        "Bearer ",
        "Bearer a b",
        "garbage",
        "Bearer a.b",
        "Bearer !!!.???.***",
        "Bearer a.b.c",
    ] {
        let result = authenticator.authenticate(Some(header), None);
        assert!(result.is_err(), "{header} must be refused");
        assert!(!result.unwrap_err().is_config_error());
    }
    let huge = format!(
        "Bearer {}.{}.{}",
        "a".repeat(10_000),
        "b".repeat(10_000),
        "c".repeat(10_000)
    );
    assert!(matches!(
        authenticator.authenticate(Some(&huge), None),
        Err(AuthnError::Malformed(_))
    ));
}

#[test]
fn claims_map_strictly() {
    let hmac = EncodingKey::from_secret(SECRET.as_bytes());
    let authenticator = authenticator();
    let check = |claims| {
        authenticator.authenticate(
            Some(&bearer(&sign(
                Algorithm::HS256,
                Some("hmac"),
                &hmac,
                claims,
            ))),
            None,
        )
    };
    // Username fallback order: preferred_username, username, email, sub.
    assert_eq!(
        check(json!({"sub": "s", "email": "e@x", "exp": now() + 60}))
            .unwrap()
            .username,
        "e@x"
    );
    assert_eq!(
        check(json!({"sub": "s", "username": "", "exp": now() + 60}))
            .unwrap()
            .username,
        "s",
        "empty claims are skipped"
    );
    assert!(matches!(
        check(json!({"exp": now() + 60})),
        Err(AuthnError::MissingClaim(_))
    ));
    assert!(
        matches!(check(json!({"sub": "s", "roles": 5, "exp": now() + 60})), Err(AuthnError::InvalidClaim(claim, _)) if claim == "roles")
    );
    assert!(matches!(
        check(json!({"sub": "s", "roles": ["a", 1], "exp": now() + 60})),
        Err(AuthnError::InvalidClaim(..))
    ));
    assert!(
        matches!(check(json!({"sub": "s", "org_role": "Owner", "exp": now() + 60})), Err(AuthnError::InvalidClaim(claim, _)) if claim == "org_role")
    );
    assert_eq!(
        check(json!({"sub": "s", "roles": "Alpha", "exp": now() + 60}))
            .unwrap()
            .roles,
        vec!["Alpha"]
    );
}

#[test]
fn api_keys_and_anonymous_callers() {
    let authenticator = authenticator();
    let principal = authenticator
        .authenticate(None, Some("ci-bot-key-123"))
        .unwrap();
    assert_eq!(principal.kind, PrincipalKind::ServiceAccount);
    assert_eq!(principal.username, "ci-bot");
    assert_eq!(principal.basic_role, Some(BasicRole::Viewer));
    let via_bearer = authenticator
        .authenticate(Some("Bearer ci-bot-key-123"), None)
        .unwrap();
    assert_eq!(via_bearer.username, "ci-bot");
    assert!(matches!(
        authenticator.authenticate(None, Some("wrong")),
        Err(AuthnError::UnknownApiKey)
    ));
    assert!(matches!(
        authenticator.authenticate(Some("Bearer wrong"), None),
        Err(AuthnError::UnknownApiKey)
    ));

    let anonymous = authenticator.authenticate(None, None).unwrap();
    assert_eq!(anonymous.kind, PrincipalKind::Anonymous);
    assert_eq!(anonymous.roles, vec!["Public"]);
    let mut closed = base_config();
    closed.anonymous.enabled = false;
    let closed = Authenticator::from_config(&closed, &fixtures()).unwrap();
    assert!(matches!(
        closed.authenticate(None, None),
        Err(AuthnError::MissingCredentials)
    ));
}

#[test]
fn config_errors_name_the_key_and_never_the_secret() {
    let short = std::env::temp_dir().join("datagate-authn-short.secret");
    std::fs::write(&short, "too-short-secret").unwrap();
    for (yaml, expected) in [
        (
            format!(
                "jwt: {{keys: [{{algorithm: HS256, secret_file: {}}}]}}",
                short.display()
            ),
            "at least 32",
        ),
        (
            "jwt: {keys: [{algorithm: HS256, secret_file: /nonexistent/secret}]}".to_string(),
            "auth.jwt.keys[0].secret_file",
        ),
        (
            "jwt: {keys: [{algorithm: HS256, secret_env: A, secret_file: b}]}".to_string(),
            "exactly one",
        ),
        (
            "jwt: {keys: [{algorithm: RS256}]}".to_string(),
            "auth.jwt.keys[0].public_key_file",
        ),
        (
            "jwt: {keys: [{algorithm: none, secret_env: A}]}".to_string(),
            "auth.jwt.keys[0].algorithm",
        ),
        (
            "jwt: {leeway_seconds: 61}".to_string(),
            "auth.jwt.leeway_seconds",
        ),
        (
            "jwt: {keys: [{algorithm: HS256, secret_env: DATAGATE_TEST_UNSET_VARIABLE}]}"
                .to_string(),
            "DATAGATE_TEST_UNSET_VARIABLE",
        ),
        (
            "api_keys: {keys: [{name: a, sha256: xyz}]}".to_string(),
            "auth.api_keys.keys[0].sha256",
        ),
    ] {
        let error = Authenticator::from_config(&config(&yaml), &fixtures())
            .err()
            .unwrap_or_else(|| panic!("{yaml} accepted"));
        assert!(error.is_config_error());
        let message = error.to_string();
        assert!(message.contains(expected), "{yaml}: {message}");
        assert!(!message.contains("too-short-secret"), "{message}");
    }
    assert!(
        serde_yaml::from_str::<AuthConfig>("jwt: {keyz: []}").is_err(),
        "unknown keys refused"
    );
}

#[test]
fn minted_tokens_round_trip_and_need_an_hmac_key() {
    let config = base_config();
    let token = mint_token(
        &config,
        &fixtures(),
        &MintRequest {
            subject: "bob".into(),
            roles: vec!["Gamma".into()],
            teams: vec!["t1".into()],
            org_role: Some(BasicRole::Viewer),
            ttl: Duration::from_secs(60),
            extra_claims: Map::new(),
        },
    )
    .unwrap();
    let principal = authenticator()
        .authenticate(Some(&bearer(&token)), None)
        .unwrap();
    assert_eq!(principal.username, "bob");
    assert_eq!(principal.roles, vec!["Gamma"]);
    assert_eq!(principal.teams, vec!["t1"]);
    assert_eq!(principal.basic_role, Some(BasicRole::Viewer));

    let rsa_only = config_with_rsa_only();
    let error = mint_token(
        &rsa_only,
        &fixtures(),
        &MintRequest {
            subject: "bob".into(),
            roles: vec![],
            teams: vec![],
            org_role: None,
            ttl: Duration::from_secs(60),
            extra_claims: Map::new(),
        },
    )
    .unwrap_err();
    assert!(error.to_string().contains("no HMAC key"));
}

fn config_with_rsa_only() -> AuthConfig {
    config("jwt: {keys: [{algorithm: RS256, public_key_file: rsa_public.pem}]}")
}
