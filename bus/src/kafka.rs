//! The Kafka backend, through librdkafka.
//!
//! Producing: `publish` only hands the event to a bounded channel and
//! returns. One producer thread per bus serialises typed events to JSON
//! (into one reused buffer) and passes them to librdkafka's queue; when
//! that queue is full the thread waits for room, the channel fills up, and
//! only then does `publish` drop (counted). librdkafka batches records as
//! Apache Kafka clients normally do (`batch.num.messages`, `linger.ms`),
//! and its own thread runs the delivery callbacks that count
//! acknowledgements.
//!
//! Consuming: each subscription is one `StreamConsumer` with every partition
//! of its topics assigned at the group's committed offsets (no group
//! membership, no rebalances). A consumer remembers, per partition, the
//! offset it must read next (the committed offset at start, then one past
//! the last record it returned) and skips anything below it: a broker that
//! answers a fetch from the start of the record batch holding the wanted
//! offset can then never make a group handle a record twice.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use shortlink_runtime::metrics::Metrics;

use crate::metrics::{BusMetrics, TopicHandle};
use crate::{BusArgs, Delivery, EventBus, Payload, Subscription};

/// Most events waiting between `publish` and the producer thread.
const HANDOFF: usize = 16_384;
/// How often librdkafka reports statistics (batches sent, consumer lag).
const STATS_INTERVAL_MS: &str = "5000";

struct ProducerCtx(BusMetrics);

impl ClientContext for ProducerCtx {
    fn stats(&self, s: Statistics) {
        let batches: i64 = s.topics.values().map(|t| t.batchcnt.cnt).sum();
        if batches > 0 {
            self.0.batches.inc_by(batches as u64);
        }
    }
}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(_) => self.0.delivered_ok.inc(),
            Err((e, _)) => {
                self.0.delivery_failed();
                tracing::warn!(error = %e, "event delivery failed");
            }
        }
    }
}

/// The message header that carries the W3C trace context.
const TRACEPARENT: &str = "traceparent";

struct Outgoing {
    topic: Arc<TopicHandle>,
    key: Option<String>,
    payload: Payload,
    traceparent: Option<String>,
}

/// Kafka through librdkafka: an idempotent producer whose queue holds
/// events while the broker is away (no delivery timeout), and consumers
/// with manual commits.
pub struct KafkaBus {
    brokers: String,
    partitions: i32,
    producer: Arc<ThreadedProducer<ProducerCtx>>,
    handoff: SyncSender<Outgoing>,
    /// Events in the handoff channel or being passed to librdkafka.
    queued: Arc<AtomicUsize>,
    metrics: BusMetrics,
}

impl KafkaBus {
    pub fn new(brokers: &str, args: &BusArgs, metrics: &Metrics) -> anyhow::Result<Self> {
        let m = BusMetrics::new(metrics);
        let producer: ThreadedProducer<ProducerCtx> = ClientConfig::new()
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
            .set("linger.ms", args.producer_linger_ms.to_string())
            .set("batch.num.messages", args.producer_batch.max(1).to_string())
            .set("reconnect.backoff.max.ms", "1000")
            // Topics may be created after the producer starts: look again soon.
            .set("topic.metadata.refresh.interval.ms", "2000")
            .set("statistics.interval.ms", STATS_INTERVAL_MS)
            .set("log_level", "3")
            .create_with_context(ProducerCtx(m.clone()))
            .map_err(|e| anyhow::anyhow!("cannot create the Kafka producer for {brokers}: {e}"))?;
        let producer = Arc::new(producer);
        let (tx, rx) = mpsc::sync_channel(HANDOFF.min(args.producer_queue.max(1)));
        let queued = Arc::new(AtomicUsize::new(0));
        {
            let (producer, queued, m) = (producer.clone(), queued.clone(), m.clone());
            std::thread::Builder::new()
                .name("bus-producer".into())
                .spawn(move || produce(&rx, &producer, &queued, &m))?;
        }
        Ok(Self {
            brokers: brokers.to_owned(),
            partitions: args.topic_partitions.max(1),
            producer,
            handoff: tx,
            queued,
            metrics: m,
        })
    }
}

/// The producer thread: serialises and hands events to librdkafka in
/// publish order, until every `KafkaBus` handle is gone.
fn produce(
    rx: &Receiver<Outgoing>,
    producer: &ThreadedProducer<ProducerCtx>,
    queued: &AtomicUsize,
    m: &BusMetrics,
) {
    let pending = || (producer.in_flight_count().max(0) as usize) + queued.load(Ordering::Relaxed);
    let mut buf = Vec::with_capacity(1024);
    let mut since_gauge = 0u32;
    loop {
        let o = match rx.try_recv() {
            Ok(o) => o,
            Err(TryRecvError::Empty) => {
                m.pending.set(pending() as i64);
                since_gauge = 0;
                match rx.recv() {
                    Ok(o) => o,
                    Err(_) => return,
                }
            }
            Err(TryRecvError::Disconnected) => return,
        };
        let bytes: &[u8] = match &o.payload {
            Payload::Json(b) => b,
            Payload::Event(e) => {
                buf.clear();
                e.write_json(&mut buf);
                &buf
            }
        };
        loop {
            let mut rec = BaseRecord::<str, [u8]>::to(&o.topic.name).payload(bytes);
            if let Some(k) = &o.key {
                rec = rec.key(k.as_str());
            }
            if let Some(tp) = &o.traceparent {
                rec = rec.headers(rdkafka::message::OwnedHeaders::new().insert(
                    rdkafka::message::Header {
                        key: TRACEPARENT,
                        value: Some(tp.as_str()),
                    },
                ));
            }
            match producer.send(rec) {
                Ok(()) => break,
                Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    // librdkafka's queue is full (broker away or slow):
                    // wait for room; meanwhile the handoff channel fills
                    // and `publish` counts what does not fit.
                    m.pending.set(pending() as i64);
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    m.drop_event(&o.topic.name);
                    tracing::warn!(error = %e, topic = %o.topic.name, "event not queued");
                    break;
                }
            }
        }
        queued.fetch_sub(1, Ordering::Relaxed);
        since_gauge += 1;
        if since_gauge >= 1024 {
            m.pending.set(pending() as i64);
            since_gauge = 0;
        }
    }
}

/// The consumer's context: turns librdkafka's statistics into the lag
/// gauge of its group.
struct ConsumerCtx {
    group: String,
    metrics: BusMetrics,
}

impl ClientContext for ConsumerCtx {
    fn stats(&self, s: Statistics) {
        for (topic, t) in &s.topics {
            for (p, part) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a
                // negative lag means "not known yet".
                if *p < 0 || part.consumer_lag < 0 {
                    continue;
                }
                self.metrics
                    .lag
                    .with_label_values(&[&self.group, topic, &p.to_string()])
                    .set(part.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for ConsumerCtx {}

/// Per partition, the offset a consumer reads next. Records below it are
/// ones the group committed or this consumer already returned.
#[derive(Debug, Default)]
pub(crate) struct Positions(Vec<(String, i32, i64)>);

impl Positions {
    pub(crate) fn set(&mut self, topic: &str, partition: i32, next: i64) {
        match self
            .0
            .iter_mut()
            .find(|(t, p, _)| t == topic && *p == partition)
        {
            Some(e) => e.2 = next,
            None => self.0.push((topic.to_owned(), partition, next)),
        }
    }

    /// Whether the record at `offset` is new to this consumer; if so it
    /// becomes the last one read.
    pub(crate) fn accept(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        match self
            .0
            .iter_mut()
            .find(|(t, p, _)| t == topic && *p == partition)
        {
            Some(e) if offset < e.2 => false,
            Some(e) => {
                e.2 = offset + 1;
                true
            }
            None => {
                self.0.push((topic.to_owned(), partition, offset + 1));
                true
            }
        }
    }
}

struct KafkaSubscription {
    consumer: StreamConsumer<ConsumerCtx>,
    positions: Positions,
    skipped: prometheus::IntCounter,
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> anyhow::Result<Delivery> {
        loop {
            let m = self.consumer.recv().await?;
            if !self.positions.accept(m.topic(), m.partition(), m.offset()) {
                self.skipped.inc();
                continue;
            }
            return Ok(Delivery {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: Payload::Json(bytes::Bytes::copy_from_slice(
                    m.payload().unwrap_or_default(),
                )),
                traceparent: m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == TRACEPARENT)
                        .and_then(|h| h.value)
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .map(str::to_owned)
                }),
            });
        }
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

    fn publish_traced(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: Payload,
        traceparent: Option<&str>,
    ) {
        let handle = self.metrics.topic(topic);
        self.queued.fetch_add(1, Ordering::Relaxed);
        let o = Outgoing {
            topic: handle.clone(),
            key: key.map(str::to_owned),
            payload,
            traceparent: traceparent.map(str::to_owned),
        };
        match self.handoff.try_send(o) {
            Ok(()) => handle.published.inc(),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                self.metrics.drop_event(topic);
            }
        }
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
        let consumer: StreamConsumer<ConsumerCtx> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("max.poll.interval.ms", "15000")
            .set("topic.metadata.refresh.interval.ms", "2000")
            .set("reconnect.backoff.max.ms", "1000")
            .set("statistics.interval.ms", STATS_INTERVAL_MS)
            .set("log_level", "3")
            .create_with_context(ConsumerCtx {
                group: group.to_owned(),
                metrics: self.metrics.clone(),
            })?;
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
        // The committed offsets are where this consumer must start: any
        // record below them that a broker returns is skipped.
        let mut positions = Positions::default();
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(committed) => {
                for e in committed.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        positions.set(e.topic(), e.partition(), o);
                    }
                }
            }
            Err(e) => tracing::warn!(
                group,
                error = %e,
                "cannot read the committed offsets; the consumer resumes at them without checking"
            ),
        }
        consumer.assign(&tpl)?;
        Ok(Box::new(KafkaSubscription {
            consumer,
            positions,
            skipped: self.metrics.skipped.with_label_values(&[group]),
        }))
    }

    fn pending(&self) -> usize {
        let n =
            self.producer.in_flight_count().max(0) as usize + self.queued.load(Ordering::Relaxed);
        self.metrics.pending.set(n as i64);
        n
    }

    fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.queued.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = self
            .producer
            .flush(deadline.saturating_duration_since(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::Positions;

    #[test]
    fn records_below_the_committed_offset_are_skipped() {
        let mut p = Positions::default();
        // Committed offset 5 on partition 0 of t; a broker answers from the
        // start of the batch holding 5 (base offset 3).
        p.set("t", 0, 5);
        let got: Vec<i64> = (3..9).filter(|&o| p.accept("t", 0, o)).collect();
        assert_eq!(got, vec![5, 6, 7, 8]);
        // The same batch again (a retried fetch): nothing new.
        assert!((3..9).all(|o| !p.accept("t", 0, o)));
        // Other partitions are independent; one never seen starts anywhere.
        assert!(p.accept("t", 1, 0));
        assert!(p.accept("u", 0, 42));
        assert!(!p.accept("u", 0, 42));
    }
}
