//! `/load`: start a k6 preset against one of the configured edges, watch
//! it live (requests/s, latency percentiles, error rate; the page polls
//! `/load/status` every second), stop it, and browse past runs.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::{layout, unavailable, when};
use crate::AppState;
use crate::auth::{refuse, require_operator};
use crate::chart::fmt;
use crate::k6::{self, PRESETS};
use crate::store;

fn history(runs: &[store::LoadRun]) -> Markup {
    html! {
        table #history {
            thead { tr { th { "started" } th { "tier" } th { "target" } th { "duration" } th { "status" } th.num { "requests" } th.num { "throughput" } th.num { "p50" } th.num { "p95" } th.num { "p99" } th.num { "failed" } } }
            tbody {
                @for r in runs {
                    tr { td { (when(&r.started)) } td { (r.tier) } td { code { (r.target) } } td { (r.duration) }
                         td.bad[r.status.starts_with("failed")] { (r.status) }
                         @if r.status == "running" { td.muted colspan="6" { "live figures above" } } @else {
                         td.num { (fmt(r.requests, "")) } td.num { (fmt(r.rps, "req/s")) } td.num { (fmt(r.p50_ms, "ms")) }
                         td.num { (fmt(r.p95_ms, "ms")) } td.num { (fmt(r.p99_ms, "ms")) } td.num { (fmt(r.error_rate * 100.0, "%")) } } }
                }
                @if runs.is_empty() { tr { td.muted colspan="11" { "No runs yet." } } }
            }
        }
    }
}

pub async fn page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let session = s.auth.get(&headers);
    let runs = store::runs(&s.pool, 50).await;
    let st = s.load.status();
    let body = html! {
        div.head { h1 { "Load tests" } }
        form.card #load-form method="post" action="/load/start" {
            input type="hidden" name="csrf" value=(session.as_ref().map(|x| x.csrf.as_str()).unwrap_or(""));
            label { "tier " select name="tier" { @for (name, vus, what) in PRESETS { option value=(name) { (name) ": " (vus) " VUs, " (what) } } } }
            label { "edge " select name="target" { @for e in &s.args.edges { option value=(e) { (e) } } } }
            label { "duration " input name="duration" value="30s" size="5" pattern="[0-9]{1,4}[sm]" title="like 30s or 5m"; }
            button #start type="submit" { "Start" }
            @if session.is_none() { span.muted { " (actions need an " a href="/login?next=/load" { "operator login" } ")" } }
        }
        section.card #live data-running=(st.running) {
            div.head {
                h2 { "Current run" }
                form method="post" action="/load/stop" #stop-form {
                    input type="hidden" name="csrf" value=(session.as_ref().map(|x| x.csrf.as_str()).unwrap_or(""));
                    button.danger #stop type="submit" disabled[!st.running] { "Stop" }
                }
            }
            p #run-state { @if st.running { "running…" } @else { "No test running." } }
            div.cards {
                div.card { h3 { "throughput" } p.big #s-rps { "—" } }
                div.card { h3 { "requests" } p.big #s-requests { "—" } }
                div.card { h3 { "p50 / p95 / max" } p.big #s-lat { "—" } }
                div.card { h3 { "failed requests" } p.big #s-err { "—" } p.muted title="k6's http_req_failed: no response, or a 4xx/5xx the journey did not expect" { "no answer, or an unexpected 4xx/5xx" } }
                div.card { h3 { "virtual users" } p.big #s-vus { "—" } }
            }
            pre #k6-log.muted {}
        }
        h2 { "History" }
        @match runs {
            Ok(r) => (history(&r)),
            Err(e) => (unavailable("The run history", &e)),
        }
        p.muted { "k6 runs " code { "k6/tiers.js" } " (compiled into this binary) with " code { "K6_BIN" } " or " code { "k6" } " on PATH; one run at a time; targets are DASHBOARD_EDGES only." }
    };
    layout(&s, &headers, "Load tests", "/load", body)
}

pub async fn status(State(s): State<AppState>) -> Response {
    axum::Json(s.load.status()).into_response()
}

#[derive(Deserialize)]
pub struct StartForm {
    #[serde(default)]
    csrf: String,
    tier: String,
    target: String,
    duration: String,
}

pub async fn start(
    State(s): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<StartForm>,
) -> Response {
    if let Err(r) = require_operator(&s, &headers, Some(&f.csrf)) {
        return r;
    }
    match k6::start(
        &s,
        f.tier.trim(),
        f.target.trim(),
        f.duration.trim(),
        "operator",
    )
    .await
    {
        Ok(_) => Redirect::to("/load").into_response(),
        Err(msg) => refuse(&headers, StatusCode::CONFLICT, "load_test", &msg),
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn stop(
    State(s): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = require_operator(&s, &headers, Some(&f.csrf)) {
        return r;
    }
    s.load.stop();
    Redirect::to("/load").into_response()
}
