//! `shortlink admin`: ban and rate-limit management over gRPC, for
//! operators with grpcurl. Every call needs `authorization: Bearer
//! <ADMIN_TOKEN>`. State lives in the shared `AbuseStore` (Redis, with bans
//! persisted in PostgreSQL); every change is announced to the edges.
//! Clients are named by any address (IPv4, IPv6, IPv4-mapped IPv6) or by
//! the network they are keyed by: an IPv6 address names its /64 (the
//! edges' `CLIENT_PREFIX_V6`), so a ban of one address bans the network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, json};
use shortlink_abuse::client::{Target, parse_target};
use shortlink_abuse::model::MAX_DURATION_S;
use shortlink_abuse::{AbuseStore, Ban, BanType, Limits, Prefixes, StoreError, StoreOptions};
use shortlink_proto::v1 as pb;
use shortlink_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use shortlink_runtime::config::ConfigError;
use shortlink_runtime::grpc_layer::{ObservabilityLayer, nodelay_incoming};
use shortlink_runtime::metrics::{Metrics, RpcMetrics};
use shortlink_runtime::shutdown::Shutdown;
use shortlink_runtime::side_port::{self, HealthCheck, HealthReport};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

/// Flags of `shortlink admin`.
#[derive(Clone, Debug, clap::Args)]
pub struct AdminConfig {
    /// gRPC listen address.
    #[arg(long, env = "ADMIN_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// HTTP side port (/live, /ready, /health, /metrics).
    #[arg(long, env = "ADMIN_HTTP_ADDR", default_value = "127.0.0.1:9182")]
    pub http_addr: SocketAddr,
    /// Bearer token every call must carry (at least 16 characters).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// Redis shared with the edges (required: bans must reach every edge).
    #[arg(long = "redis-url", env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: String,
    /// PostgreSQL where bans are persisted (recommended).
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Prefix of the Redis keys and channel shared with the edges.
    #[arg(long, env = "ABUSE_KEY_PREFIX", default_value = "shortlink:abuse:")]
    pub abuse_prefix: String,
    /// Default sustained requests per second per IP (until set through admin).
    #[arg(long, env = "RATE_LIMIT_RPS", default_value_t = 50.0)]
    pub rate_limit_rps: f64,
    /// Default burst per IP.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 100.0)]
    pub rate_limit_burst: f64,
    /// IPv4 clients are keyed by networks of this length; must match the
    /// edges' CLIENT_PREFIX_V4.
    #[arg(long, env = "CLIENT_PREFIX_V4", default_value_t = 32)]
    pub client_prefix_v4: u8,
    /// IPv6 clients are keyed by networks of this length (a ban of one
    /// address bans its network); must match the edges' CLIENT_PREFIX_V6.
    #[arg(long, env = "CLIENT_PREFIX_V6", default_value_t = 64)]
    pub client_prefix_v6: u8,
}

impl AdminConfig {
    fn defaults(&self) -> Limits {
        Limits {
            rps: self.rate_limit_rps,
            burst: self.rate_limit_burst,
            ..Limits::default()
        }
    }

    fn prefixes(&self) -> Prefixes {
        Prefixes {
            v4: self.client_prefix_v4,
            v6: self.client_prefix_v6,
        }
    }

    /// Checks values clap cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.admin_token.len() < 16 {
            return Err(ConfigError::new(
                "ADMIN_TOKEN must be set to at least 16 characters",
            ));
        }
        if !self.redis_url.starts_with("redis://") {
            return Err(ConfigError::new(
                "REDIS_URL must be a redis:// URL shared with the edges",
            ));
        }
        self.defaults().validate().map_err(|e| {
            ConfigError::new(format!(
                "RATE_LIMIT_RPS / RATE_LIMIT_BURST out of range: {e}"
            ))
        })?;
        self.prefixes()
            .validate()
            .map_err(|e| ConfigError::new(format!("CLIENT_PREFIX_V4 / CLIENT_PREFIX_V6: {e}")))
    }
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    shortlink_proto::timestamp(t.timestamp(), t.timestamp_subsec_nanos() as i32)
}

fn ban_pb(b: &Ban) -> pb::Ban {
    pb::Ban {
        ip: b.ip.clone(),
        ban_type: b.ban_type.as_str().into(),
        reason: b.reason.clone(),
        strikes: b.strikes,
        hour_bans: b.hour_bans,
        issued_by: b.issued_by.clone(),
        created_at: Some(ts(b.created_at)),
        expires_at: b.expires_at.map(ts),
        remaining_s: b.remaining_s(Utc::now()),
    }
}

fn limits_pb(l: &Limits) -> pb::Limits {
    pb::Limits {
        rps: l.rps,
        burst: l.burst,
        strike_window_s: l.strike_window_s,
        warn_strikes: l.warn_strikes,
        ban_strikes: l.ban_strikes,
        ban_duration_s: l.ban_duration_s,
        permanent_after: l.permanent_after,
        enforce: l.enforce,
    }
}

fn unavailable(e: StoreError) -> Status {
    Status::unavailable(format!("abuse state store unavailable: {}", e.0))
}

/// The gRPC service.
#[derive(Clone, Debug)]
pub struct AdminApi {
    store: Arc<AbuseStore>,
    prefixes: Prefixes,
}

impl AdminApi {
    fn target(&self, ip: &str) -> Result<Target, Status> {
        parse_target(ip, &self.prefixes).map_err(Status::invalid_argument)
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_bans(
        &self,
        _: Request<pb::ListBansRequest>,
    ) -> Result<Response<pb::ListBansResponse>, Status> {
        let mut bans = self.store.bans().await.map_err(unavailable)?;
        bans.sort_by_key(|b| std::cmp::Reverse(b.created_at));
        Ok(Response::new(pb::ListBansResponse {
            bans: bans.iter().map(ban_pb).collect(),
        }))
    }

    async fn get_ban(
        &self,
        req: Request<pb::GetBanRequest>,
    ) -> Result<Response<pb::GetBanResponse>, Status> {
        let t = self.target(&req.get_ref().ip)?;
        let mut ban = self.store.ban(&t.key).await.map_err(unavailable)?;
        // A ban an older version stored under another spelling.
        for alias in &t.aliases {
            if ban.is_some() {
                break;
            }
            ban = self.store.ban(alias).await.map_err(unavailable)?;
        }
        let strikes = self.store.strikes(&t.key).await.map_err(unavailable)?;
        Ok(Response::new(pb::GetBanResponse {
            ban: ban.as_ref().map(ban_pb),
            strikes,
        }))
    }

    async fn ban_ip(
        &self,
        req: Request<pb::BanIpRequest>,
    ) -> Result<Response<pb::BanIpResponse>, Status> {
        let r = req.into_inner();
        let ip = self.target(&r.ip)?.key;
        if r.duration_s > MAX_DURATION_S {
            return Err(Status::invalid_argument(format!(
                "duration_s must be at most {MAX_DURATION_S} (ten years); 0 bans permanently"
            )));
        }
        if r.reason.chars().count() > 500 {
            return Err(Status::invalid_argument(
                "reason must be at most 500 characters",
            ));
        }
        let now = Utc::now();
        let ban = Ban {
            ip: ip.clone(),
            ban_type: if r.duration_s == 0 {
                BanType::Permanent
            } else {
                BanType::Temporary
            },
            reason: if r.reason.trim().is_empty() {
                "banned by an operator".into()
            } else {
                r.reason.trim().to_owned()
            },
            strikes: self.store.strikes(&ip).await.unwrap_or(0),
            hour_bans: 0,
            issued_by: "admin".into(),
            created_at: now,
            expires_at: (r.duration_s > 0)
                .then(|| now + chrono::Duration::seconds(r.duration_s as i64)),
        };
        self.store.put_ban(&ban).await.map_err(unavailable)?;
        tracing::warn!(
            ip,
            ban_type = ban.ban_type.as_str(),
            "ban set by an operator"
        );
        Ok(Response::new(pb::BanIpResponse {
            ban: Some(ban_pb(&ban)),
        }))
    }

    async fn unban_ip(
        &self,
        req: Request<pb::UnbanIpRequest>,
    ) -> Result<Response<pb::UnbanIpResponse>, Status> {
        let t = self.target(&req.get_ref().ip)?;
        let mut was_banned = self.store.lift_ban(&t.key).await.map_err(unavailable)?;
        // Also lift what an older version stored under another spelling.
        for alias in &t.aliases {
            if self.store.ban(alias).await.map_err(unavailable)?.is_some() {
                was_banned |= self.store.lift_ban(alias).await.map_err(unavailable)?;
            }
        }
        tracing::warn!(ip = t.key, was_banned, "ban lifted by an operator");
        Ok(Response::new(pb::UnbanIpResponse { was_banned }))
    }

    async fn set_enforcement(
        &self,
        req: Request<pb::SetEnforcementRequest>,
    ) -> Result<Response<pb::SetEnforcementResponse>, Status> {
        // Only the switch is written: the limits stay what they are
        // (stored, or each edge's own when none are stored).
        let enforce = req.get_ref().enforce;
        self.store.set_enforce(enforce).await.map_err(unavailable)?;
        let l = self.store.reported_limits().await.map_err(unavailable)?;
        tracing::warn!(enforce, "enforcement changed by an operator");
        Ok(Response::new(pb::SetEnforcementResponse {
            limits: Some(limits_pb(&l)),
        }))
    }

    async fn get_limits(
        &self,
        _: Request<pb::GetLimitsRequest>,
    ) -> Result<Response<pb::GetLimitsResponse>, Status> {
        let l = self.store.reported_limits().await.map_err(unavailable)?;
        Ok(Response::new(pb::GetLimitsResponse {
            limits: Some(limits_pb(&l)),
        }))
    }

    async fn set_limits(
        &self,
        req: Request<pb::SetLimitsRequest>,
    ) -> Result<Response<pb::SetLimitsResponse>, Status> {
        let p = req
            .into_inner()
            .limits
            .ok_or_else(|| Status::invalid_argument("limits is required"))?;
        let l = Limits {
            rps: p.rps,
            burst: p.burst,
            strike_window_s: p.strike_window_s,
            warn_strikes: p.warn_strikes,
            ban_strikes: p.ban_strikes,
            ban_duration_s: p.ban_duration_s,
            permanent_after: p.permanent_after,
            enforce: p.enforce,
        };
        l.validate().map_err(Status::invalid_argument)?;
        self.store.put_limits(&l).await.map_err(unavailable)?;
        tracing::warn!(?l, "limits changed by an operator");
        Ok(Response::new(pb::SetLimitsResponse {
            limits: Some(limits_pb(&l)),
        }))
    }
}

/// Checks `authorization: Bearer <token>` in constant time.
#[derive(Clone)]
struct Auth(Arc<Vec<u8>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::as_bytes);
        let Some(given) = given else {
            return Err(Status::unauthenticated(
                "missing bearer token: send authorization: Bearer <ADMIN_TOKEN>",
            ));
        };
        let want = self.0.as_slice();
        let mut diff = given.len() ^ want.len();
        for (i, b) in want.iter().enumerate() {
            diff |= usize::from(b ^ given.get(i).copied().unwrap_or(0));
        }
        if diff == 0 {
            Ok(req)
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

struct AdminHealth(Arc<AbuseStore>);

impl HealthCheck for AdminHealth {
    fn check(&self) -> BoxFuture<'_, HealthReport> {
        async move {
            let ok = tokio::time::timeout(Duration::from_secs(1), self.0.limits())
                .await
                .is_ok_and(|r| r.is_ok());
            let mut details = Map::new();
            details.insert(
                "redis".into(),
                json!({"status": if ok {"up"} else {"down"}}),
            );
            HealthReport {
                ready: ok,
                healthy: ok,
                problems: if ok {
                    vec![]
                } else {
                    vec!["redis: unreachable".into()]
                },
                details,
            }
        }
        .boxed()
    }
}

/// Builds and serves the admin service until `shutdown`.
pub async fn run(cfg: AdminConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    cfg.validate()?;
    let store = AbuseStore::new(StoreOptions {
        redis_url: Some(&cfg.redis_url),
        database_url: cfg.database_url.as_deref(),
        prefix: &cfg.abuse_prefix,
        defaults: cfg.defaults(),
        max_clients: 100_000,
    })
    .await?;
    if let Err(e) = store.restore_from_pg().await {
        tracing::warn!(error = %e, "could not restore persisted bans");
    }
    let grpc = TcpListener::bind(cfg.grpc_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on ADMIN_GRPC_ADDR {}: {e}", cfg.grpc_addr))?;
    let http = TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on ADMIN_HTTP_ADDR {}: {e}", cfg.http_addr))?;
    let instance = format!("admin-{}", grpc.local_addr()?.port());
    let metrics = Metrics::new("admin", &instance);
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("shortlink.v1.AdminService", ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(shortlink_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(shortlink_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let methods = [
        "ListBans",
        "GetBan",
        "BanIp",
        "UnbanIp",
        "SetEnforcement",
        "GetLimits",
        "SetLimits",
    ]
    .iter()
    .map(|m| format!("/shortlink.v1.AdminService/{m}"));
    let layer = ObservabilityLayer::new(RpcMetrics::new(&metrics), methods);
    let auth = Auth(Arc::new(cfg.admin_token.clone().into_bytes()));
    tracing::info!(grpc = %grpc.local_addr()?, http = %http.local_addr()?, "admin service starting");
    let s = shutdown.clone();
    let grpc_server = tonic::transport::Server::builder()
        .layer(layer)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(AdminServiceServer::with_interceptor(
            AdminApi {
                store: store.clone(),
                prefixes: cfg.prefixes(),
            },
            auth,
        ))
        .serve_with_incoming_shutdown(nodelay_incoming(grpc), async move { s.wait().await });
    let router = side_port::router("admin", instance, metrics, Arc::new(AdminHealth(store)));
    let http_server = side_port::serve(http, router, shutdown);
    tokio::try_join!(
        async { grpc_server.await.map_err(anyhow::Error::from) },
        async { http_server.await.map_err(anyhow::Error::from) },
    )?;
    Ok(())
}
