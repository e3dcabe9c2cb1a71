//! The edge's own cache of short-code resolutions: the redirect hot path
//! answers from here without a gRPC round trip to a links replica.
//!
//! Correctness over hit rate. Entries live `ttl` (500 ms by default), so a
//! link updated, deactivated or deleted through any edge stops redirecting
//! everywhere within about a second: the links service invalidates its own
//! cache at once and again 500 ms later, and an edge entry read from it
//! just before that second invalidation expires 500 ms after. The edge that
//! served the change drops its entry at once. Unknown and deactivated codes
//! are cached too (a scanner hammering random codes costs the replicas one
//! call per code per `ttl`), failures never are.
//!
//! Bounded: at most `capacity` entries; expired entries are swept every
//! `ttl`, and while the cache is full new codes are simply not cached (they
//! are resolved upstream as without a cache). Sharded, so the proxy threads
//! rarely wait for each other.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A cached resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Redirect to `url`; the ids go into the click event.
    Found {
        url: std::sync::Arc<str>,
        link_id: i64,
        user_id: i64,
    },
    /// The links service answered NOT_FOUND (`404`) with this message.
    Missing(std::sync::Arc<str>),
    /// The link is deactivated (`410`) with this message.
    Gone(std::sync::Arc<str>),
}

struct Entry {
    value: Resolution,
    at: Instant,
}

const SHARDS: usize = 16;

/// See the module docs.
pub struct ResolveCache {
    shards: Vec<Mutex<HashMap<Box<str>, Entry>>>,
    ttl: Duration,
    per_shard: usize,
}

impl std::fmt::Debug for ResolveCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolveCache")
            .field("ttl", &self.ttl)
            .field("capacity", &(self.per_shard * SHARDS))
            .finish()
    }
}

impl ResolveCache {
    /// A cache of at most `capacity` codes kept `ttl` each; `None` when
    /// either is zero (caching off).
    pub fn new(capacity: usize, ttl: Duration) -> Option<Self> {
        if capacity == 0 || ttl.is_zero() {
            return None;
        }
        Some(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            ttl,
            per_shard: capacity.div_ceil(SHARDS),
        })
    }

    fn shard(&self, code: &str) -> &Mutex<HashMap<Box<str>, Entry>> {
        // FNV-1a: cheap, and codes are short.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in code.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        &self.shards[(h as usize) % SHARDS]
    }

    /// The fresh resolution of `code`, if cached.
    pub fn get(&self, code: &str) -> Option<Resolution> {
        let shard = self.shard(code).lock().unwrap_or_else(|p| p.into_inner());
        shard
            .get(code)
            .filter(|e| e.at.elapsed() < self.ttl)
            .map(|e| e.value.clone())
    }

    /// Caches `value` for `code` (skipped while the shard is full).
    pub fn put(&self, code: &str, value: Resolution) {
        let mut shard = self.shard(code).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(code) {
            return;
        }
        shard.insert(
            code.into(),
            Entry {
                value,
                at: Instant::now(),
            },
        );
    }

    /// Forgets `code` (after a change served by this edge).
    pub fn invalidate(&self, code: &str) {
        self.shard(code)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(code);
    }

    /// Drops expired entries.
    pub fn sweep(&self) {
        for s in &self.shards {
            s.lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, e| e.at.elapsed() < self.ttl);
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How long an entry lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(u: &str) -> Resolution {
        Resolution::Found {
            url: u.into(),
            link_id: 1,
            user_id: 2,
        }
    }

    #[test]
    fn entries_expire_after_the_ttl_and_changes_invalidate() {
        let c = ResolveCache::new(100, Duration::from_millis(50)).unwrap();
        c.put("abc", found("https://a"));
        assert_eq!(c.get("abc"), Some(found("https://a")));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get("abc"), None, "expired");
        c.sweep();
        assert!(c.is_empty());
        c.put("abc", Resolution::Missing("link not found".into()));
        c.invalidate("abc");
        assert_eq!(c.get("abc"), None);
        assert!(ResolveCache::new(0, Duration::from_secs(1)).is_none());
        assert!(ResolveCache::new(10, Duration::ZERO).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = ResolveCache::new(32, Duration::from_secs(60)).unwrap();
        for i in 0..10_000 {
            c.put(&format!("code{i}"), found("https://a"));
        }
        assert!(c.len() <= 32, "{} entries", c.len());
        // A code already cached can still be refreshed when full.
        let kept = (0..10_000)
            .map(|i| format!("code{i}"))
            .find(|k| c.get(k).is_some())
            .unwrap();
        c.put(&kept, found("https://b"));
        assert_eq!(c.get(&kept), Some(found("https://b")));
    }
}
