#!/usr/bin/env bash
# Runs the whole system in one process on the embedded default (SQLite and an
# in-process cache): no external services needed. Loads the seed
# set when it is there. Extra arguments go to `shortlink up`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
ensure_apt_pkg cmake cmake   # the edge (Pingora) needs it to build
seed=()
if [ -f ../shared/seed-data/users.csv ]; then seed=(--seed ../shared/seed-data); fi
log "building (release) and starting shortlink up"
exec cargo run --release --locked -- --log-format "${LOG_FORMAT:-text}" up "${seed[@]}" "$@"
