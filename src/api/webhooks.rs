//! `/v1/accounts/{account_id}/webhooks…`: list, create, read, update, delete and rotate-secret,
//! with every rule of DESIGN §5 checked before the store is touched, and the SSRF rule of §3 at
//! registration (the worker checks again on every connection).

use super::auth::Caller;
use super::error::{ApiError, Body, ErrorBody, Path};
use super::AppState;
use crate::config::DeliverySettings;
use crate::delivery::guard;
use crate::subscription::store::{NewWebhook, WebhookPatch};
use crate::subscription::{
    EventFilter, Format, RateLimit, UrlError, Webhook, WebhookId, WebhookUrl,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// Longest description accepted, in characters.
const MAX_DESCRIPTION: usize = 500;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AccountPath {
    /// The merchant's account.
    pub account_id: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct WebhookPath {
    /// The merchant's account.
    pub account_id: String,
    /// `wh_…`
    pub webhook_id: String,
}

impl WebhookPath {
    /// The account (if the caller may act on it) and the webhook id; 404 for either.
    pub fn resolve(
        &self,
        caller: &Caller,
    ) -> Result<(crate::event::AccountId, WebhookId), ApiError> {
        let account = caller.account(&self.account_id)?;
        let id = self
            .webhook_id
            .parse()
            .map_err(|_| ApiError::not_found("webhook"))?;
        Ok((account, id))
    }
}

/// A webhook as the API shows it. `secret` only on create and rotate-secret.
#[derive(Serialize, ToSchema)]
pub struct WebhookView {
    #[schema(example = "wh_3kTq0vX9aB2cD4eF6gH8iJ0k")]
    pub id: String,
    pub account_id: String,
    #[schema(example = "https://example.com/webhooks")]
    pub url: String,
    /// Event labels, or `["*"]` for all.
    #[schema(example = json!(["payment.card.success"]))]
    pub events: Vec<String>,
    /// `standard` or `inplayer`.
    #[schema(example = "standard")]
    pub format: String,
    pub enabled: bool,
    pub description: String,
    /// RFC 3339.
    pub created_at: String,
    /// Why hookrelay disabled it (e.g. `gone`); null when enabled.
    pub disabled_reason: Option<String>,
    /// Deliveries per second to this URL across all workers together; null: no limit.
    #[schema(example = 50, minimum = 1, maximum = 10000)]
    pub rate_limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: Option<String>,
}

impl WebhookView {
    pub fn of(w: &Webhook, with_secret: bool) -> Self {
        WebhookView {
            id: w.id.to_string(),
            account_id: w.account_id.to_string(),
            url: w.url.as_str().to_owned(),
            events: w.events.labels(),
            format: match w.format {
                Format::Standard => "standard",
                Format::Inplayer => "inplayer",
            }
            .to_owned(),
            enabled: w.enabled,
            description: w.description.clone(),
            created_at: w
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            disabled_reason: w.disabled_reason.clone(),
            rate_limit: w.rate_limit.map(RateLimit::per_second),
            secret: with_secret.then(|| w.secret.expose().to_owned()),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

/// Create a webhook.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// https (http only when the server allows it); must resolve to public addresses.
    #[schema(example = "https://example.com/webhooks")]
    pub url: String,
    /// Event labels (see `/v1/event-types`), or `["*"]` alone for all.
    #[schema(example = json!(["payment.card.success", "payment.card.failed"]), min_items = 1)]
    pub events: Vec<String>,
    /// `standard` (default) or `inplayer`.
    pub format: Option<String>,
    pub description: Option<String>,
    /// Deliveries per second, 1 to 10,000, across all workers together; null or left out: no
    /// limit. A delivery over the limit waits (not counted as an attempt), it is never dropped.
    #[schema(example = 50, minimum = 1, maximum = 10000)]
    pub rate_limit: Option<u64>,
}

/// Change some fields of a webhook; those left out stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    pub url: Option<String>,
    /// As on create: at least one label.
    #[schema(min_items = 1)]
    pub events: Option<Vec<String>>,
    pub format: Option<String>,
    /// Enabling clears `disabled_reason`.
    pub enabled: Option<bool>,
    pub description: Option<String>,
    /// Deliveries per second, 1 to 10,000; null removes the limit; left out: unchanged.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, example = 50, minimum = 1, maximum = 10000)]
    pub rate_limit: Option<Option<u64>>,
}

/// A field that may be null: `Some(None)` when it is null, `None` when it is left out.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

#[utoipa::path(get, path = "/v1/accounts/{account_id}/webhooks", tag = "webhooks",
    params(AccountPath),
    responses(
        (status = 200, description = "The account's webhooks, without secrets", body = WebhookList),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Not this caller's account", body = ErrorBody),
    ))]
pub async fn list_webhooks(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<AccountPath>,
) -> Result<Json<WebhookList>, ApiError> {
    let account = caller.account(&path.account_id)?;
    let snapshot = state.store.snapshot(&account).await?;
    let webhooks = snapshot
        .webhooks
        .iter()
        .map(|w| WebhookView::of(w, false))
        .collect();
    Ok(Json(WebhookList { webhooks }))
}

#[utoipa::path(post, path = "/v1/accounts/{account_id}/webhooks", tag = "webhooks",
    params(AccountPath), request_body = CreateWebhook,
    responses(
        (status = 201, description = "Created; the only response with the secret besides rotate-secret", body = WebhookView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Not this caller's account", body = ErrorBody),
        (status = 409, description = "10 webhooks already, or one for this URL", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "An invalid field", body = ErrorBody),
    ))]
pub async fn create_webhook(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<AccountPath>,
    Body(body): Body<CreateWebhook>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    let account = caller.account(&path.account_id)?;
    // No marker, no writes (503 store_missing): a lost store must not fill up anew.
    state.store.require_marker().await?;
    let new = NewWebhook {
        url: checked_url(&body.url, &state.delivery).await?,
        events: parse_events(&body.events)?,
        format: parse_format(body.format.as_deref().unwrap_or("standard"))?,
        description: parse_description(body.description.unwrap_or_default())?,
        rate_limit: body.rate_limit.map(parse_rate_limit).transpose()?,
    };
    let webhook = state.store.create(&account, new).await?;
    tracing::info!(account_id = %account, webhook_id = %webhook.id, "webhook created");
    Ok((StatusCode::CREATED, Json(WebhookView::of(&webhook, true))))
}

#[utoipa::path(get, path = "/v1/accounts/{account_id}/webhooks/{webhook_id}", tag = "webhooks",
    params(WebhookPath),
    responses(
        (status = 200, description = "The webhook, without its secret", body = WebhookView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such webhook for this caller", body = ErrorBody),
    ))]
pub async fn get_webhook(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<WebhookPath>,
) -> Result<Json<WebhookView>, ApiError> {
    let (account, id) = path.resolve(&caller)?;
    let webhook = state.store.get(&account, &id).await?;
    Ok(Json(WebhookView::of(&webhook, false)))
}

#[utoipa::path(patch, path = "/v1/accounts/{account_id}/webhooks/{webhook_id}", tag = "webhooks",
    params(WebhookPath), request_body = UpdateWebhook,
    responses(
        (status = 200, description = "The updated webhook, without its secret", body = WebhookView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such webhook for this caller", body = ErrorBody),
        (status = 409, description = "Another webhook has this URL", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "An invalid field", body = ErrorBody),
    ))]
pub async fn update_webhook(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<WebhookPath>,
    Body(body): Body<UpdateWebhook>,
) -> Result<Json<WebhookView>, ApiError> {
    let (account, id) = path.resolve(&caller)?;
    state.store.require_marker().await?;
    let url = match &body.url {
        Some(url) => Some(checked_url(url, &state.delivery).await?),
        None => None,
    };
    let patch = WebhookPatch {
        url,
        events: body.events.as_deref().map(parse_events).transpose()?,
        format: body.format.as_deref().map(parse_format).transpose()?,
        enabled: body.enabled,
        description: body.description.map(parse_description).transpose()?,
        rate_limit: body
            .rate_limit
            .map(|r| r.map(parse_rate_limit).transpose())
            .transpose()?,
    };
    let webhook = state.store.update(&account, &id, patch).await?;
    tracing::info!(account_id = %account, webhook_id = %id, "webhook updated");
    Ok(Json(WebhookView::of(&webhook, false)))
}

#[utoipa::path(delete, path = "/v1/accounts/{account_id}/webhooks/{webhook_id}", tag = "webhooks",
    params(WebhookPath),
    responses(
        (status = 204, description = "Deleted, with its attempt log"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such webhook for this caller", body = ErrorBody),
    ))]
pub async fn delete_webhook(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<WebhookPath>,
) -> Result<StatusCode, ApiError> {
    let (account, id) = path.resolve(&caller)?;
    state.store.require_marker().await?;
    state.store.delete(&account, &id).await?;
    tracing::info!(account_id = %account, webhook_id = %id, "webhook deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/accounts/{account_id}/webhooks/{webhook_id}/rotate-secret",
    tag = "webhooks", params(WebhookPath),
    responses(
        (status = 200, description = "The webhook with its new secret; the old one keeps signing as a second signature for delivery.rotation_grace", body = WebhookView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such webhook for this caller", body = ErrorBody),
    ))]
pub async fn rotate_secret(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(path): Path<WebhookPath>,
) -> Result<Json<WebhookView>, ApiError> {
    let (account, id) = path.resolve(&caller)?;
    state.store.require_marker().await?;
    let webhook = state
        .store
        .rotate_secret(&account, &id, state.delivery.rotation_grace)
        .await?;
    tracing::info!(account_id = %account, webhook_id = %id, "webhook secret rotated");
    Ok(Json(WebhookView::of(&webhook, true)))
}

/// Why a URL cannot be registered, by the API or by `hookrelay webhooks add|update`.
#[derive(Debug, thiserror::Error)]
pub enum UrlRefused {
    #[error(transparent)]
    Invalid(#[from] UrlError),
    /// The guard's refusal, which names no host, address or resolver error.
    #[error(
        "url: {0}; webhooks must point to the internet, not to loopback, private, link-local or \
         metadata addresses"
    )]
    NotPublic(guard::TargetRefused),
}

/// The URL rules: well-formed and normalised ([`WebhookUrl`]), https unless
/// `delivery.allow_http`, and a public target unless `delivery.allow_private_targets`, by the
/// SSRF rule the worker applies too ([`guard`]). The API and the CLI both register through it.
pub async fn registrable_url(
    text: &str,
    settings: &DeliverySettings,
) -> Result<WebhookUrl, UrlRefused> {
    let url = WebhookUrl::parse(text, settings.allow_http)?;
    guard::TargetPolicy::of(settings)
        .admits_resolved(url.as_url(), settings.connect_timeout)
        .await
        .map_err(UrlRefused::NotPublic)?;
    Ok(url)
}

async fn checked_url(text: &str, settings: &DeliverySettings) -> Result<WebhookUrl, ApiError> {
    registrable_url(text, settings).await.map_err(|e| match e {
        UrlRefused::Invalid(e) => ApiError::invalid("invalid_url", e.to_string()),
        e @ UrlRefused::NotPublic(_) => ApiError::invalid("target_not_public", e.to_string()),
    })
}

fn parse_events(labels: &[String]) -> Result<EventFilter, ApiError> {
    EventFilter::parse(labels).map_err(|e| ApiError::invalid("invalid_events", e.to_string()))
}

fn parse_format(text: &str) -> Result<Format, ApiError> {
    text.parse()
        .map_err(|e: String| ApiError::invalid("invalid_format", e))
}

fn parse_rate_limit(per_second: u64) -> Result<RateLimit, ApiError> {
    RateLimit::new(per_second).map_err(|e| ApiError::invalid("invalid_rate_limit", e.to_string()))
}

fn parse_description(text: String) -> Result<String, ApiError> {
    if text.chars().count() > MAX_DESCRIPTION {
        return Err(ApiError::invalid(
            "invalid_description",
            format!("description is longer than {MAX_DESCRIPTION} characters"),
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::invalid(
            "invalid_description",
            "description must not contain control characters",
        ));
    }
    Ok(text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_has_the_fields_of_the_stored_webhook_json() {
        let webhook = Webhook {
            id: WebhookId::generate(),
            account_id: "68".parse().unwrap(),
            url: WebhookUrl::parse("https://example.com/h", false).unwrap(),
            events: EventFilter::parse(&["payment.card.success"]).unwrap(),
            secret: crate::delivery::signing::Secret::generate(),
            previous_secret: None,
            format: Format::Inplayer,
            enabled: false,
            description: "d".into(),
            created_at: chrono::Utc::now(),
            disabled_reason: Some("gone".into()),
            rate_limit: Some(RateLimit::new(50).unwrap()),
        };
        for with_secret in [false, true] {
            let view = serde_json::to_value(WebhookView::of(&webhook, with_secret)).unwrap();
            assert_eq!(view, webhook.to_json(with_secret));
        }
    }

    #[test]
    fn a_rate_limit_left_out_null_or_set_are_three_different_updates() {
        let parse = |json: &str| {
            serde_json::from_str::<UpdateWebhook>(json)
                .unwrap()
                .rate_limit
        };
        assert_eq!(parse("{}"), None);
        assert_eq!(parse(r#"{"rate_limit": null}"#), Some(None));
        assert_eq!(parse(r#"{"rate_limit": 50}"#), Some(Some(50)));
        assert!(parse_rate_limit(0).is_err());
        assert!(parse_rate_limit(10_001).is_err());
    }

    #[test]
    fn descriptions_are_bounded_and_printable() {
        assert_eq!(parse_description(" shop ".into()).unwrap(), "shop");
        assert!(parse_description("x".repeat(MAX_DESCRIPTION + 1)).is_err());
        assert!(parse_description("a\u{7}b".into()).is_err());
    }
}
