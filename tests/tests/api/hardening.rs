//! The security properties a reviewer of an identity service checks: limits that no other
//! route can lift, staff kept to API.md §2, nothing cacheable, no input that reaches a 500,
//! no live code in a table dump, key rotation while warm, deactivation that nothing outlives,
//! the right error under contention, and refusals that cost no DynamoDB call.
use api_tests::*;
use serde_json::{json, Value};
use shared::clock::now_secs;
use shared::throttle::FailureCharge;
use shared::throttle::{CodeCheck, FailureState};

/// Lifts a lock the way time would (the count stays): a compare-and-set on the state read.
async fn let_lock_expire(ctx: &shared::Context, uuid: UserId, check: CodeCheck) {
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

// ---------------------------------------------------------------------------------------------
// 1. Limits that nobody but their own success can reset
// ---------------------------------------------------------------------------------------------

both!(
    disabling_2fa_does_not_lift_the_email_code_lock,
    |api, ctx| async move {
        let (user, _, code) = pending_change(&api, &ctx, "locked").await;
        for _ in 0..5 {
            api.verify_email(&user.key, &user.uuid().to_string(), &other_code(&code))
                .await
                .assert_wrong_email_code();
        }
        // The old bypass: disable (with 2FA off), then guess on.
        api.disable_2fa(&user.key).await.assert_status(200);
        api.verify_email(&user.key, &user.uuid().to_string(), &code)
            .await
            .assert_throttled(29..=30);
        // Nor does a success of another kind of check.
        api.enable_2fa(&user.key).await;
        api.verify_email(&user.key, &user.uuid().to_string(), &code)
            .await
            .assert_throttled(1..=30);
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
        let user = create_user(&ctx, &["*"]).await;
        let secret = api.enable_2fa(&user.key).await;
        for _ in 0..5 {
            api.verify_2fa(&user.key, "000000").await.assert_status(400);
        }
        api.verify_2fa(&user.key, "000000")
            .await
            .assert_throttled(25..=30);
        // Sign-in locked; setup and email checks are not.
        assert_eq!(
            failures_of(&ctx, user.uuid(), CodeCheck::TotpSetup).await,
            FailureState::default()
        );
        assert_eq!(
            failures_of(&ctx, user.uuid(), CodeCheck::EmailChange).await,
            FailureState::default()
        );
        api.verify_email(&user.key, &user.uuid().to_string(), "123456")
            .await
            .assert_wrong_email_code();
        // Disabling 2FA and setting it up again (a setup success) leaves the sign-in lock.
        api.disable_2fa(&user.key).await.assert_status(200);
        let secret2 = api.enable_2fa(&user.key).await;
        assert_ne!(secret, secret2);
        let right = pyotp_code(&secret2, step_margin().await).await;
        api.verify_2fa(&user.key, right.as_str())
            .await
            .assert_throttled(1..=30);
        assert_eq!(
            failures_of(&ctx, user.uuid(), CodeCheck::SignIn)
                .await
                .count,
            5
        );
        // Only a sign-in success resets the sign-in state.
        let_lock_expire(&ctx, user.uuid(), CodeCheck::SignIn).await;
        let right = pyotp_code(&secret2, step_margin().await + 30).await;
        api.verify_2fa(&user.key, right.as_str())
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
        let user = create_user(&ctx, &["*"]).await;
        api.enable_2fa(&user.key).await;
        let codes = api.backup_codes(&user.key).await;
        for _ in 0..4 {
            api.verify_2fa(&user.key, "000000").await.assert_status(400);
        }
        api.verify_2fa(&user.key, codes[0].as_str())
            .await
            .assert_status(200);
        assert_eq!(
            failures_of(&ctx, user.uuid(), CodeCheck::SignIn)
                .await
                .count,
            4
        );
        api.verify_2fa(&user.key, "000000").await.assert_status(400);
        api.verify_2fa(&user.key, "000000")
            .await
            .assert_throttled(25..=30);
    }
);

both!(
    a_request_from_before_keyed_hashes_is_a_wrong_code_not_a_500,
    |api, ctx| async move {
        use sha2::{Digest, Sha256};
        let user = create_user(&ctx, &["*"]).await;
        let (request_id, code) = (uuid::Uuid::new_v4().to_string(), "123456");
        let old_hash: String = Sha256::digest(format!("{request_id}:{code}").as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let record = shared::email_change::EmailChangeRecord {
            user_uuid: UserId::parse(&user.uuid().to_string()).expect("a uuid"),
            new_email: unique_email("legacy"),
            code_hash: old_hash,
            code_key_id: String::new(),
            request_id,
            requested_at: shared::clock::iso_now(),
            expires_at: now_secs() + 3600,
            wrong_codes: 0,
        };
        // As such a request was stored: without the attributes that came with keyed hashes.
        let mut item = shared::store::to_item(&record).expect("an item");
        item.remove("code_key_id");
        item.remove("wrong_codes");
        ctx.store
            .db
            .put_item()
            .table_name(&ctx.store.tables.email_changes)
            .set_item(Some(item))
            .send()
            .await
            .expect("an old-style request");
        api.verify_email(&user.key, &user.uuid().to_string(), code)
            .await
            .assert_wrong_email_code();
        assert_eq!(api.me(&user.key).await["email"], user.user.email.as_str());
    }
);

both!(
    an_account_already_over_the_size_bound_can_still_be_changed,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
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
                None,
                &[],
            )
            .await
            .expect("a large record");
        let updated = api
            .patch_me(&user.key, &json!({"first_name": "Big"}))
            .await
            .user_object();
        assert_eq!(updated["first_name"], "Big");
        let shrunk = api
            .patch_me(&user.key, &json!({"hedgehog_config": null}))
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
            api.verify_email(&user.key, &user.uuid().to_string(), &other_code(&code))
                .await
                .assert_wrong_email_code();
        }
        let before = shared::clock::now_millis();
        // The fifth wrong code voids the request (below) and starts the 30 s lock.
        api.verify_email(&user.key, &user.uuid().to_string(), &other_code(&code))
            .await
            .assert_wrong_email_code();
        let state = failures_of(&ctx, user.uuid(), CodeCheck::EmailChange).await;
        assert!(
            (before + 30_000..=shared::clock::now_millis() + 30_000)
                .contains(&state.locked_until_ms),
            "the lock runs 30 s from the fifth failure"
        );
        let reply = api
            .verify_email(&user.key, &user.uuid().to_string(), &code)
            .await;
        let retry = reply.assert_throttled(29..=30);
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
            api.verify_email(&user.key, &user.uuid().to_string(), &other_code(&code))
                .await
                .assert_wrong_email_code();
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
        api.verify_email(&user.key, &user.uuid().to_string(), &code)
            .await
            .assert_wrong_email_code();
        assert_eq!(api.me(&user.key).await["email"], user.user.email.as_str());
        // A new request gets a new code, which works (after its own lock runs out).
        let_lock_expire(&ctx, user.uuid(), CodeCheck::EmailChange).await;
        api.request_email_change(&user.key, &new_email)
            .await
            .user_object();
        let mail = mail_to(&new_email).await;
        assert_eq!(mail.len(), 2);
        let fresh = six_digit_runs(&mail[1].1).remove(0);
        api.verify_email(&user.key, &user.uuid().to_string(), &fresh)
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
                api.verify_email(&key, &uuid, &guess).await
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
        let user = create_user(&ctx, &["*"]).await;
        let addresses: Vec<String> = (0..6).map(|i| unique_email(&format!("quota{i}"))).collect();
        for address in &addresses[..5] {
            api.request_email_change(&user.key, address)
                .await
                .user_object();
        }
        // Cancelling does not give the mails back.
        api.cancel_email_change(&user.key).await.assert_status(200);
        let reply = api.request_email_change(&user.key, &addresses[5]).await;
        reply.assert_throttled(3590..=3600);
        assert!(
            mail_to(&addresses[5]).await.is_empty(),
            "no mail past the limit"
        );
        assert_eq!(api.me(&user.key).await["pending_email"], Value::Null);
        for address in &addresses[..5] {
            assert_eq!(mail_to(address).await.len(), 1, "{address}");
        }
        // Profile changes without an email still go through.
        api.patch_me(&user.key, &json!({"first_name": "Quota"}))
            .await
            .user_object();
    }
);

both!(
    racing_email_change_requests_send_at_most_five_mails,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let addresses: Vec<String> = (0..10).map(|i| unique_email(&format!("rq{i}"))).collect();
        let mut tasks = Vec::new();
        for address in addresses.clone() {
            let (api, key) = (api.clone(), user.key.clone());
            tasks.push(tokio::spawn(async move {
                api.request_email_change(&key, &address).await
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
        let staff = create_staff(&ctx, &["*"]).await;
        let plain = create_user(&ctx, &["*"]).await;
        for body in [
            json!({"first_name": "Mallory"}),
            json!({"email": unique_email("steal")}),
        ] {
            let reply = api
                .patch(&format!("/api/users/{}/", plain.uuid()))
                .send_json(&staff.key, &body)
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
        let staff = create_staff(&ctx, &["*"]).await;
        let plain = create_user(&ctx, &["*"]).await;
        let new_email = unique_email("own");
        api.request_email_change(&plain.key, &new_email)
            .await
            .user_object();
        let code = code_mailed_to(&new_email).await;
        api.verify_email(&staff.key, &plain.uuid().to_string(), &code)
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
        api.verify_email(&plain.key, &plain.uuid().to_string(), &code)
            .await
            .assert_status(200);
    }
);

// ---------------------------------------------------------------------------------------------
// 3. Nothing cacheable
// ---------------------------------------------------------------------------------------------

both!(every_response_is_no_store, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
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
    let reply = api.get(START_2FA_SETUP).bearer(&user.key).send().await;
    assert!(reply.ok_json()["secret"].is_string());
    assert_eq!(reply.header("cache-control"), Some("no-store"));
});

// ---------------------------------------------------------------------------------------------
// 4. No input reaches a 500, however often it is sent
// ---------------------------------------------------------------------------------------------

both!(
    growing_settings_are_bounded_and_the_user_stays_usable,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let mut refused = None;
        for round in 0..40 {
            // Each request is under the per-request limit, with keys no earlier one had.
            let settings: serde_json::Map<String, Value> = (0..30)
                .map(|i| (format!("k{round}_{i}"), json!("x".repeat(400))))
                .collect();
            let reply = api
                .patch_me(&user.key, &json!({"notification_settings": settings}))
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
        reply.assert_setting_too_large("notification_settings");
        // The user object still reads and writes normally, on every route that reads it.
        let me = api.me(&user.key).await;
        assert!(me["notification_settings"].to_string().len() <= 16 * 1024);
        let updated = api
            .patch_me(
                &user.key,
                &json!({"first_name": "Still", "notification_settings": {"k0_0": "y"}}),
            )
            .await
            .user_object();
        assert_eq!(updated["first_name"], "Still");
        assert_eq!(updated["notification_settings"]["k0_0"], "y");
        api.set_scene(&user.key, &json!({"scene": "Home", "dashboard": 1}))
            .await
            .user_object();
    }
);

/// Where the handlers' bounds could still be passed (a write through the store itself),
/// DynamoDB's refusal of an item over 400 KB is the same clear 400, not a 500.
#[tokio::test]
async fn dynamodbs_item_size_refusal_is_a_400() {
    let ctx = context().await;
    let user = create_user(&ctx, &["*"]).await;
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
            None,
            &[],
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
    let user = create_user(&ctx, &["*"]).await;
    let new_email = unique_email("dump");
    api.request_email_change(&user.key, &new_email)
        .await
        .user_object();
    let code = code_mailed_to(&new_email).await;
    let dump = dump_every_table(&ctx).await;
    let (_, record) = dump
        .iter()
        .find(|(table, item)| {
            table == &ctx.store.tables.email_changes && item.contains(&user.uuid().to_string())
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
            &user.uuid().to_string(),
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
    let old_user = create_user(&warm, &["*"]).await;
    let old_secret = in_process.enable_2fa(&old_user.key).await;
    // Both the in-process context and the functions behind the local API are warm now.
    assert_eq!(
        http.two_factor_status(&old_user.key).await["is_enabled"],
        true
    );
    let codes = json!(in_process.backup_codes(&old_user.key).await);
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
    let new_user = create_user(&warm, &["*"]).await;
    let new_secret = cold.enable_2fa(&new_user.key).await;
    let new_codes = json!(cold.backup_codes(&new_user.key).await);
    // The warm ones, which loaded only the old key, read both: no 500.
    for api in [&in_process, &http] {
        assert_eq!(
            api.two_factor_status(&new_user.key).await["backup_codes"],
            new_codes
        );
        assert_eq!(
            api.two_factor_status(&old_user.key).await["backup_codes"],
            codes
        );
    }
    // The next step's code: the current one may be the one the setup used.
    let right = pyotp_code(&new_secret, step_margin().await + 30).await;
    http.verify_2fa(&new_user.key, right.as_str())
        .await
        .assert_status(200);
    let right = pyotp_code(&old_secret, step_margin().await + 30).await;
    in_process
        .verify_2fa(&old_user.key, right.as_str())
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

/// A new `*` key of a non-staff user, and its record (not yet stored).
fn new_key(user_uuid: UserId, label: &str) -> (String, shared::auth::ApiKeyRecord) {
    let (key, mask) = shared::auth::generate_api_key();
    let record = shared::auth::ApiKeyRecord {
        secure_value: shared::auth::ApiKeyHash::of(&key).0,
        user_uuid: UserId::parse(&user_uuid.to_string()).expect("a uuid"),
        scopes: vec!["*".into()],
        label: label.into(),
        mask,
        created_at: shared::clock::iso_now(),
        last_used_at: None,
        user_is_staff: false,
        user_is_active: true,
    };
    (key, record)
}

#[tokio::test]
async fn a_key_the_index_does_not_show_yet_is_deactivated_too() {
    let ctx = context().await;
    let user = create_user(&ctx, &["*"]).await;
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
    assert!(lagging
        .deactivate_user(
            user.uuid(),
            &admin_event(
                user.uuid(),
                shared::security_events::EventKind::UserDeactivated
            )
        )
        .await
        .unwrap());
    let api = Api::InProcess(std::sync::Arc::new(context().await));
    for key in [&user.key, &second] {
        api.get(ME)
            .bearer(key)
            .send()
            .await
            .assert_unauthorized("authentication_failed");
    }
    // And no key can be made for the deactivated user.
    let (key, record) = new_key(user.uuid(), "late");
    assert_eq!(
        ctx.store
            .put_api_key(
                &record,
                &admin_event(
                    record.user_uuid,
                    shared::security_events::EventKind::KeyCreated
                )
            )
            .await,
        Err(shared::ApiError::NotFound)
    );
    api.get(ME)
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
        let user = create_user(&ctx, &["*"]).await;
        let creators: Vec<_> = (0..4)
            .map(|_| {
                let (ctx, user) = (ctx.clone(), user.user.clone());
                tokio::spawn(async move {
                    let (key, record) = new_key(user.uuid, "racing");
                    ctx.store
                        .put_api_key(
                            &record,
                            &admin_event(
                                record.user_uuid,
                                shared::security_events::EventKind::KeyCreated,
                            ),
                        )
                        .await
                        .map(|_| key)
                })
            })
            .collect();
        deactivate(&ctx, user.uuid()).await;
        for creator in creators {
            if let Ok(key) = creator.await.unwrap() {
                api.get(ME)
                    .bearer(&key)
                    .send()
                    .await
                    .assert_unauthorized("authentication_failed");
            }
        }
        api.get(ME)
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
        let user = create_user(&ctx, &["*"]).await;
        api.enable_2fa(&user.key).await;
        for round in 0..6 {
            let code = api.backup_codes(&user.key).await.remove(0);
            let regenerate = || {
                let (api, key) = (api.clone(), user.key.clone());
                tokio::spawn(async move { api.post(BACKUP_CODES).bearer(&key).send().await })
            };
            let (regen, regen2) = (regenerate(), regenerate());
            let (b, k2) = (api.clone(), user.key.clone());
            let used = tokio::spawn(async move { b.verify_2fa(&k2, code).await });
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
                .send_json(credential, &json!({"token": "123456"}))
                .await;
            // What has a JWT's dots is refused as a sign-in token (the stack takes them).
            if credential.contains('.') {
                reply.assert_invalid_token("The access token is invalid.");
            } else {
                reply.assert_unauthorized("authentication_failed");
            }
        }
    }
    assert!(
        recorder.take().is_empty(),
        "no DynamoDB call for a malformed key or token"
    );
}

/// With the CloudFront front door on (`ORIGIN_VERIFY_SECRET`), a request that did not come
/// through it is refused before anything else: no lookup of its key.
#[tokio::test]
async fn requests_around_the_cloudfront_front_door_are_refused_unread() {
    // nextest runs each test in a process of its own, so this setting stays in this test.
    std::env::set_var("ORIGIN_VERIFY_SECRET", "front-door-secret-0123456789");
    let ctx = context().await;
    let user = create_user(&ctx, &["*"]).await;
    let recorder = calls::Recorder::default();
    let counted = recorder.instrument(&ctx);
    let api = Api::InProcess(std::sync::Arc::new(counted));
    for header in [None, Some("wrong"), Some("front-door-secret-012345678")] {
        let mut call = api.get(ME).bearer(&user.key);
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
    api.get(ME)
        .bearer(&user.key)
        .header("x-origin-verify", "front-door-secret-0123456789")
        .send()
        .await
        .user_object();
}
