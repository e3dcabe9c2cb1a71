//! `/`: the golden signals (latency, traffic, errors, saturation) for the
//! whole system and per component, over 15 min / 1 h / 6 h. From
//! Prometheus when PROMETHEUS_URL is set; otherwise from the dashboard
//! database's per-minute aggregates (the page says which).

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{Markup, html};

use super::{Range, layout, range_picker, unavailable};
use crate::AppState;
use crate::chart::{self, Series, fmt};
use crate::prom;

#[derive(serde::Deserialize, Default)]
pub struct Q {
    range: Option<String>,
}

const P50: &str = "#6cb6ff";
const P95: &str = "#f2c14e";
const P99: &str = "#ff6b6b";
const OK: &str = "#5ad17a";
const C4XX: &str = "#f2c14e";
const C5XX: &str = "#ff6b6b";

fn minute_ts(m: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(m)
        .map(|d| d.timestamp())
        .unwrap_or(0)
}

fn cutoff_minute(mins: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::minutes(mins))
        .format("%Y-%m-%dT%H:%M:00Z")
        .to_string()
}

type StatRow = (String, String, i64, i64, f64, f64, f64);

async fn from_db(s: &AppState, r: Range) -> anyhow::Result<Markup> {
    let since = cutoff_minute(r.minutes);
    let rows: Vec<StatRow> = sqlx::query_as(
        "SELECT minute, route, requests, errors, p50_ms, p95_ms, p99_ms FROM dash_minute_stats \
         WHERE minute >= $1 ORDER BY minute LIMIT 20000",
    )
    .bind(&since)
    .fetch_all(&s.pool)
    .await?;
    let statuses: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT minute, status, CAST(SUM(count) AS BIGINT) FROM dash_minute_status WHERE minute >= $1 \
         GROUP BY minute, status ORDER BY minute LIMIT 20000",
    )
    .bind(&since)
    .fetch_all(&s.pool)
    .await?;
    // Whole system per minute: requests, and latency percentiles weighted
    // by each route's requests (an approximation: percentiles do not add).
    let mut per_min: BTreeMap<i64, (f64, [f64; 3])> = BTreeMap::new();
    let mut per_route: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
    for (m, route, req, err, p50, p95, p99) in &rows {
        let e = per_min.entry(minute_ts(m)).or_default();
        let w = *req as f64;
        e.0 += w;
        e.1[0] += p50 * w;
        e.1[1] += p95 * w;
        e.1[2] += p99 * w;
        let rr = per_route.entry(route.clone()).or_default();
        rr.0 += w;
        rr.1 += *err as f64;
        rr.2 = rr.2.max(*p99);
    }
    let (t1, t0) = (
        chrono::Utc::now().timestamp(),
        chrono::Utc::now().timestamp() - r.minutes * 60,
    );
    let lat = |i: usize, name: &str, color| Series {
        name: name.into(),
        color,
        points: per_min
            .iter()
            .filter(|(_, v)| v.0 > 0.0)
            .map(|(t, v)| (*t, v.1[i] / v.0))
            .collect(),
    };
    let traffic = Series {
        name: "all routes".into(),
        color: OK,
        points: per_min.iter().map(|(t, v)| (*t, v.0 / 60.0)).collect(),
    };
    let mut classes: BTreeMap<&str, Vec<(i64, f64)>> = BTreeMap::new();
    for (m, st, n) in &statuses {
        let class = match st {
            500.. => "5xx",
            400..=499 => "4xx",
            _ => continue,
        };
        let v = classes.entry(class).or_default();
        let t = minute_ts(m);
        match v.last_mut() {
            Some(last) if last.0 == t => last.1 += *n as f64,
            _ => v.push((t, *n as f64)),
        }
    }
    let total: f64 = per_min.values().map(|v| v.0).sum();
    let e5: f64 = classes
        .get("5xx")
        .map(|v| v.iter().map(|p| p.1).sum())
        .unwrap_or(0.0);
    let last = per_min.iter().next_back();
    Ok(html! {
        p.source { "Source: " strong { "the dashboard database" } " (per-minute aggregates of the request events; latency per minute is the request-weighted mean of each route's percentile). Set PROMETHEUS_URL for Prometheus's histograms and saturation." }
        div.cards {
            div.card { h3 { "Traffic" } p.big { (fmt(total / (r.minutes as f64 * 60.0), "req/s")) } p.muted { (fmt(total, "requests")) " in " (r.name) } }
            div.card { h3 { "5xx errors" } p.big.bad[e5 > 0.0] { (fmt(if total > 0.0 { e5 / total * 100.0 } else { 0.0 }, "%")) } p.muted { (fmt(e5, "responses")) } }
            div.card { h3 { "p99 latency, last minute" } p.big { (last.map(|(_, v)| fmt(if v.0 > 0.0 { v.1[2] / v.0 } else { 0.0 }, "ms")).unwrap_or_else(|| "—".into())) } p.muted { "weighted over routes" } }
        }
        div.charts {
            (chart::line("Latency", "ms", t0, t1, &[lat(0, "p50", P50), lat(1, "p95", P95), lat(2, "p99", P99)]))
            (chart::line("Traffic", "req/s", t0, t1, &[traffic]))
            (chart::bars("Errors by status class", "responses/min", t0, t1, 60, &[
                Series { name: "4xx".into(), color: C4XX, points: classes.remove("4xx").unwrap_or_default() },
                Series { name: "5xx".into(), color: C5XX, points: classes.remove("5xx").unwrap_or_default() },
            ]))
        }
        h2 { "Per route" }
        table {
            thead { tr { th { "route" } th.num { "requests" } th.num { "traffic" } th.num { "5xx" } th.num { "worst p99 (a minute's)" } } }
            tbody {
                @for (route, (req, err, p99)) in &per_route {
                    tr { td { code { (route) } } td.num { (fmt(*req, "")) } td.num { (fmt(req / (r.minutes as f64 * 60.0), "req/s")) }
                         td.num.bad[*err > 0.0] { (fmt(if *req > 0.0 { err / req * 100.0 } else { 0.0 }, "%")) } td.num { (fmt(*p99, "ms")) } }
                }
                @if per_route.is_empty() { tr { td.muted colspan="5" { "No requests in this range." } } }
            }
        }
        h2 { "Saturation" }
        p.muted { "CPU, memory, DB pool, producer queue and consumer lag are Prometheus metrics: set PROMETHEUS_URL to see them here (every component serves them on its /metrics)." }
    })
}

fn series_of(l: prom::Labelled, colors: &[&'static str]) -> Vec<Series> {
    l.into_iter()
        .enumerate()
        .map(|(i, (name, points))| Series {
            name,
            color: colors[i % colors.len()],
            points,
        })
        .collect()
}

async fn from_prometheus(s: &AppState, base: &str, r: Range) -> anyhow::Result<Markup> {
    let h = &s.http;
    let t1 = chrono::Utc::now().timestamp();
    let t0 = t1 - r.minutes * 60;
    let step = (r.minutes * 60 / 120).max(15);
    let w = if r.minutes <= 15 { "1m" } else { "5m" };
    let q = |p: f64| {
        format!(
            "1000 * histogram_quantile({p}, sum by (le) (rate(shortlink_http_request_duration_seconds_bucket[{w}])))"
        )
    };
    let mut lat = Vec::new();
    for (p, name, color) in [(0.5, "p50", P50), (0.95, "p95", P95), (0.99, "p99", P99)] {
        let pts = prom::range(h, base, &q(p), t0, t1, step, "x")
            .await?
            .into_iter()
            .next()
            .map(|x| x.1)
            .unwrap_or_default();
        lat.push(Series {
            name: name.into(),
            color,
            points: pts,
        });
    }
    let traffic = prom::range(
        h,
        base,
        &format!("sum by (component) (rate(shortlink_http_requests_total[{w}]))"),
        t0,
        t1,
        step,
        "component",
    )
    .await?;
    let errors = prom::range(h, base, &format!("sum by (status_class) (rate(shortlink_http_requests_total{{status_class=~\"4xx|5xx\"}}[{w}]))"), t0, t1, step, "status_class").await?;
    let cpu = prom::instant(
        h,
        base,
        "sum by (component) (rate(shortlink_process_cpu_seconds_total[1m]))",
        "component",
    )
    .await?;
    let mem = prom::instant(
        h,
        base,
        "sum by (component) (shortlink_process_resident_memory_bytes)",
        "component",
    )
    .await?;
    let pool = prom::instant(h, base, "max by (component) (shortlink_db_pool_connections{state=\"in_use\"}) / max by (component) (shortlink_db_pool_connections{state=\"max\"})", "component").await?;
    let queue = prom::instant(h, base, "max by (component) (shortlink_bus_events_pending) / max by (component) (shortlink_bus_producer_queue_capacity)", "component").await?;
    let lag = prom::instant(
        h,
        base,
        "sum by (group) (shortlink_bus_consumer_lag)",
        "group",
    )
    .await?;
    let req = prom::instant(h, base, "sum by (component) (rate(shortlink_http_requests_total[5m])) or sum by (component) (rate(shortlink_grpc_server_requests_total[5m]))", "component").await?;
    let err = prom::instant(h, base, "(sum by (component) (rate(shortlink_http_requests_total{status_class=\"5xx\"}[5m])) or 0 * sum by (component) (rate(shortlink_http_requests_total[5m]))) / sum by (component) (rate(shortlink_http_requests_total[5m]))", "component").await?;
    let p99 = prom::instant(h, base, "1000 * histogram_quantile(0.99, sum by (component, le) (rate(shortlink_http_request_duration_seconds_bucket[5m]))) or 1000 * histogram_quantile(0.99, sum by (component, le) (rate(shortlink_grpc_server_request_duration_seconds_bucket[5m])))", "component").await?;
    let mut comps: BTreeMap<String, [Option<f64>; 7]> = BTreeMap::new();
    for (i, set) in [&req, &err, &p99, &cpu, &mem, &pool, &queue]
        .into_iter()
        .enumerate()
    {
        for (c, v) in set {
            comps.entry(c.clone()).or_default()[i] = Some(*v);
        }
    }
    let show = |v: Option<f64>, unit: &str, scale: f64| {
        v.map(|v| fmt(v * scale, unit))
            .unwrap_or_else(|| "—".into())
    };
    Ok(html! {
        p.source { "Source: " strong { "Prometheus" } " at " code { (base) } " (histograms over " (w) " windows, step " (step) " s)." }
        div.charts {
            (chart::line("Latency (edge, all routes)", "ms", t0, t1, &lat))
            (chart::line("Traffic per component", "req/s", t0, t1, &series_of(traffic, &[OK, P50, P95, "#c792ea", "#89ddff"])))
            (chart::line("Errors by status class", "req/s", t0, t1, &series_of(errors, &[C4XX, C5XX])))
        }
        h2 { "Per component (last 5 min) and saturation (now)" }
        table {
            thead { tr { th { "component" } th.num { "traffic" } th.num { "5xx" } th.num { "p99" } th.num { "CPU" } th.num { "memory (RSS)" } th.num { "DB pool in use" } th.num { "producer queue" } } }
            tbody {
                @for (c, v) in &comps {
                    tr { td { (c) } td.num { (show(v[0], "req/s", 1.0)) } td.num { (show(v[1], "%", 100.0)) } td.num { (show(v[2], "ms", 1.0)) }
                         td.num { (show(v[3], "cores", 1.0)) } td.num { (show(v[4], "MiB", 1.0 / 1048576.0)) } td.num { (show(v[5], "%", 100.0)) } td.num { (show(v[6], "%", 100.0)) } }
                }
            }
        }
        h2 { "Consumer lag" }
        table {
            thead { tr { th { "group" } th.num { "lag" } } }
            tbody { @for (g, v) in &lag { tr { td { (g) } td.num { (fmt(*v, "events")) } } } }
        }
    })
}

pub async fn page(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<Q>) -> Response {
    let r = Range::parse(q.range.as_deref(), 360);
    let body = match s.args.prometheus_url.as_deref() {
        Some(base) => from_prometheus(&s, base, r).await,
        None => from_db(&s, r).await,
    };
    let body = html! {
        div.head { h1 { "Golden signals" } (range_picker("/", r, 360)) }
        (body.unwrap_or_else(|e| unavailable("The golden signals' source", &e)))
    };
    layout(&s, &headers, "Golden signals", "/", body)
}
