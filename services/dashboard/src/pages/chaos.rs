//! `/chaos`: every component the watchdog supervises, with its state
//! (from `GET /components` on the watchdog's control API, WATCHDOG_URL,
//! bearer WATCHDOG_TOKEN), and kill, stop, start, restart, pause and
//! resume. Each action asks for confirmation in the page, needs the
//! operator's session and CSRF token, is forwarded to
//! `POST /components/{name}/{action}` and recorded on the timeline. The
//! page refreshes every 2 s, so a component is seen going down and coming
//! back.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::{layout, when};
use crate::AppState;
use crate::auth::{refuse, require_operator};
use crate::store::{self, Entry};

pub const ACTIONS: &[&str] = &["kill", "stop", "start", "restart", "pause", "resume"];

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn watchdog(s: &AppState, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    let url = format!("{}{path}", s.args.watchdog_url.trim_end_matches('/'));
    let r = s.http.request(method, url);
    match s.args.watchdog_token.as_deref() {
        Some(t) => r.bearer_auth(t),
        None => r,
    }
}

async fn fetch(s: &AppState) -> Result<Vec<Value>, String> {
    let resp = watchdog(s, reqwest::Method::GET, "/components")
        .send()
        .await
        .map_err(|e| format!("the watchdog at {} does not answer ({e}); run `shortlink up --ha` or `shortlink watchdog`", s.args.watchdog_url))?;
    let status = resp.status();
    let v: Value = resp
        .json()
        .await
        .map_err(|e| format!("the watchdog's answer is not JSON: {e}"))?;
    if !status.is_success() {
        let msg = v["error"]["message"].as_str().unwrap_or("error");
        return Err(format!(
            "the watchdog refused ({status}): {msg}; check WATCHDOG_TOKEN"
        ));
    }
    v.as_array()
        .cloned()
        .ok_or_else(|| "the watchdog's answer is not a list of components".into())
}

fn sv(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn table(comps: &[Value], operator: bool) -> Markup {
    html! {
        table #components {
            thead { tr { th { "component" } th { "kind" } th { "state" } th { "healthy" } th { "pid / container" } th.num { "restarts" } th { "last restart" } th { "actions" } } }
            tbody {
                @for c in comps {
                    @let name = sv(c, "name");
                    @let state = sv(c, "state");
                    tr data-name=(name) data-state=(state) {
                        td { strong { (name) } }
                        td { (sv(c, "kind")) }
                        td { span class=(format!("state state-{state}")) { (state) } }
                        td { @match c["healthy"].as_bool() { Some(true) => span.good { "yes" }, Some(false) => span.bad { "no" }, None => span.muted { "—" } } }
                        td { code { (match sv(c, "pid") { p if p.is_empty() => sv(c, "container_id").chars().take(12).collect(), p => p }) } }
                        td.num { (sv(c, "restarts")) }
                        td { @if let Some(t) = c["last_restart"].as_str() { (when(t)) } @else { span.muted { "never" } } }
                        td.actions {
                            @for a in ACTIONS {
                                button.chaos.danger[matches!(*a, "kill" | "stop" | "pause")] type="button" data-name=(name) data-action=(a) disabled[!operator] { (a) }
                            }
                        }
                    }
                }
                @if comps.is_empty() { tr { td.muted colspan="8" { "The watchdog supervises no components." } } }
            }
        }
    }
}

pub async fn page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let operator = s.auth.get(&headers).is_some();
    let comps = fetch(&s).await;
    let body = html! {
        div.head { h1 { "Chaos panel" } span.muted { "watchdog: " code { (s.args.watchdog_url) } } }
        @if !operator { p.notice { "Actions need an " a href="/login?next=/chaos" { "operator login" } "." } }
        p #chaos-result.notice hidden {}
        @match &comps {
            Ok(c) => (table(c, operator)),
            Err(msg) => p.notice.bad #watchdog-error { (msg) },
        }
        p.muted { "Every action asks for confirmation, goes to the watchdog's control API and is recorded on the " a href="/incidents" { "incident timeline" } ". The table refreshes every 2 s." }
    };
    layout(&s, &headers, "Chaos", "/chaos", body)
}

/// The components as JSON (the watchdog's list, passed through).
pub async fn components(State(s): State<AppState>, headers: HeaderMap) -> Response {
    match fetch(&s).await {
        Ok(c) => axum::Json(c).into_response(),
        Err(msg) => refuse(
            &headers,
            StatusCode::BAD_GATEWAY,
            "watchdog_unavailable",
            &msg,
        ),
    }
}

pub async fn action(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    if let Err(r) = require_operator(&s, &headers, None) {
        return r;
    }
    if !ACTIONS.contains(&action.as_str()) {
        return refuse(
            &headers,
            StatusCode::BAD_REQUEST,
            "unknown_action",
            &format!("unknown action {action:?}; one of {}", ACTIONS.join(", ")),
        );
    }
    if !valid_name(&name) {
        return refuse(
            &headers,
            StatusCode::BAD_REQUEST,
            "invalid_name",
            "invalid component name",
        );
    }
    let resp = watchdog(
        &s,
        reqwest::Method::POST,
        &format!("/components/{name}/{action}"),
    )
    .send()
    .await;
    let (status, v) = match resp {
        Ok(r) => {
            let st = r.status();
            (st, r.json::<Value>().await.unwrap_or(Value::Null))
        }
        Err(e) => {
            return refuse(
                &headers,
                StatusCode::BAD_GATEWAY,
                "watchdog_unavailable",
                &format!("the watchdog does not answer: {e}"),
            );
        }
    };
    let ok = status.is_success();
    let _ = store::add_entry(
        &s.pool,
        &Entry {
            id: store::fresh_id(),
            time: store::now(),
            kind: "chaos".into(),
            severity: if ok { "warning" } else { "info" }.into(),
            component: name.clone(),
            title: format!(
                "operator {action} {name}{}",
                if ok { "" } else { " (refused by the watchdog)" }
            ),
            detail: if ok {
                format!("state after: {}", sv(&v, "state"))
            } else {
                v["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            },
            actor: "dashboard operator".into(),
            incident_id: None,
        },
    )
    .await;
    if ok {
        axum::Json(v).into_response()
    } else {
        let code = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or("the watchdog refused the action")
            .to_owned();
        (code, axum::Json(json!({"error": {"code": v["error"]["code"].as_str().unwrap_or("watchdog_error"), "message": msg}}))).into_response()
    }
}
