//! Reading one message of a dead-letter queue into a [`DeadLetter`]: pure, from the message's
//! properties and body. Three shapes arrive: a delivery hookrelay dead-lettered (a
//! [`DeadDelivery`] body plus `hookrelay-*` headers), a poison event (the raw envelope plus
//! `hookrelay-reason`, `hookrelay-error`, `hookrelay-routing-key`), and a message the broker itself
//! dead-lettered (past a quorum queue's delivery limit: the original job or envelope with its own
//! headers and `x-death`, but no `message_id` of ours). Whatever cannot be read is left `None`,
//! never guessed.

use super::headers::{int, text, Death};
use crate::event::PoisonReason;
use crate::messages::{header, DeadDelivery, DeliveryJob};
use crate::telemetry::context::TraceContext;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// Which dead-letter queue a letter is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DlqQueue {
    /// `<prefix>.dlq.deliveries`: one (event, webhook) delivery each.
    Deliveries,
    /// `<prefix>.dlq.events`: envelopes that could not be processed at all.
    Events,
}

impl DlqQueue {
    pub fn as_str(self) -> &'static str {
        match self {
            DlqQueue::Deliveries => "deliveries",
            DlqQueue::Events => "events",
        }
    }
}

impl std::str::FromStr for DlqQueue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "deliveries" => Ok(DlqQueue::Deliveries),
            "events" => Ok(DlqQueue::Events),
            _ => Err(format!(
                "{s:?} is not a dead-letter queue: deliveries or events"
            )),
        }
    }
}

/// Who dead-lettered a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetteredBy {
    Hookrelay,
    /// RabbitMQ, past a queue's delivery limit (or another broker reason found in `x-death`).
    Broker,
}

/// One dead letter as `hookrelay dlq` shows it (DESIGN §4 names the fields of `list --json`).
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    /// The `message_id` hookrelay set; for a letter the broker dead-lettered, `dx_` and a hash
    /// of its body and death, stable across listings.
    pub id: String,
    pub queue: DlqQueue,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub account_id: Option<String>,
    pub webhook_id: Option<String>,
    pub url: Option<String>,
    pub attempts: Option<u32>,
    pub reason: String,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub first_attempt_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339")]
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// When it entered the dead-letter queue: the message timestamp hookrelay set, or the
    /// broker's `x-death` time.
    #[serde(serialize_with = "rfc3339")]
    pub dead_lettered_at: Option<DateTime<Utc>>,
    pub dead_lettered_by: DeadLetteredBy,
    /// Why a poison event could not be processed (`hookrelay-error`).
    pub error: Option<String>,
    /// The routing key a poison event was published with; replay publishes it again with it.
    pub routing_key: Option<String>,
    /// The body as it is in the queue, for poison events and for bodies that cannot be read.
    pub raw_body_base64: Option<String>,
    /// The event envelope of a delivery, as the body carries it.
    #[serde(skip)]
    pub event: Option<Box<RawValue>>,
    /// The raw body of an events-queue letter, republished as it is on replay.
    #[serde(skip)]
    pub(crate) raw_body: Option<Vec<u8>>,
    /// The W3C trace context it was dead-lettered in; a replay continues it. Listed as its
    /// `traceparent`, to find the trace.
    #[serde(rename = "traceparent", serialize_with = "traceparent")]
    pub trace: Option<TraceContext>,
}

fn traceparent<S: Serializer>(t: &Option<TraceContext>, s: S) -> Result<S::Ok, S::Error> {
    t.as_ref().map(|t| t.parent.to_string()).serialize(s)
}

fn rfc3339<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .serialize(s)
}

impl DeadLetter {
    /// Reads a message of `queue` from its properties and body.
    pub fn read(queue: DlqQueue, props: &BasicProperties, body: &[u8]) -> DeadLetter {
        let headers = props.headers().clone().unwrap_or_default();
        let ours = text(&headers, header::REASON);
        let death = Death::latest(&headers);
        let by = if ours.is_some() || death.is_none() {
            DeadLetteredBy::Hookrelay
        } else {
            DeadLetteredBy::Broker
        };
        // Properties the client's parser could not read as sent (broker::properties) are the
        // reason a letter without ours was dead-lettered (before the parser was patched, the
        // broker did it past the delivery limit), and its other headers are not to be trusted.
        let readable = crate::broker::properties::check(props, "").is_ok();
        let reason = reason(ours, readable, death.as_ref());
        let timestamp = props
            .timestamp()
            .and_then(|t| Utc.timestamp_opt(t as i64, 0).single());
        let id = match (by, props.message_id()) {
            (DeadLetteredBy::Hookrelay, Some(id)) => id.as_str().to_owned(),
            _ => derived_id(body, death.as_ref(), timestamp),
        };
        let mut letter = DeadLetter::bare(id, queue, reason, by);
        letter.dead_lettered_at = match by {
            DeadLetteredBy::Hookrelay => timestamp,
            DeadLetteredBy::Broker => death.as_ref().and_then(|d| d.time),
        };
        // Properties that could not be read are not trusted for this either.
        letter.trace = match readable {
            true => TraceContext::from_amqp(Some(&headers)),
            false => None,
        };
        match queue {
            DlqQueue::Deliveries => letter.read_delivery(&headers, body),
            DlqQueue::Events => letter.read_event(&headers, death.as_ref(), body),
        }
        letter
    }

    /// A letter that knows only who dead-lettered it and why: every field the body and the
    /// other headers fill is `None` until they are read.
    fn bare(id: String, queue: DlqQueue, reason: String, by: DeadLetteredBy) -> DeadLetter {
        DeadLetter {
            id,
            queue,
            event_id: None,
            event_type: None,
            account_id: None,
            webhook_id: None,
            url: None,
            attempts: None,
            reason,
            last_status: None,
            last_error: None,
            first_attempt_at: None,
            last_attempt_at: None,
            dead_lettered_at: None,
            dead_lettered_by: by,
            error: None,
            routing_key: None,
            raw_body_base64: None,
            event: None,
            raw_body: None,
            trace: None,
        }
    }

    /// The letter without its event and body: what a report keeps once the letter was sent.
    pub fn without_body(mut self) -> DeadLetter {
        self.event = None;
        self.raw_body = None;
        self.raw_body_base64 = None;
        self
    }

    /// The time `--older-than` compares: the last attempt, or when it was dead-lettered.
    pub fn age_reference(&self) -> Option<DateTime<Utc>> {
        self.last_attempt_at.or(self.dead_lettered_at)
    }

    /// Two letters with the same key are the same delivery (dead-lettered twice) or the same
    /// published envelope: replay sends only the first.
    pub fn dedupe_key(&self) -> String {
        match (self.queue, &self.event_id, &self.webhook_id, &self.raw_body) {
            (DlqQueue::Deliveries, Some(event), Some(webhook), _) => {
                format!("delivery {event} {webhook}")
            }
            (_, _, _, Some(body)) => format!(
                "body {} {}",
                hex::encode(Sha256::digest(body)),
                self.routing_key.as_deref().unwrap_or("")
            ),
            // Unreadable and without a body kept: unique, so never taken for another.
            _ => format!("id {}", self.id),
        }
    }

    fn read_delivery(&mut self, headers: &FieldTable, body: &[u8]) {
        if let Ok(dead) = serde_json::from_slice::<DeadDelivery>(body) {
            self.event_id = Some(dead.event_id);
            self.event_type = Some(dead.event_type);
            self.account_id = Some(dead.account_id);
            self.webhook_id = Some(dead.webhook_id);
            self.url = Some(dead.url);
            self.attempts = Some(dead.attempts);
            self.last_status = dead.last_status;
            self.last_error = dead.last_error;
            self.first_attempt_at = dead.first_attempt_at.as_deref().and_then(parse_time);
            self.last_attempt_at = dead.last_attempt_at.as_deref().and_then(parse_time);
            self.event = Some(dead.event);
        } else if let Ok(job) = serde_json::from_slice::<DeliveryJob>(body) {
            // A job the broker dead-lettered from `<prefix>.deliveries`: the attempts made so
            // far travel in its header, which dead-lettering keeps.
            self.read_envelope_fields(job.event.get().as_bytes());
            self.webhook_id = Some(job.webhook_id.to_string());
            self.url = Some(job.url);
            self.attempts = int(headers, header::ATTEMPTS).and_then(|n| u32::try_from(n).ok());
            self.last_status = job.last_status;
            self.last_error = job.last_error;
            self.first_attempt_at = Some(job.first_attempt_at);
            self.last_attempt_at = job.last_attempt_at;
            self.event = Some(job.event);
        } else {
            // Unreadable (e.g. `invalid_job`): what the headers say, and the body as it is.
            self.event_id = text(headers, header::EVENT_ID);
            self.event_type = text(headers, header::EVENT_TYPE);
            self.account_id = text(headers, header::ACCOUNT_ID);
            self.webhook_id = text(headers, header::WEBHOOK_ID);
            self.url = text(headers, header::URL);
            self.error = text(headers, header::ERROR);
            self.raw_body_base64 = Some(B64.encode(body));
        }
    }

    fn read_event(&mut self, headers: &FieldTable, death: Option<&Death>, body: &[u8]) {
        self.read_envelope_fields(body);
        self.error = text(headers, header::ERROR);
        self.routing_key = text(headers, header::ROUTING_KEY)
            .or_else(|| death.and_then(|d| d.routing_keys.first().cloned()));
        self.raw_body_base64 = Some(B64.encode(body));
        self.raw_body = Some(body.to_vec());
    }

    /// `id`, `type` and `account_id` of an envelope, each only if it is there as a string.
    fn read_envelope_fields(&mut self, body: &[u8]) {
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(body) else {
            return;
        };
        let field = |name: &str| fields.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        self.event_id = field("id");
        self.event_type = field("type");
        self.account_id = field("account_id");
    }
}

/// Why a letter was dead-lettered: our `hookrelay-reason`, else properties the client could not
/// read, else the broker's `x-death` reason. An empty reason (a hostile or broken header) says
/// nothing: it reads as unknown.
fn reason(ours: Option<String>, readable: bool, death: Option<&Death>) -> String {
    let unreadable = (!readable).then(|| PoisonReason::InvalidProperties.as_str().to_owned());
    ours.or(unreadable)
        .or_else(|| death.and_then(|d| d.reason.clone()))
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `dx_` + 24 hex digits of SHA-256 over the body and the facts of its death, which do not change
/// when the message is returned to the queue, so the id is the same on every listing.
/// Two identical copies dead-lettered by the same queue in the same second share an id; a command
/// naming it acts on both (they are the same delivery).
fn derived_id(body: &[u8], death: Option<&Death>, timestamp: Option<DateTime<Utc>>) -> String {
    let mut hash = Sha256::new();
    hash.update(body);
    hash.update([0]);
    if let Some(d) = death {
        hash.update(d.queue.as_deref().unwrap_or("").as_bytes());
        hash.update([0]);
        hash.update(d.reason.as_deref().unwrap_or("").as_bytes());
        hash.update([0]);
        hash.update(d.time.map_or(0, |t| t.timestamp()).to_be_bytes());
    }
    hash.update(timestamp.map_or(0, |t| t.timestamp()).to_be_bytes());
    format!("dx_{}", &hex::encode(hash.finalize())[..24])
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldArray, LongString, ShortString};

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
    }

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }

    const ENVELOPE: &str = r#"{"id":"evt_1","type":"payment.card.success","account_id":"68","created_at":"2026-11-27T02:04:21Z","data":{"amount":"10.00"}}"#;

    fn death(reason: &str, time: u64, routing_key: &str) -> FieldTable {
        table(&[(
            "x-death",
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(table(&[
                ("reason", long(reason)),
                ("queue", long("hr.deliveries")),
                ("time", AMQPValue::Timestamp(time)),
                ("count", AMQPValue::LongLongInt(1)),
                (
                    "routing-keys",
                    AMQPValue::FieldArray(FieldArray::from(vec![long(routing_key)])),
                ),
            ]))])),
        )])
    }

    #[test]
    fn a_job_the_broker_dead_lettered_is_read_from_its_body_with_a_stable_id() {
        let job = format!(
            r#"{{"event":{ENVELOPE},"webhook_id":"wh_abc","url":"https://example.com/h","first_attempt_at":"2026-11-27T02:04:22Z","last_attempt_at":"2026-11-27T02:05:22Z","last_status":503,"last_error":null}}"#
        );
        let mut headers = death("delivery_limit", 1_795_745_200, "hr.deliveries");
        headers.insert(header::ATTEMPTS.into(), AMQPValue::LongLongInt(4));
        let props = BasicProperties::default().with_headers(headers);

        let letter = DeadLetter::read(DlqQueue::Deliveries, &props, job.as_bytes());
        let again = DeadLetter::read(DlqQueue::Deliveries, &props, job.as_bytes());

        assert_eq!(letter.reason, "delivery_limit");
        assert_eq!(letter.dead_lettered_by, DeadLetteredBy::Broker);
        assert!(letter.id.starts_with("dx_"));
        assert_eq!(letter.id, again.id);
        assert_eq!(letter.event_id.as_deref(), Some("evt_1"));
        assert_eq!(letter.event_type.as_deref(), Some("payment.card.success"));
        assert_eq!(letter.account_id.as_deref(), Some("68"));
        assert_eq!(letter.webhook_id.as_deref(), Some("wh_abc"));
        assert_eq!(letter.attempts, Some(4));
        assert_eq!(letter.last_status, Some(503));
        assert_eq!(letter.dead_lettered_at.unwrap().timestamp(), 1_795_745_200);
        assert!(letter.raw_body_base64.is_none());
        assert_eq!(letter.dedupe_key(), "delivery evt_1 wh_abc");
    }

    #[test]
    fn the_latest_death_names_the_reason_and_its_time_changes_the_id() {
        let earlier = DeadLetter::read(
            DlqQueue::Events,
            &BasicProperties::default().with_headers(death(
                "delivery_limit",
                100,
                "customer.updated",
            )),
            ENVELOPE.as_bytes(),
        );
        let later = DeadLetter::read(
            DlqQueue::Events,
            &BasicProperties::default().with_headers(death(
                "delivery_limit",
                200,
                "customer.updated",
            )),
            ENVELOPE.as_bytes(),
        );

        assert_ne!(earlier.id, later.id);
        assert_eq!(earlier.routing_key.as_deref(), Some("customer.updated"));
        assert_eq!(earlier.event_id.as_deref(), Some("evt_1"));
        assert_eq!(
            earlier.raw_body_base64.as_deref(),
            Some(B64.encode(ENVELOPE).as_str())
        );
    }

    /// Found by the `dead_letter` fuzz target (input `Kio=`): an empty `x-last-death-reason`
    /// gave a letter with an empty reason.
    #[test]
    fn an_empty_reason_header_reads_as_unknown() {
        let props = BasicProperties::default().with_headers(table(&[
            ("x-last-death-reason", long("")),
            (header::REASON, long("")),
        ]));
        let letter = DeadLetter::read(DlqQueue::Deliveries, &props, b"");
        assert_eq!(letter.reason, "unknown");
        assert!(!letter.id.is_empty());
    }

    #[test]
    fn a_poison_event_keeps_its_raw_body_reason_error_and_routing_key() {
        let props = BasicProperties::default()
            .with_message_id("dl_x".into())
            .with_timestamp(1_795_745_061)
            .with_headers(table(&[
                ("hookrelay-reason", long("invalid_json")),
                ("hookrelay-error", long("not a JSON object")),
                ("hookrelay-routing-key", long("payment.card.success")),
            ]));

        let letter = DeadLetter::read(DlqQueue::Events, &props, b"not json");

        assert_eq!(letter.id, "dl_x");
        assert_eq!(letter.reason, "invalid_json");
        assert_eq!(letter.error.as_deref(), Some("not a JSON object"));
        assert_eq!(letter.routing_key.as_deref(), Some("payment.card.success"));
        assert_eq!(letter.raw_body_base64.as_deref(), Some("bm90IGpzb24="));
        assert_eq!(letter.event_id, None);
        assert_eq!(letter.last_attempt_at, None);
        assert_eq!(letter.age_reference().unwrap().timestamp(), 1_795_745_061);
    }

    #[test]
    fn an_unreadable_delivery_shows_its_headers_and_raw_body() {
        let props = BasicProperties::default()
            .with_message_id("dl_y".into())
            .with_headers(table(&[("hookrelay-reason", long("invalid_job"))]));

        let letter = DeadLetter::read(DlqQueue::Deliveries, &props, b"{\"junk\":1}");

        assert_eq!(letter.reason, "invalid_job");
        assert_eq!(letter.webhook_id, None);
        assert!(letter.raw_body_base64.is_some());
        assert_eq!(letter.dedupe_key(), "id dl_y");
    }

    #[test]
    fn times_serialize_as_rfc3339_with_milliseconds_or_null() {
        let props = BasicProperties::default().with_message_id("dl_z".into());
        let mut letter = DeadLetter::read(DlqQueue::Deliveries, &props, b"?");
        letter.last_attempt_at = parse_time("2026-11-27T02:04:21.5Z");

        let json = serde_json::to_value(&letter).unwrap();

        assert_eq!(json["last_attempt_at"], "2026-11-27T02:04:21.500Z");
        assert!(json["first_attempt_at"].is_null());
        assert_eq!(json["queue"], "deliveries");
        assert_eq!(json["reason"], "unknown");
    }
}
