//! `shortlink edge`: the public HTTP API on Pingora, transcoded to gRPC
//! calls on the links replicas.
//!
//! One module per concern: `api` (routing and transcoding), `balance`
//! (least in-flight selection, health checks, ejection, retries),
//! `discovery` (`dns://` upstreams re-resolved into the replica set),
//! `identity` (who a request comes from: peer and `X-Forwarded-For`),
//! `resolve_cache` (the redirect path's own cache of resolutions), `front`
//! (the public front page at `/`), `limits`
//! (rate limits and ban escalation), `tls` (certificates), `proxy` (the
//! Pingora phases), `conn` (connection caps, header deadline, keep-alive
//! and HTTP/2 limits), `metrics`, `config` and `app` (start-up).

pub mod api;
pub mod app;
pub mod balance;
pub mod config;
pub mod conn;
pub mod discovery;
pub mod front;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod resolve_cache;
pub mod tls;

pub use app::{run, run_with_bus};
pub use config::EdgeConfig;
