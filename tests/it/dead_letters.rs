//! Poison envelopes and failed deliveries land in their dead-letter queues with the reason and
//! the facts on-call needs; nothing is dropped silently, and the worker carries on.

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
async fn failing_twice_then_succeeding_takes_exactly_three_attempts_with_one_webhook_id() {
    let app = spawn_app_with("200ms,200ms,200ms", &[]).await;
    app.receiver.behave(
        "/flaky",
        Behaviour::FailTimes {
            times: 2,
            status: 503,
        },
    );
    app.add_webhook("f", "/flaky", &["*"], Format::Standard)
        .await;
    app.add_webhook("f", "/fine", &["*"], Format::Standard)
        .await;

    let id = app.publish(EventType::SubscribeExpired, "f", "{}").await;

    let hits = app.receiver.wait_for("/flaky", 3, WITHIN).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app.receiver.hits_on("/flaky").len(), 3);
    assert!(hits.iter().all(|h| h.headers["webhook-id"] == id.as_str()));
    // The webhook that succeeded at once is not posted again.
    assert_eq!(app.receiver.hits_on("/fine").len(), 1);
    assert_eq!(app.queue_depth(&app.topology().dlq_deliveries()).await, 0);
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
async fn a_private_target_is_refused_without_a_request() {
    let app = spawn_app_with(
        "200ms",
        &[("HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS", "false")],
    )
    .await;
    app.add_webhook("s", "/internal", &["*"], Format::Standard)
        .await;

    app.publish(EventType::CustomerRegistered, "s", "{}").await;

    let dead = app.first_dead_delivery(WITHIN).await;
    assert_eq!(
        header_text(&dead, "hookrelay-reason").unwrap(),
        "target_refused"
    );
    assert!(app.receiver.hits().is_empty());
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

#[tokio::test]
async fn retries_are_spaced_by_the_schedule_within_its_jitter() {
    let app = spawn_app_with("1s,2s", &[]).await;
    app.receiver.behave("/spaced", Behaviour::Status(500));
    app.add_webhook("sp", "/spaced", &["*"], Format::Standard)
        .await;

    app.publish(EventType::CustomerRegistered, "sp", "{}").await;

    let hits = app.receiver.wait_for("/spaced", 3, WITHIN).await;
    for (i, step) in [1.0f64, 2.0].iter().enumerate() {
        let gap = (hits[i + 1].at - hits[i].at).as_secs_f64();
        eprintln!("step {step}s: measured {gap:.3}s");
        // ±20 % jitter, plus the time to consume, look up and send again.
        assert!(
            gap >= 0.8 * step && gap <= 1.2 * step + 0.5,
            "step {step}s took {gap:.3}s"
        );
    }
    app.wait_for_queue(&app.topology().dlq_deliveries(), 1, WITHIN)
        .await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_webhook_failing_without_success_for_disable_after_is_disabled_with_the_reason() {
    let app = spawn_app_with(
        "500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms",
        &[("HOOKRELAY__DELIVERY__DISABLE_AFTER", "2s")],
    )
    .await;
    app.receiver.behave("/failing", Behaviour::Status(500));
    let webhook = app
        .add_webhook("fd", "/failing", &["*"], Format::Standard)
        .await;

    app.publish(EventType::CustomerUpdated, "fd", "{}").await;

    let deadline = tokio::time::Instant::now() + WITHIN;
    let stored = loop {
        let w = app.store.find(&webhook.id).await.unwrap();
        if !w.enabled {
            break w;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not disabled after disable_after"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = stored.disabled_reason.unwrap();
    assert!(
        reason.starts_with("failing: no successful delivery since"),
        "{reason}"
    );
    // The delivery still waiting for its next attempt is dead-lettered as disabled.
    let dead = app.first_dead_delivery(WITHIN).await;
    assert_eq!(
        header_text(&dead, "hookrelay-reason").unwrap(),
        "webhook_disabled"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_retry_the_broker_cannot_route_leaves_the_event_unacked_until_its_delivery_limit() {
    let app = spawn_app_with("1s", &[("HOOKRELAY__AMQP__DELIVERY_LIMIT", "3")]).await;
    app.receiver.behave("/unroutable", Behaviour::Status(500));
    app.add_webhook("ur", "/unroutable", &["*"], Format::Standard)
        .await;
    // Without its delay queue, the follow-up publish is returned by the broker (mandatory).
    let channel = app.amqp_channel().await;
    channel
        .queue_delete(
            app.topology().retry_queue(Duration::from_secs(1)).into(),
            Default::default(),
        )
        .await
        .unwrap();

    app.publish(EventType::CustomerUpdated, "ur", "{}").await;

    // Never acked, the event comes back until the queue's delivery limit dead-letters it:
    // nothing is lost, and each return made a new attempt.
    let dead = app
        .wait_for_queue(&app.topology().dlq_events(), 1, WITHIN)
        .await
        .remove(0);
    assert!(
        header_text(&dead, "x-first-death-reason").is_some_and(|r| r.contains("delivery_limit"))
    );
    assert!(app.receiver.hits_on("/unroutable").len() >= 3);
    app.cleanup().await;
}

#[tokio::test]
async fn a_host_name_resolving_only_to_loopback_is_refused_by_the_resolver() {
    let app = spawn_app_with(
        "200ms",
        &[("HOOKRELAY__DELIVERY__ALLOW_PRIVATE_TARGETS", "false")],
    )
    .await;
    // Not an IP literal: the check is the guard's resolver, on the addresses it would connect to.
    let url = app.receiver.url("/named").replace("127.0.0.1", "localhost");
    app.store
        .create(
            &"dns".parse().unwrap(),
            hookrelay::subscription::store::NewWebhook {
                url: hookrelay::subscription::WebhookUrl::parse(&url, true).unwrap(),
                events: hookrelay::subscription::EventFilter::All,
                format: Format::Standard,
                description: String::new(),
                rate_limit: None,
            },
        )
        .await
        .unwrap();

    app.publish(EventType::CustomerRegistered, "dns", "{}")
        .await;

    let dead = app.first_dead_delivery(WITHIN).await;
    assert_eq!(
        header_text(&dead, "hookrelay-reason").unwrap(),
        "target_refused"
    );
    assert!(app.receiver.hits().is_empty());
    app.cleanup().await;
}
