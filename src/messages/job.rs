//! A delivery between attempts: one (event, webhook) pair waiting in a delay queue and coming
//! back through `<prefix>.deliveries`. The secret is never in it: each attempt reads the
//! webhook's current URL, secret and format (DESIGN §3).

use super::header;
use crate::broker::publisher::{Headers, Outgoing, PublishError, Publisher};
use crate::broker::topology::Topology;
use crate::event::{Event, Poison};
use crate::subscription::WebhookId;
use crate::telemetry::context::TraceContext;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// What is known of a delivery's earlier attempts.
#[derive(Clone, Debug)]
pub struct History {
    pub first_attempt_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Times the delivery waited without an attempt (carried in [`header::DEFERRALS`]).
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

    /// After an attempt that just ended with `status` or `error`.
    pub fn after(&self, status: Option<u16>, error: Option<&str>) -> Self {
        History {
            first_attempt_at: self.first_attempt_at,
            last_attempt_at: Some(Utc::now()),
            last_status: status,
            last_error: error.map(str::to_owned),
            deferrals: 0,
        }
    }
}

/// One (event, webhook) delivery between attempts.
#[derive(Serialize, Deserialize)]
pub struct DeliveryJob {
    /// The envelope exactly as ingest accepted it (see [`Event::parse_accepted`]).
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

    /// Publishes this job straight to `<prefix>.deliveries` (partitioned: through the deliveries
    /// hash exchange, with a fresh `message_id` to hash) with no attempt counted, confirmed, in
    /// the trace `trace` when given (a replay continues the dead letter's trace).
    pub async fn publish_fresh(
        &self,
        publisher: &Publisher,
        topology: &Topology,
        trace: Option<&TraceContext>,
    ) -> Result<(), PublishError> {
        let headers = Headers::default().int(header::ATTEMPTS, 0);
        let (exchange, routing_key) = topology.deliveries_route();
        let id = topology.is_partitioned().then(partition_key);
        publisher
            .publish(Outgoing {
                exchange: &exchange,
                routing_key: &routing_key,
                body: &self.to_bytes(),
                message_id: id.as_deref(),
                content_type: "application/json",
                headers: match trace {
                    Some(trace) => trace.to_amqp(headers),
                    None => headers,
                },
                expiration_ms: None,
            })
            .await
    }

    /// The event, read back as ingest accepted it: never more strictly (DESIGN §2).
    pub fn event(&self) -> Result<Event, Poison> {
        Event::parse_accepted(self.event.get().as_bytes())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Strings, numbers and a raw value already known to be JSON: serialization cannot fail.
        serde_json::to_vec(self).expect("a job serializes")
    }
}

/// The `message_id` of a delivery job bound for the deliveries partitions: the hash exchange
/// hashes it (`Topology`), so it only has to differ between jobs. Random rather than the event
/// or webhook id, so that the retries of one busy endpoint spread over every partition.
pub fn partition_key() -> String {
    format!("job_{}", crate::random_token(20))
}
