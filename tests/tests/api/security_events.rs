//! The audit trail (`GET /api/users/{uuid}/security_events/`, `users-admin events`): every
//! security-relevant change writes one record with the change, newest first, paginated, never
//! a secret; a change that is refused writes none. And the metrics lines (EMF) each request
//! writes, parsed and checked value by value.
use api_tests::passkeys::Authenticator;
use api_tests::tokens::{claims_of, cognito_user};
use api_tests::*;
use serde_json::{json, Value};
use shared::auth::ApiKeyHash;

const EVENTS: &str = "/api/users/@me/security_events/";

/// Every record of the caller, newest first, following `next` a page of `limit` at a time.
async fn all_events(api: &Api, key: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut path = format!("{EVENTS}?limit={limit}");
    for _ in 0..100 {
        let page = api.get(&path).bearer(key).send().await.ok_json();
        let results = page["results"].as_array().expect("results").clone();
        assert!(results.len() <= limit, "{page}");
        out.extend(results);
        match page["next"].as_str() {
            Some(next) => path = next.to_string(),
            None => return out,
        }
    }
    panic!("more than 100 pages");
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event"].as_str().expect("event"))
        .collect()
}

both!(
    each_change_writes_one_record_newest_first,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let k = user.key.clone();
        // The operator's creation of the key (the harness makes users as users-admin does).
        let start = all_events(&api, &k, 20).await;
        assert_eq!(kinds(&start), ["key_created"]);
        assert_eq!(start[0]["actor"]["credential"], "operator");
        assert_eq!(start[0]["detail"], json!(ApiKeyHash::of(&k).id_prefix()));

        // TOTP on, backup codes, one used, then five wrong codes (the fifth locks), 2FA off.
        let secret = api.enable_2fa(&k).await;
        let backup = api.backup_codes(&k).await;
        api.verify_2fa(&k, backup[0].as_str())
            .await
            .assert_status(200);
        for _ in 0..5 {
            api.verify_2fa(&k, "zzzzzzzz").await.assert_status(400);
        }
        api.verify_2fa(&k, "zzzzzzzz").await.assert_status(429);
        api.disable_2fa(&k).await.assert_status(200);
        // An email change requested and cancelled, another requested and completed.
        let first = unique_email("ev1");
        api.request_email_change(&k, &first)
            .await
            .assert_status(200);
        api.cancel_email_change(&k).await.assert_status(200);
        let second = unique_email("ev2");
        api.request_email_change(&k, &second)
            .await
            .assert_status(200);
        let code = code_mailed_to(&second).await;
        api.verify_email(&k, "@me", &code).await.assert_status(200);

        let events = all_events(&api, &k, 3).await;
        assert_eq!(
            kinds(&events),
            [
                "email_change_completed",
                "email_change_requested",
                "email_change_cancelled",
                "email_change_requested",
                "two_factor_disabled",
                "lock_started",
                "backup_code_used",
                "backup_codes_regenerated",
                "two_factor_enabled",
                "key_created",
            ],
            "{events:#?}"
        );
        let prefix = ApiKeyHash::of(&k).id_prefix().to_string();
        for e in &events[..events.len() - 1] {
            assert_eq!(e["actor"]["uuid"], json!(user.uuid()), "{e}");
            assert_eq!(e["actor"]["credential"], "api_key", "{e}");
            assert_eq!(e["actor"]["credential_id"], json!(prefix), "{e}");
            assert!(
                e["request_id"]
                    .as_str()
                    .is_some_and(|r| !r.is_empty() && r != "-"),
                "{e}"
            );
        }
        assert_eq!(events[5]["detail"], "sign_in");
        assert_eq!(events[8]["detail"], "totp");
        // Newest first, each created_at no later than the one before.
        let times: Vec<&str> = events
            .iter()
            .map(|e| e["created_at"].as_str().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
        // Nothing secret: not the key, the TOTP secret, a backup code or the mailed code.
        let text = serde_json::to_string(&events).unwrap();
        for secret in [
            &k[4..],
            &secret,
            &backup[0],
            &backup[1],
            &code,
            &first,
            &second,
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
);

both!(a_refused_change_writes_no_record, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let k = user.key.clone();
    // No open request, no device, no pending setup: each is a 400 and records nothing.
    api.cancel_email_change(&k).await.assert_status(400);
    api.post("/api/users/@me/two_factor_backup_codes/")
        .bearer(&k)
        .send()
        .await
        .assert_status(400);
    api.validate_2fa(&k, "123456").await.assert_status(400);
    // Disabling 2FA that was never on succeeds and records nothing.
    api.disable_2fa(&k).await.assert_status(200);
    assert_eq!(kinds(&all_events(&api, &k, 20).await), ["key_created"]);
});

both!(pages_and_cursors_are_checked, |api, ctx| async move {
    let user = create_user(&ctx, &["*"]).await;
    let k = user.key.clone();
    for _ in 0..5 {
        let email = unique_email("page");
        api.request_email_change(&k, &email)
            .await
            .assert_status(200);
        api.cancel_email_change(&k).await.assert_status(200);
    }
    let all = all_events(&api, &k, 100).await;
    assert_eq!(all.len(), 11);
    for limit in [1, 3, 4, 10] {
        let paged = all_events(&api, &k, limit).await;
        assert_eq!(paged, all, "limit {limit}");
    }
    let first = api
        .get(&format!("{EVENTS}?limit=20"))
        .bearer(&k)
        .send()
        .await
        .ok_json();
    assert_eq!(first["next"], Value::Null);
    for bad in [
        "limit=0",
        "limit=101",
        "limit=x",
        "cursor=zz",
        "cursor=00",
        "cursor=%00",
    ] {
        let reply = api.get(&format!("{EVENTS}?{bad}")).bearer(&k).send().await;
        reply.assert_status(400);
        assert_eq!(reply.json()["type"], "validation_error", "{bad}");
    }
    // A cursor of one user's page used on another's path only moves within that other
    // user's own records.
    let page = api
        .get(&format!("{EVENTS}?limit=1"))
        .bearer(&k)
        .send()
        .await
        .ok_json();
    let next = page["next"].as_str().expect("a next page").to_string();
    let cursor = next.split("cursor=").nth(1).expect("cursor");
    let other = create_user(&ctx, &["*"]).await;
    let theirs = api
        .get(&format!("{EVENTS}?cursor={cursor}"))
        .bearer(&other.key)
        .send()
        .await
        .ok_json();
    assert_eq!(theirs["results"], json!([]));
});

both!(
    staff_may_read_another_users_records_others_may_not,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        api.request_email_change(&user.key, &unique_email("staff"))
            .await
            .assert_status(200);
        let staff = create_staff(&ctx, &["*"]).await;
        let path = format!("/api/users/{}/security_events/", user.uuid());
        let read = api.get(&path).bearer(&staff.key).send().await.ok_json();
        assert_eq!(
            kinds(read["results"].as_array().unwrap()),
            ["email_change_requested", "key_created"]
        );
        let stranger = create_user(&ctx, &["*"]).await;
        api.get(&path)
            .bearer(&stranger.key)
            .send()
            .await
            .assert_status(403);
        let nobody = format!("/api/users/{}/security_events/", uuid::Uuid::new_v4());
        api.get(&nobody)
            .bearer(&staff.key)
            .send()
            .await
            .assert_status(404);
    }
);

both!(
    passkeys_added_and_removed_are_recorded,
    |api, ctx| async move {
        let user = create_user(&ctx, &["*"]).await;
        let k = user.key.clone();
        let mut authenticator = Authenticator::new();
        let id = api.add_verified_passkey(&k, &mut authenticator).await;
        api.set_passkey_2fa(&k, true).await.assert_status(200);
        api.delete_passkey(&k, &id).await.assert_status(204);
        let events = all_events(&api, &k, 20).await;
        assert_eq!(
            kinds(&events),
            [
                "two_factor_disabled",
                "passkey_removed",
                "two_factor_enabled",
                "passkey_added",
                "key_created"
            ],
            "{events:#?}"
        );
        assert_eq!(events[1]["detail"], json!(id));
        assert_eq!(events[3]["detail"], json!(id));
        assert_eq!(events[0]["detail"], "passkey");
    }
);

both!(
    racing_passkey_2fa_changes_are_each_recorded_once,
    |api, ctx| async move {
        // Eight PATCHes turning passkey 2FA on at once: it comes into effect once.
        let user = create_user(&ctx, &["*"]).await;
        let mut authenticator = Authenticator::new();
        api.add_verified_passkey(&user.key, &mut authenticator)
            .await;
        let patches = (0..8).map(|_| {
            let (api, key) = (api.clone(), user.key.clone());
            tokio::spawn(async move { api.set_passkey_2fa(&key, true).await.status })
        });
        for status in futures_join(patches).await {
            assert_eq!(status, 200);
        }
        let events = all_events(&api, &user.key, 100).await;
        let enabled = kinds(&events)
            .iter()
            .filter(|k| **k == "two_factor_enabled")
            .count();
        assert_eq!(enabled, 1, "{events:#?}");

        // Turning it off while its last passkey is deleted: it ends once, recorded once.
        for _round in 0..3 {
            let user = create_user(&ctx, &["*"]).await;
            let mut authenticator = Authenticator::new();
            let id = api
                .add_verified_passkey(&user.key, &mut authenticator)
                .await;
            api.set_passkey_2fa(&user.key, true)
                .await
                .assert_status(200);
            let off = {
                let (api, key) = (api.clone(), user.key.clone());
                tokio::spawn(async move { api.set_passkey_2fa(&key, false).await.status })
            };
            let delete = {
                let (api, key) = (api.clone(), user.key.clone());
                tokio::spawn(async move { api.delete_passkey(&key, &id).await.status })
            };
            assert_eq!(off.await.unwrap(), 200);
            assert_eq!(delete.await.unwrap(), 204);
            let events = all_events(&api, &user.key, 100).await;
            let disabled = kinds(&events)
                .iter()
                .filter(|k| **k == "two_factor_disabled")
                .count();
            assert_eq!(disabled, 1, "{events:#?}");
        }
    }
);

both!(
    turning_totp_on_racing_its_disabling_never_goes_unrecorded,
    |api, ctx| async move {
        // Whatever order a confirmation and a disable land in, the records say where 2FA
        // ended: on exactly when one more `two_factor_enabled` than `two_factor_disabled`.
        for _round in 0..4 {
            let user = create_user(&ctx, &["*"]).await;
            let k = user.key.clone();
            let secret = api.new_2fa_secret(&k).await;
            let code = pyotp_code(&secret, step_margin().await).await;
            let validate = {
                let (api, k) = (api.clone(), k.clone());
                tokio::spawn(async move { api.validate_2fa(&k, code).await.status })
            };
            let disable = {
                let (api, k) = (api.clone(), k.clone());
                tokio::spawn(async move { api.disable_2fa(&k).await.status })
            };
            assert!([200, 400].contains(&validate.await.unwrap()));
            assert_eq!(disable.await.unwrap(), 200);
            let on = api.two_factor_status(&k).await["has_totp"] == json!(true);
            let events = all_events(&api, &k, 100).await;
            let count = |kind: &str| kinds(&events).iter().filter(|k| **k == kind).count();
            let (enabled, disabled) = (count("two_factor_enabled"), count("two_factor_disabled"));
            assert!(disabled <= enabled && enabled <= 1, "{events:#?}");
            assert_eq!(on, enabled - disabled == 1, "on: {on}, {events:#?}");
        }
    }
);

both!(
    turning_passkey_2fa_off_racing_the_first_verification_never_goes_unrecorded,
    |api, ctx| async move {
        // Passkey 2FA on with only an unverified passkey (not in effect), then turned off while
        // that passkey is verified: whichever lands first, the records match where it ended.
        for _round in 0..4 {
            let user = create_user(&ctx, &["*"]).await;
            let k = user.key.clone();
            let mut first = Authenticator::new();
            api.add_verified_passkey(&k, &mut first).await;
            api.set_passkey_2fa(&k, true).await.assert_status(200);
            let old = api.passkeys(&k).await[0]["id"]
                .as_str()
                .unwrap()
                .to_string();
            let mut second = Authenticator::new();
            let id = api.add_passkey(&k, &mut second).await;
            api.delete_passkey(&k, &old).await.assert_status(204);
            let off = {
                let (api, k) = (api.clone(), k.clone());
                tokio::spawn(async move { api.set_passkey_2fa(&k, false).await.status })
            };
            let verify = {
                let (api, k) = (api.clone(), k.clone());
                tokio::spawn(async move { api.verify_passkey(&k, &id, &mut second).await.status })
            };
            assert_eq!(off.await.unwrap(), 200);
            assert_eq!(verify.await.unwrap(), 200);
            let on = api.two_factor_status(&k).await["is_enabled"] == json!(true);
            let events = all_events(&api, &k, 100).await;
            let passkey_2fa = |kind: &str| {
                events
                    .iter()
                    .filter(|e| e["event"] == kind && e["detail"] == "passkey")
                    .count()
            };
            let (enabled, disabled) = (
                passkey_2fa("two_factor_enabled"),
                passkey_2fa("two_factor_disabled"),
            );
            assert!(disabled <= enabled, "{events:#?}");
            assert_eq!(on, enabled - disabled == 1, "on: {on}, {events:#?}");
        }
    }
);

/// Every spawned task's answer.
async fn futures_join<T: Send + 'static>(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        out.push(task.await.expect("the task finishes"));
    }
    out
}

/// The records of a user, straight from the store.
async fn stored(
    ctx: &shared::Context,
    uuid: UserId,
) -> Vec<shared::security_events::SecurityEvent> {
    ctx.store
        .security_events_page(uuid, 100, None)
        .await
        .expect("records")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_expire_after_the_retention_and_expired_ones_are_not_shown() {
    Box::pin(records_expire_after_the_retention_and_expired_ones_are_not_shown_scenario()).await
}

async fn records_expire_after_the_retention_and_expired_ones_are_not_shown_scenario() {
    let ctx = context().await;
    let user = create_user(&ctx, &["*"]).await;
    let api = Api::InProcess(std::sync::Arc::new(context().await));
    api.request_email_change(&user.key, &unique_email("ttl"))
        .await
        .assert_status(200);
    let records = stored(&ctx, user.uuid()).await;
    assert_eq!(records.len(), 2);
    assert_eq!(
        records[0].event,
        shared::security_events::EventKind::EmailChangeRequested
    );
    let days = ctx.config.security_events_retention_days;
    let expected = shared::clock::now_secs() + days * 86_400;
    assert!(
        records[0].expires_at <= expected && records[0].expires_at + 60 >= expected,
        "{} vs {expected}",
        records[0].expires_at
    );
    // One past its time (DynamoDB's TTL removes items late) is not shown.
    let mut old = shared::security_events::SecurityEvent::new(
        user.uuid(),
        shared::security_events::EventKind::KeyRevoked,
        &shared::security_events::Actor::operator(),
        1,
    );
    old.expires_at = shared::clock::now_secs() - 1;
    ctx.store.put_security_event(&old).await.unwrap();
    let shown = api.get(EVENTS).bearer(&user.key).send().await.ok_json();
    assert_eq!(
        kinds(shown["results"].as_array().unwrap()),
        ["email_change_requested", "key_created"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_tokens_first_use_records_the_link() {
    Box::pin(a_sign_in_tokens_first_use_records_the_link_scenario()).await
}

async fn a_sign_in_tokens_first_use_records_the_link_scenario() {
    let ctx = context().await;
    let api = Api::http();
    let user = create_user(&ctx, &["user:read"]).await;
    let cognito = cognito_user(&user.user.email, true).await;
    api.get(ME)
        .bearer(&cognito.access_token)
        .send()
        .await
        .assert_status(200);
    let records = stored(&ctx, user.uuid()).await;
    assert_eq!(records.len(), 2, "{records:?}");
    let record = records[0].to_json();
    assert_eq!(record["event"], "identity_linked");
    assert_eq!(record["detail"], "verified_email");
    assert_eq!(record["actor"]["credential"], "access_token");
    let claims = claims_of(&cognito.access_token);
    assert_eq!(record["actor"]["client"], claims["client_id"]);
    let jti = claims["jti"]
        .as_str()
        .expect("Cognito's access tokens carry a jti");
    assert_eq!(record["actor"]["credential_id"], json!(jti[..8]));
    // The token reads the record too.
    let shown = api
        .get(EVENTS)
        .bearer(&cognito.access_token)
        .send()
        .await
        .ok_json();
    assert_eq!(
        kinds(shown["results"].as_array().unwrap()),
        ["identity_linked", "key_created"]
    );
}

/// `users-admin` as the operator runs it, its JSON output.
async fn admin(args: &[&str]) -> Value {
    let out = users_admin(args).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str(out.stdout.trim()).expect("JSON on stdout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_changes_are_recorded_and_users_admin_prints_them() {
    Box::pin(the_operators_changes_are_recorded_and_users_admin_prints_them_scenario()).await
}

async fn the_operators_changes_are_recorded_and_users_admin_prints_them_scenario() {
    let ctx = context().await;
    let user = create_user(&ctx, &["*"]).await;
    let uuid = user.uuid().to_string();
    let second = create_key(&ctx, &user.user, &["user:read"]).await;
    admin(&["revoke-key", "--key", &second]).await;
    let issuer = format!("https://issuer.test/{}", uuid::Uuid::new_v4().simple());
    let identity = ["--subject", "sub-audit", "--issuer", issuer.as_str()];
    admin(
        &[
            &["link-identity", "--user", uuid.as_str()][..],
            &identity[..],
        ]
        .concat(),
    )
    .await;
    admin(&[&["unlink-identity"][..], &identity[..]].concat()).await;
    admin(&["deactivate-user", "--user", &uuid]).await;
    let printed = admin(&["events", "--user", &uuid]).await;
    let printed = printed.as_array().expect("a list");
    assert_eq!(
        kinds(printed),
        [
            "user_deactivated",
            "identity_unlinked",
            "identity_linked",
            "key_revoked",
            "key_created",
            "key_created"
        ]
    );
    assert_eq!(printed[2]["detail"], "operator");
    assert_eq!(
        printed[3]["detail"],
        json!(ApiKeyHash::of(&second).id_prefix())
    );
    assert_eq!(printed[3]["detail"], printed[4]["detail"]);
    // A second deactivation changes nothing and records nothing.
    admin(&["deactivate-user", "--user", &uuid]).await;
    let again = admin(&["events", "--user", &uuid]).await;
    assert_eq!(again.as_array().unwrap().len(), 6);
    for e in printed {
        assert_eq!(e["actor"]["credential"], "operator");
        assert_eq!(e["actor"]["uuid"], Value::Null);
    }
    let limited = admin(&["events", "--user", &uuid, "--limit", "1"]).await;
    assert_eq!(kinds(limited.as_array().unwrap()), ["user_deactivated"]);
    // The printed records are the stored ones.
    assert_eq!(
        printed.to_vec(),
        stored(&ctx, user.uuid())
            .await
            .iter()
            .map(|e| e.to_json())
            .collect::<Vec<_>>()
    );
}

// ----------------------------------------------------------------------------------------------
// Metrics (EMF lines)
// ----------------------------------------------------------------------------------------------

/// The one metrics line of an in-process reply, checked against the EMF specification's rules:
/// every metric a directive declares is a number of the line, every dimension a string.
fn metrics_line(reply: &Reply) -> &Value {
    assert_eq!(
        reply.metrics.len(),
        1,
        "one line per request: {:?}",
        reply.metrics
    );
    let line = &reply.metrics[0];
    assert_valid_emf(line);
    assert_eq!(line["request_id"], json!(reply.request_id), "{line}");
    line
}

fn assert_valid_emf(line: &Value) {
    let aws = &line["_aws"];
    assert!(
        aws["Timestamp"]
            .as_u64()
            .is_some_and(|t| t > 1_700_000_000_000),
        "{line}"
    );
    let directives = aws["CloudWatchMetrics"].as_array().expect("directives");
    assert!(!directives.is_empty());
    for d in directives {
        assert!(
            d["Namespace"].as_str().is_some_and(|n| !n.is_empty()),
            "{line}"
        );
        for m in d["Metrics"].as_array().expect("metrics") {
            let name = m["Name"].as_str().expect("a metric name");
            assert!(line[name].is_number(), "{name} in {line}");
            assert!(
                ["Count", "Milliseconds"].contains(&m["Unit"].as_str().unwrap_or("")),
                "{line}"
            );
        }
        for set in d["Dimensions"].as_array().expect("dimension sets") {
            for dim in set.as_array().expect("a dimension set") {
                assert!(
                    line[dim.as_str().expect("a dimension")].is_string(),
                    "{line}"
                );
            }
        }
    }
}

/// The names of the metrics the line's directives declare.
fn declared(line: &Value) -> Vec<String> {
    let mut names: Vec<String> = line["_aws"]["CloudWatchMetrics"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["Metrics"].as_array().unwrap().iter())
        .map(|m| m["Name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_writes_one_metrics_line_with_its_values() {
    Box::pin(each_request_writes_one_metrics_line_with_its_values_scenario()).await
}

async fn each_request_writes_one_metrics_line_with_its_values_scenario() {
    let api = Api::in_process().await;
    let ctx = context().await;
    let user = create_user(&ctx, &["*"]).await;
    let k = user.key.clone();

    let ok = api.get(ME).bearer(&k).send().await;
    ok.assert_status(200);
    let line = metrics_line(&ok);
    assert_eq!(line["Function"], "get-user");
    assert_eq!(line["StatusClass"], "2xx");
    assert_eq!(line["Requests"], 1);
    assert!(line["Latency"].as_f64().is_some_and(|l| l > 0.0), "{line}");
    assert_eq!(declared(line), ["Latency", "Requests"]);

    // Authentication failures, by reason.
    let none = api.get(ME).send().await;
    let line = metrics_line(&none);
    assert_eq!(
        (&line["StatusClass"], &line["Reason"], &line["AuthFailures"]),
        (&json!("4xx"), &json!("no_credentials"), &json!(1))
    );
    let bad = api
        .get(ME)
        .bearer(&format!("phx_{}", "Z".repeat(48)))
        .send()
        .await;
    assert_eq!(metrics_line(&bad)["Reason"], "invalid_credentials");
    let token = api.get(ME).bearer("a.b.c").send().await;
    token.assert_status(401);
    assert!(metrics_line(&token)["Reason"].is_string());
    // A refusal that is not about the credential counts no auth failure.
    let forbidden = api
        .get(&format!("/api/users/{}/", uuid::Uuid::new_v4()))
        .bearer(&k)
        .send()
        .await;
    forbidden.assert_status(403);
    assert!(metrics_line(&forbidden).get("AuthFailures").is_none());

    // Code-check failures, and the lock the fifth starts; a locked check charges nothing.
    api.enable_2fa(&k).await;
    for attempt in 1..=5 {
        let wrong = api.verify_2fa(&k, "000000").await;
        wrong.assert_status(400);
        let line = metrics_line(&wrong);
        assert_eq!(line["Function"], "two-factor-verify");
        assert_eq!(line["CodeCheckFailures"], 1, "{line}");
        assert_eq!(line["Locks"], json!(u32::from(attempt == 5)), "{line}");
        assert_eq!(
            declared(line),
            ["CodeCheckFailures", "Latency", "Locks", "Requests"]
        );
    }
    let locked = api.verify_2fa(&k, "000000").await;
    locked.assert_status(429);
    assert!(metrics_line(&locked).get("CodeCheckFailures").is_none());

    // The unknown route's line is the fallback's.
    let unknown = api.get("/api/nothing/").bearer(&k).send().await;
    unknown.assert_status(404);
    assert_eq!(metrics_line(&unknown)["Function"], "fallback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployed_binaries_print_valid_metrics_lines() {
    Box::pin(the_deployed_binaries_print_valid_metrics_lines_scenario()).await
}

async fn the_deployed_binaries_print_valid_metrics_lines_scenario() {
    let api = Api::http();
    let ctx = context().await;
    let user = create_user(&ctx, &["*"]).await;
    // A request whose status class and reason no other test's request to this function has
    // at the same moment is not needed: lines are matched by function and checked whole.
    api.get(EVENTS)
        .bearer(&user.key)
        .send()
        .await
        .assert_status(200);
    api.get(EVENTS).send().await.assert_status(401);
    let path = env("WATCH_LOG");
    let lines = eventually(
        || async {
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
                .filter(|v| v.get("_aws").is_some())
                .filter(|v| v["Function"] == "security-events")
                .collect::<Vec<_>>()
        },
        |lines: &Vec<Value>| {
            lines.iter().any(|l| l["StatusClass"] == "2xx")
                && lines.iter().any(|l| l["Reason"] == "no_credentials")
        },
    )
    .await;
    assert!(
        lines.iter().any(|l| l["StatusClass"] == "2xx")
            && lines.iter().any(|l| l["Reason"] == "no_credentials"),
        "{lines:#?}"
    );
    for line in &lines {
        assert_valid_emf(line);
        // The namespace is the deployment's (METRICS_NAMESPACE), the same in every directive.
        for d in line["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            assert_eq!(
                d["Namespace"],
                json!(std::env::var("METRICS_NAMESPACE").unwrap_or_else(|_| "posthog-users".into()))
            );
        }
    }
}
