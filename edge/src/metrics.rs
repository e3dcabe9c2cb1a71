//! The edge's Prometheus metrics, served on the metrics port. Labels are
//! bounded: route templates, a fixed method list, status classes, replica
//! addresses from configuration.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};
use shortlink_runtime::metrics::{LATENCY_BUCKETS, Metrics};

/// Request-level metrics of the edge.
#[derive(Clone, Debug)]
pub struct EdgeMetrics {
    pub registry: Arc<Metrics>,
    requests: IntCounterVec,
    duration: HistogramVec,
    pub rate_limited: IntCounter,
    pub banned: IntCounter,
    pub bans_issued: IntCounterVec,
    pub tls_handshakes: IntCounter,
    pub unparseable_identity: IntCounter,
    pub local_limit_fallback: IntCounter,
}

/// A bounded method label.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

impl EdgeMetrics {
    pub fn new(registry: Arc<Metrics>) -> Self {
        let r = &registry;
        Self {
            requests: r.register(
                IntCounterVec::new(
                    Opts::new(
                        "http_requests_total",
                        "HTTP requests by route template, method and status class.",
                    ),
                    &["route", "method", "status_class"],
                )
                .expect("valid metric"),
            ),
            duration: r.register(
                HistogramVec::new(
                    HistogramOpts::new(
                        "http_request_duration_seconds",
                        "HTTP request latency by route template.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            rate_limited: r.register(
                IntCounter::new(
                    "rate_limited_total",
                    "Requests answered 429 by the rate limiter.",
                )
                .expect("valid metric"),
            ),
            banned: r.register(
                IntCounter::new(
                    "banned_requests_total",
                    "Requests refused 403 because the client is banned.",
                )
                .expect("valid metric"),
            ),
            bans_issued: r.register(
                IntCounterVec::new(
                    Opts::new("bans_issued_total", "Bans issued by this edge, by type."),
                    &["ban_type"],
                )
                .expect("valid metric"),
            ),
            tls_handshakes: r.register(
                IntCounter::new("tls_handshakes_total", "Completed TLS handshakes.")
                    .expect("valid metric"),
            ),
            unparseable_identity: r.register(
                IntCounter::new(
                    "client_identity_unparseable_total",
                    "Requests from a trusted proxy whose X-Forwarded-For held an entry that is not an address; limited as one synthetic client.",
                )
                .expect("valid metric"),
            ),
            local_limit_fallback: r.register(
                IntCounter::new(
                    "rate_limit_local_fallback_total",
                    "Requests limited by this edge's local budget because the shared limiter (Redis) did not answer.",
                )
                .expect("valid metric"),
            ),
            registry,
        }
    }

    /// Records one finished request.
    pub fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .with_label_values(&[route, method, class])
            .inc();
        self.duration.with_label_values(&[route]).observe(seconds);
    }
}

/// Serves `/metrics` on the metrics port.
pub struct MetricsApp(pub Arc<Metrics>);

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        let (status, ct, body) = if path == "/metrics" {
            (
                200,
                "text/plain; version=0.0.4",
                self.0.render().into_bytes(),
            )
        } else {
            (
                404,
                "application/json",
                br#"{"error":"not found"}"#.to_vec(),
            )
        };
        Response::builder()
            .status(status)
            .header("content-type", ct)
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}
