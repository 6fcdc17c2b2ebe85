"""Superset configuration for the datagate test harness (tests/superset.rs, harness.py).

SQLite metadata database under $DATAGATE_SUPERSET_HOME, datagate's identity headers as the
only way in (deploy/superset/datagate_security.py), file caches shared by the gunicorn
workers. Not a production configuration: see README "Superset behind datagate".
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, "..", "..", "..", "deploy", "superset"))

from datagate_security import (  # noqa: E402
    DatagateSecurityManager,
    datagate_mcp_auth,
    init_datagate_app,
)

HOME = os.environ["DATAGATE_SUPERSET_HOME"]

# Test-only key; a deployment reads its own from a secret.
SECRET_KEY = os.environ.get(
    "SUPERSET_SECRET_KEY", "datagate-test-only-superset-secret-key-0123456789abcdef"
)
SQLALCHEMY_DATABASE_URI = f"sqlite:///{os.path.join(HOME, 'superset.db')}"
# check_same_thread: the MCP service runs synchronous tools on worker threads inside the
# message's Flask context, so one session's SQLite connection is handed from the event-loop
# thread to a worker and back (one at a time). A PostgreSQL metadata DB needs nothing.
SQLALCHEMY_ENGINE_OPTIONS = {"connect_args": {"timeout": 30, "check_same_thread": False}}
# Superset refuses SQLite data databases unless told otherwise.
PREVENT_UNSAFE_DB_CONNECTIONS = False

# Identity: datagate's headers, on every request (see datagate_security.py).
CUSTOM_SECURITY_MANAGER = DatagateSecurityManager
FLASK_APP_MUTATOR = init_datagate_app
# The MCP service (`superset mcp run`) acts as the same caller, message by message; no
# MCP_DEV_USERNAME, so nothing runs as a configured user.
MCP_AUTH_FACTORY = datagate_mcp_auth
# A datagate role that is Superset's sql_lab inside Superset, while datagate grants it less
# (tests/superset.rs: export permissions only datagate enforces).
DATAGATE_ROLE_MAP = {"analyst_sql": ["sql_lab"]}

# The REST tests drive the API as a non-browser client: its identity travels in datagate's
# Authorization header, not in a cookie, so there is no cross-site request to forge. The
# browser test (tests/superset_ui/) runs against a server started with
# `harness.py serve --production-defaults`: Superset's own defaults, Flask-WTF's CSRF
# protection and Talisman's security headers on, as a deployment has them.
_PRODUCTION_DEFAULTS = os.environ.get("DATAGATE_SUPERSET_PRODUCTION_DEFAULTS") == "1"
WTF_CSRF_ENABLED = _PRODUCTION_DEFAULTS
TALISMAN_ENABLED = _PRODUCTION_DEFAULTS

_cache_dir = os.path.join(HOME, "cache")
CACHE_CONFIG = {"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": _cache_dir, "CACHE_DEFAULT_TIMEOUT": 300}
DATA_CACHE_CONFIG = {"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": os.path.join(_cache_dir, "data"), "CACHE_DEFAULT_TIMEOUT": 300}
FILTER_STATE_CACHE_CONFIG = {"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": os.path.join(_cache_dir, "filter"), "CACHE_DEFAULT_TIMEOUT": 300}
EXPLORE_FORM_DATA_CACHE_CONFIG = {"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": os.path.join(_cache_dir, "explore"), "CACHE_DEFAULT_TIMEOUT": 300}
# A results backend, as production SQL Lab has: query results are stored under a results
# key that comes back in the execute response and is read by /api/v1/sqllab/results/.
from cachelib.file import FileSystemCache  # noqa: E402  (a Superset dependency)

RESULTS_BACKEND = FileSystemCache(os.path.join(_cache_dir, "results"), default_timeout=3600)

FEATURE_FLAGS = {
    "GRANULAR_EXPORT_CONTROLS": os.environ.get("DATAGATE_SUPERSET_GRANULAR_EXPORTS") == "1",
    # On, as in the deployments [1/6] was found in: Superset renders Jinja in SQL Lab
    # after datagate's rewrite, so the test proves datagate refuses template syntax.
    "ENABLE_TEMPLATE_PROCESSING": True,
}
# No example data, no telemetry.
SUPERSET_LOAD_EXAMPLES = False
LOG_LEVEL = "WARNING"
