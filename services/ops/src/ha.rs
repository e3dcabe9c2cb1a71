//! `shortlink watchdog` and `shortlink up --ha`: the supervision settings,
//! the distributed topology as child processes, and the code that runs
//! them (control API, metrics, events, ordered shutdown).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use shortlink_runtime::config::ConfigError;
use shortlink_runtime::metrics::Metrics;
use shortlink_runtime::shutdown::{Shutdown, os_signal};

use crate::backend::Backend;
use crate::docker::{DockerBackend, Endpoint};
use crate::process::{ProcessBackend, ProcessTiming};
use crate::spec::{Check, ComponentSpec};
use crate::supervisor::{Supervisor, SupervisorConfig, Target};

/// How the watchdog supervises (both backends, `watchdog` and `up --ha`).
#[derive(Clone, Debug, clap::Args)]
pub struct SuperviseArgs {
    /// Bearer token of the control API. Unset: the control API refuses
    /// every request (`up --ha` generates one and writes it to
    /// <data-dir>/watchdog-token).
    #[arg(
        long = "watchdog-token",
        env = "WATCHDOG_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Process backend: how often each child's liveness is checked.
    #[arg(long, env = "WATCHDOG_CHECK_INTERVAL_MS", default_value_t = 1000)]
    pub check_interval_ms: u64,
    /// Process backend: failed liveness checks in a row that make a child
    /// unhealthy (it is then killed and restarted).
    #[arg(long, env = "WATCHDOG_FAIL_AFTER", default_value_t = 3)]
    pub fail_after: u32,
    /// Process backend: a child that never passed a check is not called
    /// unhealthy before this many seconds.
    #[arg(long, env = "WATCHDOG_START_GRACE_S", default_value_t = 30)]
    pub start_grace_s: u64,
    /// Failures within the window that make a crash loop (no more restarts).
    #[arg(long, env = "WATCHDOG_CRASHLOOP_FAILURES", default_value_t = 5)]
    pub crashloop_failures: usize,
    /// The crash-loop window, seconds.
    #[arg(long, env = "WATCHDOG_CRASHLOOP_WINDOW_S", default_value_t = 120)]
    pub crashloop_window_s: u64,
    /// First restart delay after a failure (doubles per failure in a row), ms.
    #[arg(long, env = "WATCHDOG_BACKOFF_BASE_MS", default_value_t = 250)]
    pub backoff_base_ms: u64,
    /// Largest restart delay, ms.
    #[arg(long, env = "WATCHDOG_BACKOFF_MAX_MS", default_value_t = 30_000)]
    pub backoff_max_ms: u64,
    /// Seconds a child gets between SIGTERM and SIGKILL when stopped.
    #[arg(long, env = "WATCHDOG_STOP_GRACE_S", default_value_t = 25)]
    pub stop_grace_s: u64,
}

impl SuperviseArgs {
    fn supervisor(&self, source: String, targets_dir: Option<PathBuf>) -> SupervisorConfig {
        SupervisorConfig {
            backoff_base: Duration::from_millis(self.backoff_base_ms.max(1)),
            backoff_max: Duration::from_millis(self.backoff_max_ms.max(self.backoff_base_ms)),
            crashloop_failures: self.crashloop_failures.max(1),
            crashloop_window: Duration::from_secs(self.crashloop_window_s.max(1)),
            source,
            targets_dir,
            ..SupervisorConfig::default()
        }
    }

    fn timing(&self) -> ProcessTiming {
        ProcessTiming {
            check_every: Duration::from_millis(self.check_interval_ms.max(50)),
            check_timeout: Duration::from_millis(self.check_interval_ms.clamp(50, 2000)),
            fail_after: self.fail_after.max(1),
            start_grace: Duration::from_secs(self.start_grace_s),
            stop_grace: Duration::from_secs(self.stop_grace_s),
        }
    }
}

/// `shortlink watchdog`.
#[derive(Clone, Debug, clap::Args)]
pub struct WatchdogArgs {
    /// `process` (children from --spec; `up --ha` uses this backend) or
    /// `docker` (the containers of one compose project).
    #[arg(long, env = "WATCHDOG_BACKEND", default_value = "docker")]
    pub backend: String,
    /// Control API address.
    #[arg(long, env = "WATCHDOG_ADDR", default_value = "127.0.0.1:9190")]
    pub addr: SocketAddr,
    /// `/live`, `/ready` and `/metrics` (no token).
    #[arg(long, env = "WATCHDOG_METRICS_ADDR", default_value = "127.0.0.1:9191")]
    pub metrics_addr: SocketAddr,
    /// Docker backend: the Engine API (unix:///path or tcp://host:port).
    #[arg(
        long,
        env = "WATCHDOG_DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker_host: String,
    /// Docker backend: the compose project whose containers are watched
    /// (label com.docker.compose.project).
    #[arg(long, env = "WATCHDOG_COMPOSE_PROJECT")]
    pub compose_project: Option<String>,
    /// Process backend: a JSON file with the children (an array of
    /// {name, kind, program?, args, env, check, metrics?, job?, stop_order}).
    #[arg(long, env = "WATCHDOG_SPEC")]
    pub spec: Option<PathBuf>,
    /// Process backend: where Prometheus file_sd target files are written.
    #[arg(long, env = "WATCHDOG_TARGETS_DIR")]
    pub targets_dir: Option<PathBuf>,
    #[command(flatten)]
    pub supervise: SuperviseArgs,
    #[command(flatten)]
    pub bus: shortlink_bus::BusArgs,
}

/// `shortlink up --ha`: counts, ports and places of the topology.
#[derive(Clone, Debug, clap::Args)]
pub struct HaArgs {
    /// Run the distributed topology: every component its own process under
    /// the watchdog. Needs DATABASE_URL (PostgreSQL), REDIS_URL and
    /// KAFKA_BROKERS; ./scripts/ha.sh provides all three.
    #[arg(long)]
    pub ha: bool,
    /// Number of edges (edge i serves HTTP on --edge-http-port + i - 1).
    #[arg(long, env = "HA_EDGES", default_value_t = 2)]
    pub edges: u16,
    /// Number of links replicas.
    #[arg(
        long = "links-replicas",
        env = "HA_LINKS_REPLICAS",
        default_value_t = 3
    )]
    pub links_replicas: u16,
    /// Address every component listens on.
    #[arg(long = "ha-host", env = "HA_HOST", default_value = "127.0.0.1")]
    pub ha_host: IpAddr,
    /// HTTP port of the first edge.
    #[arg(long, env = "HA_EDGE_HTTP_PORT", default_value_t = 8080)]
    pub edge_http_port: u16,
    /// HTTPS port of the first edge.
    #[arg(long, env = "HA_EDGE_HTTPS_PORT", default_value_t = 8443)]
    pub edge_https_port: u16,
    /// gRPC port of the first links replica.
    #[arg(long, env = "HA_LINKS_GRPC_PORT", default_value_t = 50061)]
    pub links_grpc_port: u16,
    /// Admin's gRPC port.
    #[arg(long, env = "HA_ADMIN_GRPC_PORT", default_value_t = 50051)]
    pub admin_grpc_port: u16,
    /// Side and metrics ports are numbered from here: edges +10.., links
    /// +20.., admin +30, consumers +40, +41, +43 (analytics, log-printer,
    /// alerter), alerter HTTP +50, backup +60. The dashboard (which hosts
    /// the dashboard ingest) listens on DASHBOARD_ADDR, default port 3000.
    #[arg(long, env = "HA_SIDE_PORT_BASE", default_value_t = 9200)]
    pub side_port_base: u16,
    /// Watchdog control API.
    #[arg(long, env = "WATCHDOG_ADDR", default_value = "127.0.0.1:9190")]
    pub watchdog_addr: SocketAddr,
    /// Watchdog `/metrics`.
    #[arg(long, env = "WATCHDOG_METRICS_ADDR", default_value = "127.0.0.1:9191")]
    pub watchdog_metrics_addr: SocketAddr,
    /// Certificates, sockets, file_sd targets, tokens and backups of the topology.
    #[arg(long = "ha-data-dir", env = "HA_DATA_DIR", default_value = "./data/ha")]
    pub ha_data_dir: PathBuf,
    /// Run no backup component.
    #[arg(long, env = "HA_NO_BACKUP", default_value_t = false)]
    pub no_backup: bool,
    #[command(flatten)]
    pub ha_supervise: SuperviseArgs,
}

/// The shared backends of the topology.
#[derive(Clone, Debug)]
pub struct Backends {
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub kafka_brokers: Option<String>,
    pub dashboard_database_url: Option<String>,
}

fn require(v: &Option<String>, name: &str, how: &str) -> Result<String, ConfigError> {
    match v.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Ok(s.to_owned()),
        None => Err(ConfigError::new(format!(
            "up --ha needs {name}: {how}. ./scripts/ha.sh starts PostgreSQL, Redis and the test broker and sets all three."
        ))),
    }
}

/// A token written to `<dir>/<name>` (0600) unless already there.
fn token_file(dir: &Path, name: &str) -> anyhow::Result<(String, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    if let Ok(t) = std::fs::read_to_string(&path)
        && t.trim().len() >= 16
    {
        return Ok((t.trim().to_owned(), path));
    }
    let token: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..32)
            .map(|_| {
                let i = rng.random_range(0..62u8);
                (match i {
                    0..=9 => b'0' + i,
                    10..=35 => b'a' + i - 10,
                    _ => b'A' + i - 36,
                }) as char
            })
            .collect()
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut f, token.as_bytes())?;
    Ok((token, path))
}

/// One row of the start table.
struct Row {
    name: String,
    serves: String,
    check: String,
    metrics: String,
}

/// The topology: the children, their scrape targets and the start table.
pub fn topology(
    a: &HaArgs,
    b: &Backends,
    admin_token: &str,
    watchdog_token: &str,
) -> anyhow::Result<(Vec<ComponentSpec>, Vec<Target>, Vec<String>)> {
    let database_url = require(
        &b.database_url,
        "DATABASE_URL",
        "a PostgreSQL URL every process shares (export DATABASE_URL=postgres://postgres@127.0.0.1:5432/shortlink)",
    )?;
    if !database_url.starts_with("postgres://") && !database_url.starts_with("postgresql://") {
        return Err(ConfigError::new(
            "up --ha needs a PostgreSQL DATABASE_URL: separate processes cannot share the embedded SQLite database safely",
        )
        .into());
    }
    let redis_url = require(
        &b.redis_url,
        "REDIS_URL",
        "the Redis the links cache and the edges' shared limits and bans use (export REDIS_URL=redis://127.0.0.1:6379)",
    )?;
    let kafka = require(
        &b.kafka_brokers,
        "KAFKA_BROKERS",
        "the Kafka brokers of the event pipeline (./scripts/kafka.sh start; export KAFKA_BROKERS=127.0.0.1:19092)",
    )?;
    if a.edges == 0 || a.links_replicas == 0 {
        return Err(
            ConfigError::new("up --ha needs at least one edge and one links replica").into(),
        );
    }
    let host = a.ha_host;
    let at = |port: u16| SocketAddr::new(host, port);
    let side = |off: u16| at(a.side_port_base + off);
    let dir = &a.ha_data_dir;
    let shared = vec![
        ("DATABASE_URL".to_owned(), database_url),
        ("REDIS_URL".to_owned(), redis_url),
        ("KAFKA_BROKERS".to_owned(), kafka),
    ];
    let mut specs = Vec::new();
    let mut targets = Vec::new();
    let mut rows = Vec::new();
    let live = |addr: SocketAddr| Check::Http {
        addr,
        path: "/live".into(),
    };
    let mut push =
        |spec: ComponentSpec, serves: String, rows: &mut Vec<Row>, targets: &mut Vec<Target>| {
            if let (Some(m), Some(job)) = (spec.metrics, &spec.job) {
                targets.push(Target {
                    job: job.clone(),
                    name: spec.name.clone(),
                    kind: spec.kind.clone(),
                    addr: m,
                });
            }
            rows.push(Row {
                name: spec.name.clone(),
                serves,
                check: match &spec.check {
                    Check::Http { addr, path } => format!("GET {addr}{path}"),
                    Check::Grpc { addr } => format!("grpc.health.v1 {addr}"),
                    Check::None => "process".into(),
                },
                metrics: spec
                    .metrics
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into()),
            });
            specs.push(spec);
        };
    let links_grpc: Vec<SocketAddr> = (0..a.links_replicas)
        .map(|i| at(a.links_grpc_port + i))
        .collect();
    let upstreams = links_grpc
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    for i in 0..a.links_replicas {
        let name = format!("links-{}", i + 1);
        let http = side(20 + i);
        let mut env = shared.clone();
        env.push(("INSTANCE_ID".into(), name.clone()));
        push(
            ComponentSpec {
                name: name.clone(),
                kind: "links".into(),
                program: None,
                args: vec![
                    "links".into(),
                    "--grpc-addr".into(),
                    links_grpc[i as usize].to_string(),
                    "--http-addr".into(),
                    http.to_string(),
                ],
                env,
                check: live(http),
                metrics: Some(http),
                job: Some("links".into()),
                stop_order: 2,
            },
            format!("gRPC {}", links_grpc[i as usize]),
            &mut rows,
            &mut targets,
        );
    }
    for i in 0..a.edges {
        let name = format!("edge-{}", i + 1);
        let http = at(a.edge_http_port + i);
        let https = at(a.edge_https_port + i);
        let metrics = side(10 + i);
        let mut env = shared.clone();
        env.push(("LINKS_UPSTREAMS".into(), upstreams.clone()));
        push(
            ComponentSpec {
                name: name.clone(),
                kind: "edge".into(),
                program: None,
                args: vec![
                    "edge".into(),
                    "--edge-id".into(),
                    name.clone(),
                    "--http-addr".into(),
                    http.to_string(),
                    "--https-addr".into(),
                    https.to_string(),
                    "--metrics-addr".into(),
                    metrics.to_string(),
                    "--cert-dir".into(),
                    dir.join(format!("tls-{name}")).display().to_string(),
                    "--upgrade-sock".into(),
                    dir.join(format!("{name}.sock")).display().to_string(),
                ],
                env,
                check: live(http),
                metrics: Some(metrics),
                job: Some("edge".into()),
                stop_order: 0,
            },
            format!("http {http}  https {https}"),
            &mut rows,
            &mut targets,
        );
    }
    {
        let grpc = at(a.admin_grpc_port);
        let http = side(30);
        let mut env = shared.clone();
        env.push(("ADMIN_TOKEN".into(), admin_token.to_owned()));
        push(
            ComponentSpec {
                name: "admin".into(),
                kind: "admin".into(),
                program: None,
                args: vec![
                    "admin".into(),
                    "--grpc-addr".into(),
                    grpc.to_string(),
                    "--http-addr".into(),
                    http.to_string(),
                ],
                env,
                check: live(http),
                metrics: Some(http),
                job: Some("admin".into()),
                stop_order: 1,
            },
            format!("gRPC {grpc}"),
            &mut rows,
            &mut targets,
        );
    }
    let dashboard_db = b
        .dashboard_database_url
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("sqlite://{}/dashboard.db?mode=rwc", dir.display()));
    // (name, side-port offset of its metrics, extra flags, its HTTP port).
    let consumers: [(&str, u16, Vec<String>, Option<SocketAddr>); 3] = [
        (
            "analytics",
            40,
            vec!["--links-addr".into(), links_grpc[0].to_string()],
            None,
        ),
        (
            "log-printer",
            41,
            vec!["--min-level".into(), "warn".into()],
            None,
        ),
        (
            "alerter",
            43,
            vec!["--http-addr".into(), side(50).to_string()],
            Some(side(50)),
        ),
    ];
    for (name, offset, extra, http) in consumers {
        let metrics = side(offset);
        let mut args = vec![
            name.to_owned(),
            "--metrics-addr".into(),
            metrics.to_string(),
        ];
        args.extend(extra);
        push(
            ComponentSpec {
                name: name.into(),
                kind: name.into(),
                program: None,
                args,
                env: shared.clone(),
                check: live(metrics),
                metrics: Some(metrics),
                job: Some("consumers".into()),
                stop_order: 3,
            },
            http.map(|h| format!("http {h}"))
                .unwrap_or_else(|| "-".into()),
            &mut rows,
            &mut targets,
        );
    }
    {
        // The ops dashboard hosts the dashboard ingest (D70), serves its
        // pages, probes and /metrics on one port, and drives this
        // watchdog's control API from its chaos panel. DASHBOARD_TOKEN,
        // PROMETHEUS_URL and K6_BIN come from the environment.
        let addr = std::env::var("DASHBOARD_ADDR")
            .ok()
            .and_then(|v| v.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| at(3000));
        let edges = (0..a.edges)
            .map(|i| format!("http://{}", at(a.edge_http_port + i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut env = shared.clone();
        env.push(("WATCHDOG_TOKEN".into(), watchdog_token.to_owned()));
        push(
            ComponentSpec {
                name: "dashboard".into(),
                kind: "dashboard".into(),
                program: None,
                args: vec![
                    "dashboard".into(),
                    "--addr".into(),
                    addr.to_string(),
                    "--dashboard-database-url".into(),
                    dashboard_db,
                    "--watchdog-url".into(),
                    format!("http://{}", a.watchdog_addr),
                    "--edges".into(),
                    edges,
                ],
                env,
                check: live(addr),
                metrics: Some(addr),
                job: Some("dashboard".into()),
                stop_order: 3,
            },
            format!("http {addr}"),
            &mut rows,
            &mut targets,
        );
    }
    if !a.no_backup {
        let metrics = side(60);
        push(
            ComponentSpec {
                name: "backup".into(),
                kind: "backup".into(),
                program: None,
                args: vec![
                    "backup".into(),
                    "--dir".into(),
                    dir.join("backups").display().to_string(),
                    "--metrics-addr".into(),
                    metrics.to_string(),
                ],
                env: shared.clone(),
                check: live(metrics),
                metrics: Some(metrics),
                job: Some("backup".into()),
                stop_order: 3,
            },
            format!("daily into {}", dir.join("backups").display()),
            &mut rows,
            &mut targets,
        );
    }
    let w = |f: fn(&Row) -> &str, min: usize| {
        rows.iter().map(|r| f(r).len()).max().unwrap_or(0).max(min)
    };
    let (wn, ws, wc) = (w(|r| &r.name, 9), w(|r| &r.serves, 6), w(|r| &r.check, 8));
    let mut table = vec![format!(
        "{:<wn$}  {:<ws$}  {:<wc$}  METRICS",
        "COMPONENT", "SERVES", "LIVENESS"
    )];
    for r in &rows {
        table.push(format!(
            "{:<wn$}  {:<ws$}  {:<wc$}  {}",
            r.name, r.serves, r.check, r.metrics
        ));
    }
    Ok((specs, targets, table))
}

/// Connects the event bus when KAFKA_BROKERS is set, and sends this
/// process's WARN and ERROR logs to it.
fn bus_of(
    args: &shortlink_bus::BusArgs,
    metrics: &Metrics,
    instance: &str,
) -> anyhow::Result<Option<(Arc<dyn shortlink_bus::EventBus>, String)>> {
    if args.kafka_brokers.as_deref().is_none_or(str::is_empty) {
        return Ok(None);
    }
    let bus = shortlink_bus::connect(args, metrics)?;
    let topics = shortlink_bus::Topics::with_prefix(&args.topic_prefix);
    shortlink_bus::keep_topics(bus.clone(), topics.all(), Shutdown::new());
    shortlink_bus::publish_logs_to(bus.clone(), topics.logs.clone(), "watchdog", instance);
    Ok(Some((bus, topics.ops)))
}

async fn serve_side(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let router = shortlink_runtime::side_port::metrics_router(metrics);
    shortlink_runtime::side_port::spawn_serve(addr, "WATCHDOG_METRICS_ADDR", router, shutdown)
        .await?;
    Ok(())
}

/// Stops the children in order on the first signal; kills them on a second.
async fn stop_process_children(backend: &Arc<ProcessBackend>, sup: &Supervisor) {
    sup.stop_restarting();
    println!("watchdog: stopping every component (edges first); a second Ctrl-C kills them");
    tokio::select! {
        _ = backend.stop_all() => {}
        _ = os_signal() => {
            println!("watchdog: second signal; killing every component");
            backend.kill_all().await;
        }
    }
    backend.kill_all().await;
}

/// `shortlink watchdog`.
pub async fn run_watchdog(args: WatchdogArgs) -> anyhow::Result<()> {
    let metrics = Metrics::new("watchdog", "watchdog");
    let bus = bus_of(&args.bus, &metrics, "watchdog")?;
    let cfg = args
        .supervise
        .supervisor("watchdog".into(), args.targets_dir.clone());
    let shutdown = Shutdown::new();
    match args.backend.as_str() {
        "docker" => {
            let project = args.compose_project.clone().filter(|p| !p.is_empty()).ok_or_else(|| {
                ConfigError::new(
                    "the docker backend needs WATCHDOG_COMPOSE_PROJECT: the compose project whose containers it watches",
                )
            })?;
            let endpoint =
                Endpoint::parse(&args.docker_host).map_err(|e| ConfigError::new(e.to_string()))?;
            let backend: Arc<dyn Backend> = Arc::new(DockerBackend::new(
                endpoint,
                project.clone(),
                std::env::var("HOSTNAME").ok(),
            ));
            let sup = Supervisor::new(backend, cfg, &metrics, bus, Vec::new());
            serve_side(args.metrics_addr, metrics.clone(), shutdown.clone()).await?;
            let ctl = crate::control::serve(
                args.addr,
                sup.clone(),
                args.supervise.token.clone(),
                shutdown.clone(),
            )
            .await?;
            tracing::info!(project = project.as_str(), control = %ctl, "watchdog watching the compose project");
            shutdown.trigger_on_signals();
            sup.run(shutdown).await;
            Ok(())
        }
        "process" => {
            let path = args.spec.clone().ok_or_else(|| {
                ConfigError::new("the process backend needs WATCHDOG_SPEC: a JSON file listing the children (or run `shortlink up --ha`)")
            })?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::new(format!("cannot read WATCHDOG_SPEC {}: {e}", path.display()))
            })?;
            let specs: Vec<ComponentSpec> = serde_json::from_str(&text)
                .map_err(|e| ConfigError::new(format!("WATCHDOG_SPEC {}: {e}", path.display())))?;
            let targets = specs
                .iter()
                .filter_map(|s| {
                    Some(Target {
                        job: s.job.clone()?,
                        name: s.name.clone(),
                        kind: s.kind.clone(),
                        addr: s.metrics?,
                    })
                })
                .collect();
            let backend = ProcessBackend::new(specs, args.supervise.timing())?;
            let sup = Supervisor::new(backend.clone(), cfg, &metrics, bus, targets);
            serve_side(args.metrics_addr, metrics.clone(), shutdown.clone()).await?;
            crate::control::serve(
                args.addr,
                sup.clone(),
                args.supervise.token.clone(),
                shutdown.clone(),
            )
            .await?;
            sup.start_all().await?;
            let run = tokio::spawn(sup.clone().run(shutdown.clone()));
            os_signal().await;
            shutdown.trigger();
            let _ = run.await;
            stop_process_children(&backend, &sup).await;
            Ok(())
        }
        other => Err(ConfigError::new(format!(
            "WATCHDOG_BACKEND must be process or docker, not {other:?}"
        ))
        .into()),
    }
}

/// Runs `<this binary> <args>` to completion (migrate, import).
async fn run_once(args: &[&str], env: &[(String, String)]) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new(exe)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await?;
    if !out.status.success() {
        return Err(anyhow!(
            "shortlink {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// `shortlink up --ha`.
pub async fn run_ha(
    a: HaArgs,
    b: Backends,
    bus_args: shortlink_bus::BusArgs,
    seed: Option<PathBuf>,
    child_env: Vec<(String, String)>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.ha_data_dir)
        .with_context(|| format!("cannot create {}", a.ha_data_dir.display()))?;
    let admin_token = match std::env::var("ADMIN_TOKEN") {
        Ok(t) if t.len() >= 16 => t,
        _ => token_file(&a.ha_data_dir, "admin-token")?.0,
    };
    let (token, token_note) = match a.ha_supervise.token.clone().filter(|t| !t.is_empty()) {
        Some(t) => (t, "WATCHDOG_TOKEN".to_owned()),
        None => {
            let (t, p) = token_file(&a.ha_data_dir, "watchdog-token")?;
            (t, p.display().to_string())
        }
    };
    let (mut specs, mut targets, table) = topology(&a, &b, &admin_token, &token)?;
    for s in &mut specs {
        s.env.extend(child_env.iter().cloned());
    }
    targets.push(Target {
        job: "watchdog".into(),
        name: "watchdog".into(),
        kind: "watchdog".into(),
        addr: a.watchdog_metrics_addr,
    });
    let shared_env = specs[0].env.iter().take(3).cloned().collect::<Vec<_>>();
    run_once(&["migrate"], &shared_env).await?;
    if let Some(dir) = &seed {
        run_once(
            &["import", "--dir", &dir.display().to_string()],
            &shared_env,
        )
        .await?;
    }
    let metrics = Metrics::new("watchdog", "watchdog");
    let mut bus_args = bus_args;
    bus_args.kafka_brokers = b.kafka_brokers.clone();
    let bus = bus_of(&bus_args, &metrics, "watchdog")?;
    let targets_dir = a.ha_data_dir.join("targets");
    let cfg = a
        .ha_supervise
        .supervisor("watchdog".into(), Some(targets_dir.clone()));
    let backend = ProcessBackend::new(specs, a.ha_supervise.timing())?;
    let sup = Supervisor::new(backend.clone(), cfg, &metrics, bus.clone(), targets);
    let shutdown = Shutdown::new();
    serve_side(a.watchdog_metrics_addr, metrics.clone(), shutdown.clone()).await?;
    crate::control::serve(a.watchdog_addr, sup.clone(), Some(token), shutdown.clone()).await?;
    println!(
        "shortlink up --ha: the distributed topology, every component its own process under the watchdog\n"
    );
    for line in &table {
        println!("  {line}");
    }
    println!(
        "\n  watchdog control API http://{} (bearer token: {token_note}), metrics http://{}/metrics",
        a.watchdog_addr, a.watchdog_metrics_addr
    );
    println!(
        "  Prometheus file_sd targets: {}   admin token: {}\n",
        targets_dir.display(),
        if std::env::var("ADMIN_TOKEN").is_ok_and(|t| t.len() >= 16) {
            "ADMIN_TOKEN".to_owned()
        } else {
            a.ha_data_dir.join("admin-token").display().to_string()
        }
    );
    sup.start_all().await?;
    let run = tokio::spawn(sup.clone().run(shutdown.clone()));
    os_signal().await;
    shutdown.trigger();
    let _ = run.await;
    stop_process_children(&backend, &sup).await;
    if let Some((bus, _)) = bus {
        bus.flush(Duration::from_secs(3));
    }
    println!("watchdog: every component stopped");
    Ok(())
}
