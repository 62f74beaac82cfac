#!/usr/bin/env bash
# Installs the Debian 12 packages engram builds and runs with. Idempotent: does nothing when all
# are present, so the run and test commands can call it every time.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build ccache pkg-config
  libpqxx-dev libnats-dev nats-server libjemalloc-dev
  libboost-all-dev nlohmann-json3-dev libspdlog-dev libfmt-dev catch2
  libcli11-dev libssl-dev libcurl4-openssl-dev
  postgresql postgresql-contrib
  curl python3 python3-aiosmtpd nginx docker-compose clang-format tzdata
  clang libclang-rt-14-dev
  chromium nodejs
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The web chat's browser test runs npm (Debian's npm package; a nodejs build that bundles npm needs none).
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
