//! The edge's own cache of short-code resolutions: the redirect hot path
//! answers from here without a gRPC round trip to a links replica.
//!
//! Correctness over hit rate. An entry is served for at most `ttl` (500 ms
//! by default) after the lookup that produced it *started*, so a link
//! updated, deactivated or deleted through any edge stops redirecting
//! everywhere within about a second: the links service invalidates its own
//! cache at once and again 500 ms later, and an edge entry read from it
//! just before that second invalidation is served no longer than `ttl`.
//! The edge that served the change drops its entry at once, and a lookup
//! that was already in flight when it did cannot put the old answer back
//! (each shard remembers its last invalidation). Unknown and deactivated
//! codes are cached too (a scanner hammering random codes costs the
//! replicas one call per code per `ttl`), failures never are.
//!
//! Refresh ahead: once an entry is past half its `ttl`, the first request
//! that reads it is told to refresh it (it resolves upstream and puts the
//! new answer) while every other request keeps getting the cached one. A
//! popular code therefore never expires under load, and the replicas see
//! one call per code per half-`ttl` instead of a burst of every request in
//! flight at the moment of expiry (measured: the burst cost 20-30% of the
//! redirect throughput at the default `ttl`, docs/BENCHMARKS.md).
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
    /// When the lookup that produced `value` started.
    at: Instant,
    /// A request has been told to refresh this entry.
    refreshing: bool,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Box<str>, Entry>,
    /// The last `invalidate` of a code in this shard: lookups started
    /// before it may not put their (possibly old) answer.
    invalidated: Option<Instant>,
}

/// What the cache says about a code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Serve this.
    Fresh(Resolution),
    /// Serve this or, better, resolve upstream and `put` the answer: the
    /// caller is the one request asked to refresh the entry. Should the
    /// refresh fail, this value is still valid.
    Refresh(Resolution),
    /// Not cached (or expired): resolve upstream.
    Miss,
}

const SHARDS: usize = 16;

/// See the module docs.
pub struct ResolveCache {
    shards: Vec<Mutex<Shard>>,
    ttl: Duration,
    /// Age from which the next reader refreshes an entry.
    refresh_after: Duration,
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
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            ttl,
            refresh_after: ttl / 2,
            per_shard: capacity.div_ceil(SHARDS),
        })
    }

    fn shard(&self, code: &str) -> std::sync::MutexGuard<'_, Shard> {
        // FNV-1a: cheap, and codes are short.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in code.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.shards[(h as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// What to do about `code`; see `Lookup`.
    pub fn lookup(&self, code: &str) -> Lookup {
        let mut shard = self.shard(code);
        let Some(e) = shard.map.get_mut(code) else {
            return Lookup::Miss;
        };
        let age = e.at.elapsed();
        if age >= self.ttl {
            Lookup::Miss
        } else if age >= self.refresh_after && !e.refreshing {
            e.refreshing = true;
            Lookup::Refresh(e.value.clone())
        } else {
            Lookup::Fresh(e.value.clone())
        }
    }

    /// The fresh resolution of `code`, if cached (never asks to refresh).
    pub fn get(&self, code: &str) -> Option<Resolution> {
        let shard = self.shard(code);
        shard
            .map
            .get(code)
            .filter(|e| e.at.elapsed() < self.ttl)
            .map(|e| e.value.clone())
    }

    /// Caches `value`, the answer of a lookup of `code` that started at
    /// `started`. Skipped while the shard is full, and when this edge
    /// invalidated a code of the shard after the lookup started (the
    /// answer may predate the change).
    pub fn put(&self, code: &str, value: Resolution, started: Instant) {
        let mut shard = self.shard(code);
        if shard.invalidated.is_some_and(|i| i >= started) {
            if let Some(e) = shard.map.get_mut(code) {
                e.refreshing = false;
            }
            return;
        }
        if shard.map.len() >= self.per_shard && !shard.map.contains_key(code) {
            return;
        }
        shard.map.insert(
            code.into(),
            Entry {
                value,
                at: started,
                refreshing: false,
            },
        );
    }

    /// A refresh asked for by `lookup` failed: let the next reader try.
    pub fn refresh_failed(&self, code: &str) {
        if let Some(e) = self.shard(code).map.get_mut(code) {
            e.refreshing = false;
        }
    }

    /// Forgets `code` (after a change served by this edge).
    pub fn invalidate(&self, code: &str) {
        let mut shard = self.shard(code);
        shard.map.remove(code);
        shard.invalidated = Some(Instant::now());
    }

    /// Drops expired entries.
    pub fn sweep(&self) {
        for s in &self.shards {
            s.lock()
                .unwrap_or_else(|p| p.into_inner())
                .map
                .retain(|_, e| e.at.elapsed() < self.ttl);
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len())
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
        c.put("abc", found("https://a"), Instant::now());
        assert_eq!(c.get("abc"), Some(found("https://a")));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get("abc"), None, "expired");
        assert_eq!(c.lookup("abc"), Lookup::Miss, "expired");
        c.sweep();
        assert!(c.is_empty());
        c.put(
            "abc",
            Resolution::Missing("link not found".into()),
            Instant::now(),
        );
        c.invalidate("abc");
        assert_eq!(c.get("abc"), None);
        assert!(ResolveCache::new(0, Duration::from_secs(1)).is_none());
        assert!(ResolveCache::new(10, Duration::ZERO).is_none());
    }

    #[test]
    fn an_entry_lives_ttl_from_the_start_of_its_lookup() {
        // A slow lookup must not stretch how long its answer is served.
        let c = ResolveCache::new(100, Duration::from_millis(50)).unwrap();
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(60));
        c.put("abc", found("https://a"), started);
        assert_eq!(c.lookup("abc"), Lookup::Miss);
    }

    #[test]
    fn one_reader_refreshes_a_half_expired_entry_and_the_others_keep_the_value() {
        // Wide margins: a loaded CI machine can deschedule this thread for
        // a good fraction of a second between a sleep and the lookup.
        let c = ResolveCache::new(100, Duration::from_millis(2000)).unwrap();
        c.put("abc", found("https://a"), Instant::now());
        assert_eq!(c.lookup("abc"), Lookup::Fresh(found("https://a")));
        std::thread::sleep(Duration::from_millis(1050));
        assert_eq!(c.lookup("abc"), Lookup::Refresh(found("https://a")));
        for _ in 0..10 {
            assert_eq!(c.lookup("abc"), Lookup::Fresh(found("https://a")));
        }
        // The refresh lands: a new, fresh entry.
        c.put("abc", found("https://b"), Instant::now());
        assert_eq!(c.lookup("abc"), Lookup::Fresh(found("https://b")));
        // A failed refresh hands the job to the next reader.
        std::thread::sleep(Duration::from_millis(1050));
        assert_eq!(c.lookup("abc"), Lookup::Refresh(found("https://b")));
        c.refresh_failed("abc");
        assert_eq!(c.lookup("abc"), Lookup::Refresh(found("https://b")));
    }

    #[test]
    fn a_lookup_in_flight_during_an_invalidation_does_not_put_the_old_answer_back() {
        let c = ResolveCache::new(100, Duration::from_secs(60)).unwrap();
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        c.invalidate("abc");
        c.put("abc", found("https://old"), started);
        assert_eq!(c.lookup("abc"), Lookup::Miss);
        // A lookup that started after the change is cached.
        c.put("abc", found("https://new"), Instant::now());
        assert_eq!(c.lookup("abc"), Lookup::Fresh(found("https://new")));
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = ResolveCache::new(32, Duration::from_secs(60)).unwrap();
        for i in 0..10_000 {
            c.put(&format!("code{i}"), found("https://a"), Instant::now());
        }
        assert!(c.len() <= 32, "{} entries", c.len());
        // A code already cached can still be refreshed when full.
        let kept = (0..10_000)
            .map(|i| format!("code{i}"))
            .find(|k| c.get(k).is_some())
            .unwrap();
        c.put(&kept, found("https://b"), Instant::now());
        assert_eq!(c.get(&kept), Some(found("https://b")));
    }
}
