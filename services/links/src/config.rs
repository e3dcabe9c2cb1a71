//! Configuration of `shortlink links`. Every flag has an environment
//! variable; `shortlink links --help` is the reference.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use shortlink_runtime::breaker::BreakerConfig;
use shortlink_runtime::config::ConfigError;

use crate::cache::RedisCacheConfig;
use crate::service::CachePolicy;
use crate::store::StoreConfig;

/// Where the data lives: the database (and, for the embedded default, the
/// data directory).
#[derive(Clone, Debug, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL (postgres://user@host:5432/db) or sqlite: URL. Unset:
    /// the embedded default, a SQLite file in the data directory.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory for the embedded SQLite database and generated files.
    #[arg(long, env = "SHORTLINK_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Largest number of pooled database connections.
    #[arg(long, env = "DB_POOL_MAX", default_value_t = 10)]
    pub db_pool_max: u32,
    /// How long a request waits for a pooled connection, in milliseconds.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2000)]
    pub db_acquire_timeout_ms: u64,
    /// How long start-up keeps retrying an unreachable database, in seconds.
    #[arg(long, env = "DB_CONNECT_RETRY_S", default_value_t = 30)]
    pub db_connect_retry_s: u64,
}

impl DatabaseArgs {
    /// The effective store configuration; creates the data directory for
    /// the embedded default.
    pub fn store_config(&self) -> Result<StoreConfig, ConfigError> {
        let url = match &self.database_url {
            Some(u) if !u.is_empty() => {
                let known = ["postgres://", "postgresql://", "sqlite:"];
                if !known.iter().any(|p| u.starts_with(p)) {
                    return Err(ConfigError::new(
                        "DATABASE_URL must start with postgres://, postgresql:// or sqlite:",
                    ));
                }
                u.clone()
            }
            _ => {
                std::fs::create_dir_all(&self.data_dir).map_err(|e| {
                    ConfigError::new(format!(
                        "cannot create data directory {}: {e}",
                        self.data_dir.display()
                    ))
                })?;
                format!("sqlite://{}/shortlink.db", self.data_dir.display())
            }
        };
        if self.db_pool_max == 0 {
            return Err(ConfigError::new("DB_POOL_MAX must be at least 1"));
        }
        Ok(StoreConfig {
            url,
            max_connections: self.db_pool_max,
            acquire_timeout: Duration::from_millis(self.db_acquire_timeout_ms.max(1)),
        })
    }
}

/// Flags of `shortlink links`.
#[derive(Clone, Debug, clap::Args)]
pub struct LinksConfig {
    /// gRPC listen address.
    #[arg(long, env = "LINKS_GRPC_ADDR", default_value = "127.0.0.1:50061")]
    pub grpc_addr: SocketAddr,
    /// HTTP side port (/live, /ready, /health, /metrics).
    #[arg(long, env = "LINKS_HTTP_ADDR", default_value = "127.0.0.1:9181")]
    pub http_addr: SocketAddr,
    /// Name of this replica in logs, metrics and /health (default:
    /// links-<grpc port>; links-<hostname>-<port> when listening on 0.0.0.0 or [::],
    /// as scaled containers do).
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,

    #[command(flatten)]
    pub db: DatabaseArgs,

    #[command(flatten)]
    pub bus: shortlink_bus::BusArgs,

    /// Redis URL for the resolution cache (redis://127.0.0.1:6379). Unset:
    /// an in-process cache.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key this service writes.
    #[arg(long, env = "CACHE_PREFIX", default_value = "shortlink:")]
    pub cache_prefix: String,
    /// Bound on each Redis command, in milliseconds.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 200)]
    pub redis_timeout_ms: u64,
    /// Lifetime of a cached resolution, in seconds.
    #[arg(long, env = "CACHE_TTL_S", default_value_t = 300)]
    pub cache_ttl_s: u64,
    /// Lifetime of a cached "no such code", in seconds.
    #[arg(long, env = "CACHE_NEGATIVE_TTL_S", default_value_t = 30)]
    pub cache_negative_ttl_s: u64,
    /// Entries held by the in-process cache.
    #[arg(long, env = "CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: usize,
    /// Turn the resolution cache off (every resolution reads the database).
    #[arg(long, env = "CACHE_DISABLED", default_value_t = false)]
    pub cache_disabled: bool,

    /// Consecutive database failures that open the breaker.
    #[arg(long, env = "BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,
    /// Failure ratio over the window that opens the breaker.
    #[arg(long, env = "BREAKER_FAILURE_RATIO", default_value_t = 0.5)]
    pub breaker_failure_ratio: f64,
    /// Recent calls the failure ratio looks at.
    #[arg(long, env = "BREAKER_WINDOW", default_value_t = 20)]
    pub breaker_window: usize,
    /// Calls in the window before the ratio applies.
    #[arg(long, env = "BREAKER_MIN_CALLS", default_value_t = 10)]
    pub breaker_min_calls: usize,
    /// Time the breaker stays open before a probe, in milliseconds.
    #[arg(long, env = "BREAKER_COOL_DOWN_MS", default_value_t = 5000)]
    pub breaker_cool_down_ms: u64,

    /// How often readiness (database, breaker) is re-checked and published
    /// to grpc.health.v1, in milliseconds.
    #[arg(long, env = "HEALTH_INTERVAL_MS", default_value_t = 1000)]
    pub health_interval_ms: u64,
    /// How often pending list-count deltas are folded into the totals, in
    /// milliseconds (PostgreSQL; totals are exact either way, folding keeps
    /// reading them cheap). 0 turns folding off on this replica.
    #[arg(long, env = "COUNTS_COMPACT_INTERVAL_MS", default_value_t = 1000)]
    pub counts_compact_interval_ms: u64,
    /// After a shutdown signal, keep serving this long while health reports
    /// NOT_SERVING, so balancers stop sending before the listener closes (ms).
    #[arg(long, env = "SHUTDOWN_DELAY_MS", default_value_t = 1000)]
    pub shutdown_delay_ms: u64,
    /// Longest wait for in-flight requests at shutdown, in seconds.
    #[arg(long, env = "SHUTDOWN_GRACE_S", default_value_t = 20)]
    pub shutdown_grace_s: u64,
}

impl LinksConfig {
    /// Checks values clap cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.breaker_failure_ratio) || self.breaker_failure_ratio == 0.0 {
            return Err(ConfigError::new("BREAKER_FAILURE_RATIO must be in (0, 1]"));
        }
        if self.breaker_failures == 0 || self.breaker_window == 0 {
            return Err(ConfigError::new(
                "BREAKER_FAILURES and BREAKER_WINDOW must be at least 1",
            ));
        }
        if self.breaker_min_calls > self.breaker_window {
            return Err(ConfigError::new(
                "BREAKER_MIN_CALLS must not exceed BREAKER_WINDOW",
            ));
        }
        if self.cache_ttl_s == 0 {
            return Err(ConfigError::new(
                "CACHE_TTL_S must be at least 1 (use CACHE_DISABLED to turn the cache off)",
            ));
        }
        if let Some(u) = &self.redis_url
            && !u.is_empty()
            && !(u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("unix://"))
        {
            return Err(ConfigError::new(
                "REDIS_URL must start with redis://, rediss:// or unix://",
            ));
        }
        Ok(())
    }

    pub fn breaker(&self) -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: self.breaker_failures,
            failure_ratio: self.breaker_failure_ratio,
            window: self.breaker_window,
            min_calls: self.breaker_min_calls,
            cool_down: Duration::from_millis(self.breaker_cool_down_ms),
        }
    }

    pub fn cache_policy(&self) -> CachePolicy {
        CachePolicy {
            ttl: Duration::from_secs(self.cache_ttl_s),
            negative_ttl: Duration::from_secs(self.cache_negative_ttl_s.max(1)),
            ..CachePolicy::default()
        }
    }

    /// Redis settings, when a Redis URL is configured.
    pub fn redis(&self) -> Option<RedisCacheConfig> {
        self.redis_url
            .as_ref()
            .filter(|u| !u.is_empty())
            .map(|u| RedisCacheConfig {
                url: u.clone(),
                prefix: self.cache_prefix.clone(),
                timeout: Duration::from_millis(self.redis_timeout_ms.max(1)),
            })
    }
}
