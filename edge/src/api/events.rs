//! Handlers of the event routes: `GET /events`, `POST /events` and
//! `GET /urls/{id}/events`. Both lists are bare JSON arrays, as in the
//! original system, paged by `page`/`per_page` (default 20, at most 100).

use std::future::Future;
use std::pin::Pin;

use shortlink_proto::v1 as pb;
use shortlink_proto::v1::event_service_client::EventServiceClient;
use shortlink_proto::v1::link_service_client::LinkServiceClient;

use super::input::{JsonBody, ListEvents, query};
use super::{Call, Outcome, Reply, render};

type Fut<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

async fn list_events(c: &Call<'_>, msg: pb::ListEventsRequest) -> Outcome {
    let (resp, rep) = c
        .call(true, msg, |ch, r| async move {
            EventServiceClient::new(ch).list_events(r).await
        })
        .await?;
    Ok(render::array(resp.events.iter().map(render::event).collect()).served_by(rep))
}

pub fn list<'a>(c: &'a Call<'a>) -> Fut<'a> {
    Box::pin(async move {
        let q: ListEvents = query(c.query)?;
        let msg = pb::ListEventsRequest {
            page: Some(q.paging()?),
            url_id: q.url_id,
            user_id: q.user_id,
            event_type: q.event_type,
        };
        list_events(c, msg).await
    })
}

pub fn list_for_url<'a>(c: &'a Call<'a>) -> Fut<'a> {
    Box::pin(async move {
        let q: ListEvents = query(c.query)?;
        let page = Some(q.paging()?);
        // 404 for an unknown URL rather than an empty list.
        c.call(
            true,
            pb::GetLinkRequest { id: c.id() },
            |ch, r| async move { LinkServiceClient::new(ch).get_link(r).await },
        )
        .await?;
        let msg = pb::ListEventsRequest {
            page,
            url_id: Some(c.id()),
            user_id: q.user_id,
            event_type: q.event_type,
        };
        list_events(c, msg).await
    })
}

pub fn create<'a>(c: &'a Call<'a>) -> Fut<'a> {
    Box::pin(async move {
        let b = JsonBody::parse(c.content_type, &c.body)?;
        let details = b
            .opt_object("details")?
            .map(shortlink_proto::json::struct_from_json);
        let msg = pb::CreateEventRequest {
            url_id: b.int("url_id")?,
            user_id: b.int("user_id")?,
            event_type: b.string("event_type")?,
            details,
        };
        let (resp, rep) = c
            .call(false, msg, |ch, r| async move {
                EventServiceClient::new(ch).create_event(r).await
            })
            .await?;
        Ok(Reply::json(201, render::event(&resp.event.unwrap_or_default())).served_by(rep))
    })
}
