//! `POST /api/users/verify_email/`: complete an email change with the code that was mailed.
use serde_json::json;
use shared::fields::{self, Text};
use shared::lambda_http::{Body, Request, Response};
use shared::routes::Target;
use shared::store::email_changes::{Commit, EmailChangeRecord};
use shared::store::two_factor::{self, FailureState};
use shared::store::{from_item, s};
use shared::throttle::{self, Attempt};
use shared::users::UserRecord;
use shared::{auth, email_change, http, ApiError, Context};
use std::collections::HashMap;
use std::convert::Infallible;

pub async fn handle(ctx: &Context, req: Request) -> Result<Response<Body>, Infallible> {
    Ok(http::serve(&req, |req| verify(ctx, req)).await)
}

fn wrong_code() -> ApiError {
    ApiError::invalid_input(
        "This verification code is invalid or has expired.",
        Some("code"),
    )
}

/// Checks the code under the failure limit; on success the address changes, the new one is
/// claimed and the request removed, in one transaction.
async fn verify(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, "verify-email").await?;
    let body = http::parse_fields(req)?;
    let uuid_field = fields::required_text(&body, "uuid", Text::not_blank(64))?;
    if !body.contains_key("code") {
        return Err(ApiError::required("code"));
    }
    let code = body.get("code").and_then(fields::six_digit_code);
    let target = auth::target_of(&call.caller, Some(&uuid_field), Target::StaffMayTarget)?;
    let uuid = target.uuid.to_string();
    let (store, uuid, code) = (&ctx.store, uuid.as_str(), code.as_deref());
    throttle::limited(store, uuid, move || async move {
        let keys = [
            (
                store.tables.users.as_str(),
                HashMap::from([("uuid".to_string(), s(uuid))]),
            ),
            (
                store.tables.email_changes.as_str(),
                HashMap::from([("user_uuid".to_string(), s(uuid))]),
            ),
            (
                store.tables.two_factor.as_str(),
                two_factor::key(uuid, two_factor::FAILURES),
            ),
        ];
        let mut items = store.get_many(&keys).await?.into_iter();
        let user = items
            .next()
            .flatten()
            .map(from_item::<UserRecord>)
            .transpose()?;
        let user = user.filter(|u| u.is_active).ok_or(ApiError::NotFound)?;
        let request = items
            .next()
            .flatten()
            .map(from_item::<EmailChangeRecord>)
            .transpose()?;
        let failures = FailureState::from_item(items.next().flatten())?;
        throttle::check(&failures, shared::store::now_secs())?;
        let request = request.and_then(EmailChangeRecord::open);
        let (Some(request), Some(code)) = (request, code) else {
            return Ok(Attempt::Failed(failures, wrong_code()));
        };
        if !email_change::code_matches(&request, code) {
            return Ok(Attempt::Failed(failures, wrong_code()));
        }
        Ok(
            match store
                .complete_email_change(&user, &request, &failures)
                .await?
            {
                Commit::Done => Attempt::Done(()),
                Commit::Conflict => Attempt::Conflict,
            },
        )
    })
    .await?;
    http::ok(&json!({"success": true}))
}
