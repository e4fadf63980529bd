//! `GET /api/users/{uuid}/security_events/`: the account's audit trail, newest first, a page
//! at a time (`?limit=` up to 100, default 20; `?cursor=` as the previous page's `next` gave
//! it). Staff may read another user's.
use serde_json::json;
use shared::lambda_http::{Body, Request, RequestExt, Response};
use shared::security_events::{Cursor, DEFAULT_PAGE, MAX_PAGE};
use shared::{http, ApiError, Context};

shared::endpoint!(list);

async fn list(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let query = req.query_string_parameters();
    let limit = match query.first("limit") {
        None => DEFAULT_PAGE,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_input(
                    format!("Ensure this value is between 1 and {MAX_PAGE}."),
                    Some("limit"),
                )
            })?,
    };
    let cursor = query.first("cursor").map(Cursor::decode).transpose()?;
    let uuid = call.target.uuid;
    let page = ctx.store.security_events_page(uuid, limit, cursor.as_ref());
    let (events, next) = if call.target.is_other {
        // Another user's (staff): one that does not exist or is inactive is a 404.
        let (user, page) = tokio::join!(ctx.store.user(uuid), page);
        user?.filter(|u| u.is_active).ok_or(ApiError::NotFound)?;
        page?
    } else {
        page.await?
    };
    let next = next.map(|cursor| {
        format!(
            "{}?limit={limit}&cursor={}",
            req.uri().path(),
            cursor.encode()
        )
    });
    let results: Vec<_> = events.iter().map(|e| e.to_json()).collect();
    http::ok(&json!({"next": next, "results": results}))
}
