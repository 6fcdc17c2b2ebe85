"""A real Superset 6.1 for datagate's tests, set up the way an operator would.

Run with the Superset venv's python (tests/compat/superset/install.sh):

    harness.py setup --home DIR --data-db demo.db   # metadata DB, roles, users, data DB
    harness.py serve --home DIR --port 8088         # gunicorn on 127.0.0.1 (exec)
    harness.py serve ... --exit-with-stdin --access-log F   # as tests/superset.rs runs it
    harness.py mcp --home DIR --port 5008 [--exit-with-stdin --access-log F]
                                                    # `superset mcp run` on 127.0.0.1

`setup` runs `superset db upgrade` and `superset init` (or copies their result from a
template cached beside the venv, keyed by the installed pins), creates the users, registers
the SQLite data database and its datasets through Superset's REST API, and writes
DIR/ids.json: {"database_id", "datasets": {name: id}, "charts": {name: id},
"dashboards": {name: id}}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "superset_config.py")

# The users the tests act as: (username, Superset roles).
USERS = [
    ("admin", ["Admin"]),
    ("alpha", ["Alpha"]),
    ("alice", ["Gamma"]),
    ("bob", ["Gamma"]),
    ("sqluser", ["Gamma", "sql_lab"]),
]
TABLES = ["orders", "customers", "posts"]
VIRTUAL_DATASETS = {
    "orders_daily": "SELECT id, tenant_id, amount, note, region, "
                    "date('2024-01-01', '+' || id || ' days') AS ts FROM orders",
    "orders_amounts": "SELECT id, amount FROM orders",
}

# Used only when --data-db does not exist yet (the Rust test writes it from
# tests/support/demo_rls.rs, the single source of the demo rows).
DEMO_SQL = """
CREATE TABLE orders (id INTEGER PRIMARY KEY, tenant_id TEXT, customer_id INTEGER,
                     amount REAL, note TEXT, region TEXT, parent INTEGER);
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, region TEXT);
CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT);
INSERT INTO orders VALUES
  (1,'alice',1,10,'a1','EU',NULL),(2,'alice',2,20,'internal','EU',1),
  (3,'bob',3,300,'b1','US',NULL),(4,'bob',1,4000000,'b2','US',3),
  (5,'carol',2,50,'c1','EU',NULL),(6,'O''Brien',3,60,'o1','US',NULL),
  (7,'x'' OR ''1''=''1',1,70,'x1','EU',NULL);
INSERT INTO customers VALUES (1,'Acme','EU'),(2,'Globex','US'),(3,'Initech','EU');
INSERT INTO posts VALUES (1,'hello'),(2,'world');
"""


def environment(home: str) -> dict[str, str]:
    env = dict(os.environ)
    env["SUPERSET_CONFIG_PATH"] = CONFIG
    env["DATAGATE_SUPERSET_HOME"] = home
    env.setdefault("FLASK_APP", "superset.app:create_app()")
    return env


def superset_cli(home: str, *args: str) -> None:
    superset = os.path.join(os.path.dirname(sys.executable), "superset")
    result = subprocess.run([superset, *args], env=environment(home), capture_output=True,
                            text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"superset {' '.join(args)} failed ({result.returncode})")


def template_key() -> str:
    """What the migrated, initialised metadata DB depends on: the installed pins."""
    marker = os.path.join(sys.prefix, ".datagate-pins")
    pins = open(marker).read() if os.path.exists(marker) else sys.prefix
    return hashlib.sha256(pins.encode()).hexdigest()


def metadata_db(home: str) -> None:
    """`superset db upgrade` + `superset init`, or a copy of their cached result."""
    target = os.path.join(home, "superset.db")
    template_dir = os.environ.get(
        "DATAGATE_SUPERSET_TEMPLATE", os.path.join(os.path.dirname(sys.prefix), "superset-template"))
    template = os.path.join(template_dir, "superset.db")
    key_file = os.path.join(template_dir, "key")
    key = template_key()
    if os.path.exists(template) and os.path.exists(key_file) and open(key_file).read() == key:
        shutil.copyfile(template, target)
        return
    superset_cli(home, "db", "upgrade")
    superset_cli(home, "init")
    try:
        os.makedirs(template_dir, exist_ok=True)
        shutil.copyfile(target, template + ".tmp")
        os.replace(template + ".tmp", template)
        with open(key_file, "w") as handle:
            handle.write(key)
    except OSError:
        pass  # a read-only cache only costs time


def data_db(path: str) -> None:
    if os.path.exists(path):
        return
    connection = sqlite3.connect(path)
    connection.executescript(DEMO_SQL)
    connection.commit()
    connection.close()


def setup(home: str, data_path: str) -> dict:
    os.makedirs(home, exist_ok=True)
    data_path = os.path.abspath(data_path)
    data_db(data_path)
    metadata_db(home)
    os.environ.update(environment(home))
    from superset.app import create_app

    app = create_app()
    with app.app_context():
        from superset import security_manager

        for username, roles in USERS:
            if security_manager.find_user(username=username) is None:
                security_manager.add_user(
                    username, username, "-", f"{username}@example.test",
                    role=[security_manager.find_role(role) for role in roles])
    # Through the REST API, as the Admin datagate names (the security manager reads the
    # same headers datagate sets).
    client = app.test_client()
    admin = {"X-Datagate-User": "admin", "X-Datagate-Roles": "Admin"}

    def call(method: str, path: str, body: dict) -> dict:
        response = client.open(path, method=method, json=body, headers=admin)
        if response.status_code >= 300:
            raise SystemExit(f"{method} {path}: {response.status_code} {response.get_data(as_text=True)}")
        return response.get_json()

    database = call("POST", "/api/v1/database/", {
        "database_name": "demo",
        "sqlalchemy_uri": f"sqlite:///{data_path}",
        "expose_in_sqllab": True,
        "allow_run_async": False,
        "allow_dml": False,
        "allow_file_upload": False,
    })
    database_id = database["id"]
    # Superset checks database access itself too: the roles datagate lets query the demo
    # database get Superset's `database_access` on it (an operator does this in
    # Settings > List Roles); datagate then decides per caller and filters rows.
    with app.app_context():
        from superset import db, security_manager
        from superset.models.core import Database

        perm = db.session.get(Database, database_id).perm
        view = security_manager.find_permission_view_menu("database_access", perm)
        for role in ("Gamma", "sql_lab"):
            security_manager.add_permission_role(security_manager.find_role(role), view)
        db.session.commit()
    datasets = {}
    for table in TABLES:
        created = call("POST", "/api/v1/dataset/", {
            "database": database_id, "schema": "main", "table_name": table})
        datasets[table] = created["id"]
    # Virtual datasets over the protected table, for chart row-level security: one with a
    # day per order (time series), one without the filters' columns (Superset must fail
    # rather than return rows when datagate's condition names a column it lacks).
    for name, sql in VIRTUAL_DATASETS.items():
        created = call("POST", "/api/v1/dataset/", {
            "database": database_id, "schema": "main", "table_name": name, "sql": sql})
        datasets[name] = created["id"]
    with app.app_context():
        from superset import db
        from superset.connectors.sqla.models import SqlaTable

        daily = db.session.get(SqlaTable, datasets["orders_daily"])
        for column in daily.columns:
            if column.column_name == "ts":
                column.is_dttm = True
                column.python_date_format = "%Y-%m-%d"
        daily.main_dttm_col = "ts"
        db.session.commit()
    # A published dashboard (Gamma sees it through its datasets' database access) that
    # shows the chart; without a layout Superset places its charts itself.
    dashboard = call("POST", "/api/v1/dashboard/", {
        "dashboard_title": "Orders", "published": True})
    dashboards = {"orders": dashboard["id"]}
    charts = {}
    params = {
        "viz_type": "table", "query_mode": "raw", "all_columns": ["id", "tenant_id", "amount"],
        "datasource": f"{datasets['orders']}__table", "row_limit": 1000,
    }
    chart = call("POST", "/api/v1/chart/", {
        "slice_name": "orders", "viz_type": "table", "datasource_id": datasets["orders"],
        "datasource_type": "table", "params": json.dumps(params),
        "dashboards": [dashboard["id"]],
        "query_context": json.dumps({
            "datasource": {"id": datasets["orders"], "type": "table"},
            "queries": [{"columns": ["id", "tenant_id", "amount"], "row_limit": 1000}],
            "form_data": params, "result_format": "json", "result_type": "full",
        }),
    })
    charts["orders"] = chart["id"]
    # An aggregate table (orders per tenant) on a dashboard of its own: Superset offers
    # "Drill to detail" only on charts that group rows (not on the raw table above).
    # Its native filter (a select on tenant_id) loads its values through chart data.
    tenant_filter = {
        "id": "NATIVE_FILTER-tenant", "name": "Tenant", "type": "NATIVE_FILTER",
        "filterType": "filter_select", "description": "",
        "targets": [{"datasetId": datasets["orders"], "column": {"name": "tenant_id"}}],
        "controlValues": {"enableEmptyFilter": False, "defaultToFirstItem": False,
                          "multiSelect": True, "searchAllOptions": False,
                          "inverseSelection": False},
        "defaultDataMask": {"extraFormData": {}, "filterState": {}, "ownState": {}},
        "cascadeParentIds": [], "scope": {"rootPath": ["ROOT_ID"], "excluded": []},
        "chartsInScope": [], "tabsInScope": [],
    }
    by_tenant = call("POST", "/api/v1/dashboard/", {
        "dashboard_title": "Orders by tenant", "published": True,
        "json_metadata": json.dumps({"native_filter_configuration": [tenant_filter]})})
    dashboards["orders_by_tenant"] = by_tenant["id"]
    params = {
        "viz_type": "table", "query_mode": "aggregate", "groupby": ["tenant_id"],
        "metrics": ["count"], "datasource": f"{datasets['orders']}__table",
        "row_limit": 1000,
    }
    chart = call("POST", "/api/v1/chart/", {
        "slice_name": "orders by tenant", "viz_type": "table",
        "datasource_id": datasets["orders"], "datasource_type": "table",
        "params": json.dumps(params), "dashboards": [by_tenant["id"]],
        "query_context": json.dumps({
            "datasource": {"id": datasets["orders"], "type": "table"},
            "queries": [{"columns": ["tenant_id"], "metrics": ["count"], "row_limit": 1000}],
            "form_data": params, "result_format": "json", "result_type": "full",
        }),
    })
    charts["orders_by_tenant"] = chart["id"]
    ids = {"database_id": database_id, "datasets": datasets, "charts": charts,
           "dashboards": dashboards, "data_db": data_path}
    with open(os.path.join(home, "ids.json"), "w") as handle:
        json.dump(ids, handle)
    return ids


def serve(home: str, port: int, workers: int, access_log: str | None,
          with_stdin: bool, production_defaults: bool = False) -> None:
    """gunicorn on 127.0.0.1:PORT.

    With --exit-with-stdin (how the Rust test runs it): gunicorn is a child, and when this
    process's stdin closes (the test process exited, however it died) gunicorn is stopped
    and the home directory removed, so nothing outlives the test. gunicorn also gets
    SIGTERM if this process is killed (PR_SET_PDEATHSIG).

    With --production-defaults, CSRF protection and Talisman are on, as in a deployment
    (superset_config.py); several servers may share one home.
    """
    env = environment(home)
    if production_defaults:
        env["DATAGATE_SUPERSET_PRODUCTION_DEFAULTS"] = "1"
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    argv = [
        gunicorn, "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
        "--threads", "4", "--timeout", "120", "--log-level", "warning",
        # Longer than datagate's upstream.idle_timeout (60 s): gunicorn's default (2 s)
        # closes pooled connections datagate is about to reuse, and a request whose body
        # is being written then fails (502).
        "--keep-alive", "75",
    ]
    if access_log:
        # The test marks each request with X-Test-Marker and reads this log to prove
        # that a refused request never reached Superset, and that a forwarded one did:
        # gunicorn_hooks.py writes each request's marker before Superset handles it
        # (gunicorn's own line, after the response, stays for the status code).
        env["DATAGATE_TEST_ARRIVALS_LOG"] = access_log
        argv += ["--config", os.path.join(HERE, "gunicorn_hooks.py"),
                 "--access-logfile", access_log,
                 "--access-logformat", '%(m)s %(U)s %(s)s marker=%({x-test-marker}i)s']
    argv.append("superset.app:create_app()")
    if not with_stdin:
        os.execve(gunicorn, argv, env)

    import ctypes
    import signal

    def die_with_parent() -> None:
        os.setsid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                             preexec_fn=die_with_parent)
    # SIGTERM (ChildProcess::kill sends SIGKILL, which PR_SET_PDEATHSIG covers) cleans up too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        try:
            os.killpg(child.pid, signal.SIGTERM)
            child.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(home, ignore_errors=True)


def mcp(home: str, port: int, access_log: str | None, with_stdin: bool) -> None:
    """Superset's MCP service (`superset mcp run`, streamable HTTP on 127.0.0.1:PORT/mcp).

    Its output (uvicorn's access log among it: `"POST /mcp?marker=… HTTP/1.1" 200`) goes to
    --access-log: the tests put their marker in the query string, which uvicorn logs and
    the MCP endpoint ignores. With --exit-with-stdin it stops when this process's stdin
    closes, like `serve` (the home directory belongs to `serve`).
    """
    env = environment(home)
    # No update check (no network) and no banner.
    env["FASTMCP_CHECK_FOR_UPDATES"] = "off"
    env["FASTMCP_SHOW_SERVER_BANNER"] = "false"
    superset = os.path.join(os.path.dirname(sys.executable), "superset")
    argv = [superset, "mcp", "run", "--host", "127.0.0.1", "--port", str(port)]
    output = open(access_log, "ab") if access_log else None
    if not with_stdin:
        if output is not None:
            os.dup2(output.fileno(), 1)
            os.dup2(output.fileno(), 2)
        os.execve(superset, argv, env)

    import ctypes
    import signal

    def die_with_parent() -> None:
        os.setsid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=output,
                             stderr=subprocess.STDOUT if output else None,
                             preexec_fn=die_with_parent)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        try:
            os.killpg(child.pid, signal.SIGTERM)
            child.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except OSError:
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    setup_parser = sub.add_parser("setup")
    setup_parser.add_argument("--home", required=True)
    setup_parser.add_argument("--data-db", required=True)
    serve_parser = sub.add_parser("serve")
    serve_parser.add_argument("--home", required=True)
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--workers", type=int, default=2)
    serve_parser.add_argument("--access-log")
    serve_parser.add_argument("--exit-with-stdin", action="store_true")
    serve_parser.add_argument("--production-defaults", action="store_true")
    mcp_parser = sub.add_parser("mcp")
    mcp_parser.add_argument("--home", required=True)
    mcp_parser.add_argument("--port", type=int, required=True)
    mcp_parser.add_argument("--access-log")
    mcp_parser.add_argument("--exit-with-stdin", action="store_true")
    args = parser.parse_args()
    if args.command == "setup":
        print(json.dumps(setup(os.path.abspath(args.home), args.data_db)))
    elif args.command == "mcp":
        mcp(os.path.abspath(args.home), args.port, args.access_log, args.exit_with_stdin)
    else:
        serve(os.path.abspath(args.home), args.port, args.workers, args.access_log,
              args.exit_with_stdin, args.production_defaults)


if __name__ == "__main__":
    main()
