//! Configuration of `shortlink edge`. Every flag has an environment
//! variable; `shortlink edge --help` is the reference.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use shortlink_abuse::{Limits, Prefixes};
use shortlink_runtime::config::ConfigError;

use crate::balance::BalanceConfig;
use crate::conn::ConnSettings;

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
    /// Name of this edge in logs, metrics and events (default: edge-<http
    /// port>; edge-<hostname>-<port> when listening on 0.0.0.0 or [::]).
    #[arg(long, env = "EDGE_ID")]
    pub edge_id: Option<String>,

    /// Links replicas, comma-separated: host:port (fixed) or
    /// dns://name:port (every address the name resolves to, re-resolved
    /// every EDGE_DNS_INTERVAL_MS: compose's service name, a Kubernetes
    /// headless Service).
    #[arg(
        long,
        env = "LINKS_UPSTREAMS",
        value_delimiter = ',',
        default_value = "127.0.0.1:50061"
    )]
    pub upstreams: Vec<String>,
    /// Time between two resolutions of the dns:// upstreams, in
    /// milliseconds (200 to 600000).
    #[arg(long, env = "EDGE_DNS_INTERVAL_MS", default_value_t = 5000)]
    pub dns_interval_ms: u64,
    /// Name server (ip:port) for the dns:// upstreams instead of the
    /// system's /etc/resolv.conf.
    #[arg(long, env = "EDGE_DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,
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
    /// How long the edge keeps a resolution of a short code, in
    /// milliseconds (0 disables the cache). A changed link stops
    /// redirecting everywhere within about this plus 500 ms.
    #[arg(long, env = "EDGE_RESOLVE_CACHE_TTL_MS", default_value_t = 500)]
    pub resolve_cache_ttl_ms: u64,
    /// Most short codes the edge's resolution cache holds (0 disables it).
    #[arg(long, env = "EDGE_RESOLVE_CACHE_SIZE", default_value_t = 100_000)]
    pub resolve_cache_size: usize,
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
    #[arg(long = "redis-url", env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of the Redis keys and channel shared by the edges and admin.
    #[arg(long, env = "ABUSE_KEY_PREFIX", default_value = "shortlink:abuse:")]
    pub abuse_prefix: String,
    /// PostgreSQL URL where bans are persisted (unset: not persisted).
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Sustained requests per second allowed per client (0.001 to 1000000),
    /// until limits are stored through admin.
    #[arg(long, env = "RATE_LIMIT_RPS", default_value_t = 50.0)]
    pub rate_limit_rps: f64,
    /// Burst allowed per client (1 to 1000000), until limits are stored
    /// through admin.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 100.0)]
    pub rate_limit_burst: f64,
    /// Spend client budgets in Redis, shared by every edge (one round trip
    /// per request; local budgets while Redis is away). false: each edge
    /// keeps its own budgets.
    #[arg(long, env = "RATE_LIMIT_SHARED", default_value_t = true, action = clap::ArgAction::Set)]
    pub rate_limit_shared: bool,
    /// IPv4 clients are limited and banned by networks of this prefix
    /// length (16 to 32).
    #[arg(long, env = "CLIENT_PREFIX_V4", default_value_t = 32)]
    pub client_prefix_v4: u8,
    /// IPv6 clients are limited and banned by networks of this prefix
    /// length (32 to 128; one subscriber usually holds a /64).
    #[arg(long, env = "CLIENT_PREFIX_V6", default_value_t = 64)]
    pub client_prefix_v6: u8,
    /// Most clients each in-memory abuse map tracks at once (budgets,
    /// fallback strikes, the memory store); the least useful entries are
    /// dropped beyond it.
    #[arg(long, env = "ABUSE_MAX_CLIENTS", default_value_t = 100_000)]
    pub abuse_max_clients: usize,
    /// Clients whose X-Forwarded-For is believed (IPs or CIDRs, comma-separated).
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<IpNet>,

    /// Time a client has for a whole request header (and an HTTP/2
    /// preface), in milliseconds, from its first byte (from accept on a new
    /// connection). A client too slow is disconnected without an answer.
    #[arg(long, env = "EDGE_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// Idle time allowed between requests on a kept-alive HTTP/1
    /// connection, and on an HTTP/2 connection with no stream open, in
    /// seconds.
    #[arg(long, env = "EDGE_KEEPALIVE_TIMEOUT_S", default_value_t = 60)]
    pub keepalive_timeout_s: u64,
    /// Open client connections allowed on the public listeners together;
    /// more are closed at accept. Keep it below the open-files limit.
    #[arg(long, env = "EDGE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Open connections allowed per client address (IPv6: per /64);
    /// TRUSTED_PROXIES are exempt.
    #[arg(long, env = "EDGE_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 256)]
    pub max_connections_per_client: usize,
    /// HTTP/2: streams a client may have open at once on one connection.
    #[arg(long, env = "EDGE_H2_MAX_CONCURRENT_STREAMS", default_value_t = 100)]
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: largest decoded request header list, in bytes.
    #[arg(long, env = "EDGE_H2_MAX_HEADER_LIST_BYTES", default_value_t = 65_536)]
    pub h2_max_header_list_bytes: u32,

    #[command(flatten)]
    pub bus: shortlink_bus::BusArgs,

    /// Worker threads of the proxy.
    #[arg(long, env = "EDGE_THREADS", default_value_t = 2)]
    pub threads: usize,
    /// Threads of the runtime that carries the gRPC connections to the
    /// links replicas, the health checks and the abuse state. One is enough
    /// for the load a proxy thread can send it; a second mostly adds
    /// cross-thread wake-ups (measured: 17% more edge CPU per request at a
    /// fixed 1,000 requests/s, docs/BENCHMARKS.md).
    #[arg(long, env = "EDGE_CLIENT_THREADS", default_value_t = 1)]
    pub client_threads: usize,
    /// Let idle proxy threads steal connections' tasks from busy ones (one
    /// work-stealing runtime) instead of one single-threaded runtime per
    /// thread. Off: each connection stays on the thread that accepted it,
    /// which saves the cross-thread wake-ups that dominate on few cores.
    #[arg(long, env = "EDGE_WORK_STEALING", default_value_t = false, action = clap::ArgAction::Set)]
    pub work_stealing: bool,
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

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as the IPv4
/// network it is: peers are canonicalised to IPv4 before every check, so a
/// mapped spelling in the configuration must match them.
fn canonical_net(n: IpNet) -> IpNet {
    match n {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(n),
            None => n,
        },
        _ => n,
    }
}

/// A CIDR, or a bare IP taken as a single-address network.
fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(canonical_net)
        .map_err(|_| format!("{s:?} is neither an IP address nor a CIDR"))
}

impl EdgeConfig {
    /// Checks values clap cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.upstreams.iter().all(|u| u.trim().is_empty()) {
            return Err(ConfigError::new(
                "LINKS_UPSTREAMS must name at least one host:port or dns://name:port",
            ));
        }
        crate::discovery::parse_specs(&self.upstreams)
            .map_err(|e| ConfigError::new(format!("LINKS_UPSTREAMS: {e}")))?;
        if !(200..=600_000).contains(&self.dns_interval_ms) {
            return Err(ConfigError::new(
                "EDGE_DNS_INTERVAL_MS must be between 200 and 600000",
            ));
        }
        self.default_limits().validate().map_err(|e| {
            ConfigError::new(format!(
                "RATE_LIMIT_RPS / RATE_LIMIT_BURST out of range: {e}"
            ))
        })?;
        self.prefixes()
            .validate()
            .map_err(|e| ConfigError::new(format!("CLIENT_PREFIX_V4 / CLIENT_PREFIX_V6: {e}")))?;
        if self.abuse_max_clients < 1000 {
            return Err(ConfigError::new("ABUSE_MAX_CLIENTS must be at least 1000"));
        }
        if self.resolve_cache_ttl_ms > 1000 {
            return Err(ConfigError::new(
                "EDGE_RESOLVE_CACHE_TTL_MS must be at most 1000: a changed link must stop redirecting within about a second",
            ));
        }
        if self.client_threads == 0 {
            return Err(ConfigError::new("EDGE_CLIENT_THREADS must be at least 1"));
        }
        if self.threads == 0 {
            return Err(ConfigError::new("EDGE_THREADS must be at least 1"));
        }
        if !(100..=600_000).contains(&self.header_timeout_ms) {
            return Err(ConfigError::new(
                "EDGE_HEADER_TIMEOUT_MS must be between 100 and 600000",
            ));
        }
        if !(1..=3600).contains(&self.keepalive_timeout_s) {
            return Err(ConfigError::new(
                "EDGE_KEEPALIVE_TIMEOUT_S must be between 1 and 3600",
            ));
        }
        if self.max_connections == 0 || self.max_connections_per_client == 0 {
            return Err(ConfigError::new(
                "EDGE_MAX_CONNECTIONS and EDGE_MAX_CONNECTIONS_PER_CLIENT must be at least 1",
            ));
        }
        if self.h2_max_concurrent_streams == 0 || self.h2_max_header_list_bytes < 1024 {
            return Err(ConfigError::new(
                "EDGE_H2_MAX_CONCURRENT_STREAMS must be at least 1 and EDGE_H2_MAX_HEADER_LIST_BYTES at least 1024",
            ));
        }
        self.listeners_apart()?;
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

    /// Every listener needs a port of its own. Pingora shares one socket
    /// between services given the same address, and closes it twice: the
    /// process aborted at start ("IO Safety violation") instead of saying
    /// what was wrong.
    fn listeners_apart(&self) -> Result<(), ConfigError> {
        let all = [
            ("EDGE_HTTP_ADDR", Some(self.http_addr)),
            ("EDGE_HTTPS_ADDR", self.https_addr.0),
            ("EDGE_METRICS_ADDR", Some(self.metrics_addr)),
        ];
        for (i, (a_name, a)) in all.iter().enumerate() {
            for (b_name, b) in &all[i + 1..] {
                let (Some(a), Some(b)) = (a, b) else { continue };
                let overlap =
                    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
                if a.port() != 0 && a.port() == b.port() && overlap {
                    return Err(ConfigError::new(format!(
                        "{a_name} ({a}) and {b_name} ({b}) share a port: every listener needs its own"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The limits in force until others are stored through admin.
    pub fn default_limits(&self) -> Limits {
        Limits {
            rps: self.rate_limit_rps,
            burst: self.rate_limit_burst,
            ..Limits::default()
        }
    }

    /// Prefix lengths clients are keyed by.
    pub fn prefixes(&self) -> Prefixes {
        Prefixes {
            v4: self.client_prefix_v4,
            v6: self.client_prefix_v6,
        }
    }

    /// This edge's name.
    pub fn id(&self) -> String {
        self.edge_id.clone().unwrap_or_else(|| {
            shortlink_runtime::config::default_instance_id("edge", self.http_addr)
        })
    }

    /// Connection hygiene of the public listeners.
    pub fn conn(&self) -> ConnSettings {
        ConnSettings {
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            keepalive: Duration::from_secs(self.keepalive_timeout_s),
            max_total: self.max_connections,
            max_per_client: self.max_connections_per_client,
            exempt: self.trusted_proxies.clone(),
            h2_max_streams: self.h2_max_concurrent_streams,
            h2_max_header_list: self.h2_max_header_list_bytes,
        }
    }

    /// DNS discovery of the `dns://` upstreams.
    pub fn discovery(&self) -> crate::discovery::DiscoveryConfig {
        crate::discovery::DiscoveryConfig {
            interval: Duration::from_millis(self.dns_interval_ms),
            server: self.dns_server,
            timeout: Duration::from_millis((self.dns_interval_ms / 2).clamp(100, 2000)),
        }
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        edge: EdgeConfig,
    }

    fn parse(args: &[&str]) -> EdgeConfig {
        let mut all = vec!["edge"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("flags parse").edge
    }

    /// Before: only `rps > 0` and `burst >= 1` were checked, so a tiny rate
    /// (an infinite refill time) or a NaN passed and panicked later, in a
    /// request.
    #[test]
    fn limit_and_prefix_flags_out_of_range_are_configuration_errors() {
        assert!(parse(&[]).validate().is_ok());
        for bad in [
            &["--rate-limit-rps", "1e-300"][..],
            &["--rate-limit-rps", "NaN"],
            &["--rate-limit-rps", "inf"],
            &["--rate-limit-rps", "0"],
            &["--rate-limit-rps", "10000000"],
            &["--rate-limit-burst", "1e300"],
            &["--rate-limit-burst", "0.5"],
            &["--client-prefix-v6", "8"],
            &["--client-prefix-v6", "129"],
            &["--client-prefix-v4", "33"],
            &["--abuse-max-clients", "10"],
        ] {
            let err = parse(bad).validate().expect_err("refused");
            assert!(!err.0.is_empty(), "{bad:?}");
        }
        for (clash, needle) in [
            (
                &[
                    "--http-addr",
                    "127.0.0.1:8090",
                    "--https-addr",
                    "127.0.0.1:8090",
                ][..],
                "EDGE_HTTP_ADDR (127.0.0.1:8090) and EDGE_HTTPS_ADDR",
            ),
            (
                &["--metrics-addr", "0.0.0.0:8080"],
                "EDGE_HTTP_ADDR (127.0.0.1:8080) and EDGE_METRICS_ADDR",
            ),
            (
                &["--https-addr", "[::]:9180"],
                "EDGE_HTTPS_ADDR ([::]:9180) and EDGE_METRICS_ADDR",
            ),
        ] {
            let err = parse(clash).validate().expect_err("refused");
            assert!(err.0.contains(needle), "{clash:?}: {}", err.0);
        }
        for apart in [
            &["--https-addr", "off", "--metrics-addr", "127.0.0.1:8443"][..],
            &["--metrics-addr", "127.0.0.2:8080"],
        ] {
            assert!(parse(apart).validate().is_ok(), "{apart:?}");
        }
        let c = parse(&["--client-prefix-v6", "56", "--rate-limit-shared", "false"]);
        assert!(c.validate().is_ok());
        assert_eq!(c.prefixes(), Prefixes { v4: 32, v6: 56 });
        assert!(!c.rate_limit_shared);
        assert!(parse(&[]).rate_limit_shared);
    }
}

#[cfg(test)]
mod net_tests {
    use super::*;

    #[test]
    fn mapped_networks_in_the_configuration_are_ipv4() {
        assert_eq!(
            parse_net("::ffff:10.0.0.1").unwrap(),
            "10.0.0.1/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_net("::ffff:10.0.0.0/104").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_net("2001:db8::/32").unwrap(),
            "2001:db8::/32".parse::<IpNet>().unwrap()
        );
    }
}
