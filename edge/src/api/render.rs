//! The JSON shapes of the public contract (`shared/design.md`): the URL,
//! user and event objects, the `{data, page, per_page, total}` envelope of
//! `GET /urls` and `GET /users`, and the bare arrays the original system
//! returns for `GET /users/{id}/urls`, `GET /urls/{id}/events` and
//! `GET /events`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use shortlink_proto::v1 as pb;

use super::Reply;

/// ISO 8601 UTC, e.g. `2025-06-22T20:54:35Z`.
pub fn iso(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map_or(Value::Null, |d| {
            Value::String(d.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        })
}

/// The URL object.
pub fn url(l: &pb::Link) -> Value {
    json!({
        "id": l.id,
        "user_id": l.user_id,
        "short_code": l.short_code,
        "original_url": l.original_url,
        "title": l.title,
        "is_active": l.is_active,
        "created_at": iso(l.created_at.as_ref()),
        "updated_at": iso(l.updated_at.as_ref()),
    })
}

/// The user object.
pub fn user(u: &pb::User) -> Value {
    json!({"id": u.id, "username": u.username, "email": u.email, "created_at": iso(u.created_at.as_ref())})
}

/// The event object (`details` is `{}` when empty).
pub fn event(e: &pb::Event) -> Value {
    let details = e
        .details
        .as_ref()
        .map(|s| Value::Object(shortlink_proto::json::struct_to_json(s)))
        .unwrap_or_else(|| json!({}));
    json!({
        "id": e.id,
        "url_id": e.url_id,
        "user_id": e.user_id,
        "event_type": e.event_type,
        "timestamp": iso(e.timestamp.as_ref()),
        "details": details,
    })
}

/// `{data, page, per_page, total}`.
pub fn envelope(data: Vec<Value>, info: Option<pb::PageInfo>) -> Reply {
    let info = info.unwrap_or_default();
    Reply::json(
        200,
        json!({"data": data, "page": info.page, "per_page": info.per_page, "total": info.total}),
    )
}

/// A bare JSON array, as the original answers on the nested list routes.
pub fn array(data: Vec<Value>) -> Reply {
    Reply::json(200, Value::Array(data))
}
