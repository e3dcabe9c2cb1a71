//! The tonic services: thin translations between the wire types of
//! `shortlink-proto` and `LinksCore`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use shortlink_proto::v1 as pb;
use shortlink_proto::v1::event_service_server::EventService;
use shortlink_proto::v1::link_service_server::LinkService;
use shortlink_proto::v1::user_service_server::UserService;
use tonic::{Request, Response, Status};

use crate::model::{Event, EventFilter, Link, LinkFilter, Page, User};
use crate::service::LinksCore;

/// Largest `BulkCreateUsers` request.
pub const MAX_BULK_USERS: usize = 10_000;

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    shortlink_proto::timestamp(t.timestamp(), t.timestamp_subsec_nanos() as i32)
}

fn link_pb(l: Link) -> pb::Link {
    pb::Link {
        id: l.id,
        user_id: l.user_id,
        short_code: l.short_code,
        original_url: l.original_url,
        title: l.title,
        is_active: l.is_active,
        created_at: Some(ts(l.created_at)),
        updated_at: Some(ts(l.updated_at)),
    }
}

fn user_pb(u: User) -> pb::User {
    pb::User {
        id: u.id,
        username: u.username,
        email: u.email,
        created_at: Some(ts(u.created_at)),
    }
}

fn event_pb(e: Event) -> pb::Event {
    let details = e
        .details
        .as_object()
        .map(shortlink_proto::json::struct_from_json);
    pb::Event {
        id: e.id,
        url_id: e.url_id,
        user_id: e.user_id,
        event_type: e.event_type,
        timestamp: Some(ts(e.timestamp)),
        details,
    }
}

fn page(p: Option<pb::PageRequest>) -> Page {
    let p = p.unwrap_or_default();
    Page::new(p.page, p.per_page)
}

fn page_info(p: Page, total: i64) -> Option<pb::PageInfo> {
    Some(pb::PageInfo {
        page: p.page,
        per_page: p.per_page,
        total,
    })
}

/// `shortlink.v1.LinkService`.
#[derive(Clone, Debug)]
pub struct LinkApi(pub Arc<LinksCore>);
/// `shortlink.v1.UserService`.
#[derive(Clone, Debug)]
pub struct UserApi(pub Arc<LinksCore>);
/// `shortlink.v1.EventService`.
#[derive(Clone, Debug)]
pub struct EventApi(pub Arc<LinksCore>);

#[tonic::async_trait]
impl LinkService for LinkApi {
    #[tracing::instrument(skip_all, fields(user_id = req.get_ref().user_id))]
    async fn create_link(
        &self,
        req: Request<pb::CreateLinkRequest>,
    ) -> Result<Response<pb::CreateLinkResponse>, Status> {
        let r = req.into_inner();
        let link = self
            .0
            .create_link(
                &r.original_url,
                r.user_id,
                r.title.as_deref(),
                r.short_code.as_deref(),
            )
            .await?;
        tracing::info!(link_id = link.id, "link created");
        Ok(Response::new(pb::CreateLinkResponse {
            link: Some(link_pb(link)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn resolve_link(
        &self,
        req: Request<pb::ResolveLinkRequest>,
    ) -> Result<Response<pb::ResolveLinkResponse>, Status> {
        let r = self.0.resolve(&req.get_ref().short_code).await?;
        Ok(Response::new(pb::ResolveLinkResponse {
            original_url: r.target.original_url,
            link_id: r.target.link_id,
            user_id: r.target.user_id,
            cached: r.cached,
        }))
    }

    #[tracing::instrument(skip_all, fields(id = req.get_ref().id))]
    async fn get_link(
        &self,
        req: Request<pb::GetLinkRequest>,
    ) -> Result<Response<pb::GetLinkResponse>, Status> {
        let link = self.0.get_link(req.get_ref().id).await?;
        Ok(Response::new(pb::GetLinkResponse {
            link: Some(link_pb(link)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_links(
        &self,
        req: Request<pb::ListLinksRequest>,
    ) -> Result<Response<pb::ListLinksResponse>, Status> {
        let r = req.into_inner();
        let p = page(r.page);
        let filter = LinkFilter {
            user_id: r.user_id,
            is_active: r.is_active,
        };
        let (links, total) = self.0.list_links(filter, p).await?;
        Ok(Response::new(pb::ListLinksResponse {
            links: links.into_iter().map(link_pb).collect(),
            page: page_info(p, total),
        }))
    }

    #[tracing::instrument(skip_all, fields(id = req.get_ref().id))]
    async fn update_link(
        &self,
        req: Request<pb::UpdateLinkRequest>,
    ) -> Result<Response<pb::UpdateLinkResponse>, Status> {
        let r = req.into_inner();
        let link = self
            .0
            .update_link(
                r.id,
                r.original_url.as_deref(),
                r.title.as_deref(),
                r.is_active,
            )
            .await?;
        Ok(Response::new(pb::UpdateLinkResponse {
            link: Some(link_pb(link)),
        }))
    }

    #[tracing::instrument(skip_all, fields(id = req.get_ref().id))]
    async fn delete_link(
        &self,
        req: Request<pb::DeleteLinkRequest>,
    ) -> Result<Response<pb::DeleteLinkResponse>, Status> {
        let link = self.0.delete_link(req.get_ref().id).await?;
        let message = format!("link {} deactivated", link.short_code);
        Ok(Response::new(pb::DeleteLinkResponse {
            link: Some(link_pb(link)),
            message,
        }))
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    #[tracing::instrument(skip_all)]
    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let r = req.into_inner();
        let user = self.0.create_user(&r.username, &r.email).await?;
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(user_pb(user)),
        }))
    }

    #[tracing::instrument(skip_all, fields(id = req.get_ref().id))]
    async fn get_user(
        &self,
        req: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let user = self.0.get_user(req.get_ref().id).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(user_pb(user)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let p = page(req.into_inner().page);
        let (users, total) = self.0.list_users(p).await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users.into_iter().map(user_pb).collect(),
            page: page_info(p, total),
        }))
    }

    #[tracing::instrument(skip_all, fields(id = req.get_ref().id))]
    async fn update_user(
        &self,
        req: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let r = req.into_inner();
        let user = self
            .0
            .update_user(r.id, r.username.as_deref(), r.email.as_deref())
            .await?;
        Ok(Response::new(pb::UpdateUserResponse {
            user: Some(user_pb(user)),
        }))
    }

    #[tracing::instrument(skip_all, fields(id = req.get_ref().id))]
    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let id = req.get_ref().id;
        self.0.delete_user(id).await?;
        Ok(Response::new(pb::DeleteUserResponse {
            message: format!("user {id} deleted"),
        }))
    }

    #[tracing::instrument(skip_all, fields(rows = req.get_ref().users.len()))]
    async fn bulk_create_users(
        &self,
        req: Request<pb::BulkCreateUsersRequest>,
    ) -> Result<Response<pb::BulkCreateUsersResponse>, Status> {
        // Answer before the caller's deadline with exactly what was
        // committed: rows not reached in time are reported, not left to a
        // deadline error that would hide the ones already written.
        let budget = grpc_timeout(req.metadata())
            .map_or(Duration::from_secs(30), |t| t.saturating_sub(t / 5));
        let started = Instant::now();
        let rows = req.into_inner().users;
        if rows.len() > MAX_BULK_USERS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_BULK_USERS} users per call"
            )));
        }
        let mut out = pb::BulkCreateUsersResponse::default();
        // After an outage with rows already committed, the rest are
        // reported row by row: an error status would hide the committed ones.
        let mut outage: Option<String> = None;
        for (i, row) in rows.into_iter().enumerate() {
            if let Some(m) = &outage {
                out.errors.push(pb::BulkCreateUsersError {
                    index: i as u32,
                    error: format!("not processed: database unavailable: {m}; send this row again"),
                });
                continue;
            }
            if started.elapsed() >= budget {
                out.errors.push(pb::BulkCreateUsersError {
                    index: i as u32,
                    error: "not processed: the call's deadline was near; send this row again"
                        .into(),
                });
                continue;
            }
            match self.0.create_user(&row.username, &row.email).await {
                Ok(u) => out.created.push(user_pb(u)),
                Err(crate::error::ServiceError::Unavailable(m)) if out.created.is_empty() => {
                    // Nothing committed yet: the whole call failed, retry it.
                    return Err(shortlink_proto::errors::database_unavailable(format!(
                        "database unavailable: {m}"
                    )));
                }
                Err(crate::error::ServiceError::Unavailable(m)) => {
                    out.errors.push(pb::BulkCreateUsersError {
                        index: i as u32,
                        error: format!(
                            "not processed: database unavailable: {m}; send this row again"
                        ),
                    });
                    outage = Some(m);
                }
                Err(e) => out.errors.push(pb::BulkCreateUsersError {
                    index: i as u32,
                    error: Status::from(e).message().to_owned(),
                }),
            }
        }
        Ok(Response::new(out))
    }
}

#[tonic::async_trait]
impl EventService for EventApi {
    #[tracing::instrument(skip_all)]
    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let r = req.into_inner();
        let p = page(r.page);
        let filter = EventFilter {
            url_id: r.url_id,
            user_id: r.user_id,
            event_type: r.event_type.filter(|t| !t.is_empty()),
        };
        let (events, total) = self.0.list_events(filter, p).await?;
        Ok(Response::new(pb::ListEventsResponse {
            events: events.into_iter().map(event_pb).collect(),
            page: page_info(p, total),
        }))
    }

    #[tracing::instrument(skip_all, fields(clicks = req.get_ref().clicks.len()))]
    async fn record_clicks(
        &self,
        req: Request<pb::RecordClicksRequest>,
    ) -> Result<Response<pb::RecordClicksResponse>, Status> {
        let now = crate::model::now();
        let clicks = req
            .into_inner()
            .clicks
            .into_iter()
            .map(|c| crate::model::NewClick {
                url_id: c.url_id,
                user_id: c.user_id,
                at: chrono::DateTime::parse_from_rfc3339(&c.time)
                    .map_or(now, |t| t.with_timezone(&chrono::Utc)),
                details: serde_json::json!({
                    "referrer": c.referrer,
                    "user_agent": c.user_agent,
                    "request_id": c.request_id,
                    "source": c.source,
                }),
                request_id: c.request_id,
            })
            .collect();
        let n = self.0.record_clicks(clicks).await?;
        Ok(Response::new(pb::RecordClicksResponse {
            recorded: n.recorded,
            duplicates: n.duplicates,
            unknown_links: n.unknown_links,
        }))
    }

    #[tracing::instrument(skip_all, fields(url_id = req.get_ref().url_id))]
    async fn create_event(
        &self,
        req: Request<pb::CreateEventRequest>,
    ) -> Result<Response<pb::CreateEventResponse>, Status> {
        let r = req.into_inner();
        let details = r
            .details
            .as_ref()
            .map(|s| serde_json::Value::Object(shortlink_proto::json::struct_to_json(s)))
            .unwrap_or_else(|| serde_json::json!({}));
        let ev = self
            .0
            .create_event(r.url_id, r.user_id, &r.event_type, details)
            .await?;
        Ok(Response::new(pb::CreateEventResponse {
            event: Some(event_pb(ev)),
        }))
    }
}

/// The caller's deadline from the `grpc-timeout` header (`<digits><unit>`,
/// units H M S m u n).
fn grpc_timeout(md: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_parses() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&md), None);
        md.insert("grpc-timeout", "5000m".parse().unwrap());
        assert_eq!(grpc_timeout(&md), Some(Duration::from_secs(5)));
        md.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(grpc_timeout(&md), Some(Duration::from_secs(2)));
        md.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(grpc_timeout(&md), None);
    }
}
