//! `shortlink alerter`: turns 5xx responses and ERROR/CRITICAL logs into
//! messages on Discord-compatible webhooks (JSON embeds), and forwards
//! Alertmanager webhook POSTs the same way.
//!
//! Each webhook gets at most one message a second: the first alert of a
//! quiet period goes out alone, whatever arrives while the webhook is
//! throttled is batched and deduplicated into one summary. A 429 answer is
//! honoured (`retry_after`, seconds, or `Retry-After`) and the same message
//! is sent again. Offsets are committed after the messages carrying the
//! batch's alerts were sent. With no webhook configured the alerter logs
//! what it would have sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use shortlink_bus::{Delivery, EventBus, Topics};
use shortlink_proto::events::{LogEvent, RequestEvent};
use shortlink_runtime::retry::{Backoff, Verdict, retry};
use shortlink_runtime::shutdown::Shutdown;
use tokio::sync::{mpsc, oneshot};

use crate::{GroupArgs, Level, commit_batch, next_batch};

/// Flags of `shortlink alerter`.
#[derive(Clone, Debug, clap::Args)]
pub struct AlerterArgs {
    #[command(flatten)]
    pub group: GroupArgs,
    /// Discord-compatible webhook URLs, comma-separated. Unset: log only.
    /// Secret (the token is in the URL): never shown by --help or in logs.
    #[arg(
        long,
        env = "ALERT_WEBHOOK_URLS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub webhook_urls: Vec<String>,
    /// Listener for Alertmanager webhooks (POST /alertmanager).
    #[arg(long, env = "ALERTER_HTTP_ADDR", default_value = "127.0.0.1:9183")]
    pub http_addr: SocketAddr,
    /// Shortest time between two messages to one webhook, in milliseconds.
    #[arg(long, env = "ALERT_MIN_INTERVAL_MS", default_value_t = 1000)]
    pub min_interval_ms: u64,
    /// User-Agent of webhook requests.
    #[arg(long, env = "ALERT_USER_AGENT", default_value = concat!("shortlink-alerter/", env!("CARGO_PKG_VERSION")))]
    pub user_agent: String,
}

/// One alert.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// Alerts with the same key are the same problem (deduplicated).
    pub key: String,
    pub title: String,
    pub description: String,
    pub level: Level,
    pub fields: Vec<(String, String)>,
    pub time: String,
}

fn color(level: Level) -> u32 {
    match level {
        Level::Critical => 0x8b_0000,
        Level::Error => 0xe7_4c3c,
        Level::Warn => 0xf1_c40f,
        Level::Info => 0x34_98db,
    }
}

/// The alert an event calls for, if any.
pub fn alert_for(topics: &Topics, d: &Delivery) -> Option<Alert> {
    if d.topic == topics.requests {
        let e: RequestEvent = d.decode().ok()?;
        if e.status < 500 {
            return None;
        }
        Some(Alert {
            key: format!("http {} {} {}", e.status, e.method, e.route),
            title: format!("{} on {} {}", e.status, e.method, e.route),
            description: format!(
                "{} answered {} ({}) in {:.1} ms",
                e.edge_id, e.status, e.outcome, e.duration_ms
            ),
            level: Level::Error,
            fields: vec![
                ("request_id".into(), e.request_id),
                ("path".into(), e.path),
                (
                    "upstream".into(),
                    if e.upstream.is_empty() {
                        "-".into()
                    } else {
                        e.upstream
                    },
                ),
            ],
            time: e.time,
        })
    } else if d.topic == topics.logs {
        let e: LogEvent = d.decode().ok()?;
        let level = Level::parse(&e.level)?;
        if level < Level::Error {
            return None;
        }
        Some(Alert {
            key: format!("log {} {} {}", e.service, e.level, e.message),
            title: format!("{} in {}", e.level, e.service),
            description: e.message.chars().take(1500).collect(),
            level,
            fields: vec![
                ("instance".into(), e.instance),
                ("request_id".into(), e.request_id),
            ],
            time: e.time,
        })
    } else {
        None
    }
}

/// The webhook body: one embed for one alert, a deduplicated summary for
/// several.
pub fn message(alerts: &[Alert]) -> Value {
    let embed = if let [a] = alerts {
        json!({
            "title": a.title,
            "description": a.description,
            "color": color(a.level),
            "timestamp": a.time,
            "fields": a.fields.iter().filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| json!({"name": k, "value": v, "inline": true})).collect::<Vec<_>>(),
        })
    } else {
        let mut groups: BTreeMap<&str, (usize, &Alert)> = BTreeMap::new();
        for a in alerts {
            groups.entry(a.key.as_str()).or_insert((0, a)).0 += 1;
        }
        let worst = alerts.iter().map(|a| a.level).max().unwrap_or(Level::Error);
        let mut lines: Vec<String> = groups
            .values()
            .map(|(n, a)| format!("{n}× {}", a.title))
            .collect();
        let more = lines.len().saturating_sub(20);
        lines.truncate(20);
        if more > 0 {
            lines.push(format!("…and {more} more kinds"));
        }
        json!({
            "title": format!("{} alerts ({} kinds)", alerts.len(), groups.len()),
            "description": lines.join("\n"),
            "color": color(worst),
            "timestamp": alerts.last().map(|a| a.time.clone()).unwrap_or_default(),
        })
    };
    json!({"username": "shortlink alerter", "embeds": [embed]})
}

type Job = (Vec<Alert>, oneshot::Sender<()>);

/// Attempts per message: a 5xx or a network error waits 1 s, 2 s, 3 s,
/// 4 s before the next; a 429 waits as long as the webhook says.
const WEBHOOK_RETRY: Backoff =
    Backoff::linear(Duration::from_secs(1), Duration::from_secs(4)).attempts(5);

/// Why one POST to a webhook did not deliver.
#[derive(Debug)]
enum SendError {
    /// 429: try again after this long.
    RateLimited(Duration),
    /// Another non-success status.
    Refused(reqwest::StatusCode),
    /// No answer. The error is stripped of its URL (the token is in it).
    Unreachable(reqwest::Error),
}

async fn send_once(client: &reqwest::Client, url: &str, body: &Value) -> Result<(), SendError> {
    let r = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| SendError::Unreachable(e.without_url()))?;
    if r.status().is_success() {
        return Ok(());
    }
    if r.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(SendError::Refused(r.status()));
    }
    let header = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let secs = body["retry_after"]
        .as_f64()
        .or(header)
        .unwrap_or(1.0)
        .clamp(0.05, 60.0);
    Err(SendError::RateLimited(Duration::from_secs_f64(secs)))
}

/// One webhook's sender: throttled, 429-aware. Logs name the webhook by its
/// origin only: the rest of a webhook URL is its secret.
async fn sender(
    url: String,
    client: reqwest::Client,
    min_interval: Duration,
    mut rx: mpsc::Receiver<Job>,
) {
    let label = shortlink_runtime::redact::url_origin(&url);
    let mut last: Option<Instant> = None;
    while let Some((mut alerts, ack)) = rx.recv().await {
        let mut acks = vec![ack];
        if let Some(t) = last {
            let wait = min_interval.saturating_sub(t.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        // Whatever queued up while throttled joins this message.
        while let Ok((more, ack)) = rx.try_recv() {
            alerts.extend(more);
            acks.push(ack);
        }
        let body = message(&alerts);
        let sent = retry(
            &WEBHOOK_RETRY,
            None,
            || send_once(&client, &url, &body),
            |e, a| match e {
                SendError::RateLimited(wait) => {
                    tracing::warn!(
                        webhook = %label,
                        retry_after_s = wait.as_secs_f64(),
                        attempt = a.number,
                        "webhook rate limited; waiting"
                    );
                    Verdict::RetryAfter(*wait)
                }
                SendError::Refused(status) => {
                    tracing::error!(webhook = %label, status = %status, attempt = a.number, "webhook refused the alert");
                    if status.is_client_error() {
                        Verdict::GiveUp
                    } else {
                        Verdict::Retry
                    }
                }
                SendError::Unreachable(e) => {
                    tracing::error!(webhook = %label, error = %e, attempt = a.number, "webhook unreachable");
                    Verdict::Retry
                }
            },
        )
        .await;
        if sent.is_err() {
            tracing::warn!(webhook = %label, alerts = alerts.len(), "alert not delivered; giving up on this message");
        }
        last = Some(Instant::now());
        for a in acks {
            let _ = a.send(());
        }
    }
}

/// Hands alerts to every webhook sender; returns when all have sent them.
#[derive(Clone)]
struct Dispatch {
    senders: Vec<mpsc::Sender<Job>>,
}

impl Dispatch {
    async fn send(&self, alerts: Vec<Alert>) {
        if alerts.is_empty() {
            return;
        }
        if self.senders.is_empty() {
            tracing::info!(message = %message(&alerts), "no webhook configured; would send");
            return;
        }
        let mut waits = Vec::new();
        for s in &self.senders {
            let (tx, rx) = oneshot::channel();
            if s.send((alerts.clone(), tx)).await.is_ok() {
                waits.push(rx);
            }
        }
        for w in waits {
            let _ = w.await;
        }
    }
}

fn alertmanager_alerts(v: &Value) -> Vec<Alert> {
    v["alerts"]
        .as_array()
        .map(|alerts| {
            alerts
                .iter()
                .map(|a| {
                    let name = a["labels"]["alertname"]
                        .as_str()
                        .unwrap_or("alert")
                        .to_owned();
                    let status = a["status"].as_str().unwrap_or("firing").to_owned();
                    let severity = a["labels"]["severity"].as_str().unwrap_or("warning");
                    let level = if status == "resolved" {
                        Level::Info
                    } else {
                        Level::parse(severity).unwrap_or(Level::Warn)
                    };
                    let summary = a["annotations"]["summary"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    let description = a["annotations"]["description"]
                        .as_str()
                        .unwrap_or(&summary)
                        .to_owned();
                    // Where it is and what to read: the labels that name the
                    // target, and the runbook.
                    let mut fields = vec![("severity".to_owned(), severity.to_owned())];
                    for label in ["component", "instance", "job", "route", "group"] {
                        if let Some(v) = a["labels"][label].as_str() {
                            fields.push((label.to_owned(), v.chars().take(200).collect()));
                        }
                    }
                    if let Some(r) = a["annotations"]["runbook_url"].as_str() {
                        fields.push(("runbook".to_owned(), r.chars().take(300).collect()));
                    }
                    let time = if status == "resolved" {
                        a["endsAt"].as_str()
                    } else {
                        a["startsAt"].as_str()
                    };
                    Alert {
                        key: format!("am {name} {status}"),
                        title: format!("[{}] {name}", status.to_ascii_uppercase()),
                        description,
                        level,
                        fields,
                        time: time.unwrap_or("").to_owned(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn alertmanager(
    State(d): State<Dispatch>,
    body: axum::body::Bytes,
) -> (StatusCode, axum::Json<Value>) {
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": format!("malformed JSON: {e}")})),
            );
        }
    };
    let alerts = alertmanager_alerts(&v);
    if alerts.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "alerts is required"})),
        );
    }
    let n = alerts.len();
    d.send(alerts).await;
    (StatusCode::OK, axum::Json(json!({"forwarded": n})))
}

/// Runs until shutdown.
pub async fn run(
    args: AlerterArgs,
    bus: Arc<dyn EventBus>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .user_agent(args.user_agent.clone())
        .timeout(Duration::from_secs(10))
        .build()?;
    let min_interval = Duration::from_millis(args.min_interval_ms);
    let mut senders = Vec::new();
    for url in args.webhook_urls.iter().filter(|u| !u.trim().is_empty()) {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(sender(
            url.trim().to_owned(),
            client.clone(),
            min_interval,
            rx,
        ));
        senders.push(tx);
    }
    let dispatch = Dispatch { senders };

    let app = Router::new()
        .route("/alertmanager", post(alertmanager))
        .with_state(dispatch.clone());
    crate::serve_http(args.http_addr, "ALERTER_HTTP_ADDR", app, shutdown.clone()).await?;

    let topics = Topics::with_prefix(&args.group.bus.topic_prefix);
    let group = args.group.group_or("alerter");
    let mut sub = bus
        .subscribe(&group, &[topics.requests.clone(), topics.logs.clone()])
        .await?;
    tracing::info!(group, webhooks = dispatch.senders.len(), "alerter started");
    while let Some(batch) = next_batch(&mut sub, 500, Duration::from_millis(50), &shutdown).await {
        let alerts: Vec<Alert> = batch.iter().filter_map(|d| alert_for(&topics, d)).collect();
        tokio::select! {
            () = dispatch.send(alerts) => {}
            () = shutdown.wait() => return Ok(()),
        }
        commit_batch(&mut sub, &batch).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(key: &str) -> Alert {
        Alert {
            key: key.into(),
            title: format!("t {key}"),
            description: "d".into(),
            level: Level::Error,
            fields: vec![("request_id".into(), "r".into())],
            time: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn one_alert_is_an_embed_several_are_a_deduplicated_summary() {
        let one = message(&[alert("a")]);
        assert_eq!(one["embeds"][0]["title"], "t a");
        let many = message(&[alert("a"), alert("a"), alert("b")]);
        assert_eq!(many["embeds"][0]["title"], "3 alerts (2 kinds)");
        assert_eq!(many["embeds"][0]["description"], "2× t a\n1× t b");
    }

    #[test]
    fn alertmanager_payloads_become_alerts() {
        let v = json!({"alerts": [{"status": "firing", "labels": {"alertname": "EdgeDown", "severity": "critical"},
            "annotations": {"summary": "edge down"}, "startsAt": "2026-01-01T00:00:00Z"}]});
        let a = alertmanager_alerts(&v);
        assert_eq!(a[0].title, "[FIRING] EdgeDown");
        assert_eq!(a[0].level, Level::Critical);
    }

    #[test]
    fn alertmanager_alerts_name_their_target_and_runbook() {
        let v = json!({"alerts": [{"status": "resolved",
            "labels": {"alertname": "ShortlinkTargetDown", "severity": "warning", "job": "links",
                       "instance": "links-2:9181", "component": "links"},
            "annotations": {"summary": "s", "description": "links-2 down",
                            "runbook_url": "docs/RUNBOOKS.md#shortlinktargetdown"},
            "startsAt": "2026-01-01T00:00:00Z", "endsAt": "2026-01-01T00:05:00Z"}]});
        let a = &alertmanager_alerts(&v)[0];
        assert_eq!(a.title, "[RESOLVED] ShortlinkTargetDown");
        assert_eq!(a.level, Level::Info);
        assert_eq!(
            a.time, "2026-01-01T00:05:00Z",
            "a resolution is dated by its end"
        );
        let f: Vec<(&str, &str)> = a
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            f,
            [
                ("severity", "warning"),
                ("component", "links"),
                ("instance", "links-2:9181"),
                ("job", "links"),
                ("runbook", "docs/RUNBOOKS.md#shortlinktargetdown"),
            ]
        );
        let embed = &message(std::slice::from_ref(a))["embeds"][0];
        assert_eq!(embed["fields"][2]["value"], "links-2:9181");
    }
}
