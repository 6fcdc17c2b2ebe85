#!/usr/bin/env bash
# Installs what tests/identity.rs needs: the pinned oidc-provider (npm, from
# package-lock.json) run by Node, and Debian's chromium for the browser login test.
# Idempotent; called by deploy/install-deps.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if ! command -v node >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm chromium >/dev/null
  else
    echo "missing: node and/or chromium (apt-get install nodejs npm chromium)" >&2
    exit 1
  fi
fi
if [ ! -d "$here/node_modules/oidc-provider" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi
