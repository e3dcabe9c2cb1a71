//! The wire contracts of shortlink. This crate is the only place that defines
//! wire types; services and the edge depend on it and never on each other.

/// `shortlink.v1`: links, users and events.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("shortlink.v1");
}

/// `shortlink.events.v1`: the event pipeline's schema (JSON on the wire).
pub mod events {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("shortlink.events.v1");

    /// The schema version written into every event.
    pub const SCHEMA_VERSION: u32 = 1;
}

pub mod errors;
pub mod json;

/// Encoded `FileDescriptorSet` of every shortlink proto file, for
/// tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/shortlink_descriptor.bin"));

/// Conversions between `prost_types::Timestamp` and seconds/nanos.
pub fn timestamp(secs: i64, nanos: i32) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs,
        nanos,
    }
}
