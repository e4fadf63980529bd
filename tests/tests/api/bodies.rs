//! Bodies that are not UTF-8, under a JSON, a text and a form content type, on every route of
//! the route table (and an unknown path): the function always answers, never a 5xx. In
//! process the handler gets the raw bytes. Over HTTP the local API hands them on as API
//! Gateway's HTTP API does (scripts/local_api.py): as the body's UTF-8 reading (U+FFFD for
//! each invalid sequence) under a text type, base64-encoded (so the raw bytes) under a form
//! type. `cargo lambda watch` alone answered a text-typed one with its own 500.
use api_tests::*;
use serde_json::Value;
use shared::routes::ROUTES;

/// Not UTF-8 inside a JSON string: its UTF-8 reading is valid JSON.
const IN_STRING: &[u8] = b"{\"token\": \"\xff\xfe\"}";
/// Not UTF-8 where a JSON value belongs: not JSON however it is read.
const NOT_JSON: &[u8] = b"{\"token\": \xff\xfe}";
/// Not UTF-8 once percent-decoded (a form body that is itself ASCII).
const PERCENT_ENCODED: &[u8] = b"token=%ff%fe";

const JSON: &str = "application/json";
const TEXT: &str = "text/plain";
const FORM: &str = "application/x-www-form-urlencoded";

/// The functions that read a body (`shared::http::parse_fields`); the others ignore it.
const READ_BODIES: &[&str] = &[
    "push-tokens-register",
    "push-tokens-unregister",
    "scene-personalisation",
    "two-factor-validate",
    "two-factor-verify",
    "update-user",
    "verify-email",
    "webauthn-register-complete",
    "webauthn-credential-update",
    "webauthn-verify-complete",
];

/// The answer is the function's: a 2xx, or a 4xx error envelope (`cargo lambda watch`'s own
/// 500 is `{"type":"https://httpstatuses.com/500","status":500,...}`).
#[track_caller]
fn assert_answered(reply: &Reply, what: &str) {
    assert!(
        reply.status < 500,
        "{what}: HTTP {}: {}",
        reply.status,
        reply.body
    );
    if reply.status >= 300 {
        let body: Value = serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {:?}", reply.body));
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap_or_else(|| panic!("{what}: not an object: {body}"))
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(keys, ["attr", "code", "detail", "type"], "{what}: {body}");
    }
}

/// Status, and the error code when there is one.
fn answer(reply: &Reply) -> (u16, Option<String>) {
    let code = serde_json::from_str::<Value>(&reply.body)
        .ok()
        .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_string));
    (reply.status, code.filter(|_| reply.status >= 300))
}

both!(
    non_utf8_bodies_reach_every_function,
    |api, ctx| async move {
        let mut routes: Vec<(&str, String, &str)> = ROUTES
            .iter()
            .map(|r| (r.method, route_path(r.path), r.function))
            .collect();
        routes.push(("POST", "/api/users/@me/no_such_route/".into(), "fallback"));
        for (method, path, function) in routes {
            // A fresh user per route, so no route's failed codes count against another's.
            let user = create_user(&ctx, &["*"]).await;
            let send = |media: &'static str, body: Vec<u8>| {
                api.call(method, &path)
                    .bearer(&user.key)
                    .raw(media, body)
                    .send()
            };
            let without_body = api.call(method, &path).bearer(&user.key).send().await;
            assert_answered(&without_body, &format!("{method} {path} without a body"));
            for media in [JSON, TEXT, FORM] {
                for body in [IN_STRING, NOT_JSON, PERCENT_ENCODED] {
                    let what = format!(
                        "{method} {path} {media} {:?}",
                        String::from_utf8_lossy(body)
                    );
                    let reply = send(media, body.to_vec()).await;
                    assert_answered(&reply, &what);
                    if !READ_BODIES.contains(&function) {
                        // The body is ignored: the answer is the route's usual one.
                        assert_eq!(
                            answer(&reply),
                            answer(&without_body),
                            "{what}: {}",
                            reply.body
                        );
                        continue;
                    }
                    match media {
                        // In process the raw bytes, over HTTP their UTF-8 reading (U+FFFD
                        // for each invalid sequence): a parse error either way.
                        JSON => reply.assert_parse_error(),
                        TEXT => reply.assert_error(
                            415,
                            "invalid_request",
                            "unsupported_media_type",
                            "Unsupported media type \"text/plain\" in request.",
                            None,
                        ),
                        _ => reply.assert_error(
                            400,
                            "invalid_request",
                            "parse_error",
                            "Form parse error - the body is not valid UTF-8.",
                            None,
                        ),
                    }
                }
            }
        }
    }
);
