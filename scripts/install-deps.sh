#!/usr/bin/env bash
# Installs the Debian 12 packages sgpu needs to build, run and test.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

packages=(
  build-essential pkg-config meson ninja-build
  libevent-dev libjansson-dev libsqlite3-dev libcurl4-openssl-dev libssl-dev
  libcmocka-dev libhttp-parser-dev
  python3 curl
  nginx-light wrk
  libarchive-dev libyaml-dev crun runc
  docker-registry umoci skopeo apache2-utils
  chromium
  slurm-wlm slurm-client munge
)
# The console tests run Playwright (npm playwright-core) on Node.js; a Node.js
# from elsewhere (with its own npm) is kept.
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "installing: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
