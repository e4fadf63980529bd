//! template.yaml's routes (as `scripts/dev routes` reads them) are the route table.
use api_tests::*;
use std::collections::BTreeSet;

async fn template_routes() -> Vec<(String, String, String)> {
    stack_json("routes")
        .await
        .iter()
        .map(|r| {
            let field = |name: &str| {
                r[name]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name} of {r}"))
                    .to_string()
            };
            (field("method"), field("path"), field("function"))
        })
        .collect()
}

#[tokio::test]
async fn template_routes_are_the_route_table() {
    let template = template_routes().await;
    let defaults: Vec<_> = template
        .iter()
        .filter(|(_, path, _)| path == "$default")
        .collect();
    assert_eq!(
        defaults,
        vec![&(
            "ANY".to_string(),
            "$default".to_string(),
            shared::routes::FALLBACK_FUNCTION.to_string()
        )],
        "exactly one $default route, to the fallback"
    );
    let from_template: BTreeSet<(String, String, String)> = template
        .iter()
        .filter(|(_, path, _)| path != "$default")
        .map(|(method, path, function)| {
            (
                method.clone(),
                path.strip_suffix('/').unwrap_or(path).to_string(),
                function.clone(),
            )
        })
        .collect();
    let from_table: BTreeSet<(String, String, String)> = shared::routes::ROUTES
        .iter()
        .map(|r| {
            (
                r.method.to_string(),
                r.path.to_string(),
                r.function.to_string(),
            )
        })
        .collect();
    assert_eq!(from_template, from_table);
    // Both spellings of every route, and nothing twice.
    let all: BTreeSet<&(String, String, String)> = template.iter().collect();
    assert_eq!(all.len(), template.len(), "no route is declared twice");
    for r in shared::routes::ROUTES {
        for path in [r.path.to_string(), format!("{}/", r.path)] {
            let entry = (r.method.to_string(), path.clone(), r.function.to_string());
            assert!(
                all.contains(&entry),
                "template.yaml lacks {} {path} -> {}",
                r.method,
                r.function
            );
        }
    }
    assert_eq!(template.len(), 2 * shared::routes::ROUTES.len() + 1);
}

#[test]
fn route_table_covers_the_issue_two_routes() {
    let expected = [
        (
            "POST",
            "/api/users/{uuid}/push_tokens/unregister",
            "push-tokens-unregister",
            "user:write",
        ),
        (
            "POST",
            "/api/users/{uuid}/push_tokens",
            "push-tokens-register",
            "user:write",
        ),
        (
            "POST",
            "/api/users/{uuid}/scene_personalisation",
            "scene-personalisation",
            "user:write",
        ),
        (
            "PATCH",
            "/api/users/cancel_email_change_request",
            "cancel-email-change-request",
            "user:write",
        ),
        (
            "POST",
            "/api/users/verify_email",
            "verify-email",
            "user:write",
        ),
        ("GET", "/api/users/{uuid}", "get-user", "user:read"),
        ("PATCH", "/api/users/{uuid}", "update-user", "user:write"),
        (
            "GET",
            "/api/users/{uuid}/two_factor_status",
            "two-factor-status",
            "user:read",
        ),
    ];
    for (method, path, function, scope) in expected {
        let route = shared::routes::ROUTES
            .iter()
            .find(|r| r.method == method && r.path == path)
            .unwrap_or_else(|| panic!("no route {method} {path}"));
        assert_eq!(route.function, function);
        assert_eq!(route.scope.as_str(), scope, "{method} {path}");
    }
    // Every other route needs user:write (API.md §2).
    for r in shared::routes::ROUTES {
        if !(r.method == "GET"
            && (r.path == "/api/users/{uuid}"
                || r.path == "/api/users/{uuid}/two_factor_status"
                || r.path == "/api/users/{uuid}/security_events"
                || r.path == "/api/webauthn/credentials"))
        {
            assert_eq!(r.scope.as_str(), "user:write", "{} {}", r.method, r.path);
        }
    }
}

/// The harness invokes exactly the functions of the route table (and the fallback): a new
/// endpoint's crate cannot be left out of the in-process tests.
#[test]
fn the_harness_invokes_every_function_of_the_route_table() {
    let harness: BTreeSet<&str> = FUNCTIONS.iter().copied().collect();
    assert_eq!(harness.len(), FUNCTIONS.len(), "no function listed twice");
    let table: BTreeSet<&str> = shared::routes::ROUTES
        .iter()
        .map(|r| r.function)
        .chain([shared::routes::FALLBACK_FUNCTION])
        .collect();
    assert_eq!(harness, table);
}
