//! Persistence behind one trait, `LinkStore`, with two implementations that
//! share their SQL: PostgreSQL (production) and SQLite (the embedded
//! default). Every change to a link writes its event in the same
//! transaction.
//!
//! List totals (`total` of every listing) are never a `COUNT(*)` over a
//! table: triggers keep per-scope counts in `list_counts` exact in the
//! writing transaction (migration `0003_list_counts.sql`, decision D52).

mod sql;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use sql::{PgStore, SqliteStore};

use crate::model::{
    ClickCounts, Event, EventFilter, Link, LinkFilter, LinkPatch, NewClick, NewEvent, NewLink,
    NewUser, Page, User, UserPatch,
};

/// What a `NotFound` refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entity {
    Link,
    User,
    Url,
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Entity::Link => "link",
            Entity::User => "user",
            Entity::Url => "url",
        })
    }
}

/// Storage failures, classified so that the service can map them and the
/// breaker can tell an outage from a client error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(Entity),
    /// A unique column is taken: `short_code`, `username` or `email`.
    #[error("{0} is already taken")]
    Conflict(&'static str),
    /// The row is still referenced (a user that owns links).
    #[error("{0}")]
    InUse(String),
    /// A listing page would skip more than `Page::MAX_SKIP` matching rows.
    #[error("page too deep")]
    PageTooDeep,
    /// The database cannot be reached or is shutting down.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database did not answer in time.
    #[error("database timed out")]
    Timeout,
    /// Anything else: a bug or an unexpected database error.
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl StoreError {
    /// True when the error says the database is unhealthy (counts against
    /// the circuit breaker).
    pub fn is_outage(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Timeout)
    }
}

/// Pool usage, for `/health` and metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// Counts of what an import inserted; rows already present are skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportCounts {
    pub users: u64,
    pub links: u64,
    pub events: u64,
}

/// The persistence contract. Both implementations pass the same contract
/// suite (`tests/contract.rs`).
#[async_trait]
pub trait LinkStore: Send + Sync + 'static {
    /// "postgres" or "sqlite".
    fn backend(&self) -> &'static str;
    /// A cheap round trip to the database.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Pool usage right now.
    fn pool_stats(&self) -> PoolStats;
    /// Closes the pool, waiting for connections in use to be returned.
    async fn close(&self);

    /// Inserts a link and its `created` event. `Conflict("short_code")` when
    /// the code is taken, `NotFound(User)` for an unknown user.
    async fn create_link(&self, new: &NewLink) -> Result<Link, StoreError>;
    async fn link_by_code(&self, code: &str) -> Result<Option<Link>, StoreError>;
    async fn link_by_id(&self, id: i64) -> Result<Option<Link>, StoreError>;
    async fn list_links(
        &self,
        filter: &LinkFilter,
        page: Page,
    ) -> Result<(Vec<Link>, i64), StoreError>;
    /// Applies the patch and writes one `updated` event per field that
    /// actually changed.
    async fn update_link(&self, id: i64, patch: &LinkPatch) -> Result<Link, StoreError>;
    /// Soft delete: `is_active = false` and a `deleted` event.
    async fn deactivate_link(&self, id: i64, reason: &str) -> Result<Link, StoreError>;

    /// `Conflict("username" | "email")` when taken.
    async fn create_user(&self, new: &NewUser) -> Result<User, StoreError>;
    async fn user_by_id(&self, id: i64) -> Result<Option<User>, StoreError>;
    async fn list_users(&self, page: Page) -> Result<(Vec<User>, i64), StoreError>;
    async fn update_user(&self, id: i64, patch: &UserPatch) -> Result<User, StoreError>;
    /// Deletes a user that owns no links and has no events; `InUse`
    /// otherwise.
    async fn delete_user(&self, id: i64) -> Result<(), StoreError>;

    /// `NotFound(Url)` or `NotFound(User)` for unknown references.
    async fn create_event(&self, new: &NewEvent) -> Result<Event, StoreError>;
    async fn list_events(
        &self,
        filter: &EventFilter,
        page: Page,
    ) -> Result<(Vec<Event>, i64), StoreError>;

    /// Records clicks idempotently (keyed by request id): a `click` event
    /// each and the per-link counts, in one transaction.
    async fn record_clicks(&self, clicks: &[NewClick]) -> Result<ClickCounts, StoreError>;
    /// Clicks recorded for a link.
    async fn click_count(&self, url_id: i64) -> Result<i64, StoreError>;

    /// Folds the count deltas that writes appended into the list totals
    /// (PostgreSQL; SQLite keeps its totals folded already) and returns how
    /// many delta rows it folded. Totals are exact with or without it; it
    /// keeps reading them cheap. Safe to call from every replica at once.
    async fn compact_list_counts(&self) -> Result<u64, StoreError>;

    /// Inserts rows with their own ids, skipping any whose id (or unique
    /// value) is already present, in one transaction; then moves id
    /// sequences past the largest id.
    async fn import(
        &self,
        users: &[User],
        links: &[Link],
        events: &[Event],
    ) -> Result<ImportCounts, StoreError>;
}

/// How to reach the database.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// `postgres://...` or `sqlite://...`.
    pub url: String,
    /// Largest number of pooled connections.
    pub max_connections: u32,
    /// How long a caller waits for a pooled connection.
    pub acquire_timeout: Duration,
}

/// Connects to the database named by the URL and applies the embedded
/// migrations.
pub async fn connect(cfg: &StoreConfig) -> anyhow::Result<Arc<dyn LinkStore>> {
    if cfg.url.starts_with("postgres://") || cfg.url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(cfg).await?))
    } else if cfg.url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(cfg).await?))
    } else {
        anyhow::bail!("DATABASE_URL must start with postgres://, postgresql:// or sqlite:")
    }
}

/// Applies the embedded migrations without starting anything else.
pub async fn migrate(cfg: &StoreConfig) -> anyhow::Result<&'static str> {
    let store = connect(cfg).await?;
    let backend = store.backend();
    store.close().await;
    Ok(backend)
}
