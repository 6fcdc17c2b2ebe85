#!/usr/bin/env bash
# Installs a real Apache Superset 6.1.0 into its own virtual environment for the Superset
# integration test (tests/superset.rs) and the route-pack generator (generate_pack.py).
#
# The venv lives at a cache path that survives between runs on a kept machine
# ($DATAGATE_SUPERSET_VENV, default /var/cache/datagate/superset-venv); it is reused when
# its marker file records the same pins, rebuilt otherwise. Idempotent.
set -euo pipefail

venv="${DATAGATE_SUPERSET_VENV:-/var/cache/datagate/superset-venv}"
# flask-caching 2.5.1 breaks `superset db upgrade`; rich and cachetools are imported by
# Superset 6.1 but not declared. No marshmallow pin is needed.
pins=(apache-superset==6.1.0 rich cachetools flask-caching==2.3.1)
marker="$venv/.datagate-pins"
wanted="$(printf '%s\n' "${pins[@]}")"

# `superset mcp run` (Superset's `fastmcp` extra, `fastmcp>=3.1,<4`), pinned. Added to an
# existing venv in place (it only adds packages), so a kept venv is not rebuilt for it.
mcp_pins=(fastmcp==3.4.11)
mcp_marker="$venv/.datagate-mcp-pins"
mcp_wanted="$(printf '%s\n' "${mcp_pins[@]}")"

install_mcp() {
  if [ -f "$mcp_marker" ] && [ "$(cat "$mcp_marker")" = "$mcp_wanted" ] && "$venv/bin/python" -c "import fastmcp" >/dev/null 2>&1; then
    return 0
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${mcp_pins[@]}"
  "$venv/bin/python" -c "import fastmcp" >/dev/null
  printf '%s\n' "$mcp_wanted" >"$mcp_marker"
}

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$wanted" ] && "$venv/bin/python" -c "import superset.app, flask_caching" >/dev/null 2>&1; then
  install_mcp
  exit 0
fi

python="${DATAGATE_SUPERSET_PYTHON:-python3}"
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}"
"$venv/bin/python" -c "import superset.app, flask_caching" >/dev/null
printf '%s\n' "$wanted" >"$marker"
install_mcp
