//! The event bus: one trait, `EventBus`, with two backends, Kafka through
//! rdkafka (`kafka`, when `KAFKA_BROKERS` is set) and an in-process bus
//! (`memory`) with the same semantics: named topics, consumer groups that
//! each get every event, one subscription per group, offsets committed
//! after processing so a restarted consumer resumes where it left off.
//!
//! Publishing never blocks the caller and never fails it: events go into a
//! bounded local queue and wait there while the broker is unreachable; what
//! does not fit is counted in `shortlink_bus_events_dropped_total` and
//! logged once per interval. Producers hand over typed events (`Payload`
//! from a `RequestEvent`, `LinkEvent` or `LogEvent`): the backend
//! serialises them off the caller's thread, or not at all in process.
//!
//! Only the components that publish or consume events depend on this crate
//! (and so link librdkafka); `shortlink_runtime` knows nothing of it.

mod event;
mod kafka;
mod logs;
mod memory;
mod metrics;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shortlink_runtime::metrics::Metrics;
use shortlink_runtime::shutdown::Shutdown;

pub use event::{Event, FromEvent, Payload};
pub use kafka::KafkaBus;
pub use logs::publish_logs_to;
pub use memory::MemoryBus;

/// Names of the pipeline's topics.
#[derive(Clone, Debug)]
pub struct Topics {
    pub requests: String,
    pub links: String,
    pub logs: String,
    /// Watchdog restarts, crash loops, control actions, backups.
    pub ops: String,
}

impl Topics {
    /// `<prefix>requests`, `<prefix>link-events`, `<prefix>logs`,
    /// `<prefix>ops-events`.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            requests: format!("{prefix}requests"),
            links: format!("{prefix}link-events"),
            logs: format!("{prefix}logs"),
            ops: format!("{prefix}ops-events"),
        }
    }

    pub fn all(&self) -> Vec<String> {
        vec![
            self.requests.clone(),
            self.links.clone(),
            self.logs.clone(),
            self.ops.clone(),
        ]
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
    /// Most events per produced record batch (librdkafka
    /// `batch.num.messages`; its default).
    #[arg(
        long = "producer-batch",
        env = "KAFKA_PRODUCER_BATCH",
        default_value_t = 10_000
    )]
    pub producer_batch: usize,
    /// How long the producer waits to fill a batch, in milliseconds
    /// (librdkafka `linger.ms`).
    #[arg(
        long = "producer-linger-ms",
        env = "KAFKA_PRODUCER_LINGER_MS",
        default_value_t = 5
    )]
    pub producer_linger_ms: u32,
    /// Events the local producer queue holds while the broker is away (and,
    /// for the in-process bus, the most events a topic keeps for a group
    /// that has not read them).
    #[arg(
        long = "producer-queue",
        env = "KAFKA_PRODUCER_QUEUE",
        default_value_t = 100_000
    )]
    pub producer_queue: usize,
}

impl Default for BusArgs {
    /// The defaults of the flags: the in-process bus.
    fn default() -> Self {
        Self {
            kafka_brokers: None,
            topic_prefix: "shortlink.".into(),
            topic_partitions: 3,
            producer_batch: 10_000,
            producer_linger_ms: 5,
            producer_queue: 100_000,
        }
    }
}

/// One consumed event.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Payload,
    /// The W3C `traceparent` of the request that caused the event, when the
    /// publisher sent one (a Kafka message header): consumers make their
    /// processing part of that trace.
    pub traceparent: Option<String>,
}

impl Delivery {
    /// The event as `T` (see `Payload::decode`).
    pub fn decode<T: FromEvent>(&self) -> serde_json::Result<T> {
        self.payload.decode()
    }

    /// The JSON wire form of the event.
    pub fn json(&self) -> std::borrow::Cow<'_, [u8]> {
        self.payload.json()
    }
}

/// A group's subscription.
#[async_trait]
pub trait Subscription: Send {
    /// The next event (waits for one).
    async fn next(&mut self) -> anyhow::Result<Delivery>;
    /// Marks `d` (and everything before it in its partition) processed.
    async fn commit(&mut self, d: &Delivery) -> anyhow::Result<()>;
}

/// The bus: the one trait both backends implement.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// "kafka" or "memory".
    fn backend(&self) -> &'static str;
    /// Queues an event; never blocks, never fails (overflow is counted).
    /// `payload` is a typed event (`ev.into()`) or JSON bytes.
    fn publish(&self, topic: &str, key: Option<&str>, payload: Payload) {
        self.publish_traced(topic, key, payload, None);
    }
    /// Like `publish`, carrying the W3C `traceparent` of the request that
    /// caused the event (on Kafka, the `traceparent` message header), so
    /// that its consumers join the request's trace.
    fn publish_traced(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: Payload,
        traceparent: Option<&str>,
    );
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

/// Publishes any serialisable `event` as JSON, serialising here, on the
/// caller's thread. The pipeline's own events go through
/// `EventBus::publish` typed instead.
pub fn publish_json<T: serde::Serialize>(
    bus: &dyn EventBus,
    topic: &str,
    key: Option<&str>,
    event: &T,
) {
    match serde_json::to_vec(event) {
        Ok(b) => bus.publish(topic, key, b.into()),
        Err(e) => tracing::error!(error = %e, "event not serialisable"),
    }
}

/// Builds the bus the arguments describe, and registers
/// `bus_producer_queue_capacity` (the bound `shortlink_bus_events_pending`
/// is measured against) on `metrics`.
pub fn connect(args: &BusArgs, metrics: &Metrics) -> anyhow::Result<Arc<dyn EventBus>> {
    let capacity = prometheus::IntGauge::new(
        "bus_producer_queue_capacity",
        "Events the local producer queue holds at most (KAFKA_PRODUCER_QUEUE); \
         bus_events_pending over this is how full the queue is.",
    )
    .expect("valid metric");
    capacity.set(i64::try_from(args.producer_queue).unwrap_or(i64::MAX));
    // A second bus on the same registry keeps the first one's gauge.
    let _ = metrics.registry().register(Box::new(capacity));
    match args
        .kafka_brokers
        .as_deref()
        .filter(|b| !b.trim().is_empty())
    {
        Some(brokers) => Ok(Arc::new(KafkaBus::new(brokers, args, metrics)?)),
        None => Ok(Arc::new(MemoryBus::new(args.producer_queue, metrics))),
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
