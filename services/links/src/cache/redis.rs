//! Redis cache. Every operation is bounded by a short timeout, and the
//! connection is made lazily and re-made in the background, so a Redis
//! outage (at start or later) costs a few milliseconds per request and never
//! an error: the service falls back to the database.

use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use shortlink_runtime::redis_conn::LazyRedis;

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
#[derive(Debug)]
pub struct RedisCache {
    redis: LazyRedis,
    prefix: String,
}

impl RedisCache {
    /// Validates the URL; does not connect yet.
    pub fn new(cfg: RedisCacheConfig) -> anyhow::Result<Self> {
        Ok(Self {
            redis: LazyRedis::new(&cfg.url, cfg.timeout, "cache")?,
            prefix: cfg.prefix,
        })
    }

    fn key(&self, code: &str) -> String {
        format!("{}link:{code}", self.prefix)
    }

    async fn run<T, F>(
        &self,
        f: impl FnOnce(redis::aio::ConnectionManager) -> F,
    ) -> Result<T, CacheError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        self.redis.run(f).await.map_err(|e| CacheError(e.0))
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

    async fn invalidate_missing(&self, code: &str) -> Result<(), CacheError> {
        let key = self.key(code);
        let missing = encode(&Cached::Missing);
        // One atomic step: a positive entry written meanwhile stays.
        self.run(|mut c| async move {
            redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            )
            .key(key)
            .arg(missing)
            .invoke_async::<i64>(&mut c)
            .await
        })
        .await
        .map(|_| ())
    }

    async fn ping(&self) -> Result<(), CacheError> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(|_| ())
    }
}
