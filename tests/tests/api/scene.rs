//! `POST /api/users/{uuid}/scene_personalisation/`.
use api_tests::*;
use serde_json::{json, Value};

/// Sets the scene's dashboard; returns the user object.
async fn set(api: &Api, key: &str, scene: &str, dashboard: impl Into<Value>) -> Value {
    let body = json!({"scene": scene, "dashboard": dashboard.into()});
    api.set_scene(key, &body).await.user_object()
}

both!(
    sets_replaces_and_appends_in_first_set_order,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let object = set(&api, &user.key, "insights", 1).await;
        assert_eq!(object["uuid"], user.uuid().to_string());
        assert_eq!(
            object["scene_personalisation"],
            json!([{"scene": "insights", "dashboard": 1}])
        );

        let object = set(&api, &user.key, "dashboards", 2).await;
        assert_eq!(
            object["scene_personalisation"],
            json!([{"scene": "insights", "dashboard": 1}, {"scene": "dashboards", "dashboard": 2}])
        );
        // Replacing the first scene keeps it first.
        let object = set(&api, &user.key, "insights", 3).await;
        assert_eq!(
            object["scene_personalisation"],
            json!([{"scene": "insights", "dashboard": 3}, {"scene": "dashboards", "dashboard": 2}])
        );
        // A new scene is appended.
        let object = set(&api, &user.key, "persons", 4).await;
        let expected = json!([
            {"scene": "insights", "dashboard": 3},
            {"scene": "dashboards", "dashboard": 2},
            {"scene": "persons", "dashboard": 4},
        ]);
        assert_eq!(object["scene_personalisation"], expected);
        // What GET shows is what was stored.
        assert_eq!(api.me(&user.key).await["scene_personalisation"], expected);
        // The rest of the user object is unchanged.
        assert_eq!(object["email"], user.user.email);
        assert_eq!(object["first_name"], "Test");
        assert_eq!(object["pending_email"], Value::Null);
        assert_eq!(object["is_2fa_enabled"], false);
    }
);

both!(
    dashboard_numeric_string_is_accepted,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let object = set(&api, &user.key, "home", "17").await;
        assert_eq!(
            object["scene_personalisation"],
            json!([{"scene": "home", "dashboard": 17}])
        );
        // Any positive id: this service does not own dashboards.
        let object = set(&api, &user.key, "home", 9007199254740993u64).await;
        assert_eq!(
            object["scene_personalisation"],
            json!([{"scene": "home", "dashboard": 9007199254740993u64}])
        );
    }
);

both!(
    dashboard_of_another_type_is_incorrect_type,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        for (value, kind) in [
            (json!("abc"), "str"),
            (json!("12a"), "str"),
            (json!(true), "bool"),
            (json!(false), "bool"),
            (json!([1]), "list"),
            (json!({"id": 1}), "dict"),
        ] {
            let reply = api
                .set_scene(&user.key, &json!({"scene": "home", "dashboard": value}))
                .await;
            reply.assert_invalid(
                "dashboard",
                "incorrect_type",
                &format!("Incorrect type. Expected pk value, received {kind}."),
            );
        }
        assert_eq!(api.me(&user.key).await["scene_personalisation"], json!([]));
    }
);

both!(
    dashboard_null_and_non_positive_are_refused,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let reply = api
            .set_scene(&user.key, &json!({"scene": "home", "dashboard": null}))
            .await;
        reply.assert_null("dashboard");
        // Not a positive integer: a 400 on the field (the contract does not name the code).
        for value in [json!(0), json!(-3), json!("0"), json!("-1")] {
            let reply = api
                .set_scene(&user.key, &json!({"scene": "home", "dashboard": value}))
                .await;
            assert_eq!(reply.status, 400, "{value}: {}", reply.body);
            let body = reply.json();
            assert_eq!(body["type"], "validation_error");
            assert_eq!(body["attr"], "dashboard");
        }
        assert_eq!(api.me(&user.key).await["scene_personalisation"], json!([]));
    }
);

both!(missing_fields_are_request_errors, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let reply = api.set_scene(&user.key, &json!({"scene": "home"})).await;
    reply.assert_validation_error("invalid_input", "Dashboard must be provided.");
    let reply = api.set_scene(&user.key, &json!({"dashboard": 1})).await;
    reply.assert_validation_error("invalid_input", "Scene must be provided.");
    // Both missing: the dashboard is checked first.
    let reply = api.set_scene(&user.key, &json!({})).await;
    reply.assert_validation_error("invalid_input", "Dashboard must be provided.");
    let reply = api.post(SCENE).bearer(&user.key).send().await;
    reply.assert_validation_error("invalid_input", "Dashboard must be provided.");
    assert_eq!(api.me(&user.key).await["scene_personalisation"], json!([]));
});

both!(scene_must_be_short_and_not_blank, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    for scene in ["", "   "] {
        let reply = api
            .set_scene(&user.key, &json!({"scene": scene, "dashboard": 1}))
            .await;
        reply.assert_blank("scene");
    }
    let reply = api
        .set_scene(
            &user.key,
            &json!({"scene": "s".repeat(201), "dashboard": 1}),
        )
        .await;
    reply.assert_max_length("scene", 200);
    let reply = api
        .set_scene(&user.key, &json!({"scene": null, "dashboard": 1}))
        .await;
    reply.assert_null("scene");
    assert_eq!(api.me(&user.key).await["scene_personalisation"], json!([]));
    // 200 characters is fine.
    let long = "s".repeat(200);
    let object = set(&api, &user.key, &long, 5).await;
    assert_eq!(
        object["scene_personalisation"],
        json!([{"scene": long, "dashboard": 5}])
    );
});

both!(scene_names_are_kept_verbatim, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    // Names with characters that mean something to DynamoDB's expression syntax.
    let names = [
        "a.b",
        "#x",
        ":v",
        "with space",
        "ünïcode",
        "[0]",
        "a$b",
        "\u{1F600}x",
    ];
    for (i, name) in names.iter().enumerate() {
        set(&api, &user.key, name, i + 1).await;
    }
    let expected: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"scene": n, "dashboard": i + 1}))
        .collect();
    assert_eq!(
        api.me(&user.key).await["scene_personalisation"],
        Value::Array(expected)
    );
});

both!(
    scene_of_200_wide_characters_is_accepted,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        // 200 characters of 4 bytes each: the limit counts characters.
        let wide = "\u{1F600}".repeat(200);
        let object = set(&api, &user.key, &wide, 1).await;
        assert_eq!(
            object["scene_personalisation"],
            json!([{"scene": wide, "dashboard": 1}])
        );
        let reply = api
            .set_scene(
                &user.key,
                &json!({"scene": "\u{1F600}".repeat(201), "dashboard": 1}),
            )
            .await;
        reply.assert_max_length("scene", 200);
    }
);

/// The number of scenes is capped, so no sequence of requests can grow the user's item past
/// DynamoDB's limit (which would be a 500); an existing scene can still be changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenes_are_capped_at_200() {
    let ctx = std::sync::Arc::new(context().await);
    let api = Api::InProcess(ctx.clone());
    let user = create_user(&ctx, &["*"]).await;
    for i in 0..shared::store::users::MAX_SCENES {
        let scene = format!("scene-{i:03}");
        set(&api, &user.key, &scene, i + 1).await;
    }
    api.set_scene(&user.key, &json!({"scene": "one-too-many", "dashboard": 1}))
        .await
        .assert_invalid(
            "scene",
            "invalid_input",
            "A user can personalise at most 200 scenes.",
        );
    let scenes = set(&api, &user.key, "scene-000", 999).await["scene_personalisation"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(scenes.len(), 200);
    assert_eq!(
        scenes[0],
        json!({"scene": "scene-000", "dashboard": 999}),
        "replaced in place"
    );
}
