//! `/logs`: the event stream live (requests, WARN+ logs, link events, ops
//! events) over server-sent events, filtered on the server by level,
//! kind, component, status, route and request id. A request id links to
//! `/logs?request_id=…`, which adds what the dashboard database knows
//! about that request (its row, its error sample, its log lines).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use maud::{Markup, html};

use super::{layout, unavailable, when};
use crate::AppState;
use crate::chart::fmt;
use crate::live::{Filter, LiveEvent};

const HISTORY: usize = 200;

fn row(e: &LiveEvent) -> Markup {
    html! {
        tr class=(format!("lv-{}", e.level.to_ascii_lowercase())) data-seq=(e.seq) {
            td { (when(&e.time)) }
            td { span.level { (e.level) } }
            td { (e.kind) }
            td { (e.component) }
            td.num { @if e.status > 0 { (e.status) } }
            td { code { (e.route) } }
            td { @if !e.request_id.is_empty() { a.rid href=(format!("/logs?request_id={}", e.request_id)) { (e.request_id) } } }
            td.msg { (e.text) }
        }
    }
}

type ReqRow = (String, String, i64, f64);

async fn about(s: &AppState, rid: &str) -> anyhow::Result<Markup> {
    let req: Option<ReqRow> = sqlx::query_as(
        "SELECT minute, route, status, duration_ms FROM dash_requests WHERE request_id = $1",
    )
    .bind(rid)
    .fetch_optional(&s.pool)
    .await?;
    let sample: Option<(String, String, String, String)> = sqlx::query_as(
        "SELECT time, path, outcome, upstream FROM dash_error_samples WHERE request_id = $1",
    )
    .bind(rid)
    .fetch_optional(&s.pool)
    .await?;
    let logs: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT time, level, service, message FROM dash_log_samples WHERE request_id = $1 ORDER BY time LIMIT 50",
    )
    .bind(rid)
    .fetch_all(&s.pool)
    .await?;
    Ok(html! {
        section.card #request {
            h2 { "Request " code { (rid) } }
            @match &req {
                Some((minute, route, status, ms)) => p { "Stored: " code { (route) } " → " strong { (status) } " in " (fmt(*ms, "ms")) ", minute " (when(minute)) "." },
                None => p.muted { "Not in the dashboard database (older than the raw retention, or not a request id)." },
            }
            @if let Some((t, path, outcome, upstream)) = &sample {
                p.bad { "Error sample: " code { (path) } " " (outcome) " via " (if upstream.is_empty() { "no replica" } else { upstream }) " at " (when(t)) }
            }
            @for (t, level, service, msg) in &logs {
                p { (when(t)) " " span.level { (level) } " " (service) ": " (msg) }
            }
            p.muted { "Live events with this id follow below (the recent ones from the ring buffer first)." }
        }
    })
}

pub async fn page(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(f): Query<Filter>,
) -> Response {
    let history = s.live.recent(&f, HISTORY);
    let detail = if f.request_id.trim().is_empty() {
        None
    } else {
        Some(
            about(&s, f.request_id.trim())
                .await
                .unwrap_or_else(|e| unavailable("This request's stored data", &e)),
        )
    };
    let body = html! {
        div.head { h1 { "Live logs" } span #live-state.good { "live" } }
        form.filters #filters method="get" action="/logs" {
            label { "level ≥ " select name="level" {
                @for l in ["", "info", "warn", "error"] { option value=(l) selected[f.level == l] { (if l.is_empty() { "any" } else { l }) } }
            } }
            label { "kind " select name="kind" {
                @for k in ["", "request", "log", "link", "ops"] { option value=(k) selected[f.kind == k] { (if k.is_empty() { "any" } else { k }) } }
            } }
            label { "component " input name="component" value=(f.component) size="10" placeholder="edge-1"; }
            label { "status " input name="status" value=(f.status) size="4" placeholder="5xx"; }
            label { "route " input name="route" value=(f.route) size="12" placeholder="/{short_code}"; }
            label { "request id " input #f-rid name="request_id" value=(f.request_id) size="24"; }
            button type="submit" { "Apply" }
            a href="/logs" { "clear" }
            button #pause type="button" { "Pause" }
            span.muted #counter { (history.len()) " events" }
        }
        @if let Some(d) = detail { (d) }
        table.logs {
            thead { tr { th { "time (UTC)" } th { "level" } th { "kind" } th { "component" } th.num { "status" } th { "route" } th { "request id" } th { "message" } } }
            tbody #log-rows data-stream=(format!("/logs/stream?{}", serde_urlencoded_filter(&f))) {
                @for e in history.iter().rev() { (row(e)) }
            }
        }
    };
    layout(&s, &headers, "Live logs", "/logs", body)
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn serde_urlencoded_filter(f: &Filter) -> String {
    [
        ("level", &f.level),
        ("kind", &f.kind),
        ("component", &f.component),
        ("status", &f.status),
        ("route", &f.route),
        ("request_id", &f.request_id),
    ]
    .iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k}={}", enc(v)))
    .collect::<Vec<_>>()
    .join("&")
}

/// The live stream: each matching event as an SSE `message` whose data is
/// the rendered table row (the page inserts it) and whose id is its
/// sequence number. A client that falls behind gets a `lagged` event.
pub async fn stream(
    State(s): State<AppState>,
    Query(f): Query<Filter>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = s.live.subscribe();
    let stop = s.shutdown.clone();
    let st = futures::stream::unfold((rx, f, stop), |(mut rx, f, stop)| async move {
        loop {
            let next = tokio::select! {
                r = rx.recv() => r,
                () = stop.wait() => return None,
            };
            match next {
                Ok(e) if f.matches(&e) => {
                    let ev = Event::default()
                        .id(e.seq.to_string())
                        .data(row(&e).into_string());
                    return Some((Ok(ev), (rx, f, stop)));
                }
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let ev = Event::default().event("lagged").data(n.to_string());
                    return Some((Ok(ev), (rx, f, stop)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(st).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
