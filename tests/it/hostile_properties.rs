//! No AMQP property a publisher can send crashes or disconnects a worker, the dlq tools or the API
//! (issue 20). Each shape is published byte for byte to the real broker with the raw publisher of
//! `helpers::raw_amqp` (no client library sends them), followed by valid events; the hostile
//! message must land alone in `<prefix>.dlq.events` as `invalid_properties`, once, without its
//! headers, the valid ones be delivered once each, and the worker stay connected and ready.
//!
//! Before the parser patch (`vendor/amq-protocol-types`), the nested shapes aborted the whole test
//! process (`thread 'lapin-io-loop' has overflowed its stack`) and the non-UTF-8 ones made the
//! worker reconnect on every delivery, so the valid events never arrived.

use crate::helpers::dead_letters::wait_for_depth;
use crate::helpers::raw_amqp::{self, flag, RawProperties};
use crate::helpers::*;
use crate::hostile::assert_worker_alive;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hookrelay::event::EventType;
use hookrelay::subscription::Format;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);
const BROKER: &str = "127.0.0.1:5672";
const OK: &str = "payment.card.success";
/// Valid events published behind each hostile message.
const BEHIND: usize = 5;

/// A valid envelope for account `h`: only its properties make the message hostile.
fn envelope(id: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","type":"{OK}","account_id":"h","created_at":"2026-12-07T20:00:00Z","data":{{"amount":"1.00"}}}}"#
    )
    .into_bytes()
}

/// Persistent, plus `parts`.
fn props(parts: &[(u16, Vec<u8>)]) -> RawProperties {
    let mut all = vec![(flag::DELIVERY_MODE, vec![2])];
    all.extend_from_slice(parts);
    RawProperties::new(&all)
}

/// A counter or gauge of the worker's `/metrics` (0 when absent).
async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", app.ops_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Publishes each hostile message (routing key, properties) with `BEHIND` valid events behind
/// it, then checks the whole outcome: each hostile one dead-lettered once, alone, as
/// `invalid_properties` with its raw body and none of its headers; `dlq list` listing them;
/// every valid event delivered once; the worker never reconnected and is ready.
async fn each_is_parked_alone_and_those_behind_are_delivered(hostile: &[(&[u8], RawProperties)]) {
    let app = spawn_app().await;
    app.add_webhook("h", "/h", &["*"], Format::Standard).await;
    let exchange = app.topology().events_exchange();
    let mut bodies = Vec::new();
    let mut valid = Vec::new();
    for (i, (routing_key, properties)) in hostile.iter().enumerate() {
        let body = envelope(&format!("evt_hostile_{i}"));
        raw_amqp::publish(BROKER, &exchange, routing_key, properties, &body)
            .await
            .expect("the broker takes the message as it is");
        bodies.push(body);
        for _ in 0..BEHIND {
            valid.push(app.publish(EventType::PaymentCardSuccess, "h", "{}").await);
        }
    }

    app.receiver.wait_for("/h", valid.len(), WITHIN).await;
    let dlq_events = app.topology().dlq_events();
    wait_for_depth(&app, &dlq_events, hostile.len() as u32).await;
    let out = hookrelay(
        &app.prefix,
        &["dlq", "list", "--queue", "events", "--json"],
        &[],
    );
    assert!(
        out.status.success(),
        "dlq list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut listed_bodies: Vec<String> = listed
        .iter()
        .map(|l| {
            assert_eq!(l["reason"], "invalid_properties", "{l}");
            l["raw_body_base64"].as_str().unwrap().to_owned()
        })
        .collect();
    let mut expected: Vec<String> = bodies.iter().map(|b| B64.encode(b)).collect();
    listed_bodies.sort();
    expected.sort();
    assert_eq!(listed_bodies, expected, "each hostile message listed once");

    // Anything dead-lettered twice or delivered late would have arrived by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dead = app.drain_queue(&dlq_events).await;
    assert_eq!(dead.len(), hostile.len(), "each dead-lettered exactly once");
    for letter in &dead {
        assert!(bodies.contains(&letter.data), "the raw body is kept");
        let headers = letter.properties.headers().clone().unwrap_or_default();
        let names: Vec<&str> = headers.inner().keys().map(|k| k.as_str()).collect();
        // x-delivery-count: the quorum queue counts the returns of `dlq list`.
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("hookrelay-") || *n == "x-delivery-count"),
            "no hostile header copied: {names:?}"
        );
        assert_eq!(
            header_text(letter, "hookrelay-reason").as_deref(),
            Some("invalid_properties")
        );
    }
    let mut delivered: Vec<String> = app
        .receiver
        .hits_on("/h")
        .iter()
        .map(|h| h.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    delivered.sort();
    valid.sort();
    assert_eq!(delivered, valid, "each valid event once, no hostile one");
    assert_eq!(
        metric(&app, "hookrelay_broker_reconnects_total").await,
        0.0,
        "the worker kept its connection"
    );
    assert_worker_alive(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn headers_nested_1000_tables_deep_are_parked_alone_as_invalid_properties() {
    let deep = props(&[(flag::HEADERS, raw_amqp::tables_nested(1_000))]);
    each_is_parked_alone_and_those_behind_are_delivered(&[(OK.as_bytes(), deep)]).await;
}

#[tokio::test]
async fn headers_nested_2000_and_5000_arrays_deep_are_parked_alone_as_invalid_properties() {
    // Deeper still (25,000 arrays, 125 KB, about all a 128 KiB frame holds) is parked the same
    // way, but RabbitMQ itself takes seconds per publish and per delivery of such a message
    // (its codec is quadratic in the depth): too slow for a test among many.
    let shapes: Vec<(&[u8], RawProperties)> = [2_000, 5_000]
        .into_iter()
        .map(|levels| {
            let headers = raw_amqp::arrays_nested(levels);
            (OK.as_bytes(), props(&[(flag::HEADERS, headers)]))
        })
        .collect();
    each_is_parked_alone_and_those_behind_are_delivered(&shapes).await;
}

#[tokio::test]
async fn a_content_type_of_bytes_ff_fe_is_parked_alone_as_invalid_properties() {
    let bad = props(&[(flag::CONTENT_TYPE, raw_amqp::short_str(&[0xFF, 0xFE]))]);
    each_is_parked_alone_and_those_behind_are_delivered(&[(OK.as_bytes(), bad)]).await;
}

#[tokio::test]
async fn a_header_name_that_is_not_utf8_is_parked_alone_as_invalid_properties() {
    let name = [0xFF, 0xFE, b'k'];
    let headers = raw_amqp::table(&[raw_amqp::entry(&name, b'S', &raw_amqp::long_str(b"v"))]);
    let bad = props(&[(flag::HEADERS, headers)]);
    each_is_parked_alone_and_those_behind_are_delivered(&[(OK.as_bytes(), bad)]).await;
}

#[tokio::test]
async fn a_routing_key_or_message_id_that_is_not_utf8_is_parked_alone_as_invalid_properties() {
    let key: &[u8] = b"payment.card.\xFF\xFE";
    let id = props(&[(flag::MESSAGE_ID, raw_amqp::short_str(&[0xC3; 255]))]);
    each_is_parked_alone_and_those_behind_are_delivered(&[(key, props(&[])), (OK.as_bytes(), id)])
        .await;
}

/// Runs `hookrelay` with `args` and returns its JSON output, asserting exit 0.
fn cli_json(app: &TestApp, args: &[&str]) -> serde_json::Value {
    let out = hookrelay(&app.prefix, args, &[]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

#[tokio::test]
async fn letters_with_hostile_properties_in_the_dead_letter_queues_are_listed_shown_and_counted() {
    // As the broker dead-lettered them past the delivery limit before the parser was patched:
    // the hostile properties kept as they came.
    let app = spawn_app().await;
    let (events, deliveries) = (app.topology().dlq_events(), app.topology().dlq_deliveries());
    let shapes = [
        props(&[(flag::HEADERS, raw_amqp::tables_nested(1_000))]),
        props(&[(flag::HEADERS, raw_amqp::arrays_nested(5_000))]),
        props(&[(flag::CONTENT_TYPE, raw_amqp::short_str(&[0xFF, 0xFE]))]),
        props(&[(
            flag::HEADERS,
            raw_amqp::table(&[raw_amqp::entry(&[0xFF, 0xFE], b't', &[1])]),
        )]),
    ];
    for (i, shape) in shapes.iter().enumerate() {
        let body = envelope(&format!("evt_dead_{i}"));
        raw_amqp::publish(BROKER, "", events.as_bytes(), shape, &body)
            .await
            .unwrap();
    }
    let dead = small_dead_delivery(
        "h",
        &hookrelay::subscription::WebhookId::generate(),
        hookrelay::messages::DeadReason::Exhausted,
    );
    let body = serde_json::to_vec(&dead).unwrap();
    raw_amqp::publish(BROKER, "", deliveries.as_bytes(), &shapes[0], &body)
        .await
        .unwrap();
    wait_for_depth(&app, &events, 4).await;
    wait_for_depth(&app, &deliveries, 1).await;

    let listed = cli_json(&app, &["dlq", "list", "--queue", "events", "--json"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 4);
    for letter in listed {
        assert_eq!(letter["reason"], "invalid_properties", "{letter}");
        assert_eq!(
            letter["event_id"].as_str().map(|s| &s[..9]),
            Some("evt_dead_")
        );
    }
    let id = listed[1]["id"].as_str().unwrap();
    let shown = cli_json(&app, &["dlq", "show", id, "--queue", "events", "--json"]);
    assert_eq!(shown["reason"], "invalid_properties", "{shown}");
    let listed = cli_json(&app, &["dlq", "list", "--queue", "deliveries", "--json"]);
    assert_eq!(listed[0]["reason"], "invalid_properties", "{listed}");
    assert_eq!(listed[0]["account_id"], "h");

    let api =
        crate::helpers::api::start_api(crate::helpers::api::api_settings(&app.prefix, &[])).await;
    let (status, body) = api
        .get("/v1/accounts/h/status", crate::helpers::api::ADMIN)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["dead_letters_of_deleted_webhooks"]["by_reason"]["invalid_properties"], 1,
        "{body}"
    );
    api.stop().await;
    assert_eq!(
        app.queue_depth(&events).await,
        4,
        "listing kept every letter"
    );
    app.cleanup().await;
}
