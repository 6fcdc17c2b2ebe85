use super::*;

fn table(yaml: &str) -> Result<RouteTable, RouteError> {
    let config: RoutesConfig = serde_yaml::from_str(yaml).unwrap();
    RouteTable::from_config(&config)
}

fn matched<'t>(table: &'t RouteTable, method: &str, path: &str) -> Option<(&'t str, PathParams)> {
    match table.resolve(method, &canonicalize_path(path).unwrap()) {
        Resolution::Matched { route, params } => Some((route.name(), params)),
        Resolution::Unmatched(_) => None,
    }
}

const TABLE: &str = r#"
table:
  - {name: chart-any, methods: [GET], path: "/api/v1/chart/{pk}"}
  - {name: chart-info, methods: [GET], path: "/api/v1/chart/_info"}
  - {name: chart-rest, methods: ["*"], path: "/api/v1/chart/{*rest}"}
  - {name: datasette, methods: [GET], path: "/{db}.json"}
  - {name: datasette-table, methods: [GET], path: "/{db}/{table}.json"}
  - {name: root-any, methods: [GET], path: "/{page}"}
  - {name: execute, methods: [POST], path: "/api/v1/sqllab/execute/"}
"#;

#[test]
fn most_specific_template_wins() {
    let table = table(TABLE).unwrap();
    assert_eq!(
        matched(&table, "GET", "/api/v1/chart/_info").unwrap().0,
        "chart-info"
    );
    let (name, params) = matched(&table, "GET", "/api/v1/chart/42").unwrap();
    assert_eq!(name, "chart-any");
    assert_eq!(params.get("pk"), Some("42"));
    let (name, params) = matched(&table, "DELETE", "/api/v1/chart/42/data/x").unwrap();
    assert_eq!(name, "chart-rest");
    assert_eq!(params.get("rest"), Some("42/data/x"));
    let (name, params) = matched(&table, "GET", "/demo.json").unwrap();
    assert_eq!(name, "datasette");
    assert_eq!(params.get("db"), Some("demo"));
    assert_eq!(matched(&table, "GET", "/demo").unwrap().0, "root-any");
    let (_, params) = matched(&table, "GET", "/demo/orders.json").unwrap();
    assert_eq!(params.get("table"), Some("orders"));
    assert!(
        matched(&table, "POST", "/api/v1/sqllab/execute").is_none(),
        "trailing slash matters"
    );
    assert!(
        matched(&table, "GET", "/api/v1/sqllab/execute/").is_none(),
        "method matters"
    );
    assert_eq!(
        matched(&table, "POST", "/api/v1/sqllab/execute/")
            .unwrap()
            .0,
        "execute"
    );
}

#[test]
fn parameters_are_decoded() {
    let table = table(TABLE).unwrap();
    let (_, params) = matched(&table, "GET", "/api/v1/chart/a%20b").unwrap();
    assert_eq!(params.get("pk"), Some("a b"));
    assert_ne!(
        matched(&table, "GET", "/.json").unwrap().0,
        "datasette",
        "empty parameter does not match"
    );
}

#[test]
fn unmatched_policy_is_reported() {
    let table = table("unmatched: authenticated\ntable: []").unwrap();
    assert!(matches!(
        table.resolve("GET", "/x"),
        Resolution::Unmatched(UnmatchedPolicy::Authenticated)
    ));
    let table = table_default();
    assert!(matches!(
        table.resolve("GET", "/x"),
        Resolution::Unmatched(UnmatchedPolicy::Deny)
    ));
}

fn table_default() -> RouteTable {
    table("{}").unwrap()
}

#[test]
fn config_errors_name_the_key() {
    for (yaml, key, fragment) in [
        (
            "table: [{name: a, methods: [GET], path: x}]",
            "routes.table[0].path",
            "start with",
        ),
        (
            "table: [{name: a, methods: [get], path: /x}]",
            "routes.table[0].methods[0]",
            "get",
        ),
        (
            "table: [{name: a, methods: [], path: /x}]",
            "routes.table[0].methods",
            "at least one",
        ),
        (
            "table: [{name: a, methods: [GET], path: /x}, {name: a, methods: [GET], path: /y}]",
            "routes.table[1].name",
            "another route",
        ),
        (
            "table: [{name: a, methods: [GET], path: \"/{}\"}]",
            "routes.table[0].path",
            "parameter name",
        ),
        (
            "table: [{name: a, methods: [GET], path: \"/{a}/{a}\"}]",
            "routes.table[0].path",
            "twice",
        ),
        (
            "table: [{name: a, methods: [GET], path: \"/{*rest}/x\"}]",
            "routes.table[0].path",
            "last segment",
        ),
        (
            "table: [{name: a, methods: [GET], path: /x, permissions: {any_of: [read Chart]}}]",
            "routes.table[0].permissions.any_of[0]",
            "can_<action> on <View>",
        ),
        (
            "table: [{name: a, methods: [GET], path: /x, datasource: {action: q, uids: [{path_param: uid}]}}]",
            "routes.table[0].datasource.uids[0]",
            "not a parameter",
        ),
        (
            "table: [{name: a, methods: [GET], path: /x, datasource: {action: q, uids: [{json_pointer: queries}]}}]",
            "routes.table[0].datasource.uids[0]",
            "start with `/`",
        ),
        (
            "table: [{name: a, methods: [GET], path: /x, datasource: {action: q, uids: [{json_pointer: /a~2}]}}]",
            "routes.table[0].datasource.uids[0]",
            "`~`",
        ),
        (
            "table: [{name: a, methods: [GET], path: /x, datasource: {action: \"\", uids: [{query_param: d}]}}]",
            "routes.table[0].datasource.action",
            "empty",
        ),
        ("max_body_bytes: 70000", "routes.max_body_bytes", "64 KiB"),
    ] {
        let error = table(yaml).unwrap_err();
        match &error {
            RouteError::Config { key: got, message } => {
                assert_eq!(got, key, "{yaml}");
                assert!(message.contains(fragment), "{yaml}: {message}");
            }
            other => panic!("{yaml}: {other}"),
        }
    }
}

fn requirement(yaml: &str) -> (RouteTable, String) {
    let table = table(yaml).unwrap();
    let name = table.routes().next().unwrap().name().to_string();
    (table, name)
}

fn uids(
    table: &RouteTable,
    path: &str,
    query: Option<&str>,
    body: Option<&str>,
    content_type: Option<&str>,
) -> Result<Vec<String>, RouteError> {
    let Resolution::Matched { route, params } = table.resolve("POST", path) else {
        panic!("no match for {path}");
    };
    extract_datasource_uids(
        route.datasource().unwrap(),
        &params,
        query,
        body.map(str::as_bytes),
        content_type,
    )
}

#[test]
fn grafana_query_bodies_name_every_datasource() {
    let (table, _) = requirement(
        "table: [{name: q, methods: [POST], path: /api/ds/query, datasource: {action: datasources:query, uids: [{json_pointer: /queries/*/datasource/uid}]}}]",
    );
    let body = r#"{"queries":[{"datasource":{"uid":"a"}},{"datasource":{"uid":"b"}},{"datasource":{"uid":"a"}},{"datasource":{"uid":7}}]}"#;
    assert_eq!(
        uids(
            &table,
            "/api/ds/query",
            None,
            Some(body),
            Some("application/json")
        )
        .unwrap(),
        vec!["a", "b", "7"]
    );
    assert!(matches!(
        uids(&table, "/api/ds/query", None, Some(r#"{"queries":[{"datasource":{"uid":{"x":1}}}]}"#), None),
        Err(RouteError::InvalidUid { location, .. }) if location == "/queries/0/datasource/uid"
    ));
    assert!(matches!(
        uids(
            &table,
            "/api/ds/query",
            None,
            Some(r#"{"queries": ["#),
            None
        ),
        Err(RouteError::MalformedJson(_))
    ));
    assert!(matches!(
        uids(
            &table,
            "/api/ds/query",
            None,
            Some(r#"{"queries":[]}"#),
            None
        ),
        Err(RouteError::NoDatasource(_))
    ));
    assert!(matches!(
        uids(
            &table,
            "/api/ds/query",
            None,
            Some(r#"{"queries":[{"datasource":{"uid":""}}]}"#),
            None
        ),
        Err(RouteError::EmptyUid(_))
    ));
    assert!(table.routes().next().unwrap().needs_body());
}

#[test]
fn query_parameters_path_parameters_and_form_fields() {
    let (table, _) = requirement(
        "table: [{name: q, methods: [POST], path: \"/ds/{uid}\", datasource: {action: a, uids: [{path_param: uid}, {query_param: ds}, {form_field: ds}]}}]",
    );
    let found = uids(
        &table,
        "/ds/one",
        Some("ds=two&ds=three+3&x=1"),
        Some("ds=four"),
        Some("application/x-www-form-urlencoded; charset=utf-8"),
    )
    .unwrap();
    assert_eq!(found, vec!["one", "two", "three 3", "four"]);
    let found = uids(
        &table,
        "/ds/one",
        None,
        Some("ds=four"),
        Some("application/json"),
    )
    .unwrap();
    assert_eq!(found, vec!["one"], "form fields only from form bodies");
}

#[test]
fn role_permissions_parse_strictly() {
    assert_eq!(
        RolePermission::parse(" can_read on Chart "),
        Some(RolePermission {
            action: "can_read".into(),
            view: "Chart".into()
        })
    );
    assert_eq!(
        RolePermission::parse("can_read on Chart")
            .unwrap()
            .to_string(),
        "can_read on Chart"
    );
    for bad in [
        "read on Chart",
        "can_read Chart",
        "can_read on ",
        "can read on Chart",
    ] {
        assert!(RolePermission::parse(bad).is_none(), "{bad}");
    }
}
