//! What the bus carries. A producer hands over either the typed event
//! (`Event`: request, link or log event) or bytes that are already JSON.
//! Turning a typed event into its JSON wire form is left to the backend:
//! the Kafka backend serialises on its own producer thread, the in-process
//! backend hands the same `Arc` to every group and serialises only when a
//! consumer asks for bytes. Either way the request thread never pays for
//! JSON, and the wire form on Kafka is the one `serde_json` has always
//! written for these types.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use shortlink_proto::events::{LinkEvent, LogEvent, OpsEvent, RequestEvent};

/// A typed pipeline event (`shortlink.events.v1`).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Request(RequestEvent),
    Link(LinkEvent),
    Log(LogEvent),
    Ops(OpsEvent),
}

impl Event {
    /// Appends the JSON wire form to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // These types are plain structs of strings and numbers: serde_json
        // cannot fail on them (no maps with non-string keys, no I/O).
        let r = match self {
            Event::Request(e) => serde_json::to_writer(&mut *out, e),
            Event::Link(e) => serde_json::to_writer(&mut *out, e),
            Event::Log(e) => serde_json::to_writer(&mut *out, e),
            Event::Ops(e) => serde_json::to_writer(&mut *out, e),
        };
        debug_assert!(r.is_ok(), "event types always serialise");
    }

    /// The JSON wire form.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(384);
        self.write_json(&mut v);
        v
    }
}

impl From<RequestEvent> for Event {
    fn from(e: RequestEvent) -> Self {
        Event::Request(e)
    }
}

impl From<LinkEvent> for Event {
    fn from(e: LinkEvent) -> Self {
        Event::Link(e)
    }
}

impl From<LogEvent> for Event {
    fn from(e: LogEvent) -> Self {
        Event::Log(e)
    }
}

impl From<OpsEvent> for Event {
    fn from(e: OpsEvent) -> Self {
        Event::Ops(e)
    }
}

/// One event as published: JSON bytes or a typed event. Cloning is cheap
/// (reference counted), which is how the in-process bus hands one event to
/// every group.
#[derive(Clone, Debug)]
pub enum Payload {
    /// Already in wire form (JSON).
    Json(Bytes),
    /// Typed; serialised only where bytes are needed.
    Event(Arc<Event>),
}

impl Payload {
    /// The JSON wire form (serialises a typed event).
    pub fn json(&self) -> Cow<'_, [u8]> {
        match self {
            Payload::Json(b) => Cow::Borrowed(b),
            Payload::Event(e) => Cow::Owned(e.to_json()),
        }
    }

    /// Reads the payload as `T`. A typed event of that type is cloned
    /// without going through JSON; anything else is decoded from its JSON
    /// form, exactly as a consumer on Kafka decodes it.
    pub fn decode<T: FromEvent>(&self) -> serde_json::Result<T> {
        match self {
            Payload::Event(e) => match T::from_event(e) {
                Some(v) => Ok(v),
                None => serde_json::from_slice(&e.to_json()),
            },
            Payload::Json(b) => serde_json::from_slice(b),
        }
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload::Json(Bytes::from(v))
    }
}

impl From<Bytes> for Payload {
    fn from(v: Bytes) -> Self {
        Payload::Json(v)
    }
}

impl From<Event> for Payload {
    fn from(e: Event) -> Self {
        Payload::Event(Arc::new(e))
    }
}

impl From<RequestEvent> for Payload {
    fn from(e: RequestEvent) -> Self {
        Event::from(e).into()
    }
}

impl From<LinkEvent> for Payload {
    fn from(e: LinkEvent) -> Self {
        Event::from(e).into()
    }
}

impl From<LogEvent> for Payload {
    fn from(e: LogEvent) -> Self {
        Event::from(e).into()
    }
}

/// A type a consumer reads events as: JSON-decodable, with a shortcut from
/// a typed event of the same type.
pub trait FromEvent: DeserializeOwned {
    /// The value, when `e` holds this type directly.
    fn from_event(e: &Event) -> Option<Self>;
}

impl FromEvent for RequestEvent {
    fn from_event(e: &Event) -> Option<Self> {
        match e {
            Event::Request(r) => Some(r.clone()),
            _ => None,
        }
    }
}

impl FromEvent for LinkEvent {
    fn from_event(e: &Event) -> Option<Self> {
        match e {
            Event::Link(r) => Some(r.clone()),
            _ => None,
        }
    }
}

impl FromEvent for LogEvent {
    fn from_event(e: &Event) -> Option<Self> {
        match e {
            Event::Log(r) => Some(r.clone()),
            _ => None,
        }
    }
}

impl FromEvent for OpsEvent {
    fn from_event(e: &Event) -> Option<Self> {
        match e {
            Event::Ops(r) => Some(r.clone()),
            _ => None,
        }
    }
}

impl FromEvent for serde_json::Value {
    fn from_event(e: &Event) -> Option<Self> {
        match e {
            Event::Request(r) => serde_json::to_value(r).ok(),
            Event::Link(r) => serde_json::to_value(r).ok(),
            Event::Log(r) => serde_json::to_value(r).ok(),
            Event::Ops(r) => serde_json::to_value(r).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click() -> LinkEvent {
        LinkEvent {
            schema_version: 1,
            kind: "click".into(),
            link_id: 7,
            request_id: "r1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn typed_and_json_payloads_decode_alike() {
        let typed = Payload::from(click());
        let bytes = Payload::from(serde_json::to_vec(&click()).unwrap());
        assert_eq!(typed.json(), bytes.json(), "same wire form");
        assert_eq!(typed.decode::<LinkEvent>().unwrap(), click());
        assert_eq!(bytes.decode::<LinkEvent>().unwrap(), click());
        assert_eq!(
            typed.decode::<serde_json::Value>().unwrap(),
            bytes.decode::<serde_json::Value>().unwrap()
        );
        // Read as another type: through JSON, as on Kafka.
        let other: RequestEvent = typed.decode().unwrap();
        assert_eq!(other.request_id, "r1");
        assert_eq!(other, bytes.decode::<RequestEvent>().unwrap());
    }
}
