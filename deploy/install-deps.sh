#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test datagate. Idempotent.
set -euo pipefail

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)    # pingora's build needs it
command -v curl >/dev/null 2>&1 || need_apt+=(curl)      # the demo prints and runs curl
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "missing: ${need_apt[*]} (install them with your package manager)" >&2
    exit 1
  fi
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
# `make demo` needs only the build tools above; what follows is for `make test`.
if [ "${1:-}" = "--build-only" ]; then
  exit 0
fi
# The Grafana API compatibility test drives the admin API with the real grafana-client;
# the Datasette route pack is tested against a real Datasette server; AWS IAM auth
# against moto's STS and Redshift emulation (python3 -m moto.server).
# Header tests put Werkzeug, gunicorn and wsgiref behind datagate (tests/headers.rs).
# The admin API's OpenAPI document is checked by openapi-spec-validator and schemathesis.
if ! python3 -c 'import grafana_client, datasette, moto.server, flask, gunicorn, openapi_spec_validator, prison' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check -r "$(dirname "$0")/../tests/compat/requirements.txt"
fi
# schemathesis in a virtualenv of its own: grafana-client's urllib3-future breaks it in
# the shared environment (tests/openapi.rs).
"$(dirname "$0")/../tests/compat/openapi/install.sh"
# The Superset integration test (tests/superset.rs) runs a real Apache Superset 6.1 from
# its own virtual environment, cached between runs on a kept machine.
"$(dirname "$0")/../tests/compat/superset/install.sh"
# Identity tests: a real OpenID Connect provider (oidc-provider on Node) and Chromium.
"$(dirname "$0")/../tests/compat/oidc/install.sh"
# The Superset UI test drives that Chromium with playwright-core (no browser download).
"$(dirname "$0")/../tests/compat/browser/install.sh"
# Validators for the deployment artifacts (Kubernetes, systemd, Dockerfile, dashboard).
"$(dirname "$0")/install-validators.sh"
