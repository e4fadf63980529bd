//! The 2FA routes (API.md §4.3–4.9, §5 two_factor_verify, §6), with codes from pyotp.
use api_tests::*;
use serde_json::{json, Value};
use shared::clock::now_secs;
use shared::store::two_factor as tf_items;
use shared::throttle::FailureCharge;
use shared::throttle::{CodeCheck, FailureState};
use shared::two_factor::{self as tf, PendingSetup};
use std::time::Duration;

/// The status of a user without 2FA (`enabled: false`) or with TOTP (`enabled: true`).
fn status_with(enabled: bool) -> Value {
    let method = if enabled { json!("TOTP") } else { Value::Null };
    json!({"is_enabled": enabled, "backup_codes": [], "method": method, "has_passkeys": false, "has_totp": enabled, "passkeys_enabled_for_2fa": false})
}

/// The user's stored 2FA item of this kind, if any.
async fn stored(ctx: &shared::Context, uuid: UserId, kind: &str) -> Option<shared::store::Item> {
    let found = ctx
        .store
        .get_many(&[(
            ctx.store.tables.two_factor.as_str(),
            tf_items::key(uuid, kind),
        )])
        .await
        .unwrap();
    found.into_iter().next().flatten()
}

/// Sends `token` to `two_factor_verify` from 20 clients at once: their statuses.
async fn twenty_concurrent_verifies(api: &Api, key: &str, token: &str) -> Vec<u16> {
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (api, key, token) = (api.clone(), key.to_string(), token.to_string());
            tokio::spawn(async move { api.verify_2fa(&key, token).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses
}

/// Exactly one of the concurrent uses was accepted, and the others refused as 4xx.
#[track_caller]
fn assert_exactly_one_accepted(statuses: &[u16]) {
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [200, 400, 429].contains(s)),
        "{statuses:?}"
    );
}

both!(
    start_setup_returns_a_fresh_secret_and_a_usable_uri,
    |api, ctx| async move {
        let user = create_user(&ctx, &["user:write"]).await;
        for path in [
            "/api/users/@me/two_factor_start_setup/",
            "/api/users/@me/start_2fa_setup",
            "/api/users/@me/start_2fa_setup/",
        ] {
            let reply = api.get(path).bearer(&user.key).send().await;
            assert_eq!(reply.status, 200, "{path}: {}", reply.body);
            let body = reply.json();
            assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
            assert_eq!(body["success"], true);
            let secret = body["secret"].as_str().unwrap();
            assert_eq!(secret.len(), 32);
            assert!(secret
                .bytes()
                .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)));
            let uri = body["otpauth_uri"].as_str().unwrap();
            let account = user.user.email.replace('@', "%40");
            assert!(
                uri.starts_with(&format!("otpauth://totp/PostHog:{account}?")),
                "{uri}"
            );
            for part in [
                format!("secret={secret}"),
                "issuer=PostHog".into(),
                "algorithm=SHA1".into(),
                "digits=6".into(),
                "period=30".into(),
            ] {
                assert!(uri.contains(&part), "{uri} lacks {part}");
            }
        }
    }
);

both!(
    validate_confirms_with_a_pyotp_code_and_status_follows,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        assert_eq!(api.two_factor_status(&user.key).await, status_with(false));
        api.enable_2fa(&user.key).await;
        assert_eq!(api.two_factor_status(&user.key).await, status_with(true));
        let me = api.get(ME).bearer(&user.key).send().await.json();
        assert_eq!(me["is_2fa_enabled"], true);
        // The pending setup is gone: validating again has nothing to confirm.
        api.post("/api/users/@me/validate_2fa/")
            .send_json(&user.key, &json!({"token": "123456"}))
            .await
            .assert_setup_expired();
    }
);

both!(validate_errors, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    api.post(VALIDATE_2FA)
        .send_json(&user.key, &json!({}))
        .await
        .assert_required("token");
    api.validate_2fa(&user.key, "123456")
        .await
        .assert_setup_expired();
    let secret = api.new_2fa_secret(&user.key).await;
    let now = step_margin().await;
    let good = pyotp_code(&secret, now).await;
    let wrong = format!("{:06}", (good.parse::<u32>().unwrap() + 1) % 1_000_000);
    for token in [json!(wrong), json!("12345"), json!("abcdef"), json!(true)] {
        api.validate_2fa(&user.key, token)
            .await
            .assert_token_invalid();
    }
    // Whitespace is ignored and an integer is taken.
    let spaced = format!("{} {}", &good[..3], &good[3..]);
    api.validate_2fa(&user.key, spaced).await.assert_status(200);
    let _ = good.parse::<u64>().unwrap();
});

both!(validate_accepts_an_integer_token, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let secret = api.new_2fa_secret(&user.key).await;
    let mut code = pyotp_code(&secret, step_margin().await).await;
    while code.starts_with('0') {
        // A leading zero cannot travel as a JSON integer; use the next step's code instead.
        tokio::time::sleep(Duration::from_secs(30 - now_secs() % 30)).await;
        code = pyotp_code(&secret, step_margin().await).await;
    }
    api.validate_2fa(&user.key, code.parse::<u64>().unwrap())
        .await
        .assert_status(200);
});

both!(
    a_second_start_invalidates_the_first_secret,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let first = api.new_2fa_secret(&user.key).await;
        let second = api.new_2fa_secret(&user.key).await;
        assert_ne!(first, second);
        let now = step_margin().await;
        api.validate_2fa(&user.key, pyotp_code(&first, now).await)
            .await
            .assert_token_invalid();
        api.validate_2fa(&user.key, pyotp_code(&second, now).await)
            .await
            .assert_status(200);
    }
);

both!(
    one_step_old_is_accepted_two_steps_old_is_not,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let secret = api.new_2fa_secret(&user.key).await;
        let now = step_margin().await;
        for refused in [now - 60, now + 60] {
            api.validate_2fa(&user.key, pyotp_code(&secret, refused).await)
                .await
                .assert_token_invalid();
        }
        api.validate_2fa(&user.key, pyotp_code(&secret, now - 30).await)
            .await
            .assert_status(200);
    }
);

both!(
    an_expired_setup_is_refused_even_before_dynamodb_deletes_it,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let secret = api.new_2fa_secret(&user.key).await;
        // Age the pending item past its expiry, as it stands after 10 minutes.
        let item = stored(&ctx, user.uuid(), tf::PENDING).await.unwrap();
        let mut pending: PendingSetup = shared::store::from_item(item).unwrap();
        pending.expires_at = now_secs() - 1;
        ctx.store.put_pending_setup(&pending).await.unwrap();
        let code = pyotp_code(&secret, step_margin().await).await;
        api.validate_2fa(&user.key, code)
            .await
            .assert_setup_expired();
    }
);

both!(setup_routes_act_only_on_the_caller, |api, ctx| async move {
    let staff = create_staff(&ctx, &["*"]).await;
    let other = create_user(&ctx, &["*"]).await;
    for (method, route) in [
        ("GET", "two_factor_start_setup"),
        ("GET", "start_2fa_setup"),
        ("POST", "two_factor_validate"),
        ("POST", "validate_2fa"),
        ("POST", "two_factor_verify"),
    ] {
        let path = format!("/api/users/{}/{route}/", other.uuid());
        let token = json!({"token": "123456"});
        let reply = api.call(method, &path).send_json(&staff.key, &token).await;
        assert_eq!(reply.status, 403, "{path}: {}", reply.body);
        assert_eq!(reply.json()["code"], "permission_denied");
        let reply = api.call(method, &path).send_json(&other.key, &token).await;
        assert_ne!(
            reply.status, 403,
            "own uuid works for {path}: {}",
            reply.body
        );
    }
});

both!(
    backup_codes_need_2fa_and_replace_each_other,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        api.post(BACKUP_CODES)
            .bearer(&user.key)
            .send()
            .await
            .assert_2fa_not_enabled();
        api.enable_2fa(&user.key).await;
        let first = api.backup_codes(&user.key).await;
        assert_eq!(first.len(), 10);
        for code in &first {
            assert_eq!(code.len(), 8);
            assert!(
                code.bytes()
                    .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)),
                "{code}"
            );
        }
        assert_eq!(
            api.two_factor_status(&user.key).await["backup_codes"],
            json!(first)
        );
        let second = api.backup_codes(&user.key).await;
        assert!(first.iter().all(|c| !second.contains(c)));
        assert_eq!(
            api.two_factor_status(&user.key).await["backup_codes"],
            json!(second)
        );
        // A replaced code no longer signs in.
        api.verify_2fa(&user.key, first[0].as_str())
            .await
            .assert_token_invalid();
    }
);

both!(
    disable_removes_everything_and_is_idempotent,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        api.disable_2fa(&user.key).await.assert_success();
        api.enable_2fa(&user.key).await;
        api.backup_codes(&user.key).await;
        api.start_2fa_setup(&user.key).await; // a pending setup too
        api.verify_2fa(&user.key, "000000")
            .await
            .assert_token_invalid(); // and a failure
        api.disable_2fa(&user.key).await.assert_success();
        assert_eq!(
            failures_of(&ctx, user.uuid(), CodeCheck::SignIn)
                .await
                .count,
            1,
            "disabling 2FA does not reset the sign-in check's failures"
        );
        for kind in [tf::TOTP, tf::PENDING, tf::BACKUP_CODES] {
            assert!(
                stored(&ctx, user.uuid(), kind).await.is_none(),
                "{kind} survived disable"
            );
        }
        assert_eq!(api.two_factor_status(&user.key).await["is_enabled"], false);
        let notice = |mail: &[(Vec<String>, String, String)], wanted: &str| {
            mail.iter()
                .any(|(to, subject, _)| to.contains(&user.user.email) && subject == wanted)
        };
        let mail = sent_mail_when(|mail| {
            notice(mail, "Two-factor authentication disabled")
                && notice(mail, "Two-factor authentication enabled")
        })
        .await;
        assert!(
            notice(&mail, "Two-factor authentication disabled"),
            "{mail:?}"
        );
        assert!(
            notice(&mail, "Two-factor authentication enabled"),
            "{mail:?}"
        );
    }
);

both!(
    verify_takes_a_totp_code_once_per_step,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let secret = api.enable_2fa(&user.key).await;
        let now = step_margin().await;
        // The step used to confirm cannot sign in again.
        api.verify_2fa(&user.key, pyotp_code(&secret, now).await)
            .await
            .assert_token_invalid();
        let next = pyotp_code(&secret, now + 30).await;
        let reply = api.verify_2fa(&user.key, next.as_str()).await;
        assert_eq!(
            (reply.status, reply.json()),
            (200, json!({"success": true, "method": "totp"})),
            "{}",
            reply.body
        );
        api.verify_2fa(&user.key, next).await.assert_token_invalid();
        api.post(VERIFY_2FA)
            .send_json(&user.key, &json!({}))
            .await
            .assert_required("token");
    }
);

both!(verify_without_2fa_is_refused, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    api.verify_2fa(&user.key, "123456")
        .await
        .assert_2fa_not_enabled();
});

both!(
    a_backup_code_is_consumed_once_and_notifies,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        api.enable_2fa(&user.key).await;
        let codes = api.backup_codes(&user.key).await;
        let typed = codes[2].to_uppercase();
        let reply = api.verify_2fa(&user.key, typed).await;
        assert_eq!(
            (reply.status, reply.json()),
            (200, json!({"success": true, "method": "backup_code"})),
            "{}",
            reply.body
        );
        api.verify_2fa(&user.key, codes[2].as_str())
            .await
            .assert_token_invalid();
        let left = api.two_factor_status(&user.key).await["backup_codes"].clone();
        assert_eq!(left.as_array().unwrap().len(), 9);
        assert!(!left.as_array().unwrap().contains(&json!(codes[2])));
        let used = |mail: &[(Vec<String>, String, String)]| {
            mail.iter().any(|(to, subject, _)| {
                to.contains(&user.user.email) && subject == "A backup code was used"
            })
        };
        let mail = sent_mail_when(used).await;
        assert!(used(&mail), "{mail:?}");
        assert!(
            mail.iter()
                .filter(|(to, _, _)| to.contains(&user.user.email))
                .all(|(_, _, body)| !body.contains(&codes[2])),
            "no notice shows the code: {mail:?}"
        );
    }
);

both!(
    twenty_concurrent_verifies_of_one_code_accept_exactly_one,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let secret = api.enable_2fa(&user.key).await;
        let code = pyotp_code(&secret, step_margin().await + 30).await;
        assert_exactly_one_accepted(&twenty_concurrent_verifies(&api, &user.key, &code).await);
    }
);

both!(
    twenty_concurrent_uses_of_one_backup_code_accept_exactly_one,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        api.enable_2fa(&user.key).await;
        let code = api.backup_codes(&user.key).await.remove(0);
        assert_exactly_one_accepted(&twenty_concurrent_verifies(&api, &user.key, &code).await);
        assert_eq!(
            api.two_factor_status(&user.key).await["backup_codes"]
                .as_array()
                .unwrap()
                .len(),
            9
        );
    }
);

both!(
    five_failures_lock_checks_with_retry_after_and_a_locked_check_tests_nothing,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let secret = api.enable_2fa(&user.key).await;
        for _ in 0..5 {
            api.verify_2fa(&user.key, "000000")
                .await
                .assert_token_invalid();
        }
        let now = step_margin().await;
        // Even the right code is refused while locked.
        api.verify_2fa(&user.key, pyotp_code(&secret, now + 30).await)
            .await
            .assert_throttled(25..=30);
        // The setup check has a limit of its own, which sign-in failures do not touch.
        api.validate_2fa(&user.key, "000000")
            .await
            .assert_status(400);
        assert_eq!(
            failures_of(&ctx, user.uuid(), CodeCheck::TotpSetup)
                .await
                .count,
            0,
            "no setup was pending, so nothing was compared or charged"
        );
    }
);

both!(
    the_lock_doubles_after_each_further_failure_and_success_resets,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let secret = api.enable_2fa(&user.key).await;
        // Five failures whose 30-second lock has just run out.
        let seen = FailureState::default();
        let expired = FailureState {
            count: 5,
            locked_until_ms: now_secs() * 1000 - 1,
        };
        assert!(ctx
            .store
            .charge_failure(
                user.uuid(),
                CodeCheck::SignIn,
                &expired,
                *FailureCharge::of(seen)
            )
            .await
            .unwrap());
        api.verify_2fa(&user.key, "000000")
            .await
            .assert_token_invalid();
        // The sixth failure locks for 60 s.
        api.verify_2fa(&user.key, "000000")
            .await
            .assert_throttled(55..=60);
        // Unlock by hand, then a success resets the count to zero.
        let locked = failures_of(&ctx, user.uuid(), CodeCheck::SignIn).await;
        assert_eq!(locked.count, 6);
        let unlocked = FailureState {
            count: 3,
            locked_until_ms: 0,
        };
        assert!(
            ctx.store
                .charge_failure(
                    user.uuid(),
                    CodeCheck::SignIn,
                    &unlocked,
                    *FailureCharge::of(locked)
                )
                .await
                .unwrap(),
            "state as expected"
        );
        let now = step_margin().await;
        api.verify_2fa(&user.key, pyotp_code(&secret, now + 30).await)
            .await
            .assert_status(200);
        assert_eq!(
            failures_of(&ctx, user.uuid(), CodeCheck::SignIn).await,
            FailureState::default(),
            "success resets the failure state"
        );
    }
);

both!(
    status_for_other_users_follows_the_staff_rules,
    |api, ctx| async move {
        let staff = create_staff(&ctx, &["user:read"]).await;
        let plain = create_user(&ctx, &["*"]).await;
        api.enable_2fa(&plain.key).await;
        let codes = api.backup_codes(&plain.key).await;
        let status_of = |uuid: &str| format!("/api/users/{uuid}/two_factor_status/");
        let reply = api
            .get(&status_of(&plain.uuid().to_string()))
            .bearer(&staff.key)
            .send()
            .await;
        assert_eq!(reply.ok_json()["backup_codes"], json!(codes));
        let reply = api
            .get(&format!(
                "/api/users/{}/two_factor_status",
                uuid::Uuid::new_v4()
            ))
            .bearer(&staff.key)
            .send()
            .await;
        reply.assert_not_found();
        let reply = api
            .get(&status_of(&staff.uuid().to_string()))
            .bearer(&plain.key)
            .send()
            .await;
        reply.assert_forbidden(NON_STAFF_DETAIL);
        // user:read is enough for status, not for the write routes.
        api.disable_2fa(&staff.key)
            .await
            .assert_forbidden(MISSING_WRITE_SCOPE);
        api.get(START_2FA_SETUP)
            .bearer(&staff.key)
            .send()
            .await
            .assert_forbidden(MISSING_WRITE_SCOPE);
    }
);

/// Every attribute of every item of every table, as text, and every binary value.
async fn dump(ctx: &shared::Context) -> (String, Vec<Vec<u8>>) {
    let t = &ctx.store.tables;
    let mut text = String::new();
    let mut blobs = Vec::new();
    for table in [
        &t.users,
        &t.user_emails,
        &t.api_keys,
        &t.push_tokens,
        &t.two_factor,
        &t.email_changes,
    ] {
        let mut start = None;
        loop {
            let out = ctx
                .store
                .db
                .scan()
                .table_name(table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .unwrap();
            for item in out.items.unwrap_or_default() {
                for value in item.values() {
                    if let Ok(b) = value.as_b() {
                        blobs.push(b.as_ref().to_vec());
                    }
                }
                text.push_str(&format!("{item:?}\n"));
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
    }
    (text, blobs)
}

fn base32_decode(text: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits = 0u64;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        bits = (bits << 5) | alphabet.iter().position(|a| *a == c).unwrap() as u64;
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

both!(
    a_table_dump_reveals_no_secret_and_no_backup_code,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let secret = api.enable_2fa(&user.key).await;
        let pending = api.new_2fa_secret(&user.key).await;
        let codes = api.backup_codes(&user.key).await;
        let (text, blobs) = dump(&ctx).await;
        for s in [&secret, &pending] {
            let raw = base32_decode(s);
            assert_eq!(raw.len(), 20);
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            assert!(
                !text.contains(s.as_str()) && !text.contains(&s.to_lowercase()),
                "base32 secret in a table"
            );
            assert!(
                !text.contains(&hex) && !text.contains(&hex.to_uppercase()),
                "hex secret in a table"
            );
            assert!(
                blobs
                    .iter()
                    .all(|b| !b.windows(20).any(|w| w == raw.as_slice())),
                "raw secret in a binary attribute"
            );
        }
        for code in &codes {
            assert!(!text.contains(code.as_str()), "backup code in a table");
            assert!(blobs
                .iter()
                .all(|b| !b.windows(8).any(|w| w == code.as_bytes())));
        }
        // What is there decrypts only with the key: the device's secret is bound to its user.
        let item = stored(&ctx, user.uuid(), tf::TOTP).await.unwrap();
        let device: tf::TotpDevice = shared::store::from_item(item).unwrap();
        let keyring = ctx.keyring().await.unwrap();
        assert_eq!(
            keyring
                .decrypt(user.uuid(), tf::TOTP, &device.secret_enc)
                .unwrap(),
            base32_decode(&secret)
        );
        assert!(keyring
            .decrypt(
                UserId::parse(&uuid::Uuid::new_v4().to_string()).expect("a uuid"),
                tf::TOTP,
                &device.secret_enc
            )
            .is_err());
    }
);

/// SES refusing a notification (here: an unverified sender) is logged and does not fail
/// the request that caused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_notification_never_fails_the_request() {
    let mut config = shared::config::Config::from_env().expect("function environment");
    config.email_sender = Some("unverified-sender@nowhere.example".into());
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let ctx = std::sync::Arc::new(shared::Context::new(config, &sdk));
    assert!(
        !ctx.mailer
            .send("someone@example.com", "probe", "probe")
            .await,
        "moto refuses an unverified sender"
    );
    let api = Api::InProcess(ctx.clone());
    let user = create_user(&ctx, &["*"]).await;
    api.enable_2fa(&user.key).await;
    let code = api.backup_codes(&user.key).await.remove(0);
    api.verify_2fa(&user.key, code).await.assert_status(200);
    api.disable_2fa(&user.key).await.assert_status(200);
    assert!(
        mail_to(&user.user.email).await.is_empty(),
        "nothing was delivered"
    );
}

/// A notice waits in the outbox until the response is out, and then goes: the caller does not
/// wait for SES (shared::run sends it after posting the response).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_is_sent_after_the_response() {
    let ctx = std::sync::Arc::new(context().await);
    let api = Api::InProcess(ctx.clone());
    let user = create_user(&ctx, &["*"]).await;
    api.enable_2fa(&user.key).await;
    let disabled = |mail: &[(String, String)]| {
        mail.iter()
            .filter(|(subject, _)| subject == "Two-factor authentication disabled")
            .count()
    };
    let request = lambda_request(
        "POST",
        DISABLE_2FA,
        &[("authorization".into(), format!("Bearer {}", user.key))],
        vec![],
    );
    let response = two_factor_disable::handle(&ctx, request)
        .await
        .expect("a response");
    assert_eq!(response.status(), 200);
    assert_eq!(ctx.mailer.queued(), 1, "the notice waits for the response");
    assert_eq!(disabled(&mail_to(&user.user.email).await), 0);
    assert_eq!(ctx.mailer.send_queued().await, 1, "SES takes it");
    assert_eq!(ctx.mailer.queued(), 0);
    assert_eq!(disabled(&mail_to(&user.user.email).await), 1);
}
