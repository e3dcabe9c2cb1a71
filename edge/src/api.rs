//! The public HTTP API of the original system, transcoded to gRPC calls on
//! the links replicas: routing (to bounded route templates), request
//! parsing and validation, the calls themselves, and the JSON shapes,
//! status codes and error bodies of the contract in `shared/design.md`.

// Errors here are finished HTTP replies returned once per request, not
// values that travel through hot loops; boxing them would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http::Method;
use serde_json::{Map, Value, json};
use shortlink_proto::v1 as pb;
use shortlink_proto::v1::event_service_client::EventServiceClient;
use shortlink_proto::v1::link_service_client::LinkServiceClient;
use shortlink_proto::v1::user_service_client::UserServiceClient;
use tonic::Code;

use crate::balance::{CallError, Upstreams};

/// Largest JSON body accepted.
pub const MAX_JSON_BODY: usize = 1024 * 1024;
/// Largest CSV upload accepted by `POST /users/bulk`.
pub const MAX_UPLOAD_BODY: usize = 10 * 1024 * 1024;

/// Route templates: the only values the `route` metric label takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Shorten,
    Urls,
    Url,
    UrlEvents,
    Users,
    UsersBulk,
    User,
    UserUrls,
    Events,
    Health,
    Live,
    Ready,
    Metrics,
    Redirect,
    NotFound,
}

impl Route {
    /// The template, for metrics and logs.
    pub fn template(self) -> &'static str {
        match self {
            Route::Shorten => "/shorten",
            Route::Urls => "/urls",
            Route::Url => "/urls/{id}",
            Route::UrlEvents => "/urls/{id}/events",
            Route::Users => "/users",
            Route::UsersBulk => "/users/bulk",
            Route::User => "/users/{id}",
            Route::UserUrls => "/users/{id}/urls",
            Route::Events => "/events",
            Route::Health => "/health",
            Route::Live => "/live",
            Route::Ready => "/ready",
            Route::Metrics => "/metrics",
            Route::Redirect => "/{short_code}",
            Route::NotFound => "unmatched",
        }
    }

    /// Health paths are never rate limited.
    pub fn is_health(self) -> bool {
        matches!(
            self,
            Route::Health | Route::Live | Route::Ready | Route::Metrics
        )
    }
}

/// A routed path: the template plus its id or code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    pub route: Route,
    pub id: Option<i64>,
    pub code: Option<String>,
}

/// Maps a path to its route. Ids must be positive integers; anything else
/// does not match (404), like the original's `<int:id>` routes.
pub fn route(path: &str) -> Routed {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let id = |s: &str| s.parse::<i64>().ok().filter(|v| *v > 0);
    let r = |route| Routed {
        route,
        id: None,
        code: None,
    };
    match segs.as_slice() {
        ["shorten"] => r(Route::Shorten),
        ["urls"] => r(Route::Urls),
        ["urls", i] if id(i).is_some() => Routed {
            route: Route::Url,
            id: id(i),
            code: None,
        },
        ["urls", i, "events"] if id(i).is_some() => Routed {
            route: Route::UrlEvents,
            id: id(i),
            code: None,
        },
        ["users"] => r(Route::Users),
        ["users", "bulk"] => r(Route::UsersBulk),
        ["users", i] if id(i).is_some() => Routed {
            route: Route::User,
            id: id(i),
            code: None,
        },
        ["users", i, "urls"] if id(i).is_some() => Routed {
            route: Route::UserUrls,
            id: id(i),
            code: None,
        },
        ["events"] => r(Route::Events),
        ["health"] => r(Route::Health),
        ["live"] => r(Route::Live),
        ["ready"] => r(Route::Ready),
        ["metrics"] => r(Route::Metrics),
        [code] if !code.is_empty() && code.len() <= 64 => Routed {
            route: Route::Redirect,
            id: None,
            code: Some((*code).to_owned()),
        },
        _ => r(Route::NotFound),
    }
}

/// The methods each route answers, for 405 and `Allow`.
pub fn allowed(route: Route) -> &'static [Method] {
    match route {
        Route::Shorten => &[Method::POST],
        Route::Urls | Route::Users | Route::Events => &[Method::GET, Method::POST],
        Route::Url | Route::User => &[Method::GET, Method::PUT, Method::DELETE],
        Route::UsersBulk => &[Method::POST],
        Route::UrlEvents | Route::UserUrls | Route::Redirect => &[Method::GET, Method::HEAD],
        Route::Health | Route::Live | Route::Ready | Route::Metrics => &[Method::GET, Method::HEAD],
        Route::NotFound => &[],
    }
}

/// What a handler answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    /// The replica that served the call, if any.
    pub upstream: Option<String>,
    /// For a served redirect: (link id, user id), to record the click.
    pub click: Option<(i64, i64)>,
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: u16, v: Value) -> Self {
        Self {
            status,
            body: Bytes::from(serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec())),
            content_type: "application/json",
            headers: Vec::new(),
            upstream: None,
            click: None,
        }
    }

    /// `{"error": msg}` with `status`.
    pub fn error(status: u16, msg: impl Into<String>) -> Self {
        Self::json(status, json!({"error": msg.into()}))
    }

    fn from(mut self, upstream: Option<String>) -> Self {
        self.upstream = upstream;
        self
    }
}

/// A parsed incoming request.
#[derive(Debug)]
pub struct ApiRequest<'a> {
    pub method: &'a Method,
    pub routed: &'a Routed,
    pub query: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub body: Bytes,
    pub request_id: &'a str,
    pub traceparent: &'a str,
}

/// ISO 8601 UTC, e.g. `2025-06-22T20:54:35Z`.
pub fn iso(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map_or(Value::Null, |d| {
            Value::String(d.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        })
}

/// The URL object of the public API.
pub fn url_json(l: &pb::Link) -> Value {
    json!({
        "id": l.id,
        "user_id": l.user_id,
        "short_code": l.short_code,
        "original_url": l.original_url,
        "title": l.title,
        "is_active": l.is_active,
        "created_at": iso(l.created_at.as_ref()),
        "updated_at": iso(l.updated_at.as_ref()),
    })
}

fn user_json(u: &pb::User) -> Value {
    json!({"id": u.id, "username": u.username, "email": u.email, "created_at": iso(u.created_at.as_ref())})
}

fn event_json(e: &pb::Event) -> Value {
    let details = e
        .details
        .as_ref()
        .map(|s| Value::Object(shortlink_proto::json::struct_to_json(s)))
        .unwrap_or_else(|| json!({}));
    json!({
        "id": e.id,
        "url_id": e.url_id,
        "user_id": e.user_id,
        "event_type": e.event_type,
        "timestamp": iso(e.timestamp.as_ref()),
        "details": details,
    })
}

/// Maps a gRPC status from the links service to the HTTP error of the
/// contract. Nothing becomes a bare 500: unknown failures are 502 with a
/// generic message (the cause is logged with the request id).
pub fn status_reply(s: &tonic::Status, route: Route) -> Reply {
    let msg = s.message().to_owned();
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange => Reply::error(400, msg),
        Code::NotFound => Reply::error(404, msg),
        Code::AlreadyExists => Reply::error(409, msg),
        Code::FailedPrecondition if route == Route::Redirect => Reply::error(410, msg),
        Code::FailedPrecondition | Code::Aborted => Reply::error(409, msg),
        Code::Unavailable => {
            let mut r = Reply::error(
                503,
                if shortlink_proto::errors::is_database_unavailable(s) {
                    msg
                } else {
                    "service unavailable".into()
                },
            );
            r.headers.push(("retry-after", "5".into()));
            r
        }
        Code::DeadlineExceeded | Code::Cancelled => Reply::error(504, "upstream timed out"),
        Code::ResourceExhausted => Reply::error(429, msg),
        Code::Unauthenticated => Reply::error(401, msg),
        Code::PermissionDenied => Reply::error(403, msg),
        _ => {
            tracing::error!(code = ?s.code(), message = %s.message(), "upstream error");
            Reply::error(502, "upstream error")
        }
    }
}

fn call_error(e: CallError, route: Route) -> Reply {
    match e {
        CallError::NoReplica => {
            let mut r = Reply::error(503, "no healthy links replica; try again shortly");
            r.headers.push(("retry-after", "2".into()));
            r
        }
        CallError::Status(s) => status_reply(&s, route),
    }
}

fn grpc_req<T>(msg: T, rid: &str, tp: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = rid.parse() {
        r.metadata_mut().insert("x-request-id", v);
    }
    if let Ok(v) = tp.parse() {
        r.metadata_mut().insert("traceparent", v);
    }
    r
}

/// Parses the query string into a map (last value wins).
fn query_map(q: Option<&str>) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        m.insert(pct_decode(k), pct_decode(v));
    }
    m
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn q_int(q: &HashMap<String, String>, k: &str) -> Result<Option<i64>, Reply> {
    match q.get(k).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| Reply::error(400, format!("{k} must be an integer"))),
    }
}

fn q_bool(q: &HashMap<String, String>, k: &str) -> Result<Option<bool>, Reply> {
    match q.get(k).map(|s| s.to_ascii_lowercase()) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => Ok(Some(true)),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no") => Ok(Some(false)),
        Some(_) => Err(Reply::error(400, format!("{k} must be true or false"))),
    }
}

fn page(q: &HashMap<String, String>) -> Result<pb::PageRequest, Reply> {
    let p = q_int(q, "page")?.unwrap_or(1);
    let pp = q_int(q, "per_page")?.unwrap_or(20);
    if !(1..=i64::from(u32::MAX)).contains(&p) {
        return Err(Reply::error(400, "page must be a positive integer"));
    }
    if pp < 1 {
        return Err(Reply::error(400, "per_page must be at least 1"));
    }
    // Larger pages are clamped to 100 (the response says what was served).
    Ok(pb::PageRequest {
        page: p as u32,
        per_page: pp.min(100) as u32,
    })
}

fn list_reply(data: Vec<Value>, info: Option<pb::PageInfo>) -> Reply {
    let info = info.unwrap_or_default();
    Reply::json(
        200,
        json!({"data": data, "page": info.page, "per_page": info.per_page, "total": info.total}),
    )
}

/// Parses a JSON object body; enforces `Content-Type: application/json`.
fn json_body(req: &ApiRequest<'_>) -> Result<Map<String, Value>, Reply> {
    let ct = req.content_type.unwrap_or("").to_ascii_lowercase();
    if !ct.starts_with("application/json") && !ct.contains("+json") {
        return Err(Reply::error(415, "Content-Type must be application/json"));
    }
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Err(Reply::error(400, "request body is required"));
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Reply::error(400, "request body must be a JSON object")),
        Err(e) => Err(Reply::error(400, format!("malformed JSON: {e}"))),
    }
}

fn req_string(m: &Map<String, Value>, k: &str) -> Result<String, Reply> {
    match m.get(k) {
        None | Some(Value::Null) => Err(Reply::error(400, format!("{k} is required"))),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Reply::error(400, format!("{k} must be a string"))),
    }
}

fn opt_string(m: &Map<String, Value>, k: &str) -> Result<Option<String>, Reply> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Reply::error(400, format!("{k} must be a string"))),
    }
}

fn req_int(m: &Map<String, Value>, k: &str) -> Result<i64, Reply> {
    match m.get(k) {
        None | Some(Value::Null) => Err(Reply::error(400, format!("{k} is required"))),
        Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64().unwrap_or_default()),
        Some(_) => Err(Reply::error(400, format!("{k} must be an integer"))),
    }
}

fn opt_bool(m: &Map<String, Value>, k: &str) -> Result<Option<bool>, Reply> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Reply::error(400, format!("{k} must be a boolean"))),
    }
}

/// Extracts the CSV of `POST /users/bulk`: the first file part of a
/// multipart/form-data body, or the body itself when it is text/csv.
pub fn bulk_csv(content_type: &str, body: &[u8]) -> Result<String, Reply> {
    let ct = content_type.to_ascii_lowercase();
    if ct.starts_with("text/csv") || ct.starts_with("text/plain") {
        return String::from_utf8(body.to_vec())
            .map_err(|_| Reply::error(400, "CSV must be UTF-8"));
    }
    if !ct.starts_with("multipart/form-data") {
        return Err(Reply::error(
            415,
            "Content-Type must be multipart/form-data (a CSV file) or text/csv",
        ));
    }
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"').to_owned())
        .ok_or_else(|| Reply::error(400, "multipart boundary missing"))?;
    let delim = format!("--{boundary}");
    let text = String::from_utf8_lossy(body);
    for part in text.split(delim.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let Some((head, content)) = part
            .split_once("\r\n\r\n")
            .or_else(|| part.split_once("\n\n"))
        else {
            continue;
        };
        if head.to_ascii_lowercase().contains("filename=") || head.contains("name=\"file\"") {
            let content = content
                .strip_suffix("\r\n")
                .or_else(|| content.strip_suffix('\n'))
                .unwrap_or(content);
            return Ok(content.to_owned());
        }
    }
    Err(Reply::error(
        400,
        "file is required: send the CSV as a multipart file field",
    ))
}

/// Handles one API request (everything but health, metrics and redirect
/// bookkeeping, which the proxy does itself).
pub async fn handle(up: &Arc<Upstreams>, req: ApiRequest<'_>) -> Reply {
    let (m, routed) = (req.method, req.routed);
    let (rid, tp) = (req.request_id, req.traceparent);
    if !allowed(routed.route).contains(m) {
        if routed.route == Route::NotFound {
            return Reply::error(404, "not found");
        }
        let mut r = Reply::error(405, "method not allowed");
        let allow: Vec<&str> = allowed(routed.route).iter().map(Method::as_str).collect();
        r.headers.push(("allow", allow.join(", ")));
        return r;
    }
    let q = query_map(req.query);
    let result: Result<Reply, Reply> = async {
        Ok(match (routed.route, m.clone()) {
            (Route::Redirect, _) => {
                let code = routed.code.clone().unwrap_or_default();
                let (resp, rep) = up
                    .call(true, |ch| {
                        let r = grpc_req(
                            pb::ResolveLinkRequest {
                                short_code: code.clone(),
                            },
                            rid,
                            tp,
                        );
                        async move { LinkServiceClient::new(ch).resolve_link(r).await }
                    })
                    .await
                    .map_err(|e| call_error(e, Route::Redirect))?;
                let resp = resp.into_inner();
                let click = Some((resp.link_id, resp.user_id));
                let mut r = Reply::json(302, json!({"location": resp.original_url}));
                r.click = click;
                r.headers.push(("location", resp.original_url));
                r.headers.push(("cache-control", "no-store".into()));
                r.from(Some(rep.addr.clone()))
            }
            (Route::Shorten | Route::Urls, Method::POST) => {
                let b = json_body(&req)?;
                let msg = pb::CreateLinkRequest {
                    original_url: req_string(&b, "original_url")?,
                    user_id: req_int(&b, "user_id")?,
                    title: opt_string(&b, "title")?,
                    short_code: opt_string(&b, "short_code")?,
                };
                let (resp, rep) = up
                    .call(false, |ch| {
                        let r = grpc_req(msg.clone(), rid, tp);
                        async move { LinkServiceClient::new(ch).create_link(r).await }
                    })
                    .await
                    .map_err(|e| call_error(e, routed.route))?;
                let link = resp.into_inner().link.unwrap_or_default();
                Reply::json(201, url_json(&link)).from(Some(rep.addr.clone()))
            }
            (Route::Urls, _) => {
                let msg = pb::ListLinksRequest {
                    page: Some(page(&q)?),
                    user_id: q_int(&q, "user_id")?,
                    is_active: q_bool(&q, "is_active")?,
                };
                let (resp, rep) = up
                    .call(true, |ch| {
                        let r = grpc_req(msg, rid, tp);
                        async move { LinkServiceClient::new(ch).list_links(r).await }
                    })
                    .await
                    .map_err(|e| call_error(e, routed.route))?;
                let resp = resp.into_inner();
                list_reply(resp.links.iter().map(url_json).collect(), resp.page)
                    .from(Some(rep.addr.clone()))
            }
            (Route::Url, Method::GET) => {
                let id = routed.id.unwrap_or_default();
                let (resp, rep) = up
                    .call(true, |ch| {
                        let r = grpc_req(pb::GetLinkRequest { id }, rid, tp);
                        async move { LinkServiceClient::new(ch).get_link(r).await }
                    })
                    .await
                    .map_err(|e| call_error(e, routed.route))?;
                Reply::json(200, url_json(&resp.into_inner().link.unwrap_or_default()))
                    .from(Some(rep.addr.clone()))
            }
            (Route::Url, Method::PUT) => {
                let b = json_body(&req)?;
                if b.is_empty() {
                    return Err(Reply::error(
                        400,
                        "nothing to update: give original_url, title or is_active",
                    ));
                }
                let msg = pb::UpdateLinkRequest {
                    id: routed.id.unwrap_or_default(),
                    original_url: opt_string(&b, "original_url")?,
                    title: match b.get("title") {
                        Some(Value::Null) => Some(String::new()),
                        _ => opt_string(&b, "title")?,
                    },
                    is_active: opt_bool(&b, "is_active")?,
                };
                let (resp, rep) = up
                    .call(false, |ch| {
                        let r = grpc_req(msg.clone(), rid, tp);
                        async move { LinkServiceClient::new(ch).update_link(r).await }
                    })
                    .await
                    .map_err(|e| call_error(e, routed.route))?;
                Reply::json(200, url_json(&resp.into_inner().link.unwrap_or_default()))
                    .from(Some(rep.addr.clone()))
            }
            (Route::Url, _) => {
                let id = routed.id.unwrap_or_default();
                let (resp, rep) = up
                    .call(false, |ch| {
                        let r = grpc_req(pb::DeleteLinkRequest { id }, rid, tp);
                        async move { LinkServiceClient::new(ch).delete_link(r).await }
                    })
                    .await
                    .map_err(|e| call_error(e, routed.route))?;
                let resp = resp.into_inner();
                let mut v = url_json(&resp.link.unwrap_or_default());
                v["message"] = Value::String(resp.message);
                Reply::json(200, v).from(Some(rep.addr.clone()))
            }
            (Route::UrlEvents, _) => {
                let id = routed.id.unwrap_or_default();
                // 404 for an unknown url rather than an empty list.
                up.call(true, |ch| {
                    let r = grpc_req(pb::GetLinkRequest { id }, rid, tp);
                    async move { LinkServiceClient::new(ch).get_link(r).await }
                })
                .await
                .map_err(|e| call_error(e, routed.route))?;
                let msg = pb::ListEventsRequest {
                    page: Some(page(&q)?),
                    url_id: Some(id),
                    user_id: q_int(&q, "user_id")?,
                    event_type: q.get("event_type").filter(|s| !s.is_empty()).cloned(),
                };
                list_events(up, msg, rid, tp, routed.route).await?
            }
            (Route::Events, Method::POST) => {
                let b = json_body(&req)?;
                let details = match b.get("details") {
                    None | Some(Value::Null) => None,
                    Some(Value::Object(o)) => Some(shortlink_proto::json::struct_from_json(o)),
                    Some(_) => return Err(Reply::error(400, "details must be a JSON object")),
                };
                let msg = pb::CreateEventRequest {
                    url_id: req_int(&b, "url_id")?,
                    user_id: req_int(&b, "user_id")?,
                    event_type: req_string(&b, "event_type")?,
                    details,
                };
                let (resp, rep) = up
                    .call(false, |ch| {
                        let r = grpc_req(msg.clone(), rid, tp);
                        async move { EventServiceClient::new(ch).create_event(r).await }
                    })
                    .await
                    .map_err(|e| call_error(e, routed.route))?;
                Reply::json(
                    201,
                    event_json(&resp.into_inner().event.unwrap_or_default()),
                )
                .from(Some(rep.addr.clone()))
            }
            (Route::Events, _) => {
                let msg = pb::ListEventsRequest {
                    page: Some(page(&q)?),
                    url_id: q_int(&q, "url_id")?,
                    user_id: q_int(&q, "user_id")?,
                    event_type: q.get("event_type").filter(|s| !s.is_empty()).cloned(),
                };
                list_events(up, msg, rid, tp, routed.route).await?
            }
            (Route::Users, Method::POST) => {
                let b = json_body(&req)?;
                let msg = pb::CreateUserRequest {
                    username: req_string(&b, "username")?,
                    email: req_string(&b, "email")?,
                };
                let (resp, rep) = up
                    .call(false, |ch| {
                        let r = grpc_req(msg.clone(), rid, tp);
                        async move { UserServiceClient::new(ch).create_user(r).await }
                    })
                    .await
                    .map_err(|e| call_error(e, routed.route))?;
                Reply::json(201, user_json(&resp.into_inner().user.unwrap_or_default()))
                    .from(Some(rep.addr.clone()))
            }
            (Route::Users, _) => {
                let msg = pb::ListUsersRequest {
                    page: Some(page(&q)?),
                };
                let (resp, rep) = up
                    .call(true, |ch| {
                        let r = grpc_req(msg, rid, tp);
                        async move { UserServiceClient::new(ch).list_users(r).await }
                    })
                    .await
                    .map_err(|e| call_error(e, routed.route))?;
                let resp = resp.into_inner();
                list_reply(resp.users.iter().map(user_json).collect(), resp.page)
                    .from(Some(rep.addr.clone()))
            }
            (Route::UsersBulk, _) => {
                let csv = bulk_csv(req.content_type.unwrap_or(""), &req.body)?;
                let (users, lines) = parse_user_csv(&csv)?;
                let msg = pb::BulkCreateUsersRequest { users };
                let (resp, rep) = up
                    .call(false, |ch| {
                        let r = grpc_req(msg.clone(), rid, tp);
                        async move { UserServiceClient::new(ch).bulk_create_users(r).await }
                    })
                    .await
                    .map_err(|e| call_error(e, routed.route))?;
                let resp = resp.into_inner();
                let errors: Vec<Value> = resp
                    .errors
                    .iter()
                    .map(|e| json!({"row": lines.get(e.index as usize).copied().unwrap_or(0), "error": e.error}))
                    .collect();
                Reply::json(
                    if resp.created.is_empty() { 400 } else { 201 },
                    json!({
                        "created": resp.created.len(),
                        "users": resp.created.iter().map(user_json).collect::<Vec<_>>(),
                        "errors": errors,
                    }),
                )
                .from(Some(rep.addr.clone()))
            }
            (Route::User, Method::GET) => {
                let id = routed.id.unwrap_or_default();
                let (resp, rep) = up
                    .call(true, |ch| {
                        let r = grpc_req(pb::GetUserRequest { id }, rid, tp);
                        async move { UserServiceClient::new(ch).get_user(r).await }
                    })
                    .await
                    .map_err(|e| call_error(e, routed.route))?;
                Reply::json(200, user_json(&resp.into_inner().user.unwrap_or_default()))
                    .from(Some(rep.addr.clone()))
            }
            (Route::User, Method::PUT) => {
                let b = json_body(&req)?;
                if b.is_empty() {
                    return Err(Reply::error(
                        400,
                        "nothing to update: give username or email",
                    ));
                }
                let msg = pb::UpdateUserRequest {
                    id: routed.id.unwrap_or_default(),
                    username: opt_string(&b, "username")?,
                    email: opt_string(&b, "email")?,
                };
                let (resp, rep) = up
                    .call(false, |ch| {
                        let r = grpc_req(msg.clone(), rid, tp);
                        async move { UserServiceClient::new(ch).update_user(r).await }
                    })
                    .await
                    .map_err(|e| call_error(e, routed.route))?;
                Reply::json(200, user_json(&resp.into_inner().user.unwrap_or_default()))
                    .from(Some(rep.addr.clone()))
            }
            (Route::User, _) => {
                let id = routed.id.unwrap_or_default();
                let (resp, rep) = up
                    .call(false, |ch| {
                        let r = grpc_req(pb::DeleteUserRequest { id }, rid, tp);
                        async move { UserServiceClient::new(ch).delete_user(r).await }
                    })
                    .await
                    .map_err(|e| call_error(e, routed.route))?;
                Reply::json(200, json!({"message": resp.into_inner().message}))
                    .from(Some(rep.addr.clone()))
            }
            (Route::UserUrls, _) => {
                let id = routed.id.unwrap_or_default();
                up.call(true, |ch| {
                    let r = grpc_req(pb::GetUserRequest { id }, rid, tp);
                    async move { UserServiceClient::new(ch).get_user(r).await }
                })
                .await
                .map_err(|e| call_error(e, routed.route))?;
                let msg = pb::ListLinksRequest {
                    page: Some(page(&q)?),
                    user_id: Some(id),
                    is_active: q_bool(&q, "is_active")?,
                };
                let (resp, rep) = up
                    .call(true, |ch| {
                        let r = grpc_req(msg, rid, tp);
                        async move { LinkServiceClient::new(ch).list_links(r).await }
                    })
                    .await
                    .map_err(|e| call_error(e, routed.route))?;
                let resp = resp.into_inner();
                list_reply(resp.links.iter().map(url_json).collect(), resp.page)
                    .from(Some(rep.addr.clone()))
            }
            (
                Route::Health
                | Route::Live
                | Route::Ready
                | Route::Metrics
                | Route::NotFound
                | Route::Shorten,
                _,
            ) => Reply::error(404, "not found"),
        })
    }
    .await;
    result.unwrap_or_else(|e| e)
}

async fn list_events(
    up: &Arc<Upstreams>,
    msg: pb::ListEventsRequest,
    rid: &str,
    tp: &str,
    route: Route,
) -> Result<Reply, Reply> {
    let (resp, rep) = up
        .call(true, |ch| {
            let r = grpc_req(msg.clone(), rid, tp);
            async move { EventServiceClient::new(ch).list_events(r).await }
        })
        .await
        .map_err(|e| call_error(e, route))?;
    let resp = resp.into_inner();
    Ok(
        list_reply(resp.events.iter().map(event_json).collect(), resp.page)
            .from(Some(rep.addr.clone())),
    )
}

/// Parses `username,email` rows (a header row is recognised and skipped);
/// returns the rows and their 1-based line numbers.
fn parse_user_csv(csv: &str) -> Result<(Vec<pb::CreateUserRequest>, Vec<usize>), Reply> {
    let mut out = Vec::new();
    let mut lines = Vec::new();
    for (i, line) in csv.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut cols = line.split(',').map(|c| c.trim().trim_matches('"'));
        let (u, e) = (cols.next().unwrap_or(""), cols.next().unwrap_or(""));
        if i == 0 && u.eq_ignore_ascii_case("username") {
            continue;
        }
        out.push(pb::CreateUserRequest {
            username: u.to_owned(),
            email: e.to_owned(),
        });
        lines.push(i + 1);
    }
    if out.is_empty() {
        return Err(Reply::error(
            400,
            "the CSV has no rows (expected username,email)",
        ));
    }
    if out.len() > 10_000 {
        return Err(Reply::error(400, "at most 10000 users per upload"));
    }
    Ok((out, lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_to_bounded_templates() {
        assert_eq!(route("/urls/12").route, Route::Url);
        assert_eq!(route("/urls/12").id, Some(12));
        assert_eq!(route("/urls/abc").route, Route::NotFound);
        assert_eq!(route("/urls/0").route, Route::NotFound);
        assert_eq!(route("/users/3/urls").route, Route::UserUrls);
        assert_eq!(route("/users/bulk").route, Route::UsersBulk);
        assert_eq!(route("/Ab12Cd").code.as_deref(), Some("Ab12Cd"));
        assert_eq!(route("/").route, Route::NotFound);
        assert_eq!(route("/a/b/c/d").route, Route::NotFound);
    }

    #[test]
    fn query_strings_decode() {
        let q = query_map(Some("a=1&b=x%20y&c=%zz&d"));
        assert_eq!(q["a"], "1");
        assert_eq!(q["b"], "x y");
        assert_eq!(q["c"], "%zz");
        assert_eq!(q["d"], "");
    }

    #[test]
    fn multipart_csv_is_extracted() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"u.csv\"\r\nContent-Type: text/csv\r\n\r\nusername,email\r\nann,ann@example.com\r\n--XyZ--\r\n";
        let csv = bulk_csv("multipart/form-data; boundary=XyZ", body).unwrap();
        let (rows, lines) = parse_user_csv(&csv).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].username, "ann");
        assert_eq!(lines, [2]);
        assert_eq!(bulk_csv("application/json", b"{}").unwrap_err().status, 415);
    }

    #[test]
    fn statuses_map_to_http() {
        let s = |c| tonic::Status::new(c, "m");
        assert_eq!(
            status_reply(&s(Code::FailedPrecondition), Route::Redirect).status,
            410
        );
        assert_eq!(
            status_reply(&s(Code::FailedPrecondition), Route::User).status,
            409
        );
        assert_eq!(status_reply(&s(Code::Internal), Route::Url).status, 502);
        assert_eq!(status_reply(&s(Code::Unavailable), Route::Url).status, 503);
    }
}
