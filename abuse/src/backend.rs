//! The one interface both homes of the abuse state implement: Redis
//! (shared by every edge and admin) and process memory (one edge alone).
//! The store (`store.rs`) adds what does not depend on the home: ban
//! persistence in PostgreSQL, default limits, in-process change delivery.
//! Both implementations pass the same contract tests (`tests/contract.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shortlink_runtime::shutdown::Shutdown;

use crate::model::{Ban, Change, Limits, Take};

/// The backend could not be used (Redis down or timing out).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

impl From<shortlink_runtime::redis_conn::RedisError> for StoreError {
    fn from(e: shortlink_runtime::redis_conn::RedisError) -> Self {
        Self(e.0)
    }
}

pub type Res<T> = Result<T, StoreError>;

/// What admin stored: the limits (absent until `SetLimits`) and, apart from
/// them, the enforcement switch (absent until `SetEnforcement` or
/// `SetLimits`), so that switching enforcement never writes limits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stored {
    pub limits: Option<Limits>,
    pub enforce: Option<bool>,
}

/// The limits one edge enforces, published at every sync so that admin can
/// report them before any are stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Announced {
    pub edge: String,
    pub limits: Limits,
    pub at: DateTime<Utc>,
}

/// Callback for changes announced by other processes.
pub type OnChange = Arc<dyn Fn(Change) + Send + Sync>;

/// See the module docs. Keys are client keys (`crate::client`).
#[async_trait]
pub trait AbuseBackend: Send + Sync + std::fmt::Debug {
    /// Whether the state is shared with other processes.
    fn shared(&self) -> bool;
    /// Whether the last call succeeded (always true in memory).
    fn is_up(&self) -> bool;

    /// Every stored ban, expired ones included.
    async fn bans(&self) -> Res<Vec<Ban>>;
    /// The stored ban of `key`, expired or not.
    async fn ban(&self, key: &str) -> Res<Option<Ban>>;
    async fn write_ban(&self, ban: &Ban) -> Res<()>;
    async fn remove_ban(&self, key: &str) -> Res<()>;

    /// Counts one strike of `key` in a window that starts at its first
    /// strike and lasts `window`; returns the count. A count that reaches
    /// `ban_at` (or passes it: the threshold may have been lowered) resets
    /// the counter in the same atomic step, so across every process exactly
    /// one caller sees each crossing and issues one ban.
    async fn strike(&self, key: &str, window: Duration, ban_at: u32) -> Res<u32>;
    async fn strikes(&self, key: &str) -> Res<u32>;
    async fn clear_strikes(&self, key: &str) -> Res<()>;
    /// Counts one more temporary ban of `key` (remembered for 30 days after
    /// the last one); returns the count.
    async fn add_hour_ban(&self, key: &str) -> Res<u32>;

    /// Spends one request of `key`'s rate-limit budget (GCRA, one round
    /// trip for Redis).
    async fn take(&self, key: &str, limits: &Limits) -> Res<Take>;

    async fn stored(&self) -> Res<Stored>;
    /// Stores limits, including their enforcement switch.
    async fn write_limits(&self, limits: &Limits) -> Res<()>;
    /// Stores the enforcement switch alone.
    async fn write_enforce(&self, enforce: bool) -> Res<()>;
    async fn announce(&self, a: &Announced) -> Res<()>;
    async fn announced(&self) -> Res<Vec<Announced>>;

    /// False when the state was lost since the last `mark_intact` (a Redis
    /// restart without persistence): persisted bans must be restored.
    async fn intact(&self) -> Res<bool>;
    async fn mark_intact(&self) -> Res<()>;

    /// Announces a change to the other processes.
    async fn publish(&self, change: &Change) -> Res<()>;
    /// Delivers changes announced by other processes to `on_change` until
    /// shutdown (nothing to deliver in memory).
    fn listen(&self, shutdown: Shutdown, on_change: OnChange);

    /// Drops expired per-client entries held in this process (Redis
    /// expires its own keys).
    fn prune(&self) {}
}
