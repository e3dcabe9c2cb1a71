//! The event pipeline's consumers. Each is its own subcommand and its own
//! consumer group, and commits offsets only after processing
//! (at-least-once); every handler is idempotent enough that a redelivered
//! event does no harm.
//!
//! - `log_printer`: events as human-readable or JSON lines on stdout.
//! - `alerter`: 5xx responses and ERROR/CRITICAL logs to Discord-compatible
//!   webhooks, throttled per webhook, plus Alertmanager webhooks.
//! - `dashboard`: a ring buffer of recent events and per-minute aggregates
//!   in the dashboard database.
//! - `analytics`: click events and per-link counts into the app database
//!   (through the links service), in batches.

pub mod alerter;
pub mod analytics;
pub mod dashboard;
pub mod log_printer;

use std::time::Duration;

use shortlink_bus::{BusArgs, Delivery, Subscription};
use shortlink_runtime::retry::{Backoff, Verdict, retry, sleep_unless};
use shortlink_runtime::shutdown::Shutdown;

/// Settings every consumer shares.
#[derive(Clone, Debug, clap::Args)]
pub struct GroupArgs {
    #[command(flatten)]
    pub bus: BusArgs,
    /// Consumer group (default: shortlink-<consumer>).
    #[arg(long, env = "CONSUMER_GROUP")]
    pub group: Option<String>,
    /// Where to serve `/metrics` (the bus's metrics: events published and
    /// dropped, queue depth, this group's lag per topic and partition) and
    /// `/live`. Unset: no metrics listener.
    #[arg(long = "metrics-addr", env = "CONSUMER_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl GroupArgs {
    pub fn group_or(&self, default: &str) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("shortlink-{default}"))
    }
}

/// Severity of an event, for filtering and alerting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Info,
    Warn,
    Error,
    Critical,
}

impl Level {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Some(Level::Info),
            "warn" | "warning" => Some(Level::Warn),
            "error" => Some(Level::Error),
            "critical" => Some(Level::Critical),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
        }
    }
}

/// Serves `router` (plus `GET /live`) on `addr` until shutdown: the small
/// HTTP listener of the alerter and the dashboard ingest.
pub async fn serve_http(
    addr: std::net::SocketAddr,
    what: &str,
    router: axum::Router,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let router = router.merge(shortlink_runtime::side_port::live_router());
    shortlink_runtime::side_port::spawn_serve(addr, what, router, shutdown).await?;
    Ok(())
}

/// Serves `GET /metrics` (Prometheus text), `/live` and `/ready` on `addr`
/// until shutdown: `CONSUMER_METRICS_ADDR`.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: std::sync::Arc<shortlink_runtime::metrics::Metrics>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let router = shortlink_runtime::side_port::metrics_router(metrics);
    shortlink_runtime::side_port::spawn_serve(addr, "CONSUMER_METRICS_ADDR", router, shutdown)
        .await?;
    Ok(())
}

/// Collects a batch: waits for a first event (or shutdown), then takes what
/// arrives within `wait`, up to `max`.
pub async fn next_batch(
    sub: &mut Box<dyn Subscription>,
    max: usize,
    wait: Duration,
    shutdown: &Shutdown,
) -> Option<Vec<Delivery>> {
    // Waiting for an event may take for ever, so the wait itself races
    // the signal; a failed consume waits as CONSUME_RETRY says.
    let mut delays = CONSUME_RETRY.delays();
    let first = loop {
        tokio::select! {
            d = sub.next() => match d {
                Ok(d) => break d,
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(1));
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "consume failed; retrying");
                    if !sleep_unless(Some(shutdown), delay).await {
                        return None;
                    }
                }
            },
            () = shutdown.wait() => return None,
        }
    };
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + wait;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Ok(d)) => batch.push(d),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    Some(batch)
}

/// One consumer span per delivery that carries a trace context (the
/// `traceparent` header), open while the batch is processed and committed:
/// the group's handling of the event appears in the request's trace. Empty
/// when spans are not exported.
pub fn trace_batch(group: &str, batch: &[Delivery]) -> Vec<tracing::Span> {
    batch
        .iter()
        .filter_map(|d| {
            let tp = d.traceparent.as_deref()?;
            let span = shortlink_runtime::telemetry::consumer_span(group, &d.topic, Some(tp));
            (!span.is_none()).then_some(span)
        })
        .collect()
}

/// Commits the last delivery of each topic partition in `batch`.
pub async fn commit_batch(sub: &mut Box<dyn Subscription>, batch: &[Delivery]) {
    let mut last: std::collections::HashMap<(&str, i32), &Delivery> =
        std::collections::HashMap::new();
    for d in batch {
        let e = last.entry((d.topic.as_str(), d.partition)).or_insert(d);
        if d.offset > e.offset {
            *e = d;
        }
    }
    for d in last.values() {
        if let Err(e) = sub.commit(d).await {
            tracing::warn!(error = %e, "commit failed; events may be seen again");
        }
    }
}

/// How a consumer retries a failed consume (the broker is away).
pub const CONSUME_RETRY: Backoff = Backoff::constant(Duration::from_secs(1));

/// How a consumer retries a failed processing step (its database or the
/// links service is away): the batch is not committed until it succeeds.
pub const STEP_RETRY: Backoff =
    Backoff::exponential(Duration::from_millis(200), Duration::from_secs(5));

/// Retries `f` as `STEP_RETRY` says until it succeeds; `None` at shutdown.
pub async fn retry_until_ok<F, Fut, T>(what: &str, shutdown: &Shutdown, f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    retry(&STEP_RETRY, Some(shutdown), f, |e, a| {
        tracing::warn!(
            error = format!("{e:#}"),
            what,
            attempt = a.number,
            retry_in_ms = a.delay.as_millis() as u64,
            "failed; retrying"
        );
        Verdict::Retry
    })
    .await
    .ok()
}
