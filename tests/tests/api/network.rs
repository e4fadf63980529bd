//! What crosses the network on a cold start and after it, with every AWS endpoint behind TLS and
//! a round-trip delay (scripts/latency-proxy.py): the reads a cold start makes in the
//! background really overlap the request's own calls, an unauthenticated flood does not make the
//! function read its keys, and warm requests reuse one connection per endpoint. Counts and
//! overlaps only: the figures are the benchmark's (`scripts/dev bench --network`).
//!
//! Each test points the SDK's endpoints at the proxy through the standard variables
//! (`AWS_ENDPOINT_URL_*`, `AWS_CA_BUNDLE`) in its own process: nextest runs every test in a
//! process of its own.
use api_tests::calls::{sequential_depth, Recorder, SdkCall, DYNAMODB, SECRETS_MANAGER};
use api_tests::network::{port_of, scratch_dir, LatencyProxy};
use api_tests::*;
use std::sync::Arc;

/// The round trip of the tests that check overlap: long enough that two calls started
/// together overlap however the machine schedules them, short enough to keep the test quick.
const OVERLAP_RTT_MS: u32 = 40;

/// The proxy in front of DynamoDB Local and moto (Secrets Manager, SES, Cognito).
async fn proxy(tag: &str, rtt_ms: u32) -> LatencyProxy {
    let dynamodb = port_of(&env("AWS_ENDPOINT_URL_DYNAMODB"));
    let moto = port_of(&env("AWS_ENDPOINT_URL_SECRETS_MANAGER"));
    LatencyProxy::start(
        &scratch_dir(tag),
        &[
            ("dynamodb", dynamodb),
            ("secretsmanager", moto),
            ("sesv2", moto),
            ("cognito", moto),
            ("jwks", port_of(&env("TOKEN_JWKS_URL"))),
        ],
        rtt_ms,
    )
    .await
}

/// A function's context as a cold start builds it, every endpoint behind `proxy`; with
/// `connect_during_init` false its warm-up only reads the encryption keys.
async fn context_over(proxy: &LatencyProxy, connect_during_init: bool) -> shared::Context {
    for (var, name) in [
        ("AWS_ENDPOINT_URL_DYNAMODB", "dynamodb"),
        ("AWS_ENDPOINT_URL_SECRETS_MANAGER", "secretsmanager"),
        ("AWS_ENDPOINT_URL_SESV2", "sesv2"),
        ("AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER", "cognito"),
    ] {
        std::env::set_var(var, proxy.url(name));
    }
    std::env::set_var("AWS_CA_BUNDLE", &proxy.ca);
    // The issuer's keys too (another client, with its own trust: TOKEN_CA_BUNDLE).
    let jwks = env("TOKEN_JWKS_URL");
    let path = jwks.splitn(4, '/').nth(3).unwrap_or_default();
    std::env::set_var("TOKEN_JWKS_URL", format!("{}/{path}", proxy.url("jwks")));
    std::env::set_var("TOKEN_CA_BUNDLE", &proxy.ca);
    let mut config = shared::config::Config::from_env().expect("function environment");
    config.connect_during_init = connect_during_init;
    shared::Context::new(config, &shared::context::lambda_sdk_config().await)
}

fn of(calls: &[SdkCall], service: &str) -> Vec<SdkCall> {
    calls
        .iter()
        .filter(|c| c.service == service)
        .cloned()
        .collect()
}

fn overlap(a: &SdkCall, b: &SdkCall) -> bool {
    a.start < b.end && b.start < a.end
}

#[tokio::test]
async fn a_cold_start_reads_the_keys_beside_the_authentication_lookup() {
    // A user with 2FA on and backup codes, made over the plain local endpoints.
    let api = Api::in_process().await;
    let ctx = context().await;
    let user = create_user(&ctx, &["*"]).await;
    api.enable_2fa(&user.key).await;
    api.backup_codes(&user.key).await;

    let proxy = proxy("overlap", OVERLAP_RTT_MS).await;
    // Without the start-up's DynamoDB connection, whose read would be one more to tell apart.
    let over = context_over(&proxy, false).await;
    // As Context::from_env does at a cold start: the background work starts, then the first
    // event comes.
    let recorder = Recorder::default();
    let cold = recorder.instrument(&over).with_keys_unloaded();
    cold.warm_up();
    let reply = Api::InProcess(Arc::new(cold))
        .get("/api/users/@me/two_factor_status/")
        .bearer(&user.key)
        .send()
        .await;
    assert_eq!(
        reply.ok_json()["backup_codes"].as_array().map(Vec::len),
        Some(10)
    );

    let calls = recorder.take();
    let secrets = of(&calls, SECRETS_MANAGER);
    let dynamodb = of(&calls, DYNAMODB);
    assert_eq!(secrets.len(), 1, "the keys are read once: {calls:#?}");
    let first = dynamodb
        .iter()
        .min_by_key(|c| c.start)
        .expect("the authentication lookup");
    assert!(
        overlap(&secrets[0], first),
        "the read of the keys overlaps the authentication lookup: {calls:#?}"
    );
    // The read of the keys adds no step: the request waits for as many round trips one
    // after another as its DynamoDB calls alone make.
    assert_eq!(
        sequential_depth(&calls),
        sequential_depth(&dynamodb),
        "{calls:#?}"
    );
}

#[tokio::test]
async fn an_unauthenticated_flood_does_not_make_the_function_read_its_keys() {
    let proxy = proxy("flood", 0).await;
    let over = context_over(&proxy, false).await;
    let recorder = Recorder::default();
    let credentials = [
        None,
        Some(shared::auth::generate_api_key().0), // well formed, so it is looked up
        Some("eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiJ4In0.c2ln".to_string()),
    ];
    let flood = |ctx: Arc<shared::Context>| {
        let credentials = credentials.clone();
        async move {
            let api = Api::InProcess(ctx);
            let mut replies = vec![];
            for round in 0..10 {
                for credential in &credentials {
                    let mut call = api.get(if round % 2 == 0 {
                        "/api/users/@me/two_factor_status/"
                    } else {
                        "/api/users/@me/two_factor_start_setup/"
                    });
                    if let Some(c) = credential {
                        call = call.bearer(c);
                    }
                    replies.push(call.send().await);
                }
            }
            replies
        }
    };

    // A cold start that is never sent a valid credential: nothing reads the keys but the
    // start-up's own read, once.
    let cold = Arc::new(recorder.instrument(&over).with_keys_unloaded());
    cold.warm_up();
    for reply in flood(cold.clone()).await {
        assert_eq!(reply.status, 401, "{}", reply.body);
    }
    // The start-up's read may still be under way: wait for it, then for anything after it.
    let mut calls = vec![];
    while of(&calls, SECRETS_MANAGER).is_empty() {
        let more = eventually(
            || async { recorder.take() },
            |c: &Vec<SdkCall>| !c.is_empty(),
        )
        .await;
        assert!(!more.is_empty(), "the start-up reads the keys: {calls:#?}");
        calls.extend(more);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    calls.extend(recorder.take());
    assert_eq!(
        of(&calls, SECRETS_MANAGER).len(),
        1,
        "the start-up's read, and none per request: {calls:#?}"
    );
    assert!(
        of(&calls, DYNAMODB).len() >= 10,
        "the well-formed keys were looked up: {calls:#?}"
    );

    // Without the start-up's read (its failure, say), requests that fail authentication never
    // reach the keys at all.
    let unloaded = Arc::new(recorder.instrument(&over).with_keys_unloaded());
    for reply in flood(unloaded).await {
        assert_eq!(reply.status, 401, "{}", reply.body);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let calls = recorder.take();
    assert!(
        of(&calls, SECRETS_MANAGER).is_empty(),
        "a request that fails authentication does not read the keys: {calls:#?}"
    );
}

#[tokio::test]
async fn warm_requests_reuse_one_connection_per_endpoint() {
    let api = Api::in_process().await;
    let ctx = context().await;
    let user = create_user(&ctx, &["*"]).await;
    api.enable_2fa(&user.key).await;

    let proxy = proxy("reuse", 0).await;
    let over = Arc::new(context_over(&proxy, true).await.with_keys_unloaded());
    over.warm_up();
    let through = Api::InProcess(over);
    let status = |reply: Reply| assert_eq!(reply.status, 200, "{}", reply.body);
    status(
        through
            .get("/api/users/@me/two_factor_status/")
            .bearer(&user.key)
            .send()
            .await,
    );
    let cold = proxy.counts().await;
    assert!(cold["dynamodb"].handshakes >= 1, "{cold:?}");
    assert_eq!(cold["secretsmanager"].handshakes, 1, "{cold:?}");

    for i in 0..100 {
        let path = if i % 2 == 0 {
            "/api/users/@me/two_factor_status/"
        } else {
            "/api/users/@me/"
        };
        status(through.get(path).bearer(&user.key).send().await);
    }
    let warm = proxy.counts().await;
    for (endpoint, counts) in &warm {
        assert_eq!(
            counts.handshakes, cold[endpoint].handshakes,
            "{endpoint}: no new connection over 100 warm requests (cold {cold:?}, after {warm:?})"
        );
    }
    assert!(
        warm["dynamodb"].requests >= cold["dynamodb"].requests + 200,
        "each warm request made its DynamoDB calls: {warm:?}"
    );
}

#[tokio::test]
async fn a_cold_start_connects_to_dynamodb_before_its_first_event_and_leaves_the_issuer_alone() {
    let ctx = context().await;
    let user = create_user(&ctx, &["*"]).await;
    let proxy = proxy("init", 0).await;
    let over = context_over(&proxy, true).await;
    proxy.reset().await;

    // Before any event: the DynamoDB connections, one read on each; the issuer's keys wait
    // for a token (a function that only sees API keys never calls the issuer).
    let opened = shared::context::DYNAMODB_CONNECTIONS_AT_INIT;
    over.warm_up();
    let before = eventually(|| proxy.counts(), |c| c["dynamodb"].answers >= opened).await;
    // The answer is on its way back: let the start-up's read take it, and the connection go
    // back to the pool, before the event comes.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(before["dynamodb"].handshakes, opened, "{before:?}");
    assert_eq!(before["dynamodb"].requests, opened, "{before:?}");

    // The first event finds the connections open.
    let reply = Api::InProcess(Arc::new(over))
        .get(ME)
        .bearer(&user.key)
        .send()
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let after = proxy.counts().await;
    assert_eq!(after["dynamodb"].handshakes, opened, "{after:?}");
    assert!(after["dynamodb"].requests >= opened + 2, "{after:?}");
    assert_eq!(
        after["jwks"].connections, 0,
        "no token, no call to the issuer: {after:?}"
    );

    // CONNECT_DURING_INIT=false: no DynamoDB connection before the first event (the read of
    // the encryption keys stays: the tests' environment holds them).
    proxy.reset().await;
    let quiet = context_over(&proxy, false).await;
    quiet.warm_up();
    let keys_read = eventually(|| proxy.counts(), |c| c["secretsmanager"].requests >= 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let none = proxy.counts().await;
    assert_eq!(keys_read["secretsmanager"].requests, 1, "{keys_read:?}");
    assert_eq!(none["dynamodb"].connections, 0, "{none:?}");
    assert_eq!(none["jwks"].connections, 0, "{none:?}");
}
