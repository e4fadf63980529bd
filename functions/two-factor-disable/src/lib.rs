//! `POST /api/users/{uuid}/two_factor_disable/`: turn 2FA off.
use serde_json::json;
use shared::lambda_http::{Body, Request, Response};
use shared::store::two_factor;
use shared::store::{from_item, s};
use shared::two_factor::Notice;
use shared::users::UserRecord;
use shared::{http, ApiError, Context};
use std::collections::HashMap;
use std::convert::Infallible;

pub async fn handle(ctx: &Context, req: Request) -> Result<Response<Body>, Infallible> {
    Ok(http::serve(&req, |req| disable(ctx, req)).await)
}

/// Removes the device, any pending setup, the backup codes and the failure state in one
/// transaction; succeeds when nothing was enabled. The user is told when a device went.
async fn disable(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, "two-factor-disable").await?;
    let uuid = call.target.uuid.to_string();
    let store = &ctx.store;
    let keys = [
        (
            store.tables.users.as_str(),
            HashMap::from([("uuid".to_string(), s(&uuid))]),
        ),
        (
            store.tables.two_factor.as_str(),
            two_factor::key(&uuid, two_factor::TOTP),
        ),
    ];
    let mut items = store.get_many(&keys).await?.into_iter();
    let user = items
        .next()
        .flatten()
        .map(from_item::<UserRecord>)
        .transpose()?;
    let user = user.filter(|u| u.is_active).ok_or(ApiError::NotFound)?;
    let had_totp = items.next().flatten().is_some();
    store.disable_two_factor(&uuid).await?;
    if had_totp {
        shared::two_factor::notify(&ctx.mailer, &user.email, Notice::Disabled).await;
    }
    http::ok(&json!({"success": true}))
}
