//! `POST /api/users/{uuid}/push_tokens/`: register (or refresh) one of the caller's push tokens.
use serde_json::json;
use shared::fields::{self, Text};
use shared::lambda_http::{Body, Request, Response};
use shared::{http, ApiError, Context};

pub const PLATFORMS: &[&str] = &["ios", "android", "web"];

shared::endpoint!(register);

/// Upserts the token; the 21st evicts the least recently seen. The token is not echoed.
async fn register(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let body = http::parse_fields(req)?;
    let token = fields::required_text(&body, "token", Text::not_blank(512))?;
    if !body.contains_key("platform") {
        return Err(ApiError::required("platform"));
    }
    let platform = fields::choice(&body, "platform", PLATFORMS, fields::Null::Refused)?
        .flatten()
        .ok_or_else(|| ApiError::required("platform"))?;
    let record = ctx
        .store
        .register_push_token(call.target.uuid, &token, &platform)
        .await?;
    http::ok(&json!({
        "id": record.id,
        "platform": record.platform,
        "created_at": record.created_at,
        "last_seen_at": record.last_seen_at,
    }))
}
