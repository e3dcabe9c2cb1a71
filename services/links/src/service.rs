//! The links service's behaviour, independent of gRPC: validation, short
//! code generation, read-through caching with negative entries and
//! invalidation, and the circuit breaker around every database call.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};
use rand::Rng;
use shortlink_runtime::breaker::{BreakerConfig, BreakerError, CircuitBreaker, State};
use shortlink_runtime::metrics::Metrics;

use crate::cache::{Cache, Cached};
use crate::error::ServiceError;
use crate::model::{
    Event, EventFilter, Link, LinkFilter, LinkPatch, NewEvent, NewLink, NewUser, Page, Target,
    User, UserPatch,
};
use crate::store::{Entity, LinkStore, StoreError};
use crate::validate;

/// How resolution results are cached.
#[derive(Clone, Copy, Debug)]
pub struct CachePolicy {
    /// Lifetime of a positive entry.
    pub ttl: Duration,
    /// Lifetime of a negative ("no such code") entry.
    pub negative_ttl: Duration,
    /// Second invalidation after a change, to evict a stale value that a
    /// concurrent resolution read before the change committed and wrote
    /// after the first invalidation.
    pub reinvalidate_after: Duration,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
            reinvalidate_after: Duration::from_millis(500),
        }
    }
}

/// The outcome of a resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub target: Target,
    pub cached: bool,
}

#[derive(Clone)]
struct CoreMetrics {
    cache: IntCounterVec,
    breaker_state: IntGauge,
    breaker_transitions: IntCounterVec,
}

/// Where link events (created, updated, deleted) are published.
#[derive(Clone)]
pub struct EventSink {
    pub bus: Arc<dyn shortlink_bus::EventBus>,
    pub topic: String,
    pub source: String,
}

/// See the module docs.
pub struct LinksCore {
    events: Option<EventSink>,
    store: Arc<dyn LinkStore>,
    cache: Arc<dyn Cache>,
    breaker: Arc<CircuitBreaker>,
    policy: CachePolicy,
    metrics: CoreMetrics,
}

impl std::fmt::Debug for LinksCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinksCore")
            .field("store", &self.store.backend())
            .field("cache", &self.cache.backend())
            .finish()
    }
}

/// Attempts at a fresh random code before giving up.
const CODE_ATTEMPTS: usize = 8;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A random 6-character `[A-Za-z0-9]` code.
pub fn random_code() -> String {
    let mut rng = rand::rng();
    (0..validate::GENERATED_CODE_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl LinksCore {
    /// Wires the core and registers its metrics (cache results, breaker
    /// state and transitions, pool usage).
    pub fn new(
        store: Arc<dyn LinkStore>,
        cache: Arc<dyn Cache>,
        breaker: BreakerConfig,
        policy: CachePolicy,
        metrics: &Metrics,
        events: Option<EventSink>,
    ) -> Arc<Self> {
        let m = CoreMetrics {
            cache: metrics.register(
                IntCounterVec::new(
                    Opts::new(
                        "cache_requests_total",
                        "Resolution cache lookups by result: hit, negative_hit, miss, error.",
                    ),
                    &["result"],
                )
                .expect("valid metric"),
            ),
            breaker_state: metrics.register(
                IntGauge::new(
                    "db_breaker_state",
                    "Database circuit breaker: 0 closed, 1 open, 2 half-open.",
                )
                .expect("valid metric"),
            ),
            breaker_transitions: metrics.register(
                IntCounterVec::new(
                    Opts::new(
                        "db_breaker_transitions_total",
                        "Database circuit breaker state changes.",
                    ),
                    &["from", "to"],
                )
                .expect("valid metric"),
            ),
        };
        let pool = metrics.register(
            IntGaugeVec::new(
                Opts::new(
                    "db_pool_connections",
                    "Database pool connections by state (in_use, idle, max).",
                ),
                &["state"],
            )
            .expect("valid metric"),
        );
        let (state_gauge, transitions) = (m.breaker_state.clone(), m.breaker_transitions.clone());
        let breaker = Arc::new(CircuitBreaker::new(breaker).with_listener(move |from, to| {
            state_gauge.set(to.as_gauge());
            transitions
                .with_label_values(&[from.as_str(), to.as_str()])
                .inc();
        }));
        {
            let store = store.clone();
            let breaker = breaker.clone();
            let state = m.breaker_state.clone();
            metrics.on_scrape(move || {
                let s = store.pool_stats();
                pool.with_label_values(&["in_use"])
                    .set(i64::from(s.size.saturating_sub(s.idle)));
                pool.with_label_values(&["idle"]).set(i64::from(s.idle));
                pool.with_label_values(&["max"]).set(i64::from(s.max));
                state.set(breaker.state().as_gauge());
            });
        }
        Arc::new(Self {
            events,
            store,
            cache,
            breaker,
            policy,
            metrics: m,
        })
    }

    /// Waits up to `limit` for queued events to reach the broker.
    pub async fn flush_events(&self, limit: Duration) {
        if let Some(s) = &self.events {
            let bus = s.bus.clone();
            // librdkafka's flush blocks; keep it off the async workers.
            let _ = tokio::task::spawn_blocking(move || bus.flush(limit)).await;
        }
    }

    /// The store (for health checks and shutdown).
    pub fn store(&self) -> &Arc<dyn LinkStore> {
        &self.store
    }

    /// The cache (for health checks).
    pub fn cache(&self) -> &Arc<dyn Cache> {
        &self.cache
    }

    /// The breaker's current state.
    pub fn breaker_state(&self) -> State {
        self.breaker.state()
    }

    /// Runs a database call under the breaker.
    /// Runs one store call (`op`, the store method: one statement or one
    /// transaction) through the breaker, in its own client span.
    async fn db<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ServiceError> {
        let span = shortlink_runtime::telemetry::client_span(self.store.backend(), op);
        match tracing::Instrument::instrument(self.breaker.call(fut, StoreError::is_outage), span)
            .await
        {
            Ok(v) => Ok(v),
            Err(BreakerError::Open) => Err(ServiceError::Unavailable(
                "circuit breaker open after repeated database failures; try again shortly".into(),
            )),
            Err(BreakerError::Inner(e)) => Err(e.into()),
        }
    }

    /// Pings the database through the breaker: the health loop's probe, so
    /// an open breaker recovers even when no traffic arrives.
    /// A probe that does not answer within `limit` counts as a failure.
    pub async fn probe_database(&self, limit: Duration) -> Result<(), ServiceError> {
        let ping = async {
            tokio::time::timeout(limit, self.store.ping())
                .await
                .unwrap_or(Err(StoreError::Timeout))
        };
        self.db("ping", ping).await
    }

    async fn cache_get(&self, code: &str) -> Option<Cached> {
        let span = shortlink_runtime::telemetry::client_span(self.cache.backend(), "get");
        let (result, v) = match tracing::Instrument::instrument(self.cache.get(code), span).await {
            Ok(Some(v @ Cached::Found(_))) => ("hit", Some(v)),
            Ok(Some(Cached::Missing)) => ("negative_hit", Some(Cached::Missing)),
            Ok(None) => ("miss", None),
            Err(_) => ("error", None),
        };
        self.metrics.cache.with_label_values(&[result]).inc();
        v
    }

    async fn cache_put(&self, code: &str, v: &Cached) {
        let ttl = match v {
            Cached::Found(_) => self.policy.ttl,
            Cached::Missing => self.policy.negative_ttl,
        };
        // A failed write only costs a later miss.
        let span = shortlink_runtime::telemetry::client_span(self.cache.backend(), "put");
        let _ = tracing::Instrument::instrument(self.cache.put(code, v, ttl), span).await;
    }

    /// Drops the cached entry now and once more shortly after (see
    /// `CachePolicy::reinvalidate_after`).
    fn invalidate(&self, code: &str) -> impl Future<Output = ()> + Send + 'static {
        self.invalidate_with(code, false)
    }

    /// After a create, the second deletion removes only a negative entry:
    /// the race it guards against can only have cached "no such code", and
    /// a positive entry written by a resolution in the first 500 ms must
    /// stay (deleting it left a link resolved only then uncached, so it
    /// failed while the database was down; found by the kill matrix).
    fn invalidate_created(&self, code: &str) -> impl Future<Output = ()> + Send + 'static {
        self.invalidate_with(code, true)
    }

    fn invalidate_with(
        &self,
        code: &str,
        only_missing_later: bool,
    ) -> impl Future<Output = ()> + Send + 'static {
        let cache = self.cache.clone();
        let code = code.to_owned();
        let later = self.policy.reinvalidate_after;
        async move {
            if let Err(e) = cache.invalidate(&code).await {
                tracing::warn!(error = %e, "cache invalidation failed; entry expires with its TTL");
            }
            tokio::spawn(async move {
                tokio::time::sleep(later).await;
                let _ = if only_missing_later {
                    cache.invalidate_missing(&code).await
                } else {
                    cache.invalidate(&code).await
                };
            });
        }
    }

    /// Publishes a link event after the change committed (never blocks).
    fn emit(&self, kind: &str, link: &Link) {
        let Some(sink) = &self.events else { return };
        let ev = shortlink_proto::events::LinkEvent {
            schema_version: shortlink_proto::events::SCHEMA_VERSION,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            kind: kind.to_owned(),
            link_id: link.id,
            user_id: link.user_id,
            short_code: link.short_code.clone(),
            source: sink.source.clone(),
            ..Default::default()
        };
        let key = link.id.to_string();
        let tp = shortlink_runtime::telemetry::current_traceparent();
        sink.bus
            .publish_traced(&sink.topic, Some(&key), ev.into(), tp.as_deref());
    }

    /// Creates a link; see `CreateLinkRequest` for the rules.
    pub async fn create_link(
        &self,
        original_url: &str,
        user_id: i64,
        title: Option<&str>,
        short_code: Option<&str>,
    ) -> Result<Link, ServiceError> {
        let original_url = validate::original_url(original_url)?;
        let user_id = validate::id("user_id", user_id)?;
        let title = validate::title(title)?;
        let custom = short_code
            .filter(|c| !c.is_empty())
            .map(validate::custom_code)
            .transpose()?;
        let link = match custom {
            Some(code) => {
                let new = NewLink {
                    user_id,
                    short_code: code.clone(),
                    original_url,
                    title,
                };
                self.db("create_link", self.store.create_link(&new))
                    .await
                    .map_err(|e| match e {
                        ServiceError::AlreadyExists(_) => ServiceError::AlreadyExists(format!(
                            "short_code {code:?} is already taken"
                        )),
                        other => other,
                    })?
            }
            None => {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let new = NewLink {
                        user_id,
                        short_code: random_code(),
                        original_url: original_url.clone(),
                        title: title.clone(),
                    };
                    match self.db("create_link", self.store.create_link(&new)).await {
                        Err(ServiceError::AlreadyExists(_)) if attempt < CODE_ATTEMPTS => {
                            tracing::info!(attempt, "generated short code collided; retrying");
                        }
                        Err(ServiceError::AlreadyExists(_)) => {
                            return Err(ServiceError::Internal(anyhow::anyhow!(
                                "no free short code after {CODE_ATTEMPTS} attempts"
                            )));
                        }
                        other => break other?,
                    }
                }
            }
        };
        // A negative entry may exist for a custom code resolved before.
        self.invalidate_created(&link.short_code).await;
        self.emit("created", &link);
        Ok(link)
    }

    /// Resolves a code: cache first, then the database (through the
    /// breaker), caching what it finds, including "no such code".
    pub async fn resolve(&self, code: &str) -> Result<Resolved, ServiceError> {
        let code = validate::lookup_code(code)?;
        let (target, cached) = match self.cache_get(code).await {
            Some(Cached::Found(t)) => (t, true),
            Some(Cached::Missing) => return Err(ServiceError::NotFound(Entity::Link)),
            None => match self
                .db("link_by_code", self.store.link_by_code(code))
                .await?
            {
                Some(link) => {
                    let t = Target::from(&link);
                    self.cache_put(code, &Cached::Found(t.clone())).await;
                    (t, false)
                }
                None => {
                    self.cache_put(code, &Cached::Missing).await;
                    return Err(ServiceError::NotFound(Entity::Link));
                }
            },
        };
        if !target.is_active {
            return Err(ServiceError::FailedPrecondition(
                "link is deactivated".into(),
            ));
        }
        Ok(Resolved { target, cached })
    }

    pub async fn get_link(&self, id: i64) -> Result<Link, ServiceError> {
        let id = validate::id("id", id)?;
        self.db("link_by_id", self.store.link_by_id(id))
            .await?
            .ok_or(ServiceError::NotFound(Entity::Link))
    }

    pub async fn list_links(
        &self,
        filter: LinkFilter,
        page: Page,
    ) -> Result<(Vec<Link>, i64), ServiceError> {
        self.db("list_links", self.store.list_links(&filter, page))
            .await
    }

    /// Applies a change; at least one field must be given.
    pub async fn update_link(
        &self,
        id: i64,
        original_url: Option<&str>,
        title: Option<&str>,
        is_active: Option<bool>,
    ) -> Result<Link, ServiceError> {
        let id = validate::id("id", id)?;
        if original_url.is_none() && title.is_none() && is_active.is_none() {
            return Err(ServiceError::InvalidArgument(
                "nothing to update: give original_url, title or is_active".into(),
            ));
        }
        let patch = LinkPatch {
            original_url: original_url.map(validate::original_url).transpose()?,
            title: title.map(|t| validate::title(Some(t))).transpose()?,
            is_active,
        };
        let link = self
            .db("update_link", self.store.update_link(id, &patch))
            .await?;
        self.invalidate(&link.short_code).await;
        self.emit("updated", &link);
        Ok(link)
    }

    /// Soft delete.
    pub async fn delete_link(&self, id: i64) -> Result<Link, ServiceError> {
        let id = validate::id("id", id)?;
        let link = self
            .db(
                "deactivate_link",
                self.store.deactivate_link(id, "user_requested"),
            )
            .await?;
        self.invalidate(&link.short_code).await;
        self.emit("deleted", &link);
        Ok(link)
    }

    pub async fn create_user(&self, username: &str, email: &str) -> Result<User, ServiceError> {
        let new = NewUser {
            username: validate::username(username)?,
            email: validate::email(email)?,
        };
        self.db("create_user", self.store.create_user(&new)).await
    }

    pub async fn get_user(&self, id: i64) -> Result<User, ServiceError> {
        let id = validate::id("id", id)?;
        self.db("user_by_id", self.store.user_by_id(id))
            .await?
            .ok_or(ServiceError::NotFound(Entity::User))
    }

    pub async fn list_users(&self, page: Page) -> Result<(Vec<User>, i64), ServiceError> {
        self.db("list_users", self.store.list_users(page)).await
    }

    pub async fn update_user(
        &self,
        id: i64,
        username: Option<&str>,
        email: Option<&str>,
    ) -> Result<User, ServiceError> {
        let id = validate::id("id", id)?;
        if username.is_none() && email.is_none() {
            return Err(ServiceError::InvalidArgument(
                "nothing to update: give username or email".into(),
            ));
        }
        let patch = UserPatch {
            username: username.map(validate::username).transpose()?,
            email: email.map(validate::email).transpose()?,
        };
        self.db("update_user", self.store.update_user(id, &patch))
            .await
    }

    pub async fn delete_user(&self, id: i64) -> Result<(), ServiceError> {
        let id = validate::id("id", id)?;
        self.db("delete_user", self.store.delete_user(id)).await
    }

    pub async fn create_event(
        &self,
        url_id: i64,
        user_id: i64,
        event_type: &str,
        details: serde_json::Value,
    ) -> Result<Event, ServiceError> {
        let new = NewEvent {
            url_id: validate::id("url_id", url_id)?,
            user_id: validate::id("user_id", user_id)?,
            event_type: validate::event_type(event_type)?,
            details: validate::details(details)?,
        };
        self.db("create_event", self.store.create_event(&new)).await
    }

    /// Records a batch of clicks idempotently.
    pub async fn record_clicks(
        &self,
        clicks: Vec<crate::model::NewClick>,
    ) -> Result<crate::model::ClickCounts, ServiceError> {
        if clicks.len() > 5000 {
            return Err(ServiceError::InvalidArgument(
                "at most 5000 clicks per call".into(),
            ));
        }
        for c in &clicks {
            validate::id("url_id", c.url_id)?;
            if c.request_id.is_empty() || c.request_id.len() > 128 {
                return Err(ServiceError::InvalidArgument(
                    "request_id is required (at most 128 characters)".into(),
                ));
            }
        }
        self.db("record_clicks", self.store.record_clicks(&clicks))
            .await
    }

    /// Clicks recorded for a link.
    pub async fn click_count(&self, url_id: i64) -> Result<i64, ServiceError> {
        self.db("click_count", self.store.click_count(url_id)).await
    }

    pub async fn list_events(
        &self,
        filter: EventFilter,
        page: Page,
    ) -> Result<(Vec<Event>, i64), ServiceError> {
        self.db("list_events", self.store.list_events(&filter, page))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_codes_are_six_alphanumerics() {
        for _ in 0..1000 {
            let c = random_code();
            assert_eq!(c.len(), 6);
            assert!(c.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
    }
}
