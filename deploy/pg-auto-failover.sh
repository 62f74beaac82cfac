#!/bin/sh
# One pg_auto_failover process in the foreground: the monitor (PAF_ROLE=monitor) or a data node
# (PAF_ROLE=node) registered with PAF_MONITOR under PAF_NAME. `pg_autoctl create … --run` is what
# the project documents for containers: the first start initialises (a node becomes the primary, or
# a standby by pg_basebackup from it), later starts resume from the state in the volume (an old
# primary is rewound and follows the new one).
#
# Authentication is `trust` on the compose network (--pg-hba-lan: the node's subnet may connect to
# POSTGRES_DB); for production use --auth scram-sha-256 and set the replication password
# (pg_autoctl config set replication.password) on every node.
set -eu
: "${PAF_ROLE:?PAF_ROLE must be monitor or node}" "${POSTGRES_DB:=engram}"
host="${PAF_HOSTNAME:-$(hostname)}"
case "$PAF_ROLE" in
monitor)
  exec pg_autoctl create monitor --pgdata "$PGDATA" --pgport 5432 --hostname "$host" --auth trust --no-ssl --run
  ;;
node)
  pg_autoctl create postgres --pgdata "$PGDATA" --pgport 5432 --hostname "$host" --name "${PAF_NAME:-$host}" \
    --auth trust --no-ssl --pg-hba-lan --dbname "$POSTGRES_DB" \
    --monitor "postgres://autoctl_node@${PAF_MONITOR:?PAF_MONITOR names the monitor host}:5432/pg_auto_failover" --run &
  child=$!
  trap 'kill -TERM $child 2>/dev/null' TERM INT
  # pg_basebackup asks for a spread checkpoint (up to checkpoint_timeout): while this node is the
  # primary and a standby's base backup waits for one, do it at once, so a standby joins in seconds.
  while kill -0 $child 2>/dev/null; do
    if psql -X -q -At -d postgres -c "SELECT 1 FROM pg_stat_progress_basebackup WHERE phase = 'waiting for checkpoint to finish'" \
        2>/dev/null | grep -q 1; then
      psql -X -q -d postgres -c CHECKPOINT >/dev/null 2>&1 || true
    fi
    sleep 1 & wait $! 2>/dev/null || true
  done
  wait $child
  ;;
*)
  echo "pg-auto-failover.sh: PAF_ROLE must be monitor or node (got '$PAF_ROLE')" >&2
  exit 2
  ;;
esac
