//! The bus's Prometheus metrics, shared by both backends: what producers
//! queued, dropped and got acknowledged, how deep the local queue is, how
//! many record batches the producer sent, and per consumer group the lag
//! (events behind, per topic and partition) and the records a consumer
//! skipped because they lay below its committed offset.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use shortlink_runtime::metrics::Metrics;

/// A topic's name and its per-topic counter, looked up once per publish
/// without hashing label values (a process has three topics).
pub(crate) struct TopicHandle {
    pub(crate) name: Arc<str>,
    pub(crate) published: IntCounter,
}

#[derive(Clone)]
pub(crate) struct BusMetrics {
    published: IntCounterVec,
    dropped: IntCounterVec,
    delivered: IntCounterVec,
    pub(crate) delivered_ok: IntCounter,
    pub(crate) pending: IntGauge,
    pub(crate) batches: IntCounter,
    pub(crate) lag: IntGaugeVec,
    pub(crate) skipped: IntCounterVec,
    topics: Arc<RwLock<Vec<Arc<TopicHandle>>>>,
    last_drop_log: Arc<Mutex<Option<Instant>>>,
    dropped_since_log: Arc<AtomicU64>,
}

impl BusMetrics {
    pub(crate) fn new(m: &Metrics) -> Self {
        let delivered = m.register(
            IntCounterVec::new(
                Opts::new(
                    "bus_events_delivered_total",
                    "Events acknowledged by the broker, by result.",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
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
            delivered_ok: delivered.with_label_values(&["ok"]),
            delivered,
            pending: m.register(
                IntGauge::new(
                    "bus_events_pending",
                    "Events queued locally, not yet acknowledged.",
                )
                .expect("valid metric"),
            ),
            batches: m.register(
                IntCounter::new(
                    "bus_producer_batches_total",
                    "Record batches the Kafka producer sent (librdkafka statistics, every 5 s); \
                     events acknowledged / batches is the records per batch.",
                )
                .expect("valid metric"),
            ),
            lag: m.register(
                IntGaugeVec::new(
                    Opts::new(
                        "bus_consumer_lag",
                        "Events a consumer group has not committed yet (high watermark minus committed offset), \
                         by group, topic and partition.",
                    ),
                    &["group", "topic", "partition"],
                )
                .expect("valid metric"),
            ),
            skipped: m.register(
                IntCounterVec::new(
                    Opts::new(
                        "bus_consumer_skipped_total",
                        "Records a broker returned below the group's committed or already-read offset, skipped \
                         instead of being handled twice, by group.",
                    ),
                    &["group"],
                )
                .expect("valid metric"),
            ),
            topics: Arc::new(RwLock::new(Vec::new())),
            last_drop_log: Arc::new(Mutex::new(None)),
            dropped_since_log: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The handle of `topic` (created on first use).
    pub(crate) fn topic(&self, topic: &str) -> Arc<TopicHandle> {
        {
            let g = self.topics.read().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = g.iter().find(|h| &*h.name == topic) {
                return h.clone();
            }
        }
        let mut g = self.topics.write().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = g.iter().find(|h| &*h.name == topic) {
            return h.clone();
        }
        let h = Arc::new(TopicHandle {
            name: Arc::from(topic),
            published: self.published.with_label_values(&[topic]),
        });
        g.push(h.clone());
        h
    }

    pub(crate) fn delivery_failed(&self) {
        self.delivered.with_label_values(&["failed"]).inc();
    }

    /// Counts a drop and logs at most once every 10 s. (The child of the
    /// dropped counter is created here, on the first drop, so that a
    /// process that never dropped shows no `bus_events_dropped_total`
    /// series at all.)
    pub(crate) fn drop_event(&self, topic: &str) {
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
