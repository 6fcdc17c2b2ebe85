//! The admin API end to end: real `datagate` processes with a real store (SQLite always,
//! PostgreSQL when `DATAGATE_TEST_PG_URL` is set), real HTTP, and the proxy's decisions
//! checked against the demo upstream's recorder after every write.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;

use datagate::principal::BasicRole;
use serde_json::{Value, json};
use support::gateway::{Gateway, GatewayOptions};
use support::{call, clear_recorded, recorded_requests, spawn_upstream};

fn sqlite_store() -> String {
    "url: sqlite:store/datagate.db\npoll_interval: 100ms\nmax_staleness: 5s\n".to_string()
}

fn postgres_store(url: &str) -> String {
    format!("url: {url}\npoll_interval: 100ms\nmax_staleness: 5s\n")
}

/// Every store backend available here, as `store:` YAML.
fn store_backends() -> Vec<(&'static str, String)> {
    let mut backends = vec![("sqlite", sqlite_store())];
    match support::fresh_postgres_database("it") {
        Some((url, _)) => backends.push(("postgres", postgres_store(&url))),
        None => eprintln!("DATAGATE_TEST_PG_URL not set: PostgreSQL store not tested"),
    }
    backends
}

fn start(store_yaml: String) -> (Gateway, support::ChildProcess, std::net::SocketAddr) {
    let (upstream_process, upstream) = spawn_upstream(&[]);
    let mut options = GatewayOptions::new(upstream);
    options.store_yaml = Some(store_yaml);
    (Gateway::start(options), upstream_process, upstream)
}

/// What a user gets from the proxy for `GET /api/datasources/uid/<uid>`
/// (`datasources:read` on that datasource).
fn read_datasource(gateway: &Gateway, token: &str, uid: &str) -> u16 {
    call(
        "GET",
        &gateway.url(&format!("/api/datasources/uid/{uid}")),
        Some(token),
        None,
    )
    .0
}

fn create(gateway: &Gateway, token: &str, path: &str, body: Value) -> Value {
    let (status, created) = call(
        "POST",
        &gateway.admin_url(path),
        Some(token),
        Some(&body.to_string()),
    );
    assert_eq!(status, 201, "POST {path} {body}: {created}");
    // Datasources keep the operator's `uid` (as in Grafana) and get a generated `uuid`.
    let generated = created.get("uuid").unwrap_or(&created["uid"]);
    let generated = generated.as_str().unwrap();
    uuid::Uuid::parse_str(generated)
        .unwrap_or_else(|_| panic!("create response `{generated}` is not a UUID"));
    created
}

fn set_permission(gateway: &Gateway, token: &str, path: &str, permission: &str) -> (u16, Value) {
    call(
        "POST",
        &gateway.admin_url(&format!("/api/access-control/datasources/{path}")),
        Some(token),
        Some(&json!({ "permission": permission }).to_string()),
    )
}

#[test]
fn grafana_permissions_api_grants_and_revokes_with_immediate_effect() {
    for (backend, store_yaml) in store_backends() {
        let (gateway, _upstream_process, upstream) = start(store_yaml);
        let admin = gateway.admin_token();
        let bob_record = create(&gateway, &admin, "/api/users", json!({"login": "bob"}));
        let bob_id = bob_record["id"].as_i64().unwrap();
        let bob = gateway.token("bob", &["Gamma"], &[], None);

        // Before any grant: refused, and the upstream saw nothing.
        clear_recorded(upstream);
        assert_eq!(read_datasource(&gateway, &bob, "demo"), 403, "{backend}");
        assert!(recorded_requests(upstream).is_empty(), "{backend}");

        // Grant; the very next request is allowed.
        let (status, body) =
            set_permission(&gateway, &admin, &format!("demo/users/{bob_id}"), "Query");
        assert_eq!(
            (status, &body),
            (200, &json!({"message": "Permission updated"})),
            "{backend}"
        );
        clear_recorded(upstream);
        assert_eq!(read_datasource(&gateway, &bob, "demo"), 200, "{backend}");
        let forwarded = recorded_requests(upstream);
        assert_eq!(forwarded.len(), 1, "{backend}");
        assert_eq!(forwarded[0].header_values("x-datagate-user"), vec!["bob"]);
        assert_eq!(forwarded[0].header_values("x-datagate-teams"), vec![""]);

        let (status, listing) = call(
            "GET",
            &gateway.admin_url("/api/access-control/datasources/demo"),
            Some(&admin),
            None,
        );
        assert_eq!(status, 200);
        let item = listing
            .as_array()
            .unwrap()
            .iter()
            .find(|item| item["userId"] == json!(bob_id))
            .unwrap_or_else(|| panic!("{backend}: no item for bob in {listing}"));
        assert_eq!(item["userLogin"], "bob");
        assert_eq!(item["permission"], "Query");
        assert_eq!(item["isManaged"], true);
        assert_eq!(item["isInherited"], false);
        assert_eq!(item["isServiceAccount"], false);
        assert_eq!(
            item["roleName"],
            format!("managed:users:{bob_id}:permissions")
        );
        assert_eq!(
            item["actions"],
            json!(["datasources:read", "datasources:query"])
        );
        for item in listing.as_array().unwrap() {
            for key in [
                "id",
                "roleName",
                "isManaged",
                "isInherited",
                "isServiceAccount",
                "actions",
                "permission",
            ] {
                assert!(
                    item.get(key).is_some(),
                    "{backend}: `{key}` missing from {item}"
                );
            }
        }
        // File grants are listed as unmanaged (policies/20-grafana-datasources.csv).
        assert!(
            listing
                .as_array()
                .unwrap()
                .iter()
                .any(|item| item["builtInRole"] == "Viewer" && item["isManaged"] == false)
        );

        // Revoke; the very next request is refused and never reaches the upstream.
        let (status, body) = set_permission(&gateway, &admin, &format!("demo/users/{bob_id}"), "");
        assert_eq!(
            (status, &body),
            (200, &json!({"message": "Permission removed"}))
        );
        clear_recorded(upstream);
        assert_eq!(read_datasource(&gateway, &bob, "demo"), 403, "{backend}");
        assert!(recorded_requests(upstream).is_empty(), "{backend}");
        // Removing what is not there is still a success, as in Grafana.
        let (status, _) = set_permission(&gateway, &admin, &format!("demo/users/{bob_id}"), "");
        assert_eq!(status, 200);

        // Teams: a grant to a team reaches its members, whether membership comes from the
        // token or from the store.
        let team = create(&gateway, &admin, "/api/teams", json!({"name": "analysts"}));
        let team_id = team["id"].as_i64().unwrap();
        let (status, _) =
            set_permission(&gateway, &admin, &format!("demo/teams/{team_id}"), "Edit");
        assert_eq!(status, 200);
        let token_member = gateway.token("carol", &[], &["analysts"], None);
        assert_eq!(
            read_datasource(&gateway, &token_member, "demo"),
            200,
            "{backend}"
        );
        assert_eq!(read_datasource(&gateway, &bob, "demo"), 403);
        let (status, _) = call(
            "POST",
            &gateway.admin_url(&format!("/api/teams/{team_id}/members")),
            Some(&admin),
            Some(&json!({"user_id": bob_id}).to_string()),
        );
        assert_eq!(status, 200);
        clear_recorded(upstream);
        assert_eq!(
            read_datasource(&gateway, &bob, "demo"),
            200,
            "{backend}: store membership"
        );
        // The same token as before: what the upstream is told about bob (remembered per
        // caller and snapshot) follows the store write too.
        let forwarded = recorded_requests(upstream);
        assert_eq!(forwarded.len(), 1, "{backend}");
        assert_eq!(
            forwarded[0].header_values("x-datagate-teams"),
            vec!["analysts"],
            "{backend}"
        );
        let (status, _) = call(
            "DELETE",
            &gateway.admin_url(&format!("/api/teams/{team_id}/members/{bob_id}")),
            Some(&admin),
            None,
        );
        assert_eq!(status, 200);
        assert_eq!(read_datasource(&gateway, &bob, "demo"), 403, "{backend}");

        // Built-in roles.
        let (status, _) = set_permission(&gateway, &admin, "demo/builtInRoles/Editor", "Query");
        assert_eq!(status, 200);
        let editor = gateway.token("erin", &[], &[], Some(BasicRole::Editor));
        assert_eq!(read_datasource(&gateway, &editor, "demo"), 200);
        let admin_basic = gateway.token("abe", &[], &[], Some(BasicRole::Admin));
        assert_eq!(
            read_datasource(&gateway, &admin_basic, "demo"),
            200,
            "Admin ⊃ Editor"
        );
    }
}

#[test]
fn grafana_permissions_api_refuses_bad_input_and_the_unauthorised() {
    let (gateway, _upstream_process, _upstream) = start(sqlite_store());
    let admin = gateway.admin_token();
    let user = create(&gateway, &admin, "/api/users", json!({"login": "dana"}));
    let dana_id = user["id"].as_i64().unwrap();
    let path = format!("demo/users/{dana_id}");
    let post = |token: Option<&str>, path: &str, body: &str| {
        call(
            "POST",
            &gateway.admin_url(&format!("/api/access-control/datasources/{path}")),
            token,
            Some(body),
        )
    };
    let message = |body: &Value| body["message"].as_str().unwrap_or_default().to_string();

    let (status, body) = post(Some(&admin), &path, r#"{"permission": "Owner"}"#);
    assert_eq!(status, 400);
    assert!(message(&body).contains("`Owner`"), "{body}");
    let (status, body) = post(Some(&admin), &path, r#"{"permission": "Query",}"#);
    assert_eq!(status, 400, "trailing comma is not JSON: {body}");
    assert!(message(&body).contains("invalid JSON"), "{body}");
    let (status, body) = post(Some(&admin), &path, r#"{"permision": "Query"}"#);
    assert_eq!(status, 400);
    assert!(message(&body).contains("permision"), "{body}");
    let (status, body) = post(Some(&admin), &path, r#"{"permission": 3}"#);
    assert_eq!(status, 400, "{body}");
    let (status, _) = post(
        Some(&admin),
        &path,
        r#"{"permission": "Query", "permission": ""}"#,
    );
    assert_eq!(status, 400, "repeated keys are refused");
    let (status, _) = post(Some(&admin), &path, "");
    assert_eq!(status, 400);
    let (status, body) = post(Some(&admin), "demo/users/abc", r#"{"permission": "Query"}"#);
    assert_eq!(status, 400);
    assert!(message(&body).contains("`abc`"), "{body}");
    let (status, body) = post(
        Some(&admin),
        "demo/users/9999",
        r#"{"permission": "Query"}"#,
    );
    assert_eq!(
        (status, message(&body)),
        (404, "user `9999` not found".to_string())
    );
    let (status, _) = post(
        Some(&admin),
        "demo/teams/9999",
        r#"{"permission": "Query"}"#,
    );
    assert_eq!(status, 404);
    let (status, body) = post(
        Some(&admin),
        "demo/builtInRoles/Owner",
        r#"{"permission": "Query"}"#,
    );
    assert_eq!(status, 400, "{body}");
    let (status, _) = post(
        Some(&admin),
        "demo/builtInRoles/viewer",
        r#"{"permission": "Query"}"#,
    );
    assert_eq!(status, 400, "Grafana spells it `Viewer`");
    let (status, body) = post(Some(&admin), "nope/users/1", r#"{"permission": "Query"}"#);
    assert_eq!(
        (status, message(&body)),
        (404, "datasource `nope` not found".to_string())
    );
    let (status, _) = call(
        "GET",
        &gateway.admin_url("/api/access-control/datasources/nope"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 404);

    // No token: 401 with a challenge. A Viewer: 403 on reads and writes alike.
    let (status, _) = post(None, &path, r#"{"permission": "Query"}"#);
    assert_eq!(status, 401);
    let viewer = gateway.token("vic", &["Gamma"], &[], Some(BasicRole::Viewer));
    let (status, body) = post(Some(&viewer), &path, r#"{"permission": "Query"}"#);
    assert_eq!(status, 403);
    assert_eq!(
        message(&body),
        "missing permission `datasources.permissions:write` on datasource `demo`"
    );
    let (status, _) = call(
        "GET",
        &gateway.admin_url("/api/access-control/datasources/demo"),
        Some(&viewer),
        None,
    );
    assert_eq!(status, 403);
    for path in [
        "/api/users",
        "/api/users/search",
        "/api/users/lookup?loginOrEmail=dana",
        "/api/teams",
        "/api/teams/search",
        "/api/serviceaccounts/search",
        "/api/audit",
        "/api/roles",
    ] {
        let (status, _) = call("GET", &gateway.admin_url(path), Some(&viewer), None);
        assert_eq!(status, 403, "{path}");
    }
    // Datasources are listed to whoever may read them, as in Grafana.
    let (status, visible) = call(
        "GET",
        &gateway.admin_url("/api/datasources"),
        Some(&viewer),
        None,
    );
    assert_eq!(status, 200, "{visible}");
    let uids: Vec<&str> = visible
        .as_array()
        .unwrap()
        .iter()
        .map(|datasource| datasource["uid"].as_str().unwrap())
        .collect();
    assert_eq!(uids, ["demo"], "a Viewer reads demo only: {visible}");
    let (status, _) = call(
        "GET",
        &gateway.admin_url("/api/datasources/uid/pg_main"),
        Some(&viewer),
        None,
    );
    assert_eq!(status, 403);

    // None of the refused writes changed anything.
    let (_, listing) = call(
        "GET",
        &gateway.admin_url("/api/access-control/datasources/demo"),
        Some(&admin),
        None,
    );
    assert!(
        listing
            .as_array()
            .unwrap()
            .iter()
            .all(|item| item["isManaged"] == false),
        "{listing}"
    );
    let (_, audit) = call("GET", &gateway.admin_url("/api/audit"), Some(&admin), None);
    assert_eq!(audit["total_count"], 1, "only the user creation: {audit}");

    // A datasource Admin manages that datasource and no other.
    let (status, _) = call(
        "POST",
        &gateway.admin_url("/api/datasources"),
        Some(&admin),
        Some(&json!({"uid": "warehouse", "name": "Warehouse", "dialect": "postgres"}).to_string()),
    );
    assert_eq!(status, 201);
    let (status, _) = set_permission(
        &gateway,
        &admin,
        &format!("warehouse/users/{dana_id}"),
        "Admin",
    );
    assert_eq!(status, 200);
    let dana = gateway.token("dana", &[], &[], None);
    let (status, body) = set_permission(
        &gateway,
        &dana,
        &format!("warehouse/users/{dana_id}"),
        "Edit",
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = set_permission(&gateway, &dana, &format!("demo/users/{dana_id}"), "Query");
    assert_eq!(status, 403, "{body}");
    let (status, _) = call(
        "GET",
        &gateway.admin_url("/api/access-control/datasources/demo"),
        Some(&dana),
        None,
    );
    assert_eq!(status, 403);
    let (status, _) = call("GET", &gateway.admin_url("/api/users"), Some(&dana), None);
    assert_eq!(status, 403, "a datasource Admin is not an Admin");
}

#[test]
fn management_api_covers_every_resource() {
    for (backend, store_yaml) in store_backends() {
        let (gateway, _upstream_process, upstream) = start(store_yaml);
        let admin = gateway.admin_token();

        // Users: create, read, update, page, delete; conflicts and unknown fields.
        for index in 0..5 {
            create(
                &gateway,
                &admin,
                "/api/users",
                json!({"login": format!("user{index}"), "email": format!("u{index}@example.com")}),
            );
        }
        // Grafana's paging: `page` from 1, `perpage`, a page past the end is empty.
        let (status, page) = call(
            "GET",
            &gateway.admin_url("/api/users/search?page=2&perpage=2"),
            Some(&admin),
            None,
        );
        assert_eq!(status, 200);
        assert_eq!(
            (
                page["totalCount"].clone(),
                page["page"].clone(),
                page["perPage"].clone(),
                page["users"].as_array().map(Vec::len),
            ),
            (json!(5), json!(2), json!(2), Some(2)),
            "{backend}: {page}"
        );
        assert_eq!(page["users"][0]["login"], "user2");
        let (_, found) = call(
            "GET",
            &gateway.admin_url("/api/users/search?query=U3%40EXAMPLE"),
            Some(&admin),
            None,
        );
        assert_eq!(
            found["totalCount"], 1,
            "{backend}: email, any case: {found}"
        );
        assert_eq!(found["users"][0]["login"], "user3");
        let (_, found) = call(
            "GET",
            &gateway.admin_url("/api/users/search?query=%25"),
            Some(&admin),
            None,
        );
        assert_eq!(found["totalCount"], 0, "{backend}: `%` is literal: {found}");
        let (status, last) = call(
            "GET",
            &gateway.admin_url("/api/users?page=3&perpage=2"),
            Some(&admin),
            None,
        );
        assert_eq!(status, 200);
        assert_eq!(last.as_array().map(Vec::len), Some(1), "{last}");
        let (_, past_the_end) = call(
            "GET",
            &gateway.admin_url("/api/users?page=4&perpage=2"),
            Some(&admin),
            None,
        );
        assert_eq!(past_the_end, json!([]), "{backend}");
        let (status, looked_up) = call(
            "GET",
            &gateway.admin_url("/api/users/lookup?loginOrEmail=u4%40example.com"),
            Some(&admin),
            None,
        );
        assert_eq!((status, &looked_up["login"]), (200, &json!("user4")));
        for bad in [
            "page=0",
            "perpage=5000",
            "page=x",
            "sort=login",
            "page=1&page=2",
            "page_size=2",
        ] {
            let (status, body) = call(
                "GET",
                &gateway.admin_url(&format!("/api/users?{bad}")),
                Some(&admin),
                None,
            );
            assert_eq!(status, 400, "{bad}: {body}");
        }
        let (status, body) = call(
            "POST",
            &gateway.admin_url("/api/users"),
            Some(&admin),
            Some(r#"{"login": "user1"}"#),
        );
        assert_eq!(status, 409, "{backend}: {body}");
        let (status, body) = call(
            "POST",
            &gateway.admin_url("/api/users"),
            Some(&admin),
            Some(r#"{"login": "x", "password": "p"}"#),
        );
        assert_eq!(status, 400, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("password"),
            "{body}"
        );
        let (status, body) = call(
            "POST",
            &gateway.admin_url("/api/users"),
            Some(&admin),
            Some(r#"{"login": "x", "basic_role": "Owner"}"#),
        );
        assert_eq!(status, 400, "{body}");
        let (status, body) = call(
            "POST",
            &gateway.admin_url("/api/users"),
            Some(&admin),
            Some(r#"{"login": "a,b"}"#),
        );
        assert_eq!(status, 400, "{body}");
        let user0 = gateway.token("user0", &[], &[], None);
        assert_eq!(read_datasource(&gateway, &user0, "demo"), 403);
        let (status, updated) = call(
            "PUT",
            &gateway.admin_url("/api/users/1"),
            Some(&admin),
            Some(r#"{"login": "user0", "basic_role": "Editor", "roles": ["sql_lab"]}"#),
        );
        assert_eq!(status, 200);
        assert_eq!(
            (updated["basic_role"].clone(), updated["roles"].clone()),
            (json!("Editor"), json!(["sql_lab"]))
        );
        // The store's basic role reaches the proxy's decisions: Editor ⊃ Viewer, and
        // Viewer has Query on demo (policies/20-grafana-datasources.csv).
        assert_eq!(read_datasource(&gateway, &user0, "demo"), 200, "{backend}");
        let (status, _) = call(
            "GET",
            &gateway.admin_url("/api/users/999"),
            Some(&admin),
            None,
        );
        assert_eq!(status, 404);
        let (status, _) = call(
            "DELETE",
            &gateway.admin_url("/api/users/5"),
            Some(&admin),
            None,
        );
        assert_eq!(status, 200);
        let (status, _) = call(
            "GET",
            &gateway.admin_url("/api/users/5"),
            Some(&admin),
            None,
        );
        assert_eq!(status, 404);

        // Service accounts and tokens: the key is shown once, stored hashed, and works as
        // a bearer token on the proxy until it is deleted.
        let account = create(
            &gateway,
            &admin,
            "/api/serviceaccounts",
            json!({"login": "reporting", "basic_role": "Viewer"}),
        );
        let account_id = account["id"].as_i64().unwrap();
        assert_eq!(account["is_service_account"], true);
        let (status, token) = call(
            "POST",
            &gateway.admin_url(&format!("/api/serviceaccounts/{account_id}/tokens")),
            Some(&admin),
            Some(r#"{"name": "ci"}"#),
        );
        assert_eq!(status, 201, "{token}");
        let key = token["key"].as_str().unwrap().to_string();
        assert!(key.starts_with("dgsa_"));
        let (_, tokens) = call(
            "GET",
            &gateway.admin_url(&format!("/api/serviceaccounts/{account_id}/tokens")),
            Some(&admin),
            None,
        );
        assert_eq!(tokens["total_count"], 1);
        assert!(
            !tokens.to_string().contains(&key),
            "the key is never listed"
        );
        // Viewer basic role (from the store) → Query on demo (policies/20-…csv).
        clear_recorded(upstream);
        assert_eq!(read_datasource(&gateway, &key, "demo"), 200, "{backend}");
        let forwarded = recorded_requests(upstream);
        assert_eq!(forwarded.len(), 1);
        assert_eq!(
            forwarded[0].header_values("X-Datagate-User"),
            vec!["reporting"]
        );
        let (status, _) = call(
            "GET",
            &gateway.url("/api/datasources/uid/demo"),
            Some("dgsa_not-a-real-token"),
            None,
        );
        assert_eq!(status, 401);
        let token_id = token["id"].as_i64().unwrap();
        let (status, _) = call(
            "DELETE",
            &gateway.admin_url(&format!(
                "/api/serviceaccounts/{account_id}/tokens/{token_id}"
            )),
            Some(&admin),
            None,
        );
        assert_eq!(status, 200);
        clear_recorded(upstream);
        assert_eq!(
            read_datasource(&gateway, &key, "demo"),
            401,
            "{backend}: deleted token"
        );
        assert!(recorded_requests(upstream).is_empty());
        let (status, _) = call(
            "GET",
            &gateway.admin_url(&format!("/api/serviceaccounts/{account_id}/tokens")),
            Some(&admin),
            None,
        );
        assert_eq!(status, 200);
        let (status, _) = call(
            "POST",
            &gateway.admin_url("/api/serviceaccounts/1/tokens"),
            Some(&admin),
            Some(r#"{"name": "x"}"#),
        );
        assert_eq!(status, 404, "user 1 is not a service account");
        // A service-account token also authenticates on the admin API (here: no Admin).
        let (status, second) = call(
            "POST",
            &gateway.admin_url(&format!("/api/serviceaccounts/{account_id}/tokens")),
            Some(&admin),
            Some(r#"{"name": "admin-bot"}"#),
        );
        assert_eq!(status, 201);
        let bot_key = second["key"].as_str().unwrap().to_string();
        let (status, _) = call(
            "GET",
            &gateway.admin_url("/api/users"),
            Some(&bot_key),
            None,
        );
        assert_eq!(status, 403);
        let (status, _) = call(
            "PUT",
            &gateway.admin_url(&format!("/api/serviceaccounts/{account_id}")),
            Some(&admin),
            Some(r#"{"login": "reporting", "basic_role": "Viewer", "roles": ["Admin"]}"#),
        );
        assert_eq!(status, 200);
        let (status, _) = call(
            "GET",
            &gateway.admin_url("/api/users"),
            Some(&bot_key),
            None,
        );
        assert_eq!(
            status, 200,
            "{backend}: the store made the service account an Admin"
        );

        // Roles: store role permissions decide proxy routes.
        let analyst = gateway.token("ana", &["ChartReader"], &[], None);
        clear_recorded(upstream);
        assert_eq!(
            call("GET", &gateway.url("/api/v1/chart/1"), Some(&analyst), None).0,
            403
        );
        assert!(recorded_requests(upstream).is_empty());
        let role = create(
            &gateway,
            &admin,
            "/api/roles",
            json!({"name": "ChartReader", "permissions": [{"permission": "can_read", "view": "Chart"}]}),
        );
        assert_eq!(
            call("GET", &gateway.url("/api/v1/chart/1"), Some(&analyst), None).0,
            200,
            "{backend}"
        );
        let role_id = role["id"].as_i64().unwrap();
        let (status, body) = call(
            "PUT",
            &gateway.admin_url(&format!("/api/roles/{role_id}/permissions")),
            Some(&admin),
            Some(r#"{"permissions": [{"permission": "read", "view": "Chart"}]}"#),
        );
        assert_eq!(status, 400, "{body}");
        let (status, body) = call(
            "PUT",
            &gateway.admin_url(&format!("/api/roles/{role_id}/permissions")),
            Some(&admin),
            Some(r#"{"permissions": [{"permission": "can_export_data", "view": "Chart"}]}"#),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["permissions"],
            json!([{"permission": "can_export_data", "view": "Chart"}])
        );
        assert_eq!(
            call("GET", &gateway.url("/api/v1/chart/1"), Some(&analyst), None).0,
            403,
            "{backend}: permission replaced"
        );
        let (status, _) = call(
            "DELETE",
            &gateway.admin_url(&format!("/api/roles/{role_id}")),
            Some(&admin),
            None,
        );
        assert_eq!(status, 200);

        // Datasources: secure settings are write-only.
        let datasource = create(
            &gateway,
            &admin,
            "/api/datasources",
            json!({
                "uid": "finance", "name": "Finance", "dialect": "postgres", "tables": ["ledger"],
                "settings": {"host": "db.internal"}, "secure_settings": {"password": "s3cret-value"}
            }),
        );
        assert!(!datasource.to_string().contains("s3cret-value"));
        assert_eq!(datasource["secure_settings_set"], json!(["password"]));
        let datasource_id = datasource["id"].as_i64().unwrap();
        let (_, listing) = call(
            "GET",
            &gateway.admin_url("/api/datasources"),
            Some(&admin),
            None,
        );
        assert!(!listing.to_string().contains("s3cret-value"));
        let (_, audit) = call(
            "GET",
            &gateway.admin_url("/api/audit?action=datasource.create"),
            Some(&admin),
            None,
        );
        assert!(
            !audit.to_string().contains("s3cret-value"),
            "secrets stay out of the audit trail"
        );
        let (status, body) = call(
            "POST",
            &gateway.admin_url("/api/datasources"),
            Some(&admin),
            Some(r#"{"uid": "demo", "name": "again", "dialect": "sqlite"}"#),
        );
        assert_eq!(
            status, 400,
            "demo is already defined in the config file: {body}"
        );
        let (status, _) = call(
            "POST",
            &gateway.admin_url("/api/datasources"),
            Some(&admin),
            Some(r#"{"uid": "x", "name": "x", "dialect": "oracle"}"#),
        );
        assert_eq!(status, 400);

        // RLS filters are validated like file filters; a bad one leaves nothing behind.
        let (status, body) = call("POST", &gateway.admin_url("/api/rls/filters"), Some(&admin), Some(&json!({
            "name": "broken", "type": "regular", "datasource": "finance", "tables": ["ledger"],
            "roles": ["Gamma"], "clause": "tenant = = 1"
        }).to_string()));
        assert_eq!(status, 400, "{backend}: {body}");
        let (status, body) = call("POST", &gateway.admin_url("/api/rls/filters"), Some(&admin), Some(&json!({
            "name": "no-such-datasource", "type": "regular", "datasource": "nowhere", "tables": ["t"],
            "roles": ["Gamma"], "clause": "1 = 1"
        }).to_string()));
        assert_eq!(status, 400, "{body}");
        let (_, filters) = call(
            "GET",
            &gateway.admin_url("/api/rls/filters"),
            Some(&admin),
            None,
        );
        assert_eq!(
            filters["total_count"], 0,
            "{backend}: refused filters are not stored"
        );
        let filter = create(
            &gateway,
            &admin,
            "/api/rls/filters",
            json!({
                "name": "own_ledger", "type": "regular", "datasource": "finance", "tables": ["ledger"],
                "roles": ["Gamma"], "clause": "owner = '{{ current_username() }}'"
            }),
        );
        let filter_id = filter["id"].as_i64().unwrap();
        let (status, body) = call(
            "DELETE",
            &gateway.admin_url(&format!("/api/datasources/{datasource_id}")),
            Some(&admin),
            None,
        );
        assert_eq!(status, 400, "a filter still uses the datasource: {body}");
        let (status, _) = call(
            "DELETE",
            &gateway.admin_url(&format!("/api/rls/filters/{filter_id}")),
            Some(&admin),
            None,
        );
        assert_eq!(status, 200);
        let (status, _) = call(
            "DELETE",
            &gateway.admin_url(&format!("/api/datasources/{datasource_id}")),
            Some(&admin),
            None,
        );
        assert_eq!(status, 200);

        // The audit trail: who, what, before and after, filterable.
        let (status, audit) = call(
            "GET",
            &gateway.admin_url("/api/audit?user=root&action=role.update&page_size=10"),
            Some(&admin),
            None,
        );
        assert_eq!(status, 200);
        let event = &audit["items"][0];
        assert_eq!(event["actor"], "root");
        assert_eq!(
            event["before"]["permissions"],
            json!([{"permission": "can_read", "view": "Chart"}])
        );
        assert_eq!(
            event["after"]["permissions"],
            json!([{"permission": "can_export_data", "view": "Chart"}])
        );
        let (status, body) = call(
            "GET",
            &gateway.admin_url("/api/audit?from=yesterday"),
            Some(&admin),
            None,
        );
        assert_eq!(status, 400, "{body}");
        let (_, none) = call(
            "GET",
            &gateway.admin_url("/api/audit?from=2999-01-01T00:00:00Z"),
            Some(&admin),
            None,
        );
        assert_eq!(none["total_count"], 0);
        let stream: Vec<Value> = gateway
            .audit_lines()
            .into_iter()
            .filter(|line| line["type"] == "admin_change")
            .collect();
        assert!(
            stream
                .iter()
                .any(|line| line["action"] == "role.update" && line["actor"] == "root"),
            "{backend}"
        );
    }
}

#[test]
fn a_restart_keeps_every_grant() {
    for (backend, store_yaml) in store_backends() {
        let (mut gateway, _upstream_process, _upstream) = start(store_yaml);
        let admin = gateway.admin_token();
        let user = create(&gateway, &admin, "/api/users", json!({"login": "frank"}));
        let frank_id = user["id"].as_i64().unwrap();
        set_permission(&gateway, &admin, &format!("demo/users/{frank_id}"), "Edit");
        let account = create(
            &gateway,
            &admin,
            "/api/serviceaccounts",
            json!({"login": "bot"}),
        );
        let (_, token) = call(
            "POST",
            &gateway.admin_url(&format!("/api/serviceaccounts/{}/tokens", account["id"])),
            Some(&admin),
            Some(r#"{"name": "t"}"#),
        );
        let key = token["key"].as_str().unwrap().to_string();
        set_permission(
            &gateway,
            &admin,
            &format!("demo/users/{}", account["id"]),
            "Query",
        );
        let frank = gateway.token("frank", &[], &[], None);
        let (_, before) = call(
            "GET",
            &gateway.admin_url("/api/access-control/datasources/demo"),
            Some(&admin),
            None,
        );

        gateway.restart();

        let (_, after) = call(
            "GET",
            &gateway.admin_url("/api/access-control/datasources/demo"),
            Some(&admin),
            None,
        );
        assert_eq!(before, after, "{backend}");
        assert_eq!(read_datasource(&gateway, &frank, "demo"), 200, "{backend}");
        assert_eq!(
            read_datasource(&gateway, &key, "demo"),
            200,
            "{backend}: token survives"
        );
        let status = gateway.policy_status();
        assert!(status["store_revision"].as_i64().unwrap() >= 5, "{status}");
    }
}

#[test]
fn concurrent_grants_and_revokes_lose_nothing() {
    for (backend, store_yaml) in store_backends() {
        let (gateway, _upstream_process, _upstream) = start(store_yaml);
        let admin = gateway.admin_token();
        let user = create(&gateway, &admin, "/api/users", json!({"login": "gina"}));
        let gina_id = user["id"].as_i64().unwrap();
        let levels = ["Query", "Edit", "Admin", ""];
        let acknowledged: usize = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|worker| {
                    let gateway = &gateway;
                    let admin = &admin;
                    scope.spawn(move || {
                        let mut acknowledged = 0;
                        for round in 0..12 {
                            let level = levels[(worker + round) % levels.len()];
                            let (status, body) = set_permission(
                                gateway,
                                admin,
                                &format!("demo/users/{gina_id}"),
                                level,
                            );
                            assert_eq!(status, 200, "{body}");
                            acknowledged += 1;
                        }
                        acknowledged
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().unwrap())
                .sum()
        });
        let (_, audit) = call(
            "GET",
            &gateway.admin_url("/api/audit?action=datasource_permission.set&page_size=1000"),
            Some(&admin),
            None,
        );
        assert_eq!(
            audit["total_count"],
            json!(acknowledged),
            "{backend}: one audit event per acknowledged write"
        );
        let revisions: BTreeSet<i64> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["revision"].as_i64().unwrap())
            .collect();
        assert_eq!(
            revisions.len(),
            acknowledged,
            "{backend}: every write got its own revision"
        );
        // The newest event is first; the final state is what it says.
        let last = &audit["items"][0]["after"];
        let expected = last["permission"].as_str().unwrap_or("");
        let (_, listing) = call(
            "GET",
            &gateway.admin_url("/api/access-control/datasources/demo"),
            Some(&admin),
            None,
        );
        let actual = listing
            .as_array()
            .unwrap()
            .iter()
            .find(|item| item["userId"] == json!(gina_id))
            .map(|item| item["permission"].as_str().unwrap().to_string())
            .unwrap_or_default();
        assert_eq!(actual, expected, "{backend}");
        // And the proxy serves that same state.
        let gina = gateway.token("gina", &[], &[], None);
        let expected_status = if expected.is_empty() { 403 } else { 200 };
        assert_eq!(
            read_datasource(&gateway, &gina, "demo"),
            expected_status,
            "{backend}"
        );
        // Successive `before`s chain to the previous `after`: no write was lost between.
        let mut events: Vec<&Value> = audit["items"].as_array().unwrap().iter().collect();
        events.sort_by_key(|event| event["revision"].as_i64().unwrap());
        for pair in events.windows(2) {
            assert_eq!(
                pair[1]["before"], pair[0]["after"],
                "{backend}: {} → {}",
                pair[0], pair[1]
            );
        }
    }
}

#[test]
fn openapi_describes_every_route_and_only_served_ones() {
    let (gateway, _upstream_process, _upstream) = start(sqlite_store());
    let (status, document) = call("GET", &gateway.admin_url("/api/openapi.json"), None, None);
    assert_eq!(status, 200);
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    // Every path the README documents is described.
    for path in [
        "/api/access-control/datasources/{uid}",
        "/api/access-control/datasources/{uid}/users/{id}",
        "/api/access-control/datasources/{uid}/teams/{id}",
        "/api/access-control/datasources/{uid}/builtInRoles/{name}",
        "/api/users",
        "/api/users/{id}",
        "/api/serviceaccounts",
        "/api/serviceaccounts/{id}",
        "/api/serviceaccounts/{id}/tokens",
        "/api/serviceaccounts/{id}/tokens/{token_id}",
        "/api/teams",
        "/api/teams/{id}",
        "/api/teams/{id}/members",
        "/api/teams/{id}/members/{user_id}",
        "/api/roles",
        "/api/roles/{id}",
        "/api/roles/{id}/permissions",
        "/api/rls/filters",
        "/api/rls/filters/{id}",
        "/api/datasources",
        "/api/datasources/{id}",
        "/api/audit",
        "/api/admin/reload",
        "/api/admin/policy/status",
        "/api/authz/explain",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/openapi.json",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} is not in the OpenAPI document"
        );
    }
    // And every described operation is served: no described route falls through to the
    // router's 404 fallback.
    let mut operations = 0;
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let concrete = path
                .replace("{uid}", "demo")
                .replace("{name}", "Viewer")
                .replace("{token_id}", "1")
                .replace("{user_id}", "1")
                .replace("{id}", "1");
            let (status, body) = call(
                &method.to_uppercase(),
                &gateway.admin_url(&concrete),
                None,
                None,
            );
            assert!(
                body["message"] != "no such admin endpoint",
                "{method} {path} is described but not served ({status})"
            );
            operations += 1;
        }
    }
    assert!(operations >= 40, "{operations} operations");
}

#[test]
fn the_grafana_client_package_drives_the_api() {
    let (gateway, _upstream_process, _upstream) = start(sqlite_store());
    let admin = gateway.admin_token();
    // More users than one page of `perpage=1`, so the client's paging is exercised.
    for login in ["ann", "bea"] {
        create(&gateway, &admin, "/api/users", json!({ "login": login }));
    }
    let user = create(
        &gateway,
        &admin,
        "/api/users",
        json!({"login": "harry", "email": "harry@example.com"}),
    );
    let team = create(
        &gateway,
        &admin,
        "/api/teams",
        json!({"name": "grafana-team"}),
    );
    create(
        &gateway,
        &admin,
        "/api/serviceaccounts",
        json!({"login": "reporter"}),
    );
    let viewer = gateway.token("viv", &["Gamma"], &[], Some(BasicRole::Viewer));
    let script = support::gateway::repository_root().join("tests/compat/grafana_client_check.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .args(["--url", &format!("http://{}", gateway.admin)])
        .args([
            "--admin-token",
            &admin,
            "--viewer-token",
            &viewer,
            "--datasource",
            "demo",
        ])
        .args([
            "--user-id",
            &user["id"].to_string(),
            "--team-id",
            &team["id"].to_string(),
            "--user-login",
            "harry",
            "--user-email",
            "harry@example.com",
            "--team-name",
            "grafana-team",
            "--service-account-login",
            "reporter",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "grafana-client checks failed:\n{stdout}"
    );
    assert!(stdout.contains("all checks passed"));
    assert!(!stdout.contains("FAIL"));
}

#[test]
fn without_a_store_management_endpoints_say_so() {
    let (upstream_process, upstream) = spawn_upstream(&[]);
    let gateway = Gateway::start(GatewayOptions::new(upstream));
    let admin = gateway.admin_token();
    let (status, body) = call("GET", &gateway.admin_url("/api/users"), Some(&admin), None);
    assert_eq!(status, 503);
    assert!(
        body["message"].as_str().unwrap().contains("store.url"),
        "{body}"
    );
    // Listings still work: they show the file grants.
    let (status, listing) = call(
        "GET",
        &gateway.admin_url("/api/access-control/datasources/demo"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 200);
    assert!(!listing.as_array().unwrap().is_empty());
    drop(upstream_process);
}

/// Status, `Content-Type` and the body text of one admin call.
fn raw_call(method: &str, url: &str, token: Option<&str>) -> (u16, String, String) {
    let mut request = ureq::request(method, url).timeout(std::time::Duration::from_secs(10));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let response = match request.call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{method} {url}: {error}"),
    };
    let status = response.status();
    let content_type = response
        .header("Content-Type")
        .unwrap_or_default()
        .to_string();
    (
        status,
        content_type,
        response.into_string().unwrap_or_default(),
    )
}

#[test]
fn grant_ids_are_the_grants_own_and_survive_other_revokes() {
    for (backend, store_yaml) in store_backends() {
        let (gateway, _upstream_process, _upstream) = start(store_yaml);
        let admin = gateway.admin_token();
        let ids: Vec<i64> = ["ida", "ivo", "ike"]
            .iter()
            .map(|login| {
                create(&gateway, &admin, "/api/users", json!({ "login": login }))["id"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        for id in &ids {
            let (status, _) =
                set_permission(&gateway, &admin, &format!("demo/users/{id}"), "Query");
            assert_eq!(status, 200);
        }
        let listing = |gateway: &Gateway| -> Vec<Value> {
            let (status, listing) = call(
                "GET",
                &gateway.admin_url("/api/access-control/datasources/demo"),
                Some(&admin),
                None,
            );
            assert_eq!(status, 200);
            listing.as_array().unwrap().clone()
        };
        let grant_id = |items: &[Value], user_id: i64| -> i64 {
            items
                .iter()
                .find(|item| item["userId"] == json!(user_id) && item["isManaged"] == true)
                .unwrap_or_else(|| panic!("no grant for user {user_id} in {items:?}"))["id"]
                .as_i64()
                .unwrap()
        };
        let before = listing(&gateway);
        let all_ids: BTreeSet<i64> = before
            .iter()
            .map(|item| item["id"].as_i64().unwrap())
            .collect();
        assert_eq!(
            all_ids.len(),
            before.len(),
            "{backend}: ids are unique: {before:?}"
        );
        let (first, second, third) = (
            grant_id(&before, ids[0]),
            grant_id(&before, ids[1]),
            grant_id(&before, ids[2]),
        );
        let file_ids: Vec<i64> = before
            .iter()
            .filter(|item| item["isManaged"] == false)
            .map(|item| item["id"].as_i64().unwrap())
            .collect();

        // Revoking the first grant renumbers nothing; changing a level keeps the id.
        let (status, _) = set_permission(&gateway, &admin, &format!("demo/users/{}", ids[0]), "");
        assert_eq!(status, 200);
        let (status, _) =
            set_permission(&gateway, &admin, &format!("demo/users/{}", ids[2]), "Edit");
        assert_eq!(status, 200);
        let after = listing(&gateway);
        assert!(
            after.iter().all(|item| item["userId"] != json!(ids[0])),
            "{after:?}"
        );
        assert_eq!(grant_id(&after, ids[1]), second, "{backend}");
        assert_eq!(
            grant_id(&after, ids[2]),
            third,
            "{backend}: a level change keeps the id"
        );
        let file_ids_after: Vec<i64> = after
            .iter()
            .filter(|item| item["isManaged"] == false)
            .map(|item| item["id"].as_i64().unwrap())
            .collect();
        assert_eq!(
            file_ids, file_ids_after,
            "{backend}: file grant ids are stable"
        );

        // A revoked grant's id is never handed to a new grant.
        let (status, _) =
            set_permission(&gateway, &admin, &format!("demo/users/{}", ids[0]), "Query");
        assert_eq!(status, 200);
        let regranted = grant_id(&listing(&gateway), ids[0]);
        assert_ne!(regranted, first, "{backend}: a new grant, a new id");
        assert!(!all_ids.contains(&regranted), "{backend}");
    }
}

#[test]
fn listings_name_no_policy_files_and_list_role_grants_apart() {
    let (gateway, _upstream_process, _upstream) = start(sqlite_store());
    let admin = gateway.admin_token();
    std::fs::write(
        gateway.policy_dir().join("30-role-grants.csv"),
        "p, role:Gamma, datasources:uid:demo, Query\n",
    )
    .unwrap();
    let (status, body) = call(
        "POST",
        &gateway.admin_url("/api/admin/reload"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 200, "{body}");

    let dana = create(&gateway, &admin, "/api/users", json!({"login": "dana"}));
    let (status, _) = set_permission(
        &gateway,
        &admin,
        &format!("demo/users/{}", dana["id"]),
        "Admin",
    );
    assert_eq!(status, 200);
    let datasource_admin = gateway.token("dana", &[], &[], None);
    for token in [&admin, &datasource_admin] {
        for path in [
            "/api/access-control/datasources/demo",
            "/api/access-control/datasources/demo/role-grants",
        ] {
            let (status, content_type, text) =
                raw_call("GET", &gateway.admin_url(path), Some(token));
            assert_eq!(status, 200, "{path}: {text}");
            assert_eq!(content_type, "application/json; charset=UTF-8");
            for leak in [".csv", "policies", "line ", "file:"] {
                assert!(!text.contains(leak), "{path} names `{leak}`: {text}");
            }
        }
    }
    let (_, listing) = call(
        "GET",
        &gateway.admin_url("/api/access-control/datasources/demo"),
        Some(&admin),
        None,
    );
    for item in listing.as_array().unwrap() {
        let grantee_fields = ["userId", "userLogin", "teamId", "builtInRole"];
        assert!(
            grantee_fields
                .iter()
                .any(|field| item.get(*field).is_some()),
            "every Grafana item names its grantee: {item}"
        );
    }
    let (_, role_grants) = call(
        "GET",
        &gateway.admin_url("/api/access-control/datasources/demo/role-grants"),
        Some(&admin),
        None,
    );
    let gamma = role_grants
        .as_array()
        .unwrap()
        .iter()
        .find(|grant| grant["role"] == "Gamma")
        .unwrap_or_else(|| panic!("no Gamma grant in {role_grants}"));
    assert_eq!(gamma["subject"], "role:Gamma");
    assert_eq!(gamma["permission"], "Query");
    assert!(gamma["id"].as_i64().unwrap() > 0);
}

#[test]
fn every_answer_is_json_with_a_charset_errors_included() {
    let (gateway, _upstream_process, _upstream) = start(sqlite_store());
    let admin = gateway.admin_token();
    for (method, path, token, status) in [
        (
            "DELETE",
            "/api/access-control/datasources/demo",
            Some(&admin),
            405,
        ),
        ("PATCH", "/api/users", Some(&admin), 405),
        ("GET", "/api/no/such/route", Some(&admin), 404),
        ("GET", "/api/users/1", None, 401),
        ("GET", "/api/users/0", Some(&admin), 400),
        ("GET", "/api/users/999", Some(&admin), 404),
        ("GET", "/api/users", Some(&admin), 200),
        ("GET", "/readyz", None, 200),
        ("GET", "/api/health", None, 200),
    ] {
        let (answered, content_type, text) =
            raw_call(method, &gateway.admin_url(path), token.map(String::as_str));
        assert_eq!(answered, status, "{method} {path}: {text}");
        assert_eq!(
            content_type, "application/json; charset=UTF-8",
            "{method} {path}"
        );
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text:?}"));
        if status >= 400 {
            assert!(
                body["message"]
                    .as_str()
                    .is_some_and(|message| !message.is_empty()),
                "{method} {path}: {body}"
            );
        }
    }
}

#[test]
fn grafana_directory_endpoints_answer_in_grafanas_shapes() {
    let (gateway, _upstream_process, _upstream) = start(sqlite_store());
    let admin = gateway.admin_token();
    // Grafana's documented examples: health and build information need no credentials.
    let (status, health) = call("GET", &gateway.admin_url("/api/health"), None, None);
    assert_eq!(status, 200);
    assert_eq!(health["database"], "ok");
    assert!(health["version"].as_str().is_some() && health["commit"].as_str().is_some());
    let (_, settings) = call(
        "GET",
        &gateway.admin_url("/api/frontend/settings"),
        None,
        None,
    );
    assert!(
        settings["buildInfo"]["version"].as_str().is_some(),
        "{settings}"
    );
    let (status, org) = call("GET", &gateway.admin_url("/api/org"), Some(&admin), None);
    assert_eq!(
        (status, &org["id"], &org["name"]),
        (200, &json!(1), &json!("Main Org."))
    );

    let team = create(
        &gateway,
        &admin,
        "/api/teams",
        json!({"name": "MyTestTeam"}),
    );
    create(&gateway, &admin, "/api/teams", json!({"name": "Other"}));
    let (status, found) = call(
        "GET",
        &gateway.admin_url("/api/teams/search?perpage=10&page=1&query=mytest"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(found["totalCount"], 1, "{found}");
    assert_eq!(
        (found["page"].clone(), found["perPage"].clone()),
        (json!(1), json!(10))
    );
    let first = &found["teams"][0];
    assert_eq!(first["id"], team["id"]);
    for key in ["id", "orgId", "name", "email", "avatarUrl", "memberCount"] {
        assert!(first.get(key).is_some(), "`{key}` missing from {first}");
    }
    let (_, exact) = call(
        "GET",
        &gateway.admin_url("/api/teams/search?name=MyTestTea"),
        Some(&admin),
        None,
    );
    assert_eq!(exact["totalCount"], 0, "`name` is exact: {exact}");

    create(
        &gateway,
        &admin,
        "/api/serviceaccounts",
        json!({"login": "grafana", "basic_role": "Viewer"}),
    );
    let (status, accounts) = call(
        "GET",
        &gateway.admin_url("/api/serviceaccounts/search?perpage=10&page=1&query=graf"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(accounts["totalCount"], 1, "{accounts}");
    let account = &accounts["serviceAccounts"][0];
    assert_eq!(
        (
            account["login"].clone(),
            account["role"].clone(),
            account["tokens"].clone()
        ),
        (json!("grafana"), json!("Viewer"), json!(0))
    );
    let (_, past_the_end) = call(
        "GET",
        &gateway.admin_url("/api/serviceaccounts/search?page=2&perpage=10"),
        Some(&admin),
        None,
    );
    assert_eq!(past_the_end["serviceAccounts"], json!([]));

    // Datasources: the config file's (read-only) and the store's, in Grafana's shape;
    // secure settings show as names only.
    let stored = create(
        &gateway,
        &admin,
        "/api/datasources",
        json!({"uid": "finance", "name": "Finance", "dialect": "postgres", "secure_settings": {"password": "s3cret-value"}}),
    );
    let (status, listed) = call(
        "GET",
        &gateway.admin_url("/api/datasources"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 200);
    assert!(!listed.to_string().contains("s3cret-value"));
    let by_uid: std::collections::HashMap<&str, &Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|datasource| (datasource["uid"].as_str().unwrap(), datasource))
        .collect();
    assert_eq!(by_uid["demo"]["readOnly"], true);
    assert_eq!(by_uid["demo"]["type"], "sqlite");
    assert_eq!(by_uid["finance"]["readOnly"], false);
    assert_eq!(by_uid["finance"]["id"], stored["id"]);
    assert_eq!(by_uid["finance"]["name"], "Finance");
    let (status, one) = call(
        "GET",
        &gateway.admin_url("/api/datasources/uid/finance"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(one["secureJsonFields"], json!({"password": true}));
    let (status, demo) = call(
        "GET",
        &gateway.admin_url("/api/datasources/uid/demo"),
        Some(&admin),
        None,
    );
    assert_eq!((status, &demo["id"]), (200, &by_uid["demo"]["id"]));
    let (status, _) = call(
        "GET",
        &gateway.admin_url("/api/datasources/uid/nowhere"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 404);
}
