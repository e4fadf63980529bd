//! Email changes: `PATCH /api/users/@me/` with `email`, `POST /api/users/verify_email/` and
//! `PATCH /api/users/cancel_email_change_request/`. Codes are read from moto's SES.
use api_tests::*;
use serde_json::{json, Value};
use shared::email_change::EmailChangeRecord;
use std::sync::Arc;

/// Opens a request for `new_email`; returns the response's user object.
async fn request_change(api: &Api, key: &str, new_email: &str) -> Value {
    api.request_email_change(key, new_email).await.user_object()
}

/// Writes an email-change request straight into its table, as the store writes one.
async fn plant(ctx: &shared::Context, record: &EmailChangeRecord) {
    ctx.store
        .db
        .put_item()
        .table_name(&ctx.store.tables.email_changes)
        .set_item(Some(shared::store::to_item(record).expect("an item")))
        .send()
        .await
        .expect("put a request");
}

/// Checks that `email` is taken: another user's request for it is refused. Returns that user.
async fn assert_taken(api: &Api, ctx: &shared::Context, email: &str) -> TestUser {
    let other = create_user(ctx, &["*"]).await;
    api.request_email_change(&other.key, email)
        .await
        .assert_email_taken();
    other
}

both!(
    request_then_verify_changes_the_email,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let new_email = unique_email("new");
        let object = request_change(&api, &user.key, &new_email).await;
        assert_eq!(
            object["email"], user.user.email,
            "email is unchanged until verified"
        );
        assert_eq!(object["pending_email"], new_email.as_str());
        let me = api.me(&user.key).await;
        assert_eq!(me["email"], user.user.email);
        assert_eq!(me["pending_email"], new_email.as_str());

        let code = code_mailed_to(&new_email).await;
        assert!(
            mail_to(&user.user.email).await.is_empty(),
            "the code goes to the new address only"
        );
        let stored = ctx.store.user(user.uuid()).await.unwrap().unwrap();
        assert_eq!(stored.email, user.user.email);

        api.verify_email(&user.key, &user.uuid().to_string(), &code)
            .await
            .assert_success();
        let me = api.me(&user.key).await;
        assert_eq!(me["email"], new_email.as_str());
        assert_eq!(me["pending_email"], Value::Null);
        assert_eq!(
            ctx.store.user(user.uuid()).await.unwrap().unwrap().email,
            new_email
        );

        // The request is gone: the same code does not work twice, and there is nothing to cancel.
        api.verify_email(&user.key, &user.uuid().to_string(), &code)
            .await
            .assert_wrong_email_code();
        api.cancel_email_change(&user.key)
            .await
            .assert_no_email_change_request();

        // The new address is now taken; the old one is free again.
        assert_taken(&api, &ctx, &new_email).await;
        let reuse = shared::users::UserRecord::new(
            &user.user.email,
            "Re",
            "Use",
            shared::users::UserKind::Regular,
        );
        ctx.store
            .create_user(&reuse)
            .await
            .expect("the old address was released");
    }
);

both!(wrong_code_changes_nothing, |api, ctx| async move {
    let (user, new_email, code) = pending_change(&api, &ctx, "wrong").await;
    for bad in [
        other_code(&code),
        other_code(&other_code(&code)),
        "abcdef".to_string(),
        "12345".to_string(),
    ] {
        api.verify_email(&user.key, &user.uuid().to_string(), &bad)
            .await
            .assert_wrong_email_code();
    }
    let me = api.me(&user.key).await;
    assert_eq!(me["email"], user.user.email);
    assert_eq!(me["pending_email"], new_email.as_str());
    // The right code still works after a few failures (fewer than five).
    api.verify_email(&user.key, &user.uuid().to_string(), &code)
        .await
        .assert_success();
    assert_eq!(api.me(&user.key).await["email"], new_email.as_str());
});

both!(cancel_kills_the_code, |api, ctx| async move {
    let (user, _, code) = pending_change(&api, &ctx, "cancel").await;
    // The body is ignored.
    let reply = api
        .patch(CANCEL_EMAIL_CHANGE)
        .send_json(&user.key, &json!({"email": "x@example.com"}))
        .await;
    let object = reply.user_object();
    assert_eq!(object["uuid"], user.uuid().to_string());
    assert_eq!(object["pending_email"], Value::Null);
    assert_eq!(object["email"], user.user.email);
    let me = api.me(&user.key).await;
    assert_eq!(me["pending_email"], Value::Null);
    assert_eq!(me["email"], user.user.email);
    api.verify_email(&user.key, &user.uuid().to_string(), &code)
        .await
        .assert_wrong_email_code();
    assert_eq!(api.me(&user.key).await["email"], user.user.email);
    // Nothing left to cancel.
    api.cancel_email_change(&user.key)
        .await
        .assert_no_email_change_request();
});

both!(cancel_with_nothing_pending_is_400, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    api.cancel_email_change(&user.key)
        .await
        .assert_no_email_change_request();
    api.patch(CANCEL_EMAIL_CHANGE)
        .send_json(&user.key, &json!({}))
        .await
        .assert_no_email_change_request();
});

both!(cancel_acts_on_the_caller_only, |api, ctx| async move {
    let a = create_user(&ctx, &["*"]).await;
    let b = create_user(&ctx, &["*"]).await;
    let a_new = unique_email("a-new");
    request_change(&api, &a.key, &a_new).await;
    api.cancel_email_change(&b.key)
        .await
        .assert_no_email_change_request();
    assert_eq!(api.me(&a.key).await["pending_email"], a_new.as_str());
});

both!(a_new_request_replaces_the_open_one, |api, ctx| async move {
    let (user, _, first_code) = pending_change(&api, &ctx, "first").await;
    let second = unique_email("second");
    let object = request_change(&api, &user.key, &second).await;
    assert_eq!(object["pending_email"], second.as_str());
    let second_code = code_mailed_to(&second).await;
    assert_eq!(api.me(&user.key).await["pending_email"], second.as_str());
    if first_code != second_code {
        api.verify_email(&user.key, &user.uuid().to_string(), &first_code)
            .await
            .assert_wrong_email_code();
    }
    api.verify_email(&user.key, &user.uuid().to_string(), &second_code)
        .await
        .assert_success();
    let me = api.me(&user.key).await;
    assert_eq!(me["email"], second.as_str());
    assert_eq!(me["pending_email"], Value::Null);
});

both!(duplicate_email_is_refused, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let other = create_user(&ctx, &["*"]).await;
    for taken in [
        other.user.email.clone(),
        other.user.email.to_uppercase(),
        format!("  {}  ", other.user.email),
    ] {
        api.request_email_change(&user.key, &taken)
            .await
            .assert_email_taken();
    }
    let me = api.me(&user.key).await;
    assert_eq!(me["email"], user.user.email);
    assert_eq!(me["pending_email"], Value::Null);
    assert!(
        mail_to(&other.user.email).await.is_empty(),
        "no code went to the other account"
    );
});

both!(malformed_email_is_refused, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    for bad in [
        "not-an-email",
        "a@b",
        "@example.com",
        "a b@example.com",
        "a@@example.com",
        "a@example..com",
    ] {
        api.request_email_change(&user.key, bad)
            .await
            .assert_invalid_email();
    }
    api.request_email_change(&user.key, "")
        .await
        .assert_blank("email");
    api.patch_me(&user.key, &json!({"email": null}))
        .await
        .assert_null("email");
    let me = api.me(&user.key).await;
    assert_eq!(me["email"], user.user.email);
    assert_eq!(me["pending_email"], Value::Null);
});

both!(own_address_opens_no_request, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let object = request_change(&api, &user.key, &user.user.email).await;
    assert_eq!(object["email"], user.user.email);
    assert_eq!(object["pending_email"], Value::Null);
    assert!(mail_to(&user.user.email).await.is_empty());
});

both!(
    profile_fields_and_email_in_one_patch,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let new_email = unique_email("combo");
        let object = api
            .patch_me(
                &user.key,
                &json!({"email": new_email, "first_name": "Combo"}),
            )
            .await
            .user_object();
        assert_eq!(object["first_name"], "Combo");
        assert_eq!(object["pending_email"], new_email.as_str());
        assert_eq!(object["email"], user.user.email);
        let me = api.me(&user.key).await;
        assert_eq!(me["first_name"], "Combo");
        assert_eq!(me["pending_email"], new_email.as_str());
        code_mailed_to(&new_email).await;
    }
);

both!(verify_validates_its_body, |api, ctx| async move {
    let (user, new_email, code) = pending_change(&api, &ctx, "body").await;
    let verify_with = |body: Value| {
        let (api, key) = (api.clone(), user.key.clone());
        async move { api.post(VERIFY_EMAIL).send_json(&key, &body).await }
    };
    verify_with(json!({"code": code}))
        .await
        .assert_required("uuid");
    verify_with(json!({"uuid": user.uuid()}))
        .await
        .assert_required("code");
    verify_with(json!({"uuid": "", "code": code}))
        .await
        .assert_blank("uuid");
    // Another user's uuid, as a non-staff caller.
    let other = create_user(&ctx, &["*"]).await;
    api.verify_email(&user.key, &other.uuid().to_string(), &code)
        .await
        .assert_forbidden(NON_STAFF_DETAIL);
    let me = api.me(&user.key).await;
    assert_eq!(me["email"], user.user.email);
    assert_eq!(me["pending_email"], new_email.as_str());
    // Still verifiable.
    api.verify_email(&user.key, &user.uuid().to_string(), &code)
        .await
        .assert_success();
});

both!(
    verify_with_nothing_pending_is_a_wrong_code,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        api.verify_email(&user.key, &user.uuid().to_string(), "123456")
            .await
            .assert_wrong_email_code();
        assert_eq!(api.me(&user.key).await["email"], user.user.email);
    }
);

both!(expired_code_is_refused, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let new_email = unique_email("expired");
    let keyring = ctx.keyring().await.expect("keys");
    // A request whose 24 hours are over (DynamoDB deletes expired items lazily, so it is
    // still there to be read).
    let (mut record, code) =
        shared::email_change::new_request(&keyring, user.uuid(), &new_email, 0).expect("a request");
    record.expires_at = shared::clock::now_secs() - 1;
    plant(&ctx, &record).await;
    assert_eq!(
        api.me(&user.key).await["pending_email"],
        Value::Null,
        "an expired request is not pending"
    );
    api.verify_email(&user.key, &user.uuid().to_string(), &code)
        .await
        .assert_wrong_email_code();
    let me = api.me(&user.key).await;
    assert_eq!(me["email"], user.user.email);
    api.cancel_email_change(&user.key)
        .await
        .assert_no_email_change_request();

    // A live request written the same way verifies: the record above only differs in expiry.
    let (record, code) = shared::email_change::new_request(&keyring, user.uuid(), &new_email, 3600)
        .expect("a request");
    plant(&ctx, &record).await;
    api.verify_email(&user.key, &user.uuid().to_string(), &code)
        .await
        .assert_success();
    assert_eq!(api.me(&user.key).await["email"], new_email.as_str());
});

both!(five_wrong_codes_then_throttled, |api, ctx| async move {
    let (user, _, code) = pending_change(&api, &ctx, "throttle").await;
    let wrong = other_code(&code);
    for _ in 0..5 {
        api.verify_email(&user.key, &user.uuid().to_string(), &wrong)
            .await
            .assert_wrong_email_code();
    }
    // Refused now, without testing the code: even the right one. Locked for 30 s after the
    // fifth failure.
    for attempt in [wrong.as_str(), code.as_str()] {
        api.verify_email(&user.key, &user.uuid().to_string(), attempt)
            .await
            .assert_throttled(1..=30);
    }
    let me = api.me(&user.key).await;
    assert_eq!(me["email"], user.user.email);
    assert_eq!(
        me["pending_email"],
        Value::Null,
        "the fifth wrong code voided the request"
    );
});

/// In process only: a deployment without a sender changes the address at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_sender_the_email_changes_at_once() {
    let ctx = Arc::new(context().await);
    let api = Api::InProcess(Arc::new(context_without_email().await));
    let user = create_user(&ctx, &["*"]).await;
    let new_email = unique_email("immediate");
    let object = request_change(&api, &user.key, &new_email).await;
    assert_eq!(object["email"], new_email.as_str());
    assert_eq!(object["pending_email"], Value::Null);
    let me = api.me(&user.key).await;
    assert_eq!(me["email"], new_email.as_str());
    assert_eq!(me["pending_email"], Value::Null);
    assert_eq!(
        ctx.store.user(user.uuid()).await.unwrap().unwrap().email,
        new_email
    );
    assert!(
        mail_to(&new_email).await.is_empty(),
        "no mail without a sender"
    );
    api.cancel_email_change(&user.key)
        .await
        .assert_no_email_change_request();
    // The new address is claimed and the old one released.
    let other = assert_taken(&api, &ctx, &new_email).await;
    let object = request_change(&api, &other.key, &user.user.email).await;
    assert_eq!(object["email"], user.user.email);
    // Duplicates and malformed addresses are refused the same way.
    api.request_email_change(&user.key, "nope")
        .await
        .assert_invalid_email();
}

both!(a_success_resets_the_failure_count, |api, ctx| async move {
    let (user, _, code) = pending_change(&api, &ctx, "reset-1").await;
    for _ in 0..4 {
        api.verify_email(&user.key, &user.uuid().to_string(), &other_code(&code))
            .await
            .assert_wrong_email_code();
    }
    api.verify_email(&user.key, &user.uuid().to_string(), &code)
        .await
        .assert_success();
    // Four more failures are again free: the count started over.
    let second = unique_email("reset-2");
    request_change(&api, &user.key, &second).await;
    let code = code_mailed_to(&second).await;
    for _ in 0..4 {
        api.verify_email(&user.key, &user.uuid().to_string(), &other_code(&code))
            .await
            .assert_wrong_email_code();
    }
    api.verify_email(&user.key, &user.uuid().to_string(), &code)
        .await
        .assert_success();
    assert_eq!(api.me(&user.key).await["email"], second.as_str());
});

both!(the_failure_limit_is_per_user, |api, ctx| async move {
    let locked = create_user(&ctx, &["*"]).await;
    for _ in 0..5 {
        api.verify_email(&locked.key, &locked.uuid().to_string(), "000000")
            .await
            .assert_wrong_email_code();
    }
    let reply = api
        .verify_email(&locked.key, &locked.uuid().to_string(), "000000")
        .await;
    assert_eq!(reply.status, 429, "{}", reply.body);
    let (free, _, code) = pending_change(&api, &ctx, "free").await;
    api.verify_email(&free.key, &free.uuid().to_string(), &code)
        .await
        .assert_success();
});
