//! `GET /api/users/{uuid}/`: the user object (staff may read other users).
use shared::lambda_http::{Body, Request, Response};
use shared::{http, ApiError, Context};

shared::endpoint!(get);

async fn get(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    match ctx.store.user_view(call.target.uuid).await? {
        Some(view) => http::ok(&view.to_json()),
        // A staff caller's other user: unknown or inactive.
        None if call.target.is_other => Err(ApiError::NotFound),
        // The caller's own account, deactivated since its credential was checked.
        None => Err(call.caller.refused_since()),
    }
}
