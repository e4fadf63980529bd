//! `POST /api/users/{uuid}/two_factor_validate/` (and its alias `validate_2fa/`): confirm a
//! TOTP setup with a code from the authenticator app.
use serde_json::json;
use shared::clock::now_millis;
use shared::lambda_http::{Body, Request, Response};
use shared::security_events::EventKind;
use shared::store::Commit;
use shared::throttle::FailureCharge;
use shared::throttle::{self, Attempt, CodeCheck};
use shared::two_factor::{token_invalid, Notice};
use shared::{fields, http, ApiError, Context};

shared::endpoint!(validate);

/// Checks the code against the pending secret under the failure limit; on success the
/// device is written and the pending setup removed in one transaction.
async fn validate(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let body = http::parse_fields(req)?;
    let token = fields::required_value(&body, "token")?;
    let code = fields::six_digit_code(token);
    let uuid = call.target.uuid;
    let (store, code) = (&ctx.store, code.as_deref());
    let lock_event = ctx.event_by(&call, uuid, EventKind::LockStarted);
    let enabled = &ctx
        .event_by(&call, uuid, EventKind::TwoFactorEnabled)
        .with_detail("totp");
    let user = throttle::limited(
        store,
        uuid,
        CodeCheck::TotpSetup,
        lock_event,
        move || async move {
            let state = store
                .two_factor_state_for(uuid, CodeCheck::TotpSetup)
                .await?;
            let now_ms = now_millis();
            throttle::check(&state.failures, now_ms)?;
            let pending = state
                .pending
                .ok_or_else(shared::two_factor::setup_expired)?;
            let keyring = ctx.keyring_opening(&[&pending.secret_enc]).await?;
            let secret = shared::two_factor::pending_secret(&keyring, &pending)?;
            let now = now_ms / 1000;
            let Some(step) = code.and_then(|c| secret.check(c, now)) else {
                return Ok(Attempt::Failed(
                    FailureCharge::of(state.failures),
                    token_invalid(),
                ));
            };
            let device = shared::two_factor::new_device(&keyring, uuid, &secret, step, now)?;
            Ok(
                match store
                    .confirm_setup(
                        &device,
                        &pending,
                        &state.failures,
                        std::slice::from_ref(enabled),
                    )
                    .await?
                {
                    Commit::Done => Attempt::Done(state.user),
                    Commit::Conflict => Attempt::Conflict,
                },
            )
        },
    )
    .await?;
    if let Some(user) = user {
        shared::two_factor::notify(&ctx.mailer, &user.email, Notice::Enabled);
    }
    http::ok(&json!({"success": true}))
}
