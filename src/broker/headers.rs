//! Reading AMQP headers that hookrelay or the broker wrote, whatever width or string kind the
//! other side used.

use lapin::types::{AMQPValue, FieldTable};

/// A text header (long or short string).
pub fn text(headers: &FieldTable, key: &str) -> Option<String> {
    headers.inner().get(key).and_then(as_text)
}

/// A string value of a header, or of an entry of an array or table header.
pub fn as_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// An integer header of any width.
pub fn int(headers: &FieldTable, key: &str) -> Option<i64> {
    match headers.inner().get(key)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}
