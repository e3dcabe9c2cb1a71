//! Who a request comes from, for rate limits and bans.
//!
//! The TCP peer, made canonical (`::ffff:a.b.c.d` is `a.b.c.d`), is the
//! client unless it is in `TRUSTED_PROXIES`. From a trusted peer,
//! `X-Forwarded-For` is read right to left across all its header lines
//! (later lines are appended by later hops, so the last line's last entry
//! is the nearest hop); the client is the right-most address that is not a
//! trusted proxy. When every entry is a trusted proxy, the left-most one is
//! the client (an internal caller).
//!
//! An entry is an IPv4 or IPv6 address, optionally with a port (`ip:port`,
//! `[v6]:port`) or in brackets (`[v6]`): the port is dropped (some load
//! balancers append it). Anything else — bytes outside ASCII, an empty
//! entry, a host name, `unknown`, garbage — stops the walk: the entries to
//! its left were written by whoever sent the request and cannot be
//! believed, and the trusted proxy itself must never become the client
//! (that would let one bad header get a load balancer, and everyone behind
//! it, banned). The request is then attributed to the synthetic
//! [`Client::Unparseable`] identity, which has its own rate-limit budget
//! and is counted in `shortlink_client_identity_unparseable_total`.

use std::net::IpAddr;

use ipnet::IpNet;

/// The identity limits and bans are applied to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// A client address (canonical).
    Ip(IpAddr),
    /// A trusted proxy forwarded an entry that is not an address.
    Unparseable,
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Ip(ip) => ip.fmt(f),
            Client::Unparseable => f.write_str(shortlink_abuse::UNPARSEABLE),
        }
    }
}

/// The client of a request from `peer` carrying the `X-Forwarded-For`
/// header lines `xff` (in the order received). See the module docs.
pub fn identify<'a>(
    peer: IpAddr,
    xff: impl DoubleEndedIterator<Item = &'a [u8]>,
    trusted: &[IpNet],
) -> Client {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return Client::Ip(peer);
    }
    let mut client = peer;
    for line in xff.rev() {
        if line.iter().all(|b| matches!(b, b' ' | b'\t')) {
            continue;
        }
        for entry in line.rsplit(|b| *b == b',') {
            let Some(ip) = parse_entry(entry) else {
                return Client::Unparseable;
            };
            let ip = ip.to_canonical();
            client = ip;
            if !is_trusted(&ip) {
                return Client::Ip(ip);
            }
        }
    }
    Client::Ip(client)
}

/// One `X-Forwarded-For` entry: an address, `ipv4:port`, `[ipv6]` or
/// `[ipv6]:port`, with optional surrounding spaces.
fn parse_entry(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(raw).ok()?;
    if !s.is_ascii() {
        return None;
    }
    let s = s.trim_matches([' ', '\t']);
    if s.len() > 64 {
        return None;
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let port_ok = |p: &str| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok();
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(port_ok)) {
            return None;
        }
        return inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (host, port) = s.split_once(':')?;
    if !port_ok(port) {
        return None;
    }
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted() -> Vec<IpNet> {
        vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]
    }

    fn id(peer: &str, lines: &[&[u8]]) -> Client {
        identify(ip(peer), lines.iter().copied(), &trusted())
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        assert_eq!(
            id("203.0.113.9", &[b"1.1.1.1"]),
            Client::Ip(ip("203.0.113.9"))
        );
        assert_eq!(
            identify(ip("127.0.0.1"), [b"1.1.1.1".as_slice()].into_iter(), &[]),
            Client::Ip(ip("127.0.0.1"))
        );
        assert_eq!(id("127.0.0.1", &[]), Client::Ip(ip("127.0.0.1")));
        assert_eq!(
            id("127.0.0.1", &[b"198.51.100.7, 10.1.2.3"]),
            Client::Ip(ip("198.51.100.7"))
        );
        // Entries left of the first untrusted one are the client's own
        // claims and ignored.
        assert_eq!(
            id("127.0.0.1", &[b"6.6.6.6, 198.51.100.7"]),
            Client::Ip(ip("198.51.100.7"))
        );
        // Only trusted hops: the left-most is the client.
        assert_eq!(
            id("127.0.0.1", &[b"10.9.9.9, 10.1.2.3"]),
            Client::Ip(ip("10.9.9.9"))
        );
    }

    #[test]
    fn every_header_line_is_read_right_to_left() {
        // The second line was appended by the nearest proxy.
        assert_eq!(
            id("127.0.0.1", &[b"198.51.100.1", b"203.0.113.5, 10.0.0.2"]),
            Client::Ip(ip("203.0.113.5"))
        );
        assert_eq!(
            id("127.0.0.1", &[b"198.51.100.1", b"10.0.0.3", b"10.0.0.2"]),
            Client::Ip(ip("198.51.100.1"))
        );
        assert_eq!(
            id("127.0.0.1", &[b"198.51.100.1", b" "]),
            Client::Ip(ip("198.51.100.1"))
        );
    }

    /// Before: a byte >= 0x80 made the whole header unreadable and the
    /// trusted proxy became the client (and got banned); garbage made the
    /// last trusted hop the client.
    #[test]
    fn unreadable_entries_never_make_the_proxy_the_client() {
        for bad in [
            b"203.0.113.5\xe9".as_slice(),
            b"\xff",
            b"198.51.100.1, \xc3\xa9",
            b"garbage",
            b"unknown",
            b"198.51.100.1,,10.0.0.2",
            b"198.51.100.1, ",
            b"[2001:db8::1",
            b"2001:db8::1]:80",
            b"203.0.113.5:99999",
            b"203.0.113.5:",
            b"example.com:80",
            b"[203.0.113.5]",
        ] {
            assert_eq!(
                id("127.0.0.1", &[bad]),
                Client::Unparseable,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // An empty header line holds no entry: as if absent.
        assert_eq!(id("127.0.0.1", &[b""]), Client::Ip(ip("127.0.0.1")));
        // Garbage left of a real client is that client's own claim.
        assert_eq!(
            id("127.0.0.1", &[b"garbage, 198.51.100.7"]),
            Client::Ip(ip("198.51.100.7"))
        );
        // Garbage in a later line than a valid one still stops the walk.
        assert_eq!(
            id("127.0.0.1", &[b"198.51.100.7", b"\x80"]),
            Client::Unparseable
        );
    }

    #[test]
    fn ports_and_brackets_are_dropped() {
        for (raw, want) in [
            (b"203.0.113.5:4711".as_slice(), "203.0.113.5"),
            (b"[2001:db8::1]", "2001:db8::1"),
            (b"[2001:db8::1]:443", "2001:db8::1"),
            (b" 2001:db8::1 ", "2001:db8::1"),
        ] {
            assert_eq!(id("127.0.0.1", &[raw]), Client::Ip(ip(want)));
        }
    }

    #[test]
    fn ipv4_mapped_addresses_are_canonical_before_trust() {
        // A mapped peer inside a trusted IPv4 range is trusted.
        assert_eq!(
            id("::ffff:127.0.0.1", &[b"198.51.100.7"]),
            Client::Ip(ip("198.51.100.7"))
        );
        // A mapped untrusted peer is its IPv4 address.
        assert_eq!(
            id("::ffff:203.0.113.9", &[b"1.1.1.1"]),
            Client::Ip(ip("203.0.113.9"))
        );
        // Mapped forwarded entries too, and trusted ones are skipped.
        assert_eq!(
            id("127.0.0.1", &[b"::ffff:198.51.100.7, ::ffff:10.0.0.1"]),
            Client::Ip(ip("198.51.100.7"))
        );
        assert_eq!(
            id("fd00::5", &[b"2001:db8:1:2::99"]),
            Client::Ip(ip("2001:db8:1:2::99"))
        );
    }
}
