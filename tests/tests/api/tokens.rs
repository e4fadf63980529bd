//! Sign-in tokens beside personal API keys: moto's Cognito access tokens on every route, the
//! first use's linking (by verified email, a new user, or refused), every refusal of a forged
//! or wrong token (signed by moto's own key with one claim changed, or by the tests' keys), and
//! the JWKS cache (one fetch per process, unknown kids refreshed at most every 5 minutes, an
//! unreachable issuer a 503 and then recovery).
use api_tests::tokens::*;
use api_tests::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use shared::identities::{IdentityKey, IdentityLink, LinkedBy};
use shared::routes::ROUTES;
use shared::tokens::NewIdentity;
use std::sync::Arc;

const INVALID: &str = "The access token is invalid.";
const EXPIRED: &str = "The access token has expired.";
const NOT_LINKED: &str = "No account is linked to this sign-in.";
const UNVERIFIED: &str =
    "No account is linked to this sign-in, and its email address is not verified.";

/// Every route of the table once, for `@me`, as (method, path).
fn every_route() -> Vec<(&'static str, String)> {
    ROUTES
        .iter()
        .map(|r| (r.method, route_path(r.path)))
        .collect()
}

/// A user of this API and a user of the local pool with the same, verified, address.
async fn app_user_with_cognito(ctx: &shared::Context) -> (TestUser, CognitoUser) {
    let user = create_user(ctx, &["user:read"]).await;
    let cognito = cognito_user(&user.user.email, true).await;
    (user, cognito)
}

/// The user has no identity link, live or not.
async fn assert_no_links(ctx: &shared::Context, uuid: UserId) {
    let links = ctx.store.identities_of(uuid).await.unwrap();
    assert!(links.is_empty(), "{links:?}");
}

/// The same context taking tokens with other settings (its own, empty JWKS cache).
fn with_settings(ctx: &shared::Context, settings: shared::tokens::TokenSettings) -> Api {
    Api::InProcess(Arc::new(
        ctx.with_store(ctx.store.clone())
            .with_token_settings(settings),
    ))
}

both!(
    a_cognito_access_token_works_on_every_route,
    |api, ctx| async move {
        // Each route's function meets a token's first use (and links it by the verified email);
        // a second user's token then goes to a function that finds the link already made.
        for (method, path) in every_route() {
            let (user, cognito) = app_user_with_cognito(&ctx).await;
            // A passkey route names one of the user's passkeys.
            let path = if path.contains(NO_SUCH_PASSKEY) {
                let key = create_key(&ctx, &user.user, &["*"]).await;
                let id = api
                    .add_passkey(&key, &mut api_tests::passkeys::Authenticator::new())
                    .await;
                path.replace(NO_SUCH_PASSKEY, &id)
            } else {
                path
            };
            let body = if method == "GET" {
                json!(null)
            } else {
                json!({})
            };
            let mut call = api.call(method, &path).bearer(&cognito.access_token);
            if method != "GET" {
                call = call.json(&body);
            }
            let reply = call.send().await;
            assert!(
                ![401, 403, 404, 405].contains(&reply.status) && reply.status < 500,
                "{method} {path}: {} {}",
                reply.status,
                reply.body
            );
            let me = api.get(ME).bearer(&cognito.access_token).send().await;
            me.assert_status(200);
            assert_eq!(me.json()["uuid"], json!(user.uuid().to_string()), "{path}");
            assert_eq!(me.json()["email"], json!(user.user.email));
            let links = ctx.store.identities_of(user.uuid()).await.unwrap();
            assert_eq!(links.len(), 1, "{path}");
            assert_eq!(links[0].subject, cognito.sub);
            assert_eq!(links[0].linked_by, LinkedBy::VerifiedEmail);
        }
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_creates_a_user_at_a_first_use_where_the_deployment_says_so() {
    let ctx = context().await;
    let mut settings = stack_token_settings();
    settings.new_identity = NewIdentity::CreateUser;
    let api = with_settings(&ctx, settings);
    for (method, path) in every_route() {
        let cognito = cognito_user(&unique_email("new"), true).await;
        assert_eq!(ctx.store.email_owner(&cognito.email).await.unwrap(), None);
        let mut call = api.call(method, &path).bearer(&cognito.access_token);
        if method != "GET" {
            call = call.json(&json!({}));
        }
        let reply = call.send().await;
        assert!(
            ![401, 403].contains(&reply.status) && reply.status < 500,
            "{method} {path}: {} {}",
            reply.status,
            reply.body
        );
        let owner = ctx
            .store
            .email_owner(&cognito.email)
            .await
            .unwrap()
            .expect("a user was created with the token's address");
        let user = ctx.store.user(owner).await.unwrap().expect("the user");
        assert!(user.is_active && !user.is_staff);
        assert_eq!(user.is_email_verified, Some(true));
        let links = ctx.store.identities_of(owner).await.unwrap();
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].linked_by, LinkedBy::NewUser);
        let me = api.get(ME).bearer(&cognito.access_token).send().await;
        assert_eq!(me.json()["uuid"], json!(owner.to_string()));
    }
}

both!(forged_and_wrong_tokens_are_refused, |api, ctx| async move {
    let (user, cognito) = app_user_with_cognito(&ctx).await;
    let genuine = claims_of(&cognito.access_token);
    // The genuine token's first use links the subject (moto's GetUser, which tells the
    // address, knows only the tokens moto issued).
    api.get(ME)
        .bearer(&cognito.access_token)
        .send()
        .await
        .assert_status(200);
    // Positive control: moto's claims signed again with moto's key by the tests pass, so each
    // refusal below is that one change's.
    let resigned = moto_signed(&genuine, json!({}));
    let reply = api.get(ME).bearer(&resigned).send().await;
    reply.assert_status(200);
    assert_eq!(reply.json()["uuid"], json!(user.uuid().to_string()));

    let keys = own_keys().await;
    let header_and_payload = |header: Value| {
        format!(
            "{}.{}",
            base64url(header.to_string().as_bytes()),
            base64url(genuine.to_string().as_bytes())
        )
    };
    let oversized = moto_signed(&genuine, json!({"padding": "x".repeat(9000)}));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "signed by another key under moto's kid",
            sign(Algorithm::RS256, Some("dummy"), &genuine, &keys.rsa),
            INVALID,
        ),
        (
            "alg none",
            format!(
                "{}.",
                header_and_payload(json!({"alg": "none", "typ": "JWT", "kid": "dummy"}))
            ),
            INVALID,
        ),
        (
            "alg none with moto's signature",
            format!(
                "{}.{}",
                header_and_payload(json!({"alg": "none", "kid": "dummy"})),
                resigned.rsplit('.').next().unwrap()
            ),
            INVALID,
        ),
        (
            "HS256 with the public key (PEM) as the secret",
            sign(
                Algorithm::HS256,
                Some("dummy"),
                &genuine,
                &EncodingKey::from_secret(keys.rsa_public_pem.as_bytes()).expect("an HMAC key"),
            ),
            INVALID,
        ),
        (
            "HS256 with moto's published JWK as the secret",
            sign(
                Algorithm::HS256,
                Some("dummy"),
                &genuine,
                &EncodingKey::from_secret(moto_public_jwk().await.to_string().as_bytes())
                    .expect("an HMAC key"),
            ),
            INVALID,
        ),
        (
            "ES256 under moto's RSA kid",
            sign(Algorithm::ES256, Some("dummy"), &genuine, &keys.ec),
            INVALID,
        ),
        (
            "PS256 with moto's key",
            sign(Algorithm::PS256, Some("dummy"), &genuine, &moto_key()),
            INVALID,
        ),
        (
            "unknown kid",
            sign(
                Algorithm::RS256,
                Some("not-a-key-of-the-pool"),
                &genuine,
                &keys.rsa,
            ),
            INVALID,
        ),
        (
            "no kid",
            sign(Algorithm::RS256, None, &genuine, &moto_key()),
            INVALID,
        ),
        (
            "expired beyond the leeway",
            moto_signed(&genuine, json!({"exp": now() - 61, "iat": now() - 3700})),
            EXPIRED,
        ),
        (
            "not yet valid beyond the leeway",
            moto_signed(&genuine, json!({"nbf": now() + 120})),
            INVALID,
        ),
        (
            "issued in the future beyond the leeway",
            moto_signed(&genuine, json!({"iat": now() + 120})),
            INVALID,
        ),
        (
            "no exp",
            moto_signed(&genuine, json!({"exp": null})),
            INVALID,
        ),
        (
            "another issuer",
            moto_signed(
                &genuine,
                json!({"iss": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_other"}),
            ),
            INVALID,
        ),
        (
            "the issuer with a trailing slash",
            moto_signed(
                &genuine,
                json!({"iss": format!("{}/", genuine["iss"].as_str().unwrap())}),
            ),
            INVALID,
        ),
        (
            "another app client",
            moto_signed(&genuine, json!({"client_id": "another-client"})),
            INVALID,
        ),
        (
            "an audience that is not ours, no client_id",
            moto_signed(
                &genuine,
                json!({"client_id": null, "aud": "another-client"}),
            ),
            INVALID,
        ),
        (
            "an ID token (token_use id)",
            moto_signed(&genuine, json!({"token_use": "id"})),
            INVALID,
        ),
        ("moto's own ID token", cognito.id_token.clone(), INVALID),
        (
            "an ID token's nonce, no token_use",
            moto_signed(&genuine, json!({"token_use": null, "nonce": "n-0"})),
            INVALID,
        ),
        (
            "an ID token's at_hash, no token_use",
            moto_signed(&genuine, json!({"token_use": null, "at_hash": "h"})),
            INVALID,
        ),
        (
            "an accepted client as aud, but another client_id",
            moto_signed(
                &genuine,
                json!({"aud": genuine["client_id"].clone(), "client_id": "another-client"}),
            ),
            INVALID,
        ),
        ("oversized", oversized, INVALID),
        ("garbage segments", "abc.def.ghi".to_string(), INVALID),
        ("empty segments", "..".to_string(), INVALID),
        (
            "a changed payload under moto's signature",
            {
                let mut parts: Vec<String> = resigned.split('.').map(str::to_string).collect();
                let mut claims = genuine.clone();
                claims["sub"] = json!("someone-else");
                parts[1] = base64url(claims.to_string().as_bytes());
                parts.join(".")
            },
            INVALID,
        ),
    ];
    for (case, token, detail) in &cases {
        let reply = api.get(ME).bearer(token).send().await;
        assert_eq!(reply.status, 401, "{case}: {}", reply.body);
        reply.assert_invalid_token(detail);
    }
    // A write route refuses them the same way and changes nothing.
    for (case, token, detail) in &cases {
        let reply = api
            .patch(ME)
            .send_json(token, &json!({"first_name": "Forged"}))
            .await;
        assert_eq!(reply.status, 401, "{case}");
        reply.assert_invalid_token(detail);
    }
    let stored = ctx.store.user(user.uuid()).await.unwrap().unwrap();
    assert_eq!(stored.first_name, "Test");
    // Nothing was linked to the subjects the forgeries named.
    assert!(ctx
        .store
        .identity_link(&IdentityKey::of(
            genuine["iss"].as_str().unwrap(),
            "someone-else"
        ))
        .await
        .unwrap()
        .is_none());
});

/// The pool's published key (moto's), as the JWKS serves it.
async fn moto_public_jwk() -> Value {
    let url = stack_token_settings().jwks_url;
    let set: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    set["keys"][0].clone()
}

both!(
    a_first_use_links_by_verified_email_only,
    |api, ctx| async move {
        let user = create_user(&ctx, &["user:read"]).await;
        // An address the pool has not verified: no link, whoever owns that address here.
        let unverified = cognito_user(&user.user.email, false).await;
        let reply = api.get(ME).bearer(&unverified.access_token).send().await;
        reply.assert_invalid_token(UNVERIFIED);
        assert_no_links(&ctx, user.uuid()).await;
        // An address nobody has here, verified: link-by-email (the stack's setting) refuses.
        let stranger = cognito_user(&unique_email("stranger"), true).await;
        let reply = api.get(ME).bearer(&stranger.access_token).send().await;
        reply.assert_invalid_token(NOT_LINKED);
        assert_eq!(ctx.store.email_owner(&stranger.email).await.unwrap(), None);
        // The address in another case is still that user's (addresses compare as the store does).
        let other = create_user(&ctx, &["user:read"]).await;
        let upper = cognito_user(&other.user.email.to_uppercase(), true).await;
        let reply = api.get(ME).bearer(&upper.access_token).send().await;
        reply.assert_status(200);
        assert_eq!(reply.json()["uuid"], json!(other.uuid().to_string()));
    }
);

both!(a_deactivated_users_tokens_get_401, |api, ctx| async move {
    let (user, cognito) = app_user_with_cognito(&ctx).await;
    api.get(ME)
        .bearer(&cognito.access_token)
        .send()
        .await
        .assert_status(200);
    deactivate(&ctx, user.uuid()).await;
    let links = ctx.store.identities_of(user.uuid()).await.unwrap();
    assert!(links.iter().all(|l| !l.user_is_active));
    for _ in 0..2 {
        let reply = api.get(ME).bearer(&cognito.access_token).send().await;
        reply.assert_invalid_token(INVALID);
    }
});

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deactivated_users_address_links_no_new_identity() {
    let ctx = context().await;
    let user = create_user(&ctx, &["user:read"]).await;
    deactivate(&ctx, user.uuid()).await;
    let cognito = cognito_user(&user.user.email, true).await;
    let api = Api::InProcess(Arc::new(context().await));
    let reply = api.get(ME).bearer(&cognito.access_token).send().await;
    reply.assert_invalid_token(INVALID);
    assert_no_links(&ctx, user.uuid()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_first_uses_create_one_user_and_one_link() {
    let ctx = context().await;
    let mut settings = stack_token_settings();
    settings.new_identity = NewIdentity::CreateUser;
    let api = with_settings(&ctx, settings);
    for _round in 0..3 {
        let cognito = cognito_user(&unique_email("race"), true).await;
        let replies = race_first_uses(&api, &cognito.access_token).await;
        let uuids: std::collections::BTreeSet<String> = replies
            .iter()
            .map(|r| {
                r.assert_status(200);
                r.json()["uuid"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(uuids.len(), 1, "every request is the same, one user");
        let owner = ctx
            .store
            .email_owner(&cognito.email)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(uuids.into_iter().next().unwrap(), owner.to_string());
        assert_eq!(ctx.store.identities_of(owner).await.unwrap().len(), 1);
    }
}

both!(
    racing_first_uses_link_an_existing_user_once,
    |api, ctx| async move {
        let (user, cognito) = app_user_with_cognito(&ctx).await;
        let replies = race_first_uses(&api, &cognito.access_token).await;
        for reply in &replies {
            reply.assert_status(200);
            assert_eq!(reply.json()["uuid"], json!(user.uuid().to_string()));
        }
        assert_eq!(ctx.store.identities_of(user.uuid()).await.unwrap().len(), 1);
    }
);

/// Ten `GET @me` with one token at once: a token's first uses, racing.
async fn race_first_uses(api: &Api, token: &str) -> Vec<Reply> {
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (api, token) = (api.clone(), token.to_string());
            tokio::spawn(async move { api.get(ME).bearer(&token).send().await })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("the request task"));
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_that_refuses_new_identities_takes_only_linked_ones() {
    let ctx = context().await;
    let mut settings = stack_token_settings();
    settings.new_identity = NewIdentity::Refuse;
    let api = with_settings(&ctx, settings.clone());
    let (user, cognito) = app_user_with_cognito(&ctx).await;
    let reply = api.get(ME).bearer(&cognito.access_token).send().await;
    reply.assert_invalid_token(NOT_LINKED);
    // An operator links it (as users-admin link-identity does).
    let link = IdentityLink::new(
        &settings.issuer,
        &cognito.sub,
        user.uuid(),
        false,
        LinkedBy::Operator,
    );
    let event = admin_event(
        link.user_uuid,
        shared::security_events::EventKind::IdentityLinked,
    );
    ctx.store.link_identity(&link, &event).await.unwrap();
    let reply = api.get(ME).bearer(&cognito.access_token).send().await;
    reply.assert_status(200);
    assert_eq!(reply.json()["uuid"], json!(user.uuid().to_string()));
    // Unlinked, it is refused again.
    assert!(ctx
        .store
        .unlink_identity(&link.key(), |u| admin_event(
            u,
            shared::security_events::EventKind::IdentityUnlinked
        ))
        .await
        .unwrap()
        .is_some());
    api.get(ME)
        .bearer(&cognito.access_token)
        .send()
        .await
        .assert_invalid_token(NOT_LINKED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_come_from_the_token_with_or_without_the_prefix() {
    let ctx = context().await;
    let mut settings = stack_token_settings();
    settings.first_party_clients = vec![];
    settings.scope_prefix = "posthog-users/".into();
    let api = with_settings(&ctx, settings.clone());
    let (user, cognito) = app_user_with_cognito(&ctx).await;
    // moto's own token names no scope of this API: with no first-party client, nothing, and
    // a token refused for its scope is refused before its identity is looked up: it links
    // nothing.
    api.get(ME)
        .bearer(&cognito.access_token)
        .send()
        .await
        .assert_error(
            403,
            "authentication_error",
            "permission_denied",
            "API key missing required scope 'user:read'",
            None,
        );
    assert_no_links(&ctx, user.uuid()).await;
    let link = IdentityLink::new(
        &settings.issuer,
        &cognito.sub,
        user.uuid(),
        false,
        LinkedBy::Operator,
    );
    ctx.store
        .link_identity(
            &link,
            &admin_event(
                link.user_uuid,
                shared::security_events::EventKind::IdentityLinked,
            ),
        )
        .await
        .unwrap();
    let genuine = claims_of(&cognito.access_token);
    let read_only = moto_signed(&genuine, json!({"scope": "openid posthog-users/user:read"}));
    api.get(ME)
        .bearer(&read_only)
        .send()
        .await
        .assert_status(200);
    api.patch_me(&read_only, &json!({"first_name": "No"}))
        .await
        .assert_error(
            403,
            "authentication_error",
            "permission_denied",
            "API key missing required scope 'user:write'",
            None,
        );
    for scope in ["posthog-users/user:write", "user:write", "*"] {
        let writer = moto_signed(&genuine, json!({"scope": scope}));
        api.patch_me(&writer, &json!({"first_name": "Yes"}))
            .await
            .assert_status(200);
    }
    assert_eq!(
        ctx.store
            .user(user.uuid())
            .await
            .unwrap()
            .unwrap()
            .first_name,
        "Yes"
    );
}

/// A context taking tokens of a test's own issuer, whose keys `server` serves, with a user
/// linked to subject `sub`.
async fn own_issuer(server: &JwksServer, sub: &str) -> (Api, TestUser, String) {
    let ctx = context().await;
    let issuer = format!("https://issuer.test/{}", uuid::Uuid::new_v4().simple());
    let settings = own_issuer_settings(&issuer, &server.url(), NewIdentity::Refuse);
    let api = with_settings(&ctx, settings);
    let user = create_user(&ctx, &["user:read"]).await;
    let link = IdentityLink::new(&issuer, sub, user.uuid(), false, LinkedBy::Operator);
    ctx.store
        .link_identity(
            &link,
            &admin_event(
                link.user_uuid,
                shared::security_events::EventKind::IdentityLinked,
            ),
        )
        .await
        .unwrap();
    (api, user, issuer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_and_rs256_of_any_issuer_and_one_jwks_fetch_per_process() {
    let keys = own_keys().await;
    let server = JwksServer::start(json!([
        jwk(&keys.rsa_jwk, "rsa-1", json!({"alg": "RS256", "use": "sig"})),
        jwk(&keys.ec_jwk, "ec-1", json!({})),
        {"kty": "OKP", "crv": "X25519", "kid": "not-for-signatures", "x": "AAAA"},
    ]))
    .await;
    let (api, user, issuer) = own_issuer(&server, "subject-1").await;
    assert_eq!(server.fetches(), 0, "no token yet, no fetch");
    let claims = own_claims(&issuer, "subject-1", "posthog-users/user:read");
    let rs = sign(Algorithm::RS256, Some("rsa-1"), &claims, &keys.rsa);
    let es = sign(Algorithm::ES256, Some("ec-1"), &claims, &keys.ec);
    for token in [&rs, &es, &rs, &es] {
        let reply = api.get(ME).bearer(token).send().await;
        reply.assert_status(200);
        assert_eq!(reply.json()["uuid"], json!(user.uuid().to_string()));
    }
    assert_eq!(server.fetches(), 1, "the key set is fetched once and kept");
    // An algorithm that does not fit the named key: ES256 under the RSA kid, RS256 under EC.
    let swapped = sign(Algorithm::ES256, Some("rsa-1"), &claims, &keys.ec);
    api.get(ME)
        .bearer(&swapped)
        .send()
        .await
        .assert_invalid_token(INVALID);
    let swapped = sign(Algorithm::RS256, Some("ec-1"), &claims, &keys.rsa);
    api.get(ME)
        .bearer(&swapped)
        .send()
        .await
        .assert_invalid_token(INVALID);
    // Forged key ids: refused, and they make no more than the one refresh per 5 minutes (here
    // none: the set was fetched just now).
    for i in 0..20 {
        let forged = sign(
            Algorithm::RS256,
            Some(&format!("forged-{i}")),
            &claims,
            &keys.rsa,
        );
        api.get(ME)
            .bearer(&forged)
            .send()
            .await
            .assert_invalid_token(INVALID);
    }
    assert_eq!(
        server.fetches(),
        1,
        "forged kids do not make the function fetch"
    );
    // Warm requests with good tokens make no call but DynamoDB's.
    for _ in 0..10 {
        api.get(ME).bearer(&es).send().await.assert_status(200);
    }
    assert_eq!(server.fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refreshes_the_keys_when_none_were_fetched_recently() {
    let keys = own_keys().await;
    // The set first lacks the key the token names: the first fetch is for the token itself,
    // so a kid it lacks is refused without a second fetch.
    let server = JwksServer::start(json!([jwk(&keys.ec_jwk, "ec-1", json!({}))])).await;
    let (api, user, issuer) = own_issuer(&server, "subject-2").await;
    let claims = own_claims(&issuer, "subject-2", "user:read");
    let rotated = sign(Algorithm::RS256, Some("rsa-2"), &claims, &keys.rsa);
    api.get(ME)
        .bearer(&rotated)
        .send()
        .await
        .assert_invalid_token(INVALID);
    server.set_keys(json!([
        jwk(&keys.ec_jwk, "ec-1", json!({})),
        jwk(&keys.rsa_jwk, "rsa-2", json!({}))
    ]));
    api.get(ME)
        .bearer(&rotated)
        .send()
        .await
        .assert_invalid_token(INVALID);
    assert_eq!(
        server.fetches(),
        1,
        "no refresh within 5 minutes of the last fetch"
    );
    // A fresh process (cold start) fetches again and takes the issuer's new key.
    let ctx = context().await;
    let settings = own_issuer_settings(&issuer, &server.url(), NewIdentity::Refuse);
    let cold = with_settings(&ctx, settings);
    let reply = cold.get(ME).bearer(&rotated).send().await;
    reply.assert_status(200);
    assert_eq!(reply.json()["uuid"], json!(user.uuid().to_string()));
    assert_eq!(server.fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_issuer_is_503_then_recovers() {
    let keys = own_keys().await;
    // A port with nothing behind it: connection refused.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let ctx = context().await;
    let issuer = format!("https://issuer.test/{}", uuid::Uuid::new_v4().simple());
    let url = format!("http://127.0.0.1:{port}/.well-known/jwks.json");
    let api = with_settings(
        &ctx,
        own_issuer_settings(&issuer, &url, NewIdentity::Refuse),
    );
    let user = create_user(&ctx, &["user:read"]).await;
    ctx.store
        .link_identity(
            &IdentityLink::new(&issuer, "s", user.uuid(), false, LinkedBy::Operator),
            &api_tests::admin_event(
                user.uuid(),
                shared::security_events::EventKind::IdentityLinked,
            ),
        )
        .await
        .unwrap();
    let token = sign(
        Algorithm::ES256,
        Some("ec-1"),
        &own_claims(&issuer, "s", "user:read"),
        &keys.ec,
    );
    for _ in 0..3 {
        let reply = api.get(ME).bearer(&token).send().await;
        reply.assert_error(
            503,
            "server_error",
            "service_unavailable",
            "The service is temporarily unavailable, please try again later.",
            None,
        );
    }
    // The issuer answers, but with an error: still a 503, never a 401.
    let server = JwksServer::start_on(port, json!([jwk(&keys.ec_jwk, "ec-1", json!({}))])).await;
    server.set_failing(true);
    tokio::time::sleep(shared::tokens::FAILED_FETCH_RETRY_AFTER).await;
    api.get(ME).bearer(&token).send().await.assert_error(
        503,
        "server_error",
        "service_unavailable",
        "The service is temporarily unavailable, please try again later.",
        None,
    );
    assert_eq!(server.fetches(), 1);
    // Failed fetches are not repeated per request within the retry interval.
    for _ in 0..5 {
        assert_eq!(api.get(ME).bearer(&token).send().await.status, 503);
    }
    assert_eq!(server.fetches(), 1);
    // Recovery: the issuer is back, and the next request after the interval succeeds.
    server.set_failing(false);
    tokio::time::sleep(shared::tokens::FAILED_FETCH_RETRY_AFTER).await;
    let reply = api.get(ME).bearer(&token).send().await;
    reply.assert_status(200);
    assert_eq!(reply.json()["uuid"], json!(user.uuid().to_string()));
    assert_eq!(server.fetches(), 2);
}

both!(api_keys_still_work_beside_tokens, |api, ctx| async move {
    let user = create_user(&ctx, &["user:read"]).await;
    let reply = api.get(ME).bearer(&user.key).send().await;
    reply.assert_status(200);
    assert_eq!(reply.json()["uuid"], json!(user.uuid().to_string()));
    // A key-shaped credential that is no key keeps the key's answer, not the token's.
    let reply = api
        .get(ME)
        .bearer("phx_0000000000000000000000000000000000000000000000000")
        .send()
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
});

both!(
    staff_and_unproved_addresses_are_never_linked_by_email,
    |api, ctx| async move {
        // Staff: their links are an operator's to make.
        let staff = create_staff(&ctx, &["user:read"]).await;
        let cognito = cognito_user(&staff.user.email, true).await;
        api.get(ME)
            .bearer(&cognito.access_token)
            .send()
            .await
            .assert_invalid_token(NOT_LINKED);
        assert_no_links(&ctx, staff.uuid()).await;
        // An address set without a code (no sender configured) is shown unverified and links no
        // token, whoever signs in with it: its owner never proved it.
        let quick = Api::InProcess(Arc::new(context_without_email().await));
        let user = create_user(&ctx, &["*"]).await;
        let claimed = unique_email("claimed");
        let reply = quick.request_email_change(&user.key, &claimed).await;
        let body = reply.ok_json();
        assert_eq!(
            (&body["email"], &body["is_email_verified"]),
            (&json!(claimed), &json!(false))
        );
        let victim = cognito_user(&claimed, true).await;
        api.get(ME)
            .bearer(&victim.access_token)
            .send()
            .await
            .assert_invalid_token(NOT_LINKED);
        assert_no_links(&ctx, user.uuid()).await;
    }
);

/// A subject whose first use was refused is refused again for a while without asking Cognito
/// or reading addresses: one unlinked account cannot make every request cost those calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_first_use_is_not_looked_into_again_at_once() {
    let ctx = context().await;
    let recorder = calls::Recorder::default();
    let api = Api::InProcess(Arc::new(recorder.instrument(&ctx)));
    let stranger = cognito_user(&unique_email("stranger"), true).await;
    api.get(ME)
        .bearer(&stranger.access_token)
        .send()
        .await
        .assert_invalid_token(NOT_LINKED);
    let first: Vec<String> = recorder
        .take()
        .iter()
        .map(|c| format!("{}:{}", c.service, c.operation))
        .collect();
    assert!(
        first.contains(&"cognito-idp:GetUser".to_string()),
        "{first:?}"
    );
    for _ in 0..5 {
        api.get(ME)
            .bearer(&stranger.access_token)
            .send()
            .await
            .assert_invalid_token(NOT_LINKED);
    }
    let again: Vec<String> = recorder
        .take()
        .iter()
        .map(|c| format!("{}:{}", c.service, c.operation))
        .collect();
    assert_eq!(
        again,
        vec!["dynamodb:GetItem".to_string(); 5],
        "only the link's read"
    );
}

/// An operator's unlink racing the same identity's first use (which links it again by
/// email), then a deactivation: whatever the order, no link stays live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unlink_racing_a_first_use_leaves_no_live_link_after_deactivation() {
    let ctx = context().await;
    let settings = stack_token_settings();
    let api = with_settings(&ctx, settings.clone());
    for _round in 0..5 {
        let (user, cognito) = app_user_with_cognito(&ctx).await;
        api.get(ME)
            .bearer(&cognito.access_token)
            .send()
            .await
            .assert_status(200);
        let key = IdentityKey::of(&settings.issuer, &cognito.sub);
        let unlink = {
            let store = ctx.store.clone();
            let key = key.clone();
            tokio::spawn(async move {
                store
                    .unlink_identity(&key, |u| {
                        api_tests::admin_event(
                            u,
                            shared::security_events::EventKind::IdentityUnlinked,
                        )
                    })
                    .await
            })
        };
        let uses: Vec<_> = (0..4)
            .map(|_| {
                let (api, token) = (api.clone(), cognito.access_token.clone());
                tokio::spawn(async move { api.get(ME).bearer(&token).send().await })
            })
            .collect();
        unlink.await.unwrap().unwrap();
        for u in uses {
            let reply = u.await.unwrap();
            assert!([200, 401].contains(&reply.status), "{}", reply.body);
        }
        deactivate(&ctx, user.uuid()).await;
        if let Some(link) = ctx.store.identity_link(&key).await.unwrap() {
            assert!(!link.user_is_active, "a link left live after deactivation");
        }
        let fresh = with_settings(&ctx, settings.clone());
        fresh
            .get(ME)
            .bearer(&cognito.access_token)
            .send()
            .await
            .assert_invalid_token(INVALID);
    }
}

/// First uses linking new identities to a user by its address, racing that user's
/// deactivation: however they interleave, once it is done no link of the user is live and
/// every one of those tokens gets 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_uses_racing_a_deactivation_leave_no_live_link() {
    let keys = own_keys().await;
    let server = JwksServer::start(json!([jwk(&keys.ec_jwk, "ec-1", json!({}))])).await;
    let ctx = context().await;
    let issuer = format!("https://issuer.test/{}", uuid::Uuid::new_v4().simple());
    let settings = own_issuer_settings(&issuer, &server.url(), NewIdentity::LinkByEmail);
    let api = with_settings(&ctx, settings.clone());
    for round in 0..4 {
        let user = create_user(&ctx, &["user:read"]).await;
        let subjects: Vec<String> = (0..3)
            .map(|i| format!("round-{round}-subject-{i}"))
            .collect();
        let tokens: Vec<String> = subjects
            .iter()
            .map(|sub| {
                let mut claims = own_claims(&issuer, sub, "user:read");
                claims["email"] = json!(user.user.email);
                claims["email_verified"] = json!(true);
                sign(Algorithm::ES256, Some("ec-1"), &claims, &keys.ec)
            })
            .collect();
        let uses: Vec<_> = tokens
            .iter()
            .map(|token| {
                let (api, token) = (api.clone(), token.clone());
                tokio::spawn(async move { api.get(ME).bearer(&token).send().await })
            })
            .collect();
        let deactivation = {
            let store = ctx.store.clone();
            let uuid = user.uuid();
            tokio::spawn(async move {
                store
                    .deactivate_user(
                        uuid,
                        &admin_event(uuid, shared::security_events::EventKind::UserDeactivated),
                    )
                    .await
            })
        };
        for u in uses {
            let reply = u.await.unwrap();
            assert!([200, 401].contains(&reply.status), "{}", reply.body);
        }
        assert!(deactivation.await.unwrap().unwrap());
        for sub in &subjects {
            if let Some(link) = ctx
                .store
                .identity_link(&IdentityKey::of(&issuer, sub))
                .await
                .unwrap()
            {
                assert!(!link.user_is_active, "a link left live after deactivation");
            }
        }
        let fresh = with_settings(&ctx, settings.clone());
        for token in &tokens {
            fresh
                .get(ME)
                .bearer(token)
                .send()
                .await
                .assert_invalid_token(INVALID);
        }
    }
}

/// An address that leaves its user between the first use's read of its owner and the link's
/// write: the link is checked against the address in the same transaction, so it is never
/// made to the user the address left (here: the address moved to another user).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_by_address_is_refused_once_the_address_is_another_users() {
    let ctx = context().await;
    let issuer = format!("https://issuer.test/{}", uuid::Uuid::new_v4().simple());
    let first = create_user(&ctx, &["user:read"]).await;
    let second = create_user(&ctx, &["user:read"]).await;
    let link = IdentityLink::new(&issuer, "s", first.uuid(), false, LinkedBy::VerifiedEmail);
    // The link names `first`, but the address checked is `second`'s.
    let write = ctx
        .store
        .link_identity_by_address(
            &link,
            &second.user.email,
            &api_tests::admin_event(
                link.user_uuid,
                shared::security_events::EventKind::IdentityLinked,
            ),
        )
        .await
        .unwrap();
    assert_eq!(write, shared::identities::LinkWrite::EmailTaken);
    assert!(ctx
        .store
        .identity_link(&link.key())
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        ctx.store
            .link_identity_by_address(
                &link,
                &first.user.email,
                &api_tests::admin_event(
                    link.user_uuid,
                    shared::security_events::EventKind::IdentityLinked
                )
            )
            .await
            .unwrap(),
        shared::identities::LinkWrite::Linked
    );
}
