//! The route table: the one list of every route, the function that serves it, the scope it
//! needs and whose account it may act on. The fallback function, the handlers, the tests
//! and the checks of `template.yaml` and the local router all read it.
use crate::error::ApiError;

/// What a credential must allow for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    UserRead,
    UserWrite,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::UserRead => "user:read",
            Scope::UserWrite => "user:write",
        }
    }
}

/// Which account a `{uuid}` path segment may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The route has no `{uuid}`; it acts on the caller.
    Caller,
    /// `@me` or the caller's uuid; staff may also name another active user.
    StaffMayTarget,
    /// Only ever the caller; another uuid is refused with this message for everyone.
    CallerOnly(&'static str),
    /// Only ever the caller; another uuid gets the usual non-staff message, or this one for staff.
    CallerOnlyStaffMessage(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    /// Path without the trailing slash; `{uuid}` (a user) and `{id}` (a passkey) each stand
    /// for one segment.
    pub path: &'static str,
    /// The binary (and SAM function) that serves the route.
    pub function: &'static str,
    pub scope: Scope,
    pub target: Target,
}

/// The refusal of another user's uuid (API.md §2), for staff too where the contract gives
/// staff no access to another user.
pub const NON_STAFF: &str =
    "As a non-staff user you're only allowed to access the `@me` user instance.";

const PUSH_TOKENS_ONLY_ME: &str = "Push tokens can only be managed via the `@me` path.";
const TWO_FACTOR_SETUP_ONLY_ME: &str =
    "Two-factor authentication can only be set up for your own account, via the `@me` path.";

macro_rules! route {
    ($method:literal, $path:literal, $function:literal, $scope:ident, $target:expr) => {
        Route {
            method: $method,
            path: $path,
            function: $function,
            scope: Scope::$scope,
            target: $target,
        }
    };
}

/// Every route the API serves. Unknown paths and wrong methods go to the `fallback` function.
pub const ROUTES: &[Route] = &[
    route!(
        "POST",
        "/api/users/{uuid}/push_tokens/unregister",
        "push-tokens-unregister",
        UserWrite,
        Target::CallerOnly(PUSH_TOKENS_ONLY_ME)
    ),
    route!(
        "POST",
        "/api/users/{uuid}/push_tokens",
        "push-tokens-register",
        UserWrite,
        Target::CallerOnly(PUSH_TOKENS_ONLY_ME)
    ),
    route!(
        "POST",
        "/api/users/{uuid}/scene_personalisation",
        "scene-personalisation",
        UserWrite,
        Target::StaffMayTarget
    ),
    route!(
        "GET",
        "/api/users/{uuid}/two_factor_start_setup",
        "two-factor-start-setup",
        UserWrite,
        Target::CallerOnlyStaffMessage(TWO_FACTOR_SETUP_ONLY_ME)
    ),
    route!(
        "GET",
        "/api/users/{uuid}/start_2fa_setup",
        "two-factor-start-setup",
        UserWrite,
        Target::CallerOnlyStaffMessage(TWO_FACTOR_SETUP_ONLY_ME)
    ),
    route!(
        "POST",
        "/api/users/{uuid}/two_factor_validate",
        "two-factor-validate",
        UserWrite,
        Target::CallerOnlyStaffMessage(TWO_FACTOR_SETUP_ONLY_ME)
    ),
    route!(
        "POST",
        "/api/users/{uuid}/validate_2fa",
        "two-factor-validate",
        UserWrite,
        Target::CallerOnlyStaffMessage(TWO_FACTOR_SETUP_ONLY_ME)
    ),
    route!(
        "POST",
        "/api/users/{uuid}/two_factor_verify",
        "two-factor-verify",
        UserWrite,
        Target::CallerOnlyStaffMessage(TWO_FACTOR_SETUP_ONLY_ME)
    ),
    // The sign-in check by passkey: its challenge (PostHog's /api/login/2fa/passkey/begin/).
    route!(
        "POST",
        "/api/users/{uuid}/two_factor_passkey_begin",
        "two-factor-passkey-begin",
        UserWrite,
        Target::CallerOnlyStaffMessage(TWO_FACTOR_SETUP_ONLY_ME)
    ),
    route!(
        "GET",
        "/api/users/{uuid}/two_factor_status",
        "two-factor-status",
        UserRead,
        Target::StaffMayTarget
    ),
    route!(
        "POST",
        "/api/users/{uuid}/two_factor_backup_codes",
        "two-factor-backup-codes",
        UserWrite,
        Target::StaffMayTarget
    ),
    route!(
        "POST",
        "/api/users/{uuid}/two_factor_disable",
        "two-factor-disable",
        UserWrite,
        Target::StaffMayTarget
    ),
    route!(
        "PATCH",
        "/api/users/cancel_email_change_request",
        "cancel-email-change-request",
        UserWrite,
        Target::Caller
    ),
    route!(
        "POST",
        "/api/users/verify_email",
        "verify-email",
        UserWrite,
        Target::Caller
    ),
    // The account's audit trail (not in PostHog's API).
    route!(
        "GET",
        "/api/users/{uuid}/security_events",
        "security-events",
        UserRead,
        Target::StaffMayTarget
    ),
    route!(
        "GET",
        "/api/users/{uuid}",
        "get-user",
        UserRead,
        Target::StaffMayTarget
    ),
    // Passkeys: always the caller's own (another user's passkey id is a 404).
    route!(
        "POST",
        "/api/webauthn/register/begin",
        "webauthn-register-begin",
        UserWrite,
        Target::Caller
    ),
    route!(
        "POST",
        "/api/webauthn/register/complete",
        "webauthn-register-complete",
        UserWrite,
        Target::Caller
    ),
    route!(
        "GET",
        "/api/webauthn/credentials",
        "webauthn-credentials",
        UserRead,
        Target::Caller
    ),
    route!(
        "PATCH",
        "/api/webauthn/credentials/{id}",
        "webauthn-credential-update",
        UserWrite,
        Target::Caller
    ),
    route!(
        "DELETE",
        "/api/webauthn/credentials/{id}",
        "webauthn-credential-delete",
        UserWrite,
        Target::Caller
    ),
    route!(
        "POST",
        "/api/webauthn/credentials/{id}/verify",
        "webauthn-verify-begin",
        UserWrite,
        Target::Caller
    ),
    route!(
        "POST",
        "/api/webauthn/credentials/{id}/verify_complete",
        "webauthn-verify-complete",
        UserWrite,
        Target::Caller
    ),
    // Staff may read another user's profile, not rewrite it or its email (API.md §2).
    route!(
        "PATCH",
        "/api/users/{uuid}",
        "update-user",
        UserWrite,
        Target::CallerOnly(NON_STAFF)
    ),
];

/// The function that answers every other path and method (`$default`).
pub const FALLBACK_FUNCTION: &str = "fallback";

/// A request matched to its route, with the raw `{uuid}` and `{id}` segments when the route
/// has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub route: &'static Route,
    pub uuid: Option<String>,
    pub id: Option<String>,
}

/// The path parameters a route pattern may hold.
const PARAMS: [&str; 2] = ["{uuid}", "{id}"];

/// Finds the route for a method and path the way API Gateway and PostHog's router do:
/// the trailing slash is optional, a static segment beats `{uuid}`, and a known path with
/// another method is a 405.
pub fn resolve(method: &str, path: &str) -> Result<Matched, ApiError> {
    let segments = split(path).ok_or(ApiError::NotFound)?;
    // The most specific pattern that matches the path: fewest `{uuid}` segments.
    let mut best: Option<(usize, &'static str)> = None;
    for route in ROUTES {
        if let Some(params) = match_pattern(route.path, &segments) {
            if best.is_none_or(|(p, _)| params < p) {
                best = Some((params, route.path));
            }
        }
    }
    let (_, pattern) = best.ok_or(ApiError::NotFound)?;
    let route = ROUTES
        .iter()
        .find(|r| r.path == pattern && r.method.eq_ignore_ascii_case(method))
        .ok_or_else(|| ApiError::MethodNotAllowed {
            method: method.to_ascii_uppercase(),
            allow: ROUTES
                .iter()
                .filter(|r| r.path == pattern)
                .map(|r| r.method)
                .collect(),
        })?;
    let param = |name: &str| {
        split(route.path)
            .into_iter()
            .flatten()
            .zip(&segments)
            .find(|(p, _)| *p == name)
            .map(|(_, s)| s.to_string())
    };
    Ok(Matched {
        route,
        uuid: param("{uuid}").map(|s| decode_me(&s)),
        id: param("{id}"),
    })
}

/// Splits a path into segments, accepting one optional trailing slash and nothing odd
/// (empty segments in the middle make the path unknown).
fn split(path: &str) -> Option<Vec<&str>> {
    let trimmed = path.strip_prefix('/')?;
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let segments: Vec<&str> = trimmed.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    Some(segments)
}

fn match_pattern(pattern: &str, segments: &[&str]) -> Option<usize> {
    let parts = split(pattern)?;
    if parts.len() != segments.len() {
        return None;
    }
    let mut params = 0;
    for (p, s) in parts.iter().zip(segments) {
        if PARAMS.contains(p) {
            params += 1;
        } else if p != s {
            return None;
        }
    }
    Some(params)
}

/// API Gateway decodes `%40me`; the local router does not. Both mean `@me`.
fn decode_me(segment: &str) -> String {
    if segment.eq_ignore_ascii_case("%40me") {
        "@me".to_string()
    } else {
        segment.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_slash_is_optional() {
        let a = resolve("GET", "/api/users/@me/two_factor_status").unwrap();
        let b = resolve("GET", "/api/users/@me/two_factor_status/").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.route.function, "two-factor-status");
        assert_eq!(a.uuid.as_deref(), Some("@me"));
    }

    #[test]
    fn static_segment_beats_uuid_and_wrong_method_is_405() {
        let m = resolve("PATCH", "/api/users/cancel_email_change_request/").unwrap();
        assert_eq!(m.route.function, "cancel-email-change-request");
        assert_eq!(m.uuid, None);
        assert!(matches!(
            resolve("GET", "/api/users/cancel_email_change_request/"),
            Err(ApiError::MethodNotAllowed { method, allow }) if method == "GET" && allow == vec!["PATCH"]
        ));
    }

    #[test]
    fn a_405_names_every_method_of_the_path() {
        assert!(matches!(
            resolve("DELETE", "/api/users/@me/"),
            Err(ApiError::MethodNotAllowed { allow, .. }) if allow == vec!["GET", "PATCH"]
        ));
        let response = resolve("GET", "/api/users/@me/two_factor_disable")
            .unwrap_err()
            .into_response();
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()["allow"], "POST");
    }

    #[test]
    fn unknown_paths_are_404() {
        for path in [
            "/",
            "/api/users",
            "/api/users/@me/nope",
            "/api/users//two_factor_status",
            "api/users/@me",
            "/api/users/@me//",
        ] {
            assert!(
                matches!(resolve("GET", path), Err(ApiError::NotFound)),
                "{path}"
            );
        }
    }

    #[test]
    fn percent_encoded_me_is_me() {
        let m = resolve("GET", "/api/users/%40me/").unwrap();
        assert_eq!(m.route.function, "get-user");
        assert_eq!(m.uuid.as_deref(), Some("@me"));
    }

    #[test]
    fn aliases_share_a_function() {
        let a = resolve("GET", "/api/users/@me/start_2fa_setup/").unwrap();
        let b = resolve("GET", "/api/users/@me/two_factor_start_setup/").unwrap();
        assert_eq!(a.route.function, b.route.function);
    }
}
