//! Secrets out of logs, error messages and `--help`.
//!
//! Database and Redis URLs carry passwords (`postgres://user:pw@host/db`),
//! webhook URLs carry their token in the path. Anything that prints such a
//! URL prints it through here; `main` also passes every start-up error
//! through [`redact_text`] as a last line of defence. In clap, the flags
//! holding secrets use `hide_env_values = true`, so `--help` never shows
//! what the environment holds.

/// What replaces a secret.
pub const MASK: &str = "***";

/// Query parameters whose values are secrets.
const SECRET_PARAMS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "sslpassword",
    "token",
    "access_token",
    "secret",
    "api_key",
    "apikey",
    "key",
    "auth",
];

/// `url` with the password of its user info and the values of secret
/// query parameters masked: `postgres://app:***@db:5432/app?sslmode=require`.
/// Anything that is not a URL comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..rest_start]);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push(':');
                    out.push_str(MASK);
                }
                // A user name alone is not a secret.
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[authority_len..];
    match tail.find('?') {
        Some(q) => {
            out.push_str(&tail[..=q]);
            let query_and_fragment = &tail[q + 1..];
            let (query, fragment) = match query_and_fragment.find('#') {
                Some(h) => query_and_fragment.split_at(h),
                None => (query_and_fragment, ""),
            };
            let parts: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => {
                        format!("{k}={MASK}")
                    }
                    _ => kv.to_owned(),
                })
                .collect();
            out.push_str(&parts.join("&"));
            out.push_str(fragment);
        }
        None => out.push_str(tail),
    }
    out
}

/// Only `scheme://host[:port]` of `url`: for URLs whose path or query is
/// the secret (Discord-style webhooks), in logs.
pub fn url_origin(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return MASK.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority.rsplit('@').next().unwrap_or(authority);
    format!("{}://{host}", &url[..scheme_end])
}

/// `text` with every URL in it passed through [`redact_url`] and any
/// `password=...` pair masked: for error messages that may quote a
/// connection string.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        // The scheme runs back over letters, digits, '+', '-' and '.'.
        let scheme_start = rest[..pos]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[pos..]
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>' | ')' | ']' | '}')
            })
            .map_or(rest.len(), |i| pos + i);
        out.push_str(&rest[..scheme_start]);
        out.push_str(&redact_url(&rest[scheme_start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    redact_pairs(&out)
}

/// Masks `password=...` (libpq key/value style) up to the next separator.
fn redact_pairs(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(found) = lower[i..].find("password=") {
        let value_start = i + found + "password=".len();
        out.push_str(&text[i..value_start]);
        let value_len = text[value_start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '&' | ';' | ',' | '"' | '\''))
            .unwrap_or(text.len() - value_start);
        if value_len > 0 && !text[value_start..].starts_with(MASK) {
            out.push_str(MASK);
        } else {
            out.push_str(&text[value_start..value_start + value_len]);
        }
        i = value_start + value_len;
    }
    out.push_str(&text[i..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_secret_parameters_are_masked() {
        assert_eq!(
            redact_url("postgres://app:s3cr%40t@db:5432/app?sslmode=require"),
            "postgres://app:***@db:5432/app?sslmode=require"
        );
        assert_eq!(
            redact_url("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("postgres://u@h/db?password=pw&sslmode=disable#x"),
            "postgres://u@h/db?password=***&sslmode=disable#x"
        );
        // An '@' inside the password: the last one ends the user info.
        assert_eq!(redact_url("redis://u:p@ss@h:1"), "redis://u:***@h:1");
        // Nothing secret: unchanged.
        for plain in [
            "postgres://postgres@127.0.0.1:5432/app",
            "sqlite://./data/shortlink.db?mode=rwc",
            "not a url",
            "http://example.com/a@b",
        ] {
            assert_eq!(redact_url(plain), plain);
        }
    }

    #[test]
    fn webhooks_show_only_their_origin() {
        assert_eq!(
            url_origin("https://discord.com/api/webhooks/123/tok3n?wait=true"),
            "https://discord.com"
        );
        assert_eq!(url_origin("http://u:p@127.0.0.1:9/x"), "http://127.0.0.1:9");
        assert_eq!(url_origin("garbage"), MASK);
    }

    #[test]
    fn urls_inside_messages_are_masked() {
        let msg = "cannot connect to \"postgres://u:secretpw@10.0.0.1:5432/db\": refused; \
                   fallback redis://:other@r:6379 failed (host=db password=kv-secret port=5432)";
        let r = redact_text(msg);
        for secret in ["secretpw", "other", "kv-secret"] {
            assert!(!r.contains(secret), "{secret} leaked: {r}");
        }
        assert!(r.contains("postgres://u:***@10.0.0.1:5432/db\""), "{r}");
        assert!(r.contains("password=*** port=5432"), "{r}");
        assert_eq!(redact_text("no secrets here"), "no secrets here");
    }
}
