//! Prometheus metrics. Each component owns a `Metrics` (its own registry, so
//! several components or test instances can live in one process) and
//! renders it on its side port. Labels are always bounded: RPC method names
//! from a fixed list, status codes, states; never raw paths or short codes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::process_metrics::ProcessCollector;

type Hook = Box<dyn Fn() + Send + Sync>;

/// A component's metric registry plus hooks run before each scrape (to
/// refresh gauges such as pool usage).
pub struct Metrics {
    registry: Registry,
    hooks: Mutex<Vec<Hook>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A registry whose metrics all carry the `component` and `instance`
    /// constant labels, with the process metrics (`shortlink_process_*`)
    /// and `shortlink_build_info` already registered.
    pub fn new(component: &str, instance: &str) -> Arc<Self> {
        let labels = [
            ("component".to_owned(), component.to_owned()),
            ("instance".to_owned(), instance.to_owned()),
        ]
        .into_iter()
        .collect();
        let registry = Registry::new_custom(Some("shortlink".into()), Some(labels))
            .expect("static registry options are valid");
        let m = Arc::new(Self {
            registry,
            hooks: Mutex::new(Vec::new()),
        });
        m.register(ProcessCollector::new());
        m.register(
            IntGaugeVec::new(
                Opts::new(
                    "build_info",
                    "Always 1; the labels name the build: version and the Rust target.",
                ),
                &["version", "target_os", "target_arch"],
            )
            .expect("valid metric"),
        )
        .with_label_values(&[crate::VERSION, std::env::consts::OS, std::env::consts::ARCH])
        .set(1);
        m
    }

    /// The underlying registry, to register collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Registers a collector; a duplicate registration is a programming
    /// error and panics at start-up, never mid-request.
    pub fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric registered twice");
        c
    }

    /// Runs `f` before every scrape.
    pub fn on_scrape(&self, f: impl Fn() + Send + Sync + 'static) {
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(f));
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        for h in self.hooks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            h();
        }
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Rate, errors and duration per gRPC method.
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

/// Latency buckets in seconds, from 250 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

impl RpcMetrics {
    /// Registers `grpc_server_requests_total{method,code}` and
    /// `grpc_server_request_duration_seconds{method}`.
    pub fn new(m: &Metrics) -> Self {
        let requests = m.register(
            IntCounterVec::new(
                Opts::new(
                    "grpc_server_requests_total",
                    "gRPC requests handled, by method and status code.",
                ),
                &["method", "code"],
            )
            .expect("valid metric"),
        );
        let duration = m.register(
            HistogramVec::new(
                HistogramOpts::new(
                    "grpc_server_request_duration_seconds",
                    "gRPC request latency, by method.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["method"],
            )
            .expect("valid metric"),
        );
        Self { requests, duration }
    }

    /// Records one finished call.
    pub fn observe(&self, method: &str, code: &str, elapsed: Duration) {
        self.requests.with_label_values(&[method, code]).inc();
        self.duration
            .with_label_values(&[method])
            .observe(elapsed.as_secs_f64());
    }
}

/// The canonical upper-case name of a numeric gRPC status code.
pub fn grpc_code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registry_has_process_and_build_info_metrics() {
        let m = Metrics::new("links", "links-1");
        let text = m.render();
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
                .to_owned()
        };
        let build = line("shortlink_build_info{");
        assert!(
            build.contains(&format!("version=\"{}\"", crate::VERSION)),
            "{build}"
        );
        assert!(build.contains("component=\"links\""), "{build}");
        assert!(build.ends_with(" 1"), "{build}");
        if cfg!(target_os = "linux") {
            let rss = line("shortlink_process_resident_memory_bytes{");
            assert!(rss.contains("instance=\"links-1\""), "{rss}");
            let v: f64 = rss.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(v > 0.0, "{rss}");
            assert!(text.contains("# TYPE shortlink_process_cpu_seconds_total counter"));
            line("shortlink_process_open_fds{");
            line("shortlink_process_start_time_seconds{");
        }
    }
}
