#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs every test through ctest. Tests start
# their own throwaway PostgreSQL and nats-server on free loopback ports.
# The compose test (label `compose`: the docker-compose stack built and run in a private Docker engine)
# runs alone after the others, so it does not compete with them for the cores.
# Then every libFuzzer target runs for FUZZ_SECONDS (default 20) through deploy/fuzz.sh.
# Usage: deploy/test.sh [preset: default|asan] [extra ctest arguments, e.g. -L unit]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
preset="${1:-default}"
shift || true
# How long each step took, so that a slow CI run says where its time went.
t0=$(date +%s) tp=$(date +%s)
step() { local n; n=$(date +%s); echo "[test.sh] $1: $(( n - tp )) s (total $(( n - t0 )) s)"; tp=$n; }
"$root/deploy/install-deps.sh"
step "dependencies"
"$root/deploy/format.sh" --check
"$root/deploy/build.sh" "$preset"
step "format check and build"
# The web chat's browser test (ctest label e2e) drives Chromium with playwright-core from npm.
# `npm ci` only when the lock file changed since the last install.
# The AI processor's MCP client is tested against real MCP servers from npm (tests/mcp).
for web in "$root/tests/webchat" "$root/tests/mcp"; do
  if ! cmp -s "$web/package-lock.json" "$web/node_modules/.package-lock.json.installed" 2>/dev/null; then
    npm ci --prefix "$web" --no-audit --no-fund
    cp "$web/package-lock.json" "$web/node_modules/.package-lock.json.installed"
  fi
done
dir="$root/build"
if [ "$preset" = "asan" ]; then
  dir="$root/build-asan"
  export LSAN_OPTIONS="suppressions=$root/cmake/lsan-suppressions.txt:print_suppressions=0"
fi
# The compose file must stay valid even where no container engine runs.
(cd "$root/deploy" && docker-compose -f docker-compose.yml config -q && docker-compose -f docker-compose.ha.yml config -q)
echo "docker-compose.yml, docker-compose.ha.yml: valid"
if [ $# -gt 0 ]; then
  exec ctest --test-dir "$dir" --output-on-failure -j "$(nproc)" "$@"
fi
rc=0
ctest --test-dir "$dir" --output-on-failure -j "$(nproc)" -LE compose || rc=$?
step "tests"
# The containers run the same code as the default build: the sanitizer build skips them.
if [ "$preset" != "asan" ]; then
  ctest --test-dir "$dir" --output-on-failure -L compose || rc=$?
  # ctest hides a skipped test's output: show why it was skipped.
  grep -h '^SKIPPED: ' "$dir/Testing/Temporary/LastTest.log" 2>/dev/null || true
  grep -h '^\[compose +' "$dir/Testing/Temporary/LastTest.log" 2>/dev/null | tail -40 || true
  step "compose test"
fi
# The libFuzzer targets, FUZZ_SECONDS each (default 20), on copies of their corpora (deploy/fuzz.sh).
"$root/deploy/fuzz.sh" "${FUZZ_SECONDS:-20}" || rc=$?
step "fuzz"
exit $rc
