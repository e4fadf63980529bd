//! The one error type of the API and its single mapping to status and envelope.
use lambda_http::{http::StatusCode, Body, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    /// A field or request rule failed (400 `validation_error`).
    #[error("validation error {code}")]
    Validation {
        code: &'static str,
        detail: String,
        attr: Option<String>,
    },
    /// The body is not valid for its content type (400 `parse_error`).
    #[error("parse error")]
    Parse(String),
    #[error("unsupported media type")]
    UnsupportedMediaType(String),
    #[error("not authenticated")]
    NotAuthenticated,
    #[error("authentication failed")]
    AuthenticationFailed,
    /// A sign-in token was refused; `reason` is logged (never the token), `detail` answered.
    #[error("invalid access token ({reason})")]
    InvalidToken {
        reason: &'static str,
        detail: &'static str,
    },
    #[error("permission denied")]
    PermissionDenied(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    /// A known path with another method; `allow` lists the path's methods (the `Allow` header).
    MethodNotAllowed {
        method: String,
        allow: Vec<&'static str>,
    },
    #[error("request too large")]
    TooLarge,
    #[error("throttled")]
    Throttled { retry_after_secs: u64 },
    /// A dependency (DynamoDB, Secrets Manager) is unreachable or throttling.
    #[error("service unavailable")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// A 400 `validation_error` on a field (or on the request when `attr` is `None`).
    pub fn validation(code: &'static str, detail: impl Into<String>, attr: Option<&str>) -> Self {
        ApiError::Validation {
            code,
            detail: detail.into(),
            attr: attr.map(str::to_string),
        }
    }

    pub fn required(attr: &str) -> Self {
        Self::validation("required", "This field is required.", Some(attr))
    }

    pub fn invalid_input(detail: impl Into<String>, attr: Option<&str>) -> Self {
        Self::validation("invalid_input", detail, attr)
    }

    /// A write that would make a stored item larger than DynamoDB allows (400 KB): the
    /// request's fault, refused as a 400 and nothing written.
    pub fn item_too_large() -> Self {
        Self::invalid_input(
            "This change would make the account's stored data larger than allowed.",
            None,
        )
    }

    /// A failure that is a bug of ours (or a broken deployment), never the caller's: what
    /// failed and its kind are logged (never data), the answer is a 500.
    pub fn internal(operation: &'static str, kind: &'static str) -> Self {
        tracing::error!(operation, kind, "internal failure");
        ApiError::Internal
    }

    /// A JSON (de)serialisation that cannot fail on our own types did: a bug of ours. Its
    /// category is logged (never the data), and the answer is a 500.
    pub fn serialisation(what: &'static str, err: &serde_json::Error) -> Self {
        tracing::error!(what, error_kind = ?err.classify(), "JSON (de)serialisation failed");
        ApiError::Internal
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation { .. } | ApiError::Parse(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotAuthenticated
            | ApiError::AuthenticationFailed
            | ApiError::InvalidToken { .. } => StatusCode::UNAUTHORIZED,
            ApiError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// `(type, code, detail, attr)` of the envelope.
    fn parts(&self) -> (&'static str, &'static str, String, Option<&str>) {
        match self {
            ApiError::Validation { code, detail, attr } => {
                ("validation_error", code, detail.clone(), attr.as_deref())
            }
            ApiError::Parse(detail) => ("invalid_request", "parse_error", detail.clone(), None),
            ApiError::UnsupportedMediaType(media) => (
                "invalid_request",
                "unsupported_media_type",
                format!("Unsupported media type \"{media}\" in request."),
                None,
            ),
            ApiError::NotAuthenticated => (
                "authentication_error",
                "not_authenticated",
                "Authentication credentials were not provided.".into(),
                None,
            ),
            ApiError::AuthenticationFailed => (
                "authentication_error",
                "authentication_failed",
                "Personal API key found in request Authorization header is invalid.".into(),
                None,
            ),
            ApiError::InvalidToken { detail, .. } => (
                "authentication_error",
                "authentication_failed",
                (*detail).into(),
                None,
            ),
            ApiError::PermissionDenied(detail) => (
                "authentication_error",
                "permission_denied",
                detail.clone(),
                None,
            ),
            ApiError::NotFound => ("invalid_request", "not_found", "Not found.".into(), None),
            ApiError::MethodNotAllowed { method, .. } => (
                "invalid_request",
                "method_not_allowed",
                format!("Method \"{method}\" not allowed."),
                None,
            ),
            ApiError::TooLarge => (
                "invalid_request",
                "request_too_large",
                "Request body is larger than the 64 KiB limit.".into(),
                None,
            ),
            ApiError::Throttled { retry_after_secs } => (
                "throttled_error",
                "throttled",
                format!("Request was throttled. Expected available in {retry_after_secs} seconds."),
                None,
            ),
            ApiError::Unavailable => (
                "server_error",
                "service_unavailable",
                "The service is temporarily unavailable, please try again later.".into(),
                None,
            ),
            ApiError::Internal => (
                "server_error",
                "error",
                "A server error occurred.".into(),
                None,
            ),
        }
    }

    /// The envelope body: `{"type", "code", "detail", "attr"}`.
    pub fn body(&self) -> serde_json::Value {
        let (kind, code, detail, attr) = self.parts();
        json!({"type": kind, "code": code, "detail": detail, "attr": attr})
    }

    pub fn into_response(self) -> Response<Body> {
        let mut builder = Response::builder()
            .status(self.status())
            .header("content-type", "application/json");
        match &self {
            ApiError::NotAuthenticated | ApiError::AuthenticationFailed => {
                builder = builder.header("www-authenticate", "Bearer");
            }
            // RFC 6750 §3.1: the client should sign in again (or refresh) rather than retry.
            ApiError::InvalidToken { .. } => {
                builder = builder.header("www-authenticate", "Bearer error=\"invalid_token\"");
            }
            ApiError::Throttled { retry_after_secs } => {
                builder = builder.header("retry-after", retry_after_secs.to_string());
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                builder = builder.header("allow", allow.join(", "));
            }
            _ => {}
        }
        builder
            .body(Body::Text(self.body().to_string()))
            .unwrap_or_else(|_| Response::new(Body::Empty))
    }

    /// Maps an AWS SDK failure: transport faults, timeouts and throttling are a 503, the rest
    /// a 500. Only the error's code is logged, never request data.
    pub fn from_sdk<E, R>(
        operation: &'static str,
        err: &aws_sdk_dynamodb::error::SdkError<E, R>,
    ) -> Self
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        use aws_sdk_dynamodb::error::SdkError;
        let unavailable = match err {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(service) => matches!(
                service.err().code(),
                Some(
                    "ProvisionedThroughputExceededException"
                        | "ThrottlingException"
                        | "RequestLimitExceeded"
                        | "InternalServerError"
                        | "ServiceUnavailable"
                        | "LimitExceededException"
                        | "InternalServiceError"
                        | "InternalFailure"
                )
            ),
            _ => false,
        };
        let code = match err {
            SdkError::ServiceError(service) => service.err().code().unwrap_or("unknown"),
            SdkError::TimeoutError(_) => "timeout",
            SdkError::DispatchFailure(_) => "dispatch_failure",
            SdkError::ResponseError(_) => "response_error",
            _ => "other",
        };
        let too_large = match err {
            SdkError::ServiceError(service) => {
                service.err().code() == Some("ValidationException")
                    && service
                        .err()
                        .message()
                        .is_some_and(|m| m.contains("Item size") || m.contains("item size"))
            }
            _ => false,
        };
        if too_large {
            tracing::warn!(
                operation,
                error_code = code,
                "write refused: item too large"
            );
            return Self::item_too_large();
        }
        tracing::error!(
            operation,
            error_code = code,
            unavailable,
            "dependency call failed"
        );
        if unavailable {
            ApiError::Unavailable
        } else {
            ApiError::Internal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_error_never_leaks() {
        assert_eq!(
            ApiError::Internal.body(),
            json!({"type":"server_error","code":"error","detail":"A server error occurred.","attr":null})
        );
    }

    #[test]
    fn throttled_carries_retry_after() {
        let response = ApiError::Throttled {
            retry_after_secs: 30,
        }
        .into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "30");
    }

    #[test]
    fn unauthenticated_carries_www_authenticate() {
        for err in [ApiError::NotAuthenticated, ApiError::AuthenticationFailed] {
            let response = err.into_response();
            assert_eq!(response.status(), 401);
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
        }
    }
}
