#!/usr/bin/env bash
# Installs what tests/identity.rs needs: the pinned oidc-provider (npm, from
# package-lock.json) run by Node, and Debian's chromium for the browser login test.
# Idempotent; called by deploy/install-deps.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# Only what is missing: a machine whose Node.js came from elsewhere (NodeSource) cannot
# take Debian's nodejs/npm beside it (apt refuses with "held broken packages").
need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "missing: ${need_apt[*]} (apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
fi
if [ ! -d "$here/node_modules/oidc-provider" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi
