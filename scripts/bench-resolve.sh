#!/usr/bin/env bash
# Resolve benchmark (issue 2): ResolveLink throughput and latency over gRPC
# against a release `shortlink links` on PostgreSQL + Redis with the seed set,
# first with a warm cache, then with the cache disabled, next to a plain
# Redis GET loop (redis-benchmark) at the same concurrency, in one run.
# All traffic stays on 127.0.0.1; every load is bounded in time and count.
#
#   ./scripts/bench-resolve.sh [concurrency=64] [seconds=10]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
conc="${1:-64}"
secs="${2:-10}"
ensure_postgres
ensure_redis
command -v redis-benchmark >/dev/null || die "redis-benchmark not found (Debian package redis-tools)"

log "building release binary and load client"
cargo build --release --locked -p shortlink --bin shortlink
cargo build --release --locked -p shortlink-links --example resolve_load
out="${CARGO_TARGET_DIR:-target}/release"
db="shortlink_bench"
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
"$out/shortlink" --log-level warn import --dir ../shared/seed-data

pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; true; }
trap cleanup EXIT
start_links() { # extra env...
  env "$@" LINKS_GRPC_ADDR=127.0.0.1:50161 LINKS_HTTP_ADDR=127.0.0.1:9281 \
    REDIS_URL=redis://127.0.0.1:6379 CACHE_PREFIX="bench:$RANDOM:" LOG_LEVEL=warn \
    "$out/shortlink" links & pid=$!
  for _ in $(seq 1 100); do curl -fs 127.0.0.1:9281/ready >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "links did not become ready"
}
stop_links() { kill -TERM "$pid"; wait "$pid" || true; pid=""; }
load() { "$out/examples/resolve_load" http://127.0.0.1:50161 ../shared/seed-data/urls.csv "$conc" "$1"; }

log "warm cache: warm-up 3 s, then ${secs} s at concurrency $conc"
start_links CACHE_DISABLED=false
load 3 >/dev/null
warm=$(load "$secs")
stop_links

log "cache disabled: ${secs} s at concurrency $conc"
start_links CACHE_DISABLED=true
load 2 >/dev/null
cold=$(load "$secs")
stop_links

log "baseline: redis-benchmark GET, $conc clients"
rb=$(redis-benchmark -h 127.0.0.1 -p 6379 -t get -c "$conc" -n 400000 --csv | tail -1)

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); load client and server share the cores"
echo "grpc resolve, warm cache : $warm"
echo "grpc resolve, no cache   : $cold"
echo "redis-benchmark GET      : $rb"
python3 - "$warm" "$cold" "$rb" <<'PY'
import json, sys, csv
w, c = json.loads(sys.argv[1]), json.loads(sys.argv[2])
row = next(csv.reader([sys.argv[3]]))
rps, p99 = float(row[1]), float(row[6]) * 1000
print(f"ratios vs redis GET: warm rps {w['rps']/rps:.2f}x, no-cache rps {c['rps']/rps:.2f}x; "
      f"p99 warm {w['p99_us']/p99:.1f}x, no-cache {c['p99_us']/p99:.1f}x (redis p99 {p99:.0f} us)")
PY
