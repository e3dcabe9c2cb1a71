//! Redis cache. Every operation is bounded by a short timeout, and the
//! connection is made lazily and re-made in the background, so a Redis
//! outage (at start or later) costs a few milliseconds per request and never
//! an error: the service falls back to the database.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use super::{Cache, CacheError, Cached, decode, encode};

/// Connection settings.
#[derive(Clone, Debug)]
pub struct RedisCacheConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prepended to every key, so several deployments (or tests) can share
    /// one Redis.
    pub prefix: String,
    /// Bound on each command, including connection set-up.
    pub timeout: Duration,
}

/// See the module docs.
pub struct RedisCache {
    client: redis::Client,
    cfg: RedisCacheConfig,
    conn: tokio::sync::RwLock<Option<ConnectionManager>>,
    last_attempt: Mutex<Option<Instant>>,
    up: AtomicBool,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.cfg.prefix)
            .finish()
    }
}

impl RedisCache {
    /// Validates the URL; does not connect yet.
    pub fn new(cfg: RedisCacheConfig) -> anyhow::Result<Self> {
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| anyhow::anyhow!("invalid REDIS_URL: {e}"))?;
        Ok(Self {
            client,
            cfg,
            conn: tokio::sync::RwLock::new(None),
            last_attempt: Mutex::new(None),
            up: AtomicBool::new(true),
        })
    }

    fn key(&self, code: &str) -> String {
        format!("{}link:{code}", self.cfg.prefix)
    }

    /// The shared connection, connecting at most once per second while Redis
    /// is unreachable.
    async fn conn(&self) -> Result<ConnectionManager, CacheError> {
        if let Some(c) = self.conn.read().await.as_ref() {
            return Ok(c.clone());
        }
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Err(CacheError("not connected".into()));
            }
            *last = Some(Instant::now());
        }
        let mut slot = self.conn.write().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.cfg.timeout))
            .set_response_timeout(Some(self.cfg.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let fut = ConnectionManager::new_with_config(self.client.clone(), config);
        match tokio::time::timeout(self.cfg.timeout * 2, fut).await {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => Err(self.failed(e.to_string())),
            Err(_) => Err(self.failed("connect timed out".into())),
        }
    }

    fn failed(&self, msg: String) -> CacheError {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %msg, "redis cache unavailable; serving from the database");
        }
        CacheError(msg)
    }

    fn ok<T>(&self, v: T) -> T {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("redis cache available again");
        }
        v
    }

    async fn run<T, F>(&self, f: impl FnOnce(ConnectionManager) -> F) -> Result<T, CacheError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let c = self.conn().await?;
        match tokio::time::timeout(self.cfg.timeout, f(c)).await {
            Ok(Ok(v)) => Ok(self.ok(v)),
            Ok(Err(e)) => Err(self.failed(e.to_string())),
            Err(_) => Err(self.failed("command timed out".into())),
        }
    }
}

#[async_trait]
impl Cache for RedisCache {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, code: &str) -> Result<Option<Cached>, CacheError> {
        let key = self.key(code);
        let raw: Option<String> = self.run(|mut c| async move { c.get(key).await }).await?;
        Ok(raw.as_deref().and_then(decode))
    }

    async fn put(&self, code: &str, value: &Cached, ttl: Duration) -> Result<(), CacheError> {
        let key = self.key(code);
        let val = encode(value);
        let secs = ttl.as_secs().max(1);
        self.run(|mut c| async move { c.set_ex::<_, _, ()>(key, val, secs).await })
            .await
    }

    async fn invalidate(&self, code: &str) -> Result<(), CacheError> {
        let key = self.key(code);
        self.run(|mut c| async move { c.del::<_, ()>(key).await })
            .await
    }

    async fn ping(&self) -> Result<(), CacheError> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(|_| ())
    }
}
