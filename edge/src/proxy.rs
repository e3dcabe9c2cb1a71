//! The Pingora `ProxyHttp` implementation. The edge answers every request
//! itself in `request_filter` (it transcodes to gRPC rather than proxying
//! bytes), so the per-request phases are: identity (request id, trace
//! context), abuse control, HTTPS redirect, body read, the API call, the
//! response with its standard headers, and in `logging` the metrics.

use std::net::IpAddr;
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

use crate::api::{self, ApiRequest, Reply, Route};
use crate::balance::Upstreams;
use crate::limits::{Guard, Verdict, client_ip};
use crate::metrics::{EdgeMetrics, method_label};

/// Per-request state.
#[derive(Debug)]
pub struct Ctx {
    start: Instant,
    request_id: String,
    traceparent: String,
    route: Route,
    method: &'static str,
    status: u16,
    tls: bool,
    client: Option<IpAddr>,
    upstream: Option<String>,
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
    pub trusted_proxies: Vec<IpNet>,
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
}

/// Sets the span's parent from `incoming` and returns the traceparent to
/// send upstream: the span's own context when tracing exports spans,
/// otherwise `incoming` unchanged.
fn child_traceparent(span: &tracing::Span, incoming: &str) -> String {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct One<'a>(&'a str);
    impl opentelemetry::propagation::Extractor for One<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == "traceparent").then_some(self.0)
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent"]
        }
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&One(incoming)));
    let _ = span.set_parent(parent);
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() && sc.trace_id().to_string() != "00000000000000000000000000000000" {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    } else {
        incoming.to_owned()
    }
}

fn new_traceparent() -> String {
    let (t, s): (u128, u64) = (rand::random(), rand::random());
    format!("00-{t:032x}-{s:016x}-01")
}

impl Edge {
    fn health(&self, route: Route) -> Reply {
        let healthy = self.upstreams.healthy_count();
        let total = self.upstreams.replicas().len();
        match route {
            Route::Live => Reply::json(200, json!({"status": "alive"})),
            Route::Ready if healthy > 0 => Reply::json(200, json!({"status": "ready"})),
            Route::Ready => Reply::json(
                503,
                json!({"status": "not_ready", "error": "no healthy links replica"}),
            ),
            Route::Metrics => {
                let mut r = Reply::json(200, json!({}));
                r.body = Bytes::from(self.metrics.registry.render());
                r.content_type = "text/plain; version=0.0.4";
                r
            }
            _ => {
                let replicas: Vec<_> = self
                    .upstreams
                    .replicas()
                    .iter()
                    .map(|r| json!({"addr": r.addr, "healthy": r.is_healthy(), "in_flight": r.in_flight()}))
                    .collect();
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
                    "replicas": replicas,
                    "healthy_replicas": healthy,
                    "abuse_state": {
                        "shared": store.shared(),
                        "redis": if !store.shared() { "not configured" } else if store.redis_up() { "up" } else { "down" },
                        "known_bans": self.guard.known_bans(),
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
        h.insert_header("x-request-id", ctx.request_id.as_str())?;
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
        let mut buf = Vec::new();
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
                Ok(None) => return Ok(Bytes::from(buf)),
                Err(e) => {
                    return Err(Reply::error(
                        400,
                        format!("could not read the request body: {:?}", e.etype()),
                    ));
                }
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    fn new_ctx(&self) -> Self::CTX {
        Ctx {
            start: Instant::now(),
            request_id: String::new(),
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

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.start = Instant::now();
        let req = session.req_header();
        ctx.request_id = request_id::accept_or_generate(
            req.headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
        );
        ctx.traceparent = req
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .filter(|tp| request_id::trace_id_from_traceparent(tp).is_some())
            .map_or_else(new_traceparent, str::to_owned);
        ctx.method = method_label(&req.method);
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
        let xff = session
            .req_header()
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        ctx.client = peer.map(|p| client_ip(p, xff, &self.settings.trusted_proxies));

        if routed.route.is_health() {
            let reply = self.health(routed.route);
            self.respond(session, ctx, reply).await?;
            return Ok(true);
        }

        if let Some(ip) = ctx.client {
            match self.guard.check(ip).await {
                Verdict::Allow { limit, remaining } => {
                    let _ = (limit, remaining);
                }
                Verdict::Limited {
                    limit,
                    retry_after_s,
                    strikes,
                    warning,
                } => {
                    ctx.outcome = "rate_limited";
                    let mut r = Reply::error(429, "rate limit exceeded; slow down");
                    r.headers.push(("retry-after", retry_after_s.to_string()));
                    r.headers.push(("x-ratelimit-limit", limit.to_string()));
                    r.headers.push(("x-ratelimit-remaining", "0".into()));
                    r.headers
                        .push(("x-ratelimit-reset", retry_after_s.to_string()));
                    if warning {
                        r.headers.push((
                            "x-ratelimit-warning",
                            format!(
                                "strike {strikes}: continued requests over the limit lead to a ban"
                            ),
                        ));
                    }
                    self.respond(session, ctx, r).await?;
                    return Ok(true);
                }
                Verdict::Banned(b) => {
                    ctx.outcome = "banned";
                    let now = Utc::now();
                    let mut body = json!({
                        "error": "forbidden: this client is banned",
                        "ban_type": b.ban_type.as_str(),
                        "message": format!("banned: {}", b.reason),
                    });
                    if let Some(s) = b.remaining_s(now) {
                        body["ban_remaining_s"] = json!(s);
                    }
                    let mut r = Reply::json(403, body);
                    if let Some(s) = b.remaining_s(now) {
                        r.headers.push(("retry-after", s.to_string()));
                    }
                    self.respond(session, ctx, r).await?;
                    return Ok(true);
                }
            }
        }

        if self.settings.redirect_to_https && !ctx.tls {
            let req = session.req_header();
            let host = req
                .headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(|h| h.rsplit_once(':').map_or(h, |(n, _)| n).to_owned())
                .unwrap_or_else(|| "localhost".into());
            let port = self
                .settings
                .https_port
                .filter(|p| *p != 443)
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut r = Reply::json(308, json!({"error": "use https"}));
            r.headers
                .push(("location", format!("https://{host}{port}{pq}")));
            self.respond(session, ctx, r).await?;
            return Ok(true);
        }

        let method = session.req_header().method.clone();
        let body = if method == Method::POST || method == Method::PUT {
            let limit = if routed.route == Route::UsersBulk {
                api::MAX_UPLOAD_BODY
            } else {
                api::MAX_JSON_BODY
            };
            match Self::read_body(session, limit).await {
                Ok(b) => b,
                Err(r) => {
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
            request_id = %ctx.request_id,
            trace_id = request_id::trace_id_from_traceparent(&ctx.traceparent).unwrap_or(""),
        );
        ctx.traceparent = child_traceparent(&span, &ctx.traceparent);
        let req = session.req_header();
        let content_type = req
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let query = req.uri.query().map(str::to_owned);
        let reply = api::handle(
            &self.upstreams,
            ApiRequest {
                method: &method,
                routed: &routed,
                query: query.as_deref(),
                content_type: content_type.as_deref(),
                body,
                request_id: &ctx.request_id,
                traceparent: &ctx.traceparent,
            },
        )
        .instrument(span)
        .await;
        if reply.status >= 500 {
            ctx.outcome = "upstream_error";
        } else if reply.status >= 400 {
            ctx.outcome = "client_error";
        }
        if let (Some((link_id, user_id)), Some(code), true) =
            (reply.click, routed.code.as_ref(), method == Method::GET)
        {
            let h = &session.req_header().headers;
            let header = |n: &str| {
                h.get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .chars()
                    .take(512)
                    .collect::<String>()
            };
            let ev = shortlink_proto::events::LinkEvent {
                schema_version: shortlink_proto::events::SCHEMA_VERSION,
                time: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                kind: "click".into(),
                link_id,
                user_id,
                short_code: code.clone(),
                referrer: header("referer"),
                user_agent: header("user-agent"),
                request_id: ctx.request_id.clone(),
                source: self.settings.edge_id.clone(),
            };
            let key = link_id.to_string();
            // Typed: the bus serialises off this thread (or never, in process).
            self.events
                .bus
                .publish(&self.events.topics.links, Some(&key), ev.into());
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
            client_ip: ctx.client.map(|c| c.to_string()).unwrap_or_default(),
            method: ctx.method.to_owned(),
            route: ctx.route.template().to_owned(),
            path: session.req_header().uri.path().chars().take(512).collect(),
            status: u32::from(status),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream: ctx.upstream.clone().unwrap_or_default(),
            bytes: ctx.bytes,
            outcome: if e.is_some() && status == 0 {
                "client_gone".into()
            } else {
                ctx.outcome.to_owned()
            },
        };
        self.events.bus.publish(
            &self.events.topics.requests,
            Some(&ctx.request_id),
            ev.into(),
        );
        if let Some(e) = e {
            tracing::warn!(request_id = %ctx.request_id, trace_id, route = ctx.route.template(), error = %e, "request failed");
        } else if status >= 500 {
            tracing::warn!(
                request_id = %ctx.request_id, trace_id, route = ctx.route.template(), method = ctx.method,
                status, elapsed_ms = elapsed.as_millis() as u64, upstream = ?ctx.upstream, outcome = ctx.outcome,
                client = ?ctx.client, "request"
            );
        } else {
            tracing::debug!(
                request_id = %ctx.request_id, trace_id, route = ctx.route.template(), method = ctx.method,
                status, elapsed_ms = elapsed.as_millis() as u64, upstream = ?ctx.upstream, outcome = ctx.outcome,
                client = ?ctx.client, "request"
            );
        }
    }
}
