"""A WSGI app that answers every request with its WSGI environ as JSON, and remembers
each environ, for datagate's header tests (tests/headers.rs).

Served by a real WSGI server so the tests see exactly what that server's parser made of
the request datagate forwarded:

    python3 echo.py werkzeug PORT      # Werkzeug's development server (Flask's)
    python3 echo.py wsgiref PORT       # the standard library's wsgiref.simple_server
    python3 -m gunicorn --chdir DIR -b 127.0.0.1:PORT -w 1 echo:app

`GET /__echo/seen` returns every environ recorded so far (`[]` after
`DELETE /__echo/seen`); the tests call it directly, never through datagate.

Paths under `/proxyfix/` are served through Werkzeug's ProxyFix trusting one proxy for
every header it knows (as Superset's `ENABLE_PROXY_FIX` does); the recorded environ is
the one the application behind ProxyFix sees.
"""

import json
import sys
import threading

_seen = []
_lock = threading.Lock()


def _plain(environ):
    return {key: value for key, value in environ.items() if isinstance(value, str)}


def echo(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/__echo/seen":
        with _lock:
            if environ.get("REQUEST_METHOD") == "DELETE":
                _seen.clear()
            body = json.dumps(_seen).encode()
    else:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length:
            environ["wsgi.input"].read(length)
        plain = _plain(environ)
        with _lock:
            _seen.append(plain)
        body = json.dumps(plain).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def app(environ, start_response):
    if environ.get("PATH_INFO", "").startswith("/proxyfix/"):
        from werkzeug.middleware.proxy_fix import ProxyFix

        fixed = ProxyFix(echo, x_for=1, x_proto=1, x_host=1, x_port=1, x_prefix=1)
        return fixed(environ, start_response)
    return echo(environ, start_response)


def main():
    server, port = sys.argv[1], int(sys.argv[2])
    if server == "werkzeug":
        from werkzeug.serving import run_simple

        run_simple("127.0.0.1", port, app, threaded=True)
    elif server == "wsgiref":
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args):
                pass

        make_server("127.0.0.1", port, app, handler_class=Quiet).serve_forever()
    else:
        raise SystemExit(f"unknown server {server!r} (werkzeug or wsgiref)")


if __name__ == "__main__":
    main()
