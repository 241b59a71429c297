#!/usr/bin/env bash
# Starts or stops two throwaway PostgreSQL servers (one plain, one with TimescaleDB), a
# Kafka-protocol broker (tansu) and a small local LLM server (scripts/llm.sh) for tests and
# for trying the distributed mode and the explainer, installing what is missing.
#
#   scripts/services.sh start   # prints the environment to use (also in $STATE/env)
#   scripts/services.sh stop
#   scripts/services.sh env     # prints the environment of running services
#
# PostgreSQL runs from this machine's server binaries as the `postgres` user (the server
# refuses to run as root) with its data under $STATE, sized like a small production
# server (shared_buffers 1GB, max_wal_size 4GB) rather than with the tiny defaults;
# tansu keeps topics in memory. All listen on 127.0.0.1 only.
#
# TimescaleDB 2.28.3 (the last release for PostgreSQL 15) is built from the source tarball in
# ../shared/vendor/timescaledb (about 5 CPU-minutes, once; it needs cmake and
# postgresql-server-dev-15 from apt, pinned to the server's version), staged in a cache
# outside the clone (one build per server version) and copied into the
# server's directories when they lack it. The first server (SEISMO_TEST_PG_URL) has the
# extension's files but does not preload it: that is plain PostgreSQL, and also the
# "installed, not preloaded" server `seismo migrate` must fall back on. The second
# (SEISMO_TEST_TSDB_URL) preloads it. Ports, folders and the source can be overridden:
#   SEISMO_PG_PORT (55432), SEISMO_TSDB_PORT (55433), SEISMO_KAFKA_PORT (19092),
#   SEISMO_SERVICES_DIR (/tmp/seismo-services), SEISMO_CACHE_DIR (~/.cache/seismo),
#   SEISMO_TIMESCALEDB_SRC (../shared/vendor/timescaledb/timescaledb-2.28.3.tar.gz)
set -euo pipefail

STATE=${SEISMO_SERVICES_DIR:-/tmp/seismo-services}
PG_PORT=${SEISMO_PG_PORT:-55432}
TSDB_PORT=${SEISMO_TSDB_PORT:-55433}
CACHE=${SEISMO_CACHE_DIR:-$HOME/.cache/seismo}
TSDB_VERSION=2.28.3
TSDB_SRC=${SEISMO_TIMESCALEDB_SRC:-$(cd "$(dirname "$0")/../.." && pwd)/shared/vendor/timescaledb/timescaledb-$TSDB_VERSION.tar.gz}
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
  # Only where the TimescaleDB server runs: its tests then fail saying it is not set.
  if [ -f "$STATE/tsdb/postmaster.pid" ]; then
    echo "export SEISMO_TEST_TSDB_URL=postgres://seismo@127.0.0.1:${TSDB_PORT}/postgres"
  fi
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

# The running server's exact version ("15.18_Debian_15.18-0+deb12u1"), which keys the
# TimescaleDB cache: a library built against another point release's headers can need
# symbols this server does not have.
server_key() {
  "$PG_BIN/postgres" --version | sed -E 's/^[^)]*\) //; s/[^0-9A-Za-z.+-]+/_/g; s/_+$//'
}

# Builds TimescaleDB into the cache once per PostgreSQL server version and installs it
# into this server's directories. Returns non-zero, with the reason, when it cannot: the
# plain services still start, and the TimescaleDB tests fail saying what is missing.
ensure_timescaledb() {
  local pg_config=$PG_BIN/pg_config libdir sharedir major key stage
  libdir=$("$pg_config" --pkglibdir)
  sharedir=$("$pg_config" --sharedir)
  major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
  key=$(server_key)
  stage=$CACHE/timescaledb-$TSDB_VERSION-pg$key/stage
  if [ -f "$libdir/timescaledb-$TSDB_VERSION.so" ] && [ -f "$sharedir/extension/timescaledb.control" ]; then
    if [ -f "$stage/.complete" ]; then
      cmp -s "$stage$libdir/timescaledb-$TSDB_VERSION.so" "$libdir/timescaledb-$TSDB_VERSION.so" && return 0
    elif ! compgen -G "$CACHE/timescaledb-$TSDB_VERSION-pg*/stage/.complete" >/dev/null; then
      return 0 # installed by hand (BUILD.md), not from this cache
    fi
  fi
  if [ ! -f "$stage/.complete" ]; then
    if [ ! -f "$TSDB_SRC" ]; then
      echo "timescaledb: not installed, and its source is not at $TSDB_SRC (set SEISMO_TIMESCALEDB_SRC to timescaledb-$TSDB_VERSION.tar.gz); starting without it" >&2
      return 1
    fi
    mkdir -p "$CACHE"
    # The headers must be the running server's own version: an unpinned install pulls the
    # newest point release, upgrades postgresql-$major under the running servers and builds
    # a library that needs symbols the installed server lacks (CI failed so: "undefined
    # symbol: heap_datum_check" after bookworm-security moved to 15.20).
    local have headers
    have=$(dpkg-query -W -f='${Version}' "postgresql-$major" 2>/dev/null || true)
    headers=$(dpkg-query -W -f='${Version}' "postgresql-server-dev-$major" 2>/dev/null || true)
    if ! command -v cmake >/dev/null 2>&1 || [ ! -f "$("$pg_config" --includedir-server)/postgres.h" ] \
      || { [ -n "$have" ] && [ "$headers" != "$have" ]; }; then
      if [ "$(id -u)" != 0 ]; then
        echo "timescaledb: building it needs cmake and postgresql-server-dev-$major ${have:+$have }(apt-get install cmake postgresql-server-dev-$major${have:+=$have} libssl-dev, as root); starting without it" >&2
        return 1
      fi
      local log=$CACHE/timescaledb-$TSDB_VERSION-apt.log dev=postgresql-server-dev-$major
      apt-get update >"$log" 2>&1 || { echo "timescaledb: apt-get update failed; see $log" >&2; return 1; }
      # Unpinned only when the archive no longer has the installed version: that install
      # upgrades the server too, and start_pg restarts servers left on the old binary.
      if [ -n "$have" ] && apt-cache show "$dev=$have" >/dev/null 2>&1; then
        dev="$dev=$have"
      fi
      DEBIAN_FRONTEND=noninteractive apt-get install -y cmake "$dev" libssl-dev >>"$log" 2>&1 \
        || { echo "timescaledb: installing cmake and $dev failed; see $log" >&2; return 1; }
      # The server may have moved with it: build for, and cache under, what is there now.
      key=$(server_key)
      stage=$CACHE/timescaledb-$TSDB_VERSION-pg$key/stage
    fi
  fi
  if [ ! -f "$stage/.complete" ]; then
    local log=$CACHE/timescaledb-$TSDB_VERSION-pg$key-build.log build=$CACHE/timescaledb-$TSDB_VERSION-pg$key/src
    echo "timescaledb: building $TSDB_VERSION for PostgreSQL $key from $TSDB_SRC (about 5 CPU-minutes, once per server version)..."
    rm -rf "$build" "$stage"
    mkdir -p "$build"
    tar xzf "$TSDB_SRC" -C "$build" --strip-components=1 \
      || { echo "timescaledb: cannot unpack $TSDB_SRC" >&2; return 1; }
    (cd "$build" && ./bootstrap -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
        -DCMAKE_BUILD_TYPE=Release -DPG_CONFIG="$pg_config" \
      && cd build && make -j"$(nproc)" && make install DESTDIR="$stage") >"$log" 2>&1 \
      || { echo "timescaledb: building failed; see $log" >&2; return 1; }
    touch "$stage/.complete"
    rm -rf "$build"
  fi
  if [ ! -w "$libdir" ] || [ ! -w "$sharedir/extension" ]; then
    echo "timescaledb: built in $stage, but $libdir is not writable; as root: cp -a $stage$libdir/. $libdir/ && cp -a $stage$sharedir/extension/. $sharedir/extension/" >&2
    return 1
  fi
  # Libraries are replaced by rename, never rewritten in place: a running server may have
  # one mapped, and rewriting a mapped library crashes the processes that use it.
  local f
  for f in "$stage$libdir"/*.so; do
    cp -a "$f" "$libdir/.seismo-new" && mv -f "$libdir/.seismo-new" "$libdir/$(basename "$f")" \
      || { echo "timescaledb: installing $f from $stage failed" >&2; return 1; }
  done
  cp -a "$stage$sharedir/extension/." "$sharedir/extension/" \
    || { echo "timescaledb: installing from $stage failed" >&2; return 1; }
  echo "timescaledb: $TSDB_VERSION installed into $libdir"
}

start_pg() { # name port extra-server-options
  [ -x "$PG_BIN/pg_ctl" ] || die "no PostgreSQL server binaries found (looked in /usr/lib/postgresql/*/bin); install postgresql (apt-get install postgresql) or set SEISMO_PG_BIN"
  local name=$1 port=$2 extra=$3
  local data=$STATE/$name
  if [ -f "$data/postmaster.pid" ] && as_postgres "$PG_BIN/pg_ctl -D $data status" >/dev/null 2>&1; then
    # A server started before its package was upgraded still runs the old binary and
    # fails to load the new libraries (plpgsql among them): restart it on the new one.
    # The binary's change time, not its modification time: dpkg keeps the build's mtime.
    if [ "$(stat -L -c %Z "$PG_BIN/postgres")" -gt "$(stat -c %Y "$data/postmaster.pid")" ]; then
      echo "$name: its server binary changed since it started; restarting it"
      as_postgres "$PG_BIN/pg_ctl -D $data -m fast -w stop" >/dev/null 2>&1 || true
    else
      echo "$name: already running on port $port"
      return
    fi
  fi
  mkdir -p "$STATE"
  chmod 755 "$STATE"
  if [ ! -f "$data/PG_VERSION" ]; then
    rm -rf "$data"
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres "$data"
    as_postgres "$PG_BIN/initdb -D $data -U postgres --auth=trust -E UTF8 --locale=C.UTF-8" >"$STATE/initdb-$name.log" 2>&1 \
      || die "initdb failed; see $STATE/initdb-$name.log"
  fi
  [ "$(id -u)" = 0 ] && touch "$STATE/$name.log" && chown postgres "$STATE/$name.log"
  as_postgres "$PG_BIN/pg_ctl -D $data -l $STATE/$name.log -w -t 60 start -o '-p $port -k $data -c listen_addresses=127.0.0.1 -c max_connections=200 $extra'" >/dev/null \
    || die "PostgreSQL ($name) did not start; see $STATE/$name.log"
  "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAt \
    -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'seismo') THEN CREATE ROLE seismo LOGIN SUPERUSER; END IF; END \$\$;" \
    || die "could not create the seismo role on $name"
  drop_test_databases "$port"
  echo "$name: running on 127.0.0.1:$port (data in $data)"
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
drop_test_databases() { # port
  local names name
  names=$("$PG_BIN/psql" -h 127.0.0.1 -p "$1" -U postgres -d postgres -qAt \
    -c "SELECT datname FROM pg_database WHERE datname LIKE 'seismo\_t\_%'" 2>/dev/null) || return 0
  for name in $names; do
    "$PG_BIN/psql" -h 127.0.0.1 -p "$1" -U postgres -d postgres -qAt \
      -c "DROP DATABASE IF EXISTS \"$name\"" >/dev/null 2>&1 || true
  done
}

stop_all() {
  if [ -f "$STATE/tansu.pid" ]; then
    kill "$(cat "$STATE/tansu.pid")" 2>/dev/null || true
    rm -f "$STATE/tansu.pid"
    echo "kafka (tansu): stopped"
  fi
  local name port
  for name in pg tsdb; do
    port=$PG_PORT
    [ "$name" = tsdb ] && port=$TSDB_PORT
    if [ -f "$STATE/$name/postmaster.pid" ]; then
      drop_test_databases "$port"
      as_postgres "$PG_BIN/pg_ctl -D $STATE/$name -m fast -w stop" >/dev/null 2>&1 || true
      echo "$name: stopped"
    fi
  done
}

case "${1:-}" in
  start)
    [ -x "$PG_BIN/pg_ctl" ] || die "no PostgreSQL server binaries found (looked in /usr/lib/postgresql/*/bin); install postgresql (apt-get install postgresql) or set SEISMO_PG_BIN"
    # Sized like a small production server rather than with the tiny defaults.
    # TimescaleDB first: building it may install packages, and no server should be running
    # an older binary than the one on disk when it does.
    tsdb=0
    ensure_timescaledb && tsdb=1
    start_pg pg "$PG_PORT" "-c shared_buffers=1GB -c max_wal_size=4GB"
    if [ "$tsdb" = 1 ]; then
      start_pg tsdb "$TSDB_PORT" "-c shared_buffers=512MB -c max_wal_size=4GB -c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off"
    fi
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
