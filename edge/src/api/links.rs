//! Handlers of the URL routes: create (`POST /shorten`, `POST /urls`), the
//! redirect (`GET /{short_code}`), list, read, update and soft delete.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::Value;
use shortlink_proto::v1 as pb;
use shortlink_proto::v1::link_service_client::LinkServiceClient;

use std::sync::Arc;

use super::input::{JsonBody, ListUrls, query};
use super::{Call, Outcome, Reply, render};
use crate::balance::CallError;
use crate::resolve_cache::{Lookup, Resolution};

type Fut<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// What `DELETE /urls/{id}` says, as the original does.
pub const DELETED_MESSAGE: &str = "URL deleted (soft delete)";

pub fn create<'a>(c: &'a Call<'a>) -> Fut<'a> {
    Box::pin(async move {
        let b = JsonBody::parse(c.content_type, &c.body)?;
        let msg = pb::CreateLinkRequest {
            original_url: b.string("original_url")?,
            user_id: b.int("user_id")?,
            title: b.opt_string("title")?,
            short_code: b.opt_string("short_code")?,
        };
        let (resp, rep) = c
            .call(false, msg, |ch, r| async move {
                LinkServiceClient::new(ch).create_link(r).await
            })
            .await?;
        let link = resp.link.unwrap_or_default();
        // A custom code looked up before it existed is cached as missing.
        forget(c, &link.short_code);
        Ok(Reply::json(201, render::url(&link)).served_by(rep))
    })
}

/// The body of a 302: `{"location": "<url>"}`, encoded without building a
/// JSON tree (this is the hot path).
fn location_body(url: &str) -> Bytes {
    let mut out = Vec::with_capacity(url.len() + 16);
    out.extend_from_slice(b"{\"location\":");
    // Serialising a &str cannot fail.
    let _ = serde_json::to_writer(&mut out, url);
    out.push(b'}');
    Bytes::from(out)
}

/// Bytes a `Location` value never carries as they are.
const NOT_IN_A_URI: &AsciiSet = &CONTROLS.add(b' ');

/// The `Location` header of a redirect: the stored URL with every
/// non-ASCII byte (and any control or space) percent-encoded, turning an
/// IRI into the URI that `Location` must be (RFC 9110 §10.2.2, RFC 3987
/// §3.1), as the original's redirect did. Plain ASCII URLs, nearly all of
/// them, pass through without a copy.
fn location_header(url: String) -> String {
    if url.bytes().all(|b| b.is_ascii_graphic()) {
        url
    } else {
        utf8_percent_encode(&url, NOT_IN_A_URI).to_string()
    }
}

pub fn redirect<'a>(c: &'a Call<'a>) -> Fut<'a> {
    Box::pin(async move {
        let short_code = c.routed.code.as_deref().unwrap_or_default();
        let started = std::time::Instant::now();
        let lookup = c
            .cache
            .map_or(Lookup::Miss, |cache| cache.lookup(short_code));
        let (res, upstream) = match lookup {
            Lookup::Fresh(res) => (res, None),
            Lookup::Refresh(cached) => match resolve(c, short_code).await {
                Ok(res) => {
                    if let Some(cache) = c.cache {
                        cache.put(short_code, res.0.clone(), started);
                    }
                    res
                }
                Err(_) => {
                    // Still within its ttl: serve it; the next reader retries.
                    if let Some(cache) = c.cache {
                        cache.refresh_failed(short_code);
                    }
                    (cached, None)
                }
            },
            Lookup::Miss => {
                let res = resolve(c, short_code).await?;
                if let Some(cache) = c.cache {
                    cache.put(short_code, res.0.clone(), started);
                }
                res
            }
        };
        let mut r = match res {
            Resolution::Found {
                url,
                link_id,
                user_id,
            } => {
                let mut r = Reply::raw_json(302, location_body(&url));
                r.click = Some((link_id, user_id));
                r.headers
                    .push(("location", location_header(url.to_string())));
                r.headers.push(("cache-control", "no-store".into()));
                r
            }
            Resolution::Missing(m) => Reply::error(404, &*m),
            Resolution::Gone(m) => Reply::error(410, &*m),
        };
        r.upstream = upstream;
        Ok(r)
    })
}

/// Resolves `code` on a links replica; NOT_FOUND and FAILED_PRECONDITION
/// are answers (cacheable), anything else an error reply.
async fn resolve(c: &Call<'_>, code: &str) -> Result<(Resolution, Option<Arc<str>>), Reply> {
    let msg = pb::ResolveLinkRequest {
        short_code: code.to_owned(),
    };
    let res = c
        .upstreams
        .call(true, |ch| {
            let r = c.grpc(msg.clone());
            async move { LinkServiceClient::new(ch).resolve_link(r).await }
        })
        .await;
    match res {
        Ok((resp, rep)) => {
            let resp = resp.into_inner();
            Ok((
                Resolution::Found {
                    url: resp.original_url.into(),
                    link_id: resp.link_id,
                    user_id: resp.user_id,
                },
                Some(Arc::from(rep.addr.as_str())),
            ))
        }
        Err(CallError::Status(s)) if s.code() == tonic::Code::NotFound => {
            Ok((Resolution::Missing(s.message().into()), None))
        }
        Err(CallError::Status(s)) if s.code() == tonic::Code::FailedPrecondition => {
            Ok((Resolution::Gone(s.message().into()), None))
        }
        Err(e) => Err(super::call_error(e, c.routed.route)),
    }
}

/// Drops this edge's cached resolution of a code it just changed.
fn forget(c: &Call<'_>, code: &str) {
    if let Some(cache) = c.cache {
        cache.invalidate(code);
    }
}

pub fn list<'a>(c: &'a Call<'a>) -> Fut<'a> {
    Box::pin(async move {
        let q: ListUrls = query(c.query)?;
        let msg = pb::ListLinksRequest {
            page: Some(q.paging()?),
            user_id: q.user_id,
            is_active: q.is_active,
        };
        let (resp, rep) = c
            .call(true, msg, |ch, r| async move {
                LinkServiceClient::new(ch).list_links(r).await
            })
            .await?;
        Ok(
            render::envelope(resp.links.iter().map(render::url).collect(), resp.page)
                .served_by(rep),
        )
    })
}

pub fn get<'a>(c: &'a Call<'a>) -> Fut<'a> {
    Box::pin(async move {
        let (resp, rep) = c
            .call(
                true,
                pb::GetLinkRequest { id: c.id() },
                |ch, r| async move { LinkServiceClient::new(ch).get_link(r).await },
            )
            .await?;
        Ok(Reply::json(200, render::url(&resp.link.unwrap_or_default())).served_by(rep))
    })
}

pub fn update<'a>(c: &'a Call<'a>) -> Fut<'a> {
    Box::pin(async move {
        let b = JsonBody::parse(c.content_type, &c.body)?;
        if b.is_empty() {
            return Err(Reply::error(
                400,
                "nothing to update: give original_url, title or is_active",
            ));
        }
        let msg = pb::UpdateLinkRequest {
            id: c.id(),
            original_url: b.opt_string("original_url")?,
            // `"title": null` clears the title.
            title: match b.0.get("title") {
                Some(Value::Null) => Some(String::new()),
                _ => b.opt_string("title")?,
            },
            is_active: b.opt_bool("is_active")?,
        };
        let (resp, rep) = c
            .call(false, msg, |ch, r| async move {
                LinkServiceClient::new(ch).update_link(r).await
            })
            .await?;
        let link = resp.link.unwrap_or_default();
        forget(c, &link.short_code);
        Ok(Reply::json(200, render::url(&link)).served_by(rep))
    })
}

pub fn delete<'a>(c: &'a Call<'a>) -> Fut<'a> {
    Box::pin(async move {
        let (resp, rep) = c
            .call(
                false,
                pb::DeleteLinkRequest { id: c.id() },
                |ch, r| async move { LinkServiceClient::new(ch).delete_link(r).await },
            )
            .await?;
        let link = resp.link.unwrap_or_default();
        forget(c, &link.short_code);
        let mut v = render::url(&link);
        v["message"] = Value::String(DELETED_MESSAGE.into());
        Ok(Reply::json(200, v).served_by(rep))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_header_is_ascii() {
        let plain = "https://example.com/a?b=%C3%A9#c".to_owned();
        assert_eq!(location_header(plain.clone()), plain);
        // Found by schemathesis: a stored IRI went out as raw UTF-8 bytes.
        assert_eq!(
            location_header("https://b\u{fc}cher.example/\u{e9}t\u{e9} x".into()),
            "https://b%C3%BCcher.example/%C3%A9t%C3%A9%20x"
        );
    }

    #[test]
    fn location_body_is_valid_json() {
        let b = location_body("https://example.com/a?\"q\"=\u{e9}");
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["location"], "https://example.com/a?\"q\"=\u{e9}");
    }
}
