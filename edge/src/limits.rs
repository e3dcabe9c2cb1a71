//! Per-client rate limiting and ban escalation at the edge.
//!
//! Clients are identified by `identity` and keyed by `shortlink_abuse::
//! client` (IPv6 by /64 by default, so rotating addresses inside one
//! subscriber's network does not buy a fresh budget). Every request spends
//! one unit of its client's budget in the shared store: one Redis round
//! trip (a GCRA step in a Lua script), so the edge pair shares one budget
//! per client instead of doubling it. While Redis does not answer, the
//! edge falls back to a local budget, probing Redis again at most once a
//! second (`RATE_LIMIT_SHARED=false` makes budgets local for good).
//!
//! Strikes (requests refused by the limiter), hour-ban counts and bans are
//! shared through the `AbuseStore` too, so both edges count the same
//! strikes and enforce the same bans. The ban check reads a local copy of
//! the bans, kept current by pub/sub and a periodic sync that merges the
//! store's snapshot with changes seen after the snapshot began (so an
//! unban or ban announced meanwhile is never undone). With Redis down the
//! edge keeps serving and enforces what it knows locally. Every map keyed
//! by client is bounded.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use ipnet::IpNet;
use shortlink_abuse::bounded::BoundedMap;
use shortlink_abuse::gcra::LocalBuckets;
use shortlink_abuse::{AbuseStore, Ban, BanType, Change, Limits, Prefixes, Take, UNPARSEABLE};
use shortlink_runtime::shutdown::Shutdown;

use crate::identity::{self, Client};
use crate::metrics::EdgeMetrics;

/// What the guard decided for one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Serve it; `remaining` whole requests are left of `limit`.
    Allow { limit: u32, remaining: u32 },
    /// 429: over the limit. `warning` on the first strikes.
    Limited {
        limit: u32,
        retry_after_s: u64,
        strikes: u32,
        warning: bool,
    },
    /// 403: banned.
    Banned(Ban),
}

/// How the guard works, from the edge's flags.
#[derive(Clone, Debug)]
pub struct GuardConfig {
    pub edge_id: String,
    /// Limits in force until others are stored.
    pub defaults: Limits,
    /// Prefix lengths clients are keyed by.
    pub prefixes: Prefixes,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Spend budgets in the shared store (Redis) rather than per edge.
    pub shared_budgets: bool,
    /// Most clients tracked at once by each local map.
    pub max_clients: usize,
}

/// Strike count, start of its window, window length.
type LocalStrike = (u32, Instant, Duration);

/// See the module docs.
pub struct Guard {
    store: Arc<AbuseStore>,
    cfg: GuardConfig,
    limits: RwLock<Limits>,
    /// Budgets while the shared store is away (or when budgets are local).
    local: LocalBuckets,
    started: Instant,
    /// Milliseconds after `started` before which the shared limiter is not
    /// tried again (set for a second after a failure).
    shared_paused_until_ms: AtomicU64,
    /// The local copy of the bans, by client key.
    bans: RwLock<HashMap<String, Ban>>,
    /// Sequence number of the last change applied to the local copy.
    seq: AtomicU64,
    /// Client key → sequence number of the last change applied to it,
    /// kept until a sync whose snapshot began after it.
    touched: Mutex<BoundedMap<String, u64>>,
    local_strikes: Mutex<BoundedMap<String, LocalStrike>>,
    /// Bans issued here while the shared store was unreachable, still to
    /// be written there.
    unsynced: Mutex<HashSet<String>>,
    metrics: EdgeMetrics,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("edge_id", &self.cfg.edge_id)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn strike_stale(v: &LocalStrike) -> bool {
    v.1.elapsed() >= v.2
}

impl Guard {
    pub fn new(store: Arc<AbuseStore>, cfg: GuardConfig, metrics: EdgeMetrics) -> Arc<Self> {
        Arc::new(Self {
            store,
            limits: RwLock::new(cfg.defaults.clone()),
            local: LocalBuckets::new(cfg.max_clients),
            started: Instant::now(),
            shared_paused_until_ms: AtomicU64::new(0),
            bans: RwLock::new(HashMap::new()),
            seq: AtomicU64::new(0),
            touched: Mutex::new(BoundedMap::new(cfg.max_clients)),
            local_strikes: Mutex::new(BoundedMap::new(cfg.max_clients)),
            unsynced: Mutex::new(HashSet::new()),
            metrics,
            cfg,
        })
    }

    /// The shared store.
    pub fn store(&self) -> &Arc<AbuseStore> {
        &self.store
    }

    /// The limits in force here.
    pub fn limits(&self) -> Limits {
        self.limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Bans known locally.
    pub fn known_bans(&self) -> usize {
        self.bans.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The client of a request from `peer` with these `X-Forwarded-For`
    /// lines (see `identity`); unparseable ones are counted.
    pub fn identify<'a>(
        &self,
        peer: IpAddr,
        xff: impl DoubleEndedIterator<Item = &'a [u8]>,
    ) -> Client {
        let c = identity::identify(peer, xff, &self.cfg.trusted_proxies);
        if c == Client::Unparseable {
            self.metrics.unparseable_identity.inc();
        }
        c
    }

    /// The key limits, strikes and bans of `ip` are counted under.
    pub fn key(&self, ip: IpAddr) -> String {
        self.cfg.prefixes.key(ip)
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Records a change of `key`'s ban in the local copy, unless a later
    /// change of it was applied already. Lock order: touched, then bans.
    fn set_local_ban(&self, key: String, ban: Option<Ban>, seq: u64) {
        let mut touched = lock(&self.touched);
        if touched.get(&key).is_some_and(|s| *s > seq) {
            return;
        }
        let mut bans = self.bans.write().unwrap_or_else(|p| p.into_inner());
        match ban {
            Some(b) => bans.insert(key.clone(), b),
            None => bans.remove(&key),
        };
        *touched.insert(key, seq, |_| false, |s| *s) = seq;
    }

    /// Reloads limits and every ban from the store (keeps the local copy
    /// when the store does not answer). First puts back what the store may
    /// have lost: persisted bans (after a Redis restart) and bans this edge
    /// issued while the store was unreachable. Also announces the limits
    /// in force here (admin reports them before any are stored) and prunes
    /// the local maps.
    pub async fn sync(&self) {
        if let Err(e) = self.store.restore_if_lost().await {
            tracing::debug!(error = %e, "ban restore skipped");
        }
        let pending: Vec<String> = lock(&self.unsynced).iter().cloned().collect();
        for key in pending {
            let ban = self
                .bans
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned();
            match ban {
                Some(b) if b.active(Utc::now()) => {
                    if self.store.put_ban(&b).await.is_ok() {
                        lock(&self.unsynced).remove(&key);
                    }
                }
                _ => {
                    lock(&self.unsynced).remove(&key);
                }
            }
        }
        if let Ok(l) = self.store.limits().await {
            *self.limits.write().unwrap_or_else(|p| p.into_inner()) = l;
        }
        let _ = self.store.announce(&self.cfg.edge_id, &self.limits()).await;
        let began = self.snapshot_begins();
        if let Ok(bans) = self.store.bans().await {
            self.merge_snapshot(began, bans);
        }
        self.local.prune();
        lock(&self.local_strikes).retain(|_, v| !strike_stale(v));
        self.store.prune();
    }

    /// Marks the start of a ban snapshot: changes applied after this are
    /// fresher than the snapshot.
    fn snapshot_begins(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Replaces the local copy of the bans with `snapshot`, except for
    /// keys changed after the snapshot began (their local state is newer:
    /// a ban lifted or issued meanwhile) and bans still to be written to
    /// the store.
    fn merge_snapshot(&self, began: u64, snapshot: Vec<Ban>) {
        let mut map: HashMap<String, Ban> = snapshot
            .into_iter()
            .map(|b| (self.cfg.prefixes.normalize(&b.ip), b))
            .collect();
        let unsynced = lock(&self.unsynced).clone();
        let mut touched = lock(&self.touched);
        let mut local = self.bans.write().unwrap_or_else(|p| p.into_inner());
        for (key, seq) in touched.iter() {
            if *seq > began {
                match local.get(key) {
                    Some(b) => map.insert(key.clone(), b.clone()),
                    None => map.remove(key),
                };
            }
        }
        for key in unsynced {
            if let Some(b) = local.get(&key) {
                map.entry(key).or_insert_with(|| b.clone());
            }
        }
        *local = map;
        touched.retain(|_, seq| *seq > began);
    }

    async fn apply(&self, change: Change, seq: u64) {
        match change {
            Change::Limits => {
                if let Ok(l) = self.store.limits().await {
                    tracing::info!(?l, "rate limits changed");
                    *self.limits.write().unwrap_or_else(|p| p.into_inner()) = l;
                }
            }
            Change::Ban(key) => {
                if let Ok(b) = self.store.ban(&key).await {
                    self.set_local_ban(self.cfg.prefixes.normalize(&key), b, seq);
                }
            }
        }
    }

    /// Starts the pub/sub listener and the periodic sync (every `every`),
    /// on the current runtime.
    pub fn start(self: &Arc<Self>, every: Duration, shutdown: Shutdown) {
        let me = self.clone();
        self.store.subscribe(shutdown.clone(), move |c| {
            // Numbered in arrival order, before the re-read.
            let seq = me.next_seq();
            let me = me.clone();
            tokio::spawn(async move { me.apply(c, seq).await });
        });
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.store.restore_from_pg().await {
                tracing::warn!(error = %e, "could not restore persisted bans");
            }
            loop {
                me.sync().await;
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = shutdown.wait() => return,
                }
            }
        });
    }

    /// Spends one request of `key`'s budget: in the shared store when it
    /// answers, else locally.
    async fn take(&self, key: &str, l: &Limits) -> Take {
        if self.cfg.shared_budgets && self.store.shared() {
            let now_ms = self.started.elapsed().as_millis() as u64;
            if now_ms >= self.shared_paused_until_ms.load(Ordering::Relaxed) {
                match self.store.take(key, l).await {
                    Ok(t) => return t,
                    Err(e) => {
                        tracing::debug!(error = %e, "shared rate limiter unavailable; limiting locally");
                        self.shared_paused_until_ms
                            .store(now_ms + 1000, Ordering::Relaxed);
                    }
                }
            }
            self.metrics.local_limit_fallback.inc();
        }
        self.local.take(key, l)
    }

    /// Decides one request of `client`.
    pub async fn check(&self, client: &Client) -> Verdict {
        let l = self.limits();
        let limit = l.burst_u32();
        if !l.enforce {
            return Verdict::Allow {
                limit,
                remaining: limit,
            };
        }
        let ip = match client {
            Client::Ip(ip) => *ip,
            Client::Unparseable => {
                // Limited as one client of its own; no strikes, no ban:
                // it names no address an operator could lift a ban from.
                let t = self.take(UNPARSEABLE, &l).await;
                if t.allowed {
                    return Verdict::Allow {
                        limit,
                        remaining: t.remaining,
                    };
                }
                self.metrics.rate_limited.inc();
                return Verdict::Limited {
                    limit,
                    retry_after_s: t.retry_after_s,
                    strikes: 0,
                    warning: false,
                };
            }
        };
        let key = self.key(ip);
        let now = Utc::now();
        let banned = self
            .bans
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(b) = banned {
            if b.active(now) {
                self.metrics.banned.inc();
                return Verdict::Banned(b);
            }
            self.bans
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
        let t = self.take(&key, &l).await;
        if t.allowed {
            return Verdict::Allow {
                limit,
                remaining: t.remaining,
            };
        }
        self.metrics.rate_limited.inc();
        let window = Duration::from_secs(l.strike_window_s);
        let strikes = match self.store.strike(&key, window, l.ban_strikes).await {
            Ok(n) => n,
            Err(_) => self.local_strike(&key, window, l.ban_strikes),
        };
        // `>=`: a count past the threshold (limits lowered meanwhile) still
        // bans. The counter resets atomically as it crosses, so one request
        // across the edge pair issues the ban.
        if strikes >= l.ban_strikes {
            let ban = self.escalate(&key, strikes, &l).await;
            return Verdict::Banned(ban);
        }
        Verdict::Limited {
            limit,
            retry_after_s: t.retry_after_s,
            strikes,
            warning: strikes <= l.warn_strikes,
        }
    }

    /// Fallback strike counting while the store is unreachable (same rule
    /// as `AbuseStore::strike`).
    fn local_strike(&self, key: &str, window: Duration, ban_at: u32) -> u32 {
        let mut m = lock(&self.local_strikes);
        let e = m.get_or_insert_with(key, || (0, Instant::now(), window), strike_stale, |v| v.1);
        if strike_stale(e) {
            *e = (0, Instant::now(), window);
        }
        e.0 = e.0.saturating_add(1);
        let n = e.0;
        if n >= ban_at {
            m.remove(key);
        }
        n
    }

    async fn escalate(&self, key: &str, strikes: u32, l: &Limits) -> Ban {
        let hour_bans = self.store.add_hour_ban(key).await.unwrap_or(1);
        let now = Utc::now();
        let permanent = hour_bans > l.permanent_after;
        let ban = Ban {
            ip: key.to_owned(),
            ban_type: if permanent {
                BanType::Permanent
            } else {
                BanType::Temporary
            },
            reason: if permanent {
                format!(
                    "rate limit abuse after {} temporary bans",
                    hour_bans.saturating_sub(1)
                )
            } else {
                format!(
                    "{strikes} rate-limit strikes within {} s",
                    l.strike_window_s
                )
            },
            strikes,
            hour_bans,
            issued_by: self.cfg.edge_id.clone(),
            created_at: now,
            // Validated limits keep this far inside chrono's range.
            expires_at: (!permanent)
                .then(|| now + chrono::Duration::seconds(l.ban_duration_s as i64)),
        };
        tracing::warn!(
            client = key,
            ban_type = ban.ban_type.as_str(),
            strikes,
            hour_bans,
            "client banned"
        );
        self.metrics
            .bans_issued
            .with_label_values(&[ban.ban_type.as_str()])
            .inc();
        let seq = self.next_seq();
        self.set_local_ban(key.to_owned(), Some(ban.clone()), seq);
        if let Err(e) = self.store.put_ban(&ban).await {
            tracing::warn!(error = %e, client = key, "ban kept locally until the shared store answers");
            lock(&self.unsynced).insert(key.to_owned());
        }
        ban
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shortlink_abuse::StoreOptions;

    fn limits() -> Limits {
        Limits {
            rps: 0.001,
            burst: 2.0,
            strike_window_s: 600,
            warn_strikes: 1,
            ban_strikes: 3,
            ban_duration_s: 3600,
            permanent_after: 1,
            enforce: true,
        }
    }

    fn metrics() -> EdgeMetrics {
        EdgeMetrics::new(shortlink_runtime::metrics::Metrics::new("edge", "t"))
    }

    fn config(l: Limits) -> GuardConfig {
        GuardConfig {
            edge_id: "edge-t".into(),
            defaults: l,
            prefixes: Prefixes::default(),
            trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
            shared_budgets: true,
            max_clients: 1000,
        }
    }

    async fn memory_guard(l: Limits) -> (Arc<AbuseStore>, Arc<Guard>) {
        let store = AbuseStore::new(StoreOptions {
            redis_url: None,
            database_url: None,
            prefix: "t:",
            defaults: l.clone(),
            max_clients: 1000,
        })
        .await
        .unwrap();
        let g = Guard::new(store.clone(), config(l), metrics());
        (store, g)
    }

    fn ip(s: &str) -> Client {
        Client::Ip(s.parse().unwrap())
    }

    #[tokio::test]
    async fn escalates_from_warning_to_temporary_to_permanent_ban_in_memory() {
        let (store, g) = memory_guard(limits()).await;
        let c = ip("192.0.2.1");
        assert!(matches!(
            g.check(&c).await,
            Verdict::Allow { remaining: 1, .. }
        ));
        assert!(matches!(
            g.check(&c).await,
            Verdict::Allow { remaining: 0, .. }
        ));
        assert!(matches!(
            g.check(&c).await,
            Verdict::Limited {
                strikes: 1,
                warning: true,
                ..
            }
        ));
        assert!(matches!(
            g.check(&c).await,
            Verdict::Limited {
                strikes: 2,
                warning: false,
                ..
            }
        ));
        let Verdict::Banned(b) = g.check(&c).await else {
            panic!("third strike bans")
        };
        assert_eq!(b.ban_type, BanType::Temporary);
        assert!(b.remaining_s(Utc::now()).unwrap() > 3500);
        assert!(matches!(g.check(&c).await, Verdict::Banned(_)));
        // Lifted (as admin would), the next abuse ends in a permanent ban.
        store.lift_ban("192.0.2.1").await.unwrap();
        g.sync().await;
        for _ in 0..2 {
            assert!(matches!(g.check(&c).await, Verdict::Limited { .. }));
        }
        let Verdict::Banned(b) = g.check(&c).await else {
            panic!("banned again")
        };
        assert_eq!(b.ban_type, BanType::Permanent);
        assert_eq!(b.expires_at, None);
        // Others are unaffected; enforcement can be switched off.
        assert!(matches!(
            g.check(&ip("192.0.2.2")).await,
            Verdict::Allow { .. }
        ));
        store.set_enforce(false).await.unwrap();
        g.sync().await;
        assert!(matches!(g.check(&c).await, Verdict::Allow { .. }));
    }

    /// Before: escalation needed `strikes == ban_strikes`, so a client
    /// whose count was already past the threshold (here: limits lowered
    /// while it held 5 strikes) was never banned within the window.
    #[tokio::test]
    async fn a_strike_count_past_the_threshold_still_bans() {
        let (store, g) = memory_guard(Limits {
            ban_strikes: 100,
            ..limits()
        })
        .await;
        let c = ip("192.0.2.7");
        for _ in 0..7 {
            assert!(!matches!(g.check(&c).await, Verdict::Banned(_)));
        }
        assert_eq!(store.strikes("192.0.2.7").await.unwrap(), 5);
        store
            .put_limits(&Limits {
                ban_strikes: 3,
                ..limits()
            })
            .await
            .unwrap();
        g.sync().await;
        assert!(
            matches!(g.check(&c).await, Verdict::Banned(_)),
            "the 6th strike is past 3: banned"
        );
    }

    /// Before: every address was its own client, so rotating through one
    /// IPv6 /64 (2^64 addresses) evaded every limit and ban.
    #[tokio::test]
    async fn addresses_rotating_inside_one_ipv6_64_are_one_client() {
        let (store, g) = memory_guard(limits()).await;
        let mut verdicts = Vec::new();
        for i in 1..=5u32 {
            let c = ip(&format!("2001:db8:1:2::{i:x}"));
            verdicts.push(g.check(&c).await);
        }
        assert!(matches!(verdicts[0], Verdict::Allow { .. }));
        assert!(matches!(verdicts[1], Verdict::Allow { .. }));
        assert!(matches!(verdicts[2], Verdict::Limited { strikes: 1, .. }));
        assert!(matches!(verdicts[3], Verdict::Limited { strikes: 2, .. }));
        let Verdict::Banned(b) = &verdicts[4] else {
            panic!("third strike in the /64 bans it: {verdicts:?}")
        };
        assert_eq!(b.ip, "2001:db8:1:2::/64", "the ban names the prefix");
        assert!(store.ban("2001:db8:1:2::/64").await.unwrap().is_some());
        // Any other address of that /64 is banned; the next /64 is not.
        assert!(matches!(
            g.check(&ip("2001:db8:1:2:dead:beef:0:1")).await,
            Verdict::Banned(_)
        ));
        assert!(matches!(
            g.check(&ip("2001:db8:1:3::1")).await,
            Verdict::Allow { .. }
        ));
    }

    #[tokio::test]
    async fn ipv4_mapped_and_plain_ipv4_are_one_client() {
        let (_, g) = memory_guard(limits()).await;
        assert!(matches!(
            g.check(&ip("::ffff:192.0.2.50")).await,
            Verdict::Allow { remaining: 1, .. }
        ));
        assert!(matches!(
            g.check(&ip("192.0.2.50")).await,
            Verdict::Allow { remaining: 0, .. }
        ));
        assert!(matches!(
            g.check(&ip("::ffff:192.0.2.50")).await,
            Verdict::Limited { .. }
        ));
        // A ban stored under the mapped spelling (an older version) is
        // enforced for the IPv4 address.
        let store = g.store().clone();
        let mut b = store.bans().await.unwrap();
        assert!(b.is_empty());
        b.push(Ban {
            ip: "::ffff:192.0.2.60".into(),
            ban_type: BanType::Permanent,
            reason: "old".into(),
            strikes: 0,
            hour_bans: 0,
            issued_by: "admin".into(),
            created_at: Utc::now(),
            expires_at: None,
        });
        store.put_ban(&b[0]).await.unwrap();
        g.sync().await;
        assert!(matches!(
            g.check(&ip("192.0.2.60")).await,
            Verdict::Banned(_)
        ));
    }

    /// Before: one byte >= 0x80 in X-Forwarded-For made the trusted proxy
    /// the client; its strikes got it banned, and everyone behind it.
    #[tokio::test]
    async fn unparseable_forwarded_for_is_limited_alone_and_never_bans_the_proxy() {
        let (store, g) = memory_guard(limits()).await;
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..20 {
            let c = g.identify(proxy, [b"198.51.100.1\xe9".as_slice()].into_iter());
            assert_eq!(c, Client::Unparseable);
            assert!(!matches!(g.check(&c).await, Verdict::Banned(_)));
        }
        assert!(matches!(
            g.check(&Client::Unparseable).await,
            Verdict::Limited { strikes: 0, .. }
        ));
        assert!(store.bans().await.unwrap().is_empty());
        assert_eq!(g.metrics.unparseable_identity.get(), 20);
        // The proxy itself and the clients behind it are served.
        let c = g.identify(proxy, std::iter::empty());
        assert!(matches!(g.check(&c).await, Verdict::Allow { .. }));
        let c = g.identify(proxy, [b"198.51.100.2".as_slice()].into_iter());
        assert_eq!(c, ip("198.51.100.2"));
        assert!(matches!(g.check(&c).await, Verdict::Allow { .. }));
    }

    /// Before: the periodic sync replaced the local bans with its snapshot,
    /// so an unban (or ban) announced while the snapshot was in flight was
    /// undone until the next announcement.
    #[tokio::test]
    async fn a_sync_snapshot_never_undoes_a_change_announced_after_it_began() {
        let (store, g) = memory_guard(limits()).await;
        let ban = |key: &str| Ban {
            ip: key.into(),
            ban_type: BanType::Permanent,
            reason: "r".into(),
            strikes: 0,
            hour_bans: 0,
            issued_by: "admin".into(),
            created_at: Utc::now(),
            expires_at: None,
        };
        store.put_ban(&ban("198.51.100.1")).await.unwrap();
        g.sync().await;
        assert!(matches!(
            g.check(&ip("198.51.100.1")).await,
            Verdict::Banned(_)
        ));
        // A sync begins and reads its snapshot (198.51.100.1 banned)...
        let began = g.snapshot_begins();
        let snapshot = store.bans().await.unwrap();
        // ...meanwhile admin lifts that ban and bans another client, and
        // the edge applies both announcements...
        store.lift_ban("198.51.100.1").await.unwrap();
        g.apply(Change::Ban("198.51.100.1".into()), g.next_seq())
            .await;
        store.put_ban(&ban("198.51.100.2")).await.unwrap();
        g.apply(Change::Ban("198.51.100.2".into()), g.next_seq())
            .await;
        // ...then the older snapshot lands.
        g.merge_snapshot(began, snapshot);
        assert!(
            matches!(g.check(&ip("198.51.100.1")).await, Verdict::Allow { .. }),
            "the unban stands"
        );
        assert!(
            matches!(g.check(&ip("198.51.100.2")).await, Verdict::Banned(_)),
            "the new ban stands"
        );
        // The next full sync agrees, and forgets what it covered.
        g.sync().await;
        assert!(lock(&g.touched).is_empty());
        assert_eq!(g.known_bans(), 1);
        // An announcement handled out of order never overwrites a later one.
        g.set_local_ban("198.51.100.2".into(), None, 100);
        g.set_local_ban("198.51.100.2".into(), Some(ban("198.51.100.2")), 99);
        assert!(matches!(
            g.check(&ip("198.51.100.2")).await,
            Verdict::Allow { .. }
        ));
    }

    #[tokio::test]
    async fn local_maps_are_bounded() {
        let store = AbuseStore::new(StoreOptions {
            redis_url: None,
            database_url: None,
            prefix: "t:",
            defaults: limits(),
            max_clients: 50,
        })
        .await
        .unwrap();
        let g = Guard::new(
            store,
            GuardConfig {
                max_clients: 50,
                ..config(limits())
            },
            metrics(),
        );
        for i in 0..2000u32 {
            let c = Client::Ip(IpAddr::from(std::net::Ipv4Addr::from(0xC000_0000u32 + i)));
            g.check(&c).await;
            g.local_strike(&format!("k{i}"), Duration::from_secs(600), 100);
        }
        assert!(g.local.len() <= 50);
        assert!(lock(&g.local_strikes).len() <= 50);
    }
}
