//! The abuse state in Redis, shared by every edge and admin, with changes
//! announced on a pub/sub channel. Every call is bounded (`LazyRedis`);
//! failures are returned, never waited out.
//!
//! Keys, under the configured prefix:
//! `bans` (hash key → ban JSON), `strikes:<key>`, `hourbans:<key>`,
//! `rl:<key>` (GCRA theoretical arrival time, microseconds), `limits`
//! (JSON), `enforce` (`1`/`0`), `edges` (hash edge id → announced limits),
//! `restored` (marker), and the channel `changes`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::AsyncCommands;
use shortlink_runtime::redis_conn::LazyRedis;
use shortlink_runtime::shutdown::Shutdown;

use crate::backend::{AbuseBackend, Announced, OnChange, Res, Stored};
use crate::memory::HOUR_BANS_TTL;
use crate::model::{Ban, Change, Limits, Take};

/// One GCRA step (see `gcra.rs`) in one round trip. Time comes from the
/// Redis server's clock, so the edges' clocks need not agree. ARGV: the
/// emission interval and the burst tolerance, in microseconds. The value
/// stored is `tat interval tau`, so that a TAT computed under other limits
/// is carried over (`gcra::rescale`). Returns {allowed, remaining, wait in
/// microseconds}.
const TAKE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local function store(v)
  redis.call('SET', KEYS[1], string.format('%.3f %.17g %.17g', v, interval, tau),
    'PX', math.max(1, math.ceil((v - now) / 1000)))
end
local tat = now
local rescaled = false
local raw = redis.call('GET', KEYS[1])
if raw then
  local a, i, u = string.match(raw, '^(%S+) (%S+) (%S+)$')
  a, i, u = tonumber(a), tonumber(i), tonumber(u)
  if a and i and u and i > 0 then
    tat = a
    if i ~= interval or u ~= tau then
      local used = math.max(0, tat - now) / i
      used = math.max(0, used + tau / interval - u / i)
      tat = now + used * interval
      rescaled = true
    end
  end
end
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - tau - now
if wait > interval * 0.001 then
  if rescaled and tat > now then store(tat) end
  return {0, 0, math.ceil(wait)}
end
store(new_tat)
return {1, math.floor((tau - (new_tat - now)) / interval + 0.000001), 0}
";

/// One strike: count it, start the window at the first, and reset the
/// counter when it reaches the ban threshold, atomically (see
/// `AbuseBackend::strike`). ARGV: window in seconds, threshold.
const STRIKE_LUA: &str = r"
local n = redis.call('INCR', KEYS[1])
if n >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
elseif redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return n
";

/// See the module docs.
pub struct RedisBackend {
    prefix: String,
    redis: LazyRedis,
    take: redis::Script,
    strike: redis::Script,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisBackend {
    /// Validates the URL; connects on first use. Every command is bounded
    /// by `timeout`.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            prefix: prefix.to_owned(),
            redis: LazyRedis::new(url, timeout, "abuse state")?,
            // EVALSHA, loading the script once per Redis lifetime (on
            // NOSCRIPT).
            take: redis::Script::new(TAKE_LUA),
            strike: redis::Script::new(STRIKE_LUA),
        }))
    }

    fn key(&self, k: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + k.len());
        s.push_str(&self.prefix);
        s.push_str(k);
        s
    }

    fn sub_key(&self, kind: &str, k: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + kind.len() + k.len());
        s.push_str(&self.prefix);
        s.push_str(kind);
        s.push_str(k);
        s
    }
}

#[async_trait]
impl AbuseBackend for RedisBackend {
    fn shared(&self) -> bool {
        true
    }

    fn is_up(&self) -> bool {
        self.redis.is_up()
    }

    async fn bans(&self) -> Res<Vec<Ban>> {
        let key = self.key("bans");
        let raw: HashMap<String, String> = self
            .redis
            .run(|mut c| async move { c.hgetall(key).await })
            .await?;
        Ok(raw
            .values()
            .filter_map(|v| serde_json::from_str(v).ok())
            .collect())
    }

    async fn ban(&self, key: &str) -> Res<Option<Ban>> {
        let (hash, field) = (self.key("bans"), key.to_owned());
        let raw: Option<String> = self
            .redis
            .run(|mut c| async move { c.hget(hash, field).await })
            .await?;
        Ok(raw.and_then(|v| serde_json::from_str(&v).ok()))
    }

    async fn write_ban(&self, ban: &Ban) -> Res<()> {
        let (hash, field) = (self.key("bans"), ban.ip.clone());
        let val = serde_json::to_string(ban).unwrap_or_default();
        Ok(self
            .redis
            .run(|mut c| async move { c.hset::<_, _, _, ()>(hash, field, val).await })
            .await?)
    }

    async fn remove_ban(&self, key: &str) -> Res<()> {
        let (hash, field) = (self.key("bans"), key.to_owned());
        Ok(self
            .redis
            .run(|mut c| async move { c.hdel::<_, _, ()>(hash, field).await })
            .await?)
    }

    async fn strike(&self, key: &str, window: Duration, ban_at: u32) -> Res<u32> {
        let key = self.sub_key("strikes:", key);
        let secs = window.as_secs().max(1);
        let script = &self.strike;
        Ok(self
            .redis
            .run(|mut c| async move {
                script
                    .key(key)
                    .arg(secs)
                    .arg(ban_at)
                    .invoke_async(&mut c)
                    .await
            })
            .await?)
    }

    async fn strikes(&self, key: &str) -> Res<u32> {
        let key = self.sub_key("strikes:", key);
        let n: Option<u32> = self
            .redis
            .run(|mut c| async move { c.get(key).await })
            .await?;
        Ok(n.unwrap_or(0))
    }

    async fn clear_strikes(&self, key: &str) -> Res<()> {
        let key = self.sub_key("strikes:", key);
        Ok(self
            .redis
            .run(|mut c| async move { c.del::<_, ()>(key).await })
            .await?)
    }

    async fn add_hour_ban(&self, key: &str) -> Res<u32> {
        let key = self.sub_key("hourbans:", key);
        Ok(self
            .redis
            .run(|mut c| async move {
                let (n, _): (u32, bool) = redis::pipe()
                    .atomic()
                    .incr(&key, 1)
                    .expire(&key, HOUR_BANS_TTL.as_secs() as i64)
                    .query_async(&mut c)
                    .await?;
                Ok(n)
            })
            .await?)
    }

    async fn take(&self, key: &str, limits: &Limits) -> Res<Take> {
        let key = self.sub_key("rl:", key);
        let interval_us = 1e6 / limits.rps;
        let tau_us = limits.burst * interval_us;
        let script = &self.take;
        let (allowed, remaining, wait_us): (i64, i64, i64) = self
            .redis
            .run(|mut c| async move {
                script
                    .key(key)
                    .arg(interval_us)
                    .arg(tau_us)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(Take {
            allowed: allowed == 1,
            remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
            retry_after_s: if allowed == 1 {
                0
            } else {
                (wait_us.max(0) as u64).div_ceil(1_000_000).max(1)
            },
        })
    }

    async fn stored(&self) -> Res<Stored> {
        let keys = [self.key("limits"), self.key("enforce")];
        let (limits, enforce): (Option<String>, Option<String>) = self
            .redis
            .run(|mut c| async move { c.mget(&keys).await })
            .await?;
        Ok(Stored {
            limits: limits.and_then(|v| serde_json::from_str(&v).ok()),
            enforce: enforce.map(|v| v == "1"),
        })
    }

    async fn write_limits(&self, limits: &Limits) -> Res<()> {
        let (lk, ek) = (self.key("limits"), self.key("enforce"));
        let val = serde_json::to_string(limits).unwrap_or_default();
        let enforce = if limits.enforce { "1" } else { "0" };
        Ok(self
            .redis
            .run(|mut c| async move {
                redis::pipe()
                    .atomic()
                    .set(&lk, val)
                    .ignore()
                    .set(&ek, enforce)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?)
    }

    async fn write_enforce(&self, enforce: bool) -> Res<()> {
        let key = self.key("enforce");
        let v = if enforce { "1" } else { "0" };
        Ok(self
            .redis
            .run(|mut c| async move { c.set::<_, _, ()>(key, v).await })
            .await?)
    }

    async fn announce(&self, a: &Announced) -> Res<()> {
        let (hash, field) = (self.key("edges"), a.edge.clone());
        let val = serde_json::to_string(a).unwrap_or_default();
        Ok(self
            .redis
            .run(|mut c| async move { c.hset::<_, _, _, ()>(hash, field, val).await })
            .await?)
    }

    async fn announced(&self) -> Res<Vec<Announced>> {
        let key = self.key("edges");
        let raw: HashMap<String, String> = self
            .redis
            .run(|mut c| async move { c.hgetall(key).await })
            .await?;
        Ok(raw
            .values()
            .filter_map(|v| serde_json::from_str(v).ok())
            .collect())
    }

    async fn intact(&self) -> Res<bool> {
        let key = self.key("restored");
        let marker: Option<String> = self
            .redis
            .run(|mut c| async move { c.get(key).await })
            .await?;
        Ok(marker.is_some())
    }

    async fn mark_intact(&self) -> Res<()> {
        let key = self.key("restored");
        Ok(self
            .redis
            .run(|mut c| async move { c.set::<_, _, ()>(key, "1").await })
            .await?)
    }

    async fn publish(&self, change: &Change) -> Res<()> {
        let (ch, msg) = (self.key("changes"), change.encode());
        Ok(self
            .redis
            .run(|mut c| async move { c.publish::<_, _, ()>(ch, msg).await })
            .await?)
    }

    fn listen(&self, shutdown: Shutdown, on_change: OnChange) {
        let client = self.redis.client().clone();
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
