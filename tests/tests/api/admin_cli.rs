//! API.md §7: the operator tool, run as the built binary with the test environment.
use api_tests::*;
use serde_json::{json, Value};

/// `users-admin` with these arguments (the harness's runner).
async fn admin(args: &[&str]) -> AdminOutput {
    users_admin(args).await
}

fn keys_of(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    keys
}

async fn create_user_cli(email: &str, extra: &[&str]) -> Value {
    let mut args = vec!["create-user", "--email", email];
    args.extend_from_slice(extra);
    admin(&args).await.json()
}

/// `users-admin create-key` for the user with these scopes and further arguments.
async fn create_key_cli(uuid: &str, scopes: &str, extra: &[&str]) -> AdminOutput {
    let mut args = vec!["create-key", "--user", uuid, "--scopes", scopes];
    args.extend_from_slice(extra);
    admin(&args).await
}

/// A key made with `users-admin create-key`.
async fn new_key_cli(uuid: &str, scopes: &str) -> String {
    let out = create_key_cli(uuid, scopes, &[]).await.json();
    out["api_key"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_user_prints_uuid_and_email() {
    let ctx = context().await;
    let email = unique_email("cli");
    let out = create_user_cli(&email, &["--first-name", "Cli", "--last-name", "User"]).await;
    assert_eq!(keys_of(&out), vec!["email", "uuid"]);
    assert_eq!(out["email"], email.as_str());
    let uuid = out["uuid"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(uuid).is_ok(), "{uuid}");
    let stored = ctx
        .store
        .user(UserId::parse(uuid).expect("a uuid"))
        .await
        .unwrap()
        .expect("the user is stored");
    assert_eq!(stored.email, email);
    assert_eq!(stored.first_name, "Cli");
    assert_eq!(stored.last_name, "User");
    assert!(!stored.is_staff);
    assert!(stored.is_active);
    let staff = create_user_cli(&unique_email("cli-staff"), &["--staff"]).await;
    let stored = ctx
        .store
        .user(UserId::parse(staff["uuid"].as_str().unwrap()).expect("a uuid"))
        .await
        .unwrap()
        .unwrap();
    assert!(stored.is_staff);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_user_refuses_a_duplicate_email() {
    let email = unique_email("cli-dup");
    let first = create_user_cli(&email, &[]).await;
    let out = admin(&["create-user", "--email", &email]).await;
    let message = out.failed();
    assert!(
        message.contains(&email),
        "the message names the address: {message}"
    );
    // Case does not make it another address.
    let out = admin(&["create-user", "--email", &email.to_uppercase()]).await;
    out.failed();
    // The first user is untouched.
    let ctx = context().await;
    assert_eq!(
        ctx.store
            .user(UserId::parse(first["uuid"].as_str().unwrap()).expect("a uuid"))
            .await
            .unwrap()
            .unwrap()
            .email,
        email
    );
    // A malformed address is refused too.
    admin(&["create-user", "--email", "not-an-email"])
        .await
        .failed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_key_prints_a_working_key() {
    let user = create_user_cli(&unique_email("cli-key"), &[]).await;
    let uuid = user["uuid"].as_str().unwrap();
    let out = create_key_cli(uuid, "user:read,user:write", &["--label", "ci"])
        .await
        .json();
    assert_eq!(keys_of(&out), vec!["api_key", "mask", "scopes"]);
    let key = out["api_key"].as_str().unwrap();
    assert!(key.starts_with("phx_") && key.len() == 52, "{key}");
    assert!(
        key[4..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() && !"01OIl".contains(c)),
        "{key}"
    );
    assert_eq!(out["mask"], format!("phx_...{}", &key[key.len() - 4..]));
    assert_eq!(out["scopes"], json!(["user:read", "user:write"]));

    // The key works over HTTP and is the user's.
    let api = Api::http();
    let me = api.me(key).await;
    assert_eq!(me["uuid"], uuid);
    assert_eq!(me["email"], user["email"]);
    let reply = api
        .set_scene(key, &json!({"scene": "cli", "dashboard": 1}))
        .await;
    reply.assert_status(200);

    // A read-only key reads but does not write.
    let read = create_key_cli(uuid, "user:read", &[]).await.json();
    let read_key = read["api_key"].as_str().unwrap();
    assert_eq!(read["scopes"], json!(["user:read"]));
    assert_eq!(api.me(read_key).await["uuid"], uuid);
    let reply = api
        .set_scene(read_key, &json!({"scene": "cli", "dashboard": 2}))
        .await;
    reply.assert_forbidden(MISSING_WRITE_SCOPE);

    // The key is stored only as its hash.
    let ctx = context().await;
    let record = ctx
        .store
        .api_key(&shared::auth::ApiKeyHash::of(key))
        .await
        .unwrap()
        .expect("stored under its hash");
    assert_eq!(record.user_uuid, UserId::parse(uuid).expect("a uuid"));
    assert!(record.secure_value.starts_with("sha256$"));
    assert!(!record.secure_value.contains(&key[4..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_key_refuses_unknown_scopes_and_users() {
    let user = create_user_cli(&unique_email("cli-scope"), &[]).await;
    let uuid = user["uuid"].as_str().unwrap();
    for scopes in ["admin", "user:read,everything", "user:delete"] {
        create_key_cli(uuid, scopes, &[]).await.failed();
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    create_key_cli(&unknown, "*", &[]).await.failed();
    create_key_cli("not-a-uuid", "*", &[]).await.failed();
    // None of the refused keys exists.
    let ctx = context().await;
    assert!(ctx
        .store
        .api_keys_of(UserId::parse(uuid).expect("a uuid"))
        .await
        .unwrap()
        .is_empty());
    assert!(ctx
        .store
        .api_keys_of(UserId::parse(&unknown).expect("a uuid"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_key_then_401() {
    let user = create_user_cli(&unique_email("cli-revoke"), &[]).await;
    let uuid = user["uuid"].as_str().unwrap();
    let key = new_key_cli(uuid, "*").await;
    let kept = new_key_cli(uuid, "*").await;
    let api = Api::http();
    assert_eq!(api.me(&key).await["uuid"], uuid);
    let out = admin(&["revoke-key", "--key", &key]).await.json();
    assert_eq!(out, json!({"ok": true}));
    let reply = api.get(ME).bearer(&key).send().await;
    reply.assert_unauthorized("authentication_failed");
    // Only that key.
    assert_eq!(api.me(&kept).await["uuid"], uuid);
    // Revoking it again fails: there is no such key.
    admin(&["revoke-key", "--key", &key]).await.failed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivate_user_then_401() {
    let user = create_user_cli(&unique_email("cli-deact"), &[]).await;
    let uuid = user["uuid"].as_str().unwrap();
    let bystander = create_user_cli(&unique_email("cli-bystander"), &[]).await;
    let mut keys = Vec::new();
    for scopes in ["*", "user:read"] {
        keys.push(new_key_cli(uuid, scopes).await);
    }
    let bystander_key = new_key_cli(bystander["uuid"].as_str().unwrap(), "*").await;
    let api = Api::http();
    for key in &keys {
        assert_eq!(api.me(key).await["uuid"], uuid);
    }
    let out = admin(&["deactivate-user", "--user", uuid]).await.json();
    assert_eq!(out, json!({"ok": true}));
    for key in &keys {
        let reply = api.get(ME).bearer(key).send().await;
        reply.assert_unauthorized("authentication_failed");
        let reply = api.register_push_token(key, "t", "ios").await;
        reply.assert_unauthorized("authentication_failed");
    }
    assert_eq!(api.me(&bystander_key).await["uuid"], bystander["uuid"]);
    // No new key for an inactive user; an unknown user cannot be deactivated.
    create_key_cli(uuid, "*", &[]).await.failed();
    admin(&[
        "deactivate-user",
        "--user",
        &uuid::Uuid::new_v4().to_string(),
    ])
    .await
    .failed();
}

/// list-keys shows a user's keys by mask, never the keys, with when each was last used
/// (noted by the function after its response).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_keys_shows_masks_and_last_use() {
    let user = create_user_cli(&unique_email("cli-list"), &[]).await;
    let uuid = user["uuid"].as_str().unwrap();
    let used = create_key_cli(uuid, "*", &["--label", "app"]).await.json();
    let idle = create_key_cli(uuid, "user:read", &[]).await.json();
    let used_key = used["api_key"].as_str().unwrap();
    Api::http().me(used_key).await;

    // The by-user index is eventually consistent, and the note lands after the response.
    let list = || async {
        let out = admin(&["list-keys", "--user", uuid]).await;
        assert_eq!(out.code, 0, "users-admin failed: {}", out.stderr);
        let listed: Value = serde_json::from_str(out.stdout.trim()).expect("a JSON array");
        (out.stdout, listed)
    };
    let (stdout, listed) = eventually(list, |(_, listed)| {
        listed.as_array().is_some_and(|keys| {
            keys.len() == 2 && keys.iter().any(|k| k["last_used_at"].is_string())
        })
    })
    .await;
    let keys = listed.as_array().expect("an array");
    assert_eq!(keys.len(), 2, "{listed}");
    for key in keys {
        assert_eq!(
            keys_of(key),
            vec![
                "active",
                "created_at",
                "label",
                "last_used_at",
                "mask",
                "scopes"
            ]
        );
    }
    let by_mask = |mask: &Value| keys.iter().find(|k| k["mask"] == *mask).expect("listed");
    let app = by_mask(&used["mask"]);
    assert_eq!(
        (&app["label"], &app["scopes"], &app["active"]),
        (&json!("app"), &json!(["*"]), &json!(true))
    );
    assert!(app["last_used_at"].is_string(), "{app}");
    assert_eq!(by_mask(&idle["mask"])["last_used_at"], Value::Null);
    for key in [used_key, idle["api_key"].as_str().unwrap()] {
        assert!(!stdout.contains(&key[4..]), "the key itself is never shown");
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    let message = admin(&["list-keys", "--user", &unknown]).await;
    assert!(message.failed().contains("no user"), "{}", message.stderr);
}

/// link-identity, list-identities and unlink-identity: an operator links a sign-in subject to
/// a user (a deployment that refuses new identities takes only such links), lists it, and
/// removes it; deactivation makes its tokens 401 and shows in the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_linked_listed_and_unlinked_by_the_operator() {
    use api_tests::tokens::{cognito_user, stack_token_settings};
    let user = create_user_cli(&unique_email("cli-identity"), &[]).await;
    let uuid = user["uuid"].as_str().unwrap();
    // A pool user whose address is not this user's: only the operator's link connects them.
    let cognito = cognito_user(&unique_email("elsewhere"), true).await;
    let ctx = context().await;
    let mut settings = stack_token_settings();
    settings.new_identity = shared::tokens::NewIdentity::Refuse;
    let api = Api::InProcess(std::sync::Arc::new(
        ctx.with_store(ctx.store.clone())
            .with_token_settings(settings.clone()),
    ));
    let me = |api: Api, token: String| async move { api.get(ME).bearer(&token).send().await };
    assert_eq!(
        me(api.clone(), cognito.access_token.clone()).await.status,
        401
    );

    let linked = admin(&["link-identity", "--user", uuid, "--subject", &cognito.sub]).await;
    assert_eq!(
        linked.json(),
        json!({"ok": true, "issuer": settings.issuer, "subject": cognito.sub, "user": uuid})
    );
    let reply = me(api.clone(), cognito.access_token.clone()).await;
    assert_eq!(reply.ok_json()["uuid"], json!(uuid));

    // The same subject cannot be linked to a second user.
    let other = create_user_cli(&unique_email("cli-identity-other"), &[]).await;
    let again = admin(&[
        "link-identity",
        "--user",
        other["uuid"].as_str().unwrap(),
        "--subject",
        &cognito.sub,
    ])
    .await;
    assert!(
        again
            .failed()
            .contains(&format!("already linked to user {uuid}")),
        "{}",
        again.stderr
    );

    let list = || async {
        let out = admin(&["list-identities", "--user", uuid]).await;
        assert_eq!(out.code, 0, "users-admin failed: {}", out.stderr);
        serde_json::from_str::<Value>(out.stdout.trim()).expect("a JSON array")
    };
    let listed = eventually(list, |l: &Value| l.as_array().is_some_and(|a| a.len() == 1)).await;
    let link = &listed[0];
    assert_eq!(
        keys_of(link),
        vec!["active", "issuer", "linked_at", "linked_by", "subject"]
    );
    assert_eq!(
        (
            &link["issuer"],
            &link["subject"],
            &link["linked_by"],
            &link["active"]
        ),
        (
            &json!(settings.issuer),
            &json!(cognito.sub),
            &json!("operator"),
            &json!(true)
        )
    );

    let unlinked = admin(&["unlink-identity", "--subject", &cognito.sub]).await;
    assert_eq!(unlinked.json(), json!({"ok": true, "user": uuid}));
    assert_eq!(
        me(api.clone(), cognito.access_token.clone()).await.status,
        401
    );
    let gone = admin(&["unlink-identity", "--subject", &cognito.sub]).await;
    assert!(
        gone.failed().contains("no such identity link"),
        "{}",
        gone.stderr
    );

    // Linked again, then the user deactivated: the token is refused, the list says inactive.
    admin(&["link-identity", "--user", uuid, "--subject", &cognito.sub])
        .await
        .json();
    admin(&["deactivate-user", "--user", uuid]).await.json();
    assert_eq!(
        me(api.clone(), cognito.access_token.clone()).await.status,
        401
    );
    let listed = eventually(list, |l: &Value| {
        l.as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["active"] == json!(false))
    })
    .await;
    assert_eq!(listed[0]["active"], json!(false));
    let inactive = admin(&[
        "link-identity",
        "--user",
        uuid,
        "--subject",
        "another-subject",
    ])
    .await;
    assert!(
        inactive.failed().contains("no active user"),
        "{}",
        inactive.stderr
    );

    // Bad input is refused with a message and changes nothing.
    let blank = admin(&["link-identity", "--user", uuid, "--subject", " "]).await;
    assert!(
        blank.failed().contains("--subject is empty"),
        "{}",
        blank.stderr
    );
    let not_uuid = admin(&["list-identities", "--user", "nobody"]).await;
    assert!(
        not_uuid.failed().contains("is not a uuid"),
        "{}",
        not_uuid.stderr
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    let missing = admin(&["list-identities", "--user", &unknown]).await;
    assert!(missing.failed().contains("no user"), "{}", missing.stderr);
}

/// An operator takes every passkey off an account (lost, or enrolled by someone else): they
/// are gone, passkey 2FA is off, and each credential can be registered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_passkeys_clears_them_and_passkey_2fa() {
    let ctx = std::sync::Arc::new(context().await);
    let api = Api::InProcess(ctx.clone());
    let user = create_user(&ctx, &["*"]).await;
    let mut authenticator = api_tests::passkeys::Authenticator::new();
    api.add_verified_passkey(&user.key, &mut authenticator)
        .await;
    api.add_passkey(&user.key, &mut authenticator).await;
    api.set_passkey_2fa(&user.key, true)
        .await
        .assert_status(200);
    assert_eq!(api.two_factor_status(&user.key).await["method"], "passkey");
    let uuid = user.uuid().to_string();
    let out = admin(&["remove-passkeys", "--user", &uuid]).await.json();
    assert_eq!(out, json!({"uuid": uuid, "removed": 2}));
    assert!(api.passkeys(&user.key).await.is_empty());
    let status = api.two_factor_status(&user.key).await;
    assert_eq!(status["is_enabled"], false, "{status}");
    assert_eq!(status["has_passkeys"], false);
    let stored = ctx.store.user(user.uuid()).await.unwrap().unwrap();
    assert!(!stored.passkeys_enabled_for_2fa);
    assert_eq!((stored.passkey_count, stored.verified_passkeys), (0, 0));
    // Nothing left: removing again removes nothing; an unknown user is an error.
    let out = admin(&["remove-passkeys", "--user", &uuid]).await.json();
    assert_eq!(out["removed"], 0);
    let missing = uuid::Uuid::new_v4().to_string();
    assert!(admin(&["remove-passkeys", "--user", &missing])
        .await
        .failed()
        .contains("no user"));
}
