//! Who may do what. Reading: loopback clients, or anyone when
//! DASHBOARD_REMOTE_READ is on, or a logged-in operator. Acting (chaos,
//! load tests, notes, acknowledgements): a logged-in operator only. Logging
//! in means posting DASHBOARD_TOKEN to `/login`, which sets an HttpOnly,
//! SameSite=Strict session cookie; every action also carries the session's
//! CSRF token (a hidden form field, or the `x-csrf-token` header of the
//! page's fetch calls), so another site can neither send the cookie nor
//! know the token. Sessions live in memory (a restart logs everyone out)
//! for 12 hours.

// A refusal is a finished response returned once per request; boxing it
// would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Form, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use crate::AppState;
use crate::pages;

pub const COOKIE: &str = "sl_dash_session";
const TTL: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSIONS: usize = 1000;

/// A logged-in operator's session.
#[derive(Clone, Debug)]
pub struct Session {
    pub csrf: String,
    expires: Instant,
}

#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

fn random_hex() -> String {
    let b: [u8; 32] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares without an early exit, so timing tells nothing about the token.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

impl Sessions {
    fn create(&self) -> (String, Session) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        m.retain(|_, s| s.expires > now);
        if m.len() >= MAX_SESSIONS
            && let Some(k) = m
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            m.remove(&k);
        }
        let id = random_hex();
        let s = Session {
            csrf: random_hex(),
            expires: now + TTL,
        };
        m.insert(id.clone(), s.clone());
        (id, s)
    }

    /// The session of the request's cookie, if valid.
    pub fn get(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    fn remove(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        }
    }
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// A refusal, as HTML for a browser's form post and JSON for fetch.
pub fn refuse(headers: &HeaderMap, status: StatusCode, code: &str, msg: &str) -> Response {
    if wants_html(headers) {
        pages::error_page(status, msg).into_response()
    } else {
        (
            status,
            axum::Json(serde_json::json!({"error": {"code": code, "message": msg}})),
        )
            .into_response()
    }
}

/// Checks that the request may act: a configured token, a session, and
/// its CSRF token. Returns the refusal otherwise.
pub fn require_operator(
    s: &AppState,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<Session, Response> {
    if s.args.token.as_deref().is_none_or(str::is_empty) {
        return Err(refuse(
            headers,
            StatusCode::FORBIDDEN,
            "actions_disabled",
            "Actions are disabled: start the dashboard with DASHBOARD_TOKEN set.",
        ));
    }
    let Some(session) = s.auth.get(headers) else {
        return Err(refuse(
            headers,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Log in with the operator token first (/login).",
        ));
    };
    let sent = csrf.or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()));
    if !sent.is_some_and(|t| same(t, &session.csrf)) {
        return Err(refuse(
            headers,
            StatusCode::FORBIDDEN,
            "csrf",
            "The form's CSRF token is missing or stale: reload the page and try again.",
        ));
    }
    Ok(session)
}

/// Checks a machine caller's `Authorization: Bearer DASHBOARD_TOKEN`.
pub fn require_bearer(s: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = s.args.token.as_deref().filter(|t| !t.is_empty()) else {
        return Err(refuse(
            headers,
            StatusCode::FORBIDDEN,
            "actions_disabled",
            "webhooks are disabled: start the dashboard with DASHBOARD_TOKEN set",
        ));
    };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if sent.is_some_and(|t| same(t.trim(), token)) {
        Ok(())
    } else {
        Err(refuse(
            headers,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "missing or wrong bearer token",
        ))
    }
}

/// Paths served to everyone: probes, metrics, the login form, assets and
/// the token-checked webhook.
fn open_path(path: &str) -> bool {
    matches!(
        path,
        "/live" | "/ready" | "/metrics" | "/login" | "/api/alertmanager"
    ) || path.starts_with("/assets/")
}

/// Read-only pages on loopback only, unless DASHBOARD_REMOTE_READ or a session.
pub async fn read_guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    // Without connection info (a router served in-process) there is no peer.
    let local = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_none_or(|ConnectInfo(a)| a.ip().is_loopback());
    if local
        || s.args.remote_read
        || open_path(req.uri().path())
        || s.auth.get(req.headers()).is_some()
    {
        return next.run(req).await;
    }
    refuse(
        req.headers(),
        StatusCode::FORBIDDEN,
        "loopback_only",
        "The dashboard's pages are served on loopback only: log in, or start it with DASHBOARD_REMOTE_READ=true.",
    )
}

#[derive(Deserialize, Default)]
pub struct NextQuery {
    #[serde(default)]
    next: String,
}

fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

pub async fn login_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let session = s.auth.get(&headers);
    let body = html! {
        h1 { "Operator login" }
        @if s.args.token.as_deref().is_none_or(str::is_empty) {
            p.notice.bad { "Actions are disabled: this dashboard was started without DASHBOARD_TOKEN." }
        }
        @if session.is_some() {
            p.notice.good { "You are logged in." }
        }
        form.card method="post" action="/login" {
            input type="hidden" name="next" value=(safe_next(&q.next));
            label { "Operator token" input type="password" name="token" autocomplete="current-password" required autofocus; }
            button type="submit" { "Log in" }
        }
        p.muted { "The token is DASHBOARD_TOKEN. A session lasts 12 h; it is kept in the dashboard's memory." }
    };
    pages::layout(&s, &headers, "Login", "/login", body).into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

pub async fn login(
    State(s): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let ok = s
        .args
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
        .is_some_and(|t| same(f.token.trim(), t));
    if !ok {
        // Guessing costs time.
        tokio::time::sleep(Duration::from_millis(300)).await;
        tracing::warn!("dashboard login refused");
        return refuse(
            &headers,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Wrong operator token.",
        );
    }
    let (id, _) = s.auth.create();
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        TTL.as_secs()
    );
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to(safe_next(&f.next)),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    State(s): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = require_operator(&s, &headers, Some(&f.csrf)) {
        return r;
    }
    s.auth.remove(&headers);
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(super::safe_next("/load"), "/load");
        assert_eq!(super::safe_next("//evil.example"), "/");
        assert_eq!(super::safe_next("https://evil.example"), "/");
        assert!(super::same("abc", "abc"));
        assert!(!super::same("abc", "abd"));
        assert!(!super::same("abc", "abcd"));
    }
}
