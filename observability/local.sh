#!/usr/bin/env bash
# Runs Prometheus and Alertmanager against a local shortlink:
#   observability/local.sh          # `shortlink up` (edge 9180, links 9181, bus 9185)
#   observability/local.sh ha       # `shortlink up --ha` (targets written by its watchdog)
# Prometheus on 127.0.0.1:9090, Alertmanager on 127.0.0.1:9093, sending to
# the alerter on 127.0.0.1:9183 (ALERTER_URL overrides; under `up --ha` the
# alerter listens on 9250, HA_DATA_DIR names its data directory, default
# data/ha), and to the dashboard on 127.0.0.1:3000 (DASHBOARD_URL overrides)
# with the bearer token DASHBOARD_TOKEN, which must be the one the dashboard
# runs with. Data in ./data/observability. Ctrl-C stops both.
# Needs the Debian packages prometheus and prometheus-alertmanager.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_apt_pkg prometheus prometheus
ensure_apt_pkg prometheus-alertmanager prometheus-alertmanager

topology="${1:-up}"
out="data/observability"
mkdir -p "$out/prometheus" "$out/alertmanager"
case "$topology" in
  up) targets=targets; alerter="${ALERTER_URL:-http://127.0.0.1:9183}" ;;
  ha) targets="$(realpath -m "${HA_DATA_DIR:-data/ha}")/targets"; alerter="${ALERTER_URL:-http://127.0.0.1:9250}" ;;
  *) die "usage: $0 [up|ha]" ;;
esac

# The project's files with absolute paths to the rules and the chosen
# topology's file_sd targets (Prometheus re-reads those when they change).
dir="$PWD/observability/prometheus"
case "$targets" in /*) ;; *) targets="$dir/$targets" ;; esac
sed -e "s#- rules/#- $dir/rules/#" -e "s#\"targets/#\"$targets/#" \
  observability/prometheus/prometheus-local.yml > "$out/prometheus.yml"
dashboard="${DASHBOARD_URL:-http://127.0.0.1:3000}"
# The dashboard's token, in a file of this run only (Alertmanager reads it
# from a file, never from its configuration).
(umask 077 && printf '%s' "${DASHBOARD_TOKEN:-}" > "$out/dashboard-token")
[ -n "${DASHBOARD_TOKEN:-}" ] ||
  log "warning: DASHBOARD_TOKEN is not set: the dashboard refuses Alertmanager's notifications (no alerts on its incident timeline)"
sed -e "s#http://alerter:9183#$alerter#" -e "s#http://dashboard:3000#$dashboard#" \
  -e "s#/run/secrets/dashboard-token#$PWD/$out/dashboard-token#" \
  observability/alertmanager/alertmanager.yml > "$out/alertmanager.yml"

promtool check config "$out/prometheus.yml" >/dev/null
amtool check-config "$out/alertmanager.yml" >/dev/null

trap 'kill $(jobs -p) 2>/dev/null' EXIT
prometheus-alertmanager --config.file="$out/alertmanager.yml" --storage.path="$out/alertmanager" \
  --web.listen-address=127.0.0.1:9093 --cluster.listen-address= &
prometheus --config.file="$out/prometheus.yml" \
  --storage.tsdb.path="$out/prometheus" --web.listen-address=127.0.0.1:9090 &
log "Prometheus http://127.0.0.1:9090  Alertmanager http://127.0.0.1:9093  ($topology; alerts to $alerter/alertmanager and $dashboard/api/alertmanager)"
wait
