//! Trace export: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, RPC spans reach an
//! OTLP/gRPC receiver, as children of the caller's W3C `traceparent`.

mod common;

use std::time::Duration;

use shortlink_proto::v1 as pb;
use shortlink_runtime::telemetry::{self, LogFormat, TelemetryArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_spans_are_exported_with_the_callers_trace_id() {
    let (endpoint, mut rx) = common::otlp::receiver().await;
    let guard = telemetry::init(
        "links",
        &TelemetryArgs {
            log_format: LogFormat::Json,
            log_level: "info".into(),
            otlp_endpoint: Some(endpoint),
        },
    )
    .unwrap();

    let app = common::TestApp::start(common::base_config(None, None), None).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = tonic::Request::new(pb::ResolveLinkRequest {
        short_code: "nosuch".into(),
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let e = app.links().await.resolve_link(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    app.stop().await;
    // Shutting the provider down flushes the batch.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            Ok(Some(batch)) => {
                seen.extend(common::otlp::spans_of(&batch, trace_id));
                if seen.iter().any(|n| n == "rpc") {
                    return;
                }
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    panic!("no exported rpc span with trace id {trace_id}; saw {seen:?}");
}
