//! `GET /api/users/{uuid}/two_factor_status/`: whether 2FA is on (TOTP, or passkeys in
//! effect), by which method, and the unused backup codes.
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
    // As PostHog: `has_passkeys` is whether a verified passkey exists, and
    // `passkeys_enabled_for_2fa` is in effect only with one.
    let (has_passkeys, passkey_2fa) = state
        .user
        .as_ref()
        .map(|u| (u.verified_passkeys > 0, u.passkey_2fa()))
        .unwrap_or_default();
    let backup_codes = match &state.backup_codes {
        Some(codes) if has_totp => shared::two_factor::open_backup_codes(
            &*ctx.keyring_opening(&[&codes.codes_enc]).await?,
            codes,
        )?,
        _ => Vec::new(),
    };
    let method = match (has_totp, passkey_2fa) {
        (true, _) => Some("TOTP"),
        (false, true) => Some("passkey"),
        _ => None,
    };
    http::ok(&json!({
        "is_enabled": has_totp || passkey_2fa,
        "backup_codes": backup_codes,
        "method": method,
        "has_passkeys": has_passkeys,
        "has_totp": has_totp,
        "passkeys_enabled_for_2fa": passkey_2fa,
    }))
}
