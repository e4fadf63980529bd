//! `GET /api/users/{uuid}/`: the user object (staff may read other users).
use shared::lambda_http::{Body, Request, Response};
use shared::{http, ApiError, Context};
use std::convert::Infallible;

pub async fn handle(ctx: &Context, req: Request) -> Result<Response<Body>, Infallible> {
    Ok(http::serve(&req, |req| get(ctx, req)).await)
}

async fn get(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, "get-user").await?;
    let view = ctx
        .store
        .user_view(&call.target.uuid.to_string())
        .await?
        .ok_or(ApiError::NotFound)?;
    http::ok(&view.to_json())
}
