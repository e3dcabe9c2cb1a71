//! The event bus behind one trait, `EventBus`: Kafka through rdkafka when
//! `KAFKA_BROKERS` is set, otherwise an in-process bus with the same
//! semantics (named topics, consumer groups that each get every event, one
//! subscription per group, offsets committed after processing so a
//! restarted consumer resumes where it left off).
//!
//! Publishing never blocks the caller and never fails it: events go into a
//! bounded local queue (librdkafka's, for Kafka) and wait there while the
//! broker is unreachable; what does not fit is counted in
//! `shortlink_bus_events_dropped_total` and logged once per interval.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus::{IntCounterVec, IntGauge, Opts};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Names of the pipeline's topics.
#[derive(Clone, Debug)]
pub struct Topics {
    pub requests: String,
    pub links: String,
    pub logs: String,
}

impl Topics {
    /// `<prefix>requests`, `<prefix>link-events`, `<prefix>logs`.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            requests: format!("{prefix}requests"),
            links: format!("{prefix}link-events"),
            logs: format!("{prefix}logs"),
        }
    }

    pub fn all(&self) -> Vec<String> {
        vec![self.requests.clone(), self.links.clone(), self.logs.clone()]
    }
}

/// Bus settings shared by every component.
#[derive(Clone, Debug, clap::Args)]
pub struct BusArgs {
    /// Kafka bootstrap servers (host:port,...). Unset: the in-process bus.
    #[arg(long = "kafka-brokers", env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Prefix of the topic names.
    #[arg(
        long = "topic-prefix",
        env = "KAFKA_TOPIC_PREFIX",
        default_value = "shortlink."
    )]
    pub topic_prefix: String,
    /// Partitions of each topic, when this component creates it.
    #[arg(
        long = "topic-partitions",
        env = "KAFKA_TOPIC_PARTITIONS",
        default_value_t = 3
    )]
    pub topic_partitions: i32,
    /// Most events per produced batch. 1 keeps every event in its own
    /// record batch, which brokers that cannot serve a fetch starting in the
    /// middle of a batch (tansu 0.6) need for consumers to resume at their
    /// committed offset; Apache Kafka can take 10000.
    #[arg(
        long = "producer-batch",
        env = "KAFKA_PRODUCER_BATCH",
        default_value_t = 1
    )]
    pub producer_batch: usize,
    /// Events the local producer queue holds while the broker is away.
    #[arg(
        long = "producer-queue",
        env = "KAFKA_PRODUCER_QUEUE",
        default_value_t = 100_000
    )]
    pub producer_queue: usize,
}

/// One consumed event.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
}

/// A group's subscription.
#[async_trait]
pub trait Subscription: Send {
    /// The next event (waits for one).
    async fn next(&mut self) -> anyhow::Result<Delivery>;
    /// Marks `d` (and everything before it in its partition) processed.
    async fn commit(&mut self, d: &Delivery) -> anyhow::Result<()>;
}

/// The bus.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// "kafka" or "memory".
    fn backend(&self) -> &'static str;
    /// Queues an event; never blocks, never fails (overflow is counted).
    fn publish(&self, topic: &str, key: Option<&str>, payload: Vec<u8>);
    /// Creates the topics with the configured partitions (existing ones
    /// are left alone).
    async fn ensure_topics(&self, topics: &[String]) -> anyhow::Result<()>;
    /// Subscribes `group` to `topics`, resuming from its committed offsets.
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> anyhow::Result<Box<dyn Subscription>>;
    /// Events queued locally and not yet acknowledged by the broker.
    fn pending(&self) -> usize;
    /// Waits up to `limit` for queued events to be delivered.
    fn flush(&self, limit: Duration);
}

/// Publishes `event` as JSON (the wire form).
pub fn publish_json<T: serde::Serialize>(
    bus: &dyn EventBus,
    topic: &str,
    key: Option<&str>,
    event: &T,
) {
    match serde_json::to_vec(event) {
        Ok(b) => bus.publish(topic, key, b),
        Err(e) => tracing::error!(error = %e, "event not serialisable"),
    }
}

#[derive(Clone)]
struct BusMetrics {
    published: IntCounterVec,
    dropped: IntCounterVec,
    delivered: IntCounterVec,
    pending: IntGauge,
    last_drop_log: Arc<Mutex<Option<Instant>>>,
    dropped_since_log: Arc<AtomicU64>,
}

impl BusMetrics {
    fn new(m: &Metrics) -> Self {
        Self {
            published: m.register(
                IntCounterVec::new(
                    Opts::new(
                        "bus_events_published_total",
                        "Events queued for publishing, by topic.",
                    ),
                    &["topic"],
                )
                .expect("valid metric"),
            ),
            dropped: m.register(
                IntCounterVec::new(
                    Opts::new(
                        "bus_events_dropped_total",
                        "Events dropped because the local queue was full, by topic.",
                    ),
                    &["topic"],
                )
                .expect("valid metric"),
            ),
            delivered: m.register(
                IntCounterVec::new(
                    Opts::new(
                        "bus_events_delivered_total",
                        "Events acknowledged by the broker, by result.",
                    ),
                    &["result"],
                )
                .expect("valid metric"),
            ),
            pending: m.register(
                IntGauge::new(
                    "bus_events_pending",
                    "Events queued locally, not yet acknowledged.",
                )
                .expect("valid metric"),
            ),
            last_drop_log: Arc::new(Mutex::new(None)),
            dropped_since_log: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counts a drop and logs at most once every 10 s.
    fn drop_event(&self, topic: &str) {
        self.dropped.with_label_values(&[topic]).inc();
        let n = self.dropped_since_log.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_drop_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            self.dropped_since_log.store(0, Ordering::Relaxed);
            tracing::error!(
                topic,
                dropped = n,
                "event queue full: events dropped (counted in shortlink_bus_events_dropped_total)"
            );
        }
    }
}

/// Builds the bus the arguments describe.
pub fn connect(args: &BusArgs, metrics: &Metrics) -> anyhow::Result<Arc<dyn EventBus>> {
    match args
        .kafka_brokers
        .as_deref()
        .filter(|b| !b.trim().is_empty())
    {
        Some(brokers) => Ok(Arc::new(KafkaBus::new(brokers, args, metrics)?)),
        None => Ok(Arc::new(MemoryBus::new(args.producer_queue, metrics))),
    }
}

// ---------------------------------------------------------------- memory

struct TopicLog {
    events: VecDeque<(i64, Option<String>, Vec<u8>)>,
    next: i64,
}

#[derive(Default)]
struct MemInner {
    topics: HashMap<String, TopicLog>,
    committed: HashMap<(String, String), i64>,
    generation: HashMap<String, u64>,
}

/// The in-process bus: one append-only log per topic (the last `capacity`
/// events), committed offsets per group and topic.
pub struct MemoryBus {
    inner: Arc<Mutex<MemInner>>,
    notify: Arc<tokio::sync::Notify>,
    capacity: usize,
    metrics: BusMetrics,
}

impl MemoryBus {
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
                    let first = log.next - log.events.len() as i64;
                    if pos < first {
                        // Evicted before this group read them.
                        for _ in pos..first {
                            self.metrics.drop_event(t);
                        }
                    }
                    let from = pos.max(first);
                    if from < log.next {
                        let (offset, key, payload) = log.events[(from - first) as usize].clone();
                        self.positions.insert(t.clone(), offset + 1);
                        return Ok(Delivery {
                            topic: t.clone(),
                            partition: 0,
                            offset,
                            key,
                            payload,
                        });
                    }
                }
            }
            notified.await;
        }
    }

    async fn commit(&mut self, d: &Delivery) -> anyhow::Result<()> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = g
            .committed
            .entry((self.group.clone(), d.topic.clone()))
            .or_insert(0);
        *e = (*e).max(d.offset + 1);
        Ok(())
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn publish(&self, topic: &str, key: Option<&str>, payload: Vec<u8>) {
        {
            let mut g = self.lock();
            let log = g
                .topics
                .entry(topic.to_owned())
                .or_insert_with(|| TopicLog {
                    events: VecDeque::new(),
                    next: 0,
                });
            let off = log.next;
            log.events.push_back((off, key.map(str::to_owned), payload));
            log.next += 1;
            while log.events.len() > self.capacity {
                log.events.pop_front();
            }
        }
        self.metrics.published.with_label_values(&[topic]).inc();
        self.metrics.delivered.with_label_values(&["ok"]).inc();
        self.notify.notify_waiters();
    }

    async fn ensure_topics(&self, topics: &[String]) -> anyhow::Result<()> {
        let mut g = self.lock();
        for t in topics {
            g.topics.entry(t.clone()).or_insert_with(|| TopicLog {
                events: VecDeque::new(),
                next: 0,
            });
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
        let positions = topics
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    g.committed
                        .get(&(group.to_owned(), t.clone()))
                        .copied()
                        .unwrap_or(0),
                )
            })
            .collect();
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

// ---------------------------------------------------------------- kafka

struct DeliveryCounter(BusMetrics);

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(_) => self.0.delivered.with_label_values(&["ok"]).inc(),
            Err((e, _)) => {
                self.0.delivered.with_label_values(&["failed"]).inc();
                tracing::warn!(error = %e, "event delivery failed");
            }
        }
    }
}

/// Kafka through librdkafka: an idempotent producer whose local queue
/// holds events while the broker is away (no delivery timeout), and
/// consumer groups with manual commits.
pub struct KafkaBus {
    brokers: String,
    partitions: i32,
    producer: ThreadedProducer<DeliveryCounter>,
    metrics: BusMetrics,
}

impl KafkaBus {
    pub fn new(brokers: &str, args: &BusArgs, metrics: &Metrics) -> anyhow::Result<Self> {
        let m = BusMetrics::new(metrics);
        let producer: ThreadedProducer<DeliveryCounter> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // 0 = no timeout: events wait in the queue until the broker returns.
            .set("message.timeout.ms", "0")
            .set(
                "queue.buffering.max.messages",
                args.producer_queue.max(1).to_string(),
            )
            .set("queue.buffering.max.kbytes", "262144")
            .set("linger.ms", "5")
            .set("batch.num.messages", args.producer_batch.max(1).to_string())
            .set("reconnect.backoff.max.ms", "1000")
            // Topics may be created after the producer starts: look again soon.
            .set("topic.metadata.refresh.interval.ms", "2000")
            .set("log_level", "3")
            .create_with_context(DeliveryCounter(m.clone()))
            .map_err(|e| anyhow::anyhow!("cannot create the Kafka producer for {brokers}: {e}"))?;
        Ok(Self {
            brokers: brokers.to_owned(),
            partitions: args.topic_partitions.max(1),
            producer,
            metrics: m,
        })
    }
}

struct KafkaSubscription {
    consumer: StreamConsumer,
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> anyhow::Result<Delivery> {
        let m = self.consumer.recv().await?;
        Ok(Delivery {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: m.payload().unwrap_or_default().to_vec(),
        })
    }

    async fn commit(&mut self, d: &Delivery) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&d.topic, d.partition, Offset::Offset(d.offset + 1))?;
        // Asynchronous: a sync commit would block a runtime worker on the
        // broker. A commit that fails only means the event may be read
        // again, which every handler tolerates.
        self.consumer.commit(&tpl, CommitMode::Async)?;
        Ok(())
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    fn backend(&self) -> &'static str {
        "kafka"
    }

    fn publish(&self, topic: &str, key: Option<&str>, payload: Vec<u8>) {
        let mut rec = BaseRecord::<str, [u8]>::to(topic).payload(&payload);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        match self.producer.send(rec) {
            Ok(()) => self.metrics.published.with_label_values(&[topic]).inc(),
            Err((e, _)) => {
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                    self.metrics.drop_event(topic);
                } else {
                    self.metrics.drop_event(topic);
                    tracing::warn!(error = %e, topic, "event not queued");
                }
            }
        }
        self.metrics
            .pending
            .set(self.producer.in_flight_count() as i64);
    }

    async fn ensure_topics(&self, topics: &[String]) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, self.partitions, TopicReplication::Fixed(1)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for r in admin.create_topics(&new, &opts).await? {
            match r {
                Ok(t) => tracing::info!(topic = t, partitions = self.partitions, "topic created"),
                Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::debug!(topic = t, "topic exists")
                }
                Err((t, e)) => anyhow::bail!("cannot create topic {t}: {e}"),
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> anyhow::Result<Box<dyn Subscription>> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // A restarted consumer takes over its group's partitions within
            // seconds, even when the previous member died without leaving.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("max.poll.interval.ms", "15000")
            .set("topic.metadata.refresh.interval.ms", "2000")
            .set("reconnect.backoff.max.ms", "1000")
            .set("log_level", "3")
            .create()?;
        // Every partition of the topics is assigned to this consumer, which
        // starts at the group's committed offsets (earliest when none): the
        // group id names the offsets, with no group membership and so no
        // rebalances (a consumer group that rebalanced on tansu sometimes
        // stopped receiving). One process per group reads everything.
        let md = consumer.fetch_metadata(None, Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        for t in topics {
            let meta = md
                .topics()
                .iter()
                .find(|m| m.name() == t)
                .filter(|m| !m.partitions().is_empty())
                .ok_or_else(|| anyhow::anyhow!("topic {t} does not exist yet"))?;
            for p in meta.partitions() {
                tpl.add_partition_offset(t, p.id(), Offset::Stored)?;
            }
        }
        consumer.assign(&tpl)?;
        Ok(Box::new(KafkaSubscription { consumer }))
    }

    fn pending(&self) -> usize {
        let n = self.producer.in_flight_count().max(0);
        self.metrics.pending.set(i64::from(n));
        n as usize
    }

    fn flush(&self, limit: Duration) {
        let _ = self.producer.flush(limit);
    }
}

/// Keeps the topics in existence: creates them now (retrying while the
/// broker is away) and checks again every 10 s, so a broker that restarts
/// empty gets them back and queued events can be delivered. Runs on the
/// current runtime until `shutdown`.
pub fn keep_topics(bus: Arc<dyn EventBus>, topics: Vec<String>, shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(500);
        let mut warned = false;
        loop {
            // Also refreshes the pending-events gauge when traffic stops.
            let _ = bus.pending();
            let wait = match bus.ensure_topics(&topics).await {
                Ok(()) => {
                    delay = Duration::from_millis(500);
                    warned = false;
                    Duration::from_secs(10)
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "cannot create topics yet; retrying"
                        );
                        warned = true;
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                    delay
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.wait() => return,
            }
        }
    });
}

/// Runs a consumer group: each event goes to `handle`; its offset is
/// committed only after `handle` succeeds (at-least-once). A failing
/// handler is retried with backoff, so nothing is skipped. Returns at
/// shutdown.
pub async fn run_group<F, Fut>(
    bus: Arc<dyn EventBus>,
    group: &str,
    topics: &[String],
    shutdown: Shutdown,
    mut handle: F,
) -> anyhow::Result<()>
where
    F: FnMut(Delivery) -> Fut + Send,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let mut sub = bus.subscribe(group, topics).await?;
    tracing::info!(
        group,
        ?topics,
        backend = bus.backend(),
        "consumer group started"
    );
    loop {
        let d = tokio::select! {
            d = sub.next() => d,
            () = shutdown.wait() => return Ok(()),
        };
        let d = match d {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(group, error = %e, "consume failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = shutdown.wait() => return Ok(()),
                }
            }
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            match handle(d.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(group, topic = %d.topic, offset = d.offset, error = format!("{e:#}"), "handler failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.wait() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if let Err(e) = sub.commit(&d).await {
            tracing::warn!(group, error = %e, "commit failed; the event may be seen again");
        }
    }
}
