//! Client keys: what limits, strikes and bans are counted against.
//!
//! An address is first made canonical (an IPv4-mapped IPv6 address such as
//! `::ffff:203.0.113.7` becomes `203.0.113.7`), then cut to the configured
//! prefix: by default a whole IPv4 address (/32) and an IPv6 /64, because
//! one IPv6 subscriber usually holds a whole /64 and can rotate through it
//! at will. A key is the address itself when the prefix is the full length
//! (so IPv4 keys read as before: `203.0.113.7`), else the network in CIDR
//! form (`2001:db8:1:2::/64`). Edges and admin derive keys the same way, so
//! an operator may name a client by any address inside its network, in
//! either spelling.

use std::net::IpAddr;

use ipnet::IpNet;

/// The key of requests whose forwarded client address could not be read
/// (see the edge's identity rules). It is limited like one client; it is
/// never banned (no address can be named by it).
pub const UNPARSEABLE: &str = "unparseable";

/// Prefix lengths used to key clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefixes {
    pub v4: u8,
    pub v6: u8,
}

impl Default for Prefixes {
    fn default() -> Self {
        Self { v4: 32, v6: 64 }
    }
}

/// The accepted prefix lengths: shorter ones would lump whole providers
/// into one client.
pub const V4_RANGE: std::ops::RangeInclusive<u8> = 16..=32;
pub const V6_RANGE: std::ops::RangeInclusive<u8> = 32..=128;

/// `::ffff:a.b.c.d` as `a.b.c.d`; everything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl Prefixes {
    /// Checks the lengths (for start-up flags).
    pub fn validate(&self) -> Result<(), String> {
        if !V4_RANGE.contains(&self.v4) {
            return Err(format!(
                "the IPv4 client prefix must be from /{} to /{} (got /{})",
                V4_RANGE.start(),
                V4_RANGE.end(),
                self.v4
            ));
        }
        if !V6_RANGE.contains(&self.v6) {
            return Err(format!(
                "the IPv6 client prefix must be from /{} to /{} (got /{})",
                V6_RANGE.start(),
                V6_RANGE.end(),
                self.v6
            ));
        }
        Ok(())
    }

    fn len_for(&self, ip: &IpAddr) -> u8 {
        match ip {
            IpAddr::V4(_) => self.v4,
            IpAddr::V6(_) => self.v6,
        }
    }

    /// The network `ip` (made canonical) is keyed by.
    pub fn net(&self, ip: IpAddr) -> IpNet {
        let ip = canonical(ip);
        // The length is within the family's range (validated, and clamped
        // here so that a bad value can never panic).
        let len = self.len_for(&ip).min(match ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        });
        IpNet::new(ip, len)
            .map(|n| n.trunc())
            .unwrap_or_else(|_| IpNet::from(ip))
    }

    /// The key of `ip`.
    pub fn key(&self, ip: IpAddr) -> String {
        key_of(self.net(ip))
    }

    /// The key a stored key maps to under these prefixes: a ban stored
    /// under a single address (by an older version, or under other
    /// prefixes) is enforced for the address's network. Keys that are no
    /// address at all are kept as they are.
    pub fn normalize(&self, key: &str) -> String {
        if let Ok(ip) = key.parse::<IpAddr>() {
            return self.key(ip);
        }
        match key.parse::<IpNet>().map(unmap) {
            // A network at least as specific as the configured prefix is
            // widened to it; a wider one cannot be one key and stays as is.
            Ok(net) if net.prefix_len() >= self.len_for(&net.addr()) => self.key(net.addr()),
            _ => key.to_owned(),
        }
    }
}

/// A mapped IPv6 network of at least /96 is the IPv4 network inside.
fn unmap(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), n.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        n => n,
    }
}

fn key_of(net: IpNet) -> String {
    use std::fmt::Write;
    // Sized once: the longest IPv6 network is 43 characters.
    let mut key = String::with_capacity(43);
    let _ = if net.prefix_len() == net.max_prefix_len() {
        write!(key, "{}", net.addr())
    } else {
        write!(key, "{net}")
    };
    key
}

/// A client named by an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The key its bans and strikes live under.
    pub key: String,
    /// Other spellings state may have been stored under by older
    /// versions (the address as given, the mapped IPv6 form), to be
    /// cleaned up on unban and consulted on lookup.
    pub aliases: Vec<String>,
}

/// Parses what an operator typed: an address (IPv4, IPv6, IPv4-mapped
/// IPv6) or a network of exactly the configured prefix length. An address
/// names the network it is keyed by, so banning one IPv6 address bans its
/// /64.
pub fn parse_target(input: &str, prefixes: &Prefixes) -> Result<Target, String> {
    let s = input.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        let key = prefixes.key(ip);
        let mut aliases = Vec::new();
        for alt in [ip.to_string(), canonical(ip).to_string()] {
            if alt != key && !aliases.contains(&alt) {
                aliases.push(alt);
            }
        }
        if let IpAddr::V4(v4) = canonical(ip) {
            let mapped = IpAddr::V6(v4.to_ipv6_mapped()).to_string();
            if mapped != key && !aliases.contains(&mapped) {
                aliases.push(mapped);
            }
        }
        return Ok(Target { key, aliases });
    }
    if let Ok(net) = s.parse::<IpNet>().map(unmap) {
        let want = prefixes.len_for(&net.addr());
        if net.prefix_len() != want {
            let family = if net.addr().is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(format!(
                "{family} clients are keyed by /{want} networks: give an address or a /{want} network (got {s:?})"
            ));
        }
        return Ok(Target {
            key: key_of(net.trunc()),
            aliases: Vec::new(),
        });
    }
    Err(format!("ip {s:?} is not an IPv4 or IPv6 address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_keys_are_addresses_and_mapped_ipv6_is_ipv4() {
        let p = Prefixes::default();
        assert_eq!(p.key(ip("203.0.113.7")), "203.0.113.7");
        assert_eq!(p.key(ip("::ffff:203.0.113.7")), "203.0.113.7");
        assert_eq!(p.key(ip("::ffff:cb00:7107")), "203.0.113.7");
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let p = Prefixes::default();
        let a = p.key(ip("2001:db8:1:2::1"));
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_eq!(p.key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")), a);
        assert_ne!(p.key(ip("2001:db8:1:3::1")), a);
        let wide = Prefixes { v4: 24, v6: 48 };
        assert_eq!(wide.key(ip("203.0.113.7")), "203.0.113.0/24");
        assert_eq!(wide.key(ip("2001:db8:1:2::1")), "2001:db8:1::/48");
        let exact = Prefixes { v4: 32, v6: 128 };
        assert_eq!(exact.key(ip("2001:db8::1")), "2001:db8::1");
        // Out-of-range lengths never panic.
        let bad = Prefixes { v4: 99, v6: 200 };
        assert_eq!(bad.key(ip("203.0.113.7")), "203.0.113.7");
        assert!(bad.validate().is_err());
        assert!(Prefixes { v4: 8, v6: 64 }.validate().is_err());
        assert!(Prefixes::default().validate().is_ok());
    }

    #[test]
    fn operators_may_name_a_client_in_any_spelling() {
        let p = Prefixes::default();
        let t = parse_target(" ::ffff:198.51.100.9 ", &p).unwrap();
        assert_eq!(t.key, "198.51.100.9");
        assert!(t.aliases.contains(&"::ffff:198.51.100.9".to_owned()));
        let t = parse_target("198.51.100.9", &p).unwrap();
        assert_eq!(t.key, "198.51.100.9");
        assert_eq!(t.aliases, vec!["::ffff:198.51.100.9".to_owned()]);
        let t = parse_target("2001:db8:5:6::9", &p).unwrap();
        assert_eq!(t.key, "2001:db8:5:6::/64");
        assert_eq!(t.aliases, vec!["2001:db8:5:6::9".to_owned()]);
        assert_eq!(
            parse_target("2001:db8:5:6::/64", &p).unwrap().key,
            "2001:db8:5:6::/64"
        );
        assert_eq!(
            parse_target("2001:db8:5:6:1::/64", &p).unwrap().key,
            "2001:db8:5:6::/64"
        );
        assert_eq!(
            parse_target("198.51.100.9/32", &p).unwrap().key,
            "198.51.100.9"
        );
        assert_eq!(
            parse_target("::ffff:198.51.100.9/128", &p).unwrap().key,
            "198.51.100.9"
        );
        assert!(parse_target("2001:db8::/48", &p).is_err());
        assert!(parse_target("198.51.100.0/24", &p).is_err());
        assert!(parse_target("nonsense", &p).is_err());
        assert_eq!(p.normalize("2001:db8:5:6::9"), "2001:db8:5:6::/64");
        assert_eq!(p.normalize("::ffff:198.51.100.9"), "198.51.100.9");
        assert_eq!(p.normalize("2001:db8:5:6::9/128"), "2001:db8:5:6::/64");
        assert_eq!(p.normalize("2001:db8::/48"), "2001:db8::/48");
        assert_eq!(p.normalize(UNPARSEABLE), UNPARSEABLE);
    }
}
