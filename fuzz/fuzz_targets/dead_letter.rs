//! Any message in either dead-letter queue, with any body and hostile headers (ours and the
//! broker's `x-death`): reading it never panics, and a letter always has an id and a reason.
#![no_main]

use hookrelay::dlq::letter::{DeadLetter, DlqQueue};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use libfuzzer_sys::fuzz_target;

fn text(bytes: &[u8]) -> AMQPValue {
    AMQPValue::LongString(LongString::from(bytes.to_vec()))
}

fuzz_target!(|input: &[u8]| {
    // The first bytes pick the queue and which headers to set; the next chunk is their text;
    // the rest is the body.
    let (Some(&flags), Some(&split)) = (input.first(), input.get(1)) else {
        return;
    };
    let rest = &input[2..];
    let split = (split as usize).min(rest.len());
    let (header_text, body) = rest.split_at(split);
    let mut headers = FieldTable::default();
    let names = [
        "hookrelay-reason",
        "hookrelay-event-id",
        "hookrelay-attempts",
        "hookrelay-last-status",
        "hookrelay-first-attempt-at",
        "x-last-death-reason",
    ];
    for (bit, name) in names.iter().enumerate() {
        if flags & (1 << bit) != 0 {
            let value = if name.ends_with("attempts") || name.ends_with("status") {
                AMQPValue::LongLongInt(i64::from_le_bytes(
                    header_text.iter().copied().chain([0; 8]).take(8).collect::<Vec<_>>()
                        .try_into()
                        .unwrap(),
                ))
            } else {
                text(header_text)
            };
            headers.insert(ShortString::from(*name), value);
        }
    }
    if flags & 0x40 != 0 {
        let mut death = FieldTable::default();
        death.insert("reason".into(), text(header_text));
        death.insert("queue".into(), text(header_text));
        death.insert("time".into(), AMQPValue::Timestamp(u64::MAX));
        death.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![text(header_text), AMQPValue::Boolean(true)])),
        );
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
    }
    let queue = if flags & 0x80 != 0 {
        DlqQueue::Events
    } else {
        DlqQueue::Deliveries
    };
    let props = BasicProperties::default()
        .with_headers(headers)
        .with_timestamp(u64::from_le_bytes([split as u8; 8]));
    let letter = DeadLetter::read(queue, &props, body);
    assert!(!letter.id.is_empty());
    assert!(!letter.reason.is_empty());
});
