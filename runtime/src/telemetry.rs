//! Logs and traces. Logs are JSON lines (or human-readable text) through
//! `tracing`, carrying the request id and trace id of the current RPC span.
//! When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported over
//! OTLP/gRPC; otherwise no exporter runs.

use std::str::FromStr;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(format!("unknown log format {other:?}; use json or text")),
        }
    }
}

/// Logging and tracing flags shared by every subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct TelemetryArgs {
    /// Log line format: json or text.
    #[arg(long, env = "LOG_FORMAT", default_value = "json", global = true)]
    pub log_format: LogFormat,
    /// Log filter in `tracing` EnvFilter syntax.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
    /// OTLP/gRPC endpoint for trace export (e.g. http://127.0.0.1:4317);
    /// unset means no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
}

/// Flushes and shuts down the trace exporter when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process exports spans (OTLP configured). Without an
/// exporter a span has no context of its own to propagate, and hot paths
/// skip building one.
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// A span for one call to a dependency (a SQL statement, a cache command),
/// named `<system> <operation>` and a child of the current span (the RPC).
/// Only built when spans are exported and there is a request span to hang
/// it from: otherwise it is `Span::none()` and costs nothing on the hot
/// path, and background work (health probes) starts no traces of its own.
/// Never carries parameter values.
pub fn client_span(system: &'static str, operation: &'static str) -> tracing::Span {
    if !exporting() || tracing::Span::current().is_none() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "client",
        otel.name = format!("{system} {operation}"),
        otel.kind = "client",
        db.system = system,
        db.operation = operation,
    )
}

/// Makes `traceparent` (a W3C trace context from a header or a message)
/// the parent of `span`. An invalid value leaves `span` a new root.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct One<'a>(&'a str);
    impl opentelemetry::propagation::Extractor for One<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == "traceparent").then_some(self.0)
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent"]
        }
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&One(traceparent)));
    let _ = span.set_parent(parent);
}

/// The W3C `traceparent` naming `span`, when it has a valid context (spans
/// are exported).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The W3C `traceparent` of the current span, to send with an event the
/// current request causes; `None` when spans are not exported.
pub fn current_traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    traceparent_of(&tracing::Span::current())
}

/// A span for a consumer's handling of one event, a child of the request
/// that caused it (`traceparent`, from the message header); a disabled
/// span when spans are not exported or the event carries no context.
pub fn consumer_span(group: &str, topic: &str, traceparent: Option<&str>) -> tracing::Span {
    let Some(tp) = traceparent.filter(|_| exporting()) else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        "consume",
        otel.name = format!("{group} process {topic}"),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.destination = topic,
    );
    set_remote_parent(&span, tp);
    span
}

/// Installs the global subscriber. Safe to call more than once (later calls
/// keep the first subscriber), which tests rely on.
pub fn init(service: &'static str, args: &TelemetryArgs) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_new(&args.log_level).map_err(|e| {
        crate::config::ConfigError::new(format!("invalid LOG_LEVEL {:?}: {e}", args.log_level))
    })?;

    let provider = match &args.otlp_endpoint {
        Some(ep) if !ep.is_empty() => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(ep.clone())
                .build()?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        _ => None,
    };
    if provider.is_some() {
        // Never reset: a later call keeps the first subscriber (see above).
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    // Spans are exported at INFO whatever the log level: LOG_LEVEL=warn
    // quietens the logs, not the traces.
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });

    let registry = tracing_subscriber::registry()
        .with(otel_layer)
        .with(log_event_layer());
    let res = match args.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_target(true)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_filter(filter),
            )
            .try_init(),
    };
    if res.is_err() {
        // Already initialised in this process (tests start many apps).
    }
    Ok(TelemetryGuard { provider })
}

/// Where WARN-and-above log events go once the process has somewhere to
/// send them (the event bus: `shortlink_bus::publish_logs_to`). The
/// runtime only builds the `LogEvent`; it does not know the bus, so a
/// component that has no bus (admin) links no Kafka client.
pub trait LogSink: Send + Sync + 'static {
    /// Whether events of this `tracing` target are published at all. A
    /// sink refuses its own targets (and its client library's), whose
    /// complaints would otherwise loop while its backend is away.
    fn accepts(&self, target: &str) -> bool;
    /// Publishes one event. Called on the thread that logged: must not
    /// block and must not log at WARN or above itself.
    fn publish(&self, event: shortlink_proto::events::LogEvent);
}

struct InstalledSink {
    sink: Box<dyn LogSink>,
    service: String,
    instance: String,
}

static LOG_SINK: std::sync::OnceLock<InstalledSink> = std::sync::OnceLock::new();

/// Sends every WARN/ERROR log line of this process to `sink` as a
/// `LogEvent` of `service`/`instance`. The first call wins (a process has
/// one sink); later calls are ignored.
pub fn set_log_sink(sink: Box<dyn LogSink>, service: &str, instance: &str) {
    let _ = LOG_SINK.set(InstalledSink {
        sink,
        service: service.to_owned(),
        instance: instance.to_owned(),
    });
}

/// The layer behind `set_log_sink`, filtered to what the sink needs:
/// WARN-and-above events, and this project's own INFO-and-above spans (for
/// the request id they carry). Unfiltered, it made every span of every
/// dependency (h2, tower, sqlx at TRACE) exist in the registry: filtering
/// took the links service's ResolveLink throughput from 30,050 to 34,491
/// requests/s (docs/BENCHMARKS.md).
fn log_event_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    LogEventLayer.with_filter(tracing_subscriber::filter::filter_fn(|meta| {
        if meta.is_span() {
            *meta.level() <= tracing::Level::INFO && meta.target().starts_with("shortlink")
        } else {
            *meta.level() <= tracing::Level::WARN
        }
    }))
}

/// The tracing layer behind `set_log_sink`.
struct LogEventLayer;

#[derive(Default)]
struct Fields {
    message: String,
    error: String,
    request_id: String,
    critical: bool,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "error" => self.error = value.to_owned(),
            "request_id" => self.request_id = value.to_owned(),
            _ => {}
        }
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        if field.name() == "critical" {
            self.critical = value;
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "request_id" => {
                use std::fmt::Write;
                self.request_id.clear();
                let _ = write!(self.request_id, "{value:?}");
                let trimmed = self.request_id.trim_matches('"');
                if trimmed.len() != self.request_id.len() {
                    self.request_id = trimmed.to_owned();
                }
            }
            "error" if !self.message.is_empty() => {
                self.message = format!("{}: {value:?}", self.message)
            }
            _ => {}
        }
    }
}

/// The request id recorded on an enclosing span, if any.
#[derive(Clone)]
struct SpanRequestId(String);

impl<S> tracing_subscriber::Layer<S> for LogEventLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if !f.request_id.is_empty()
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(SpanRequestId(f.request_id));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let level = *event.metadata().level();
        if level > tracing::Level::WARN {
            return;
        }
        let Some(sink) = LOG_SINK.get() else { return };
        let target = event.metadata().target();
        if !sink.sink.accepts(target) {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        if !f.error.is_empty() {
            f.message = format!("{}: {}", f.message, f.error);
        }
        if f.request_id.is_empty()
            && let Some(scope) = ctx.event_scope(event)
        {
            for span in scope.from_root() {
                if let Some(r) = span.extensions().get::<SpanRequestId>() {
                    f.request_id = r.0.clone();
                }
            }
        }
        let ev = shortlink_proto::events::LogEvent {
            schema_version: 1,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            level: if f.critical {
                "CRITICAL".into()
            } else {
                level.as_str().to_owned()
            },
            service: sink.service.clone(),
            instance: sink.instance.clone(),
            message: f.message,
            request_id: f.request_id,
            target: target.to_owned(),
        };
        sink.sink.publish(ev);
    }
}

#[cfg(test)]
mod log_sink_tests {
    use std::sync::Mutex;

    use tracing_subscriber::layer::SubscriberExt;

    static SEEN: Mutex<Vec<shortlink_proto::events::LogEvent>> = Mutex::new(Vec::new());

    struct Capture;
    impl super::LogSink for Capture {
        fn accepts(&self, _target: &str) -> bool {
            true
        }
        fn publish(&self, event: shortlink_proto::events::LogEvent) {
            SEEN.lock().unwrap().push(event);
        }
    }

    #[test]
    fn warnings_carry_the_request_id_of_their_span_and_nothing_below_warn_is_sent() {
        super::set_log_sink(Box::new(Capture), "test", "test-1");
        let subscriber = tracing_subscriber::registry().with(super::log_event_layer());
        tracing::subscriber::with_default(subscriber, || {
            let span =
                tracing::info_span!(target: "shortlink_links::grpc", "rpc", request_id = "req-42");
            let _g = span.enter();
            // A dependency's span in between does not hide the request id.
            let inner = tracing::trace_span!(target: "h2::proto", "poll");
            let _i = inner.enter();
            tracing::info!("not sent");
            tracing::warn!(target: "shortlink_links::store", "database slow");
        });
        let seen = SEEN.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].message, "database slow");
        assert_eq!(seen[0].request_id, "req-42");
        assert_eq!(seen[0].level, "WARN");
    }
}
