//! Token signing and identity shaping; the STS cache is tested against moto in
//! `tests/aws_iam.rs`.

use super::*;

fn credentials() -> Credentials {
    Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        Some("session-token".into()),
        None,
        "test",
    )
}

fn query_of(token: &str) -> Vec<(String, String)> {
    let (_, query) = token.split_once("/?").unwrap();
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

#[test]
fn rds_tokens_are_presigned_connect_urls() {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let token = rds_auth_token(
        &credentials(),
        "eu-west-1",
        "db.cluster-x.eu-west-1.rds.amazonaws.com",
        5432,
        "report user",
        at,
    )
    .unwrap();
    assert!(
        token.starts_with("db.cluster-x.eu-west-1.rds.amazonaws.com:5432/?"),
        "{token}"
    );
    let query = query_of(&token);
    let get = |name: &str| {
        query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_else(|| panic!("`{name}` missing from {token}"))
    };
    assert_eq!(get("Action"), "connect");
    assert_eq!(get("DBUser"), "report user");
    assert_eq!(get("X-Amz-Algorithm"), "AWS4-HMAC-SHA256");
    assert_eq!(
        get("X-Amz-Credential"),
        "AKIDEXAMPLE/20270115/eu-west-1/rds-db/aws4_request"
    );
    assert_eq!(get("X-Amz-Date"), "20270115T080000Z");
    assert_eq!(get("X-Amz-Expires"), "900");
    assert_eq!(get("X-Amz-SignedHeaders"), "host");
    assert_eq!(get("X-Amz-Security-Token"), "session-token");
    assert_eq!(get("X-Amz-Signature").len(), 64);
}

#[test]
fn a_token_signature_validates_with_the_same_credentials_only() {
    let at = SystemTime::now();
    let token = rds_auth_token(&credentials(), "us-east-1", "h", 3306, "app", at).unwrap();
    // Validate the way a verifier would: re-sign the same request at the token's own
    // timestamp and compare signatures.
    let again = rds_auth_token(&credentials(), "us-east-1", "h", 3306, "app", at).unwrap();
    let signature = |token: &str| {
        query_of(token)
            .into_iter()
            .find(|(key, _)| key == "X-Amz-Signature")
            .unwrap()
            .1
    };
    assert_eq!(signature(&token), signature(&again));
    let other = Credentials::new(
        "AKIDEXAMPLE",
        "another-secret",
        Some("session-token".into()),
        None,
        "test",
    );
    let forged = rds_auth_token(&other, "us-east-1", "h", 3306, "app", at).unwrap();
    assert_ne!(signature(&token), signature(&forged));
    let other_user = rds_auth_token(&credentials(), "us-east-1", "h", 3306, "admin", at).unwrap();
    assert_ne!(signature(&token), signature(&other_user));
    let other_port = rds_auth_token(&credentials(), "us-east-1", "h", 3307, "app", at).unwrap();
    assert_ne!(signature(&token), signature(&other_port));
}

#[test]
fn source_identities_fit_sts_rules() {
    assert_eq!(source_identity("alice@example.com"), "alice@example.com");
    assert_eq!(source_identity("O'Brien x"), "O-Brien-x");
    assert_eq!(source_identity("a"), "a-");
    assert_eq!(source_identity(&"x".repeat(100)).len(), 64);
    assert_eq!(session_name(Some("alice")), "datagate-alice");
    assert!(session_name(Some(&"y".repeat(64))).len() <= 64);
}

#[test]
fn iam_settings_are_checked_without_echoing_values() {
    let mut iam = AwsIamConfig {
        role_arn: "arn:aws:iam::123456789012:role/db".into(),
        external_id: None,
        region: "us-east-1".into(),
        db_user: "app".into(),
        engine: Engine::AuroraPostgresql,
        host: Some("h".into()),
        port: Some(5432),
        cluster_identifier: None,
        workgroup: None,
        database: None,
    };
    assert!(iam.validate().is_ok());
    iam.role_arn = "not-an-arn-123456789012".into();
    let error = iam.validate().unwrap_err();
    assert!(!error.contains("123456789012"), "{error}");
    assert!(!format!("{iam:?}").contains("123456789012"));
}
