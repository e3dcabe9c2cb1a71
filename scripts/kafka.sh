#!/usr/bin/env bash
# A Kafka-protocol broker for the tests: tansu 0.6 from crates.io (Apache
# Kafka compatible, works with librdkafka), built once and cached outside
# the clone, listening on 127.0.0.1 only.
#
#   ./scripts/kafka.sh install | start | stop | path
#
# Built with the libsql engine and started on a SQLite file: that engine
# serves a fetch that starts inside a record batch (the memory engine answers
# from the next batch, which would lose records for a consumer resuming
# mid-batch) and keeps the log across a broker restart.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
tools="${SHORTLINK_TOOLS:-$HOME/.cache/shortlink/tools}"
tansu="$tools/tansu-0.6.0-libsql/bin/tansu"
addr="${KAFKA_TEST_ADDR:-127.0.0.1:19092}"
pidfile="$tools/tansu-${addr//[:.]/_}.pid"
datafile="${KAFKA_TEST_DATA:-$tools/tansu-${addr//[:.]/_}.db}"

install() {
  [ -x "$tansu" ] && return 0
  mkdir -p "$tools"
  # One build at a time: a second caller waits for the first one's binary.
  exec 9>"$tools/tansu-install.lock"
  if ! flock -n 9; then
    log "another process is building tansu; waiting for it"
    flock 9
  fi
  [ -x "$tansu" ] && return 0
  log "building tansu 0.6.0 into $tools (once; about 12 minutes)"
  cargo install tansu --version 0.6.0 --locked --features libsql,dynostore \
    --root "$tools/tansu-0.6.0-libsql" >"$tools/install.log" 2>&1 \
    || { tail -30 "$tools/install.log" >&2; die "cargo install tansu failed (log: $tools/install.log)"; }
}

up() { (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; }

case "${1:-start}" in
  install) install ;;
  path) install; echo "$tansu" ;;
  start)
    install
    if up; then log "broker already listening on $addr"; exit 0; fi
    log "starting tansu on $addr"
    # tansu resolves the SQLite URL's path against its working directory
    # (sqlite:///a/b.db is ./a/b.db), so it runs from / with an absolute path.
    db=$(realpath -m "$datafile")
    (cd / && exec nohup "$tansu" broker --listener-url "tcp://$addr" --advertised-listener-url "tcp://$addr" \
      --storage-engine "sqlite://$db") >"$tools/tansu-${addr//[:.]/_}.log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 50); do up && exit 0; sleep 0.2; done
    die "tansu did not start on $addr (log: $tools/tansu-${addr//[:.]/_}.log)"
    ;;
  stop)
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
    ;;
  *) die "usage: $0 install|start|stop|path" ;;
esac
