//! `shortlink dashboard-ingest`: keeps a ring buffer of recent events (for
//! live views, served as JSON on `GET /recent`) and writes per-minute
//! aggregates (requests; errors by status and route; latency percentiles)
//! and error samples to the dashboard database, which is separate from the
//! app database. Raw request events are stored keyed by request id and the
//! aggregates of each touched minute are recomputed from them, so a
//! redelivered event changes nothing.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use serde_json::{Value, json};
use shortlink_bus::{EventBus, Topics};
use shortlink_proto::events::RequestEvent;
use shortlink_runtime::shutdown::Shutdown;
use sqlx::AnyPool;

use crate::{GroupArgs, commit_batch, next_batch, retry_until_ok, trace_batch};

/// Flags of `shortlink dashboard-ingest`.
#[derive(Clone, Debug, clap::Args)]
pub struct DashboardIngestArgs {
    #[command(flatten)]
    pub group: GroupArgs,
    /// The dashboard database (PostgreSQL or sqlite:), separate from the app's.
    #[arg(
        long,
        env = "DASHBOARD_DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://./data/dashboard.db?mode=rwc"
    )]
    pub dashboard_database_url: String,
    /// Listener for `GET /recent` (the ring buffer) and `/live`.
    #[arg(
        long,
        env = "DASHBOARD_INGEST_HTTP_ADDR",
        default_value = "127.0.0.1:9184"
    )]
    pub http_addr: SocketAddr,
    /// Events kept in the ring buffer.
    #[arg(long, env = "DASHBOARD_RING_SIZE", default_value_t = 1000)]
    pub ring_size: usize,
    /// Hours of raw request events kept for recomputing aggregates.
    #[arg(long, env = "DASHBOARD_RAW_RETENTION_H", default_value_t = 6)]
    pub raw_retention_h: i64,
}

/// The ingest's tables (created if missing).
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS dash_requests (request_id TEXT PRIMARY KEY, minute TEXT NOT NULL, \
     route TEXT NOT NULL, status INTEGER NOT NULL, duration_ms DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS dash_requests_minute_idx ON dash_requests (minute)",
    "CREATE TABLE IF NOT EXISTS dash_minute_stats (minute TEXT NOT NULL, route TEXT NOT NULL, \
     requests BIGINT NOT NULL, errors BIGINT NOT NULL, p50_ms DOUBLE PRECISION NOT NULL, \
     p95_ms DOUBLE PRECISION NOT NULL, p99_ms DOUBLE PRECISION NOT NULL, PRIMARY KEY (minute, route))",
    "CREATE TABLE IF NOT EXISTS dash_minute_status (minute TEXT NOT NULL, route TEXT NOT NULL, \
     status INTEGER NOT NULL, count BIGINT NOT NULL, PRIMARY KEY (minute, route, status))",
    "CREATE TABLE IF NOT EXISTS dash_error_samples (request_id TEXT PRIMARY KEY, time TEXT NOT NULL, \
     route TEXT NOT NULL, path TEXT NOT NULL, status INTEGER NOT NULL, outcome TEXT NOT NULL, \
     edge_id TEXT NOT NULL, upstream TEXT NOT NULL)",
];

/// The minute an RFC 3339 time falls in, as `YYYY-MM-DDTHH:MM:00Z`.
pub fn minute_of(time: &str) -> Option<String> {
    let t = chrono::DateTime::parse_from_rfc3339(time)
        .ok()?
        .with_timezone(&chrono::Utc);
    Some(t.format("%Y-%m-%dT%H:%M:00Z").to_string())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Stores request events and recomputes the aggregates of the minutes
/// they fall in (idempotent: a redelivered event changes nothing).
pub async fn write(pool: &AnyPool, events: &[RequestEvent]) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let mut minutes = BTreeSet::new();
    for e in events {
        let Some(minute) = minute_of(&e.time) else {
            continue;
        };
        sqlx::query(
            "INSERT INTO dash_requests (request_id, minute, route, status, duration_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&e.request_id)
        .bind(&minute)
        .bind(&e.route)
        .bind(i64::from(e.status))
        .bind(e.duration_ms)
        .execute(&mut *tx)
        .await?;
        if e.status >= 500 {
            sqlx::query(
                "INSERT INTO dash_error_samples (request_id, time, route, path, status, outcome, edge_id, upstream) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(&e.request_id)
            .bind(&e.time)
            .bind(&e.route)
            .bind(&e.path)
            .bind(i64::from(e.status))
            .bind(&e.outcome)
            .bind(&e.edge_id)
            .bind(&e.upstream)
            .execute(&mut *tx)
            .await?;
        }
        minutes.insert(minute);
    }
    for minute in minutes {
        let rows: Vec<(String, i64, f64)> = sqlx::query_as(
            "SELECT route, status, duration_ms FROM dash_requests WHERE minute = $1",
        )
        .bind(&minute)
        .fetch_all(&mut *tx)
        .await?;
        let mut by_route: std::collections::BTreeMap<
            String,
            (Vec<f64>, std::collections::BTreeMap<i64, i64>),
        > = Default::default();
        for (route, status, d) in rows {
            let e = by_route.entry(route).or_default();
            e.0.push(d);
            *e.1.entry(status).or_default() += 1;
        }
        for (route, (mut durations, statuses)) in by_route {
            durations.sort_by(f64::total_cmp);
            let errors: i64 = statuses
                .iter()
                .filter(|(s, _)| **s >= 500)
                .map(|(_, n)| n)
                .sum();
            sqlx::query(
                "INSERT INTO dash_minute_stats (minute, route, requests, errors, p50_ms, p95_ms, p99_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (minute, route) DO UPDATE SET \
                 requests = EXCLUDED.requests, errors = EXCLUDED.errors, p50_ms = EXCLUDED.p50_ms, \
                 p95_ms = EXCLUDED.p95_ms, p99_ms = EXCLUDED.p99_ms",
            )
            .bind(&minute)
            .bind(&route)
            .bind(durations.len() as i64)
            .bind(errors)
            .bind(percentile(&durations, 0.50))
            .bind(percentile(&durations, 0.95))
            .bind(percentile(&durations, 0.99))
            .execute(&mut *tx)
            .await?;
            for (status, n) in statuses {
                sqlx::query(
                    "INSERT INTO dash_minute_status (minute, route, status, count) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (minute, route, status) DO UPDATE SET count = EXCLUDED.count",
                )
                .bind(&minute)
                .bind(&route)
                .bind(status)
                .bind(n)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

#[derive(Clone)]
struct Ring(Arc<Mutex<VecDeque<Value>>>);

async fn recent(
    State(r): State<Ring>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> axum::Json<Value> {
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(100)
        .min(1000);
    let ring = r.0.lock().unwrap_or_else(|p| p.into_inner());
    let items: Vec<Value> = ring.iter().rev().take(limit).cloned().collect();
    axum::Json(json!({"events": items}))
}

/// Opens the dashboard database (creating a SQLite file's directory) with
/// at most `max_connections`, and creates the ingest's tables.
pub async fn open(url: &str, max_connections: u32) -> anyhow::Result<AnyPool> {
    sqlx::any::install_default_drivers();
    if let Some(path) = url.strip_prefix("sqlite://")
        && let Some(dir) = std::path::Path::new(path.split('?').next().unwrap_or(path)).parent()
    {
        let _ = std::fs::create_dir_all(dir);
    }
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open DASHBOARD_DATABASE_URL: {e}"))?;
    for stmt in SCHEMA {
        sqlx::query(*stmt).execute(&pool).await?;
    }
    Ok(pool)
}

/// Deletes raw request events and error samples older than `hours`.
pub async fn prune(pool: &AnyPool, hours: i64) {
    let cutoff = (chrono::Utc::now() - chrono::Duration::hours(hours))
        .format("%Y-%m-%dT%H:%M:00Z")
        .to_string();
    let _ = sqlx::query("DELETE FROM dash_requests WHERE minute < $1")
        .bind(&cutoff)
        .execute(pool)
        .await;
    let _ = sqlx::query("DELETE FROM dash_error_samples WHERE time < $1")
        .bind(&cutoff)
        .execute(pool)
        .await;
}

/// Runs until shutdown.
pub async fn run(
    args: DashboardIngestArgs,
    bus: Arc<dyn EventBus>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let pool = open(&args.dashboard_database_url, 2).await?;
    let ring = Ring(Arc::new(Mutex::new(VecDeque::new())));
    let app = Router::new()
        .route("/recent", axum::routing::get(recent))
        .with_state(ring.clone());
    crate::serve_http(
        args.http_addr,
        "DASHBOARD_INGEST_HTTP_ADDR",
        app,
        shutdown.clone(),
    )
    .await?;
    let topics = Topics::with_prefix(&args.group.bus.topic_prefix);
    let group = args.group.group_or("dashboard");
    let mut sub = bus.subscribe(&group, &topics.all()).await?;
    tracing::info!(group, "dashboard ingest started");
    let mut last_prune = std::time::Instant::now();
    while let Some(batch) = next_batch(&mut sub, 1000, Duration::from_millis(500), &shutdown).await
    {
        let _traces = trace_batch(&group, &batch);
        let mut requests = Vec::new();
        {
            let mut r = ring.0.lock().unwrap_or_else(|p| p.into_inner());
            for d in &batch {
                let Ok(v) = d.decode::<Value>() else {
                    continue;
                };
                r.push_back(json!({"topic": d.topic, "event": v}));
                while r.len() > args.ring_size.max(1) {
                    r.pop_front();
                }
                if d.topic == topics.requests
                    && let Ok(e) = d.decode::<RequestEvent>()
                    && !e.request_id.is_empty()
                {
                    requests.push(e);
                }
            }
        }
        if !requests.is_empty() {
            let ok = retry_until_ok("writing dashboard aggregates", &shutdown, || {
                write(&pool, &requests)
            })
            .await;
            if ok.is_none() {
                return Ok(());
            }
        }
        commit_batch(&mut sub, &batch).await;
        if last_prune.elapsed() > Duration::from_secs(300) {
            last_prune = std::time::Instant::now();
            prune(&pool, args.raw_retention_h).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn minutes_and_percentiles() {
        assert_eq!(
            super::minute_of("2026-11-28T01:02:03.456Z").unwrap(),
            "2026-11-28T01:02:00Z"
        );
        assert!(super::minute_of("nope").is_none());
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(super::percentile(&v, 0.5), 51.0);
        assert_eq!(super::percentile(&v, 0.99), 99.0);
    }
}
