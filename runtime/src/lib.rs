//! Shared runtime for every shortlink component: telemetry (JSON logs and
//! optional OTLP traces), Prometheus metrics, the circuit breaker, graceful
//! shutdown, the HTTP side port (`/live`, `/ready`, `/health`, `/metrics`),
//! request ids, the gRPC observability layer, the one retry/backoff helper
//! and secret redaction. Components build on this crate instead of copying
//! these pieces. Subsystems that only some components use live in crates
//! of their own (the event bus: `shortlink-bus`; bans and limits:
//! `shortlink-abuse`), so a component links only what it uses.

pub mod breaker;
pub mod config;
pub mod grpc_layer;
pub mod metrics;
pub mod process_metrics;
pub mod redact;
pub mod redis_conn;
pub mod request_id;
pub mod retry;
pub mod shutdown;
pub mod side_port;
pub mod telemetry;

/// The version every component reports in `/health` and logs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
