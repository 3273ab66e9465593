//! An event published to RabbitMQ reaches every matching webhook, signed, in its format.

use crate::helpers::*;
use hookrelay::delivery::signing::{verify_inplayer, verify_standard};
use hookrelay::event::EventType;
use hookrelay::subscription::Format;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(10);

fn header<'a>(hit: &'a Hit, name: &str) -> &'a str {
    hit.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn a_standard_delivery_is_signed_and_carries_data_byte_for_byte() {
    let app = spawn_app().await;
    let webhook = app
        .add_webhook("68", "/std", &["payment.card.success"], Format::Standard)
        .await;

    let id = app
        .publish(
            EventType::PaymentCardSuccess,
            "68",
            r#"{"amount": 10.00, "currency_iso":"EUR"}"#,
        )
        .await;

    let hit = app.receiver.wait_for("/std", 1, WITHIN).await.remove(0);
    assert_eq!(header(&hit, "webhook-id"), id);
    assert_eq!(header(&hit, "content-type"), "application/json");
    assert!(header(&hit, "user-agent").starts_with("hookrelay/"));
    let ts: i64 = header(&hit, "webhook-timestamp").parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
    assert!(verify_standard(
        std::slice::from_ref(&webhook.secret),
        header(&hit, "webhook-signature"),
        &id,
        ts,
        &hit.body
    ));
    let body = std::str::from_utf8(&hit.body).unwrap();
    assert!(
        body.ends_with(r#""account_id":"68","data":{"amount": 10.00, "currency_iso":"EUR"}}"#),
        "{body}"
    );
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["type"], "payment.card.success");
    assert_eq!(json["id"], id.as_str());
    assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
    app.cleanup().await;
}

#[tokio::test]
async fn an_inplayer_delivery_is_a_signed_form() {
    let app = spawn_app().await;
    let webhook = app
        .add_webhook("68", "/legacy", &["*"], Format::Inplayer)
        .await;

    let id = app
        .publish(
            EventType::SubscribeSuccess,
            "68",
            r#"{"amount":"10.00","access":{"ids":[1,2]}}"#,
        )
        .await;

    let hit = app.receiver.wait_for("/legacy", 1, WITHIN).await.remove(0);
    assert_eq!(
        header(&hit, "content-type"),
        "application/x-www-form-urlencoded"
    );
    assert_eq!(header(&hit, "webhook-id"), id);
    assert!(hit.headers.get("webhook-signature").is_none());
    assert!(verify_inplayer(
        std::slice::from_ref(&webhook.secret),
        header(&hit, "x-inplayer-signature"),
        &hit.body
    ));
    let body = std::str::from_utf8(&hit.body).unwrap();
    assert!(body.starts_with(&format!("id={id}&created=")), "{body}");
    assert!(body.ends_with(
        "&type=subscribe.success&resource%5Bamount%5D=10.00&resource%5Baccess%5D%5Bids%5D%5B0%5D=1&resource%5Baccess%5D%5Bids%5D%5B1%5D=2"
    ), "{body}");
    app.cleanup().await;
}

#[tokio::test]
async fn only_webhooks_whose_events_match_receive_and_star_receives_all() {
    let app = spawn_app().await;
    app.add_webhook("7", "/cards", &["payment.card.success"], Format::Standard)
        .await;
    app.add_webhook(
        "7",
        "/customers",
        &["customer.registered", "customer.updated"],
        Format::Standard,
    )
    .await;
    app.add_webhook("7", "/all", &["*"], Format::Standard).await;

    app.publish(EventType::PaymentCardSuccess, "7", "{}").await;
    app.publish(EventType::CustomerUpdated, "7", "{}").await;
    app.publish(EventType::AssetAccessGranted, "7", "{}").await;

    app.receiver.wait_for("/all", 3, WITHIN).await;
    app.receiver.wait_for("/customers", 1, WITHIN).await;
    app.receiver.wait_for("/cards", 1, WITHIN).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.receiver.hits_on("/cards").len(), 1);
    assert_eq!(app.receiver.hits_on("/customers").len(), 1);
    let customer = &app.receiver.hits_on("/customers")[0];
    assert!(std::str::from_utf8(&customer.body)
        .unwrap()
        .contains("customer.updated"));
    app.cleanup().await;
}

#[tokio::test]
async fn an_account_without_webhooks_gets_nothing_and_its_event_is_acked() {
    let app = spawn_app().await;
    app.add_webhook("other", "/other", &["*"], Format::Standard)
        .await;

    app.publish(EventType::CustomerRegistered, "lonely", "{}")
        .await;
    // A marker event published after it, to a webhook: once it arrived, the first was handled.
    app.publish(EventType::CustomerRegistered, "other", "{}")
        .await;

    app.receiver.wait_for("/other", 1, WITHIN).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.receiver.hits().len(), 1);
    assert_eq!(app.queue_depth(&app.topology().events_queue()).await, 0);
    assert_eq!(app.queue_depth(&app.topology().dlq_deliveries()).await, 0);
    assert_eq!(app.queue_depth(&app.topology().dlq_events()).await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn one_event_fans_out_to_all_ten_webhooks_of_an_account() {
    let app = spawn_app().await;
    let mut secrets = Vec::new();
    for i in 0..10 {
        let w = app
            .add_webhook(
                "fan",
                &format!("/fan/{i}"),
                &["payment.refund.success"],
                Format::Standard,
            )
            .await;
        secrets.push(w.secret);
    }

    let id = app
        .publish(EventType::PaymentRefundSuccess, "fan", r#"{"n":1}"#)
        .await;

    for (i, secret) in secrets.iter().enumerate() {
        let hit = app
            .receiver
            .wait_for(&format!("/fan/{i}"), 1, WITHIN)
            .await
            .remove(0);
        let ts: i64 = header(&hit, "webhook-timestamp").parse().unwrap();
        assert!(verify_standard(
            std::slice::from_ref(secret),
            header(&hit, "webhook-signature"),
            &id,
            ts,
            &hit.body
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.receiver.hits().len(), 10, "each webhook exactly once");
    app.cleanup().await;
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_stop_other_events_from_being_delivered() {
    let app = spawn_app_with("200ms", &[("HOOKRELAY__DELIVERY__TIMEOUT", "20s")]).await;
    app.receiver.behave("/hang", Behaviour::Hang);
    app.add_webhook("slow", "/hang", &["*"], Format::Standard)
        .await;
    app.add_webhook("fast", "/fast", &["*"], Format::Standard)
        .await;

    app.publish(EventType::PaymentCardSuccess, "slow", "{}")
        .await;
    app.receiver.wait_for("/hang", 1, WITHIN).await;
    for _ in 0..20 {
        app.publish(EventType::PaymentCardSuccess, "fast", "{}")
            .await;
    }

    // All 20 arrive while the hanging request is still open (its timeout is 20 s).
    app.receiver.wait_for("/fast", 20, WITHIN).await;
    assert_eq!(app.receiver.hits_on("/hang").len(), 1);
    app.cleanup().await;
}

#[tokio::test]
async fn every_attempt_is_recorded_in_the_webhooks_attempt_log() {
    let app = spawn_app_with("200ms", &[]).await;
    app.receiver.behave(
        "/log",
        Behaviour::FailTimes {
            times: 1,
            status: 502,
        },
    );
    let webhook = app
        .add_webhook("log", "/log", &["*"], Format::Standard)
        .await;

    let id = app.publish(EventType::CustomerUpdated, "log", "{}").await;
    app.receiver.wait_for("/log", 2, WITHIN).await;

    let account = "log".parse().unwrap();
    let mut records = Vec::new();
    for _ in 0..100 {
        records = hookrelay::subscription::attempts::recent(&app.store, &account, &webhook.id, 10)
            .await
            .unwrap();
        if records.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(records.len(), 2, "{records:?}");
    // Newest first.
    assert_eq!((records[0].attempt, records[0].status), (2, Some(200)));
    assert_eq!((records[1].attempt, records[1].status), (1, Some(502)));
    assert!(records
        .iter()
        .all(|r| r.event_id == id && r.event_type == "customer.updated"));
    app.cleanup().await;
}
