//! `PATCH /api/users/{uuid}/`: update the profile fields a user may change, and request an
//! email change (verified by a code sent to the new address).
use shared::email_change::EMAIL_CHANGE_TTL_SECS;
use shared::fields::{self, Fields, Null, Text};
use shared::lambda_http::{Body, Request, Response};
use shared::security_events::EventKind;
use shared::store::users::{email_taken, EmailUpdate};
use shared::store::Commit;
use shared::two_factor::Notice;
use shared::users::{email_key, ProfilePatch};
use shared::{email_change, http, ApiError, Context};

shared::endpoint!(update);

async fn update(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let body = http::parse_fields(req)?;
    profile_patch(&body)?;
    let new_email = match fields::text(&body, "email", Text::not_blank(254))? {
        Some(email) if !email_change::is_valid_email(&email) => {
            return Err(ApiError::invalid_input(
                "Enter a valid email address.",
                Some("email"),
            ))
        }
        other => other,
    };
    // What the update records (passkey 2FA coming into effect or ending) is decided on the user
    // as read, and the write holds only if the user is still so: else read again.
    for round in 0..5 {
        if round > 0 {
            shared::store::race_backoff(round).await;
        }
        if let Some(response) = attempt(ctx, &call, &body, new_email.clone()).await? {
            return Ok(response);
        }
    }
    Err(ApiError::Unavailable)
}

/// One read-decide-write round of the update; `None` when the user changed since the read.
async fn attempt(
    ctx: &Context,
    call: &shared::Call,
    body: &Fields,
    new_email: Option<String>,
) -> Result<Option<Response<Body>>, ApiError> {
    let mut patch = profile_patch(body)?;
    let uuid = call.target.uuid;
    let mails_code = new_email.is_some() && ctx.mailer.enabled();
    let (view, owner, mail_log, keyring) = match &new_email {
        Some(email) if mails_code => {
            let (view_and_log, owner, keyring) = tokio::join!(
                ctx.store.user_view_and_mail_log(uuid),
                ctx.store.email_owner(email),
                ctx.keyring(),
            );
            let (view, mail_log) = view_and_log?;
            (view, owner?, Some(mail_log), Some(keyring?))
        }
        Some(email) => {
            let (view, owner) =
                tokio::join!(ctx.store.user_view(uuid), ctx.store.email_owner(email));
            (view?, owner?, None, None)
        }
        None => (ctx.store.user_view(uuid).await?, None, None, None),
    };
    let mut view = view.ok_or(ApiError::NotFound)?;
    // Passkey 2FA needs a verified passkey; the write checks the count again, so a passkey
    // deleted meanwhile cannot slip through.
    if patch.passkeys_enabled_for_2fa == Some(true) && view.user.verified_passkeys <= 0 {
        return Err(shared::passkeys::no_passkeys());
    }
    let passkey_2fa_before = view.user.passkey_2fa();
    let seen = view.user.clone();
    patch.merge_notification_settings(&view.user);
    check_setting_sizes(&patch)?;
    let new_email = new_email.filter(|e| email_key(e) != email_key(&view.user.email));
    if let Some(owner) = &owner {
        if new_email.is_some() && *owner != uuid {
            return Err(email_taken());
        }
    }
    // The response shows what this update writes, over the record read just before it; it
    // is also what the user item will hold, so its size is checked before anything is sent.
    let json_len = |user: &shared::users::UserRecord| {
        serde_json::to_vec(user)
            .map(|json| json.len())
            .map_err(|e| ApiError::serialisation("user record", &e))
    };
    // An address set without a code (no sender configured) is one nobody proved: the user
    // object says so, and sign-in tokens never link to it by email.
    if new_email.is_some() && !mails_code {
        patch.is_email_verified = Some(false);
    }
    let stored_len = json_len(&view.user)?;
    view.user.apply(&patch);
    // Only an update that grows a record past the bound is refused: one that was already
    // that large (scenes are set elsewhere) can still be changed and shrunk.
    let updated_len = json_len(&view.user)?;
    if updated_len > MAX_USER_BYTES && updated_len > stored_len {
        return Err(ApiError::item_too_large());
    }
    let mut code_to_send = None;
    let (request, sent_ms);
    let email_update = match (&new_email, mail_log, keyring) {
        (None, ..) => EmailUpdate::Unchanged,
        (Some(new), Some(mail_log), Some(keyring)) => {
            sent_ms = email_change::one_more_mail(&mail_log, shared::clock::now_millis())?;
            let (record, code) =
                email_change::new_request(&keyring, uuid, new, EMAIL_CHANGE_TTL_SECS)?;
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
    // The records of what this update changes, in its transaction: an email change requested
    // (or made at once, where no mail is sent), passkey 2FA coming into effect or ending.
    let passkey_2fa_after = view.user.passkey_2fa();
    let mut events = Vec::new();
    match &email_update {
        EmailUpdate::Unchanged => {}
        EmailUpdate::Request { .. } => {
            events.push(ctx.event_by(call, uuid, EventKind::EmailChangeRequested))
        }
        EmailUpdate::Immediate { .. } => {
            events.push(ctx.event_by(call, uuid, EventKind::EmailChangeCompleted))
        }
    }
    if passkey_2fa_after != passkey_2fa_before {
        let kind = if passkey_2fa_after {
            EventKind::TwoFactorEnabled
        } else {
            EventKind::TwoFactorDisabled
        };
        events.push(ctx.event_by(call, uuid, kind).with_detail("passkey"));
    }
    // A write of the passkey 2FA flag holds only on the user as read: whether it changes the
    // flag's effect (and so what is recorded) was decided on that, and a first verification
    // racing it decides on the flag it read.
    let as_read = patch.passkeys_enabled_for_2fa.is_some().then_some(&seen);
    if ctx
        .store
        .update_profile(uuid, &patch, email_update, as_read, &events)
        .await?
        == Commit::Conflict
    {
        return Ok(None);
    }
    if passkey_2fa_after != passkey_2fa_before {
        shared::two_factor::notify(
            &ctx.mailer,
            &view.user.email,
            if passkey_2fa_after {
                Notice::PasskeyTwoFactorEnabled
            } else {
                Notice::PasskeyTwoFactorDisabled
            },
        );
    }
    if let Some(new) = new_email {
        match code_to_send {
            Some(code) => {
                email_change::send_code(&ctx.mailer, &new, &code).await;
                view.pending_email = Some(new);
            }
            None => view.user.email = new,
        }
    }
    http::ok(&view.to_json()).map(Some)
}

/// Each JSON setting, as it will be stored, is kept small, and so is the whole user item
/// (far below DynamoDB's 400 KB).
fn check_setting_sizes(patch: &ProfilePatch) -> Result<(), ApiError> {
    for (name, value) in patch.objects() {
        if value.to_string().len() > MAX_SETTING_BYTES {
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
fn profile_patch(body: &Fields) -> Result<ProfilePatch, ApiError> {
    // Read in PostHog's order: with several bad fields, the first one's error is the answer.
    let name = |attr| fields::text(body, attr, Text::blank_ok(150));
    let first_name = name("first_name")?;
    let last_name = name("last_name")?;
    let anonymize_data = fields::boolean(body, "anonymize_data")?;
    let allow_impersonation = fields::boolean(body, "allow_impersonation")?;
    let hide_mcp_hints = fields::boolean(body, "hide_mcp_hints")?;
    let allow_sidebar_suggestions = match body.get("allow_sidebar_suggestions") {
        Some(serde_json::Value::Null) => Some(None),
        _ => fields::boolean(body, "allow_sidebar_suggestions")?.map(Some),
    };
    let passkeys_enabled_for_2fa = fields::boolean(body, "passkeys_enabled_for_2fa")?;
    let choice = |attr, options| fields::choice(body, attr, options, Null::Allowed);
    let object = |attr, null| fields::object(body, attr, null);
    let patch = ProfilePatch {
        first_name,
        last_name,
        is_email_verified: None,
        anonymize_data,
        allow_impersonation,
        hide_mcp_hints,
        allow_sidebar_suggestions,
        passkeys_enabled_for_2fa,
        toolbar_mode: choice("toolbar_mode", TOOLBAR_MODES)?,
        theme_mode: choice("theme_mode", THEME_MODES)?,
        shortcut_position: choice("shortcut_position", SHORTCUT_POSITIONS)?,
        role_at_organization: choice("role_at_organization", ROLES)?,
        notification_settings: object("notification_settings", Null::Refused)?.flatten(),
        events_column_config: object("events_column_config", Null::Refused)?.flatten(),
        has_seen_product_intro_for: object("has_seen_product_intro_for", Null::Allowed)?,
        hedgehog_config: object("hedgehog_config", Null::Allowed)?,
    };
    check_setting_sizes(&patch)?;
    Ok(patch)
}
