//! The watchdog's control API: `GET /components` and
//! `POST /components/{name}/{action}`, every request authenticated with
//! `Authorization: Bearer <WATCHDOG_TOKEN>`. Without a configured token
//! every request is refused (fail closed). Errors are JSON
//! `{"error": "<message>"}`, like the public API's.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::supervisor::{ActError, Supervisor};

#[derive(Clone)]
struct Ctl {
    sup: Arc<Supervisor>,
    token: Option<Arc<str>>,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": msg.into()}))).into_response()
}

/// Equal in constant time (for the length of `a`).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(ctl): State<Ctl>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let Some(token) = ctl.token.as_deref() else {
        return error(
            StatusCode::FORBIDDEN,
            "the control API is disabled: no WATCHDOG_TOKEN is configured",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "missing bearer token: send Authorization: Bearer <WATCHDOG_TOKEN>",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
            r
        }
        Some(t) if same(t.trim().as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => error(StatusCode::UNAUTHORIZED, "wrong bearer token"),
    }
}

async fn list(State(ctl): State<Ctl>) -> Response {
    axum::Json(ctl.sup.components().await).into_response()
}

async fn one(State(ctl): State<Ctl>, Path(name): Path<String>) -> Response {
    match ctl.sup.component(&name).await {
        Some(c) => axum::Json(c).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no component named {name:?}"),
        ),
    }
}

async fn act(State(ctl): State<Ctl>, Path((name, action)): Path<(String, String)>) -> Response {
    match ctl.sup.act(&name, &action).await {
        Ok(c) => axum::Json(c).into_response(),
        Err(ActError::UnknownComponent(n)) => {
            error(StatusCode::NOT_FOUND, format!("no component named {n:?}"))
        }
        Err(ActError::UnknownAction(a)) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown action {a:?}: use one of {}",
                crate::supervisor::ACTIONS.join(", ")
            ),
        ),
        Err(ActError::Conflict(m)) => error(StatusCode::CONFLICT, m),
        Err(ActError::Backend(m)) => error(StatusCode::BAD_GATEWAY, m),
    }
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such route: GET /components, GET /components/{name}, POST /components/{name}/{action}",
    )
}

/// The router of the control API.
pub fn router(sup: Arc<Supervisor>, token: Option<String>) -> Router {
    let ctl = Ctl {
        sup,
        token: token.filter(|t| !t.is_empty()).map(Arc::from),
    };
    Router::new()
        .route("/components", get(list))
        .route("/components/{name}", get(one))
        .route("/components/{name}/{action}", post(act))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(ctl.clone(), auth))
        .with_state(ctl)
}

/// Binds `addr` and serves the control API until `shutdown`.
pub async fn serve(
    addr: std::net::SocketAddr,
    sup: Arc<Supervisor>,
    token: Option<String>,
    shutdown: shortlink_runtime::shutdown::Shutdown,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on WATCHDOG_ADDR {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let app = router(sup, token);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
    });
    Ok(local)
}
