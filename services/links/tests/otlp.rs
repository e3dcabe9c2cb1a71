//! Trace export: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, RPC spans reach an
//! OTLP/gRPC receiver, as children of the caller's W3C `traceparent`.

mod common;

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use shortlink_proto::v1 as pb;
use shortlink_runtime::telemetry::{self, LogFormat, TelemetryArgs};
use tokio::sync::mpsc;

struct Receiver(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_spans_are_exported_with_the_callers_trace_id() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let guard = telemetry::init(
        "links",
        &TelemetryArgs {
            log_format: LogFormat::Json,
            log_level: "info".into(),
            otlp_endpoint: Some(format!("http://{addr}")),
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
                for rs in batch.resource_spans {
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            seen.push((hex(&s.trace_id), s.name));
                        }
                    }
                }
                if seen.iter().any(|(t, n)| t == trace_id && n == "rpc") {
                    return;
                }
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    panic!("no exported rpc span with trace id {trace_id}; saw {seen:?}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
