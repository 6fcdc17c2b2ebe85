"""Datasette plugin: the actor is the caller datagate authenticated.

datagate (`identity_headers: {preset: datasette}`) removes every client copy of its
identity headers -- in any spelling, `X_Datagate_User` included -- and writes its own:

    X-Datagate-User      login                  -> actor["id"]
    X-Datagate-Roles     comma-separated roles  -> actor["roles"]
    X-Datagate-Teams     comma-separated teams  -> actor["teams"]
    X-Datagate-Org-Role  Viewer/Editor/Admin    -> actor["org_role"]
    X-Datagate-Email     e-mail, when known     -> actor["email"]
    X-Datagate-Name      display name           -> actor["name"]

Each value (each list item) is percent-encoded UTF-8: split on "," first, then decode.
Anonymous callers get no headers, so Datasette sees no actor.

Install: copy this file into a directory passed to `datasette serve --plugins-dir DIR`.
Trust: these headers are only as good as the network path. Datasette must be reachable
only through datagate -- bind it to loopback (`--host 127.0.0.1`) on datagate's host, or
in Kubernetes allow ingress to its pod only from datagate's pods (NetworkPolicy).
"""

from urllib.parse import unquote

from datasette import hookimpl

PREFIX = "x-datagate-"


def _list(value):
    if not value:
        return []
    return [unquote(item) for item in value.split(",")]


@hookimpl
def actor_from_request(datasette, request):
    headers = request.headers
    user = headers.get(PREFIX + "user")
    if not user:
        return None
    actor = {
        "id": unquote(user),
        "roles": _list(headers.get(PREFIX + "roles")),
        "teams": _list(headers.get(PREFIX + "teams")),
    }
    for key, header in (("org_role", "org-role"), ("email", "email"), ("name", "name")):
        value = headers.get(PREFIX + header)
        if value:
            actor[key] = unquote(value)
    return actor
