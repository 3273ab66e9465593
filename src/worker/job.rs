//! The messages the worker itself writes: a delivery that needs another attempt (to a delay
//! queue, then `<prefix>.deliveries`) and a dead letter (DESIGN §4 body and headers).

use crate::broker::publisher::{Headers, Outgoing, PublishError, Publisher};
use crate::broker::topology::Topology;
use crate::delivery::AttemptReport;
use crate::event::Event;
use crate::subscription::WebhookId;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The attempts made so far travel in this header (RabbitMQ 3.13+ no longer counts a
/// republished `x-death`, so the broker's own count cannot be used).
pub const ATTEMPTS_HEADER: &str = "hookrelay-attempts";

/// How often a delivery was deferred without an attempt (a slow endpoint, an open circuit).
pub const DEFERRALS_HEADER: &str = "hookrelay-deferrals";

/// Header values shown in the management UI are capped at 1 KiB.
const HEADER_MAX: usize = 1024;

/// Why a delivery was dead-lettered (DESIGN §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadReason {
    Exhausted,
    Gone,
    TargetRefused,
    WebhookDeleted,
    WebhookDisabled,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Exhausted => "exhausted",
            DeadReason::Gone => "gone",
            DeadReason::TargetRefused => "target_refused",
            DeadReason::WebhookDeleted => "webhook_deleted",
            DeadReason::WebhookDisabled => "webhook_disabled",
        }
    }
}

/// What is known of a delivery's earlier attempts.
#[derive(Clone, Debug)]
pub struct History {
    pub first_attempt_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Times the delivery waited without an attempt (carried in [`DEFERRALS_HEADER`]).
    pub deferrals: u32,
}

impl History {
    /// Before the first attempt, which starts now.
    pub fn new(first_attempt_at: DateTime<Utc>) -> Self {
        History {
            first_attempt_at,
            last_attempt_at: None,
            last_status: None,
            last_error: None,
            deferrals: 0,
        }
    }

    pub fn deferred(mut self, deferrals: u32) -> Self {
        self.deferrals = deferrals;
        self
    }

    /// After an attempt that just ended with `report`.
    pub fn after(first_attempt_at: DateTime<Utc>, report: &AttemptReport) -> Self {
        History {
            first_attempt_at,
            last_attempt_at: Some(Utc::now()),
            last_status: report.status,
            last_error: report.error.clone(),
            deferrals: 0,
        }
    }
}

/// One (event, webhook) delivery between attempts. The secret is never in it: each attempt reads
/// the webhook's current URL, secret and format.
#[derive(Serialize, Deserialize)]
pub struct DeliveryJob {
    pub event: Box<RawValue>,
    pub webhook_id: WebhookId,
    pub url: String,
    pub first_attempt_at: DateTime<Utc>,
    /// None while no attempt was made yet (a first attempt that had to wait).
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

impl DeliveryJob {
    /// A job for the event whose published envelope is `envelope`.
    pub fn new(envelope: &RawValue, webhook_id: &WebhookId, url: &str, history: &History) -> Self {
        DeliveryJob {
            event: envelope.to_owned(),
            webhook_id: webhook_id.clone(),
            url: url.to_owned(),
            first_attempt_at: history.first_attempt_at,
            last_attempt_at: history.last_attempt_at,
            last_status: history.last_status,
            last_error: history.last_error.clone(),
        }
    }

    pub fn history(&self) -> History {
        History {
            first_attempt_at: self.first_attempt_at,
            last_attempt_at: self.last_attempt_at,
            last_status: self.last_status,
            last_error: self.last_error.clone(),
            deferrals: 0,
        }
    }

    /// A job for a fresh round of attempts (manual replay or resend): same event, so the same
    /// `webhook-id`; the attempt count starts again at zero.
    pub fn fresh(event: &Event, webhook_id: &WebhookId, url: &str) -> Self {
        let envelope =
            RawValue::from_string(event.to_envelope_json()).expect("an envelope is JSON");
        Self::new(&envelope, webhook_id, url, &History::new(Utc::now()))
    }

    /// Publishes this job straight to `<prefix>.deliveries` with no attempt counted, confirmed.
    pub async fn publish_fresh(
        &self,
        publisher: &Publisher,
        topology: &Topology,
    ) -> Result<(), PublishError> {
        publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: &topology.deliveries_queue(),
                body: &self.to_bytes(),
                message_id: None,
                content_type: "application/json",
                headers: Headers::default().int(ATTEMPTS_HEADER, 0),
                expiration_ms: None,
            })
            .await
    }

    pub fn event(&self) -> Result<Event, crate::event::Poison> {
        // The envelope was valid when the job was written; parse it the same way back.
        let label = serde_json::from_str::<serde_json::Value>(self.event.get())
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Event::parse(self.event.get().as_bytes(), &label, usize::MAX)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job serializes")
    }
}

/// The body of a message in `<prefix>.dlq.deliveries`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct DeadDelivery {
    pub reason: String,
    pub event_id: String,
    pub event_type: String,
    pub account_id: String,
    pub webhook_id: String,
    pub url: String,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub first_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    pub event: Box<RawValue>,
}

impl DeadDelivery {
    pub fn new(
        reason: DeadReason,
        event: &Event,
        webhook_id: &WebhookId,
        url: &str,
        attempts: u32,
        first_attempt_at: Option<DateTime<Utc>>,
        last: Option<&AttemptReport>,
    ) -> Self {
        let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        DeadDelivery {
            reason: reason.as_str().to_owned(),
            event_id: event.id.to_string(),
            event_type: event.event_type.label().to_owned(),
            account_id: event.account_id.to_string(),
            webhook_id: webhook_id.to_string(),
            url: url.to_owned(),
            attempts,
            last_status: last.and_then(|r| r.status),
            last_error: last.and_then(|r| r.error.clone()),
            first_attempt_at: first_attempt_at.map(time),
            last_attempt_at: last.map(|_| time(Utc::now())),
            event: RawValue::from_string(event.to_envelope_json()).expect("an envelope is JSON"),
        }
    }

    /// The same facts as AMQP headers, each at most 1 KiB.
    pub fn headers(&self) -> Headers {
        let mut h = Headers::default()
            .text("hookrelay-reason", &self.reason)
            .text("hookrelay-event-id", &self.event_id)
            .text("hookrelay-event-type", &self.event_type)
            .text("hookrelay-account-id", &self.account_id)
            .text("hookrelay-webhook-id", &self.webhook_id)
            .text("hookrelay-url", truncate(&self.url))
            .int("hookrelay-attempts", i64::from(self.attempts));
        if let Some(status) = self.last_status {
            h = h.int("hookrelay-last-status", i64::from(status));
        }
        if let Some(error) = &self.last_error {
            h = h.text("hookrelay-last-error", truncate(error));
        }
        if let Some(t) = &self.first_attempt_at {
            h = h.text("hookrelay-first-attempt-at", t);
        }
        if let Some(t) = &self.last_attempt_at {
            h = h.text("hookrelay-last-attempt-at", t);
        }
        h
    }
}

/// Cuts at a character boundary at or below [`HEADER_MAX`] bytes.
pub fn truncate(s: &str) -> &str {
    if s.len() <= HEADER_MAX {
        return s;
    }
    let mut end = HEADER_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A dead letter's `message_id`, by which `hookrelay dlq` names it.
pub fn dead_letter_id() -> String {
    format!("dl_{}", crate::random_token(20))
}
