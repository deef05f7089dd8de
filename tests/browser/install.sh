#!/usr/bin/env bash
# Installs the console tests' npm packages (playwright-core, pinned in
# package-lock.json) into tests/browser/node_modules. The browser itself is
# Debian's chromium, installed by scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")"
if [ -f node_modules/playwright-core/package.json ] && \
   [ node_modules/.package-lock.json -nt package-lock.json ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "npm is missing: run scripts/install-deps.sh" >&2; exit 1; }
npm ci --no-audit --no-fund --loglevel=error
