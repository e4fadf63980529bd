//! `POST /api/users/{uuid}/push_tokens/unregister/`: forget one of the caller's push tokens.
use shared::fields::{self, Text};
use shared::lambda_http::{Body, Request, Response};
use shared::{http, ApiError, Context};

shared::endpoint!(unregister);

/// Deletes the caller's row for exactly that token; 204 whether or not one matched.
async fn unregister(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let body = http::parse_fields(req)?;
    let token = fields::required_text(&body, "token", Text::not_blank(512))?;
    ctx.store
        .delete_push_token(call.target.uuid, &token)
        .await?;
    http::no_content()
}
