//! Operational events: what hookrelay tells the platform that owns the merchants, on the topic
//! exchange `<prefix>.operational` (routing key = the type, envelope-shaped JSON body,
//! persistent, confirmed; DESIGN §4, docs/operational-events.md).
//!
//! The webhook-level ones are decided in Redis, once per change across all workers
//! (`subscription::health`); this module publishes what was decided on the worker's confirmed
//! publisher, carries out a disable the decision calls for, and marks each event confirmed.
//! `delivery.dead_lettered` needs no decision: one per dead letter, after the letter itself was
//! confirmed (a crash in between dead-letters the delivery again, and announces it again).

use crate::broker::publisher::{Headers, Outgoing, PublishError, Publisher};
use crate::event::AccountId;
use crate::subscription::health::{self, Outcome, Subject};
use crate::subscription::store::{Store, StoreError};
use crate::subscription::WebhookId;
use chrono::{SecondsFormat, Utc};
use std::time::Duration;

/// The operational event types and what each means (`hookrelay events --operational`).
pub const TYPES: [(&str, &str); 4] = [
    (
        "webhook.failing",
        "A webhook has had no successful delivery for 25, 50 or 75 % of delivery.disable_after \
         (each threshold once per failing period)",
    ),
    (
        "webhook.disabled",
        "hookrelay disabled a webhook: reason gone (its endpoint answered 410) or failing \
         (no success for delivery.disable_after)",
    ),
    (
        "webhook.recovered",
        "The first successful delivery after a webhook.failing or webhook.disabled",
    ),
    (
        "delivery.dead_lettered",
        "A delivery went to <prefix>.dlq.deliveries (one per dead letter; \
         operational.dead_letter_events)",
    ),
];

/// Operational events published and confirmed, by `type` (described in `metrics`).
const PUBLISHED_METRIC: &str = crate::metrics::OPERATIONAL_EVENTS;

/// Why an operational event was not published (it stays pending, or is only logged).
#[derive(Debug, thiserror::Error)]
pub enum OperationalError {
    #[error("redis: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// A worker's operational events: where they go and the rules they follow.
#[derive(Clone)]
pub struct Operational {
    pub store: Store,
    /// `<prefix>.operational`.
    pub exchange: String,
    pub disable_after: Duration,
    /// How long a decided event is left to the worker that decided it (see `health`).
    pub lease: Duration,
    pub dead_letter_events: bool,
    /// Webhooks whose health record this worker saw without a failing period or an event to
    /// publish, for [`HEALTHY_FOR`]: a success of one of them changes nothing, so it skips the
    /// script (a Redis round trip per delivery otherwise, a third of a delivery's work).
    healthy: moka::sync::Cache<WebhookId, ()>,
}

/// How long a success is taken on trust. Bounds what the skip can delay: the end of a failing
/// period another worker started (shown by `webhooks status`), or a pending event of a worker
/// that crashed (taken at the first script run after its lease).
const HEALTHY_FOR: Duration = Duration::from_secs(2);

/// Webhooks remembered as healthy: far more than one worker delivers to within `HEALTHY_FOR`;
/// past it the least used are forgotten (and merely run the script again).
const HEALTHY_MAX: u64 = 100_000;

/// The id and type of a decided body, read back to route and confirm it.
#[derive(serde::Deserialize)]
struct Head {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: HeadData,
}

#[derive(serde::Deserialize)]
struct HeadData {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    failing_since: Option<String>,
}

impl Operational {
    /// Also creates the published-events counter of every type at 0 (a worker's counters exist
    /// from its start: see `metrics::worker_started`).
    pub fn from_settings(store: Store, settings: &crate::config::Settings) -> Self {
        for (kind, _) in TYPES {
            metrics::counter!(PUBLISHED_METRIC, "type" => kind).increment(0);
        }
        Operational {
            store,
            exchange: crate::broker::topology::Topology::from_settings(settings)
                .operational_exchange(),
            disable_after: settings.delivery.disable_after,
            lease: settings.amqp.publish_timeout * 2,
            dead_letter_events: settings.operational.dead_letter_events,
            healthy: moka::sync::Cache::builder()
                .max_capacity(HEALTHY_MAX)
                .time_to_live(HEALTHY_FOR)
                .build(),
        }
    }

    /// Records one outcome of `subject` and publishes what it changed (and any pending event
    /// whose lease ran out). Never fails the delivery: an event not published stays pending
    /// in Redis and is taken again by a later attempt, so errors are only logged.
    pub async fn observe(&self, publisher: &Publisher, subject: &Subject<'_>, outcome: &Outcome) {
        let success = matches!(outcome, Outcome::Succeeded);
        if success && self.healthy.contains_key(subject.webhook) {
            return;
        }
        if !success {
            self.healthy.invalidate(subject.webhook);
        }
        let decided = match health::observe(
            &self.store,
            subject,
            outcome,
            self.disable_after,
            self.lease,
        )
        .await
        {
            Ok(decided) => decided,
            Err(e) => {
                tracing::warn!(error = %e, webhook_id = %subject.webhook, "could not record the webhook's health");
                return;
            }
        };
        if success && decided.events.is_empty() && decided.disabled.is_none() {
            self.healthy.insert(subject.webhook.clone(), ());
        }
        if !decided.events.is_empty() {
            failpoint_after_decide().await;
        }
        for body in &decided.events {
            if let Err(e) = self
                .carry_out(publisher, subject, decided.disabled.as_deref(), body)
                .await
            {
                tracing::warn!(error = %e, webhook_id = %subject.webhook,
                    "operational event not published; it stays pending and is sent again later");
            }
        }
    }

    /// Disables the webhook when the event says so and the record still does (a re-enabled
    /// webhook is not disabled again by a late republish), publishes, and confirms.
    async fn carry_out(
        &self,
        publisher: &Publisher,
        subject: &Subject<'_>,
        disabled: Option<&str>,
        body: &str,
    ) -> Result<(), OperationalError> {
        let head: Head = serde_json::from_str(body).map_err(StoreError::from)?;
        let reason = head.data.reason.as_deref();
        if head.kind == "webhook.disabled" && reason == Some("failing") && disabled == reason {
            self.disable_failing(subject, head.data.failing_since.as_deref())
                .await?;
        }
        self.publish(publisher, &head.id, &head.kind, body.as_bytes())
            .await?;
        health::confirmed(&self.store, subject.account, subject.webhook, &head.id).await?;
        Ok(())
    }

    async fn disable_failing(
        &self,
        subject: &Subject<'_>,
        since: Option<&str>,
    ) -> Result<(), StoreError> {
        let reason = format!(
            "failing: no successful delivery since {}",
            since.unwrap_or("the first failure")
        );
        tracing::warn!(webhook_id = %subject.webhook, %reason, "disabling a webhook that keeps failing");
        match self
            .store
            .disable(subject.account, subject.webhook, &reason)
            .await
        {
            // Deleted meanwhile: nothing left to disable; the event still goes out.
            Err(StoreError::NotFound(_)) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// A dead letter was confirmed in `<prefix>.dlq.deliveries`: announces it (unless
    /// `operational.dead_letter_events` is off). Only logged when it fails: the dead letter
    /// itself is what must not be lost.
    pub async fn dead_lettered(&self, publisher: &Publisher, letter: &DeadLettered<'_>) {
        if !self.dead_letter_events {
            return;
        }
        let id = format!("op_{}", crate::random_token(20));
        let body = letter.envelope(&id);
        if let Err(e) = self
            .publish(publisher, &id, "delivery.dead_lettered", body.as_bytes())
            .await
        {
            tracing::warn!(error = %e, event_id = letter.event_id, "delivery.dead_lettered not published");
        }
    }

    async fn publish(
        &self,
        publisher: &Publisher,
        id: &str,
        kind: &str,
        body: &[u8],
    ) -> Result<(), PublishError> {
        publisher
            .publish_unrouted_ok(Outgoing {
                exchange: &self.exchange,
                routing_key: kind,
                body,
                message_id: Some(id),
                content_type: "application/json",
                headers: Headers::default(),
                expiration_ms: None,
            })
            .await?;
        metrics::counter!(PUBLISHED_METRIC, "type" => kind.to_owned()).increment(1);
        tracing::info!(operational_event = kind, id, "operational event published");
        Ok(())
    }
}

/// The facts of a dead letter, for its `delivery.dead_lettered` event.
pub struct DeadLettered<'a> {
    pub account: &'a AccountId,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub webhook_id: &'a str,
    pub url: &'a str,
    pub reason: &'a str,
    pub attempts: u32,
    pub dead_letter_id: &'a str,
}

impl DeadLettered<'_> {
    /// The envelope (DESIGN §2 shape). Pure.
    pub fn envelope(&self, id: &str) -> String {
        serde_json::json!({
            "id": id,
            "type": "delivery.dead_lettered",
            "account_id": self.account.as_str(),
            "created_at": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
            "data": {
                "event_id": self.event_id,
                "event_type": self.event_type,
                "webhook_id": self.webhook_id,
                "url": self.url,
                "reason": self.reason,
                "attempts": self.attempts,
                "dead_letter_id": self.dead_letter_id,
            },
        })
        .to_string()
    }
}

/// A test-only failpoint, for proving that a crash between a decision and its confirm loses
/// nothing: with `HOOKRELAY_TEST_FAILPOINT=operational-decided:<path>` in its environment, a
/// worker that has just decided an event creates `<path>` and stops there for good, holding
/// its message, so that the test kills it (`kill -9`) at exactly that point. Unset, it costs
/// one environment lookup per decision (decisions are rare: a few per failing period).
async fn failpoint_after_decide() {
    let Ok(point) = std::env::var("HOOKRELAY_TEST_FAILPOINT") else {
        return;
    };
    let Some(path) = point.strip_prefix("operational-decided:") else {
        return;
    };
    tracing::error!(
        path,
        "failpoint operational-decided reached; waiting to be killed"
    );
    let _ = std::fs::write(path, b"decided");
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_is_announced_in_the_envelope_shape_with_its_facts() {
        let account: AccountId = "68".parse().unwrap();
        let letter = DeadLettered {
            account: &account,
            event_id: "evt_1",
            event_type: "payment.card.success",
            webhook_id: "wh_1",
            url: "https://example.com/hook",
            reason: "exhausted",
            attempts: 10,
            dead_letter_id: "dl_1",
        };

        let body: serde_json::Value = serde_json::from_str(&letter.envelope("op_1")).unwrap();

        assert_eq!(body["id"], "op_1");
        assert_eq!(body["type"], "delivery.dead_lettered");
        assert_eq!(body["account_id"], "68");
        assert!(chrono::DateTime::parse_from_rfc3339(body["created_at"].as_str().unwrap()).is_ok());
        assert_eq!(body["data"]["reason"], "exhausted");
        assert_eq!(body["data"]["attempts"], 10);
        assert_eq!(body["data"]["dead_letter_id"], "dl_1");
    }

    #[test]
    fn the_operational_types_are_not_event_types_a_merchant_could_subscribe_to() {
        for (label, _) in TYPES {
            assert!(
                crate::event::EventType::ALL
                    .iter()
                    .all(|t| t.label() != label),
                "{label}"
            );
        }
    }
}
