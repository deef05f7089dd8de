#!/usr/bin/env bash
# Installs the Debian 12 packages sgpu needs.
#   install-deps.sh        to build and run sgpud (make, make run)
#   install-deps.sh test   also what the tests and benchmarks use (make check, make bench)
# Idempotent: packages already present are not fetched again.
set -euo pipefail

packages=(
  build-essential pkg-config meson ninja-build python3 curl
  libevent-dev libjansson-dev libsqlite3-dev libcurl4-openssl-dev libssl-dev
  libhttp-parser-dev libarchive-dev libyaml-dev libcmocka-dev
  crun runc
)
if [ "${1:-}" = test ]; then
  packages+=(
    nginx-light wrk                                 # benchmark baselines
    docker-registry umoci skopeo apache2-utils      # a real registry and test images
    chromium                                        # console tests
    slurm-wlm slurm-client munge                    # a real Slurm cluster
    slurmrestd slurm-wlm-jwt-plugin                 # its REST API, with JWT authentication
    clang libclang-rt-14-dev                        # libFuzzer (make fuzz)
    clang-format                                    # the layout check (make format-check)
    shellcheck                                      # the Slurm job script check
  )
  # The console tests run Playwright (npm playwright-core) on Node.js; a
  # Node.js from elsewhere (with its own npm) is kept.
  command -v node >/dev/null || packages+=(nodejs)
  command -v npm >/dev/null || packages+=(npm)
elif [ -n "${1:-}" ]; then
  echo "usage: $0 [test]" >&2
  exit 2
fi

# The unprivileged user that process workers run as when sgpud runs as root
# (config key run_as; without it they run as nobody).
if [ "$(id -u)" -eq 0 ] && ! getent passwd sgpu-worker >/dev/null; then
  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin sgpu-worker
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "installing: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The npm packages of the tests that run on Node.js (pinned in their package-lock.json).
if [ "${1:-}" = test ]; then
  bash "$(dirname "$0")/../tests/openapi/install.sh"
fi
