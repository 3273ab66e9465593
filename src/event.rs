//! The event envelope upstream services publish (docs/design.md §2): the 27 event types, and
//! parsing a message body into an [`Event`] or a [`Poison`] reason, never anything in between.
//!
//! One file on purpose: every step that reads an envelope (ingest, retries, the attempt log,
//! resend, replay) goes through the one parse here, so nothing accepted once is refused later.
//! The ids, used far beyond the envelope, are in `ids`.

mod ids;
pub mod schema;

pub use ids::{AccountId, EventId};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;
use std::str::FromStr;

/// Declares the 27 labels once: the enum, its wire label and the dashboard's description.
macro_rules! event_types {
    ($($variant:ident => $label:literal, $description:literal;)+) => {
        /// One of the 27 event labels of the InPlayer merchant panel.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType { $($variant),+ }

        impl EventType {
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),+];

            pub fn label(self) -> &'static str {
                match self { $(EventType::$variant => $label),+ }
            }

            pub fn description(self) -> &'static str {
                match self { $(EventType::$variant => $description),+ }
            }
        }
    };
}

event_types! {
    FreemiumGrantSuccess => "freemium.grant.success", "Freemium access granted";
    FreemiumGrantFailed => "freemium.grant.failed", "Freemium access grant failed";
    PaymentCardSuccess => "payment.card.success", "Payment sale with card succeeded";
    PaymentCardFailed => "payment.card.failed", "Payment sale with card failed";
    PaymentRefundSuccess => "payment.refund.success", "Payment refund succeeded";
    PaymentRefundFailed => "payment.refund.failed", "Payment refund failed";
    SubscribeSuccess => "subscribe.success", "Subscription succeeded";
    SubscribeCancelledSuccess => "subscribe.cancelled.success", "Subscription cancellation succeeded";
    SubscribeFailed => "subscribe.failed", "Subscription failed";
    SubscribeCancelledFailed => "subscribe.cancelled.failed", "Subscription cancellation failed";
    SubscribeUpdated => "subscribe.updated", "Subscription updated";
    SubscribeExpired => "subscribe.expired", "Subscription expired";
    ExternalPaymentSuccess => "external.payment.success", "External payment succeeded";
    ExternalPaymentFailed => "external.payment.failed", "External payment failed";
    ExternalSubscribeSuccess => "external.subscribe.success", "External subscription succeeded";
    ExternalSubscribeFailed => "external.subscribe.failed", "External subscription failed";
    ExternalSubscribeUpdateSuccess => "external.subscribe.update.success", "External subscription update succeeded";
    ExternalSubscribeUpdateFailed => "external.subscribe.update.failed", "External subscription update failed";
    ExternalSubscribeCancelSuccess => "external.subscribe.cancel.success", "External subscription cancellation succeeded";
    ExternalSubscribeCancelFailed => "external.subscribe.cancel.failed", "External subscription cancellation failed";
    ExternalPaymentRefundSuccess => "external.payment.refund.success", "External payment refund succeeded";
    ExternalPaymentRefundFailed => "external.payment.refund.failed", "External payment refund failed";
    AssetAccessGranted => "asset.access.granted", "Access to an asset granted";
    AssetAccessRevoked => "asset.access.revoked", "Access to an asset revoked";
    CustomerRegistered => "customer.registered", "Customer registered";
    CustomerUpdated => "customer.updated", "Customer details updated";
    CustomerPasswordUpdated => "customer.password.updated", "Customer password updated";
}

impl EventType {
    /// Position in [`EventType::ALL`]: 27 labels fit a `u32` bit set (see `EventFilter`).
    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown event type {0:?}")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .iter()
            .copied()
            .find(|t| t.label() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why an envelope cannot be processed at all; the `hookrelay-reason` of `<prefix>.dlq.events`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoisonReason {
    TooLarge,
    InvalidJson,
    MissingField,
    InvalidField,
    UnknownType,
    RoutingKeyMismatch,
    TooDeep,
    /// The message's AMQP properties or headers could not be read as sent (see
    /// [`crate::broker::properties`]); its body is not even looked at.
    InvalidProperties,
}

impl PoisonReason {
    pub const ALL: &'static [PoisonReason] = &[
        PoisonReason::TooLarge,
        PoisonReason::InvalidJson,
        PoisonReason::MissingField,
        PoisonReason::InvalidField,
        PoisonReason::UnknownType,
        PoisonReason::RoutingKeyMismatch,
        PoisonReason::TooDeep,
        PoisonReason::InvalidProperties,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PoisonReason::TooLarge => "too_large",
            PoisonReason::InvalidJson => "invalid_json",
            PoisonReason::MissingField => "missing_field",
            PoisonReason::InvalidField => "invalid_field",
            PoisonReason::UnknownType => "unknown_type",
            PoisonReason::RoutingKeyMismatch => "routing_key_mismatch",
            PoisonReason::TooDeep => "too_deep",
            PoisonReason::InvalidProperties => "invalid_properties",
        }
    }
}

/// A poison envelope: the reason plus a sentence for the on-call engineer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Poison {
    pub reason: PoisonReason,
    pub detail: String,
}

impl Poison {
    fn new(reason: PoisonReason, detail: impl Into<String>) -> Self {
        Poison {
            reason,
            detail: detail.into(),
        }
    }
}

/// A valid event. `data` keeps the published bytes exactly (`10.00` stays `10.00`).
#[derive(Clone, Debug)]
pub struct Event {
    pub id: EventId,
    pub event_type: EventType,
    pub account_id: AccountId,
    pub created_at: DateTime<Utc>,
    pub data: Box<RawValue>,
}

/// The envelope as it may arrive: every field optional so that a missing one is told apart from
/// one of the wrong shape. Borrowed raw values keep `data` byte for byte.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    event_type: Option<&'a RawValue>,
    #[serde(borrow)]
    account_id: Option<&'a RawValue>,
    #[serde(borrow)]
    created_at: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

fn required<'a>(field: Option<&'a RawValue>, name: &str) -> Result<&'a RawValue, Poison> {
    match field {
        Some(raw) if raw.get() != "null" => Ok(raw),
        _ => Err(Poison::new(
            PoisonReason::MissingField,
            format!("field `{name}` is missing"),
        )),
    }
}

// The fields of an envelope, each read from its raw JSON in the order `Event::parse` fixes.

fn parse_id(raw: &RawValue) -> Result<EventId, Poison> {
    let id = string_field(raw, "id")?;
    EventId::parse(&id).ok_or_else(|| {
        Poison::new(
            PoisonReason::InvalidField,
            "field `id` must be 1 to 128 of A-Z a-z 0-9 _ -",
        )
    })
}

fn parse_account_id(raw: &RawValue) -> Result<AccountId, Poison> {
    let account_id = string_field(raw, "account_id")?;
    AccountId::parse(&account_id).ok_or_else(|| {
        Poison::new(
            PoisonReason::InvalidField,
            "field `account_id` must be 1 to 128 of A-Z a-z 0-9 _ . : -",
        )
    })
}

fn parse_created_at(raw: &RawValue) -> Result<DateTime<Utc>, Poison> {
    let created_at = string_field(raw, "created_at")?;
    DateTime::parse_from_rfc3339(&created_at)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            Poison::new(
                PoisonReason::InvalidField,
                format!("field `created_at` is not an RFC 3339 time: {e}"),
            )
        })
}

/// `data` is an object nested at most `max_depth` levels (counted without recursion).
fn check_data(data: &RawValue, max_depth: usize) -> Result<(), Poison> {
    if !data.get().starts_with('{') {
        return Err(Poison::new(
            PoisonReason::InvalidField,
            "field `data` must be a JSON object",
        ));
    }
    if nesting_exceeds(data.get().as_bytes(), max_depth) {
        return Err(Poison::new(
            PoisonReason::TooDeep,
            format!("field `data` is nested deeper than {max_depth} levels"),
        ));
    }
    Ok(())
}

/// One of the 27 labels, and the routing key's, when there is one.
fn parse_type(raw: &RawValue, routing_key: Option<&str>) -> Result<EventType, Poison> {
    let type_label = string_field(raw, "type")?;
    let event_type: EventType = type_label
        .parse()
        .map_err(|e: UnknownEventType| Poison::new(PoisonReason::UnknownType, e.to_string()))?;
    match routing_key {
        Some(key) if event_type.label() != key => Err(Poison::new(
            PoisonReason::RoutingKeyMismatch,
            format!("type is {type_label:?} but the routing key is {key:?}"),
        )),
        _ => Ok(event_type),
    }
}

fn string_field(raw: &RawValue, name: &str) -> Result<String, Poison> {
    serde_json::from_str::<String>(raw.get()).map_err(|_| {
        Poison::new(
            PoisonReason::InvalidField,
            format!("field `{name}` must be a string"),
        )
    })
}

/// The limits an envelope is checked against at ingest (`delivery.max_event_bytes`,
/// `delivery.max_event_depth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_depth: usize,
}

impl Limits {
    /// No limit: for re-reading an envelope that ingest already accepted (see
    /// [`Event::parse_accepted`]).
    pub const NONE: Limits = Limits {
        max_bytes: usize::MAX,
        max_depth: usize::MAX,
    };
}

impl Event {
    /// Parses a message body published with `routing_key`, in the order DESIGN §6 fixes: size
    /// first, then JSON, then each field, then the type and its agreement with the routing key.
    pub fn parse(body: &[u8], routing_key: &str, limits: Limits) -> Result<Event, Poison> {
        if body.len() > limits.max_bytes {
            return Err(Poison::new(
                PoisonReason::TooLarge,
                format!(
                    "body is {} bytes, the limit is {}",
                    body.len(),
                    limits.max_bytes
                ),
            ));
        }
        Self::parse_fields(body, Some(routing_key), limits.max_depth)
    }

    /// Re-reads an envelope that ingest accepted (a retry, the attempt log, a dead letter): no
    /// size or depth limit and no routing key, so that nothing accepted once is refused later
    /// (DESIGN §2). The fields are read exactly as at ingest, through borrowed raw values: never
    /// through `serde_json::Value`, whose recursion limit is stricter than ingest.
    pub fn parse_accepted(envelope: &[u8]) -> Result<Event, Poison> {
        Self::parse_fields(envelope, None, usize::MAX)
    }

    fn parse_fields(
        body: &[u8],
        routing_key: Option<&str>,
        max_depth: usize,
    ) -> Result<Event, Poison> {
        let raw: RawEnvelope = serde_json::from_slice(body).map_err(|e| {
            Poison::new(PoisonReason::InvalidJson, format!("not a JSON object: {e}"))
        })?;

        let id = required(raw.id, "id")?;
        let event_type = required(raw.event_type, "type")?;
        let account_id = required(raw.account_id, "account_id")?;
        let created_at = required(raw.created_at, "created_at")?;
        let data = required(raw.data, "data")?;

        let id = parse_id(id)?;
        let account_id = parse_account_id(account_id)?;
        let created_at = parse_created_at(created_at)?;
        check_data(data, max_depth)?;
        let event_type = parse_type(event_type, routing_key)?;
        Ok(Event {
            id,
            event_type,
            account_id,
            created_at,
            data: data.to_owned(),
        })
    }

    /// The envelope as upstream publishes it (DESIGN §2), `data` untouched.
    pub fn to_envelope_json(&self) -> String {
        format!(
            r#"{{"id":{},"type":"{}","account_id":{},"created_at":{},"data":{}}}"#,
            json_string(self.id.as_str()),
            self.event_type.label(),
            json_string(self.account_id.as_str()),
            json_string(&self.created_at_rfc3339()),
            self.data.get()
        )
    }

    /// `created_at` in UTC, whole seconds, `Z` suffix.
    pub fn created_at_rfc3339(&self) -> String {
        self.created_at.to_rfc3339_opts(SecondsFormat::Secs, true)
    }
}

/// Whether the JSON text `json` nests objects and arrays deeper than `max` levels (`{}` is one).
/// A loop with a counter, never recursion: the depth of the input cannot reach the stack.
/// `json` is valid JSON (serde_json checked it), so brackets inside strings are the only ones
/// to skip.
pub fn nesting_exceeds(json: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&b) = json.get(at) {
        at += 1;
        match b {
            // A string's end is found with memchr (a large payload is mostly strings).
            b'"' => at = string_end(json, at),
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The index just past the closing quote of the string whose contents start at `from`.
fn string_end(json: &[u8], mut from: usize) -> usize {
    while let Some(i) = memchr::memchr2(b'"', b'\\', &json[from..]) {
        let i = from + i;
        if json[i] == b'"' {
            return i + 1;
        }
        // A backslash escapes the next byte, whatever it is.
        from = i + 2;
        if from >= json.len() {
            break;
        }
    }
    json.len()
}

/// Serializes a string as a JSON string literal.
pub fn json_string(s: &str) -> String {
    // A `str` always serializes; the `expect` cannot fire.
    serde_json::to_string(s).expect("a string serializes to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Limits = Limits {
        max_bytes: 262_144,
        max_depth: 32,
    };

    fn envelope(fields: &str) -> String {
        format!("{{{fields}}}")
    }

    fn valid() -> String {
        envelope(
            r#""id":"evt_1","type":"payment.card.success","account_id":"68","created_at":"2026-11-27T02:04:21Z","data":{"amount":10.00,"currency_iso":"EUR"}"#,
        )
    }

    #[test]
    fn every_poison_reason_is_listed_once_in_all() {
        // A reason missing from ALL would not be exported at 0 before its first dead letter.
        let covered = |r: PoisonReason| match r {
            PoisonReason::TooLarge
            | PoisonReason::InvalidJson
            | PoisonReason::MissingField
            | PoisonReason::InvalidField
            | PoisonReason::UnknownType
            | PoisonReason::RoutingKeyMismatch
            | PoisonReason::TooDeep
            | PoisonReason::InvalidProperties => {
                PoisonReason::ALL.iter().filter(|a| **a == r).count()
            }
        };
        assert!(PoisonReason::ALL.iter().all(|r| covered(*r) == 1));
        assert_eq!(PoisonReason::ALL.len(), 8);
    }

    fn reason(body: &str, key: &str) -> PoisonReason {
        Event::parse(body.as_bytes(), key, MAX).unwrap_err().reason
    }

    #[test]
    fn there_are_27_labels_each_parsing_back_to_itself() {
        assert_eq!(EventType::ALL.len(), 27);
        for t in EventType::ALL {
            assert_eq!(t.label().parse::<EventType>().unwrap(), *t);
            assert!(!t.description().is_empty());
        }
    }

    #[test]
    fn a_valid_envelope_keeps_data_byte_for_byte() {
        let event = Event::parse(valid().as_bytes(), "payment.card.success", MAX).unwrap();
        assert_eq!(event.data.get(), r#"{"amount":10.00,"currency_iso":"EUR"}"#);
        assert_eq!(event.created_at.timestamp(), 1_795_745_061);
        assert_eq!(event.account_id.as_str(), "68");
    }

    #[test]
    fn size_is_checked_before_anything_else() {
        let body = "x".repeat(MAX.max_bytes + 1);
        assert_eq!(
            reason(&body, "payment.card.success"),
            PoisonReason::TooLarge
        );
    }

    #[test]
    fn each_kind_of_poison_gets_its_reason() {
        let key = "payment.card.success";
        assert_eq!(reason("not json", key), PoisonReason::InvalidJson);
        assert_eq!(reason("[1,2]", key), PoisonReason::InvalidJson);
        assert_eq!(
            reason(&valid().replace(r#""id":"evt_1","#, ""), key),
            PoisonReason::MissingField
        );
        assert_eq!(
            reason(&valid().replace(r#""id":"evt_1""#, r#""id":7"#), key),
            PoisonReason::InvalidField
        );
        assert_eq!(
            reason(&valid().replace("evt_1", "evt 1"), key),
            PoisonReason::InvalidField
        );
        assert_eq!(
            reason(&valid().replace("2026-11-27T02:04:21Z", "yesterday"), key),
            PoisonReason::InvalidField
        );
        assert_eq!(
            reason(
                &valid().replace(r#"{"amount":10.00,"currency_iso":"EUR"}"#, "[1]"),
                key
            ),
            PoisonReason::InvalidField
        );
        assert_eq!(
            reason(&valid().replace(key, "payment.bitcoin"), "payment.bitcoin"),
            PoisonReason::UnknownType
        );
        assert_eq!(
            reason(&valid(), "payment.card.failed"),
            PoisonReason::RoutingKeyMismatch
        );
    }

    fn with_data(data: &str) -> String {
        valid().replace(r#"{"amount":10.00,"currency_iso":"EUR"}"#, data)
    }

    #[test]
    fn data_deeper_than_the_limit_is_too_deep_and_the_limit_itself_passes() {
        let key = "payment.card.success";
        let nested = |levels: usize| {
            format!(
                "{{\"a\":{}1{}}}",
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        assert!(Event::parse(with_data(&nested(32)).as_bytes(), key, MAX).is_ok());
        assert_eq!(reason(&with_data(&nested(33)), key), PoisonReason::TooDeep);
        // 120,000 levels: refused by counting, with no stack to overflow.
        assert_eq!(
            reason(&with_data(&nested(120_000)), key),
            PoisonReason::TooDeep
        );
    }

    #[test]
    fn brackets_inside_strings_do_not_count_as_nesting() {
        let data = format!(r#"{{"s":"{}\"{}"}}"#, "[".repeat(100), "{".repeat(100));
        let event = Event::parse(with_data(&data).as_bytes(), "payment.card.success", MAX).unwrap();
        assert_eq!(event.data.get(), data);
    }

    #[test]
    fn what_ingest_accepted_parses_again_byte_for_byte_without_limits() {
        let data = r#"{"n":1e400,"s":"\ud800","m":10.00,"k":1,"k":2}"#;
        let event = Event::parse(with_data(data).as_bytes(), "payment.card.success", MAX).unwrap();
        let again = Event::parse_accepted(event.to_envelope_json().as_bytes()).unwrap();
        assert_eq!(again.data.get(), data);
        assert_eq!(again.id, event.id);
        assert_eq!(again.event_type, event.event_type);
    }
}
