//! `GET /api/users/{uuid}/two_factor_status/`: whether 2FA is on, and the unused backup codes.
use serde_json::json;
use shared::lambda_http::{Body, Request, Response};
use shared::{http, ApiError, Context};

shared::endpoint!(status);

async fn status(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let uuid = call.target.uuid;
    let state = ctx.store.two_factor_state(uuid).await?;
    if call.target.is_other {
        state.active_user()?;
    }
    let has_totp = state.device.is_some();
    let backup_codes = match &state.backup_codes {
        Some(codes) if has_totp => shared::two_factor::open_backup_codes(
            &*ctx.keyring_opening(&[&codes.codes_enc]).await?,
            codes,
        )?,
        _ => Vec::new(),
    };
    http::ok(&json!({
        "is_enabled": has_totp,
        "backup_codes": backup_codes,
        "method": if has_totp { Some("TOTP") } else { None },
        "has_passkeys": false,
        "has_totp": has_totp,
        "passkeys_enabled_for_2fa": false,
    }))
}
