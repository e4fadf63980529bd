//! API.md §2: credentials, scopes and whose account a path may name, on the routes of issue 2.
use api_tests::*;
use serde_json::json;

/// A write route of every issue-2 function, as (method, path, body) for `@me`.
fn write_routes() -> Vec<(&'static str, &'static str, serde_json::Value)> {
    vec![
        (
            "POST",
            "/api/users/@me/push_tokens/unregister/",
            json!({"token": "t"}),
        ),
        (
            "POST",
            "/api/users/@me/push_tokens/",
            json!({"token": "t", "platform": "ios"}),
        ),
        (
            "POST",
            "/api/users/@me/scene_personalisation/",
            json!({"scene": "s", "dashboard": 1}),
        ),
        (
            "PATCH",
            "/api/users/cancel_email_change_request/",
            json!({}),
        ),
        ("PATCH", "/api/users/@me/", json!({"first_name": "X"})),
        (
            "POST",
            "/api/users/verify_email/",
            json!({"uuid": "@me", "code": "123456"}),
        ),
    ]
}

fn all_routes() -> Vec<(&'static str, &'static str, serde_json::Value)> {
    let mut routes = write_routes();
    routes.push(("GET", "/api/users/@me/", json!({})));
    routes
}

both!(no_key_is_not_authenticated, |api, ctx| async move {
    let _ = ctx;
    for (method, path, body) in all_routes() {
        let reply = api.call(method, path).json(&body).send().await;
        reply.assert_unauthorized("not_authenticated");
    }
});

both!(basic_scheme_is_not_authenticated, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    for (method, path, body) in all_routes() {
        // Even with a valid key after it, a scheme other than Bearer is no credentials.
        let reply = api
            .call(method, path)
            .header("authorization", &format!("Basic {}", user.key))
            .json(&body)
            .send()
            .await;
        reply.assert_unauthorized("not_authenticated");
    }
    let reply = api.get(ME).header("authorization", "Bearer").send().await;
    reply.assert_unauthorized("not_authenticated");
});

both!(unknown_or_malformed_key_fails, |api, ctx| async move {
    let _ = ctx;
    let (unknown, _) = shared::auth::generate_api_key();
    for key in [
        unknown.as_str(),
        "phx_short",
        "not-a-key",
        "phx_0000000000000000000000000000000000000000000000",
    ] {
        for (method, path, body) in all_routes() {
            let reply = api.call(method, path).send_json(key, &body).await;
            reply.assert_unauthorized("authentication_failed");
        }
    }
});

both!(revoked_key_fails, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    assert_eq!(api.me(&user.key).await["uuid"], user.uuid().to_string());
    let other_key = create_key(&ctx, &user.user, &["*"]).await;
    assert!(ctx
        .store
        .delete_api_key(&shared::auth::ApiKeyHash::of(&user.key))
        .await
        .unwrap()
        .is_some());
    for (method, path, body) in all_routes() {
        let reply = api.call(method, path).send_json(&user.key, &body).await;
        reply.assert_unauthorized("authentication_failed");
    }
    // The user's other key is untouched.
    assert_eq!(api.me(&other_key).await["uuid"], user.uuid().to_string());
});

both!(deactivated_user_fails, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let second_key = create_key(&ctx, &user.user, &["user:read"]).await;
    assert_eq!(api.me(&user.key).await["uuid"], user.uuid().to_string());
    deactivate(&ctx, user.uuid()).await;
    for key in [&user.key, &second_key] {
        for (method, path, body) in all_routes() {
            let reply = api.call(method, path).send_json(key, &body).await;
            reply.assert_unauthorized("authentication_failed");
        }
    }
});

both!(read_key_cannot_write, |api, ctx| async move {
    let user = create_user(&ctx, &["user:read"]).await;
    for (method, path, body) in write_routes() {
        let reply = api.call(method, path).send_json(&user.key, &body).await;
        reply.assert_forbidden(MISSING_WRITE_SCOPE);
    }
    // Nothing was written.
    let me = api.me(&user.key).await;
    assert_eq!(me["first_name"], "Test");
    assert_eq!(me["scene_personalisation"], json!([]));
    assert!(push_tokens_of(&ctx, user.uuid()).await.is_empty());
});

both!(read_key_reads_me, |api, ctx| async move {
    let user = create_user(&ctx, &["user:read"]).await;
    let me = api.me(&user.key).await;
    assert_eq!(me["uuid"], user.uuid().to_string());
    assert_eq!(me["email"], user.user.email);
    // Own uuid instead of @me.
    let reply = api
        .get(&format!("/api/users/{}/", user.uuid()))
        .bearer(&user.key)
        .send()
        .await;
    assert_eq!(reply.user_object()["uuid"], user.uuid().to_string());
});

both!(write_key_implies_read, |api, ctx| async move {
    let user = create_user(&ctx, &["user:write"]).await;
    assert_eq!(api.me(&user.key).await["uuid"], user.uuid().to_string());
    let reply = api
        .set_scene(&user.key, &json!({"scene": "home", "dashboard": 7}))
        .await;
    assert_eq!(
        reply.user_object()["scene_personalisation"],
        json!([{"scene": "home", "dashboard": 7}])
    );
});

both!(star_key_reads_and_writes, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    assert_eq!(api.me(&user.key).await["uuid"], user.uuid().to_string());
    let reply = api
        .register_push_token(&user.key, "star-token", "web")
        .await;
    assert_eq!(reply.ok_json()["platform"], "web");
    let reply = api
        .unregister_push_token(&user.key, &json!({"token": "star-token"}))
        .await;
    reply.assert_no_content();
    assert!(push_tokens_of(&ctx, user.uuid()).await.is_empty());
});

both!(non_staff_cannot_name_another_user, |api, ctx| async move {
    let caller = create_user(&ctx, &["*"]).await;
    let other = create_user(&ctx, &["*"]).await;
    let o = other.uuid();
    let requests = [
        ("GET", format!("/api/users/{o}/"), json!({})),
        (
            "PATCH",
            format!("/api/users/{o}/"),
            json!({"first_name": "Hijacked"}),
        ),
        (
            "POST",
            format!("/api/users/{o}/scene_personalisation/"),
            json!({"scene": "s", "dashboard": 1}),
        ),
        (
            "POST",
            "/api/users/verify_email/".to_string(),
            json!({"uuid": o, "code": "123456"}),
        ),
    ];
    for (method, path, body) in &requests {
        let reply = api.call(method, path).send_json(&caller.key, body).await;
        reply.assert_forbidden(NON_STAFF_DETAIL);
    }
    // The same holds for an unknown and a malformed uuid.
    let unknown = uuid::Uuid::new_v4().to_string();
    for segment in [unknown.as_str(), "not-a-uuid"] {
        let reply = api
            .get(&format!("/api/users/{segment}/"))
            .bearer(&caller.key)
            .send()
            .await;
        reply.assert_forbidden(NON_STAFF_DETAIL);
    }
    let theirs = api.me(&other.key).await;
    assert_eq!(theirs["first_name"], "Test");
    assert_eq!(theirs["scene_personalisation"], json!([]));
});

both!(
    staff_reads_and_personalises_another_user,
    |api, ctx| async move {
        let staff = create_staff(&ctx, &["*"]).await;
        let other = create_user(&ctx, &["*"]).await;
        let reply = api
            .get(&format!("/api/users/{}/", other.uuid()))
            .bearer(&staff.key)
            .send()
            .await;
        let object = reply.user_object();
        assert_eq!(object["uuid"], other.uuid().to_string());
        assert_eq!(object["email"], other.user.email);
        assert_eq!(object["is_staff"], false);

        let reply = api
            .post(&format!(
                "/api/users/{}/scene_personalisation/",
                other.uuid()
            ))
            .send_json(&staff.key, &json!({"scene": "insights", "dashboard": 42}))
            .await;
        let object = reply.user_object();
        assert_eq!(
            object["uuid"],
            other.uuid().to_string(),
            "the target's user object"
        );
        assert_eq!(
            object["scene_personalisation"],
            json!([{"scene": "insights", "dashboard": 42}])
        );
        // Written on the target, not on the caller.
        assert_eq!(
            api.me(&other.key).await["scene_personalisation"],
            json!([{"scene": "insights", "dashboard": 42}])
        );
        assert_eq!(api.me(&staff.key).await["scene_personalisation"], json!([]));
    }
);

both!(
    staff_gets_404_for_unknown_inactive_or_malformed_uuid,
    |api, ctx| async move {
        let staff = create_staff(&ctx, &["*"]).await;
        let inactive = create_user(&ctx, &["*"]).await;
        deactivate(&ctx, inactive.uuid()).await;
        let unknown = uuid::Uuid::new_v4().to_string();
        for segment in [
            unknown.as_str(),
            &inactive.uuid().to_string(),
            "not-a-uuid",
            "12345",
        ] {
            let reply = api
                .get(&format!("/api/users/{segment}/"))
                .bearer(&staff.key)
                .send()
                .await;
            reply.assert_not_found();
            let reply = api
                .post(&format!("/api/users/{segment}/scene_personalisation/"))
                .send_json(&staff.key, &json!({"scene": "home", "dashboard": 1}))
                .await;
            reply.assert_not_found();
        }
        // The inactive user was not written to.
        let stored = ctx
            .store
            .user(inactive.uuid())
            .await
            .unwrap()
            .expect("still stored");
        assert!(stored.scene_dashboards.is_empty());
    }
);

both!(push_tokens_only_via_me, |api, ctx| async move {
    let staff = create_staff(&ctx, &["*"]).await;
    let plain = create_user(&ctx, &["*"]).await;
    let victim = create_user(&ctx, &["*"]).await;
    let register = api
        .register_push_token(&victim.key, "victim-token", "ios")
        .await;
    register.assert_status(200);
    let unknown = uuid::Uuid::new_v4().to_string();
    for caller in [&staff, &plain] {
        for target in [
            victim.uuid().to_string(),
            unknown.clone(),
            "not-a-uuid".to_string(),
        ] {
            let reply = api
                .post(&format!("/api/users/{target}/push_tokens/"))
                .send_json(
                    &caller.key,
                    &json!({"token": "intruder", "platform": "ios"}),
                )
                .await;
            reply.assert_forbidden(PUSH_TOKENS_ONLY_ME);
            let reply = api
                .post(&format!("/api/users/{target}/push_tokens/unregister/"))
                .send_json(&caller.key, &json!({"token": "victim-token"}))
                .await;
            reply.assert_forbidden(PUSH_TOKENS_ONLY_ME);
        }
    }
    let tokens = ctx.store.push_tokens_of(victim.uuid()).await.unwrap();
    assert_eq!(
        tokens.iter().map(|t| t.token.as_str()).collect::<Vec<_>>(),
        vec!["victim-token"]
    );
    assert!(push_tokens_of(&ctx, staff.uuid()).await.is_empty());
    assert!(push_tokens_of(&ctx, plain.uuid()).await.is_empty());
});

both!(own_uuid_works_like_me, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let u = user.uuid();
    let reply = api
        .get(&format!("/api/users/{u}/"))
        .bearer(&user.key)
        .send()
        .await;
    assert_eq!(reply.user_object()["uuid"], u.to_string());

    let reply = api
        .post(&format!("/api/users/{u}/scene_personalisation/"))
        .send_json(&user.key, &json!({"scene": "home", "dashboard": 3}))
        .await;
    assert_eq!(
        reply.user_object()["scene_personalisation"],
        json!([{"scene": "home", "dashboard": 3}])
    );

    let reply = api
        .post(&format!("/api/users/{u}/push_tokens/"))
        .send_json(
            &user.key,
            &json!({"token": "own-uuid-token", "platform": "android"}),
        )
        .await;
    reply.assert_status(200);
    assert_eq!(push_tokens_of(&ctx, u).await.len(), 1);
    let reply = api
        .post(&format!("/api/users/{u}/push_tokens/unregister/"))
        .send_json(&user.key, &json!({"token": "own-uuid-token"}))
        .await;
    reply.assert_no_content();
    assert!(push_tokens_of(&ctx, u).await.is_empty());

    let reply = api
        .patch(&format!("/api/users/{u}/"))
        .send_json(&user.key, &json!({"first_name": "Own"}))
        .await;
    assert_eq!(reply.user_object()["first_name"], "Own");
});

/// The keys of a user as stored: (secure_value, user_is_active).
async fn stored_keys(ctx: &shared::Context, uuid: UserId) -> Vec<(String, bool)> {
    let mut keys: Vec<(String, bool)> = ctx
        .store
        .api_keys_of(uuid)
        .await
        .expect("query keys")
        .into_iter()
        .map(|k| (k.secure_value, k.user_is_active))
        .collect();
    keys.sort();
    keys
}

/// Deactivates the user, then checks that all `count` of their keys are still there and
/// every one is inactive.
async fn deactivate_and_check_keys(ctx: &shared::Context, uuid: UserId, count: usize) {
    deactivate(ctx, uuid).await;
    let stored = stored_keys(ctx, uuid).await;
    assert_eq!(stored.len(), count, "no key was added or lost");
    assert!(
        stored.iter().all(|(_, active)| !active),
        "every key is inactive"
    );
}

/// Each of these keys gets a 401.
async fn assert_refused(keys: &[&String]) {
    let api = Api::in_process().await;
    for key in keys {
        api.get(ME)
            .bearer(key)
            .send()
            .await
            .assert_unauthorized("authentication_failed");
    }
}

/// More keys than one transaction takes with the user: the user, its record and the first 98 change
/// together, the rest after, and every one of them ends inactive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivation_reaches_every_key_past_one_transaction() {
    let ctx = context().await;
    let user = create_user(&ctx, &["*"]).await;
    let mut keys = vec![user.key.clone()];
    for _ in 0..104 {
        keys.push(create_key(&ctx, &user.user, &["user:read"]).await);
    }
    assert_eq!(stored_keys(&ctx, user.uuid()).await.len(), 105);
    deactivate_and_check_keys(&ctx, user.uuid(), 105).await;
    let record = ctx
        .store
        .user(user.uuid())
        .await
        .expect("read")
        .expect("user");
    assert!(!record.is_active);
    assert_refused(&[&keys[0], &keys[50], &keys[104]]).await;
}

/// A deactivation that stopped half-way (the user inactive, the keys still live, as an
/// interrupted run of an older tool left it) is finished by running it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivating_again_finishes_a_partial_deactivation() {
    let ctx = context().await;
    let user = create_user(&ctx, &["*"]).await;
    let second = create_key(&ctx, &user.user, &["user:read"]).await;
    // Only the user's own flag, as the older tool wrote it (no route or store method clears
    // it alone, and a put of the whole record would drop the user's list of key hashes,
    // which deactivation reads).
    use aws_sdk_dynamodb::types::AttributeValue;
    ctx.store
        .db
        .update_item()
        .table_name(&ctx.store.tables.users)
        .key("uuid", AttributeValue::S(user.uuid().to_string()))
        .update_expression("SET is_active = :no")
        .expression_attribute_values(":no", AttributeValue::Bool(false))
        .send()
        .await
        .expect("user inactive");
    let stored = stored_keys(&ctx, user.uuid()).await;
    assert!(
        stored.iter().all(|(_, active)| *active),
        "the keys are still live"
    );

    deactivate_and_check_keys(&ctx, user.uuid(), 2).await;
    assert_refused(&[&user.key, &second]).await;
}

/// An unknown user: false, and nothing is written (no user item appears).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivating_an_unknown_user_changes_nothing() {
    let ctx = context().await;
    let uuid = uuid::Uuid::new_v4().to_string();
    assert!(!ctx
        .store
        .deactivate_user(
            UserId::parse(&uuid).expect("a uuid"),
            &admin_event(
                UserId::parse(&uuid).expect("a uuid"),
                shared::security_events::EventKind::UserDeactivated
            )
        )
        .await
        .expect("deactivate"));
    assert!(ctx
        .store
        .user(UserId::parse(&uuid).expect("a uuid"))
        .await
        .expect("read")
        .is_none());
}

/// The key's stored `last_used_at`, if any.
async fn last_used(ctx: &shared::Context, key: &str) -> Option<String> {
    ctx.store
        .api_key(&shared::auth::ApiKeyHash::of(key))
        .await
        .expect("DynamoDB answers")
        .expect("the key exists")
        .last_used_at
}

/// The key's `last_used_at` once it differs from `old`: over HTTP the function notes it just
/// after its response (shared::run).
async fn noted_after(ctx: &shared::Context, key: &str, old: Option<&str>) -> Option<String> {
    eventually(|| last_used(ctx, key), |now| now.as_deref() != old).await
}

/// Sets the key's `last_used_at` as if it was noted `ago_secs` seconds ago.
async fn set_last_used(ctx: &shared::Context, key: &str, ago_secs: u64) -> String {
    let at =
        shared::clock::iso_at_micros((shared::clock::now_secs() - ago_secs) * 1_000_000 + 123_456);
    let hash = shared::auth::ApiKeyHash::of(key);
    let mut record = ctx.store.api_key(&hash).await.unwrap().expect("the key");
    record.last_used_at = Some(at.clone());
    ctx.store
        .db
        .put_item()
        .table_name(&ctx.store.tables.api_keys)
        .set_item(Some(shared::store::to_item(&record).unwrap()))
        .send()
        .await
        .expect("DynamoDB answers");
    at
}

fn secs_of(iso: &str) -> i64 {
    aws_smithy_types::DateTime::from_str(iso, aws_smithy_types::date_time::Format::DateTime)
        .expect("an ISO 8601 time")
        .secs()
}

// PostHog notes a personal API key's last use, at most once an hour; here after the response.
both!(a_key_use_is_noted, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    assert_eq!(last_used(&ctx, &user.key).await, None, "a new key");
    let before = shared::clock::now_secs() as i64;
    let reply = api.get(ME).bearer(&user.key).send().await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let noted = noted_after(&ctx, &user.key, None).await.expect("noted");
    let after = shared::clock::now_secs() as i64;
    assert!((before..=after).contains(&secs_of(&noted)), "{noted}");

    // Noted more than an hour ago: noted again, by a route of another function.
    let old = set_last_used(&ctx, &user.key, 3_700).await;
    let reply = api
        .set_scene(&user.key, &json!({"scene": "s", "dashboard": 1}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let renoted = noted_after(&ctx, &user.key, Some(&old))
        .await
        .expect("noted");
    assert!(secs_of(&renoted) >= after, "{renoted}");
});

/// Within the hour nothing is written (in process, where the work after the response is done
/// when the call returns, so its absence is certain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_used_within_the_hour_is_not_noted_again() {
    let ctx = std::sync::Arc::new(context().await);
    let api = Api::InProcess(ctx.clone());
    let user = create_user(&ctx, &["user:read"]).await;
    let recent = set_last_used(&ctx, &user.key, 3_500).await;
    for _ in 0..3 {
        let reply = api.get(ME).bearer(&user.key).send().await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(last_used(&ctx, &user.key).await, Some(recent));
    // A refused request (missing scope) still authenticated the key: noted once due.
    let old = set_last_used(&ctx, &user.key, 7_200).await;
    let reply = api.patch_me(&user.key, &json!({"first_name": "X"})).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_ne!(last_used(&ctx, &user.key).await, Some(old));
}

/// The note never brings back a key removed meanwhile, and never moves a recent note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noting_a_key_use_is_conditional() {
    let ctx = context().await;
    let now = shared::clock::iso_now();
    let since = shared::clock::iso_at_micros(shared::clock::now_micros() - 3_600_000_000);
    let (gone, _) = shared::auth::generate_api_key();
    let gone = shared::auth::ApiKeyHash::of(&gone);
    assert!(!ctx
        .store
        .note_api_key_used(&gone, &now, &since)
        .await
        .unwrap());
    assert!(
        ctx.store.api_key(&gone).await.unwrap().is_none(),
        "not created"
    );

    let user = create_user(&ctx, &["*"]).await;
    let hash = shared::auth::ApiKeyHash::of(&user.key);
    assert!(
        ctx.store
            .note_api_key_used(&hash, &now, &since)
            .await
            .unwrap(),
        "never noted"
    );
    assert!(
        !ctx.store
            .note_api_key_used(&hash, &now, &since)
            .await
            .unwrap(),
        "just noted"
    );
    assert_eq!(last_used(&ctx, &user.key).await, Some(now));
}
