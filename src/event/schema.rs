//! The envelope's JSON Schema (DESIGN §2), one file for every consumer: `hookrelay schema
//! envelope`, `GET /v1/schemas/envelope.json` and `docs/asyncapi.yaml` (scripts/asyncapi.py reads
//! the same `envelope.schema.json`), so they cannot drift apart. The tests below hold the file to
//! the parser's labels and the configured defaults.
//!
//! JSON Schema has no keyword for a document's size or nesting depth: the extension keywords
//! `x-max-bytes` (of the whole body) and `x-max-depth` (of `data`, `data` itself being level 1)
//! carry them, set to the deployment's `delivery.max_event_bytes` and `delivery.max_event_depth`.

use super::Limits;
use serde_json::Value;

/// The schema as shipped, with the default limits.
pub const ENVELOPE_SCHEMA: &str = include_str!("envelope.schema.json");

/// The schema with `limits` in its extension keywords: what a deployment's worker enforces.
pub fn envelope_schema(limits: Limits) -> Value {
    let mut schema: Value =
        serde_json::from_str(ENVELOPE_SCHEMA).expect("envelope.schema.json is JSON (unit-tested)");
    schema["x-max-bytes"] = limits.max_bytes.into();
    schema["properties"]["data"]["x-max-depth"] = limits.max_depth.into();
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;

    fn shipped() -> Value {
        serde_json::from_str(ENVELOPE_SCHEMA).unwrap()
    }

    #[test]
    fn the_schema_lists_exactly_the_27_labels_in_their_order() {
        let labels: Vec<&str> = EventType::ALL.iter().map(|t| t.label()).collect();
        let schema = shipped();
        let listed: Vec<&str> = schema["properties"]["type"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(listed, labels);
    }

    #[test]
    fn the_shipped_limits_are_the_configured_defaults() {
        let settings = crate::config::Settings::load_with_env(None, []).unwrap();
        let defaults = Limits {
            max_bytes: settings.delivery.max_event_bytes,
            max_depth: settings.delivery.max_event_depth,
        };
        assert_eq!(envelope_schema(defaults), shipped());
    }

    #[test]
    fn a_deployment_s_limits_replace_the_defaults() {
        let schema = envelope_schema(Limits {
            max_bytes: 4096,
            max_depth: 3,
        });
        assert_eq!(schema["x-max-bytes"], 4096);
        assert_eq!(schema["properties"]["data"]["x-max-depth"], 3);
    }
}
