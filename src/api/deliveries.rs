//! What a merchant does about deliveries: send an example event now (`…/test`), read the recent
//! attempts (`…/attempts`) and resend one attempt's event (`…/events/{event_id}/resend`), which
//! starts a fresh round of attempts through the broker with the same `webhook-id`.

use super::auth::Caller;
use super::error::{ApiError, ErrorBody, OptionalBody, Path, Query};
use super::examples;
use super::webhooks::WebhookPath;
use super::AppState;
use crate::delivery::format::PreparedEvent;
use crate::event::{Event, EventType};
use crate::messages::DeliveryJob;
use crate::subscription::attempts::{self, AttemptRecord, LOG_SIZE, RESEND_MAX_BYTES};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// Which example to send; by default the first type the webhook receives.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// A type the webhook receives now.
    #[schema(example = "payment.card.success")]
    pub event_type: Option<String>,
}

/// What the endpoint answered: `status`, `duration_ms` and `response_excerpt`, or the `error`
/// when there was no response.
#[derive(Serialize, ToSchema)]
pub struct TestResult {
    pub event_id: String,
    pub event_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_excerpt: Option<String>,
}

#[utoipa::path(post, path = "/v1/accounts/{account_id}/webhooks/{webhook_id}/test",
    tag = "deliveries", params(WebhookPath), request_body(content = Option<TestRequest>),
    responses(
        (status = 200, description = "The attempt was made; what the endpoint answered", body = TestResult),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such webhook for this caller", body = ErrorBody),
        (status = 422, description = "Unknown event type, or one the webhook does not receive", body = ErrorBody),
        (status = 429, description = "The account has api.test_sends_per_account test-sends in flight", body = ErrorBody),
        (status = 503, description = "The server has too many test-sends in flight", body = ErrorBody),
        (status = 504, description = "No answer within api.request_timeout", body = ErrorBody),
    ))]
pub async fn send_test(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<WebhookPath>,
    OptionalBody(body): OptionalBody<TestRequest>,
) -> Result<Json<TestResult>, ApiError> {
    let (account, id) = path.resolve(&caller)?;
    // Held until the answer: a test-send is an outbound request made on the caller's behalf.
    let _slot = state.limits.test_sends.try_take(&account)?;
    let webhook = state.store.get(&account, &id).await?;
    let event_type = match body.event_type {
        None => examples::default_type(webhook.events),
        Some(label) => {
            let t: EventType = label.parse().map_err(|e: crate::event::UnknownEventType| {
                ApiError::invalid("invalid_event_type", e.to_string())
            })?;
            if !webhook.events.matches(t) {
                return Err(ApiError::invalid(
                    "event_type_not_subscribed",
                    format!("this webhook does not receive {t}; send one of the types it receives"),
                ));
            }
            t
        }
    };
    let event = PreparedEvent::new(examples::example_event(event_type, &account));
    let report = state.deliverer.attempt(&webhook, &event, 1, None).await;
    let record = report.to_record(1, &event);
    // Written at once rather than through the worker's batching log: the merchant looks at the
    // attempts right after this answer.
    attempts::append_now(&state.store, &account, &id, &record.entry()).await?;
    tracing::info!(account_id = %account, webhook_id = %id, event_id = %record.event_id,
        status = ?report.status, "example event sent");
    Ok(Json(TestResult {
        event_id: record.event_id,
        event_type: record.event_type,
        status: report.status,
        error: report.error,
        duration_ms: record.duration_ms,
        response_excerpt: report.status.map(|_| report.response_excerpt),
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttemptsQuery {
    /// How many, newest first: 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptView {
    /// RFC 3339, when the attempt ended.
    pub at: String,
    /// 1 for the first attempt of a delivery.
    pub attempt: u32,
    pub event_id: String,
    pub event_type: String,
    /// The HTTP status, null without a response.
    pub status: Option<u16>,
    /// Why there was no response (timeout, connection, refused target).
    pub error: Option<String>,
    pub duration_ms: u64,
    /// The first 1 KiB of the response body.
    pub response_excerpt: String,
    /// Whether the event was kept (up to 16 KiB), so that it can be resent.
    pub resendable: bool,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptList {
    pub attempts: Vec<AttemptView>,
    /// The webhook's failing period, null when it is not failing (the Webhooks page shows it).
    pub failing: Option<FailingView>,
}

/// Attempts have failed without a success since `since` (DESIGN §4, operational events).
#[derive(Serialize, ToSchema)]
pub struct FailingView {
    /// RFC 3339: the first failure of the period.
    pub since: Option<String>,
    /// The last status or error, e.g. `HTTP 500`.
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
}

impl AttemptView {
    fn of(r: AttemptRecord) -> Self {
        AttemptView {
            at: r.at.to_rfc3339_opts(SecondsFormat::Millis, true),
            attempt: r.attempt,
            event_id: r.event_id,
            event_type: r.event_type,
            status: r.status,
            error: r.error,
            duration_ms: r.duration_ms,
            response_excerpt: r.response_excerpt,
            resendable: r.event.is_some(),
        }
    }
}

#[utoipa::path(get, path = "/v1/accounts/{account_id}/webhooks/{webhook_id}/attempts",
    tag = "deliveries", params(WebhookPath, AttemptsQuery),
    responses(
        (status = 200, description = "Recent delivery attempts, newest first", body = AttemptList),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such webhook for this caller", body = ErrorBody),
        (status = 422, description = "limit out of range", body = ErrorBody),
    ))]
pub async fn list_attempts(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<WebhookPath>,
    Query(query): Query<AttemptsQuery>,
) -> Result<Json<AttemptList>, ApiError> {
    let (account, id) = path.resolve(&caller)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=LOG_SIZE as usize).contains(&limit) {
        return Err(ApiError::invalid(
            "invalid_query",
            format!("limit must be 1 to {LOG_SIZE}"),
        ));
    }
    // Read the webhook first: an unknown webhook is 404, not an empty list.
    state.store.get(&account, &id).await?;
    let records = attempts::recent(&state.store, &account, &id, limit).await?;
    let period = crate::subscription::health::period(&state.store, &account, &id).await?;
    Ok(Json(AttemptList {
        attempts: records.into_iter().map(AttemptView::of).collect(),
        failing: period.map(|p| FailingView {
            since: p
                .since
                .map(|s| s.to_rfc3339_opts(SecondsFormat::Secs, true)),
            last_error: p.last_error,
            consecutive_failures: p.consecutive_failures,
        }),
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EventPath {
    /// The merchant's account.
    pub account_id: String,
    /// `wh_…`
    pub webhook_id: String,
    /// The event of a recent attempt.
    pub event_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct Resent {
    pub event_id: String,
    pub webhook_id: String,
    /// Always `queued`: a fresh round of attempts starts with the same `webhook-id`.
    #[schema(example = "queued")]
    pub status: &'static str,
}

#[utoipa::path(post, path = "/v1/accounts/{account_id}/webhooks/{webhook_id}/events/{event_id}/resend",
    tag = "deliveries", params(EventPath),
    responses(
        (status = 202, description = "Queued for a fresh round of attempts (same webhook-id)", body = Resent),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such webhook, or no recent attempt of this event", body = ErrorBody),
        (status = 409, description = "The webhook is disabled", body = ErrorBody),
        (status = 422, description = "The event was too large to keep for resending", body = ErrorBody),
        (status = 503, description = "The broker did not confirm the delivery", body = ErrorBody),
    ))]
pub async fn resend(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<EventPath>,
) -> Result<(StatusCode, Json<Resent>), ApiError> {
    let webhook_path = WebhookPath {
        account_id: path.account_id,
        webhook_id: path.webhook_id,
    };
    let (account, id) = webhook_path.resolve(&caller)?;
    let webhook = state.store.get(&account, &id).await?;
    let records = attempts::recent(&state.store, &account, &id, LOG_SIZE as usize).await?;
    let record = records
        .into_iter()
        .find(|r| r.event_id == path.event_id)
        .ok_or_else(|| ApiError::not_found("recent attempt of this event"))?;
    let Some(envelope) = record.event else {
        return Err(ApiError::invalid(
            "event_not_kept",
            format!(
                "event {} was larger than {} KiB, so it was not kept for resending; \
                 on-call can replay it from the dead-letter queue",
                record.event_id,
                RESEND_MAX_BYTES / 1024
            ),
        ));
    };
    if !webhook.enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "webhook_disabled",
            "the webhook is disabled; enable it before resending",
        ));
    }
    let event = Event::parse_accepted(envelope.get().as_bytes()).map_err(|e| {
        ApiError::invalid(
            "event_not_kept",
            format!("the kept event is unreadable: {e}"),
        )
    })?;
    let job = DeliveryJob::fresh(&event, &webhook.id, webhook.url.as_str());
    state.resender.enqueue(&job).await.map_err(|e| {
        tracing::error!(error = %e, "resend: the broker did not take the delivery");
        ApiError::unavailable("the delivery could not be queued; try again shortly")
    })?;
    tracing::info!(account_id = %account, webhook_id = %id, event_id = %event.id, "event resent");
    Ok((
        StatusCode::ACCEPTED,
        Json(Resent {
            event_id: event.id.to_string(),
            webhook_id: webhook.id.to_string(),
            status: "queued",
        }),
    ))
}
