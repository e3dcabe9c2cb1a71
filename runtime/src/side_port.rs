//! The HTTP side port every gRPC component serves next to its gRPC port:
//! `/live` (the process runs), `/ready` (it can do useful work), `/health`
//! (pretty-printed JSON for humans and dashboards) and `/metrics`
//! (Prometheus text format).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The outcome of a health check.
#[derive(Clone, Debug)]
pub struct HealthReport {
    /// Whether the component can serve requests now.
    pub ready: bool,
    /// Whether every dependency is fine (false while degraded: the cache is
    /// down, say, although requests are still served).
    pub healthy: bool,
    /// Why it is not ready or not healthy; empty when all is well.
    pub problems: Vec<String>,
    /// Component-specific details (database, cache, breaker, pool...).
    pub details: Map<String, Value>,
}

/// Something that can check a component's health.
pub trait HealthCheck: Send + Sync + 'static {
    /// Checks dependencies; must finish quickly (bound every probe with a
    /// timeout).
    fn check(&self) -> BoxFuture<'_, HealthReport>;
}

#[derive(Clone)]
struct SideState {
    service: &'static str,
    instance: String,
    metrics: Arc<Metrics>,
    check: Arc<dyn HealthCheck>,
    started: Instant,
}

/// Builds the side-port router.
pub fn router(
    service: &'static str,
    instance: String,
    metrics: Arc<Metrics>,
    check: Arc<dyn HealthCheck>,
) -> Router {
    let state = SideState {
        service,
        instance,
        metrics,
        check,
        started: Instant::now(),
    };
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .fallback(not_found)
        .with_state(state)
}

/// The side port of a component with no dependency to check (consumers,
/// the watchdog, backups): `/metrics`, `/live`, and `/ready`, which is
/// ready whenever the process answers.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        m.render(),
                    )
                }
            }),
        )
        .route(
            "/ready",
            get(|| async { axum::Json(json!({"status": "ready"})) }),
        )
        .merge(live_router())
}

/// `GET /live` alone, to merge into a component's own HTTP router.
pub fn live_router() -> Router {
    Router::new().route(
        "/live",
        get(|| async { axum::Json(json!({"status": "alive"})) }),
    )
}

/// Binds `addr` (`what` names its setting in the error, for example
/// `CONSUMER_METRICS_ADDR`) and serves `router` in the background until
/// `shutdown` fires; returns the bound address.
pub async fn spawn_serve(
    addr: std::net::SocketAddr,
    what: &str,
    router: Router,
    shutdown: Shutdown,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {what} {addr}: {e}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, router, shutdown));
    Ok(local)
}

/// Serves `router` on an already-bound listener until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}

fn pretty(status: StatusCode, v: Value) -> Response {
    let body = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into());
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body + "\n",
    )
        .into_response()
}

async fn live(State(s): State<SideState>) -> Response {
    pretty(
        StatusCode::OK,
        json!({"status": "alive", "service": s.service}),
    )
}

async fn ready(State(s): State<SideState>) -> Response {
    let r = s.check.check().await;
    if r.ready {
        pretty(StatusCode::OK, json!({"status": "ready"}))
    } else {
        pretty(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "error": r.problems.join("; ")}),
        )
    }
}

async fn health(State(s): State<SideState>) -> Response {
    let r = s.check.check().await;
    let status = if !r.ready {
        "unavailable"
    } else if !r.healthy {
        "degraded"
    } else {
        "ok"
    };
    let mut body = Map::new();
    body.insert("status".into(), status.into());
    body.insert("service".into(), s.service.into());
    body.insert("instance".into(), s.instance.clone().into());
    body.insert("version".into(), crate::VERSION.into());
    body.insert("uptime_s".into(), s.started.elapsed().as_secs().into());
    if !r.problems.is_empty() {
        body.insert("problems".into(), r.problems.clone().into());
    }
    body.extend(r.details);
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    pretty(code, Value::Object(body))
}

async fn render_metrics(State(s): State<SideState>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    pretty(StatusCode::NOT_FOUND, json!({"error": "not found"}))
}
