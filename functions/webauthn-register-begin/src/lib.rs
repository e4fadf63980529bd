//! `POST /api/webauthn/register/begin/`: the creation options for a new passkey, with the
//! ceremony kept server-side for a few minutes.
use shared::lambda_http::{Body, Request, Response};
use shared::passkeys::{self, MAX_PASSKEYS};
use shared::{http, ApiError, Context};

shared::endpoint!(begin);

async fn begin(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let webauthn = ctx.webauthn()?;
    let uuid = call.target.uuid;
    let (user, existing) = tokio::join!(ctx.store.user(uuid), ctx.store.passkeys_of(uuid));
    let user = user?.filter(|u| u.is_active).ok_or(ApiError::NotFound)?;
    let existing = existing?;
    if existing.len() >= MAX_PASSKEYS as usize {
        return Err(passkeys::limit_reached());
    }
    let (options, ceremony) = passkeys::begin_registration(webauthn, &user, &existing)?;
    ctx.store.put_ceremony(&ceremony).await?;
    http::ok(&options)
}
