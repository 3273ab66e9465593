//! Retries through the broker (DESIGN §3): a failing endpoint gets the schedule's attempts, spaced
//! within the jitter, with one `webhook-id`; a webhook that keeps failing is disabled; a retry the
//! broker cannot route is never lost.

use crate::helpers::*;
use hookrelay::event::EventType;
use hookrelay::subscription::Format;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(15);

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
