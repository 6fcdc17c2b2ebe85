"""Generates deploy/route-packs/superset.yaml from a real Superset's own route map.

Run inside the Superset venv (tests/compat/superset/install.sh), from the repository root:

    DATAGATE_SUPERSET_HOME=$(mktemp -d) \
      /var/cache/datagate/superset-venv/bin/python tests/compat/superset/generate_pack.py

It builds the app with the harness configuration (tests/compat/superset/superset_config.py;
the metadata DB is not needed), walks `app.url_map`, and for every rule finds the
Flask-AppBuilder view or API behind it and the permission Superset checks there: FAB's
`can_<method_permission_name[method] or _permission_name>` on `class_permission_name`,
refused outright when that permission is not in the view's `base_permissions` (FAB answers
403 to everyone then). Endpoints FAB does not protect are listed in `UNPROTECTED`: each is
public, needs only an authenticated caller, or is deliberately refused (left out of the
pack, so `routes.unmatched: deny` refuses it). An endpoint found in neither place stops the
generator: a new Superset release cannot slip an unreviewed route through.

The data routes (SQL Lab, chart data, exports, samples) get their datasource, SQL and export
declarations from `DATA_ROUTES`; their permission still comes from the app. The MCP service
is a separate server with no Flask routes; its route comes from the tools it registers
(`mcp_route`, reviewed in `MCP_TOOLS`).

`--check` compares instead of writing (exit status 1 when the checked-in pack is stale).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
PACK = os.path.join(ROOT, "deploy", "route-packs", "superset.yaml")

PUBLIC = "public"
AUTHENTICATED = "authenticated"
REFUSED = "refused"

# Endpoints without a FAB permission check: what datagate does with them, and why. A
# REFUSED entry is refused even where Superset has a permission check of its own.
UNPROTECTED = {
    "static": (PUBLIC, "the UI's JavaScript, CSS and images"),
    "appbuilder.static": (PUBLIC, "Flask-AppBuilder's static files"),
    "health.health": (PUBLIC, "load balancer health check"),
    "SupersetIndexView.index": (PUBLIC, "redirects to the welcome page"),
    "SupersetIndexView.patch_flask_locale": (PUBLIC, "sets the UI language"),
    "LocaleView.index": (PUBLIC, "sets the UI language"),
    "UtilView.back": (PUBLIC, "redirects to the previous page"),
    "RedirectView.redirect_warning": (PUBLIC, "the external-link warning page"),
    "SupersetAuthView.login": (PUBLIC, "with datagate's identity the caller is already signed in; the page redirects"),
    "SupersetAuthView.logout": (PUBLIC, "ends Superset's session only; identity stays datagate's"),
    "AuthDBView.logout": (PUBLIC, "ends Superset's session only; identity stays datagate's"),
    "Superset.welcome": (AUTHENTICATED, "the home page; Superset shows it to any signed-in user"),
    "health.version": (AUTHENTICATED, "Superset's version, for signed-in users only"),
    "UserRestApi.avatar": (AUTHENTICATED, "user avatars in the UI"),
    "AuthDBView.login": (REFUSED, "password sign-in: identity comes from datagate"),
    "SecurityApi.login": (REFUSED, "Superset's own API tokens: identity comes from datagate"),
    "SecurityApi.refresh": (REFUSED, "Superset's own API tokens: identity comes from datagate"),
    "SupersetRegisterUserView.register": (REFUSED, "self-registration: users come from datagate's identity"),
    "SupersetRegisterUserView.activation": (REFUSED, "self-registration: users come from datagate's identity"),
    "EmbeddedView.embedded": (REFUSED, "embedded dashboards use guest tokens, which datagate_security.py turns off"),
    "Dashboard.embedded": (REFUSED, "embedded dashboards use guest tokens, which datagate_security.py turns off"),
    # Chart data replayed from something datagate does not see (a cache key, legacy form
    # data, a dataset's rows): refused until chart-data row-level security maps datasets.
    "DatabaseRestApi.oauth2": (REFUSED, "OAuth2 database sign-in callbacks carry their own identity"),
    "DynamicPluginsView.action": (REFUSED, "FAB bulk actions check permissions by action name inside the view"),
    "DynamicPluginsView.action_post": (REFUSED, "FAB bulk actions check permissions by action name inside the view"),
    "UserGroupModelView.action": (REFUSED, "FAB bulk actions check permissions by action name inside the view"),
    "UserGroupModelView.action_post": (REFUSED, "FAB bulk actions check permissions by action name inside the view"),
    "RoleModelView.action": (REFUSED, "FAB bulk actions check permissions by action name inside the view"),
    "RoleModelView.action_post": (REFUSED, "FAB bulk actions check permissions by action name inside the view"),
    "UserDBModelView.action": (REFUSED, "FAB bulk actions check permissions by action name inside the view"),
    "UserDBModelView.action_post": (REFUSED, "FAB bulk actions check permissions by action name inside the view"),
}

# Route names other configuration and tests refer to (stable across regenerations).
NAMES = {
    "ChartRestApi.get_list": "superset-chart-list",
    "ChartRestApi.post": "superset-chart-create",
    "ChartRestApi.get": "superset-chart-read",
    "ChartRestApi.put": "superset-chart-write",
    "ChartRestApi.delete": "superset-chart-write",
    "ChartRestApi.bulk_delete": "superset-chart-bulk-delete",
    "DashboardRestApi.get_list": "superset-dashboard-list",
    "DashboardRestApi.post": "superset-dashboard-create",
    "DashboardRestApi.get": "superset-dashboard-read",
    "DashboardRestApi.put": "superset-dashboard-write",
    "DashboardRestApi.delete": "superset-dashboard-write",
    "DatasetRestApi.get_list": "superset-dataset-list",
    "DatasetRestApi.post": "superset-dataset-create",
    "DatasetRestApi.get": "superset-dataset-read",
    "DatasetRestApi.put": "superset-dataset-write",
    "DatasetRestApi.delete": "superset-dataset-write",
    "SavedQueryRestApi.get_list": "superset-saved-query-list",
    "SavedQueryRestApi.post": "superset-saved-query-create",
    "SavedQueryRestApi.get": "superset-saved-query-read",
    "SavedQueryRestApi.put": "superset-saved-query-write",
    "SavedQueryRestApi.delete": "superset-saved-query-write",
}

# SQL Lab names the Superset database (`database_id`): that id is the datagate datasource
# uid. Dataset ids (chart data) are another kind of id and never datasource uids: chart
# data maps a dataset to its database and table separately (chart-data RLS).
_DATABASE_ID = {"action": "datasources:query", "uids": [{"json_pointer": "/database_id"}]}
_EXPORT_DATA = {"kind": "data"}
_EXPORT_IMAGE = {"kind": "image"}
# SQL Lab's SQL through row-level security, with what Superset would otherwise do after
# datagate's rewrite refused: Jinja (ENABLE_TEMPLATE_PROCESSING renders it, building new
# SQL) and CREATE TABLE/VIEW AS SELECT (writes through the read-only route).
_SQL_LAB_SQL = {
    "templating": "refuse",
    "template_params": "/templateParams",
    "forbidden_fields": [
        {"json_pointer": "/select_as_cta", "allowed": [False]},
        {"json_pointer": "/ctas_method", "allowed": ["TABLE"]},
        {"json_pointer": "/tmp_table_name", "allowed": [""]},
        {"json_pointer": "/tmp_schema_name", "allowed": [""]},
    ],
    "locations": [{"json_pointer": "/sql", "datasource": "from_route"}],
}

# The data routes: where their datasource, SQL and export markers are.
_GUARD_DATASET = {"mode": "guard_dataset"}
_REFUSE_WHEN_MAPPED = {"mode": "refuse_when_mapped"}

DATA_ROUTES = {
    "SqlLabRestApi.execute_sql_query": {
        "name": "superset-sqllab-execute", "authenticated": True, "datasource": _DATABASE_ID,
        "sql": _SQL_LAB_SQL,
        # Export and results re-run or read this query for whoever names its client_id or
        # results key: both become the caller's (the key from Superset's response).
        "results": {"bind": [{"json_pointer": "/client_id"}],
                    "bind_response": ["/query/resultsKey"]},
    },
    # Lists only the caller's own queries (Superset filters by user): their results keys.
    "QueryRestApi.get_updated_since": {
        "name": "superset-query-updated-since",
        "results": {"bind_response": ["/result/*/resultsKey"]},
    },
    "SqlLabRestApi.estimate_query_cost": {
        "name": "superset-sqllab-estimate", "authenticated": True, "datasource": _DATABASE_ID,
        "sql": _SQL_LAB_SQL,
    },
    "SqlLabRestApi.format_sql": {"name": "superset-sqllab-format", "authenticated": True},
    # Results and exports re-run or read the stored query of the `client_id`/key's owner.
    "SqlLabRestApi.get_results": {
        "name": "superset-sqllab-results", "authenticated": True,
        "results": {"owned": [{"rison": {"query_param": "q", "json_pointer": "/key"}}]}},
    "SqlLabRestApi.export_csv": {
        "name": "superset-sqllab-export", "authenticated": True, "export": _EXPORT_DATA,
        "results": {"owned": [{"path_param": "client_id"}]}},
    "SqlLabRestApi.export_streaming_csv": {
        "name": "superset-sqllab-export-streaming", "authenticated": True, "export": _EXPORT_DATA,
        "results": {"owned": [{"form_field": "client_id"}]}},
    "ChartDataRestApi.data": {
        "name": "superset-chart-data",
        # The query context is checked and the caller's filters injected (src/chart_data.rs).
        "chart_data": {"mode": "inject"},
        "export": {"kind": "data", "when": [{"json_pointer": "/result_format", "values": ["csv", "xlsx"]}]},
    },
    "ChartDataRestApi.get_data": {
        "name": "superset-chart-data-by-pk",
        # Replays the saved chart's query context: refused while filters apply.
        "chart_data": {"mode": "refuse_when_filtered"},
        "export": {"kind": "data", "when": [{"query_param": "format", "values": ["csv", "xlsx"]}]},
    },
    # Legacy async chart data replays a cached form: refused while filters apply.
    "Superset.explore_json_data": {"chart_data": {"mode": "refuse_when_filtered"}},
    # Rows and values Superset reads from a dataset itself, without a query context
    # datagate could rewrite, or replayed from its cache: refused while filters apply,
    # served to callers no filter applies to (Superset checks their dataset access).
    "ChartDataRestApi.data_from_cache": {
        "name": "superset-chart-data-by-cache-key", "chart_data": {"mode": "refuse_when_filtered"}},
    # Legacy chart data (form data, not a query context); `?csv=true` / `?xlsx=true` ask
    # for the export.
    "Superset.explore_json": {
        "name": "superset-explore-json", "chart_data": {"mode": "refuse_when_filtered"},
        "export": {"kind": "data", "when": [{"query_param": "csv", "values": ["true"]},
                                            {"query_param": "xlsx", "values": ["true"]}]}},
    # Explore's Samples tab and drill to detail: the body is one query object on the
    # dataset the query string names, checked and filtered like chart data.
    "Datasource.samples": {"name": "superset-datasource-samples", "chart_data": {"mode": "samples"}},
    # Value suggestions in Explore's filter editor.
    "DatasourceRestApi.get_column_values": {
        "name": "superset-datasource-column-values",
        "chart_data": {"mode": "refuse_when_filtered"}},
    "ChartRestApi.export": {"name": "superset-chart-export", "export": _EXPORT_DATA},
    "DashboardRestApi.export": {"name": "superset-dashboard-export", "export": _EXPORT_DATA},
    "ChartRestApi.thumbnail": {"name": "superset-chart-thumbnail", "export": _EXPORT_IMAGE},
    "ChartRestApi.screenshot": {"name": "superset-chart-screenshot", "export": _EXPORT_IMAGE},
    "ChartRestApi.cache_screenshot": {"name": "superset-chart-cache-screenshot", "export": _EXPORT_IMAGE},
    "DashboardRestApi.thumbnail": {"name": "superset-dashboard-thumbnail", "export": _EXPORT_IMAGE},
    "DashboardRestApi.screenshot": {"name": "superset-dashboard-screenshot", "export": _EXPORT_IMAGE},
    "DashboardRestApi.cache_dashboard_screenshot": {
        "name": "superset-dashboard-cache-screenshot", "export": _EXPORT_IMAGE},
    # A mapped dataset's rows are its table's only while its table, database and stored SQL
    # (calculated columns, saved metrics) stay what datagate checked: edits are checked and
    # deletes refused for every caller (src/decision/chart.rs, `guard_dataset`).
    "DatasetRestApi.put": {"name": "superset-dataset-write", "chart_data": _GUARD_DATASET},
    "DatasetRestApi.delete": {"name": "superset-dataset-write", "chart_data": _GUARD_DATASET},
    "DatasetRestApi.bulk_delete": {"name": "superset-dataset-bulk-delete", "chart_data": _GUARD_DATASET},
    "Datasource.save": {"name": "superset-datasource-save", "chart_data": _GUARD_DATASET},
    # Imports that overwrite existing datasets (dataset import with `overwrite`, assets
    # import always, dashboard import through its v0 format) from a ZIP datagate does not
    # read: refused while any dataset is mapped. Chart and database imports never
    # overwrite a dataset that exists (`import_dataset(config, overwrite=False)`).
    "DatasetRestApi.import_": {"name": "superset-dataset-import", "chart_data": _REFUSE_WHEN_MAPPED},
    "DashboardRestApi.import_": {"name": "superset-dashboard-import", "chart_data": _REFUSE_WHEN_MAPPED},
    "ImportExportRestApi.import_": {
        "name": "superset-import-export-import", "chart_data": _REFUSE_WHEN_MAPPED},
}

# `superset mcp run` is its own server (port and `/mcp`); not in the Flask url_map. Its
# route is generated from the tools the real MCP service registers (superset/mcp_service:
# each tool's `class_permission_name` / `method_permission_name`, checked by its RBAC hook
# as `can_<method> on <class>`; a tool without one runs for any signed-in user) and the
# tool-search transform's synthetic tools (`MCP_TOOL_SEARCH_CONFIG`). Every tool must be
# reviewed here; a new one stops the generator.
MCP_SQL = "sql"            # runs the SQL it carries: datasource check and row-level security
MCP_ROWS = "rows"          # returns rows Superset builds itself: refused while filters apply
MCP_METADATA = "metadata"  # returns no dataset rows: the permission decides
MCP_TOOLS = {
    "execute_sql": (MCP_SQL, "runs `request.sql` (or `request.query`) on `request.database_id`"),
    "get_chart_data": (MCP_ROWS, "a saved chart's rows, from its stored query context"),
    "get_chart_preview": (MCP_ROWS, "renders a saved chart's rows (table, ASCII, Vega-Lite)"),
    "generate_chart": (MCP_ROWS, "runs the new chart's query (preview, cardinality checks)"),
    "update_chart": (MCP_ROWS, "runs the changed chart's query (preview)"),
    "update_chart_preview": (MCP_ROWS, "runs the changed chart's query (preview)"),
    "create_virtual_dataset": (MCP_ROWS, "runs its SQL, unchecked, to read the columns"),
    "list_charts": (MCP_METADATA, "chart metadata"),
    "get_chart_info": (MCP_METADATA, "chart metadata and form data"),
    "get_chart_type_schema": (MCP_METADATA, "static chart-type schemas"),
    "list_dashboards": (MCP_METADATA, "dashboard metadata"),
    "get_dashboard_info": (MCP_METADATA, "dashboard metadata"),
    "generate_dashboard": (MCP_METADATA, "creates a dashboard from chart ids"),
    "add_chart_to_existing_dashboard": (MCP_METADATA, "changes a dashboard's layout"),
    "list_databases": (MCP_METADATA, "database connection metadata"),
    "get_database_info": (MCP_METADATA, "database connection metadata"),
    "list_datasets": (MCP_METADATA, "dataset metadata"),
    "get_dataset_info": (MCP_METADATA, "columns and metrics, no rows"),
    "generate_explore_link": (MCP_METADATA, "an explore URL; the chart data it opens is checked there"),
    "open_sql_lab_with_context": (MCP_METADATA, "a SQL Lab URL; the SQL it opens is checked when run"),
    "save_sql_query": (MCP_METADATA, "stores SQL without running it"),
    "get_instance_info": (MCP_METADATA, "counts and the caller's identity"),
    "get_schema": (MCP_METADATA, "filterable and sortable columns"),
    "health_check": (MCP_METADATA, "liveness"),
}
# execute_sql's checks (ExecuteSqlRequest in superset/mcp_service/sql_lab/schemas.py):
# `sql` and its alias `query` are both rewritten (pydantic reads `sql` when both are given),
# Jinja in the SQL and `template_params` are refused (Database.execute renders templates).
MCP_EXECUTE_SQL = {
    "datasource": {"action": "datasources:query",
                   "uids": [{"json_pointer": "/params/arguments/request/database_id"}]},
    "sql": {
        "templating": "refuse",
        "template_params": "/params/arguments/request/template_params",
        "locations": [
            {"json_pointer": "/params/arguments/request/sql", "datasource": "from_route"},
            {"json_pointer": "/params/arguments/request/query", "datasource": "from_route"},
        ],
    },
}
# JSON-RPC methods without data; anything else (resources/read, prompts/get, completion,
# tasks) is refused.
MCP_METHODS = [
    "initialize", "ping", "tools/list", "prompts/list", "resources/list",
    "resources/templates/list", "notifications/initialized", "notifications/cancelled",
]


def mcp_route(app) -> str:
    """The `/mcp` route, from the tools Superset's MCP service registers."""
    import asyncio

    try:
        from superset.mcp_service.app import mcp
        from superset.mcp_service.auth import CLASS_PERMISSION_ATTR, METHOD_PERMISSION_ATTR
        from superset.mcp_service.mcp_config import MCP_TOOL_SEARCH_CONFIG
    except ImportError as error:
        raise SystemExit(f"the MCP service needs fastmcp in this venv (install.sh): {error}")
    search = app.config.get("MCP_TOOL_SEARCH_CONFIG", MCP_TOOL_SEARCH_CONFIG)
    tools = {}
    unknown = []
    for tool in sorted(asyncio.run(mcp.list_tools()), key=lambda tool: tool.name):
        if tool.name not in MCP_TOOLS:
            unknown.append(tool.name)
            continue
        kind, _ = MCP_TOOLS[tool.name]
        view = getattr(tool.fn, CLASS_PERMISSION_ATTR, None)
        entry = {}
        if view:
            verb = getattr(tool.fn, METHOD_PERMISSION_ATTR, "read")
            entry["permissions"] = {"all_of": [f"can_{verb} on {view}"]}
        else:
            entry["authenticated"] = True
        if kind == MCP_SQL:
            entry.update(MCP_EXECUTE_SQL)
        elif kind == MCP_ROWS:
            entry["chart_data"] = {"mode": "refuse_when_filtered"}
        tools[tool.name] = entry
    if unknown:
        raise SystemExit("MCP tools not reviewed in MCP_TOOLS:\n  " + "\n  ".join(unknown))
    lines = [
        "# --- MCP service (`superset mcp run`, JSON-RPC over streamable HTTP) ----------------",
        "# Every `tools/call` is decided by its tool: the permission Superset's MCP RBAC checks,",
        "# execute_sql's datasource and SQL, and tools returning rows Superset builds itself",
        "# (saved charts, previews, new datasets' SQL) refused while row-level security filters",
        "# apply. `call_tool` is decided as the tool it names; a `request` sent as a JSON string",
        "# is forwarded as the object datagate checked; unknown tools and methods are refused.",
        "- name: superset-mcp",
        "  methods: [POST]",
        "  path: /mcp",
        "  authenticated: true",
        "  mcp:",
        "    methods: " + flow(MCP_METHODS),
        "    proxy_tools: " + flow([search.get("call_tool_name", "call_tool")]),
        "    json_string_arguments: [request]",
        "    tools:",
    ]
    search_tool = search.get("search_tool_name", "search_tools")
    tools[search_tool] = {"authenticated": True}
    for name in sorted(tools):
        why = MCP_TOOLS.get(name, (None, "the tool catalogue (search_tools transform)"))[1]
        lines.append(f"      # {why}")
        lines.append(f"      {name}: {flow(tools[name])}")
    return "\n".join(lines) + "\n"


def template(rule: str) -> str:
    """A Werkzeug rule as a datagate path template (`<int:pk>` -> `{pk}`, `<path:x>` -> `{*x}`)."""
    segments = rule.strip("/").split("/") if rule != "/" else []
    out = []
    for segment in segments:
        match = re.fullmatch(r"<(?:(\w+):)?(\w+)>", segment)
        if match and match.group(1) == "path":
            # `path` swallows slashes: everything from here on.
            out.append("{*" + match.group(2) + "}")
            break
        if match:
            out.append("{" + match.group(2) + "}")
        elif "<" in segment:
            raise SystemExit(f"rule `{rule}`: a converter inside a segment is not supported")
        else:
            out.append(segment)
    path = "/" + "/".join(out)
    if rule.endswith("/") and rule != "/" and "{*" not in path:
        path += "/"
    return path


def shape(path: str) -> str:
    return re.sub(r"\{\*?\w+\}", "{}", path)


def slug(endpoint: str) -> str:
    view, _, method = endpoint.partition(".")
    view = re.sub(r"(RestApi|RestAPI|ModelView|View|Api|API)$", "", view) or view
    words = re.sub(r"(?<!^)(?=[A-Z])", "-", view).lower() + "-" + method.replace("_", "-")
    return "superset-" + re.sub(r"-+", "-", words).strip("-")


def permission_of(view, method_name: str):
    """(permission text, None) for a FAB-protected method, (None, reason) when FAB refuses
    it to everyone, (None, None) when FAB does not protect it."""
    function = getattr(view, method_name, None)
    base = getattr(function, "_permission_name", None)
    if base is None:
        return None, None
    override = (getattr(view, "method_permission_name", None) or {}).get(method_name)
    action = "can_" + (override or base)
    allowed = getattr(view, "base_permissions", None)
    if allowed is not None and action not in allowed:
        return None, f"`{action}` is not in base_permissions: Superset answers 403 to everyone"
    return f"{action} on {view.class_permission_name}", None


def collect(app):
    views = {view.endpoint: view for view in app.appbuilder.baseviews}
    routes = OrderedDict()  # (path, permission, extras key) -> route
    refused = []
    seen_shapes = set()
    unknown = []
    # Registration order decides between identical rules (Werkzeug serves the first);
    # the pack is written sorted by path.
    for rule in app.url_map.iter_rules():
        methods = sorted(rule.methods - {"HEAD", "OPTIONS"})
        endpoint = rule.endpoint
        path = template(rule.rule)
        # Identical rules: Werkzeug serves the first registered; so does datagate.
        methods = [method for method in methods if (shape(path), method) not in seen_shapes]
        if not methods:
            continue
        seen_shapes.update((shape(path), method) for method in methods)
        view_name, _, method_name = endpoint.partition(".")
        view = views.get(view_name)
        permission, refusal = (None, None)
        if UNPROTECTED.get(endpoint, (None,))[0] == REFUSED:
            # Refused whatever Superset's own check is.
            refused.append((methods, path, endpoint, UNPROTECTED[endpoint][1]))
            continue
        if view is not None and method_name:
            permission, refusal = permission_of(view, method_name)
        entry = {"methods": methods, "path": path}
        if permission is not None:
            entry["permissions"] = {"all_of": [permission]}
            kind = "protected"
        elif refusal is not None:
            refused.append((methods, path, endpoint, refusal))
            continue
        elif endpoint in UNPROTECTED:
            kind, why = UNPROTECTED[endpoint]
            if kind == REFUSED:
                refused.append((methods, path, endpoint, why))
                continue
            if kind == AUTHENTICATED:
                entry["authenticated"] = True
        else:
            unknown.append(f"{','.join(methods)} {rule.rule} ({endpoint})")
            continue
        extras = DATA_ROUTES.get(endpoint, {})
        name = extras.get("name") or NAMES.get(endpoint) or slug(endpoint)
        body = {key: value for key, value in extras.items() if key != "name"}
        entry.update(body)
        key = (name, path, repr(entry.get("permissions")), repr(body), entry.get("authenticated"))
        if key in routes:
            routes[key]["methods"] = sorted(set(routes[key]["methods"]) | set(methods))
        else:
            routes[key] = {"name": name, **entry}
    if unknown:
        raise SystemExit("endpoints neither FAB-protected nor reviewed in UNPROTECTED:\n  "
                         + "\n  ".join(unknown))
    # Names must be unique: number repeats (one endpoint under several rules).
    counts = {}
    for route in routes.values():
        counts[route["name"]] = counts.get(route["name"], 0) + 1
    used = {}
    for route in routes.values():
        if counts[route["name"]] > 1:
            used[route["name"]] = used.get(route["name"], 0) + 1
            if used[route["name"]] > 1:
                route["name"] = f"{route['name']}-{used[route['name']]}"
    ordered = sorted(routes.values(), key=lambda route: (route["path"], route["methods"]))
    return ordered, sorted(refused, key=lambda item: item[1])


def flow(value) -> str:
    """YAML flow style, quoting every string that needs it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {flow(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(flow(item) for item in value) + "]"
    text = str(value)
    keywords = {"true", "false", "null", "yes", "no", "on", "off", "y", "n"}
    if (re.fullmatch(r"[A-Za-z0-9_/.-]+", text) and not text[0].isdigit()
            and text.lower() not in keywords):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(routes, refused, version: str, mcp: str) -> str:
    lines = [
        f"# Route pack: Apache Superset {version} (web UI, REST API v1, and the MCP service).",
        "# GENERATED by tests/compat/superset/generate_pack.py from the real app's url_map and",
        "# Flask-AppBuilder views; regenerate for a new Superset release instead of editing.",
        "# Enable with `routes: {packs: [superset], unmatched: deny}`: every endpoint of the app is",
        "# mapped to the permission Superset itself checks (`can_<verb> on <View>`), or listed",
        "# under `Refused` at the end and left unmapped, so `unmatched: deny` refuses it.",
        "# Superset database ids (SQL Lab's `database_id`) are datagate datasource uids: declare",
        "# them under `datasources:` and grant them like any datasource. Dataset ids (chart data)",
        "# are not datasource uids. Chart data datagate cannot see or filter (saved charts,",
        "# cache keys, legacy explore_json, samples, column values) is refused while row-level",
        "# security filters apply to the caller. Datasets mapped in",
        "# `charts.datasets` keep their table, database and checked SQL: their edits are",
        "# checked, their deletes and imports that could overwrite them refused.",
        "",
    ]
    data = [route for route in routes if any(key in route for key in ("datasource", "sql", "export", "chart_data"))]
    other = [route for route in routes if route not in data]
    lines.append("# --- Data routes: SQL, chart data, exports, mapped datasets ---------------------------")
    for route in data:
        lines.append("- " + flow(route))
    lines.append("")
    lines.append("# --- Every other endpoint -------------------------------------------------------------")
    for route in other:
        lines.append("- " + flow(route))
    lines.append("")
    lines.append(mcp)
    lines.append("# --- Refused (not mapped; refused by `routes.unmatched: deny`) ------------------------")
    for methods, path, endpoint, why in refused:
        lines.append(f"#   {','.join(methods)} {path}  ({endpoint}): {why}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--output", default=PACK)
    args = parser.parse_args()
    os.environ.setdefault("SUPERSET_CONFIG_PATH", os.path.join(HERE, "superset_config.py"))
    os.environ.setdefault("DATAGATE_SUPERSET_HOME", os.environ.get("TMPDIR", "/tmp"))
    from superset.app import create_app
    import superset

    app = create_app()
    with app.app_context():
        routes, refused = collect(app)
        mcp = mcp_route(app)
    text = render(routes, refused, getattr(superset, "__version__", "6.1"), mcp)
    if args.check:
        current = open(args.output).read() if os.path.exists(args.output) else ""
        if current != text:
            print(f"{args.output} is stale: regenerate it", file=sys.stderr)
            sys.exit(1)
        return
    with open(args.output, "w") as handle:
        handle.write(text)
    print(f"{args.output}: {len(routes)} routes, {len(refused)} refused endpoints", file=sys.stderr)


if __name__ == "__main__":
    main()
