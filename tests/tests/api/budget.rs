//! ARCHITECTURE.md's budget: authentication plus the work of any route costs at most 3
//! sequential DynamoDB calls. Each route's usual successful request runs in process with an
//! interceptor counting the calls (a count, not a timing).
use api_tests::calls::{sequential_depth, Recorder, SdkCall};
use api_tests::*;
use serde_json::json;
use std::sync::Arc;

struct Budget {
    api: Api,
    recorder: Recorder,
    report: Vec<(String, usize, usize)>,
}

impl Budget {
    async fn new() -> (Self, Arc<shared::Context>) {
        let base = context().await;
        let recorder = Recorder::default();
        let ctx = Arc::new(recorder.instrument(&base));
        (
            Budget {
                // Every request reads the keys it needs itself: the test command sees which
                // functions call Secrets Manager (and SES) in their usual requests.
                api: Api::InProcessColdKeys(ctx.clone()),
                recorder,
                report: vec![],
            },
            ctx,
        )
    }

    /// Sends one request and checks its status and its DynamoDB calls.
    async fn check(&mut self, label: &str, call: Call<'_>, status: u16) -> Reply {
        self.recorder.take();
        let reply = call.send().await;
        // The budget is DynamoDB's; reading the keys (Secrets Manager, once per cold start)
        // and the mail sent after the response are not part of it.
        assert_eq!(reply.status, status, "{label}: {}", reply.body);
        // What runs after the response (shared::run: the note of the key's use, at most
        // hourly) is no part of the request's cost, but it is checked for what it is.
        let (calls, after): (Vec<SdkCall>, Vec<SdkCall>) = self
            .recorder
            .take_dynamodb()
            .into_iter()
            .partition(|c| c.start < reply.responded_at);
        assert!(
            after.len() <= 1
                && after
                    .iter()
                    .all(|c| c.operation == "UpdateItem" && c.actions[0].1.ends_with("api-keys")),
            "{label}: after the response only the key's use is noted: {after:#?}"
        );
        let depth = sequential_depth(&calls);
        assert!(
            depth <= 3,
            "{label}: {depth} sequential DynamoDB calls: {calls:#?}"
        );
        if label != "fallback" {
            let first = calls
                .iter()
                .min_by_key(|c| c.start)
                .expect("at least the key lookup");
            assert_eq!(
                first.operation, "GetItem",
                "{label}: authentication is one GetItem of the key"
            );
            assert!(first.actions[0].1.ends_with("api-keys"), "{label}");
        } else {
            assert!(calls.is_empty(), "the fallback touches no table");
        }
        self.report.push((label.to_string(), calls.len(), depth));
        reply
    }
}

/// Every route's usual request, one after another in one scenario: a long future, whose
/// unoptimised (test-profile) frames take more than a test thread's 2 MiB of stack, so it
/// runs on a thread of its own with room.
#[test]
fn every_route_stays_within_three_sequential_dynamodb_calls() {
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(every_route_in_turn())
        })
        .expect("a thread")
        .join()
        .expect("the scenario passed");
}

async fn every_route_in_turn() {
    let (mut b, ctx) = Budget::new().await;
    let user = create_user(&ctx, &["*"]).await;
    let k = user.key.clone();
    let api = b.api.clone();

    b.check("get-user", api.get(ME).bearer(&k), 200).await;
    b.check(
        "update-user (profile)",
        api.patch(ME)
            .bearer(&k)
            .json(&json!({"first_name": "Budget"})),
        200,
    )
    .await;
    let new_email = unique_email("budget");
    b.check(
        "update-user (email change)",
        api.patch(ME).bearer(&k).json(&json!({"email": new_email})),
        200,
    )
    .await;
    b.check(
        "cancel-email-change-request",
        api.patch(CANCEL_EMAIL_CHANGE).bearer(&k),
        200,
    )
    .await;
    let newer = unique_email("budget2");
    api.patch_me(&k, &json!({"email": newer})).await;
    let code = code_mailed_to(&newer).await;
    b.check(
        "verify-email",
        api.post(VERIFY_EMAIL)
            .bearer(&k)
            .json(&json!({"uuid": "@me", "code": code})),
        200,
    )
    .await;
    b.check(
        "scene-personalisation",
        api.post(SCENE)
            .bearer(&k)
            .json(&json!({"scene": "s", "dashboard": 1})),
        200,
    )
    .await;
    for i in 0..20 {
        api.post(PUSH_TOKENS)
            .send_json(&k, &json!({"token": format!("t{i}"), "platform": "ios"}))
            .await;
    }
    b.check(
        "push-tokens-register (21st, evicting)",
        api.post(PUSH_TOKENS)
            .bearer(&k)
            .json(&json!({"token": "t20", "platform": "ios"})),
        200,
    )
    .await;
    b.check(
        "push-tokens-register (refresh)",
        api.post(PUSH_TOKENS)
            .bearer(&k)
            .json(&json!({"token": "t20", "platform": "web"})),
        200,
    )
    .await;
    b.check(
        "push-tokens-unregister",
        api.post(UNREGISTER_PUSH_TOKEN)
            .bearer(&k)
            .json(&json!({"token": "t20"})),
        204,
    )
    .await;
    let setup = b
        .check(
            "two-factor-start-setup",
            api.get(START_2FA_SETUP).bearer(&k),
            200,
        )
        .await;
    let secret = setup.json()["secret"].as_str().unwrap().to_string();
    let now = step_margin().await;
    let code = pyotp_code(&secret, now).await;
    b.check(
        "two-factor-validate",
        api.post(VALIDATE_2FA)
            .bearer(&k)
            .json(&json!({"token": code})),
        200,
    )
    .await;
    let codes = b
        .check(
            "two-factor-backup-codes",
            api.post(BACKUP_CODES).bearer(&k),
            200,
        )
        .await;
    let backup = codes.json()["backup_codes"][0]
        .as_str()
        .unwrap()
        .to_string();
    b.check(
        "two-factor-status",
        api.get(TWO_FACTOR_STATUS).bearer(&k),
        200,
    )
    .await;
    let next = pyotp_code(&secret, now + 30).await;
    b.check(
        "two-factor-verify (totp)",
        api.post(VERIFY_2FA)
            .bearer(&k)
            .json(&json!({"token": next})),
        200,
    )
    .await;
    b.check(
        "two-factor-verify (backup code)",
        api.post(VERIFY_2FA)
            .bearer(&k)
            .json(&json!({"token": backup})),
        200,
    )
    .await;
    b.check(
        "two-factor-verify (wrong code)",
        api.post(VERIFY_2FA)
            .bearer(&k)
            .json(&json!({"token": "000000"})),
        400,
    )
    .await;
    b.check("two-factor-disable", api.post(DISABLE_2FA).bearer(&k), 200)
        .await;
    passkey_routes(&mut b, &ctx).await;
    b.check("fallback", api.get("/api/users/@me/nothing/"), 404)
        .await;

    for (label, total, depth) in &b.report {
        println!("{label:45} {total} DynamoDB calls, {depth} sequential");
    }
}

/// The passkey routes' usual requests, each answered by the software authenticator.
async fn passkey_routes(b: &mut Budget, ctx: &shared::Context) {
    use api_tests::passkeys::*;
    let user = create_user(ctx, &["*"]).await;
    let k = user.key.clone();
    let api = b.api.clone();
    let mut authenticator = Authenticator::new();
    let options = b
        .check(
            "webauthn-register-begin",
            api.post(REGISTER_BEGIN).bearer(&k),
            200,
        )
        .await
        .json();
    let credential = authenticator.register(&options);
    let done = b
        .check(
            "webauthn-register-complete",
            api.post(REGISTER_COMPLETE).bearer(&k).json(&credential),
            200,
        )
        .await
        .json();
    let id = done["credential_id"].as_str().unwrap().to_string();
    let options = b
        .check(
            "webauthn-verify-begin",
            api.post(&format!("{CREDENTIALS}{id}/verify/")).bearer(&k),
            200,
        )
        .await
        .json();
    let assertion = authenticator.assert(&options);
    b.check(
        "webauthn-verify-complete",
        api.post(&format!("{CREDENTIALS}{id}/verify_complete/"))
            .bearer(&k)
            .json(&assertion),
        200,
    )
    .await;
    b.check("webauthn-credentials", api.get(CREDENTIALS).bearer(&k), 200)
        .await;
    b.check(
        "webauthn-credential-update",
        api.patch(&format!("{CREDENTIALS}{id}/"))
            .bearer(&k)
            .json(&json!({"label": "Budget"})),
        200,
    )
    .await;
    b.check(
        "update-user (passkey 2FA on)",
        api.patch(ME)
            .bearer(&k)
            .json(&json!({"passkeys_enabled_for_2fa": true})),
        200,
    )
    .await;
    let options = b
        .check(
            "two-factor-passkey-begin",
            api.post(SIGN_IN_BEGIN).bearer(&k),
            200,
        )
        .await
        .json();
    let assertion = authenticator.assert(&options);
    b.check(
        "two-factor-verify (passkey)",
        api.post(SIGN_IN).bearer(&k).json(&sign_in_body(&assertion)),
        200,
    )
    .await;
    let options = api.begin_passkey_sign_in(&k).await;
    let refused = authenticator.assert_as(&options, &As::origin("https://evil.example"));
    b.check(
        "two-factor-verify (refused passkey)",
        api.post(SIGN_IN).bearer(&k).json(&sign_in_body(&refused)),
        400,
    )
    .await;
    b.check(
        "webauthn-credential-delete",
        api.delete(&format!("{CREDENTIALS}{id}/")).bearer(&k),
        204,
    )
    .await;
}
