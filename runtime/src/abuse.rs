//! Abuse-control state shared by every edge and the admin service: bans,
//! strikes, hour-ban counts and the rate-limit settings. It lives in Redis
//! (so both edges of the HA pair see the same state) with changes announced
//! on a pub/sub channel, bans are persisted in PostgreSQL (so a Redis
//! restart loses none), and without Redis everything is kept in process
//! (the embedded default: one edge).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::redis_conn::{LazyRedis, RedisError};
use crate::shutdown::Shutdown;

/// Temporary bans expire; permanent ones do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BanType {
    Temporary,
    Permanent,
}

impl BanType {
    pub fn as_str(self) -> &'static str {
        match self {
            BanType::Temporary => "temporary",
            BanType::Permanent => "permanent",
        }
    }
}

/// One ban of one client IP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ban {
    pub ip: String,
    pub ban_type: BanType,
    pub reason: String,
    /// Rate-limit strikes that led to it (0 for manual bans).
    pub strikes: u32,
    /// Hour bans this IP had collected when this ban was issued.
    pub hour_bans: u32,
    /// Who issued it: an edge id or "admin".
    pub issued_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Ban {
    /// Whether it is still in force.
    pub fn active(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }

    /// Seconds left for a temporary ban.
    pub fn remaining_s(&self, now: DateTime<Utc>) -> Option<u64> {
        self.expires_at
            .map(|e| (e - now).num_seconds().max(0) as u64)
    }
}

/// Rate limits and escalation, changeable at run time through admin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Sustained requests per second per client IP.
    pub rps: f64,
    /// Burst per client IP.
    pub burst: f64,
    /// Strikes are counted over this window.
    pub strike_window_s: u64,
    /// The first this-many strikes carry a warning header.
    pub warn_strikes: u32,
    /// Strikes in the window that earn a temporary ban.
    pub ban_strikes: u32,
    /// Length of that ban ("one-hour ban").
    pub ban_duration_s: u64,
    /// Temporary bans after which the next ban is permanent.
    pub permanent_after: u32,
    /// Whether limits and bans are enforced at all.
    pub enforce: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rps: 50.0,
            burst: 100.0,
            strike_window_s: 600,
            warn_strikes: 3,
            ban_strikes: 10,
            ban_duration_s: 3600,
            permanent_after: 3,
            enforce: true,
        }
    }
}

impl Limits {
    /// Rejects nonsense values (admin input).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rps > 0.0 && self.rps.is_finite()) {
            return Err("rps must be a positive number".into());
        }
        if !(self.burst >= 1.0 && self.burst.is_finite()) {
            return Err("burst must be at least 1".into());
        }
        if self.ban_strikes == 0 || self.permanent_after == 0 {
            return Err("ban_strikes and permanent_after must be at least 1".into());
        }
        if self.strike_window_s == 0 || self.ban_duration_s == 0 {
            return Err("strike_window_s and ban_duration_s must be at least 1".into());
        }
        Ok(())
    }
}

/// A change announced on the channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The ban of this IP was set or lifted: re-read it.
    Ban(String),
    /// Limits or enforcement changed: re-read them.
    Limits,
}

impl Change {
    fn encode(&self) -> String {
        match self {
            Change::Ban(ip) => format!("ban {ip}"),
            Change::Limits => "limits".into(),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        match s.split_once(' ') {
            Some(("ban", ip)) => Some(Change::Ban(ip.to_owned())),
            _ if s == "limits" => Some(Change::Limits),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Memory {
    bans: HashMap<String, Ban>,
    strikes: HashMap<String, (u32, DateTime<Utc>)>,
    hour_bans: HashMap<String, u32>,
    limits: Option<Limits>,
}

/// The store. Redis when configured, else memory; PostgreSQL persistence
/// of bans when configured.
pub struct AbuseStore {
    prefix: String,
    redis: Option<LazyRedis>,
    pg: Option<sqlx::PgPool>,
    memory: Mutex<Memory>,
    defaults: Limits,
    local_subscribers: Mutex<Vec<tokio::sync::mpsc::UnboundedSender<Change>>>,
}

impl std::fmt::Debug for AbuseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbuseStore")
            .field("prefix", &self.prefix)
            .field("redis", &self.redis.is_some())
            .field("pg", &self.pg.is_some())
            .finish()
    }
}

type Res<T> = Result<T, RedisError>;

impl AbuseStore {
    /// Builds the store; connects to PostgreSQL (creating the ban table) when
    /// a URL is given. `defaults` apply until admin stores other limits.
    pub async fn new(
        redis_url: Option<&str>,
        database_url: Option<&str>,
        prefix: &str,
        defaults: Limits,
    ) -> anyhow::Result<Arc<Self>> {
        let redis = match redis_url.filter(|u| !u.is_empty()) {
            Some(u) => Some(LazyRedis::new(
                u,
                Duration::from_millis(250),
                "abuse state",
            )?),
            None => None,
        };
        let pg = match database_url.filter(|u| u.starts_with("postgres")) {
            Some(u) => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(2))
                    .connect_lazy(u)?;
                Some(pool)
            }
            None => None,
        };
        let store = Arc::new(Self {
            prefix: prefix.to_owned(),
            redis,
            pg,
            memory: Mutex::new(Memory::default()),
            defaults,
            local_subscribers: Mutex::new(Vec::new()),
        });
        if let Err(e) = store.ensure_table().await {
            tracing::warn!(error = %e, "ban persistence unavailable at start; bans will persist once PostgreSQL answers");
        }
        Ok(store)
    }

    /// Whether state is shared through Redis.
    pub fn shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Whether Redis answered the last call (true without Redis).
    pub fn redis_up(&self) -> bool {
        self.redis.as_ref().is_none_or(LazyRedis::is_up)
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    async fn ensure_table(&self) -> anyhow::Result<()> {
        if let Some(pg) = &self.pg {
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS abuse_bans (\
                 ip TEXT PRIMARY KEY, ban JSONB NOT NULL, expires_at TIMESTAMPTZ, updated_at TIMESTAMPTZ NOT NULL)",
            )
            .execute(pg)
            .await?;
        }
        Ok(())
    }

    /// Copies active bans persisted in PostgreSQL into Redis when Redis has
    /// lost them (after a Redis restart). Returns how many were restored.
    pub async fn restore_from_pg(&self) -> anyhow::Result<usize> {
        let Some(pg) = &self.pg else { return Ok(0) };
        self.ensure_table().await?;
        let rows: Vec<(sqlx::types::Json<Ban>,)> = sqlx::query_as(
            "SELECT ban FROM abuse_bans WHERE expires_at IS NULL OR expires_at > now()",
        )
        .fetch_all(pg)
        .await?;
        let mut restored = 0;
        for (ban,) in rows {
            let ban = ban.0;
            if self.ban(&ban.ip).await.ok().flatten().is_none() {
                self.write_ban(&ban).await.map_err(|e| anyhow::anyhow!(e))?;
                restored += 1;
            }
        }
        if restored > 0 {
            tracing::info!(restored, "bans restored from PostgreSQL");
        }
        if let Some(r) = &self.redis {
            let key = self.key("restored");
            r.run(|mut c| async move { c.set::<_, _, ()>(key, "1").await })
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
        }
        Ok(restored)
    }

    /// `restore_from_pg` only when Redis has lost its state since the last
    /// restore (its marker key is gone, as after a restart): one GET in the
    /// usual case instead of a PostgreSQL query and a read per ban.
    pub async fn restore_if_lost(&self) -> anyhow::Result<usize> {
        let Some(r) = &self.redis else { return Ok(0) };
        if self.pg.is_none() {
            return Ok(0);
        }
        let key = self.key("restored");
        let marker: Option<String> = r
            .run(|mut c| async move { c.get(key).await })
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        if marker.is_some() {
            return Ok(0);
        }
        self.restore_from_pg().await
    }

    /// Every ban in force.
    pub async fn bans(&self) -> Res<Vec<Ban>> {
        let now = Utc::now();
        let all: Vec<Ban> = match &self.redis {
            Some(r) => {
                let key = self.key("bans");
                let raw: HashMap<String, String> =
                    r.run(|mut c| async move { c.hgetall(key).await }).await?;
                raw.values()
                    .filter_map(|v| serde_json::from_str(v).ok())
                    .collect()
            }
            None => self.mem().bans.values().cloned().collect(),
        };
        let (active, expired): (Vec<Ban>, Vec<Ban>) = all.into_iter().partition(|b| b.active(now));
        for b in expired {
            let _ = self.remove_ban_entry(&b.ip).await;
        }
        Ok(active)
    }

    /// The ban in force for `ip`, if any.
    pub async fn ban(&self, ip: &str) -> Res<Option<Ban>> {
        let b: Option<Ban> = match &self.redis {
            Some(r) => {
                let (key, field) = (self.key("bans"), ip.to_owned());
                let raw: Option<String> = r
                    .run(|mut c| async move { c.hget(key, field).await })
                    .await?;
                raw.and_then(|v| serde_json::from_str(&v).ok())
            }
            None => self.mem().bans.get(ip).cloned(),
        };
        Ok(b.filter(|b| b.active(Utc::now())))
    }

    async fn write_ban(&self, ban: &Ban) -> Res<()> {
        match &self.redis {
            Some(r) => {
                let (key, field) = (self.key("bans"), ban.ip.clone());
                let val = serde_json::to_string(ban).unwrap_or_default();
                r.run(|mut c| async move { c.hset::<_, _, _, ()>(key, field, val).await })
                    .await
            }
            None => {
                self.mem().bans.insert(ban.ip.clone(), ban.clone());
                Ok(())
            }
        }
    }

    async fn remove_ban_entry(&self, ip: &str) -> Res<()> {
        match &self.redis {
            Some(r) => {
                let (key, field) = (self.key("bans"), ip.to_owned());
                r.run(|mut c| async move { c.hdel::<_, _, ()>(key, field).await })
                    .await
            }
            None => {
                self.mem().bans.remove(ip);
                Ok(())
            }
        }
    }

    /// Stores a ban, persists it, and tells every edge. Persistence failures
    /// are logged, not returned: the ban is in force either way.
    pub async fn put_ban(&self, ban: &Ban) -> Res<()> {
        let res = self.write_ban(ban).await;
        if let Some(pg) = &self.pg {
            let q = sqlx::query(
                "INSERT INTO abuse_bans (ip, ban, expires_at, updated_at) VALUES ($1, $2, $3, now()) \
                 ON CONFLICT (ip) DO UPDATE SET ban = EXCLUDED.ban, expires_at = EXCLUDED.expires_at, updated_at = now()",
            )
            .bind(&ban.ip)
            .bind(sqlx::types::Json(ban))
            .bind(ban.expires_at);
            if let Err(e) = q.execute(pg).await {
                tracing::warn!(error = %e, ip = %ban.ip, "could not persist ban in PostgreSQL");
            }
        }
        self.publish(Change::Ban(ban.ip.clone())).await;
        res
    }

    /// Lifts the ban of `ip` and clears its strikes. Returns whether a ban
    /// was in force.
    pub async fn lift_ban(&self, ip: &str) -> Res<bool> {
        let existed = self.ban(ip).await?.is_some();
        self.remove_ban_entry(ip).await?;
        self.clear_strikes(ip).await?;
        if let Some(pg) = &self.pg
            && let Err(e) = sqlx::query("DELETE FROM abuse_bans WHERE ip = $1")
                .bind(ip)
                .execute(pg)
                .await
        {
            tracing::warn!(error = %e, ip, "could not delete persisted ban");
        }
        self.publish(Change::Ban(ip.to_owned())).await;
        Ok(existed)
    }

    /// Counts one strike for `ip` within `window` and returns the count.
    pub async fn strike(&self, ip: &str, window: Duration) -> Res<u32> {
        match &self.redis {
            Some(r) => {
                let key = self.key(&format!("strikes:{ip}"));
                let secs = window.as_secs().max(1) as i64;
                r.run(|mut c| async move {
                    let (n, _): (u32, bool) = redis::pipe()
                        .atomic()
                        .incr(&key, 1)
                        .cmd("EXPIRE")
                        .arg(&key)
                        .arg(secs)
                        .arg("NX")
                        .query_async(&mut c)
                        .await?;
                    Ok(n)
                })
                .await
            }
            None => {
                let now = Utc::now();
                let mut m = self.mem();
                let e = m.strikes.entry(ip.to_owned()).or_insert((0, now));
                if (now - e.1).num_seconds() as u64 >= window.as_secs() {
                    *e = (0, now);
                }
                e.0 += 1;
                Ok(e.0)
            }
        }
    }

    /// Current strikes of `ip`.
    pub async fn strikes(&self, ip: &str) -> Res<u32> {
        match &self.redis {
            Some(r) => {
                let key = self.key(&format!("strikes:{ip}"));
                let n: Option<u32> = r.run(|mut c| async move { c.get(key).await }).await?;
                Ok(n.unwrap_or(0))
            }
            None => Ok(self.mem().strikes.get(ip).map_or(0, |s| s.0)),
        }
    }

    /// Forgets the strikes of `ip`.
    pub async fn clear_strikes(&self, ip: &str) -> Res<()> {
        match &self.redis {
            Some(r) => {
                let key = self.key(&format!("strikes:{ip}"));
                r.run(|mut c| async move { c.del::<_, ()>(key).await })
                    .await
            }
            None => {
                self.mem().strikes.remove(ip);
                Ok(())
            }
        }
    }

    /// Counts one more temporary ban for `ip` (remembered for 30 days) and
    /// returns the total.
    pub async fn add_hour_ban(&self, ip: &str) -> Res<u32> {
        match &self.redis {
            Some(r) => {
                let key = self.key(&format!("hourbans:{ip}"));
                r.run(|mut c| async move {
                    let (n, _): (u32, bool) = redis::pipe()
                        .atomic()
                        .incr(&key, 1)
                        .expire(&key, 30 * 24 * 3600)
                        .query_async(&mut c)
                        .await?;
                    Ok(n)
                })
                .await
            }
            None => {
                let mut m = self.mem();
                let e = m.hour_bans.entry(ip.to_owned()).or_insert(0);
                *e += 1;
                Ok(*e)
            }
        }
    }

    /// The limits in force (the configured defaults until admin sets others).
    pub async fn limits(&self) -> Res<Limits> {
        match &self.redis {
            Some(r) => {
                let key = self.key("limits");
                let raw: Option<String> = r.run(|mut c| async move { c.get(key).await }).await?;
                Ok(raw
                    .and_then(|v| serde_json::from_str(&v).ok())
                    .unwrap_or_else(|| self.defaults.clone()))
            }
            None => Ok(self
                .mem()
                .limits
                .clone()
                .unwrap_or_else(|| self.defaults.clone())),
        }
    }

    /// Stores new limits and tells every edge.
    pub async fn put_limits(&self, limits: &Limits) -> Res<()> {
        match &self.redis {
            Some(r) => {
                let key = self.key("limits");
                let val = serde_json::to_string(limits).unwrap_or_default();
                r.run(|mut c| async move { c.set::<_, _, ()>(key, val).await })
                    .await?;
            }
            None => self.mem().limits = Some(limits.clone()),
        }
        self.publish(Change::Limits).await;
        Ok(())
    }

    async fn publish(&self, change: Change) {
        if let Some(r) = &self.redis {
            let (ch, msg) = (self.key("changes"), change.encode());
            if let Err(e) = r
                .run(|mut c| async move { c.publish::<_, _, ()>(ch, msg).await })
                .await
            {
                tracing::warn!(error = %e, "could not announce an abuse-state change; edges pick it up at their next sync");
            }
        }
        self.local_subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|tx| tx.send(change.clone()).is_ok());
    }

    /// Delivers every change (from any process through Redis pub/sub, and
    /// from this process) to `on_change` until shutdown; reconnects after
    /// Redis failures.
    pub fn subscribe(
        self: &Arc<Self>,
        shutdown: Shutdown,
        on_change: impl Fn(Change) + Send + Sync + 'static,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.local_subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        let on_change = Arc::new(on_change);
        {
            let on_change = on_change.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        m = rx.recv() => match m { Some(c) => on_change(c), None => return },
                        () = shutdown.wait() => return,
                    }
                }
            });
        }
        let Some(r) = &self.redis else { return };
        let client = r.client().clone();
        let channel = self.key("changes");
        tokio::spawn(async move {
            loop {
                let run = async {
                    let mut ps = client.get_async_pubsub().await?;
                    ps.subscribe(&channel).await?;
                    tracing::info!(channel, "subscribed to abuse-state changes");
                    let mut stream = ps.on_message();
                    while let Some(msg) = stream.next().await {
                        if let Ok(s) = msg.get_payload::<String>()
                            && let Some(c) = Change::decode(&s)
                        {
                            on_change(c);
                        }
                    }
                    Ok::<(), redis::RedisError>(())
                };
                tokio::select! {
                    r = run => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "abuse-state subscription lost; retrying");
                        }
                    }
                    () = shutdown.wait() => return,
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.wait() => return,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip() {
        for c in [
            Change::Ban("10.0.0.1".into()),
            Change::Ban("::1".into()),
            Change::Limits,
        ] {
            assert_eq!(Change::decode(&c.encode()), Some(c));
        }
        assert_eq!(Change::decode("nonsense"), None);
    }

    #[test]
    fn ban_activity_and_remaining() {
        let now = Utc::now();
        let mut b = Ban {
            ip: "1.2.3.4".into(),
            ban_type: BanType::Temporary,
            reason: "r".into(),
            strikes: 10,
            hour_bans: 1,
            issued_by: "edge".into(),
            created_at: now,
            expires_at: Some(now + chrono::Duration::seconds(60)),
        };
        assert!(b.active(now));
        assert_eq!(b.remaining_s(now), Some(60));
        b.expires_at = Some(now - chrono::Duration::seconds(1));
        assert!(!b.active(now));
        b.expires_at = None;
        assert!(b.active(now));
        assert!(Limits::default().validate().is_ok());
        assert!(
            Limits {
                rps: 0.0,
                ..Limits::default()
            }
            .validate()
            .is_err()
        );
    }
}
