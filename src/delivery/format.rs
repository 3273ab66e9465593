//! The two wire formats of DESIGN §3: the Standard Webhooks JSON body and the InPlayer legacy form
//! body. Bodies are built once per event and signed per attempt as the exact bytes sent.

use crate::event::{json_string, Event};
use bytes::Bytes;
use indexmap::IndexMap;
use serde_json::value::RawValue;
use std::sync::OnceLock;

/// An event ready to send: each body is serialized at most once, whatever the fan-out.
pub struct PreparedEvent {
    pub event: Event,
    standard: OnceLock<Bytes>,
    inplayer: OnceLock<Bytes>,
    envelope: OnceLock<Box<RawValue>>,
}

impl PreparedEvent {
    pub fn new(event: Event) -> Self {
        PreparedEvent {
            event,
            standard: OnceLock::new(),
            inplayer: OnceLock::new(),
            envelope: OnceLock::new(),
        }
    }

    /// The envelope as published (for logs, retries and resends), serialized once.
    pub fn envelope(&self) -> &RawValue {
        self.envelope.get_or_init(|| {
            RawValue::from_string(self.event.to_envelope_json()).expect("an envelope is JSON")
        })
    }

    pub fn standard_body(&self) -> Bytes {
        self.standard
            .get_or_init(|| Bytes::from(standard_body(&self.event)))
            .clone()
    }

    pub fn inplayer_body(&self) -> Bytes {
        self.inplayer
            .get_or_init(|| Bytes::from(inplayer_body(&self.event)))
            .clone()
    }
}

/// `{"id","type","timestamp","created","account_id","data"}` with `data` byte for byte.
pub fn standard_body(event: &Event) -> String {
    format!(
        r#"{{"id":{},"type":"{}","timestamp":"{}","created":{},"account_id":{},"data":{}}}"#,
        json_string(event.id.as_str()),
        event.event_type.label(),
        event.created_at_rfc3339(),
        event.created_at.timestamp(),
        json_string(event.account_id.as_str()),
        event.data.get()
    )
}

/// `id`, `created`, `type`, then `resource[…]` from `data` in its key order, form-encoded.
pub fn inplayer_body(event: &Event) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("id", event.id.as_str());
    form.append_pair("created", &event.created_at.timestamp().to_string());
    form.append_pair("type", event.event_type.label());
    let mut pairs = Vec::new();
    flatten(&event.data, "resource".to_owned(), &mut pairs);
    for (key, value) in &pairs {
        form.append_pair(key, value);
    }
    form.finish()
}

/// Walks raw JSON so that numbers keep their published text (`10.00`, not `10.0`).
fn flatten(value: &RawValue, key: String, out: &mut Vec<(String, String)>) {
    let text = value.get().trim();
    match text.as_bytes().first() {
        Some(b'{') => {
            // An IndexMap keeps the published key order, which the form must follow.
            let members: IndexMap<String, Box<RawValue>> =
                serde_json::from_str(text).unwrap_or_default();
            for (k, v) in &members {
                flatten(v, format!("{key}[{k}]"), out);
            }
        }
        Some(b'[') => {
            let items: Vec<Box<RawValue>> = serde_json::from_str(text).unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                flatten(item, format!("{key}[{i}]"), out);
            }
        }
        Some(b'"') => out.push((key, serde_json::from_str(text).unwrap_or_default())),
        _ if text == "null" => out.push((key, String::new())),
        _ => out.push((key, text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> Event {
        let body = format!(
            r#"{{"id":"evt_1","type":"payment.card.success","account_id":"68","created_at":"2026-11-27T02:04:21Z","data":{data}}}"#
        );
        Event::parse(body.as_bytes(), "payment.card.success", 1 << 20).unwrap()
    }

    #[test]
    fn inplayer_vector_body_reproduces_byte_for_byte() {
        let e = event(r#"{"amount":"10.00","currency_iso":"EUR"}"#);
        assert_eq!(
            inplayer_body(&e),
            "id=evt_1&created=1795745061&type=payment.card.success&resource%5Bamount%5D=10.00&resource%5Bcurrency_iso%5D=EUR"
        );
    }

    #[test]
    fn inplayer_form_flattens_nested_values_keeping_number_text_and_order() {
        let e = event(r#"{"z":1.50,"a":{"b":[true,null,"x y"]}}"#);
        assert_eq!(
            inplayer_body(&e),
            "id=evt_1&created=1795745061&type=payment.card.success&resource%5Bz%5D=1.50&resource%5Ba%5D%5Bb%5D%5B0%5D=true&resource%5Ba%5D%5Bb%5D%5B1%5D=&resource%5Ba%5D%5Bb%5D%5B2%5D=x+y"
        );
    }

    #[test]
    fn standard_body_passes_data_through_untouched() {
        let e = event(r#"{"amount": 10.00, "currency_iso":"EUR"}"#);
        assert_eq!(
            standard_body(&e),
            r#"{"id":"evt_1","type":"payment.card.success","timestamp":"2026-11-27T02:04:21Z","created":1795745061,"account_id":"68","data":{"amount": 10.00, "currency_iso":"EUR"}}"#
        );
    }
}
