//! Publishes this process's WARN and ERROR log lines as `LogEvent`s: the
//! runtime's tracing layer builds the event, this sink puts it on the bus
//! (typed, so the logging thread never serialises it).

use std::sync::Arc;

use shortlink_proto::events::LogEvent;
use shortlink_runtime::telemetry::LogSink;

use crate::EventBus;

struct BusLogSink {
    bus: Arc<dyn EventBus>,
    topic: String,
}

impl LogSink for BusLogSink {
    fn accepts(&self, target: &str) -> bool {
        // The bus's own complaints (and its Kafka client's) would loop
        // while the broker is away, and the alerter's webhook failures
        // would alert about themselves.
        !(target.starts_with("shortlink_bus")
            || target.starts_with("rdkafka")
            || target.starts_with("librdkafka")
            || target.starts_with("shortlink_consumers::alerter"))
    }

    fn publish(&self, event: LogEvent) {
        self.bus.publish(&self.topic, None, event.into());
    }
}

/// Publishes every WARN/ERROR log line of this process as a `LogEvent` on
/// `topic`. Call once, after the bus is built (later calls are ignored).
pub fn publish_logs_to(bus: Arc<dyn EventBus>, topic: String, service: &str, instance: &str) {
    shortlink_runtime::telemetry::set_log_sink(
        Box::new(BusLogSink { bus, topic }),
        service,
        instance,
    );
}
