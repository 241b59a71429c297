#!/usr/bin/env bash
# Starts or stops a throwaway PostgreSQL, a Kafka-protocol broker (tansu) and a small local
# LLM server (scripts/llm.sh) for tests and for trying the distributed mode and the
# explainer, installing what is missing.
#
#   scripts/services.sh start   # prints the environment to use (also in $STATE/env)
#   scripts/services.sh stop
#   scripts/services.sh env     # prints the environment of running services
#
# PostgreSQL runs from this machine's server binaries as the `postgres` user (the server
# refuses to run as root) with its data under $STATE, sized like a small production
# server (shared_buffers 1GB, max_wal_size 4GB) rather than with the tiny defaults;
# tansu keeps topics in memory. Both
# listen on 127.0.0.1 only. Ports and the state folder can be overridden:
#   SEISMO_PG_PORT (55432), SEISMO_KAFKA_PORT (19092), SEISMO_SERVICES_DIR (/tmp/seismo-services)
set -euo pipefail

STATE=${SEISMO_SERVICES_DIR:-/tmp/seismo-services}
PG_PORT=${SEISMO_PG_PORT:-55432}
KAFKA_PORT=${SEISMO_KAFKA_PORT:-19092}
PG_BIN=${SEISMO_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
TANSU_VERSION=0.6.0

die() { echo "services: $*" >&2; exit 1; }

as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    su postgres -s /bin/sh -c "$*"
  else
    sh -c "$*"
  fi
}

LLM=$(dirname "$0")/llm.sh

env_lines() {
  echo "export SEISMO_TEST_PG_URL=postgres://seismo@127.0.0.1:${PG_PORT}/postgres"
  echo "export SEISMO_TEST_KAFKA=127.0.0.1:${KAFKA_PORT}"
  "$LLM" env
}

wait_port() { # host port seconds what
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

start_pg() {
  [ -x "$PG_BIN/pg_ctl" ] || die "no PostgreSQL server binaries found (looked in /usr/lib/postgresql/*/bin); install postgresql (apt-get install postgresql) or set SEISMO_PG_BIN"
  local data=$STATE/pg
  if [ -f "$data/postmaster.pid" ] && as_postgres "$PG_BIN/pg_ctl -D $data status" >/dev/null 2>&1; then
    echo "postgres: already running on port $PG_PORT"
    return
  fi
  mkdir -p "$STATE"
  chmod 755 "$STATE"
  if [ ! -f "$data/PG_VERSION" ]; then
    rm -rf "$data"
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres "$data"
    as_postgres "$PG_BIN/initdb -D $data -U postgres --auth=trust -E UTF8 --locale=C.UTF-8" >"$STATE/initdb.log" 2>&1 \
      || die "initdb failed; see $STATE/initdb.log"
  fi
  [ "$(id -u)" = 0 ] && touch "$STATE/pg.log" && chown postgres "$STATE/pg.log"
  as_postgres "$PG_BIN/pg_ctl -D $data -l $STATE/pg.log -w -t 60 start -o '-p $PG_PORT -k $data -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=1GB -c max_wal_size=4GB'" >/dev/null \
    || die "PostgreSQL did not start; see $STATE/pg.log"
  "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qAt \
    -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'seismo') THEN CREATE ROLE seismo LOGIN SUPERUSER; END IF; END \$\$;" \
    || die "could not create the seismo role"
  drop_test_databases
  echo "postgres: running on 127.0.0.1:$PG_PORT (data in $data)"
}

ensure_tansu() {
  if command -v tansu >/dev/null 2>&1; then return; fi
  if [ -x "$HOME/.cargo/bin/tansu" ]; then export PATH="$HOME/.cargo/bin:$PATH"; return; fi
  echo "tansu: not installed; building it from crates.io (about 10 minutes, once)..."
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore >"$STATE/tansu-install.log" 2>&1 \
    || die "installing tansu failed; see $STATE/tansu-install.log"
  export PATH="$HOME/.cargo/bin:$PATH"
}

start_kafka() {
  mkdir -p "$STATE"
  if [ -f "$STATE/tansu.pid" ] && kill -0 "$(cat "$STATE/tansu.pid")" 2>/dev/null; then
    echo "kafka (tansu): already running on port $KAFKA_PORT"
    return
  fi
  ensure_tansu
  nohup tansu broker --storage-engine memory://tansu/ \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" >"$STATE/tansu.log" 2>&1 &
  echo $! >"$STATE/tansu.pid"
  wait_port 127.0.0.1 "$KAFKA_PORT" 30 || die "tansu did not start listening; see $STATE/tansu.log"
  echo "kafka (tansu): running on 127.0.0.1:$KAFKA_PORT (in-memory topics)"
}

# Tests create one database each (store::testing::fresh_database) and never drop it; they are
# dropped here, when no test can be using them, so the throwaway server does not grow without end.
drop_test_databases() {
  local names name
  names=$("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qAt \
    -c "SELECT datname FROM pg_database WHERE datname LIKE 'seismo\_t\_%'" 2>/dev/null) || return 0
  for name in $names; do
    "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qAt \
      -c "DROP DATABASE IF EXISTS \"$name\"" >/dev/null 2>&1 || true
  done
}

stop_all() {
  if [ -f "$STATE/tansu.pid" ]; then
    kill "$(cat "$STATE/tansu.pid")" 2>/dev/null || true
    rm -f "$STATE/tansu.pid"
    echo "kafka (tansu): stopped"
  fi
  if [ -f "$STATE/pg/postmaster.pid" ]; then
    drop_test_databases
    as_postgres "$PG_BIN/pg_ctl -D $STATE/pg -m fast -w stop" >/dev/null 2>&1 || true
    echo "postgres: stopped"
  fi
}

case "${1:-}" in
  start)
    start_pg
    start_kafka
    "$LLM" start | sed '/^export /d'
    env_lines >"$STATE/env"
    env_lines
    ;;
  stop)
    stop_all
    "$LLM" stop
    ;;
  env) env_lines ;;
  *) die "usage: scripts/services.sh start|stop|env" ;;
esac
