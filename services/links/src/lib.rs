//! `shortlink links`: links, users and events over gRPC.
//!
//! Layers, outside in: `app` (start-up, listeners, shutdown), `grpc` (wire
//! translation), `service` (validation, caching, breaker), `store` and
//! `cache` (adapters behind traits, each with an embedded and a real
//! implementation), `import` (seed CSV loading).

pub mod app;
pub mod cache;
pub mod config;
pub mod error;
pub mod grpc;
pub mod import;
pub mod model;
pub mod service;
pub mod store;
pub mod validate;

pub use app::App;
pub use config::LinksConfig;
