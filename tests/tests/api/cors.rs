//! CORS for web clients: template.yaml's CorsConfiguration, with the local CorsAllowOrigins,
//! applied by the local API as API Gateway applies it (scripts/local_api.py): preflights are
//! answered by the gateway and never reach a function, and the configured headers are added to
//! the answers to actual requests from an allowed origin. Every value asserted is read from the
//! template (`scripts/dev cors`), none is copied here.
use api_tests::*;
use serde_json::Value;

const ME: &str = "/api/users/@me/";
/// An origin no local configuration allows.
const STRANGER: &str = "https://evil.example";

/// The CORS configuration the local API applies: template.yaml's, its CorsAllowOrigins with
/// the local value (the account page's origin, on the port the tests were told of).
async fn configuration() -> Value {
    let page = reqwest::Url::parse(&passkeys::web_origin()).expect("the page's origin");
    let page_port = page.port_or_known_default().expect("a port").to_string();
    let list = stack_json_with(&["cors", "--page-port", page_port.as_str()]).await;
    assert_eq!(
        list.len(),
        1,
        "template.yaml's HttpApi has a CorsConfiguration"
    );
    list[0].clone()
}

fn names(config: &Value, key: &str) -> Vec<String> {
    config[key]
        .as_array()
        .unwrap_or_else(|| panic!("CorsConfiguration.{key}: {config}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

/// A comma-separated header value as its items, lower-cased.
fn items(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or("")
        .split(',')
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

fn lower(list: &[String]) -> Vec<String> {
    list.iter().map(|v| v.to_ascii_lowercase()).collect()
}

fn cors_headers(reply: &Reply) -> Vec<&(String, String)> {
    reply
        .headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("access-control-"))
        .collect()
}

async fn preflight(api: &Api, path: &str, origin: &str, method: &str, headers: &str) -> Reply {
    let mut call = api
        .call("OPTIONS", path)
        .header("origin", origin)
        .header("access-control-request-method", method);
    if !headers.is_empty() {
        call = call.header("access-control-request-headers", headers);
    }
    call.send().await
}

/// The allowed origins, which locally are listed (not `*`) so that others are refused.
fn allowed_origins(config: &Value) -> Vec<String> {
    let origins = names(config, "AllowOrigins");
    assert!(
        !origins.is_empty(),
        "CorsAllowOrigins allows some origin locally"
    );
    assert!(
        !origins.iter().any(|o| o.contains('*')),
        "locally CorsAllowOrigins lists origins: {origins:?}"
    );
    origins
}

/// Origins near the allowed ones (another scheme or port) and a stranger: none is allowed.
fn refused_origins(config: &Value) -> Vec<String> {
    let allowed = allowed_origins(config);
    let mut refused = vec![STRANGER.to_string(), "null".to_string()];
    for origin in &allowed {
        let url = reqwest::Url::parse(origin).expect("an allowed origin is a URL");
        let other_scheme = if url.scheme() == "https" {
            origin.replacen("https:", "http:", 1)
        } else {
            origin.replacen("http:", "https:", 1)
        };
        let port = url.port_or_known_default().expect("a port");
        let other_port = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().expect("a host"),
            port + 1
        );
        refused.extend([other_scheme, other_port]);
    }
    refused.retain(|o| !allowed.iter().any(|a| a.eq_ignore_ascii_case(o)));
    refused
}

/// A preflight from an allowed origin, for real routes with the headers a web app sends
/// (authorization, content-type), is answered by the gateway with the template's methods,
/// headers and max-age, and never reaches the function (which would refuse a request with no
/// credentials).
#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_answered_with_the_template_values() {
    let config = configuration().await;
    let api = Api::http();
    let methods = names(&config, "AllowMethods");
    let headers = names(&config, "AllowHeaders");
    let asked_headers = headers.join(", ");
    let max_age = config["MaxAge"]
        .as_i64()
        .unwrap_or_else(|| panic!("CorsConfiguration.MaxAge: {config}"))
        .to_string();
    let credentials = config["AllowCredentials"].as_bool().unwrap_or(false);
    for origin in allowed_origins(&config) {
        for (method, path) in [
            ("PATCH", ME),
            ("GET", ME),
            ("POST", "/api/users/@me/two_factor_validate/"),
            ("POST", "/api/users/verify_email/"),
        ] {
            assert!(methods.iter().any(|m| m == method), "{method} is allowed");
            let reply = preflight(&api, path, &origin, method, &asked_headers).await;
            let what = format!("preflight {method} {path} from {origin}");
            assert_eq!(reply.status, 204, "{what}: {}", reply.body);
            assert_eq!(reply.body, "", "{what}: no body");
            assert_eq!(
                reply.header("content-type"),
                None,
                "{what}: not a function's answer"
            );
            assert_eq!(
                reply.header("access-control-allow-origin"),
                Some(origin.as_str()),
                "{what}"
            );
            assert_eq!(
                items(reply.header("access-control-allow-methods")),
                lower(&methods),
                "{what}"
            );
            assert_eq!(
                items(reply.header("access-control-allow-headers")),
                lower(&headers),
                "{what}"
            );
            assert_eq!(
                reply.header("access-control-max-age"),
                Some(max_age.as_str()),
                "{what}"
            );
            assert_eq!(
                reply.header("access-control-allow-credentials"),
                credentials.then_some("true"),
                "{what}"
            );
            assert_eq!(
                reply.header("access-control-expose-headers"),
                None,
                "{what}: exposed headers are for actual responses"
            );
        }
    }
}

/// A preflight from an origin that is not listed, or for a method or a header the template
/// does not allow, is still answered by the gateway (the function never hears of it), but
/// with no CORS header: the browser refuses the request.
#[tokio::test]
async fn a_preflight_the_template_does_not_allow_is_refused() {
    let config = configuration().await;
    let api = Api::http();
    let methods = names(&config, "AllowMethods");
    let headers = lower(&names(&config, "AllowHeaders"));
    let origin = allowed_origins(&config).remove(0);
    let mut cases: Vec<(String, &str, String)> = refused_origins(&config)
        .into_iter()
        .map(|o| (o, "PATCH", headers.join(", ")))
        .collect();
    assert!(
        !methods.iter().any(|m| m == "DELETE"),
        "DELETE is not allowed"
    );
    cases.push((origin.clone(), "DELETE", String::new()));
    assert!(!headers.iter().any(|h| h == "x-not-allowed" || h == "*"));
    cases.push((
        origin.clone(),
        "PATCH",
        format!("{}, x-not-allowed", headers.join(", ")),
    ));
    for (origin, method, asked) in &cases {
        let reply = preflight(&api, ME, origin, method, asked).await;
        let what = format!("preflight {method} [{asked}] from {origin}");
        assert_eq!(reply.status, 204, "{what}: {}", reply.body);
        assert_eq!(reply.body, "", "{what}: not the function's answer");
        assert!(
            cors_headers(&reply).is_empty(),
            "{what}: no CORS header: {:?}",
            reply.headers
        );
    }
}

/// The answers to actual requests from an allowed origin carry the origin and the exposed
/// headers (so a web app can read `Retry-After` and `WWW-Authenticate`), errors included;
/// from another origin, or with no Origin, no CORS header at all.
#[tokio::test]
async fn an_actual_request_from_an_allowed_origin_carries_the_cors_headers() {
    let config = configuration().await;
    let api = Api::http();
    let ctx = context().await;
    let user = create_user(&ctx, &["*"]).await;
    let exposed = lower(&names(&config, "ExposeHeaders"));
    let credentials = config["AllowCredentials"].as_bool().unwrap_or(false);
    for origin in allowed_origins(&config) {
        for (key, status) in [(Some(user.key.as_str()), 200), (None, 401)] {
            let mut call = api.get(ME).header("origin", &origin);
            if let Some(key) = key {
                call = call.bearer(key);
            }
            let reply = call.send().await;
            let what = format!("GET {ME} from {origin} ({status})");
            assert_eq!(reply.status, status, "{what}: {}", reply.body);
            assert_eq!(
                reply.header("access-control-allow-origin"),
                Some(origin.as_str()),
                "{what}"
            );
            assert_eq!(
                items(reply.header("access-control-expose-headers")),
                exposed,
                "{what}"
            );
            assert_eq!(
                reply.header("access-control-allow-credentials"),
                credentials.then_some("true"),
                "{what}"
            );
            if status == 401 {
                assert!(reply.header("www-authenticate").is_some(), "{what}");
            }
        }
    }
    for origin in refused_origins(&config).into_iter().map(Some).chain([None]) {
        let mut call = api.get(ME).bearer(&user.key);
        if let Some(origin) = &origin {
            call = call.header("origin", origin);
        }
        let reply = call.send().await;
        assert_eq!(reply.status, 200, "from {origin:?}: {}", reply.body);
        assert!(
            cors_headers(&reply).is_empty(),
            "from {origin:?}: no CORS header: {:?}",
            reply.headers
        );
    }
}

/// An OPTIONS request that is not a preflight (no Access-Control-Request-Method) is routed
/// like any other: the fallback function answers it, with no CORS header.
#[tokio::test]
async fn an_options_request_that_is_not_a_preflight_reaches_the_function() {
    let config = configuration().await;
    let api = Api::http();
    let origin = allowed_origins(&config).remove(0);
    let reply = api
        .call("OPTIONS", ME)
        .header("origin", &origin)
        .send()
        .await;
    assert_eq!(reply.status, 405, "{}", reply.body);
    assert_eq!(reply.json()["code"], "method_not_allowed");
    assert!(
        cors_headers(&reply).is_empty(),
        "no CORS header: {:?}",
        reply.headers
    );
}
