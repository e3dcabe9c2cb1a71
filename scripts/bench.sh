#!/usr/bin/env bash
# Every benchmark figure docs/BENCHMARKS.md shows, in one run (issue 8):
#   1. redirects through the edge vs NGINX proxying and NGINX `return 302`
#      (bench-edge.sh), and the cost of shared (Redis) rate limiting
#      (bench-edge.sh limits);
#   2. the original's gold tier and the fixed 1,000 requests/s run, with
#      system CPU per request (bench-gold.sh);
#   3. endpoint p99 on the 2,000-link seed set vs 10M links / 50M events
#      (bench-scale.sh; generates the large database once, reused later);
#   4. the gold tier through the event pipeline on the test broker
#      (bench-pipeline.sh);
#   5. ResolveLink over gRPC with and without the Redis cache
#      (bench-resolve.sh).
# Each prints its machine, load and baseline. Output also goes to
# bench-results/<date>.txt. Run it on a quiet machine: every figure shares
# the same cores with its load generator.
#
#   ./scripts/bench.sh [only...]   e.g. ./scripts/bench.sh edge gold
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
all=(edge limits gold scale pipeline resolve)
want=("$@")
[ ${#want[@]} -eq 0 ] && want=("${all[@]}")
mkdir -p bench-results
out="bench-results/$(date -u +%Y-%m-%dT%H%M%SZ).txt"
log "writing $out"
{
  echo "shortlink benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)"
  echo "machine: $(nproc) cores ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)), $(free -g | awk '/Mem:/{print $2}') GiB; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out"
for w in "${want[@]}"; do
  case "$w" in
    edge) title="redirects: edge vs NGINX"; cmd=(./scripts/bench-edge.sh 64 10) ;;
    limits) title="shared vs local rate-limit budgets"; cmd=(./scripts/bench-edge.sh 64 10 limits) ;;
    gold) title="gold tier and fixed rate, CPU per request"; cmd=(./scripts/bench-gold.sh 30 200) ;;
    scale) title="cost vs data size"; cmd=(./scripts/bench-scale.sh 10 4) ;;
    pipeline) title="gold tier through the event pipeline"; cmd=(./scripts/bench-pipeline.sh gold 30s) ;;
    resolve) title="ResolveLink over gRPC"; cmd=(./scripts/bench-resolve.sh 64 10) ;;
    *) die "unknown benchmark $w (one of: ${all[*]})" ;;
  esac
  { echo; echo "=== $title: ${cmd[*]}"; } | tee -a "$out"
  # The tables, not the progress lines. A failing benchmark is reported
  # and the others still run; the exit status says that one failed.
  if ! "${cmd[@]}" 2>&1 | grep -v '^\x1b\[1m==>' | grep -v '"level":"WARN"' | tee -a "$out"; then
    echo "FAILED: ${cmd[*]}" | tee -a "$out"
    failed=1
  fi
done
exit "${failed:-0}"
