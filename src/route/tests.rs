//! Route table tests: config validation, precedence, extraction, the example config.

use proptest::prelude::*;

use super::*;

fn parse_config(yaml: &str) -> RoutesConfig {
    match serde_yaml::from_str(yaml) {
        Ok(config) => config,
        Err(error) => panic!("test YAML does not parse: {error}"),
    }
}

fn table(yaml: &str) -> RouteTable {
    match RouteTable::from_config(&parse_config(yaml)) {
        Ok(table) => table,
        Err(error) => panic!("table does not compile: {error}"),
    }
}

fn resolved(table: &RouteTable, method: &str, raw_path: &str) -> Option<(String, PathParams)> {
    let canonical = match canonicalize_path(raw_path) {
        Ok(path) => path,
        Err(error) => panic!("`{raw_path}`: {error}"),
    };
    match table.resolve(method, &canonical) {
        Resolution::Matched { route, params } => Some((route.name().to_string(), params)),
        Resolution::Unmatched(_) => None,
    }
}

fn route_name(table: &RouteTable, method: &str, raw_path: &str) -> Option<String> {
    resolved(table, method, raw_path).map(|(name, _)| name)
}

fn example_table() -> RouteTable {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        routes: RoutesConfig,
    }
    let wrapper: Wrapper =
        match serde_yaml::from_str(include_str!("../../deploy/routes.example.yaml")) {
            Ok(wrapper) => wrapper,
            Err(error) => panic!("example YAML: {error}"),
        };
    match RouteTable::from_config(&wrapper.routes) {
        Ok(table) => table,
        Err(error) => panic!("example routes: {error}"),
    }
}

fn matched_route<'t>(table: &'t RouteTable, method: &str, path: &str) -> (&'t Route, PathParams) {
    match table.resolve(method, path) {
        Resolution::Matched { route, params } => (route, params),
        Resolution::Unmatched(_) => panic!("{method} {path} should match"),
    }
}

/// Parses like the decision path does, then extracts: the tests speak in raw requests.
fn extract_uids(
    requirement: &DatasourceRequirement,
    params: &PathParams,
    query: Option<&str>,
    body: Option<&[u8]>,
    content_type: Option<&str>,
) -> Result<Vec<String>, RouteError> {
    let request = crate::decision::request::ParsedRequest::parse(query, content_type, body)
        .map_err(|error| RouteError::MalformedJson(error.to_string()))?;
    extract_datasource_uids(requirement, params, &request)
}

#[test]
fn tables_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RouteTable>();
    assert_send_sync::<Route>();
    assert_send_sync::<PathParams>();
}

// ---------------------------------------------------------------- precedence

const PRECEDENCE: &str = r#"
unmatched: authenticated
table:
  - {name: chart-by-id, methods: [GET], path: "/api/v1/chart/{pk}"}
  - {name: chart-any-method, methods: ["*"], path: "/api/v1/chart/{pk}"}
  - {name: chart-info, methods: [GET], path: /api/v1/chart/_info}
  - {name: api-rest, methods: [GET], path: "/api/v1/{*rest}"}
  - {name: left-param, methods: [GET], path: "/m/{x}/c"}
  - {name: left-literal, methods: [GET], path: "/m/b/{y}"}
  - {name: bare-page, methods: [GET], path: "/{page}"}
  - {name: db-json, methods: [GET], path: "/{db}.json"}
  - {name: tie-first, methods: [GET, POST], path: "/t/{a}"}
  - {name: tie-second, methods: [GET, PUT], path: "/t/{b}"}
  - {name: no-slash, methods: [GET], path: /s}
  - {name: with-slash, methods: [GET], path: /s/}
  - {name: s-rest, methods: [GET], path: "/s/{*rest}"}
  - {name: head-explicit, methods: [HEAD], path: /h}
  - {name: head-via-get, methods: [GET], path: /h}
"#;

#[test]
fn literal_beats_param_beats_rest() {
    let table = table(PRECEDENCE);
    assert_eq!(
        route_name(&table, "GET", "/api/v1/chart/_info").as_deref(),
        Some("chart-info")
    );
    assert_eq!(
        route_name(&table, "GET", "/api/v1/chart/5").as_deref(),
        Some("chart-by-id")
    );
    assert_eq!(
        route_name(&table, "GET", "/api/v1/dashboard/5").as_deref(),
        Some("api-rest")
    );
    assert_eq!(
        route_name(&table, "GET", "/api/v1/chart/5/x").as_deref(),
        Some("api-rest")
    );
    assert_eq!(
        route_name(&table, "GET", "/x.json").as_deref(),
        Some("db-json")
    );
    assert_eq!(
        route_name(&table, "GET", "/x.csv").as_deref(),
        Some("bare-page")
    );
}

#[test]
fn leftmost_difference_decides() {
    let table = table(PRECEDENCE);
    assert_eq!(
        route_name(&table, "GET", "/m/b/c").as_deref(),
        Some("left-literal")
    );
    assert_eq!(
        route_name(&table, "GET", "/m/z/c").as_deref(),
        Some("left-param")
    );
}

#[test]
fn methods_named_beat_head_via_get_beat_any() {
    let table = table(PRECEDENCE);
    assert_eq!(
        route_name(&table, "DELETE", "/api/v1/chart/5").as_deref(),
        Some("chart-any-method")
    );
    assert_eq!(
        route_name(&table, "HEAD", "/api/v1/chart/5").as_deref(),
        Some("chart-by-id")
    );
    assert_eq!(
        route_name(&table, "HEAD", "/h").as_deref(),
        Some("head-explicit")
    );
    assert_eq!(
        route_name(&table, "GET", "/h").as_deref(),
        Some("head-via-get")
    );
    // Methods are case-sensitive: `get` is not `GET` (the `*` route still takes it).
    assert_eq!(
        route_name(&table, "get", "/api/v1/chart/5").as_deref(),
        Some("chart-any-method")
    );
    assert_eq!(
        route_name(&table, "get", "/api/v1/chart/_info").as_deref(),
        Some("chart-any-method")
    );
    assert_eq!(route_name(&table, "get", "/api/v1/dashboard/1"), None);
}

#[test]
fn ties_go_to_the_first_route() {
    let table = table(PRECEDENCE);
    assert_eq!(
        route_name(&table, "GET", "/t/1").as_deref(),
        Some("tie-first")
    );
    assert_eq!(
        route_name(&table, "PUT", "/t/1").as_deref(),
        Some("tie-second")
    );
}

#[test]
fn trailing_slash_exact_first_then_tolerant() {
    let table = table(PRECEDENCE);
    assert_eq!(route_name(&table, "GET", "/s").as_deref(), Some("no-slash"));
    assert_eq!(
        route_name(&table, "GET", "/s/").as_deref(),
        Some("with-slash")
    );
    assert_eq!(route_name(&table, "GET", "/s/x").as_deref(), Some("s-rest"));
    let only_plain = self::table("table: [{name: q, methods: [POST], path: /api/ds/query}]");
    assert_eq!(
        route_name(&only_plain, "POST", "/api/ds/query/").as_deref(),
        Some("q")
    );
    assert_eq!(
        route_name(&only_plain, "POST", "/api/ds//query").as_deref(),
        Some("q")
    );
}

#[test]
fn unmatched_requests_carry_the_policy() {
    let table = table(PRECEDENCE);
    assert!(matches!(
        table.resolve("GET", "/nothing/here"),
        Resolution::Unmatched(UnmatchedPolicy::Authenticated)
    ));
    assert!(matches!(
        self::table("table: []").resolve("GET", "/"),
        Resolution::Unmatched(UnmatchedPolicy::Deny)
    ));
}

#[test]
fn encoded_spellings_reach_the_same_route() {
    let table = example_table();
    for raw in [
        "/api/datasources/uid/abc",
        "/api/datasources/uid/%61bc",
        "/api//datasources/./uid/abc",
        "/api/x/../datasources/uid/abc",
        "/api%2Fdatasources%2Fuid%2Fabc",
        "/api\\datasources\\uid\\abc",
        "/api/datasources/uid/abc/",
    ] {
        let found = resolved(&table, "DELETE", raw);
        let Some((name, params)) = found else {
            panic!("`{raw}` should match");
        };
        assert_eq!(name, "grafana-datasource-delete", "{raw}");
        assert_eq!(params.get("uid"), Some("abc"), "{raw}");
    }
    // Escaped twice: the uid is the text `a%2Fb`, one segment, as the upstream decodes it.
    let found = resolved(&table, "GET", "/api/datasources/uid/a%252Fb");
    assert_eq!(
        found.map(|(_, params)| params.get("uid").map(str::to_string)),
        Some(Some("a%2Fb".into()))
    );
}

// ---------------------------------------------------------------- config validation

fn config_error_key(yaml: &str) -> (String, String) {
    match RouteTable::from_config(&parse_config(yaml)) {
        Ok(_) => panic!("config should be refused:\n{yaml}"),
        Err(RouteError::Config { key, message }) => (key, message),
        Err(other) => panic!("expected a config error, got {other}"),
    }
}

#[test]
fn each_validation_error_names_its_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "table: [{name: a, methods: [GET], path: /a}, {name: a, methods: [GET], path: /b}]",
            "routes.table[1].name",
            "already the name",
        ),
        (
            "table: [{name: ' ', methods: [GET], path: /a}]",
            "routes.table[0].name",
            "empty",
        ),
        (
            "table: [{name: a, methods: [], path: /a}]",
            "routes.table[0].methods",
            "at least one",
        ),
        (
            "table: [{name: a, methods: [GET, post], path: /a}]",
            "routes.table[0].methods[1]",
            "write `POST`",
        ),
        (
            "table: [{name: a, methods: [FETCH], path: /a}]",
            "routes.table[0].methods[0]",
            "not an HTTP method",
        ),
        (
            "table: [{name: a, methods: [GET, GET], path: /a}]",
            "routes.table[0].methods[1]",
            "twice",
        ),
        (
            "table: [{name: a, methods: [GET], path: a}]",
            "routes.table[0].path",
            "start with `/`",
        ),
        (
            "table: [{name: a, methods: [GET], path: '/a/{}'}]",
            "routes.table[0].path",
            "empty parameter",
        ),
        (
            "table: [{name: a, methods: [GET], path: '/{x}/{x}'}]",
            "routes.table[0].path",
            "twice",
        ),
        (
            "table: [{name: a, methods: [GET], path: '/{*rest}/x'}]",
            "routes.table[0].path",
            "last segment",
        ),
        (
            "table: [{name: a, methods: [GET], path: /a}, {name: b, methods: [GET], path: /b}, {name: c, methods: [GET], path: /c}, {name: d, methods: [GET], path: '/d/{'}]",
            "routes.table[3].path",
            "unbalanced",
        ),
        (
            "table: [{name: a, methods: [GET], path: /a, permissions: {any_of: ['can_read on Chart', 'read Chart']}}]",
            "routes.table[0].permissions.any_of[1]",
            "can_<action> on <View>",
        ),
        (
            "table: [{name: a, methods: [GET], path: /a, permissions: {all_of: ['menu_access on SQL Lab']}}]",
            "routes.table[0].permissions.all_of[0]",
            "can_<action>",
        ),
        (
            "table: [{name: a, methods: [GET], path: '/a/{id}', datasource: {action: datasources:read, uids: [{path_param: uid}]}}]",
            "routes.table[0].datasource.uids[0].path_param",
            "not a parameter",
        ),
        (
            "table: [{name: a, methods: [POST], path: /a, datasource: {action: q, uids: [{query_param: ds}, {json_pointer: 'queries/*'}]}}]",
            "routes.table[0].datasource.uids[1].json_pointer",
            "start with `/`",
        ),
        (
            "table: [{name: a, methods: [POST], path: /a, datasource: {action: q, uids: [{json_pointer: '/a~2b'}]}}]",
            "routes.table[0].datasource.uids[0].json_pointer",
            "`~`",
        ),
        (
            "table: [{name: a, methods: [POST], path: /a, datasource: {action: q, uids: [{query_param: ds, form_field: ds}]}}]",
            "routes.table[0].datasource.uids[0]",
            "exactly one",
        ),
        (
            "table: [{name: a, methods: [POST], path: /a, datasource: {action: q, uids: [{}]}}]",
            "routes.table[0].datasource.uids[0]",
            "exactly one",
        ),
        (
            "table: [{name: a, methods: [POST], path: /a, datasource: {action: '', uids: [{query_param: ds}]}}]",
            "routes.table[0].datasource.action",
            "empty",
        ),
        (
            "table: [{name: a, methods: [POST], path: /a, datasource: {action: q, uids: []}}]",
            "routes.table[0].datasource.uids",
            "at least one",
        ),
        (
            "table: [{name: a, methods: [POST], path: /a, datasource: {action: q, uids: [{query_param: ''}]}}]",
            "routes.table[0].datasource.uids[0].query_param",
            "empty",
        ),
        (
            "max_body_bytes: 16777217",
            "routes.max_body_bytes",
            "in memory",
        ),
        ("max_body_bytes: 0", "routes.max_body_bytes", "outside"),
        (
            "table: [{name: a, methods: ['*'], path: '/a/{x}'}, {name: b, methods: ['*'], path: '/a/{y}'}]",
            "routes.table[1].path",
            "can never match",
        ),
        (
            "table: [{name: m, methods: [POST], path: /mcp, mcp: {tools: {t: {public: true, authenticated: true}}}}]",
            "routes.table[0].mcp.tools.t",
            "exactly one",
        ),
        (
            "table: [{name: m, methods: [POST], path: /mcp, mcp: {tools: {t: {authenticated: true, chart_data: {mode: inject}}}}}]",
            "routes.table[0].mcp.tools.t.chart_data",
            "refuse_when_filtered",
        ),
        (
            "table: [{name: m, methods: [POST], path: /mcp, mcp: {proxy_tools: [t], tools: {t: {authenticated: true}}}}]",
            "routes.table[0].mcp.proxy_tools",
            "also in `tools`",
        ),
        (
            "table: [{name: m, methods: [POST], path: /mcp, mcp: {methods: [tools/call], tools: {}}}]",
            "routes.table[0].mcp.methods",
            "decided per tool",
        ),
    ];
    for (yaml, key, fragment) in cases {
        let (found_key, message) = config_error_key(yaml);
        assert_eq!(&found_key, key, "{yaml}");
        assert!(
            message.contains(fragment),
            "{yaml}: `{message}` lacks `{fragment}`"
        );
        let display = RouteError::Config {
            key: found_key,
            message,
        }
        .to_string();
        assert!(display.starts_with(key), "{display}");
    }
}

#[test]
fn valid_variants_are_accepted() {
    let table = table(
        r#"
table:
  - {name: a, methods: [GET], path: "/a/{x}", permissions: {any_of: ["can_read on SQL Lab"]}}
  - {name: b, methods: [POST], path: "/a/{y}"}
  - {name: c, methods: ["*"], path: "/a/{z}"}
  - {name: d, methods: [GET], path: /}
"#,
    );
    assert_eq!(table.routes().count(), 4);
    assert_eq!(table.max_body_bytes(), DEFAULT_INSPECTED_BODY_BYTES);
    let (route, _) = matched_route(&table, "GET", "/a/1");
    assert_eq!(
        route.permissions_any_of()[0].to_string(),
        "can_read on SQL Lab"
    );
    assert_eq!(route.path_template(), "/a/{x}");
    assert_eq!(route.methods().collect::<Vec<_>>(), vec!["GET"]);
}

#[test]
fn unknown_keys_are_refused_by_serde() {
    for yaml in [
        "unmatched: deny\nextra: 1",
        "table: [{name: a, methods: [GET], path: /a, authenticate: true}]",
        "table: [{name: a, methods: [GET], path: /a, datasource: {action: q, uids: [{header: x}]}}]",
        "unmatched: sometimes",
    ] {
        assert!(
            serde_yaml::from_str::<RoutesConfig>(yaml).is_err(),
            "{yaml}"
        );
    }
}

#[test]
fn role_permissions_parse_and_display() {
    let parsed = RolePermission::parse("can_read on Chart");
    assert_eq!(
        parsed,
        Ok(RolePermission {
            action: "can_read".into(),
            view: "Chart".into()
        })
    );
    assert_eq!(
        RolePermission::parse("can_this_table_list on Row Level Security").map(|p| p.to_string()),
        Ok("can_this_table_list on Row Level Security".to_string())
    );
    for bad in [
        "can_read",
        "can_ on Chart",
        "read on Chart",
        "can_read on ",
        "can_read on  Chart",
        "can read on Chart",
        "can_read on Chart ",
    ] {
        assert!(RolePermission::parse(bad).is_err(), "`{bad}`");
    }
}

// ---------------------------------------------------------------- extraction

fn requirement_of(
    table: &RouteTable,
    method: &str,
    path: &str,
) -> (DatasourceRequirement, PathParams) {
    let (route, params) = matched_route(table, method, path);
    match route.datasource() {
        Some(requirement) => (requirement.clone(), params),
        None => panic!("route `{}` has no datasource check", route.name()),
    }
}

const JSON: Option<&str> = Some("application/json");

#[test]
fn grafana_query_body_names_every_uid() {
    let table = example_table();
    let (requirement, params) = requirement_of(&table, "POST", "/api/ds/query");
    let body = br#"{"from":"now-1h","to":"now","queries":[
        {"refId":"A","datasource":{"type":"postgres","uid":"pg-main"},"rawSql":"select 1"},
        {"refId":"B","datasource":{"type":"mysql","uid":"mysql-sales"}},
        {"refId":"C","datasource":{"type":"__expr__","uid":"__expr__"},"expression":"$A + $B"},
        {"refId":"D","datasource":{"type":"postgres","uid":"pg-main"}}
    ]}"#;
    let uids = extract_uids(&requirement, &params, None, Some(body), JSON);
    assert_eq!(
        uids,
        Ok(vec![
            "pg-main".into(),
            "mysql-sales".into(),
            "__expr__".into()
        ])
    );
    assert!(
        matched_route(&table, "POST", "/api/ds/query")
            .0
            .needs_body()
    );

    let legacy = br#"{"queries":[{"datasource":{"uid":"ok"}},{"datasource":"secret"}]}"#;
    assert!(matches!(
        extract_uids(&requirement, &params, None, Some(legacy), JSON),
        Err(RouteError::JsonShape { .. })
    ));
    let by_id = br#"{"queries":[{"datasource":{"uid":"ok"}},{"datasourceId":3}]}"#;
    assert_eq!(
        extract_uids(&requirement, &params, None, Some(by_id), JSON),
        Err(RouteError::MissingUid("/queries/1/datasource".into()))
    );
    assert_eq!(
        extract_uids(
            &requirement,
            &params,
            None,
            Some(br#"{"queries":[]}"#),
            JSON
        ),
        Err(RouteError::NoDatasource("grafana-ds-query".into()))
    );
    assert_eq!(
        extract_uids(&requirement, &params, None, None, JSON),
        Err(RouteError::NoDatasource("grafana-ds-query".into()))
    );
}

#[test]
fn malformed_json_reports_position_without_echoing_the_body() {
    let table = example_table();
    let (requirement, params) = requirement_of(&table, "POST", "/api/ds/query");
    let body = b"{\"queries\": [{\"datasource\": {\"uid\": \"secret-token-value\"}";
    match extract_uids(&requirement, &params, None, Some(body), None) {
        Err(RouteError::MalformedJson(message)) => {
            assert!(message.contains("line 1 column"), "{message}");
            assert!(!message.contains("secret-token-value"), "{message}");
        }
        other => panic!("expected malformed JSON, got {other:?}"),
    }
}

#[test]
fn sqllab_database_id_is_an_integer_uid() {
    let table = example_table();
    let (requirement, params) = requirement_of(&table, "POST", "/api/v1/sqllab/execute/");
    let uids = extract_uids(
        &requirement,
        &params,
        None,
        Some(br#"{"database_id": 1, "sql": "select 1"}"#),
        Some("application/json; charset=utf-8"),
    );
    assert_eq!(uids, Ok(vec!["1".into()]));
    for (body, found) in [
        (&br#"{"database_id": 1.5}"#[..], "a non-integer number"),
        (br#"{"database_id": true}"#, "a boolean"),
        (br#"{"database_id": [1]}"#, "an array"),
        (br#"{"database_id": {"id": 1}}"#, "an object"),
    ] {
        assert_eq!(
            extract_uids(&requirement, &params, None, Some(body), JSON),
            Err(RouteError::UidNotScalar {
                location: "/database_id".into(),
                found
            })
        );
    }
    assert_eq!(
        extract_uids(
            &requirement,
            &params,
            None,
            Some(br#"{"database_id": ""}"#),
            JSON
        ),
        Err(RouteError::EmptyUid("`/database_id`".into()))
    );
    assert_eq!(
        extract_uids(
            &requirement,
            &params,
            None,
            Some(b"database_id=1"),
            Some("text/plain")
        ),
        Err(RouteError::UnsupportedContentType("text/plain".into()))
    );
    assert_eq!(
        extract_uids(
            &requirement,
            &params,
            None,
            Some(b"database_id=1"),
            Some("application/x-www-form-urlencoded")
        ),
        Err(RouteError::UnsupportedContentType(
            "application/x-www-form-urlencoded".into()
        ))
    );
}

#[test]
fn path_query_and_form_sources_union_in_order() {
    let table = table(
        r#"
table:
  - name: mixed
    methods: [POST]
    path: "/ds/{uid}"
    datasource:
      action: datasources:query
      uids:
        - path_param: uid
        - query_param: ds
        - form_field: ds
        - json_pointer: /ds
"#,
    );
    let (requirement, params) = requirement_of(&table, "POST", "/ds/one");
    let form = Some("application/x-www-form-urlencoded");
    assert_eq!(
        extract_uids(
            &requirement,
            &params,
            Some("ds=two&ds=one&x=1&ds=thr%65e"),
            Some(b"ds=four&ds=two+2"),
            form
        ),
        Ok(vec![
            "one".into(),
            "two".into(),
            "three".into(),
            "four".into(),
            "two 2".into()
        ])
    );
    assert_eq!(
        extract_uids(
            &requirement,
            &params,
            Some("ds=two"),
            Some(br#"{"ds": "five"}"#),
            JSON
        ),
        Ok(vec!["one".into(), "two".into(), "five".into()])
    );
    assert_eq!(
        extract_uids(&requirement, &params, Some("ds="), None, None),
        Err(RouteError::EmptyUid("query parameter `ds`".into()))
    );
    assert_eq!(
        extract_uids(&requirement, &params, Some("ds=%FF"), None, None),
        Err(RouteError::UidNotUtf8("query parameter `ds`".into()))
    );
    assert_eq!(
        extract_uids(&requirement, &params, None, Some(b"ds=%C3"), form),
        Err(RouteError::UidNotUtf8("form field `ds`".into()))
    );
    assert!(matches!(
        extract_uids(&requirement, &params, None, Some(b"--x"), Some("multipart/form-data; boundary=x")),
        Err(RouteError::UnsupportedContentType(kind)) if kind == "multipart/form-data"
    ));
    assert_eq!(
        extract_uids(
            &requirement,
            &params,
            None,
            Some(br#"{"ds": "x"}"#),
            Some("application/problem+json")
        ),
        Ok(vec!["one".into(), "x".into()])
    );
    // An old server splits on `;`: `secret` is checked too.
    assert_eq!(
        extract_uids(&requirement, &params, Some("x=1;ds=secret"), None, None),
        Ok(vec!["one".into(), "secret".into()])
    );

    let (requirement, params) = requirement_of(&table, "POST", "/ds/%FF");
    assert_eq!(
        extract_uids(&requirement, &params, None, None, None),
        Err(RouteError::UidNotUtf8("path parameter `uid`".into()))
    );
}

#[test]
fn optional_requirements_may_find_nothing() {
    let table = table(
        r#"
table:
  - name: optional
    methods: [GET]
    path: "/files/{*rest}"
    datasource:
      action: datasources:read
      required: false
      uids: [{query_param: ds}, {path_param: rest}]
  - name: required
    methods: [GET]
    path: "/need/{*rest}"
    datasource:
      action: datasources:read
      uids: [{path_param: rest}]
"#,
    );
    let (requirement, params) = requirement_of(&table, "GET", "/files/");
    assert_eq!(
        extract_uids(&requirement, &params, Some("x=1"), None, None),
        Ok(vec![])
    );
    let (requirement, params) = requirement_of(&table, "GET", "/files/a/b");
    assert_eq!(
        extract_uids(&requirement, &params, None, None, None),
        Ok(vec!["a/b".into()])
    );
    let (requirement, params) = requirement_of(&table, "GET", "/need/");
    assert_eq!(
        extract_uids(&requirement, &params, None, None, None),
        Err(RouteError::NoDatasource("required".into()))
    );
    assert!(!matched_route(&table, "GET", "/need/").0.needs_body());

    let form_only = self::table(
        "table: [{name: f, methods: [POST], path: /f, datasource: {action: q, uids: [{form_field: ds}]}}]",
    );
    let (requirement, params) = requirement_of(&form_only, "POST", "/f");
    assert!(matched_route(&form_only, "POST", "/f").0.needs_body());
    assert_eq!(
        extract_uids(&requirement, &params, None, Some(br#"{"ds": "x"}"#), None),
        Err(RouteError::UnsupportedContentType(
            "application/json".into()
        ))
    );
    assert_eq!(
        extract_uids(&requirement, &params, None, Some(br#"{"ds": "x"}"#), JSON),
        Err(RouteError::UnsupportedContentType(
            "application/json".into()
        ))
    );
}

#[test]
fn example_config_routes_as_documented() {
    let table = example_table();
    let cases = [
        ("GET", "/api/v1/chart/12", Some("superset-chart-read")),
        ("HEAD", "/api/v1/chart/12", Some("superset-chart-read")),
        ("DELETE", "/api/v1/chart/12", None),
        (
            "POST",
            "/api/v1/sqllab/execute/",
            Some("superset-sqllab-execute"),
        ),
        (
            "POST",
            "/api/v1/sqllab/execute",
            Some("superset-sqllab-execute"),
        ),
        ("POST", "/api/ds/query", Some("grafana-ds-query")),
        (
            "GET",
            "/api/datasources/uid/pg",
            Some("grafana-datasource-read"),
        ),
        (
            "PUT",
            "/api/datasources/uid/pg",
            Some("grafana-datasource-write"),
        ),
        (
            "DELETE",
            "/api/datasources/uid/pg",
            Some("grafana-datasource-delete"),
        ),
        ("PATCH", "/api/datasources/uid/pg", None),
        ("GET", "/fixtures.json", Some("datasette-db-json")),
        (
            "GET",
            "/fixtures/facetable.json",
            Some("datasette-table-json"),
        ),
        ("GET", "/fixtures", None),
    ];
    for (method, path, expected) in cases {
        assert_eq!(
            route_name(&table, method, path).as_deref(),
            expected,
            "{method} {path}"
        );
    }
    let (route, params) = matched_route(&table, "GET", "/fixtures.json");
    assert_eq!(params.get("db"), Some("fixtures"));
    let Some(requirement) = route.datasource() else {
        panic!("datasette route checks the database");
    };
    assert_eq!(
        extract_uids(requirement, &params, Some("sql=select+1"), None, None),
        Ok(vec!["fixtures".into()])
    );
    let (chart, _) = matched_route(&table, "GET", "/api/v1/chart/12");
    assert!(!chart.needs_body());
    assert!(!chart.requires_authentication());
    assert_eq!(chart.permissions_any_of().len(), 1);
    let (sqllab, _) = matched_route(&table, "POST", "/api/v1/sqllab/execute/");
    assert!(sqllab.requires_authentication());
    assert_eq!(
        sqllab.permissions_all_of()[0].to_string(),
        "can_execute_sql_query on SQLLab"
    );
}

/// Characters a uid may have, plus everything that needs escaping in a path.
fn uid_strategy() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ~._%;:@!$&'()*+,=\"<>é-]{1,12}"
        // Dot segments, and `.;x` / `..;x` (servlet path parameters), are refused by design.
        .prop_filter("not a dot segment", |uid| {
            uid != "." && uid != ".." && !uid.starts_with(".;") && !uid.starts_with("..;")
        })
}

/// Encodes every byte of `uid`, some bytes or none, upper or lower case, as a client might.
fn encode_randomly(uid: &str, choices: &[u8]) -> String {
    let mut encoded = String::new();
    for (index, byte) in uid.bytes().enumerate() {
        let choice = choices
            .get(index % choices.len().max(1))
            .copied()
            .unwrap_or(0);
        let must_escape = !(byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte));
        match (must_escape, choice % 3) {
            (false, 0) => encoded.push(char::from(byte)),
            (_, 1) => encoded.push_str(&format!("%{byte:02x}")),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

proptest! {
    /// Whatever spelling a client uses, the route sees the uid the upstream decodes.
    #[test]
    fn path_params_decode_to_the_client_uid(
        uid in uid_strategy(),
        choices in proptest::collection::vec(any::<u8>(), 1..8),
    ) {
        let table = example_table();
        let raw = format!("/api/datasources/uid/{}", encode_randomly(&uid, &choices));
        let canonical = canonicalize_path(&raw);
        prop_assert!(canonical.is_ok(), "`{}` refused", raw);
        let canonical = canonical.unwrap_or_default();
        match table.resolve("GET", &canonical) {
            Resolution::Matched { route, params } => {
                prop_assert_eq!(route.name(), "grafana-datasource-read");
                prop_assert_eq!(params.get("uid"), Some(uid.as_str()));
            }
            Resolution::Unmatched(_) => prop_assert!(false, "`{}` unmatched", raw),
        }
    }
}

/// Paths built from `template`: parameters filled with plain, encoded and empty-ish
/// values, rests of several lengths, the trailing slash toggled, a literal percent-encoded,
/// a segment dropped or added.
fn paths_from_template(template: &str) -> Vec<String> {
    let fill = |value: &str, rest: &str| -> String {
        let pieces: Vec<String> = template
            .trim_start_matches('/')
            .split('/')
            .filter(|piece| !piece.is_empty())
            .map(|piece| match (piece.find('{'), piece.find('}')) {
                (Some(open), Some(_)) if piece[open + 1..].starts_with('*') => rest.to_string(),
                (Some(open), Some(close)) => {
                    format!("{}{value}{}", &piece[..open], &piece[close + 1..])
                }
                _ => piece.to_string(),
            })
            .collect();
        let mut path = format!("/{}", pieces.join("/"));
        if template.ends_with('/') && template.len() > 1 {
            path.push('/');
        }
        path
    };
    let mut paths = Vec::new();
    for (value, rest) in [
        ("1", ""),
        ("x-y", "a"),
        ("%61bc", "a/b/c"),
        ("7", "assets/app.js/"),
    ] {
        let path = fill(value, rest);
        let toggled = match path.strip_suffix('/') {
            Some(without) if !without.is_empty() => without.to_string(),
            _ => format!("{path}/"),
        };
        let encoded_first = match path.char_indices().nth(1) {
            Some((at, character)) if character.is_ascii_alphabetic() => format!(
                "/%{:02X}{}",
                character as u32,
                &path[at + character.len_utf8()..]
            ),
            _ => path.clone(),
        };
        let shorter = match path.trim_end_matches('/').rsplit_once('/') {
            Some((head, _)) if !head.is_empty() => head.to_string(),
            _ => "/".to_string(),
        };
        paths.extend([
            format!("{path}/extra"),
            path,
            toggled,
            encoded_first,
            shorter,
        ]);
    }
    paths
}

#[test]
fn the_route_index_resolves_exactly_as_trying_every_route_in_order() {
    let mut tables: Vec<(String, RouteTable)> = vec![("example".into(), example_table())];
    for pack in ["superset", "grafana", "datasette"] {
        let config = RoutesConfig {
            packs: vec![pack.into()],
            ..RoutesConfig::default()
        };
        match RouteTable::from_config(&config) {
            Ok(table) => tables.push((pack.into(), table)),
            Err(error) => panic!("pack {pack}: {error}"),
        }
    }
    let templates: Vec<String> = tables
        .iter()
        .flat_map(|(_, table)| {
            table
                .routes()
                .map(|route| route.path_template().to_string())
        })
        .chain(["/".into(), "/nothing/here".into(), "/api".into()])
        .collect();
    let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    let mut compared = 0usize;
    let mut matched = 0usize;
    for (label, table) in &tables {
        for template in &templates {
            for raw_path in paths_from_template(template) {
                let Ok(path) = canonicalize_path(&raw_path) else {
                    continue;
                };
                for method in methods {
                    let by_index = table.resolve(method, &path);
                    let by_scan = table.resolve_by_scan(method, &path);
                    let outcome = |resolution: &Resolution<'_>| match resolution {
                        Resolution::Matched { route, params } => {
                            Some((route.name().to_string(), params.clone()))
                        }
                        Resolution::Unmatched(_) => None,
                    };
                    assert_eq!(
                        outcome(&by_index),
                        outcome(&by_scan),
                        "{label}: {method} {raw_path} (canonical {path})"
                    );
                    compared += 1;
                    matched += usize::from(outcome(&by_index).is_some());
                }
            }
        }
    }
    // Both outcomes must be well represented, or the comparison proves little.
    assert!(compared > 50_000, "{compared} requests compared");
    assert!(matched > 10_000, "{matched} of {compared} requests matched");
}
