//! The public front page at `/`: a form to shorten a URL (long URL,
//! optional custom code, title, user id) that calls `POST /shorten` from
//! the page and turns the API's JSON errors into specific, friendly
//! messages (invalid URL, code taken with a suggestion, unknown user, rate
//! limited with the retry time, banned, creation paused while the database
//! is down). One HTML document with its style and script inline, compiled
//! into the binary. `/` can never shadow a short code: codes are at least
//! 3 characters, and `/` has none.

use bytes::Bytes;

use crate::api::Reply;

const PAGE: &str = include_str!("../assets/front.html");

/// The page's Content-Security-Policy: its own inline style and script,
/// calls to this origin only, no frames, no plugins.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// The front page.
pub fn reply() -> Reply {
    let mut r = Reply::raw_json(200, Bytes::from_static(PAGE.as_bytes()));
    r.content_type = "text/html; charset=utf-8";
    r.with_header("content-security-policy", CSP)
        .with_header("x-content-type-options", "nosniff")
        .with_header("referrer-policy", "no-referrer")
        .with_header("cache-control", "public, max-age=300")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_is_self_contained() {
        let p = super::PAGE;
        assert!(p.starts_with("<!doctype html>"));
        // Nothing from elsewhere: no external script, style or font.
        assert!(!p.contains("src=\"http"), "external script");
        assert!(!p.contains("href=\"http"), "external link");
        assert!(!p.contains("@import"), "external style");
        assert!(
            p.contains("fetch('/shorten'"),
            "calls the API on this origin"
        );
    }
}
