//! Email changes: `PATCH /api/users/@me/` with `email`, `POST /api/users/verify_email/` and
//! `PATCH /api/users/cancel_email_change_request/`. Codes are read from moto's SES.
use api_tests::*;
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Value};
use std::sync::Arc;

const CANCEL: &str = "/api/users/cancel_email_change_request/";
const VERIFY: &str = "/api/users/verify_email/";
const WRONG_CODE: &str = "This verification code is invalid or has expired.";

/// Opens a request for `new_email`; returns the response's user object.
async fn request_change(api: &Api, key: &str, new_email: &str) -> Value {
    api.patch("/api/users/@me/")
        .bearer(key)
        .json(&json!({"email": new_email}))
        .send()
        .await
        .user_object()
}

async fn verify(api: &Api, key: &str, uuid: &str, code: &str) -> Reply {
    api.post(VERIFY)
        .bearer(key)
        .json(&json!({"uuid": uuid, "code": code}))
        .send()
        .await
}

#[track_caller]
fn assert_wrong_code(reply: &Reply) {
    reply.assert_error(
        400,
        "validation_error",
        "invalid_input",
        WRONG_CODE,
        Some("code"),
    );
}

both!(
    request_then_verify_changes_the_email,
    |api, ctx| async move {
        let user = create_user(&ctx, false, &["*"]).await;
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

        let reply = verify(&api, &user.key, user.uuid(), &code).await;
        assert_eq!(reply.ok_json(), json!({"success": true}));
        let me = api.me(&user.key).await;
        assert_eq!(me["email"], new_email.as_str());
        assert_eq!(me["pending_email"], Value::Null);
        assert_eq!(
            ctx.store.user(user.uuid()).await.unwrap().unwrap().email,
            new_email
        );

        // The request is gone: the same code does not work twice, and there is nothing to cancel.
        assert_wrong_code(&verify(&api, &user.key, user.uuid(), &code).await);
        let reply = api.patch(CANCEL).bearer(&user.key).send().await;
        reply.assert_error(
            400,
            "validation_error",
            "email_change_request_not_found",
            "No active email change requests found.",
            None,
        );

        // The new address is now taken; the old one is free again.
        let third = create_user(&ctx, false, &["*"]).await;
        let reply = api
            .patch("/api/users/@me/")
            .bearer(&third.key)
            .json(&json!({"email": new_email}))
            .send()
            .await;
        reply.assert_error(
            400,
            "validation_error",
            "unique",
            "There is already an account with this email address.",
            Some("email"),
        );
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
    let user = create_user(&ctx, false, &["*"]).await;
    let new_email = unique_email("wrong");
    request_change(&api, &user.key, &new_email).await;
    let code = code_mailed_to(&new_email).await;
    for bad in [
        other_code(&code),
        other_code(&other_code(&code)),
        "abcdef".to_string(),
        "12345".to_string(),
    ] {
        assert_wrong_code(&verify(&api, &user.key, user.uuid(), &bad).await);
    }
    let me = api.me(&user.key).await;
    assert_eq!(me["email"], user.user.email);
    assert_eq!(me["pending_email"], new_email.as_str());
    // The right code still works after a few failures (fewer than five).
    let reply = verify(&api, &user.key, user.uuid(), &code).await;
    assert_eq!(reply.ok_json(), json!({"success": true}));
    assert_eq!(api.me(&user.key).await["email"], new_email.as_str());
});

both!(cancel_kills_the_code, |api, ctx| async move {
    let user = create_user(&ctx, false, &["*"]).await;
    let new_email = unique_email("cancel");
    request_change(&api, &user.key, &new_email).await;
    let code = code_mailed_to(&new_email).await;
    // The body is ignored.
    let reply = api
        .patch(CANCEL)
        .bearer(&user.key)
        .json(&json!({"email": "x@example.com"}))
        .send()
        .await;
    let object = reply.user_object();
    assert_eq!(object["uuid"], user.uuid());
    assert_eq!(object["pending_email"], Value::Null);
    assert_eq!(object["email"], user.user.email);
    let me = api.me(&user.key).await;
    assert_eq!(me["pending_email"], Value::Null);
    assert_eq!(me["email"], user.user.email);
    assert_wrong_code(&verify(&api, &user.key, user.uuid(), &code).await);
    assert_eq!(api.me(&user.key).await["email"], user.user.email);
    // Nothing left to cancel.
    let reply = api.patch(CANCEL).bearer(&user.key).send().await;
    reply.assert_error(
        400,
        "validation_error",
        "email_change_request_not_found",
        "No active email change requests found.",
        None,
    );
});

both!(cancel_with_nothing_pending_is_400, |api, ctx| async move {
    let user = create_user(&ctx, false, &["*"]).await;
    let reply = api.patch(CANCEL).bearer(&user.key).send().await;
    reply.assert_error(
        400,
        "validation_error",
        "email_change_request_not_found",
        "No active email change requests found.",
        None,
    );
    let reply = api
        .patch(CANCEL)
        .bearer(&user.key)
        .json(&json!({}))
        .send()
        .await;
    reply.assert_error(
        400,
        "validation_error",
        "email_change_request_not_found",
        "No active email change requests found.",
        None,
    );
});

both!(cancel_acts_on_the_caller_only, |api, ctx| async move {
    let a = create_user(&ctx, false, &["*"]).await;
    let b = create_user(&ctx, false, &["*"]).await;
    let a_new = unique_email("a-new");
    request_change(&api, &a.key, &a_new).await;
    let reply = api.patch(CANCEL).bearer(&b.key).send().await;
    reply.assert_error(
        400,
        "validation_error",
        "email_change_request_not_found",
        "No active email change requests found.",
        None,
    );
    assert_eq!(api.me(&a.key).await["pending_email"], a_new.as_str());
});

both!(a_new_request_replaces_the_open_one, |api, ctx| async move {
    let user = create_user(&ctx, false, &["*"]).await;
    let first = unique_email("first");
    let second = unique_email("second");
    request_change(&api, &user.key, &first).await;
    let first_code = code_mailed_to(&first).await;
    let object = request_change(&api, &user.key, &second).await;
    assert_eq!(object["pending_email"], second.as_str());
    let second_code = code_mailed_to(&second).await;
    assert_eq!(api.me(&user.key).await["pending_email"], second.as_str());
    if first_code != second_code {
        assert_wrong_code(&verify(&api, &user.key, user.uuid(), &first_code).await);
    }
    let reply = verify(&api, &user.key, user.uuid(), &second_code).await;
    assert_eq!(reply.ok_json(), json!({"success": true}));
    let me = api.me(&user.key).await;
    assert_eq!(me["email"], second.as_str());
    assert_eq!(me["pending_email"], Value::Null);
});

both!(duplicate_email_is_refused, |api, ctx| async move {
    let user = create_user(&ctx, false, &["*"]).await;
    let other = create_user(&ctx, false, &["*"]).await;
    for taken in [
        other.user.email.clone(),
        other.user.email.to_uppercase(),
        format!("  {}  ", other.user.email),
    ] {
        let reply = api
            .patch("/api/users/@me/")
            .bearer(&user.key)
            .json(&json!({"email": taken}))
            .send()
            .await;
        reply.assert_error(
            400,
            "validation_error",
            "unique",
            "There is already an account with this email address.",
            Some("email"),
        );
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
    let user = create_user(&ctx, false, &["*"]).await;
    for bad in [
        "not-an-email",
        "a@b",
        "@example.com",
        "a b@example.com",
        "a@@example.com",
        "a@example..com",
    ] {
        let reply = api
            .patch("/api/users/@me/")
            .bearer(&user.key)
            .json(&json!({"email": bad}))
            .send()
            .await;
        reply.assert_error(
            400,
            "validation_error",
            "invalid_input",
            "Enter a valid email address.",
            Some("email"),
        );
    }
    let reply = api
        .patch("/api/users/@me/")
        .bearer(&user.key)
        .json(&json!({"email": ""}))
        .send()
        .await;
    reply.assert_error(
        400,
        "validation_error",
        "blank",
        "This field may not be blank.",
        Some("email"),
    );
    let reply = api
        .patch("/api/users/@me/")
        .bearer(&user.key)
        .json(&json!({"email": null}))
        .send()
        .await;
    reply.assert_error(
        400,
        "validation_error",
        "null",
        "This field may not be null.",
        Some("email"),
    );
    let me = api.me(&user.key).await;
    assert_eq!(me["email"], user.user.email);
    assert_eq!(me["pending_email"], Value::Null);
});

both!(own_address_opens_no_request, |api, ctx| async move {
    let user = create_user(&ctx, false, &["*"]).await;
    let object = request_change(&api, &user.key, &user.user.email).await;
    assert_eq!(object["email"], user.user.email);
    assert_eq!(object["pending_email"], Value::Null);
    assert!(mail_to(&user.user.email).await.is_empty());
});

both!(
    profile_fields_and_email_in_one_patch,
    |api, ctx| async move {
        let user = create_user(&ctx, false, &["*"]).await;
        let new_email = unique_email("combo");
        let reply = api
            .patch("/api/users/@me/")
            .bearer(&user.key)
            .json(&json!({"email": new_email, "first_name": "Combo"}))
            .send()
            .await;
        let object = reply.user_object();
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
    let user = create_user(&ctx, false, &["*"]).await;
    let new_email = unique_email("body");
    request_change(&api, &user.key, &new_email).await;
    let code = code_mailed_to(&new_email).await;
    let reply = api
        .post(VERIFY)
        .bearer(&user.key)
        .json(&json!({"code": code}))
        .send()
        .await;
    reply.assert_error(
        400,
        "validation_error",
        "required",
        "This field is required.",
        Some("uuid"),
    );
    let reply = api
        .post(VERIFY)
        .bearer(&user.key)
        .json(&json!({"uuid": user.uuid()}))
        .send()
        .await;
    reply.assert_error(
        400,
        "validation_error",
        "required",
        "This field is required.",
        Some("code"),
    );
    let reply = api
        .post(VERIFY)
        .bearer(&user.key)
        .json(&json!({"uuid": "", "code": code}))
        .send()
        .await;
    reply.assert_error(
        400,
        "validation_error",
        "blank",
        "This field may not be blank.",
        Some("uuid"),
    );
    // Another user's uuid, as a non-staff caller.
    let other = create_user(&ctx, false, &["*"]).await;
    let reply = verify(&api, &user.key, other.uuid(), &code).await;
    reply.assert_forbidden(NON_STAFF_DETAIL);
    let me = api.me(&user.key).await;
    assert_eq!(me["email"], user.user.email);
    assert_eq!(me["pending_email"], new_email.as_str());
    // Still verifiable.
    assert_eq!(
        verify(&api, &user.key, user.uuid(), &code).await.ok_json(),
        json!({"success": true})
    );
});

both!(
    verify_with_nothing_pending_is_a_wrong_code,
    |api, ctx| async move {
        let user = create_user(&ctx, false, &["*"]).await;
        assert_wrong_code(&verify(&api, &user.key, user.uuid(), "123456").await);
        assert_eq!(api.me(&user.key).await["email"], user.user.email);
    }
);

both!(expired_code_is_refused, |api, ctx| async move {
    let user = create_user(&ctx, false, &["*"]).await;
    let new_email = unique_email("expired");
    // A request whose 24 hours are over (DynamoDB deletes expired items lazily, so it is
    // still there to be read).
    let (mut record, code) = shared::email_change::new_request(
        &ctx.keyring().await.expect("keys"),
        user.uuid(),
        &new_email,
        0,
    )
    .expect("a request");
    record.expires_at = shared::clock::now_secs() - 1;
    ctx.store
        .db
        .put_item()
        .table_name(&ctx.store.tables.email_changes)
        .item("user_uuid", AttributeValue::S(record.user_uuid.clone()))
        .item("new_email", AttributeValue::S(record.new_email.clone()))
        .item("code_hash", AttributeValue::S(record.code_hash.clone()))
        .item("code_key_id", AttributeValue::S(record.code_key_id.clone()))
        .item("request_id", AttributeValue::S(record.request_id.clone()))
        .item(
            "requested_at",
            AttributeValue::S(record.requested_at.clone()),
        )
        .item(
            "expires_at",
            AttributeValue::N(record.expires_at.to_string()),
        )
        .send()
        .await
        .expect("put an expired request");
    assert_eq!(
        api.me(&user.key).await["pending_email"],
        Value::Null,
        "an expired request is not pending"
    );
    assert_wrong_code(&verify(&api, &user.key, user.uuid(), &code).await);
    let me = api.me(&user.key).await;
    assert_eq!(me["email"], user.user.email);
    let reply = api.patch(CANCEL).bearer(&user.key).send().await;
    reply.assert_error(
        400,
        "validation_error",
        "email_change_request_not_found",
        "No active email change requests found.",
        None,
    );

    // A live request written the same way verifies: the record above only differs in expiry.
    let (record, code) = shared::email_change::new_request(
        &ctx.keyring().await.expect("keys"),
        user.uuid(),
        &new_email,
        3600,
    )
    .expect("a request");
    ctx.store
        .db
        .put_item()
        .table_name(&ctx.store.tables.email_changes)
        .item("user_uuid", AttributeValue::S(record.user_uuid.clone()))
        .item("new_email", AttributeValue::S(record.new_email.clone()))
        .item("code_hash", AttributeValue::S(record.code_hash.clone()))
        .item("code_key_id", AttributeValue::S(record.code_key_id.clone()))
        .item("request_id", AttributeValue::S(record.request_id.clone()))
        .item(
            "requested_at",
            AttributeValue::S(record.requested_at.clone()),
        )
        .item(
            "expires_at",
            AttributeValue::N(record.expires_at.to_string()),
        )
        .send()
        .await
        .expect("put a live request");
    assert_eq!(
        verify(&api, &user.key, user.uuid(), &code).await.ok_json(),
        json!({"success": true})
    );
    assert_eq!(api.me(&user.key).await["email"], new_email.as_str());
});

both!(five_wrong_codes_then_throttled, |api, ctx| async move {
    let user = create_user(&ctx, false, &["*"]).await;
    let new_email = unique_email("throttle");
    request_change(&api, &user.key, &new_email).await;
    let code = code_mailed_to(&new_email).await;
    let wrong = other_code(&code);
    for _ in 0..5 {
        assert_wrong_code(&verify(&api, &user.key, user.uuid(), &wrong).await);
    }
    // Refused now, without testing the code: even the right one.
    for attempt in [wrong.as_str(), code.as_str()] {
        let reply = verify(&api, &user.key, user.uuid(), attempt).await;
        assert_eq!(reply.status, 429, "{}", reply.body);
        let retry_after: u64 = reply
            .header("retry-after")
            .expect("a Retry-After header")
            .parse()
            .expect("Retry-After is a number of seconds");
        assert!(
            (1..=30).contains(&retry_after),
            "locked for 30 s after the 5th failure: {retry_after}"
        );
        reply.assert_error(
            429,
            "throttled_error",
            "throttled",
            &format!("Request was throttled. Expected available in {retry_after} seconds."),
            None,
        );
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
    let user = create_user(&ctx, false, &["*"]).await;
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
    let reply = api.patch(CANCEL).bearer(&user.key).send().await;
    reply.assert_error(
        400,
        "validation_error",
        "email_change_request_not_found",
        "No active email change requests found.",
        None,
    );
    // The new address is claimed and the old one released.
    let other = create_user(&ctx, false, &["*"]).await;
    let reply = api
        .patch("/api/users/@me/")
        .bearer(&other.key)
        .json(&json!({"email": new_email}))
        .send()
        .await;
    reply.assert_error(
        400,
        "validation_error",
        "unique",
        "There is already an account with this email address.",
        Some("email"),
    );
    let reply = api
        .patch("/api/users/@me/")
        .bearer(&other.key)
        .json(&json!({"email": user.user.email}))
        .send()
        .await;
    assert_eq!(reply.user_object()["email"], user.user.email);
    // Duplicates and malformed addresses are refused the same way.
    let reply = api
        .patch("/api/users/@me/")
        .bearer(&user.key)
        .json(&json!({"email": "nope"}))
        .send()
        .await;
    reply.assert_error(
        400,
        "validation_error",
        "invalid_input",
        "Enter a valid email address.",
        Some("email"),
    );
}

both!(a_success_resets_the_failure_count, |api, ctx| async move {
    let user = create_user(&ctx, false, &["*"]).await;
    let first = unique_email("reset-1");
    request_change(&api, &user.key, &first).await;
    let code = code_mailed_to(&first).await;
    for _ in 0..4 {
        assert_wrong_code(&verify(&api, &user.key, user.uuid(), &other_code(&code)).await);
    }
    assert_eq!(
        verify(&api, &user.key, user.uuid(), &code).await.ok_json(),
        json!({"success": true})
    );
    // Four more failures are again free: the count started over.
    let second = unique_email("reset-2");
    request_change(&api, &user.key, &second).await;
    let code = code_mailed_to(&second).await;
    for _ in 0..4 {
        assert_wrong_code(&verify(&api, &user.key, user.uuid(), &other_code(&code)).await);
    }
    assert_eq!(
        verify(&api, &user.key, user.uuid(), &code).await.ok_json(),
        json!({"success": true})
    );
    assert_eq!(api.me(&user.key).await["email"], second.as_str());
});

both!(the_failure_limit_is_per_user, |api, ctx| async move {
    let locked = create_user(&ctx, false, &["*"]).await;
    let free = create_user(&ctx, false, &["*"]).await;
    for _ in 0..5 {
        assert_wrong_code(&verify(&api, &locked.key, locked.uuid(), "000000").await);
    }
    let reply = verify(&api, &locked.key, locked.uuid(), "000000").await;
    assert_eq!(reply.status, 429, "{}", reply.body);
    let new_email = unique_email("free");
    request_change(&api, &free.key, &new_email).await;
    let code = code_mailed_to(&new_email).await;
    assert_eq!(
        verify(&api, &free.key, free.uuid(), &code).await.ok_json(),
        json!({"success": true})
    );
});
