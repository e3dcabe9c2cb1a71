//! Per-IP rate limiting and ban escalation at the edge.
//!
//! The token buckets are local to each edge (a client hitting both edges of
//! the pair gets both budgets). Strikes (requests refused by the limiter),
//! hour-ban counts and bans are shared through the `AbuseStore`, so both
//! edges count the same strikes and enforce the same bans. The hot path
//! only reads a local copy of the bans, kept current by pub/sub and a
//! periodic full sync; Redis is consulted only when a client is over its
//! limit. With Redis down the edge keeps serving and enforces what it knows
//! locally (its own strikes and the bans it already had).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use ipnet::IpNet;
use shortlink_runtime::abuse::{AbuseStore, Ban, BanType, Change, Limits};
use shortlink_runtime::shutdown::Shutdown;

use crate::metrics::EdgeMetrics;

/// What the guard decided for one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Serve it; `remaining` whole tokens are left of `limit`.
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

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// See the module docs.
pub struct Guard {
    store: Arc<AbuseStore>,
    edge_id: String,
    limits: RwLock<Limits>,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    bans: RwLock<HashMap<String, Ban>>,
    local_strikes: Mutex<HashMap<String, (u32, Instant)>>,
    /// Bans issued here while the shared store was unreachable, still to
    /// be written there.
    unsynced: Mutex<std::collections::HashSet<String>>,
    metrics: EdgeMetrics,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("edge_id", &self.edge_id)
            .finish()
    }
}

impl Guard {
    pub fn new(
        store: Arc<AbuseStore>,
        edge_id: String,
        defaults: Limits,
        metrics: EdgeMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            edge_id,
            limits: RwLock::new(defaults),
            buckets: Mutex::new(HashMap::new()),
            bans: RwLock::new(HashMap::new()),
            local_strikes: Mutex::new(HashMap::new()),
            unsynced: Mutex::new(std::collections::HashSet::new()),
            metrics,
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

    /// Reloads limits and every ban from the store (keeps the local copy
    /// when the store does not answer). First puts back what the store may
    /// have lost: persisted bans (after a Redis restart) and bans this edge
    /// issued while the store was unreachable.
    pub async fn sync(&self) {
        if let Err(e) = self.store.restore_if_lost().await {
            tracing::debug!(error = %e, "ban restore skipped");
        }
        let pending: Vec<String> = self
            .unsynced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        for ip in pending {
            let ban = self
                .bans
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&ip)
                .cloned();
            match ban {
                Some(b) if b.active(Utc::now()) => {
                    if self.store.put_ban(&b).await.is_ok() {
                        self.unsynced
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&ip);
                    }
                }
                _ => {
                    self.unsynced
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&ip);
                }
            }
        }
        if let Ok(l) = self.store.limits().await {
            *self.limits.write().unwrap_or_else(|p| p.into_inner()) = l;
        }
        if let Ok(bans) = self.store.bans().await {
            let mut map: HashMap<String, Ban> =
                bans.into_iter().map(|b| (b.ip.clone(), b)).collect();
            let unsynced = self
                .unsynced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let mut local = self.bans.write().unwrap_or_else(|p| p.into_inner());
            for ip in unsynced {
                if let Some(b) = local.get(&ip) {
                    map.entry(ip).or_insert_with(|| b.clone());
                }
            }
            *local = map;
        }
    }

    async fn apply(&self, change: Change) {
        match change {
            Change::Limits => {
                if let Ok(l) = self.store.limits().await {
                    tracing::info!(?l, "rate limits changed");
                    *self.limits.write().unwrap_or_else(|p| p.into_inner()) = l;
                }
            }
            Change::Ban(ip) => {
                if let Ok(b) = self.store.ban(&ip).await {
                    let mut bans = self.bans.write().unwrap_or_else(|p| p.into_inner());
                    match b {
                        Some(b) => bans.insert(ip, b),
                        None => bans.remove(&ip),
                    };
                }
            }
        }
    }

    /// Starts the pub/sub listener and the periodic sync (every `every`),
    /// on the current runtime.
    pub fn start(self: &Arc<Self>, every: Duration, shutdown: Shutdown) {
        let me = self.clone();
        self.store.subscribe(shutdown.clone(), move |c| {
            let me = me.clone();
            tokio::spawn(async move { me.apply(c).await });
        });
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.store.restore_from_pg().await {
                tracing::warn!(error = %e, "could not restore persisted bans");
            }
            loop {
                me.sync().await;
                me.sweep_buckets();
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = shutdown.wait() => return,
                }
            }
        });
    }

    /// Drops buckets idle long enough to be full again.
    fn sweep_buckets(&self) {
        let l = self.limits();
        let full_after = Duration::from_secs_f64((l.burst / l.rps).max(1.0));
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, b| b.at.elapsed() < full_after);
    }

    fn take_token(&self, ip: IpAddr, l: &Limits) -> Result<u32, u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets.entry(ip).or_insert(Bucket {
            tokens: l.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * l.rps).min(l.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(b.tokens as u32)
        } else {
            Err(((1.0 - b.tokens) / l.rps).ceil().max(1.0) as u64)
        }
    }

    /// Decides one request from `ip`.
    pub async fn check(&self, ip: IpAddr) -> Verdict {
        let l = self.limits();
        let limit = l.burst as u32;
        if !l.enforce {
            return Verdict::Allow {
                limit,
                remaining: limit,
            };
        }
        let key = ip.to_string();
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
        let retry_after_s = match self.take_token(ip, &l) {
            Ok(remaining) => return Verdict::Allow { limit, remaining },
            Err(wait) => wait,
        };
        self.metrics.rate_limited.inc();
        let window = Duration::from_secs(l.strike_window_s);
        let strikes = match self.store.strike(&key, window).await {
            Ok(n) => n,
            Err(_) => self.local_strike(&key, window),
        };
        if strikes == l.ban_strikes {
            let ban = self.escalate(&key, strikes, &l).await;
            return Verdict::Banned(ban);
        }
        Verdict::Limited {
            limit,
            retry_after_s,
            strikes,
            warning: strikes <= l.warn_strikes,
        }
    }

    /// Fallback strike counting while the store is unreachable.
    fn local_strike(&self, ip: &str, window: Duration) -> u32 {
        let mut m = self.local_strikes.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(ip.to_owned()).or_insert((0, Instant::now()));
        if e.1.elapsed() >= window {
            *e = (0, Instant::now());
        }
        e.0 += 1;
        e.0
    }

    async fn escalate(&self, ip: &str, strikes: u32, l: &Limits) -> Ban {
        let hour_bans = self.store.add_hour_ban(ip).await.unwrap_or(1);
        let now = Utc::now();
        let permanent = hour_bans > l.permanent_after;
        let ban = Ban {
            ip: ip.to_owned(),
            ban_type: if permanent {
                BanType::Permanent
            } else {
                BanType::Temporary
            },
            reason: if permanent {
                format!("rate limit abuse after {} temporary bans", hour_bans - 1)
            } else {
                format!(
                    "{strikes} rate-limit strikes within {} s",
                    l.strike_window_s
                )
            },
            strikes,
            hour_bans,
            issued_by: self.edge_id.clone(),
            created_at: now,
            expires_at: (!permanent)
                .then(|| now + chrono::Duration::seconds(l.ban_duration_s as i64)),
        };
        tracing::warn!(
            ip,
            ban_type = ban.ban_type.as_str(),
            strikes,
            hour_bans,
            "client banned"
        );
        self.metrics
            .bans_issued
            .with_label_values(&[ban.ban_type.as_str()])
            .inc();
        self.bans
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ip.to_owned(), ban.clone());
        let _ = self.store.clear_strikes(ip).await;
        if let Err(e) = self.store.put_ban(&ban).await {
            tracing::warn!(error = %e, ip, "ban kept locally until the shared store answers");
            self.unsynced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(ip.to_owned());
        }
        ban
    }
}

/// The client address: the peer, or, when the peer is a trusted proxy, the
/// right-most address in X-Forwarded-For that is not itself trusted.
pub fn client_ip(peer: IpAddr, xff: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(xff) = xff else { return peer };
    let mut candidate = peer;
    for part in xff.rsplit(',') {
        match part.trim().parse::<IpAddr>() {
            Ok(ip) => {
                candidate = ip;
                if !is_trusted(&ip) {
                    return ip;
                }
            }
            Err(_) => return candidate,
        }
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ];
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(outsider, Some("1.1.1.1"), &trusted), outsider);
        assert_eq!(
            client_ip(peer, Some("198.51.100.7, 10.1.2.3"), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, Some("spoofed, 198.51.100.7"), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(peer, Some("garbage"), &trusted), peer);
        assert_eq!(client_ip(peer, None, &trusted), peer);
        assert_eq!(client_ip(peer, Some("1.1.1.1"), &[]), peer);
    }

    #[tokio::test]
    async fn escalates_from_warning_to_temporary_to_permanent_ban_in_memory() {
        let limits = Limits {
            rps: 0.001,
            burst: 2.0,
            strike_window_s: 600,
            warn_strikes: 1,
            ban_strikes: 3,
            ban_duration_s: 3600,
            permanent_after: 1,
            enforce: true,
        };
        let store = AbuseStore::new(None, None, "t:", limits.clone())
            .await
            .unwrap();
        let metrics = EdgeMetrics::new(shortlink_runtime::metrics::Metrics::new("edge", "t"));
        let g = Guard::new(store.clone(), "edge-t".into(), limits, metrics);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(matches!(
            g.check(ip).await,
            Verdict::Allow { remaining: 1, .. }
        ));
        assert!(matches!(
            g.check(ip).await,
            Verdict::Allow { remaining: 0, .. }
        ));
        assert!(matches!(
            g.check(ip).await,
            Verdict::Limited {
                strikes: 1,
                warning: true,
                ..
            }
        ));
        assert!(matches!(
            g.check(ip).await,
            Verdict::Limited {
                strikes: 2,
                warning: false,
                ..
            }
        ));
        let Verdict::Banned(b) = g.check(ip).await else {
            panic!("third strike bans")
        };
        assert_eq!(b.ban_type, BanType::Temporary);
        assert!(b.remaining_s(Utc::now()).unwrap() > 3500);
        assert!(matches!(g.check(ip).await, Verdict::Banned(_)));
        // Lifted (as admin would), the next abuse ends in a permanent ban.
        store.lift_ban(&ip.to_string()).await.unwrap();
        g.sync().await;
        for _ in 0..2 {
            assert!(matches!(g.check(ip).await, Verdict::Limited { .. }));
        }
        let Verdict::Banned(b) = g.check(ip).await else {
            panic!("banned again")
        };
        assert_eq!(b.ban_type, BanType::Permanent);
        assert_eq!(b.expires_at, None);
        // Others are unaffected; enforcement can be switched off.
        assert!(matches!(
            g.check("192.0.2.2".parse().unwrap()).await,
            Verdict::Allow { .. }
        ));
        store
            .put_limits(&Limits {
                enforce: false,
                ..g.limits()
            })
            .await
            .unwrap();
        g.sync().await;
        assert!(matches!(g.check(ip).await, Verdict::Allow { .. }));
    }
}
