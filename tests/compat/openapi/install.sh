#!/usr/bin/env bash
# Installs schemathesis into its own virtual environment for `tests/openapi.rs`.
#
# Why its own: grafana-client (tests/compat/requirements.txt) pulls `urllib3-future`,
# which replaces the `urllib3` package that schemathesis's `requests` transport imports,
# and breaks it in a shared environment. The venv lives at a cache path that survives
# between runs on a kept machine ($DATAGATE_SCHEMATHESIS_VENV, default
# /var/cache/datagate/schemathesis-venv); it is reused when its marker file records the
# same pins, rebuilt otherwise. Idempotent.
set -euo pipefail

venv="${DATAGATE_SCHEMATHESIS_VENV:-/var/cache/datagate/schemathesis-venv}"
pins=(schemathesis==4.32.5)
marker="$venv/.datagate-pins"
wanted="$(printf '%s\n' "${pins[@]}")"

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$wanted" ] && "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
  exit 0
fi

python="${DATAGATE_SCHEMATHESIS_PYTHON:-python3}"
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}"
"$venv/bin/schemathesis" --version >/dev/null
printf '%s\n' "$wanted" >"$marker"
