//! `PATCH /api/webauthn/credentials/{id}/`: renames one of the caller's passkeys.
use shared::lambda_http::{Body, Request, Response};
use shared::passkeys::{PasskeyId, MAX_LABEL_CHARS};
use shared::{fields, http, ApiError, Context};

shared::endpoint!(rename);

async fn rename(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let id = PasskeyId::parse(call.matched.id.as_deref().unwrap_or_default())?;
    let body = http::parse_fields(req)?;
    let label = fields::required_text(&body, "label", fields::Text::not_blank(MAX_LABEL_CHARS))?;
    let uuid = call.target.uuid;
    // The passkey is read beside the rename, not after it (one round trip fewer); the
    // rename cannot return it, as its policy limits it to the label, which requires that it
    // return nothing (IAM's attribute-level conditions).
    // Both run to the end (a failed read does not cut the rename short), the rename's
    // outcome first.
    let (renamed, passkey) = tokio::join!(
        ctx.store.rename_passkey(uuid, &id, &label),
        ctx.store.passkey(uuid, &id),
    );
    if !renamed? {
        return Err(ApiError::NotFound);
    }
    let mut passkey = passkey?.ok_or(ApiError::NotFound)?;
    passkey.label = label;
    http::ok(&passkey.to_json())
}
