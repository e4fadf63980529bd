//! `DELETE /api/webauthn/credentials/{id}/`: removes one of the caller's passkeys, and says
//! so by email.
use shared::lambda_http::{Body, Request, Response};
use shared::passkeys::PasskeyId;
use shared::security_events::EventKind;
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
        // The last verified passkey takes passkey 2FA with it (the delete is conditioned on
        // the verified count read, so this is decided on what the write changes).
        let ends_2fa =
            passkey.verified && user.verified_passkeys == 1 && user.passkeys_enabled_for_2fa;
        let mut events = vec![ctx
            .event_by(&call, uuid, EventKind::PasskeyRemoved)
            .with_detail(passkey.id.as_str())];
        if ends_2fa {
            events.push(
                ctx.event_by(&call, uuid, EventKind::TwoFactorDisabled)
                    .with_detail("passkey"),
            );
        }
        if ctx.store.delete_passkey(&passkey, &user, &events).await? {
            notify(&ctx.mailer, &user.email, Notice::PasskeyRemoved);
            if ends_2fa {
                notify(&ctx.mailer, &user.email, Notice::PasskeyTwoFactorDisabled);
            }
            return http::no_content();
        }
    }
    Err(ApiError::Unavailable)
}
