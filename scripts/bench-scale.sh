#!/usr/bin/env bash
# Scale benchmark (issue 8, goal 3): is the cost of each endpoint flat in the
# size of the data? Two stacks (release links + release edge each) run side
# by side: one on the 2,000-link seed set (database shortlink_scale_seed,
# re-imported every run), one on 10 million links and 50 million events
# (database shortlink_scale, generated once with SQL and reused while it
# still holds that many rows). Each endpoint is measured on both, seed then
# large, interleaved, with wrk (-t2, few connections, bounded in time and in
# count, loopback only); the table gives p50/p99 and the p99 ratio.
# The links service runs with its cache disabled, so every redirect is a
# database lookup: the cost that could grow with the data.
#
#   ./scripts/bench-scale.sh [seconds-per-run=10] [connections=4]
#
# SCALE_LINKS, SCALE_EVENTS, SCALE_USERS change the generated size;
# SCALE_REGENERATE=1 drops and regenerates the large database;
# SCALE_GENERATE_ONLY=1 stops after making sure it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
secs="${1:-10}"
conns="${2:-4}"
links="${SCALE_LINKS:-10000000}"
events="${SCALE_EVENTS:-50000000}"
users="${SCALE_USERS:-100000}"
max_per_thread=200000 # the count bound of every wrk run, per thread
big=shortlink_scale
small=shortlink_scale_seed
pg="postgres://postgres@127.0.0.1:5432"
ensure_postgres
ensure_redis
ensure_apt_pkg wrk wrk
psqlq() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres "$@"; }

# SHORTLINK_BIN=<path> measures that binary instead (an older commit's,
# to tell a regression of the code from a slower machine in the same hour).
bin="${SHORTLINK_BIN:-}"
if [ -z "$bin" ]; then
  log "building release binary"
  cargo build --release --locked -p shortlink --bin shortlink
  bin="${CARGO_TARGET_DIR:-target}/release/shortlink"
fi
work=$(mktemp -d /tmp/shortlink-benchscale.XXXXXX)

# --- the seed-sized database: fresh every run ------------------------------
psqlq -c "DROP DATABASE IF EXISTS $small WITH (FORCE)" -c "CREATE DATABASE $small"
DATABASE_URL="$pg/$small" "$bin" --log-level warn import --dir ../shared/seed-data >/dev/null
psqlq -d "$small" -c "VACUUM ANALYZE"

# --- the large database: generated once ------------------------------------
have() { # -> "links events" per the list counts, or "0 0"
  psql -X -At -h 127.0.0.1 -U postgres -d "$big" -c \
    "SELECT (SELECT COALESCE(SUM(n), 0) FROM list_counts WHERE list = 'urls' AND user_id = 0)
          + (SELECT COALESCE(SUM(n), 0) FROM list_count_deltas WHERE list = 'urls' AND user_id = 0),
            (SELECT COALESCE(SUM(n), 0) FROM list_counts WHERE list = 'events' AND user_id = 0 AND url_id = 0)
          + (SELECT COALESCE(SUM(n), 0) FROM list_count_deltas WHERE list = 'events' AND user_id = 0 AND url_id = 0)" \
    2>/dev/null | tr '|' ' ' || echo "0 0"
}
read -r have_links have_events <<<"$(have)"
if [ "${SCALE_REGENERATE:-0}" = 1 ] || [ "${have_links:-0}" -lt "$links" ] || [ "${have_events:-0}" -lt "$events" ] \
   || ! psql -X -At -h 127.0.0.1 -U postgres -d "$big" -c "SELECT 1 FROM bench_scale_meta" >/dev/null 2>&1; then
  log "generating $big: $links links, $events events, $users users (takes a while; reused by later runs)"
  psqlq -c "DROP DATABASE IF EXISTS $big WITH (FORCE)" -c "CREATE DATABASE $big"
  DATABASE_URL="$pg/$big" "$bin" --log-level warn import --dir ../shared/seed-data >/dev/null
  t0=$(date +%s)
  psqlq -d "$big" -v links="$links" -v events="$events" -v users="$users" <<'SQL'
\timing on
-- Built valid by construction, so neither triggers (the list counts are
-- rebuilt once at the end) nor foreign-key checks run row by row; the
-- secondary indexes are dropped and rebuilt, which is far faster than
-- maintaining them insert by insert. Unique indexes stay.
SET session_replication_role = replica;
SET maintenance_work_mem = '1GB';
SET work_mem = '256MB';
CREATE TABLE bench_scale_meta (phase TEXT PRIMARY KEY, seconds NUMERIC, at TIMESTAMPTZ DEFAULT now());
CREATE TEMP TABLE saved_indexes AS
  SELECT indexname, indexdef FROM pg_indexes
  WHERE schemaname = 'public' AND tablename IN ('urls', 'events') AND indexdef NOT LIKE 'CREATE UNIQUE%';
SELECT format('DROP INDEX %I', indexname) FROM saved_indexes \gexec

SELECT max(id) AS base_user FROM users \gset
SELECT max(id) AS base_url FROM urls \gset
SELECT max(id) AS base_event FROM events \gset
SELECT :links - count(*) AS new_links FROM urls \gset
SELECT clock_timestamp() AS t \gset

-- Users.
INSERT INTO users (id, username, email, created_at)
SELECT :base_user + g, 'scale_user_' || g, 'scale_user_' || g || '@scale.example',
       timestamptz '2025-01-01' + g * interval '1 minute'
FROM generate_series(1, :users) g;

-- Links: owner round-robin over the generated users; 5% deactivated;
-- 8-character codes: base 62 of g * 25214903917 mod 62^8, a bijection (the
-- multiplier is coprime to 62), so unique and spread over the whole index,
-- and never equal to a 6-character code the service generates.
\set abc ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789
INSERT INTO urls (id, user_id, short_code, original_url, title, is_active, created_at, updated_at)
SELECT :base_url + g,
       :base_user + 1 + (g - 1) % :users,
       substr(:'abc', (x / 3521614606208 % 62)::int + 1, 1) ||
       substr(:'abc', (x / 56800235584 % 62)::int + 1, 1) ||
       substr(:'abc', (x / 916132832 % 62)::int + 1, 1) ||
       substr(:'abc', (x / 14776336 % 62)::int + 1, 1) ||
       substr(:'abc', (x / 238328 % 62)::int + 1, 1) ||
       substr(:'abc', (x / 3844 % 62)::int + 1, 1) ||
       substr(:'abc', (x / 62 % 62)::int + 1, 1) ||
       substr(:'abc', (x / 1 % 62)::int + 1, 1),
       'https://scale.example/' || g, CASE WHEN g % 3 = 0 THEN 'Scale link ' || g END,
       g % 20 <> 0,
       timestamptz '2025-02-01' + g * interval '2 seconds',
       timestamptz '2025-02-01' + g * interval '2 seconds'
FROM generate_series(1, :new_links) g,
     LATERAL (SELECT g * 25214903917 % 218340105584896 AS x) p;
INSERT INTO bench_scale_meta (phase, seconds) SELECT 'users+links', extract(epoch FROM clock_timestamp() - :'t');
SELECT clock_timestamp() AS t \gset

-- Events: each generated link's `created`; `updated` for 3%; `deleted` for
-- the deactivated 5%; the rest are clicks, skewed towards low ids (the
-- busiest link gets about 0.5% of them), by the link's owner as the
-- analytics consumer records them.
INSERT INTO events (id, url_id, user_id, event_type, timestamp, details)
SELECT :base_event + g, :base_url + g, :base_user + 1 + (g - 1) % :users, 'created',
       timestamptz '2025-02-01' + g * interval '2 seconds',
       jsonb_build_object('short_code', 'generated', 'original_url', 'https://scale.example/' || g)
FROM generate_series(1, :new_links) g;
SELECT max(id) AS base_event FROM events \gset
INSERT INTO events (id, url_id, user_id, event_type, timestamp, details)
SELECT :base_event + row_number() OVER (), :base_url + g, :base_user + 1 + (g - 1) % :users,
       CASE WHEN g % 20 = 0 THEN 'deleted' ELSE 'updated' END,
       timestamptz '2025-06-01' + g * interval '1 second',
       CASE WHEN g % 20 = 0 THEN '{"reason": "user_requested"}'::jsonb
            ELSE '{"field": "title", "old_value": null, "new_value": "x"}'::jsonb END
FROM generate_series(1, :new_links) g WHERE g % 20 = 0 OR g % 33 = 0;
SELECT max(id) AS base_event FROM events \gset
SELECT :events - count(*) AS clicks FROM events \gset
INSERT INTO bench_scale_meta (phase, seconds) SELECT 'created/updated/deleted events', extract(epoch FROM clock_timestamp() - :'t');
SELECT clock_timestamp() AS t \gset
SELECT setseed(0.42);
INSERT INTO events (id, url_id, user_id, event_type, timestamp, details)
SELECT :base_event + g, :base_url + 1 + l, :base_user + 1 + l % :users, 'click',
       timestamptz '2025-07-01' + g * interval '300 milliseconds',
       '{"source": "scale"}'::jsonb
FROM (SELECT g, floor(:new_links * power(random(), 3))::bigint AS l
      FROM generate_series(1, :clicks) g) c;
INSERT INTO bench_scale_meta (phase, seconds) SELECT 'click events', extract(epoch FROM clock_timestamp() - :'t');
SELECT clock_timestamp() AS t \gset

SET max_parallel_maintenance_workers = 2;
SELECT indexdef FROM saved_indexes \gexec
INSERT INTO bench_scale_meta (phase, seconds) SELECT 'secondary indexes', extract(epoch FROM clock_timestamp() - :'t');
SELECT clock_timestamp() AS t \gset
SET session_replication_role = origin;
SELECT list_counts_rebuild();
INSERT INTO bench_scale_meta (phase, seconds) SELECT 'list counts rebuild', extract(epoch FROM clock_timestamp() - :'t');
SELECT clock_timestamp() AS t \gset
SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users));
SELECT setval(pg_get_serial_sequence('urls', 'id'), (SELECT max(id) FROM urls));
SELECT setval(pg_get_serial_sequence('events', 'id'), (SELECT max(id) FROM events));
SQL
  log "VACUUM ANALYZE (visibility map for index-only scans, planner statistics)"
  t1=$(date +%s)
  psqlq -d "$big" -c "VACUUM (ANALYZE) users, urls, events, list_counts"
  t2=$(date +%s)
  psqlq -d "$big" -c "INSERT INTO bench_scale_meta (phase, seconds) VALUES ('vacuum analyze', $((t2 - t1))), ('total', $((t2 - t0)))"
fi
gen_report=$(psql -X -At -F' ' -h 127.0.0.1 -U postgres -d "$big" -c \
  "SELECT phase, round(seconds), to_char(at, 'YYYY-MM-DD') FROM bench_scale_meta ORDER BY at, phase")
read -r have_links have_events <<<"$(have)"
big_size=$(psql -X -At -h 127.0.0.1 -U postgres -c "SELECT pg_size_pretty(pg_database_size('$big'))")
if [ "${SCALE_GENERATE_ONLY:-0}" = 1 ]; then
  echo "$big: $have_links links, $have_events events, $big_size"; echo "$gen_report"; exit 0
fi

# --- two stacks -------------------------------------------------------------
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
start_stack() { # db grpc_port side_port edge_port metrics_port
  DATABASE_URL="$pg/$1" LINKS_GRPC_ADDR=127.0.0.1:$2 LINKS_HTTP_ADDR=127.0.0.1:$3 CACHE_DISABLED=true \
    REDIS_URL=redis://127.0.0.1:6379 CACHE_PREFIX="benchs:$RANDOM:" LOG_LEVEL=warn "$bin" links & pids+=($!)
  for _ in $(seq 1 300); do curl -fs "127.0.0.1:$3/ready" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fs "127.0.0.1:$3/ready" >/dev/null || die "links on $1 did not become ready"
  DATABASE_URL="$pg/$1" EDGE_HTTP_ADDR=127.0.0.1:$4 EDGE_HTTPS_ADDR=off EDGE_METRICS_ADDR=127.0.0.1:$5 \
    LINKS_UPSTREAMS=127.0.0.1:$2 EDGE_UPGRADE_SOCK="$work/up-$4.sock" REDIS_URL=redis://127.0.0.1:6379 \
    RATE_LIMIT_RPS=1000000 RATE_LIMIT_BURST=1000000 LOG_LEVEL=warn "$bin" edge & pids+=($!)
  for _ in $(seq 1 100); do curl -fs "127.0.0.1:$4/ready" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fs "127.0.0.1:$4/ready" >/dev/null || die "edge for $1 did not become ready"
}
start_stack "$small" 50191 9311 28081 29181
start_stack "$big" 50192 9312 28082 29182

# --- request files, drawn from each database ------------------------------
# Each endpoint gets a mix of its filters and of pages 1-50, drawn with a
# fixed seed; ids and codes exist in the database they are sent to.
requests() { # db dir
  local db=$1 dir=$2
  mkdir -p "$dir"
  q() { psql -X -At -h 127.0.0.1 -U postgres -d "$db" -c "SELECT setseed(0.5)" -c "$1" | sed 1d; }
  # n ids drawn uniformly from a table's id range (ids are dense here).
  ids() { echo "SELECT DISTINCT 1 + floor(random() * (SELECT max(id) FROM $1))::bigint AS id FROM generate_series(1, $2)"; }
  q "SELECT 'GET /' || short_code FROM urls WHERE is_active AND id IN ($(ids urls 25000)) LIMIT 20000" > "$dir/redirect"
  q "SELECT 'POST /urls {\"original_url\": \"https://bench.example/' || u.id || '\", \"user_id\": ' || u.id || '}'
       FROM ($(ids users 2000)) u" > "$dir/create"
  q "SELECT 'GET /urls?page=' || 1 + g % 50 || '&per_page=' || (ARRAY[10, 20, 100])[1 + g % 3]
            || CASE g % 4 WHEN 1 THEN '&is_active=true' WHEN 2 THEN '&is_active=false' ELSE '' END
       FROM generate_series(1, 600) g
     UNION ALL
     SELECT 'GET /urls?user_id=' || user_id || CASE WHEN id % 2 = 0 THEN '&is_active=true' ELSE '' END
       FROM urls WHERE id IN ($(ids urls 400))" > "$dir/urls"
  q "SELECT 'GET /users?page=' || 1 + g % 50 || '&per_page=' || (ARRAY[10, 20, 100])[1 + g % 3]
       FROM generate_series(1, 300) g" > "$dir/users"
  q "SELECT 'GET /users/' || user_id || '/urls' || CASE WHEN id % 3 = 0 THEN '?is_active=true' ELSE '' END
       FROM urls WHERE id IN ($(ids urls 1000))" > "$dir/user-urls"
  q "SELECT 'GET /events?page=' || 1 + g % 50 || CASE g % 3 WHEN 1 THEN '&event_type=click' WHEN 2 THEN '&event_type=created' ELSE '' END
       FROM generate_series(1, 300) g
     UNION ALL
     SELECT 'GET /events?' || CASE id % 4 WHEN 0 THEN 'url_id=' || url_id
                                         WHEN 1 THEN 'user_id=' || user_id
                                         WHEN 2 THEN 'url_id=' || url_id || '&event_type=' || event_type
                                         ELSE 'user_id=' || user_id || '&event_type=' || event_type END
       FROM events WHERE id IN ($(ids events 700))" > "$dir/events"
  q "SELECT 'GET /urls/' || id || '/events' || CASE WHEN id % 4 = 0 THEN '?event_type=created' ELSE '' END
       FROM urls WHERE id IN ($(ids urls 1000))" > "$dir/url-events"
  # Beyond the comparison: the deepest pages served (skipping just under
  # Page::MAX_SKIP = 1,000,000 rows; deeper is refused 400), and the
  # busiest link's events.
  q "SELECT 'GET /urls?page=50000&per_page=20' UNION ALL SELECT 'GET /events?page=10000&per_page=100'" > "$dir/deep-pages"
  q "SELECT 'GET /urls/' || url_id || '/events?page=' || 1 + g % 20
       FROM (SELECT url_id FROM list_counts WHERE list = 'events' AND user_id = 0 AND url_id > 0
             GROUP BY url_id ORDER BY sum(n) DESC LIMIT 1) h, generate_series(1, 20) g" > "$dir/busiest-link"
}
log "drawing request mixes"
requests "$small" "$work/seed"
requests "$big" "$work/large"

run_wrk() { # port file -> "p50 p99 requests errors"
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s scripts/bench-scale.lua "http://127.0.0.1:$1" -- "$2" "$max_per_thread" > "$work/wrk.txt" 2>&1 || true
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^ +50%/ {p50 = ms($2)} /^ +99%/ {p99 = ms($2)} /requests in/ {n = $1}
    /Non-2xx or 3xx/ {e = $NF} /Socket errors/ {e += 0}
    END {printf "%.2f %.2f %d %d\n", p50, p99, n, e}' "$work/wrk.txt"
}
check() { # port file: every kind of request answers 2xx/3xx once
  local port=$1 line method path body code
  while read -r method path body; do
    if [ "$method" = POST ]; then
      code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' -d "$body" "127.0.0.1:$port$path")
    else
      code=$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$port$path")
    fi
    case "$code" in 2*|3*) ;; *) die "$method $path answered $code on port $port" ;; esac
  done < <(head -3 "$2")
}

endpoints=(redirect create urls users user-urls events url-events)
extras=(deep-pages busiest-link)
for e in "${endpoints[@]}" "${extras[@]}"; do check 28081 "$work/seed/$e"; check 28082 "$work/large/$e"; done

: > "$work/results"
for e in "${endpoints[@]}" "${extras[@]}"; do
  log "$e: warm-up 3 s each, then ${secs} s on the seed set and ${secs} s on the large set"
  wrk -t2 -c"$conns" -d3s -s scripts/bench-scale.lua http://127.0.0.1:28081 -- "$work/seed/$e" 20000 >/dev/null 2>&1 || true
  wrk -t2 -c"$conns" -d3s -s scripts/bench-scale.lua http://127.0.0.1:28082 -- "$work/large/$e" 20000 >/dev/null 2>&1 || true
  echo "$e $(run_wrk 28081 "$work/seed/$e") $(run_wrk 28082 "$work/large/$e")" >> "$work/results"
done

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t2 -c$conns -d${secs}s per run (+3 s warm-up), at most $max_per_thread requests per thread; links with CACHE_DISABLED=true; wrk, two edges, two links, PostgreSQL share the cores"
echo "large database $big: $have_links links, $have_events events, $big_size"
echo "generation (seconds; date generated):"
echo "$gen_report" | sed 's/^/  /'
python3 - "$work/results" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
print(f"{'endpoint':<14} {'seed p50':>9} {'seed p99':>9} {'10M p50':>9} {'10M p99':>9} {'p99 ratio':>9} {'seed req':>9} {'10M req':>9} {'errors':>7}")
for r in rows:
    name, sp50, sp99, sn, se, bp50, bp99, bn, be = r[0], *map(float, r[1:3]), int(r[3]), int(r[4]), *map(float, r[5:7]), int(r[7]), int(r[8])
    ratio = bp99 / sp99 if sp99 else float("nan")
    extra = name in ("deep-pages", "busiest-link")
    print(f"{name:<14} {sp50:>7.2f}ms {sp99:>7.2f}ms {bp50:>7.2f}ms {bp99:>7.2f}ms {ratio:>8.2f}x {sn:>9} {bn:>9} {se + be:>7}" + ("  (extra)" if extra else ""))
PY
