//! Nothing is lost when the broker connection is cut or the worker is stopped (SIGTERM).

use crate::helpers::*;
use hookrelay::event::EventType;
use hookrelay::subscription::Format;
use std::collections::HashMap;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);

fn receipts_per_event(app: &TestApp, path: &str) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for hit in app.receiver.hits_on(path) {
        let id = hit.headers["webhook-id"].to_str().unwrap().to_owned();
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn a_worker_whose_broker_connections_are_closed_reconnects_and_loses_nothing() {
    let app = spawn_app_with("1s,2s,4s", &[]).await;
    app.add_webhook("rc", "/rc", &["*"], Format::Standard).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(app.publish(EventType::CustomerUpdated, "rc", "{}").await);
    }
    app.receiver.wait_for("/rc", 10, WITHIN).await;

    let closed = app.close_worker_connections().await;
    assert_eq!(closed, 2, "the consume and publish connections");
    for _ in 0..10 {
        ids.push(app.publish(EventType::CustomerUpdated, "rc", "{}").await);
    }

    let deadline = tokio::time::Instant::now() + WITHIN;
    while receipts_per_event(&app, "/rc").len() < ids.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events lost after the reconnect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = reqwest::get(format!("http://{}/readyz", app.ops_addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "ready again after reconnecting");
    app.cleanup().await;
}

#[tokio::test]
async fn a_stopped_worker_finishes_what_is_in_flight_and_a_new_one_takes_the_rest_without_duplicates(
) {
    let mut app = spawn_app_with("1s", &[("HOOKRELAY__AMQP__PREFETCH", "4")]).await;
    app.receiver
        .behave("/slow", Behaviour::Delay(Duration::from_millis(500)));
    app.add_webhook("st", "/slow", &["*"], Format::Standard)
        .await;
    for _ in 0..20 {
        app.publish(EventType::CustomerUpdated, "st", "{}").await;
    }
    app.receiver.wait_for("/slow", 1, WITHIN).await;

    // SIGTERM while requests are in flight: they finish within the grace, nothing new starts.
    app.stop_worker().await;
    let after_stop = receipts_per_event(&app, "/slow");
    assert!(after_stop.len() < 20, "the stop came mid-stream");
    app.start_worker().await;

    let deadline = tokio::time::Instant::now() + WITHIN;
    while receipts_per_event(&app, "/slow").len() < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events lost across the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let receipts = receipts_per_event(&app, "/slow");
    assert!(
        receipts.values().all(|n| *n == 1),
        "a clean stop delivers nothing twice: {receipts:?}"
    );
    assert_eq!(app.queue_depth(&app.topology().dlq_deliveries()).await, 0);
    app.cleanup().await;
}
