//! The AMQP headers a dead letter carries: text and integer values, and the broker's own record
//! of a dead-lettering (`x-death`, `x-first-death-reason`, and on RabbitMQ 3.13+
//! `x-last-death-reason`; the same for AMQP 0-9-1 clients on 3.10 and 4.x).

use chrono::{DateTime, TimeZone, Utc};
use lapin::types::{AMQPValue, FieldTable};

pub use crate::broker::headers::{as_text, int, text};

/// The most recent entry of `x-death` (the broker keeps it first), with the `x-last-death-reason`
/// of RabbitMQ 3.13+ when present.
#[derive(Debug, PartialEq)]
pub struct Death {
    pub reason: Option<String>,
    pub queue: Option<String>,
    pub time: Option<DateTime<Utc>>,
    /// The routing keys the message was first published with.
    pub routing_keys: Vec<String>,
}

impl Death {
    /// `None` when the broker never dead-lettered the message.
    pub fn latest(headers: &FieldTable) -> Option<Death> {
        let entry = match headers.inner().get("x-death") {
            Some(AMQPValue::FieldArray(deaths)) => match deaths.as_slice().first() {
                Some(AMQPValue::FieldTable(entry)) => Some(entry.clone()),
                _ => None,
            },
            _ => None,
        };
        let last_reason = text(headers, "x-last-death-reason");
        let first_reason = text(headers, "x-first-death-reason");
        if entry.is_none() && last_reason.is_none() && first_reason.is_none() {
            return None;
        }
        let entry = entry.unwrap_or_default();
        let time = match entry.inner().get("time") {
            Some(AMQPValue::Timestamp(t)) => Utc.timestamp_opt(*t as i64, 0).single(),
            _ => None,
        };
        let routing_keys = match entry.inner().get("routing-keys") {
            Some(AMQPValue::FieldArray(keys)) => {
                keys.as_slice().iter().filter_map(as_text).collect()
            }
            _ => Vec::new(),
        };
        Some(Death {
            reason: last_reason
                .or_else(|| text(&entry, "reason"))
                .or(first_reason),
            queue: text(&entry, "queue"),
            time,
            routing_keys,
        })
    }
}
