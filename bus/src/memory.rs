//! The in-process backend: one append-only log per topic, committed
//! offsets per group, every group reading every event of its topics, one
//! partition (0).
//!
//! Retention follows the groups. A topic keeps the events that at least one
//! of the groups that ever subscribed to it has not committed yet, and no
//! more than `capacity` of them; with no group subscribed, a published
//! event is numbered and forgotten at once. So a `links` or `edge` process
//! running alone (whose bus nobody reads) holds no events, and in `up` the
//! memory in use is the slowest group's backlog. An event evicted by the
//! capacity bound before a group read it is counted as dropped, once per
//! group that missed it.
//!
//! Events are held as they were published: a typed event is shared (`Arc`)
//! by every group and serialised only if a consumer asks for bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use shortlink_runtime::metrics::Metrics;

use crate::metrics::BusMetrics;
use crate::{Delivery, EventBus, Payload, Subscription};

struct Entry {
    offset: i64,
    key: Option<String>,
    payload: Payload,
    traceparent: Option<String>,
}

#[derive(Default)]
struct TopicLog {
    events: VecDeque<Entry>,
    /// The offset the next event gets.
    next: i64,
    /// Committed offset (next to read) of every group that subscribed.
    groups: HashMap<String, i64>,
}

impl TopicLog {
    fn first(&self) -> i64 {
        self.next - self.events.len() as i64
    }

    /// Forgets the events every group has committed.
    fn trim(&mut self) {
        let keep_from = self.groups.values().copied().min().unwrap_or(self.next);
        while self.events.front().is_some_and(|e| e.offset < keep_from) {
            self.events.pop_front();
        }
    }
}

#[derive(Default)]
struct MemInner {
    topics: HashMap<String, TopicLog>,
    generation: HashMap<String, u64>,
}

/// The in-process bus (see the module documentation).
pub struct MemoryBus {
    inner: Arc<Mutex<MemInner>>,
    notify: Arc<tokio::sync::Notify>,
    capacity: usize,
    metrics: BusMetrics,
}

impl MemoryBus {
    /// A bus whose topics each hold at most `capacity` unconsumed events.
    pub fn new(capacity: usize, metrics: &Metrics) -> Self {
        Self {
            inner: Arc::new(Mutex::new(MemInner::default())),
            notify: Arc::new(tokio::sync::Notify::new()),
            capacity: capacity.max(1),
            metrics: BusMetrics::new(metrics),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Events currently held, over all topics (what retention costs).
    pub fn retained(&self) -> usize {
        self.lock().topics.values().map(|t| t.events.len()).sum()
    }
}

struct MemSubscription {
    inner: Arc<Mutex<MemInner>>,
    notify: Arc<tokio::sync::Notify>,
    group: String,
    generation: u64,
    topics: Vec<String>,
    positions: HashMap<String, i64>,
    metrics: BusMetrics,
}

#[async_trait]
impl Subscription for MemSubscription {
    async fn next(&mut self) -> anyhow::Result<Delivery> {
        loop {
            let notified = self.notify.notified();
            {
                let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                anyhow::ensure!(
                    g.generation.get(&self.group) == Some(&self.generation),
                    "subscription of group {} replaced by a newer one",
                    self.group
                );
                for t in &self.topics {
                    let pos = self.positions.get(t).copied().unwrap_or(0);
                    let Some(log) = g.topics.get(t) else { continue };
                    let first = log.first();
                    if pos < first {
                        // Evicted (capacity) before this group read them.
                        for _ in pos..first {
                            self.metrics.drop_event(t);
                        }
                    }
                    let from = pos.max(first);
                    if from < log.next {
                        let e = &log.events[(from - first) as usize];
                        self.positions.insert(t.clone(), e.offset + 1);
                        return Ok(Delivery {
                            topic: t.clone(),
                            partition: 0,
                            offset: e.offset,
                            key: e.key.clone(),
                            payload: e.payload.clone(),
                            traceparent: e.traceparent.clone(),
                        });
                    }
                }
            }
            notified.await;
        }
    }

    async fn commit(&mut self, d: &Delivery) -> anyhow::Result<()> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(log) = g.topics.get_mut(&d.topic) else {
            return Ok(());
        };
        let c = log.groups.entry(self.group.clone()).or_insert(0);
        *c = (*c).max(d.offset + 1);
        let lag = log.next - *c;
        log.trim();
        drop(g);
        self.metrics
            .lag
            .with_label_values(&[&self.group, &d.topic, "0"])
            .set(lag);
        Ok(())
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn publish_traced(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: Payload,
        traceparent: Option<&str>,
    ) {
        let handle = self.metrics.topic(topic);
        let subscribed = {
            let mut g = self.lock();
            let log = match g.topics.get_mut(topic) {
                Some(l) => l,
                None => g.topics.entry(topic.to_owned()).or_default(),
            };
            let offset = log.next;
            log.next += 1;
            let subscribed = !log.groups.is_empty();
            if subscribed {
                log.events.push_back(Entry {
                    offset,
                    key: key.map(str::to_owned),
                    payload,
                    traceparent: traceparent.map(str::to_owned),
                });
                while log.events.len() > self.capacity {
                    log.events.pop_front();
                }
            }
            subscribed
        };
        handle.published.inc();
        self.metrics.delivered_ok.inc();
        if subscribed {
            self.notify.notify_waiters();
        }
    }

    async fn ensure_topics(&self, topics: &[String]) -> anyhow::Result<()> {
        let mut g = self.lock();
        for t in topics {
            g.topics.entry(t.clone()).or_default();
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> anyhow::Result<Box<dyn Subscription>> {
        let mut g = self.lock();
        let gen_ = g.generation.entry(group.to_owned()).or_insert(0);
        *gen_ += 1;
        let generation = *gen_;
        let mut positions = HashMap::new();
        for t in topics {
            let log = g.topics.entry(t.clone()).or_default();
            // A group new to the topic starts at the oldest event still
            // held (none when nobody was subscribed); a known group at its
            // committed offset.
            let first = log.first();
            let committed = *log.groups.entry(group.to_owned()).or_insert(first);
            positions.insert(t.clone(), committed);
        }
        drop(g);
        self.notify.notify_waiters();
        Ok(Box::new(MemSubscription {
            inner: self.inner.clone(),
            notify: self.notify.clone(),
            group: group.to_owned(),
            generation,
            topics: topics.to_vec(),
            positions,
            metrics: self.metrics.clone(),
        }))
    }

    fn pending(&self) -> usize {
        0
    }

    fn flush(&self, _limit: Duration) {}
}
