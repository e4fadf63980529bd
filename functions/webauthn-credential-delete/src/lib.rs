//! `DELETE /api/webauthn/credentials/{id}/`: removes one of the caller's passkeys, and says
//! so by email.
use shared::lambda_http::{Body, Request, Response};
use shared::passkeys::PasskeyId;
use shared::two_factor::{notify, Notice};
use shared::{http, ApiError, Context};

shared::endpoint!(delete);

async fn delete(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let id = PasskeyId::parse(call.matched.id.as_deref().unwrap_or_default())?;
    let uuid = call.target.uuid;
    // A passkey verified, or another deleted, between the read and the delete is read again
    // (the delete is conditioned on what was read, which decides the counts and notices).
    for round in 0..10 {
        if round > 0 {
            shared::store::race_backoff(round).await;
        }
        let (passkey, user) = tokio::join!(ctx.store.passkey(uuid, &id), ctx.store.user(uuid));
        let passkey = passkey?.ok_or(ApiError::NotFound)?;
        let user = user?.ok_or(ApiError::NotFound)?;
        if ctx
            .store
            .delete_passkey(&passkey, user.verified_passkeys)
            .await?
        {
            notify(&ctx.mailer, &user.email, Notice::PasskeyRemoved);
            // The last verified passkey takes passkey 2FA with it.
            if passkey.verified && user.verified_passkeys == 1 && user.passkeys_enabled_for_2fa {
                notify(&ctx.mailer, &user.email, Notice::PasskeyTwoFactorDisabled);
            }
            return http::no_content();
        }
    }
    Err(ApiError::Unavailable)
}
