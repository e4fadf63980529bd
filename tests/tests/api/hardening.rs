//! The security properties a reviewer of an identity service checks: limits that no other
//! route can lift, staff kept to API.md §2, nothing cacheable, no input that reaches a 500,
//! no live code in a table dump, key rotation while warm, deactivation that nothing outlives,
//! the right error under contention, and refusals that cost no DynamoDB call.
use api_tests::*;
use serde_json::{json, Value};
use shared::clock::now_secs;
use shared::throttle::FailureCharge;
use shared::throttle::{CodeCheck, FailureState};

const VERIFY_EMAIL: &str = "/api/users/verify_email/";
const WRONG_EMAIL_CODE: &str = "This verification code is invalid or has expired.";

async fn request_change(api: &Api, key: &str, new_email: &str) -> Reply {
    api.patch("/api/users/@me/")
        .bearer(key)
        .json(&json!({"email": new_email}))
        .send()
        .await
}

async fn verify_email(api: &Api, key: &str, uuid: &str, code: &str) -> Reply {
    api.post(VERIFY_EMAIL)
        .bearer(key)
        .json(&json!({"uuid": uuid, "code": code}))
        .send()
        .await
}

#[track_caller]
fn assert_wrong_email_code(reply: &Reply) {
    reply.assert_error(
        400,
        "validation_error",
        "invalid_input",
        WRONG_EMAIL_CODE,
        Some("code"),
    );
}

/// A new user with an open email-change request: the user, the new address and its code.
async fn pending_change(api: &Api, ctx: &shared::Context, tag: &str) -> (TestUser, String, String) {
    let user = create_user(ctx, false, &["*"]).await;
    let new_email = unique_email(tag);
    request_change(api, &user.key, &new_email)
        .await
        .user_object();
    let code = code_mailed_to(&new_email).await;
    (user, new_email, code)
}

/// A 429 whose `Retry-After` (and detail) lies in `range`; returns it.
#[track_caller]
fn assert_throttled(reply: &Reply, range: std::ops::RangeInclusive<u64>) -> u64 {
    assert_eq!(reply.status, 429, "{}", reply.body);
    let retry: u64 = reply
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("a number of seconds");
    assert!(
        range.contains(&retry),
        "Retry-After {retry} not in {range:?}"
    );
    reply.assert_error(
        429,
        "throttled_error",
        "throttled",
        &format!("Request was throttled. Expected available in {retry} seconds."),
        None,
    );
    retry
}

/// Lifts a lock the way time would (the count stays): a compare-and-set on the state read.
async fn let_lock_expire(ctx: &shared::Context, uuid: &str, check: CodeCheck) {
    let seen = failures_of(ctx, uuid, check).await;
    let expired = FailureState {
        count: seen.count,
        locked_until_ms: 0,
    };
    assert!(ctx
        .store
        .charge_failure(uuid, check, &expired, *FailureCharge::of(seen))
        .await
        .expect("charge"));
}

/// Starts and confirms a TOTP setup; returns the secret.
async fn enable_2fa(api: &Api, key: &str) -> String {
    let reply = api
        .get("/api/users/@me/two_factor_start_setup/")
        .bearer(key)
        .send()
        .await;
    let secret = reply.ok_json()["secret"].as_str().unwrap().to_string();
    let code = pyotp_code(&secret, step_margin().await).await;
    api.post("/api/users/@me/two_factor_validate/")
        .bearer(key)
        .json(&json!({"token": code}))
        .send()
        .await
        .assert_status(200);
    secret
}

async fn two_factor_verify(api: &Api, key: &str, token: &str) -> Reply {
    api.post("/api/users/@me/two_factor_verify/")
        .bearer(key)
        .json(&json!({"token": token}))
        .send()
        .await
}

async fn disable_2fa(api: &Api, key: &str) {
    api.post("/api/users/@me/two_factor_disable/")
        .bearer(key)
        .send()
        .await
        .assert_status(200);
}

// ---------------------------------------------------------------------------------------------
// 1. Limits that nobody but their own success can reset
// ---------------------------------------------------------------------------------------------

both!(
    disabling_2fa_does_not_lift_the_email_code_lock,
    |api, ctx| async move {
        let (user, _, code) = pending_change(&api, &ctx, "locked").await;
        for _ in 0..5 {
            assert_wrong_email_code(
                &verify_email(&api, &user.key, user.uuid(), &other_code(&code)).await,
            );
        }
        // The old bypass: disable (with 2FA off), then guess on.
        disable_2fa(&api, &user.key).await;
        assert_throttled(
            &verify_email(&api, &user.key, user.uuid(), &code).await,
            29..=30,
        );
        // Nor does a success of another kind of check.
        enable_2fa(&api, &user.key).await;
        assert_throttled(
            &verify_email(&api, &user.key, user.uuid(), &code).await,
            1..=30,
        );
        assert_eq!(
            failures_of(&ctx, user.uuid(), CodeCheck::EmailChange)
                .await
                .count,
            5
        );
        assert_eq!(api.me(&user.key).await["email"], user.user.email.as_str());
    }
);

both!(
    each_kind_of_code_has_its_own_limit_and_only_its_success_resets_it,
    |api, ctx| async move {
        let user = create_user(&ctx, false, &["*"]).await;
        let secret = enable_2fa(&api, &user.key).await;
        for _ in 0..5 {
            assert_eq!(
                two_factor_verify(&api, &user.key, "000000").await.status,
                400
            );
        }
        assert_throttled(&two_factor_verify(&api, &user.key, "000000").await, 25..=30);
        // Sign-in locked; setup and email checks are not.
        assert_eq!(
            failures_of(&ctx, user.uuid(), CodeCheck::TotpSetup).await,
            FailureState::default()
        );
        assert_eq!(
            failures_of(&ctx, user.uuid(), CodeCheck::EmailChange).await,
            FailureState::default()
        );
        assert_wrong_email_code(&verify_email(&api, &user.key, user.uuid(), "123456").await);
        // Disabling 2FA and setting it up again (a setup success) leaves the sign-in lock.
        disable_2fa(&api, &user.key).await;
        let secret2 = enable_2fa(&api, &user.key).await;
        assert_ne!(secret, secret2);
        let right = pyotp_code(&secret2, step_margin().await).await;
        assert_throttled(&two_factor_verify(&api, &user.key, &right).await, 1..=30);
        assert_eq!(
            failures_of(&ctx, user.uuid(), CodeCheck::SignIn)
                .await
                .count,
            5
        );
        // Only a sign-in success resets the sign-in state.
        let_lock_expire(&ctx, user.uuid(), CodeCheck::SignIn).await;
        let right = pyotp_code(&secret2, step_margin().await + 30).await;
        two_factor_verify(&api, &user.key, &right)
            .await
            .assert_status(200);
        assert_eq!(
            failures_of(&ctx, user.uuid(), CodeCheck::SignIn).await,
            FailureState::default()
        );
        assert_eq!(
            failures_of(&ctx, user.uuid(), CodeCheck::EmailChange)
                .await
                .count,
            1
        );
    }
);

both!(
    a_backup_code_does_not_reset_the_sign_in_limit,
    |api, ctx| async move {
        // Anyone with the account's key can mint backup codes, so using one must not lift the
        // lock on guessing the TOTP code.
        let user = create_user(&ctx, false, &["*"]).await;
        enable_2fa(&api, &user.key).await;
        let codes = api
            .post("/api/users/@me/two_factor_backup_codes/")
            .bearer(&user.key)
            .send()
            .await
            .ok_json()["backup_codes"]
            .clone();
        for _ in 0..4 {
            assert_eq!(
                two_factor_verify(&api, &user.key, "000000").await.status,
                400
            );
        }
        two_factor_verify(&api, &user.key, codes[0].as_str().unwrap())
            .await
            .assert_status(200);
        assert_eq!(
            failures_of(&ctx, user.uuid(), CodeCheck::SignIn)
                .await
                .count,
            4
        );
        assert_eq!(
            two_factor_verify(&api, &user.key, "000000").await.status,
            400
        );
        assert_throttled(&two_factor_verify(&api, &user.key, "000000").await, 25..=30);
    }
);

both!(
    a_request_from_before_keyed_hashes_is_a_wrong_code_not_a_500,
    |api, ctx| async move {
        use aws_sdk_dynamodb::types::AttributeValue;
        use sha2::{Digest, Sha256};
        let user = create_user(&ctx, false, &["*"]).await;
        let (request_id, code) = (uuid::Uuid::new_v4().to_string(), "123456");
        let old_hash: String = Sha256::digest(format!("{request_id}:{code}").as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ctx.store
            .db
            .put_item()
            .table_name(&ctx.store.tables.email_changes)
            .item("user_uuid", AttributeValue::S(user.uuid().to_string()))
            .item("new_email", AttributeValue::S(unique_email("legacy")))
            .item("code_hash", AttributeValue::S(old_hash))
            .item("request_id", AttributeValue::S(request_id))
            .item("requested_at", AttributeValue::S(shared::clock::iso_now()))
            .item(
                "expires_at",
                AttributeValue::N((now_secs() + 3600).to_string()),
            )
            .send()
            .await
            .expect("an old-style request");
        assert_wrong_email_code(&verify_email(&api, &user.key, user.uuid(), code).await);
        assert_eq!(api.me(&user.key).await["email"], user.user.email.as_str());
    }
);

both!(
    an_account_already_over_the_size_bound_can_still_be_changed,
    |api, ctx| async move {
        let user = create_user(&ctx, false, &["*"]).await;
        // A record larger than the bound (but within DynamoDB's), as one written before the
        // bound or grown by other routes would be.
        let big = shared::users::ProfilePatch {
            hedgehog_config: Some(Some(json!({"blob": "h".repeat(300 * 1024)}))),
            ..Default::default()
        };
        ctx.store
            .update_profile(
                user.uuid(),
                &big,
                shared::store::users::EmailUpdate::Unchanged,
            )
            .await
            .expect("a large record");
        let updated = api
            .patch("/api/users/@me/")
            .bearer(&user.key)
            .json(&json!({"first_name": "Big"}))
            .send()
            .await
            .user_object();
        assert_eq!(updated["first_name"], "Big");
        let shrunk = api
            .patch("/api/users/@me/")
            .bearer(&user.key)
            .json(&json!({"hedgehog_config": null}))
            .send()
            .await
            .user_object();
        assert_eq!(shrunk["hedgehog_config"], Value::Null);
    }
);

both!(
    the_lock_is_checked_before_any_comparison_and_retry_after_is_exact,
    |api, ctx| async move {
        let (user, _, code) = pending_change(&api, &ctx, "exact").await;
        for _ in 0..4 {
            assert_wrong_email_code(
                &verify_email(&api, &user.key, user.uuid(), &other_code(&code)).await,
            );
        }
        let before = shared::clock::now_millis();
        // The fifth wrong code voids the request (below) and starts the 30 s lock.
        assert_wrong_email_code(
            &verify_email(&api, &user.key, user.uuid(), &other_code(&code)).await,
        );
        let state = failures_of(&ctx, user.uuid(), CodeCheck::EmailChange).await;
        assert!(
            (before + 30_000..=shared::clock::now_millis() + 30_000)
                .contains(&state.locked_until_ms),
            "the lock runs 30 s from the fifth failure"
        );
        let reply = verify_email(&api, &user.key, user.uuid(), &code).await;
        let retry = assert_throttled(&reply, 29..=30);
        let remaining_ms = state.locked_until_ms - shared::clock::now_millis();
        assert!(
            retry * 1000 >= remaining_ms && (retry - 1) * 1000 < remaining_ms + 1000,
            "Retry-After {retry} s for {remaining_ms} ms left"
        );
        assert_eq!(
            failures_of(&ctx, user.uuid(), CodeCheck::EmailChange).await,
            state,
            "a refused check is not counted and tests nothing"
        );
    }
);

both!(
    an_email_change_request_is_void_after_five_wrong_codes,
    |api, ctx| async move {
        let (user, new_email, code) = pending_change(&api, &ctx, "void").await;
        for i in 0..5 {
            assert_wrong_email_code(
                &verify_email(&api, &user.key, user.uuid(), &other_code(&code)).await,
            );
            let pending = api.me(&user.key).await["pending_email"].clone();
            if i < 4 {
                assert_eq!(
                    pending,
                    new_email.as_str(),
                    "still pending after {} wrong",
                    i + 1
                );
            } else {
                assert_eq!(pending, Value::Null, "void after the fifth wrong code");
            }
        }
        // Even once the lock is over, the right code of the void request does nothing.
        let_lock_expire(&ctx, user.uuid(), CodeCheck::EmailChange).await;
        assert_wrong_email_code(&verify_email(&api, &user.key, user.uuid(), &code).await);
        assert_eq!(api.me(&user.key).await["email"], user.user.email.as_str());
        // A new request gets a new code, which works (after its own lock runs out).
        let_lock_expire(&ctx, user.uuid(), CodeCheck::EmailChange).await;
        request_change(&api, &user.key, &new_email)
            .await
            .user_object();
        let mail = mail_to(&new_email).await;
        assert_eq!(mail.len(), 2);
        let fresh = six_digit_runs(&mail[1].1).remove(0);
        verify_email(&api, &user.key, user.uuid(), &fresh)
            .await
            .assert_status(200);
        assert_eq!(api.me(&user.key).await["email"], new_email.as_str());
    }
);

both!(
    racing_wrong_codes_are_each_counted_against_the_request,
    |api, ctx| async move {
        let (user, _, code) = pending_change(&api, &ctx, "race").await;
        let mut tasks = Vec::new();
        for i in 0..12u32 {
            let (api, key, uuid) = (api.clone(), user.key.clone(), user.uuid().to_string());
            let guess = format!("{:06}", (code.parse::<u32>().unwrap() + 1 + i) % 1_000_000);
            tasks.push(tokio::spawn(async move {
                verify_email(&api, &key, &uuid, &guess).await
            }));
        }
        let mut wrong = 0;
        for task in tasks {
            let reply = task.await.unwrap();
            match reply.status {
                400 => wrong += 1,
                429 => {}
                other => panic!("unexpected {other}: {}", reply.body),
            }
        }
        assert_eq!(wrong, 5, "exactly five guesses were tested");
        assert_eq!(api.me(&user.key).await["pending_email"], Value::Null);
    }
);

both!(
    at_most_five_email_change_mails_an_hour,
    |api, ctx| async move {
        let user = create_user(&ctx, false, &["*"]).await;
        let addresses: Vec<String> = (0..6).map(|i| unique_email(&format!("quota{i}"))).collect();
        for address in &addresses[..5] {
            request_change(&api, &user.key, address).await.user_object();
        }
        // Cancelling does not give the mails back.
        api.patch("/api/users/cancel_email_change_request/")
            .bearer(&user.key)
            .send()
            .await
            .assert_status(200);
        let reply = request_change(&api, &user.key, &addresses[5]).await;
        assert_throttled(&reply, 3590..=3600);
        assert!(
            mail_to(&addresses[5]).await.is_empty(),
            "no mail past the limit"
        );
        assert_eq!(api.me(&user.key).await["pending_email"], Value::Null);
        for address in &addresses[..5] {
            assert_eq!(mail_to(address).await.len(), 1, "{address}");
        }
        // Profile changes without an email still go through.
        api.patch("/api/users/@me/")
            .bearer(&user.key)
            .json(&json!({"first_name": "Quota"}))
            .send()
            .await
            .user_object();
    }
);

both!(
    racing_email_change_requests_send_at_most_five_mails,
    |api, ctx| async move {
        let user = create_user(&ctx, false, &["*"]).await;
        let addresses: Vec<String> = (0..10).map(|i| unique_email(&format!("rq{i}"))).collect();
        let mut tasks = Vec::new();
        for address in addresses.clone() {
            let (api, key) = (api.clone(), user.key.clone());
            tasks.push(tokio::spawn(async move {
                request_change(&api, &key, &address).await
            }));
        }
        let mut ok = 0;
        for task in tasks {
            let reply = task.await.unwrap();
            match reply.status {
                200 => ok += 1,
                429 => {}
                other => panic!("unexpected {other}: {}", reply.body),
            }
        }
        let mut mailed = 0;
        for address in &addresses {
            mailed += mail_to(address).await.len();
        }
        assert!((1..=5).contains(&ok), "{ok} requests went through");
        assert_eq!(
            mailed, ok,
            "one mail per accepted request, none for a refused one"
        );
    }
);

// ---------------------------------------------------------------------------------------------
// 2. Staff stay inside API.md §2
// ---------------------------------------------------------------------------------------------

both!(
    staff_cannot_rewrite_another_users_profile_or_email,
    |api, ctx| async move {
        let staff = create_user(&ctx, true, &["*"]).await;
        let plain = create_user(&ctx, false, &["*"]).await;
        for body in [
            json!({"first_name": "Mallory"}),
            json!({"email": unique_email("steal")}),
        ] {
            let reply = api
                .patch(&format!("/api/users/{}/", plain.uuid()))
                .bearer(&staff.key)
                .json(&body)
                .send()
                .await;
            reply.assert_forbidden(NON_STAFF_DETAIL);
        }
        let me = api.me(&plain.key).await;
        assert_eq!(me["first_name"], "Test");
        assert_eq!(me["pending_email"], Value::Null);
        // Staff may still read another user.
        api.get(&format!("/api/users/{}/", plain.uuid()))
            .bearer(&staff.key)
            .send()
            .await
            .user_object();
    }
);

both!(
    verify_email_completes_only_the_callers_own_change,
    |api, ctx| async move {
        let staff = create_user(&ctx, true, &["*"]).await;
        let plain = create_user(&ctx, false, &["*"]).await;
        let new_email = unique_email("own");
        request_change(&api, &plain.key, &new_email)
            .await
            .user_object();
        let code = code_mailed_to(&new_email).await;
        verify_email(&api, &staff.key, plain.uuid(), &code)
            .await
            .assert_forbidden(NON_STAFF_DETAIL);
        assert_eq!(
            api.me(&plain.key).await["pending_email"],
            new_email.as_str()
        );
        assert_eq!(
            failures_of(&ctx, plain.uuid(), CodeCheck::EmailChange)
                .await
                .count,
            0
        );
        verify_email(&api, &plain.key, plain.uuid(), &code)
            .await
            .assert_status(200);
    }
);

// ---------------------------------------------------------------------------------------------
// 3. Nothing cacheable
// ---------------------------------------------------------------------------------------------

both!(every_response_is_no_store, |api, ctx| async move {
    let user = create_user(&ctx, false, &["*"]).await;
    let mut seen = 0;
    for route in shared::routes::ROUTES {
        let path = route.path.replace("{uuid}", "@me") + "/";
        for key in [Some(user.key.as_str()), None] {
            let mut call = api.call(route.method, &path).json(&json!({}));
            if let Some(key) = key {
                call = call.bearer(key);
            }
            let reply = call.send().await;
            assert_eq!(
                reply.header("cache-control"),
                Some("no-store"),
                "{} {path} → {}",
                route.method,
                reply.status
            );
            seen += 1;
        }
    }
    for (method, path) in [("GET", "/nope/"), ("DELETE", "/api/users/@me/")] {
        let reply = api.call(method, path).send().await;
        assert!(reply.status == 404 || reply.status == 405);
        assert_eq!(
            reply.header("cache-control"),
            Some("no-store"),
            "{method} {path}"
        );
    }
    assert!(seen >= 2 * shared::routes::ROUTES.len());
    // The secret-bearing answers in particular.
    let reply = api
        .get("/api/users/@me/two_factor_start_setup/")
        .bearer(&user.key)
        .send()
        .await;
    assert!(reply.ok_json()["secret"].is_string());
    assert_eq!(reply.header("cache-control"), Some("no-store"));
});

// ---------------------------------------------------------------------------------------------
// 4. No input reaches a 500, however often it is sent
// ---------------------------------------------------------------------------------------------

both!(
    growing_settings_are_bounded_and_the_user_stays_usable,
    |api, ctx| async move {
        let user = create_user(&ctx, false, &["*"]).await;
        let mut refused = None;
        for round in 0..40 {
            // Each request is under the per-request limit, with keys no earlier one had.
            let settings: serde_json::Map<String, Value> = (0..30)
                .map(|i| (format!("k{round}_{i}"), json!("x".repeat(400))))
                .collect();
            let reply = api
                .patch("/api/users/@me/")
                .bearer(&user.key)
                .json(&json!({"notification_settings": settings}))
                .send()
                .await;
            assert_ne!(reply.status, 500, "round {round}: {}", reply.body);
            if reply.status == 400 {
                refused = Some((round, reply));
                break;
            }
            reply.user_object();
        }
        let (round, reply) = refused.expect("the merged settings hit their bound");
        assert!(round >= 1, "the first requests fit");
        reply.assert_error(
            400,
            "validation_error",
            "invalid_input",
            "Ensure this value is no larger than 16 KiB.",
            Some("notification_settings"),
        );
        // The user object still reads and writes normally, on every route that reads it.
        let me = api.me(&user.key).await;
        assert!(me["notification_settings"].to_string().len() <= 16 * 1024);
        let updated = api
            .patch("/api/users/@me/")
            .bearer(&user.key)
            .json(&json!({"first_name": "Still", "notification_settings": {"k0_0": "y"}}))
            .send()
            .await
            .user_object();
        assert_eq!(updated["first_name"], "Still");
        assert_eq!(updated["notification_settings"]["k0_0"], "y");
        api.post("/api/users/@me/scene_personalisation/")
            .bearer(&user.key)
            .json(&json!({"scene": "Home", "dashboard": 1}))
            .send()
            .await
            .user_object();
    }
);

/// Where the handlers' bounds could still be passed (a write through the store itself),
/// DynamoDB's refusal of an item over 400 KB is the same clear 400, not a 500.
#[tokio::test]
async fn dynamodbs_item_size_refusal_is_a_400() {
    let ctx = context().await;
    let user = create_user(&ctx, false, &["*"]).await;
    let changes = shared::users::ProfilePatch {
        hedgehog_config: Some(Some(json!({"blob": "z".repeat(420 * 1024)}))),
        ..Default::default()
    };
    let result = ctx
        .store
        .update_profile(
            user.uuid(),
            &changes,
            shared::store::users::EmailUpdate::Unchanged,
        )
        .await;
    assert_eq!(result, Err(shared::ApiError::item_too_large()));
    assert_eq!(shared::ApiError::item_too_large().status(), 400);
    let stored = ctx.store.user(user.uuid()).await.unwrap().unwrap();
    assert_eq!(stored.hedgehog_config, None, "nothing was written");
}

// ---------------------------------------------------------------------------------------------
// 5. A table dump reveals no live code
// ---------------------------------------------------------------------------------------------

/// Every item of every table of this stack, as JSON text.
async fn dump_every_table(ctx: &shared::Context) -> Vec<(String, String)> {
    let tables = ctx
        .store
        .db
        .list_tables()
        .send()
        .await
        .expect("list tables");
    let mut out = Vec::new();
    for table in tables.table_names() {
        let mut start = None;
        loop {
            let page = ctx
                .store
                .db
                .scan()
                .table_name(table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("scan");
            for item in page.items() {
                out.push((table.clone(), format!("{item:?}")));
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
    }
    out
}

#[tokio::test]
async fn a_table_dump_and_the_request_id_do_not_reveal_the_email_code() {
    let ctx = context().await;
    let api = Api::InProcess(std::sync::Arc::new(context().await));
    let user = create_user(&ctx, false, &["*"]).await;
    let new_email = unique_email("dump");
    request_change(&api, &user.key, &new_email)
        .await
        .user_object();
    let code = code_mailed_to(&new_email).await;
    let dump = dump_every_table(&ctx).await;
    let (_, record) = dump
        .iter()
        .find(|(table, item)| {
            table == &ctx.store.tables.email_changes && item.contains(user.uuid())
        })
        .expect("the request is in the dump");
    let record_of = |name: &str| -> String {
        let at = record.find(&format!("\"{name}\": S(\"")).expect(name) + name.len() + 7;
        record[at..].split('"').next().unwrap().to_string()
    };
    let (stored, request_id, key_id) = (
        record_of("code_hash"),
        record_of("request_id"),
        record_of("code_key_id"),
    );
    for (table, item) in &dump {
        assert!(
            !item.contains(&format!("\"{code}\"")),
            "{table} holds the code itself"
        );
    }
    // Every unkeyed hash an attacker would try, over all 10^6 codes, by an independent
    // implementation (Python's hashlib): none is the stored one. With the key from Secrets
    // Manager, Python's hmac recomputes it: the hash is keyed, and the key is all that was
    // missing.
    let secret = aws_sdk_secretsmanager::Client::new(&shared::context::sdk_config().await)
        .get_secret_value()
        .secret_id(env("ENCRYPTION_SECRET_ID"))
        .send()
        .await
        .expect("the secret")
        .secret_string()
        .unwrap()
        .to_string();
    let script = r#"
import hashlib, hmac, json, sys
stored, rid, uuid, secret, key_id, code = sys.argv[1:]
sha = lambda s: hashlib.sha256(s.encode()).hexdigest()
found = [c for c in (f"{n:06d}" for n in range(1_000_000))
         if stored in (sha(f"{rid}:{c}"), sha(rid + c), sha(f"{uuid}|{rid}|{c}"),
                       sha(f"email_change_code|{uuid}|{rid}|{c}"), sha(c))]
material = json.loads(secret)[key_id].encode()
mac_key = hmac.new(hashlib.sha256(material).digest(), b"posthog-users/mac-key/v1", hashlib.sha256).digest()
keyed = hmac.new(mac_key, f"email_change_code|{uuid}|{rid}|{code}".encode(), hashlib.sha256).hexdigest()
print(json.dumps({"recovered_without_key": found, "with_key": keyed}))
"#;
    let out = tokio::process::Command::new(env("TEST_PYTHON"))
        .args([
            "-c",
            script,
            &stored,
            &request_id,
            user.uuid(),
            &secret,
            &key_id,
            &code,
        ])
        .output()
        .await
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdict: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        verdict["recovered_without_key"],
        json!([]),
        "a guess matched"
    );
    assert_eq!(
        verdict["with_key"],
        stored.as_str(),
        "the key recomputes it"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Key rotation without errors
// ---------------------------------------------------------------------------------------------

/// `users-admin rotate-encryption-key` while functions are warm: records made before with the
/// old key and after with the new one all read, in process and through the warm functions of
/// the local API (which read the secret again once, when they meet the new key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_key_while_functions_are_warm_keeps_every_record_readable() {
    let warm = std::sync::Arc::new(context().await);
    let in_process = Api::InProcess(warm.clone());
    let http = Api::http();
    let old_user = create_user(&warm, false, &["*"]).await;
    let old_secret = enable_2fa(&in_process, &old_user.key).await;
    let status = |api: &Api, key: &str| {
        let (api, key) = (api.clone(), key.to_string());
        async move {
            api.get("/api/users/@me/two_factor_status/")
                .bearer(&key)
                .send()
                .await
                .ok_json()
        }
    };
    // Both the in-process context and the functions behind the local API are warm now.
    assert_eq!(status(&http, &old_user.key).await["is_enabled"], true);
    let codes = in_process
        .post("/api/users/@me/two_factor_backup_codes/")
        .bearer(&old_user.key)
        .send()
        .await
        .ok_json()["backup_codes"]
        .clone();
    let old_key_id = warm.keyring().await.unwrap().active_key_id().to_string();

    let out = tokio::process::Command::new(binaries_dir().join("users-admin"))
        .arg("rotate-encryption-key")
        .output()
        .await
        .expect("users-admin runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_key_id = rotated["active_key_id"].as_str().unwrap().to_string();
    assert_ne!(new_key_id, old_key_id);

    // A cold function writes with the new key.
    let cold = Api::InProcess(std::sync::Arc::new(context().await));
    let new_user = create_user(&warm, false, &["*"]).await;
    let new_secret = enable_2fa(&cold, &new_user.key).await;
    let new_codes = cold
        .post("/api/users/@me/two_factor_backup_codes/")
        .bearer(&new_user.key)
        .send()
        .await
        .ok_json()["backup_codes"]
        .clone();
    // The warm ones, which loaded only the old key, read both: no 500.
    for api in [&in_process, &http] {
        assert_eq!(status(api, &new_user.key).await["backup_codes"], new_codes);
        assert_eq!(status(api, &old_user.key).await["backup_codes"], codes);
    }
    // The next step's code: the current one may be the one the setup used.
    let right = pyotp_code(&new_secret, step_margin().await + 30).await;
    two_factor_verify(&http, &new_user.key, &right)
        .await
        .assert_status(200);
    let right = pyotp_code(&old_secret, step_margin().await + 30).await;
    two_factor_verify(&in_process, &old_user.key, &right)
        .await
        .assert_status(200);
    assert!(warm.keyring().await.unwrap().knows(&new_key_id));
}

// ---------------------------------------------------------------------------------------------
// 8. Deactivation is final
// ---------------------------------------------------------------------------------------------

/// An interceptor that makes every Query of the `by_user` index come back empty: the
/// eventually consistent index not showing keys yet, forced.
#[derive(Debug)]
struct IndexLag;

/// Set on a call that is a Query, for the response to be emptied.
#[derive(Debug, Clone)]
struct IsQuery;

impl aws_smithy_types::config_bag::Storable for IsQuery {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

impl aws_sdk_dynamodb::config::Intercept for IndexLag {
    fn name(&self) -> &'static str {
        "IndexLag"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_dynamodb::config::RuntimeComponents,
        cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("");
        if target.ends_with(".Query") {
            cfg.interceptor_state().store_put(IsQuery);
        }
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut aws_sdk_dynamodb::config::interceptors::BeforeDeserializationInterceptorContextMut<'_>,
        _components: &aws_sdk_dynamodb::config::RuntimeComponents,
        cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        if cfg.load::<IsQuery>().is_some() && context.response().status().is_success() {
            *context.response_mut().body_mut() =
                aws_smithy_types::body::SdkBody::from(r#"{"Count":0,"Items":[],"ScannedCount":0}"#);
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_key_the_index_does_not_show_yet_is_deactivated_too() {
    let ctx = context().await;
    let user = create_user(&ctx, false, &["*"]).await;
    let second = create_key(&ctx, &user.user, &["*"]).await;
    let config = ctx
        .store
        .db
        .config()
        .to_builder()
        .interceptor(IndexLag)
        .build();
    let lagging = shared::store::Store::new(
        aws_sdk_dynamodb::Client::from_conf(config),
        ctx.store.tables.clone(),
    );
    assert!(
        lagging.api_keys_of(user.uuid()).await.unwrap().is_empty(),
        "the lag is in force"
    );
    assert!(lagging.deactivate_user(user.uuid()).await.unwrap());
    let api = Api::InProcess(std::sync::Arc::new(context().await));
    for key in [&user.key, &second] {
        api.get("/api/users/@me/")
            .bearer(key)
            .send()
            .await
            .assert_unauthorized("authentication_failed");
    }
    // And no key can be made for the deactivated user.
    let (key, mask) = shared::auth::generate_api_key();
    let record = shared::auth::ApiKeyRecord {
        secure_value: shared::auth::ApiKeyHash::of(&key).0,
        user_uuid: user.uuid().to_string(),
        scopes: vec!["*".into()],
        label: "late".into(),
        mask,
        created_at: shared::clock::iso_now(),
        last_used_at: None,
        user_is_staff: false,
        user_is_active: true,
    };
    assert_eq!(
        ctx.store.put_api_key(&record).await,
        Err(shared::ApiError::NotFound)
    );
    api.get("/api/users/@me/")
        .bearer(&key)
        .send()
        .await
        .assert_unauthorized("authentication_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_created_while_deactivating_never_stay_usable() {
    let ctx = std::sync::Arc::new(context().await);
    let api = Api::InProcess(ctx.clone());
    for _ in 0..8 {
        let user = create_user(&ctx, false, &["*"]).await;
        let creators: Vec<_> = (0..4)
            .map(|_| {
                let (ctx, user) = (ctx.clone(), user.user.clone());
                tokio::spawn(async move {
                    let (key, mask) = shared::auth::generate_api_key();
                    let record = shared::auth::ApiKeyRecord {
                        secure_value: shared::auth::ApiKeyHash::of(&key).0,
                        user_uuid: user.uuid.clone(),
                        scopes: vec!["*".into()],
                        label: "racing".into(),
                        mask,
                        created_at: shared::clock::iso_now(),
                        last_used_at: None,
                        user_is_staff: false,
                        user_is_active: true,
                    };
                    ctx.store.put_api_key(&record).await.map(|_| key)
                })
            })
            .collect();
        assert!(ctx.store.deactivate_user(user.uuid()).await.unwrap());
        for creator in creators {
            if let Ok(key) = creator.await.unwrap() {
                api.get("/api/users/@me/")
                    .bearer(&key)
                    .send()
                    .await
                    .assert_unauthorized("authentication_failed");
            }
        }
        api.get("/api/users/@me/")
            .bearer(&user.key)
            .send()
            .await
            .assert_unauthorized("authentication_failed");
    }
}

// ---------------------------------------------------------------------------------------------
// 9. The right error under contention
// ---------------------------------------------------------------------------------------------

both!(
    regenerating_backup_codes_while_one_is_used_never_says_2fa_is_off,
    |api, ctx| async move {
        let user = create_user(&ctx, false, &["*"]).await;
        enable_2fa(&api, &user.key).await;
        for round in 0..6 {
            let codes = api
                .post("/api/users/@me/two_factor_backup_codes/")
                .bearer(&user.key)
                .send()
                .await
                .ok_json()["backup_codes"]
                .clone();
            let code = codes[0].as_str().unwrap().to_string();
            let (a, b, c) = (api.clone(), api.clone(), api.clone());
            let (k1, k2, k3) = (user.key.clone(), user.key.clone(), user.key.clone());
            let regen = tokio::spawn(async move {
                a.post("/api/users/@me/two_factor_backup_codes/")
                    .bearer(&k1)
                    .send()
                    .await
            });
            let regen2 = tokio::spawn(async move {
                c.post("/api/users/@me/two_factor_backup_codes/")
                    .bearer(&k3)
                    .send()
                    .await
            });
            let used = tokio::spawn(async move { two_factor_verify(&b, &k2, &code).await });
            for reply in [regen.await.unwrap(), regen2.await.unwrap()] {
                assert!(
                    reply.status == 200 || reply.status == 503,
                    "round {round}: {} {}",
                    reply.status,
                    reply.body
                );
            }
            let used = used.await.unwrap();
            // A code replaced by the racing regeneration is a wrong code, and five of those
            // lock sign-in checks: both are right answers, never a 500 or `2fa_not_enabled`.
            assert!([200, 400, 429, 503].contains(&used.status), "{}", used.body);
            if used.status == 400 {
                assert_eq!(used.json()["code"], "token_invalid", "{}", used.body);
            }
        }
    }
);

// ---------------------------------------------------------------------------------------------
// 12. Refusals that cost nothing
// ---------------------------------------------------------------------------------------------

/// A malformed key is refused before any DynamoDB call, on every route.
#[tokio::test]
async fn malformed_credentials_cost_no_dynamodb_call() {
    let ctx = context().await;
    let recorder = calls::Recorder::default();
    let counted = recorder.instrument(&ctx);
    let api = Api::InProcess(std::sync::Arc::new(counted));
    for route in shared::routes::ROUTES {
        let path = route.path.replace("{uuid}", "@me") + "/";
        for credential in [
            "phx_short",
            "Bearer-ish",
            "eyJhbGciOi.not.a.key",
            &"A".repeat(5000),
        ] {
            let reply = api
                .call(route.method, &path)
                .bearer(credential)
                .json(&json!({"token": "123456"}))
                .send()
                .await;
            reply.assert_unauthorized("authentication_failed");
        }
    }
    assert!(
        recorder.take().is_empty(),
        "no DynamoDB call for a malformed key"
    );
}

/// With the CloudFront front door on (`ORIGIN_VERIFY_SECRET`), a request that did not come
/// through it is refused before anything else: no lookup of its key.
#[tokio::test]
async fn requests_around_the_cloudfront_front_door_are_refused_unread() {
    // nextest runs each test in a process of its own, so this setting stays in this test.
    std::env::set_var("ORIGIN_VERIFY_SECRET", "front-door-secret-0123456789");
    let ctx = context().await;
    let user = create_user(&ctx, false, &["*"]).await;
    let recorder = calls::Recorder::default();
    let counted = recorder.instrument(&ctx);
    let api = Api::InProcess(std::sync::Arc::new(counted));
    for header in [None, Some("wrong"), Some("front-door-secret-012345678")] {
        let mut call = api.get("/api/users/@me/").bearer(&user.key);
        if let Some(value) = header {
            call = call.header("x-origin-verify", value);
        }
        call.send()
            .await
            .assert_forbidden("Requests must come through the API's CloudFront distribution.");
    }
    let reply = api.get("/nope/").send().await;
    assert_eq!(reply.status, 403, "the fallback too");
    assert!(
        recorder.take().is_empty(),
        "refused before any DynamoDB call"
    );
    api.get("/api/users/@me/")
        .bearer(&user.key)
        .header("x-origin-verify", "front-door-secret-0123456789")
        .send()
        .await
        .user_object();
}
