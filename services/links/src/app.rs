//! Start-up and shutdown of `shortlink links`: `App::build` connects the
//! store (retrying while the database comes up), picks the cache, binds
//! both listeners; `run_until_stopped` serves gRPC (with health and
//! reflection) and the HTTP side port until the shutdown signal, then drains
//! and closes the pool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use prometheus::{IntGaugeVec, Opts};
use serde_json::{Map, json};
use shortlink_proto::v1::event_service_server::EventServiceServer;
use shortlink_proto::v1::link_service_server::LinkServiceServer;
use shortlink_proto::v1::user_service_server::UserServiceServer;
use shortlink_runtime::breaker::State;
use shortlink_runtime::grpc_layer::{ObservabilityLayer, nodelay_incoming};
use shortlink_runtime::metrics::{Metrics, RpcMetrics};
use shortlink_runtime::retry::{Backoff, Verdict};
use shortlink_runtime::shutdown::{DropGuard, Shutdown};
use shortlink_runtime::side_port::{self, HealthCheck, HealthReport};
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use crate::cache::{Cache, MemoryCache, NoCache, RedisCache};
use crate::config::LinksConfig;
use crate::grpc::{EventApi, LinkApi, UserApi};
use crate::service::LinksCore;
use crate::store::{self, LinkStore, StoreConfig};

/// gRPC service names published through grpc.health.v1. "" (the server as
/// a whole) reports readiness (database usable, breaker not open); the
/// named services report whether the process serves at all (balancers such
/// as the edge check `shortlink.v1.LinkService`, so cached redirects keep
/// flowing while the database is down).
pub const SERVICE_NAMES: [&str; 4] = [
    "",
    "shortlink.v1.LinkService",
    "shortlink.v1.UserService",
    "shortlink.v1.EventService",
];

/// Every RPC path, for bounded metric labels.
fn rpc_paths() -> Vec<String> {
    let methods: [(&str, &[&str]); 3] = [
        (
            "LinkService",
            &[
                "CreateLink",
                "ResolveLink",
                "GetLink",
                "ListLinks",
                "UpdateLink",
                "DeleteLink",
            ],
        ),
        (
            "UserService",
            &[
                "CreateUser",
                "GetUser",
                "ListUsers",
                "UpdateUser",
                "DeleteUser",
                "BulkCreateUsers",
            ],
        ),
        (
            "EventService",
            &["ListEvents", "CreateEvent", "RecordClicks"],
        ),
    ];
    let mut out: Vec<String> = methods
        .iter()
        .flat_map(|(svc, ms)| ms.iter().map(move |m| format!("/shortlink.v1.{svc}/{m}")))
        .collect();
    out.push("/grpc.health.v1.Health/Check".into());
    out.push("/grpc.health.v1.Health/Watch".into());
    out
}

/// Connects to the database, retrying for up to `retry` while it is
/// unreachable (it may still be starting).
pub async fn connect_store(
    cfg: &StoreConfig,
    retry: Duration,
) -> anyhow::Result<Arc<dyn LinkStore>> {
    let policy = Backoff::exponential(Duration::from_millis(200), Duration::from_secs(2))
        .give_up_after(retry);
    shortlink_runtime::retry::retry(
        &policy,
        None,
        || store::connect(cfg),
        |e, a| {
            if !is_unreachable(e) || a.last {
                return Verdict::GiveUp;
            }
            tracing::warn!(
                error = shortlink_runtime::redact::redact_text(&format!("{e:#}")),
                retry_in_ms = a.delay.as_millis() as u64,
                "database not reachable yet; retrying"
            );
            Verdict::Retry
        },
    )
    .await
    .map_err(|e| match e.into_error() {
        Some(e) => e.context("cannot connect to the database"),
        None => anyhow::anyhow!("cannot connect to the database"),
    })
}

/// True when the error says the database could not be reached (worth
/// retrying), as opposed to a bad URL, bad credentials or a failed migration.
fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_))
        ) || c.downcast_ref::<std::io::Error>().is_some()
    })
}

/// Folds list-count deltas every `every` until shutdown (D52). Failures
/// (the database is down) cost nothing but slower totals later, so they are
/// logged once per outage, not once per round.
async fn compact_list_counts(store: Arc<dyn LinkStore>, every: Duration, shutdown: Shutdown) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.wait() => return,
        }
        match store.compact_list_counts().await {
            Ok(n) => {
                if failing {
                    tracing::info!("list-count folding works again");
                    failing = false;
                }
                if n > 0 {
                    tracing::debug!(folded = n, "list-count deltas folded");
                }
            }
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot fold list-count deltas; totals stay exact, reading them gets slower until this recovers");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Readiness and health of a links replica.
struct LinksHealth {
    core: Arc<LinksCore>,
    /// `shortlink_dependency_up{dependency, backend}`: 1 when the last
    /// check reached the dependency (set on every check, so the health
    /// loop keeps it fresh between scrapes).
    deps: IntGaugeVec,
}

impl HealthCheck for LinksHealth {
    fn check(&self) -> BoxFuture<'_, HealthReport> {
        async move {
            let core = &self.core;
            let db = core.probe_database(Duration::from_secs(2)).await.map_err(|e| e.to_string());
            let cache = tokio::time::timeout(Duration::from_secs(1), core.cache().ping())
                .await
                .map_err(|_| "timed out".to_owned())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let breaker = core.breaker_state();
            let pool = core.store().pool_stats();
            let mut problems = Vec::new();
            if let Err(e) = &db {
                problems.push(format!("database: {e}"));
            }
            if breaker == State::Open {
                problems.push("database circuit breaker is open".into());
            }
            if let Err(e) = &cache {
                problems.push(format!("cache: {e}"));
            }
            let ready = db.is_ok() && breaker != State::Open;
            self.deps
                .with_label_values(&["database", core.store().backend()])
                .set(i64::from(db.is_ok()));
            self.deps
                .with_label_values(&["cache", core.cache().backend()])
                .set(i64::from(cache.is_ok()));
            let mut details = Map::new();
            details.insert(
                "database".into(),
                json!({"backend": core.store().backend(), "status": if db.is_ok() {"up"} else {"down"}}),
            );
            details.insert(
                "cache".into(),
                json!({"backend": core.cache().backend(), "status": if cache.is_ok() {"up"} else {"down"}}),
            );
            details.insert("breaker".into(), json!({"state": breaker.as_str()}));
            details.insert(
                "pool".into(),
                json!({"in_use": pool.size.saturating_sub(pool.idle), "idle": pool.idle, "max": pool.max}),
            );
            HealthReport {
                ready,
                healthy: ready && cache.is_ok(),
                problems,
                details,
            }
        }
        .boxed()
    }
}

/// A built, bound, not yet serving links service.
pub struct App {
    core: Arc<LinksCore>,
    metrics: Arc<Metrics>,
    grpc: TcpListener,
    http: TcpListener,
    instance: String,
    health_interval: Duration,
    compact_interval: Option<Duration>,
    delay: Duration,
    grace: Duration,
    /// Fires the signal of the app's background tasks (topic keeper) when
    /// dropped.
    background: DropGuard,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("instance", &self.instance)
            .finish()
    }
}

impl App {
    /// Connects dependencies and binds both listeners (port 0 picks a free
    /// port; see `grpc_addr` and `http_addr`).
    pub async fn build(cfg: LinksConfig) -> anyhow::Result<Self> {
        Self::build_with_bus(cfg, None).await
    }

    /// Like `build`, publishing on `bus` (the all-in-one shares one
    /// in-process bus) instead of the one the configuration names.
    pub async fn build_with_bus(
        cfg: LinksConfig,
        bus: Option<Arc<dyn shortlink_bus::EventBus>>,
    ) -> anyhow::Result<Self> {
        cfg.validate()?;
        let store_cfg = cfg.db.store_config()?;
        let store =
            connect_store(&store_cfg, Duration::from_secs(cfg.db.db_connect_retry_s)).await?;
        let cache: Arc<dyn Cache> = if cfg.cache_disabled {
            Arc::new(NoCache)
        } else if let Some(r) = cfg.redis() {
            Arc::new(RedisCache::new(r)?)
        } else {
            Arc::new(MemoryCache::new(cfg.cache_capacity))
        };
        let grpc = TcpListener::bind(cfg.grpc_addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on LINKS_GRPC_ADDR {}: {e}", cfg.grpc_addr)
        })?;
        let http = TcpListener::bind(cfg.http_addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on LINKS_HTTP_ADDR {}: {e}", cfg.http_addr)
        })?;
        let instance = cfg.instance_id.clone().unwrap_or_else(|| {
            shortlink_runtime::config::default_instance_id(
                "links",
                grpc.local_addr().unwrap_or(cfg.grpc_addr),
            )
        });
        let metrics = Metrics::new("links", &instance);
        let bus = match bus {
            Some(b) => b,
            None => shortlink_bus::connect(&cfg.bus, &metrics)?,
        };
        let topics = shortlink_bus::Topics::with_prefix(&cfg.bus.topic_prefix);
        // Stops with the app: when `run_until_stopped` is done, or when the
        // app is dropped without running (a signal nobody fires would leave
        // the task, and the bus it holds, alive for the life of the process).
        let background = Shutdown::new();
        shortlink_bus::keep_topics(bus.clone(), topics.all(), background.clone());
        shortlink_bus::publish_logs_to(bus.clone(), topics.logs.clone(), "links", &instance);
        let sink = crate::service::EventSink {
            bus,
            topic: topics.links.clone(),
            source: instance.clone(),
        };
        let core = LinksCore::new(
            store,
            cache,
            cfg.breaker(),
            cfg.cache_policy(),
            &metrics,
            Some(sink),
        );
        tracing::info!(
            database = core.store().backend(),
            cache = core.cache().backend(),
            grpc = %grpc.local_addr()?,
            http = %http.local_addr()?,
            "links service built"
        );
        Ok(Self {
            core,
            metrics,
            grpc,
            http,
            instance,
            health_interval: Duration::from_millis(cfg.health_interval_ms.max(100)),
            compact_interval: (cfg.counts_compact_interval_ms > 0)
                .then(|| Duration::from_millis(cfg.counts_compact_interval_ms.max(100))),
            delay: Duration::from_millis(cfg.shutdown_delay_ms),
            grace: Duration::from_secs(cfg.shutdown_grace_s),
            background: background.drop_guard(),
        })
    }

    /// Where gRPC is served.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Where the side port is served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The core, for in-process callers (the all-in-one `up`).
    pub fn core(&self) -> Arc<LinksCore> {
        self.core.clone()
    }

    /// Serves until `shutdown` fires, then: reports NOT_SERVING, stops
    /// accepting, waits up to the grace period for in-flight calls, and
    /// closes the database pool.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(shortlink_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(shortlink_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let health = Arc::new(LinksHealth {
            core: self.core.clone(),
            deps: self.metrics.register(
                IntGaugeVec::new(
                    Opts::new(
                        "dependency_up",
                        "1 when the last health check reached the dependency (database, cache), else 0; by backend.",
                    ),
                    &["dependency", "backend"],
                )
                .expect("valid metric"),
            ),
        });

        // Publish readiness to grpc.health.v1 until shutdown.
        let health_loop = {
            let health = health.clone();
            let reporter = reporter.clone();
            let shutdown = shutdown.clone();
            let interval = self.health_interval;
            tokio::spawn(async move {
                let mut last = None;
                loop {
                    let report = health.check().await;
                    let status = if report.ready {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    if last != Some(report.ready) {
                        if report.ready {
                            tracing::info!("ready: serving");
                        } else {
                            tracing::warn!(problems = ?report.problems, "not ready");
                        }
                        last = Some(report.ready);
                    }
                    // "" (the server) is readiness: the database is usable.
                    // The services stay SERVING while the process runs, so
                    // balancers keep sending resolutions, which the cache
                    // can answer without the database.
                    reporter.set_service_status("", status).await;
                    for name in &SERVICE_NAMES[1..] {
                        reporter
                            .set_service_status(name, ServingStatus::Serving)
                            .await;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(interval) => {}
                        () = shutdown.wait() => break,
                    }
                }
                for name in SERVICE_NAMES {
                    reporter
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                }
            })
        };

        if let Some(every) = self.compact_interval {
            tokio::spawn(compact_list_counts(
                self.core.store().clone(),
                every,
                shutdown.clone(),
            ));
        }

        let layer = ObservabilityLayer::new(RpcMetrics::new(&self.metrics), rpc_paths());
        // Servers stop `delay` after the signal; health says NOT_SERVING at once.
        let delay = self.delay;
        let stop = Shutdown::new();
        {
            let (shutdown, stop) = (shutdown.clone(), stop.clone());
            tokio::spawn(async move {
                shutdown.wait().await;
                tokio::time::sleep(delay).await;
                stop.trigger();
            });
        }
        let grpc_shutdown = stop.clone();
        let grpc = tonic::transport::Server::builder()
            .layer(layer)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(LinkServiceServer::new(LinkApi(self.core.clone())))
            .add_service(UserServiceServer::new(UserApi(self.core.clone())))
            .add_service(EventServiceServer::new(EventApi(self.core.clone())))
            .serve_with_incoming_shutdown(nodelay_incoming(self.grpc), async move {
                grpc_shutdown.wait().await;
            });

        let router =
            side_port::router("links", self.instance.clone(), self.metrics.clone(), health);
        let http = side_port::serve(self.http, router, stop.clone());

        let grace = self.grace;
        let drained = async {
            tokio::try_join!(async { grpc.await.map_err(anyhow::Error::from) }, async {
                http.await.map_err(anyhow::Error::from)
            },)
        };
        tokio::pin!(drained);
        let result = tokio::select! {
            r = &mut drained => r.map(|_| ()),
            () = async { stop.wait().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_s = grace.as_secs(), "shutdown grace period over; abandoning in-flight calls");
                Ok(())
            }
        };
        let _ = health_loop.await;
        self.core.flush_events(Duration::from_secs(5)).await;
        self.core.store().close().await;
        drop(self.background);
        tracing::info!("links service stopped");
        result
    }
}
