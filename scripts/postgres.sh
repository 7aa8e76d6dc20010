#!/usr/bin/env bash
# A throw-away PostgreSQL server for the ledger tests and the fault suite, on loopback only.
#
#   bash scripts/postgres.sh [start]   install Debian's postgresql if missing (root: apt-get),
#                                      start a private cluster, create the database, print its URL
#   bash scripts/postgres.sh url       print the URL of the running cluster
#   bash scripts/postgres.sh restart   restart it (same port, same data)
#   bash scripts/postgres.sh stop      stop it
#
# Only the URL goes to stdout, so: export CLOUDSCHED_TEST_POSTGRES_URL="$(bash scripts/postgres.sh)"
# The cluster lives in $CLOUDSCHED_PG_DIR (default /tmp/cloudsched-pg-<hash of this checkout>),
# trusts connections from 127.0.0.1 only and never touches the system's own cluster.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ACTION="${1:-start}"
DB_NAME="${CLOUDSCHED_PG_DATABASE:-cloudsched_test}"
PGDIR="${CLOUDSCHED_PG_DIR:-/tmp/cloudsched-pg-$(printf '%s' "$ROOT" | sha256sum | cut -c1-10)}"
DATA="$PGDIR/data"
cd /  # the postgres user may not be allowed into this checkout; initdb and pg_ctl need a cwd

say() { echo ">> postgres: $*" >&2; }

pg_bin() {
  local found
  found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  [ -n "$found" ] && [ -x "$found/pg_ctl" ] && echo "$found"
}

install_postgres() {
  if [ -n "$(pg_bin)" ]; then return 0; fi
  if [ "$(id -u)" != 0 ]; then
    say "PostgreSQL is not installed and this is not root: apt-get install postgresql first"
    exit 1
  fi
  say "installing Debian's postgresql (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
}

# Root may not run the server: run its tools as the postgres user.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

port_of_running() {
  [ -f "$DATA/postmaster.pid" ] && sed -n 4p "$DATA/postmaster.pid"
}

print_url() {
  echo "postgresql+psycopg://postgres@127.0.0.1:$1/$DB_NAME"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  install_postgres
  local bin port
  bin="$(pg_bin)"
  mkdir -p "$PGDIR"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$PGDIR"; fi
  if [ ! -f "$DATA/PG_VERSION" ]; then
    say "initialising a cluster in $DATA"
    as_owner "$bin/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 >"$PGDIR/initdb.log" 2>&1 ||
      { cat "$PGDIR/initdb.log" >&2; exit 1; }
  fi
  if as_owner "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    port="$(port_of_running)"
  else
    port="${CLOUDSCHED_PG_PORT:-$(cat "$PGDIR/port" 2>/dev/null || free_port)}"
    as_owner "$bin/pg_ctl" -D "$DATA" -l "$PGDIR/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $PGDIR -c fsync=on" start >&2 ||
      { tail -n 20 "$PGDIR/server.log" >&2; exit 1; }
  fi
  echo "$port" >"$PGDIR/port"
  if ! as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1; then
    as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE DATABASE $DB_NAME" >&2
  fi
  say "running on 127.0.0.1:$port (data $DATA)"
  print_url "$port"
}

case "$ACTION" in
  start) start ;;
  url)
    port="$(port_of_running || true)"
    [ -n "$port" ] || { say "not running; start it with: bash scripts/postgres.sh"; exit 1; }
    print_url "$port"
    ;;
  restart)
    as_owner "$(pg_bin)/pg_ctl" -D "$DATA" -w -t 60 -m fast restart -l "$PGDIR/server.log" >&2
    print_url "$(port_of_running)"
    ;;
  stop) as_owner "$(pg_bin)/pg_ctl" -D "$DATA" -w -m fast stop >&2 ;;
  *) say "unknown action $ACTION: start, url, restart or stop"; exit 2 ;;
esac
