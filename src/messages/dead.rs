//! Dead letters (DESIGN §4): why a delivery or an event was given up, the body and headers of a
//! message in `<prefix>.dlq.deliveries`, and the headers of a poison event in
//! `<prefix>.dlq.events`.

use super::header;
use super::headers::Headers;
use super::job::History;
use crate::event::{Event, Poison};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;
use std::str::FromStr;

/// Header values shown in the management UI are capped at 1 KiB.
const HEADER_MAX: usize = 1024;

/// Why a delivery was dead-lettered; the `hookrelay-reason` of `<prefix>.dlq.deliveries`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    Exhausted,
    Gone,
    TargetRefused,
    WebhookDeleted,
    WebhookDisabled,
    /// The rendered request body is over 1 MiB.
    BodyTooLarge,
    /// The stored webhook cannot be read or its secret cannot be opened: replayable once fixed.
    WebhookUnreadable,
    /// A message on the deliveries queue that is not a hookrelay delivery.
    InvalidJob,
    /// A message that kept coming back (the broker's `x-delivery-limit`).
    DeliveryLimit,
}

impl DeadReason {
    pub const ALL: &'static [DeadReason] = &[
        DeadReason::Exhausted,
        DeadReason::Gone,
        DeadReason::TargetRefused,
        DeadReason::WebhookDeleted,
        DeadReason::WebhookDisabled,
        DeadReason::BodyTooLarge,
        DeadReason::WebhookUnreadable,
        DeadReason::InvalidJob,
        DeadReason::DeliveryLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Exhausted => "exhausted",
            DeadReason::Gone => "gone",
            DeadReason::TargetRefused => "target_refused",
            DeadReason::WebhookDeleted => "webhook_deleted",
            DeadReason::WebhookDisabled => "webhook_disabled",
            DeadReason::BodyTooLarge => "body_too_large",
            DeadReason::WebhookUnreadable => "webhook_unreadable",
            DeadReason::InvalidJob => "invalid_job",
            DeadReason::DeliveryLimit => "delivery_limit",
        }
    }
}

impl fmt::Display for DeadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeadReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeadReason::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown dead-letter reason {s:?}"))
    }
}

/// The body of a message in `<prefix>.dlq.deliveries`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct DeadDelivery {
    pub reason: DeadReason,
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

/// Which delivery died, for [`DeadDelivery::new`].
pub struct Dying<'a> {
    pub event: &'a Event,
    /// The event's envelope as accepted, when the caller already has it serialized.
    pub envelope: Option<&'a RawValue>,
    pub webhook_id: &'a str,
    pub url: &'a str,
    pub attempts: u32,
    pub history: &'a History,
}

impl DeadDelivery {
    /// The dead letter of a delivery after `attempts` attempts; `history` holds the facts of the
    /// last one (if any was made).
    pub fn new(reason: DeadReason, dying: Dying<'_>) -> Self {
        let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        let event = match dying.envelope {
            Some(envelope) => envelope.to_owned(),
            None => {
                RawValue::from_string(dying.event.to_envelope_json()).expect("an envelope is JSON")
            }
        };
        DeadDelivery {
            reason,
            event_id: dying.event.id.to_string(),
            event_type: dying.event.event_type.label().to_owned(),
            account_id: dying.event.account_id.to_string(),
            webhook_id: dying.webhook_id.to_owned(),
            url: dying.url.to_owned(),
            attempts: dying.attempts,
            last_status: dying.history.last_status,
            last_error: dying.history.last_error.clone(),
            first_attempt_at: Some(time(dying.history.first_attempt_at)),
            last_attempt_at: dying.history.last_attempt_at.map(time),
            event,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Strings, numbers and a raw value already known to be JSON: serialization cannot fail.
        serde_json::to_vec(self).expect("a dead letter serializes")
    }

    /// The same facts as AMQP headers, each at most 1 KiB.
    pub fn headers(&self) -> Headers {
        let mut h = Headers::default()
            .text(header::REASON, self.reason.as_str())
            .text(header::EVENT_ID, &self.event_id)
            .text(header::EVENT_TYPE, &self.event_type)
            .text(header::ACCOUNT_ID, &self.account_id)
            .text(header::WEBHOOK_ID, &self.webhook_id)
            .text(header::URL, truncate(&self.url))
            .int(header::ATTEMPTS, i64::from(self.attempts));
        if let Some(status) = self.last_status {
            h = h.int(header::LAST_STATUS, i64::from(status));
        }
        if let Some(error) = &self.last_error {
            h = h.text(header::LAST_ERROR, truncate(error));
        }
        if let Some(t) = &self.first_attempt_at {
            h = h.text(header::FIRST_ATTEMPT_AT, t);
        }
        if let Some(t) = &self.last_attempt_at {
            h = h.text(header::LAST_ATTEMPT_AT, t);
        }
        h
    }
}

/// The headers of a poison event in `<prefix>.dlq.events` (its body is the raw envelope).
pub fn poison_headers(poison: &Poison, routing_key: &str) -> Headers {
    Headers::default()
        .text(header::REASON, poison.reason.as_str())
        .text(header::ERROR, truncate(&poison.detail))
        .text(header::ROUTING_KEY, truncate(routing_key))
}

/// The headers of a message on the deliveries queue that is not a hookrelay delivery (its body
/// is kept as it came).
pub fn invalid_job_headers(detail: &str) -> Headers {
    Headers::default()
        .text(header::REASON, DeadReason::InvalidJob.as_str())
        .text(header::ERROR, truncate(detail))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_from_its_label() {
        for r in DeadReason::ALL {
            assert_eq!(r.as_str().parse::<DeadReason>().unwrap(), *r);
            let json = serde_json::to_string(r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
    }

    #[test]
    fn header_values_are_cut_at_a_character_boundary() {
        let long = "é".repeat(1000);
        let cut = truncate(&long);
        assert!(cut.len() <= HEADER_MAX && cut.len() >= HEADER_MAX - 1);
    }
}
