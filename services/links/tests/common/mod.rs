//! Helpers for the links service's integration tests: a links service
//! started in process on port 0 with its own database and key prefix. The
//! generic pieces live in `shortlink-testkit`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use shortlink_links::{App, LinksConfig};
use shortlink_proto::v1::event_service_client::EventServiceClient;
use shortlink_proto::v1::link_service_client::LinkServiceClient;
use shortlink_proto::v1::user_service_client::UserServiceClient;
use shortlink_runtime::shutdown::Shutdown;
pub use shortlink_testkit::*;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    cfg: LinksConfig,
}

/// A config with loopback port-0 listeners, no env influence, and fast
/// health checks.
pub fn base_config(database_url: Option<String>, redis_url: Option<String>) -> LinksConfig {
    let mut cfg = Wrapper::parse_from(["test"]).cfg;
    cfg.grpc_addr = "127.0.0.1:0".parse().unwrap();
    cfg.http_addr = "127.0.0.1:0".parse().unwrap();
    cfg.instance_id = None;
    cfg.db.database_url = database_url;
    cfg.db.data_dir = std::env::temp_dir().join(format!("shortlink-test-{}", random_suffix()));
    cfg.db.db_connect_retry_s = 5;
    cfg.redis_url = redis_url;
    cfg.cache_prefix = format!("shortlink-test:{}:", random_suffix());
    cfg.cache_disabled = false;
    cfg.health_interval_ms = 200;
    cfg.shutdown_grace_s = 5;
    cfg.shutdown_delay_ms = 0;
    cfg
}

/// A running links service.
pub struct TestApp {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub prefix: String,
    pub shutdown: Shutdown,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    pub db: Option<TestDb>,
}

impl TestApp {
    pub async fn start(cfg: LinksConfig, db: Option<TestDb>) -> Self {
        let prefix = cfg.cache_prefix.clone();
        let app = App::build(cfg).await.expect("links service builds");
        let (grpc, http) = (app.grpc_addr(), app.http_addr());
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Self {
            grpc,
            http,
            prefix,
            shutdown,
            handle: Some(handle),
            db,
        }
    }

    /// PostgreSQL (fresh database) and Redis (fresh prefix).
    pub async fn on_postgres_and_redis() -> Self {
        require_redis().await;
        let db = TestDb::new().await;
        let cfg = base_config(Some(db.url.clone()), Some(redis_url()));
        Self::start(cfg, Some(db)).await
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .connect()
            .await
            .expect("connect to links gRPC")
    }

    pub async fn links(&self) -> LinkServiceClient<Channel> {
        LinkServiceClient::new(self.channel().await)
    }

    pub async fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel().await)
    }

    pub async fn events(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.channel().await)
    }

    /// Triggers shutdown and waits for the service to stop.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(h) = self.handle.take() {
            h.await
                .expect("service task")
                .expect("service stopped cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}
