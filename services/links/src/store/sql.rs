//! The SQL implementation of `LinkStore`, written once and instantiated for
//! PostgreSQL and SQLite by `sql_store!`. Both dialects accept the same
//! statements (`$n` placeholders, `RETURNING`, `ON CONFLICT DO NOTHING`);
//! what differs (row locking, write transactions, sequences, connection
//! options) is passed in or written per backend below.

use std::str::FromStr;

use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;

use super::{Entity, ImportCounts, LinkStore, PoolStats, StoreConfig, StoreError};
use crate::model::{
    ClickCounts, Event, EventFilter, Link, LinkFilter, LinkPatch, NewClick, NewEvent, NewLink,
    NewUser, Page, User, UserPatch, now,
};

// Column lists as macros so statements stay `&'static str` literals
// (sqlx only takes audited SQL strings).
macro_rules! link_cols {
    () => {
        "id, user_id, short_code, original_url, title, is_active, created_at, updated_at"
    };
}
macro_rules! user_cols {
    () => {
        "id, username, email, created_at"
    };
}
macro_rules! event_cols {
    () => {
        "id, url_id, user_id, event_type, timestamp, details"
    };
}
/// Clicks per multi-row INSERT in `record_clicks` (6 bound values a row,
/// well inside SQLite's 32,766 and PostgreSQL's 65,535 parameters).
const CLICK_CHUNK: usize = 500;

#[derive(sqlx::FromRow)]
struct EventRow {
    id: i64,
    url_id: i64,
    user_id: i64,
    event_type: String,
    timestamp: chrono::DateTime<chrono::Utc>,
    details: Json<Value>,
}

impl From<EventRow> for Event {
    fn from(r: EventRow) -> Self {
        Event {
            id: r.id,
            url_id: r.url_id,
            user_id: r.user_id,
            event_type: r.event_type,
            timestamp: r.timestamp,
            details: r.details.0,
        }
    }
}

/// Sorts a database error into the store's classes.
fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => {
            if db.is_unique_violation() {
                let text = format!("{} {}", db.constraint().unwrap_or_default(), db.message());
                let field = ["short_code", "username", "email"]
                    .into_iter()
                    .find(|f| text.contains(f))
                    .unwrap_or("value");
                return StoreError::Conflict(field);
            }
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            // PostgreSQL: connection exceptions (08), operator intervention
            // such as admin shutdown (57P), too many connections (53300),
            // read-only transaction during failover (25006).
            // SQLite: SQLITE_BUSY (5) and its extended codes, SQLITE_LOCKED (6).
            let outage = code.starts_with("08")
                || code.starts_with("57P")
                || code == "53300"
                || code == "25006"
                || matches!(code.as_str(), "5" | "6" | "261" | "517" | "773");
            if outage {
                StoreError::Unavailable(e)
            } else {
                StoreError::Other(e)
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(e),
        _ => StoreError::Other(e),
    }
}

fn changed_event(field: &str, old: Value, new: Value) -> Value {
    json!({"field": field, "old_value": old, "new_value": new})
}

macro_rules! sql_store {
    ($store:ident, $db:ty, backend = $backend:literal, for_update = $for_update:literal) => {
        #[async_trait]
        impl LinkStore for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await.map_err(classify)?;
                Ok(())
            }

            fn pool_stats(&self) -> PoolStats {
                PoolStats {
                    size: self.pool.size(),
                    idle: self.pool.num_idle() as u32,
                    max: self.pool.options().get_max_connections(),
                }
            }

            async fn close(&self) {
                self.pool.close().await;
            }

            async fn create_link(&self, new: &NewLink) -> Result<Link, StoreError> {
                let at = now();
                let mut tx = self.begin_write().await?;
                let user: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE id = $1")
                    .bind(new.user_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(classify)?;
                if user.is_none() {
                    return Err(StoreError::NotFound(Entity::User));
                }
                let link: Link = sqlx::query_as(concat!(
                    "INSERT INTO urls (user_id, short_code, original_url, title, is_active, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, TRUE, $5, $5) RETURNING ", link_cols!(), ""
                ))
                .bind(new.user_id)
                .bind(&new.short_code)
                .bind(&new.original_url)
                .bind(&new.title)
                .bind(at)
                .fetch_one(&mut *tx)
                .await
                .map_err(classify)?;
                let details = json!({"short_code": link.short_code, "original_url": link.original_url});
                insert_event(&mut tx, link.id, link.user_id, "created", &details, at).await?;
                tx.commit().await.map_err(classify)?;
                Ok(link)
            }

            async fn link_by_code(&self, code: &str) -> Result<Option<Link>, StoreError> {
                sqlx::query_as(concat!("SELECT ", link_cols!(), " FROM urls WHERE short_code = $1"))
                    .bind(code)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(classify)
            }

            async fn link_by_id(&self, id: i64) -> Result<Option<Link>, StoreError> {
                sqlx::query_as(concat!("SELECT ", link_cols!(), " FROM urls WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(classify)
            }

            async fn list_links(&self, filter: &LinkFilter, page: Page) -> Result<(Vec<Link>, i64), StoreError> {
                let facet = filter.is_active.map(|a| if a { "active" } else { "inactive" });
                let total = self.list_total("urls", filter.user_id.unwrap_or(0), 0, facet).await?;
                if page.offset() >= total {
                    // Past the end: the exact total says so without a scan.
                    return Ok((Vec::new(), total));
                }
                if page.offset() > Page::MAX_SKIP {
                    return Err(StoreError::PageTooDeep);
                }
                // Deferred join: the page's ids come from an index-only scan
                // of the index that serves the filter, so skipping `offset`
                // rows reads index entries, not table rows; then only the
                // page's rows are fetched.
                let mut q = sqlx::QueryBuilder::<$db>::new(concat!(
                    "SELECT ", link_cols!(), " FROM urls WHERE id IN (SELECT id FROM urls WHERE 1 = 1"
                ));
                if let Some(u) = filter.user_id {
                    q.push(" AND user_id = ").push_bind(u);
                }
                if let Some(a) = filter.is_active {
                    q.push(" AND is_active = ").push_bind(a);
                }
                q.push(" ORDER BY id LIMIT ")
                    .push_bind(page.limit())
                    .push(" OFFSET ")
                    .push_bind(page.offset())
                    .push(") ORDER BY id");
                let rows = q.build_query_as::<Link>().fetch_all(&self.pool).await.map_err(classify)?;
                Ok((rows, total))
            }

            async fn update_link(&self, id: i64, patch: &LinkPatch) -> Result<Link, StoreError> {
                let at = now();
                let mut tx = self.begin_write().await?;
                let old: Link = sqlx::query_as(concat!(
                    "SELECT ", link_cols!(), " FROM urls WHERE id = $1",                     $for_update
                ))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?
                .ok_or(StoreError::NotFound(Entity::Link))?;
                let url = patch.original_url.clone().unwrap_or_else(|| old.original_url.clone());
                let title = patch.title.clone().unwrap_or_else(|| old.title.clone());
                let active = patch.is_active.unwrap_or(old.is_active);
                let mut changes = Vec::new();
                if url != old.original_url {
                    changes.push(changed_event("original_url", json!(old.original_url), json!(url)));
                }
                if title != old.title {
                    changes.push(changed_event("title", json!(old.title), json!(title)));
                }
                if active != old.is_active {
                    changes.push(changed_event("is_active", json!(old.is_active), json!(active)));
                }
                if changes.is_empty() {
                    tx.rollback().await.map_err(classify)?;
                    return Ok(old);
                }
                let link: Link = sqlx::query_as(concat!(
                    "UPDATE urls SET original_url = $2, title = $3, is_active = $4, updated_at = $5 \
                     WHERE id = $1 RETURNING ", link_cols!(), ""
                ))
                .bind(id)
                .bind(&url)
                .bind(&title)
                .bind(active)
                .bind(at)
                .fetch_one(&mut *tx)
                .await
                .map_err(classify)?;
                for details in &changes {
                    insert_event(&mut tx, link.id, link.user_id, "updated", details, at).await?;
                }
                tx.commit().await.map_err(classify)?;
                Ok(link)
            }

            async fn deactivate_link(&self, id: i64, reason: &str) -> Result<Link, StoreError> {
                let at = now();
                let mut tx = self.begin_write().await?;
                let old: Link = sqlx::query_as(concat!(
                    "SELECT ", link_cols!(), " FROM urls WHERE id = $1",                     $for_update
                ))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?
                .ok_or(StoreError::NotFound(Entity::Link))?;
                if !old.is_active {
                    tx.rollback().await.map_err(classify)?;
                    return Ok(old);
                }
                let link: Link = sqlx::query_as(concat!(
                    "UPDATE urls SET is_active = FALSE, updated_at = $2 WHERE id = $1 RETURNING ", link_cols!(), ""
                ))
                .bind(id)
                .bind(at)
                .fetch_one(&mut *tx)
                .await
                .map_err(classify)?;
                insert_event(&mut tx, link.id, link.user_id, "deleted", &json!({"reason": reason}), at).await?;
                tx.commit().await.map_err(classify)?;
                Ok(link)
            }

            async fn create_user(&self, new: &NewUser) -> Result<User, StoreError> {
                sqlx::query_as(concat!(
                    "INSERT INTO users (username, email, created_at) VALUES ($1, $2, $3) RETURNING ", user_cols!(), ""
                ))
                .bind(&new.username)
                .bind(&new.email)
                .bind(now())
                .fetch_one(&self.pool)
                .await
                .map_err(classify)
            }

            async fn user_by_id(&self, id: i64) -> Result<Option<User>, StoreError> {
                sqlx::query_as(concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(classify)
            }

            async fn list_users(&self, page: Page) -> Result<(Vec<User>, i64), StoreError> {
                let total = self.list_total("users", 0, 0, None).await?;
                if page.offset() >= total {
                    return Ok((Vec::new(), total));
                }
                if page.offset() > Page::MAX_SKIP {
                    return Err(StoreError::PageTooDeep);
                }
                let rows = sqlx::query_as(concat!(
                    "SELECT ", user_cols!(), " FROM users WHERE id IN \
                     (SELECT id FROM users ORDER BY id LIMIT $1 OFFSET $2) ORDER BY id"
                ))
                .bind(page.limit())
                .bind(page.offset())
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
                Ok((rows, total))
            }

            async fn update_user(&self, id: i64, patch: &UserPatch) -> Result<User, StoreError> {
                let mut tx = self.begin_write().await?;
                let old: User = sqlx::query_as(concat!(
                    "SELECT ", user_cols!(), " FROM users WHERE id = $1",                     $for_update
                ))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?
                .ok_or(StoreError::NotFound(Entity::User))?;
                let user: User = sqlx::query_as(concat!(
                    "UPDATE users SET username = $2, email = $3 WHERE id = $1 RETURNING ", user_cols!(), ""
                ))
                .bind(id)
                .bind(patch.username.as_ref().unwrap_or(&old.username))
                .bind(patch.email.as_ref().unwrap_or(&old.email))
                .fetch_one(&mut *tx)
                .await
                .map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                Ok(user)
            }

            async fn delete_user(&self, id: i64) -> Result<(), StoreError> {
                let links = self.list_total("urls", id, 0, None).await?;
                if links > 0 {
                    return Err(StoreError::InUse(format!(
                        "user owns {links} links; delete or reassign them first"
                    )));
                }
                // A link created for this user after the count above makes
                // the DELETE fail on the foreign key: answered as InUse too.
                let mut tx = self.begin_write().await?;
                let res = sqlx::query("DELETE FROM users WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await;
                let res = match res {
                    Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
                        return Err(StoreError::InUse("user is referenced by events".into()));
                    }
                    other => other.map_err(classify)?,
                };
                if res.rows_affected() == 0 {
                    return Err(StoreError::NotFound(Entity::User));
                }
                tx.commit().await.map_err(classify)?;
                Ok(())
            }

            async fn create_event(&self, new: &NewEvent) -> Result<Event, StoreError> {
                let mut tx = self.begin_write().await?;
                let url: Option<(i64,)> = sqlx::query_as("SELECT id FROM urls WHERE id = $1")
                    .bind(new.url_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(classify)?;
                if url.is_none() {
                    return Err(StoreError::NotFound(Entity::Url));
                }
                let user: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE id = $1")
                    .bind(new.user_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(classify)?;
                if user.is_none() {
                    return Err(StoreError::NotFound(Entity::User));
                }
                let ev = insert_event(&mut tx, new.url_id, new.user_id, &new.event_type, &new.details, now()).await?;
                tx.commit().await.map_err(classify)?;
                Ok(ev)
            }

            async fn list_events(&self, filter: &EventFilter, page: Page) -> Result<(Vec<Event>, i64), StoreError> {
                fn filtered(head: &str, f: &EventFilter) -> sqlx::QueryBuilder<$db> {
                    let mut q = sqlx::QueryBuilder::<$db>::new(head);
                    q.push(" WHERE 1 = 1");
                    if let Some(u) = f.url_id {
                        q.push(" AND url_id = ").push_bind(u);
                    }
                    if let Some(u) = f.user_id {
                        q.push(" AND user_id = ").push_bind(u);
                    }
                    if let Some(t) = &f.event_type {
                        q.push(" AND event_type = ").push_bind(t.clone());
                    }
                    q
                }
                let total = match (filter.url_id, filter.user_id) {
                    // No counter per (link, user): counted from the index on
                    // url_id, so the cost is bounded by that one link's
                    // events, never by the table (docs/API.md).
                    (Some(_), Some(_)) => filtered("SELECT COUNT(*) FROM events", filter)
                        .build_query_scalar::<i64>()
                        .fetch_one(&self.pool)
                        .await
                        .map_err(classify)?,
                    (url, user) => {
                        self.list_total(
                            "events",
                            user.unwrap_or(0),
                            url.unwrap_or(0),
                            filter.event_type.as_deref(),
                        )
                        .await?
                    }
                };
                if page.offset() >= total {
                    return Ok((Vec::new(), total));
                }
                if page.offset() > Page::MAX_SKIP {
                    return Err(StoreError::PageTooDeep);
                }
                // Deferred join, as in `list_links`.
                let mut q = filtered(
                    concat!("SELECT ", event_cols!(), " FROM events WHERE id IN (SELECT id FROM events"),
                    filter,
                );
                q.push(" ORDER BY id LIMIT ")
                    .push_bind(page.limit())
                    .push(" OFFSET ")
                    .push_bind(page.offset())
                    .push(") ORDER BY id");
                let rows = q.build_query_as::<EventRow>().fetch_all(&self.pool).await.map_err(classify)?;
                Ok((rows.into_iter().map(Event::from).collect(), total))
            }

            async fn record_clicks(&self, clicks: &[NewClick]) -> Result<ClickCounts, StoreError> {
                use std::collections::{BTreeMap, BTreeSet};
                let mut counts = ClickCounts::default();
                if clicks.is_empty() {
                    return Ok(counts);
                }
                // Statements are built per batch size, so they are not kept
                // prepared (`persistent(false)`): varying sizes would churn
                // the connection's statement cache.
                async fn existing(
                    tx: &mut sqlx::Transaction<'static, $db>,
                    table: &str,
                    ids: &BTreeSet<i64>,
                ) -> Result<BTreeSet<i64>, StoreError> {
                    let mut q = sqlx::QueryBuilder::<$db>::new("SELECT id FROM ");
                    q.push(table).push(" WHERE id IN (");
                    let mut list = q.separated(", ");
                    for id in ids {
                        list.push_bind(*id);
                    }
                    q.push(")");
                    let found: Vec<i64> = q
                        .build_query_scalar()
                        .persistent(false)
                        .fetch_all(&mut **tx)
                        .await
                        .map_err(classify)?;
                    Ok(found.into_iter().collect())
                }
                let mut tx = self.begin_write().await?;
                let url_ids: BTreeSet<i64> = clicks.iter().map(|c| c.url_id).collect();
                let user_ids: BTreeSet<i64> = clicks.iter().map(|c| c.user_id).collect();
                let urls = existing(&mut tx, "urls", &url_ids).await?;
                let users = existing(&mut tx, "users", &user_ids).await?;
                let known: Vec<&NewClick> = clicks
                    .iter()
                    .filter(|c| urls.contains(&c.url_id) && users.contains(&c.user_id))
                    .collect();
                counts.unknown_links = (clicks.len() - known.len()) as u32;
                // One INSERT per chunk; ON CONFLICT skips request ids already
                // recorded (also a repeat inside the batch), and RETURNING
                // names exactly the rows inserted.
                let mut per_link: BTreeMap<i64, (i64, chrono::DateTime<chrono::Utc>)> = BTreeMap::new();
                for chunk in known.chunks(CLICK_CHUNK) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO events (url_id, user_id, event_type, timestamp, details, dedupe_key) ",
                    );
                    q.push_values(chunk, |mut row, c| {
                        row.push_bind(c.url_id)
                            .push_bind(c.user_id)
                            .push_bind("click")
                            .push_bind(c.at)
                            .push_bind(Json(&c.details))
                            .push_bind(format!("click:{}", c.request_id));
                    });
                    q.push(" ON CONFLICT (dedupe_key) DO NOTHING RETURNING url_id, timestamp");
                    let inserted: Vec<(i64, chrono::DateTime<chrono::Utc>)> = q
                        .build_query_as()
                        .persistent(false)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(classify)?;
                    counts.recorded += inserted.len() as u32;
                    counts.duplicates += (chunk.len() - inserted.len()) as u32;
                    for (url_id, at) in inserted {
                        let e = per_link.entry(url_id).or_insert((0, at));
                        e.0 += 1;
                        e.1 = e.1.max(at);
                    }
                }
                for (url_id, (n, last)) in per_link {
                    sqlx::query(
                        "INSERT INTO link_clicks (url_id, clicks, last_click_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (url_id) DO UPDATE SET clicks = link_clicks.clicks + EXCLUDED.clicks, \
                         last_click_at = EXCLUDED.last_click_at",
                    )
                    .bind(url_id)
                    .bind(n)
                    .bind(last)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                }
                tx.commit().await.map_err(classify)?;
                Ok(counts)
            }

            async fn click_count(&self, url_id: i64) -> Result<i64, StoreError> {
                let n: Option<(i64,)> = sqlx::query_as("SELECT clicks FROM link_clicks WHERE url_id = $1")
                    .bind(url_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(classify)?;
                Ok(n.map_or(0, |r| r.0))
            }

            async fn compact_list_counts(&self) -> Result<u64, StoreError> {
                self.compact_counts().await
            }

            async fn import(&self, users: &[User], links: &[Link], events: &[Event]) -> Result<ImportCounts, StoreError> {
                let mut counts = ImportCounts::default();
                let mut tx = self.begin_write().await?;
                for u in users {
                    counts.users += sqlx::query(
                        "INSERT INTO users (id, username, email, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    )
                    .bind(u.id)
                    .bind(&u.username)
                    .bind(&u.email)
                    .bind(u.created_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?
                    .rows_affected();
                }
                for l in links {
                    counts.links += sqlx::query(
                        "INSERT INTO urls (id, user_id, short_code, original_url, title, is_active, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                    )
                    .bind(l.id)
                    .bind(l.user_id)
                    .bind(&l.short_code)
                    .bind(&l.original_url)
                    .bind(&l.title)
                    .bind(l.is_active)
                    .bind(l.created_at)
                    .bind(l.updated_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?
                    .rows_affected();
                }
                for e in events {
                    counts.events += sqlx::query(
                        "INSERT INTO events (id, url_id, user_id, event_type, timestamp, details) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    )
                    .bind(e.id)
                    .bind(e.url_id)
                    .bind(e.user_id)
                    .bind(&e.event_type)
                    .bind(e.timestamp)
                    .bind(Json(&e.details))
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?
                    .rows_affected();
                }
                Self::advance_sequences(&mut tx).await?;
                tx.commit().await.map_err(classify)?;
                Ok(counts)
            }
        }

        impl $store {
            /// The exact number of rows of `list` in a scope (0 = any user
            /// or link), of one facet or of all: the sum of the folded
            /// counts and of the deltas not folded yet, read in one
            /// statement so a concurrent fold is seen entirely or not at all.
            async fn list_total(
                &self,
                list: &str,
                user_id: i64,
                url_id: i64,
                facet: Option<&str>,
            ) -> Result<i64, StoreError> {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM (",
                );
                for (i, table) in ["list_counts", "list_count_deltas"].into_iter().enumerate() {
                    if i > 0 {
                        q.push(" UNION ALL ");
                    }
                    q.push("SELECT n FROM ")
                        .push(table)
                        .push(" WHERE list = ")
                        .push_bind(list.to_owned())
                        .push(" AND user_id = ")
                        .push_bind(user_id)
                        .push(" AND url_id = ")
                        .push_bind(url_id);
                    if let Some(f) = facet {
                        q.push(" AND facet = ").push_bind(f.to_owned());
                    }
                }
                q.push(") c");
                q.build_query_scalar()
                    .fetch_one(&self.pool)
                    .await
                    .map_err(classify)
            }
        }

        async fn insert_event(
            tx: &mut sqlx::Transaction<'static, $db>,
            url_id: i64,
            user_id: i64,
            event_type: &str,
            details: &Value,
            at: chrono::DateTime<chrono::Utc>,
        ) -> Result<Event, StoreError> {
            let row: EventRow = sqlx::query_as(concat!(
                "INSERT INTO events (url_id, user_id, event_type, timestamp, details) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING ", event_cols!(), ""
            ))
            .bind(url_id)
            .bind(user_id)
            .bind(event_type)
            .bind(at)
            .bind(Json(details))
            .fetch_one(&mut **tx)
            .await
            .map_err(classify)?;
            Ok(row.into())
        }
    };
}

/// PostgreSQL store (production).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

/// SQLite store (the embedded default).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

mod pg {
    use super::*;
    sql_store!(
        PgStore,
        sqlx::Postgres,
        backend = "postgres",
        for_update = " FOR UPDATE"
    );
}

mod lite {
    use super::*;
    sql_store!(
        SqliteStore,
        sqlx::Sqlite,
        backend = "sqlite",
        for_update = ""
    );
}

impl PgStore {
    /// Connects, with a bounded pool, and applies the migrations. The
    /// migrator takes an advisory lock, so replicas may start together.
    pub async fn connect(cfg: &StoreConfig) -> anyhow::Result<Self> {
        let opts = PgConnectOptions::from_str(&cfg.url)?
            .application_name("shortlink-links")
            .options([("statement_timeout", "10000")]);
        let pool = PgPoolOptions::new()
            .max_connections(cfg.max_connections)
            .acquire_timeout(cfg.acquire_timeout)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.pool.begin().await.map_err(classify)
    }

    /// Folds pending count deltas into `list_counts`, at most
    /// `COMPACT_BATCH` a round, until none are left. Replicas take turns
    /// through a transaction-scoped advisory lock (a replica that finds it
    /// taken skips the round); the fold moves rows in one statement, so a
    /// reader sees every delta either still pending or already folded.
    async fn compact_counts(&self) -> Result<u64, StoreError> {
        /// Advisory lock key of the fold ("links" + "list counts").
        const COMPACT_LOCK: i64 = 0x6c69_6e6b_735f_6c63;
        const COMPACT_BATCH: i64 = 50_000;
        let mut total = 0u64;
        loop {
            let mut tx = self.pool.begin().await.map_err(classify)?;
            let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(COMPACT_LOCK)
                .fetch_one(&mut *tx)
                .await
                .map_err(classify)?;
            if !mine {
                return Ok(total);
            }
            let moved: i64 = sqlx::query_scalar(
                "WITH moved AS ( \
                     DELETE FROM list_count_deltas WHERE ctid = ANY(ARRAY( \
                         SELECT ctid FROM list_count_deltas LIMIT $1)) \
                     RETURNING list, user_id, url_id, facet, n), \
                 folded AS ( \
                     INSERT INTO list_counts AS c (list, user_id, url_id, facet, n) \
                     SELECT list, user_id, url_id, facet, CAST(SUM(n) AS BIGINT) FROM moved \
                     GROUP BY list, user_id, url_id, facet \
                     ON CONFLICT (list, user_id, url_id, facet) DO UPDATE SET n = c.n + EXCLUDED.n) \
                 SELECT COUNT(*) FROM moved",
            )
            .bind(COMPACT_BATCH)
            .fetch_one(&mut *tx)
            .await
            .map_err(classify)?;
            tx.commit().await.map_err(classify)?;
            total += moved as u64;
            if moved < COMPACT_BATCH {
                return Ok(total);
            }
        }
    }

    async fn advance_sequences(
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> Result<(), StoreError> {
        for table in ["users", "urls", "events"] {
            // `table` comes from the fixed list above, never from input.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                 GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table}), 1), \
                 (SELECT COUNT(*) > 0 FROM {table}))"
            )))
            .execute(&mut **tx)
            .await
            .map_err(classify)?;
        }
        Ok(())
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database file in WAL mode with full
    /// synchronous commits, so an acknowledged write survives a crash.
    pub async fn connect(cfg: &StoreConfig) -> anyhow::Result<Self> {
        let opts = SqliteConnectOptions::from_str(&cfg.url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(cfg.max_connections)
            .acquire_timeout(cfg.acquire_timeout)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Write transactions take the write lock up front (`BEGIN IMMEDIATE`),
    /// so a read-then-write never fails with SQLITE_BUSY half-way.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(classify)
    }

    /// Nothing to fold: SQLite's triggers update `list_counts` in place.
    async fn compact_counts(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn advance_sequences(
        _tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    ) -> Result<(), StoreError> {
        // AUTOINCREMENT keys follow MAX(id) by themselves.
        Ok(())
    }
}
