"""Superset behind datagate: the caller is whoever datagate's identity headers name.

datagate authenticates every request, removes any client copy of its identity headers and
sets them from the authenticated principal (`X-Datagate-User`, `X-Datagate-Roles`, ...;
names configurable under `identity_headers:`). This security manager makes Superset
believe exactly that, on every request:

* the user is loaded from the user header on every request; Superset's session cookie,
  remember-me cookie and its own JWTs cannot override it (every Flask-Login and
  Flask-JWT-Extended loader returns the header's user);
* a request without the user header is refused with 401 before any view runs (only the
  health checks answer), so a Superset reachable without datagate serves nothing;
* datagate's roles are mapped to Superset roles (`DATAGATE_ROLE_MAP`, default: a datagate
  role maps to the Superset role of the same name) and the Superset user's roles are set
  to exactly the mapped ones, so Superset's own checks (menus, dataset access, its RLS)
  agree with datagate's;
* unknown users are created on first sight (like FAB's `AUTH_USER_REGISTRATION`);
* datagate's anonymous principal (`anonymous`, configurable) is Superset's anonymous user,
  who holds `AUTH_ROLE_PUBLIC`.

Enable it in superset_config.py::

    from datagate_security import DatagateSecurityManager, init_datagate_app, datagate_mcp_auth
    CUSTOM_SECURITY_MANAGER = DatagateSecurityManager
    FLASK_APP_MUTATOR = init_datagate_app
    MCP_AUTH_FACTORY = datagate_mcp_auth   # `superset mcp run`: the same caller

The MCP service (`superset mcp run`, FastMCP over streamable HTTP) is not a Flask request:
Superset 6.1 runs every tool as the user `g.user` names when a Flask request context is
active, and otherwise as the one configured `MCP_DEV_USERNAME` (a JWT verified by
`MCP_AUTH_ENABLED` does not change the user). `datagate_mcp_auth` (Superset's
`MCP_AUTH_FACTORY` hook) adds a FastMCP middleware that, for every JSON-RPC message, reads
the same identity headers from the HTTP request, provisions the user exactly as for the
web app, and runs the message inside a Flask request context whose `g.user` is that user;
a message without the headers (or as datagate's anonymous caller) is refused before any
tool runs. Leave `MCP_DEV_USERNAME` unset.

Superset must listen only where datagate reaches it (loopback, a pod-local port): the
headers are trusted because nothing else can send them.
"""

from __future__ import annotations

import logging
from typing import Any, Optional
from urllib.parse import unquote

from flask import current_app, g, has_request_context, jsonify, request
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm.exc import StaleDataError
from superset.security import SupersetSecurityManager

log = logging.getLogger(__name__)

DEFAULTS = {
    "DATAGATE_USER_HEADER": "X-Datagate-User",
    "DATAGATE_ROLES_HEADER": "X-Datagate-Roles",
    # datagate's name for its anonymous principal.
    "DATAGATE_ANONYMOUS_USER": "anonymous",
    # datagate role -> Superset roles. Roles not listed map to the Superset role of the
    # same name when it exists, and are ignored otherwise.
    "DATAGATE_ROLE_MAP": {},
    # Set the Superset user's roles to exactly the mapped ones on every request.
    "DATAGATE_SYNC_ROLES": True,
    # Paths answered without the identity headers (load balancer health checks).
    "DATAGATE_OPEN_PATHS": ("/health", "/healthcheck", "/ping"),
}

_UNSET = object()


def _setting(name: str) -> Any:
    return current_app.config.get(name, DEFAULTS[name])


def _decode(value: str) -> str:
    # datagate percent-encodes control characters, `%`, `,` and non-ASCII bytes.
    return unquote(value.strip(), errors="strict")


def identity_from_headers() -> Optional[tuple[str, list[str]]]:
    """The (username, datagate roles) the headers carry, or None without a user header."""
    raw_user = request.headers.get(_setting("DATAGATE_USER_HEADER"))
    if raw_user is None or not raw_user.strip():
        return None
    username = _decode(raw_user)
    raw_roles = request.headers.get(_setting("DATAGATE_ROLES_HEADER"), "")
    roles = [_decode(role) for role in raw_roles.split(",") if role.strip()]
    return username, roles


def init_datagate_app(app: Any) -> None:
    """FLASK_APP_MUTATOR: refuse every request that did not come through datagate."""

    @app.before_request
    def _require_datagate_identity():  # type: ignore[no-untyped-def]
        if request.path in _setting("DATAGATE_OPEN_PATHS"):
            return None
        try:
            identity = identity_from_headers()
        except UnicodeDecodeError:
            identity = None
        if identity is None:
            response = jsonify(
                message="this Superset accepts requests only through datagate",
                kind="identity_missing",
            )
            response.status_code = 401
            return response
        # Load (and create, and sync the roles of) the user now, before any view runs:
        # Superset first asks for the user lazily, in the middle of a flush of its own
        # (the audit columns of a new SQL Lab query), where creating a user or changing
        # its roles fails ("Session is already flushing").
        manager = getattr(current_app, "appbuilder", None)
        manager = getattr(manager, "sm", None)
        if isinstance(manager, DatagateSecurityManager):
            user = manager.datagate_user()
            if user is None and identity[0] != _setting("DATAGATE_ANONYMOUS_USER"):
                # Inactive, or could not be created or given its roles: refused, not
                # served as the anonymous user.
                response = jsonify(
                    message="the Superset user datagate names is inactive or could not be provisioned",
                    kind="identity_refused",
                )
                response.status_code = 403
                return response
        return None

    # Registered first so it runs before every other before_request hook (FAB's sets g.user).
    funcs = app.before_request_funcs.setdefault(None, [])
    funcs.insert(0, funcs.pop())
    _bind_celery_tasks()


def _bind_celery_tasks() -> None:
    """Bind Superset's Celery tasks once, at start-up, before any request thread runs.

    Celery binds a task lazily on first use and registers it before binding it, so two
    gunicorn threads running the first SQL Lab queries of a fresh worker at once can get
    the unbound task (`'NoneType' object has no attribute 'push'`, a 400 from SQL Lab).
    Finalizing the Celery app here evaluates every pending task under Celery's own lock.
    """
    try:
        import superset.sql_lab  # noqa: F401  (registers SQL Lab's tasks)
        from superset.extensions import celery_app
    except ImportError:
        return
    celery_app.finalize()


class DatagateSecurityManager(SupersetSecurityManager):
    """Superset's security manager with the caller taken from datagate's headers."""

    def create_login_manager(self, app: Any) -> Any:
        login_manager = super().create_login_manager(app)
        # Flask-Login asks the user loader for the session cookie's and remember-me
        # cookie's user id and the request loader when there is neither; all three give
        # the header's user, so no cookie can name someone else.
        login_manager.user_loader(lambda _user_id: self.datagate_user())
        login_manager.request_loader(lambda _request: self.datagate_user())
        return login_manager

    def load_user(self, pk: Any) -> Any:
        return self.datagate_user()

    def load_user_jwt(self, _jwt_header: Any, _jwt_data: Any) -> Any:
        # A Superset access token (from /api/v1/security/login) names a user too; the
        # header wins here as well.
        user = self.datagate_user()
        if user is not None:
            g.user = user
        return user

    def request_loader(self, _request: Any) -> Any:
        return self.datagate_user()

    def datagate_user(self) -> Any:
        """The Superset user for this request's identity headers (cached per request)."""
        if not has_request_context():
            return None
        cached = g.get("_datagate_user", _UNSET)
        if cached is not _UNSET:
            return cached
        try:
            identity = identity_from_headers()
        except UnicodeDecodeError:
            identity = None
        user = None
        if identity is not None and identity[0] != _setting("DATAGATE_ANONYMOUS_USER"):
            user = self._provision(*identity)
        g._datagate_user = user
        return user

    def superset_roles_for(self, datagate_roles: list[str]) -> list[Any]:
        """The Superset roles datagate's roles map to (unknown names are skipped)."""
        role_map = _setting("DATAGATE_ROLE_MAP")
        names: list[str] = []
        for role in datagate_roles:
            for name in role_map.get(role, [role]):
                if name not in names:
                    names.append(name)
        roles = []
        for name in names:
            role = self.find_role(name)
            if role is not None:
                roles.append(role)
        return roles

    def _provision(self, username: str, datagate_roles: list[str]) -> Any:
        roles = self.superset_roles_for(datagate_roles)
        user = self.find_user(username=username)
        if user is None:
            email = username if "@" in username else f"{username}@users.datagate.invalid"
            user = self.add_user(username, username, "-", email, role=roles)
            if not user:
                # Another worker created it at the same moment, or the e-mail is taken.
                self.session.rollback()
                user = self.find_user(username=username)
            if not user:
                log.error("datagate: could not provision Superset user %r", username)
                return None
        if not user.is_active:
            return None
        if _setting("DATAGATE_SYNC_ROLES"):
            return self._sync_roles(user, roles)
        return user

    def _sync_roles(self, user: Any, roles: list[Any]) -> Any:
        """Set the user's roles to `roles`; the user, or None when that keeps failing.

        A browser sends many requests at once, so the first requests after a role change
        all find the roles stale and write the same rows: the losers of that race get an
        integrity error (a row inserted twice) or a stale-data error (a row deleted twice).
        They roll back, re-read the roles the winner wrote, and are done when those are the
        wanted ones.
        """
        wanted = sorted(role.id for role in roles)
        for _attempt in range(3):
            if sorted(role.id for role in user.roles) == wanted:
                return user
            try:
                user.roles = roles
                self.session.merge(user)
                self.session.commit()
                _forget_cached_bootstrap_data()
                return user
            except (IntegrityError, OperationalError, StaleDataError):
                self.session.rollback()
                # The rollback expired the user: its roles are read again from the database.
        log.error("datagate: could not set the roles of Superset user %r", user.username)
        return None


def _forget_cached_bootstrap_data() -> None:
    """Forget the bootstrap data Superset memoized for its users, after a role change.

    Superset memoizes each user's page bootstrap data — the menu among it, built from the
    user's permissions — for 60 s in its cache (`cached_common_bootstrap_data`, keyed by
    user id and locale), so without this a user whose roles changed kept the old menu for
    up to a minute: links to what was taken away, none to what was given. The memoized
    entries of every user are dropped (Flask-Caching keys them by a version of the
    function, which this bumps in the shared cache, so every worker sees it); role changes
    are rare, and each user's next page builds its data again.
    """
    try:
        from superset.extensions import cache_manager
        from superset.views.base import cached_common_bootstrap_data
    except ImportError:
        return
    try:
        cache_manager.cache.delete_memoized(cached_common_bootstrap_data)
    except Exception:  # noqa: BLE001  (a cache outage must not fail the request)
        log.warning("datagate: could not forget the cached menus after a role change",
                    exc_info=True)


def datagate_mcp_auth(app: Any) -> None:
    """MCP_AUTH_FACTORY: every MCP message runs as the caller datagate's headers name.

    Returns no FastMCP auth provider (datagate authenticated the caller; the MCP service
    has no credential of its own to check). Registers, as the outermost middleware of
    Superset's MCP instance, the middleware that sets the caller (see the module doc).
    """
    from superset.mcp_service.app import mcp

    mcp.add_middleware(_datagate_mcp_middleware(app))
    log.info("datagate: MCP messages run as the caller datagate's headers name")
    return None


def _datagate_mcp_middleware(app: Any) -> Any:
    # FastMCP is imported only by the MCP service, never by the web app.
    from fastmcp.server.dependencies import get_http_request
    from fastmcp.server.middleware import Middleware
    from mcp import McpError
    from mcp.types import INVALID_REQUEST, ErrorData

    def refused() -> Exception:
        return McpError(ErrorData(
            code=INVALID_REQUEST,
            message="this Superset MCP service accepts requests only through datagate",
            data={"kind": "identity_missing"},
        ))

    class DatagateIdentityMiddleware(Middleware):
        async def on_message(self, context: Any, call_next: Any) -> Any:
            try:
                http_request = get_http_request()
            except RuntimeError:
                raise refused() from None
            user_header = app.config.get("DATAGATE_USER_HEADER", DEFAULTS["DATAGATE_USER_HEADER"])
            roles_header = app.config.get(
                "DATAGATE_ROLES_HEADER", DEFAULTS["DATAGATE_ROLES_HEADER"])
            headers = {}
            for name in (user_header, roles_header):
                values = http_request.headers.getlist(name)
                if len(values) > 1:
                    raise refused()
                if values:
                    headers[name] = values[0]
            # The identity is read by the same code as the web app's, inside a Flask request
            # context carrying only these headers; Superset's MCP tools keep `g.user` when
            # a request context is active (superset/mcp_service/auth.py).
            # A fresh application context too: the MCP service runs inside a long-lived
            # one, whose `g` would otherwise carry one caller's user into the next message.
            with app.app_context(), app.test_request_context("/mcp", headers=headers):
                manager = app.appbuilder.sm
                user = manager.datagate_user() if isinstance(
                    manager, DatagateSecurityManager) else None
                if user is None:
                    raise refused()
                # Sync tools run on worker threads: their user must not lazy-load from
                # this thread's session (Superset's own loader for MCP, eager roles and
                # groups), and Flask-Login must hand out the same object.
                from superset.mcp_service.auth import load_user_with_relationships

                user = load_user_with_relationships(username=user.username)
                if user is None:
                    raise refused()
                g._datagate_user = user
                g.user = user
                return await call_next(context)

    return DatagateIdentityMiddleware()
