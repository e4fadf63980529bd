//! `POST /api/users/{uuid}/two_factor_verify/`: the sign-in check, with a TOTP code, a
//! backup code, or a passkey's assertion (`{credential_id, response}`, after
//! `two_factor_passkey_begin/`).
use serde_json::{json, Value};
use shared::clock::now_millis;
use shared::lambda_http::{Body, Request, Response};
use shared::security_events::{EventKind, SecurityEvent};
use shared::throttle::FailureCharge;
use shared::throttle::{self, Attempt, CodeCheck};
use shared::two_factor::StepUse;
use shared::two_factor::{token_invalid, Notice};
use shared::{fields, http, totp, ApiError, Context};

shared::endpoint!(verify);

/// What the caller typed.
#[derive(Clone, Copy)]
enum Token<'a> {
    Totp(&'a str),
    Backup(&'a str),
    Malformed,
}

enum Method {
    Totp,
    BackupCode {
        email: Option<String>,
        remaining: usize,
    },
}

/// Accepts a TOTP code at most once per time step (a condition on the stored step) or an
/// unused backup code exactly once (a compare-and-set of the code list), under the
/// failure limit.
async fn verify(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let body = http::parse_fields(req)?;
    if body.contains_key("credential_id") || body.contains_key("response") {
        let lock_event = ctx.event_by(&call, call.target.uuid, EventKind::LockStarted);
        return verify_passkey(ctx, call.target.uuid, &body, lock_event).await;
    }
    let raw = fields::required_value(&body, "token")?;
    let code = fields::six_digit_code(raw);
    let backup = match raw {
        Value::String(text) => shared::two_factor::normalize_backup_code(text),
        _ => None,
    };
    let token = match (&code, &backup) {
        (Some(code), _) => Token::Totp(code),
        (None, Some(code)) => Token::Backup(code),
        _ => Token::Malformed,
    };
    let uuid = call.target.uuid;
    let store = &ctx.store;
    let lock_event = ctx.event_by(&call, uuid, EventKind::LockStarted);
    let used_event = &ctx.event_by(&call, uuid, EventKind::BackupCodeUsed);
    let method = throttle::limited(
        store,
        uuid,
        CodeCheck::SignIn,
        lock_event,
        move || async move {
            let state = store.two_factor_state_for(uuid, CodeCheck::SignIn).await?;
            let failures = state.failures;
            let now_ms = now_millis();
            throttle::check(&failures, now_ms)?;
            let now = now_ms / 1000;
            let device = state.device.ok_or_else(shared::two_factor::not_enabled)?;
            let (codes, user) = (state.backup_codes, state.user);
            let failed = || {
                Ok(Attempt::Failed(
                    FailureCharge::of(failures),
                    token_invalid(),
                ))
            };
            match token {
                Token::Totp(code) => {
                    let keyring = ctx.keyring_opening(&[&device.secret_enc]).await?;
                    let secret = shared::two_factor::device_secret(&keyring, &device)?;
                    let Some(step) = secret
                        .check(code, now)
                        .filter(|step| *step > device.last_step)
                    else {
                        return failed();
                    };
                    let drift = step as i64 - totp::step_at(now) as i64;
                    Ok(
                        match store.use_totp_step(uuid, step, drift, &failures).await? {
                            StepUse::Done => Attempt::Done(Method::Totp),
                            StepUse::Replayed => return failed(),
                            StepUse::Conflict => Attempt::Conflict,
                        },
                    )
                }
                Token::Backup(code) => {
                    let Some(codes) = codes else {
                        return failed();
                    };
                    let keyring = ctx.keyring_opening(&[&codes.codes_enc]).await?;
                    let mut unused = shared::two_factor::open_backup_codes(&keyring, &codes)?;
                    let Some(index) = shared::two_factor::find_backup_code(&unused, code) else {
                        return failed();
                    };
                    unused.remove(index);
                    let next = shared::two_factor::seal_backup_codes(&keyring, uuid, &unused)?;
                    Ok(
                        if store
                            .put_backup_codes(
                                &next,
                                Some(&codes.version),
                                Some(&failures),
                                std::slice::from_ref(used_event),
                            )
                            .await?
                        {
                            Attempt::Done(Method::BackupCode {
                                email: user.map(|u| u.email),
                                remaining: unused.len(),
                            })
                        } else {
                            Attempt::Conflict
                        },
                    )
                }
                Token::Malformed => failed(),
            }
        },
    )
    .await?;
    match method {
        Method::Totp => http::ok(&json!({"success": true, "method": "totp"})),
        Method::BackupCode { email, remaining } => {
            if let Some(email) = email {
                shared::two_factor::notify(
                    &ctx.mailer,
                    &email,
                    Notice::BackupCodeUsed { remaining },
                );
            }
            http::ok(&json!({"success": true, "method": "backup_code"}))
        }
    }
}

/// The sign-in check by passkey, under the same failure limit as codes. One round of reads
/// side by side (the 2FA state with the failure state, the passkeys, the ceremony), the lock
/// checked before the answer is looked at, then one transaction that records what the answer
/// came to and uses its ceremony up: of any number of racing answers to one challenge, one is
/// recorded (counted if refused), and every other one finds the challenge gone.
async fn verify_passkey(
    ctx: &Context,
    uuid: shared::users::UserId,
    body: &fields::Fields,
    lock_event: SecurityEvent,
) -> Result<Response<Body>, ApiError> {
    use shared::passkeys::{self, CeremonyPurpose, ClientData};
    use shared::store::passkeys::PasskeyUse;
    let webauthn = ctx.webauthn()?;
    let credential_id = fields::required_text(
        body,
        "credential_id",
        fields::Text::not_blank(passkeys::MAX_CREDENTIAL_ID_CHARS),
    )?;
    let response = fields::required_value(body, "response")?;
    let assertion: passkeys::Assertion = passkeys::credential_from(
        &json!({
            "id": credential_id,
            "rawId": credential_id,
            "type": "public-key",
            "response": response,
        }),
        Some("response"),
    )?;
    let answered = ClientData::of(&assertion.response.client_data_json)
        .ok_or_else(passkeys::no_sign_in_challenge)?;
    let store = &ctx.store;
    let (assertion, credential_id, challenge) = (
        &assertion,
        credential_id.as_str(),
        answered.challenge.as_str(),
    );
    throttle::limited(
        store,
        uuid,
        CodeCheck::SignIn,
        lock_event,
        move || async move {
            let (state, all, ceremony) = tokio::join!(
                store.two_factor_state_for(uuid, CodeCheck::SignIn),
                store.passkeys_of(uuid),
                store.ceremony(uuid, CeremonyPurpose::SignIn),
            );
            let state = state?;
            let failures = state.failures;
            throttle::check(&failures, now_millis())?;
            if !state.user.as_ref().is_some_and(|u| u.passkey_2fa()) {
                return Err(passkeys::passkey_2fa_off());
            }
            // An answer to an older, another or no ceremony takes nothing and is not counted.
            let ceremony = ceremony?
                .filter(|c| c.challenge == challenge)
                .ok_or_else(passkeys::no_sign_in_challenge)?;
            let used_up = store.ceremony_use(&ceremony)?;
            let failed = |err| {
                Ok(Attempt::Failed(
                    FailureCharge::with(failures, used_up.clone()),
                    err,
                ))
            };
            let Some(passkey) = all?
                .into_iter()
                .find(|p| p.verified && p.credential_id == credential_id)
            else {
                return failed(passkeys::invalid_passkey());
            };
            let result = match passkeys::complete_assertion(
                webauthn,
                &ceremony,
                assertion,
                passkeys::sign_in_failed,
            ) {
                Ok(result) => result,
                Err(err) => return failed(err),
            };
            let used = passkey.after_use(&result)?;
            let now = shared::clock::iso_now();
            Ok(
                match store
                    .use_passkey(&used, &now, &failures, used_up.clone())
                    .await?
                {
                    PasskeyUse::Done => Attempt::Done(()),
                    PasskeyUse::Refused => return failed(passkeys::sign_in_failed()),
                    PasskeyUse::CeremonyGone => return Err(passkeys::no_sign_in_challenge()),
                    PasskeyUse::Conflict => Attempt::Conflict,
                },
            )
        },
    )
    .await?;
    http::ok(&json!({"success": true, "method": "passkey"}))
}
