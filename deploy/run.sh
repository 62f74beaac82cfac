#!/usr/bin/env bash
# The run command: installs what is missing, builds, starts a private PostgreSQL and NATS under
# .run/, then every engram service, and prints where to go. `deploy/run.sh stop` stops everything.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
run="$root/.run"
cmd="${1:-start}"

SERVICES=(engram-gateway engram-notification-processor engram-ai-processor engram-memory-processor engram-event-store)

stop_services() {
  for s in "${SERVICES[@]}"; do
    local pidf="$run/$s.pid"
    if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
      kill -TERM "$(cat "$pidf")" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$(cat "$pidf")" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$(cat "$pidf")" 2>/dev/null || true
    fi
    rm -f "$pidf"
  done
}

case "$cmd" in
  stop)
    stop_services
    "$root/deploy/stack.sh" stop
    echo "engram stopped"
    exit 0 ;;
  start) ;;
  *) echo "usage: deploy/run.sh [start|stop]" >&2; exit 2 ;;
esac

"$root/deploy/install-deps.sh"
"$root/deploy/build.sh" default engram-event-store engram-memory-processor engram-ai-processor engram-notification-processor engram-gateway engram
"$root/deploy/stack.sh" start >/dev/null
[ -f "$root/.env" ] && { set -a; . "$root/.env"; set +a; }
# The run command wires the services to its own PostgreSQL and NATS (whose URL carries the token
# the server requires), whatever .env says for the containers or another setup.
eval "$("$root/deploy/stack.sh" env)"
# Every service requires a token: without one, any web page the user visits could POST to the
# local store and gateway. Unless .env sets ENGRAM_API_TOKEN, one is made once and kept in .run/.
token_file="$run/api-token"
if [ -z "${ENGRAM_API_TOKEN:-}" ]; then
  mkdir -p "$run"
  if [ ! -s "$token_file" ]; then
    (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$token_file")
  fi
  chmod 600 "$token_file"
  ENGRAM_API_TOKEN="$(cat "$token_file")"
  token_note="in $token_file (made once; set ENGRAM_API_TOKEN in .env to choose it)"
  token_ref="\$(cat $token_file)"
else
  token_note="ENGRAM_API_TOKEN from .env"
  token_ref="<ENGRAM_API_TOKEN of .env>"
fi
export ENGRAM_API_TOKEN
export EVENT_STORE_LISTEN="${EVENT_STORE_LISTEN:-127.0.0.1:8080}"
export EVENT_STORE_URL="${EVENT_STORE_URL:-http://$EVENT_STORE_LISTEN}"
export MEMORY_PROCESSOR_LISTEN="${MEMORY_PROCESSOR_LISTEN:-127.0.0.1:8083}"
export GATEWAY_LISTEN="${GATEWAY_LISTEN:-127.0.0.1:8081}"
export AI_PROCESSOR_LISTEN="${AI_PROCESSOR_LISTEN:-127.0.0.1:8084}"
export NOTIFICATION_PROCESSOR_LISTEN="${NOTIFICATION_PROCESSOR_LISTEN:-127.0.0.1:8085}"

stop_services
start_service() {
  local name="$1" bin="$2" health="$3"
  nohup "$bin" >>"$run/$name.log" 2>&1 &
  echo $! >"$run/$name.pid"
  for _ in $(seq 1 100); do
    if curl -fsS "$health" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$(cat "$run/$name.pid")" 2>/dev/null; then
      echo "$name failed to start; last lines of $run/$name.log:" >&2; tail -5 "$run/$name.log" >&2; exit 1
    fi
    sleep 0.1
  done
  echo "$name did not become healthy; see $run/$name.log" >&2; exit 1
}
start_service engram-event-store "$root/build/event-store/engram-event-store" "$EVENT_STORE_URL/healthz"
start_service engram-memory-processor "$root/build/memory-processor/engram-memory-processor" \
  "http://$MEMORY_PROCESSOR_LISTEN/healthz"
start_service engram-ai-processor "$root/build/ai-processor/engram-ai-processor" "http://$AI_PROCESSOR_LISTEN/healthz"
start_service engram-notification-processor "$root/build/notification-processor/engram-notification-processor" \
  "http://$NOTIFICATION_PROCESSOR_LISTEN/healthz"
start_service engram-gateway "$root/build/interfaces/gateway/engram-gateway" "http://$GATEWAY_LISTEN/healthz"

echo "engram is running (logs in $run/)"
echo "  web chat:         http://$GATEWAY_LISTEN/"
echo "  gateway:          http://$GATEWAY_LISTEN   (POST /trigger, POST /webhooks/{source}, Telegram: ${TELEGRAM_BOT_TOKEN:+on}${TELEGRAM_BOT_TOKEN:-off (set TELEGRAM_BOT_TOKEN)})"
echo "  event store:      $EVENT_STORE_URL"
echo "  memory processor: http://$MEMORY_PROCESSOR_LISTEN/metrics"
if [ -n "${LLM_BASE_URL:-}" ]; then model="${LLM_MODEL:-gpt-4.1} at $LLM_BASE_URL"; else model="the offline provider (rule-based, no model; set LLM_BASE_URL/LLM_API_KEY/LLM_MODEL)"; fi
echo "  ai processor:     http://$AI_PROCESSOR_LISTEN/metrics, answering with $model"
echo "  notifications:    http://$NOTIFICATION_PROCESSOR_LISTEN/metrics (Telegram, email, Slack when configured)"
echo "  API token:        $token_note; the web chat needs none"
echo "                    curl -H \"Authorization: Bearer $token_ref\" -H 'Content-Type: application/json' ..."
echo "  CLI:              ENGRAM_API_TOKEN=$token_ref build/interfaces/cli/engram --help"
echo "  stop with:        deploy/run.sh stop"
