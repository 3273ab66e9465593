//! The AMQP headers table of one outgoing message, built in the order given. It lives beside the
//! messages that fill it (a dead letter's facts, a job's attempt count) rather than in the
//! publisher, so that `messages` depends on no broker code and the publisher only sends it.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Headers to attach to a message, in the order given.
#[derive(Default, Clone, Debug)]
pub struct Headers(FieldTable);

impl Headers {
    pub fn text(mut self, key: &str, value: &str) -> Self {
        self.0.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
        );
        self
    }

    pub fn int(mut self, key: &str, value: i64) -> Self {
        self.0
            .insert(ShortString::from(key), AMQPValue::LongLongInt(value));
        self
    }

    /// The table itself: what the publisher sends, and for callers that publish with lapin
    /// directly (tests pipelining publishes in a fixed order).
    pub fn into_table(self) -> FieldTable {
        self.0
    }
}
