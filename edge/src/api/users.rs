//! Handlers of the user routes: list, create, read, update, delete, a
//! user's URLs (a bare array, as in the original) and the bulk upload
//! (in `bulk`).

use std::future::Future;
use std::pin::Pin;

use serde_json::json;
use shortlink_proto::v1 as pb;
use shortlink_proto::v1::link_service_client::LinkServiceClient;
use shortlink_proto::v1::user_service_client::UserServiceClient;

use super::input::{JsonBody, Paging, UserUrls, query};
use super::{Call, Outcome, Reply, render};

type Fut<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

pub fn list<'a>(c: &'a Call<'a>) -> Fut<'a> {
    Box::pin(async move {
        let q: Paging = query(c.query)?;
        let msg = pb::ListUsersRequest {
            page: Some(q.request()?),
        };
        let (resp, rep) = c
            .call(true, msg, |ch, r| async move {
                UserServiceClient::new(ch).list_users(r).await
            })
            .await?;
        Ok(
            render::envelope(resp.users.iter().map(render::user).collect(), resp.page)
                .served_by(rep),
        )
    })
}

pub fn create<'a>(c: &'a Call<'a>) -> Fut<'a> {
    Box::pin(async move {
        let b = JsonBody::parse(c.content_type, &c.body)?;
        let msg = pb::CreateUserRequest {
            username: b.string("username")?,
            email: b.string("email")?,
        };
        let (resp, rep) = c
            .call(false, msg, |ch, r| async move {
                UserServiceClient::new(ch).create_user(r).await
            })
            .await?;
        Ok(Reply::json(201, render::user(&resp.user.unwrap_or_default())).served_by(rep))
    })
}

pub fn get<'a>(c: &'a Call<'a>) -> Fut<'a> {
    Box::pin(async move {
        let (resp, rep) = c
            .call(
                true,
                pb::GetUserRequest { id: c.id() },
                |ch, r| async move { UserServiceClient::new(ch).get_user(r).await },
            )
            .await?;
        Ok(Reply::json(200, render::user(&resp.user.unwrap_or_default())).served_by(rep))
    })
}

pub fn update<'a>(c: &'a Call<'a>) -> Fut<'a> {
    Box::pin(async move {
        let b = JsonBody::parse(c.content_type, &c.body)?;
        if b.is_empty() {
            return Err(Reply::error(
                400,
                "nothing to update: give username or email",
            ));
        }
        let msg = pb::UpdateUserRequest {
            id: c.id(),
            username: b.opt_string("username")?,
            email: b.opt_string("email")?,
        };
        let (resp, rep) = c
            .call(false, msg, |ch, r| async move {
                UserServiceClient::new(ch).update_user(r).await
            })
            .await?;
        Ok(Reply::json(200, render::user(&resp.user.unwrap_or_default())).served_by(rep))
    })
}

pub fn delete<'a>(c: &'a Call<'a>) -> Fut<'a> {
    Box::pin(async move {
        let (resp, rep) = c
            .call(
                false,
                pb::DeleteUserRequest { id: c.id() },
                |ch, r| async move { UserServiceClient::new(ch).delete_user(r).await },
            )
            .await?;
        Ok(Reply::json(200, json!({"message": resp.message})).served_by(rep))
    })
}

pub fn links<'a>(c: &'a Call<'a>) -> Fut<'a> {
    Box::pin(async move {
        let q: UserUrls = query(c.query)?;
        let page = Some(q.paging()?);
        // 404 for an unknown user rather than an empty list.
        c.call(
            true,
            pb::GetUserRequest { id: c.id() },
            |ch, r| async move { UserServiceClient::new(ch).get_user(r).await },
        )
        .await?;
        let msg = pb::ListLinksRequest {
            page,
            user_id: Some(c.id()),
            is_active: q.is_active,
        };
        let (resp, rep) = c
            .call(true, msg, |ch, r| async move {
                LinkServiceClient::new(ch).list_links(r).await
            })
            .await?;
        Ok(render::array(resp.links.iter().map(render::url).collect()).served_by(rep))
    })
}

pub fn bulk<'a>(c: &'a Call<'a>) -> Fut<'a> {
    Box::pin(super::bulk::upload(c))
}
