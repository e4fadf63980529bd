//! `POST /api/users/{uuid}/two_factor_backup_codes/`: a fresh set of backup codes.
use serde_json::json;
use shared::lambda_http::{Body, Request, Response};
use shared::security_events::EventKind;
use shared::{http, ApiError, Context};

shared::endpoint!(regenerate);

/// Replaces every earlier code with 10 new ones in one write, conditioned on a confirmed
/// device existing at that moment.
async fn regenerate(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let uuid = call.target.uuid;
    let (state, keyring) = tokio::join!(ctx.store.two_factor_state(uuid), ctx.keyring());
    let state = state?;
    if call.target.is_other {
        state.active_user()?;
    }
    if state.device.is_none() {
        return Err(shared::two_factor::not_enabled());
    }
    let codes = shared::two_factor::generate_backup_codes();
    let sealed = shared::two_factor::seal_backup_codes(&*keyring?, uuid, &codes)?;
    let event = ctx.event_by(&call, uuid, EventKind::BackupCodesRegenerated);
    if !ctx
        .store
        .put_backup_codes(&sealed, None, None, &[event])
        .await?
    {
        // The device went away between the read and the write (a transaction that only
        // conflicted with another, such as a backup code's use, is retried by the store and
        // never lands here).
        return Err(shared::two_factor::not_enabled());
    }
    http::ok(&json!({"backup_codes": codes}))
}
