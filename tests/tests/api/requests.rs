//! API.md §1: bodies, sizes, paths, the fallback route.
use api_tests::*;
use serde_json::json;

/// The routes whose function reads a body, as (method, path) for `@me`.
pub(crate) const BODY_ROUTES: &[(&str, &str)] = &[
    ("POST", UNREGISTER_PUSH_TOKEN),
    ("POST", PUSH_TOKENS),
    ("POST", SCENE),
    ("PATCH", ME),
    ("POST", VERIFY_EMAIL),
];

both!(malformed_json_is_a_parse_error, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    for (method, path) in BODY_ROUTES {
        for body in ["{not json", "{\"token\": ", "{\"a\": 1,}"] {
            let reply = api
                .call(method, path)
                .send_raw(&user.key, "application/json", body)
                .await;
            reply.assert_parse_error();
        }
    }
    assert_eq!(api.me(&user.key).await["first_name"], "Test");
});

both!(
    json_that_is_not_an_object_is_refused,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        for (method, path) in BODY_ROUTES {
            let call = || api.call(method, path);
            let reply = call().send_json(&user.key, &json!(["token", "x"])).await;
            reply.assert_not_a_dictionary("list");
            let reply = call().send_json(&user.key, &json!("text")).await;
            reply.assert_not_a_dictionary("str");
        }
    }
);

both!(form_bodies_are_accepted, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let form = "application/x-www-form-urlencoded";
    let reply = api
        .post(PUSH_TOKENS)
        .send_raw(&user.key, form, "token=form%20token&platform=android")
        .await;
    assert_eq!(reply.ok_json()["platform"], "android");
    let tokens = ctx.store.push_tokens_of(user.uuid()).await.unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].token, "form token");

    let reply = api
        .post(UNREGISTER_PUSH_TOKEN)
        .send_raw(&user.key, form, "token=form+token")
        .await;
    reply.assert_no_content();
    assert!(push_tokens_of(&ctx, user.uuid()).await.is_empty());

    let reply = api
        .post(SCENE)
        .send_raw(&user.key, form, "scene=insights&dashboard=12")
        .await;
    assert_eq!(
        reply.user_object()["scene_personalisation"],
        json!([{"scene": "insights", "dashboard": 12}])
    );

    let reply = api
        .patch(ME)
        .send_raw(
            &user.key,
            form,
            "first_name=Form&anonymize_data=true&theme_mode=dark",
        )
        .await;
    let object = reply.user_object();
    assert_eq!(object["first_name"], "Form");
    assert_eq!(object["anonymize_data"], true);
    assert_eq!(object["theme_mode"], "dark");

    // Field errors are the same as for JSON.
    let reply = api
        .post(UNREGISTER_PUSH_TOKEN)
        .send_raw(&user.key, form, "other=1")
        .await;
    reply.assert_required("token");
});

both!(bodies_over_64_kib_are_refused, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    // Exactly 64 KiB is allowed; one byte more is not.
    let make = |size: usize| {
        let head = "{\"token\": \"limit-token\", \"pad\": \"";
        let tail = "\"}";
        let pad = "a".repeat(size - head.len() - tail.len());
        format!("{head}{pad}{tail}")
    };
    let exact = make(64 * 1024);
    assert_eq!(exact.len(), 65536);
    let reply = api
        .post(UNREGISTER_PUSH_TOKEN)
        .send_raw(&user.key, "application/json", exact)
        .await;
    reply.assert_no_content();

    for (method, path) in BODY_ROUTES.iter().chain(&[("PATCH", CANCEL_EMAIL_CHANGE)]) {
        let reply = api
            .call(method, path)
            .send_raw(&user.key, "application/json", make(64 * 1024 + 1))
            .await;
        reply.assert_request_too_large();
        // 65 KiB of something that is not even JSON: refused before any parsing.
        let reply = api
            .call(method, path)
            .send_raw(&user.key, "application/json", vec![b'{'; 65 * 1024])
            .await;
        reply.assert_request_too_large();
    }
    let reply = api
        .post(SCENE)
        .send_raw(
            &user.key,
            "application/json",
            make(65 * 1024).replace(
                "\"token\": \"limit-token\"",
                "\"scene\": \"s\", \"dashboard\": 1",
            ),
        )
        .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert_eq!(api.me(&user.key).await["scene_personalisation"], json!([]));
});

both!(
    trailing_slash_is_optional_on_every_route,
    |api, ctx| async move {
        let _ = ctx;
        // Without credentials every route's own function answers 401 (the fallback would say
        // 404 or 405), with and without the trailing slash.
        for route in shared::routes::ROUTES {
            let base = route.path.replace("{uuid}", "@me");
            for path in [base.clone(), format!("{base}/")] {
                let call = api.call(route.method, &path);
                let call = if route.method == "GET" {
                    call
                } else {
                    call.json(&json!({}))
                };
                let reply = call.send().await;
                assert_eq!(reply.status, 401, "{} {path}: {}", route.method, reply.body);
                reply.assert_unauthorized("not_authenticated");
            }
        }
    }
);

both!(
    trailing_slash_is_optional_with_credentials,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        for path in ["/api/users/@me", "/api/users/@me/"] {
            let reply = api.get(path).bearer(&user.key).send().await;
            assert_eq!(reply.user_object()["uuid"], user.uuid().to_string());
        }
        for (i, path) in [
            "/api/users/@me/scene_personalisation",
            "/api/users/@me/scene_personalisation/",
        ]
        .iter()
        .enumerate()
        {
            let reply = api
                .post(path)
                .send_json(
                    &user.key,
                    &json!({"scene": format!("s{i}"), "dashboard": i + 1}),
                )
                .await;
            reply.assert_status(200);
        }
        assert_eq!(
            api.me(&user.key).await["scene_personalisation"],
            json!([{"scene": "s0", "dashboard": 1}, {"scene": "s1", "dashboard": 2}])
        );
        for path in ["/api/users/@me/push_tokens", "/api/users/@me/push_tokens/"] {
            let reply = api
                .post(path)
                .send_json(&user.key, &json!({"token": path, "platform": "web"}))
                .await;
            reply.assert_status(200);
        }
        assert_eq!(push_tokens_of(&ctx, user.uuid()).await.len(), 2);
        for (path, token) in [
            (
                "/api/users/@me/push_tokens/unregister",
                "/api/users/@me/push_tokens",
            ),
            (
                "/api/users/@me/push_tokens/unregister/",
                "/api/users/@me/push_tokens/",
            ),
        ] {
            let reply = api
                .post(path)
                .send_json(&user.key, &json!({"token": token}))
                .await;
            reply.assert_no_content();
        }
        assert!(push_tokens_of(&ctx, user.uuid()).await.is_empty());
        for path in ["/api/users/@me", "/api/users/@me/"] {
            let reply = api
                .patch(path)
                .send_json(&user.key, &json!({"last_name": path}))
                .await;
            assert_eq!(reply.user_object()["last_name"], path);
        }
        for path in [
            "/api/users/cancel_email_change_request",
            "/api/users/cancel_email_change_request/",
        ] {
            let reply = api.patch(path).bearer(&user.key).send().await;
            reply.assert_no_email_change_request();
        }
        for path in ["/api/users/verify_email", "/api/users/verify_email/"] {
            let reply = api
                .post(path)
                .send_json(&user.key, &json!({"uuid": user.uuid()}))
                .await;
            reply.assert_required("code");
        }
    }
);

both!(unknown_routes_are_404, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    for path in [
        "/",
        "/api",
        "/api/users",
        "/api/users/",
        "/api/users/@me/nope/",
        "/api/users/@me/push_tokens/unregister/extra/",
        "/api/users/@me/push_tokens/list/",
        "/api/other/",
        "/api/users/@me/scene_personalisation/x",
    ] {
        for method in ["GET", "POST", "PATCH"] {
            let reply = api
                .call(method, path)
                .send_json(&user.key, &json!({}))
                .await;
            reply.assert_not_found();
            // Without credentials too: the fallback does not authenticate.
            let reply = api.call(method, path).send().await;
            reply.assert_not_found();
        }
    }
});

both!(wrong_method_is_405, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    for (method, path) in [
        ("GET", "/api/users/@me/push_tokens/unregister/"),
        ("GET", "/api/users/@me/push_tokens/unregister"),
        ("PATCH", "/api/users/@me/push_tokens/unregister/"),
        ("GET", "/api/users/@me/push_tokens/"),
        ("DELETE", "/api/users/@me/push_tokens/"),
        ("GET", "/api/users/@me/scene_personalisation/"),
        ("PUT", "/api/users/@me/scene_personalisation/"),
        ("GET", "/api/users/cancel_email_change_request/"),
        ("POST", "/api/users/cancel_email_change_request/"),
        ("DELETE", "/api/users/cancel_email_change_request"),
        ("GET", "/api/users/verify_email/"),
        ("PATCH", "/api/users/verify_email/"),
        ("POST", "/api/users/@me/"),
        ("PUT", "/api/users/@me/"),
        ("DELETE", "/api/users/@me"),
    ] {
        let reply = api
            .call(method, path)
            .send_json(&user.key, &json!({}))
            .await;
        reply.assert_method_not_allowed(method);
        let reply = api.call(method, path).send().await;
        reply.assert_method_not_allowed(method);
    }
    // A 405 did nothing.
    let me = api.me(&user.key).await;
    assert_eq!(me["scene_personalisation"], json!([]));
});

both!(unknown_keys_are_ignored, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let extra =
        json!({"token": "k", "platform": "ios", "user": "someone-else", "id": 5, "extra": [1, 2]});
    let reply = api.post(PUSH_TOKENS).send_json(&user.key, &extra).await;
    reply.assert_status(200);
    let reply = api
        .unregister_push_token(
            &user.key,
            &json!({"token": "k", "platform": "ios", "user_uuid": "x"}),
        )
        .await;
    reply.assert_no_content();
    assert!(push_tokens_of(&ctx, user.uuid()).await.is_empty());
    let reply = api
        .set_scene(
            &user.key,
            &json!({"scene": "a", "dashboard": 2, "team": 99, "user": "x"}),
        )
        .await;
    assert_eq!(
        reply.user_object()["scene_personalisation"],
        json!([{"scene": "a", "dashboard": 2}])
    );
    let reply = api
        .patch_me(
            &user.key,
            &json!({"first_name": "K", "no_such_field": true}),
        )
        .await;
    let object = reply.user_object();
    assert_eq!(object["first_name"], "K");
});

both!(success_responses_are_json, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let reply = api.get(ME).bearer(&user.key).send().await;
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let reply = api.register_push_token(&user.key, "j", "ios").await;
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply.assert_status(200);
});

both!(json_with_a_charset_is_json, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let reply = api
        .post(SCENE)
        .send_raw(
            &user.key,
            "application/json; charset=utf-8",
            r#"{"scene": "charset", "dashboard": 8}"#,
        )
        .await;
    assert_eq!(
        reply.user_object()["scene_personalisation"],
        json!([{"scene": "charset", "dashboard": 8}])
    );
});

both!(percent_encoded_me_is_me, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let reply = api.get("/api/users/%40me/").bearer(&user.key).send().await;
    assert_eq!(reply.user_object()["uuid"], user.uuid().to_string());
    let reply = api
        .post("/api/users/%40me/push_tokens/")
        .send_json(&user.key, &json!({"token": "encoded", "platform": "ios"}))
        .await;
    reply.assert_status(200);
    assert_eq!(push_tokens_of(&ctx, user.uuid()).await.len(), 1);
});
