//! `GET /api/users/{uuid}/two_factor_status/`: whether 2FA is on, and the unused backup codes.
use serde_json::json;
use shared::lambda_http::{Body, Request, Response};
use shared::store::two_factor::{self, BackupCodes};
use shared::store::{from_item, s};
use shared::users::UserRecord;
use shared::{http, ApiError, Context};
use std::collections::HashMap;
use std::convert::Infallible;

pub async fn handle(ctx: &Context, req: Request) -> Result<Response<Body>, Infallible> {
    Ok(http::serve(&req, |req| status(ctx, req)).await)
}

async fn status(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, "two-factor-status").await?;
    let uuid = call.target.uuid.to_string();
    let store = &ctx.store;
    let mut keys = vec![
        (
            store.tables.two_factor.as_str(),
            two_factor::key(&uuid, two_factor::TOTP),
        ),
        (
            store.tables.two_factor.as_str(),
            two_factor::key(&uuid, two_factor::BACKUP_CODES),
        ),
    ];
    if call.target.is_other {
        keys.push((
            store.tables.users.as_str(),
            HashMap::from([("uuid".to_string(), s(&uuid))]),
        ));
    }
    let mut items = store.get_many(&keys).await?.into_iter();
    let has_totp = items.next().flatten().is_some();
    let codes = items
        .next()
        .flatten()
        .map(from_item::<BackupCodes>)
        .transpose()?;
    if call.target.is_other {
        let user = items
            .next()
            .flatten()
            .map(from_item::<UserRecord>)
            .transpose()?;
        user.filter(|u| u.is_active).ok_or(ApiError::NotFound)?;
    }
    let backup_codes = match codes {
        Some(codes) if has_totp => {
            shared::two_factor::open_backup_codes(ctx.keyring().await?, &codes)?
        }
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
