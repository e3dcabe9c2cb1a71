//! Validation rules of the public contract (documented in the `.proto`
//! comments). Every function returns the cleaned value or a message that
//! names the field and the rule.

use crate::error::ServiceError;

/// Longest accepted `original_url`.
pub const MAX_URL_LEN: usize = 2048;
/// Longest accepted title.
pub const MAX_TITLE_LEN: usize = 500;
/// Length of generated short codes.
pub const GENERATED_CODE_LEN: usize = 6;
/// Words a custom short code may not be, since they are API paths.
pub const RESERVED_CODES: &[&str] = &[
    "urls", "users", "events", "shorten", "health", "live", "ready", "metrics",
];

fn invalid(msg: impl Into<String>) -> ServiceError {
    ServiceError::InvalidArgument(msg.into())
}

/// An absolute http(s) URL with a host, at most 2048 characters.
pub fn original_url(raw: &str) -> Result<String, ServiceError> {
    let url = raw.trim();
    if url.is_empty() {
        return Err(invalid("original_url is required"));
    }
    if url.chars().count() > MAX_URL_LEN {
        return Err(invalid(format!(
            "original_url must be at most {MAX_URL_LEN} characters"
        )));
    }
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
        .ok_or_else(|| invalid("original_url must be an http:// or https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (userinfo, host_port) = authority.rsplit_once('@').unwrap_or(("", authority));
    // Brackets only around an IPv6 literal, and a port only of digits:
    // clients cannot even parse anything else (Python's urlsplit raises on
    // a lone `[`, urllib3 on a port like `0*`), so a redirect to it could
    // never be followed.
    let (host, port) = match host_port.strip_prefix('[') {
        Some(lit) => {
            let Some((addr, after)) = lit
                .split_once(']')
                .filter(|(a, _)| a.parse::<std::net::Ipv6Addr>().is_ok())
            else {
                return Err(invalid("original_url has an invalid IPv6 host"));
            };
            (
                addr,
                after
                    .strip_prefix(':')
                    .or(Some(after).filter(|a| !a.is_empty())),
            )
        }
        None => match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err(invalid("original_url must have a host"));
    }
    if userinfo.contains(['[', ']']) || host.contains(['[', ']']) {
        return Err(invalid("original_url has an invalid host"));
    }
    if let Some(p) = port
        && (p.len() > 5
            || !p.bytes().all(|b| b.is_ascii_digit())
            || p.parse::<u32>().is_ok_and(|n| n > 65535))
    {
        return Err(invalid("original_url has an invalid port"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "original_url must not contain spaces or control characters",
        ));
    }
    Ok(url.to_owned())
}

/// A custom short code: 3 to 32 characters of `[A-Za-z0-9_-]`, not reserved.
pub fn custom_code(raw: &str) -> Result<String, ServiceError> {
    let code = raw.trim();
    if !(3..=32).contains(&code.len()) {
        return Err(invalid("short_code must be 3 to 32 characters"));
    }
    if !code
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid(
            "short_code may contain only letters, digits, '_' and '-'",
        ));
    }
    if RESERVED_CODES.contains(&code.to_ascii_lowercase().as_str()) {
        return Err(invalid(format!("short_code {code:?} is reserved")));
    }
    Ok(code.to_owned())
}

/// A code to resolve: non-empty and short; anything else cannot exist.
pub fn lookup_code(raw: &str) -> Result<&str, ServiceError> {
    if raw.is_empty() {
        return Err(invalid("short_code is required"));
    }
    if raw.len() > 32 {
        return Err(invalid("short_code must be at most 32 characters"));
    }
    Ok(raw)
}

/// An optional title: trimmed, at most 500 characters; empty means none.
pub fn title(raw: Option<&str>) -> Result<Option<String>, ServiceError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) if t.chars().count() > MAX_TITLE_LEN => Err(invalid(format!(
            "title must be at most {MAX_TITLE_LEN} characters"
        ))),
        Some(t) => Ok(Some(t.to_owned())),
    }
}

/// A positive id.
pub fn id(field: &str, v: i64) -> Result<i64, ServiceError> {
    if v > 0 {
        Ok(v)
    } else {
        Err(invalid(format!("{field} is required and must be positive")))
    }
}

/// 3 to 64 characters of `[A-Za-z0-9_.-]`.
pub fn username(raw: &str) -> Result<String, ServiceError> {
    let u = raw.trim();
    if u.is_empty() {
        return Err(invalid("username is required"));
    }
    if !(3..=64).contains(&u.len()) {
        return Err(invalid("username must be 3 to 64 characters"));
    }
    if !u
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(invalid(
            "username may contain only letters, digits, '_', '.' and '-'",
        ));
    }
    Ok(u.to_owned())
}

/// A plausible address, lowercased: one `@`, a local part, a dotted domain.
pub fn email(raw: &str) -> Result<String, ServiceError> {
    let e = raw.trim().to_ascii_lowercase();
    if e.is_empty() {
        return Err(invalid("email is required"));
    }
    if e.len() > 254 {
        return Err(invalid("email must be at most 254 characters"));
    }
    let mut parts = e.split('@');
    let (local, domain) = match (parts.next(), parts.next(), parts.next()) {
        (Some(l), Some(d), None) => (l, d),
        _ => return Err(invalid("email must contain exactly one '@'")),
    };
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    if local.is_empty() || !domain_ok || e.chars().any(char::is_whitespace) {
        return Err(invalid("email is not a valid address"));
    }
    Ok(e)
}

/// 1 to 32 characters of `[a-z0-9_]`.
pub fn event_type(raw: &str) -> Result<String, ServiceError> {
    let t = raw.trim();
    if t.is_empty() {
        return Err(invalid("event_type is required"));
    }
    if t.len() > 32
        || !t
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(invalid(
            "event_type must be 1 to 32 characters of lowercase letters, digits and '_'",
        ));
    }
    Ok(t.to_owned())
}

/// Event details: a JSON object of at most 16 KiB when encoded.
pub fn details(v: serde_json::Value) -> Result<serde_json::Value, ServiceError> {
    if !v.is_object() {
        return Err(invalid("details must be a JSON object"));
    }
    if v.to_string().len() > 16 * 1024 {
        return Err(invalid("details must be at most 16 KiB"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(original_url("https://example.com").is_ok());
        assert!(original_url("http://a.b/c?d#e").is_ok());
        assert!(original_url("http://[::1]:8080/x").is_ok());
        assert!(original_url("http://[::1]/x").is_ok());
        assert!(original_url("http://u:p@x.io:65535").is_ok());
        assert!(original_url("http://x.io:/").is_ok());
        assert_eq!(original_url("  https://x.io/a ").unwrap(), "https://x.io/a");
        for bad in [
            "",
            "ftp://x.io",
            "https://",
            "https:///path",
            "example.com",
            "javascript:alert(1)",
            "http://a b.com",
            // Found by schemathesis: accepted, then unparseable for the
            // clients that follow the redirect.
            "http://a[b.com/",
            "http://[nope/x",
            "http://[::1/x",
            "http://[::1]x/",
            "http://u[@x.io/",
            "http://x.io:0*/",
            "http://x.io:123456/",
            "http://x.io:65536/",
            "http://x.io:8a/",
        ] {
            assert!(original_url(bad).is_err(), "{bad}");
        }
        let long = format!("https://x.io/{}", "a".repeat(2048));
        assert!(
            original_url(&long)
                .unwrap_err()
                .to_string()
                .contains("2048")
        );
        let exact = format!("https://x.io/{}", "a".repeat(2048 - 13));
        assert!(original_url(&exact).is_ok());
    }

    #[test]
    fn codes() {
        assert!(custom_code("my-code_1").is_ok());
        for bad in ["ab", "has space", "ünï", "urls", "Health", &"a".repeat(33)] {
            assert!(custom_code(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn users() {
        assert!(username("al.ice_1-x").is_ok());
        assert!(username("a").is_err());
        assert!(username("bad name").is_err());
        assert_eq!(email(" Alice@Example.COM ").unwrap(), "alice@example.com");
        for bad in [
            "", "no-at", "a@b", "@x.io", "a@@x.io", "a@x.io.", "a b@x.io",
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn events() {
        assert!(event_type("click").is_ok());
        assert!(event_type("Click").is_err());
        assert!(details(serde_json::json!([1])).is_err());
        assert!(details(serde_json::json!({"a": 1})).is_ok());
    }
}
