//! `POST /api/webauthn/credentials/{id}/verify/`: the request options that prove a newly
//! registered passkey with one assertion.
use shared::lambda_http::{Body, Request, Response};
use shared::passkeys::{self, CeremonyPurpose, PasskeyId};
use shared::{http, ApiError, Context};

shared::endpoint!(begin);

async fn begin(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let webauthn = ctx.webauthn()?;
    let id = PasskeyId::parse(call.matched.id.as_deref().unwrap_or_default())?;
    let uuid = call.target.uuid;
    let passkey = ctx
        .store
        .passkey(uuid, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if passkey.verified {
        return Err(passkeys::already_verified());
    }
    let (options, ceremony) = passkeys::begin_assertion(
        webauthn,
        uuid,
        CeremonyPurpose::Verify,
        std::slice::from_ref(&passkey),
        Some(id),
    )?;
    ctx.store.put_ceremony(&ceremony).await?;
    http::ok(&options)
}
