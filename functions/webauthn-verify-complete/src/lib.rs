//! `POST /api/webauthn/credentials/{id}/verify_complete/`: the assertion that proves a newly
//! registered passkey; it is then verified (and may serve as the second factor).
use shared::lambda_http::{Body, Request, Response};
use shared::passkeys::{self, CeremonyPurpose, ClientData, PasskeyId};
use shared::security_events::EventKind;
use shared::store::passkeys::PasskeyVerify;
use shared::two_factor::{notify, Notice};
use shared::{http, ApiError, Context};

shared::endpoint!(complete);

async fn complete(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let webauthn = ctx.webauthn()?;
    let id = PasskeyId::parse(call.matched.id.as_deref().unwrap_or_default())?;
    let body = http::parse_fields(req)?;
    let response: passkeys::Assertion =
        passkeys::credential_from(&serde_json::Value::Object(body), None)?;
    let answered =
        ClientData::of(&response.response.client_data_json).ok_or_else(passkeys::no_challenge)?;
    let uuid = call.target.uuid;
    // The ceremony is taken while the passkey and the user are read.
    let (ceremony, passkey, user) = tokio::join!(
        ctx.store
            .take_ceremony(uuid, CeremonyPurpose::Verify, &answered.challenge),
        ctx.store.passkey(uuid, &id),
        ctx.store.user(uuid)
    );
    let ceremony = ceremony?.ok_or_else(passkeys::no_challenge)?;
    if ceremony.passkey_id.as_ref() != Some(&id) {
        return Err(passkeys::credential_mismatch());
    }
    let passkey = passkey?
        .filter(|p| !p.verified)
        .ok_or_else(passkeys::not_found_or_verified)?;
    let user = user?.ok_or(ApiError::NotFound)?;
    let result = passkeys::complete_assertion(
        webauthn,
        &ceremony,
        &response,
        passkeys::verification_failed,
    )?;
    let mut verified = passkey.after_use(&result)?;
    let now = shared::clock::iso_now();
    // The first verified passkey of a user who turned passkey 2FA on brings it into effect:
    // decided on the user as read, and written only if the user is still so (else read the
    // user again: the assertion stays proved).
    let mut user = user;
    let mut starts_2fa;
    let mut round = 0;
    loop {
        starts_2fa = user.passkeys_enabled_for_2fa && user.verified_passkeys <= 0;
        let events: Vec<_> = starts_2fa
            .then(|| {
                ctx.event_by(&call, uuid, EventKind::TwoFactorEnabled)
                    .with_detail("passkey")
            })
            .into_iter()
            .collect();
        match ctx
            .store
            .mark_passkey_verified(&verified, &now, &user, &events)
            .await?
        {
            PasskeyVerify::Done => break,
            PasskeyVerify::Gone => return Err(passkeys::not_found_or_verified()),
            PasskeyVerify::UserChanged if round < 5 => {
                round += 1;
                shared::store::race_backoff(round).await;
                user = ctx.store.user(uuid).await?.ok_or(ApiError::NotFound)?;
            }
            PasskeyVerify::UserChanged => return Err(ApiError::Unavailable),
        }
    }
    verified.verified = true;
    verified.last_used_at = Some(now);
    notify(&ctx.mailer, &user.email, Notice::PasskeyAdded);
    if starts_2fa {
        notify(&ctx.mailer, &user.email, Notice::PasskeyTwoFactorEnabled);
    }
    http::ok(&verified.to_json())
}
