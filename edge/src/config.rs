//! Configuration of `shortlink edge`. Every flag has an environment
//! variable; `shortlink edge --help` is the reference.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use shortlink_runtime::config::ConfigError;

use crate::balance::BalanceConfig;

/// Flags of `shortlink edge`.
#[derive(Clone, Debug, clap::Args)]
pub struct EdgeConfig {
    /// Plain HTTP listener of the public API.
    #[arg(long, env = "EDGE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// TLS listener (HTTP/1.1 and HTTP/2); "off" disables TLS.
    #[arg(long, env = "EDGE_HTTPS_ADDR", default_value = "127.0.0.1:8443")]
    pub https_addr: OptionalAddr,
    /// Prometheus metrics listener.
    #[arg(long, env = "EDGE_METRICS_ADDR", default_value = "127.0.0.1:9180")]
    pub metrics_addr: SocketAddr,
    /// Name of this edge in logs, metrics and events (default: edge-<http port>).
    #[arg(long, env = "EDGE_ID")]
    pub edge_id: Option<String>,

    /// Links replicas, comma-separated host:port list.
    #[arg(
        long,
        env = "LINKS_UPSTREAMS",
        value_delimiter = ',',
        default_value = "127.0.0.1:50061"
    )]
    pub upstreams: Vec<String>,
    /// Active health check interval, in milliseconds.
    #[arg(long, env = "EDGE_HEALTH_INTERVAL_MS", default_value_t = 1000)]
    pub health_interval_ms: u64,
    /// Bound on one health check, in milliseconds.
    #[arg(long, env = "EDGE_HEALTH_TIMEOUT_MS", default_value_t = 500)]
    pub health_timeout_ms: u64,
    /// Consecutive passing checks before a replica takes traffic.
    #[arg(long, env = "EDGE_HEALTHY_AFTER", default_value_t = 1)]
    pub healthy_after: u32,
    /// Consecutive failing checks before a replica is taken out.
    #[arg(long, env = "EDGE_UNHEALTHY_AFTER", default_value_t = 2)]
    pub unhealthy_after: u32,
    /// Bound on one upstream gRPC call, in milliseconds.
    #[arg(long, env = "EDGE_UPSTREAM_TIMEOUT_MS", default_value_t = 5000)]
    pub upstream_timeout_ms: u64,
    /// Extra attempts on other replicas when a connection fails.
    #[arg(long, env = "EDGE_RETRIES", default_value_t = 2)]
    pub retries: usize,

    /// PEM certificate chain for the TLS listener; unset: a self-signed
    /// certificate is generated and kept in the certificate directory.
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching TLS_CERT.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where the generated self-signed certificate is kept.
    #[arg(long, env = "EDGE_CERT_DIR", default_value = "./data/tls")]
    pub cert_dir: PathBuf,
    /// HSTS max-age on TLS responses, in seconds.
    #[arg(long, env = "HSTS_MAX_AGE_S", default_value_t = 31_536_000)]
    pub hsts_max_age_s: u64,
    /// Redirect plain-HTTP API requests to HTTPS (health paths excepted).
    #[arg(long, env = "REDIRECT_TO_HTTPS", default_value_t = false)]
    pub redirect_to_https: bool,
    /// HTTPS port used in redirects (default: the TLS listener's port).
    #[arg(long, env = "HTTPS_PUBLIC_PORT")]
    pub https_public_port: Option<u16>,
    /// Host name used in HTTPS redirects (the request's `Host` is echoed
    /// only when it is in EDGE_ALLOWED_HOSTS). Default: localhost.
    #[arg(long, env = "EDGE_PUBLIC_HOST")]
    pub public_host: Option<String>,
    /// Host names a redirect may keep from the request's `Host` header
    /// (comma-separated, compared without the port, case-insensitively).
    #[arg(long, env = "EDGE_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Networks whose clients may read /metrics on the public listeners
    /// (IPs or CIDRs, comma-separated; the metrics port is not affected).
    #[arg(
        long,
        env = "METRICS_ALLOW",
        value_delimiter = ',',
        value_parser = parse_net,
        default_value = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"
    )]
    pub metrics_allow: Vec<IpNet>,

    /// Redis for shared strikes and bans (unset: this edge alone, in memory).
    #[arg(long = "redis-url", env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of the Redis keys and channel shared by the edges and admin.
    #[arg(long, env = "ABUSE_KEY_PREFIX", default_value = "shortlink:abuse:")]
    pub abuse_prefix: String,
    /// PostgreSQL URL where bans are persisted (unset: not persisted).
    #[arg(long = "database-url", env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Sustained requests per second allowed per client IP.
    #[arg(long, env = "RATE_LIMIT_RPS", default_value_t = 50.0)]
    pub rate_limit_rps: f64,
    /// Burst allowed per client IP.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 100.0)]
    pub rate_limit_burst: f64,
    /// Clients whose X-Forwarded-For is believed (IPs or CIDRs, comma-separated).
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<IpNet>,

    #[command(flatten)]
    pub bus: shortlink_bus::BusArgs,

    /// Worker threads of the proxy.
    #[arg(long, env = "EDGE_THREADS", default_value_t = 2)]
    pub threads: usize,
    /// After SIGTERM (or after handing sockets over in an upgrade), seconds
    /// during which requests already in flight may finish before the worker
    /// runtimes are shut down.
    #[arg(long, env = "EDGE_GRACE_PERIOD_S", default_value_t = 3)]
    pub grace_period_s: u64,
    /// Bound on shutting the worker runtimes down once the grace period is
    /// over, in seconds.
    #[arg(long, env = "EDGE_SHUTDOWN_TIMEOUT_S", default_value_t = 10)]
    pub shutdown_timeout_s: u64,
    /// Take over the listening sockets of a running edge (zero-downtime
    /// upgrade; the old one must get SIGQUIT).
    #[arg(long, env = "EDGE_UPGRADE", default_value_t = false)]
    pub upgrade: bool,
    /// Unix socket used to hand listening sockets to the next edge process.
    #[arg(
        long,
        env = "EDGE_UPGRADE_SOCK",
        default_value = "/tmp/shortlink-edge-upgrade.sock"
    )]
    pub upgrade_sock: String,
}

/// A listen address, or none ("off" or empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

impl std::str::FromStr for OptionalAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "" | "off" | "none" => Ok(Self(None)),
            a => a
                .parse()
                .map(|a| Self(Some(a)))
                .map_err(|e| format!("{a:?} is not host:port ({e}); use off to disable")),
        }
    }
}

/// A CIDR, or a bare IP taken as a single-address network.
fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither an IP address nor a CIDR"))
}

impl EdgeConfig {
    /// Checks values clap cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.upstreams.iter().all(|u| u.trim().is_empty()) {
            return Err(ConfigError::new(
                "LINKS_UPSTREAMS must name at least one host:port",
            ));
        }
        for u in &self.upstreams {
            if u.parse::<SocketAddr>().is_err() && !u.contains(':') {
                return Err(ConfigError::new(format!(
                    "LINKS_UPSTREAMS entry {u:?} is not host:port"
                )));
            }
        }
        if !(self.rate_limit_rps > 0.0 && self.rate_limit_burst >= 1.0) {
            return Err(ConfigError::new(
                "RATE_LIMIT_RPS must be > 0 and RATE_LIMIT_BURST >= 1",
            ));
        }
        if self.threads == 0 {
            return Err(ConfigError::new("EDGE_THREADS must be at least 1"));
        }
        if let Some(u) = &self.redis_url
            && !u.is_empty()
            && !u.starts_with("redis://")
            && !u.starts_with("rediss://")
        {
            return Err(ConfigError::new(
                "REDIS_URL must start with redis:// or rediss://",
            ));
        }
        Ok(())
    }

    /// This edge's name.
    pub fn id(&self) -> String {
        self.edge_id
            .clone()
            .unwrap_or_else(|| format!("edge-{}", self.http_addr.port()))
    }

    pub fn balance(&self) -> BalanceConfig {
        BalanceConfig {
            interval: Duration::from_millis(self.health_interval_ms.max(50)),
            check_timeout: Duration::from_millis(self.health_timeout_ms.max(10)),
            healthy_after: self.healthy_after.max(1),
            unhealthy_after: self.unhealthy_after.max(1),
            call_timeout: Duration::from_millis(self.upstream_timeout_ms.max(10)),
            retries: self.retries,
        }
    }
}
