#!/usr/bin/env bash
# Installs the validators tests/deploy.rs runs on the deployment artifacts. Idempotent.
#   systemd-analyze      verify + security of deploy/systemd/datagate.service (Debian: systemd)
#   kubernetes-validate  deploy/kubernetes/*.yaml against the Kubernetes schemas it ships
#   hadolint             the Dockerfile
#   promql_parser        the PromQL of deploy/grafana-dashboard.json
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
  else
    echo "missing: systemd-analyze (install the systemd package)" >&2
    exit 1
  fi
fi

if ! command -v kubernetes-validate >/dev/null 2>&1 || ! command -v hadolint >/dev/null 2>&1 ||
  ! python3 -c 'import promql_parser' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check -r "$here/validators-requirements.txt"
fi
