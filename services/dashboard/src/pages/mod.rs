//! The pages: one module each, and the layout they share (navigation,
//! login state, the CSRF token for the page's scripts, times in UTC with a
//! relative time beside them). A request with `x-partial: 1` gets only the
//! page's main element, which is how pages refresh themselves.

pub mod chaos;
pub mod errors;
pub mod golden;
pub mod incidents;
pub mod load;
pub mod logs;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use crate::AppState;

const NAV: &[(&str, &str)] = &[
    ("/", "Golden signals"),
    ("/logs", "Live logs"),
    ("/errors", "Errors"),
    ("/load", "Load tests"),
    ("/incidents", "Incidents"),
    ("/chaos", "Chaos"),
];

/// A time range of a page: 15m, 1h, 6h or 24h.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub name: &'static str,
    pub minutes: i64,
}

pub const RANGES: &[Range] = &[
    Range {
        name: "15m",
        minutes: 15,
    },
    Range {
        name: "1h",
        minutes: 60,
    },
    Range {
        name: "6h",
        minutes: 360,
    },
    Range {
        name: "24h",
        minutes: 1440,
    },
];

impl Range {
    pub fn parse(s: Option<&str>, max_minutes: i64) -> Range {
        RANGES
            .iter()
            .copied()
            .filter(|r| r.minutes <= max_minutes)
            .find(|r| Some(r.name) == s)
            .unwrap_or(RANGES[0])
    }
}

/// Range links for a page.
pub fn range_picker(path: &str, cur: Range, max_minutes: i64) -> Markup {
    html! {
        nav.ranges aria-label="time range" {
            @for r in RANGES.iter().filter(|r| r.minutes <= max_minutes) {
                a href=(format!("{path}?range={}", r.name)) aria-current=[(r == &cur).then_some("true")] { "last " (r.name) }
            }
        }
    }
}

/// An RFC 3339 time as "HH:MM:SS UTC" with its relative time (kept fresh
/// by the page script) and the full date on hover.
pub fn when(t: &str) -> Markup {
    let parsed = chrono::DateTime::parse_from_rfc3339(t).ok();
    match parsed {
        Some(d) => {
            let d = d.with_timezone(&chrono::Utc);
            html! {
                time datetime=(d.to_rfc3339()) title=(d.format("%Y-%m-%d %H:%M:%S UTC").to_string()) {
                    (d.format("%m-%d %H:%M:%S").to_string()) " UTC "
                    span.rel data-t=(d.timestamp()) { "(" (relative(d)) ")" }
                }
            }
        }
        None => html! { span.muted { "—" } },
    }
}

fn relative(d: chrono::DateTime<chrono::Utc>) -> String {
    let s = (chrono::Utc::now() - d).num_seconds();
    match s {
        i64::MIN..=-1 => "in the future".into(),
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

/// The page frame; only `main` when the request asks for a partial.
pub fn layout(
    s: &AppState,
    headers: &HeaderMap,
    title: &str,
    path: &str,
    body: Markup,
) -> Response {
    let session = s.auth.get(headers);
    let refresh = match path {
        "/" | "/errors" | "/incidents" => Some("15"),
        "/chaos" => Some("2"),
        _ => None,
    };
    let main = html! {
        main #main data-refresh=[refresh] { (body) }
    };
    if headers.get("x-partial").is_some() {
        return ([(header::CACHE_CONTROL, "no-store")], main).into_response();
    }
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(se) = &session { meta name="csrf" content=(se.csrf); }
                title { (title) " · shortlink ops" }
                link rel="stylesheet" href="/assets/dashboard.css";
                script src="/assets/dashboard.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "shortlink " span { "ops" } }
                    nav {
                        @for (href, name) in NAV {
                            a href=(href) aria-current=[(*href == path).then_some("page")] { (name) }
                        }
                    }
                    div.who {
                        @if let Some(se) = &session {
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(se.csrf);
                                span.good { "operator" } " "
                                button.link type="submit" { "log out" }
                            }
                        } @else {
                            a href=(format!("/login?next={path}")) { "operator login" }
                        }
                        " " span.clock #clock { (chrono::Utc::now().format("%H:%M:%S UTC").to_string()) }
                    }
                }
                (main)
            }
        }
    };
    ([(header::CACHE_CONTROL, "no-store")], page).into_response()
}

/// A small page for errors (404, refusals).
pub fn error_page(status: StatusCode, msg: &str) -> Response {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "shortlink ops" }
                link rel="stylesheet" href="/assets/dashboard.css";
            }
            body {
                main #main {
                    h1 { (status.canonical_reason().unwrap_or("Error")) }
                    p.notice.bad #message { (msg) }
                    p { a href="/" { "Back to the dashboard" } " · " a href="/login" { "Operator login" } }
                }
            }
        }
    };
    (status, page).into_response()
}

/// A failed database or upstream read, shown in place of a panel.
pub fn unavailable(what: &str, e: &anyhow::Error) -> Markup {
    tracing::warn!(
        error = format!("{e:#}"),
        what,
        "dashboard panel unavailable"
    );
    html! { p.notice.bad { (what) " is unavailable right now; the cause is in the dashboard's log." } }
}
