//! `PATCH /api/users/{uuid}/`: update the profile fields a user may change, and request an
//! email change (verified by a code sent to the new address).
use serde_json::{Map, Value};
use shared::email_change::EMAIL_CHANGE_TTL_SECS;
use shared::fields::Fields;
use shared::fields::{self, Text};
use shared::lambda_http::{Body, Request, Response};
use shared::store::users::{email_taken, EmailUpdate};
use shared::users::{email_key, UserRecord};
use shared::{email_change, http, ApiError, Context};

shared::endpoint!(update);

async fn update(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let body = http::parse_fields(req)?;
    let mut changes = profile_changes(&body)?;
    let new_email = match fields::text(&body, "email", Text::not_blank(254))? {
        Some(email) if !email_change::is_valid_email(&email) => {
            return Err(ApiError::invalid_input(
                "Enter a valid email address.",
                Some("email"),
            ))
        }
        other => other,
    };
    let uuid = call.target.uuid.to_string();
    let mails_code = new_email.is_some() && ctx.mailer.enabled();
    let (view, owner, mail_log, keyring) = match &new_email {
        Some(email) if mails_code => {
            let (view_and_log, owner, keyring) = tokio::join!(
                ctx.store.user_view_and_mail_log(&uuid),
                ctx.store.email_owner(email),
                ctx.keyring(),
            );
            let (view, mail_log) = view_and_log?;
            (view, owner?, Some(mail_log), Some(keyring?))
        }
        Some(email) => {
            let (view, owner) =
                tokio::join!(ctx.store.user_view(&uuid), ctx.store.email_owner(email));
            (view?, owner?, None, None)
        }
        None => (ctx.store.user_view(&uuid).await?, None, None, None),
    };
    let mut view = view.ok_or(ApiError::NotFound)?;
    merge_partial_objects(&view.user, &mut changes)?;
    let new_email = new_email.filter(|e| email_key(e) != email_key(&view.user.email));
    if let Some(owner) = &owner {
        if new_email.is_some() && *owner != uuid {
            return Err(email_taken());
        }
    }
    // The response shows what this update writes, over the record read just before it; it
    // is also what the user item will hold, so its size is checked before anything is sent.
    let mut user =
        serde_json::to_value(&view.user).map_err(|e| ApiError::serialisation("user record", &e))?;
    let stored_len = user.to_string().len();
    if let Some(object) = user.as_object_mut() {
        object.extend(changes.clone());
    }
    // Only an update that grows a record past the bound is refused: one that was already
    // that large (scenes are set elsewhere) can still be changed and shrunk.
    let updated_len = user.to_string().len();
    if updated_len > MAX_USER_BYTES && updated_len > stored_len {
        return Err(ApiError::item_too_large());
    }
    view.user = serde_json::from_value::<UserRecord>(user)
        .map_err(|e| ApiError::serialisation("user record", &e))?;
    let mut code_to_send = None;
    let (request, sent_ms);
    let email_update = match (&new_email, mail_log, keyring) {
        (None, ..) => EmailUpdate::Unchanged,
        (Some(new), Some(mail_log), Some(keyring)) => {
            sent_ms = email_change::one_more_mail(&mail_log, shared::clock::now_millis())?;
            let (record, code) =
                email_change::new_request(&keyring, &uuid, new, EMAIL_CHANGE_TTL_SECS)?;
            code_to_send = Some(code);
            request = (record, mail_log);
            EmailUpdate::Request {
                record: &request.0,
                mail_log: &request.1,
                sent_ms: &sent_ms,
            }
        }
        (Some(new), ..) => EmailUpdate::Immediate {
            old: &view.user.email,
            new,
        },
    };
    ctx.store
        .update_profile(&uuid, &changes, email_update)
        .await?;
    if let Some(new) = new_email {
        match code_to_send {
            Some(code) => {
                email_change::send_code(&ctx.mailer, &new, &code).await;
                view.pending_email = Some(new);
            }
            None => view.user.email = new,
        }
    }
    http::ok(&view.to_json())
}

/// Like PostHog, a partial `notification_settings` object updates only the keys it names.
/// The merged value is what is stored, so it is the merged value whose size is bounded: a
/// series of requests each adding new keys cannot grow the user item without limit.
fn merge_partial_objects(
    user: &UserRecord,
    changes: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    if let Some(settings) = changes.get_mut("notification_settings") {
        let mut merged = user
            .notification_settings
            .as_object()
            .cloned()
            .unwrap_or_default();
        merged.extend(settings.as_object().cloned().unwrap_or_default());
        *settings = Value::Object(merged);
    }
    check_setting_sizes(changes)
}

/// Each JSON setting, as it will be stored, is kept small, and so is the whole user item
/// (far below DynamoDB's 400 KB).
fn check_setting_sizes(changes: &Map<String, Value>) -> Result<(), ApiError> {
    for (name, value) in changes {
        if value.is_object() && value.to_string().len() > MAX_SETTING_BYTES {
            return Err(ApiError::invalid_input(
                format!(
                    "Ensure this value is no larger than {} KiB.",
                    MAX_SETTING_BYTES / 1024
                ),
                Some(name),
            ));
        }
    }
    Ok(())
}

/// The most the user item may hold as JSON: four settings at their limit and every scene
/// personalised fit with room to spare, and it stays well below DynamoDB's item limit.
const MAX_USER_BYTES: usize = 256 * 1024;
const MAX_SETTING_BYTES: usize = 16 * 1024;
const TOOLBAR_MODES: &[&str] = &["disabled", "toolbar"];
const THEME_MODES: &[&str] = &["light", "dark", "system"];
const SHORTCUT_POSITIONS: &[&str] = &["above", "below", "hidden"];
const ROLES: &[&str] = &[
    "engineering",
    "data",
    "product",
    "founder",
    "leadership",
    "marketing",
    "sales",
    "other",
];

/// The profile fields present in the body, validated, as they will be stored. Read-only
/// fields (`is_staff`, `uuid`, `pending_email`, `date_joined`, `is_2fa_enabled`...) and
/// unknown keys are ignored.
fn profile_changes(body: &Fields) -> Result<Map<String, Value>, ApiError> {
    let mut changes = Map::new();
    for name in ["first_name", "last_name"] {
        if let Some(value) = fields::text(body, name, Text::blank_ok(150))? {
            changes.insert(name.into(), Value::String(value));
        }
    }
    for name in ["anonymize_data", "allow_impersonation", "hide_mcp_hints"] {
        if let Some(value) = fields::boolean(body, name)? {
            changes.insert(name.into(), Value::Bool(value));
        }
    }
    if body
        .get("allow_sidebar_suggestions")
        .is_some_and(Value::is_null)
    {
        changes.insert("allow_sidebar_suggestions".into(), Value::Null);
    } else if let Some(value) = fields::boolean(body, "allow_sidebar_suggestions")? {
        changes.insert("allow_sidebar_suggestions".into(), Value::Bool(value));
    }
    if let Some(value) = fields::boolean(body, "passkeys_enabled_for_2fa")? {
        if value {
            return Err(ApiError::invalid_input(
                "You need at least one passkey registered to use passkeys for 2FA.",
                Some("passkeys_enabled_for_2fa"),
            ));
        }
        changes.insert("passkeys_enabled_for_2fa".into(), Value::Bool(false));
    }
    let choices: [(&str, &[&str], bool); 4] = [
        ("toolbar_mode", TOOLBAR_MODES, true),
        ("theme_mode", THEME_MODES, true),
        ("shortcut_position", SHORTCUT_POSITIONS, true),
        ("role_at_organization", ROLES, true),
    ];
    for (name, options, allow_null) in choices {
        if let Some(value) = fields::choice(body, name, options, allow_null)? {
            changes.insert(name.into(), value.map(Value::String).unwrap_or(Value::Null));
        }
    }
    for (name, allow_null) in [
        ("notification_settings", false),
        ("events_column_config", false),
        ("has_seen_product_intro_for", true),
        ("hedgehog_config", true),
    ] {
        if let Some(value) = fields::object(body, name, allow_null)? {
            changes.insert(name.into(), value.unwrap_or(Value::Null));
        }
    }
    check_setting_sizes(&changes)?;
    Ok(changes)
}
