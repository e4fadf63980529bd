//! `PATCH /api/users/cancel_email_change_request/`: drop the caller's open email change.
use shared::lambda_http::{Body, Request, Response};
use shared::security_events::EventKind;
use shared::{http, ApiError, Context};

shared::endpoint!(cancel);

/// Deletes the request (its code dies with it) and returns the user object; the body is ignored.
async fn cancel(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let uuid = call.target.uuid;
    let event = ctx.event_by(&call, uuid, EventKind::EmailChangeCancelled);
    // The user object is read beside the cancellation, not after it (one round trip fewer);
    // it shows no pending email, as this request cancelled it, whatever the read saw.
    // Both run to the end (a failed read does not cut the cancellation short), the
    // cancellation's outcome first.
    let (cancelled, view) = tokio::join!(
        ctx.store.cancel_email_change(uuid, &event),
        ctx.store.user_view(uuid),
    );
    if !cancelled? {
        return Err(ApiError::validation(
            "email_change_request_not_found",
            "No active email change requests found.",
            None,
        ));
    }
    let mut view = view?.ok_or(ApiError::NotFound)?;
    view.pending_email = None;
    http::ok(&view.to_json())
}
