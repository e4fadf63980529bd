//! The `$default` route: every unknown path is a 404 and every known path with another
//! method a 405 (with the `Allow` header RFC 9110 requires), in the API's error envelope.
use shared::lambda_http::{Body, Request, Response};
use shared::{http, routes, ApiError};
use std::convert::Infallible;

/// This function's name: its crate's, as the route table and template.yaml name it.
pub const FUNCTION: &str = env!("CARGO_PKG_NAME");

/// The Lambda handler: every request it gets is answered with an error.
pub async fn handle(req: Request) -> Result<Response<Body>, Infallible> {
    Ok(http::serve(&req, |req| async move { Err(answer(req)) }).await)
}

fn answer(req: &Request) -> ApiError {
    match routes::resolve(req.method().as_str(), req.uri().path()) {
        Err(error) => error,
        // A known route only reaches the fallback through a misconfigured router.
        Ok(_) => ApiError::NotFound,
    }
}
