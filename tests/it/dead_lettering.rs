//! Why the worker dead-letters (DESIGN §3, §4): poison envelopes land in the events DLQ and failed
//! deliveries in the deliveries DLQ, each with the reason and the facts on-call needs; nothing is
//! dropped silently, and the worker carries on.

use crate::helpers::*;
use hookrelay::event::EventType;
use hookrelay::subscription::Format;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(15);

fn envelope(id: &str, t: &str) -> String {
    format!(
        r#"{{"id":"{id}","type":"{t}","account_id":"p","created_at":"2026-11-27T02:04:21Z","data":{{}}}}"#
    )
}

#[tokio::test]
async fn each_kind_of_poison_envelope_lands_in_the_events_dlq_once_with_its_reason() {
    let app = spawn_app().await;
    app.add_webhook("p", "/p", &["*"], Format::Standard).await;
    let ok = "payment.card.success";
    let too_large = format!("{{\"pad\":\"{}\"}}", "x".repeat(300_000));
    let cases: Vec<(&str, String, &str)> = vec![
        (ok, "not json at all".into(), "invalid_json"),
        (
            ok,
            envelope("e1", ok).replace(r#""account_id":"p","#, ""),
            "missing_field",
        ),
        (ok, envelope("e 2", ok), "invalid_field"),
        (
            ok,
            envelope("e3", ok).replace(r#""data":{}"#, r#""data":"x""#),
            "invalid_field",
        ),
        (
            "payment.cash",
            envelope("e4", "payment.cash"),
            "unknown_type",
        ),
        (
            "customer.updated",
            envelope("e5", ok),
            "routing_key_mismatch",
        ),
        (ok, too_large, "too_large"),
    ];
    for (key, body, _) in &cases {
        app.publish_raw(key, body.as_bytes()).await;
    }
    // The worker carries on: a good event after the poison is delivered.
    app.publish(EventType::PaymentCardSuccess, "p", "{}").await;
    app.receiver.wait_for("/p", 1, WITHIN).await;

    let dead = app
        .wait_for_queue(&app.topology().dlq_events(), cases.len(), WITHIN)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        app.drain_queue(&app.topology().dlq_events())
            .await
            .is_empty(),
        "each once"
    );
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|d| header_text(d, "hookrelay-reason").unwrap())
        .collect();
    reasons.sort();
    let mut expected: Vec<String> = cases.iter().map(|c| c.2.to_owned()).collect();
    expected.sort();
    assert_eq!(reasons, expected);
    for d in &dead {
        assert!(d.properties.message_id().is_some());
        assert!(header_text(d, "hookrelay-error").is_some());
    }
    for (_, body, _) in &cases {
        // Raw, as published.
        assert!(dead.iter().any(|d| d.data == body.as_bytes()));
    }
    assert_eq!(app.receiver.hits().len(), 1);
    app.cleanup().await;
}

#[tokio::test]
async fn a_failing_receivers_delivery_lands_in_the_deliveries_dlq_with_its_fields() {
    let app = spawn_app_with("200ms,200ms", &[]).await;
    app.receiver.behave("/down", Behaviour::Status(500));
    let webhook = app
        .add_webhook(
            "acct-9",
            "/down",
            &["payment.card.failed"],
            Format::Standard,
        )
        .await;

    let id = app
        .publish(
            EventType::PaymentCardFailed,
            "acct-9",
            r#"{"amount":"1.00"}"#,
        )
        .await;

    let dead = app.first_dead_delivery(WITHIN).await;
    assert_eq!(
        app.receiver.hits_on("/down").len(),
        3,
        "two steps mean three attempts"
    );
    assert_eq!(header_text(&dead, "hookrelay-reason").unwrap(), "exhausted");
    assert_eq!(header_text(&dead, "hookrelay-event-id").unwrap(), id);
    assert_eq!(
        header_text(&dead, "hookrelay-event-type").unwrap(),
        "payment.card.failed"
    );
    assert_eq!(
        header_text(&dead, "hookrelay-account-id").unwrap(),
        "acct-9"
    );
    assert_eq!(
        header_text(&dead, "hookrelay-webhook-id").unwrap(),
        webhook.id.as_str()
    );
    assert_eq!(
        header_text(&dead, "hookrelay-url").unwrap(),
        app.receiver.url("/down")
    );
    assert_eq!(header_int(&dead, "hookrelay-attempts"), Some(3));
    assert_eq!(header_int(&dead, "hookrelay-last-status"), Some(500));
    assert!(header_text(&dead, "hookrelay-first-attempt-at").is_some());
    assert!(header_text(&dead, "hookrelay-last-attempt-at").is_some());
    assert!(dead.properties.message_id().is_some());
    let body: serde_json::Value = serde_json::from_slice(&dead.data).unwrap();
    assert_eq!(body["reason"], "exhausted");
    assert_eq!(body["attempts"], 3);
    assert_eq!(body["last_status"], 500);
    assert_eq!(body["event"]["id"], id.as_str());
    assert_eq!(body["event"]["data"]["amount"], "1.00");
    assert!(body.get("secret").is_none());
    app.cleanup().await;
}

#[tokio::test]
async fn a_410_disables_the_webhook_and_dead_letters_as_gone() {
    let app = spawn_app().await;
    app.receiver.behave("/gone", Behaviour::Status(410));
    let webhook = app
        .add_webhook("g", "/gone", &["*"], Format::Standard)
        .await;

    app.publish(EventType::CustomerRegistered, "g", "{}").await;

    let dead = app.first_dead_delivery(WITHIN).await;
    assert_eq!(header_text(&dead, "hookrelay-reason").unwrap(), "gone");
    let stored = app.store.find(&webhook.id).await.unwrap();
    assert!(!stored.enabled);
    assert_eq!(stored.disabled_reason.as_deref(), Some("gone"));
    assert_eq!(app.receiver.hits_on("/gone").len(), 1);
    app.cleanup().await;
}

#[tokio::test]
async fn a_delivery_whose_webhook_was_deleted_meanwhile_is_dead_lettered_as_deleted() {
    let app = spawn_app_with("1s", &[]).await;
    app.receiver.behave("/del", Behaviour::Status(500));
    let webhook = app.add_webhook("d", "/del", &["*"], Format::Standard).await;

    app.publish(EventType::CustomerRegistered, "d", "{}").await;
    app.receiver.wait_for("/del", 1, WITHIN).await;
    app.store
        .delete(&"d".parse().unwrap(), &webhook.id)
        .await
        .unwrap();

    let dead = app.first_dead_delivery(WITHIN).await;
    assert_eq!(
        header_text(&dead, "hookrelay-reason").unwrap(),
        "webhook_deleted"
    );
    assert_eq!(header_int(&dead, "hookrelay-attempts"), Some(1));
    assert_eq!(app.receiver.hits_on("/del").len(), 1);
    app.cleanup().await;
}
