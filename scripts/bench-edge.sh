#!/usr/bin/env bash
# Edge benchmark (issue 3): redirect throughput and latency through the edge
# with wrk against a warm cache, next to NGINX proxying the same traffic to a
# trivial upstream that answers 302, and NGINX answering `return 302` itself,
# all in one run; plus the edge's resident memory under that load.
# Everything listens on 127.0.0.1; every wrk run is bounded in time.
#
#   ./scripts/bench-edge.sh [connections=64] [seconds=10] [mode=nginx]
#
# mode `limits` (issue 7) measures instead what shared rate limiting costs
# on the redirect path: two edges side by side on the same links service
# and Redis, with limits enforced but set high enough never to refuse, one
# keeping client budgets locally (RATE_LIMIT_SHARED=false) and one spending
# them in Redis (one EVALSHA per request). wrk sends every request as one
# of 10,000 clients (X-Forwarded-For from a trusted 127.0.0.1); the two
# edges are measured alternately, two rounds each, in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
conns="${1:-64}"
secs="${2:-10}"
mode="${3:-nginx}"
case "$mode" in nginx|limits) ;; *) die "mode must be nginx or limits" ;; esac
ensure_postgres
ensure_redis
ensure_apt_pkg wrk wrk
[ "$mode" = nginx ] && ensure_apt_pkg nginx nginx-light

# SHORTLINK_BIN=<path> measures that binary instead (an older commit's,
# to tell a regression of the code from a slower machine in the same hour).
bin="${SHORTLINK_BIN:-}"
if [ -z "$bin" ]; then
  log "building release binary"
  cargo build --release --locked -p shortlink --bin shortlink
  bin="${CARGO_TARGET_DIR:-target}/release/shortlink"
fi
work=$(mktemp -d /tmp/shortlink-bench.XXXXXX)
db="shortlink_bench_edge"
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
"$bin" --log-level warn import --dir ../shared/seed-data >/dev/null

pids=()
cleanup() {
  # Last started first: the edge goes before the replica it checks.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

LINKS_GRPC_ADDR=127.0.0.1:50171 LINKS_HTTP_ADDR=127.0.0.1:9291 REDIS_URL=redis://127.0.0.1:6379 \
  CACHE_PREFIX="bench:$RANDOM:" LOG_LEVEL=warn "$bin" links & pids+=($!)
for _ in $(seq 1 100); do curl -fs 127.0.0.1:9291/ready >/dev/null 2>&1 && break; sleep 0.1; done

run_wrk() { # url [wrk args...] -> "rps p50 p99 non-3xx"
  local url="$1"; shift
  wrk -t2 -c"$conns" -d"${secs}s" --latency "$@" "$url" > "$work/wrk.txt"
  awk '/Requests\/sec/{r=$2} /^ +50%/{p50=$2} /^ +99%/{p99=$2} /Non-2xx or 3xx/{e=$NF} END{print r, p50, p99, (e==""?0:e)}' "$work/wrk.txt"
}
code=WqxP6K

if [ "$mode" = limits ]; then
  cat > "$work/clients.lua" <<'LUA'
-- Each request comes from one of 10,000 clients, through the trusted proxy.
local n = 0
request = function()
  n = n + 1
  local i = n % 10000
  return wrk.format("GET", nil, {["X-Forwarded-For"] = string.format("198.18.%d.%d", math.floor(i / 250), i % 250 + 1)})
end
LUA
  start_edge() { # port metrics-port shared
    EDGE_HTTP_ADDR=127.0.0.1:$1 EDGE_HTTPS_ADDR=off EDGE_METRICS_ADDR=127.0.0.1:$2 EDGE_ID="bench-$1" \
      LINKS_UPSTREAMS=127.0.0.1:50171 EDGE_UPGRADE_SOCK="$work/up-$1.sock" \
      REDIS_URL=redis://127.0.0.1:6379 ABUSE_KEY_PREFIX="bench:$RANDOM:$1:" TRUSTED_PROXIES=127.0.0.1/32 \
      RATE_LIMIT_SHARED=$3 RATE_LIMIT_RPS=1000000 RATE_LIMIT_BURST=1000000 LOG_LEVEL=warn "$bin" edge & pids+=($!)
    for _ in $(seq 1 100); do curl -fs 127.0.0.1:$1/ready >/dev/null 2>&1 && break; sleep 0.1; done
  }
  start_edge 18080 19180 false
  start_edge 18090 19190 true
  for port in 18080 18090; do
    test "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:$port/$code)" = 302 || die "edge on $port does not redirect"
  done
  log "warm-up"
  wrk -t2 -c"$conns" -d3s -s "$work/clients.lua" "http://127.0.0.1:18080/$code" >/dev/null
  wrk -t2 -c"$conns" -d3s -s "$work/clients.lua" "http://127.0.0.1:18090/$code" >/dev/null
  results=()
  for round in 1 2; do
    log "round $round: local budgets"
    results+=("local $(run_wrk "http://127.0.0.1:18080/$code" -s "$work/clients.lua")")
    log "round $round: shared budgets (Redis GCRA)"
    results+=("shared $(run_wrk "http://127.0.0.1:18090/$code" -s "$work/clients.lua")")
  done
  metric() { curl -s "127.0.0.1:$1/metrics" | awk -v m="$2" '$1 ~ "^"m {s+=$NF} END{print s+0}'; }
  echo
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, load before: $(cut -d' ' -f1-3 /proc/loadavg); wrk -t2 -c$conns -d${secs}s, 10,000 clients via X-Forwarded-For; wrk, both edges, links, Redis and PostgreSQL share the cores"
  printf '%-28s %12s %10s %10s %8s\n' "edge budgets" "req/s" "p50" "p99" "non-3xx"
  for r in "${results[@]}"; do set -- $r; printf '%-28s %12s %10s %10s %8s\n' "$1" "$2" "$3" "$4" "$5"; done
  echo "shared edge: 429s $(metric 19190 shortlink_rate_limited_total), local fallbacks $(metric 19190 shortlink_rate_limit_local_fallback_total); local edge: 429s $(metric 19180 shortlink_rate_limited_total)"
  python3 - "${results[@]}" <<'PY'
import sys
rows = [r.split() for r in sys.argv[1:]]
local = [float(r[1]) for r in rows if r[0] == "local"]
shared = [float(r[1]) for r in rows if r[0] == "shared"]
ratios = [s / l for s, l in zip(shared, local)]
print("shared/local throughput per round: " + ", ".join(f"{x:.2f}x" for x in ratios)
      + f"; means {sum(shared)/len(shared):,.0f} vs {sum(local)/len(local):,.0f} req/s = {sum(shared)/sum(local):.2f}x")
PY
  exit 0
fi

EDGE_HTTP_ADDR=127.0.0.1:18080 EDGE_HTTPS_ADDR=127.0.0.1:18443 EDGE_METRICS_ADDR=127.0.0.1:19180 \
  LINKS_UPSTREAMS=127.0.0.1:50171 EDGE_CERT_DIR="$work/tls" EDGE_UPGRADE_SOCK="$work/up.sock" \
  RATE_LIMIT_RPS=1000000 RATE_LIMIT_BURST=1000000 LOG_LEVEL=warn "$bin" edge & edge_pid=$!; pids+=($edge_pid)
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

test "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:18080/$code)" = 302 || die "edge does not redirect"
test "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:18082/$code)" = 302 || die "nginx proxy does not redirect"

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
printf '%-34s %12s %10s %10s %8s\n' "edge (its resolution cache)" $edge
printf '%-34s %12s %10s %10s %8s\n' "nginx proxy -> 302 upstream" $proxy
printf '%-34s %12s %10s %10s %8s\n' "nginx return 302" $direct
python3 - "$edge" "$proxy" "$direct" "$(cat "$work/rss.txt")" "$rss_idle" <<'PY'
import sys
e, p, d = (float(x.split()[0]) for x in sys.argv[1:4])
print(f"throughput ratios: edge/nginx-proxy {e/p:.2f}x, edge/nginx-return {e/d:.2f}x")
print(f"edge resident memory: peak {int(sys.argv[4])/1024:.1f} MiB under load, {int(sys.argv[5])/1024:.1f} MiB after")
PY
