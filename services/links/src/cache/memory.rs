//! In-process cache with per-entry expiry and a bounded number of entries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{Cache, CacheError, Cached};

/// A bounded map with expiry. When full, expired entries are dropped first,
/// then the entries closest to expiry.
#[derive(Debug)]
pub struct MemoryCache {
    capacity: usize,
    map: Mutex<HashMap<String, (Cached, Instant)>>,
}

impl MemoryCache {
    /// A cache holding at most `capacity` codes.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Cached, Instant)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Cache for MemoryCache {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, code: &str) -> Result<Option<Cached>, CacheError> {
        let mut map = self.lock();
        match map.get(code) {
            Some((v, exp)) if *exp > Instant::now() => Ok(Some(v.clone())),
            Some(_) => {
                map.remove(code);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn put(&self, code: &str, value: &Cached, ttl: Duration) -> Result<(), CacheError> {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(code) {
            map.retain(|_, (_, exp)| *exp > now);
            if map.len() >= self.capacity {
                // Evict the tenth of entries that expire soonest.
                let mut exps: Vec<Instant> = map.values().map(|(_, e)| *e).collect();
                let k = (self.capacity / 10).max(1).min(exps.len() - 1);
                exps.select_nth_unstable(k);
                let cut = exps[k];
                map.retain(|_, (_, exp)| *exp > cut);
            }
        }
        map.insert(code.to_owned(), (value.clone(), now + ttl));
        Ok(())
    }

    async fn invalidate(&self, code: &str) -> Result<(), CacheError> {
        self.lock().remove(code);
        Ok(())
    }

    async fn invalidate_missing(&self, code: &str) -> Result<(), CacheError> {
        let mut map = self.lock();
        if matches!(map.get(code), Some((Cached::Missing, _))) {
            map.remove(code);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }
}
