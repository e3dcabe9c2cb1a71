//! `AbuseStore`: what the edges and admin call. It sits on one
//! `AbuseBackend` (Redis or memory) and adds what does not depend on where
//! the state lives: persistence of bans in PostgreSQL (so a Redis restart
//! loses none), the process's default limits, the resolution of the limits
//! in force (stored limits, the separately stored enforcement switch, the
//! defaults), and delivery of changes to subscribers in this process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use shortlink_runtime::shutdown::Shutdown;

use crate::backend::{AbuseBackend, Announced, OnChange, Res, Stored};
use crate::memory::MemoryBackend;
use crate::model::{Ban, Change, Limits, Take};
use crate::redis::RedisBackend;

/// How to build a store.
#[derive(Clone, Debug)]
pub struct StoreOptions<'a> {
    /// Redis shared with the other processes; None or empty: memory.
    pub redis_url: Option<&'a str>,
    /// PostgreSQL where bans are persisted; None: not persisted.
    pub database_url: Option<&'a str>,
    /// Prefix of every Redis key and of the channel.
    pub prefix: &'a str,
    /// Limits in force until others are stored.
    pub defaults: Limits,
    /// Most clients tracked at once by each in-memory map.
    pub max_clients: usize,
}

/// An announcement older than this no longer says what an edge runs with
/// (edges announce every sync, 5 s).
const ANNOUNCEMENT_FRESH_S: i64 = 30;

/// See the module docs.
pub struct AbuseStore {
    backend: Arc<dyn AbuseBackend>,
    pg: Option<sqlx::PgPool>,
    defaults: Limits,
    local_subscribers: Mutex<Vec<tokio::sync::mpsc::UnboundedSender<Change>>>,
}

impl std::fmt::Debug for AbuseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbuseStore")
            .field("backend", &self.backend)
            .field("pg", &self.pg.is_some())
            .finish()
    }
}

impl AbuseStore {
    /// Builds the backend the options name and the store over it.
    pub async fn new(opts: StoreOptions<'_>) -> anyhow::Result<Arc<Self>> {
        let backend: Arc<dyn AbuseBackend> = match opts.redis_url.filter(|u| !u.is_empty()) {
            Some(u) => RedisBackend::new(u, opts.prefix, Duration::from_millis(250))?,
            None => MemoryBackend::new(opts.max_clients),
        };
        Self::with_backend(backend, opts.database_url, opts.defaults).await
    }

    /// A store over `backend`; with a PostgreSQL URL, bans are persisted
    /// (the table is created now, or once PostgreSQL answers).
    pub async fn with_backend(
        backend: Arc<dyn AbuseBackend>,
        database_url: Option<&str>,
        defaults: Limits,
    ) -> anyhow::Result<Arc<Self>> {
        let pg = match database_url.filter(|u| u.starts_with("postgres")) {
            Some(u) => Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(2))
                    .connect_lazy(u)?,
            ),
            None => None,
        };
        let store = Arc::new(Self {
            backend,
            pg,
            defaults,
            local_subscribers: Mutex::new(Vec::new()),
        });
        if let Err(e) = store.ensure_table().await {
            tracing::warn!(error = %e, "ban persistence unavailable at start; bans will persist once PostgreSQL answers");
        }
        Ok(store)
    }

    /// Whether state is shared with other processes (Redis).
    pub fn shared(&self) -> bool {
        self.backend.shared()
    }

    /// Whether the backend answered its last call (true in memory).
    pub fn redis_up(&self) -> bool {
        self.backend.is_up()
    }

    /// The limits this process falls back to.
    pub fn defaults(&self) -> &Limits {
        &self.defaults
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

    /// Copies active bans persisted in PostgreSQL into the backend where it
    /// lacks them (after a Redis restart, or at start in memory). Returns
    /// how many were restored.
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
                self.backend.write_ban(&ban).await?;
                restored += 1;
            }
        }
        if restored > 0 {
            tracing::info!(restored, "bans restored from PostgreSQL");
        }
        self.backend.mark_intact().await?;
        Ok(restored)
    }

    /// `restore_from_pg` only when the backend lost its state since the
    /// last restore: one GET in the usual case.
    pub async fn restore_if_lost(&self) -> anyhow::Result<usize> {
        if self.pg.is_none() || self.backend.intact().await? {
            return Ok(0);
        }
        self.restore_from_pg().await
    }

    /// Every ban in force (expired ones are removed on the way).
    pub async fn bans(&self) -> Res<Vec<Ban>> {
        let now = Utc::now();
        let (active, expired): (Vec<Ban>, Vec<Ban>) = self
            .backend
            .bans()
            .await?
            .into_iter()
            .partition(|b| b.active(now));
        for b in expired {
            let _ = self.backend.remove_ban(&b.ip).await;
        }
        Ok(active)
    }

    /// The ban in force for `key`, if any.
    pub async fn ban(&self, key: &str) -> Res<Option<Ban>> {
        Ok(self
            .backend
            .ban(key)
            .await?
            .filter(|b| b.active(Utc::now())))
    }

    /// Stores a ban, persists it, and tells every process. Persistence
    /// failures are logged, not returned: the ban is in force either way.
    pub async fn put_ban(&self, ban: &Ban) -> Res<()> {
        let res = self.backend.write_ban(ban).await;
        if let Some(pg) = &self.pg {
            let q = sqlx::query(
                "INSERT INTO abuse_bans (ip, ban, expires_at, updated_at) VALUES ($1, $2, $3, now()) \
                 ON CONFLICT (ip) DO UPDATE SET ban = EXCLUDED.ban, expires_at = EXCLUDED.expires_at, updated_at = now()",
            )
            .bind(&ban.ip)
            .bind(sqlx::types::Json(ban))
            .bind(ban.expires_at);
            if let Err(e) = q.execute(pg).await {
                tracing::warn!(error = %e, key = %ban.ip, "could not persist ban in PostgreSQL");
            }
        }
        self.publish(Change::Ban(ban.ip.clone())).await;
        res
    }

    /// Lifts the ban of `key` and clears its strikes. Returns whether a
    /// ban was in force.
    pub async fn lift_ban(&self, key: &str) -> Res<bool> {
        let existed = self.ban(key).await?.is_some();
        self.backend.remove_ban(key).await?;
        self.backend.clear_strikes(key).await?;
        if let Some(pg) = &self.pg
            && let Err(e) = sqlx::query("DELETE FROM abuse_bans WHERE ip = $1")
                .bind(key)
                .execute(pg)
                .await
        {
            tracing::warn!(error = %e, key, "could not delete persisted ban");
        }
        self.publish(Change::Ban(key.to_owned())).await;
        Ok(existed)
    }

    /// Counts one strike for `key` within `window` and returns the count;
    /// the counter resets when it reaches `ban_at` (see
    /// `AbuseBackend::strike`).
    pub async fn strike(&self, key: &str, window: Duration, ban_at: u32) -> Res<u32> {
        self.backend.strike(key, window, ban_at).await
    }

    /// Current strikes of `key`.
    pub async fn strikes(&self, key: &str) -> Res<u32> {
        self.backend.strikes(key).await
    }

    /// Forgets the strikes of `key`.
    pub async fn clear_strikes(&self, key: &str) -> Res<()> {
        self.backend.clear_strikes(key).await
    }

    /// Counts one more temporary ban for `key` and returns the total.
    pub async fn add_hour_ban(&self, key: &str) -> Res<u32> {
        self.backend.add_hour_ban(key).await
    }

    /// Spends one request of `key`'s rate-limit budget.
    pub async fn take(&self, key: &str, limits: &Limits) -> Res<Take> {
        self.backend.take(key, limits).await
    }

    fn resolve(&self, stored: Stored) -> Limits {
        let mut l = match stored.limits {
            Some(l) if l.validate().is_ok() => l,
            Some(l) => {
                tracing::warn!(?l, "stored limits are out of range; using the defaults");
                self.defaults.clone()
            }
            None => self.defaults.clone(),
        };
        if let Some(e) = stored.enforce {
            l.enforce = e;
        }
        l
    }

    /// The limits in force in this process: the stored ones (or the
    /// defaults), with the stored enforcement switch.
    pub async fn limits(&self) -> Res<Limits> {
        Ok(self.resolve(self.backend.stored().await?))
    }

    /// The limits the edges enforce, for admin: the stored ones; before any
    /// are stored, the most recent that an edge announced (what it runs
    /// with); failing that, this process's defaults. The stored
    /// enforcement switch applies in every case.
    pub async fn reported_limits(&self) -> Res<Limits> {
        let stored = self.backend.stored().await?;
        if stored.limits.as_ref().is_some_and(|l| l.validate().is_ok()) {
            return Ok(self.resolve(stored));
        }
        let fresh = Utc::now() - chrono::Duration::seconds(ANNOUNCEMENT_FRESH_S);
        let newest = self
            .backend
            .announced()
            .await?
            .into_iter()
            .filter(|a| a.at >= fresh && a.limits.validate().is_ok())
            .max_by_key(|a| a.at);
        Ok(match newest {
            Some(a) => {
                let mut l = a.limits;
                if let Some(e) = stored.enforce {
                    l.enforce = e;
                }
                l
            }
            None => self.resolve(stored),
        })
    }

    /// Stores new limits (all of them, enforcement included) and tells
    /// every process. Callers validate first.
    pub async fn put_limits(&self, limits: &Limits) -> Res<()> {
        self.backend.write_limits(limits).await?;
        self.publish(Change::Limits).await;
        Ok(())
    }

    /// Switches enforcement without touching the stored limits (or storing
    /// any) and tells every process.
    pub async fn set_enforce(&self, enforce: bool) -> Res<()> {
        self.backend.write_enforce(enforce).await?;
        self.publish(Change::Limits).await;
        Ok(())
    }

    /// Publishes the limits `edge` enforces (see `reported_limits`).
    pub async fn announce(&self, edge: &str, limits: &Limits) -> Res<()> {
        self.backend
            .announce(&Announced {
                edge: edge.to_owned(),
                limits: limits.clone(),
                at: Utc::now(),
            })
            .await
    }

    /// Drops expired per-client state held in this process.
    pub fn prune(&self) {
        self.backend.prune();
    }

    async fn publish(&self, change: Change) {
        if let Err(e) = self.backend.publish(&change).await {
            tracing::warn!(error = %e, "could not announce an abuse-state change; edges pick it up at their next sync");
        }
        self.local_subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|tx| tx.send(change.clone()).is_ok());
    }

    /// Delivers every change (from other processes through the backend,
    /// and from this process) to `on_change` until shutdown, in the order
    /// each source announced them.
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
        let on_change: OnChange = Arc::new(on_change);
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
        self.backend.listen(shutdown, on_change);
    }
}
