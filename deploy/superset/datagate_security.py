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

    from datagate_security import DatagateSecurityManager, init_datagate_app
    CUSTOM_SECURITY_MANAGER = DatagateSecurityManager
    FLASK_APP_MUTATOR = init_datagate_app

Superset must listen only where datagate reaches it (loopback, a pod-local port): the
headers are trusted because nothing else can send them.
"""

from __future__ import annotations

import logging
from typing import Any, Optional
from urllib.parse import unquote

from flask import current_app, g, has_request_context, jsonify, request
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
            manager.datagate_user()
        return None

    # Registered first so it runs before every other before_request hook (FAB's sets g.user).
    funcs = app.before_request_funcs.setdefault(None, [])
    funcs.insert(0, funcs.pop())


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
            wanted = sorted(role.id for role in roles)
            if sorted(role.id for role in user.roles) != wanted:
                user.roles = roles
                self.session.merge(user)
                self.session.commit()
        return user
