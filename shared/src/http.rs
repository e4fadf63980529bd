//! Request parsing and response building shared by every handler.
use crate::error::ApiError;
use crate::fields::{python_type, Fields};
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;
use serde_json::Value;
use std::future::Future;
use std::time::Instant;

/// Bodies above this are refused with 413 before any parsing.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn body_bytes(req: &Request) -> &[u8] {
    match req.body() {
        Body::Empty => &[],
        Body::Text(text) => text.as_bytes(),
        Body::Binary(bytes) => bytes,
        _ => &[],
    }
}

pub fn check_body_size(req: &Request) -> Result<(), ApiError> {
    if body_bytes(req).len() > MAX_BODY_BYTES {
        return Err(ApiError::TooLarge);
    }
    Ok(())
}

/// U+FFFD as UTF-8: what a text body's invalid bytes become on their way to the function.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

fn not_utf8(media: &str) -> ApiError {
    let kind = if media == "application/x-www-form-urlencoded" {
        "Form"
    } else {
        "JSON"
    };
    ApiError::Parse(format!("{kind} parse error - the body is not valid UTF-8."))
}

/// Decodes a JSON or form-encoded body into fields. An empty body is no fields; a JSON body
/// that is not an object is refused the way DRF refuses it.
pub fn parse_fields(req: &Request) -> Result<Fields, ApiError> {
    check_body_size(req)?;
    let bytes = body_bytes(req);
    let media = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if bytes.iter().all(u8::is_ascii_whitespace)
        && (media.is_empty() || media != "application/json")
    {
        return Ok(Fields::new());
    }
    // A body that was not UTF-8 reaches the function either as raw bytes (API Gateway
    // base64-encodes what it does not read as text) or, when its content type is a text one,
    // with each invalid sequence replaced by U+FFFD: refuse both, as RFC 8259 and DRF do.
    let replaced = bytes.windows(REPLACEMENT.len()).any(|w| w == REPLACEMENT);
    if media.is_empty() || media == "application/json" || media.ends_with("+json") {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Fields::new());
        }
        if replaced {
            return Err(not_utf8(&media));
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::Parse(format!("JSON parse error - {e}")))?;
        return match value {
            Value::Object(map) => Ok(map),
            other => Err(ApiError::invalid_input(
                format!(
                    "Invalid data. Expected a dictionary, but got {}.",
                    python_type(&other)
                ),
                None,
            )),
        };
    }
    if media == "application/x-www-form-urlencoded" {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(bytes).map_err(|_| {
            ApiError::Parse("Form parse error - the body is not valid form data.".into())
        })?;
        // serde_urlencoded reads a name or value that is not UTF-8 (raw or %-encoded)
        // lossily, as U+FFFD.
        if replaced
            || pairs
                .iter()
                .any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}'))
        {
            return Err(not_utf8(&media));
        }
        // As in Django's QueryDict, the last value of a repeated key wins.
        return Ok(pairs
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect());
    }
    Err(ApiError::UnsupportedMediaType(media))
}

pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Result<Response<Body>, ApiError> {
    let body =
        serde_json::to_string(value).map_err(|e| ApiError::serialisation("response body", &e))?;
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::Text(body))
        .map_err(|_| ApiError::internal("http.response", "response not built"))
}

pub fn ok<T: Serialize + ?Sized>(value: &T) -> Result<Response<Body>, ApiError> {
    json(200, value)
}

pub fn no_content() -> Result<Response<Body>, ApiError> {
    Response::builder()
        .status(204)
        .body(Body::Empty)
        .map_err(|_| ApiError::internal("http.response", "response not built"))
}

/// The header the optional CloudFront distribution in front of the API adds to every request
/// it forwards (template.yaml, `EdgeProtection`).
pub const ORIGIN_VERIFY_HEADER: &str = "x-origin-verify";

/// With `ORIGIN_VERIFY_SECRET` set (the stack puts a CloudFront distribution with a WAF in
/// front of the API), a request that did not come through it (no or a wrong
/// `x-origin-verify` header) is refused before any other work: no lookup, no DynamoDB call.
fn check_origin(req: &Request) -> Result<(), ApiError> {
    use subtle::ConstantTimeEq;
    static SECRET: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let secret = SECRET.get_or_init(|| {
        std::env::var("ORIGIN_VERIFY_SECRET")
            .ok()
            .filter(|s| !s.is_empty())
    });
    let Some(secret) = secret else {
        return Ok(());
    };
    let presented = req
        .headers()
        .get(ORIGIN_VERIFY_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(presented.ct_eq(secret.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::PermissionDenied(
            "Requests must come through the API's CloudFront distribution.".into(),
        ))
    }
}

/// The Lambda request id of the invocation, "-" outside Lambda.
pub fn request_id(req: &Request) -> &str {
    req.lambda_context_ref()
        .map(|c| c.request_id.as_str())
        .unwrap_or("-")
}

/// Runs a handler, turns its error into the envelope, and writes the one log line of the
/// request: request and X-Ray trace ids, method, route, status and latency. Never the body or
/// headers.
pub async fn serve<'r, F, Fut>(req: &'r Request, handler: F) -> Response<Body>
where
    F: FnOnce(&'r Request) -> Fut,
    Fut: Future<Output = Result<Response<Body>, ApiError>>,
{
    let started = Instant::now();
    let route = crate::routes::resolve(req.method().as_str(), req.uri().path())
        .ok()
        .map(|m| m.route);
    let function = route.map(|r| r.function).unwrap_or("fallback");
    let answer = async {
        match check_origin(req) {
            Ok(()) => match handler(req).await {
                Ok(response) => (response, None),
                Err(error) => {
                    let reason = crate::metrics::auth_failure(&error);
                    (error.into_response(), reason)
                }
            },
            Err(refused) => (refused.into_response(), Some("origin_not_verified")),
        }
    };
    let (mut response, _) =
        crate::metrics::measured(answer, |(response, reason)| crate::metrics::Outcome {
            function,
            status: response.status().as_u16(),
            latency_ms: started.elapsed().as_secs_f64() * 1e3,
            auth_failure: *reason,
            request_id: request_id(req),
        })
        .await;
    // Responses carry TOTP secrets, backup codes and account data: no cache may keep one.
    response.headers_mut().insert(
        lambda_http::http::header::CACHE_CONTROL,
        lambda_http::http::HeaderValue::from_static("no-store"),
    );
    let route = route.map(|r| r.path).unwrap_or("$default");
    let lambda = req.lambda_context_ref();
    let request_id = request_id(req);
    let xray_trace_id = lambda
        .and_then(|c| c.xray_trace_id.as_deref())
        .unwrap_or("-");
    tracing::info!(
        request_id,
        xray_trace_id,
        method = req.method().as_str(),
        route,
        status = response.status().as_u16(),
        latency_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        "request"
    );
    response
}
