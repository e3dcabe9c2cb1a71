//! A lazily made, self-healing Redis connection with a bound on every
//! command. Redis being down (at start or later) costs a timeout and an
//! error value, never a hang or a panic; reconnection is attempted at most
//! once a second.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

/// A failed Redis operation.
#[derive(Debug, thiserror::Error)]
#[error("redis unavailable: {0}")]
pub struct RedisError(pub String);

/// See the module docs.
pub struct LazyRedis {
    client: redis::Client,
    timeout: Duration,
    what: &'static str,
    conn: tokio::sync::RwLock<Option<ConnectionManager>>,
    last_attempt: Mutex<Option<Instant>>,
    up: AtomicBool,
}

impl std::fmt::Debug for LazyRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyRedis")
            .field("what", &self.what)
            .finish()
    }
}

impl LazyRedis {
    /// Validates the URL; connects on first use. `what` names the user in
    /// logs ("cache", "abuse state").
    pub fn new(url: &str, timeout: Duration, what: &'static str) -> anyhow::Result<Self> {
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("invalid REDIS_URL: {e}"))?;
        Ok(Self {
            client,
            timeout,
            what,
            conn: tokio::sync::RwLock::new(None),
            last_attempt: Mutex::new(None),
            up: AtomicBool::new(true),
        })
    }

    /// The client, for pub/sub connections.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Whether the last operation succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    async fn conn(&self) -> Result<ConnectionManager, RedisError> {
        if let Some(c) = self.conn.read().await.as_ref() {
            return Ok(c.clone());
        }
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Err(RedisError("not connected".into()));
            }
            *last = Some(Instant::now());
        }
        let mut slot = self.conn.write().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let fut = ConnectionManager::new_with_config(self.client.clone(), config);
        match tokio::time::timeout(self.timeout * 2, fut).await {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => Err(self.failed(e.to_string())),
            Err(_) => Err(self.failed("connect timed out".into())),
        }
    }

    fn failed(&self, msg: String) -> RedisError {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %msg, what = self.what, "redis unavailable; degrading");
        }
        RedisError(msg)
    }

    /// Runs one operation with the configured bound.
    pub async fn run<T, F>(&self, f: impl FnOnce(ConnectionManager) -> F) -> Result<T, RedisError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let c = self.conn().await?;
        match tokio::time::timeout(self.timeout, f(c)).await {
            Ok(Ok(v)) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(what = self.what, "redis available again");
                }
                Ok(v)
            }
            Ok(Err(e)) => Err(self.failed(e.to_string())),
            Err(_) => Err(self.failed("command timed out".into())),
        }
    }
}
