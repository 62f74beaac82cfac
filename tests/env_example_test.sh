#!/usr/bin/env bash
# .env.example must list every setting of every service: compares it with what each binary
# declares (`--env-example` prints the settings the binary validates at start).
set -euo pipefail
build="$1"
root="$(cd "$(dirname "$0")/.." && pwd)"
missing=0
for b in event-store/engram-event-store memory-processor/engram-memory-processor ai-processor/engram-ai-processor \
         notification-processor/engram-notification-processor interfaces/gateway/engram-gateway; do
  [ -x "$build/$b" ] || { echo "FAIL: $build/$b is not built"; exit 1; }
  for key in $("$build/$b" --env-example | sed -n 's/^\([A-Z][A-Z0-9_]*\)=.*/\1/p'); do
    if ! grep -q "^$key=" "$root/.env.example"; then
      echo "FAIL: .env.example lacks $key (a setting of $(basename "$b"))"
      missing=1
    fi
  done
done
[ "$missing" = 0 ] && echo "every setting of every service is in .env.example"
exit "$missing"
