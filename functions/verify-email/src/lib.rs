//! `POST /api/users/verify_email/`: complete an email change with the code that was mailed.
use serde_json::json;
use shared::fields::{self, Text};
use shared::lambda_http::{Body, Request, Response};
use shared::routes::{self, Target};
use shared::security_events::EventKind;
use shared::store::Commit;
use shared::throttle::FailureCharge;
use shared::throttle::{self, Attempt, CodeCheck};
use shared::{auth, email_change, http, ApiError, Context};

shared::endpoint!(verify);

fn wrong_code() -> ApiError {
    ApiError::invalid_input(
        "This verification code is invalid or has expired.",
        Some("code"),
    )
}

/// Checks the code under the email-change failure limit (checked before anything is
/// compared); on success the address changes, the new one is claimed and the request
/// removed, in one transaction. A wrong code also counts against the request itself, which
/// is void after five. Only the caller's own request can be completed, staff included.
async fn verify(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let body = http::parse_fields(req)?;
    let uuid_field = fields::required_text(&body, "uuid", Text::not_blank(64))?;
    if !body.contains_key("code") {
        return Err(ApiError::required("code"));
    }
    let code = body.get("code").and_then(fields::six_digit_code);
    let target = auth::target_of(
        &call.caller,
        Some(&uuid_field),
        Target::CallerOnly(routes::NON_STAFF),
    )?;
    let uuid = target.uuid;
    let (store, code) = (&ctx.store, code.as_deref());
    let lock_event = ctx.event_by(&call, uuid, EventKind::LockStarted);
    let completed = &ctx.event_by(&call, uuid, EventKind::EmailChangeCompleted);
    throttle::limited(
        store,
        uuid,
        CodeCheck::EmailChange,
        lock_event,
        move || async move {
            let (user, request, failures) = store.email_change_state(uuid).await?;
            let user = user.filter(|u| u.is_active).ok_or(ApiError::NotFound)?;
            throttle::check(&failures, shared::clock::now_millis())?;
            let Some(request) = request else {
                return Ok(Attempt::Failed(FailureCharge::of(failures), wrong_code()));
            };
            // A request from before codes were keyed hashes names no key: it can only be void.
            let keyring = match request.code_key_id.as_str() {
                "" => None,
                key_id => Some(ctx.keyring_for(&[key_id]).await?),
            };
            let matches = |code: &str| {
                keyring
                    .as_ref()
                    .is_some_and(|keyring| email_change::code_matches(keyring, &request, code))
            };
            if !code.is_some_and(matches) {
                let charge = store.charge_with_wrong_code(failures, &request)?;
                return Ok(Attempt::Failed(charge, wrong_code()));
            }
            Ok(
                match store
                    .complete_email_change(
                        &user,
                        &request,
                        &failures,
                        std::slice::from_ref(completed),
                    )
                    .await?
                {
                    Commit::Done => Attempt::Done(()),
                    Commit::Conflict => Attempt::Conflict,
                },
            )
        },
    )
    .await?;
    http::ok(&json!({"success": true}))
}
