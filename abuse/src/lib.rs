//! The ban and rate-limit store shared by the edges and admin.
//!
//! - `model`: `Ban`, `Limits` (with the bounds every setter validates
//!   against), `Take` (one rate-limit decision), `Change` (the notices on
//!   the channel).
//! - `client`: client keys: canonical addresses (IPv4-mapped IPv6 as IPv4)
//!   cut to a configurable prefix (IPv6 /64 by default), and parsing of the
//!   addresses and networks operators type.
//! - `backend`: the `AbuseBackend` trait, with `redis::RedisBackend`
//!   (shared, one-round-trip GCRA in a Lua script, pub/sub) and
//!   `memory::MemoryBackend` (one process, bounded maps).
//! - `store`: `AbuseStore`, over one backend: PostgreSQL persistence of
//!   bans, default limits, in-process change delivery.
//! - `gcra`: the in-memory rate limiter (the memory backend's, and the
//!   edge's fallback while Redis is away); `bounded`: the size-capped map
//!   every per-client map uses.

pub mod backend;
pub mod bounded;
pub mod client;
pub mod gcra;
pub mod memory;
pub mod model;
pub mod redis;
pub mod store;

pub use backend::{AbuseBackend, StoreError};
pub use client::{Prefixes, UNPARSEABLE};
pub use model::{Ban, BanType, Change, Limits, Take};
pub use store::{AbuseStore, StoreOptions};
