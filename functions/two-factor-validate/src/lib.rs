//! Placeholder until the two-factor issue: answers 404 like an unknown route.
use shared::lambda_http::{Body, Request, Response};
use shared::{http, ApiError, Context};
use std::convert::Infallible;

pub async fn handle(ctx: &Context, req: Request) -> Result<Response<Body>, Infallible> {
    Ok(http::serve(&req, |req| async move {
        ctx.authorize(req, "two-factor-validate")
            .await
            .and(Err(ApiError::NotFound))
    })
    .await)
}
