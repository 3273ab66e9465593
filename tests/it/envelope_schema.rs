//! The envelope's contract as publishers in any language get it (DESIGN §2): one JSON Schema,
//! printed by `hookrelay schema envelope`, served at `GET /v1/schemas/envelope.json` and shipped
//! in docs/asyncapi.yaml, and `hookrelay publish --check` giving the reason a worker would
//! dead-letter an envelope with.

use crate::helpers::api::*;
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;

/// docs/asyncapi.yaml's `components.schemas.Envelope` (the file is JSON after its comment line).
fn asyncapi_envelope() -> Value {
    let text = std::fs::read_to_string("docs/asyncapi.yaml").unwrap();
    let (_comment, json) = text.split_once('\n').unwrap();
    let doc: Value = serde_json::from_str(json).expect("docs/asyncapi.yaml is JSON");
    doc["components"]["schemas"]["Envelope"].clone()
}

/// The standalone schema without its document keywords, as AsyncAPI embeds it.
fn embedded(mut schema: Value) -> Value {
    let object = schema.as_object_mut().unwrap();
    assert!(
        object.remove("$schema").is_some(),
        "a standalone schema names its draft"
    );
    object.remove("title");
    schema
}

/// Writes `body` to a file of its own for `publish --check`.
fn envelope_file(prefix: &str, name: &str, body: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{prefix}-{name}.json"));
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn hookrelay_schema_envelope_prints_the_schema_docs_asyncapi_yaml_ships() {
    let out = hookrelay(&test_prefix(), &["schema", "envelope"], &[]);
    assert!(out.status.success(), "{out:?}");
    let printed: Value = serde_json::from_slice(&out.stdout).expect("the schema is JSON");

    assert_eq!(
        printed["$schema"],
        "http://json-schema.org/draft-07/schema#"
    );
    assert_eq!(embedded(printed), asyncapi_envelope());
}

#[tokio::test]
async fn the_api_serves_the_envelope_schema_without_a_token_with_its_deployment_s_limits() {
    let api = api_alone(&[("HOOKRELAY__DELIVERY__MAX_EVENT_DEPTH", "7")]).await;

    let response = reqwest::get(format!("{}/v1/schemas/envelope.json", api.base))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/schema+json"
    );
    let served: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let doc = reqwest::get(format!("{}/v1/openapi.json", api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc: Value = serde_json::from_str(&doc).unwrap();

    assert_eq!(served["properties"]["data"]["x-max-depth"], 7);
    let mut shipped = asyncapi_envelope();
    shipped["properties"]["data"]["x-max-depth"] = 7.into();
    assert_eq!(embedded(served), shipped);
    let operation = &doc["paths"]["/v1/schemas/envelope.json"]["get"];
    assert!(operation.is_object(), "not in the OpenAPI document");
    assert_eq!(
        operation["security"],
        serde_json::json!([{}]),
        "documented as needing no token"
    );
    api.cleanup().await;
}

#[test]
fn publish_check_says_ok_or_the_reason_a_worker_would_dead_letter_with() {
    let prefix = test_prefix();
    let valid = br#"{"id":"evt_1","type":"payment.card.success","account_id":"68","created_at":"2026-11-27T02:04:21Z","data":{"amount":"10.00"}}"#;
    let deep = format!(
        r#"{{"id":"evt_1","type":"payment.card.success","account_id":"68","created_at":"2026-11-27T02:04:21Z","data":{}{}}}"#,
        "{\"a\":".repeat(40) + "1",
        "}".repeat(40)
    );
    let large = format!(
        r#"{{"id":"evt_1","type":"payment.card.success","account_id":"68","created_at":"2026-11-27T02:04:21Z","data":{{"pad":"{}"}}}}"#,
        "x".repeat(2048)
    );
    let cases: [(&str, &[u8], Option<&str>); 6] = [
        ("valid", valid, None),
        ("bad-id", &br#"{"id":"evt 1","type":"payment.card.success","account_id":"68","created_at":"2026-11-27T02:04:21Z","data":{}}"#[..], Some("invalid_field: field `id`")),
        ("unknown-type", br#"{"id":"e","type":"payment.card.maybe","account_id":"68","created_at":"2026-11-27T02:04:21Z","data":{}}"#, Some("unknown_type: ")),
        ("not-json", b"{\"id\":", Some("invalid_json: ")),
        ("deep", deep.as_bytes(), Some("too_deep: ")),
        ("large", large.as_bytes(), Some("too_large: ")),
    ];

    for (name, body, reason) in cases {
        let file = envelope_file(&prefix, name, body);
        let out = hookrelay(
            &prefix,
            &["publish", "--check", file.to_str().unwrap()],
            &[("HOOKRELAY__DELIVERY__MAX_EVENT_BYTES", "1024")],
        );
        std::fs::remove_file(&file).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match reason {
            None => {
                assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
                assert_eq!(stdout.trim(), "ok", "{name}");
            }
            Some(reason) => {
                assert_eq!(out.status.code(), Some(65), "{name}: {stdout} {stderr}");
                assert!(stderr.contains(reason), "{name}: {stderr}");
                assert!(stdout.is_empty(), "{name}: {stdout}");
            }
        }
    }
}

/// The schema's verdict on `body`: `Ok` if it passes, else every dead-letter reason its failing
/// keywords stand for. The extension keywords are checked first, on the bytes, as they say:
/// `x-max-bytes` on the body's length, `x-max-depth` on the nesting of `data`'s raw text (a JSON
/// parser would stop at its own recursion limit long before 120 000 levels).
fn schema_verdict(validator: &jsonschema::Validator, schema: &Value, body: &[u8]) -> Verdict {
    let max_bytes = schema["x-max-bytes"].as_u64().unwrap() as usize;
    let max_depth = schema["properties"]["data"]["x-max-depth"]
        .as_u64()
        .unwrap() as usize;
    if body.len() > max_bytes {
        return Verdict::Refused(vec!["too_large"]);
    }
    #[derive(serde::Deserialize)]
    struct DataOnly<'a> {
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    let Ok(envelope) = serde_json::from_slice::<DataOnly>(body) else {
        return Verdict::Refused(vec!["invalid_json"]);
    };
    if envelope
        .data
        .is_some_and(|d| depth(d.get().as_bytes()) > max_depth)
    {
        return Verdict::Refused(vec!["too_deep"]);
    }
    let Ok(instance) = serde_json::from_slice::<Value>(body) else {
        return Verdict::Unrepresentable;
    };
    let reasons: Vec<&str> = validator
        .iter_errors(&instance)
        .map(|e| match e.kind().keyword() {
            "required" => "missing_field",
            "enum" => "unknown_type",
            "type" | "pattern" | "format" => "invalid_field",
            other => panic!("no dead-letter reason for keyword {other}"),
        })
        .collect();
    if reasons.is_empty() {
        Verdict::Passes
    } else {
        Verdict::Refused(reasons)
    }
}

#[derive(Debug)]
enum Verdict {
    Passes,
    Refused(Vec<&'static str>),
    /// Valid JSON (RFC 8259 allows it) that serde_json's `Value` cannot hold, so no JSON Schema
    /// validator built on it can look at it: a number beyond f64 (`1e400`), a lone surrogate.
    Unrepresentable,
}

/// How deeply objects and arrays nest in the JSON text `json` (`{}` is 1), with a counter.
fn depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &b in json {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'{' | b'[') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b'}' | b']') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The poison and hostile envelopes of the suite (src/event.rs's tests, tests/it/hostile.rs,
/// tests/it/dead_lettering.rs), each with its routing key and where it comes from.
fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let key = "payment.card.success";
    let envelope = |id: &str, account: &str, data: &str| {
        format!(
            r#"{{"id":"{id}","type":"{key}","account_id":"{account}","created_at":"2026-11-27T02:04:21Z","data":{data}}}"#
        )
    };
    let valid = envelope("evt_1", "68", r#"{"amount":10.00,"currency_iso":"EUR"}"#);
    let nested = |levels: usize| format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels));
    let mut bad_utf8 = envelope("evt_5", "h", r#"{"s":"AB"}"#).into_bytes();
    let at = bad_utf8.iter().position(|b| *b == b'A').unwrap();
    bad_utf8[at..at + 2].copy_from_slice(&[0xFF, 0xFE]);
    let skeleton = envelope("evt_big", "h", r#"{"pad":""}"#);
    let pad = "x".repeat(262_144 + 1 - skeleton.len());
    let text = |name: &'static str, body: String| (name, body.into_bytes());
    let mut cases = vec![
        text("event.rs valid", valid.clone()),
        text("event.rs not json", "not json".into()),
        text("event.rs array", "[1,2]".into()),
        text("event.rs no id", valid.replace(r#""id":"evt_1","#, "")),
        text(
            "event.rs numeric id",
            valid.replace(r#""id":"evt_1""#, r#""id":7"#),
        ),
        text("event.rs id with space", valid.replace("evt_1", "evt 1")),
        text(
            "event.rs bad time",
            valid.replace("2026-11-27T02:04:21Z", "yesterday"),
        ),
        text("event.rs data array", envelope("evt_1", "68", "[1]")),
        text(
            "event.rs unknown type",
            valid.replace(key, "payment.bitcoin"),
        ),
        text("event.rs 32 levels", envelope("evt_1", "68", &nested(32))),
        text("event.rs 33 levels", envelope("evt_1", "68", &nested(33))),
        text(
            "hostile 120000 levels",
            envelope("evt_deep", "h", &nested(120_000)),
        ),
        text(
            "hostile 20000 levels",
            envelope("evt_mid", "h", &nested(20_000)),
        ),
        text(
            "hostile CRLF id",
            envelope("evt_1\\r\\nX-Injected: 1", "h", "{}"),
        ),
        text("hostile CRLF account", envelope("evt_2", "h\\r\\nx", "{}")),
        text("hostile data null", envelope("evt_4", "h", "null")),
        text(
            "hostile 256 KiB + 1",
            envelope("evt_big", "h", &format!(r#"{{"pad":"{pad}"}}"#)),
        ),
        text(
            "hostile odd but valid",
            envelope(
                "evt_odd",
                "h",
                r#"{"big":1e400,"lone":"\ud800","amount":10.00,"k":1,"k":2}"#,
            ),
        ),
        text(
            "hostile duplicate keys",
            envelope("evt_dup", "h", r#"{"k":"a","k":"b"}"#),
        ),
        text(
            "dead_lettering no account",
            envelope("e1", "p", "{}").replace(r#""account_id":"p","#, ""),
        ),
        text("dead_lettering data string", envelope("e3", "p", r#""x""#)),
        text(
            "dead_lettering unknown type",
            envelope("e4", "p", "{}").replace(key, "payment.cash"),
        ),
        text(
            "dead_lettering 300 KB",
            envelope(
                "e6",
                "p",
                &format!(r#"{{"pad":"{}"}}"#, "x".repeat(300_000)),
            ),
        ),
    ];
    cases.push(("hostile invalid UTF-8", bad_utf8));
    cases.push(("hostile 0xFF bytes", vec![0xFF; 64]));
    cases
}

#[test]
fn the_schema_and_the_worker_agree_on_every_poison_and_hostile_envelope() {
    let schema = hookrelay::event::schema::envelope_schema(hookrelay::event::Limits {
        max_bytes: 262_144,
        max_depth: 32,
    });
    let shipped: Value = serde_json::from_str(hookrelay::event::schema::ENVELOPE_SCHEMA).unwrap();
    assert_eq!(
        schema, shipped,
        "the worker's default limits are the shipped ones"
    );
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the envelope schema compiles");
    let limits = hookrelay::event::Limits {
        max_bytes: 262_144,
        max_depth: 32,
    };
    let (mut passed, mut refused) = (0, 0);

    for (name, body) in corpus() {
        // The routing key is the envelope's own type: a mismatch (routing_key_mismatch) is about
        // the AMQP message, which the schema of its body cannot see.
        let key = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "payment.card.success".into());
        let worker = hookrelay::event::Event::parse(&body, &key, limits);
        match (schema_verdict(&validator, &schema, &body), worker) {
            (Verdict::Passes, Ok(_)) => passed += 1,
            (Verdict::Refused(reasons), Err(poison)) => {
                refused += 1;
                let reason = poison.reason.as_str();
                // `"data": null` is a missing field to the worker (null reads as absent) and a
                // wrong type to the schema: both refuse it.
                let null_data = reason == "missing_field" && reasons == ["invalid_field"];
                assert!(
                    reasons.contains(&reason) || null_data,
                    "{name}: the worker says {reason}, the schema {reasons:?}"
                );
            }
            // The worker passes `data` through byte for byte without building a value; a
            // validator has to parse it first. Publishers should not send these.
            (Verdict::Unrepresentable, Ok(_)) if name == "hostile odd but valid" => passed += 1,
            (schema, worker) => panic!("{name}: the schema says {schema:?}, the worker {worker:?}"),
        }
    }
    assert!(
        passed >= 4 && refused >= 19,
        "passed {passed}, refused {refused}"
    );
}
