//! One slow or failing endpoint (webhook) does not hold back deliveries to the others.

use crate::helpers::*;
use hookrelay::event::EventType;
use hookrelay::subscription::Format;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(20);

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

#[tokio::test]
async fn a_hanging_webhook_at_its_cap_does_not_hold_back_the_other_nine() {
    let app = spawn_app_with(
        "30s",
        &[
            ("HOOKRELAY__DELIVERY__TIMEOUT", "30s"),
            ("HOOKRELAY__DELIVERY__MAX_IN_FLIGHT_PER_WEBHOOK", "2"),
            ("HOOKRELAY__AMQP__PREFETCH", "8"),
        ],
    )
    .await;
    app.receiver.behave("/hang", Behaviour::Hang);
    app.add_webhook("iso", "/hang", &["*"], Format::Standard)
        .await;
    for i in 0..9 {
        app.add_webhook("iso", &format!("/ok/{i}"), &["*"], Format::Standard)
            .await;
    }

    for _ in 0..40 {
        app.publish(EventType::PaymentCardSuccess, "iso", "{}")
            .await;
    }

    // With a prefetch of 8 and 40 events, the nine only get everything if the hanging one's
    // requests stop holding events: past its cap of 2 they wait in the delay queue instead.
    for i in 0..9 {
        app.receiver.wait_for(&format!("/ok/{i}"), 40, WITHIN).await;
    }
    assert_eq!(
        app.receiver.hits_on("/hang").len(),
        2,
        "only the cap is in flight"
    );
    // The other 38 deliveries to the hanging webhook wait in the first delay queue.
    let delay_queue = app.topology().retry_queue(Duration::from_secs(30));
    let deadline = tokio::time::Instant::now() + WITHIN;
    while app.queue_depth(&delay_queue).await < 38 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "deferred deliveries missing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.queue_depth(&delay_queue).await, 38);
    assert_eq!(app.receiver.hits_on("/hang").len(), 2);
    app.cleanup().await;
}

#[tokio::test]
async fn the_circuit_opens_for_a_failing_webhook_and_a_successful_probe_closes_it() {
    let app = spawn_app_with("1s,1s,1s,1s,1s,1s,1s,1s,1s,1s", &[]).await;
    app.receiver.behave("/flaky", Behaviour::Status(500));
    app.add_webhook("cb", "/flaky", &["*"], Format::Standard)
        .await;

    for _ in 0..5 {
        app.publish(EventType::CustomerUpdated, "cb", "{}").await;
    }
    app.receiver.wait_for("/flaky", 5, WITHIN).await;
    // Five consecutive failures opened the circuit: new deliveries wait without a request.
    for _ in 0..5 {
        app.publish(EventType::CustomerUpdated, "cb", "{}").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(&app, "hookrelay_circuits_opened_total").await, 1.0);
    assert!(metric(&app, "hookrelay_deliveries_deferred_total").await >= 5.0);
    assert_eq!(
        app.receiver.hits_on("/flaky").len(),
        5,
        "no request while open"
    );

    // The endpoint recovers: a probe succeeds, the circuit closes, all ten are delivered.
    app.receiver.behave("/flaky", Behaviour::Status(200));
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let delivered = app.receiver.hits_on("/flaky").len() - 5;
        // Each of the 10 events is delivered once it gets a 200 (earlier tries were 500s).
        let ok_ids: std::collections::HashSet<_> = app.receiver.hits_on("/flaky")[5..]
            .iter()
            .map(|h| h.headers["webhook-id"].to_str().unwrap().to_owned())
            .collect();
        if ok_ids.len() == 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{delivered} requests after recovery, {} events",
            ok_ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.queue_depth(&app.topology().dlq_deliveries()).await, 0);
    app.cleanup().await;
}
