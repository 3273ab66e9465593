//! The API's errors, always `{"error": {"code", "message"}}` with the status DESIGN §5 fixes, and
//! the JSON body extractor that turns every way a body can be wrong into one of them.

use crate::subscription::store::StoreError;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

/// Bodies larger than this are refused with 413; the largest valid one is a few KiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// An error response: the status, a stable machine-readable `code` and a sentence for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The error body, as documented in the OpenAPI document.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `unauthorized`, `not_found`, `webhook_limit_reached`,
    /// `duplicate_url`, `invalid_url`, `target_not_public`, `invalid_events`, `invalid_body`, …
    #[schema(example = "webhook_limit_reached")]
    pub code: String,
    /// A sentence for people.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid token as `Authorization: Bearer <token>`",
        )
    }

    /// Also the answer for another account's resources, so that their existence is not revealed.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    /// 422: a field of the request is invalid.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "API request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LimitReached(_) => ApiError::new(
                StatusCode::CONFLICT,
                "webhook_limit_reached",
                format!(
                    "an account can have at most {} webhooks; delete one to add another",
                    crate::subscription::MAX_WEBHOOKS_PER_ACCOUNT
                ),
            ),
            StoreError::DuplicateUrl { url, .. } => ApiError::new(
                StatusCode::CONFLICT,
                "duplicate_url",
                format!("this account already has a webhook for {url}"),
            ),
            StoreError::NotFound(_) => ApiError::not_found("webhook"),
            StoreError::Invalid(message) => ApiError::invalid("invalid_webhook", message),
            e @ (StoreError::Redis(_)
            | StoreError::Timeout(_)
            | StoreError::Corrupt(_)
            | StoreError::Connect(_)) => {
                ApiError::unavailable(format!("the subscription store failed: {e}"))
            }
        }
    }
}

/// A JSON request body. Unlike axum's `Json`, every rejection is an [`ApiError`]: 413 over
/// [`MAX_BODY_BYTES`], 415 when it is not declared JSON, 400 when it is not JSON at all, and 422
/// when a field is missing, unknown or of the wrong type.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = is_json(req.headers().get(header::CONTENT_TYPE));
        let bytes = read_body(req, state).await?;
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `content-type: application/json`",
            ));
        }
        parse(&bytes).map(Body)
    }
}

/// A JSON body that may be left out, empty or `null` (then `T::default()`).
pub struct OptionalBody<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.trim_ascii().is_empty() || bytes.trim_ascii() == b"null" {
            return Ok(OptionalBody(T::default()));
        }
        parse(&bytes).map(OptionalBody)
    }
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<bytes::Bytes, ApiError> {
    bytes::Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is over the limit of {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::new(e.status(), "invalid_body", e.body_text())
        }
    })
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid("invalid_body", e.to_string()),
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        ),
    })
}

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(mime) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = mime
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_recognised() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(is_json(Some(&HeaderValue::from_static(ok))), "{ok}");
        }
        for no in ["text/plain", "application/x-www-form-urlencoded", "json"] {
            assert!(!is_json(Some(&HeaderValue::from_static(no))), "{no}");
        }
        assert!(!is_json(None));
    }

    #[test]
    fn field_errors_are_422_and_syntax_errors_400() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct T {
            a: u8,
        }
        assert_eq!(parse::<T>(b"{\"a\":1}").unwrap().a, 1);
        assert_eq!(
            parse::<T>(b"{\"a\":\"x\"}").unwrap_err().status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            parse::<T>(b"{\"b\":1}").unwrap_err().status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            parse::<T>(b"{\"a\":").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            parse::<T>(b"nope").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }
}
