//! End-to-end tests of `datagate::authn` against real keys generated with openssl
//! (tests/fixtures/authn, test-only): every algorithm, every rejection path, config
//! errors, API keys, anonymous access and minting.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use datagate::authn::{
    AuthConfig, Authenticator, AuthnError, Malformed, MintRequest, api_key_digest, mint_token,
    mint_token_with_env,
};
use datagate::principal::{BasicRole, PrincipalKind};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};

const HMAC_SECRET: &str = "test-only-hmac-secret-0123456789-abcdefghijklmn";
const ENV_SECRET: &str = "env-secret-for-tests-only-0123456789-abcdef";
const API_KEY: &str = "dg-test-key-0001";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/authn")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

fn full_yaml() -> String {
    format!(
        r#"
anonymous: {{enabled: true, roles: [Public]}}
jwt:
  issuer: https://idp.example
  audience: [datagate]
  leeway_seconds: 30
  keys:
    - {{kid: hmac-1, algorithm: HS256, secret_file: hmac-secret.txt}}
    - {{kid: rsa-1, algorithm: RS256, public_key_file: rsa-public.pem}}
    - {{kid: rsa-pss, algorithm: PS256, public_key_file: rsa-public.pem}}
    - {{kid: ec-1, algorithm: ES256, public_key_file: ec-p256-public.pem}}
    - {{kid: ed-1, algorithm: EdDSA, public_key_file: ed25519-public.pem}}
    - {{kid: env-hmac, algorithm: HS512, secret_env: DG_TEST_SECRET}}
  jwks_file: jwks.json
api_keys:
  keys:
    - {{name: ci-bot, sha256: {digest}, roles: [Gamma], teams: [ops], org_role: Viewer}}
"#,
        digest = api_key_digest(API_KEY)
    )
}

fn parse(yaml: &str) -> AuthConfig {
    serde_yaml::from_str(yaml).unwrap()
}

fn test_env(name: &str) -> Option<String> {
    (name == "DG_TEST_SECRET").then(|| ENV_SECRET.to_string())
}

fn build(yaml: &str) -> Result<Authenticator, AuthnError> {
    Authenticator::from_config_with_env(&parse(yaml), &fixtures(), &test_env)
}

fn authenticator() -> Authenticator {
    build(&full_yaml()).unwrap()
}

fn now() -> u64 {
    get_current_timestamp()
}

fn good_claims() -> Value {
    json!({
        "sub": "u-42",
        "preferred_username": "alice",
        "email": "alice@example.org",
        "roles": ["Gamma", "sql_lab"],
        "teams": ["eng"],
        "org_role": "Editor",
        "tenant_id": 7,
        "iss": "https://idp.example",
        "aud": "datagate",
        "exp": now() + 600,
    })
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    if let Value::Object(map) = &mut claims {
        map.remove(name);
    }
    claims
}

fn encoding_key(algorithm: Algorithm, key_file: &str) -> EncodingKey {
    match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(key_file.as_bytes())
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            EncodingKey::from_ec_pem(&fixture(key_file)).unwrap()
        }
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&fixture(key_file)).unwrap(),
        _ => EncodingKey::from_rsa_pem(&fixture(key_file)).unwrap(),
    }
}

/// `key`: the HMAC secret for HS*, otherwise a private-key fixture file name.
fn sign(algorithm: Algorithm, kid: Option<&str>, claims: &Value, key: &str) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(String::from);
    encode(&header, claims, &encoding_key(algorithm, key)).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, Some("hmac-1"), claims, HMAC_SECRET)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn auth_jwt(token: &str) -> Result<datagate::principal::Principal, AuthnError> {
    authenticator().authenticate(Some(&bearer(token)), None)
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

// ---------------------------------------------------------------- valid tokens

#[test]
fn valid_hs256_token_maps_every_field() {
    let principal = auth_jwt(&hs256(&good_claims())).unwrap();
    assert_eq!(principal.kind, PrincipalKind::User);
    assert_eq!(principal.username, "alice");
    assert_eq!(principal.user_id.as_deref(), Some("u-42"));
    assert_eq!(principal.email.as_deref(), Some("alice@example.org"));
    assert_eq!(principal.roles, vec!["Gamma", "sql_lab"]);
    assert_eq!(principal.teams, vec!["eng"]);
    assert_eq!(principal.basic_role, Some(BasicRole::Editor));
    assert_eq!(principal.claims["tenant_id"], json!(7));
    assert_eq!(principal.claims["iss"], json!("https://idp.example"));
    assert_eq!(
        principal.subjects(),
        vec![
            "user:alice",
            "role:Gamma",
            "role:sql_lab",
            "team:eng",
            "basic:Editor"
        ]
    );
}

#[test]
fn valid_tokens_for_every_asymmetric_algorithm() {
    let claims = good_claims();
    for (algorithm, kid, key) in [
        (Algorithm::RS256, "rsa-1", "rsa-private.pem"),
        (Algorithm::PS256, "rsa-pss", "rsa-private.pem"),
        (Algorithm::ES256, "ec-1", "ec-p256-private.pem"),
        (Algorithm::EdDSA, "ed-1", "ed25519-private.pem"),
        (Algorithm::RS256, "jwks-rsa-1", "rsa-private.pem"),
    ] {
        let token = sign(algorithm, Some(kid), &claims, key);
        let principal = auth_jwt(&token).unwrap_or_else(|error| panic!("{kid}: {error}"));
        assert_eq!(principal.username, "alice", "{kid}");
    }
}

#[test]
fn hmac_secret_from_environment_works() {
    let token = sign(
        Algorithm::HS512,
        Some("env-hmac"),
        &good_claims(),
        ENV_SECRET,
    );
    assert_eq!(auth_jwt(&token).unwrap().username, "alice");
}

#[test]
fn tokens_without_kid_are_tried_against_keys_of_their_algorithm() {
    for (algorithm, key) in [
        (Algorithm::HS256, HMAC_SECRET),
        (Algorithm::RS256, "rsa-private.pem"),
        (Algorithm::EdDSA, "ed25519-private.pem"),
    ] {
        let token = sign(algorithm, None, &good_claims(), key);
        assert_eq!(auth_jwt(&token).unwrap().username, "alice", "{algorithm:?}");
    }
    let token = sign(
        Algorithm::HS256,
        None,
        &good_claims(),
        "another-secret-of-enough-length-xx",
    );
    assert_eq!(auth_jwt(&token), Err(AuthnError::BadSignature));
}

#[test]
fn audience_may_be_an_array_containing_ours() {
    let claims = with(good_claims(), "aud", json!(["other", "datagate"]));
    assert!(auth_jwt(&hs256(&claims)).is_ok());
}

// ---------------------------------------------------------------- time claims

#[test]
fn expired_tokens_are_rejected() {
    let claims = with(good_claims(), "exp", json!(now() - 120));
    assert_eq!(auth_jwt(&hs256(&claims)), Err(AuthnError::Expired));
}

#[test]
fn leeway_tolerates_small_clock_skew() {
    let recently_expired = with(good_claims(), "exp", json!(now() - 10));
    assert!(auth_jwt(&hs256(&recently_expired)).is_ok());
    let almost_valid = with(good_claims(), "nbf", json!(now() + 10));
    assert!(auth_jwt(&hs256(&almost_valid)).is_ok());

    let strict = full_yaml().replace("leeway_seconds: 30", "leeway_seconds: 0");
    let strict = build(&strict).unwrap();
    let outcome = strict.authenticate(Some(&bearer(&hs256(&recently_expired))), None);
    assert_eq!(outcome, Err(AuthnError::Expired));
    let outcome = strict.authenticate(Some(&bearer(&hs256(&almost_valid))), None);
    assert_eq!(outcome, Err(AuthnError::NotYetValid));
}

#[test]
fn tokens_not_valid_yet_are_rejected() {
    let claims = with(good_claims(), "nbf", json!(now() + 300));
    assert_eq!(auth_jwt(&hs256(&claims)), Err(AuthnError::NotYetValid));
}

#[test]
fn exp_is_required_and_must_be_numeric() {
    let claims = without(good_claims(), "exp");
    assert_eq!(
        auth_jwt(&hs256(&claims)),
        Err(AuthnError::MissingClaim("exp".into()))
    );
    let claims = with(good_claims(), "exp", json!("tomorrow"));
    assert!(matches!(
        auth_jwt(&hs256(&claims)),
        Err(AuthnError::MissingClaim(_) | AuthnError::InvalidClaim { .. })
    ));
}

// ---------------------------------------------------------------- algorithm pinning

#[test]
fn header_algorithm_must_match_the_keys_algorithm() {
    // Right key material, wrong algorithm in the header.
    let token = sign(
        Algorithm::RS512,
        Some("rsa-1"),
        &good_claims(),
        "rsa-private.pem",
    );
    assert_eq!(auth_jwt(&token), Err(AuthnError::WrongAlgorithm));
    let token = sign(
        Algorithm::PS256,
        Some("rsa-1"),
        &good_claims(),
        "rsa-private.pem",
    );
    assert_eq!(auth_jwt(&token), Err(AuthnError::WrongAlgorithm));
    let token = sign(
        Algorithm::HS384,
        Some("hmac-1"),
        &good_claims(),
        HMAC_SECRET,
    );
    assert_eq!(auth_jwt(&token), Err(AuthnError::WrongAlgorithm));
    // No kid and no key pinned to RS384.
    let token = sign(Algorithm::RS384, None, &good_claims(), "rsa-private.pem");
    assert_eq!(auth_jwt(&token), Err(AuthnError::WrongAlgorithm));
}

#[test]
fn alg_none_is_rejected() {
    for header in [
        json!({"alg": "none", "typ": "JWT", "kid": "hmac-1"}),
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "None"}),
        json!({"typ": "JWT"}),
    ] {
        for signature in ["", "AAAA"] {
            let token = format!("{}.{}.{signature}", b64(&header), b64(&good_claims()));
            assert_eq!(
                auth_jwt(&token),
                Err(AuthnError::Malformed(Malformed::TokenHeader)),
                "{header}"
            );
        }
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_rejected() {
    let public_pem = String::from_utf8(fixture("rsa-public.pem")).unwrap();
    for kid in [Some("rsa-1"), Some("jwks-rsa-1")] {
        let token = sign(Algorithm::HS256, kid, &good_claims(), &public_pem);
        assert_eq!(auth_jwt(&token), Err(AuthnError::WrongAlgorithm), "{kid:?}");
    }
    // Without kid only HMAC keys are candidates, and none of them is the PEM.
    let token = sign(Algorithm::HS256, None, &good_claims(), &public_pem);
    assert_eq!(auth_jwt(&token), Err(AuthnError::BadSignature));
    // With only RSA keys configured there is nothing an HS256 token could verify against.
    let rsa_only =
        build("jwt: {keys: [{algorithm: RS256, public_key_file: rsa-public.pem}]}").unwrap();
    let outcome = rsa_only.authenticate(Some(&bearer(&token)), None);
    assert_eq!(outcome, Err(AuthnError::WrongAlgorithm));
}

#[test]
fn critical_header_extensions_are_rejected() {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("hmac-1".into());
    header.crit = Some(vec!["exp-ext".into()]);
    let token = encode(
        &header,
        &good_claims(),
        &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        auth_jwt(&token),
        Err(AuthnError::Malformed(Malformed::CriticalHeader))
    );
}

// ---------------------------------------------------------------- signatures and keys

#[test]
fn wrong_key_or_tampering_is_a_bad_signature() {
    let token = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &good_claims(),
        "rsa-other-private.pem",
    );
    assert_eq!(auth_jwt(&token), Err(AuthnError::BadSignature));
    let token = sign(
        Algorithm::HS256,
        Some("hmac-1"),
        &good_claims(),
        "a-different-secret-that-is-long-enough",
    );
    assert_eq!(auth_jwt(&token), Err(AuthnError::BadSignature));

    // Swap in a payload granting Admin, keep the original signature.
    let token = sign(
        Algorithm::ES256,
        Some("ec-1"),
        &good_claims(),
        "ec-p256-private.pem",
    );
    let parts: Vec<&str> = token.split('.').collect();
    let forged = b64(&with(good_claims(), "roles", json!(["Admin"])));
    let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
    assert_eq!(auth_jwt(&tampered), Err(AuthnError::BadSignature));
    let stripped = format!("{}.{}.", parts[0], parts[1]);
    assert_eq!(auth_jwt(&stripped), Err(AuthnError::BadSignature));
}

#[test]
fn unknown_kid_is_rejected() {
    let token = sign(Algorithm::HS256, Some("nope"), &good_claims(), HMAC_SECRET);
    assert_eq!(auth_jwt(&token), Err(AuthnError::UnknownKey));
}

// ---------------------------------------------------------------- iss / aud

#[test]
fn issuer_is_checked_and_required_when_configured() {
    let claims = with(good_claims(), "iss", json!("https://evil.example"));
    assert_eq!(auth_jwt(&hs256(&claims)), Err(AuthnError::WrongIssuer));
    let claims = without(good_claims(), "iss");
    assert_eq!(
        auth_jwt(&hs256(&claims)),
        Err(AuthnError::MissingClaim("iss".into()))
    );
}

#[test]
fn audience_is_checked_and_required_when_configured() {
    let claims = with(good_claims(), "aud", json!("grafana"));
    assert_eq!(auth_jwt(&hs256(&claims)), Err(AuthnError::WrongAudience));
    let claims = with(good_claims(), "aud", json!(["grafana", "superset"]));
    assert_eq!(auth_jwt(&hs256(&claims)), Err(AuthnError::WrongAudience));
    let claims = without(good_claims(), "aud");
    assert_eq!(
        auth_jwt(&hs256(&claims)),
        Err(AuthnError::MissingClaim("aud".into()))
    );
}

#[test]
fn iss_and_aud_are_ignored_when_not_configured() {
    let lax = build("jwt: {keys: [{algorithm: HS256, secret_file: hmac-secret.txt}]}").unwrap();
    let claims = with(with(good_claims(), "iss", json!("x")), "aud", json!("y"));
    let token = sign(Algorithm::HS256, None, &claims, HMAC_SECRET);
    assert!(lax.authenticate(Some(&bearer(&token)), None).is_ok());
}

// ---------------------------------------------------------------- malformed input

#[test]
fn malformed_tokens_get_specific_errors() {
    let jwt_only =
        build("jwt: {keys: [{kid: hmac-1, algorithm: HS256, secret_file: hmac-secret.txt}]}")
            .unwrap();
    let check = |token: &str, expected: Malformed| {
        assert_eq!(
            jwt_only.authenticate(Some(&bearer(token)), None),
            Err(AuthnError::Malformed(expected)),
            "{token}"
        );
    };
    check("garbage", Malformed::Token);
    check("only.two", Malformed::Token);
    check("!!!.e30.sig", Malformed::TokenHeader);
    check("e30.e30.sig", Malformed::TokenHeader);
    check(
        &format!("{}.a.b.c", b64(&json!({"alg": "HS256"}))),
        Malformed::TokenHeader,
    );
    check(&"a".repeat(20_000), Malformed::TooLong);
    let huge = format!("{}.{}.x", b64(&json!({"alg": "HS256"})), "A".repeat(40_000));
    check(&huge, Malformed::TooLong);

    // Correctly signed, but the payload is not base64url / not a JSON object.
    let header = b64(&json!({"alg": "HS256", "kid": "hmac-1"}));
    for payload in [
        "%%%".to_string(),
        URL_SAFE_NO_PAD.encode("[1,2]"),
        URL_SAFE_NO_PAD.encode("not json"),
    ] {
        let message = format!("{header}.{payload}");
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap();
        check(&format!("{message}.{signature}"), Malformed::Token);
    }
}

#[test]
fn malformed_authorization_headers_get_specific_errors() {
    let authenticator = authenticator();
    for (header, expected) in [
        ("Basic YWxpY2U6c2VjcmV0", Malformed::UnsupportedScheme),
        ("Digest username=x", Malformed::UnsupportedScheme),
        ("Bearer", Malformed::EmptyBearer),
        ("Bearer ", Malformed::EmptyBearer),
        ("Bearer  a.b.c", Malformed::BearerSyntax),
        ("Bearer a.b.c extra", Malformed::BearerSyntax),
    ] {
        assert_eq!(
            authenticator.authenticate(Some(header), None),
            Err(AuthnError::Malformed(expected)),
            "{header}"
        );
    }
}

// ---------------------------------------------------------------- claims mapping

#[test]
fn username_falls_back_through_the_configured_list() {
    let claims = without(good_claims(), "preferred_username");
    assert_eq!(
        auth_jwt(&hs256(&claims)).unwrap().username,
        "alice@example.org"
    );
    let claims = without(claims, "email");
    assert_eq!(auth_jwt(&hs256(&claims)).unwrap().username, "u-42");
    let claims = with(claims, "username", json!("bob"));
    assert_eq!(auth_jwt(&hs256(&claims)).unwrap().username, "bob");
    let claims = without(without(claims, "username"), "sub");
    assert!(matches!(
        auth_jwt(&hs256(&claims)),
        Err(AuthnError::MissingClaim(_))
    ));

    let custom = full_yaml().replace(
        "  jwks_file: jwks.json",
        "  jwks_file: jwks.json\n  claims: {username: [login, sub]}",
    );
    let custom = build(&custom).unwrap();
    let claims = with(good_claims(), "login", json!("carol"));
    let principal = custom
        .authenticate(Some(&bearer(&hs256(&claims))), None)
        .unwrap();
    assert_eq!(principal.username, "carol");
}

#[test]
fn roles_may_be_a_string_or_an_array_but_nothing_else() {
    let claims = with(good_claims(), "roles", json!("Alpha"));
    assert_eq!(auth_jwt(&hs256(&claims)).unwrap().roles, vec!["Alpha"]);
    let claims = with(good_claims(), "roles", json!(["Alpha", "Gamma"]));
    assert_eq!(
        auth_jwt(&hs256(&claims)).unwrap().roles,
        vec!["Alpha", "Gamma"]
    );
    let claims = without(good_claims(), "roles");
    assert!(auth_jwt(&hs256(&claims)).unwrap().roles.is_empty());
    for bad in [
        json!(3),
        json!(["Alpha", 3]),
        json!({"Alpha": true}),
        json!(true),
    ] {
        let claims = with(good_claims(), "roles", bad.clone());
        match auth_jwt(&hs256(&claims)) {
            Err(AuthnError::InvalidClaim { claim, .. }) => assert_eq!(claim, "roles", "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    let claims = with(good_claims(), "teams", json!(5));
    assert!(matches!(
        auth_jwt(&hs256(&claims)),
        Err(AuthnError::InvalidClaim { claim, .. }) if claim == "teams"
    ));
}

#[test]
fn org_role_is_parsed_case_insensitively_and_strictly() {
    let claims = with(good_claims(), "org_role", json!("admin"));
    assert_eq!(
        auth_jwt(&hs256(&claims)).unwrap().basic_role,
        Some(BasicRole::Admin)
    );
    let claims = with(good_claims(), "org_role", json!("Owner"));
    match auth_jwt(&hs256(&claims)) {
        Err(error @ AuthnError::InvalidClaim { .. }) => {
            assert!(error.to_string().contains("org_role"), "{error}")
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- api keys & anonymous

#[test]
fn api_keys_authenticate_via_header_or_bearer() {
    let authenticator = authenticator();
    assert_eq!(authenticator.api_key_header(), "X-API-Key");
    for (authorization, api_key) in [(None, Some(API_KEY)), (Some(bearer(API_KEY)), None)] {
        let principal = authenticator
            .authenticate(authorization.as_deref(), api_key)
            .unwrap();
        assert_eq!(principal.kind, PrincipalKind::ServiceAccount);
        assert_eq!(principal.username, "ci-bot");
        assert_eq!(principal.roles, vec!["Gamma"]);
        assert_eq!(principal.teams, vec!["ops"]);
        assert_eq!(principal.basic_role, Some(BasicRole::Viewer));
        assert_eq!(
            principal.subjects(),
            vec![
                "serviceaccount:ci-bot",
                "role:Gamma",
                "team:ops",
                "basic:Viewer"
            ]
        );
    }
    assert_eq!(
        authenticator.authenticate(None, Some("dg-test-key-0002")),
        Err(AuthnError::UnknownApiKey)
    );
    assert_eq!(
        authenticator.authenticate(Some("Bearer dg-test-key-0002"), None),
        Err(AuthnError::UnknownApiKey)
    );
    assert_eq!(
        authenticator.authenticate(Some(&bearer(&hs256(&good_claims()))), Some(API_KEY)),
        Err(AuthnError::Malformed(Malformed::ConflictingCredentials))
    );
}

#[test]
fn custom_api_key_header_is_reported() {
    let yaml = format!(
        "api_keys: {{header: X-Datagate-Key, keys: [{{name: a, sha256: {}}}]}}",
        api_key_digest(API_KEY)
    );
    assert_eq!(build(&yaml).unwrap().api_key_header(), "X-Datagate-Key");
}

#[test]
fn anonymous_access_follows_config() {
    let principal = authenticator().authenticate(None, None).unwrap();
    assert_eq!(principal.kind, PrincipalKind::Anonymous);
    assert_eq!(principal.roles, vec!["Public"]);
    assert_eq!(principal.subjects(), vec!["role:Public"]);

    let closed = full_yaml().replace("enabled: true", "enabled: false");
    assert_eq!(
        build(&closed).unwrap().authenticate(None, None),
        Err(AuthnError::MissingCredentials)
    );
    // Enabling anonymous access never turns a bad credential into an anonymous caller.
    assert_eq!(
        authenticator().authenticate(Some("Bearer x.y.z"), None),
        Err(AuthnError::Malformed(Malformed::TokenHeader))
    );
}

// ---------------------------------------------------------------- config errors

fn config_error(yaml: &str) -> (String, String) {
    match build(yaml) {
        Err(AuthnError::Config(error)) => (error.key, error.problem),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn short_hmac_secrets_are_refused_without_revealing_them() {
    let (key, problem) =
        config_error("jwt: {keys: [{algorithm: HS256, secret_file: hmac-short-secret.txt}]}");
    assert_eq!(key, "auth.jwt.keys[0].secret_file");
    assert!(problem.contains("at least 32"), "{problem}");
    assert!(!problem.contains("too-short-secret"), "{problem}");

    let short_env = |_: &str| Some("tiny".to_string());
    let config = parse("jwt: {keys: [{algorithm: HS256, secret_env: DG_SHORT}]}");
    match Authenticator::from_config_with_env(&config, &fixtures(), &short_env) {
        Err(AuthnError::Config(error)) => {
            assert_eq!(error.key, "auth.jwt.keys[0].secret_env");
            assert!(!error.to_string().contains("tiny"), "{error}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_files_and_variables_are_named() {
    let (key, problem) =
        config_error("jwt: {keys: [{algorithm: HS256, secret_file: no-such-secret.txt}]}");
    assert_eq!(key, "auth.jwt.keys[0].secret_file");
    assert!(
        problem.contains("no-such-secret.txt") && problem.contains("not found"),
        "{problem}"
    );
    let (key, _) = config_error(
        "jwt: {keys: [{kid: a, algorithm: HS256, secret_file: hmac-secret.txt}, {algorithm: RS256, public_key_file: missing.pem}]}",
    );
    assert_eq!(key, "auth.jwt.keys[1].public_key_file");
    let (key, problem) =
        config_error("jwt: {keys: [{algorithm: HS256, secret_env: DG_UNSET_VAR}]}");
    assert_eq!(key, "auth.jwt.keys[0].secret_env");
    assert!(problem.contains("DG_UNSET_VAR"), "{problem}");
    let (key, _) = config_error("jwt: {jwks_file: missing.json}");
    assert_eq!(key, "auth.jwt.jwks_file");
}

#[test]
fn semantic_config_errors_name_the_key() {
    let (key, _) = config_error(
        "jwt: {keys: [{algorithm: HS256, secret_file: hmac-secret.txt, secret_env: DG_TEST_SECRET}]}",
    );
    assert_eq!(key, "auth.jwt.keys[0]");
    let leeway = full_yaml().replace("leeway_seconds: 30", "leeway_seconds: 61");
    let (key, _) = config_error(&leeway);
    assert_eq!(key, "auth.jwt.leeway_seconds");
    let (key, _) = config_error("api_keys: {keys: [{name: a, sha256: not-hex}]}");
    assert_eq!(key, "auth.api_keys.keys[0].sha256");
}

#[test]
fn unknown_fields_are_parse_errors() {
    let error = serde_yaml::from_str::<AuthConfig>(
        "jwt: {keys: [{algorithm: HS256, secret_file: x, secret: y}]}",
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("unknown field `secret`"),
        "{error}"
    );
    assert!(serde_yaml::from_str::<AuthConfig>("jwt: {leeway: 3, keys: []}").is_err());
}

#[test]
fn key_files_must_hold_a_fitting_public_key() {
    let (key, problem) =
        config_error("jwt: {keys: [{algorithm: RS256, public_key_file: rsa-private.pem}]}");
    assert_eq!(key, "auth.jwt.keys[0].public_key_file");
    assert!(problem.contains("private key"), "{problem}");
    let (_, problem) =
        config_error("jwt: {keys: [{algorithm: ES384, public_key_file: ec-p256-public.pem}]}");
    assert!(problem.contains("curve"), "{problem}");
    let (_, problem) =
        config_error("jwt: {keys: [{algorithm: RS256, public_key_file: ec-p256-public.pem}]}");
    assert!(problem.contains("not a valid"), "{problem}");
    let (_, problem) =
        config_error("jwt: {keys: [{algorithm: EdDSA, public_key_file: hmac-secret.txt}]}");
    assert!(problem.contains("not a PEM public key"), "{problem}");
    assert!(!problem.contains(HMAC_SECRET), "{problem}");
}

#[test]
fn jwks_keys_must_pin_their_algorithm() {
    let directory = tempfile::tempdir().unwrap();
    let original: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    let write = |name: &str, jwks: &Value| {
        std::fs::write(directory.path().join(name), jwks.to_string()).unwrap();
    };
    let mut no_alg = original.clone();
    no_alg["keys"][0].as_object_mut().unwrap().remove("alg");
    write("no-alg.json", &no_alg);
    let mut wrong_family = original.clone();
    wrong_family["keys"][0]["alg"] = json!("ES256");
    write("wrong-family.json", &wrong_family);
    let mut encryption = original.clone();
    encryption["keys"][0]["use"] = json!("enc");
    write("encryption.json", &encryption);
    let mut duplicate = original.clone();
    let first = duplicate["keys"][0].clone();
    duplicate["keys"].as_array_mut().unwrap().push(first);
    write("duplicate.json", &duplicate);

    let load = |name: &str| {
        let config = parse(&format!("jwt: {{jwks_file: {name}}}"));
        Authenticator::from_config_with_env(&config, directory.path(), &test_env)
    };
    for (name, needle) in [
        ("no-alg.json", "no `alg`"),
        ("wrong-family.json", "does not match"),
        ("duplicate.json", "more than one key"),
    ] {
        match load(name) {
            Err(AuthnError::Config(error)) => {
                assert_eq!(error.key, "auth.jwt.jwks_file");
                assert!(error.problem.contains(needle), "{name}: {error}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // An encryption-only key is skipped, so a token for it finds no key.
    let authenticator = load("encryption.json").unwrap();
    let token = sign(
        Algorithm::RS256,
        Some("jwks-rsa-1"),
        &good_claims(),
        "rsa-private.pem",
    );
    assert_eq!(
        authenticator.authenticate(Some(&bearer(&token)), None),
        Err(AuthnError::UnknownKey)
    );
}

// ---------------------------------------------------------------- minting

#[test]
fn minted_tokens_round_trip() {
    let config = parse(&full_yaml());
    let mut extra = serde_json::Map::new();
    extra.insert("tenant_id".into(), json!(9));
    let request = MintRequest {
        subject: "dora".into(),
        roles: vec!["Gamma".into()],
        teams: vec!["eng".into(), "bi".into()],
        org_role: Some(BasicRole::Viewer),
        ttl: Duration::from_secs(300),
        extra_claims: extra,
    };
    let token = mint_token(&config, &fixtures(), &request).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.kid.as_deref(), Some("hmac-1"));
    assert_eq!(header.alg, Algorithm::HS256);
    let principal = authenticator()
        .authenticate(Some(&bearer(&token)), None)
        .unwrap();
    assert_eq!(principal.kind, PrincipalKind::User);
    assert_eq!(principal.username, "dora");
    assert_eq!(principal.user_id.as_deref(), Some("dora"));
    assert_eq!(principal.roles, vec!["Gamma"]);
    assert_eq!(principal.teams, vec!["eng", "bi"]);
    assert_eq!(principal.basic_role, Some(BasicRole::Viewer));
    assert_eq!(principal.claims["tenant_id"], json!(9));
    assert_eq!(principal.claims["iss"], json!("https://idp.example"));

    let mut clashing = request.clone();
    clashing
        .extra_claims
        .insert("roles".into(), json!(["Admin"]));
    assert!(matches!(
        mint_token(&config, &fixtures(), &clashing),
        Err(AuthnError::InvalidClaim { claim, .. }) if claim == "roles"
    ));
}

#[test]
fn minting_without_an_hmac_key_is_a_clear_config_error() {
    let request = MintRequest {
        subject: "dora".into(),
        roles: vec![],
        teams: vec![],
        org_role: None,
        ttl: Duration::from_secs(60),
        extra_claims: serde_json::Map::new(),
    };
    for yaml in [
        "jwt: {keys: [{algorithm: RS256, public_key_file: rsa-public.pem}]}",
        "anonymous: {enabled: true}",
    ] {
        match mint_token_with_env(&parse(yaml), &fixtures(), &request, &test_env) {
            Err(error @ AuthnError::Config(_)) => {
                assert!(
                    error.to_string().contains("no HMAC key configured"),
                    "{error}"
                )
            }
            other => panic!("{yaml}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- client-facing messages

#[test]
fn client_facing_errors_carry_no_paths_or_secrets() {
    let authenticator = authenticator();
    let public_pem = String::from_utf8(fixture("rsa-public.pem")).unwrap();
    let outcomes = [
        authenticator.authenticate(None, Some("wrong")),
        authenticator.authenticate(Some("Basic x"), None),
        auth_jwt(&sign(Algorithm::HS256, None, &good_claims(), &public_pem)),
        auth_jwt(&hs256(&with(good_claims(), "exp", json!(1)))),
        auth_jwt(&hs256(&with(good_claims(), "roles", json!(1)))),
        auth_jwt("a.b"),
    ];
    for outcome in outcomes {
        let error = outcome.unwrap_err();
        assert!(!error.is_config_error());
        let message = error.to_string();
        assert!(!message.contains('/'), "{message}");
        assert!(!message.contains(HMAC_SECRET), "{message}");
    }
}

// ---------------------------------------------------------------- verified-token cache

#[test]
fn repeated_tokens_give_the_same_principal_with_or_without_cache() {
    let uncached = full_yaml().replace(
        "  jwks_file: jwks.json",
        "  jwks_file: jwks.json\n  verified_token_cache_entries: 0",
    );
    let token = sign(
        Algorithm::ES256,
        Some("ec-1"),
        &good_claims(),
        "ec-p256-private.pem",
    );
    for authenticator in [authenticator(), build(&uncached).unwrap()] {
        let first = authenticator
            .authenticate(Some(&bearer(&token)), None)
            .unwrap();
        let second = authenticator
            .authenticate(Some(&bearer(&token)), None)
            .unwrap();
        assert_eq!(first, second);
        assert_eq!(first.claims, second.claims);
        // A cached token does not make a tampered variant acceptable.
        let signature_start = token.rfind('.').unwrap() + 1;
        let replacement = if token[signature_start..].starts_with('A') {
            "B"
        } else {
            "A"
        };
        let mut tampered = token.clone();
        tampered.replace_range(signature_start..=signature_start, replacement);
        assert!(
            authenticator
                .authenticate(Some(&bearer(&tampered)), None)
                .is_err()
        );
    }
}

// ------------------------------------------------- claims read two ways (issue 10)

/// A correctly signed HS256 token over exactly these header and payload bytes.
fn hs256_over_raw_payload(payload: &str) -> String {
    let header = b64(&json!({"alg": "HS256", "typ": "JWT", "kid": "hmac-1"}));
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{signature}")
}

#[test]
fn a_token_naming_one_claim_twice_is_refused_not_read_last_wins() {
    let exp = now() + 600;
    // serde_json (and so jsonwebtoken) would keep the second `roles`; other JWT
    // libraries keep the first.
    let payload = format!(
        r#"{{"sub":"u-1","iss":"https://idp.example","aud":"datagate","exp":{exp},"roles":["Gamma"],"roles":["Admin"]}}"#
    );
    assert_eq!(
        auth_jwt(&hs256_over_raw_payload(&payload)),
        Err(AuthnError::Malformed(Malformed::RepeatedClaim))
    );
    let nested = format!(
        r#"{{"sub":"u-1","iss":"https://idp.example","aud":"datagate","exp":{exp},"realm":{{"r":1,"r":2}}}}"#
    );
    assert_eq!(
        auth_jwt(&hs256_over_raw_payload(&nested)),
        Err(AuthnError::Malformed(Malformed::RepeatedClaim))
    );
    let fine = format!(
        r#"{{"sub":"u-1","iss":"https://idp.example","aud":"datagate","exp":{exp},"roles":["Gamma"]}}"#
    );
    assert!(auth_jwt(&hs256_over_raw_payload(&fine)).is_ok());
}

#[test]
fn iss_must_be_a_single_string() {
    // jsonwebtoken accepts an array `iss` containing the configured issuer.
    let claims = with(
        good_claims(),
        "iss",
        json!(["https://idp.example", "https://evil.example"]),
    );
    match auth_jwt(&hs256(&claims)) {
        Err(AuthnError::InvalidClaim { claim, .. }) => assert_eq!(claim, "iss"),
        other => panic!("array iss accepted: {other:?}"),
    }
    let claims = with(good_claims(), "iss", json!(42));
    assert!(auth_jwt(&hs256(&claims)).is_err());
    // Without a configured issuer, a non-string `iss` is refused just the same.
    let no_issuer = build(&full_yaml().replace("  issuer: https://idp.example\n", "")).unwrap();
    let claims = with(good_claims(), "iss", json!(["a", "b"]));
    assert!(
        no_issuer
            .authenticate(Some(&bearer(&hs256(&claims))), None)
            .is_err()
    );
}
