//! The functions' HTTPS client against a real TLS endpoint: DynamoDB Local behind a
//! TLS-terminating proxy (scripts/latency-proxy.py, with no delay) whose certificate comes from a certificate
//! authority made here with openssl. The compiled-in roots (Amazon Trust Services only) must
//! refuse it, `AWS_CA_BUNDLE` naming that authority must make the same call succeed, and a
//! bundle that is not certificates must be ignored without a panic.
//!
//! This test sets `AWS_CA_BUNDLE` in its own process: nextest runs every test in a process of
//! its own.
use api_tests::env;
use api_tests::network::{make_certificates, port_of, LatencyProxy};
use shared::error::ApiError;
use std::path::{Path, PathBuf};

/// The proxy (no delay) in front of DynamoDB Local, with the certificates in `dir`.
async fn start_proxy(dir: &Path) -> (LatencyProxy, u16) {
    start_proxy_to(dir, port_of(&env("AWS_ENDPOINT_URL_DYNAMODB"))).await
}

/// The proxy (no delay) in front of a loopback port; returns it and its port.
async fn start_proxy_to(dir: &Path, upstream_port: u16) -> (LatencyProxy, u16) {
    let proxy = LatencyProxy::start(dir, &[("upstream", upstream_port)], 0).await;
    let port = proxy.port("upstream");
    (proxy, port)
}

/// One GetItem through the proxy with a fresh SDK configuration built the way a function
/// builds its own (so it reads `AWS_CA_BUNDLE` as it is now).
async fn get_item_over_tls(port: u16) -> Result<(), ApiError> {
    get_item_over(&format!("https://localhost:{port}")).await
}

async fn get_item_over(endpoint: &str) -> Result<(), ApiError> {
    let sdk = shared::context::lambda_sdk_config().await;
    let conf = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .endpoint_url(endpoint)
        .build();
    let tables = shared::config::Config::from_env()
        .expect("function environment")
        .tables;
    let store = shared::store::Store::new(aws_sdk_dynamodb::Client::from_conf(conf), tables);
    // The store's own read of a key, whose SDK failure is the API error a function answers.
    store
        .api_key(&shared::auth::ApiKeyHash("sha256$tls-test".into()))
        .await
        .map(|found| assert!(found.is_none()))
}

fn set_ca_bundle(path: Option<&Path>) {
    match path {
        Some(p) => std::env::set_var("AWS_CA_BUNDLE", p),
        None => std::env::remove_var("AWS_CA_BUNDLE"),
    }
}

#[tokio::test]
async fn https_trusts_amazon_roots_and_aws_ca_bundle_only() {
    let dir: PathBuf = std::env::temp_dir().join(format!("api-tests-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let (_proxy, port) = start_proxy(&dir).await;

    // Negative control: the compiled-in roots do not include this authority.
    set_ca_bundle(None);
    let refused = get_item_over_tls(port).await;
    assert!(
        matches!(refused, Err(ApiError::Unavailable)),
        "an unknown authority must fail the TLS handshake (a 503), got {refused:?}"
    );

    // The same call with the authority in AWS_CA_BUNDLE reaches DynamoDB Local over TLS.
    set_ca_bundle(Some(&dir.join("ca.pem")));
    let accepted = get_item_over_tls(port).await;
    assert!(accepted.is_ok(), "with AWS_CA_BUNDLE: {accepted:?}");

    // A bundle that is not certificates is left out (logged), never a panic.
    std::fs::write(
        dir.join("junk.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    set_ca_bundle(Some(&dir.join("junk.pem")));
    let junk = get_item_over_tls(port).await;
    assert!(
        matches!(junk, Err(ApiError::Unavailable)),
        "junk bundle: {junk:?}"
    );

    // A certificate from the trusted authority but for another name is refused too: it
    // names localhost only, and this call goes to 127.0.0.1.
    set_ca_bundle(Some(&dir.join("ca.pem")));
    let wrong_name = get_item_over(&format!("https://127.0.0.1:{port}")).await;
    assert!(
        matches!(wrong_name, Err(ApiError::Unavailable)),
        "a certificate for another name: {wrong_name:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sign-in token issuer's keys over TLS: the JWKS client trusts the public web's roots,
/// which do not include an authority made here (a 503: the issuer cannot be reached safely),
/// and, given `TOKEN_CA_BUNDLE`'s authority instead, fetches the keys and takes the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_is_fetched_over_tls_trusting_web_roots_or_the_configured_bundle() {
    use api_tests::tokens::*;
    use serde_json::json;
    use shared::identities::{IdentityLink, LinkedBy};
    use shared::tokens::NewIdentity;
    let dir: PathBuf =
        std::env::temp_dir().join(format!("api-tests-jwks-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let keys = own_keys().await;
    let server = JwksServer::start(json!([jwk(&keys.ec_jwk, "ec-1", json!({}))])).await;
    let (_proxy, port) = start_proxy_to(&dir, server.port).await;
    let ctx = api_tests::context().await;
    let issuer = format!("https://issuer.test/{}", uuid::Uuid::new_v4().simple());
    let url = format!("https://localhost:{port}/.well-known/jwks.json");
    let user = api_tests::create_user(&ctx, &["user:read"]).await;
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
        jsonwebtoken::Algorithm::ES256,
        Some("ec-1"),
        &own_claims(&issuer, "s", "user:read"),
        &keys.ec,
    );
    let api_with = |ca_bundle: Option<PathBuf>| {
        let mut settings = own_issuer_settings(&issuer, &url, NewIdentity::Refuse);
        settings.ca_bundle = ca_bundle;
        api_tests::Api::InProcess(std::sync::Arc::new(
            ctx.with_store(ctx.store.clone())
                .with_token_settings(settings),
        ))
    };

    // The public web's roots (negative control): the handshake fails, nothing is fetched.
    let reply = api_with(None)
        .get(api_tests::ME)
        .bearer(&token)
        .send()
        .await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(server.fetches(), 0, "no request got past the handshake");

    // TOKEN_CA_BUNDLE naming the authority: the keys come over TLS and the token is taken.
    let reply = api_with(Some(dir.join("ca.pem")))
        .get(api_tests::ME)
        .bearer(&token)
        .send()
        .await;
    assert_eq!(reply.ok_json()["uuid"], json!(user.uuid().to_string()));
    assert_eq!(server.fetches(), 1);

    // A bundle that is not certificates is a deployment fault: a 500, logged, never a panic.
    std::fs::write(dir.join("junk.pem"), "not a certificate").unwrap();
    let reply = api_with(Some(dir.join("junk.pem")))
        .get(api_tests::ME)
        .bearer(&token)
        .send()
        .await;
    assert_eq!(reply.status, 500, "{}", reply.body);
    let _ = std::fs::remove_dir_all(&dir);
}
