//! A tower layer for tonic servers that gives every RPC its request id, its
//! trace context and its metrics: it accepts or generates `x-request-id`,
//! opens a tracing span carrying the method, request id and trace id (with
//! the W3C `traceparent` as its OpenTelemetry parent), records
//! rate/errors/duration per method, and echoes the request id in the
//! response headers. Also `nodelay_incoming`, the accept side every gRPC
//! server uses.

use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::metrics::{RpcMetrics, grpc_code_name};
use crate::request_id::{self, REQUEST_ID_HEADER, TRACEPARENT_HEADER};

/// The request id of the current call, inserted into request extensions so
/// handlers can log it or forward it.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// See the module docs.
#[derive(Clone, Debug)]
pub struct ObservabilityLayer {
    metrics: RpcMetrics,
    known: Arc<HashSet<String>>,
}

impl ObservabilityLayer {
    /// `methods` are the full paths (`/shortlink.v1.LinkService/CreateLink`)
    /// that may appear as metric labels; any other path is labelled
    /// `unknown`, so a client cannot create label values at will.
    pub fn new(metrics: RpcMetrics, methods: impl IntoIterator<Item = String>) -> Self {
        Self {
            metrics,
            known: Arc::new(methods.into_iter().collect()),
        }
    }
}

impl<S> Layer<S> for ObservabilityLayer {
    type Service = Observability<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observability {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service produced by [`ObservabilityLayer`].
#[derive(Clone, Debug)]
pub struct Observability<S> {
    inner: S,
    layer: ObservabilityLayer,
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

impl<S, B, RB> Service<Request<B>> for Observability<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        let method: Arc<str> = if self.layer.known.contains(path) {
            path.rsplit('/').next().unwrap_or("unknown").into()
        } else {
            "unknown".into()
        };
        let incoming = req
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok());
        let rid = request_id::accept_or_generate(incoming);
        if let Ok(v) = HeaderValue::from_str(&rid) {
            req.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
        let trace_id = req
            .headers()
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(request_id::trace_id_from_traceparent)
            .unwrap_or("")
            .to_owned();
        let span =
            tracing::info_span!("rpc", rpc = %method, request_id = %rid, trace_id = %trace_id);
        {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let parent = opentelemetry::global::get_text_map_propagator(|p| {
                p.extract(&HeaderExtractor(req.headers()))
            });
            let _ = span.set_parent(parent);
        }
        req.extensions_mut().insert(RequestId(rid.clone()));

        // Take the service that was driven to readiness, leave a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.layer.metrics.clone();
        Box::pin(
            async move {
                let start = Instant::now();
                let res = inner.call(req).await;
                let code = match &res {
                    Ok(resp) => resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|s| s.parse::<i32>().ok())
                        .map_or("OK", grpc_code_name),
                    Err(_) => "TRANSPORT_ERROR",
                };
                metrics.observe(&method, code, start.elapsed());
                if code != "OK" {
                    tracing::debug!(
                        code,
                        elapsed_ms = start.elapsed().as_millis() as u64,
                        "rpc failed"
                    );
                }
                res.map(|mut resp| {
                    if let Ok(v) = HeaderValue::from_str(&rid) {
                        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
                    }
                    resp
                })
            }
            .instrument(span),
        )
    }
}

/// The connections a gRPC server accepts on `listener`, with `TCP_NODELAY`
/// set. Tonic sets it only on listeners it binds itself; without it a
/// reply written as several HTTP/2 frames (headers, a data frame of more
/// than a segment, trailers) waits on Nagle's algorithm for the client's
/// delayed ACK: measured 40-45 ms on every `ListLinks` call of a 2 KiB page
/// through the edge (docs/BENCHMARKS.md), against 2 ms with it.
pub fn nodelay_incoming(
    listener: tokio::net::TcpListener,
) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod nodelay_tests {
    use futures::StreamExt;

    #[tokio::test]
    async fn accepted_grpc_connections_do_not_wait_on_nagle() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = super::nodelay_incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY not set on an accepted connection"
        );
    }
}
