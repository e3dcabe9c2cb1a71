//! The dashboard's consumer of the event bus (group `shortlink-dashboard-ui`
//! unless CONSUMER_GROUP says otherwise: not the standalone ingest's
//! `shortlink-dashboard`, so that both can run and each sees every event): it does what `dashboard-ingest`
//! does (raw request events and per-minute aggregates in the dashboard
//! database), feeds the live ring of `/logs`, keeps WARN+ log lines for
//! error analytics, and turns ops events (watchdog restarts, crash loops,
//! control actions), bans and circuit-breaker changes into timeline
//! entries. Offsets are committed after the batch is stored.

use std::time::Duration;

use serde_json::Value;
use shortlink_bus::{EventBus, Topics};
use shortlink_consumers::{commit_batch, next_batch, retry_until_ok, trace_batch};
use shortlink_proto::events::RequestEvent;
use shortlink_runtime::shutdown::Shutdown;
use std::sync::Arc;

use crate::AppState;
use crate::live::LiveEvent;
use crate::store::{self, Entry};

fn s(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The timeline entry (and incident change) an ops event makes.
pub async fn record_ops(pool: &sqlx::AnyPool, v: &Value) -> anyhow::Result<()> {
    let kind = s(v, "kind");
    let component = s(v, "component");
    let time = match s(v, "time") {
        t if t.is_empty() => store::now(),
        t => t,
    };
    let (entry_kind, severity, title) = match kind.as_str() {
        "restarted" => ("ops", "warning", format!("watchdog restarted {component}")),
        "crashlooping" => (
            "ops",
            "critical",
            format!("{component} is crash-looping; the watchdog gave up"),
        ),
        "recovered" => ("ops", "info", format!("{component} recovered")),
        "action" => (
            "chaos",
            "warning",
            format!("{} {component}", s(v, "action")),
        ),
        "backup_ok" => ("ops", "info", "backup written".to_owned()),
        "backup_failed" => ("ops", "critical", "backup failed".to_owned()),
        other => ("ops", "info", format!("{other} {component}")),
    };
    let key = format!("crashloop:{component}");
    let incident_id = match kind.as_str() {
        "crashlooping" => Some(store::open(pool, &key, &title, "critical").await?),
        "recovered" => store::close(pool, &key).await?,
        _ => None,
    };
    let detail = [s(v, "reason"), s(v, "detail")]
        .into_iter()
        .filter(|x| !x.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let detail = match v.get("restarts").and_then(Value::as_u64) {
        Some(n) if n > 0 => format!("{detail} (restarts: {n})"),
        _ => detail,
    };
    store::add_entry(
        pool,
        &Entry {
            id: store::content_id(&[&v.to_string()]),
            time,
            kind: entry_kind.into(),
            severity: severity.into(),
            component,
            title,
            detail,
            actor: s(v, "actor"),
            incident_id,
        },
    )
    .await
}

async fn store_batch(
    pool: &sqlx::AnyPool,
    requests: &[RequestEvent],
    logs: &[Value],
    ops: &[Value],
) -> anyhow::Result<()> {
    if !requests.is_empty() {
        shortlink_consumers::dashboard::write(pool, requests).await?;
    }
    for e in requests.iter().filter(|e| e.outcome == "banned") {
        let minute = shortlink_consumers::dashboard::minute_of(&e.time).unwrap_or_default();
        store::add_entry(
            pool,
            &Entry {
                id: store::content_id(&["ban", &e.client_ip, &minute]),
                time: e.time.clone(),
                kind: "ban".into(),
                severity: "warning".into(),
                component: e.edge_id.clone(),
                title: format!("banned client {} refused", e.client_ip),
                detail: format!("{} {} (first refusal this minute)", e.method, e.path),
                actor: "edge".into(),
                incident_id: None,
            },
        )
        .await?;
    }
    for v in logs {
        let (time, level, service, message) = (
            s(v, "time"),
            s(v, "level"),
            s(v, "service"),
            s(v, "message"),
        );
        store::add_log_sample(pool, &time, &level, &service, &message, &s(v, "request_id")).await?;
        if message.contains("circuit breaker") || level == "CRITICAL" {
            store::add_entry(
                pool,
                &Entry {
                    id: store::content_id(&[&v.to_string()]),
                    time,
                    kind: if message.contains("circuit breaker") {
                        "breaker".into()
                    } else {
                        "log".into()
                    },
                    severity: if level == "CRITICAL" {
                        "critical"
                    } else {
                        "warning"
                    }
                    .into(),
                    component: service,
                    title: message,
                    detail: s(v, "target"),
                    actor: s(v, "instance"),
                    incident_id: None,
                },
            )
            .await?;
        }
    }
    for v in ops {
        record_ops(pool, v).await?;
    }
    Ok(())
}

/// Consumes until shutdown.
pub async fn run(
    state: AppState,
    bus: Arc<dyn EventBus>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let args = &state.args;
    let topics = Topics::with_prefix(&args.group.bus.topic_prefix);
    let group = args.group.group_or("dashboard-ui");
    let mut sub = bus.subscribe(&group, &topics.all()).await?;
    state
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(group, "dashboard ingest started");
    let mut last_prune = std::time::Instant::now();
    while let Some(batch) = next_batch(&mut sub, 1000, Duration::from_millis(200), &shutdown).await
    {
        let _traces = trace_batch(&group, &batch);
        let (mut requests, mut logs, mut ops) = (Vec::new(), Vec::new(), Vec::new());
        for d in &batch {
            let Ok(v) = d.decode::<Value>() else {
                continue;
            };
            let kind = if d.topic == topics.requests {
                "request"
            } else if d.topic == topics.logs {
                "log"
            } else if d.topic == topics.links {
                "link"
            } else if d.topic == topics.ops {
                "ops"
            } else {
                continue;
            };
            state.live.push(LiveEvent::from_json(kind, &v));
            match kind {
                "request" => {
                    if let Ok(e) = d.decode::<RequestEvent>()
                        && !e.request_id.is_empty()
                    {
                        requests.push(e);
                    }
                }
                "log" => logs.push(v),
                "ops" => ops.push(v),
                _ => {}
            }
        }
        let ok = retry_until_ok("writing dashboard data", &shutdown, || {
            store_batch(&state.pool, &requests, &logs, &ops)
        })
        .await;
        if ok.is_none() {
            return Ok(());
        }
        commit_batch(&mut sub, &batch).await;
        if last_prune.elapsed() > Duration::from_secs(300) {
            last_prune = std::time::Instant::now();
            shortlink_consumers::dashboard::prune(&state.pool, args.raw_retention_h).await;
            store::prune(&state.pool, args.raw_retention_h).await;
        }
    }
    Ok(())
}
