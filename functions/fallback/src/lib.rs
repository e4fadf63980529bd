//! The `$default` route: every unknown path is a 404 and every known path with another
//! method a 405 (with the `Allow` header RFC 9110 requires), in the API's error envelope.
use shared::lambda_http::http::HeaderValue;
use shared::lambda_http::{Body, Request, Response};
use shared::{http, routes, ApiError};
use std::convert::Infallible;

pub async fn handle(req: Request) -> Result<Response<Body>, Infallible> {
    let allow = allowed_methods(req.uri().path());
    let mut response = http::serve(&req, |req| async move { Err(answer(req)) }).await;
    if response.status() == 405 && !allow.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&allow.join(", ")) {
            response.headers_mut().insert("allow", value);
        }
    }
    Ok(response)
}

fn answer(req: &Request) -> ApiError {
    match routes::resolve(req.method().as_str(), req.uri().path()) {
        Err(error) => error,
        // A known route only reaches the fallback through a misconfigured router.
        Ok(_) => ApiError::NotFound,
    }
}

/// The methods the route table serves on this path (empty for an unknown path).
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    let mut methods: Vec<&'static str> = Vec::new();
    for route in routes::ROUTES {
        if !methods.contains(&route.method) && routes::resolve(route.method, path).is_ok() {
            methods.push(route.method);
        }
    }
    methods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_the_methods_of_the_path() {
        assert_eq!(allowed_methods("/api/users/@me/"), vec!["GET", "PATCH"]);
        assert_eq!(
            allowed_methods("/api/users/@me/two_factor_status"),
            vec!["GET"]
        );
        assert_eq!(
            allowed_methods("/api/users/cancel_email_change_request/"),
            vec!["PATCH"]
        );
        assert!(allowed_methods("/api/users/@me/nope").is_empty());
    }
}
