"""gunicorn server hooks for the Superset integration test (harness.py serve -c this file).

`pre_request` records every request's X-Test-Marker in the access log *before* Superset
handles it. gunicorn's own access-log line is written only after the response has been
sent, by whichever of its workers and threads served it, so a test that has datagate's
answer in hand could read the log before that line lands (a test once saw an admin's
forwarded request as never received). A line written before the application runs is in
the file before any byte of the answer exists.
"""

from __future__ import annotations

import os


def pre_request(worker, req) -> None:  # noqa: ARG001 (gunicorn's hook signature)
    log = os.environ.get("DATAGATE_TEST_ARRIVALS_LOG")
    if not log:
        return
    marker = next((value for name, value in req.headers if name == "X-TEST-MARKER"), "-")
    line = f"arrived {req.method} {req.path} marker={marker}\n".encode()
    # One write on an O_APPEND descriptor: lines of concurrent workers never interleave.
    descriptor = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)
