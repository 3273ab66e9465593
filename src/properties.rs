//! Property tests of the pure core against hostile input (run in CI, well under a minute): the
//! envelope parser, the depth counter and the InPlayer renderer never panic, agree with simple
//! reference definitions, and keep what ingest accepted byte for byte. The cargo-fuzz targets in
//! `fuzz/` run the same code for much longer.

use crate::delivery::format::{inplayer_body, standard_body, BodyTooLarge, MAX_BODY_BYTES};
use crate::event::{nesting_exceeds, Event, Limits};
use proptest::prelude::*;
use serde_json::Value;

/// JSON values up to a few levels deep, with the strings and numbers that trip parsers.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
        Just(Value::String("[{\"}]\\".into())),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The InPlayer pairs by the obvious recursive definition (fine for the shallow values here).
fn reference_pairs(v: &Value, key: String, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                reference_pairs(v, format!("{key}[{k}]"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                reference_pairs(v, format!("{key}[{i}]"), out);
            }
        }
        Value::String(s) => out.push((key, s.clone())),
        Value::Null => out.push((key, String::new())),
        other => out.push((key, other.to_string())),
    }
}

fn envelope(data: &str) -> String {
    format!(
        r#"{{"id":"evt_p","type":"payment.card.success","account_id":"a","created_at":"2026-11-27T02:04:21Z","data":{data}}}"#
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parsing_arbitrary_bytes_never_panics(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Event::parse(&body, "payment.card.success", Limits { max_bytes: 1024, max_depth: 4 });
        let _ = Event::parse_accepted(&body);
    }

    #[test]
    fn the_depth_counter_agrees_with_the_tree(v in json_value(), max in 0usize..8) {
        let text = v.to_string();
        prop_assert_eq!(nesting_exceeds(text.as_bytes(), max), depth(&v) > max);
    }

    #[test]
    fn accepted_data_comes_back_byte_for_byte(v in json_value()) {
        let data = Value::Object([("v".to_owned(), v)].into_iter().collect()).to_string();
        let limits = Limits { max_bytes: usize::MAX, max_depth: usize::MAX };
        let event = Event::parse(envelope(&data).as_bytes(), "payment.card.success", limits).unwrap();
        prop_assert_eq!(event.data.get(), data.as_str());
        let again = Event::parse_accepted(event.to_envelope_json().as_bytes()).unwrap();
        prop_assert_eq!(again.data.get(), data.as_str());
        let tail = format!(r#""data":{data}}}"#);
        prop_assert!(standard_body(&event).ends_with(&tail));
    }

    #[test]
    fn the_inplayer_form_matches_the_recursive_definition(v in json_value()) {
        let data = Value::Object([("v".to_owned(), v.clone())].into_iter().collect());
        let limits = Limits { max_bytes: usize::MAX, max_depth: usize::MAX };
        let event = Event::parse(envelope(&data.to_string()).as_bytes(), "payment.card.success", limits).unwrap();
        let mut pairs = vec![
            ("id".to_owned(), "evt_p".to_owned()),
            ("created".to_owned(), "1795745061".to_owned()),
            ("type".to_owned(), "payment.card.success".to_owned()),
        ];
        reference_pairs(&data, "resource".to_owned(), &mut pairs);
        let expected: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        match inplayer_body(&event) {
            Ok(body) => prop_assert_eq!(body, expected),
            Err(BodyTooLarge) => prop_assert!(expected.len() > MAX_BODY_BYTES),
        }
    }

    #[test]
    fn the_inplayer_renderer_survives_any_accepted_json_text(text in "\\PC{0,64}") {
        // Whatever JSON text serde accepts as `data` (any spacing, escapes, duplicates).
        let limits = Limits { max_bytes: usize::MAX, max_depth: usize::MAX };
        if let Ok(event) = Event::parse(envelope(&text).as_bytes(), "payment.card.success", limits) {
            let _ = inplayer_body(&event);
        }
    }
}
