//! `GET /api/users/{uuid}/`: the user object (staff may read other users).
use shared::lambda_http::{Body, Request, Response};
use shared::{http, ApiError, Context};

shared::endpoint!(get);

async fn get(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let view = ctx
        .store
        .user_view(call.target.uuid)
        .await?
        .ok_or(ApiError::NotFound)?;
    http::ok(&view.to_json())
}
