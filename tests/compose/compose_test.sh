#!/usr/bin/env bash
# The docker-compose stack, built and run for real (ctest label `compose`).
#
# Starts a private Docker engine (Debian's docker.io: its own data root under .cache/compose/docker,
# its own socket, no bridge, no iptables rules, no IP forwarding), builds a Debian 12 base image with
# debootstrap (no registry is needed; cached), the engram image from deploy/Dockerfile and small
# stand-ins for the official postgres and nats images, then runs deploy/docker-compose.yml unchanged:
# up (two instances of each processor), wait for every container's health check, both instances of
# each processor holding partitions (`engram processors --json`), a message through the gateway
# answered by the offline provider, the AI processor instance that runs a conversation killed in the
# middle of a run (the other instance takes all partitions over and completes the run once; the
# killed one rejoins), a crashed instance restarted by its restart policy, down -v. Then
# deploy/docker-compose.ha.yml (three NATS nodes, pg_auto_failover with two database nodes, two
# stores, two instances of each processor): a message answered, the NATS stream leader's container
# killed and a message answered, the PostgreSQL primary's container killed (pg_auto_failover
# promotes the standby) and a message answered, each exactly once; down -v.
# Nothing is left behind: no container, network, volume, mount, bridge or firewall rule.
#
# Exit 77 (ctest: skipped) with the reason when the engines cannot be installed or run here.
# Environment: ENGRAM_COMPOSE_CACHE (default .cache/compose) keeps the base image, the image layers
# and the build caches between runs; KEEP_COMPOSE_LOGS=1 prints the services' logs even on success.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
here="$root/tests/compose"
cache="${ENGRAM_COMPOSE_CACHE:-$root/.cache/compose}"
SKIP=77
t0=$(date +%s)
log() { echo "[compose +$(( $(date +%s) - t0 ))s] $*" >&2; }
skip() { echo "SKIPPED: $*" >&2; exit $SKIP; }
fail() { echo "FAILED: $*" >&2; exit 1; }

# --- engines -------------------------------------------------------------------------------------
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then exec sudo -n --preserve-env=ENGRAM_COMPOSE_CACHE,KEEP_COMPOSE_LOGS bash "$0" "$@"; fi
  skip "the compose test runs a private Docker engine, which needs root (or passwordless sudo)"
fi
pkgs=(docker.io docker-compose debootstrap iptables curl python3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  # policy-rc.d keeps the package from starting the system's dockerd (with its iptables rules).
  prc=/usr/sbin/policy-rc.d made_prc=0
  [ -e $prc ] || { printf '#!/bin/sh\nexit 101\n' >$prc; chmod +x $prc; made_prc=1; }
  ok=1
  { DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"/tmp/engram-compose-apt.log" 2>&1 || ok=0
  [ $made_prc = 1 ] && rm -f $prc
  [ $ok = 1 ] || skip "could not install ${missing[*]} with apt-get (see /tmp/engram-compose-apt.log)"
fi
DOCKER=/usr/bin/docker   # Debian's client, matching its engine (BuildKit without the buildx plugin)
[ -x /usr/sbin/dockerd ] && [ -x $DOCKER ] || skip "docker.io did not install /usr/sbin/dockerd and /usr/bin/docker"
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || skip "the kernel has no overlay filesystem for the image store"

mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
# A full disk shows up as odd errors far away (debootstrap: "file already exists", image layers
# that fail to extract): say it first.
free_kb="$(df -Pk "$cache" | awk 'NR == 2 {print $4}')"
[ "${free_kb:-0}" -ge $((6 * 1024 * 1024)) ] ||
  fail "only $((${free_kb:-0} / 1024)) MiB free on the filesystem of $cache: the images and the engine's data need 6 GiB"
run="$(mktemp -d /tmp/engram-compose.XXXXXX)"   # short: the engine's unix sockets live here
project="engramct$$"
logs="$run/logs"; mkdir -p "$logs"
export DOCKER_HOST="unix://$run/docker.sock" DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
firewall() {  # every rule of the host, without comments and packet counters
  { iptables-save || true; ip6tables-save || true; if command -v nft >/dev/null; then nft list ruleset || true; fi; } 2>/dev/null |
    sed -E '/^#/d; s/\[[0-9]+:[0-9]+\]//g; s/counter packets [0-9]+ bytes [0-9]+//g' | sort
}
fw_before="$(firewall)"
links() { ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort; }
links_before="$(links)"

# --- the private engine, and cleanup that always runs --------------------------------------------
# Only what this test exports reaches compose: an empty --env-file instead of deploy/.env (a link to
# the developer's .env).
compose_env="$run/compose.env"; : >"$compose_env"
compose() {
  docker-compose -p "$project" -f "$root/deploy/docker-compose.yml" --env-file "$compose_env" "$@"
}
compose_ha() {
  docker-compose -p "${project}ha" -f "$root/deploy/docker-compose.ha.yml" --env-file "$compose_env" "$@"
}
ha_up=0  # the HA stack is up (cleanup shows its logs and takes it down)
dockerd_pid=""
cleanup() {
  local rc=$?
  set +e
  if [ -n "$dockerd_pid" ]; then
    if [ $rc -ne 0 ] || [ -n "${KEEP_COMPOSE_LOGS:-}" ]; then
      echo "---- service logs (last 40 lines each) ----" >&2
      if [ $ha_up = 1 ]; then
        compose_ha logs --no-color --tail=40 >&2 2>&1
        compose_ha ps >&2 2>&1
      else
        compose logs --no-color --tail=40 >&2 2>&1
        compose ps >&2 2>&1
      fi
    fi
    compose down -v --remove-orphans -t 5 >>"$logs/compose.log" 2>&1
    [ $ha_up = 1 ] && compose_ha down -v --remove-orphans -t 5 >>"$logs/compose.log" 2>&1
    for p in "$project" "${project}ha"; do
      $DOCKER ps -aq --filter "label=com.docker.compose.project=$p" | xargs -r $DOCKER rm -f -v >/dev/null 2>&1
      $DOCKER network ls -q --filter "label=com.docker.compose.project=$p" | xargs -r $DOCKER network rm >/dev/null 2>&1
      $DOCKER volume ls -q --filter "label=com.docker.compose.project=$p" | xargs -r $DOCKER volume rm >/dev/null 2>&1
    done
    $DOCKER image prune -f >/dev/null 2>&1            # superseded engram images; build caches stay
    kill -TERM "$dockerd_pid" 2>/dev/null
    for _ in $(seq 1 150); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$dockerd_pid" 2>/dev/null
    wait "$dockerd_pid" 2>/dev/null
    # The engine's own containerd (and shims) must be gone too.
    for p in $(pgrep -f "$run/" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    grep -E " ($cache/docker|$run)" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
  fi
  if [ $rc -ne 0 ] && [ -f "$logs/dockerd.log" ]; then
    echo "---- dockerd log (last 30 lines) ----" >&2; tail -30 "$logs/dockerd.log" >&2
  fi
  # Nothing of the engine is left on the host.
  if [ -n "$dockerd_pid" ] && [ $rc -ne $SKIP ]; then
    local problems=""
    kill -0 "$dockerd_pid" 2>/dev/null && problems+=" dockerd still runs;"
    pgrep -f "$run/" >/dev/null && problems+=" engine processes left: $(pgrep -af "$run/" | tr '\n' ' ');"
    grep -qE " ($cache/docker|$run)" /proc/mounts && problems+=" mounts left under $cache/docker;"
    [ "$(firewall)" = "$fw_before" ] || problems+=" the firewall rules changed: $(diff <(echo "$fw_before") <(firewall) | tr '\n' ' ');"
    [ "$(links)" = "$links_before" ] || problems+=" network interfaces changed: $(links | tr '\n' ' ');"
    if [ -n "$problems" ]; then echo "FAILED: left behind:$problems" >&2; rc=1; fi
  fi
  rm -rf "$run"
  [ $rc -eq 0 ] && echo "PASS: the compose stack built, became healthy with two instances of each processor sharing the partitions, answered, survived killed AI processor instances (takeover, restart); the HA stack answered once each across the death of the NATS stream leader and of the PostgreSQL primary; nothing left behind ($(( $(date +%s) - t0 ))s)"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$run/daemon.json" <<'EOF'
{ "builder": { "gc": { "enabled": true, "defaultKeepStorage": "6GB" } } }
EOF
# --bridge=none, --iptables=false, --ip-forward=false, --ip-masq=false: the engine changes nothing in
# the host's network configuration; compose's own network is a plain bridge between the containers,
# and published ports are served by docker-proxy on loopback.
/usr/sbin/dockerd --config-file "$run/daemon.json" --data-root "$cache/docker" --exec-root "$run/exec" \
  --pidfile "$run/dockerd.pid" -H "$DOCKER_HOST" --bridge=none --iptables=false --ip-forward=false \
  --ip-masq=false --storage-driver=overlay2 --default-ulimit nofile=20000:20000 \
  --log-level=warn >"$logs/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1 150); do $DOCKER version >/dev/null 2>&1 && break; kill -0 $dockerd_pid 2>/dev/null || break; sleep 0.2; done
if ! $DOCKER version >/dev/null 2>&1; then
  tail -5 "$logs/dockerd.log" >&2
  skip "the Docker engine does not start on this machine (log above)"
fi
log "engine up ($($DOCKER version -f '{{.Server.Version}}'), data in $cache/docker)"

# --- images --------------------------------------------------------------------------------------
mirror() {  # the Debian mirror apt is configured with (bookworm's main archive, not security)
  local m
  m="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk 'BEGIN { RS = "" }
        /Suites:[^\n]*bookworm([ \t\n]|$)/ && !/security/ && match($0, /URIs:[ \t]*[^ \t\n]+/) {
          u = substr($0, RSTART, RLENGTH); sub(/URIs:[ \t]*/, "", u); print u; exit }')"
  [ -n "$m" ] || m="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1 == "deb" {
        for (i = 2; i < NF; i++) if ($i ~ /:\/\// && $(i + 1) == "bookworm") { print $i; exit } }')"
  echo "${m:-http://deb.debian.org/debian}"
}
if ! $DOCKER image inspect debian:bookworm >/dev/null 2>&1; then
  tarball="$cache/debian-bookworm-minbase.tar"
  if [ ! -s "$tarball" ]; then
    log "debootstrap: a Debian 12 base from $(mirror)"
    rm -rf "$cache/rootfs"
    debootstrap --variant=minbase bookworm "$cache/rootfs" "$(mirror)" >"$logs/debootstrap.log" 2>&1 ||
      { tail -20 "$logs/debootstrap.log" >&2; fail "debootstrap failed"; }
    # As in the official image: packages never start services during a build; no apt caches.
    printf '#!/bin/sh\nexit 101\n' >"$cache/rootfs/usr/sbin/policy-rc.d"; chmod +x "$cache/rootfs/usr/sbin/policy-rc.d"
    rm -rf "$cache/rootfs/var/cache/apt/archives/"*.deb "$cache/rootfs/var/lib/apt/lists/"*
    tar -C "$cache/rootfs" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$cache/rootfs"
  fi
  $DOCKER import --change 'CMD ["bash"]' "$tarball" debian:bookworm >/dev/null
  log "base image imported"
fi
# The runtime stage uses the slim variant; the base is small enough to serve as both.
$DOCKER image inspect debian:bookworm-slim >/dev/null 2>&1 || $DOCKER tag debian:bookworm debian:bookworm-slim

build() {  # build <tag> <dockerfile> <context> <name>
  local s=$(date +%s)
  if ! $DOCKER build --network host -t "$1" -f "$2" "$3" >"$logs/build-$4.log" 2>&1; then
    tail -40 "$logs/build-$4.log" >&2; fail "building the $4 image failed"
  fi
  log "image $1 built in $(( $(date +%s) - s ))s"
}
# In parallel: the small images mostly wait for the mirror while the engram image compiles.
build engram-test/postgres:15 "$here/postgres.Dockerfile" "$here" postgres & pg_build=$!
build engram-test/nats:2 "$here/nats.Dockerfile" "$here" nats & nats_build=$!
build engram-test/postgres-ha:15 "$root/deploy/postgres-ha.Dockerfile" "$root/deploy" postgres-ha & pgha_build=$!
build engram:compose-test "$root/deploy/Dockerfile" "$root" engram
wait $pg_build || exit 1
wait $nats_build || exit 1
wait $pgha_build || exit 1

# --- up ------------------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export POSTGRES_IMAGE=engram-test/postgres:15 NATS_IMAGE=engram-test/nats:2 ENGRAM_IMAGE=engram:compose-test
export GATEWAY_PORT="$(free_port)" EVENT_STORE_PORT="$(free_port)"
export ENGRAM_API_TOKEN="ct-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
export LOG_LEVEL=info LOG_FORMAT=text
# A recall waits long for an answer (the memory processor is paused in the middle of a run below),
# and a run whose processor died is redelivered soon.
export AI_RECALL_TIMEOUT_MS=60000 AI_PROCESSOR_LEASE_TTL_MS=3000
for v in LLM_BASE_URL LLM_API_KEY EMBEDDINGS_MODEL TELEGRAM_BOT_TOKEN SMTP_URL SLACK_WEBHOOK_URL WEBHOOK_SECRETS; do
  export "$v="
done
s=$(date +%s)
compose up -d --no-build >"$logs/compose.log" 2>&1 || { cat "$logs/compose.log" >&2; fail "compose up failed"; }
services=(postgres nats event-store memory-processor ai-processor notification-processor gateway)
processors=(memory-processor ai-processor notification-processor)
declare -A cids    # service -> its container ids, by container number, space-separated
declare -A name    # container id -> <service>_<number>, as compose names it
containers=()
for svc in "${services[@]}"; do
  ids=()
  while read -r n c; do
    ids+=("$c"); name[$c]="${svc}_$n"; containers+=("$c")
  done < <(compose ps -q "$svc" | xargs -r $DOCKER inspect -f \
             '{{index .Config.Labels "com.docker.compose.container-number"}} {{.Id}}' | sort -n)
  want=1; [[ " ${processors[*]} " == *" $svc "* ]] && want=2
  [ ${#ids[@]} = $want ] || fail "compose created ${#ids[@]} container(s) for $svc, not $want"
  cids[$svc]="${ids[*]}"
done
health() { $DOCKER inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1" 2>/dev/null; }
restarts() { $DOCKER inspect -f '{{.RestartCount}}' "$1"; }
running() { [ "$($DOCKER inspect -f '{{.State.Running}}' "$1")" = true ]; }
for _ in $(seq 1 240); do
  all=1
  for c in "${containers[@]}"; do
    [ "$(health "$c")" = healthy ] && continue
    all=0
    if [ "$(restarts "$c")" -gt 0 ]; then
      $DOCKER logs --tail 5 "$c" >&2 2>&1
      fail "${name[$c]} exits at start (restarted $(restarts "$c") times; its last lines above)"
    fi
  done
  [ $all = 1 ] && break
  sleep 0.5
done
for c in "${containers[@]}"; do
  [ "$(health "$c")" = healthy ] || fail "${name[$c]} is not healthy: $(health "$c")"
done
log "all ${#containers[@]} containers of the ${#services[@]} services healthy in $(( $(date +%s) - s ))s"
# Only the gateway and the store are published, and only on loopback.
published="$($DOCKER ps --filter "label=com.docker.compose.project=$project" --format '{{.Ports}}' | tr ',' '\n' |
             grep -- '->' | sed 's/^ *//' | sort)"
expected="$(printf '127.0.0.1:%s->8080/tcp\n127.0.0.1:%s->8081/tcp\n' "$EVENT_STORE_PORT" "$GATEWAY_PORT" | sort)"
[ "$published" = "$expected" ] || fail "published ports: $published (expected: $expected)"

# --- the processors' instances share the partitions ----------------------------------------------
# `engram processors --json` in the store's container (it has DATABASE_URL); a member's host is the
# hostname of its container, the container's short id.
processors_json() { $DOCKER exec "${cids[event-store]}" engram processors --json; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# shares <service> <container...>: succeeds when every partition of the service's processor is held,
# only by live members in these containers, and each of them holds some; "<container> <count>, ...
# of <P>" (or why not) in $run/shares.<service>.
shares() {
  local svc="$1" c args=(); shift
  for c in "$@"; do args+=("$($DOCKER inspect -f '{{.Config.Hostname}}' "$c")=${name[$c]}"); done
  { processors_json || echo '{}'; } 2>"$run/shares.err" | python3 -c '
import collections, json, sys
doc, svc = json.load(sys.stdin), sys.argv[1]
hosts = dict(a.split("=", 1) for a in sys.argv[2:])
procs = {p["name"]: p for p in doc.get("processors", [])}
P = doc.get("partitions")
if svc not in procs or not P:
    print("no state of %s yet" % svc); sys.exit(1)
live = {m["member"]: m["host"] for m in procs[svc]["members"] if m["live"]}
held = collections.Counter()
for l in procs[svc]["leases"]:
    if l["state"] != "held":
        held[l["state"]] += 1  # free, expired
    elif l["owner"] in live:
        held[hosts.get(live[l["owner"]], "host " + live[l["owner"]])] += 1
    else:
        held["gone member " + l["owner"][:8]] += 1
print(", ".join("%s %d" % kv for kv in sorted(held.items())) + " of %d" % P)
sys.exit(0 if len(procs[svc]["leases"]) == P and set(held) == set(hosts.values()) else 1)' "$svc" "${args[@]}" >"$run/shares.$svc" 2>&1
}
wait_shares() {  # wait_shares <seconds> <service> <container...>
  local end=$(( $(now_ms) + $1 * 1000 )) c who=""; shift
  for c in "${@:2}"; do who+=" ${name[$c]}"; done
  until shares "$@"; do
    [ "$(now_ms)" -lt $end ] || fail "the partitions of $1 are not shared by$who: $(cat "$run/shares.$1") $(cat "$run/shares.err")"
    sleep 0.25
  done
}
for svc in "${processors[@]}"; do
  # shellcheck disable=SC2086 # the two container ids
  wait_shares 30 "$svc" ${cids[$svc]}
  log "$svc partitions: $(cat "$run/shares.$svc")"
done
partitions="$(processors_json | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitions"])')"

# --- a message through the gateway, answered by the offline provider ----------------------------
gw="http://127.0.0.1:$GATEWAY_PORT" store="http://127.0.0.1:$EVENT_STORE_PORT"
auth=(-H "Authorization: Bearer $ENGRAM_API_TOKEN")
code="$(curl -s -o /dev/null -w '%{http_code}' -XPOST "$gw/trigger" -d '{}')"
[ "$code" = 401 ] || fail "the gateway accepted a request without the token ($code)"
trigger() {  # trigger <session> <message> -> prints the TriggerReceived event id
  local body
  body="$(curl -fsS "${auth[@]}" -XPOST "$gw/trigger" -H 'content-type: application/json' \
    -d "{\"source\":\"compose\",\"user_id\":\"compose\",\"session_id\":\"$1\",\"message\":\"$2\"}")" ||
    fail "POST /trigger failed"
  python3 -c 'import json,sys; print(json.load(sys.stdin)["event_id"])' <<<"$body"
}
events() { curl -fsS "${auth[@]}" "$store/aggregates/$1/events?limit=1000"; }
# run_state <aggregate> <trigger id>: "<types of the run's events, space-separated>|<answer text>"
run_state() {
  events "$1" | python3 -c '
import json, sys
tid = sys.argv[1]
evs = json.load(sys.stdin)["events"]
runs = {e["data"].get("run_id") for e in evs if e["type"] == "AIProcessingStarted" and e["data"].get("trigger_event_id") == tid} - {None}
run = [e for e in evs if e["data"].get("run_id") in runs or e["data"].get("trigger_event_id") == tid]
ans = [e["data"].get("text", "") for e in run if e["type"] == "MessageGenerated"]
print(" ".join(e["type"] for e in run) + "|" + (ans[-1] if ans else ""))' "$2"
}
wait_for() {  # wait_for <seconds> <description> <command...>: until the command succeeds
  local secs="$1" what="$2"; shift 2
  for _ in $(seq 1 $((secs * 4))); do "$@" && return 0; sleep 0.25; done
  fail "timed out after ${secs}s waiting for $what"
}
has_type() { [[ " $(run_state "$1" "$2" 2>/dev/null | cut -d'|' -f1) " == *" $3 "* ]]; }

session="session:api:compose-$$"  # /trigger writes only in its own namespace (api)
t1="$(trigger "$session" "remember my cat is called Tom")"
wait_for 60 "the first run to complete" has_type "$session" "$t1" AIProcessingCompleted
state="$(run_state "$session" "$t1")"
log "run 1: ${state%%|*}"
[[ "${state#*|}" == *Tom* ]] || fail "the answer does not mention Tom: ${state#*|}"
[[ "$state" == *AIProcessingStarted*MessageGenerated*AIProcessingCompleted* ]] || fail "unexpected run: $state"
started="$(events "$session" | python3 -c 'import json,sys; print([e for e in json.load(sys.stdin)["events"] if e["type"]=="AIProcessingStarted"][0]["data"].get("provider",""))')"
[ "$started" = offline ] || fail "the run used provider '$started', not the offline provider"
# The memory processor indexed it (the recall below needs it).
wait_for 60 "the memory to be indexed" bash -c \
  "curl -fsS -H 'Authorization: Bearer $ENGRAM_API_TOKEN' '$store/projections/fast_memory/user:api:compose' | grep -q Tom"

# --- the AI processor killed in the middle of a run ---------------------------------------------
# The memory processors are frozen, so a recall run stops at its recall tool call (ToolCalled
# written, no ToolCompleted yet); then the AI processor instance that holds the session's partition
# dies, and the run must complete, with no step repeated: one start, one model call per iteration,
# one answer, one completion.
ttl_ms=$AI_PROCESSOR_LEASE_TTL_MS
session_partition="$(python3 -c '
import sys
h = 2166136261  # FNV-1a 32, as events::partition_of
for b in sys.argv[1].encode():
    h = ((h ^ b) * 16777619) & 0xFFFFFFFF
print(h % int(sys.argv[2]))' "$session" "$partitions")"
# owner: the AI processor container whose live member holds the session's partition (empty if none)
owner() {
  local host c
  host="$(processors_json | python3 -c '
import json, sys
p = {p["name"]: p for p in json.load(sys.stdin)["processors"]}["ai-processor"]
live = {m["member"]: m["host"] for m in p["members"] if m["live"]}
print("".join(live.get(l["owner"], "") for l in p["leases"] if l["partition"] == int(sys.argv[1]) and l["state"] == "held"))' \
    "$session_partition")"
  for c in ${cids[ai-processor]}; do [ "$($DOCKER inspect -f '{{.Config.Hostname}}' "$c")" = "$host" ] && echo "$c"; done
  return 0
}
find_victim() { victim="$(owner)"; [ -n "$victim" ]; }  # sets interrupted_run's victim
# duplicates <aggregate> <trigger id>: the run's steps recorded more than once (empty = none)
duplicates() {
  events "$1" | python3 -c '
import json, sys, collections
tid = sys.argv[1]
evs = json.load(sys.stdin)["events"]
runs = {e["data"].get("run_id") for e in evs if e["type"] == "AIProcessingStarted" and e["data"].get("trigger_event_id") == tid} - {None}
run = [e for e in evs if e["data"].get("run_id") in runs or e["data"].get("trigger_event_id") == tid]
keys = collections.Counter((e["type"], e["data"].get("tool_call_id", ""), e["data"].get("iteration", "")) for e in run)
print(" ".join("%s(%s)x%d" % (k[0], k[1], n) for k, n in keys.items() if n > 1))' "$2"
}
interrupted_run() {  # interrupted_run <n> <how: takeover|crash>
  local n="$1" how="$2" t victim survivor c k0 took
  # shellcheck disable=SC2086 # the two container ids
  $DOCKER pause ${cids[memory-processor]} >/dev/null
  t="$(trigger "$session" "what is my cat called?")"
  wait_for 60 "run $n to call recall" has_type "$session" "$t" ToolCalled
  # (retried: a partition being handed over is free for a moment)
  wait_for 15 "a live AI processor instance to hold partition $session_partition of $session" find_victim
  for c in ${cids[ai-processor]}; do [ "$c" = "$victim" ] || survivor="$c"; done
  log "run $n in flight on ${name[$victim]} (partition $session_partition): $(run_state "$session" "$t" | cut -d'|' -f1)"
  if [ "$how" = takeover ]; then
    local restarts; restarts="$(restarts "$victim")"
    $DOCKER kill -s KILL "$victim" >/dev/null
    k0=$(now_ms)
    # shellcheck disable=SC2086
    $DOCKER unpause ${cids[memory-processor]} >/dev/null
    # The other instance takes every partition over once the killed one's leases run out.
    wait_shares $(( ttl_ms / 1000 + 5 )) ai-processor "$survivor"
    took=$(( $(now_ms) - k0 ))
    log "takeover: ${name[$victim]} killed (SIGKILL); ${name[$survivor]} holds every partition ${took} ms later (lease TTL $ttl_ms ms): $(cat "$run/shares.ai-processor")"
    # The engine treats a container killed through it as stopped by hand (restart policies leave it
    # stopped): the run completes on the survivor alone.
    wait_for 60 "run $n to complete on ${name[$survivor]}" has_type "$session" "$t" AIProcessingCompleted
    if running "$victim"; then fail "${name[$victim]} runs again (restarted $(restarts "$victim") times, $restarts before)"; fi
  else
    # A crash: the process dies with SIGKILL on its own, and restart: unless-stopped brings it back.
    local restarts; restarts="$(restarts "$victim")"
    kill -KILL "$($DOCKER inspect -f '{{.State.Pid}}' "$victim")"
    # shellcheck disable=SC2086
    $DOCKER unpause ${cids[memory-processor]} >/dev/null
    for _ in $(seq 1 120); do
      [ "$(restarts "$victim")" -gt "$restarts" ] && running "$victim" && break
      sleep 0.25
    done
    [ "$(restarts "$victim")" -gt "$restarts" ] && running "$victim" ||
      fail "the engine did not restart the crashed ${name[$victim]} (restart policy)"
    log "crash: ${name[$victim]}'s process was killed, and its restart policy restarted the container"
    wait_for 120 "run $n to complete after the crash" has_type "$session" "$t" AIProcessingCompleted
  fi
  state="$(run_state "$session" "$t")"
  log "run $n: ${state%%|*}"
  [[ "${state#*|}" == *Tom* ]] || fail "run $n's answer does not mention Tom: ${state#*|}"
  local dup; dup="$(duplicates "$session" "$t")"
  [ -z "$dup" ] || fail "run $n repeated steps after the kill: $dup"
  local types=" ${state%%|*} " w ty cnt
  for ty in AIProcessingStarted MessageGenerated AIProcessingCompleted; do
    cnt=0
    for w in $types; do [ "$w" = "$ty" ] && cnt=$((cnt + 1)); done
    [ $cnt = 1 ] || fail "run $n recorded $cnt $ty (expected one): $state"
  done
  [[ "$types" == *" MemoryRecalled "* ]] || fail "run $n recorded no MemoryRecalled: $state"
}
ai_healthy() { local c; for c in ${cids[ai-processor]}; do [ "$(health "$c")" = healthy ] || return 1; done; }
interrupted_run 2 takeover
# Started again as an operator would, the killed instance takes its share back.
compose start ai-processor >>"$logs/compose.log" 2>&1 || fail "could not start the AI processor again"
wait_for 60 "both AI processor instances to be healthy again" ai_healthy
# shellcheck disable=SC2086
wait_shares 30 ai-processor ${cids[ai-processor]}
log "rejoined: $(cat "$run/shares.ai-processor")"
interrupted_run 3 crash
wait_for 60 "both AI processor instances to be healthy again" ai_healthy
# After the kills and the frozen memory processors, every processor's work is shared again.
for svc in "${processors[@]}"; do
  # shellcheck disable=SC2086
  wait_shares 30 "$svc" ${cids[$svc]}
done
log "partitions shared again: $(for svc in "${processors[@]}"; do printf '%s: %s; ' "$svc" "$(cat "$run/shares.$svc")"; done)"

# --- down, and nothing left behind ---------------------------------------------------------------
# KEEP_COMPOSE_LOGS: the logs of a passing run, while its containers still exist (cleanup's copy
# would come after down).
if [ -n "${KEEP_COMPOSE_LOGS:-}" ]; then
  echo "---- service logs ----" >&2
  compose logs --no-color >&2 2>&1
  KEEP_COMPOSE_LOGS=""
fi
s=$(date +%s)
compose down -v --remove-orphans -t 10 >>"$logs/compose.log" 2>&1 || fail "compose down failed"
log "down -v in $(( $(date +%s) - s ))s"
left="$($DOCKER ps -aq; $DOCKER network ls -q --filter "label=com.docker.compose.project=$project";
        $DOCKER volume ls -q --filter "label=com.docker.compose.project=$project")"
[ -z "$left" ] || fail "left after down -v: $left"

# --- the HA stack: docker-compose.ha.yml ---------------------------------------------------------
# Three NATS nodes, pg_auto_failover (monitor, primary, synchronous standby), two stores, two
# instances of each processor, the gateway. A message is answered; the NATS server leading the
# stream is killed and a message is answered; the PostgreSQL primary is killed, pg_auto_failover
# promotes the standby, and a message is answered. Each answer exactly once.
export PG_HA_IMAGE=engram-test/postgres-ha:15 EVENT_STORE_PORT_B="$(free_port)"
s=$(date +%s)
ha_up=1
compose_ha up -d --no-build >"$logs/compose-ha.log" 2>&1 || { cat "$logs/compose-ha.log" >&2; fail "compose up (HA) failed"; }
declare -A ha   # service -> container id (the first, for the processors)
ha_containers=()
while read -r svc c; do
  ha_containers+=("$c"); name[$c]="$svc"
  [ -n "${ha[$svc]:-}" ] || ha[$svc]="$c"
done < <(compose_ha ps -q | xargs -r $DOCKER inspect -f '{{index .Config.Labels "com.docker.compose.service"}} {{.Id}}')
[ ${#ha_containers[@]} = 15 ] || fail "the HA stack has ${#ha_containers[@]} containers, not 15"
for _ in $(seq 1 360); do
  all=1
  for c in "${ha_containers[@]}"; do [ "$(health "$c")" = healthy ] || all=0; done
  [ $all = 1 ] && break
  sleep 0.5
done
for c in "${ha_containers[@]}"; do [ "$(health "$c")" = healthy ] || fail "HA: ${name[$c]} is not healthy: $(health "$c")"; done
# pg_show: "<node> <reported state>" per line, from the monitor
pg_show() {
  $DOCKER exec "${ha[pg-monitor]}" pg_autoctl show state --json 2>/dev/null | python3 -c '
import json, sys
for n in json.load(sys.stdin):
    print(n.get("node_name") or n.get("nodename"), n.get("reported_state") or n.get("current_group_state"))'
}
formation() { [ "$(pg_show | awk '{print $2}' | sort | tr '\n' ' ')" = "primary secondary " ]; }
wait_for 180 "pg_auto_failover: a primary and a secondary" formation
log "HA: all ${#ha_containers[@]} containers healthy, database nodes $(pg_show | tr '\n' ' ')in $(( $(date +%s) - s ))s"

# ha_trigger <session> <message> <key>: POST /trigger with an Idempotency-Key, retried through the
# outage (a retry with the key is the same trigger); prints the trigger's event id.
ha_trigger() {
  local body
  for _ in $(seq 1 240); do
    if body="$(curl -fsS -m 10 "${auth[@]}" -XPOST "$gw/trigger" -H 'content-type: application/json' -H "Idempotency-Key: $3" \
        -d "{\"source\":\"compose\",\"user_id\":\"compose\",\"session_id\":\"$1\",\"message\":\"$2\"}" 2>/dev/null)"; then
      python3 -c 'import json,sys; print(json.load(sys.stdin)["event_id"])' <<<"$body"
      return 0
    fi
    sleep 0.5
  done
  fail "POST /trigger kept failing for 120 s"
}
# answered_once <n> <session> <trigger id>: the run completed with one start, answer and completion
answered_once() {
  wait_for 180 "HA run $1 to complete" has_type "$2" "$3" AIProcessingCompleted
  local state types w ty cnt
  state="$(run_state "$2" "$3")"; types=" ${state%%|*} "
  for ty in AIProcessingStarted MessageGenerated AIProcessingCompleted; do
    cnt=0
    for w in $types; do [ "$w" = "$ty" ] && cnt=$((cnt + 1)); done
    [ $cnt = 1 ] || fail "HA run $1 recorded $cnt $ty (expected one): $state"
  done
}
ha_session="session:api:compose-ha-$$"
k0=$(now_ms)
t="$(ha_trigger "$ha_session" "hello from the HA stack" "ha-1-$$")"
answered_once 1 "$ha_session" "$t"
log "HA run 1 answered in $(( $(now_ms) - k0 )) ms"

# The NATS server leading the EVENTS stream.
leader="$($DOCKER exec "${ha[nats1]}" wget -qO- 'http://127.0.0.1:8222/jsz?streams=true' | python3 -c '
import json, sys
d = json.load(sys.stdin)
for a in d.get("account_details", []):
    for st in a.get("stream_detail", []):
        if st["name"] == "EVENTS":
            print(st.get("cluster", {}).get("leader", ""))')"
[ -n "$leader" ] && [ -n "${ha[$leader]:-}" ] || fail "HA: no leader of stream EVENTS found (got '$leader')"
$DOCKER kill -s KILL "${ha[$leader]}" >/dev/null
k0=$(now_ms)
t="$(ha_trigger "$ha_session" "are you still there?" "ha-2-$$")"
answered_once 2 "$ha_session" "$t"
log "HA: NATS stream leader $leader killed; run 2 answered $(( $(now_ms) - k0 )) ms later"

primary="$(pg_show | awk '$2 == "primary" {print $1}')"
[ -n "$primary" ] && [ -n "${ha[$primary]:-}" ] || fail "HA: no PostgreSQL primary ($(pg_show | tr '\n' ' '))"
$DOCKER kill -s KILL "${ha[$primary]}" >/dev/null
k0=$(now_ms)
t="$(ha_trigger "$ha_session" "and now?" "ha-3-$$")"
answered_once 3 "$ha_session" "$t"
log "HA: PostgreSQL primary $primary killed; run 3 answered $(( $(now_ms) - k0 )) ms later; nodes now: $(pg_show | tr '\n' ' ')"

s=$(date +%s)
compose_ha down -v --remove-orphans -t 5 >>"$logs/compose.log" 2>&1 || fail "compose down (HA) failed"
ha_up=0
log "HA down -v in $(( $(date +%s) - s ))s"
left="$($DOCKER ps -aq; $DOCKER volume ls -q --filter "label=com.docker.compose.project=${project}ha")"
[ -z "$left" ] || fail "left after the HA stack's down -v: $left"
