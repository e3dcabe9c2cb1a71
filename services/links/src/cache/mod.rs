//! The resolution cache behind one trait, `Cache`, with an in-process
//! implementation (the embedded default) and a Redis one. It stores, per
//! short code, either the link's target or a negative entry ("no such
//! code"). Both pass the same contract suite (`tests/contract.rs`).

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;

pub use self::memory::MemoryCache;
pub use self::redis::{RedisCache, RedisCacheConfig};
use crate::model::Target;

/// What the cache knows about a code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cached {
    /// The code exists (active or not).
    Found(Target),
    /// The code was looked up and does not exist.
    Missing,
}

/// A cache operation that did not complete; callers fall back to the
/// database and never fail a request because of it.
#[derive(Debug, thiserror::Error)]
#[error("cache unavailable: {0}")]
pub struct CacheError(pub String);

/// The cache contract.
#[async_trait]
pub trait Cache: Send + Sync + 'static {
    /// "memory" or "redis".
    fn backend(&self) -> &'static str;
    async fn get(&self, code: &str) -> Result<Option<Cached>, CacheError>;
    async fn put(&self, code: &str, value: &Cached, ttl: Duration) -> Result<(), CacheError>;
    async fn invalidate(&self, code: &str) -> Result<(), CacheError>;
    /// Deletes the entry only if it is negative ("no such code"). The
    /// second invalidation after a create uses it: a resolution that read
    /// "not found" before the commit may have cached that, but a positive
    /// entry written since is right and must stay (it is what keeps the
    /// link redirecting while the database is down).
    async fn invalidate_missing(&self, code: &str) -> Result<(), CacheError> {
        self.invalidate(code).await
    }
    /// A cheap round trip, for health checks.
    async fn ping(&self) -> Result<(), CacheError>;
}

/// Serialised form shared by caches that store bytes.
pub(crate) fn encode(v: &Cached) -> String {
    match v {
        Cached::Missing => "-".to_owned(),
        Cached::Found(t) => serde_json::to_string(t).unwrap_or_else(|_| "-".into()),
    }
}

pub(crate) fn decode(s: &str) -> Option<Cached> {
    if s == "-" {
        Some(Cached::Missing)
    } else {
        serde_json::from_str(s).ok().map(Cached::Found)
    }
}

/// A cache that holds nothing: every lookup misses. Used when the cache is
/// turned off (`CACHE_DISABLED`), e.g. to measure the database path.
#[derive(Debug, Default)]
pub struct NoCache;

#[async_trait]
impl Cache for NoCache {
    fn backend(&self) -> &'static str {
        "disabled"
    }

    async fn get(&self, _code: &str) -> Result<Option<Cached>, CacheError> {
        Ok(None)
    }

    async fn put(&self, _code: &str, _value: &Cached, _ttl: Duration) -> Result<(), CacheError> {
        Ok(())
    }

    async fn invalidate(&self, _code: &str) -> Result<(), CacheError> {
        Ok(())
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }
}
