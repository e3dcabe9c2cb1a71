//! Typed error details that cross crate boundaries.
//!
//! A failure that another crate must recognise travels as a
//! `google.rpc.ErrorInfo` in the gRPC status details (domain
//! [`DOMAIN`], a [`Reason`]), never as a message prefix: the message stays
//! for humans and may change, the reason is the contract. The services
//! build such statuses here and the edge recognises them here, so both ends
//! agree by construction. `grpcurl` shows the detail too.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every shortlink error detail.
pub const DOMAIN: &str = "shortlink.v1";

/// Why a call failed, as carried in `ErrorInfo.reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The links service answered, but its database cannot be used right
    /// now (breaker open, unreachable, too slow). The replica is healthy:
    /// a balancer must not eject it, and the caller may retry later.
    DatabaseUnavailable,
}

impl Reason {
    /// The wire spelling (UPPER_SNAKE_CASE, as `ErrorInfo` asks).
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::DatabaseUnavailable => "DATABASE_UNAVAILABLE",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "DATABASE_UNAVAILABLE" => Some(Reason::DatabaseUnavailable),
            _ => None,
        }
    }
}

/// A status with `code`, `message` and the typed `reason`.
pub fn status(code: Code, message: impl Into<String>, reason: Reason) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason.as_str(), DOMAIN, HashMap::<String, String>::new()),
    )
}

/// UNAVAILABLE because the database cannot be used; `message` is shown to
/// the client as is.
pub fn database_unavailable(message: impl Into<String>) -> Status {
    status(Code::Unavailable, message, Reason::DatabaseUnavailable)
}

/// The shortlink reason carried by `s`, if any (details of another domain,
/// or undecodable details, give `None`).
pub fn reason(s: &Status) -> Option<Reason> {
    if s.details().is_empty() {
        return None;
    }
    let info = s.get_details_error_info()?;
    if info.domain != DOMAIN {
        return None;
    }
    Reason::parse(&info.reason)
}

/// True when `s` says the links service's database is unavailable.
pub fn is_database_unavailable(s: &Status) -> bool {
    reason(s) == Some(Reason::DatabaseUnavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_unavailable_is_recognised_by_its_detail_not_its_message() {
        let s = database_unavailable("database unavailable: circuit breaker open");
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), "database unavailable: circuit breaker open");
        assert!(is_database_unavailable(&s));
        assert_eq!(reason(&s), Some(Reason::DatabaseUnavailable));

        // The same words without the detail are not the typed error...
        let plain = Status::unavailable("database unavailable: circuit breaker open");
        assert!(!is_database_unavailable(&plain));
        // ...and the detail does not depend on the words.
        assert!(is_database_unavailable(&database_unavailable("try later")));
    }

    #[test]
    fn the_detail_survives_the_wire_encoding() {
        // What a client sees: the status rebuilt from its header form
        // (grpc-status, grpc-message, grpc-status-details-bin).
        let s = database_unavailable("database unavailable: x");
        let mut headers = http::HeaderMap::new();
        s.add_header(&mut headers).expect("status encodes");
        let back = Status::from_header_map(&headers).expect("status decodes");
        assert!(is_database_unavailable(&back));
    }

    #[test]
    fn foreign_or_broken_details_are_not_ours() {
        let other = Status::with_error_details(
            Code::Unavailable,
            "x",
            ErrorDetails::with_error_info(
                "DATABASE_UNAVAILABLE",
                "example.com",
                HashMap::<String, String>::new(),
            ),
        );
        assert_eq!(reason(&other), None);
        let unknown = Status::with_error_details(
            Code::Unavailable,
            "x",
            ErrorDetails::with_error_info(
                "SOMETHING_ELSE",
                DOMAIN,
                HashMap::<String, String>::new(),
            ),
        );
        assert_eq!(reason(&unknown), None);
        let garbage = Status::with_details(
            Code::Unavailable,
            "x",
            bytes::Bytes::from_static(b"\xff\xff"),
        );
        assert_eq!(reason(&garbage), None);
    }
}
