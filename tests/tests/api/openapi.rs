//! openapi.yaml, template.yaml and the route table describe the same API: the same
//! operations (trailing slashes aside), served by the same functions, every function routed
//! and every route of API.md served. (The policies each function has are checked against
//! what it did in the tests by `scripts/dev test`'s check-policies step.)
use api_tests::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

fn field(r: &Value, name: &str) -> String {
    r[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} of {r}"))
        .to_string()
}

type Op = (String, String, String);

/// (method, path without the trailing slash, function).
fn normalised(method: &str, path: &str, function: &str) -> Op {
    (
        method.to_string(),
        path.strip_suffix('/').unwrap_or(path).to_string(),
        function.to_string(),
    )
}

fn route_table() -> BTreeSet<Op> {
    shared::routes::ROUTES
        .iter()
        .map(|r| normalised(r.method, r.path, r.function))
        .collect()
}

/// The routes of API.md §4 and §5 and the function that serves each.
const API_MD_ROUTES: &[(&str, &str, &str)] = &[
    (
        "GET",
        "/api/users/{uuid}/security_events/",
        "security-events",
    ),
    (
        "POST",
        "/api/users/{uuid}/push_tokens/unregister/",
        "push-tokens-unregister",
    ),
    (
        "POST",
        "/api/users/{uuid}/scene_personalisation/",
        "scene-personalisation",
    ),
    (
        "GET",
        "/api/users/{uuid}/start_2fa_setup/",
        "two-factor-start-setup",
    ),
    (
        "POST",
        "/api/users/{uuid}/two_factor_backup_codes/",
        "two-factor-backup-codes",
    ),
    (
        "POST",
        "/api/users/{uuid}/two_factor_disable/",
        "two-factor-disable",
    ),
    (
        "GET",
        "/api/users/{uuid}/two_factor_start_setup/",
        "two-factor-start-setup",
    ),
    (
        "GET",
        "/api/users/{uuid}/two_factor_status/",
        "two-factor-status",
    ),
    (
        "POST",
        "/api/users/{uuid}/two_factor_validate/",
        "two-factor-validate",
    ),
    (
        "POST",
        "/api/users/{uuid}/validate_2fa/",
        "two-factor-validate",
    ),
    (
        "PATCH",
        "/api/users/cancel_email_change_request/",
        "cancel-email-change-request",
    ),
    ("GET", "/api/users/{uuid}/", "get-user"),
    (
        "POST",
        "/api/users/{uuid}/push_tokens/",
        "push-tokens-register",
    ),
    ("PATCH", "/api/users/{uuid}/", "update-user"),
    ("POST", "/api/users/verify_email/", "verify-email"),
    (
        "POST",
        "/api/users/{uuid}/two_factor_verify/",
        "two-factor-verify",
    ),
    (
        "POST",
        "/api/webauthn/register/begin/",
        "webauthn-register-begin",
    ),
    (
        "POST",
        "/api/webauthn/register/complete/",
        "webauthn-register-complete",
    ),
    ("GET", "/api/webauthn/credentials/", "webauthn-credentials"),
    (
        "PATCH",
        "/api/webauthn/credentials/{id}/",
        "webauthn-credential-update",
    ),
    (
        "DELETE",
        "/api/webauthn/credentials/{id}/",
        "webauthn-credential-delete",
    ),
    (
        "POST",
        "/api/webauthn/credentials/{id}/verify/",
        "webauthn-verify-begin",
    ),
    (
        "POST",
        "/api/webauthn/credentials/{id}/verify_complete/",
        "webauthn-verify-complete",
    ),
    (
        "POST",
        "/api/users/{uuid}/two_factor_passkey_begin/",
        "two-factor-passkey-begin",
    ),
];

#[tokio::test]
async fn openapi_operations_are_the_template_routes_and_the_route_table() {
    let openapi = stack_json("openapi-routes").await;
    let template = stack_json("routes").await;

    let mut from_openapi = BTreeSet::new();
    for op in &openapi {
        let (method, path, function) = (
            field(op, "method"),
            field(op, "path"),
            field(op, "function"),
        );
        assert!(
            path.ends_with('/'),
            "openapi.yaml documents {method} {path} without its trailing slash"
        );
        assert!(
            from_openapi.insert(normalised(&method, &path, &function)),
            "openapi.yaml documents {method} {path} twice"
        );
    }
    let from_template: BTreeSet<Op> = template
        .iter()
        .filter(|r| field(r, "path") != "$default")
        .map(|r| {
            normalised(
                &field(r, "method"),
                &field(r, "path"),
                &field(r, "function"),
            )
        })
        .collect();
    assert_eq!(
        from_openapi, from_template,
        "openapi.yaml's operations (left) and template.yaml's routes (right) differ"
    );
    assert_eq!(
        from_openapi,
        route_table(),
        "openapi.yaml's operations (left) and shared::routes::ROUTES (right) differ"
    );
}

#[tokio::test]
async fn every_function_has_a_route_and_every_api_md_route_a_function() {
    let template = stack_json("routes").await;
    let functions: BTreeSet<String> = template.iter().map(|r| field(r, "function")).collect();
    // Every function of the template is a crate in functions/ and has a route.
    let crates: BTreeSet<String> = std::fs::read_dir(workspace_root().join("functions"))
        .expect("functions/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        functions, crates,
        "template.yaml's routed functions (left) and the crates in functions/ (right) differ"
    );
    let routed: BTreeSet<Op> = template
        .iter()
        .map(|r| (field(r, "method"), field(r, "path"), field(r, "function")))
        .collect();
    for (method, path, function) in API_MD_ROUTES {
        for spelling in [path.to_string(), path.trim_end_matches('/').to_string()] {
            assert!(
                routed.contains(&(method.to_string(), spelling.clone(), function.to_string())),
                "API.md's {method} {spelling} is not routed to {function} in template.yaml"
            );
        }
    }
    let api_md: BTreeSet<Op> = API_MD_ROUTES
        .iter()
        .map(|(m, p, f)| normalised(m, p, f))
        .collect();
    assert_eq!(
        api_md,
        route_table(),
        "API.md's routes (left) and the route table (right) differ"
    );
}

#[tokio::test]
async fn openapi_documents_every_status_an_operation_can_answer() {
    let openapi = stack_json("openapi-routes").await;
    // The failed-code limits, the email-change mail limit (and push-token registration
    // under contention) answer 429.
    let throttled: BTreeSet<&str> = [
        "two-factor-validate",
        "two-factor-verify",
        "verify-email",
        "update-user",
        "push-tokens-register",
    ]
    .into();
    let mut by_function: BTreeMap<String, usize> = BTreeMap::new();
    for op in &openapi {
        let label = format!("{} {}", field(op, "method"), field(op, "path"));
        let function = field(op, "function");
        *by_function.entry(function.clone()).or_default() += 1;
        let statuses: BTreeSet<String> = op["statuses"]
            .as_array()
            .expect("statuses")
            .iter()
            .map(|s| s.as_str().expect("status").to_string())
            .collect();
        let successes: Vec<&String> = statuses.iter().filter(|s| s.starts_with('2')).collect();
        assert_eq!(
            successes.len(),
            1,
            "{label}: one success status, got {successes:?}"
        );
        // Every route authenticates, authorises, size-checks and may meet an outage.
        for status in ["401", "403", "404", "405", "413", "500", "503"] {
            assert!(
                statuses.contains(status),
                "{label} does not document {status}"
            );
        }
        let body = op["body"].as_bool().expect("body");
        for status in ["400", "415"] {
            if body {
                assert!(
                    statuses.contains(status),
                    "{label} takes a body but does not document {status}"
                );
            }
        }
        if !body {
            assert!(
                !statuses.contains("415"),
                "{label} takes no body but documents 415"
            );
        }
        assert_eq!(
            statuses.contains("429"),
            throttled.contains(function.as_str()),
            "{label}: 429 is documented exactly where it can happen"
        );
    }
    assert_eq!(
        by_function.len(),
        shared::routes::ROUTES
            .iter()
            .map(|r| r.function)
            .collect::<BTreeSet<_>>()
            .len()
    );
}

/// A JSON body that is not UTF-8 is a 400 `parse_error`, straight into the handlers as API
/// Gateway would invoke them with its raw bytes (tests/tests/bodies.rs covers every route,
/// over HTTP too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_json_bodies_are_parse_errors() {
    let api = Api::in_process().await;
    let Api::InProcess(ctx) = &api else {
        unreachable!()
    };
    let user = create_user(ctx, &["*"]).await;
    let two_factor = [("POST", VALIDATE_2FA), ("POST", VERIFY_2FA)];
    for &(method, path) in super::requests::BODY_ROUTES.iter().chain(&two_factor) {
        for body in [
            vec![0xff, 0xfe, 0x00, 0x54],
            b"{\"token\": \"\xc3\x28\"}".to_vec(),
        ] {
            let reply = api
                .call(method, path)
                .send_raw(&user.key, "application/json", body)
                .await;
            reply.assert_parse_error();
        }
    }
}

/// A known path with another method is a 405 whose `Allow` lists the path's methods
/// (RFC 9110), in process and through the local router. (OPTIONS only in process: locally
/// cargo lambda watch answers it itself, as API Gateway answers CORS preflights.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_not_allowed_lists_the_allowed_methods() {
    for api in [Api::in_process().await, Api::http()] {
        for (method, path, allow) in [
            ("DELETE", "/api/users/@me/", "GET, PATCH"),
            ("PUT", "/api/users/@me", "GET, PATCH"),
            ("GET", "/api/users/@me/push_tokens/unregister/", "POST"),
            ("POST", "/api/users/@me/two_factor_status", "GET"),
            (
                "OPTIONS",
                "/api/users/cancel_email_change_request/",
                "PATCH",
            ),
            ("GET", "/api/users/verify_email/", "POST"),
        ] {
            if method == "OPTIONS" && api.is_http() {
                continue;
            }
            let reply = api.call(method, path).send().await;
            assert_eq!(reply.status, 405, "{method} {path}: {}", reply.body);
            assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
            assert_eq!(reply.json()["code"], "method_not_allowed");
        }
        let reply = api.get("/api/users/@me/nope/").send().await;
        assert_eq!(reply.status, 404);
        assert_eq!(reply.header("allow"), None);
    }
}
