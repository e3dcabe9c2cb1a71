//! `shortlink log-printer`: every event as one line on stdout, human-readable
//! or JSON, filtered by level (request events: 5xx is ERROR, 4xx WARN).

use std::io::Write;
use std::sync::Arc;

use serde_json::{Value, json};
use shortlink_bus::{Delivery, EventBus, Topics};
use shortlink_proto::events::{LinkEvent, LogEvent, OpsEvent, RequestEvent};
use shortlink_runtime::config::ConfigError;
use shortlink_runtime::shutdown::Shutdown;

use crate::{GroupArgs, Level};

/// Flags of `shortlink log-printer`.
#[derive(Clone, Debug, clap::Args)]
pub struct LogPrinterArgs {
    #[command(flatten)]
    pub group: GroupArgs,
    /// Line format: text or json.
    #[arg(long, env = "PRINT_FORMAT", default_value = "text")]
    pub format: String,
    /// Lowest level printed: info, warn, error or critical.
    #[arg(long, env = "PRINT_MIN_LEVEL", default_value = "info")]
    pub min_level: String,
}

/// Formats one event; `None` when it is below `min` or unreadable.
pub fn format_event(topics: &Topics, d: &Delivery, json_lines: bool, min: Level) -> Option<String> {
    let (level, text, value): (Level, String, Value) = if d.topic == topics.requests {
        let e: RequestEvent = d.decode().ok()?;
        let level = match e.status {
            500.. => Level::Error,
            400..=499 => Level::Warn,
            _ => Level::Info,
        };
        let text = format!(
            "{} {:<5} {} {} {} {} {:.1}ms {} rid={}",
            e.time,
            level.as_str(),
            e.edge_id,
            e.method,
            e.path,
            e.status,
            e.duration_ms,
            e.outcome,
            e.request_id
        );
        (level, text, serde_json::to_value(&e).ok()?)
    } else if d.topic == topics.links {
        let e: LinkEvent = d.decode().ok()?;
        let text = format!(
            "{} INFO  link {} {} id={} rid={}",
            e.time, e.kind, e.short_code, e.link_id, e.request_id
        );
        (Level::Info, text, serde_json::to_value(&e).ok()?)
    } else if d.topic == topics.logs {
        let e: LogEvent = d.decode().ok()?;
        let level = Level::parse(&e.level).unwrap_or(Level::Warn);
        let text = format!(
            "{} {:<5} {}/{} {} rid={}",
            e.time,
            level.as_str(),
            e.service,
            e.instance,
            e.message,
            e.request_id
        );
        (level, text, serde_json::to_value(&e).ok()?)
    } else if d.topic == topics.ops {
        let e: OpsEvent = d.decode().ok()?;
        let level = Level::parse(&e.level).unwrap_or(Level::Info);
        let what = if e.action.is_empty() {
            e.kind.clone()
        } else {
            format!("{} {}", e.kind, e.action)
        };
        let text = format!(
            "{} {:<5} ops {} {} by {} restarts={} {}{}",
            e.time,
            level.as_str(),
            what,
            e.component,
            e.actor,
            e.restarts,
            e.reason,
            if e.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", e.detail)
            }
        );
        (level, text, serde_json::to_value(&e).ok()?)
    } else {
        return None;
    };
    if level < min {
        return None;
    }
    Some(if json_lines {
        json!({"topic": d.topic, "level": level.as_str(), "event": value}).to_string()
    } else {
        text
    })
}

/// Prints until shutdown.
pub async fn run(
    args: LogPrinterArgs,
    bus: Arc<dyn EventBus>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let json_lines = match args.format.as_str() {
        "json" => true,
        "text" => false,
        other => {
            return Err(ConfigError::new(format!(
                "PRINT_FORMAT must be text or json, not {other:?}"
            ))
            .into());
        }
    };
    let min = Level::parse(&args.min_level)
        .ok_or_else(|| ConfigError::new("PRINT_MIN_LEVEL must be info, warn, error or critical"))?;
    let topics = Topics::with_prefix(&args.group.bus.topic_prefix);
    let group = args.group.group_or("log-printer");
    let mut sub = bus.subscribe(&group, &topics.all()).await?;
    tracing::info!(group, "log printer started");
    while let Some(batch) = crate::next_batch(
        &mut sub,
        500,
        std::time::Duration::from_millis(100),
        &shutdown,
    )
    .await
    {
        {
            let mut out = std::io::stdout().lock();
            for d in &batch {
                if let Some(line) = format_event(&topics, d, json_lines, min) {
                    writeln!(out, "{line}")?;
                }
            }
            out.flush()?;
        }
        crate::commit_batch(&mut sub, &batch).await;
    }
    Ok(())
}
