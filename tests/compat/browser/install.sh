#!/usr/bin/env bash
# Installs what tests/superset_ui/ needs beside Chromium (tests/compat/oidc/install.sh
# installs Debian's chromium and Node): playwright-core, pinned in package-lock.json.
# playwright-core downloads no browser; the driver launches /usr/bin/chromium. Idempotent;
# called by deploy/install-deps.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ ! -d "$here/node_modules/playwright-core" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi
