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
