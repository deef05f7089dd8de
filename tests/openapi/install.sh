#!/usr/bin/env bash
# Installs the OpenAPI check's npm packages (@readme/openapi-parser, pinned in
# package-lock.json) into tests/openapi/node_modules.
set -euo pipefail
cd "$(dirname "$0")"
if [ -f node_modules/@readme/openapi-parser/package.json ] && \
   [ node_modules/.package-lock.json -nt package-lock.json ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "npm is missing: run scripts/install-deps.sh test" >&2; exit 1; }
npm ci --no-audit --no-fund --loglevel=error
