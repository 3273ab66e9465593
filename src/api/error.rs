//! The API's errors, always `{"error": {"code", "message"}}` with the status DESIGN §5 fixes, and
//! the extractors (JSON body, path, query) that turn every way a request can be wrong into one.

use crate::subscription::store::StoreError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

/// Bodies larger than this are refused with 413; the largest valid one is a few KiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// An error response: the status, a stable machine-readable `code` and a sentence for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, at least 1) with 429 and 503.
    pub retry_after: Option<Duration>,
}

/// The error body, as documented in the OpenAPI document.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `unauthorized`, `not_found`, `webhook_limit_reached`,
    /// `duplicate_url`, `invalid_url`, `target_not_public`, `invalid_events`, `invalid_body`,
    /// `invalid_path`, `invalid_query`, `too_many_failed_signins`, `too_many_test_sends`,
    /// `timeout`, `unavailable`, `write_unconfirmed`, `store_error`, …
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
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` header.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
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

    /// 504: the request ran past `api.request_timeout` and was stopped.
    pub fn timed_out(limit: Duration) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "the request did not finish within {} and was stopped (api.request_timeout); \
                 for a test-send, the endpoint is slow to answer",
                humantime::format_duration(limit)
            ),
        )
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
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    /// The merchant's mistakes keep their 4xx; a failing or unreadable store is a 5xx whose
    /// message tells nothing of Redis or of what is stored: the cause goes to the log.
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
            e @ (StoreError::Redis(_) | StoreError::Timeout(_) | StoreError::Connect(_)) => {
                tracing::error!(error = %e, "the subscription store failed");
                ApiError::unavailable("the subscription store is unavailable; try again shortly")
                    .retry_after(Duration::from_secs(5))
            }
            e @ StoreError::Unconfirmed { .. } => {
                tracing::error!(error = %e, "a write was not confirmed by redis.min_replicas replicas");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "write_unconfirmed",
                    "the change is saved on the primary store but not yet confirmed by its \
                     replicas, so a failover now could lose it; read it back before trying again",
                )
                .retry_after(Duration::from_secs(5))
            }
            StoreError::Url(e) => ApiError::invalid("invalid_webhook", e.to_string()),
            StoreError::Missing(e) => {
                tracing::error!(error = %e, "refusing a write: the subscription store has no marker");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_missing",
                    "the subscription store is not initialised or was lost; the operators must \
                     run `hookrelay store init` or restore it (the API's log says where it looked)",
                )
                .retry_after(Duration::from_secs(30))
            }
            StoreError::Unreadable(e) => {
                tracing::error!(error = %e, "a stored record is unreadable");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_error",
                    "a stored record could not be read; the operators can see why in the API's log",
                )
            }
        }
    }
}

/// A path parameter. Unlike axum's `Path`, a rejection (e.g. a segment that is not UTF-8 once
/// percent-decoded) is an [`ApiError`].
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                e.body_text(),
            )),
        }
    }
}

/// A query string. Unlike axum's `Query`, a rejection is an [`ApiError`] (422, like any other
/// invalid field).
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(e) => Err(ApiError::invalid("invalid_query", e.body_text())),
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
