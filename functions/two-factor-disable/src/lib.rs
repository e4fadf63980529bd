//! `POST /api/users/{uuid}/two_factor_disable/`: turn 2FA off.
use serde_json::json;
use shared::lambda_http::{Body, Request, Response};
use shared::security_events::EventKind;
use shared::store::Commit;
use shared::two_factor::Notice;
use shared::{http, ApiError, Context};

shared::endpoint!(disable);

/// Removes the device, any pending setup and the backup codes in one transaction (the code
/// checks' failure limits stay: disabling must not lift a lock); succeeds when nothing was
/// enabled. The user is told when a device went.
async fn disable(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let uuid = call.target.uuid;
    // The device is removed as read (there: recorded and mailed; absent: neither); one
    // removed or confirmed meanwhile makes it read again.
    for round in 0..5 {
        if round > 0 {
            shared::store::race_backoff(round).await;
        }
        let state = ctx.store.two_factor_state(uuid).await?;
        let user = state.active_user()?;
        let disabled = state.device.is_some().then(|| {
            ctx.event_by(&call, uuid, EventKind::TwoFactorDisabled)
                .with_detail("totp")
        });
        if ctx
            .store
            .disable_two_factor(uuid, disabled.as_ref())
            .await?
            == Commit::Done
        {
            if disabled.is_some() {
                shared::two_factor::notify(&ctx.mailer, &user.email, Notice::Disabled);
            }
            return http::ok(&json!({"success": true}));
        }
    }
    Err(ApiError::Unavailable)
}
