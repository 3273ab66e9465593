//! `hookrelay dlq list|show` against the real broker (DESIGN §4): listing shows every field of a
//! dead delivery and of a poison event, never loses or reorders a letter, and filters by account,
//! type, webhook, reason and age.

use crate::helpers::dead_letters::*;
use crate::helpers::*;
use chrono::Utc;
use hookrelay::dlq::{DlqError, DlqQueue, Filter};
use hookrelay::event::EventType;
use hookrelay::messages::DeadReason;
use hookrelay::subscription::{Format, WebhookId};
use std::time::Duration;

#[tokio::test]
async fn listing_shows_every_field_of_an_exhausted_delivery_and_of_a_poison_event() {
    let app = spawn_app_with("200ms", &[]).await;
    app.receiver.behave("/down", Behaviour::Status(500));
    let webhook = app
        .add_webhook(
            "acct-1",
            "/down",
            &["payment.card.failed"],
            Format::Standard,
        )
        .await;
    let event_id = app
        .publish(
            EventType::PaymentCardFailed,
            "acct-1",
            r#"{"amount":"1.00"}"#,
        )
        .await;
    app.publish_raw("payment.card.success", b"not json").await;
    wait_for_depth(&app, &app.topology().dlq_deliveries(), 1).await;
    wait_for_depth(&app, &app.topology().dlq_events(), 1).await;
    let dlq = dlq(&app).await;

    let deliveries = dlq
        .list(DlqQueue::Deliveries, &Filter::default(), None)
        .await
        .unwrap();
    let events = dlq
        .list(DlqQueue::Events, &Filter::default(), None)
        .await
        .unwrap();

    assert_eq!(deliveries.len(), 1);
    let d = serde_json::to_value(&deliveries[0]).unwrap();
    for key in [
        "id",
        "queue",
        "event_id",
        "event_type",
        "account_id",
        "webhook_id",
        "url",
        "attempts",
        "reason",
        "last_status",
        "last_error",
        "first_attempt_at",
        "last_attempt_at",
        "raw_body_base64",
    ] {
        assert!(d.get(key).is_some(), "{key} missing from {d}");
    }
    assert!(d["id"].as_str().unwrap().starts_with("dl_"));
    assert_eq!(d["queue"], "deliveries");
    assert_eq!(d["event_id"], event_id.as_str());
    assert_eq!(d["event_type"], "payment.card.failed");
    assert_eq!(d["account_id"], "acct-1");
    assert_eq!(d["webhook_id"], webhook.id.as_str());
    assert_eq!(d["url"], app.receiver.url("/down").as_str());
    assert_eq!(d["attempts"], 2);
    assert_eq!(d["reason"], "exhausted");
    assert_eq!(d["last_status"], 500);
    assert!(d["first_attempt_at"].is_string());
    assert!(d["last_attempt_at"].is_string());
    assert!(d["raw_body_base64"].is_null());

    assert_eq!(events.len(), 1);
    let e = serde_json::to_value(&events[0]).unwrap();
    assert!(e["id"].as_str().unwrap().starts_with("dl_"));
    assert_eq!(e["queue"], "events");
    assert_eq!(e["reason"], "invalid_json");
    assert_eq!(e["raw_body_base64"], "bm90IGpzb24=");
    assert_eq!(e["routing_key"], "payment.card.success");
    assert!(e["error"].is_string());
    for unknown in [
        "event_id",
        "webhook_id",
        "attempts",
        "first_attempt_at",
        "last_attempt_at",
    ] {
        assert!(e[unknown].is_null(), "{unknown} of a poison event: {e}");
    }

    let shown = dlq.show(&deliveries[0].id, None).await.unwrap();
    let event: serde_json::Value = serde_json::from_str(shown.event.unwrap().get()).unwrap();
    assert_eq!(event["id"], event_id.as_str());
    assert_eq!(event["data"]["amount"], "1.00");
    assert_eq!(
        dlq.show(&events[0].id, None).await.unwrap().reason,
        "invalid_json"
    );
    assert!(matches!(
        dlq.show("dl_nosuchletter", None).await,
        Err(DlqError::NotFound(_))
    ));
    dlq.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn listing_several_times_neither_loses_nor_reorders_dead_letters() {
    let app = spawn_app_with("200ms", &[]).await;
    let writer = Writer::new().await;
    let webhook = WebhookId::generate();
    let mut written = Vec::new();
    // More than 32: RabbitMQ 3.x returns a multiple nack's messages in the hash order of an
    // Erlang map, which is sorted only up to 32 keys, so fewer would not catch that reordering.
    for i in 0..50 {
        let account = if i % 3 == 0 { "a-three" } else { "a-other" };
        let e = event(account, EventType::CustomerRegistered);
        written.push(
            writer
                .put(&app, &dead(&e, &webhook, DeadReason::Exhausted))
                .await,
        );
    }
    let dlq = dlq(&app).await;

    for _ in 0..3 {
        let listed = dlq
            .list(DlqQueue::Deliveries, &Filter::default(), None)
            .await
            .unwrap();
        assert_eq!(ids(&listed), written);
    }
    // Partial reads (a limit, a filter) hand back what they read in place too.
    let first = dlq
        .list(DlqQueue::Deliveries, &Filter::default(), Some(4))
        .await
        .unwrap();
    assert_eq!(ids(&first), written[..4]);
    let some = Filter {
        account: Some("a-three".into()),
        ..Default::default()
    };
    let threes = dlq
        .list(DlqQueue::Deliveries, &some, Some(5))
        .await
        .unwrap();
    assert_eq!(
        ids(&threes),
        written
            .iter()
            .step_by(3)
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
    );

    let drained: Vec<String> = app
        .drain_queue(&app.topology().dlq_deliveries())
        .await
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(drained, written);
    dlq.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn filters_select_by_account_type_webhook_reason_and_age() {
    let app = spawn_app_with("200ms", &[]).await;
    let writer = Writer::new().await;
    let (one, two) = (WebhookId::generate(), WebhookId::generate());
    let mut old = dead(
        &event("a1", EventType::PaymentCardSuccess),
        &one,
        DeadReason::Exhausted,
    );
    old.last_attempt_at = Some((Utc::now() - chrono::Duration::hours(2)).to_rfc3339());
    let mut recent = dead(
        &event("a2", EventType::CustomerRegistered),
        &two,
        DeadReason::Gone,
    );
    recent.last_attempt_at = Some(Utc::now().to_rfc3339());
    let never_tried = dead(
        &event("a1", EventType::CustomerRegistered),
        &two,
        DeadReason::WebhookDeleted,
    );
    let a = writer.put(&app, &old).await;
    let b = writer.put(&app, &recent).await;
    let c = writer.put(&app, &never_tried).await;
    let dlq = dlq(&app).await;
    let list = |filter: Filter, limit: Option<usize>| {
        let dlq = &dlq;
        async move {
            ids(&dlq
                .list(DlqQueue::Deliveries, &filter, limit)
                .await
                .unwrap())
        }
    };
    let f = Filter::default;

    let by_account = list(
        Filter {
            account: Some("a1".into()),
            ..f()
        },
        None,
    )
    .await;
    let by_type = list(
        Filter {
            event_type: Some("customer.registered".into()),
            ..f()
        },
        None,
    )
    .await;
    let by_webhook = list(
        Filter {
            webhook: Some(two.to_string()),
            ..f()
        },
        None,
    )
    .await;
    let by_reason = list(
        Filter {
            reason: Some("gone".into()),
            ..f()
        },
        None,
    )
    .await;
    let older = list(
        Filter {
            older_than: Some(Duration::from_secs(3600)),
            ..f()
        },
        None,
    )
    .await;
    let both = list(
        Filter {
            account: Some("a1".into()),
            event_type: Some("customer.registered".into()),
            ..f()
        },
        None,
    )
    .await;
    let limited = list(f(), Some(2)).await;

    assert_eq!(by_account, [a.clone(), c.clone()]);
    assert_eq!(by_type, [b.clone(), c.clone()]);
    assert_eq!(by_webhook, [b.clone(), c.clone()]);
    assert_eq!(by_reason, [b.as_str()]);
    assert_eq!(older, [a.as_str()]);
    assert_eq!(both, [c.as_str()]);
    assert_eq!(limited, [a.clone(), b.clone()]);
    assert_eq!(list(f(), None).await, [a, b, c]);
    dlq.close().await;
    app.cleanup().await;
}
