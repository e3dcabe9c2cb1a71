//! The values the store holds: bans, the rate-limit and escalation settings
//! (with the bounds that keep every later computation finite), and the
//! change notices announced to every process.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Temporary bans expire; permanent ones do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BanType {
    Temporary,
    Permanent,
}

impl BanType {
    pub fn as_str(self) -> &'static str {
        match self {
            BanType::Temporary => "temporary",
            BanType::Permanent => "permanent",
        }
    }
}

/// One ban of one client key (an address, or the network a client is keyed
/// by: `2001:db8:1:2::/64`; see [`crate::client`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ban {
    /// The client key (the field keeps its historical name).
    pub ip: String,
    pub ban_type: BanType,
    pub reason: String,
    /// Rate-limit strikes that led to it (0 for manual bans).
    pub strikes: u32,
    /// Hour bans this client had collected when this ban was issued.
    pub hour_bans: u32,
    /// Who issued it: an edge id or "admin".
    pub issued_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Ban {
    /// Whether it is still in force.
    pub fn active(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }

    /// Seconds left for a temporary ban.
    pub fn remaining_s(&self, now: DateTime<Utc>) -> Option<u64> {
        self.expires_at
            .map(|e| (e - now).num_seconds().max(0) as u64)
    }
}

/// Lowest sustained rate accepted (one request per 1,000 s): below it the
/// time to refill one token stops being a sensible `Retry-After`.
pub const MIN_RPS: f64 = 0.001;
/// Highest sustained rate and burst accepted. Above a million requests per
/// second per client a limit means nothing, and the shared limiter keeps
/// its arithmetic exact only up to about this rate (microsecond clock).
pub const MAX_RPS: f64 = 1_000_000.0;
/// Largest burst accepted.
pub const MAX_BURST: f64 = 1_000_000.0;
/// Longest ban, strike window and anything else measured in seconds
/// (ten years; far inside what `chrono::Duration` and timestamps hold).
pub const MAX_DURATION_S: u64 = 10 * 365 * 86_400;
/// Largest strike or ban count setting.
pub const MAX_COUNT: u32 = 1_000_000;

/// Rate limits and escalation, changeable at run time through admin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Sustained requests per second per client.
    pub rps: f64,
    /// Burst per client.
    pub burst: f64,
    /// Strikes are counted over this window.
    pub strike_window_s: u64,
    /// The first this-many strikes carry a warning header.
    pub warn_strikes: u32,
    /// Strikes in the window that earn a temporary ban.
    pub ban_strikes: u32,
    /// Length of that ban ("one-hour ban").
    pub ban_duration_s: u64,
    /// Temporary bans after which the next ban is permanent.
    pub permanent_after: u32,
    /// Whether limits and bans are enforced at all.
    pub enforce: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rps: 50.0,
            burst: 100.0,
            strike_window_s: 600,
            warn_strikes: 3,
            ban_strikes: 10,
            ban_duration_s: 3600,
            permanent_after: 3,
            enforce: true,
        }
    }
}

impl Limits {
    /// Rejects values that are nonsense or that would overflow later (a
    /// ban end past what timestamps hold, an infinite `Retry-After`, NaN).
    /// Used for admin input, the edge's and admin's flags, and limits read
    /// back from the store.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rps.is_finite() && (MIN_RPS..=MAX_RPS).contains(&self.rps)) {
            return Err(format!(
                "rps must be a number from {MIN_RPS} to {MAX_RPS} (got {})",
                self.rps
            ));
        }
        if !(self.burst.is_finite() && (1.0..=MAX_BURST).contains(&self.burst)) {
            return Err(format!(
                "burst must be a number from 1 to {MAX_BURST} (got {})",
                self.burst
            ));
        }
        for (name, v) in [
            ("strike_window_s", self.strike_window_s),
            ("ban_duration_s", self.ban_duration_s),
        ] {
            if !(1..=MAX_DURATION_S).contains(&v) {
                return Err(format!(
                    "{name} must be from 1 to {MAX_DURATION_S} seconds (got {v})"
                ));
            }
        }
        for (name, v, min) in [
            ("warn_strikes", self.warn_strikes, 0),
            ("ban_strikes", self.ban_strikes, 1),
            ("permanent_after", self.permanent_after, 1),
        ] {
            if !(min..=MAX_COUNT).contains(&v) {
                return Err(format!(
                    "{name} must be from {min} to {MAX_COUNT} (got {v})"
                ));
            }
        }
        Ok(())
    }

    /// The burst as a header value.
    pub fn burst_u32(&self) -> u32 {
        self.burst as u32
    }
}

/// What one call to a rate limiter decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Take {
    /// Whether the request fits the budget.
    pub allowed: bool,
    /// Whole requests left in the budget after this one (0 when refused).
    pub remaining: u32,
    /// When refused: seconds until one request fits again (at least 1).
    pub retry_after_s: u64,
}

/// A change announced on the channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The ban of this client key was set or lifted: re-read it.
    Ban(String),
    /// Limits or enforcement changed: re-read them.
    Limits,
}

impl Change {
    pub(crate) fn encode(&self) -> String {
        match self {
            Change::Ban(key) => format!("ban {key}"),
            Change::Limits => "limits".into(),
        }
    }

    pub(crate) fn decode(s: &str) -> Option<Self> {
        match s.split_once(' ') {
            Some(("ban", key)) if !key.is_empty() => Some(Change::Ban(key.to_owned())),
            _ if s == "limits" => Some(Change::Limits),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip() {
        for c in [
            Change::Ban("10.0.0.1".into()),
            Change::Ban("::1".into()),
            Change::Ban("2001:db8:1:2::/64".into()),
            Change::Limits,
        ] {
            assert_eq!(Change::decode(&c.encode()), Some(c));
        }
        assert_eq!(Change::decode("nonsense"), None);
        assert_eq!(Change::decode("ban "), None);
    }

    #[test]
    fn ban_activity_and_remaining() {
        let now = Utc::now();
        let mut b = Ban {
            ip: "1.2.3.4".into(),
            ban_type: BanType::Temporary,
            reason: "r".into(),
            strikes: 10,
            hour_bans: 1,
            issued_by: "edge".into(),
            created_at: now,
            expires_at: Some(now + chrono::Duration::seconds(60)),
        };
        assert!(b.active(now));
        assert_eq!(b.remaining_s(now), Some(60));
        b.expires_at = Some(now - chrono::Duration::seconds(1));
        assert!(!b.active(now));
        b.expires_at = None;
        assert!(b.active(now));
    }

    /// Values that used to pass validation and then panicked (a ban end
    /// past `chrono`'s range, an infinite bucket refill time) or silently
    /// broke limiting (NaN) are refused.
    #[test]
    fn validation_refuses_values_that_overflow_later() {
        assert!(Limits::default().validate().is_ok());
        let bad = [
            Limits {
                rps: 0.0,
                ..Limits::default()
            },
            Limits {
                rps: 1e-300,
                ..Limits::default()
            },
            Limits {
                rps: f64::NAN,
                ..Limits::default()
            },
            Limits {
                rps: f64::INFINITY,
                ..Limits::default()
            },
            Limits {
                rps: 1e9,
                ..Limits::default()
            },
            Limits {
                burst: f64::NAN,
                ..Limits::default()
            },
            Limits {
                burst: 0.5,
                ..Limits::default()
            },
            Limits {
                burst: 1e300,
                ..Limits::default()
            },
            Limits {
                ban_duration_s: i64::MAX as u64,
                ..Limits::default()
            },
            Limits {
                ban_duration_s: u64::MAX,
                ..Limits::default()
            },
            Limits {
                ban_duration_s: 0,
                ..Limits::default()
            },
            Limits {
                strike_window_s: u64::MAX,
                ..Limits::default()
            },
            Limits {
                ban_strikes: 0,
                ..Limits::default()
            },
            Limits {
                permanent_after: u32::MAX,
                ..Limits::default()
            },
        ];
        for l in bad {
            assert!(l.validate().is_err(), "{l:?} must be refused");
        }
        // The bounds themselves are accepted, and every accepted ban end
        // fits a timestamp.
        let edge = Limits {
            rps: MIN_RPS,
            burst: MAX_BURST,
            ban_duration_s: MAX_DURATION_S,
            strike_window_s: MAX_DURATION_S,
            ..Limits::default()
        };
        assert!(edge.validate().is_ok());
        let _ = Utc::now() + chrono::Duration::seconds(MAX_DURATION_S as i64);
        assert!(
            Limits {
                rps: MAX_RPS,
                ..Limits::default()
            }
            .validate()
            .is_ok()
        );
    }
}
