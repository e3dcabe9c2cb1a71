//! Request identity: the `x-request-id` header and W3C `traceparent`.

use rand::Rng;

/// Header (and gRPC metadata key) that carries the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// An incoming request id is accepted when it is 1 to 128 characters of
/// `[A-Za-z0-9._-]`; anything else is replaced by a generated one.
pub fn is_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Returns the incoming id when valid, else a fresh one.
pub fn accept_or_generate(incoming: Option<&str>) -> String {
    match incoming {
        Some(id) if is_valid(id) => id.to_owned(),
        _ => generate(),
    }
}

/// A new random request id: 32 lowercase hex characters.
pub fn generate() -> String {
    let v: u128 = rand::rng().random();
    format!("{v:032x}")
}

/// Extracts the 32-hex-character trace id from a W3C `traceparent` value
/// (`00-<trace-id>-<parent-id>-<flags>`), if it is well formed.
pub fn trace_id_from_traceparent(tp: &str) -> Option<&str> {
    let mut parts = tp.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(version, 2)
        && hex(trace_id, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0'))
    .then_some(trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_sane_ids_and_replaces_others() {
        assert_eq!(accept_or_generate(Some("abc-123_X.y")), "abc-123_X.y");
        let long = "a".repeat(129);
        for bad in ["", "has space", "semi;colon", long.as_str(), "ü"] {
            let got = accept_or_generate(Some(bad));
            assert_ne!(got, bad);
            assert!(is_valid(&got));
        }
        assert_eq!(accept_or_generate(Some(&"a".repeat(128))).len(), 128);
    }

    #[test]
    fn parses_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_from_traceparent(tp),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_from_traceparent("00-zz-00f067aa0ba902b7-01"), None);
        assert_eq!(
            trace_id_from_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
    }
}
