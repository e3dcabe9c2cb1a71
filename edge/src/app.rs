//! Start-up of `shortlink edge`: a client runtime for the gRPC channels,
//! health checks and abuse state; a Pingora server with the plain and TLS
//! listeners and the metrics listener. Pingora owns signals: SIGTERM drains
//! gracefully, SIGINT stops fast, SIGQUIT hands the listening sockets to a
//! new process started with `--upgrade` (zero-downtime upgrade).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::apps::http_app::HttpServer;
use pingora::listeners::TlsAccept;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::tls::TlsRef;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use shortlink_abuse::{AbuseStore, StoreOptions};
use shortlink_runtime::metrics::Metrics;
use shortlink_runtime::shutdown::Shutdown;

use crate::balance::Upstreams;
use crate::config::EdgeConfig;
use crate::conn::{CapFilter, ConnTable, Guarded, HttpApp};
use crate::limits::{Guard, GuardConfig};
use crate::metrics::{EdgeMetrics, MetricsApp};
use crate::proxy::{Edge, ProxySettings};

struct HandshakeCounter(prometheus::IntCounter);

#[async_trait::async_trait]
impl TlsAccept for HandshakeCounter {
    async fn handshake_complete_callback(
        &self,
        _tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        self.0.inc();
        None
    }
}

/// Runs the edge until Pingora's shutdown completes. Blocking: call it from
/// a plain thread, not from inside a tokio runtime.
pub fn run(cfg: EdgeConfig) -> anyhow::Result<()> {
    run_with_bus(cfg, None)
}

/// Like `run`, publishing on `bus` (the all-in-one's in-process bus)
/// instead of the one the configuration names.
pub fn run_with_bus(
    cfg: EdgeConfig,
    bus: Option<Arc<dyn shortlink_bus::EventBus>>,
) -> anyhow::Result<()> {
    cfg.validate()?;
    let edge_id = cfg.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.client_threads)
        .thread_name("edge-client")
        .enable_all()
        .build()?;
    let shutdown = Shutdown::new();
    let registry = Metrics::new("edge", &edge_id);
    let metrics = EdgeMetrics::new(registry.clone());

    let defaults = cfg.default_limits();
    let topics = shortlink_bus::Topics::with_prefix(&cfg.bus.topic_prefix);
    let bus = match bus {
        Some(b) => b,
        None => shortlink_bus::connect(&cfg.bus, &registry)?,
    };
    let (upstreams, guard) = rt.block_on(async {
        shortlink_bus::keep_topics(bus.clone(), topics.all(), shutdown.clone());
        shortlink_bus::publish_logs_to(bus.clone(), topics.logs.clone(), "edge", &edge_id);
        let specs = crate::discovery::parse_specs(&cfg.upstreams).map_err(anyhow::Error::msg)?;
        let upstreams = Upstreams::new(
            &crate::discovery::static_addrs(&specs),
            cfg.balance(),
            &registry,
        )?;
        // One round of checks before listening, so that replicas that are up
        // take traffic from the first request (matters after an upgrade).
        upstreams.check_all().await;
        if let Some(discovery) =
            crate::discovery::Discovery::new(specs, cfg.discovery(), &registry)?
        {
            // The first lookup before listening too; a failure leaves the
            // set to the next round (the edge is not ready until then).
            discovery.refresh(&upstreams).await?;
            tokio::spawn(discovery.run(upstreams.clone(), shutdown.clone()));
        }
        tokio::spawn(upstreams.clone().run_health_checks(shutdown.clone()));
        let store = AbuseStore::new(StoreOptions {
            redis_url: cfg.redis_url.as_deref(),
            database_url: cfg.database_url.as_deref(),
            prefix: &cfg.abuse_prefix,
            defaults: defaults.clone(),
            max_clients: cfg.abuse_max_clients,
        })
        .await?;
        let guard = Guard::new(
            store,
            GuardConfig {
                edge_id: edge_id.clone(),
                defaults,
                prefixes: cfg.prefixes(),
                trusted_proxies: cfg.trusted_proxies.clone(),
                shared_budgets: cfg.rate_limit_shared,
                max_clients: cfg.abuse_max_clients,
            },
            metrics.clone(),
        );
        guard.sync().await;
        if guard.store().shared() {
            // For ShortlinkRedisUnreachable, like the links replicas' cache.
            let up = registry
                .register(
                    prometheus::IntGaugeVec::new(
                        prometheus::Opts::new(
                            "dependency_up",
                            "1 when the shared abuse state (Redis) answered its last call, else 0.",
                        ),
                        &["dependency", "backend"],
                    )
                    .expect("valid metric"),
                )
                .with_label_values(&["abuse_state", "redis"]);
            let store = guard.store().clone();
            registry.on_scrape(move || up.set(i64::from(store.redis_up())));
        }
        guard.start(Duration::from_secs(5), shutdown.clone());
        anyhow::Ok((upstreams, guard))
    })?;

    let mut conf = ServerConf {
        threads: cfg.threads,
        work_stealing: cfg.work_stealing,
        grace_period_seconds: Some(cfg.grace_period_s),
        graceful_shutdown_timeout_seconds: Some(cfg.shutdown_timeout_s),
        pid_file: std::env::temp_dir()
            .join(format!("shortlink-{edge_id}.pid"))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    conf.upgrade_sock = cfg.upgrade_sock.clone();
    let opt = Opt {
        upgrade: cfg.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let settings = ProxySettings {
        edge_id: edge_id.clone(),
        hsts: format!("max-age={}; includeSubDomains", cfg.hsts_max_age_s),
        redirect_to_https: cfg.redirect_to_https && cfg.https_addr.0.is_some(),
        https_port: cfg.https_public_port.or(cfg.https_addr.0.map(|a| a.port())),
        metrics_allow: cfg.metrics_allow.clone(),
        public_host: cfg.public_host.clone(),
        allowed_hosts: cfg
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect(),
    };
    let resolve_cache = crate::resolve_cache::ResolveCache::new(
        cfg.resolve_cache_size,
        Duration::from_millis(cfg.resolve_cache_ttl_ms),
    )
    .map(Arc::new);
    if let Some(cache) = resolve_cache.clone() {
        let shutdown = shutdown.clone();
        rt.spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(cache.ttl()) => cache.sweep(),
                    () = shutdown.wait() => return,
                }
            }
        });
    }
    let edge = Edge {
        events: crate::proxy::EdgeEvents {
            bus: bus.clone(),
            topics,
        },
        upstreams,
        guard,
        metrics: metrics.clone(),
        settings,
        started: Instant::now(),
        resolve_cache,
    };
    // The proxy inside the connection-hygiene wrappers (see `conn`): caps
    // at accept, the header deadline on every stream, keep-alive and HTTP/2
    // limits on every connection.
    let conns = ConnTable::new(cfg.conn(), &registry);
    let app = Guarded::new(
        HttpApp::new(
            pingora::proxy::http_proxy(&server.configuration, edge),
            &cfg.conn(),
        ),
        conns.clone(),
    );
    let mut proxy = Service::new("shortlink edge".into(), app);
    proxy.set_connection_filter(Arc::new(CapFilter(conns)));
    proxy.add_tcp(&cfg.http_addr.to_string());
    if let Some(addr) = cfg.https_addr.0 {
        let (cert, key) = crate::tls::material(
            cfg.tls_cert.as_deref(),
            cfg.tls_key.as_deref(),
            &cfg.cert_dir,
        )?;
        let mut tls = TlsSettings::with_callbacks(Box::new(HandshakeCounter(
            metrics.tls_handshakes.clone(),
        )))?;
        // The expiry of what is served (configured or self-signed), for
        // ShortlinkCertificateExpiringSoon.
        match crate::tls::not_after(&cert) {
            Ok(t) => registry
                .register(
                    prometheus::IntGauge::new(
                        "tls_certificate_expiry_timestamp_seconds",
                        "When the served TLS certificate expires, in seconds since the Unix epoch.",
                    )
                    .expect("valid metric"),
                )
                .set(t),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "cannot read the certificate's expiry"
            ),
        }
        tls.set_certificate_chain_file(&cert.display().to_string())?;
        tls.set_private_key_file(&key.display().to_string())?;
        tls.enable_h2();
        proxy.add_tls_with_settings(&addr.to_string(), None, tls);
    }
    let mut metrics_service = Service::new(
        "edge metrics".into(),
        HttpServer::new_app(MetricsApp(registry)),
    );
    metrics_service.add_tcp(&cfg.metrics_addr.to_string());
    server.add_service(proxy);
    server.add_service(metrics_service);

    tracing::info!(
        edge = %edge_id,
        http = %cfg.http_addr,
        https = ?cfg.https_addr.0,
        metrics = %cfg.metrics_addr,
        upstreams = ?cfg.upstreams,
        "edge starting"
    );
    server.run(RunArgs::default());
    tracing::info!(edge = %edge_id, "edge stopped");
    shutdown.trigger();
    bus.flush(Duration::from_secs(5));
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
