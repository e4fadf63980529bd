//! `POST /api/users/{uuid}/two_factor_backup_codes/`: a fresh set of backup codes.
use serde_json::json;
use shared::lambda_http::{Body, Request, Response};
use shared::store::two_factor;
use shared::store::{from_item, s};
use shared::users::UserRecord;
use shared::{http, ApiError, Context};
use std::collections::HashMap;
use std::convert::Infallible;

pub async fn handle(ctx: &Context, req: Request) -> Result<Response<Body>, Infallible> {
    Ok(http::serve(&req, |req| regenerate(ctx, req)).await)
}

/// Replaces every earlier code with 10 new ones in one write, conditioned on a confirmed
/// device existing at that moment.
async fn regenerate(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, "two-factor-backup-codes").await?;
    let uuid = call.target.uuid.to_string();
    let store = &ctx.store;
    let mut keys = vec![(
        store.tables.two_factor.as_str(),
        two_factor::key(&uuid, two_factor::TOTP),
    )];
    if call.target.is_other {
        keys.push((
            store.tables.users.as_str(),
            HashMap::from([("uuid".to_string(), s(&uuid))]),
        ));
    }
    let (items, keyring) = tokio::join!(store.get_many(&keys), ctx.keyring());
    let mut items = items?.into_iter();
    let has_totp = items.next().flatten().is_some();
    if call.target.is_other {
        let user = items
            .next()
            .flatten()
            .map(from_item::<UserRecord>)
            .transpose()?;
        user.filter(|u| u.is_active).ok_or(ApiError::NotFound)?;
    }
    if !has_totp {
        return Err(shared::two_factor::not_enabled());
    }
    let codes = shared::two_factor::generate_backup_codes();
    let sealed = shared::two_factor::seal_backup_codes(keyring?, &uuid, &codes)?;
    if !store.put_backup_codes(&sealed, None, None).await? {
        // The device went away between the read and the write.
        return Err(shared::two_factor::not_enabled());
    }
    http::ok(&json!({"backup_codes": codes}))
}
