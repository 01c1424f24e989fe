#!/usr/bin/env bash
# Starts PostgreSQL and Redis on loopback for the test suite (installing them with apt when missing) and prints the
# environment the tests read. Usage: eval "$(scripts/test-services.sh)"
# Re-runnable: servers already answering on the ports are kept. Besides ARRAKIS_TEST_PG and ARRAKIS_TEST_REDIS it prints
# ARRAKIS_PG_STOP and ARRAKIS_REDIS_STOP, the commands that stop the two servers (run them as `$ARRAKIS_PG_STOP`).
# Env: ARRAKIS_PG_PORT [55432]  ARRAKIS_REDIS_PORT [56379]  ARRAKIS_PGDATA [/tmp/arrakis-pg]; Redis logs to
# /tmp/arrakis-redis-<port>.log, PostgreSQL to $ARRAKIS_PGDATA/server.log.
# With --fresh it first stops the test PostgreSQL, deletes its data directory and empties the test Redis, so the next
# run starts on empty servers. Test assemblies, the bench and a passing launch gate drop the schemas and databases
# they create, but an interrupted run leaves its own behind, and on a long-lived local server they pile up and slow it
# down. Use it only when no suite or bench is running against these servers.
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;; esac
PG_PORT="${ARRAKIS_PG_PORT:-55432}"
REDIS_PORT="${ARRAKIS_REDIS_PORT:-56379}"
PGDATA="${ARRAKIS_PGDATA:-/tmp/arrakis-pg}"

log() { echo "$*" >&2; }

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then log "PostgreSQL/Redis missing and not root: install postgresql and redis-server"; exit 1; fi
  log "installing postgresql and redis-server with apt-get"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server >&2
fi
# promtool (deploy/prometheus tests) and node (tools/terraform-check) for the deploy tests.
if ! command -v promtool >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    log "installing prometheus (promtool) and nodejs/npm with apt-get"
    apt-get update -qq >&2
    packages=(prometheus)
    command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >&2
  else
    log "promtool or npm missing and not root: install prometheus and nodejs"
  fi
fi
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"

run_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }

if [ "${1:-}" = "--fresh" ]; then
  if "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
    log "stopping the test PostgreSQL in $PGDATA"
    run_pg "'$PGBIN/pg_ctl' -D '$PGDATA' -m fast -w stop" >&2
  fi
  log "deleting $PGDATA"
  rm -rf "$PGDATA"
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then redis-cli -p "$REDIS_PORT" flushall >/dev/null; fi
elif [ -n "${1:-}" ]; then
  log "unknown option: $1 (the only option is --fresh)"; exit 2
fi

if ! "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    rm -rf "$PGDATA"; mkdir -p "$PGDATA"
    [ "$(id -u)" = 0 ] && chown postgres "$PGDATA"
    run_pg "'$PGBIN/initdb' -D '$PGDATA' -A trust -U postgres" >&2
  fi
  if ! run_pg "'$PGBIN/pg_ctl' -D '$PGDATA' -l '$PGDATA/server.log' -w -o \"-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off\" start" >&2; then
    log "PostgreSQL did not start on 127.0.0.1:$PG_PORT (is the port taken? set ARRAKIS_PG_PORT); its log, $PGDATA/server.log:"
    tail -n 5 "$PGDATA/server.log" >&2 || true
    exit 1
  fi
fi

if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  # A log and pid file of its own per port: a daemonized redis-server otherwise writes /var/run/redis.pid, whichever
  # instance it is. It forks before it binds, so its exit code says nothing: wait for it to answer.
  redis_log="/tmp/arrakis-redis-$REDIS_PORT.log"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --save '' --appendonly no --logfile "$redis_log" \
    --pidfile "/tmp/arrakis-redis-$REDIS_PORT.pid" >&2
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    log "Redis did not start on 127.0.0.1:$REDIS_PORT (is the port taken? set ARRAKIS_REDIS_PORT); its log, $redis_log:"
    tail -n 5 "$redis_log" >&2 || true
    exit 1
  fi
fi

# pg_ctl refuses to run as root: root stops the server as postgres, the user that started it.
pg_stop="$PGBIN/pg_ctl -D $PGDATA -m fast -w stop"
[ "$(id -u)" = 0 ] && pg_stop="runuser -u postgres -- $pg_stop"
echo "export ARRAKIS_TEST_PG='Host=127.0.0.1;Port=$PG_PORT;Username=postgres;Database=postgres;Maximum Pool Size=60;Timeout=15'"
echo "export ARRAKIS_TEST_REDIS='127.0.0.1:$REDIS_PORT'"
echo "export ARRAKIS_PG_STOP='$pg_stop'"
echo "export ARRAKIS_REDIS_STOP='redis-cli -p $REDIS_PORT shutdown nosave'"
