//! Push tokens: `POST /api/users/{uuid}/push_tokens/` and `.../push_tokens/unregister/`.
use api_tests::*;
use serde_json::{json, Value};

async fn register(api: &Api, key: &str, token: &str, platform: &str) -> Value {
    api.register_push_token(key, token, platform)
        .await
        .ok_json()
}

fn is_iso8601(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (text.ends_with('Z') || text.contains('+'))
}

both!(
    register_returns_the_row_without_the_token,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let body = register(&api, &user.key, "secret-device-token", "ios").await;
        let keys: Vec<&str> = {
            let mut k: Vec<&str> = body
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            k.sort();
            k
        };
        assert_eq!(keys, vec!["created_at", "id", "last_seen_at", "platform"]);
        assert_eq!(body["platform"], "ios");
        assert!(
            uuid::Uuid::parse_str(body["id"].as_str().unwrap()).is_ok(),
            "{body}"
        );
        assert!(is_iso8601(body["created_at"].as_str().unwrap()), "{body}");
        assert!(is_iso8601(body["last_seen_at"].as_str().unwrap()), "{body}");
        assert!(
            !body.to_string().contains("secret-device-token"),
            "the token is not echoed"
        );
        let rows = ctx.store.push_tokens_of(user.uuid()).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].token, "secret-device-token");
        assert_eq!(rows[0].platform, "ios");
        assert_eq!(rows[0].id, body["id"].as_str().unwrap());
    }
);

both!(same_token_again_updates_platform, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let first = register(&api, &user.key, "device", "ios").await;
    let second = register(&api, &user.key, "device", "android").await;
    assert_eq!(second["id"], first["id"], "the same row");
    assert_eq!(second["created_at"], first["created_at"]);
    assert_eq!(second["platform"], "android");
    assert!(second["last_seen_at"].as_str().unwrap() >= first["last_seen_at"].as_str().unwrap());
    let rows = ctx.store.push_tokens_of(user.uuid()).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].platform, "android");
    assert!(rows[0].last_seen_micros > 0);
});

both!(
    register_validates_token_and_platform,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let register_body = |body: Value| {
            let (api, key) = (api.clone(), user.key.clone());
            async move { api.post(PUSH_TOKENS).send_json(&key, &body).await }
        };
        let long = "x".repeat(513);
        register_body(json!({"platform": "ios"}))
            .await
            .assert_required("token");
        for blank in ["", "   "] {
            register_body(json!({"token": blank, "platform": "ios"}))
                .await
                .assert_blank("token");
        }
        register_body(json!({"token": null, "platform": "ios"}))
            .await
            .assert_null("token");
        register_body(json!({"token": long, "platform": "ios"}))
            .await
            .assert_max_length("token", 512);
        register_body(json!({"token": "t"}))
            .await
            .assert_required("platform");
        for other in ["blackberry", "IOS"] {
            register_body(json!({"token": "t", "platform": other}))
                .await
                .assert_invalid_choice("platform", other);
        }
        register_body(json!({"token": "t", "platform": null}))
            .await
            .assert_null("platform");
        assert!(
            push_tokens_of(&ctx, user.uuid()).await.is_empty(),
            "nothing was registered"
        );
        // Every platform of the contract is accepted, and 512 characters are fine.
        for platform in ["ios", "android", "web"] {
            assert_eq!(
                register(&api, &user.key, platform, platform).await["platform"],
                platform
            );
        }
        register(&api, &user.key, &"y".repeat(512), "web").await;
        assert_eq!(push_tokens_of(&ctx, user.uuid()).await.len(), 4);
    }
);

both!(
    twenty_first_token_evicts_the_least_recently_seen,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let names: Vec<String> = (1..=20).map(|i| format!("token-{i:02}")).collect();
        for name in &names {
            register(&api, &user.key, name, "ios").await;
        }
        assert_eq!(push_tokens_of(&ctx, user.uuid()).await, names);
        // Seeing the 1st again makes the 2nd the least recently seen.
        register(&api, &user.key, "token-01", "android").await;
        assert_eq!(push_tokens_of(&ctx, user.uuid()).await.len(), 20);
        register(&api, &user.key, "token-21", "web").await;
        let now = push_tokens_of(&ctx, user.uuid()).await;
        assert_eq!(now.len(), 20);
        assert!(
            !now.contains(&"token-02".to_string()),
            "the 2nd was evicted: {now:?}"
        );
        assert!(now.contains(&"token-01".to_string()));
        assert!(now.contains(&"token-21".to_string()));
        let mut expected: Vec<String> =
            names.iter().filter(|n| *n != "token-02").cloned().collect();
        expected.push("token-21".into());
        expected.sort();
        assert_eq!(now, expected);
        // And the next one evicts the 3rd.
        register(&api, &user.key, "token-22", "web").await;
        let now = push_tokens_of(&ctx, user.uuid()).await;
        assert_eq!(now.len(), 20);
        assert!(!now.contains(&"token-03".to_string()), "{now:?}");
        assert!(now.contains(&"token-22".to_string()));
    }
);

both!(the_cap_is_per_user, |api, ctx| async move {
    let a = create_user(&ctx, &["*"]).await;
    let b = create_user(&ctx, &["*"]).await;
    register(&api, &b.key, "b-token", "ios").await;
    for i in 0..21 {
        register(&api, &a.key, &format!("a-{i:02}"), "ios").await;
    }
    assert_eq!(push_tokens_of(&ctx, a.uuid()).await.len(), 20);
    assert_eq!(
        push_tokens_of(&ctx, b.uuid()).await,
        vec!["b-token".to_string()]
    );
});

both!(
    unregister_deletes_only_the_callers_row,
    |api, ctx| async move {
        let me = create_user(&ctx, &["*"]).await;
        let other = create_user(&ctx, &["*"]).await;
        register(&api, &me.key, "shared-token", "ios").await;
        register(&api, &me.key, "keep-me", "ios").await;
        register(&api, &other.key, "shared-token", "android").await;
        let reply = api
            .unregister_push_token(&me.key, &json!({"token": "shared-token"}))
            .await;
        reply.assert_no_content();
        assert_eq!(
            push_tokens_of(&ctx, me.uuid()).await,
            vec!["keep-me".to_string()]
        );
        let others = ctx.store.push_tokens_of(other.uuid()).await.unwrap();
        assert_eq!(
            others.len(),
            1,
            "another user's row with the same token is untouched"
        );
        assert_eq!(others[0].token, "shared-token");
        assert_eq!(others[0].platform, "android");
    }
);

both!(unregister_unknown_token_is_204, |api, ctx| async move {
    let me = create_user(&ctx, &["*"]).await;
    register(&api, &me.key, "known", "web").await;
    let reply = api
        .unregister_push_token(&me.key, &json!({"token": "never-registered"}))
        .await;
    reply.assert_no_content();
    assert_eq!(
        push_tokens_of(&ctx, me.uuid()).await,
        vec!["known".to_string()]
    );
    // Twice the same token: 204 both times.
    for _ in 0..2 {
        let reply = api
            .unregister_push_token(&me.key, &json!({"token": "known"}))
            .await;
        reply.assert_no_content();
    }
    assert!(push_tokens_of(&ctx, me.uuid()).await.is_empty());
    // A user with no tokens at all.
    let empty = create_user(&ctx, &["*"]).await;
    let reply = api
        .unregister_push_token(&empty.key, &json!({"token": "x"}))
        .await;
    reply.assert_no_content();
});

both!(unregister_matches_case_sensitively, |api, ctx| async move {
    let me = create_user(&ctx, &["*"]).await;
    register(&api, &me.key, "AbCdEf", "ios").await;
    for wrong in ["abcdef", "ABCDEF", "AbCdE", "AbCdEf0"] {
        let reply = api
            .unregister_push_token(&me.key, &json!({"token": wrong}))
            .await;
        reply.assert_no_content();
        assert_eq!(
            push_tokens_of(&ctx, me.uuid()).await,
            vec!["AbCdEf".to_string()],
            "{wrong} must not match"
        );
    }
    let reply = api
        .unregister_push_token(&me.key, &json!({"token": "AbCdEf"}))
        .await;
    reply.assert_no_content();
    assert!(push_tokens_of(&ctx, me.uuid()).await.is_empty());
});

both!(
    unregister_takes_numbers_as_strings_and_trims,
    |api, ctx| async move {
        let me = create_user(&ctx, &["*"]).await;
        register(&api, &me.key, "1234567", "android").await;
        register(&api, &me.key, "padded", "android").await;
        let reply = api
            .unregister_push_token(&me.key, &json!({"token": 1234567}))
            .await;
        reply.assert_no_content();
        assert_eq!(
            push_tokens_of(&ctx, me.uuid()).await,
            vec!["padded".to_string()]
        );
        let reply = api
            .unregister_push_token(&me.key, &json!({"token": "  padded \n"}))
            .await;
        reply.assert_no_content();
        assert!(push_tokens_of(&ctx, me.uuid()).await.is_empty());
        // A numeric token registers as its text too.
        let reply = api
            .post(PUSH_TOKENS)
            .send_json(&me.key, &json!({"token": 98765, "platform": "ios"}))
            .await;
        reply.assert_status(200);
        assert_eq!(
            push_tokens_of(&ctx, me.uuid()).await,
            vec!["98765".to_string()]
        );
    }
);

both!(unregister_validates_the_token, |api, ctx| async move {
    let me = create_user(&ctx, &["*"]).await;
    let long = "z".repeat(513);
    register(&api, &me.key, &"z".repeat(512), "ios").await;
    let unregister = |body: Value| {
        let (api, key) = (api.clone(), me.key.clone());
        async move { api.unregister_push_token(&key, &body).await }
    };
    for missing in [json!({}), json!({"platform": "ios"})] {
        unregister(missing).await.assert_required("token");
    }
    for blank in ["", "  \t "] {
        unregister(json!({"token": blank}))
            .await
            .assert_blank("token");
    }
    unregister(json!({"token": null}))
        .await
        .assert_null("token");
    unregister(json!({"token": long}))
        .await
        .assert_max_length("token", 512);
    // No body at all is a missing token.
    let reply = api.post(UNREGISTER_PUSH_TOKEN).bearer(&me.key).send().await;
    reply.assert_required("token");
    assert_eq!(
        push_tokens_of(&ctx, me.uuid()).await.len(),
        1,
        "nothing was deleted"
    );
    // Exactly 512 characters is valid and deletes the row.
    let reply = api
        .unregister_push_token(&me.key, &json!({"token": "z".repeat(512)}))
        .await;
    reply.assert_no_content();
    assert!(push_tokens_of(&ctx, me.uuid()).await.is_empty());
});

both!(
    concurrent_registrations_never_exceed_the_cap,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let register_all = |names: Vec<String>| {
            let api = api.clone();
            let key = user.key.clone();
            async move {
                let calls = names.into_iter().map(|name| {
                    let api = api.clone();
                    let key = key.clone();
                    async move {
                        let reply = api
                            .post(PUSH_TOKENS)
                            .send_json(&key, &json!({"token": name, "platform": "ios"}))
                            .await;
                        (name, reply)
                    }
                });
                let handles: Vec<_> = calls.map(tokio::spawn).collect();
                let mut out = Vec::new();
                for h in handles {
                    out.push(h.await.expect("task"));
                }
                out
            }
        };
        // 12 at once: no eviction, so every accepted token is there and nothing else.
        let first: Vec<String> = (0..12).map(|i| format!("c1-{i:02}")).collect();
        let replies = register_all(first).await;
        let mut accepted = Vec::new();
        for (name, reply) in &replies {
            match reply.status {
                200 => accepted.push(name.clone()),
                // Persistent contention may ask the client to retry; never a 5xx.
                429 => assert!(reply.header("retry-after").is_some(), "{}", reply.body),
                other => panic!("{name}: {other} {}", reply.body),
            }
        }
        accepted.sort();
        assert!(!accepted.is_empty());
        assert_eq!(
            push_tokens_of(&ctx, user.uuid()).await,
            accepted,
            "no accepted token is lost"
        );
        // 15 more at once: the cap holds.
        let second: Vec<String> = (0..15).map(|i| format!("c2-{i:02}")).collect();
        let replies = register_all(second).await;
        let mut total = accepted.len();
        for (name, reply) in &replies {
            match reply.status {
                200 => total += 1,
                429 => {}
                other => panic!("{name}: {other} {}", reply.body),
            }
        }
        let now = push_tokens_of(&ctx, user.uuid()).await;
        assert_eq!(now.len(), total.min(20), "{now:?}");
    }
);

both!(
    concurrent_registrations_of_one_token_make_one_row,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let api = api.clone();
                let key = user.key.clone();
                tokio::spawn(async move {
                    let platform = ["ios", "android", "web"][i % 3];
                    api.post(PUSH_TOKENS)
                        .send_json(&key, &json!({"token": "same", "platform": platform}))
                        .await
                })
            })
            .collect();
        let mut ids = std::collections::BTreeSet::new();
        for h in handles {
            let reply = h.await.expect("task");
            match reply.status {
                200 => {
                    ids.insert(reply.json()["id"].as_str().unwrap().to_string());
                }
                429 => {}
                other => panic!("{other} {}", reply.body),
            }
        }
        let rows = ctx.store.push_tokens_of(user.uuid()).await.unwrap();
        assert_eq!(rows.len(), 1, "one row per token");
        assert_eq!(
            ids.len(),
            1,
            "every accepted registration names that row: {ids:?}"
        );
        assert!(ids.contains(&rows[0].id));
    }
);
