#!/usr/bin/env bash
# The private local PostgreSQL cluster and nats-server (JetStream) behind the "run" command.
#
#   deploy/stack.sh start    start both (idempotent), wait until they answer, create database
#                            `engram` if missing, print DATABASE_URL= and NATS_URL= lines
#   deploy/stack.sh stop     stop both (pg_ctl stop -m fast; SIGTERM to nats-server, then wait)
#   deploy/stack.sh status   say what runs; exit 0 only when both run
#   deploy/stack.sh env      print `export DATABASE_URL=...` and `export NATS_URL=...`
#
# Data lives in <repo>/.run (git-ignored; ENGRAM_RUN_DIR overrides): .run/pg (the cluster),
# .run/nats (JetStream store), .run/pg.log, .run/nats.log, .run/nats.pid, .run/nats.conf, .run/nats.token
# (the token NATS clients must present; part of NATS_URL).
# Everything listens on 127.0.0.1 only. Ports: ENGRAM_PG_PORT (55432), ENGRAM_NATS_PORT (54222),
# ENGRAM_NATS_MONITOR_PORT (58222). Binaries: ENGRAM_PG_BIN (directory of initdb/pg_ctl), else the
# highest /usr/lib/postgresql/<v>/bin, else PATH; ENGRAM_NATS_SERVER, else nats-server in PATH.
# As root, PostgreSQL runs as the `postgres` user (it refuses root); as a normal user, as that user.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="${ENGRAM_RUN_DIR:-$ROOT/.run}"
PG_PORT="${ENGRAM_PG_PORT:-55432}"
NATS_PORT="${ENGRAM_NATS_PORT:-54222}"
NATS_MON_PORT="${ENGRAM_NATS_MONITOR_PORT:-58222}"
PG_DATA="$RUN/pg"
PG_LOG="$RUN/pg.log"
NATS_STORE="$RUN/nats"
NATS_LOG="$RUN/nats.log"
NATS_PID="$RUN/nats.pid"
NATS_CONF="$RUN/nats.conf"
NATS_TOKEN_FILE="$RUN/nats.token"
DB_NAME=engram

DATABASE_URL="postgresql://postgres@127.0.0.1:$PG_PORT/$DB_NAME"

# Clients must present a token, so nothing else on this machine can publish forged events to
# the stream or answer memory.search. Made once, kept in .run/ (mode 600), readable by its owner.
nats_token() {
  if [ ! -s "$NATS_TOKEN_FILE" ]; then
    mkdir -p "$RUN"
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$NATS_TOKEN_FILE")
  fi
  cat "$NATS_TOKEN_FILE"
}
NATS_URL="nats://$(nats_token)@127.0.0.1:$NATS_PORT"

say() { echo "stack: $*" >&2; }
die() { echo "stack: error: $*" >&2; exit 1; }

for p in "$PG_PORT" "$NATS_PORT" "$NATS_MON_PORT"; do
  if ! [[ "$p" =~ ^[0-9]+$ ]] || (( p < 1 || p > 65535 )); then
    die "bad port '$p' (ENGRAM_PG_PORT / ENGRAM_NATS_PORT / ENGRAM_NATS_MONITOR_PORT)"
  fi
done

IS_ROOT=0
if [ "$(id -u)" -eq 0 ]; then IS_ROOT=1; fi

# --- binaries ------------------------------------------------------------------------------------
find_pg_bin() {
  if [ -n "${ENGRAM_PG_BIN:-}" ]; then
    if [ ! -x "$ENGRAM_PG_BIN/pg_ctl" ]; then die "ENGRAM_PG_BIN=$ENGRAM_PG_BIN holds no pg_ctl"; fi
    echo "$ENGRAM_PG_BIN"; return 0
  fi
  local d best=""
  while read -r d; do
    if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ]; then best="$d"; fi
  done < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V)
  if [ -z "$best" ] && command -v pg_ctl >/dev/null 2>&1; then best="$(dirname "$(command -v pg_ctl)")"; fi
  if [ -z "$best" ]; then
    die "PostgreSQL server binaries not found: install postgresql (deploy/install-deps.sh) or set ENGRAM_PG_BIN"
  fi
  echo "$best"
}

find_nats_bin() {
  if [ -n "${ENGRAM_NATS_SERVER:-}" ]; then
    if [ ! -x "$ENGRAM_NATS_SERVER" ]; then die "ENGRAM_NATS_SERVER=$ENGRAM_NATS_SERVER is not executable"; fi
    echo "$ENGRAM_NATS_SERVER"; return 0
  fi
  if command -v nats-server >/dev/null 2>&1; then command -v nats-server; return 0; fi
  if [ -x /usr/sbin/nats-server ]; then echo /usr/sbin/nats-server; return 0; fi
  die "nats-server not found: install nats-server (deploy/install-deps.sh) or set ENGRAM_NATS_SERVER"
}

# Resolved once here: `die` inside a $(...) would only leave the subshell.
PG_BIN=""
NATS_BIN=""
resolve_bins() {
  PG_BIN="$(find_pg_bin)" || exit 1
  NATS_BIN="$(find_nats_bin)" || exit 1
}

# Runs a PostgreSQL server tool as the cluster's owner.
as_pg() {
  if [ "$IS_ROOT" -eq 1 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- PostgreSQL ----------------------------------------------------------------------------------
pg_running() {
  [ -f "$PG_DATA/PG_VERSION" ] || return 1
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

pg_prepare() {
  mkdir -p "$RUN"
  chmod 755 "$RUN"  # the postgres user must be able to traverse it when we are root
  if [ "$IS_ROOT" -eq 1 ]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user (install postgresql)"
    runuser -u postgres -- test -x "$RUN" ||
      die "the postgres user cannot reach $RUN (a parent folder is not traversable); set ENGRAM_RUN_DIR to a folder it can reach"
    mkdir -p "$PG_DATA"
    chown postgres:postgres "$PG_DATA"
    touch "$PG_LOG"
    chown postgres:postgres "$PG_LOG"
  else
    mkdir -p "$PG_DATA"
    if [ "$(stat -c %u "$PG_DATA")" != "$(id -u)" ]; then
      die "$PG_DATA belongs to $(stat -c %U "$PG_DATA"), not to you: run as that user (or root), or remove it"
    fi
  fi
  chmod 700 "$PG_DATA"
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    local locale=C
    if locale -a 2>/dev/null | grep -qix 'c\.utf-\?8'; then locale=C.UTF-8; fi
    say "creating the PostgreSQL cluster in $PG_DATA"
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 --locale="$locale" >"$RUN/initdb.log" 2>&1 ||
      die "initdb failed, see $RUN/initdb.log: $(tail -n 5 "$RUN/initdb.log")"
  fi
}

pg_start() {
  if pg_running; then
    say "postgres already running ($PG_DATA)"
  else
    pg_prepare
    if port_busy "$PG_PORT"; then
      die "port $PG_PORT is taken by another program; choose another with ENGRAM_PG_PORT"
    fi
    say "starting postgres on 127.0.0.1:$PG_PORT"
    # No Unix socket (its path length is limited and /var/run/postgresql may be another
    # cluster's): loopback TCP only.
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 -s \
      -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=200" start ||
      die "postgres did not start, see $PG_LOG: $(tail -n 5 "$PG_LOG" 2>/dev/null)"
  fi
  local i
  for i in $(seq 1 100); do
    if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres; then break; fi
    if [ "$i" -eq 100 ]; then
      die "postgres does not answer on 127.0.0.1:$PG_PORT (is it running on another port? see $PG_LOG)"
    fi
    sleep 0.1
  done
  local psql=("$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
  if [ "$("${psql[@]}" -Atc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != "1" ]; then
    say "creating database $DB_NAME"
    "${psql[@]}" -c "CREATE DATABASE $DB_NAME" >/dev/null
  fi
}

pg_stop() {
  if pg_running; then
    say "stopping postgres"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 -s stop || die "pg_ctl stop failed, see $PG_LOG"
  else
    say "postgres not running"
  fi
}

# --- NATS ----------------------------------------------------------------------------------------
nats_pid() {
  [ -f "$NATS_PID" ] || return 1
  local pid
  pid="$(cat "$NATS_PID" 2>/dev/null)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q nats-server || return 1
  echo "$pid"
}

nats_healthy() {
  if command -v curl >/dev/null 2>&1; then
    curl -sf -m 2 "http://127.0.0.1:$NATS_MON_PORT/healthz" >/dev/null 2>&1
  else
    port_busy "$NATS_PORT"
  fi
}

nats_start() {
  if nats_pid >/dev/null; then
    say "nats-server already running (pid $(nats_pid))"
  else
    mkdir -p "$RUN" "$NATS_STORE"
    local p
    for p in "$NATS_PORT" "$NATS_MON_PORT"; do
      if port_busy "$p"; then
        die "port $p is taken by another program; choose others with ENGRAM_NATS_PORT / ENGRAM_NATS_MONITOR_PORT"
      fi
    done
    # max_payload: the store accepts event bodies up to 1 MiB; their envelope plus headers must
    # always fit in one message (nats-server's default is exactly 1 MiB).
    (umask 077 && cat >"$NATS_CONF" <<EOF
# written by deploy/stack.sh on every start
listen: 127.0.0.1:$NATS_PORT
http: 127.0.0.1:$NATS_MON_PORT
max_payload: 8MB
authorization {
  token: "$(nats_token)"
}
jetstream {
  store_dir: "$NATS_STORE"
}
EOF
    )
    say "starting nats-server -js on 127.0.0.1:$NATS_PORT (monitoring 127.0.0.1:$NATS_MON_PORT)"
    rm -f "$NATS_PID"
    setsid "$NATS_BIN" -c "$NATS_CONF" -l "$NATS_LOG" -P "$NATS_PID" </dev/null >>"$NATS_LOG" 2>&1 &
  fi
  local i
  for i in $(seq 1 100); do
    if nats_pid >/dev/null && nats_healthy; then return 0; fi
    sleep 0.1
  done
  die "nats-server does not answer on 127.0.0.1:$NATS_PORT, see $NATS_LOG: $(tail -n 5 "$NATS_LOG" 2>/dev/null)"
}

nats_stop() {
  local pid
  if pid="$(nats_pid)"; then
    say "stopping nats-server (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "nats-server did not stop within 10 s, killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$NATS_PID"
  else
    say "nats-server not running"
  fi
}

# --- commands ------------------------------------------------------------------------------------
print_env() {
  echo "export DATABASE_URL=$DATABASE_URL"
  echo "export NATS_URL=$NATS_URL"
}

case "${1:-}" in
  start)
    resolve_bins
    pg_start
    nats_start
    say "ready"
    echo "DATABASE_URL=$DATABASE_URL"
    echo "NATS_URL=$NATS_URL"
    ;;
  stop)
    resolve_bins
    nats_stop
    pg_stop
    ;;
  status)
    resolve_bins
    rc=0
    if pg_running; then
      if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres; then
        echo "postgres: running on 127.0.0.1:$PG_PORT (data $PG_DATA)"
      else
        echo "postgres: running but not answering on 127.0.0.1:$PG_PORT (data $PG_DATA, log $PG_LOG)"; rc=3
      fi
    else
      echo "postgres: stopped"; rc=3
    fi
    if pid="$(nats_pid)"; then
      if nats_healthy; then echo "nats: running on 127.0.0.1:$NATS_PORT (pid $pid, store $NATS_STORE)"
      else echo "nats: running (pid $pid) but not healthy on 127.0.0.1:$NATS_PORT (log $NATS_LOG)"; rc=3; fi
    else
      echo "nats: stopped"; rc=3
    fi
    exit "$rc"
    ;;
  env)
    print_env
    ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
