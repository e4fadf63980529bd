//! `GET /api/users/{uuid}/` and the profile fields of `PATCH /api/users/{uuid}/`.
use api_tests::*;
use serde_json::{json, Value};

both!(get_me_is_the_user_object, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let reply = api.get(ME).bearer(&user.key).send().await;
    let object = reply.user_object();
    assert_eq!(object["uuid"], user.uuid().to_string());
    assert_eq!(object["distinct_id"], user.user.distinct_id);
    assert_eq!(object["email"], user.user.email);
    assert_eq!(object["first_name"], "Test");
    assert_eq!(object["last_name"], "User");
    assert_eq!(object["pending_email"], Value::Null);
    assert_eq!(object["is_staff"], false);
    assert_eq!(object["is_2fa_enabled"], false);
    assert_eq!(object["passkeys_enabled_for_2fa"], false);
    assert_eq!(object["scene_personalisation"], json!([]));
    assert_eq!(object["date_joined"], user.user.date_joined);
    assert!(object["notification_settings"].is_object());
    // No write-only field and no secret.
    for hidden in [
        "password",
        "current_password",
        "set_current_organization",
        "set_current_team",
        "is_active",
    ] {
        assert!(object.get(hidden).is_none(), "{hidden} is never returned");
    }
    let staff = create_staff(&ctx, &["*"]).await;
    assert_eq!(api.me(&staff.key).await["is_staff"], true);
});

both!(patch_updates_profile_fields, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let changes = json!({
        "first_name": "Ada",
        "last_name": "Lovelace",
        "theme_mode": "dark",
        "toolbar_mode": "disabled",
        "anonymize_data": true,
        "allow_impersonation": false,
        "hide_mcp_hints": true,
        "allow_sidebar_suggestions": true,
        "shortcut_position": "below",
        "role_at_organization": "engineering",
        "hedgehog_config": {"use_as_profile": true},
        "events_column_config": {"active": ["event", "person"]},
    });
    let reply = api.patch_me(&user.key, &changes).await;
    let object = reply.user_object();
    for (field, value) in changes.as_object().unwrap() {
        assert_eq!(&object[field], value, "{field} in the response");
    }
    let stored = api.me(&user.key).await;
    for (field, value) in changes.as_object().unwrap() {
        assert_eq!(&stored[field], value, "{field} as stored");
    }
    assert_eq!(stored["email"], user.user.email);
    // A second, partial update leaves the others as they were.
    let reply = api
        .patch_me(
            &user.key,
            &json!({"theme_mode": "light", "anonymize_data": false}),
        )
        .await;
    let object = reply.user_object();
    assert_eq!(object["theme_mode"], "light");
    assert_eq!(object["anonymize_data"], false);
    assert_eq!(object["first_name"], "Ada");
    assert_eq!(object["hide_mcp_hints"], true);
    let stored = api.me(&user.key).await;
    assert_eq!(stored["theme_mode"], "light");
    assert_eq!(stored["first_name"], "Ada");
    // theme_mode may be cleared.
    let reply = api.patch_me(&user.key, &json!({"theme_mode": null})).await;
    assert_eq!(reply.user_object()["theme_mode"], Value::Null);
});

both!(patch_ignores_read_only_fields, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let before = api.me(&user.key).await;
    let forged = json!({
        "is_staff": true,
        "uuid": uuid::Uuid::new_v4().to_string(),
        "distinct_id": "forged",
        "date_joined": "2000-01-01T00:00:00Z",
        "pending_email": "forged@example.com",
        "is_2fa_enabled": true,
        "is_email_verified": true,
        "scene_personalisation": [{"scene": "x", "dashboard": 1}],
        "is_active": false,
        "first_name": "Changed",
    });
    let reply = api.patch_me(&user.key, &forged).await;
    let object = reply.user_object();
    assert_eq!(object["first_name"], "Changed");
    let after = api.me(&user.key).await;
    for field in [
        "is_staff",
        "uuid",
        "distinct_id",
        "date_joined",
        "pending_email",
        "is_2fa_enabled",
        "is_email_verified",
        "scene_personalisation",
        "email",
    ] {
        assert_eq!(object[field], before[field], "{field} in the response");
        assert_eq!(after[field], before[field], "{field} as stored");
    }
    assert_eq!(after["first_name"], "Changed");
    let stored = ctx.store.user(user.uuid()).await.unwrap().unwrap();
    assert!(!stored.is_staff);
    assert!(stored.is_active);
    // No email-change request was opened by `pending_email`.
    assert!(mail_to("forged@example.com").await.is_empty());
});

both!(
    patch_validates_choices_and_booleans,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        // Each bad field comes with a good one, which must not be applied either.
        let patch = |mut body: Value| {
            body["last_name"] = json!("ShouldNotStick");
            let (api, key) = (api.clone(), user.key.clone());
            async move { api.patch_me(&key, &body).await }
        };
        for (field, value) in [
            ("theme_mode", "purple"),
            ("toolbar_mode", "sometimes"),
            ("shortcut_position", "left"),
        ] {
            patch(json!({ field: value }))
                .await
                .assert_invalid_choice(field, value);
        }
        for (field, value) in [
            ("anonymize_data", json!("maybe")),
            ("allow_impersonation", json!([true])),
        ] {
            patch(json!({ field: value })).await.assert_invalid(
                field,
                "invalid_input",
                "Must be a valid boolean.",
            );
        }
        patch(json!({"hide_mcp_hints": null}))
            .await
            .assert_null("hide_mcp_hints");
        patch(json!({"first_name": "x".repeat(151)}))
            .await
            .assert_max_length("first_name", 150);
        let after = api.me(&user.key).await;
        assert_eq!(after["last_name"], "User");
        assert_eq!(after["theme_mode"], Value::Null);
        assert_eq!(after["anonymize_data"], false);
        assert_eq!(after["first_name"], "Test");
    }
);

both!(
    patch_with_empty_body_returns_the_user,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let before = api.me(&user.key).await;
        let reply = api.patch_me(&user.key, &json!({})).await;
        assert_eq!(reply.user_object(), before);
        let reply = api.patch(ME).bearer(&user.key).send().await;
        assert_eq!(reply.user_object(), before);
    }
);

both!(json_settings_are_capped_at_16_kib, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let big = json!({"accessories": "x".repeat(17 * 1024)});
    api.patch_me(
        &user.key,
        &json!({"hedgehog_config": big, "first_name": "Nope"}),
    )
    .await
    .assert_setting_too_large("hedgehog_config");
    let me = api.get(ME).bearer(&user.key).send().await.json();
    assert_eq!(me["hedgehog_config"], Value::Null, "nothing changed");
    assert_ne!(me["first_name"], "Nope", "nothing changed");
    let fits = json!({"accessories": "x".repeat(15 * 1024)});
    let reply = api
        .patch_me(&user.key, &json!({"hedgehog_config": fits}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["hedgehog_config"], fits);
});
