//! `POST /api/users/{uuid}/two_factor_passkey_begin/`: the challenge of the sign-in check by
//! passkey (PostHog's `/api/login/2fa/passkey/begin/`), answered at `two_factor_verify`.
use shared::lambda_http::{Body, Request, Response};
use shared::passkeys::{self, CeremonyPurpose};
use shared::{http, ApiError, Context};

shared::endpoint!(begin);

async fn begin(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let webauthn = ctx.webauthn()?;
    let uuid = call.target.uuid;
    let (user, all) = tokio::join!(ctx.store.user(uuid), ctx.store.passkeys_of(uuid));
    let user = user?.filter(|u| u.is_active).ok_or(ApiError::NotFound)?;
    let verified: Vec<_> = all?.into_iter().filter(|p| p.verified).collect();
    if verified.is_empty() {
        return Err(passkeys::no_passkeys_for_sign_in());
    }
    if !user.passkeys_enabled_for_2fa {
        return Err(passkeys::passkey_2fa_off());
    }
    let (options, ceremony) =
        passkeys::begin_assertion(webauthn, uuid, CeremonyPurpose::SignIn, &verified, None)?;
    ctx.store.put_ceremony(&ceremony).await?;
    http::ok(&options)
}
