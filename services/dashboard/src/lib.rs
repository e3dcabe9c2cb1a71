//! `shortlink dashboard`: the ops dashboard, one axum server with its own
//! database (the dashboard database, never the app's), hosting the
//! dashboard ingest so that one process both fills and shows it.
//!
//! Modules: `ingest` (the bus consumer: aggregates, the live ring, the
//! timeline), `live` (the normalised live event and its filters), `store`
//! (the dashboard's own tables and bounded queries), `auth` (operator
//! token, session cookie, CSRF, loopback-only reads), `chart` (SVG charts
//! drawn on the server), `prom` (Prometheus's HTTP API), `k6` (load test
//! runs), `pages` (one module per page, plus the layout), and this module
//! (flags, state, the route table, start-up).

pub mod auth;
pub mod chart;
pub mod ingest;
pub mod k6;
pub mod live;
pub mod pages;
pub mod prom;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use shortlink_bus::EventBus;
use shortlink_consumers::GroupArgs;
use shortlink_runtime::metrics::Metrics;
use shortlink_runtime::shutdown::Shutdown;
use sqlx::AnyPool;

/// Flags of `shortlink dashboard`.
#[derive(Clone, Debug, clap::Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub group: GroupArgs,
    /// Where the dashboard listens (pages, `/live`, `/ready`, `/metrics`).
    #[arg(
        long = "addr",
        env = "DASHBOARD_ADDR",
        default_value = "127.0.0.1:3000"
    )]
    pub addr: SocketAddr,
    /// The dashboard database (PostgreSQL or sqlite:), separate from the app's.
    #[arg(
        long,
        env = "DASHBOARD_DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://./data/dashboard.db?mode=rwc"
    )]
    pub dashboard_database_url: String,
    /// The operator token: logging in with it allows actions (chaos, load
    /// tests, notes, acknowledgements). Unset: every action is refused.
    #[arg(long, env = "DASHBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve the read-only pages to clients other than loopback without a
    /// login (off: only loopback, or a logged-in operator, sees them).
    #[arg(long, env = "DASHBOARD_REMOTE_READ", default_value_t = false)]
    pub remote_read: bool,
    /// The watchdog's control API (the chaos panel).
    #[arg(long, env = "WATCHDOG_URL", default_value = "http://127.0.0.1:9190")]
    pub watchdog_url: String,
    /// Bearer token of the watchdog's control API.
    #[arg(long, env = "WATCHDOG_TOKEN", hide_env_values = true)]
    pub watchdog_token: Option<String>,
    /// Prometheus's base URL; golden signals come from it when set, from
    /// the dashboard database otherwise.
    #[arg(long, env = "PROMETHEUS_URL", hide_env_values = true)]
    pub prometheus_url: Option<String>,
    /// The k6 binary (default: `k6` on PATH).
    #[arg(long, env = "K6_BIN")]
    pub k6_bin: Option<std::path::PathBuf>,
    /// Edges a load test may target (comma-separated base URLs); the
    /// dashboard never sends load anywhere else.
    #[arg(
        long,
        env = "DASHBOARD_EDGES",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub edges: Vec<String>,
    /// Events kept in the live ring buffer.
    #[arg(long, env = "DASHBOARD_RING_SIZE", default_value_t = 2000)]
    pub ring_size: usize,
    /// Hours of raw request events and samples kept.
    #[arg(long, env = "DASHBOARD_RAW_RETENTION_H", default_value_t = 6)]
    pub raw_retention_h: i64,
}

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub args: DashboardArgs,
    pub pool: AnyPool,
    pub live: live::Live,
    pub auth: auth::Sessions,
    pub http: reqwest::Client,
    pub load: k6::Runner,
    pub metrics: Arc<Metrics>,
    pub ready: std::sync::atomic::AtomicBool,
    pub shutdown: Shutdown,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

const CSS: &str = include_str!("../assets/dashboard.css");
const JS: &str = include_str!("../assets/dashboard.js");

/// The route table: every page, action and asset on one line.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::golden::page))
        .route("/logs", get(pages::logs::page))
        .route("/logs/stream", get(pages::logs::stream))
        .route("/errors", get(pages::errors::page))
        .route("/load", get(pages::load::page))
        .route("/load/status", get(pages::load::status))
        .route("/load/start", post(pages::load::start))
        .route("/load/stop", post(pages::load::stop))
        .route("/incidents", get(pages::incidents::page))
        .route("/incidents/note", post(pages::incidents::note))
        .route("/incidents/{id}/ack", post(pages::incidents::ack))
        .route("/api/alertmanager", post(pages::incidents::alertmanager))
        .route("/chaos", get(pages::chaos::page))
        .route("/chaos/components", get(pages::chaos::components))
        .route("/chaos/{name}/{action}", post(pages::chaos::action))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/assets/dashboard.css", get(css))
        .route("/assets/dashboard.js", get(js))
        .route("/live", get(live_probe))
        .route("/ready", get(ready_probe))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::read_guard,
        ))
        .with_state(state)
}

fn asset(body: &'static str, ty: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(ty)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        body,
    )
}

async fn css() -> impl IntoResponse {
    asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> impl IntoResponse {
    asset(JS, "text/javascript; charset=utf-8")
}

async fn live_probe() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "alive"}))
}

async fn ready_probe(State(s): State<AppState>) -> impl IntoResponse {
    let db = sqlx::query("SELECT 1").execute(&s.pool).await.is_ok();
    if db && s.ready.load(std::sync::atomic::Ordering::Relaxed) {
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready"})),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                serde_json::json!({"status": "not_ready", "error": if db { "subscribing to the bus" } else { "dashboard database unreachable" }}),
            ),
        )
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn not_found() -> impl IntoResponse {
    pages::error_page(StatusCode::NOT_FOUND, "No such page.")
}

/// Opens the database, binds the listener and serves until shutdown; the
/// ingest runs beside the server on `bus`.
pub async fn run(
    args: DashboardArgs,
    bus: Arc<dyn EventBus>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on DASHBOARD_ADDR {}: {e}", args.addr))?;
    serve(listener, args, bus, metrics, shutdown).await
}

/// [`run`] on an already-bound listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    args: DashboardArgs,
    bus: Arc<dyn EventBus>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pool = shortlink_consumers::dashboard::open(&args.dashboard_database_url, 4).await?;
    store::migrate(&pool).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let state = AppState(Arc::new(Inner {
        live: live::Live::new(args.ring_size),
        auth: auth::Sessions::default(),
        load: k6::Runner::default(),
        http,
        pool,
        metrics,
        ready: std::sync::atomic::AtomicBool::new(false),
        shutdown: shutdown.clone(),
        args,
    }));
    let app = router(state.clone());
    tracing::info!(addr = %listener.local_addr()?, "dashboard listening");
    let s = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { s.wait().await })
        .await
    });
    let ingest = ingest::run(state.clone(), bus, shutdown.clone()).await;
    shutdown.trigger();
    state.load.stop_now().await;
    let _ = server.await;
    ingest
}
