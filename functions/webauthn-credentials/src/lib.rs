//! `GET /api/webauthn/credentials/`: the caller's passkeys, verified or not, newest first.
use shared::lambda_http::{Body, Request, Response};
use shared::{http, ApiError, Context};

shared::endpoint!(list);

async fn list(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let passkeys = ctx.store.passkeys_of(call.target.uuid).await?;
    let shown: Vec<_> = passkeys.iter().rev().map(|p| p.to_json()).collect();
    http::ok(&shown)
}
