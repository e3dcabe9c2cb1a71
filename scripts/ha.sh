#!/usr/bin/env bash
# The distributed topology on one machine, in one command: makes sure
# PostgreSQL (127.0.0.1:5432), Redis (127.0.0.1:6379) and the test broker
# (tansu on 127.0.0.1:19092; its first start builds it, about 12 minutes)
# are there, creates the app and dashboard databases, and runs
# `shortlink up --ha` on them: two edges, three links replicas, admin,
# the four consumers and daily backups, each its own process under the
# watchdog. Loads the seed set when it is there. Ctrl-C stops everything
# (edges first); extra arguments go to `shortlink up --ha`.
#
# Override any of DATABASE_URL, DASHBOARD_DATABASE_URL, REDIS_URL and
# KAFKA_BROKERS to use services of your own.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
ensure_apt_pkg cmake cmake            # the edge (Pingora) needs it to build
ensure_apt_pkg pg_dump postgresql-client   # backups: pg_dump and pg_restore
if [ -z "${DATABASE_URL:-}" ] || [ -z "${DASHBOARD_DATABASE_URL:-}" ]; then
  ensure_postgres
  for db in shortlink shortlink_dashboard; do
    psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
      || { log "creating database $db"; createdb -h 127.0.0.1 -U postgres "$db"; }
  done
fi
if [ -z "${REDIS_URL:-}" ]; then ensure_redis; fi
if [ -z "${KAFKA_BROKERS:-}" ]; then ./scripts/kafka.sh start; fi
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/shortlink}"
export DASHBOARD_DATABASE_URL="${DASHBOARD_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/shortlink_dashboard}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:19092}"
seed=()
if [ -f ../shared/seed-data/users.csv ]; then seed=(--seed ../shared/seed-data); fi
log "building (release) and starting shortlink up --ha"
exec cargo run --release --locked -- --log-format "${LOG_FORMAT:-text}" up --ha "${seed[@]}" "$@"
