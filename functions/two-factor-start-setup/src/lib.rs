//! `GET /api/users/{uuid}/two_factor_start_setup/` (and its alias `start_2fa_setup/`):
//! begin a TOTP setup for the caller.
use serde_json::json;
use shared::lambda_http::{Body, Request, Response};
use shared::totp::TotpSecret;
use shared::{http, two_factor, ApiError, Context};

shared::endpoint!(start);

/// Keeps a new secret as the pending setup for 10 minutes (replacing any earlier one) and
/// returns it with the `otpauth://` URI for an authenticator app.
async fn start(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let uuid = call.target.uuid;
    let (user, keyring) = tokio::join!(ctx.store.user(uuid), ctx.keyring());
    let (user, keyring) = (
        user?.filter(|u| u.is_active).ok_or(ApiError::NotFound)?,
        keyring?,
    );
    let secret = TotpSecret::generate();
    let pending = two_factor::new_pending_setup(&keyring, uuid, &secret)?;
    ctx.store.put_pending_setup(&pending).await?;
    http::ok(&json!({
        "success": true,
        "secret": secret.to_base32(),
        "otpauth_uri": secret.otpauth_uri(&ctx.config.totp_issuer, &user.email)?,
    }))
}
