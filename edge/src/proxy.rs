//! The Pingora `ProxyHttp` implementation. The edge answers every request
//! itself in `request_filter` (it transcodes to gRPC rather than proxying
//! bytes), so the per-request phases are: identity (request id, trace
//! context), abuse control, HTTPS redirect, body read, the API call, the
//! response with its standard headers, and in `logging` the metrics.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use http::Method;
use ipnet::IpNet;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use serde_json::json;
use shortlink_runtime::request_id;
use tracing::Instrument;

use crate::api::{self, Call, Handler, Local, Lookup, Reply, Route};
use crate::balance::Upstreams;
use crate::identity::Client;
use crate::limits::{Guard, Verdict};
use crate::metrics::{EdgeMetrics, method_label};

/// Per-request state.
#[derive(Debug)]
pub struct Ctx {
    start: Instant,
    /// The edge's own id for this request: sent upstream, written into
    /// events (the click de-duplication key) and logs. Never the client's.
    request_id: String,
    /// A sane `X-Request-ID` the client sent: echoed in the response and
    /// logged beside ours, never used as a key.
    client_request_id: Option<String>,
    traceparent: String,
    route: Route,
    method: &'static str,
    status: u16,
    tls: bool,
    client: Option<Client>,
    upstream: Option<Arc<str>>,
    outcome: &'static str,
    bytes: u64,
}

/// Settings the proxy needs per request.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub edge_id: String,
    pub hsts: String,
    pub redirect_to_https: bool,
    pub https_port: Option<u16>,
    /// Networks whose clients may read `/metrics` on the public listeners.
    pub metrics_allow: Vec<IpNet>,
    /// Host name used in HTTPS redirects.
    pub public_host: Option<String>,
    /// Request `Host` values that HTTPS redirects may echo.
    pub allowed_hosts: Vec<String>,
}

impl ProxySettings {
    /// The host of an HTTPS redirect: the request's host when it is on the
    /// allow-list, else the configured public host. Never an arbitrary
    /// `Host` header (that would make the edge an open redirector).
    pub fn redirect_host(&self, requested: Option<&str>) -> String {
        let name = requested.map(|h| {
            let h = h.trim();
            if h.starts_with('[') {
                h.split_inclusive(']').next().unwrap_or(h)
            } else {
                match h.rsplit_once(':') {
                    Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
                    _ => h,
                }
            }
        });
        match name {
            Some(n) if self.allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(n)) => {
                n.to_ascii_lowercase()
            }
            _ => self
                .public_host
                .clone()
                .unwrap_or_else(|| "localhost".into()),
        }
    }
}

/// Where the edge publishes request and click events.
pub struct EdgeEvents {
    pub bus: Arc<dyn shortlink_bus::EventBus>,
    pub topics: shortlink_bus::Topics,
}

/// The edge.
pub struct Edge {
    pub events: EdgeEvents,
    pub upstreams: Arc<Upstreams>,
    pub guard: Arc<Guard>,
    pub metrics: EdgeMetrics,
    pub settings: ProxySettings,
    pub started: Instant,
    /// Resolutions served without a links call (None: disabled).
    pub resolve_cache: Option<Arc<crate::resolve_cache::ResolveCache>>,
}

/// Sets the span's parent from `incoming` and returns the traceparent to
/// send upstream: the span's own context when tracing exports spans,
/// otherwise `incoming` unchanged.
fn child_traceparent(span: &tracing::Span, incoming: &str) -> String {
    use shortlink_runtime::telemetry::{set_remote_parent, traceparent_of};
    set_remote_parent(span, incoming);
    traceparent_of(span).unwrap_or_else(|| incoming.to_owned())
}

fn new_traceparent() -> String {
    let (t, s): (u128, u64) = (rand::random(), rand::random());
    format!("00-{t:032x}-{s:016x}-01")
}

impl Edge {
    /// The routes the edge answers itself. The public `/health` names no
    /// internal address (replica addresses are on the metrics port's
    /// `/metrics` and in logs); `/metrics` is answered only to clients in
    /// `METRICS_ALLOW` (the metrics port serves everyone it can reach).
    fn local(&self, l: Local, client: Option<Client>) -> Reply {
        let (healthy, total) = self.upstreams.counts();
        match l {
            Local::Live => Reply::json(200, json!({"status": "alive"})),
            Local::Ready if healthy > 0 => Reply::json(200, json!({"status": "ready"})),
            Local::Ready => Reply::json(
                503,
                json!({"status": "not_ready", "error": "no healthy links replica"}),
            ),
            Local::Metrics => {
                let allowed = matches!(client, Some(Client::Ip(ip))
                    if self.settings.metrics_allow.iter().any(|n| n.contains(&ip)));
                if !allowed {
                    return Reply::error(404, "not found");
                }
                let mut r = Reply::raw_json(200, Bytes::from(self.metrics.registry.render()));
                r.content_type = "text/plain; version=0.0.4";
                r
            }
            Local::OpenApi => api::openapi::reply(),
            Local::Home => crate::front::reply(),
            Local::Health => {
                let store = self.guard.store();
                let status = if healthy == total && store.redis_up() {
                    "ok"
                } else {
                    "degraded"
                };
                let body = json!({
                    "status": status,
                    "edge": self.settings.edge_id,
                    "version": shortlink_runtime::VERSION,
                    "uptime_s": self.started.elapsed().as_secs(),
                    "replicas": total,
                    "healthy_replicas": healthy,
                    "abuse_state": {
                        "shared": store.shared(),
                        "redis": if !store.shared() { "not configured" } else if store.redis_up() { "up" } else { "down" },
                        "enforce": self.guard.limits().enforce,
                    },
                });
                Reply::json(if healthy == 0 { 503 } else { 200 }, body)
            }
        }
    }

    async fn respond(&self, session: &mut Session, ctx: &mut Ctx, reply: Reply) -> Result<()> {
        let head = session.req_header().method == Method::HEAD;
        let mut h = ResponseHeader::build(reply.status, Some(8))?;
        h.insert_header("content-type", reply.content_type)?;
        h.insert_header("content-length", reply.body.len().to_string())?;
        h.insert_header(
            "x-request-id",
            ctx.client_request_id.as_deref().unwrap_or(&ctx.request_id),
        )?;
        let elapsed = ctx.start.elapsed();
        h.insert_header(
            "x-response-time",
            format!("{:.3}ms", elapsed.as_secs_f64() * 1000.0),
        )?;
        if ctx.tls {
            h.insert_header("strict-transport-security", self.settings.hsts.as_str())?;
        }
        for (k, v) in &reply.headers {
            h.append_header(*k, v.as_str())?;
        }
        ctx.status = reply.status;
        ctx.upstream = reply.upstream.clone();
        ctx.bytes = reply.body.len() as u64;
        let empty = head || reply.body.is_empty();
        session.write_response_header(Box::new(h), empty).await?;
        if !empty {
            session.write_response_body(Some(reply.body), true).await?;
        }
        Ok(())
    }

    async fn read_body(session: &mut Session, limit: usize) -> std::result::Result<Bytes, Reply> {
        if let Some(len) = session
            .req_header()
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
            && len > limit
        {
            return Err(Reply::error(
                413,
                format!("request body larger than {limit} bytes"),
            ));
        }
        let mut buf = bytes::BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > limit {
                        return Err(Reply::error(
                            413,
                            format!("request body larger than {limit} bytes"),
                        ));
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(buf.freeze()),
                Err(e) => {
                    return Err(Reply::error(
                        400,
                        format!("could not read the request body: {:?}", e.etype()),
                    ));
                }
            }
        }
    }

    /// Applies rate limits and bans; `Some(reply)` refuses the request.
    async fn abuse_check(&self, ctx: &mut Ctx, client: &Client) -> Option<Reply> {
        match self.guard.check(client).await {
            Verdict::Allow { .. } => None,
            Verdict::Limited {
                limit,
                retry_after_s,
                strikes,
                warning,
            } => {
                ctx.outcome = "rate_limited";
                let mut r = Reply::error(429, "rate limit exceeded; slow down")
                    .with_header("retry-after", retry_after_s.to_string())
                    .with_header("x-ratelimit-limit", limit.to_string())
                    .with_header("x-ratelimit-remaining", "0")
                    .with_header("x-ratelimit-reset", retry_after_s.to_string());
                if warning {
                    r = r.with_header(
                        "x-ratelimit-warning",
                        format!(
                            "strike {strikes}: continued requests over the limit lead to a ban"
                        ),
                    );
                }
                Some(r)
            }
            Verdict::Banned(b) => {
                ctx.outcome = "banned";
                let now = Utc::now();
                let mut body = json!({
                    "error": "forbidden: this client is banned",
                    "ban_type": b.ban_type.as_str(),
                    "message": format!("banned: {}", b.reason),
                });
                let mut r = Reply::json(403, json!({}));
                if let Some(s) = b.remaining_s(now) {
                    body["ban_remaining_s"] = json!(s);
                    r = r.with_header("retry-after", s.to_string());
                }
                r.body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
                Some(r)
            }
        }
    }

    /// Publishes the click of a served `GET` redirect. Keyed by the edge's
    /// own request id, so a client reusing an `X-Request-ID` can neither
    /// erase its own clicks nor hide them.
    fn publish_click(&self, session: &Session, ctx: &Ctx, code: &str, link_id: i64, user_id: i64) {
        let h = &session.req_header().headers;
        let header = |n: &str| {
            h.get(n)
                .map(|v| {
                    String::from_utf8_lossy(v.as_bytes())
                        .chars()
                        .take(512)
                        .collect::<String>()
                })
                .unwrap_or_default()
        };
        let ev = shortlink_proto::events::LinkEvent {
            schema_version: shortlink_proto::events::SCHEMA_VERSION,
            time: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            kind: "click".into(),
            link_id,
            user_id,
            short_code: code.to_owned(),
            referrer: header("referer"),
            user_agent: header("user-agent"),
            request_id: ctx.request_id.clone(),
            source: self.settings.edge_id.clone(),
            client_request_id: ctx.client_request_id.clone().unwrap_or_default(),
        };
        let key = link_id.to_string();
        // Typed: the bus serialises off this thread (or never, in process).
        // The request's trace context travels with the event when spans
        // are exported (consumers join the trace); otherwise nothing extra
        // is carried on the hot path.
        let tp = shortlink_runtime::telemetry::exporting().then_some(ctx.traceparent.as_str());
        self.events
            .bus
            .publish_traced(&self.events.topics.links, Some(&key), ev.into(), tp);
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    /// No downstream modules: the edge answers every request itself with
    /// small bodies, so Pingora's (disabled) compression module would only
    /// cost allocations on every request.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Self::CTX {
        Ctx {
            start: Instant::now(),
            request_id: String::new(),
            client_request_id: None,
            traceparent: String::new(),
            route: Route::NotFound,
            method: "OTHER",
            status: 0,
            tls: false,
            client: None,
            upstream: None,
            outcome: "ok",
            bytes: 0,
        }
    }

    /// Failures caused by the client (a reset, a disconnect before the
    /// answer was written, a malformed request) are not the operator's
    /// problem: they are counted in the request event (`client_gone`) and
    /// logged at WARN by `logging`, never as Pingora's ERROR line, which
    /// would reach the alerter and let any client page the operator.
    ///
    /// The edge never proxies bytes upstream (its links calls are gRPC, not
    /// Pingora's), so every read, write or connection error Pingora meets
    /// is on the client's connection, whatever source it is tagged with: a
    /// write to a client that reset the connection arrives as a
    /// `WriteError` without the downstream tag.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, e: &Error) -> bool {
        matches!(e.esource(), pingora::ErrorSource::Downstream)
            || matches!(
                e.etype(),
                ErrorType::ReadError
                    | ErrorType::WriteError
                    | ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout
                    | ErrorType::ConnectionClosed
                    | ErrorType::H2Error
                    | ErrorType::InvalidH2
                    | ErrorType::H2Downgrade
            )
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        // Every request is answered in request_filter; reaching this is a bug.
        Error::e_explain(
            ErrorType::InternalError,
            "the edge never proxies bytes upstream",
        )
    }

    /// The phases of one request, in order: identity, route, local routes
    /// (health paths are never limited), abuse control, HTTPS redirect,
    /// body, the API call, the click event, the response.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.start = Instant::now();
        let req = session.req_header();
        ctx.request_id = request_id::generate();
        ctx.client_request_id = req
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| request_id::is_valid(v))
            .map(str::to_owned);
        ctx.traceparent = req
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .filter(|tp| request_id::trace_id_from_traceparent(tp).is_some())
            .map_or_else(new_traceparent, str::to_owned);
        ctx.method = method_label(&req.method);
        let method = req.method.clone();
        let routed = api::route(req.uri.path());
        ctx.route = routed.route;
        ctx.tls = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .is_some();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let xff = session.req_header().headers.get_all("x-forwarded-for");
        ctx.client = peer.map(|p| self.guard.identify(p, xff.iter().map(|v| v.as_bytes())));

        let handler = match api::lookup(routed.route, &method) {
            Lookup::Found(h) => h,
            Lookup::MethodNotAllowed(allow) => {
                ctx.outcome = "client_error";
                let r = Reply::error(405, "method not allowed").with_header("allow", allow);
                self.respond(session, ctx, r).await?;
                return Ok(true);
            }
            Lookup::NotFound => Handler::Api(not_found),
        };
        if let Handler::Local(l) = handler
            && routed.route.is_health()
        {
            let reply = self.local(l, ctx.client);
            self.respond(session, ctx, reply).await?;
            return Ok(true);
        }

        if let Some(client) = ctx.client
            && let Some(r) = self.abuse_check(ctx, &client).await
        {
            self.respond(session, ctx, r).await?;
            return Ok(true);
        }

        if self.settings.redirect_to_https && !ctx.tls {
            let req = session.req_header();
            let host = self
                .settings
                .redirect_host(req.headers.get("host").and_then(|h| h.to_str().ok()));
            let port = self
                .settings
                .https_port
                .filter(|p| *p != 443)
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
            let r = Reply::json(308, json!({"error": "use https"}))
                .with_header("location", format!("https://{host}{port}{pq}"));
            self.respond(session, ctx, r).await?;
            return Ok(true);
        }

        let f = match handler {
            Handler::Api(f) => f,
            Handler::Local(l) => {
                let reply = self.local(l, ctx.client);
                self.respond(session, ctx, reply).await?;
                return Ok(true);
            }
        };
        let body = if method == Method::POST || method == Method::PUT {
            match Self::read_body(session, routed.route.body_limit()).await {
                Ok(b) => b,
                Err(r) => {
                    ctx.outcome = "client_error";
                    self.respond(session, ctx, r).await?;
                    return Ok(true);
                }
            }
        } else {
            Bytes::new()
        };
        // The request's span: a child of the caller's trace context, exported
        // over OTLP when configured; the links calls become its children.
        let span = tracing::info_span!(
            "http_request",
            route = ctx.route.template(),
            method = ctx.method,
            request_id = ctx.request_id.as_str(),
            trace_id = request_id::trace_id_from_traceparent(&ctx.traceparent).unwrap_or(""),
        );
        if shortlink_runtime::telemetry::exporting() {
            ctx.traceparent = child_traceparent(&span, &ctx.traceparent);
        }
        let req = session.req_header();
        let call = Call {
            upstreams: &self.upstreams,
            routed: &routed,
            query: req.uri.query(),
            content_type: req
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            body,
            request_id: &ctx.request_id,
            traceparent: &ctx.traceparent,
            cache: self.resolve_cache.as_deref(),
        };
        let reply = api::dispatch(f, &call).instrument(span).await;
        if reply.status >= 500 {
            ctx.outcome = "upstream_error";
        } else if reply.status >= 400 {
            ctx.outcome = "client_error";
        }
        if let (Some((link_id, user_id)), Some(code), true) =
            (reply.click, routed.code.as_deref(), method == Method::GET)
        {
            self.publish_click(session, ctx, code, link_id, user_id);
        }
        self.respond(session, ctx, reply).await?;
        Ok(true)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        let status = if ctx.status == 0 {
            session.response_written().map_or(0, |r| r.status.as_u16())
        } else {
            ctx.status
        };
        let elapsed = ctx.start.elapsed();
        self.metrics.observe(
            ctx.route.template(),
            ctx.method,
            status,
            elapsed.as_secs_f64(),
        );
        let trace_id = request_id::trace_id_from_traceparent(&ctx.traceparent).unwrap_or("");
        let ev = shortlink_proto::events::RequestEvent {
            schema_version: shortlink_proto::events::SCHEMA_VERSION,
            time: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            edge_id: self.settings.edge_id.clone(),
            request_id: ctx.request_id.clone(),
            trace_id: trace_id.to_owned(),
            client_ip: ctx
                .client
                .map(|c| {
                    use std::fmt::Write;
                    let mut ip = String::with_capacity(39);
                    let _ = write!(ip, "{c}");
                    ip
                })
                .unwrap_or_default(),
            method: ctx.method.to_owned(),
            route: ctx.route.template().to_owned(),
            path: String::from_utf8_lossy(session.req_header().uri.path().as_bytes())
                .chars()
                .take(512)
                .collect(),
            status: u32::from(status),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream: ctx.upstream.as_deref().unwrap_or_default().to_owned(),
            bytes: ctx.bytes,
            outcome: if e.is_some() && status == 0 {
                "client_gone".into()
            } else {
                ctx.outcome.to_owned()
            },
            client_request_id: ctx.client_request_id.clone().unwrap_or_default(),
        };
        let tp = shortlink_runtime::telemetry::exporting().then_some(ctx.traceparent.as_str());
        self.events.bus.publish_traced(
            &self.events.topics.requests,
            Some(&ctx.request_id),
            ev.into(),
            tp,
        );
        let client_request_id = ctx.client_request_id.as_deref().unwrap_or("");
        if let Some(e) = e {
            tracing::warn!(request_id = %ctx.request_id, client_request_id, trace_id, route = ctx.route.template(), error = %e, "request failed");
        } else if status >= 500 {
            tracing::warn!(
                request_id = %ctx.request_id, client_request_id, trace_id, route = ctx.route.template(), method = ctx.method,
                status, elapsed_ms = elapsed.as_millis() as u64, upstream = ?ctx.upstream, outcome = ctx.outcome,
                client = ?ctx.client, "request"
            );
        } else {
            tracing::debug!(
                request_id = %ctx.request_id, client_request_id, trace_id, route = ctx.route.template(), method = ctx.method,
                status, elapsed_ms = elapsed.as_millis() as u64, upstream = ?ctx.upstream, outcome = ctx.outcome,
                client = ?ctx.client, "request"
            );
        }
    }
}

/// The answer for a path that matches no route (after abuse control, so
/// that scanners are limited like everyone else).
fn not_found<'a>(
    _c: &'a Call<'a>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = api::Outcome> + Send + 'a>> {
    Box::pin(async { Err(Reply::error(404, "not found")) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_redirects_never_echo_an_unlisted_host() {
        let s = ProxySettings {
            edge_id: "e".into(),
            hsts: String::new(),
            redirect_to_https: true,
            https_port: None,
            metrics_allow: vec![],
            public_host: Some("sho.rt".into()),
            allowed_hosts: vec!["www.sho.rt".into(), "[::1]".into()],
        };
        assert_eq!(s.redirect_host(Some("evil.example")), "sho.rt");
        assert_eq!(s.redirect_host(Some("evil.example:8080")), "sho.rt");
        assert_eq!(s.redirect_host(None), "sho.rt");
        assert_eq!(s.redirect_host(Some("WWW.sho.rt:80")), "www.sho.rt");
        assert_eq!(s.redirect_host(Some("[::1]:8080")), "[::1]");
        assert_eq!(s.redirect_host(Some("www.sho.rt.evil.example")), "sho.rt");
    }
}
