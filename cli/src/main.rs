//! The `shortlink` binary: every component is a subcommand. `main` only
//! parses configuration, starts telemetry and hands over to the component's
//! library; `--help` on each subcommand is its configuration reference.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shortlink_edge::EdgeConfig;
use shortlink_links::config::DatabaseArgs;
use shortlink_links::{App, LinksConfig};
use shortlink_runtime::config::{ConfigError, EXIT_CONFIG};
use shortlink_runtime::retry::{Backoff, Verdict, retry};
use shortlink_runtime::shutdown::Shutdown;
use shortlink_runtime::telemetry::{self, TelemetryArgs};

mod probe;

/// shortlink: a production-grade URL shortener.
#[derive(Debug, Parser)]
#[command(name = "shortlink", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    telemetry: TelemetryArgs,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; boxing the large configs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the links service (gRPC + HTTP side port).
    Links(LinksConfig),
    /// Run the edge: the public HTTP API (Pingora) over the links replicas.
    Edge(EdgeConfig),
    /// Run the admin service: bans and rate limits over authenticated gRPC.
    Admin(shortlink_admin::AdminConfig),
    /// Consume events: print them as text or JSON lines on stdout.
    LogPrinter(shortlink_consumers::log_printer::LogPrinterArgs),
    /// Consume events: 5xx responses and ERROR logs to Discord-compatible webhooks.
    Alerter(shortlink_consumers::alerter::AlerterArgs),
    /// Consume events: ring buffer and per-minute aggregates in the dashboard database.
    DashboardIngest(shortlink_consumers::dashboard::DashboardIngestArgs),
    /// The ops dashboard (golden signals, live logs, errors, load tests,
    /// incidents, chaos), hosting the dashboard ingest on its own database.
    Dashboard(shortlink_dashboard::DashboardArgs),
    /// Consume events: click events and per-link counts into the app database.
    Analytics(shortlink_consumers::analytics::AnalyticsArgs),
    /// Apply the database migrations and exit.
    Migrate(DatabaseArgs),
    /// Import users, links and events from CSV files (idempotent).
    Import(ImportArgs),
    /// Supervise a topology: restart what exits or fails its liveness
    /// check, give up on crash loops, and serve the control API
    /// (kill, stop, start, restart, pause, resume).
    Watchdog(shortlink_ops::ha::WatchdogArgs),
    /// Back up the app database (pg_dump or SQLite VACUUM INTO) on a
    /// schedule, or once with --once; old backups are pruned.
    Backup(shortlink_ops::backup::BackupArgs),
    /// Restore the app database from a backup file after checking its
    /// checksum; prints the users, links and events restored.
    Restore(shortlink_ops::backup::RestoreArgs),
    /// Run the whole system in one process: the links service and the edge,
    /// on the embedded default (SQLite, in-process cache) unless
    /// DATABASE_URL / REDIS_URL are set. Edge settings come from their
    /// EDGE_* (and RATE_LIMIT_*, TLS_*) environment variables. With --ha:
    /// the distributed topology, every component its own process under
    /// the watchdog, on PostgreSQL, Redis and Kafka.
    Up(UpArgs),
    /// Check one health endpoint once and exit 0 (passes) or 1 (fails, the
    /// reason on stderr): the container healthcheck. An unreadable target
    /// exits 64.
    Probe(probe::ProbeArgs),
}

#[derive(Debug, clap::Args)]
struct ImportArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Directory holding users.csv, urls.csv and events.csv.
    #[arg(long, env = "SEED_DIR", default_value = "../shared/seed-data")]
    dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    #[command(flatten)]
    links: LinksConfig,
    /// Import this seed directory (users.csv, urls.csv, events.csv) at start;
    /// rows already present are skipped.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Where to serve `/metrics` of the process's event bus and its
    /// consumers (events published, dropped, pending; lag per group and
    /// partition), next to the edge's and the links service's own ports.
    /// `off` disables it.
    #[arg(long, env = "BUS_METRICS_ADDR", default_value = "127.0.0.1:9185")]
    bus_metrics_addr: String,
    #[command(flatten)]
    ha: shortlink_ops::ha::HaArgs,
}

/// Edge settings for `up`, read from the environment only.
#[derive(Debug, Parser)]
struct EdgeFromEnv {
    #[command(flatten)]
    edge: EdgeConfig,
}

fn main() -> ExitCode {
    shortlink_runtime::shutdown::exit_with_supervisor();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => EXIT_CONFIG,
            };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shortlink: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The edge runs Pingora, which owns its runtimes and signal handling, so
    // it runs on this thread, outside any tokio runtime.
    let result = match cli.command {
        Command::Edge(cfg) => {
            let _telemetry = runtime.block_on(async { telemetry::init("edge", &cli.telemetry) });
            match _telemetry {
                Ok(_guard) => shortlink_edge::run(cfg),
                Err(e) => Err(e),
            }
        }
        Command::Up(args) if args.ha.ha => runtime.block_on(async {
            let _telemetry = telemetry::init("watchdog", &cli.telemetry)?;
            let backends = shortlink_ops::ha::Backends {
                database_url: args.links.db.database_url.clone(),
                redis_url: args.links.redis_url.clone(),
                kafka_brokers: args.links.bus.kafka_brokers.clone(),
                dashboard_database_url: std::env::var("DASHBOARD_DATABASE_URL").ok(),
            };
            // The children log as the supervisor was told to.
            let mut child_env = vec![
                (
                    "LOG_FORMAT".to_owned(),
                    match cli.telemetry.log_format {
                        telemetry::LogFormat::Json => "json".to_owned(),
                        telemetry::LogFormat::Text => "text".to_owned(),
                    },
                ),
                ("LOG_LEVEL".to_owned(), cli.telemetry.log_level.clone()),
            ];
            if let Some(e) = &cli.telemetry.otlp_endpoint {
                child_env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), e.clone()));
            }
            shortlink_ops::ha::run_ha(args.ha, backends, args.links.bus, args.seed, child_env).await
        }),
        Command::Up(args) => up(&runtime, &cli.telemetry, args),
        // No telemetry: a healthcheck runs every few seconds and its only
        // output is its exit code (and a reason on stderr).
        Command::Probe(args) => match runtime.block_on(probe::run(&args)) {
            Ok(Ok(())) => return ExitCode::SUCCESS,
            Ok(Err(reason)) => {
                eprintln!("shortlink probe {}: unhealthy: {reason}", args.target);
                return ExitCode::FAILURE;
            }
            Err(e) => Err(e.into()),
        },
        other => runtime.block_on(run(other, &cli.telemetry)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let config = e.chain().any(|c| c.is::<ConfigError>());
            // A connection error may quote the URL it was given; passwords
            // never reach the terminal or the logs.
            let msg = shortlink_runtime::redact::redact_text(&format!("{e:#}"));
            tracing::error!(error = msg, "shortlink failed");
            eprintln!("shortlink: {msg}");
            ExitCode::from(if config { EXIT_CONFIG as u8 } else { 1 })
        }
    }
}

async fn run(command: Command, tel: &TelemetryArgs) -> anyhow::Result<()> {
    let service = match &command {
        Command::Links(_) => "links",
        Command::Admin(_) => "admin",
        Command::LogPrinter(_) => "log-printer",
        Command::Alerter(_) => "alerter",
        Command::DashboardIngest(_) => "dashboard-ingest",
        Command::Analytics(_) => "analytics",
        Command::Dashboard(_) => "dashboard",
        Command::Migrate(_) => "migrate",
        Command::Import(_) => "import",
        Command::Watchdog(_) => "watchdog",
        Command::Backup(_) => "backup",
        Command::Restore(_) => "restore",
        Command::Edge(_) | Command::Up(_) | Command::Probe(_) => {
            unreachable!("handled outside the runtime")
        }
    };
    let _telemetry = telemetry::init(service, tel)?;
    match command {
        Command::Links(cfg) => {
            let shutdown = Shutdown::new();
            shutdown.trigger_on_signals();
            App::build(cfg).await?.run_until_stopped(shutdown).await
        }
        Command::Admin(cfg) => {
            let shutdown = Shutdown::new();
            shutdown.trigger_on_signals();
            shortlink_admin::run(cfg, shutdown).await
        }
        Command::LogPrinter(a) => {
            let group = a.group.clone();
            consume("log-printer", &group, |bus, s| {
                shortlink_consumers::log_printer::run(a, bus, s)
            })
            .await
        }
        Command::Alerter(a) => {
            let group = a.group.clone();
            consume("alerter", &group, |bus, s| {
                shortlink_consumers::alerter::run(a, bus, s)
            })
            .await
        }
        Command::DashboardIngest(a) => {
            let group = a.group.clone();
            consume("dashboard-ingest", &group, |bus, s| {
                shortlink_consumers::dashboard::run(a, bus, s)
            })
            .await
        }
        Command::Analytics(a) => {
            let group = a.group.clone();
            consume("analytics", &group, |bus, s| {
                shortlink_consumers::analytics::run(a, bus, s)
            })
            .await
        }
        Command::Dashboard(a) => {
            let group = a.group.clone();
            let metrics = shortlink_runtime::metrics::Metrics::new("dashboard", "dashboard");
            let m = metrics.clone();
            consume_with("dashboard", &group, metrics, |bus, s| {
                shortlink_dashboard::run(a, bus, m, s)
            })
            .await
        }
        Command::Migrate(db) => {
            let cfg = db.store_config()?;
            let backend = shortlink_links::store::migrate(&cfg).await?;
            tracing::info!(backend, "migrations applied");
            println!("migrations applied ({backend})");
            Ok(())
        }
        Command::Import(args) => {
            let cfg = args.db.store_config()?;
            let store = shortlink_links::store::connect(&cfg).await?;
            let files = shortlink_links::import::SeedFiles::in_dir(&args.dir);
            let counts = shortlink_links::import::import(store.as_ref(), &files).await;
            store.close().await;
            let counts = counts?;
            println!(
                "imported {} users, {} links, {} events (rows already present were skipped)",
                counts.users, counts.links, counts.events
            );
            Ok(())
        }
        Command::Watchdog(a) => shortlink_ops::ha::run_watchdog(a).await,
        Command::Backup(a) => {
            let shutdown = Shutdown::new();
            shutdown.trigger_on_signals();
            shortlink_ops::backup::run(a, shutdown).await
        }
        Command::Restore(a) => shortlink_ops::backup::run_restore(a).await,
        Command::Edge(_) | Command::Up(_) | Command::Probe(_) => {
            unreachable!("handled outside the runtime")
        }
    }
}

/// Runs one consumer on its own bus connection until a signal, serving its
/// metrics on `CONSUMER_METRICS_ADDR` when set.
async fn consume<F, Fut>(
    kind: &str,
    group: &shortlink_consumers::GroupArgs,
    f: F,
) -> anyhow::Result<()>
where
    F: FnOnce(std::sync::Arc<dyn shortlink_bus::EventBus>, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    consume_with(
        kind,
        group,
        shortlink_runtime::metrics::Metrics::new(kind, kind),
        f,
    )
    .await
}

/// [`consume`] with the component's own metrics registry.
async fn consume_with<F, Fut>(
    kind: &str,
    group: &shortlink_consumers::GroupArgs,
    metrics: std::sync::Arc<shortlink_runtime::metrics::Metrics>,
    f: F,
) -> anyhow::Result<()>
where
    F: FnOnce(std::sync::Arc<dyn shortlink_bus::EventBus>, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let bus_args = &group.bus;
    let bus = shortlink_bus::connect(bus_args, &metrics)?;
    let topics = shortlink_bus::Topics::with_prefix(&bus_args.topic_prefix);
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    if let Some(addr) = group.metrics_addr {
        shortlink_consumers::serve_metrics(addr, metrics.clone(), shutdown.clone()).await?;
    }
    // Subscribe only once the topics exist: a subscription whose topics
    // appear later is rebalanced, which some brokers handle poorly.
    let names = topics.all();
    let topics_ready = retry(
        &Backoff::exponential(Duration::from_millis(200), Duration::from_secs(5)),
        Some(&shutdown),
        || bus.ensure_topics(&names),
        |e, a| {
            tracing::warn!(
                error = format!("{e:#}"),
                retry_in_ms = a.delay.as_millis() as u64,
                "waiting for the broker to create topics"
            );
            Verdict::Retry
        },
    )
    .await;
    if topics_ready.is_err() {
        // Only a shutdown ends an endless retry.
        return Ok(());
    }
    shortlink_bus::keep_topics(bus.clone(), topics.all(), shutdown.clone());
    shortlink_bus::publish_logs_to(bus.clone(), topics.logs, kind, kind);
    f(bus, shutdown).await
}

/// Consumer settings for `up`, read from the environment only.
#[derive(Debug, Parser)]
struct ConsumersFromEnv {
    #[command(flatten)]
    alerter: shortlink_consumers::alerter::AlerterArgs,
}

/// Dashboard settings for `up`, read from the environment only.
#[derive(Debug, Parser)]
struct DashboardFromEnv {
    #[command(flatten)]
    dashboard: shortlink_dashboard::DashboardArgs,
}

/// The all-in-one: the links service on the tokio runtime, the edge on this
/// thread in front of it. A signal stops the edge (Pingora handles it), and
/// the links service is stopped after it.
fn up(runtime: &tokio::runtime::Runtime, tel: &TelemetryArgs, args: UpArgs) -> anyhow::Result<()> {
    let _telemetry = runtime.block_on(async { telemetry::init("up", tel) })?;
    let mut edge = EdgeFromEnv::try_parse_from(["up"])
        .map_err(|e| ConfigError::new(format!("edge settings: {e}")))?
        .edge;
    let links_cfg = args.links;
    edge.redis_url = links_cfg.redis_url.clone();
    edge.database_url = links_cfg.db.database_url.clone();
    let shutdown = Shutdown::new();
    // One bus for everything in this process: in-process unless KAFKA_BROKERS.
    let metrics = shortlink_runtime::metrics::Metrics::new("bus", "up");
    let bus = shortlink_bus::connect(&links_cfg.bus, &metrics)?;
    let alerter = ConsumersFromEnv::try_parse_from(["up"])
        .map_err(|e| ConfigError::new(format!("alerter settings: {e}")))?
        .alerter;
    let group = shortlink_consumers::GroupArgs {
        bus: links_cfg.bus.clone(),
        group: None,
        metrics_addr: None,
    };
    let data_dir = links_cfg.db.data_dir.clone();
    // The dashboard (with the ingest) on the embedded dashboard database
    // beside the app's, unless DASHBOARD_DATABASE_URL says otherwise; its
    // load tests target this edge unless DASHBOARD_EDGES says otherwise.
    // DASHBOARD_ADDR=off leaves it out.
    let dashboard_args = if std::env::var("DASHBOARD_ADDR").is_ok_and(|a| a == "off") {
        None
    } else {
        let mut d = DashboardFromEnv::try_parse_from(["up"])
            .map_err(|e| ConfigError::new(format!("dashboard settings: {e}")))?
            .dashboard;
        d.group = group.clone();
        if std::env::var_os("DASHBOARD_DATABASE_URL").is_none() {
            d.dashboard_database_url =
                format!("sqlite://{}/dashboard.db?mode=rwc", data_dir.display());
        }
        if std::env::var_os("DASHBOARD_EDGES").is_none() {
            d.edges = vec![format!("http://{}", edge.http_addr)];
        }
        Some(d)
    };
    if !matches!(args.bus_metrics_addr.as_str(), "off" | "none" | "") {
        let addr: std::net::SocketAddr = args.bus_metrics_addr.parse().map_err(|e| {
            ConfigError::new(format!("BUS_METRICS_ADDR {:?}: {e}", args.bus_metrics_addr))
        })?;
        runtime.block_on(shortlink_consumers::serve_metrics(
            addr,
            metrics.clone(),
            shutdown.clone(),
        ))?;
    }
    let app = runtime.block_on(async {
        if let Some(dir) = &args.seed {
            let cfg = links_cfg.db.store_config()?;
            let store = shortlink_links::store::connect(&cfg).await?;
            let files = shortlink_links::import::SeedFiles::in_dir(dir);
            let counts = shortlink_links::import::import(store.as_ref(), &files)
                .await
                .with_context(|| format!("seeding from {}", dir.display()));
            store.close().await;
            counts?;
        }
        App::build_with_bus(links_cfg, Some(bus.clone())).await
    })?;
    edge.upstreams = vec![app.grpc_addr().to_string()];
    {
        use shortlink_consumers::{alerter, analytics, log_printer};
        let _guard = runtime.enter();
        let s = shutdown.clone();
        let spawn =
            |name: &'static str,
             fut: std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>| {
                tokio::spawn(async move {
                    if let Err(e) = fut.await {
                        tracing::error!(
                            consumer = name,
                            error = shortlink_runtime::redact::redact_text(&format!("{e:#}")),
                            "consumer stopped"
                        );
                    }
                });
            };
        spawn(
            "analytics",
            Box::pin(analytics::run(
                analytics::AnalyticsArgs {
                    group: group.clone(),
                    links_addr: app.grpc_addr().to_string(),
                    batch_max: 500,
                    batch_wait_ms: 1000,
                },
                bus.clone(),
                s.clone(),
            )),
        );
        spawn(
            "log-printer",
            Box::pin(log_printer::run(
                log_printer::LogPrinterArgs {
                    group: group.clone(),
                    format: "text".into(),
                    min_level: "warn".into(),
                },
                bus.clone(),
                s.clone(),
            )),
        );
        spawn(
            "alerter",
            Box::pin(alerter::run(
                alerter::AlerterArgs {
                    group: group.clone(),
                    ..alerter
                },
                bus.clone(),
                s.clone(),
            )),
        );
        if let Some(d) = dashboard_args {
            spawn(
                "dashboard",
                Box::pin(shortlink_dashboard::run(
                    d,
                    bus.clone(),
                    shortlink_runtime::metrics::Metrics::new("dashboard", "up"),
                    s.clone(),
                )),
            );
        }
    }
    tracing::info!(grpc = %app.grpc_addr(), http = %edge.http_addr, "shortlink is up");
    let links = runtime.spawn(app.run_until_stopped(shutdown.clone()));
    let edge_result = shortlink_edge::run_with_bus(edge, Some(bus));
    shutdown.trigger();
    let links_result = runtime.block_on(links).context("links service task")?;
    edge_result.and(links_result)
}
