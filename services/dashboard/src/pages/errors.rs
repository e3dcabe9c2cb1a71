//! `/errors`: error analytics from the dashboard database: 4xx and 5xx
//! per minute by status, by route and by component (the edge and the
//! replica that answered), and the top WARN+ log messages with sample
//! request ids, over a selectable range (15 min to 24 h).

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{Markup, html};

use super::{Range, layout, range_picker, unavailable, when};
use crate::AppState;
use crate::chart::{self, Series, fmt};

#[derive(serde::Deserialize, Default)]
pub struct Q {
    range: Option<String>,
}

const COLORS: &[&str] = &[
    "#ff6b6b", "#f2c14e", "#c792ea", "#ff9e64", "#89ddff", "#e06c75",
];

async fn body(s: &AppState, r: Range) -> anyhow::Result<Markup> {
    let since_min = (chrono::Utc::now() - chrono::Duration::minutes(r.minutes))
        .format("%Y-%m-%dT%H:%M:00Z")
        .to_string();
    let since = crate::store::ago(r.minutes);
    let by_status: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT minute, status, CAST(SUM(count) AS BIGINT) FROM dash_minute_status WHERE minute >= $1 AND status >= 400 \
         GROUP BY minute, status ORDER BY minute LIMIT 20000",
    )
    .bind(&since_min)
    .fetch_all(&s.pool)
    .await?;
    let by_route: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT route, status, CAST(SUM(count) AS BIGINT) FROM dash_minute_status WHERE minute >= $1 AND status >= 400 \
         GROUP BY route, status ORDER BY SUM(count) DESC LIMIT 50",
    )
    .bind(&since_min)
    .fetch_all(&s.pool)
    .await?;
    let by_component: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT edge_id, upstream, COUNT(*) FROM dash_error_samples WHERE time >= $1 \
         GROUP BY edge_id, upstream ORDER BY COUNT(*) DESC LIMIT 50",
    )
    .bind(&since)
    .fetch_all(&s.pool)
    .await?;
    let samples: Vec<(String, String, String, i64, String, String)> = sqlx::query_as(
        "SELECT request_id, time, path, status, outcome, upstream FROM dash_error_samples WHERE time >= $1 \
         ORDER BY time DESC LIMIT 20",
    )
    .bind(&since)
    .fetch_all(&s.pool)
    .await?;
    let top: Vec<(String, String, i64, String, String)> = sqlx::query_as(
        "SELECT message, service, COUNT(*), MAX(time), MAX(request_id) FROM dash_log_samples WHERE time >= $1 \
         GROUP BY message, service ORDER BY COUNT(*) DESC LIMIT 15",
    )
    .bind(&since)
    .fetch_all(&s.pool)
    .await?;
    let mut series: BTreeMap<i64, Vec<(i64, f64)>> = BTreeMap::new();
    for (m, st, n) in &by_status {
        let t = chrono::DateTime::parse_from_rfc3339(m)
            .map(|d| d.timestamp())
            .unwrap_or(0);
        series.entry(*st).or_default().push((t, *n as f64));
    }
    // 5xx first (bottom of the stack), then 4xx.
    let mut ordered: Vec<(i64, Vec<(i64, f64)>)> = series.into_iter().collect();
    ordered.sort_by_key(|(st, _)| (*st < 500, *st));
    let total5: f64 = by_status
        .iter()
        .filter(|r| r.1 >= 500)
        .map(|r| r.2 as f64)
        .sum();
    let total4: f64 = by_status
        .iter()
        .filter(|r| r.1 < 500)
        .map(|r| r.2 as f64)
        .sum();
    let t1 = chrono::Utc::now().timestamp();
    let t0 = t1 - r.minutes * 60;
    Ok(html! {
        p.source { "Source: the dashboard database (per-minute status counts, 5xx samples, WARN+ log lines); samples are kept for the raw retention (DASHBOARD_RAW_RETENTION_H)." }
        div.cards {
            div.card { h3 { "5xx responses" } p.big.bad[total5 > 0.0] #total-5xx { (fmt(total5, "")) } p.muted { "in the last " (r.name) } }
            div.card { h3 { "4xx responses" } p.big { (fmt(total4, "")) } p.muted { "in the last " (r.name) } }
        }
        div.charts {
            (chart::bars("Errors per minute by status", "responses/min", t0, t1, 60,
                &ordered.into_iter().enumerate().map(|(i, (st, pts))| Series { name: st.to_string(), color: if st >= 500 { COLORS[i % 2] } else { COLORS[2 + i % 4] }, points: pts }).collect::<Vec<_>>()))
        }
        div.cols {
            section {
                h2 { "By route and status" }
                table #by-route {
                    thead { tr { th { "route" } th.num { "status" } th.num { "responses" } } }
                    tbody {
                        @for (route, st, n) in &by_route { tr { td { code { (route) } } td.num.bad[*st >= 500] { (st) } td.num { (n) } } }
                        @if by_route.is_empty() { tr { td.muted colspan="3" { "No errors in this range." } } }
                    }
                }
            }
            section {
                h2 { "5xx by component" }
                table {
                    thead { tr { th { "edge" } th { "replica" } th.num { "5xx" } } }
                    tbody {
                        @for (edge, up, n) in &by_component { tr { td { (edge) } td { (if up.is_empty() { "(none answered)" } else { up }) } td.num { (n) } } }
                        @if by_component.is_empty() { tr { td.muted colspan="3" { "No 5xx in this range." } } }
                    }
                }
            }
        }
        h2 { "Top error messages (WARN and above)" }
        table {
            thead { tr { th.num { "count" } th { "service" } th { "message" } th { "last seen" } th { "a request id" } } }
            tbody {
                @for (msg, service, n, last, rid) in &top {
                    tr { td.num { (n) } td { (service) } td.msg { (msg) } td { (when(last)) }
                         td { @if !rid.is_empty() { a.rid href=(format!("/logs?request_id={rid}")) { (rid) } } } }
                }
                @if top.is_empty() { tr { td.muted colspan="5" { "No WARN or ERROR lines in this range." } } }
            }
        }
        h2 { "Latest 5xx samples" }
        table #samples {
            thead { tr { th { "time" } th.num { "status" } th { "path" } th { "outcome" } th { "replica" } th { "request id" } } }
            tbody {
                @for (rid, t, path, st, outcome, up) in &samples {
                    tr { td { (when(t)) } td.num.bad { (st) } td { code { (path) } } td { (outcome) } td { (up) }
                         td { a.rid href=(format!("/logs?request_id={rid}")) { (rid) } } }
                }
                @if samples.is_empty() { tr { td.muted colspan="6" { "No 5xx samples in this range." } } }
            }
        }
    })
}

pub async fn page(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<Q>) -> Response {
    let r = Range::parse(q.range.as_deref(), 1440);
    let b = body(&s, r)
        .await
        .unwrap_or_else(|e| unavailable("Error analytics", &e));
    let b = html! {
        div.head { h1 { "Error analytics" } (range_picker("/errors", r, 1440)) }
        (b)
    };
    layout(&s, &headers, "Errors", "/errors", b)
}
