//! The public HTTP API of the original system, transcoded to gRPC calls on
//! the links replicas.
//!
//! - `routes`: the route table (path shapes, methods, handlers, 405s);
//! - `input`: typed query strings and JSON bodies, with the checks that
//!   keep hostile input away from the services (depth, NUL, UTF-8);
//! - `render`: the JSON shapes of the contract;
//! - `links`, `users`, `events`: one handler per route and method;
//! - `bulk`: the streaming CSV upload of `POST /users/bulk`;
//! - `fuzz` (tests only): the translation above as a proptest fuzz target;
//! - `openapi`: the contract (`docs/openapi.yaml`) served at
//!   `GET /openapi.json`;
//! - this module: the reply type, the per-request context handlers get,
//!   and the one call-the-replica-and-map-errors helper they all use.

// Errors here are finished HTTP replies returned once per request, not
// values that travel through hot loops; boxing them would buy nothing.
#![allow(clippy::result_large_err)]

mod bulk;
mod events;
#[cfg(test)]
mod fuzz;
pub mod input;
mod links;
pub mod openapi;
pub mod render;
pub mod routes;
mod users;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

use crate::balance::{CallError, Upstreams};
pub use routes::{Handler, Local, Lookup, Route, Routed, lookup, route};

/// Largest JSON body accepted.
pub const MAX_JSON_BODY: usize = 1024 * 1024;
/// Largest CSV upload accepted by `POST /users/bulk`.
pub const MAX_UPLOAD_BODY: usize = 10 * 1024 * 1024;

/// What a handler returns: the reply, or an error reply.
pub type Outcome = Result<Reply, Reply>;
/// A handler that calls the links replicas.
pub type ApiFn = for<'a> fn(&'a Call<'a>) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// What a handler answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    /// The replica that served the call, if any.
    pub upstream: Option<Arc<str>>,
    /// For a served redirect: (link id, user id), to record the click.
    pub click: Option<(i64, i64)>,
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: u16, v: Value) -> Self {
        Self::raw_json(
            status,
            Bytes::from(serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec())),
        )
    }

    /// A reply whose JSON body is already encoded.
    pub fn raw_json(status: u16, body: Bytes) -> Self {
        Self {
            status,
            body,
            content_type: "application/json",
            headers: Vec::new(),
            upstream: None,
            click: None,
        }
    }

    /// `{"error": msg}` with `status`.
    pub fn error(status: u16, msg: impl Into<String>) -> Self {
        Self::json(status, json!({"error": msg.into()}))
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn served_by(mut self, upstream: Arc<str>) -> Self {
        self.upstream = Some(upstream);
        self
    }
}

/// Everything a handler gets about one request.
#[derive(Debug)]
pub struct Call<'a> {
    pub upstreams: &'a Arc<Upstreams>,
    pub routed: &'a Routed,
    pub query: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub body: Bytes,
    /// The edge's own request id (sent upstream as `x-request-id`).
    pub request_id: &'a str,
    pub traceparent: &'a str,
    /// The edge's resolution cache, when enabled.
    pub cache: Option<&'a crate::resolve_cache::ResolveCache>,
}

impl Call<'_> {
    /// The id in the path (routing guarantees it for `{id}` routes).
    fn id(&self) -> i64 {
        self.routed.id.unwrap_or_default()
    }

    /// A gRPC request carrying the request id and trace context.
    fn grpc<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Ok(v) = self.request_id.parse() {
            r.metadata_mut().insert("x-request-id", v);
        }
        if let Ok(v) = self.traceparent.parse() {
            r.metadata_mut().insert("traceparent", v);
        }
        r
    }

    /// Calls a links replica (balanced, retried when `idempotent` or when
    /// nothing was sent) and maps a failure to the HTTP error of the
    /// contract. Returns the answer and the replica that gave it.
    async fn call<M, T, F, Fut>(
        &self,
        idempotent: bool,
        msg: M,
        f: F,
    ) -> Result<(T, Arc<str>), Reply>
    where
        M: Clone,
        F: Fn(Channel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.upstreams
            .call(idempotent, |ch| f(ch, self.grpc(msg.clone())))
            .await
            .map(|(resp, replica)| (resp.into_inner(), Arc::from(replica.addr.as_str())))
            .map_err(|e| call_error(e, self.routed.route))
    }
}

/// Maps a gRPC status from the links service to the HTTP error of the
/// contract. Nothing becomes a bare 500: unknown failures are 502 with a
/// generic message (the cause is logged with the request id).
pub fn status_reply(s: &tonic::Status, route: Route) -> Reply {
    // A status without a message still answers a non-empty `error`.
    let msg = if s.message().trim().is_empty() {
        default_message(s.code()).to_owned()
    } else {
        s.message().to_owned()
    };
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange => Reply::error(400, msg),
        Code::NotFound => Reply::error(404, msg),
        Code::AlreadyExists => Reply::error(409, msg),
        Code::FailedPrecondition if route == Route::Redirect => Reply::error(410, msg),
        Code::FailedPrecondition | Code::Aborted => Reply::error(409, msg),
        Code::Unavailable => Reply::error(
            503,
            if shortlink_proto::errors::is_database_unavailable(s) {
                msg
            } else {
                "service unavailable".into()
            },
        )
        .with_header("retry-after", "5"),
        Code::DeadlineExceeded | Code::Cancelled => Reply::error(504, "upstream timed out"),
        Code::ResourceExhausted => Reply::error(429, msg),
        Code::Unauthenticated => Reply::error(401, msg),
        Code::PermissionDenied => Reply::error(403, msg),
        _ => {
            // Logged at WARN with the request id by the proxy's logging
            // phase (status >= 500); the client sees no internals.
            tracing::warn!(code = ?s.code(), message = %s.message(), "upstream error");
            Reply::error(502, "upstream error")
        }
    }
}

/// The `error` of a gRPC status that came without a message.
fn default_message(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument | Code::OutOfRange => "invalid request",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::FailedPrecondition | Code::Aborted => "conflict with the current state",
        Code::ResourceExhausted => "too many requests",
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "forbidden",
        _ => "upstream error",
    }
}

/// Maps a failed upstream call to its HTTP error.
pub fn call_error(e: CallError, route: Route) -> Reply {
    match e {
        CallError::NoReplica => Reply::error(503, "no healthy links replica; try again shortly")
            .with_header("retry-after", "2"),
        CallError::Status(s) => status_reply(&s, route),
    }
}

/// Runs the handler of an API route. Local routes are answered by the
/// proxy, which knows the edge's own state.
pub async fn dispatch(f: ApiFn, call: &Call<'_>) -> Reply {
    f(call).await.unwrap_or_else(|e| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_http() {
        let s = |c| tonic::Status::new(c, "m");
        assert_eq!(
            status_reply(&s(Code::FailedPrecondition), Route::Redirect).status,
            410
        );
        assert_eq!(
            status_reply(&s(Code::FailedPrecondition), Route::User).status,
            409
        );
        assert_eq!(status_reply(&s(Code::Internal), Route::Url).status, 502);
        assert_eq!(status_reply(&s(Code::Unavailable), Route::Url).status, 503);
        assert_eq!(
            status_reply(&s(Code::DeadlineExceeded), Route::Url).status,
            504
        );
        // Found by the fuzz target: a status without a message answered
        // `{"error": ""}`, which the contract does not allow.
        let r = status_reply(&tonic::Status::new(Code::NotFound, ""), Route::Url);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!((r.status, v["error"].as_str()), (404, Some("not found")));
    }
}
