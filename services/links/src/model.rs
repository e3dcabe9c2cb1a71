//! Domain types of the links service, independent of the wire format and of
//! the storage backend.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A short link (a row of `urls`).
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct Link {
    pub id: i64,
    pub user_id: i64,
    pub short_code: String,
    pub original_url: String,
    pub title: Option<String>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A user (a row of `users`).
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub created_at: DateTime<Utc>,
}

/// An event (a row of `events`). `details` is always a JSON object.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: i64,
    pub url_id: i64,
    pub user_id: i64,
    pub event_type: String,
    pub timestamp: DateTime<Utc>,
    pub details: Value,
}

/// A validated request to create a link; `short_code` is always set (the
/// service generates one when the client gave none).
#[derive(Clone, Debug)]
pub struct NewLink {
    pub user_id: i64,
    pub short_code: String,
    pub original_url: String,
    pub title: Option<String>,
}

/// A validated change to a link. `title: Some(None)` clears the title.
#[derive(Clone, Debug, Default)]
pub struct LinkPatch {
    pub original_url: Option<String>,
    pub title: Option<Option<String>>,
    pub is_active: Option<bool>,
}

/// A validated change to a user.
#[derive(Clone, Debug, Default)]
pub struct UserPatch {
    pub username: Option<String>,
    pub email: Option<String>,
}

/// A validated new user.
#[derive(Clone, Debug)]
pub struct NewUser {
    pub username: String,
    pub email: String,
}

/// A validated new event.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub url_id: i64,
    pub user_id: i64,
    pub event_type: String,
    pub details: Value,
}

/// A click to record (from the analytics consumer).
#[derive(Clone, Debug)]
pub struct NewClick {
    pub url_id: i64,
    pub user_id: i64,
    pub request_id: String,
    pub details: Value,
    pub at: DateTime<Utc>,
}

/// What a click batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClickCounts {
    pub recorded: u32,
    pub duplicates: u32,
    pub unknown_links: u32,
}

/// Filters of a link listing, combined with AND.
#[derive(Clone, Debug, Default)]
pub struct LinkFilter {
    pub user_id: Option<i64>,
    pub is_active: Option<bool>,
}

/// Filters of an event listing, combined with AND.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub url_id: Option<i64>,
    pub user_id: Option<i64>,
    pub event_type: Option<String>,
}

/// An effective page: 1-based page number and page size (1..=100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub page: u32,
    pub per_page: u32,
}

impl Page {
    /// Default page size when the client gives none.
    pub const DEFAULT_PER_PAGE: u32 = 20;
    /// Largest page size; larger requests are clamped.
    pub const MAX_PER_PAGE: u32 = 100;
    /// Most matching rows a listing skips to reach its page. Skipping
    /// reads index entries (see `store::sql`), so its cost grows with the
    /// offset; past this bound a page is refused instead of running for
    /// seconds (docs/API.md, D52). Pages that start past the end are not
    /// affected: they answer at once with no rows.
    pub const MAX_SKIP: i64 = 1_000_000;

    /// Applies the defaults and the clamp.
    pub fn new(page: u32, per_page: u32) -> Self {
        Self {
            page: page.max(1),
            per_page: match per_page {
                0 => Self::DEFAULT_PER_PAGE,
                n => n.min(Self::MAX_PER_PAGE),
            },
        }
    }

    /// Rows to skip.
    pub fn offset(&self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.per_page)
    }

    /// Rows to return.
    pub fn limit(&self) -> i64 {
        i64::from(self.per_page)
    }
}

/// What resolution needs of a link; this is what the cache stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub link_id: i64,
    pub user_id: i64,
    pub original_url: String,
    pub is_active: bool,
}

impl From<&Link> for Target {
    fn from(l: &Link) -> Self {
        Self {
            link_id: l.id,
            user_id: l.user_id,
            original_url: l.original_url.clone(),
            is_active: l.is_active,
        }
    }
}

/// Now, truncated to microseconds so that PostgreSQL and SQLite return
/// exactly what was written.
pub fn now() -> DateTime<Utc> {
    let n = Utc::now();
    DateTime::from_timestamp_micros(n.timestamp_micros()).unwrap_or(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_defaults_and_clamps() {
        assert_eq!(
            Page::new(0, 0),
            Page {
                page: 1,
                per_page: 20
            }
        );
        assert_eq!(
            Page::new(3, 500),
            Page {
                page: 3,
                per_page: 100
            }
        );
        assert_eq!(Page::new(3, 10).offset(), 20);
    }
}
