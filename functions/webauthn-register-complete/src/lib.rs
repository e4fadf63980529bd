//! `POST /api/webauthn/register/complete/`: the browser's answer to the creation options
//! (with an optional `label`); the passkey is stored unverified until one assertion proves it
//! (`credentials/{id}/verify/`).
use serde_json::json;
use shared::lambda_http::{Body, Request, Response};
use shared::passkeys::{self, CeremonyPurpose, ClientData, MAX_LABEL_CHARS};
use shared::security_events::EventKind;
use shared::store::passkeys::AddPasskey;
use shared::{fields, http, ApiError, Context};

shared::endpoint!(complete);

async fn complete(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let webauthn = ctx.webauthn()?;
    let body = http::parse_fields(req)?;
    let label = fields::text(&body, "label", fields::Text::not_blank(MAX_LABEL_CHARS))?
        .unwrap_or_else(|| "Passkey".to_string());
    let response: passkeys::Registration =
        passkeys::credential_from(&serde_json::Value::Object(body), None)?;
    let answered =
        ClientData::of(&response.response.client_data_json).ok_or_else(passkeys::no_challenge)?;
    let uuid = call.target.uuid;
    let ceremony = ctx
        .store
        .take_ceremony(uuid, CeremonyPurpose::Register, &answered.challenge)
        .await?
        .ok_or_else(passkeys::no_challenge)?;
    let passkey = passkeys::complete_registration(webauthn, &ceremony, &response, label)?;
    let added = ctx
        .event_by(&call, uuid, EventKind::PasskeyAdded)
        .with_detail(passkey.id.as_str());
    match ctx.store.add_passkey(&passkey, &[added]).await? {
        AddPasskey::Done => http::ok(&json!({
            "success": true,
            "credential_id": passkey.id,
            "message": "Credential stored. Please verify your passkey to complete registration.",
        })),
        AddPasskey::LimitReached => Err(passkeys::limit_reached()),
        AddPasskey::AlreadyRegistered => Err(passkeys::already_registered()),
    }
}
