//! The abuse state in process memory: the embedded default, one edge with
//! no Redis. Every map is bounded (`bounded.rs`) and drops expired entries
//! first, so a flood of distinct clients costs bounded memory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use shortlink_runtime::shutdown::Shutdown;

use crate::backend::{AbuseBackend, Announced, OnChange, Res, Stored};
use crate::bounded::BoundedMap;
use crate::gcra::LocalBuckets;
use crate::model::{Ban, Change, Limits, Take};

/// Hour-ban counts are forgotten this long after the last ban.
pub(crate) const HOUR_BANS_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug)]
struct State {
    bans: BoundedMap<String, Ban>,
    /// Count, start of the window, window length.
    strikes: BoundedMap<String, (u32, Instant, Duration)>,
    /// Count, time of the last ban.
    hour_bans: BoundedMap<String, (u32, Instant)>,
    stored: Stored,
    announced: BoundedMap<String, Announced>,
}

/// See the module docs.
#[derive(Debug)]
pub struct MemoryBackend {
    state: Mutex<State>,
    buckets: LocalBuckets,
}

impl MemoryBackend {
    /// Empty state tracking at most `max_clients` clients per map.
    pub fn new(max_clients: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                bans: BoundedMap::new(max_clients),
                strikes: BoundedMap::new(max_clients),
                hour_bans: BoundedMap::new(max_clients),
                stored: Stored::default(),
                announced: BoundedMap::new(1024),
            }),
            buckets: LocalBuckets::new(max_clients),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn prune_all(&self) {
        let now = Utc::now();
        let mut s = self.state();
        s.bans.retain(|_, b| b.active(now));
        s.strikes.retain(|_, (_, start, w)| start.elapsed() < *w);
        s.hour_bans
            .retain(|_, (_, last)| last.elapsed() < HOUR_BANS_TTL);
        drop(s);
        self.buckets.prune();
    }
}

fn strike_stale(v: &(u32, Instant, Duration)) -> bool {
    v.1.elapsed() >= v.2
}

#[async_trait]
impl AbuseBackend for MemoryBackend {
    fn shared(&self) -> bool {
        false
    }

    fn is_up(&self) -> bool {
        true
    }

    async fn bans(&self) -> Res<Vec<Ban>> {
        Ok(self.state().bans.values().cloned().collect())
    }

    async fn ban(&self, key: &str) -> Res<Option<Ban>> {
        Ok(self.state().bans.get(key).cloned())
    }

    async fn write_ban(&self, ban: &Ban) -> Res<()> {
        let now = Utc::now();
        let mut s = self.state();
        // Expired bans go first, then those ending soonest; permanent ones
        // last.
        let slot = s.bans.insert(
            ban.ip.clone(),
            ban.clone(),
            |b| !b.active(now),
            |b| b.expires_at.map_or(i64::MAX, |e| e.timestamp()),
        );
        *slot = ban.clone();
        Ok(())
    }

    async fn remove_ban(&self, key: &str) -> Res<()> {
        self.state().bans.remove(key);
        Ok(())
    }

    async fn strike(&self, key: &str, window: Duration, ban_at: u32) -> Res<u32> {
        let mut s = self.state();
        let e = s.strikes.get_or_insert_with(
            key,
            || (0, Instant::now(), window),
            strike_stale,
            |v| v.1,
        );
        if strike_stale(e) {
            *e = (0, Instant::now(), window);
        }
        e.0 = e.0.saturating_add(1);
        let n = e.0;
        if n >= ban_at {
            s.strikes.remove(key);
        }
        Ok(n)
    }

    async fn strikes(&self, key: &str) -> Res<u32> {
        Ok(self
            .state()
            .strikes
            .get(key)
            .filter(|v| !strike_stale(v))
            .map_or(0, |v| v.0))
    }

    async fn clear_strikes(&self, key: &str) -> Res<()> {
        self.state().strikes.remove(key);
        Ok(())
    }

    async fn add_hour_ban(&self, key: &str) -> Res<u32> {
        let mut s = self.state();
        let e = s.hour_bans.get_or_insert_with(
            key,
            || (0, Instant::now()),
            |v| v.1.elapsed() >= HOUR_BANS_TTL,
            |v| v.1,
        );
        if e.1.elapsed() >= HOUR_BANS_TTL {
            e.0 = 0;
        }
        *e = (e.0.saturating_add(1), Instant::now());
        Ok(e.0)
    }

    async fn take(&self, key: &str, limits: &Limits) -> Res<Take> {
        Ok(self.buckets.take(key, limits))
    }

    async fn stored(&self) -> Res<Stored> {
        Ok(self.state().stored.clone())
    }

    async fn write_limits(&self, limits: &Limits) -> Res<()> {
        let mut s = self.state();
        s.stored.limits = Some(limits.clone());
        s.stored.enforce = Some(limits.enforce);
        Ok(())
    }

    async fn write_enforce(&self, enforce: bool) -> Res<()> {
        self.state().stored.enforce = Some(enforce);
        Ok(())
    }

    async fn announce(&self, a: &Announced) -> Res<()> {
        let mut s = self.state();
        let slot = s
            .announced
            .insert(a.edge.clone(), a.clone(), |_| false, |v| v.at);
        *slot = a.clone();
        Ok(())
    }

    async fn announced(&self) -> Res<Vec<Announced>> {
        Ok(self.state().announced.values().cloned().collect())
    }

    async fn intact(&self) -> Res<bool> {
        // Memory is lost only with the process, which restores at start.
        Ok(true)
    }

    async fn mark_intact(&self) -> Res<()> {
        Ok(())
    }

    async fn publish(&self, _change: &Change) -> Res<()> {
        // No other process to tell; the store delivers in-process.
        Ok(())
    }

    fn listen(&self, _shutdown: Shutdown, _on_change: OnChange) {}

    fn prune(&self) {
        self.prune_all();
    }
}
