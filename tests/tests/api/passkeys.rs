//! Passkeys (issue 16): registration, verification, management, passkey 2FA and the sign-in
//! check by passkey, with webauthn-authenticator-rs's software authenticator making every
//! credential and assertion, and every refusal a browser or an attacker could cause.
use api_tests::passkeys::*;
use api_tests::*;
use serde_json::{json, Value};
use shared::throttle::CodeCheck;

const VALIDATION: &str = "validation_error";

#[track_caller]
fn assert_refused(reply: &Reply, code: &str) {
    assert_eq!(reply.status, 400, "{code}: {}", reply.body);
    let body = reply.json();
    assert_eq!(body["type"], VALIDATION, "{}", reply.body);
    assert_eq!(body["code"], code, "{}", reply.body);
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

/// base64url (no padding) of bytes, as WebAuthn's JSON carries them.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | *b as u32) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Clears a user's sign-in failure state (what only a TOTP code's success does in the API).
async fn clear_failures(ctx: &shared::Context, uuid: UserId) {
    ctx.store
        .db
        .delete_item()
        .table_name(&ctx.store.tables.limits)
        .set_key(Some(shared::store::limits::failures_key(
            uuid,
            CodeCheck::SignIn,
        )))
        .send()
        .await
        .expect("clear the failure state");
}

async fn subjects_to(address: &str) -> Vec<String> {
    mail_to(address).await.into_iter().map(|(s, _)| s).collect()
}

/// Waits for a notice with this subject to reach `address` (notices go out after the
/// response).
async fn notice(address: &str, subject: &str) {
    let found = eventually(
        || subjects_to(address),
        |s: &Vec<String>| s.iter().any(|x| x == subject),
    )
    .await;
    assert!(found.iter().any(|x| x == subject), "{subject}: {found:?}");
}

both!(
    registration_options_verification_and_management,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let mut authenticator = Authenticator::new();

        // The creation options: PostHog's shape, bound to the user's uuid, asking for a
        // discoverable credential with user verification.
        let options = api.registration_options(&user.key).await;
        assert_eq!(options["rp"]["id"], "localhost", "{options}");
        assert_eq!(
            options["user"]["id"],
            b64url(user.uuid().as_uuid().as_bytes())
        );
        assert_eq!(options["user"]["name"], user.user.email.as_str());
        assert_eq!(options["user"]["displayName"], "Test User");
        assert_eq!(options["authenticatorSelection"]["residentKey"], "required");
        assert_eq!(
            options["authenticatorSelection"]["requireResidentKey"],
            true
        );
        assert_eq!(
            options["authenticatorSelection"]["userVerification"],
            "required"
        );
        let algs: Vec<i64> = options["pubKeyCredParams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["alg"].as_i64().unwrap())
            .collect();
        assert!(algs.contains(&-7) && algs.contains(&-257), "{algs:?}");
        assert_eq!(options["excludeCredentials"], json!([]));
        assert!(options["challenge"].as_str().unwrap().len() >= 43);

        // Completed: stored unverified, with its label.
        let credential = authenticator.register(&options);
        let mut body = credential.clone();
        body["label"] = json!("My laptop");
        let done = api.complete_registration(&user.key, &body).await.ok_json();
        assert_eq!(done["success"], true);
        let id = done["credential_id"].as_str().unwrap().to_string();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{done}");
        let list = api.passkeys(&user.key).await;
        assert_eq!(list.len(), 1);
        let shown = &list[0];
        let keys: Vec<&str> = shown
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "id",
                "label",
                "created_at",
                "transports",
                "verified",
                "authenticator_type"
            ]
        );
        assert_eq!(shown["id"], id.as_str());
        assert_eq!(shown["label"], "My laptop");
        assert_eq!(shown["verified"], false);
        assert_eq!(shown["authenticator_type"], "unknown");
        // An unverified passkey is not a second factor and not in the exclude list.
        let status = api.two_factor_status(&user.key).await;
        assert_eq!(status["has_passkeys"], false);
        let again = api.registration_options(&user.key).await;
        assert_eq!(again["excludeCredentials"], json!([]));

        // Verified by one assertion; the verified one is then excluded from registrations.
        let verified = api.verify_passkey(&user.key, &id, &mut authenticator).await;
        let verified = verified.ok_json();
        assert_eq!(verified["verified"], true, "{verified}");
        assert_eq!(verified["id"], id.as_str());
        notice(&user.user.email, "A passkey was added to your account").await;
        let again = api.registration_options(&user.key).await;
        assert_eq!(again["excludeCredentials"][0]["id"], credential["id"]);
        assert_eq!(api.two_factor_status(&user.key).await["has_passkeys"], true);
        // Verifying twice is refused.
        assert_refused(
            &api.post(&format!("{CREDENTIALS}{id}/verify/"))
                .bearer(&user.key)
                .send()
                .await,
            "already_verified",
        );

        // Renamed (the label rules are PostHog's), then deleted.
        let renamed = api
            .patch(&format!("{CREDENTIALS}{id}/"))
            .bearer(&user.key)
            .json(&json!({"label": "  Work phone "}))
            .send()
            .await
            .ok_json();
        assert_eq!(renamed["label"], "Work phone");
        for bad in [
            json!({}),
            json!({"label": ""}),
            json!({"label": "x".repeat(201)}),
            json!({"label": ["a"]}),
        ] {
            let reply = api
                .patch(&format!("{CREDENTIALS}{id}/"))
                .bearer(&user.key)
                .json(&bad)
                .send()
                .await;
            assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
            assert_eq!(reply.json()["attr"], "label");
        }
        assert_eq!(api.passkeys(&user.key).await[0]["label"], "Work phone");
        api.delete_passkey(&user.key, &id).await.assert_no_content();
        notice(&user.user.email, "A passkey was removed from your account").await;
        assert!(api.passkeys(&user.key).await.is_empty());
        assert_eq!(
            api.two_factor_status(&user.key).await["has_passkeys"],
            false
        );
        api.delete_passkey(&user.key, &id).await.assert_not_found();
        // A new one can be added again.
        api.add_verified_passkey(&user.key, &mut Authenticator::new())
            .await;
        assert_eq!(api.passkeys(&user.key).await.len(), 1);
    }
);

both!(
    passkey_2fa_needs_a_verified_passkey_and_shows_in_status,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let no_passkeys = |reply: Reply| {
            reply.assert_error(
                400,
                VALIDATION,
                "no_passkeys",
                "You must have at least one passkey set up before enabling passkeys for 2FA.",
                Some("passkeys_enabled_for_2fa"),
            )
        };
        no_passkeys(api.set_passkey_2fa(&user.key, true).await);
        let mut authenticator = Authenticator::new();
        let id = api.add_passkey(&user.key, &mut authenticator).await;
        // An unverified passkey does not count.
        no_passkeys(api.set_passkey_2fa(&user.key, true).await);
        api.verify_passkey(&user.key, &id, &mut authenticator)
            .await
            .assert_status(200);
        let me = api.set_passkey_2fa(&user.key, true).await.ok_json();
        assert_eq!(me["passkeys_enabled_for_2fa"], true);
        assert_eq!(me["is_2fa_enabled"], true);
        notice(&user.user.email, "Passkeys now count as your second factor").await;
        assert_eq!(
            api.two_factor_status(&user.key).await,
            json!({"is_enabled": true, "backup_codes": [], "method": "passkey", "has_passkeys": true,
                   "has_totp": false, "passkeys_enabled_for_2fa": true})
        );
        // TOTP beside it: TOTP is the method, as in PostHog.
        api.enable_2fa(&user.key).await;
        let status = api.two_factor_status(&user.key).await;
        assert_eq!(status["method"], "TOTP");
        assert_eq!(status["passkeys_enabled_for_2fa"], true);
        api.disable_2fa(&user.key).await.assert_status(200);
        assert_eq!(api.two_factor_status(&user.key).await["method"], "passkey");

        // The sign-in check by passkey.
        let reply = api
            .sign_in_with_passkey(&user.key, &mut authenticator)
            .await;
        assert_eq!(
            reply.ok_json(),
            json!({"success": true, "method": "passkey"})
        );

        // Deleting the last verified passkey ends passkey 2FA (the flag stays, in effect only
        // with a verified passkey, as in PostHog).
        api.delete_passkey(&user.key, &id).await.assert_no_content();
        let status = api.two_factor_status(&user.key).await;
        assert_eq!(status["is_enabled"], false, "{status}");
        assert_eq!(status["method"], Value::Null);
        assert_eq!(status["passkeys_enabled_for_2fa"], false);
        assert_eq!(api.me(&user.key).await["is_2fa_enabled"], false);
        assert_refused(
            &api.post(SIGN_IN_BEGIN).bearer(&user.key).send().await,
            "2fa_no_passkeys",
        );
        // Turning it off says so.
        api.add_verified_passkey(&user.key, &mut authenticator)
            .await;
        api.set_passkey_2fa(&user.key, false)
            .await
            .assert_status(200);
        notice(
            &user.user.email,
            "Passkeys no longer count as your second factor",
        )
        .await;
        assert_refused(
            &api.post(SIGN_IN_BEGIN).bearer(&user.key).send().await,
            "2fa_passkeys_disabled",
        );
    }
);

/// A user with a verified passkey and passkey 2FA on, and the authenticator holding it.
async fn passkey_user(api: &Api, ctx: &shared::Context) -> (TestUser, Authenticator) {
    let user = create_user(ctx, &["*"]).await;
    let mut authenticator = Authenticator::new();
    api.add_verified_passkey(&user.key, &mut authenticator)
        .await;
    api.set_passkey_2fa(&user.key, true)
        .await
        .assert_status(200);
    (user, authenticator)
}

both!(each_challenge_is_answered_once, |api, ctx| async move {
    let (user, mut authenticator) = passkey_user(&api, &ctx).await;
    // Sign-in: the same assertion again, and a second answer to the same challenge.
    let options = api.begin_passkey_sign_in(&user.key).await;
    let assertion = authenticator.assert(&options);
    let second = authenticator.assert(&options);
    let send = |body: Value| api.post(SIGN_IN).bearer(&user.key).json(&body).send();
    send(sign_in_body(&assertion)).await.assert_status(200);
    assert_refused(&send(sign_in_body(&assertion)).await, "2fa_no_challenge");
    assert_refused(&send(sign_in_body(&second)).await, "2fa_no_challenge");

    // Registration: a completed ceremony cannot be completed again.
    let options = api.registration_options(&user.key).await;
    let credential = Authenticator::new().register(&options);
    let complete = || {
        api.post(REGISTER_COMPLETE)
            .bearer(&user.key)
            .json(&credential)
            .send()
    };
    complete().await.assert_status(200);
    assert_refused(&complete().await, "no_challenge");

    // A newer begin replaces the older: an answer to the older challenge is no answer to the
    // newer one, which it leaves in place.
    let mut other = Authenticator::new();
    let old = api.registration_options(&user.key).await;
    let new = api.registration_options(&user.key).await;
    let stale = other.register(&old);
    assert_refused(
        &api.complete_registration(&user.key, &stale).await,
        "no_challenge",
    );
    let fresh = other.register(&new);
    api.complete_registration(&user.key, &fresh)
        .await
        .assert_status(200);

    // The same at sign-in: the stale answer is not counted, and the newer one passes.
    let old = api.begin_passkey_sign_in(&user.key).await;
    let new = api.begin_passkey_sign_in(&user.key).await;
    let stale = authenticator.assert(&old);
    assert_refused(&api.sign_in(&user.key, &stale).await, "2fa_no_challenge");
    assert_eq!(
        failures_of(&ctx, user.uuid(), CodeCheck::SignIn)
            .await
            .count,
        0
    );
    let fresh = authenticator.assert(&new);
    api.sign_in(&user.key, &fresh).await.assert_status(200);
});

both!(expired_challenges_are_refused, |api, ctx| async move {
    let (user, mut authenticator) = passkey_user(&api, &ctx).await;
    // Ceremonies expire after five minutes; DynamoDB's TTL removes them lazily, so the
    // check is on read. Each stored ceremony is aged past its expiry before it is answered.
    let expire = |purpose: &'static str| {
        let ctx = ctx.clone();
        let uuid = user.uuid();
        async move {
            ctx.store
                .db
                .update_item()
                .table_name(&ctx.store.tables.passkey_ceremonies)
                .key(
                    "user_uuid",
                    aws_sdk_dynamodb::types::AttributeValue::S(uuid.to_string()),
                )
                .key(
                    "purpose",
                    aws_sdk_dynamodb::types::AttributeValue::S(purpose.into()),
                )
                .update_expression("SET expires_at = :past")
                .condition_expression("attribute_exists(purpose)")
                .expression_attribute_values(
                    ":past",
                    aws_sdk_dynamodb::types::AttributeValue::N(
                        (shared::clock::now_secs() - 1).to_string(),
                    ),
                )
                .send()
                .await
                .expect("the ceremony is stored");
        }
    };
    let options = api.begin_passkey_sign_in(&user.key).await;
    assert_eq!(options["timeout"], 300_000);
    let assertion = authenticator.assert(&options);
    expire("sign_in").await;
    assert_refused(
        &api.sign_in(&user.key, &assertion).await,
        "2fa_no_challenge",
    );
    let options = api.registration_options(&user.key).await;
    let credential = Authenticator::new().register(&options);
    expire("register").await;
    assert_refused(
        &api.complete_registration(&user.key, &credential).await,
        "no_challenge",
    );
    // A refused expired answer charged no failure: nothing about a passkey was checked.
    assert_eq!(
        failures_of(&ctx, user.uuid(), CodeCheck::SignIn)
            .await
            .count,
        0
    );
});

both!(
    wrong_origin_rp_id_or_missing_user_verification_is_refused,
    |api, ctx| async move {
        let (user, mut authenticator) = passkey_user(&api, &ctx).await;
        let origin = web_origin();
        let url = reqwest::Url::parse(&origin).unwrap();
        let port_off = format!(
            "http://localhost:{}",
            url.port_or_known_default().unwrap() % 60000 + 1
        );
        let cases = [
            ("another site", As::origin("https://evil.example")),
            ("another port", As::origin(&port_off)),
            (
                "https for http",
                As::origin(&origin.replacen("http:", "https:", 1)),
            ),
            (
                "another Android app",
                As::origin("android:apk-key-hash:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            ),
            (
                "another RP id",
                As {
                    rp_id: Some("evil.example".into()),
                    ..As::default()
                },
            ),
            (
                "inside a frame of another origin",
                As {
                    cross_origin: true,
                    ..As::default()
                },
            ),
            (
                "no user verification",
                As {
                    user_verified: false,
                    ..As::default()
                },
            ),
        ];
        for (case, how) in &cases {
            // Registration.
            let options = api.registration_options(&user.key).await;
            let credential = Authenticator::new().register_as(&options, how);
            let reply = api.complete_registration(&user.key, &credential).await;
            assert_eq!(reply.status, 400, "{case}: {}", reply.body);
            assert_refused(&reply, "registration_failed");
            // Verification of a new passkey.
            let mut other = Authenticator::new();
            let id = api.add_passkey(&user.key, &mut other).await;
            let options = api.verification_options(&user.key, &id).await;
            let assertion = other.assert_as(&options, how);
            let reply = api.complete_verification(&user.key, &id, &assertion).await;
            assert_eq!(reply.status, 400, "{case}: {}", reply.body);
            assert_refused(&reply, "verification_failed");
            api.delete_passkey(&user.key, &id).await.assert_no_content();
            // The sign-in check: refused, and counted as a failure.
            let before = failures_of(&ctx, user.uuid(), CodeCheck::SignIn)
                .await
                .count;
            let options = api.begin_passkey_sign_in(&user.key).await;
            let assertion = authenticator.assert_as(&options, how);
            let reply = api.sign_in(&user.key, &assertion).await;
            assert_eq!(reply.status, 400, "{case}: {}", reply.body);
            assert_refused(&reply, "2fa_passkey_failed");
            let after = failures_of(&ctx, user.uuid(), CodeCheck::SignIn)
                .await
                .count;
            assert_eq!(after, before + 1, "{case}");
            // Start each case unlocked (five failures lock the check, and a passkey's
            // success does not reset them): the test clears the state itself.
            if after >= 4 {
                clear_failures(&ctx, user.uuid()).await;
            }
        }
        // Only the verified passkey of the first registration remains.
        assert_eq!(api.passkeys(&user.key).await.len(), 1);
    }
);

both!(an_android_app_origin_is_accepted, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let app = As::origin(&android_origin());
    let mut authenticator = Authenticator::new();
    let options = api.registration_options(&user.key).await;
    let credential = authenticator.register_as(&options, &app);
    let id = api
        .complete_registration(&user.key, &credential)
        .await
        .ok_json()["credential_id"]
        .as_str()
        .unwrap()
        .to_string();
    let options = api.verification_options(&user.key, &id).await;
    let assertion = authenticator.assert_as(&options, &app);
    api.complete_verification(&user.key, &id, &assertion)
        .await
        .assert_status(200);
    api.set_passkey_2fa(&user.key, true)
        .await
        .assert_status(200);
    let options = api.begin_passkey_sign_in(&user.key).await;
    let assertion = authenticator.assert_as(&options, &app);
    api.sign_in(&user.key, &assertion).await.assert_status(200);
});

both!(only_ever_the_callers_own_passkeys, |api, ctx| async move {
    let (alice, mut alices) = passkey_user(&api, &ctx).await;
    let bob = create_staff(&ctx, &["*"]).await;
    let mut bobs = Authenticator::new();
    let alices_id = api.passkeys(&alice.key).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Bob (staff, even) can neither see nor touch Alice's passkey.
    assert!(api.passkeys(&bob.key).await.is_empty());
    for (method, path) in [
        ("PATCH", format!("{CREDENTIALS}{alices_id}/")),
        ("DELETE", format!("{CREDENTIALS}{alices_id}/")),
        ("POST", format!("{CREDENTIALS}{alices_id}/verify/")),
    ] {
        api.call(method, &path)
            .bearer(&bob.key)
            .json(&json!({"label": "mine"}))
            .send()
            .await
            .assert_not_found();
    }
    // Nor begin Alice's sign-in check.
    let reply = api
        .post(&format!(
            "/api/users/{}/two_factor_passkey_begin/",
            alice.uuid()
        ))
        .bearer(&bob.key)
        .send()
        .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    // Bob's assertion of his own challenge, in Alice's sign-in check: not her challenge, so
    // it takes nothing and is not counted.
    let bobs_id = api.add_verified_passkey(&bob.key, &mut bobs).await;
    api.set_passkey_2fa(&bob.key, true).await.assert_status(200);
    let bobs_options = api.begin_passkey_sign_in(&bob.key).await;
    let bobs_assertion = bobs.assert(&bobs_options);
    let alices_options = api.begin_passkey_sign_in(&alice.key).await;
    let reply = api.sign_in(&alice.key, &bobs_assertion).await;
    assert_refused(&reply, "2fa_no_challenge");
    // Bob's passkey answering Alice's challenge: not one of her passkeys, and counted.
    let mut forged = alices_options.clone();
    forged["allowCredentials"] = bobs_options["allowCredentials"].clone();
    let reply = api.sign_in(&alice.key, &bobs.assert(&forged)).await;
    assert_refused(&reply, "2fa_invalid_passkey");
    assert_eq!(
        failures_of(&ctx, alice.uuid(), CodeCheck::SignIn)
            .await
            .count,
        1
    );
    // Alice's passkey answering Bob's challenge: refused the same way.
    let bobs_options = api.begin_passkey_sign_in(&bob.key).await;
    let mut forged = bobs_options.clone();
    forged["allowCredentials"] = alices_options["allowCredentials"].clone();
    let reply = api.sign_in(&bob.key, &alices.assert(&forged)).await;
    assert_refused(&reply, "2fa_invalid_passkey");
    // A verification begun for one passkey cannot complete another's.
    let mut third = Authenticator::new();
    let unverified = api.add_passkey(&bob.key, &mut third).await;
    let options = api.verification_options(&bob.key, &unverified).await;
    let assertion = third.assert(&options);
    let reply = api
        .complete_verification(&bob.key, &bobs_id, &assertion)
        .await;
    assert_refused(&reply, "credential_mismatch");
    // An unverified passkey is not a second factor: it is not offered, and its assertion
    // of a sign-in challenge (the options forged to name it) is refused.
    let options = api.begin_passkey_sign_in(&bob.key).await;
    assert_eq!(options["allowCredentials"].as_array().unwrap().len(), 1);
    assert_eq!(api.passkeys(&bob.key).await.len(), 2);
    let unverified_options = api.verification_options(&bob.key, &unverified).await;
    let mut forged = options.clone();
    forged["allowCredentials"] = unverified_options["allowCredentials"].clone();
    let reply = api.sign_in(&bob.key, &third.assert(&forged)).await;
    assert_refused(&reply, "2fa_invalid_passkey");
    // Alice's passkey untouched.
    assert_eq!(api.passkeys(&alice.key).await[0]["id"], alices_id.as_str());
});

both!(a_credential_is_registered_once, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let options = api.registration_options(&user.key).await;
    let credential = Authenticator::new().register(&options);
    api.complete_registration(&user.key, &credential)
        .await
        .assert_status(200);
    // Another user presenting the same attestation: the challenge is not theirs.
    let other = create_user(&ctx, &["*"]).await;
    api.post(REGISTER_BEGIN)
        .bearer(&other.key)
        .send()
        .await
        .assert_status(200);
    assert_refused(
        &api.complete_registration(&other.key, &credential).await,
        "no_challenge",
    );
    assert!(api.passkeys(&other.key).await.is_empty());
    // And were a ceremony to let the same credential id through again (to anyone), its
    // claim refuses it, in the same transaction as the passkey.
    let mut copy = ctx.store.passkeys_of(user.uuid()).await.unwrap()[0].clone();
    copy.user_uuid = other.uuid();
    copy.id = shared::passkeys::PasskeyId::random();
    assert_eq!(
        ctx.store.add_passkey(&copy, &[]).await.unwrap(),
        shared::store::passkeys::AddPasskey::AlreadyRegistered
    );
    assert!(api.passkeys(&other.key).await.is_empty());
    assert_eq!(
        ctx.store
            .user(other.uuid())
            .await
            .unwrap()
            .unwrap()
            .passkey_count,
        0
    );
});

both!(
    malformed_bodies_are_400s_and_change_nothing,
    |api, ctx| async move {
        let (user, _) = passkey_user(&api, &ctx).await;
        let id = api.passkeys(&user.key).await[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let bodies = [
            json!({}),
            json!({"id": "x"}),
            json!({"id": 1, "rawId": [], "type": "public-key", "response": "no"}),
            json!({"id": "AAAA", "rawId": "!!!", "type": "public-key", "response": {"clientDataJSON": "e30", "attestationObject": "oA"}}),
            json!({"id": "AAAA", "rawId": "AAAA", "type": "public-key", "response": {"clientDataJSON": "e30", "attestationObject": "oA"}}),
            json!({"id": "AAAA", "rawId": "AAAA", "type": "public-key", "response": {"clientDataJSON": "e30", "authenticatorData": "AA", "signature": "AA"}}),
            json!([1, 2, 3]),
            json!("text"),
        ];
        for path in [
            REGISTER_COMPLETE.to_string(),
            format!("{CREDENTIALS}{id}/verify_complete/"),
        ] {
            for body in &bodies {
                // A ceremony is in flight each time, so the body itself is what is refused.
                api.post(REGISTER_BEGIN)
                    .bearer(&user.key)
                    .send()
                    .await
                    .assert_status(200);
                let reply = api.post(&path).bearer(&user.key).json(body).send().await;
                assert_eq!(reply.status, 400, "{path} {body}: {}", reply.body);
                assert!(reply.json()["code"].is_string(), "{}", reply.body);
            }
            let reply = api
                .post(&path)
                .bearer(&user.key)
                .raw("application/json", "{not json")
                .send()
                .await;
            assert_eq!(reply.status, 400, "{path}: {}", reply.body);
        }
        // The sign-in check's passkey body.
        for body in [
            json!({"credential_id": "AAAA"}),
            json!({"response": {}}),
            json!({"credential_id": "", "response": {}}),
            json!({"credential_id": 5, "response": {}}),
            json!({"credential_id": "AAAA", "response": "x"}),
            json!({"credential_id": "not base64!", "response": {"clientDataJSON": "e30", "authenticatorData": "AA", "signature": "AA"}}),
            json!({"credential_id": "AAAA", "response": {"clientDataJSON": "e30", "authenticatorData": "AA", "signature": "AA"}}),
        ] {
            api.begin_passkey_sign_in(&user.key).await;
            let reply = api.post(SIGN_IN).bearer(&user.key).json(&body).send().await;
            assert_eq!(reply.status, 400, "{body}: {}", reply.body);
            assert!(reply.json()["code"].is_string(), "{}", reply.body);
        }
        // Ids that are not passkey ids are 404s.
        for bad in ["1", "not-a-uuid", "00000000-0000-0000-0000-000000000000"] {
            api.delete_passkey(&user.key, bad).await.assert_not_found();
        }
        let list = api.passkeys(&user.key).await;
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["verified"], true);
        assert_eq!(api.two_factor_status(&user.key).await["method"], "passkey");
    }
);

both!(a_counter_that_goes_back_is_refused, |api, ctx| async move {
    let (user, mut authenticator) = passkey_user(&api, &ctx).await;
    api.sign_in_with_passkey(&user.key, &mut authenticator)
        .await
        .assert_status(200);
    // The stored counter is moved far ahead, as if a clone of this authenticator had
    // signed in many times: this authenticator's next counter is behind it.
    let passkeys = ctx.store.passkeys_of(user.uuid()).await.unwrap();
    let mut record = passkeys[0].clone();
    assert!(
        record.sign_count >= 2,
        "the software authenticator counts: {}",
        record.sign_count
    );
    let mut credential: Value = serde_json::from_str(&record.credential).unwrap();
    credential["cred"]["counter"] = json!(1000);
    record.credential = credential.to_string();
    record.sign_count = 1000;
    ctx.store
        .db
        .put_item()
        .table_name(&ctx.store.tables.passkeys)
        .set_item(Some(shared::store::to_item(&record).unwrap()))
        .send()
        .await
        .unwrap();
    assert_refused(
        &api.sign_in_with_passkey(&user.key, &mut authenticator)
            .await,
        "2fa_passkey_failed",
    );
});

both!(
    twenty_racing_uses_of_one_challenge_give_one_success,
    |api, ctx| async move {
        let (user, mut authenticator) = passkey_user(&api, &ctx).await;
        for _ in 0..2 {
            let options = api.begin_passkey_sign_in(&user.key).await;
            let body = sign_in_body(&authenticator.assert(&options));
            let tasks: Vec<_> = (0..20)
                .map(|_| {
                    let (api, key, body) = (api.clone(), user.key.clone(), body.clone());
                    tokio::spawn(
                        async move { api.post(SIGN_IN).bearer(&key).json(&body).send().await },
                    )
                })
                .collect();
            let mut statuses = Vec::new();
            for task in tasks {
                let reply = task.await.unwrap();
                if reply.status != 200 {
                    assert_refused(&reply, "2fa_no_challenge");
                }
                statuses.push(reply.status);
            }
            assert_eq!(
                statuses.iter().filter(|s| **s == 200).count(),
                1,
                "{statuses:?}"
            );
        }
        // Racing registrations of one answer store one passkey.
        let options = api.registration_options(&user.key).await;
        let credential = Authenticator::new().register(&options);
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (api, key, body) = (api.clone(), user.key.clone(), credential.clone());
                tokio::spawn(async move {
                    api.post(REGISTER_COMPLETE)
                        .bearer(&key)
                        .json(&body)
                        .send()
                        .await
                        .status
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.unwrap());
        }
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| [200, 400].contains(s)),
            "{statuses:?}"
        );
        assert_eq!(api.passkeys(&user.key).await.len(), 2);
    }
);

both!(
    the_sign_in_check_by_passkey_is_under_the_failure_limit,
    |api, ctx| async move {
        let (user, mut authenticator) = passkey_user(&api, &ctx).await;
        let wrong = As::origin("https://evil.example");
        let fail = |authenticator: &mut Authenticator, options: Value| {
            let assertion = authenticator.assert_as(&options, &wrong);
            let (api, key) = (api.clone(), user.key.clone());
            async move {
                assert_refused(&api.sign_in(&key, &assertion).await, "2fa_passkey_failed");
            }
        };
        for _ in 0..3 {
            let options = api.begin_passkey_sign_in(&user.key).await;
            fail(&mut authenticator, options).await;
        }
        // A passkey's success does not reset the count: whoever holds the account's key can
        // enrol a passkey of their own, and must not so lift a lock on the TOTP codes.
        api.sign_in_with_passkey(&user.key, &mut authenticator)
            .await
            .assert_status(200);
        assert_eq!(
            failures_of(&ctx, user.uuid(), CodeCheck::SignIn)
                .await
                .count,
            3
        );
        for _ in 0..2 {
            let options = api.begin_passkey_sign_in(&user.key).await;
            fail(&mut authenticator, options).await;
        }
        // Locked: even a good assertion is refused, before its challenge is touched.
        let options = api.begin_passkey_sign_in(&user.key).await;
        let assertion = authenticator.assert(&options);
        let reply = api.sign_in(&user.key, &assertion).await;
        assert_eq!(reply.status, 429, "{}", reply.body);
        assert!(reply.header("retry-after").is_some());
        // And TOTP codes share the lock (one limit for the sign-in check).
        let reply = api.verify_2fa(&user.key, "123456").await;
        assert_eq!(reply.status, 429, "{}", reply.body);
        // Once the lock is over the challenge, never taken, is still answerable.
        clear_failures(&ctx, user.uuid()).await;
        api.sign_in(&user.key, &assertion).await.assert_status(200);
    }
);

both!(too_many_passkeys_are_refused, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    for _ in 0..shared::passkeys::MAX_PASSKEYS {
        api.add_passkey(&user.key, &mut Authenticator::new()).await;
    }
    assert_refused(
        &api.post(REGISTER_BEGIN).bearer(&user.key).send().await,
        "passkey_limit",
    );
    assert_eq!(
        api.passkeys(&user.key).await.len(),
        shared::passkeys::MAX_PASSKEYS as usize
    );
});

/// A deployment without a relying party answers the passkey routes with a clear 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_relying_party_passkeys_are_off() {
    let ctx = std::sync::Arc::new(context_without_passkeys().await);
    let api = Api::InProcess(ctx.clone());
    let user = create_user(&ctx, &["*"]).await;
    for (method, path) in [
        ("POST", REGISTER_BEGIN.to_string()),
        ("POST", REGISTER_COMPLETE.to_string()),
        (
            "POST",
            format!("{CREDENTIALS}{}/verify/", uuid::Uuid::new_v4()),
        ),
        ("POST", SIGN_IN_BEGIN.to_string()),
    ] {
        let reply = api.call(method, &path).bearer(&user.key).send().await;
        assert_refused(&reply, "passkeys_disabled");
    }
    assert!(api.passkeys(&user.key).await.is_empty());
}

both!(
    racing_deletes_and_verifications_keep_the_counts,
    |api, ctx| async move {
        let (user, mut authenticator) = passkey_user(&api, &ctx).await;
        let mut ids = vec![api.passkeys(&user.key).await[0]["id"]
            .as_str()
            .unwrap()
            .to_string()];
        for _ in 0..2 {
            ids.push(
                api.add_verified_passkey(&user.key, &mut authenticator)
                    .await,
            );
        }
        // Another unverified one, verified while the others are deleted.
        let mut late = Authenticator::new();
        let unverified = api.add_passkey(&user.key, &mut late).await;
        let options = api.verification_options(&user.key, &unverified).await;
        let assertion = late.assert(&options);
        let mut tasks: Vec<_> = ids
            .iter()
            .map(|id| {
                let (api, key, id) = (api.clone(), user.key.clone(), id.clone());
                tokio::spawn(async move { api.delete_passkey(&key, &id).await.status })
            })
            .collect();
        tasks.push({
            let (api, key, id) = (api.clone(), user.key.clone(), unverified.clone());
            tokio::spawn(async move {
                api.complete_verification(&key, &id, &assertion)
                    .await
                    .status
            })
        });
        for task in tasks {
            let status = task.await.unwrap();
            assert!(status == 204 || status == 200, "{status}");
        }
        let stored = ctx.store.user(user.uuid()).await.unwrap().unwrap();
        assert_eq!(stored.passkey_count, 1);
        assert_eq!(stored.verified_passkeys, 1);
        let status = api.two_factor_status(&user.key).await;
        assert_eq!(status["method"], "passkey", "{status}");
        // And the last one deleted: passkey 2FA ends, and the user is told.
        api.delete_passkey(&user.key, &unverified)
            .await
            .assert_no_content();
        let stored = ctx.store.user(user.uuid()).await.unwrap().unwrap();
        assert_eq!((stored.passkey_count, stored.verified_passkeys), (0, 0));
        assert_eq!(api.two_factor_status(&user.key).await["is_enabled"], false);
        notice(
            &user.user.email,
            "Passkeys no longer count as your second factor",
        )
        .await;
    }
);

both!(
    a_deactivated_user_can_do_nothing_with_passkeys,
    |api, ctx| async move {
        let (user, mut authenticator) = passkey_user(&api, &ctx).await;
        let options = api.begin_passkey_sign_in(&user.key).await;
        let assertion = authenticator.assert(&options);
        deactivate(&ctx, user.uuid()).await;
        api.sign_in(&user.key, &assertion)
            .await
            .assert_unauthorized("authentication_failed");
        for (method, path) in [
            ("POST", REGISTER_BEGIN),
            ("GET", CREDENTIALS),
            ("POST", SIGN_IN_BEGIN),
        ] {
            let reply = api.call(method, path).bearer(&user.key).send().await;
            assert_eq!(reply.status, 401, "{method} {path}: {}", reply.body);
        }
    }
);

both!(
    turning_passkey_2fa_on_races_the_last_passkeys_deletion,
    |api, ctx| async move {
        // The PATCH is conditioned on a verified passkey at its write: whichever wins, passkey
        // 2FA is never in effect without a verified passkey, and a refused PATCH says why.
        for _ in 0..4 {
            let user = create_user(&ctx, &["*"]).await;
            let id = api
                .add_verified_passkey(&user.key, &mut Authenticator::new())
                .await;
            let (on, deleted) = tokio::join!(
                api.set_passkey_2fa(&user.key, true),
                api.delete_passkey(&user.key, &id)
            );
            deleted.assert_no_content();
            if on.status != 200 {
                assert_refused(&on, "no_passkeys");
            }
            let status = api.two_factor_status(&user.key).await;
            assert_eq!(status["passkeys_enabled_for_2fa"], false, "{status}");
            assert_eq!(status["is_enabled"], false, "{status}");
            assert_eq!(api.me(&user.key).await["is_2fa_enabled"], false);
            let stored = ctx.store.user(user.uuid()).await.unwrap().unwrap();
            assert_eq!(stored.verified_passkeys, 0);
        }
    }
);
