#!/usr/bin/env bash
# Edge benchmark (issue 3): redirect throughput and latency through the edge
# with wrk against a warm cache, next to NGINX proxying the same traffic to a
# trivial upstream that answers 302, and NGINX answering `return 302` itself,
# all in one run; plus the edge's resident memory under that load.
# Everything listens on 127.0.0.1; every wrk run is bounded in time.
#
#   ./scripts/bench-edge.sh [connections=64] [seconds=10]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
conns="${1:-64}"
secs="${2:-10}"
ensure_postgres
ensure_redis
ensure_apt_pkg wrk wrk
ensure_apt_pkg nginx nginx-light

log "building release binary"
cargo build --release --locked -p shortlink --bin shortlink
bin="${CARGO_TARGET_DIR:-target}/release/shortlink"
work=$(mktemp -d /tmp/shortlink-bench.XXXXXX)
db="shortlink_bench_edge"
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
"$bin" --log-level warn import --dir ../shared/seed-data >/dev/null

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

LINKS_GRPC_ADDR=127.0.0.1:50171 LINKS_HTTP_ADDR=127.0.0.1:9291 REDIS_URL=redis://127.0.0.1:6379 \
  CACHE_PREFIX="bench:$RANDOM:" LOG_LEVEL=warn "$bin" links & pids+=($!)
for _ in $(seq 1 100); do curl -fs 127.0.0.1:9291/ready >/dev/null 2>&1 && break; sleep 0.1; done
EDGE_HTTP_ADDR=127.0.0.1:18080 EDGE_HTTPS_ADDR=127.0.0.1:18443 EDGE_METRICS_ADDR=127.0.0.1:19180 \
  LINKS_UPSTREAMS=127.0.0.1:50171 EDGE_CERT_DIR="$work/tls" EDGE_UPGRADE_SOCK="$work/up.sock" \
  RATE_LIMIT_RPS=10000000 RATE_LIMIT_BURST=10000000 LOG_LEVEL=warn "$bin" edge & edge_pid=$!; pids+=($edge_pid)
for _ in $(seq 1 100); do curl -fs 127.0.0.1:18080/ready >/dev/null 2>&1 && break; sleep 0.1; done

cat > "$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream trivial { server 127.0.0.1:18083; keepalive 64; }
  server { listen 127.0.0.1:18081; location / { return 302 https://seeded.app/gold/meadow/1; } }
  server { listen 127.0.0.1:18082; location / { proxy_pass http://trivial; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:18083; location / { return 302 https://seeded.app/gold/meadow/1; } }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" -e "$work/error.log"

code=WqxP6K
test "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:18080/$code)" = 302 || die "edge does not redirect"
test "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:18082/$code)" = 302 || die "nginx proxy does not redirect"

run_wrk() { # url -> "rps p50 p99"
  wrk -t2 -c"$conns" -d"${secs}s" --latency "$1" > "$work/wrk.txt"
  awk '/Requests\/sec/{r=$2} /^ +50%/{p50=$2} /^ +99%/{p99=$2} /Non-2xx or 3xx/{e=$NF} END{print r, p50, p99, (e==""?0:e)}' "$work/wrk.txt"
}
log "warm-up"
wrk -t2 -c"$conns" -d3s "http://127.0.0.1:18080/$code" >/dev/null

log "edge: ${secs}s, $conns connections"
( peak=0; for _ in $(seq 1 $((secs * 4))); do
    r=$(awk '/VmRSS/{print $2}' /proc/$edge_pid/status 2>/dev/null || echo 0); [ "${r:-0}" -gt "$peak" ] && peak=$r; sleep 0.25
  done; echo "$peak" > "$work/rss.txt" ) &
sampler=$!
edge=$(run_wrk "http://127.0.0.1:18080/$code")
wait $sampler
rss_idle=$(awk '/VmRSS/{print $2}' /proc/$edge_pid/status)
log "nginx proxy -> trivial 302 upstream"
proxy=$(run_wrk "http://127.0.0.1:18082/$code")
log "nginx return 302"
direct=$(run_wrk "http://127.0.0.1:18081/$code")

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; wrk -t2 -c$conns -d${secs}s; wrk, edge, links, Redis and NGINX share the cores"
printf '%-34s %12s %10s %10s %8s\n' "target" "req/s" "p50" "p99" "non-3xx"
printf '%-34s %12s %10s %10s %8s\n' "edge -> links (gRPC, Redis cache)" $edge
printf '%-34s %12s %10s %10s %8s\n' "nginx proxy -> 302 upstream" $proxy
printf '%-34s %12s %10s %10s %8s\n' "nginx return 302" $direct
python3 - "$edge" "$proxy" "$direct" "$(cat "$work/rss.txt")" "$rss_idle" <<'PY'
import sys
e, p, d = (float(x.split()[0]) for x in sys.argv[1:4])
print(f"throughput ratios: edge/nginx-proxy {e/p:.2f}x, edge/nginx-return {e/d:.2f}x")
print(f"edge resident memory: peak {int(sys.argv[4])/1024:.1f} MiB under load, {int(sys.argv[5])/1024:.1f} MiB after")
PY
