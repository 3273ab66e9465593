//! Whether a message's AMQP properties were read as they were sent (`invalid_properties`).
//!
//! The AMQP client's parser is patched (`vendor/amq-protocol-types`, see `vendor/README.md`) so
//! that nothing a publisher puts in a message's properties fails the frame: before, headers
//! nested 1,000 tables deep aborted the process (stack overflow in lapin's io loop) and a
//! `content_type` of bytes `FF FE` closed the connection on every delivery. The patched parser
//! reads a table or array nested deeper than its limit as a long string
//! [`NESTING_LIMIT_MARKER`], and a short string that is not UTF-8 with U+FFFD in place of each
//! bad sequence. Such a message then reaches the worker like any other, and [`check`] tells it
//! apart: a marker anywhere in the headers, or a U+FFFD in a short-string property, a header
//! name, a short-string header value or the routing key, means what was received is not what was
//! sent. The worker dead-letters that one message as `invalid_properties` and carries on.
//!
//! A publisher that sends the marker text or a U+FFFD on purpose gets the same outcome for its
//! own message and nothing else; hookrelay never writes either.

use lapin::types::parsing::{MAX_NESTING_DEPTH, NESTING_LIMIT_MARKER};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

/// Why a message's properties cannot be trusted; said in the dead letter's `hookrelay-error`.
/// It names where, never the hostile bytes themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("the AMQP headers nest tables or arrays deeper than {MAX_NESTING_DEPTH} levels")]
    TooDeep,
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
}

/// `Ok` when every property, header and the routing key read as sent.
pub fn check(props: &BasicProperties, routing_key: &str) -> Result<(), Unreadable> {
    if lossy(routing_key) {
        return Err(Unreadable::NotUtf8("the routing key"));
    }
    let short_strings = [
        ("the content_type property", props.content_type()),
        ("the content_encoding property", props.content_encoding()),
        ("the correlation_id property", props.correlation_id()),
        ("the reply_to property", props.reply_to()),
        ("the expiration property", props.expiration()),
        ("the message_id property", props.message_id()),
        ("the type property", props.kind()),
        ("the user_id property", props.user_id()),
        ("the app_id property", props.app_id()),
        ("the cluster_id property", props.cluster_id()),
    ];
    for (name, value) in short_strings {
        if value.as_ref().is_some_and(|s| lossy(s.as_str())) {
            return Err(Unreadable::NotUtf8(name));
        }
    }
    match props.headers() {
        Some(headers) => check_headers(headers),
        None => Ok(()),
    }
}

/// Walks the headers with an explicit stack: the parser bounds their depth, but this does not
/// need to rely on it.
fn check_headers(headers: &FieldTable) -> Result<(), Unreadable> {
    let mut pending: Vec<&AMQPValue> = Vec::new();
    push_table(headers, &mut pending)?;
    while let Some(value) = pending.pop() {
        match value {
            AMQPValue::FieldTable(table) => push_table(table, &mut pending)?,
            AMQPValue::FieldArray(items) => pending.extend(items.as_slice()),
            AMQPValue::LongString(s) if s.as_bytes() == NESTING_LIMIT_MARKER.as_bytes() => {
                return Err(Unreadable::TooDeep)
            }
            AMQPValue::ShortString(s) if lossy(s.as_str()) => {
                return Err(Unreadable::NotUtf8("a header value"))
            }
            _ => {}
        }
    }
    Ok(())
}

fn push_table<'a>(
    table: &'a FieldTable,
    pending: &mut Vec<&'a AMQPValue>,
) -> Result<(), Unreadable> {
    for (key, value) in table.inner() {
        if lossy(key.as_str()) {
            return Err(Unreadable::NotUtf8("a header name"));
        }
        pending.push(value);
    }
    Ok(())
}

/// The patched parser's sign of a short string that was not UTF-8.
fn lossy(s: &str) -> bool {
    s.contains(char::REPLACEMENT_CHARACTER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::parsing::parse_field_table;

    fn with_headers(entries: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (k, v) in entries {
            table.insert((*k).into(), v.clone());
        }
        BasicProperties::default().with_headers(table)
    }

    /// The bytes of a headers table `{"a": {"a": … {} …}}` of `levels` tables.
    fn tables_nested(levels: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(7 * levels);
        for k in 1..levels {
            out.extend((7 * (levels - k) as u32).to_be_bytes());
            out.extend([1, b'a', b'F']);
        }
        out.extend(0u32.to_be_bytes());
        out
    }

    #[test]
    fn what_hookrelay_and_the_broker_write_reads_as_sent() {
        let death = AMQPValue::FieldArray(
            vec![AMQPValue::FieldTable({
                let mut t = FieldTable::default();
                t.insert("reason".into(), AMQPValue::LongString("expired".into()));
                t.insert(
                    "routing-keys".into(),
                    AMQPValue::FieldArray(vec![AMQPValue::LongString("x".into())].into()),
                );
                t
            })]
            .into(),
        );
        let props = with_headers(&[
            ("x-death", death),
            ("hookrelay-attempts", AMQPValue::LongLongInt(3)),
        ])
        .with_content_type("application/json".into())
        .with_message_id("dl_abc".into());
        assert_eq!(check(&props, "payment.card.success"), Ok(()));
    }

    #[test]
    fn headers_the_parser_cut_at_its_depth_limit_are_too_deep() {
        let bytes = tables_nested(1_000);
        let (_, table) = parse_field_table(&bytes[..]).unwrap();
        let props = BasicProperties::default().with_headers(table);
        assert_eq!(check(&props, "k"), Err(Unreadable::TooDeep));
    }

    #[test]
    fn headers_as_deep_as_the_parser_reads_are_accepted() {
        let bytes = tables_nested(MAX_NESTING_DEPTH);
        let (_, table) = parse_field_table(&bytes[..]).unwrap();
        let props = BasicProperties::default().with_headers(table);
        assert_eq!(check(&props, "k"), Ok(()));
    }

    #[test]
    fn a_replacement_character_anywhere_a_short_string_goes_is_not_utf8() {
        let bad = "a\u{FFFD}";
        let cases = [
            (
                BasicProperties::default().with_content_type(bad.into()),
                "k",
                "the content_type property",
            ),
            (
                BasicProperties::default().with_cluster_id(bad.into()),
                "k",
                "the cluster_id property",
            ),
            (
                with_headers(&[(bad, AMQPValue::Boolean(true))]),
                "k",
                "a header name",
            ),
            (
                with_headers(&[(
                    "x",
                    AMQPValue::FieldArray(vec![AMQPValue::ShortString(bad.into())].into()),
                )]),
                "k",
                "a header value",
            ),
            (BasicProperties::default(), bad, "the routing key"),
        ];
        for (props, routing_key, said) in cases {
            assert_eq!(check(&props, routing_key), Err(Unreadable::NotUtf8(said)));
        }
    }

    #[test]
    fn the_error_names_the_place_not_the_bytes() {
        let text = Unreadable::NotUtf8("a header name").to_string();
        assert_eq!(text, "a header name is not UTF-8");
        assert!(Unreadable::TooDeep.to_string().contains("32 levels"));
    }
}
