#!/usr/bin/env python3
"""Compatibility check: drive datagate's Grafana-compatible datasource
permissions API (admin listener) with the real `grafana-client` package.

Endpoints exercised (all under the client's fixed `/api` prefix), through
the client's high-level methods:
  connect(), version, health.check()      GET /api/frontend/settings
  organization.get_current_organization() GET /api/org
  users.search_users()                     GET /api/users?page=N (until an empty page)
  users.find_user()                        GET /api/users/lookup?loginOrEmail=
  teams.search_teams(), get_team_by_name() GET /api/teams/search
  serviceaccount.search()                  GET /api/serviceaccounts/search
  datasource.list_datasources()            GET /api/datasources
  datasource.get_datasource_by_uid()       GET /api/datasources/uid/{uid}
  GET  /api/access-control/datasources/{uid}
  POST /api/access-control/datasources/{uid}/users/{id}           {"permission": ...}
  POST /api/access-control/datasources/{uid}/teams/{id}           {"permission": ...}
  POST /api/access-control/datasources/{uid}/builtInRoles/{name}  {"permission": ...}

Only grafana_client methods are used, except where the package has no method
for an endpoint (the users endpoint, as of grafana-client 5.1.4); there the
client's generic `api.client.POST` is used and a `note:` line says so.

Usage:
  python3 tests/compat/grafana_client_check.py --url http://127.0.0.1:PORT \
      --admin-token JWT --viewer-token JWT --datasource UID \
      --user-id N --user-login LOGIN --user-email EMAIL \
      --team-id N --team-name NAME --service-account-login LOGIN

Prints one `ok: ...` / `FAIL: ...` line per check; exit 1 if any failed.
"""

import argparse
import signal
import sys
import uuid
from urllib.parse import urlparse, urlunparse

try:
    import grafana_client
    from grafana_client import GrafanaApi
    from grafana_client.client import (
        GrafanaBadInputError,
        GrafanaClientError,
        GrafanaException,
        GrafanaUnauthorizedError,
    )
except ImportError as exc:  # pragma: no cover
    sys.stderr.write(
        "grafana-client is not installed (%s); run: "
        "pip install -r tests/compat/requirements.txt\n" % exc
    )
    sys.exit(2)

REQUIRED_KEYS = (
    "id",
    "roleName",
    "isManaged",
    "isInherited",
    "isServiceAccount",
    "actions",
    "permission",
)
BUILTIN_ROLE = "Viewer"

FAILURES = []


def ok(msg):
    print("ok: %s" % msg, flush=True)


def fail(msg):
    FAILURES.append(msg)
    print("FAIL: %s" % msg, flush=True)


def describe_exc(exc):
    if isinstance(exc, GrafanaException):
        return "%s(status_code=%r, response=%r)" % (
            type(exc).__name__,
            exc.status_code,
            exc.response,
        )
    return "%s: %s" % (type(exc).__name__, exc)


CHECK_SECONDS = 30


class CheckTimeout(Exception):
    """A check ran longer than CHECK_SECONDS (a paging loop that never ends, as
    users.search_users() did when every page was non-empty)."""


def _timed_out(signum, frame):
    raise CheckTimeout("did not return within %d s" % CHECK_SECONDS)


def check(name, fn):
    """Run fn(); it returns None/True on success, or a string describing the
    failure. Any exception is a failure, and so is not returning within
    CHECK_SECONDS. Returns True on success."""
    signal.signal(signal.SIGALRM, _timed_out)
    signal.alarm(CHECK_SECONDS)
    try:
        result = fn()
    except CheckTimeout as exc:
        fail("%s: %s" % (name, exc))
        return False
    except AssertionError as exc:
        fail("%s: %s" % (name, exc))
        return False
    except Exception as exc:  # noqa: BLE001 - report everything
        fail("%s: unexpected %s" % (name, describe_exc(exc)))
        return False
    finally:
        signal.alarm(0)
    if result is None or result is True:
        ok(name)
        return True
    fail("%s: %s" % (name, result))
    return False


def expect_error(name, fn, exc_type, status):
    """Expect fn() to raise exc_type with .status_code == status."""
    try:
        resp = fn()
    except exc_type as exc:
        if exc.status_code == status:
            ok("%s -> %s %d" % (name, type(exc).__name__, status))
            return True
        fail("%s: expected status %d, got %s" % (name, status, describe_exc(exc)))
        return False
    except Exception as exc:  # noqa: BLE001
        fail(
            "%s: expected %s(%d), got %s"
            % (name, exc_type.__name__, status, describe_exc(exc))
        )
        return False
    fail("%s: expected %s(%d), but call succeeded: %r" % (name, exc_type.__name__, status, resp))
    return False


def make_api(url, token, timeout):
    parsed = urlparse(url)
    # grafana-client builds "{scheme}://{host}:{port}/{url_path_prefix}api",
    # with url_path_prefix = path.lstrip("/"); a non-empty prefix therefore
    # needs a trailing slash or it would yield ".../prefixapi".
    path = parsed.path
    if path and path != "/" and not path.endswith("/"):
        path += "/"
    url = urlunparse(parsed._replace(path=path))
    # credential=None (and no user:pass in the URL) => no Authorization header.
    # A str credential => TokenAuth => "Authorization: Bearer <token>".
    return GrafanaApi.from_url(url=url, credential=token, timeout=timeout)


def make_user_setter(api):
    """Return (setter(uid, user_id, permission), description)."""
    for name in (
        "set_rbac_datasources_users",
        "set_rbac_datasources_user",
        "set_rbac_datasource_users",
    ):
        meth = getattr(api.rbac, name, None)
        if callable(meth):
            return meth, "api.rbac.%s" % name

    def fallback(uid, user_id, permission):
        return api.client.POST(
            "/access-control/datasources/%s/users/%s" % (uid, user_id),
            json={"permission": permission},
        )

    return fallback, "api.client.POST (fallback)"


def expect_message(resp, message):
    if not isinstance(resp, dict):
        return "expected JSON object, got %r" % (resp,)
    if resp.get("message") != message:
        return "expected message %r, got %r" % (message, resp)
    return None


def find_items(items, key, value, managed_only=False):
    return [
        it
        for it in items
        if isinstance(it, dict)
        and it.get(key) == value
        and (not managed_only or it.get("isManaged") is True)
    ]


def run_directory_checks(admin, anon, args):
    """The read calls a typical permissions script makes around the permission
    methods: connect, look people and teams up, find the datasource."""

    def connect():
        info = admin.connect()
        assert isinstance(info, dict) and info.get("version"), "no buildInfo.version in %r" % (info,)

    check("connect() returns buildInfo with a version", connect)

    def version_only():
        assert admin.version and admin.version.split(".")[0].isdigit(), (
            "version %r is not a Grafana version" % (admin.version,)
        )
        return None

    check("version is a Grafana version number (%s)" % admin.version, version_only)
    check("health.check() answers", lambda: None if admin.health.check() else "empty")
    check(
        "health.check() without credentials (clients call it before logging in)",
        lambda: None if anon.health.check() else "empty",
    )

    def org():
        found = admin.organization.get_current_organization()
        assert found.get("id") == 1 and found.get("name"), "unexpected org %r" % (found,)

    check("organization.get_current_organization()", org)

    def all_users():
        users = admin.users.search_users()
        assert isinstance(users, list), "expected a list, got %r" % (users,)
        logins = [u.get("login") for u in users]
        assert args.user_login in logins, "%s not in %r" % (args.user_login, logins)
        assert len(logins) == len(set(logins)), "a user listed twice: %r" % (logins,)

    check("users.search_users() returns every user (pages until an empty page)", all_users)

    def paged_users():
        users = admin.users.search_users(perpage=1)
        logins = [u.get("login") for u in users]
        assert args.user_login in logins and len(logins) == len(set(logins)), logins

    check("users.search_users(perpage=1) walks every page once", paged_users)

    def queried_users():
        users = admin.users.search_users(query=args.user_login.upper(), page=1)
        assert [u.get("login") for u in users] == [args.user_login], users

    check("users.search_users(query=..., page=1) matches case-insensitively", queried_users)

    def find_by_login():
        found = admin.users.find_user(args.user_login)
        assert found.get("id") == args.user_id and found.get("login") == args.user_login, found

    check("users.find_user(login)", find_by_login)

    def find_by_email():
        found = admin.users.find_user(args.user_email)
        assert found.get("id") == args.user_id, found

    check("users.find_user(email)", find_by_email)
    expect_error(
        "users.find_user(unknown)",
        lambda: admin.users.find_user("nobody-%s" % uuid.uuid4().hex[:8]),
        GrafanaClientError,
        404,
    )

    def teams():
        found = admin.teams.search_teams()
        assert args.team_name in [t.get("name") for t in found], found

    check("teams.search_teams() returns every team", teams)

    def teams_query():
        found = admin.teams.search_teams(query=args.team_name[:4])
        assert args.team_name in [t.get("name") for t in found], found

    check("teams.search_teams(query=...)", teams_query)

    def team_by_name():
        found = admin.teams.get_team_by_name(args.team_name)
        assert [t.get("id") for t in found] == [args.team_id], found

    check("teams.get_team_by_name(name)", team_by_name)
    check(
        "teams.get_team_by_name(unknown) is empty",
        lambda: None
        if admin.teams.get_team_by_name("no-such-team-%s" % uuid.uuid4().hex[:8]) == []
        else "not empty",
    )

    def service_accounts():
        pages = admin.serviceaccount.search()
        logins = [a.get("login") for page in pages for a in page.get("serviceAccounts", [])]
        assert args.service_account_login in logins, pages

    check("serviceaccount.search() returns every service account", service_accounts)

    def one_service_account():
        found = admin.serviceaccount.search_one(service_account_name=args.service_account_login)
        assert found.get("login") == args.service_account_login, found

    check("serviceaccount.search_one(name)", one_service_account)

    def datasources():
        found = admin.datasource.list_datasources()
        assert args.datasource in [d.get("uid") for d in found], found

    check("datasource.list_datasources() includes the config-file datasource", datasources)

    def by_uid():
        found = admin.datasource.get_datasource_by_uid(args.datasource)
        assert found.get("uid") == args.datasource and isinstance(found.get("id"), int), found
        assert found.get("readOnly") is True, "a config-file datasource is read-only: %r" % (found,)

    check("datasource.get_datasource_by_uid(uid)", by_uid)
    expect_error(
        "datasource.get_datasource_by_uid(unknown)",
        lambda: admin.datasource.get_datasource_by_uid("no-such-%s" % uuid.uuid4().hex[:8]),
        GrafanaClientError,
        404,
    )
    expect_error(
        "users.search_users() without credentials",
        lambda: anon.users.search_users(),
        GrafanaUnauthorizedError,
        401,
    )


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Check datagate's Grafana-compatible datasource "
        "permissions API with the real grafana-client package."
    )
    p.add_argument("--url", required=True, help="admin listener, e.g. http://127.0.0.1:PORT")
    p.add_argument("--admin-token", required=True, help="JWT of a datagate Admin")
    p.add_argument(
        "--viewer-token",
        required=True,
        help="JWT of a caller without datasource permission admin rights",
    )
    p.add_argument("--datasource", required=True, help="uid of an existing datasource")
    p.add_argument("--user-id", required=True, type=int, help="id of an existing store user")
    p.add_argument("--team-id", required=True, type=int, help="id of an existing store team")
    p.add_argument("--user-login", required=True, help="login of that user")
    p.add_argument("--user-email", required=True, help="email of that user")
    p.add_argument("--team-name", required=True, help="name of that team")
    p.add_argument(
        "--service-account-login", required=True, help="login of an existing service account"
    )
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout (s)")
    args = p.parse_args(argv)

    uid, user_id, team_id = args.datasource, args.user_id, args.team_id
    admin = make_api(args.url, args.admin_token, args.timeout)
    viewer = make_api(args.url, args.viewer_token, args.timeout)
    anon = make_api(args.url, None, args.timeout)

    print("info: grafana-client %s, base %s" % (grafana_client.__version__, admin.client.url))

    set_user, set_user_desc = make_user_setter(admin)
    if set_user_desc.endswith("(fallback)"):
        print(
            "note: grafana-client has no method for POST "
            "/api/access-control/datasources/{uid}/users/{id}; using %s" % set_user_desc
        )
    set_team = admin.rbac.set_rbac_datasources_teams
    set_role = admin.rbac.set_rbac_datasources_builtin_roles
    get_perms = admin.rbac.get_rbac_datasources

    # Snapshot pre-existing managed grants so cleanup restores them instead of
    # blindly revoking.
    prior = {"user": "", "team": "", "role": ""}

    def snapshot():
        items = get_perms(uid)
        assert isinstance(items, list), "expected JSON array, got %r" % (items,)
        for key, field, value in (
            ("user", "userId", user_id),
            ("team", "teamId", team_id),
            ("role", "builtInRole", BUILTIN_ROLE),
        ):
            found = find_items(items, field, value, managed_only=True)
            if found:
                prior[key] = found[0].get("permission", "")

    check("initial GET /api/access-control/datasources/%s" % uid, snapshot)

    # --- what scripts call around the permission methods ---------------------
    run_directory_checks(admin, anon, args)

    granted = {"user": False, "team": False, "role": False}
    try:
        # --- grants -------------------------------------------------------
        def grant_user():
            granted["user"] = True
            return expect_message(set_user(uid, user_id, "Query"), "Permission updated")

        check("grant user %d Query via %s" % (user_id, set_user_desc), grant_user)

        def grant_team():
            granted["team"] = True
            return expect_message(set_team(uid, team_id, "Edit"), "Permission updated")

        check("grant team %d Edit via api.rbac.set_rbac_datasources_teams" % team_id, grant_team)

        def grant_role():
            granted["role"] = True
            return expect_message(set_role(uid, BUILTIN_ROLE, "Query"), "Permission updated")

        check(
            "grant builtInRole %s Query via api.rbac.set_rbac_datasources_builtin_roles"
            % BUILTIN_ROLE,
            grant_role,
        )

        # --- list ---------------------------------------------------------
        listing = {}

        def do_list():
            items = get_perms(uid)
            assert isinstance(items, list), "expected JSON array, got %r" % (items,)
            listing["items"] = items

        check("GET permissions via api.rbac.get_rbac_datasources", do_list)
        items = listing.get("items", [])

        def keys_present():
            assert items, "permission list is empty"
            for it in items:
                assert isinstance(it, dict), "item is not an object: %r" % (it,)
                missing = [k for k in REQUIRED_KEYS if k not in it]
                assert not missing, "item missing %s: %r" % (missing, it)

        check("every item has keys %s" % ", ".join(REQUIRED_KEYS), keys_present)

        def types_ok():
            for it in items:
                if not isinstance(it, dict):
                    continue
                for k in ("isManaged", "isInherited", "isServiceAccount"):
                    if k in it:
                        assert isinstance(it[k], bool), "%s not bool in %r" % (k, it)
                if "id" in it:
                    assert isinstance(it["id"], int) and not isinstance(it["id"], bool), (
                        "id not int in %r" % (it,)
                    )
                for k in ("roleName", "permission"):
                    if k in it:
                        assert isinstance(it[k], str), "%s not str in %r" % (k, it)
                if "actions" in it:
                    assert isinstance(it["actions"], list) and all(
                        isinstance(a, str) for a in it["actions"]
                    ), "actions not list of str in %r" % (it,)

        check("item field types (bool flags, int id, str permission, list actions)", types_ok)

        def user_item():
            found = [
                it
                for it in find_items(items, "userId", user_id)
                if it.get("permission") == "Query" and it.get("isManaged") is True
            ]
            assert found, "no item with userId=%d permission=Query isManaged=true in %r" % (
                user_id,
                items,
            )

        check("list has userId=%d permission=Query isManaged=true" % user_id, user_item)

        def team_item():
            found = [
                it
                for it in find_items(items, "teamId", team_id)
                if it.get("permission") == "Edit"
            ]
            assert found, "no item with teamId=%d permission=Edit in %r" % (team_id, items)
            assert any("datasources:write" in (it.get("actions") or []) for it in found), (
                "team Edit item lacks datasources:write: %r" % (found,)
            )

        check("list has teamId=%d permission=Edit with datasources:write" % team_id, team_item)

        def role_item():
            found = find_items(items, "builtInRole", BUILTIN_ROLE)
            assert found, "no item with builtInRole=%s in %r" % (BUILTIN_ROLE, items)
            assert any(it.get("permission") == "Query" for it in found), (
                "builtInRole %s item has no Query permission: %r" % (BUILTIN_ROLE, found)
            )

        check("list has builtInRole=%s (permission Query)" % BUILTIN_ROLE, role_item)

        # --- revoke user ----------------------------------------------------
        def revoke_user():
            r = expect_message(set_user(uid, user_id, ""), "Permission removed")
            if r is None:
                granted["user"] = False
            return r

        ids_before = {
            (it.get("teamId"), it.get("builtInRole"), it.get("userLogin"), it.get("roleName")): it.get("id")
            for it in items
            if isinstance(it, dict) and it.get("userId") != user_id
        }

        check("revoke user %d (permission \"\") -> Permission removed" % user_id, revoke_user)

        def ids_stable():
            after = get_perms(uid)
            for it in after:
                key = (it.get("teamId"), it.get("builtInRole"), it.get("userLogin"), it.get("roleName"))
                if key in ids_before:
                    assert it.get("id") == ids_before[key], (
                        "grant %r changed id from %r to %r after another grant's revoke"
                        % (key, ids_before[key], it.get("id"))
                    )
            ids = [it.get("id") for it in after]
            assert len(ids) == len(set(ids)), "duplicate ids in %r" % (after,)
            for it in after:
                assert "file" not in str(it.get("roleName")) and ".csv" not in str(it), (
                    "a policy file is named in %r" % (it,)
                )

        check("GET after revoke: the other grants keep their ids, ids unique, no file names", ids_stable)

        def user_gone():
            after = get_perms(uid)
            assert isinstance(after, list), "expected JSON array, got %r" % (after,)
            left = find_items(after, "userId", user_id, managed_only=True)
            assert not left, "managed item for userId=%d still present: %r" % (user_id, left)

        check("GET after revoke: no managed item for userId=%d" % user_id, user_gone)

        # --- negative cases -------------------------------------------------
        expect_error(
            "invalid permission 'Owner' for team via set_rbac_datasources_teams",
            lambda: set_team(uid, team_id, "Owner"),
            GrafanaBadInputError,
            400,
        )
        expect_error(
            "invalid permission 'Owner' for user via %s" % set_user_desc,
            lambda: set_user(uid, user_id, "Owner"),
            GrafanaBadInputError,
            400,
        )
        missing_uid = "datagate-compat-missing-%s" % uuid.uuid4().hex[:12]
        expect_error(
            "unknown datasource uid %s via get_rbac_datasources" % missing_uid,
            lambda: get_perms(missing_uid),
            GrafanaClientError,
            404,
        )
        # If the server wrongly accepts this, it would set team -> Query; the
        # cleanup below restores the team's prior permission either way.
        expect_error(
            "viewer token write via set_rbac_datasources_teams",
            lambda: viewer.rbac.set_rbac_datasources_teams(uid, team_id, "Query"),
            GrafanaClientError,
            403,
        )
        expect_error(
            "no token GET via get_rbac_datasources",
            lambda: anon.rbac.get_rbac_datasources(uid),
            GrafanaUnauthorizedError,
            401,
        )
        expect_error(
            "no token write via set_rbac_datasources_builtin_roles",
            lambda: anon.rbac.set_rbac_datasources_builtin_roles(uid, BUILTIN_ROLE, "Edit"),
            GrafanaUnauthorizedError,
            401,
        )
    finally:
        # --- cleanup: restore what was there before (usually: revoke) --------
        for key, label, setter, target in (
            ("user", "user %d" % user_id, set_user, user_id),
            ("team", "team %d" % team_id, set_team, team_id),
            ("role", "builtInRole %s" % BUILTIN_ROLE, set_role, BUILTIN_ROLE),
        ):
            if not granted[key]:
                continue
            perm = prior[key]
            want = "Permission updated" if perm else "Permission removed"

            def restore(setter=setter, target=target, perm=perm, want=want):
                return expect_message(setter(uid, target, perm), want)

            check("cleanup: set %s to %r" % (label, perm), restore)

    if FAILURES:
        print("%d check(s) failed" % len(FAILURES))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
