//! `/incidents`: the persistent timeline (alerts firing and resolving,
//! watchdog restarts and crash loops, chaos actions, bans, circuit-breaker
//! changes, load tests, operator notes) and the incidents on it. A
//! critical alert (from Alertmanager's webhook, `POST /api/alertmanager`
//! with the operator token as bearer) or a crash loop opens an incident;
//! its resolution closes it. Operators acknowledge and annotate.

use axum::Form;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Range, layout, range_picker, unavailable, when};
use crate::AppState;
use crate::auth::{refuse, require_bearer, require_operator};
use crate::store::{self, Entry};

#[derive(Deserialize, Default)]
pub struct Q {
    range: Option<String>,
}

async fn body(s: &AppState, r: Range, csrf: Option<&str>) -> anyhow::Result<Markup> {
    let since = store::ago(r.minutes);
    let incidents = store::incidents(&s.pool, &since, 100).await?;
    let entries = store::timeline(&s.pool, &since, 300).await?;
    let open = incidents.iter().filter(|i| i.closed.is_none()).count();
    Ok(html! {
        div.cards {
            div.card { h3 { "Open incidents" } p.big.bad[open > 0] #open-count { (open) } }
            div.card { h3 { "Timeline entries" } p.big { (entries.len()) } p.muted { "in the last " (r.name) " (at most 300 shown)" } }
        }
        h2 { "Incidents" }
        table #incidents {
            thead { tr { th { "opened" } th { "state" } th { "severity" } th { "title" } th { "closed" } th { "acknowledged" } th {} } }
            tbody {
                @for i in &incidents {
                    tr.open[i.closed.is_none()] data-id=(i.id) {
                        td { (when(&i.opened)) }
                        td.state { @if i.closed.is_none() { span.bad { "OPEN" } } @else { span.good { "resolved" } } }
                        td { (i.severity) }
                        td { (i.title) }
                        td { @if let Some(c) = &i.closed { (when(c)) } }
                        td { @if let Some(a) = &i.acked { (when(a)) " by " (i.acked_by.clone().unwrap_or_default()) } }
                        td { @if i.acked.is_none() && i.closed.is_none() {
                            form method="post" action=(format!("/incidents/{}/ack", i.id)) {
                                input type="hidden" name="csrf" value=(csrf.unwrap_or(""));
                                button type="submit" { "Acknowledge" }
                            }
                        } }
                    }
                }
                @if incidents.is_empty() { tr { td.muted colspan="7" { "No incidents in this range." } } }
            }
        }
        h2 { "Add a note" }
        form.card #note-form method="post" action="/incidents/note" {
            input type="hidden" name="csrf" value=(csrf.unwrap_or(""));
            label { "incident " select name="incident_id" {
                option value="" { "(none: a timeline note)" }
                @for i in incidents.iter().filter(|i| i.closed.is_none()) { option value=(i.id) { (i.title) } }
            } }
            label.grow { "note " input name="note" required maxlength="2000" placeholder="what you saw, what you did"; }
            button type="submit" { "Add note" }
            @if csrf.is_none() { span.muted { " (needs an " a href="/login?next=/incidents" { "operator login" } ")" } }
        }
        h2 { "Timeline" }
        ol.timeline #timeline {
            @for e in &entries {
                li class=(format!("sev-{} kind-{}", e.severity, e.kind)) {
                    (when(&e.time)) " "
                    span.kind { (e.kind) } " "
                    strong { (e.title) }
                    @if !e.component.is_empty() { " · " (e.component) }
                    @if !e.detail.is_empty() { " — " span.muted { (e.detail) } }
                    @if !e.actor.is_empty() { " " span.muted { "(" (e.actor) ")" } }
                    @if e.incident_id.is_some() { " " span.tag { "incident" } }
                }
            }
            @if entries.is_empty() { li.muted { "Nothing happened in this range." } }
        }
    })
}

pub async fn page(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<Q>) -> Response {
    let r = Range::parse(q.range.as_deref().or(Some("24h")), 1440);
    let session = s.auth.get(&headers);
    let b = body(&s, r, session.as_ref().map(|x| x.csrf.as_str()))
        .await
        .unwrap_or_else(|e| unavailable("The incident timeline", &e));
    let b = html! {
        div.head { h1 { "Incidents" } (range_picker("/incidents", r, 1440)) }
        (b)
    };
    layout(&s, &headers, "Incidents", "/incidents", b)
}

#[derive(Deserialize)]
pub struct NoteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    incident_id: String,
    note: String,
}

pub async fn note(
    State(s): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<NoteForm>,
) -> Response {
    if let Err(r) = require_operator(&s, &headers, Some(&f.csrf)) {
        return r;
    }
    let text: String = f.note.trim().chars().take(2000).collect();
    if text.is_empty() {
        return refuse(
            &headers,
            StatusCode::BAD_REQUEST,
            "invalid_note",
            "A note needs some text.",
        );
    }
    let incident_id = f.incident_id.parse::<i64>().ok();
    let e = Entry {
        id: store::fresh_id(),
        time: store::now(),
        kind: "note".into(),
        severity: "info".into(),
        title: text,
        actor: "operator".into(),
        incident_id,
        ..Default::default()
    };
    match store::add_entry(&s.pool, &e).await {
        Ok(()) => Redirect::to("/incidents").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "could not store a note");
            refuse(
                &headers,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The dashboard database did not take the note; try again.",
            )
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn ack(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = require_operator(&s, &headers, Some(&f.csrf)) {
        return r;
    }
    match store::ack(&s.pool, id, "operator").await {
        Ok(true) => {
            let _ = store::add_entry(
                &s.pool,
                &Entry {
                    id: store::fresh_id(),
                    time: store::now(),
                    kind: "ack".into(),
                    severity: "info".into(),
                    title: "incident acknowledged".into(),
                    actor: "operator".into(),
                    incident_id: Some(id),
                    ..Default::default()
                },
            )
            .await;
            Redirect::to("/incidents").into_response()
        }
        Ok(false) => refuse(
            &headers,
            StatusCode::NOT_FOUND,
            "not_found",
            "No unacknowledged incident with that id.",
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not acknowledge");
            refuse(
                &headers,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The dashboard database is unavailable; try again.",
            )
        }
    }
}

fn sv(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Records one Alertmanager alert: a timeline entry, and for a critical
/// alert an incident opened (firing) or closed (resolved). Keyed by the
/// alert's fingerprint (or its labels), so repeats change nothing.
pub async fn record_alert(pool: &sqlx::AnyPool, a: &Value) -> anyhow::Result<()> {
    let labels = &a["labels"];
    let name = sv(labels, "alertname");
    let severity = match sv(labels, "severity").as_str() {
        "critical" | "page" => "critical",
        "warning" => "warning",
        _ => "info",
    };
    let status = sv(a, "status");
    let fingerprint = match sv(a, "fingerprint") {
        f if f.is_empty() => labels.to_string(),
        f => f,
    };
    let key = format!("alert:{fingerprint}");
    let summary = match sv(&a["annotations"], "summary") {
        x if x.is_empty() => sv(&a["annotations"], "description"),
        x => x,
    };
    let component = [sv(labels, "component"), sv(labels, "instance")]
        .into_iter()
        .filter(|x| !x.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let (incident_id, time) = if status == "resolved" {
        (store::close(pool, &key).await?, sv(a, "endsAt"))
    } else if severity == "critical" {
        let title = if summary.is_empty() {
            name.clone()
        } else {
            format!("{name}: {summary}")
        };
        (
            Some(store::open(pool, &key, &title, severity).await?),
            sv(a, "startsAt"),
        )
    } else {
        (None, sv(a, "startsAt"))
    };
    let time = if chrono::DateTime::parse_from_rfc3339(&time).is_ok() && !time.starts_with("0001") {
        time
    } else {
        store::now()
    };
    store::add_entry(
        pool,
        &Entry {
            id: store::content_id(&["alert", &fingerprint, &status, &sv(a, "startsAt")]),
            time,
            kind: "alert".into(),
            severity: if status == "resolved" {
                "info".into()
            } else {
                severity.into()
            },
            component,
            title: format!(
                "{name} {}",
                if status == "resolved" {
                    "resolved"
                } else {
                    "firing"
                }
            ),
            detail: summary,
            actor: "alertmanager".into(),
            incident_id,
        },
    )
    .await
}

/// `POST /api/alertmanager`: Alertmanager's webhook (version 4 payload).
pub async fn alertmanager(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = require_bearer(&s, &headers) {
        return r;
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                &headers,
                StatusCode::BAD_REQUEST,
                "invalid_json",
                &format!("not an Alertmanager webhook payload: {e}"),
            );
        }
    };
    let Some(alerts) = v.get("alerts").and_then(Value::as_array) else {
        return refuse(
            &headers,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            "the payload has no alerts array",
        );
    };
    let mut n = 0;
    for a in alerts.iter().take(1000) {
        if let Err(e) = record_alert(&s.pool, a).await {
            tracing::warn!(error = %e, "could not record an alert");
            return refuse(
                &headers,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the dashboard database is unavailable; Alertmanager will retry",
            );
        }
        n += 1;
    }
    axum::Json(json!({"recorded": n})).into_response()
}
