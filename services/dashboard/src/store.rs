//! The dashboard's own tables (beside the ingest's aggregates, in the
//! dashboard database): the timeline, incidents, load-test runs and WARN+
//! log samples. Every read is bounded by a time range and a limit and runs
//! on an index; ids of entries that come from the bus or a webhook are a
//! hash of their content, so a redelivery inserts nothing new.

use std::hash::{Hash, Hasher};

use chrono::{SecondsFormat, Utc};
use sqlx::AnyPool;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS dash_timeline (id BIGINT PRIMARY KEY, time TEXT NOT NULL, \
     kind TEXT NOT NULL, severity TEXT NOT NULL, component TEXT NOT NULL, title TEXT NOT NULL, \
     detail TEXT NOT NULL, actor TEXT NOT NULL, incident_id BIGINT)",
    "CREATE INDEX IF NOT EXISTS dash_timeline_time_idx ON dash_timeline (time)",
    "CREATE INDEX IF NOT EXISTS dash_timeline_incident_idx ON dash_timeline (incident_id)",
    "CREATE TABLE IF NOT EXISTS dash_incidents (id BIGINT PRIMARY KEY, opened TEXT NOT NULL, \
     closed TEXT, title TEXT NOT NULL, severity TEXT NOT NULL, source_key TEXT NOT NULL, \
     acked TEXT, acked_by TEXT)",
    "CREATE INDEX IF NOT EXISTS dash_incidents_opened_idx ON dash_incidents (opened)",
    "CREATE INDEX IF NOT EXISTS dash_incidents_key_idx ON dash_incidents (source_key)",
    "CREATE TABLE IF NOT EXISTS dash_load_runs (id BIGINT PRIMARY KEY, started TEXT NOT NULL, \
     finished TEXT, tier TEXT NOT NULL, target TEXT NOT NULL, duration TEXT NOT NULL, \
     status TEXT NOT NULL, requests DOUBLE PRECISION NOT NULL, rps DOUBLE PRECISION NOT NULL, \
     p50_ms DOUBLE PRECISION NOT NULL, p95_ms DOUBLE PRECISION NOT NULL, \
     p99_ms DOUBLE PRECISION NOT NULL, error_rate DOUBLE PRECISION NOT NULL, summary TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS dash_load_runs_started_idx ON dash_load_runs (started)",
    "CREATE TABLE IF NOT EXISTS dash_log_samples (id BIGINT PRIMARY KEY, time TEXT NOT NULL, \
     level TEXT NOT NULL, service TEXT NOT NULL, message TEXT NOT NULL, request_id TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS dash_log_samples_time_idx ON dash_log_samples (time)",
    "CREATE INDEX IF NOT EXISTS dash_log_samples_rid_idx ON dash_log_samples (request_id)",
    "CREATE INDEX IF NOT EXISTS dash_error_samples_time_idx ON dash_error_samples (time)",
];

pub async fn migrate(pool: &AnyPool) -> anyhow::Result<()> {
    for stmt in SCHEMA {
        sqlx::query(*stmt).execute(pool).await?;
    }
    Ok(())
}

/// Now, RFC 3339 UTC with milliseconds (sorts as text).
pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A time `mins` minutes ago, in the same format.
pub fn ago(mins: i64) -> String {
    (Utc::now() - chrono::Duration::minutes(mins)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A positive id from content (stable for the same content).
pub fn content_id(parts: &[&str]) -> i64 {
    let mut h = std::hash::DefaultHasher::new();
    parts.hash(&mut h);
    (h.finish() >> 1) as i64
}

/// A fresh positive id.
pub fn fresh_id() -> i64 {
    (rand::random::<u64>() >> 1) as i64
}

/// One line of the timeline.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Entry {
    pub id: i64,
    pub time: String,
    /// alert, ops, chaos, load, note, ack, incident, log.
    pub kind: String,
    /// info, warning, critical.
    pub severity: String,
    pub component: String,
    pub title: String,
    pub detail: String,
    pub actor: String,
    pub incident_id: Option<i64>,
}

/// Adds an entry (nothing if its id is already there).
pub async fn add_entry(pool: &AnyPool, e: &Entry) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO dash_timeline (id, time, kind, severity, component, title, detail, actor, incident_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
    )
    .bind(e.id)
    .bind(&e.time)
    .bind(&e.kind)
    .bind(&e.severity)
    .bind(&e.component)
    .bind(&e.title)
    .bind(&e.detail)
    .bind(&e.actor)
    .bind(e.incident_id)
    .execute(pool)
    .await?;
    Ok(())
}

type EntryRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<i64>,
);

fn entry(
    (id, time, kind, severity, component, title, detail, actor, incident_id): EntryRow,
) -> Entry {
    Entry {
        id,
        time,
        kind,
        severity,
        component,
        title,
        detail,
        actor,
        incident_id,
    }
}

/// The latest entries since `since`, newest first, at most `limit`.
pub async fn timeline(pool: &AnyPool, since: &str, limit: i64) -> anyhow::Result<Vec<Entry>> {
    let rows: Vec<EntryRow> = sqlx::query_as(
        "SELECT id, time, kind, severity, component, title, detail, actor, incident_id FROM dash_timeline \
         WHERE time >= $1 ORDER BY time DESC LIMIT $2",
    )
    .bind(since)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(entry).collect())
}

/// An incident.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Incident {
    pub id: i64,
    pub opened: String,
    pub closed: Option<String>,
    pub title: String,
    pub severity: String,
    pub source_key: String,
    pub acked: Option<String>,
    pub acked_by: Option<String>,
}

type IncidentRow = (
    i64,
    String,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
);

/// The open incident for `key`, if any.
pub async fn open_incident(pool: &AnyPool, key: &str) -> anyhow::Result<Option<i64>> {
    Ok(sqlx::query_as::<_, (i64,)>(
        "SELECT id FROM dash_incidents WHERE source_key = $1 AND closed IS NULL ORDER BY opened DESC LIMIT 1",
    )
    .bind(key)
    .fetch_optional(pool)
    .await?
    .map(|r| r.0))
}

/// Opens an incident for `key` unless one is open; returns its id.
pub async fn open(pool: &AnyPool, key: &str, title: &str, severity: &str) -> anyhow::Result<i64> {
    if let Some(id) = open_incident(pool, key).await? {
        return Ok(id);
    }
    let id = fresh_id();
    sqlx::query(
        "INSERT INTO dash_incidents (id, opened, closed, title, severity, source_key, acked, acked_by) \
         VALUES ($1, $2, NULL, $3, $4, $5, NULL, NULL)",
    )
    .bind(id)
    .bind(now())
    .bind(title)
    .bind(severity)
    .bind(key)
    .execute(pool)
    .await?;
    Ok(id)
}

/// Closes the open incident for `key`; returns its id if there was one.
pub async fn close(pool: &AnyPool, key: &str) -> anyhow::Result<Option<i64>> {
    let Some(id) = open_incident(pool, key).await? else {
        return Ok(None);
    };
    sqlx::query("UPDATE dash_incidents SET closed = $1 WHERE id = $2")
        .bind(now())
        .bind(id)
        .execute(pool)
        .await?;
    Ok(Some(id))
}

/// Acknowledges an incident; false if there is none with that id.
pub async fn ack(pool: &AnyPool, id: i64, by: &str) -> anyhow::Result<bool> {
    let r = sqlx::query(
        "UPDATE dash_incidents SET acked = $1, acked_by = $2 WHERE id = $3 AND acked IS NULL",
    )
    .bind(now())
    .bind(by)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Incidents opened since `since` plus every open one, newest first.
pub async fn incidents(pool: &AnyPool, since: &str, limit: i64) -> anyhow::Result<Vec<Incident>> {
    let rows: Vec<IncidentRow> = sqlx::query_as(
        "SELECT id, opened, closed, title, severity, source_key, acked, acked_by FROM dash_incidents \
         WHERE opened >= $1 OR closed IS NULL ORDER BY opened DESC LIMIT $2",
    )
    .bind(since)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, opened, closed, title, severity, source_key, acked, acked_by)| Incident {
                id,
                opened,
                closed,
                title,
                severity,
                source_key,
                acked,
                acked_by,
            },
        )
        .collect())
}

/// A WARN+ log line kept for error analytics.
pub async fn add_log_sample(
    pool: &AnyPool,
    time: &str,
    level: &str,
    service: &str,
    message: &str,
    request_id: &str,
) -> anyhow::Result<()> {
    let message: String = message.chars().take(500).collect();
    sqlx::query(
        "INSERT INTO dash_log_samples (id, time, level, service, message, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
    )
    .bind(content_id(&[time, level, service, &message, request_id]))
    .bind(time)
    .bind(level)
    .bind(service)
    .bind(&message)
    .bind(request_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes log samples and timeline-less raw data older than `hours`.
pub async fn prune(pool: &AnyPool, hours: i64) {
    let cutoff = ago(hours * 60);
    let _ = sqlx::query("DELETE FROM dash_log_samples WHERE time < $1")
        .bind(&cutoff)
        .execute(pool)
        .await;
}

/// A finished (or running) load-test run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LoadRun {
    pub id: i64,
    pub started: String,
    pub finished: Option<String>,
    pub tier: String,
    pub target: String,
    pub duration: String,
    pub status: String,
    pub requests: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub error_rate: f64,
    pub summary: String,
}

pub async fn save_run(pool: &AnyPool, r: &LoadRun) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO dash_load_runs (id, started, finished, tier, target, duration, status, requests, rps, \
         p50_ms, p95_ms, p99_ms, error_rate, summary) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (id) DO UPDATE SET finished = EXCLUDED.finished, status = EXCLUDED.status, \
         requests = EXCLUDED.requests, rps = EXCLUDED.rps, p50_ms = EXCLUDED.p50_ms, p95_ms = EXCLUDED.p95_ms, \
         p99_ms = EXCLUDED.p99_ms, error_rate = EXCLUDED.error_rate, summary = EXCLUDED.summary",
    )
    .bind(r.id)
    .bind(&r.started)
    .bind(&r.finished)
    .bind(&r.tier)
    .bind(&r.target)
    .bind(&r.duration)
    .bind(&r.status)
    .bind(r.requests)
    .bind(r.rps)
    .bind(r.p50_ms)
    .bind(r.p95_ms)
    .bind(r.p99_ms)
    .bind(r.error_rate)
    .bind(&r.summary)
    .execute(pool)
    .await?;
    Ok(())
}

type RunRow = (
    i64,
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    f64,
    f64,
    f64,
    f64,
    f64,
    f64,
);

/// The latest runs, newest first (summaries left out).
pub async fn runs(pool: &AnyPool, limit: i64) -> anyhow::Result<Vec<LoadRun>> {
    let rows: Vec<RunRow> = sqlx::query_as(
        "SELECT id, started, finished, tier, target, duration, status, requests, rps, p50_ms, p95_ms, p99_ms, \
         error_rate FROM dash_load_runs ORDER BY started DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                id,
                started,
                finished,
                tier,
                target,
                duration,
                status,
                requests,
                rps,
                p50_ms,
                p95_ms,
                p99_ms,
                error_rate,
            )| {
                LoadRun {
                    id,
                    started,
                    finished,
                    tier,
                    target,
                    duration,
                    status,
                    requests,
                    rps,
                    p50_ms,
                    p95_ms,
                    p99_ms,
                    error_rate,
                    summary: String::new(),
                }
            },
        )
        .collect())
}
